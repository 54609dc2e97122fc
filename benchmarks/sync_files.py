"""P3: `infra sync-files` of one changed file in a 1,000-file project to 3 hosts, beside `rsync -c` over ssh.

It prints figures; it checks nothing. On a testbed of three SSH + Docker hosts (tests/testbed)
it brings up a cluster once with `infra up` (master on h1, one worker each on h2 and h3; no
`local`), so the hosts hold the cluster's folders. The project is 1,000 generated files of
realistic sizes (mostly small source files, some data files, a few of 1-2 MB; about 30 MB).
Each round changes one file, then times as whole processes, in rotating order:

- `infra sync-files -f CLUSTER --no-restart` (this checkout; with `--baseline REV` also the infra
  of git revision REV, from a temporary worktree, on the same cluster);
- `rsync -c -r` over ssh (the same key, known_hosts and user) to the same 3 hosts in parallel,
  into a scratch folder on each host that was fully synced before the first round.

Both sides compare contents and send only what differs. rsync -c checksums every file on both
ends on every run; infra hashes only the files whose status changed since its last run (it keeps
the digests of both ends in its state dir, see README "sync-files").

infra runs with its bytecode compiled, as an installed infra does (`pip install` compiles it):
the runs share a bytecode folder in the scratch folder (PYTHONPYCACHEPREFIX), filled by the
warm-up run, even where PYTHONDONTWRITEBYTECODE is set; nothing is written into the checkout.

    python benchmarks/sync_files.py --repeat 5
    python benchmarks/sync_files.py --repeat 5 --baseline HEAD

Needs: root, a running Docker engine, the base image `infra-base:bookworm`, the wheelhouse
`.cache/wheels` (both made by scripts/run-tests.sh), and rsync here (`apt-get install -y rsync`;
the testbed hosts' image has it). Traffic stays on the testbed's addresses.
"""

from __future__ import annotations

import argparse
import json
import os
import random
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

from benchmarks.revisions import checkout, remove_checkout  # noqa: E402
from tests.e2e.test_cluster import TEST_IMAGES as IMAGES  # noqa: E402  the e2e tests' images, built once
from tests.e2e.test_cluster import WHEELHOUSE  # noqa: E402
from tests.testbed import Testbed  # noqa: E402

SCRATCH = "/root/rsync-scratch"  # on each host: rsync's copy of the project


def make_project(root: Path, files: int, seed: int = 12) -> int:
    """`files` files in nested folders: 90 % source-like (0.3-30 kB), 9 % data (30-300 kB), 1 % 1-2 MB.
    Returns the total size."""
    rng = random.Random(seed)
    total = 0
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz_") for _ in range(rng.randint(2, 9))) for _ in range(500)]
    for i in range(files):
        kind = rng.random()
        if kind < 0.01:
            size, ext = rng.randint(1_000_000, 2_000_000), ".bin"
        elif kind < 0.10:
            size, ext = rng.randint(30_000, 300_000), ".csv"
        else:
            size, ext = int(min(30_000, max(300, rng.lognormvariate(8.3, 0.9)))), ".py"
        folder = root / f"pkg{i % 10}" / f"mod{i % 37}"
        folder.mkdir(parents=True, exist_ok=True)
        if ext == ".bin":
            data = rng.randbytes(size)
        else:
            line = b" ".join(rng.choice(words) for _ in range(12)) + b"\n"
            data = (line * (size // len(line) + 1))[:size - 8] + rng.randbytes(4).hex().encode()
        (folder / f"file{i:04d}{ext}").write_bytes(data)
        total += len(data)
    return total


def cluster_file(folder: Path, testbed: Testbed, project: Path) -> Path:
    h1, h2, h3 = testbed.docker_hosts[:3]
    spec = {
        "name": "bench",
        "hosts": testbed.cluster_hosts([h1, h2, h3]),
        "project": {"path": str(project), "remote_path": "infra-bench-sync"},
        "roles": {"master": {"host": h1.name}, "workers": [
            {"host": h2.name, "containers": 1, "concurrency": 1},
            {"host": h3.name, "containers": 1, "concurrency": 1},
        ]},
        "images": IMAGES,
        "ssh": {"connect_timeout": 5, "known_hosts": str(testbed.known_hosts_path)},
        "state_dir": str(folder / "state"),
    }
    path = folder / "cluster.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


BYTECODE: Path | None = None  # where the infra runs keep their compiled modules (set in main)


def run_infra(source: Path, *args: str, ok: tuple[int, ...] = (0,)) -> tuple[float, str]:
    """Seconds the infra command of `source` takes, whole process, and its output; fails loudly if it fails."""
    env = {**os.environ, "PYTHONPATH": str(source)}
    if BYTECODE is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(BYTECODE)
    began = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "infra", *args], capture_output=True, text=True, env=env,
                            cwd=source, timeout=1800)
    took = time.perf_counter() - began
    if result.returncode not in ok:
        raise SystemExit(f"`infra {' '.join(args)}` ({source}) failed with {result.returncode}:\n"
                         f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return took, result.stdout + result.stderr


def rsync_all(testbed: Testbed, project: Path) -> tuple[float, list[str]]:
    """`rsync -c -r` of the project to every host at once: seconds from the first spawn to the last exit."""
    commands = []
    for host in testbed.docker_hosts[:3]:
        ssh = (f"ssh -i {host.key_path} -p {host.port} -o BatchMode=yes -o IdentitiesOnly=yes "
               f"-o UserKnownHostsFile={testbed.known_hosts_path} -o StrictHostKeyChecking=yes")
        commands.append(["rsync", "-c", "-r", "--delete", "--itemize-changes", "-e", ssh,
                         f"{project}/", f"{host.user}@{host.address}:{SCRATCH}/"])
    began = time.perf_counter()
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for c in commands]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    took = time.perf_counter() - began
    for proc, out in zip(procs, outputs):
        if proc.returncode != 0:
            raise SystemExit(f"rsync failed with {proc.returncode}:\n{out[-2000:]}")
    return took, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="rounds (one changed file each); medians reported")
    parser.add_argument("--files", type=int, default=1000, help="files in the generated project")
    parser.add_argument("--baseline", metavar="REV", help="also time the sync-files of this git revision")
    options = parser.parse_args()
    if not WHEELHOUSE.is_dir():
        raise SystemExit("run scripts/make-wheelhouse.sh .cache/wheels first (scripts/run-tests.sh does)")
    if shutil.which("rsync") is None:
        raise SystemExit("rsync is missing here: apt-get install -y rsync")

    work = Path(tempfile.mkdtemp(prefix="infra-bench-sync-"))
    global BYTECODE
    BYTECODE = work / "bytecode"
    worktree = None
    sources = {"this checkout": REPO}
    try:
        if options.baseline:
            worktree = checkout(options.baseline, work / "baseline-src")
            sources = {f"baseline {options.baseline}": worktree, **sources}
        times: dict[str, dict[str, list[float]]] = {label: {"infra": [], "rsync": []} for label in sources}
        project = work / "project"
        size = make_project(project, options.files)
        print(f"project: {options.files} files, {size / 1e6:.1f} MB", flush=True)
        with Testbed.start(hosts=3, prefix=f"infra-bench-sync-{os.getpid()}") as testbed:
            for host in testbed.docker_hosts[:3]:
                code, out = testbed.ssh(host, "command -v rsync")
                if code != 0:  # the testbed image carries it; an older one may not
                    print(f"{host.name}: installing rsync", flush=True)
                    testbed.exec(host, "apt-get update && apt-get install -y rsync")
            path = str(cluster_file(work, testbed, project))
            print("infra up (once) ...", flush=True)
            took, _ = run_infra(REPO, "up", "-f", path)
            print(f"infra up: {took:.1f} s", flush=True)
            try:
                took, _ = rsync_all(testbed, project)
                print(f"first rsync (everything): {took:.2f} s", flush=True)
                for label, source in sources.items():  # warm-up, not timed: nothing to send
                    run_infra(source, "sync-files", "-f", path, "--no-restart")
                candidates = sorted(project.rglob("*.py"))
                loads: list[float] = []  # the 1-minute load average after each round
                changes = 0
                for label, source in sources.items():
                    # One changed file per round, sent by both sides: infra's folder and rsync's
                    # are apart, so each sees exactly that one change.
                    for round_ in range(options.repeat):
                        changes += 1
                        changed = candidates[(changes * 97) % len(candidates)]
                        with changed.open("a") as f:
                            f.write(f"# change {changes}\n")
                        line = []
                        for side in (("infra", "rsync") if round_ % 2 == 0 else ("rsync", "infra")):
                            if side == "rsync":
                                took, outputs = rsync_all(testbed, project)
                                sent = sum(1 for out in outputs for row in out.splitlines() if row.startswith("<f"))
                                if sent != 3:
                                    raise SystemExit(f"rsync sent {sent} files, not 1 per host:\n{outputs}")
                                times[label]["rsync"].append(took)
                            else:
                                took, out = run_infra(source, "sync-files", "-f", path, "--no-restart")
                                if out.count("sent 1 file(s)") != 3:
                                    raise SystemExit(f"sync-files did not send exactly 1 file per host:\n{out}")
                                times[label]["infra"].append(took)
                            line.append(f"{side} {took:.2f} s")
                        loads.append(os.getloadavg()[0])
                        print(f"{label}: round {round_ + 1}/{options.repeat}: " + ", ".join(line)
                              + f" (load {loads[-1]:.2f})", flush=True)
            finally:
                run_infra(REPO, "clean", "-f", path, "--files", "--volumes", ok=(0, 1))
    finally:
        remove_checkout(worktree)
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"P3: `sync-files --no-restart` of 1 changed file in a {options.files}-file project to 3 hosts / "
          f"`rsync -c` over ssh to the same 3 hosts in parallel (medians of {options.repeat}, s)")
    print(f"{'':28} {'sync-files':>11} {'rsync -c ×3':>12} {'ratio':>7}")
    medians = {}
    for label in sources:
        infra, rsync = statistics.median(times[label]["infra"]), statistics.median(times[label]["rsync"])
        medians[label] = {"infra": round(infra, 3), "rsync": round(rsync, 3), "ratio": round(infra / rsync, 2)}
        print(f"{label:28} {infra:11.2f} {rsync:12.2f} {infra / rsync:7.2f}")
    print(f"load average (1 min) after the rounds: {min(loads):.2f}-{max(loads):.2f}; "
          f"{os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(json.dumps({"files": options.files, "repeat": options.repeat, "medians": medians,
                      "loadavg_1m": [round(x, 2) for x in loads],
                      "runs": {k: {side: [round(t, 3) for t in v] for side, v in sides.items()}
                               for k, sides in times.items()}}))


if __name__ == "__main__":
    main()
