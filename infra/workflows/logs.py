"""`infra logs`: container logs from every host, each line prefixed with host and container.

Without `--follow` the lines of all the chosen containers are merged in time order (Docker's
timestamps); with it they are printed as they come, from all hosts at once, until Ctrl-C.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from ..commands.engine import ListContainers, Logs
from ..config import Cluster, Host
from ..errors import ConfigError, InfraError, one_line, without_host
from ..facts.containers import parse_container_list
from ..facts.status import expected_containers
from ..names import MASTER_ROLES
from ..state.manifest import Manifest
from ..transport.pool import ConnectionPool, run_concurrently
from .up import departed_hosts

ROLE_NAMES = {
    "worker": "worker", "workers": "worker",
    "broker": "broker", "rabbitmq": "broker",
    "results": "results", "redis": "results",
    "master": "master",
    "flower": "flower",
}


@dataclass(frozen=True)
class LogTarget:
    """Which containers `infra logs TARGET` means, and which hosts to ask."""

    hosts: tuple[str, ...]
    role: str | None = None
    host: str | None = None
    container: str | None = None

    def matches(self, name: str, role: str, host: str) -> bool:
        if self.container is not None:
            return name == self.container
        if self.role is not None:
            return role == self.role
        if self.host is not None:
            return host == self.host
        return True


def log_target(cluster: Cluster, target: str | None, extra_hosts: list[str] | tuple[str, ...] = ()) -> LogTarget:
    """A role (worker, broker, results, master, flower), a host, or a container name; None: all."""
    used = tuple(cluster.used_hosts()) + tuple(h for h in extra_hosts if h not in cluster.used_hosts())
    if not target:
        return LogTarget(used)
    if target in ROLE_NAMES:
        role = ROLE_NAMES[target]
        hosts = (cluster.master_host.name,) if role in MASTER_ROLES else tuple(cluster.worker_hosts())
        return LogTarget(hosts, role=role)
    if target in used:
        return LogTarget((target,), host=target)
    by_name = {c.name: c.host for c in expected_containers(cluster)}
    if target in by_name:
        return LogTarget((by_name[target],), container=target)
    if target.startswith(f"{cluster.name}-"):
        return LogTarget(used, container=target)  # not in the cluster file (any more): look everywhere
    raise ConfigError(
        f"logs: {target!r} is neither a role ({', '.join(sorted(set(ROLE_NAMES.values())))}), "
        f"a host ({', '.join(used)}) nor a container of cluster {cluster.name}"
    )


_SINCE = re.compile(r"^(\d+(\.\d+)?(ns|us|ms|s|m|h)?|\d{4}-\d\d-\d\d([T ][0-9:.]+)?(Z|[+-]\d\d:?\d\d)?)$")
_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def since_timestamp(since: str | None, now: datetime) -> float | None:
    """`--since` as a Unix time, read as `docker logs` reads it: a duration back from now (10m,
    1.5h, 30s), a date or time (2025-01-31, 2025-01-31T12:00:00, local time unless it names a
    zone), or a bare number: a Unix time."""
    if since is None:
        return None
    if not _SINCE.match(since):
        raise ConfigError(f"--since: {since!r} is not a duration (10m, 2h, 30s) nor a time (2025-01-31T12:00:00)")
    duration = re.fullmatch(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)", since)
    if duration:
        return now.timestamp() - float(duration.group(1)) * _UNITS[duration.group(2)]
    if re.fullmatch(r"\d+(\.\d+)?", since):
        return float(since)
    try:
        moment = datetime.fromisoformat(_iso_for_python(since))
    except ValueError:
        raise ConfigError(f"--since: {since!r} is not a valid date or time") from None
    return (moment if moment.tzinfo else moment.astimezone()).timestamp()


def _iso_for_python(text: str) -> str:
    """A time as every supported Python's `fromisoformat` reads it: `T`, `+HH:MM`, six fraction digits."""
    text = text.replace(" ", "T")
    text = re.sub(r"Z$", "+00:00", text)
    text = re.sub(r"([+-]\d\d)(\d\d)$", r"\1:\2", text)
    return re.sub(r"\.(\d+)", lambda m: "." + m.group(1)[:6].ljust(6, "0"), text)


def parse_tail(tail: str) -> str:
    if tail == "all" or (tail.isdigit() and int(tail) >= 0):
        return tail
    raise ConfigError(f"-n/--tail: {tail!r} is not a number of lines nor 'all'")


_TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d) ?")


def split_timestamp(line: str) -> tuple[tuple[str, int], str, str]:
    """A `docker logs --timestamps` line: (sort key, timestamp text, the rest)."""
    match = _TIMESTAMP.match(line)
    if not match:
        return ("", 0), "", line
    seconds, fraction, _ = match.groups()
    nanos = int((fraction or "0").ljust(9, "0"))
    return (seconds, nanos), match.group(0).strip(), line[match.end():]


@dataclass(frozen=True)
class LogLine:
    host: str
    container: str
    text: str
    timestamp: str = ""
    key: tuple = ("", 0)


def merge_logs(blocks: dict[tuple[str, str], list[str]]) -> list[LogLine]:
    """Lines of several containers in time order (a container's own order is kept on ties)."""
    lines = []
    for (host, container), raw in blocks.items():
        for index, line in enumerate(raw):
            key, stamp, text = split_timestamp(line)
            lines.append((key, host, container, index, LogLine(host, container, text, stamp, key)))
    lines.sort(key=lambda item: item[:4])
    return [item[-1] for item in lines]


def format_log_line(line: LogLine, host_width: int, container_width: int, timestamps: bool) -> str:
    stamp = f"{line.timestamp} " if timestamps and line.timestamp else ""
    return f"{line.host:<{host_width}} {line.container:<{container_width}} | {stamp}{line.text}"


def show_logs(
    cluster: Cluster, target: str | None, *, follow: bool, since: str | None, tail: str, timestamps: bool,
    emit: Callable[[str], None], warn: Callable[[str], None],
) -> bool:
    """Print container logs, each line prefixed with host and container; True if every host answered."""
    since_time = since_timestamp(since, datetime.now(timezone.utc))
    tail = parse_tail(tail)
    manifest = Manifest.load(cluster.manifest_path, cluster.name)
    departed = departed_hosts(cluster, manifest)
    selection = log_target(cluster, target, list(departed))
    hosts = [cluster.hosts.get(name) or departed[name] for name in selection.hosts]

    with ConnectionPool.for_cluster(cluster) as pool:
        opened = pool.open(hosts)
        for name, err in sorted(opened.failed.items()):
            warn(f"{name}: unreachable, its logs are left out ({without_host(name, one_line(err))})")
        reachable = [h for h in hosts if h.name in opened.succeeded]
        chosen, all_listed = _find_containers(pool, cluster, reachable, selection, warn)
        if not chosen:
            what = f"matching {target!r} " if target else ""
            raise InfraError(f"no container {what}of cluster {cluster.name} found on the hosts that answered")
        host_width = max(len(h) for h, _ in chosen)
        container_width = max(len(c) for _, c in chosen)

        def shown(line: LogLine) -> str:
            return format_log_line(line, host_width, container_width, timestamps)

        ops = {pair: Logs(pair[1], tail=tail, since=since_time, follow=follow) for pair in chosen}
        if follow:
            _stream_logs(pool, ops, shown, emit)
            all_read = True
        else:
            all_read = _print_merged_logs(pool, ops, shown, emit, warn)
    return not opened.failed and all_listed and all_read


def _find_containers(pool: ConnectionPool, cluster: Cluster, hosts: list[Host], selection: LogTarget,
                     warn: Callable[[str], None]) -> tuple[list[tuple[str, str]], bool]:
    """The (host, container) pairs the selection means, in the hosts' order; True if every host listed its own."""
    def find(host: Host) -> list[tuple[str, str]]:
        listed = parse_container_list(pool[host.name].engine.query(ListContainers(cluster.name)))
        return [(host.name, c.name) for c in listed if selection.matches(c.name, c.role, host.name)]

    listed = run_concurrently(hosts, find, key=lambda h: h.name)
    for name, err in sorted(listed.failed.items()):
        warn(f"{name}: cannot list containers ({without_host(name, one_line(err))})")
    return [pair for host in hosts for pair in listed.succeeded.get(host.name, [])], not listed.failed


def _print_merged_logs(pool: ConnectionPool, ops: dict[tuple[str, str], Logs], shown: Callable[[LogLine], str],
                       emit: Callable[[str], None], warn: Callable[[str], None]) -> bool:
    """Read every container's logs to their end, then print them merged in time order; True if all were read."""
    def read(pair: tuple[str, str]) -> list[str]:
        lines: list[str] = []
        pool[pair[0]].engine.logs(ops[pair], lines.append)
        return lines

    got = run_concurrently(list(ops), read, key=lambda pair: pair)
    for (host, container), err in got.failed.items():
        warn(f"{host}: logs of {container}: {without_host(host, one_line(err))}")
    for line in merge_logs(got.succeeded):
        emit(shown(line))
    return not got.failed


def _stream_logs(pool: ConnectionPool, ops: dict[tuple[str, str], Logs], shown: Callable[[LogLine], str],
                 emit: Callable[[str], None]) -> None:
    """Print every container's lines as they come, until all streams end or Ctrl-C."""
    lock = threading.Lock()
    stop = threading.Event()

    def stream(pair: tuple[str, str]) -> None:
        host, container = pair

        def printer(raw: str) -> None:
            _, stamp, text = split_timestamp(raw)
            with lock:
                emit(shown(LogLine(host, container, text, stamp)))

        try:
            pool[host].engine.logs(ops[pair], printer, stop)
        except (InfraError, OSError, EOFError):
            pass  # the connection went away (host lost)

    threads = [threading.Thread(target=stream, args=(pair,), daemon=True) for pair in ops]
    for thread in threads:
        thread.start()
    try:
        while any(thread.is_alive() for thread in threads):
            for thread in threads:
                thread.join(0.2)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how `logs -f` ends
    finally:
        stop.set()  # every stream closes, and the engines stop sending
        deadline = time.monotonic() + 5
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
