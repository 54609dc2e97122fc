"""No-op `infra up` beside `infra status` on a healthy cluster, for this checkout and (optionally) another revision.

It prints figures; it checks nothing. On a testbed of three SSH + Docker hosts (tests/testbed)
plus this machine, it brings up the same cluster as the end-to-end tests (master on h1,
workers on h2, h3 and local), then times, as whole processes the way a user runs them,
`infra status` and a second `infra up` (nothing to do) alternately, `--repeat` times each.

With `--baseline REV`, the same is measured first for the infra of git revision REV (checked
out into a temporary worktree and run from there with this checkout's Python environment),
on the same testbed, in the same run: the figures stand side by side.

    python benchmarks/noop_up.py --repeat 5
    python benchmarks/noop_up.py --repeat 5 --baseline 3f86307

Needs: root, a running Docker engine, the base image `infra-base:bookworm` and the wheelhouse
`.cache/wheels` (both made by scripts/run-tests.sh). Traffic stays on the testbed's addresses.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.clusters import e2e_shape  # noqa: E402
from benchmarks.revisions import checkout, remove_checkout  # noqa: E402
from tests.e2e.test_cluster import TEST_IMAGES as IMAGES  # noqa: E402  the e2e tests' images, built once
from tests.e2e.test_cluster import WHEELHOUSE  # noqa: E402
from tests.testbed import Testbed  # noqa: E402



def cluster_file(folder: Path, testbed: Testbed, name: str, known_hosts: bool = True) -> Path:
    """The benchmark's cluster file: the e2e cluster's shape (see `benchmarks.clusters.e2e_shape`)."""
    path = folder / "cluster.yaml"
    path.write_text(yaml.safe_dump(e2e_shape(folder, testbed, name, IMAGES, known_hosts=known_hosts), sort_keys=False))
    return path


def timed(source: Path, *args: str, ok: tuple[int, ...] = (0,)) -> float:
    """Seconds the infra command of `source` takes, whole process; fails loudly if it fails."""
    env = {**os.environ, "PYTHONPATH": str(source)}
    began = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "infra", *args], capture_output=True, text=True, env=env,
                            cwd=source, timeout=1800)
    took = time.perf_counter() - began
    if result.returncode not in ok:
        raise SystemExit(f"`infra {' '.join(args)}` ({source}) failed with {result.returncode}:\n"
                         f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return took


def measure(label: str, source: Path, testbed: Testbed, folder: Path, repeat: int) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    knows_host_keys = (source / "infra" / "hostkeys.py").exists()
    path = str(cluster_file(folder, testbed, "bench", known_hosts=knows_host_keys))
    print(f"{label}: cold up ...", flush=True)
    cold = timed(source, "up", "-f", path)
    figures = {"label": label, "cold_up": cold, "status": [], "noop_up": []}
    try:
        for round_ in range(repeat):
            figures["status"].append(timed(source, "status", "-f", path))
            figures["noop_up"].append(timed(source, "up", "-f", path))
            print(f"{label}: round {round_ + 1}/{repeat}: status {figures['status'][-1]:.2f} s, "
                  f"no-op up {figures['noop_up'][-1]:.2f} s", flush=True)
    finally:
        timed(source, "clean", "-f", path, "--files", "--volumes", ok=(0, 1))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="rounds of (status, no-op up); medians reported")
    parser.add_argument("--baseline", metavar="REV", help="also measure the infra of this git revision, first")
    options = parser.parse_args()
    if not WHEELHOUSE.is_dir():
        raise SystemExit("run scripts/make-wheelhouse.sh .cache/wheels first (scripts/run-tests.sh does)")

    work = Path(tempfile.mkdtemp(prefix="infra-bench-noop-"))
    results = []
    worktree = None
    try:
        with Testbed.start(hosts=3, prefix=f"infra-bench-{os.getpid()}") as testbed:
            if options.baseline:
                worktree = checkout(options.baseline, work / "baseline-src")
                results.append(measure(f"baseline {options.baseline}", worktree, testbed, work / "baseline",
                                       options.repeat))
            results.append(measure("this checkout", REPO, testbed, work / "current", options.repeat))
    finally:
        remove_checkout(worktree)
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"{'':24} {'cold up':>9} {'status':>9} {'no-op up':>9} {'no-op up / status':>18}   (medians of {options.repeat}, s)")
    for figures in results:
        status = statistics.median(figures["status"])
        noop = statistics.median(figures["noop_up"])
        print(f"{figures['label']:24} {figures['cold_up']:9.2f} {status:9.2f} {noop:9.2f} {noop / status:18.2f}")


if __name__ == "__main__":
    main()
