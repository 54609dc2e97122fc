"""Per-run files on the real testbed: each run's $INFRA_RUN_DIR comes back into output/sweep-NAME/runs/<index>/.

The cluster is test_sweep's (master on h1, workers on h1, h2, h3 and local). One grid of 8 runs
of artifact.py, each told its folder with `--out {run_dir}`: normal runs, runs that fail after
writing, runs that plant links to the worker's /etc/passwd and /, and runs that write more than
--artifact-limit. Every run's own files must arrive in its index's folder; the links and the
big file must each give a warning and never be read or written.
"""

from __future__ import annotations

import re
import time

import pytest

from tests.e2e.test_sweep import SWEEP_TIMEOUT, csv_rows, infra, params_file, swept  # noqa: F401  (swept: the cluster)

pytestmark = pytest.mark.e2e

ARTIFACT = """\
import argparse, os, sys
parser = argparse.ArgumentParser()
parser.add_argument("--i", type=int, required=True)
parser.add_argument("--mode", required=True)
parser.add_argument("--out", required=True)
args = parser.parse_args()
if args.out != os.environ.get("INFRA_RUN_DIR") or os.listdir(args.out):
    print(f"not a fresh run folder: {args.out} {os.environ.get('INFRA_RUN_DIR')}", flush=True)
    sys.exit(2)
os.makedirs(os.path.join(args.out, "sub"))
with open(os.path.join(args.out, "result.txt"), "w") as handle:
    handle.write(f"i={args.i} mode={args.mode}\\n")
with open(os.path.join(args.out, "sub", "data.bin"), "wb") as handle:
    handle.write(bytes([args.i]) * 1000 * args.i)
if args.mode == "link":
    os.symlink("/etc/passwd", os.path.join(args.out, "leak.txt"))
    os.symlink("/", os.path.join(args.out, "sub", "root"))
if args.mode == "big":
    with open(os.path.join(args.out, "zz-big.bin"), "wb") as handle:
        handle.write(os.urandom(3_000_000))
print(f"wrote into {args.out}", flush=True)
sys.exit(1 if args.mode == "fail" else 0)
"""
PARAMETERS = "i: [1, 2]\nmode: [normal, fail, link, big]\n"
LIMIT = "2MB"


def test_every_runs_files_come_back_into_its_index_folder_and_links_and_excess_are_refused(swept):  # noqa: F811
    project = swept["project"]
    (project / "artifact.py").write_text(ARTIFACT)
    assert infra("sync-files", "-f", swept["file"], "--no-restart").returncode == 0
    started = time.monotonic()
    result = infra("sweep", "-f", swept["file"], params_file(swept, "artifacts", PARAMETERS), "--artifact-limit", LIMIT,
                   "--", "python", "artifact.py", "--out", "{run_dir}", timeout=SWEEP_TIMEOUT)
    took = time.monotonic() - started
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr  # the two `fail` runs
    assert "sweep 'artifacts': 8 run(s): 6 ok, 2 failed" in result.stdout, result.stdout[-3000:]
    assert "files of 8 run(s) ($INFRA_RUN_DIR) in output/sweep-artifacts/runs/<index>/" in result.stdout
    rows = csv_rows(project, "artifacts")
    assert len(rows) == 8
    runs = project / "output" / "sweep-artifacts" / "runs"
    assert sorted(p.name for p in runs.iterdir()) == sorted(row["index"] for row in rows)
    for row in rows:
        i, mode, folder = int(row["i"]), row["mode"], runs / row["index"]
        assert (folder / "result.txt").read_text() == f"i={i} mode={mode}\n", row
        assert (folder / "sub" / "data.bin").read_bytes() == bytes([i]) * 1000 * i
        found = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir())
        assert found == ["result.txt", "sub/data.bin"], (row, found)  # no link, no big file
        assert not any(p.is_symlink() for p in folder.rglob("*"))
        prefix = rf"^\[ ?{row['index']}/8\] warning: its files: "
        if mode == "link":
            assert re.search(prefix + r"2 item\(s\) not a regular file or folder left out, never read: "
                             r"leak\.txt \(a symbolic link\), sub/root \(a symbolic link\)$", result.stdout, re.M)
            assert "warning: 2 item(s) not a regular file" in row["artifacts"]
        elif mode == "big":
            assert re.search(prefix + r"1 file\(s\) over the artifact limit of 2 MB left out: zz-big\.bin "
                             r"\(--artifact-limit raises it\)$", result.stdout, re.M)
            assert "over the artifact limit of 2 MB left out: zz-big.bin" in row["artifacts"]
        else:
            assert not re.search(prefix, result.stdout, re.M)
            assert row["artifacts"] == f"2 file(s), {_size(1000 * i + 10 + len(mode))} in {folder.relative_to(project)}/"
        log = (project / row["log"]).read_text()
        assert "# files ($INFRA_RUN_DIR): " in log
    # Nothing of the worker's own files was read: not in the runs' folders, not in the archives.
    output = project / "output"
    for path in output.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.suffix != ".csv" and path.suffix != ".log":
            assert b"root:x:0:0" not in path.read_bytes(), path
    print(f"8 runs with their files brought back in {took:.1f} s")


def _size(size: int) -> str:
    from infra.runtime.artifacts import format_size

    return format_size(size)
