"""A cold `infra up` with the images present, beside the broker container's own boot (P4).

It prints figures; it checks nothing. On a testbed of three SSH + Docker hosts (tests/testbed)
plus this machine it brings up the cluster of the end-to-end tests (master on h1; workers: 2
containers on h2, 1 on h3, 1 on `local`) once, so that every image is on every host, and
cleans it. Each round then measures, one right after the other (the order alternates between
rounds; each timed part starts after `--settle` seconds of rest):

- **the cold up**: `infra clean` (containers, network and secret files removed; images and data
  volumes kept: `--fresh-volumes` removes the volumes too, on both sides), then `infra up` as a
  whole process, from its start to its exit; `up` exits once every worker answers a ping.
  While it runs, the login probe below notes when the broker started accepting logins, and
  each line `up` prints is stamped with the time since its start (`--lines` prints them).
- **the baseline**: the broker container's own start-to-accepting-logins time. Every container
  of the cluster is removed (`docker rm -f` by the cluster's label; secret files, network and
  volumes stay), then the broker is started again, alone, on h1 with `docker run` of exactly
  what infra ran (image, user, hostname, network and alias, published port, volumes, secret
  files, log driver: read from `docker inspect` of infra's broker container after the first up).
  The time runs from just before the `docker run` to the first AMQPS login of the workers'
  user, from this machine, at the published port (one try every 50 ms). The broker keeps the
  data volume the cold up's broker used, so both boot the same broker on the same data.

P4 is the median cold up over the median broker boot. With `--baseline REV` the infra of that
git revision (a temporary worktree) is measured in the same rounds, under a cluster name and
image names of its own (so neither side's images are shipped again); the order of the sides
alternates between rounds.

    python benchmarks/cold_up.py --repeat 3
    python benchmarks/cold_up.py --repeat 5 --baseline HEAD --lines
    python benchmarks/cold_up.py --repeat 3 --fresh-volumes

Needs: root, a running Docker engine, the base image `infra-base:bookworm` and the wheelhouse
`.cache/wheels` (both made by scripts/run-tests.sh). Traffic stays on the testbed's addresses.
Everything it starts is removed at the end, also on failure (closing the testbed removes the hosts).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.clusters import e2e_shape  # noqa: E402
from benchmarks.revisions import checkout, remove_checkout  # noqa: E402
from tests.e2e.test_cluster import TEST_IMAGES as IMAGES  # noqa: E402  the e2e tests' images, built once
from tests.e2e.test_cluster import WHEELHOUSE  # noqa: E402
from tests.testbed import Testbed  # noqa: E402

NAME = "coldup"
BROKER_PORT = 5671
LOGIN_INTERVAL = 0.05


@dataclass
class Side:
    """One infra under test: its source tree, and its own cluster (name, images, state) on the testbed."""

    label: str
    source: Path
    name: str
    folder: Path
    broker_argv: list[str] = field(default_factory=list)  # `docker run` of the broker as infra ran it
    figures: dict[str, list[float]] = field(default_factory=lambda: {
        "broker_boot": [], "cold_up": [], "broker_login_in_up": [], "loadavg_1m": []})

    @property
    def path(self) -> Path:
        return self.folder / "cluster.yaml"

    @property
    def state(self) -> Path:
        return self.folder / "state" / self.name


def write_cluster_file(side: Side, testbed: Testbed) -> None:
    # Each side has images of its own names, so that both stay on the hosts between rounds.
    images = IMAGES if side.source == REPO else {
        **IMAGES, **{role: f"infra-{side.name}-{role}:latest" for role in ("worker", "master", "broker")}}
    spec = {**e2e_shape(side.folder, testbed, side.name, images), "ports": {"broker": BROKER_PORT}}
    side.folder.mkdir(parents=True, exist_ok=True)
    side.path.write_text(yaml.safe_dump(spec, sort_keys=False))


def infra(side: Side, *args: str, ok: tuple[int, ...] = (0,)) -> None:
    result = subprocess.run([sys.executable, "-m", "infra", *args, "-f", str(side.path)], capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(side.source)}, cwd=side.source,
                            timeout=1800)
    if result.returncode not in ok:
        raise SystemExit(f"{side.label}: `infra {' '.join(args)}` failed with {result.returncode}:\n"
                         f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


class LoginProbe:
    """AMQPS logins of the workers' user at the broker's published port, every 50 ms, in a thread:
    `accepted_at` is the monotonic time of the first one that succeeded."""

    def __init__(self, address: str, state: Path, vhost: str):
        secrets = json.loads((state / "secrets.json").read_text())
        self.address, self.user, self.password = address, secrets["worker_user"], secrets["worker_password"]
        self.vhost = vhost  # the cluster's name
        # py-amqp's options (a dict): trust the cluster CA alone, as the workers do.
        self.tls = {"ca_certs": str(state / "tls" / "ca.crt"), "cert_reqs": ssl.CERT_REQUIRED, "server_hostname": None}
        self.accepted_at: float | None = None
        self.last_error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _login(self) -> None:
        import amqp

        connection = amqp.Connection(f"{self.address}:{BROKER_PORT}", userid=self.user, password=self.password,
                                     virtual_host=self.vhost, ssl=self.tls, connect_timeout=2)
        try:
            connection.connect()
        finally:
            connection.collect()  # drop the socket without a close handshake: nothing to say

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                self._login()
                self.accepted_at = began
                return
            except Exception as exc:  # refused, reset, or access refused while the broker boots
                self.last_error = f"{type(exc).__name__}: {exc}"
            self._stop.wait(max(0.0, LOGIN_INTERVAL - (time.monotonic() - began)))

    def __enter__(self) -> "LoginProbe":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def wait(self, timeout: float) -> float:
        self._thread.join(timeout=timeout)
        if self.accepted_at is None:
            raise SystemExit(f"the broker accepted no login within {timeout:.0f} s ({self.last_error})")
        return self.accepted_at


def broker_run_argv(inspected: dict) -> list[str]:
    """`docker run` of the broker with everything infra's own broker container had."""
    config, host_config = inspected["Config"], inspected["HostConfig"]
    network = host_config["NetworkMode"]
    argv = ["docker", "run", "--detach", "--name", inspected["Name"].lstrip("/"), "--network", network,
            "--hostname", config["Hostname"], "--user", config["User"]]
    for alias in (inspected["NetworkSettings"]["Networks"][network].get("Aliases") or []):
        if alias != config["Hostname"] and not inspected["Id"].startswith(alias):
            argv += ["--network-alias", alias]
    for container_port, bindings in (host_config.get("PortBindings") or {}).items():
        for binding in bindings or []:
            host_ip = f"{binding['HostIp']}:" if binding.get("HostIp") else ""
            argv += ["--publish", f"{host_ip}{binding['HostPort']}:{container_port}"]
    for mount in inspected["Mounts"]:
        source = mount["Name"] if mount["Type"] == "volume" else mount["Source"]
        argv += ["--volume", f"{source}:{mount['Destination']}:{'rw' if mount['RW'] else 'ro'}"]
    log = host_config.get("LogConfig") or {}
    if log.get("Type"):
        argv += ["--log-driver", log["Type"]]
        for key, value in (log.get("Config") or {}).items():
            argv += ["--log-opt", f"{key}={value}"]
    return argv + [config["Image"], *(config.get("Cmd") or [])]


def remove_cluster_containers(testbed: Testbed, name: str) -> None:
    """Every container of a cluster, on every host (secret files, network and volumes stay)."""
    remove = f'ids=$(docker ps -aq --filter label=infra.cluster={name}); [ -z "$ids" ] || docker rm -f $ids >/dev/null'
    for host in testbed.docker_hosts[:3]:
        testbed.exec(host, remove, timeout=120)
    subprocess.run(remove, shell=True, check=True, timeout=120)


def broker_boot(testbed: Testbed, side: Side, fresh_volume: bool) -> float:
    """Seconds from `docker run` of the side's broker, alone on h1, to its first accepted login
    (every container of the cluster removed; `side.broker_argv`: what infra ran)."""
    h1 = testbed.docker_hosts[0]
    argv = side.broker_argv
    volume = f"{side.name}-broker-data"
    if fresh_volume:
        testbed.exec(h1, f"docker volume rm {volume} && docker volume create --label infra.cluster={side.name} {volume}")
    with LoginProbe(h1.address, side.state, side.name) as probe:
        began = time.monotonic()
        testbed.exec(h1, shlex.join(argv))
        took = probe.wait(120) - began
    testbed.exec(h1, f"docker rm -f {side.name}-broker")
    return took


def cold_up(testbed: Testbed, side: Side, show_lines: bool) -> tuple[float, float]:
    """Seconds of a whole `infra up` after the clean, and when within it the broker took its first login."""
    h1 = testbed.docker_hosts[0]
    env = {**os.environ, "PYTHONPATH": str(side.source), "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    stamped: list[str] = []
    with LoginProbe(h1.address, side.state, side.name) as probe:
        began = time.monotonic()
        process = subprocess.Popen([sys.executable, "-m", "infra", "up", "-f", str(side.path)],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=side.source)
        for line in process.stdout:
            stamped.append(f"  {time.monotonic() - began:6.2f}  {line.rstrip()}")
        code = process.wait(timeout=1800)
        took = time.monotonic() - began
        if code != 0:
            raise SystemExit(f"{side.label}: `infra up` failed with {code}:\n" + "\n".join(stamped[-40:]))
        broker_at = probe.wait(10) - began
    if show_lines:
        print("\n".join(stamped), flush=True)
    return took, broker_at


def measure_round(testbed: Testbed, side: Side, options: argparse.Namespace, broker_first: bool) -> None:
    """Both measurements of one side, in the order given; the side's cluster is clean before and after.

    The baseline needs the side's secret files and network, which only an `up` leaves: when it
    comes first, an untimed `up` goes before it. Each timed part starts after `--settle` seconds
    of rest (removed containers are still being cleaned up by the engines for a moment).
    """
    def timed_cold_up() -> tuple[float, float]:
        infra(side, "clean", *(["--volumes"] if options.fresh_volumes else []))
        time.sleep(options.settle)
        return cold_up(testbed, side, options.lines)

    def timed_broker_boot() -> float:
        remove_cluster_containers(testbed, side.name)
        time.sleep(options.settle)
        return broker_boot(testbed, side, options.fresh_volumes)

    if broker_first:
        infra(side, "up")
        boot = timed_broker_boot()
        took, broker_at = timed_cold_up()
    else:
        took, broker_at = timed_cold_up()
        boot = timed_broker_boot()
    infra(side, "clean")  # network and secret files: the other side's cluster uses the same ports
    load = os.getloadavg()[0]
    for key, value in (("broker_boot", boot), ("cold_up", took), ("broker_login_in_up", broker_at),
                       ("loadavg_1m", load)):
        side.figures[key].append(value)
    print(f"{side.label}: cold up {took:.2f} s (broker's first login at {broker_at:.2f} s), "
          f"broker boot {boot:.2f} s, P4 {took / boot:.2f}, load {load:.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="rounds of (cold up, broker boot); medians reported")
    parser.add_argument("--baseline", metavar="REV", help="also measure the infra of this git revision, in the same "
                                                          "rounds (its own cluster name and images)")
    parser.add_argument("--fresh-volumes", action="store_true",
                        help="remove the data volumes before each side too (a first boot of the broker)")
    parser.add_argument("--lines", action="store_true", help="print each cold up's lines, stamped with their time")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds of rest before each timed part (default 3)")
    options = parser.parse_args()
    if not WHEELHOUSE.is_dir():
        raise SystemExit("run scripts/make-wheelhouse.sh .cache/wheels first (scripts/run-tests.sh does)")

    work = Path(tempfile.mkdtemp(prefix="infra-bench-coldup-"))
    sides = [Side("this checkout", REPO, NAME, work / "current")]
    worktree = None
    try:
        if options.baseline:
            worktree = checkout(options.baseline, work / "baseline-src")
            sides.append(Side(options.baseline, worktree, f"{NAME}-base", work / "baseline"))
        with Testbed.start(hosts=3, prefix=f"infra-bench-coldup-{os.getpid()}") as testbed:
            try:
                for side in sides:
                    write_cluster_file(side, testbed)
                    print(f"{side.label}: first up (builds and ships the images) ...", flush=True)
                    infra(side, "up")
                    inspected = testbed.exec(testbed.docker_hosts[0], f"docker container inspect {side.name}-broker")
                    side.broker_argv = broker_run_argv(json.loads(inspected)[0])
                    infra(side, "clean")
                for round_ in range(options.repeat):
                    print(f"round {round_ + 1}/{options.repeat}", flush=True)
                    for side in sides[round_ % len(sides):] + sides[:round_ % len(sides)]:
                        measure_round(testbed, side, options, broker_first=round_ % 2 == 1)
            finally:
                for side in sides:
                    infra(side, "clean", "--files", "--volumes", ok=(0, 1))
    finally:
        remove_checkout(worktree)
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"{'':16} {'broker boot':>12} {'cold up':>9} {'broker login in up':>19} {'P4 = up / boot':>15} "
          f"{'load 1m':>8}   (medians of {options.repeat}, s; data volumes {'fresh' if options.fresh_volumes else 'kept'})")
    for side in sides:
        medians = {key: statistics.median(values) for key, values in side.figures.items()}
        print(f"{side.label:16} {medians['broker_boot']:12.2f} {medians['cold_up']:9.2f} "
              f"{medians['broker_login_in_up']:19.2f} {medians['cold_up'] / medians['broker_boot']:15.2f} "
              f"{medians['loadavg_1m']:8.2f}")
        print(json.dumps({"side": side.label, "repeat": options.repeat,
                          "volumes": "fresh" if options.fresh_volumes else "kept",
                          "broker_boot_s": round(medians["broker_boot"], 3), "cold_up_s": round(medians["cold_up"], 3),
                          "broker_login_in_up_s": round(medians["broker_login_in_up"], 3),
                          "p4": round(medians["cold_up"] / medians["broker_boot"], 3),
                          "loadavg_1m": round(medians["loadavg_1m"], 2),
                          "runs": {key: [round(v, 3) for v in values] for key, values in side.figures.items()}}))


if __name__ == "__main__":
    main()
