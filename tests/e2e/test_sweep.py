"""`infra sweep` on the real testbed: the sample project's grid over three hosts and this machine.

The master runs on h1; one worker container on each of h1, h2 and h3 (2 processes each) and on
`local` (1 process). The project is a copy of projects/sweep-demo, which has no Celery code (the
cluster file names no `app`): the workers run infra's built-in task runner. The tests share the
cluster and run in file order: the sample's 24 combinations, the original framework's example
file, a failing combination, a worker host killed mid-sweep, and Ctrl-C then --resume.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.e2e.clients import default_sigint
from tests.e2e.test_cluster import TEST_IMAGES, WHEELHOUSE
from tests.unit.test_sweep_parameters import SEED_EXAMPLE, original_combinations

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CLUSTER = "sweep"
PORTS = {"broker": 5695, "results": 6395, "flower": 5595}  # not those of the other e2e clusters
SWEEP_TIMEOUT = 600

# Helpers the tests add to the project: a run that takes a while and says so, and one that
# reports the arguments it got.
SLOW = """\
import argparse, json, time
parser = argparse.ArgumentParser()
parser.add_argument("--i", type=int, required=True)
parser.add_argument("--seconds", type=float, default=3.0)
args = parser.parse_args()
for tick in range(int(args.seconds * 2)):
    print(f"tick={tick}", flush=True)
    time.sleep(0.5)
print(json.dumps({"i": args.i, "double": 2 * args.i}))
"""
ECHO_ARGS = "import json, sys\nprint(json.dumps({'argv': sys.argv[1:]}))\n"


def infra(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run the real command line, as a user would."""
    return subprocess.run([sys.executable, "-m", "infra", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)


class Streamed:
    """`infra sweep` started in the background, its output lines collected as they come."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "infra", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, cwd=REPO,
                                     preexec_fn=default_sigint)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stdout.readline, "")),
                                       daemon=True)
        self.reader.start()

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 300) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in list(self.lines) if re.search(pattern, line)]
            if len(found) >= count:
                return found
            assert self.proc.poll() is None, "".join(self.lines[-30:])
            time.sleep(0.2)
        raise AssertionError(f"no {count} line(s) matching {pattern!r} within {timeout} s:\n" + "".join(self.lines[-30:]))

    def finish(self, timeout: float = SWEEP_TIMEOUT) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(10)
        return code

    @property
    def output(self) -> str:
        return "".join(self.lines)


@pytest.fixture(scope="module")
def swept(testbed, tmp_path_factory):
    """A running cluster on a copy of the sweep sample; removed at the end whatever happens."""
    assert WHEELHOUSE.is_dir(), "run scripts/make-wheelhouse.sh first (scripts/run-tests.sh does)"
    folder = tmp_path_factory.mktemp("sweep")
    project = folder / "sweep-demo"
    shutil.copytree(REPO / "projects" / "sweep-demo", project,
                    ignore=shutil.ignore_patterns("__pycache__", "output", "*.pyc"))
    (project / "slow.py").write_text(SLOW)
    (project / "echo_args.py").write_text(ECHO_ARGS)
    h1, h2, h3 = testbed.docker_hosts[:3]
    spec = {
        "name": CLUSTER,
        "hosts": testbed.cluster_hosts([h1, h2, h3]),
        "project": {"path": str(project), "remote_path": "infra-sweep"},  # no app: the built-in runner
        "roles": {
            "master": {"host": h1.name},
            "workers": [{"host": h.name, "containers": 1, "concurrency": 2} for h in (h1, h2, h3)]
                       + [{"host": "local", "containers": 1, "concurrency": 1}],
        },
        "ports": PORTS,
        "images": TEST_IMAGES,
        "ssh": {"connect_timeout": 5, "known_hosts": str(testbed.known_hosts_path)},
        "timeouts": {"workers": 180},
        "state_dir": str(folder / "state"),
    }
    cluster_file = folder / "cluster.yaml"
    cluster_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    info = {"file": str(cluster_file), "project": project, "folder": folder}
    try:
        started = time.monotonic()
        result = infra("up", "-f", str(cluster_file))
        assert result.returncode == 0, f"infra up failed:\n{result.stdout}\n{result.stderr}"
        print(f"infra up of the sweep cluster: {time.monotonic() - started:.0f} s")
        yield info
    finally:
        testbed.heal()
        infra("clean", "-f", str(cluster_file), "--files", "--volumes")


def csv_rows(project: Path, name: str) -> list[dict[str, str]]:
    with (project / "output" / f"sweep-{name}.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def params_file(swept, name: str, text: str) -> str:
    path = swept["folder"] / f"{name}.yml"
    path.write_text(text)
    return str(path)


# --------------------------------------------------------------------------- the sample


def test_the_samples_24_combinations_run_on_several_hosts_with_correct_rows(swept):
    project = swept["project"]
    started = time.monotonic()
    result = infra("sweep", "-f", swept["file"], str(project / "parameters.yml"), "--sort", "-accuracy",
                   "--", "python", "train.py", timeout=SWEEP_TIMEOUT)
    took = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert "sweep 'parameters': 24 run(s): 24 ok" in result.stdout
    assert "best 10 by accuracy (highest first):" in result.stdout
    assert re.search(r"^\[ ?\d+/24\] epoch=1 loss=", result.stdout, re.M)  # live lines, prefixed

    rows = csv_rows(project, "parameters")
    assert [row["index"] for row in rows] == [str(i) for i in range(1, 25)]
    assert all(row["status"] == "ok" and row["exit_code"] == "0" for row in rows)
    combos = [(lr, e, b, s) for lr in ("0.3", "0.1", "0.03") for e in ("10", "20") for b in ("16", "64")
              for s in ("true", "false")]
    assert [(r["lr"], r["epochs"], r["batch-size"], r["shuffle"]) for r in rows] == combos
    # Each row's metrics are what train.py computes for exactly those parameters (it is deterministic).
    for row in rows:
        argv = ["--lr", row["lr"], "--epochs", row["epochs"], "--batch-size", row["batch-size"]]
        argv += ["--shuffle"] if row["shuffle"] == "true" else []
        here = subprocess.run([sys.executable, str(project / "train.py"), *argv], capture_output=True, text=True,
                              check=True)
        expected = json.loads(here.stdout.splitlines()[-1])
        assert (float(row["accuracy"]), float(row["loss"])) == (expected["accuracy"], expected["loss"]), row
        log = (project / row["log"]).read_text()
        assert f"# command: python train.py {' '.join(argv)}" in log
        assert [line for line in log.splitlines() if line.startswith("epoch=")] == here.stdout.splitlines()[:-1]
    hosts = {row["host"] for row in rows}
    assert len(hosts) >= 2 and hosts <= {"h1", "h2", "h3", "local"}, hosts
    # The report of the sweep, written at its end: the best run is the CSV's, every run's curve is in it.
    assert "report output/sweep-parameters/report.html" in result.stdout
    page = (project / "output" / "sweep-parameters" / "report.html").read_text()
    best = max(rows, key=lambda row: (float(row["accuracy"]), -int(row["index"])))
    assert f"24 runs: 24 ok; best accuracy {best['accuracy']} (run #{best['index']}: " in page
    assert page.count('"name":"#') >= 24 and "learning curves: loss" in page
    print(f"24 combinations in {took:.1f} s (with the CLI's start), runs per host: "
          f"{ {h: sum(r['host'] == h for r in rows) for h in sorted(hosts)} }")


def test_the_original_frameworks_example_file_runs_the_combinations_the_original_made(swept):
    path = params_file(swept, "seed", SEED_EXAMPLE)
    result = infra("sweep", "-f", swept["file"], path, "-q", "--", "python", "echo_args.py", timeout=SWEEP_TIMEOUT)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = csv_rows(swept["project"], "seed")
    assert [json.loads(row["argv"]) for row in rows] == original_combinations(SEED_EXAMPLE)
    assert [row["epoch"] for row in rows] == ["5", "10", "15"]
    assert "[epoch=" not in result.stdout  # -q: a progress line instead of the runs' output
    assert "3/3 done, 0 running, 0 failed" in result.stderr


def test_a_failing_combination_is_recorded_as_failed_with_its_log_and_the_exit_code_says_so(swept):
    path = params_file(swept, "fail", "lr: [0.1, -1]\nepochs: 2\n")
    result = infra("sweep", "-f", swept["file"], path, "--", "python", "train.py", timeout=SWEEP_TIMEOUT)
    assert result.returncode == 1, result.stdout + result.stderr
    ok, failed = csv_rows(swept["project"], "fail")
    assert (ok["lr"], ok["status"], failed["lr"], failed["status"], failed["exit_code"]) == ("0.1", "ok", "-1", "failed", "2")
    log = (swept["project"] / failed["log"]).read_text()
    assert "--lr must be a positive number, got -1.0" in log and "# end: failed, exit code 2" in log
    assert f"failed [2] lr=-1 epochs=2 (exit 2): {failed['log']}" in result.stdout
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------- faults


def test_a_worker_host_lost_mid_sweep_has_its_runs_done_elsewhere(swept, testbed):
    path = params_file(swept, "hostloss", "i: !!python/tuple [0, 24]\nseconds: 4\n")
    sweep = Streamed("sweep", "-f", swept["file"], path, "--", "python", "slow.py")
    try:
        sweep.wait_for(r"started on h3")
        time.sleep(1.5)  # mid-run
        lost_at = time.monotonic()
        testbed.kill("h3")
        code = sweep.finish()
    finally:
        testbed.heal()
    out = sweep.output
    assert code == 0, out[-3000:]
    rows = csv_rows(swept["project"], "hostloss")
    assert len(rows) == 24 and all(row["status"] == "ok" for row in rows), [r["status"] for r in rows]
    assert [row["metric:i"] for row in rows] == [str(i) for i in range(24)]
    started_on_h3 = {m.group(1) for m in re.finditer(r"^\[ ?(\d+)/24\] started on h3", out, re.M)}
    ended_on_h3 = {m.group(1) for m in re.finditer(r"^\[ ?(\d+)/24\] ok \(exit 0, [\d.]+ s on h3\)", out, re.M)}
    moved = started_on_h3 - ended_on_h3
    assert moved, out[-3000:]  # at least one run was cut off by the loss...
    assert all(rows[int(i) - 1]["host"] != "h3" for i in moved)  # ...and finished on another host
    assert "(delivered again: the worker that had it was lost)" in out
    assert "sweep 'hostloss': 24 run(s): 24 ok" in out
    print(f"host lost: {len(moved)} run(s) moved off h3; the sweep ended {time.monotonic() - lost_at:.0f} s later")


def test_ctrl_c_keeps_what_finished_and_resume_runs_only_the_rest(swept):
    path = params_file(swept, "resume", "i: !!python/tuple [0, 16]\nseconds: 3\n")
    sweep = Streamed("sweep", "-f", swept["file"], path, "--", "python", "slow.py")
    sweep.wait_for(r"\] ok \(exit 0", count=4)
    sweep.proc.send_signal(signal.SIGINT)
    assert sweep.finish(timeout=180) == 130, sweep.output[-3000:]
    assert "stopping the sweep" in sweep.output and "Traceback" not in sweep.output
    rows = csv_rows(swept["project"], "resume")
    done = {row["i"] for row in rows if row["status"] == "ok"}
    assert 4 <= len(done) < 16
    assert all(row["status"] in ("ok", "cancelled") for row in rows)

    result = infra("sweep", "-f", swept["file"], path, "--resume", "--", "python", "slow.py", timeout=SWEEP_TIMEOUT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    started = re.findall(r"^\[ ?\d+/16\] started on \S+: i=(\d+)", result.stdout, re.M)
    assert len(started) == 16 - len(done) and not set(started) & done
    assert f"{16 - len(done)} run(s) ({len(done)} of 16 done earlier): {16 - len(done)} ok" in result.stdout
    rows = csv_rows(swept["project"], "resume")
    assert [row["i"] for row in rows] == [str(i) for i in range(16)] and all(r["status"] == "ok" for r in rows)
    print(f"Ctrl-C after {len(done)} of 16; --resume ran the other {len(started)}")
