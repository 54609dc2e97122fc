"""`infra check` on any broken cluster file: exit 0, or exit 2 with one `error:` line; never a
traceback, another exit code or a hang.

The mutants are made from the real cluster files (config.example.yaml and those under examples/
and tests/) by seeded random edits, as a user's typo, a bad merge or a hostile file would make
them. Mutant N is always the same file: `mutant(N)` rebuilds it to reproduce a failure.
"""

from __future__ import annotations

import contextlib
import random
import re
import signal
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from infra.cli import main

REPO = Path(__file__).resolve().parents[2]
SEED_FILES = sorted(
    (path for path in [REPO / "config.example.yaml", *(REPO / "examples").glob("*.yaml"),
                       *(REPO / "tests").rglob("*.yaml")]
     if re.search(rb"^roles:", path.read_bytes(), re.MULTILINE)),  # cluster files, not other YAML fixtures
    key=str,
)
MUTANT_COUNT = 1200
SECONDS_PER_FILE = 5.0
FAILURES_SHOWN = 10  # then stop: a broken loader would otherwise cost SECONDS_PER_FILE per mutant

# Values of other types than the key wants, and YAML's odd corners.
ODD_VALUES = [
    "", "~", "null", "[]", "{}", "[a, b]", "{a: 1}", "yes", "no", "on", "3.5", "-1", "0", "0x1F", "0o17",
    "1e400", ".nan", "-.inf", "65536", "99999999999999999999999999", "1" + "0" * 5000, "1:2:3",
    "'quoted'", '"a\\nb"', '"\\0"', '"\\ud800"', "2024-13-45", "2001-12-14 21:59:43.10 +99:00",
    "!!int x", "!!bool maybe", "!!timestamp soon", "!!binary aGk=", "!!set {a}", "!!python/object:os.system x",
    "!custom x", "|\n  block\n  text", ">-\n  folded", "local", "gpu-box", "x" * 3000, "'unterminated",
    "[unclosed", "{a: [}", "? [a]\n: b", "<<: {containers: 3}", "a: b: c",
]
# Bytes no text editor writes on purpose, and a few that YAML gives meaning to.
ODD_BYTES = [
    b"\x00", b"\xff", b"\xfe\xff", b"\xef\xbb\xbf", b"\x80", b"\xc3", b"\t", b"\r", b"\r\n", b"\x0b",
    b"\x1b[31m", b"\x7f", b"\xc2\x85", b"\xe2\x80\xa8", b"\xed\xa0\x80", b"%YAML 1.1\n", b"%TAG ! tag:x,2000:\n",
    b"---\n", b"...\n", b"&", b"*", b"!", b"|", b">", b"#", b"'", b'"', b"{", b"[", b":", b"- ", b"? ", b"@",
]
KEY_VALUE = re.compile(rb"^(\s*(?:- )?[^\s:#][^:#]*:)[ \t]*(.*)$")


def mutate_delete_line(rng: random.Random, lines: list[bytes]) -> None:
    if lines:
        del lines[rng.randrange(len(lines))]


def mutate_duplicate_line(rng: random.Random, lines: list[bytes]) -> None:
    if lines:
        index = rng.randrange(len(lines))
        lines.insert(rng.randrange(len(lines) + 1), lines[index])


def mutate_swap_lines(rng: random.Random, lines: list[bytes]) -> None:
    if len(lines) > 1:
        a, b = rng.sample(range(len(lines)), 2)
        lines[a], lines[b] = lines[b], lines[a]


def mutate_value_type(rng: random.Random, lines: list[bytes]) -> None:
    candidates = [i for i, line in enumerate(lines) if KEY_VALUE.match(line)]
    if candidates:
        index = rng.choice(candidates)
        key = KEY_VALUE.match(lines[index]).group(1)
        lines[index] = key + b" " + rng.choice(ODD_VALUES).encode("utf-8", "surrogatepass")


def mutate_indentation(rng: random.Random, lines: list[bytes]) -> None:
    if lines:
        index = rng.randrange(len(lines))
        stripped = lines[index].lstrip(b" ")
        indent = len(lines[index]) - len(stripped)
        new_indent = rng.choice([b" " * max(0, indent + rng.choice([-3, -2, -1, 1, 2, 3])), b"\t", b" \t", b""])
        lines[index] = new_indent + stripped


def mutate_anchor_and_alias(rng: random.Random, lines: list[bytes]) -> None:
    candidates = [i for i, line in enumerate(lines) if KEY_VALUE.match(line)]
    shape = rng.choice(["pair", "alias only", "self", "merge", "laughs"])
    if shape == "laughs" or not candidates:
        laughs = [b'l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
        laughs += [f"l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 10)}]".encode() for n in range(1, 10)]
        lines[rng.randrange(len(lines) + 1):0] = laughs
        return
    index = rng.choice(candidates)
    key, value = KEY_VALUE.match(lines[index]).groups()
    if shape == "pair":
        lines[index] = key + b" &x " + value
        other = rng.choice(candidates)
        lines[other] = KEY_VALUE.match(lines[other]).group(1) + b" *x"
    elif shape == "alias only":
        lines[index] = key + b" *nowhere"
    elif shape == "self":
        lines[index] = key + b" &a [*a]"
    else:
        lines.insert(0, b"x-defaults: &defaults {containers: 2}")
        lines.insert(index + 1, re.match(rb"\s*", lines[index + 1]).group() + b"<<: *defaults")


def mutate_deep_nesting(rng: random.Random, lines: list[bytes]) -> None:
    depth = rng.choice([5, 63, 64, 65, 100, 300, 1000, 5000])
    shape = rng.choice(["flow list", "flow map", "block map", "unclosed"])
    if shape == "flow list":
        nested = b"[" * depth + b"]" * depth
    elif shape == "flow map":
        nested = b"{a: " * depth + b"1" + b"}" * depth
    elif shape == "unclosed":
        nested = b"[" * depth
    else:
        nested = b"\n" + b"\n".join(b" " * (2 * level + 2) + b"k:" for level in range(min(depth, 400))) + b" 1"
    candidates = [i for i, line in enumerate(lines) if KEY_VALUE.match(line)]
    if candidates:
        index = rng.choice(candidates)
        lines[index] = KEY_VALUE.match(lines[index]).group(1) + b" " + nested
    else:
        lines.append(b"deep: " + nested)


def mutate_garbage_bytes(rng: random.Random, lines: list[bytes]) -> None:
    garbage = rng.choice([rng.choice(ODD_BYTES), bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))])
    if not lines:
        lines.append(garbage)
        return
    index = rng.randrange(len(lines))
    at = rng.randrange(len(lines[index]) + 1)
    lines[index] = lines[index][:at] + garbage + lines[index][at:]


LINE_MUTATIONS = [
    mutate_delete_line, mutate_duplicate_line, mutate_swap_lines, mutate_value_type, mutate_indentation,
    mutate_anchor_and_alias, mutate_deep_nesting, mutate_garbage_bytes,
]


def mutant(number: int) -> tuple[Path, list[str], bytes]:
    """The seed file, the edits made and the bytes of mutant `number` (the same on every run)."""
    rng = random.Random(f"infra-config-fuzz:{number}")
    seed = SEED_FILES[number % len(SEED_FILES)]
    lines = seed.read_bytes().split(b"\n")
    edits = []
    for _ in range(rng.choice([1, 1, 2, 3])):
        if rng.random() < 1 / (len(LINE_MUTATIONS) + 1):
            edits.append("truncate")
            data = b"\n".join(lines)
            lines = data[: rng.randrange(len(data) + 1)].split(b"\n")  # may cut a UTF-8 sequence in two
        else:
            mutation = rng.choice(LINE_MUTATIONS)
            edits.append(mutation.__name__.removeprefix("mutate_"))
            mutation(rng, lines)
    return seed, edits, b"\n".join(lines)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    """A folder for the mutants holding what the seed files refer to, so that unbroken ones validate."""
    root = tmp_path_factory.mktemp("fuzz")
    folder = root / "files"
    for needed in [folder / "projects" / "wordcount", folder / "wordcount", folder / "proj",
                   root / "projects" / "wordcount", root / ".cache" / "wheels"]:
        needed.mkdir(parents=True)
    return folder


class TookTooLong(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float):
    """Interrupt what runs past `seconds`, so that a hang fails the test instead of stalling it."""
    if not hasattr(signal, "SIGALRM"):  # Windows: the elapsed time is still checked afterwards
        yield
        return

    def interrupt(signum, frame):
        raise TookTooLong(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check_outcome(path: Path) -> tuple[int, str | None]:
    """`infra check -f PATH`'s exit code, and what is wrong with its outcome (None: nothing)."""
    started = time.perf_counter()
    with time_limit(SECONDS_PER_FILE):  # CliRunner records the interruption as result.exception
        result = CliRunner().invoke(main, ["check", "-f", str(path)])
    elapsed = time.perf_counter() - started
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return result.exit_code, f"raised {type(result.exception).__name__}: {str(result.exception)[:300]}"
    if elapsed > SECONDS_PER_FILE:
        return result.exit_code, f"took {elapsed:.1f} s"
    if result.exit_code == 0:
        if result.stderr or len(result.stdout.splitlines()) != 1 or " is valid (" not in result.stdout:
            return 0, f"exit 0 with stdout {result.stdout[:300]!r} and stderr {result.stderr[:300]!r}"
        return 0, None
    if result.exit_code != 2:
        return result.exit_code, f"exit {result.exit_code}: {result.output[-300:]!r}"
    lines = result.stderr.splitlines()
    if len(lines) != 1 or not lines[0].startswith("error: ") or result.stdout:
        return 2, f"exit 2 with stdout {result.stdout[:300]!r} and stderr {result.stderr[:300]!r}"
    return 2, None


def test_the_seed_files_are_found_and_the_example_validates_unchanged(fuzz_dir):
    assert REPO / "config.example.yaml" in SEED_FILES and len(SEED_FILES) >= 3, SEED_FILES
    outcomes = {}
    for seed in SEED_FILES:
        path = fuzz_dir / seed.name
        path.write_bytes(seed.read_bytes())
        outcomes[seed.name] = check_outcome(path)
    assert outcomes["config.example.yaml"] == (0, None)
    assert all(problem is None for _, problem in outcomes.values()), outcomes


def test_every_mutated_cluster_file_gets_exit_0_or_one_error_line_and_exit_2(fuzz_dir):
    failures = []
    exit_codes = []
    for number in range(MUTANT_COUNT):
        seed, edits, data = mutant(number)
        path = fuzz_dir / f"mutant-{number}.yaml"
        path.write_bytes(data)
        exit_code, problem = check_outcome(path)
        exit_codes.append(exit_code)
        if problem:
            failures.append(f"mutant({number}) of {seed.name} ({', '.join(edits)}): {problem} [{path}]")
            if len(failures) == FAILURES_SHOWN:
                break
    assert not failures, "\n".join(failures)
    # Both outcomes occur, or the mutants would test only one path.
    assert exit_codes.count(0) >= MUTANT_COUNT // 20 and exit_codes.count(2) >= MUTANT_COUNT // 2, (
        exit_codes.count(0), exit_codes.count(2))
