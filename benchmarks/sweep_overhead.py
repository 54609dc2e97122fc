"""What `infra sweep` costs per combination, against the same commands run here by `xargs -P`.

It prints figures; it checks nothing. It brings up a cluster on this machine alone (master and
worker containers, the built-in task runner, no Celery code), then, for each run length S of
`--seconds`, runs N combinations of `sh noop.sh --i K --seconds S` (a command that only waits S
seconds) twice, as whole processes the way a user runs them:

- `infra sweep -q` on the cluster, whose worker processes number C in all;
- `xargs -P C` here, outside the containers, on the same N command lines.

and reports both wall times, the cluster's rate as a share of xargs' rate, and the overhead per
combination in worker-slot seconds: (T_sweep - T_xargs) * C / N. The sweep's time is that of
the whole command: connecting to the master, writing the plan, starting the driver, sending N
tasks, and recording N rows and logs here.

    python benchmarks/sweep_overhead.py                        # 1,000 runs of 0 s and of 1 s
    python benchmarks/sweep_overhead.py --runs 200 --seconds 0,2 --containers 1 --concurrency 8

Needs: a running Docker engine, the base image `infra-base:bookworm` and the wheelhouse
`.cache/wheels` (scripts/local-demo.sh or scripts/run-tests.sh make both). The cluster is
removed at the end (`--keep` leaves it running for another measurement).
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
WHEELHOUSE = REPO / ".cache" / "wheels"
NAME = "sweepbench"
NOOP = """\
#!/bin/sh
# A run that only waits: `sh noop.sh --i K --seconds S` sleeps S seconds.
while [ $# -gt 0 ]; do
    case "$1" in --seconds) seconds=$2; shift ;; esac
    shift
done
sleep "${seconds:-0}"
"""


def infra(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "infra", *args], capture_output=True, text=True, cwd=REPO)
    if check and done.returncode != 0:
        raise SystemExit(f"infra {args[0]} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return done


def write_cluster(folder: Path, containers: int, concurrency: int, state: Path) -> Path:
    project = folder / "bench"
    project.mkdir(parents=True, exist_ok=True)
    (project / "noop.sh").write_text(NOOP)
    spec = {
        "name": NAME,
        "project": {"path": str(project)},
        "roles": {"master": {"host": "local"},
                  "workers": [{"host": "local", "containers": containers, "concurrency": concurrency}]},
        "images": {"source": "build", "base": "infra-base:bookworm", "wheelhouse": str(WHEELHOUSE)},
        "ports": {"broker": 5761, "results": 6761, "flower": 5861},
        "state_dir": str(state),
    }
    path = folder / "cluster.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def time_sweep(cluster: Path, project: Path, runs: int, seconds: float) -> float:
    params = project.parent / f"noop-{seconds:g}.yml"
    params.write_text(f"i: !!python/tuple [0, {runs}]\nseconds: {seconds:g}\n")
    started = time.monotonic()
    done = infra("sweep", "-f", str(cluster), str(params), "-q", "--max-combinations", str(max(runs, 10_000)),
                 "--name", f"noop-{seconds:g}", "--", "sh", "noop.sh", check=False)
    took = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"the sweep failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    with (project / "output" / f"sweep-noop-{seconds:g}.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == runs and all(row["status"] == "ok" for row in rows), "not every run finished ok"
    return took


def time_xargs(project: Path, runs: int, seconds: float, concurrency: int) -> float:
    lines = "".join(f"--i {i} --seconds {seconds:g}\n" for i in range(runs)).encode()
    started = time.monotonic()
    subprocess.run(["xargs", "-P", str(concurrency), "-L", "1", "sh", str(project / "noop.sh")], input=lines,
                   check=True)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000, help="combinations per measurement (default 1000)")
    parser.add_argument("--seconds", default="0,1", help="run lengths to measure, comma-separated (default 0,1)")
    parser.add_argument("--containers", type=int, default=2, help="worker containers (default 2)")
    parser.add_argument("--concurrency", type=int, default=4, help="processes per worker container (default 4)")
    parser.add_argument("--keep", action="store_true", help="leave the cluster running")
    args = parser.parse_args()
    slots = args.containers * args.concurrency
    lengths = [float(s) for s in args.seconds.split(",") if s.strip()]
    folder = Path(tempfile.mkdtemp(prefix="infra-sweep-bench-"))
    cluster = write_cluster(folder, args.containers, args.concurrency, folder / "state")
    project = folder / "bench"
    try:
        print(f"bringing up {NAME}: {args.containers} worker container(s) x {args.concurrency} = {slots} slots, "
              f"on {os.cpu_count()} CPU(s)", flush=True)
        started = time.monotonic()
        infra("up", "-f", str(cluster))
        print(f"up in {time.monotonic() - started:.0f} s", flush=True)
        warm_up = project.parent / "warm-up.yml"  # the first tasks of a fresh worker are not measured
        warm_up.write_text("i: !!python/tuple [0, 8]\n")
        infra("sweep", "-f", str(cluster), str(warm_up), "-q", "--", "sh", "noop.sh")
        header = f"{'runs':>6} {'S':>4} {'xargs -P':>9} {'sweep':>8} {'rate':>6} {'overhead/run':>13}"
        results = []
        for seconds in lengths:
            xargs = time_xargs(project, args.runs, seconds, slots)
            sweep = time_sweep(cluster, project, args.runs, seconds)
            overhead = (sweep - xargs) * slots / args.runs
            results.append(f"{args.runs:>6} {seconds:>4g} {xargs:>8.1f}s {sweep:>7.1f}s {xargs / sweep:>6.0%} "
                           f"{overhead * 1000:>10.0f} ms")
            print(results[-1], flush=True)
        print()
        print(f"{slots} slots ({args.containers} x {args.concurrency}), {os.cpu_count()} CPU(s); "
              "rate = xargs time / sweep time; overhead/run = (sweep - xargs) x slots / runs")
        print(header)
        for line in results:
            print(line)
    finally:
        if args.keep:
            print(f"cluster kept: infra clean -f {cluster} --volumes")
        else:
            infra("clean", "-f", str(cluster), "--volumes", check=False)
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
