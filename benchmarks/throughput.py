"""No-op task throughput of a deployed cluster beside plain `celery worker`s on the same hosts (P5).

It prints figures; it checks nothing. On a testbed of three SSH + Docker hosts (tests/testbed)
it brings up a cluster with `infra up`: master on h1, worker containers on h2 (2) and h3 (1),
concurrency 2 each, the sample project `wordcount`. From this machine, as a user would, a client
sends N `wordcount.noop` tasks over AMQPS and waits for all N results from Redis over TLS; the
figure is N / (time from the first send to the last result).

In the same run, on the same hosts, with the same image, environment, mounts, user, broker and
result backend, the baseline: infra's workers are stopped and as many plain
`celery -A wordcount worker --concurrency C` containers (Celery's defaults otherwise) are started
with `docker run`, then the same N tasks are timed. Rounds alternate between the sides; medians of
`--repeat` rounds are printed side by side.

`--events-off` also times infra's workers with `events: false` in the cluster file (a second
`infra up`), to show what `--task-events` costs; `--also KEY=VALUE` does the same for any worker
group setting, `--plain-args ARGS` adds a plain side with extra arguments.

    python benchmarks/throughput.py                       # 5,000 tasks, 3 rounds
    python benchmarks/throughput.py --tasks 2000 --repeat 1 --events-off --also loglevel=WARNING
    python benchmarks/throughput.py --plain-args '--loglevel INFO'   # one more plain side

Needs: root, a running Docker engine, the base image `infra-base:bookworm` and the wheelhouse
`.cache/wheels` (both made by scripts/run-tests.sh). Traffic stays on the testbed's addresses.
Everything it starts (testbed, cluster, plain workers) is removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
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

from benchmarks.clusters import sample_project  # noqa: E402
from tests.e2e.clients import celery_client  # noqa: E402
from tests.e2e.test_cluster import TEST_IMAGES as IMAGES  # noqa: E402  the e2e tests' images, built once
from tests.e2e.test_cluster import WHEELHOUSE  # noqa: E402
from tests.testbed import Testbed  # noqa: E402

NAME = "tput"
INFRA = "infra (its defaults)"
PLAIN = "plain celery worker"
TASK = "wordcount.noop"
PLAIN_LABEL = "infra-bench-throughput=plain"
WORKERS = (("h2", 2), ("h3", 1))  # (host, containers): 3 worker containers, as in the issue


def cluster_file(folder: Path, testbed: Testbed, concurrency: int, settings: dict | None = None) -> Path:
    h1, h2, h3 = testbed.docker_hosts[:3]
    project = sample_project(folder)
    group = {"concurrency": concurrency, **(settings or {})}
    spec = {
        "name": NAME,
        "hosts": testbed.cluster_hosts([h1, h2, h3]),
        "project": {"path": str(project), "app": "wordcount", "remote_path": f"infra-bench-{NAME}"},
        "roles": {"master": {"host": h1.name},
                  "workers": [{"host": host, "containers": count, **group} for host, count in WORKERS]},
        "images": IMAGES,
        "ssh": {"connect_timeout": 5, "known_hosts": str(testbed.known_hosts_path)},
        "state_dir": str(folder / "state"),
    }
    path = folder / "cluster.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def infra(*args: str, ok: tuple[int, ...] = (0,)) -> float:
    """Run an infra command of this checkout; seconds it took. Fails loudly if it fails."""
    began = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "infra", *args], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO, timeout=1800)
    if result.returncode not in ok:
        raise SystemExit(f"`infra {' '.join(args)}` failed with {result.returncode}:\n"
                         f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return time.perf_counter() - began


def infra_workers(testbed: Testbed) -> dict[str, list[str]]:
    """Names of infra's worker containers per host (running or not)."""
    return {host: testbed.exec(host, f"docker ps -a --filter label=infra.cluster={NAME} "
                                     "--filter label=infra.role=worker --format '{{.Names}}'").split()
            for host, _ in WORKERS}


def plain_run_argv(inspected: dict, name: str, concurrency: int, extra: list[str]) -> list[str]:
    """`docker run` of a plain Celery worker with everything of infra's container but its command:
    image, environment (the broker and backend come from the same env file), mounts, user, folder."""
    config = inspected["Config"]
    argv = ["docker", "run", "--detach", "--name", name, "--label", PLAIN_LABEL, "--network", "host",
            "--user", config["User"], "--workdir", config["WorkingDir"]]
    for mount in inspected["Mounts"]:
        argv += ["--volume", f"{mount['Source']}:{mount['Destination']}:{'rw' if mount['RW'] else 'ro'}"]
    for variable in config["Env"]:
        argv += ["--env", variable]
    # A node name per container (with host networking they would all be celery@HOST); no other option.
    return argv + [inspected["Image"], "celery", "-A", "wordcount", "worker", "--concurrency", str(concurrency),
                   "--hostname", f"{name}@%h", *extra]


class Plain:
    """Plain Celery workers in place of infra's, for the length of a `with` block."""

    def __init__(self, testbed: Testbed, concurrency: int, extra: list[str]):
        self.testbed, self.concurrency, self.extra = testbed, concurrency, extra
        self.names: list[str] = []

    def __enter__(self) -> list[str]:
        try:
            for host, names in infra_workers(self.testbed).items():
                inspected = json.loads(self.testbed.exec(host, f"docker inspect {names[0]}"))[0]
                self.testbed.exec(host, "docker stop -t 20 " + " ".join(names), timeout=60)
                for index in range(len(names)):
                    name = f"plain-{host}-{index + 1}"
                    self.testbed.exec(host, shlex.join(plain_run_argv(inspected, name, self.concurrency, self.extra)))
                    self.names.append(f"{name}@{host}")
        except BaseException:
            self.__exit__()
            raise
        return self.names

    def __exit__(self, *exc) -> None:
        for host, names in infra_workers(self.testbed).items():
            self.testbed.exec_result(host, f"docker rm -f $(docker ps -aq --filter label={PLAIN_LABEL}) 2>/dev/null")
            self.testbed.exec(host, "docker start " + " ".join(names), timeout=60)


def wait_for(app, nodes: int, timeout: float = 120) -> None:
    """Until `nodes` workers answer a ping (all of one side, none of the other is left)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(app.control.ping(timeout=1.0)) == nodes:
            return
        time.sleep(1)
    raise SystemExit(f"{nodes} workers did not answer a ping within {timeout:.0f} s")


def send_and_wait(app, count: int, timeout: float) -> tuple[float, float]:
    """Seconds from the first send of `count` no-op tasks to the last result, and to the last send."""
    from celery.result import ResultSet

    began = time.perf_counter()
    with app.producer_or_acquire() as producer:
        results = [app.send_task(TASK, producer=producer) for _ in range(count)]
    sent = time.perf_counter() - began
    ResultSet(results).join_native(timeout=timeout, propagate=True)
    took = time.perf_counter() - began
    for result in results:
        result.forget()
    return took, sent


def measure(app, label: str, nodes: int, tasks: int, timeout: float, figures: dict) -> None:
    wait_for(app, nodes)
    send_and_wait(app, max(tasks // 50, 20), timeout)  # warm-up: pools, connections, caches
    took, sent = send_and_wait(app, tasks, timeout)
    figures.setdefault(label, []).append(tasks / took)
    print(f"  {label:40} {tasks / took:8.1f} tasks/s  ({took:.2f} s, all sent after {sent:.2f} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5000, help="no-op tasks per measurement (default 5000)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; medians reported (default 3)")
    parser.add_argument("--concurrency", type=int, default=2, help="processes per worker container (default 2)")
    parser.add_argument("--events-off", action="store_true",
                        help="also time infra's workers with `events: false` (same as --also events=false)")
    parser.add_argument("--also", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                        help="also time infra's workers with these worker group settings, after the rounds "
                             "(one more `infra up` each), e.g. loglevel=WARNING; may be repeated")
    parser.add_argument("--plain-args", action="append", default=[], metavar="ARGS",
                        help="one more plain side: plain workers with these extra arguments, "
                             "e.g. '--loglevel INFO'; may be repeated")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for one batch's results")
    options = parser.parse_args()
    if not WHEELHOUSE.is_dir():
        raise SystemExit("run scripts/make-wheelhouse.sh .cache/wheels first (scripts/run-tests.sh does)")
    for name in ("celery", "kombu", "amqp", "redis"):
        logging.getLogger(name).setLevel(logging.CRITICAL)

    nodes = sum(count for _, count in WORKERS)
    work = Path(tempfile.mkdtemp(prefix="infra-bench-throughput-"))
    figures: dict[str, list[float]] = {}
    try:  # closing the testbed removes every container on its hosts, infra's and the plain ones
        with Testbed.start(hosts=3, prefix=f"infra-bench-tput-{os.getpid()}") as testbed:
            path = cluster_file(work, testbed, options.concurrency)
            print(f"cold up: {infra('up', '-f', str(path)):.1f} s", flush=True)
            app = celery_client(work / "state" / NAME, testbed.docker_hosts[0].address, NAME)
            sides = [(INFRA, None), (PLAIN, [])]
            sides += [(f"plain celery worker {args}", shlex.split(args)) for args in options.plain_args]
            for round_ in range(options.repeat):
                print(f"round {round_ + 1}/{options.repeat}", flush=True)
                for label, extra in sides[round_ % len(sides):] + sides[:round_ % len(sides)]:
                    if extra is None:
                        measure(app, label, nodes, options.tasks, options.timeout, figures)
                    else:
                        with Plain(testbed, options.concurrency, extra):
                            measure(app, label, nodes, options.tasks, options.timeout, figures)
            for settings in (["events=false"] if options.events_off else []) + options.also:
                pairs = dict(pair.split("=", 1) for pair in settings.split(","))
                path = cluster_file(work, testbed, options.concurrency,
                                    {key: yaml.safe_load(value) for key, value in pairs.items()})
                label = "infra (" + ", ".join(f"{key}: {value}" for key, value in pairs.items()) + ")"
                print(f"up with {label}: {infra('up', '-f', str(path)):.1f} s", flush=True)
                for round_ in range(options.repeat):
                    measure(app, label, nodes, options.tasks, options.timeout, figures)
            app.close()
            infra("clean", "-f", str(path), "--files", "--volumes", ok=(0, 1))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print()
    base = statistics.median(figures[PLAIN])
    print(f"{'':40} {'tasks/s':>9} {'/ plain':>8}   (medians of {options.repeat} rounds of {options.tasks} no-op tasks)")
    for label, rates in figures.items():
        rate = statistics.median(rates)
        print(f"{label:40} {rate:9.1f} {rate / base:8.2f}   runs: {', '.join(f'{r:.0f}' for r in rates)}")
    # The same ratio taken round by round: both sides of a round met the same machine, so this
    # one does not move with the load from one round to the next.
    paired = [infra / plain for infra, plain in zip(figures[INFRA], figures[PLAIN])]
    print(f"infra / plain round by round: {', '.join(f'{r:.2f}' for r in paired)}; "
          f"median {statistics.median(paired):.2f}, infra ahead in {sum(r >= 1 for r in paired)} of {len(paired)}")
    print(json.dumps({"tasks": options.tasks, "repeat": options.repeat, "concurrency": options.concurrency,
                      "containers": nodes, **{label: statistics.median(r) for label, r in figures.items()},
                      "ratio": statistics.median(figures[INFRA]) / base,
                      "paired_ratios": [round(r, 3) for r in paired]}))


if __name__ == "__main__":
    main()
