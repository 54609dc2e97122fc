"""A large job: N no-op tasks as one Celery group, collected with `.get()`, infra beside plain Celery.

It prints figures; it checks nothing. On this machine alone it brings up an infra cluster
(master and worker containers on `local`, the sample project `wordcount`, TLS and Redis ACL users:
infra's defaults) and, in the same run, a plain Celery stack of Celery's defaults on the same
images: `rabbitmq-server` and `redis-server` with no configuration (no TLS, no ACL, guest login)
and as many `celery -A wordcount worker --concurrency C` containers. For each N of `--tasks`
(10,000 and 40,000 by default) a client in this process sends
`group(wordcount.noop.s() for _ in range(N)).apply_async()` and times `.get()`, the way a user's
client collects a large job; infra's client talks AMQPS and TLS Redis as the `master` user.

Printed per side and N: the time to send, the time of `.get()` (send + get = total), tasks/s,
infra / plain and the 40k/10k scaling (4.0 is linear), and what the result backend saw
(`INFO stats`: clients Redis disconnected for their output buffer, connections received).
A `.get()` that does not return within `--timeout` is printed as a timeout, with how many
results were stored by then.

    python benchmarks/large_job.py                        # 10,000 and 40,000; about 6 minutes
    python benchmarks/large_job.py --tasks 2000 --sides infra --profile   # cProfile of the last .get()

Needs: a running Docker engine, the base image `infra-base:bookworm` and the wheelhouse
`.cache/wheels` (scripts/run-tests.sh makes both). Ports 5791/6791/5891 (infra) and 5792/6792
(plain) on 127.0.0.1. Everything it starts is removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import pstats
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.clusters import sample_project  # noqa: E402
from benchmarks.throughput import infra  # noqa: E402
from tests.e2e.clients import celery_client  # noqa: E402
from tests.e2e.test_cluster import WHEELHOUSE  # noqa: E402

NAME = "largejob"
TASK = "wordcount.noop"
INFRA, PLAIN = "infra", "plain"
PORTS = {"broker": 5791, "results": 6791, "flower": 5891}
PLAIN_BROKER_PORT, PLAIN_RESULTS_PORT = 5792, 6792
PLAIN_LABEL = "infra-bench-large-job=plain"
# Its own image names: the e2e tests of other sessions rebuild infra-test-* meanwhile.
IMAGES = {"source": "ship", "base": "infra-base:bookworm", "wheelhouse": str(WHEELHOUSE),
          **{role: f"infra-bench-largejob-{role}:latest" for role in ("worker", "master", "broker")}}


def docker(*args: str, timeout: float = 120, check: bool = True) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise SystemExit(f"docker {' '.join(args[:3])}… failed: {done.stderr.strip()[-1000:]}")
    return done.stdout.strip()


def cluster_file(folder: Path, containers: int, concurrency: int) -> Path:
    spec = {
        "name": NAME,
        "project": {"path": str(sample_project(folder)), "app": "wordcount"},
        "roles": {"master": {"host": "local"},
                  "workers": [{"host": "local", "containers": containers, "concurrency": concurrency}]},
        "images": IMAGES,
        "ports": PORTS,
        "state_dir": str(folder / "state"),
    }
    path = folder / "cluster.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def infra_containers(role: str | None = None) -> list[str]:
    label = ["--filter", f"label=infra.role={role}"] if role else []
    return docker("ps", "-aq", "--filter", f"label=infra.cluster={NAME}", *label).split()


class PlainStack:
    """RabbitMQ, Redis and `celery worker`s with Celery's defaults, for the length of a `with` block."""

    def __init__(self, project: Path, containers: int, concurrency: int, redis_args: list[str] = ()):
        self.project, self.containers, self.concurrency = project, containers, concurrency
        self.redis_args = list(redis_args)

    def run(self, name: str, *argv: str, env: dict[str, str] | None = None) -> None:
        env_args = [arg for key, value in (env or {}).items() for arg in ("--env", f"{key}={value}")]
        docker("run", "--detach", "--name", f"lj-plain-{name}", "--label", PLAIN_LABEL, "--network", "host",
               *env_args, *argv)

    def __enter__(self) -> PlainStack:
        try:
            # Host networking, so that RabbitMQ's guest user (loopback only) is let in; ports of its own.
            self.run("broker", "--user", "rabbitmq", IMAGES["broker"], "rabbitmq-server",
                     env={"RABBITMQ_NODE_PORT": str(PLAIN_BROKER_PORT), "RABBITMQ_DIST_PORT": "25792",
                          "ERL_EPMD_PORT": "4392", "RABBITMQ_NODENAME": "plain@localhost",
                          "HOME": "/tmp", "RABBITMQ_MNESIA_BASE": "/tmp/mnesia", "RABBITMQ_LOG_BASE": "/tmp/log"})
            self.run("results", "--user", "celery", IMAGES["master"],
                     "redis-server", "--port", str(PLAIN_RESULTS_PORT), "--dir", "/tmp", *self.redis_args)
            env = {"CELERY_BROKER_URL": f"amqp://guest:guest@127.0.0.1:{PLAIN_BROKER_PORT}//",
                   "CELERY_RESULT_BACKEND": f"redis://127.0.0.1:{PLAIN_RESULTS_PORT}/0"}
            for index in range(1, self.containers + 1):
                self.run(f"worker-{index}", "--volume", f"{self.project}:/project:ro", "--workdir", "/project",
                         IMAGES["worker"], "celery", "-A", "wordcount", "worker",
                         "--concurrency", str(self.concurrency), "--hostname", f"plain{index}@%h", env=env)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        names = docker("ps", "-aq", "--filter", f"label={PLAIN_LABEL}").split()
        if names:
            docker("rm", "-f", *names, check=False)

    def client(self):
        from celery import Celery

        app = Celery(broker=f"amqp://guest:guest@127.0.0.1:{PLAIN_BROKER_PORT}//",
                     backend=f"redis://127.0.0.1:{PLAIN_RESULTS_PORT}/0")
        app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                        broker_connection_retry_on_startup=True)
        return app

    @staticmethod
    def redis(*command: str) -> str:
        return docker("exec", "lj-plain-results", "redis-cli", "-p", str(PLAIN_RESULTS_PORT), *command)


def infra_redis(*command: str) -> str:
    """redis-cli in infra's results container, as its administrator (whose URL only that container holds)."""
    results = infra_containers("results")[0]
    return docker("exec", results, "sh", "-c", 'redis-cli --no-auth-warning -u "$(cat /run/infra/admin.url)" "$@"',
                  "redis-cli", *command)


def redis_stats(redis) -> dict[str, int]:
    wanted = ("client_output_buffer_limit_disconnections", "total_connections_received", "total_commands_processed")
    stats = dict(line.split(":", 1) for line in redis("INFO", "stats").splitlines() if ":" in line)
    return {key: int(stats[key]) for key in wanted if key in stats}


def wait_for_workers(app, nodes: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if len(app.control.ping(timeout=1.0)) >= nodes:
                return
        except Exception:  # the broker is still starting (kombu's OperationalError)
            pass
        time.sleep(1)
    raise SystemExit(f"{nodes} workers did not answer a ping within {timeout:.0f} s")


def pubsub_backlog(redis) -> str:
    """What Redis holds for the client's pub/sub link: its channels and its output buffer (`omem`)."""
    clients = [dict(field.split("=", 1) for field in line.split() if "=" in field)
               for line in redis("CLIENT", "LIST", "TYPE", "pubsub").splitlines()]
    return ", ".join(f"{c.get('sub')} channels, omem {int(c.get('omem', 0)) / 2**20:.1f} MiB" for c in clients)


def run_group(app, count: int, timeout: float, profile: bool, redis=None) -> dict:
    """Send `count` no-op tasks as one group and time `.get()`."""
    from celery import group

    began = time.perf_counter()
    result = group(app.signature(TASK) for _ in range(count)).apply_async()
    sent = time.perf_counter() - began
    profiler = cProfile.Profile() if profile else None
    outcome = {"sent_s": sent, "backlog_at_get": pubsub_backlog(redis) if redis else ""}
    try:
        if profiler:
            profiler.enable()
        values = result.get(timeout=timeout)
        outcome["get_s"] = time.perf_counter() - began - sent
        assert len(values) == count
    except Exception as exc:  # celery's TimeoutError among others: the figure is the failure
        outcome["error"] = f"{type(exc).__name__} after {time.perf_counter() - began - sent:.0f} s"
    finally:
        if profiler:
            profiler.disable()
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(25)
            outcome["profile"] = text.getvalue()
    outcome["total_s"] = time.perf_counter() - began
    return outcome


def measure(app, side: str, redis, counts: list[int], nodes: int, options, figures: dict) -> None:
    wait_for_workers(app, nodes)
    run_group(app, 200, 60, False)  # warm-up: connections, pools, the pub/sub link
    for count in counts:
        before = redis_stats(redis)
        outcome = run_group(app, count, options.timeout, options.profile and count == counts[-1], redis)
        after = redis_stats(redis)
        outcome["redis"] = {key: after[key] - before.get(key, 0) for key in after}
        stored = redis("EVAL", "return #redis.call('KEYS', 'celery-task-meta-*')", "0")
        outcome["stored"] = stored
        figures[(side, count)] = outcome
        took = f"get {outcome['get_s']:.1f} s" if "get_s" in outcome else outcome["error"]
        print(f"  {side:6} {count:>6} tasks: sent in {outcome['sent_s']:.1f} s, {took}, "
              f"total {outcome['total_s']:.1f} s; results stored: {stored}; redis: {outcome['redis']}; "
              f"pub/sub at .get(): {outcome['backlog_at_get']}", flush=True)
        if "profile" in outcome:
            print(outcome["profile"], flush=True)


def report(figures: dict, counts: list[int]) -> None:
    def total(side, count):
        outcome = figures.get((side, count), {})
        return outcome["total_s"] if "get_s" in outcome else None

    print()
    print(f"{'tasks':>7} {'infra s':>9} {'plain s':>9} {'infra/plain':>12} {'infra tasks/s':>14} {'plain tasks/s':>14}")
    for count in counts:
        mine, base = total(INFRA, count), total(PLAIN, count)
        def cell(side, value, spec):
            return f"{value:{spec}}" if value else "timeout" if (side, count) in figures else "-"
        print(f"{count:>7} {cell(INFRA, mine, '9.1f'):>9} {cell(PLAIN, base, '9.1f'):>9} "
              f"{(f'{mine / base:12.2f}' if mine and base else '-'):>12} "
              f"{(f'{count / mine:14.0f}' if mine else '-'):>14} {(f'{count / base:14.0f}' if base else '-'):>14}")
    if len(counts) >= 2:
        small, large = counts[0], counts[-1]
        for side in (INFRA, PLAIN):
            a, b = total(side, small), total(side, large)
            if a and b:
                print(f"{side}: {large}/{small} time ratio {b / a:.2f} (linear: {large / small:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="10000,40000", help="group sizes, comma-separated (default 10000,40000)")
    parser.add_argument("--sides", default="plain,infra", help="which stacks, in this order (default plain,infra)")
    parser.add_argument("--containers", type=int, default=1, help="worker containers per side (default 1)")
    parser.add_argument("--concurrency", type=int, default=2, help="processes per worker container (default 2)")
    parser.add_argument("--timeout", type=float, default=240, help="seconds `.get()` may take (default 240)")
    parser.add_argument("--profile", action="store_true", help="cProfile the `.get()` of the largest group")
    parser.add_argument("--plain-redis-args", default="", metavar="ARGS",
                        help="extra redis-server arguments of the plain side, e.g. "
                             "'--client-output-buffer-limit \"pubsub 256mb 0 0\"' (infra's setting)")
    parser.add_argument("--keep", action="store_true", help="leave infra's cluster running")
    options = parser.parse_args()
    counts = [int(n) for n in options.tasks.split(",")]
    sides = options.sides.split(",")
    if not WHEELHOUSE.is_dir():
        raise SystemExit("run scripts/make-wheelhouse.sh .cache/wheels first (scripts/run-tests.sh does)")
    for name in ("celery", "kombu", "amqp", "redis"):
        logging.getLogger(name).setLevel(logging.CRITICAL)

    work = Path(tempfile.mkdtemp(prefix="infra-bench-large-job-"))
    figures: dict = {}
    path = cluster_file(work, options.containers, options.concurrency)
    try:
        # Images first (and the cluster, stopped again at once if plain comes first): both sides use them.
        print(f"infra up: {infra('up', '-f', str(path)):.1f} s", flush=True)
        for side in sides:
            if side == PLAIN:
                docker("stop", "-t", "20", *infra_containers(), timeout=120)
                with PlainStack(work / "wordcount", options.containers, options.concurrency,
                                shlex.split(options.plain_redis_args)) as plain:
                    app = plain.client()
                    wait_for_results(plain.redis)
                    measure(app, PLAIN, plain.redis, counts, options.containers, options, figures)
                    app.close()
                docker("start", *infra_containers(), timeout=120)
            else:
                app = celery_client(work / "state" / NAME, "127.0.0.1", NAME,
                                    broker_port=PORTS["broker"], results_port=PORTS["results"])
                wait_for_results(infra_redis)
                measure(app, INFRA, infra_redis, counts, options.containers, options, figures)
                app.close()
    finally:
        if not options.keep:
            infra("clean", "-f", str(path), "--files", "--volumes", ok=(0, 1))
        PlainStack(work, 0, 0).__exit__()
        shutil.rmtree(work, ignore_errors=True)
    report(figures, counts)


def wait_for_results(redis, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if redis("PING") == "PONG":
                return
        except SystemExit:
            if time.monotonic() > deadline:
                raise
        time.sleep(1)


if __name__ == "__main__":
    main()
