"""Parameters files: every kind of value, the flag rule, exact ranges, the order, the limit, located errors."""

from __future__ import annotations

import itertools

import pytest
import yaml

from infra.errors import ConfigError
from infra.sweep.parameters import load_parameters, parse_parameters, render_value
from infra.sweep.plan import build_runs, parameter_args

# The example of the framework infra grew from (seed 003), as its users wrote it.
SEED_EXAMPLE = """\
epoch: !!python/tuple [5,20,5]
batchsize: 100
gpu: "-1"
unit: [1000]
"""


def values(text: str) -> dict[str, tuple]:
    return {axis.name: axis.values for axis in parse_parameters(text).axes}


def error_of(text: str, **kwargs) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_parameters(text, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    return message


# --------------------------------------------------------------------------- the original's expansion


def original_combinations(text: str) -> list[list[str]]:
    """The original framework's expansion (yaml2Matrix + joinLists + its task's argv), ported.

    It read the file with PyYAML's full loader, made a range of a tuple (numpy.arange: the same
    as range() for integers), dropped `false`, gave `true` an empty value, kept a single str or
    int, and joined the parameters first-to-last with the first varying slowest.
    """
    data = yaml.load(text, Loader=yaml.FullLoader)
    matrix = []
    for key, param in data.items():
        if isinstance(param, list):
            matrix.append([key, *param])
        elif isinstance(param, tuple):
            start, end, step = param[0], param[1], (param[2] if len(param) > 2 else 1)
            matrix.append([key, *range(start, end, step)])
        elif isinstance(param, bool):
            if param:
                matrix.append([key, ""])
        elif isinstance(param, (str, int)):
            matrix.append([key, param])
    commands = []
    for combination in itertools.product(*(line[1:] for line in matrix)):
        argv = []
        for (key, *_), value in zip(matrix, combination):
            argv.append("--" + key)
            if value != "":
                argv.append(str(value))
        commands.append(argv)
    return commands


def test_the_seed_example_expands_to_the_combinations_the_original_made():
    grid = parse_parameters(SEED_EXAMPLE)
    ours = [list(run.argv[2:]) for run in build_runs(grid, ("python", "train.py"))]
    assert ours == original_combinations(SEED_EXAMPLE)
    assert ours == [
        ["--epoch", "5", "--batchsize", "100", "--gpu", "-1", "--unit", "1000"],
        ["--epoch", "10", "--batchsize", "100", "--gpu", "-1", "--unit", "1000"],
        ["--epoch", "15", "--batchsize", "100", "--gpu", "-1", "--unit", "1000"],
    ]


def test_a_larger_file_of_the_original_kind_expands_as_the_original_did():
    text = "lr: [0.1, 0.01]\nepoch: !!python/tuple [1, 4]\nverbose: true\nquiet: false\nmodel: cnn\nseed: [1, 2]\n"
    grid = parse_parameters(text)
    ours = [list(run.argv[1:]) for run in build_runs(grid, ("python",))]
    assert ours == original_combinations(text)
    assert len(ours) == 2 * 3 * 2


# --------------------------------------------------------------------------- kinds of values


def test_each_kind_of_value():
    assert values("""
a: [1, two, 3.5]
b: {values: [x, y]}
c: !!python/tuple [0, 3]
d: {range: [10, 30, 10]}
e: true
f: false
g: "-1"
h: 7
i: [true, false]
j: 2024-01-31
""") == {
        "a": (1, "two", 3.5), "b": ("x", "y"), "c": (0, 1, 2), "d": (10, 20), "e": (True,), "f": (False,),
        "g": ("-1",), "h": (7,), "i": (True, False), "j": ("2024-01-31",),
    }


def test_a_flag_is_its_name_alone_and_false_leaves_it_out():
    assert parameter_args((("shuffle", True), ("augment", False), ("lr", 0.1))) == ["--shuffle", "--lr", "0.1"]
    runs = build_runs(parse_parameters("augment: [true, false]\nlr: 0.1\n"), ("train",))
    assert [run.argv for run in runs] == [("train", "--augment", "--lr", "0.1"), ("train", "--lr", "0.1")]


def test_a_name_written_with_its_dashes_is_used_as_written():
    assert parameter_args((("-n", 5), ("--lr", 0.1), ("batch-size", 8))) == [
        "-n", "5", "--lr", "0.1", "--batch-size", "8"]


def test_ranges_end_before_their_stop_and_take_a_default_step_of_1():
    assert values("a: !!python/tuple [5, 20, 5]\nb: !!python/tuple [2, 5]\nc: {range: [3, 0, -1]}\n") == {
        "a": (5, 10, 15), "b": (2, 3, 4), "c": (3, 2, 1)}


def test_float_ranges_are_exact_decimals_without_an_extra_value():
    got = values("lr: !!python/tuple [0.1, 0.5, 0.1]\nx: {range: [1, 1.3, 0.1]}\ny: {range: [0, 1, 0.25]}\n")
    assert got == {"lr": (0.1, 0.2, 0.3, 0.4), "x": (1.0, 1.1, 1.2), "y": (0.0, 0.25, 0.5, 0.75)}
    # As the command gets them: never 0.30000000000000004.
    assert [render_value(v) for v in got["lr"]] == ["0.1", "0.2", "0.3", "0.4"]


def test_values_are_rendered_as_python_writes_numbers():
    assert [render_value(v) for v in (5, 0.001, 1e-05, 2.5e10, "adam", True, False)] == [
        "5", "0.001", "1e-05", "25000000000.0", "adam", "true", "false"]


def test_the_combinations_follow_the_file_with_the_first_parameter_slowest():
    grid = parse_parameters("b: [1, 2]\na: [x, y, z]\n")
    assert grid.names == ["b", "a"]
    assert [dict(c) for c in grid.combinations()] == [
        {"b": 1, "a": "x"}, {"b": 1, "a": "y"}, {"b": 1, "a": "z"},
        {"b": 2, "a": "x"}, {"b": 2, "a": "y"}, {"b": 2, "a": "z"}]
    assert grid.size == 6 and grid.describe() == "b: 2 values, a: 3 values"


def test_the_sample_projects_parameters_make_24_combinations():
    from pathlib import Path

    grid = load_parameters(Path(__file__).resolve().parents[2] / "projects" / "sweep-demo" / "parameters.yml")
    assert grid.size == 24
    assert grid.names == ["lr", "epochs", "batch-size", "shuffle"]


# --------------------------------------------------------------------------- safety and errors


def test_no_other_python_tag_is_read():
    assert error_of('a: !!python/object/apply:os.system ["echo pwned"]\n') == (
        "parameters.yml:1: invalid parameters file: the tag !!python/object/apply:os.system is not allowed "
        "(only !!python/tuple ranges and plain YAML are read)")
    assert "is not allowed" in error_of("a: !!python/name:os.system\n")
    assert "is not allowed" in error_of("a: !custom 1\n")


@pytest.mark.parametrize("text, message", [
    ("lr: {range: [0, 1, 0]}\n", "lr: the range step must not be 0 (parameters.yml:1)"),
    ("lr: !!python/tuple [5, 5]\n", "lr: the range [5, 5, 1] is empty (its stop is excluded) (parameters.yml:1)"),
    ("lr: !!python/tuple [1]\n", "lr: a range is [start, stop] or [start, stop, step], got 1 item(s) (parameters.yml:1)"),
    ("lr: {range: [a, 3]}\n", "lr: range items must be numbers, got 'a' (parameters.yml:1)"),
    ("lr: {range: [0, 1e3]}\n", "lr: range items must be numbers, got '1e3' (YAML reads a number with an exponent "
                                "but no dot as text: write 1.0e-3) (parameters.yml:1)"),
    ("lr: !!python/tuple 5\n", "parameters.yml:1: invalid parameters file: !!python/tuple needs a list: [start, stop, step]"),
    ("a: 1\nlr: []\n", "lr: the list of values is empty (parameters.yml:2)"),
    ("lr: [[1, 2]]\n", "lr: lists and mappings cannot be nested in a list of values (parameters.yml:1)"),
    ("lr:\n", "lr: a parameter needs a value (a value, a list, {values: [...]}, {range: [start, stop, step]}, "
              "!!python/tuple [start, stop, step] or true/false) (parameters.yml:1)"),
    ("lr: {steps: 3}\n", "lr: a mapping must be {range: [start, stop, step]} or {values: [...]} (found keys: steps) "
                         "(parameters.yml:1)"),
    ("lr: {values: 3}\n", "lr: values needs a list, got 3 (parameters.yml:1)"),
    ("lr: [0.1, 0.10]\n", "lr: the value 0.1 is listed twice (parameters.yml:1)"),
    ("opt: [adam, \"adam\"]\n", "opt: the value 'adam' is listed twice (parameters.yml:1)"),
    ("a: 1\na: 2\n", "a: listed twice (also at line 1) (parameters.yml:2)"),
    ("my lr: 1\n", "my lr: a parameter name is letters, digits, '_', '.' and '-' (it becomes --NAME) (parameters.yml:1)"),
    ("1: 2\n", "parameters.yml:1: parameter names are words, got '1'"),
    ("- lr\n", "parameters.yml:1: a parameters file maps each parameter to its values, e.g. `lr: [0.1, 0.01]`"),
    ("", "parameters.yml: the file is empty: write one parameter per line, e.g. `lr: [0.1, 0.01]`"),
    ("{}\n", "parameters.yml: no parameters: write one per line, e.g. `lr: [0.1, 0.01]`"),
    ("a: !!int x\n", "a: cannot read this value: \"invalid literal for int() with base 10: 'x'\" (parameters.yml:1)"),
    ("a: [1, 2\n", "parameters.yml:2: invalid parameters file: expected ',' or ']', but got '<stream end>'"),
])
def test_every_mistake_is_one_line_naming_the_parameter_and_its_line(text, message):
    assert error_of(text) == message


def test_a_huge_range_is_refused_before_any_value_is_made():
    assert error_of("a: !!python/tuple [0, 1000000000000000]\n") == (
        "a: the range has 1,000,000,000,000,000 values, more than the limit of 10,000 combinations "
        "(raise it with --max-combinations if you mean it) (parameters.yml:1)")


def test_too_many_combinations_are_refused_with_the_count_of_each_parameter():
    text = "a: !!python/tuple [0, 100]\nb: !!python/tuple [0, 100]\nc: [x, y]\n"
    assert error_of(text, max_combinations=1000) == (
        "parameters.yml: 20,000 combinations (a: 100 values, b: 100 values, c: 2 values) is more than the limit "
        "of 1,000; raise it with --max-combinations if you mean it")
    assert parse_parameters(text, max_combinations=20_000).size == 20_000


def test_a_missing_or_unreadable_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"no such parameters file$"):
        load_parameters(tmp_path / "nope.yml")
    with pytest.raises(ConfigError, match=r"is a folder, not a parameters file$"):
        load_parameters(tmp_path)
    binary = tmp_path / "b.yml"
    binary.write_bytes(b"a: 1\nb: \xff\n")
    with pytest.raises(ConfigError, match=r"b.yml:2: not UTF-8 text"):
        load_parameters(binary)
