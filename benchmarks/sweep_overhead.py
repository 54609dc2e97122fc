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

`--search random` makes the N runs the trials of a random search (`i: {int: [...]}`, drawn
here, seeded), `--search optuna` those of an Optuna study the driver runs on the master (ask,
a task, tell; each run prints `value=K`, the objective). `--study-trials M` then also times
the driver's own study code (`infra_runtime.study.StudyBook`: ask, report a line, tell) for
M trials in this process, on the journal file it uses, beside Optuna's in-memory storage with
plain ask/tell: the per-trial cost of the study, without the cluster.

    python benchmarks/sweep_overhead.py                        # 1,000 runs of 0 s and of 1 s
    python benchmarks/sweep_overhead.py --runs 200 --seconds 0,2 --containers 1 --concurrency 8
    python benchmarks/sweep_overhead.py --runs 10000 --seconds 0 --search random
    python benchmarks/sweep_overhead.py --runs 1000 --seconds 0 --search optuna --study-trials 10000

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
# A run that only waits: `sh noop.sh --i K --seconds S` sleeps S seconds; with --report it
# then prints `value=K` (an Optuna search's objective).
while [ $# -gt 0 ]; do
    case "$1" in --seconds) seconds=$2; shift ;; --i) i=$2; shift ;; --report) report=1 ;; esac
    shift
done
sleep "${seconds:-0}"
[ -n "$report" ] && echo "value=$i"
exit 0
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


def time_sweep(cluster: Path, project: Path, runs: int, seconds: float, search: str = "grid") -> float:
    params = project.parent / f"noop-{seconds:g}.yml"
    if search == "grid":
        params.write_text(f"i: !!python/tuple [0, {runs}]\nseconds: {seconds:g}\n")
        how = ["--max-combinations", str(max(runs, 10_000))]
    else:
        params.write_text(f"i: {{int: [0, 1000000000]}}\nseconds: {seconds:g}\nreport: true\n")
        how = ["--search", search, "--trials", str(runs), "--seed", "1", "--sort", "value"]
    started = time.monotonic()
    done = infra("sweep", "-f", str(cluster), str(params), "-q", *how,
                 "--name", f"noop-{seconds:g}", "--", "sh", "noop.sh", check=False)
    took = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"the sweep failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    with (project / "output" / f"sweep-noop-{seconds:g}.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == runs and all(row["status"] == "ok" for row in rows), "not every run finished ok"
    return took


def time_xargs(project: Path, runs: int, seconds: float, concurrency: int, report: bool = False) -> float:
    lines = "".join(f"--i {i} --seconds {seconds:g}{' --report' if report else ''}\n" for i in range(runs)).encode()
    started = time.monotonic()
    subprocess.run(["xargs", "-P", str(concurrency), "-L", "1", "sh", str(project / "noop.sh")], input=lines,
                   stdout=subprocess.DEVNULL, check=True)  # the runs' `value=K` lines, as the sweep keeps them
    return time.monotonic() - started


STUDY_SPACE = [{"name": "lr", "kind": "loguniform", "low": 1e-5, "high": 1e-1},
               {"name": "momentum", "kind": "uniform", "low": 0.5, "high": 0.99},
               {"name": "layers", "kind": "int", "low": 1, "high": 8},
               {"name": "optimizer", "kind": "choice", "choices": ["sgd", "adam"]}]


def time_study(trials: int, folder: Path) -> None:
    """Seconds per trial of the driver's study (journal file) beside Optuna's in-memory ask/tell."""
    sys.path.insert(0, str(REPO))
    import optuna

    from infra.runtime.study import StudyBook, distributions_of

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    dists, _ = distributions_of(STUDY_SPACE)
    print(f"{'sampler':>8} {'trials':>7} {'in-memory ask/tell':>19} {'driver study (journal)':>23} {'ratio':>6}")
    for sampler in ("random", "tpe"):
        baseline = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1) if sampler == "random"
                                       else optuna.samplers.TPESampler(seed=1))
        started = time.perf_counter()
        for n in range(trials):
            trial = baseline.ask(dists)
            baseline.tell(trial, trial.params["lr"] * n)
        memory = (time.perf_counter() - started) / trials
        book = StudyBook.open({"path": str(folder / f"study-{sampler}.journal"), "name": sampler, "metric": "value",
                               "sampler": sampler, "seed": 1, "pruner": "none", "space": STUDY_SPACE})
        started = time.perf_counter()
        for n in range(trials):
            trial, params = book.ask()
            book.begin(f"r{n}", trial)
            book.feed(f"r{n}", [f"value={dict(params)['lr'] * n}"])
            book.end(f"r{n}", "ok")
        journal = (time.perf_counter() - started) / trials
        print(f"{sampler:>8} {trials:>7} {memory * 1000:>16.2f} ms {journal * 1000:>20.2f} ms {journal / memory:>6.2f}",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000, help="combinations per measurement (default 1000)")
    parser.add_argument("--seconds", default="0,1", help="run lengths to measure, comma-separated (default 0,1)")
    parser.add_argument("--containers", type=int, default=2, help="worker containers (default 2)")
    parser.add_argument("--concurrency", type=int, default=4, help="processes per worker container (default 4)")
    parser.add_argument("--search", choices=["grid", "random", "optuna"], default="grid",
                        help="the runs as a grid (default), a random search's trials or an Optuna study's")
    parser.add_argument("--study-trials", type=int, default=0, metavar="M",
                        help="also time the driver's study code for M trials here (needs optuna)")
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
            xargs = time_xargs(project, args.runs, seconds, slots, report=args.search != "grid")
            sweep = time_sweep(cluster, project, args.runs, seconds, args.search)
            overhead = (sweep - xargs) * slots / args.runs
            results.append(f"{args.runs:>6} {seconds:>4g} {xargs:>8.1f}s {sweep:>7.1f}s {xargs / sweep:>6.0%} "
                           f"{overhead * 1000:>10.0f} ms")
            print(results[-1], flush=True)
        print()
        print(f"{slots} slots ({args.containers} x {args.concurrency}), {os.cpu_count()} CPU(s), "
              f"--search {args.search}; rate = xargs time / sweep time; overhead/run = (sweep - xargs) x slots / runs")
        print(header)
        for line in results:
            print(line)
        if args.study_trials:
            print()
            time_study(args.study_trials, folder)
    finally:
        if args.keep:
            print(f"cluster kept: infra clean -f {cluster} --volumes")
        else:
            infra("clean", "-f", str(cluster), "--volumes", check=False)
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
