"""Living with a running cluster: `status`, `sync-files`, `logs` and `run`.

The workflows talk to hosts only through `infra.runner` connections, all hosts at once, every
command bounded by a timeout (`logs -f` and `run` excepted: they last as long as the user wants).
What they decide is in pure functions here (argv lists, target selection, restart decisions,
which output files to fetch) and in `infra.status` (parsers, model, renderings), so unit tests
check the decisions without any host.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import posixpath
import re
import shlex
import tarfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import pathspec

from . import filesync, summary
from .config import Cluster, Host
from .deploy import apply_sync, departed_hosts, gather_facts, master_exec, parse_ping, preview_sync
from .errors import ConfigError, HostsFailedError, InfraError, one_line, without_host
from .facts.host import HostFacts, parse_sha256_list
from .manifest import Manifest
from .plan import CONTAINER_PROJECT, celery_node_name, expected_worker_nodes, host_layout
from .report import Reporter
from .runner import Connection, ConnectionPool, run_concurrently
from .secrets import write_private_file
from .status import (
    CELERY_PROBE,
    CeleryView,
    ClusterStatus,
    HostObservation,
    QueueStatus,
    build_status,
    expected_containers,
    list_queues_argv,
    parse_celery_probe,
    parse_containers,
    parse_docker_time,
    parse_list_queues,
    redact,
)

# Bounds of the read-only commands `status` sends (the connect timeout is the cluster file's).
DOCKER_TIMEOUT = 20.0
CELERY_REPLY_TIMEOUT = 2.0  # how long workers are given to answer a broadcast
PROBE_TIMEOUT = 25.0  # the whole Celery probe or rabbitmqctl call
RESTART_TIMEOUT = 10  # seconds `docker restart` gives a worker to finish its tasks (then SIGKILL)
OUTPUT_FOLDER = "output"  # where `infra run` jobs write results; fetched back, never synced out


def _connect(pool: ConnectionPool, host: Host) -> Connection:
    opened = pool.open([host])
    if opened.failed:
        raise opened.failed[host.name]
    return pool[host.name]


def _facts_of(pool: ConnectionPool, cluster: Cluster, host: Host) -> HostFacts:
    try:
        return gather_facts(pool, cluster, [host])[host.name]
    except HostsFailedError as exc:
        raise exc.failures[host.name] from None


def master_address(cluster: Cluster) -> str:
    """The address people on this machine use for the master's published ports."""
    master = cluster.master_host
    return cluster.spec.roles.master.advertise_address or ("127.0.0.1" if master.is_local else master.address)


def flower_url(cluster: Cluster) -> str:
    return summary.flower_url(cluster, master_address(cluster))


# =========================================================================== status


# Only the fields status needs, one JSON object per line: the full `docker inspect` would also
# carry each container's environment, secrets included.
INSPECT_FORMAT = (
    '{"Name":{{json .Name}},"Id":{{json .Id}},"State":{{json .State}},"RestartCount":{{json .RestartCount}},'
    '"Config":{"Image":{{json .Config.Image}},"Labels":{{json .Config.Labels}}}}'
)


def containers_command(cluster_name: str) -> str:
    """The cluster's containers on a host, as INSPECT_FORMAT lines (nothing when there is none)."""
    return (
        f"ids=$(docker ps --all --quiet --filter label=infra.cluster={cluster_name}) || exit 1; "
        f'if [ -n "$ids" ]; then docker inspect --format {shlex.quote(INSPECT_FORMAT)} $ids 2>/dev/null || true; fi'
    )


def celery_probe_argv(cluster: Cluster, reply_timeout: float = CELERY_REPLY_TIMEOUT) -> list[str]:
    return master_exec(cluster, ["python", "-c", CELERY_PROBE, cluster.spec.project.app,
                                 json.dumps(expected_worker_nodes(cluster)), f"{reply_timeout:g}"])


def _last_line(text: str, default: str = "no output") -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return redact(lines[-1].strip()) if lines else default


def _observe_host(cluster: Cluster, conn: Connection) -> HostObservation:
    result = conn.run(["sh", "-c", containers_command(cluster.name)], timeout=DOCKER_TIMEOUT, check=False)
    if not result.ok:
        return HostObservation(True, _last_line(result.output, "Docker does not answer"))
    try:
        return HostObservation(True, None, parse_containers(result.stdout))
    except ValueError as exc:
        return HostObservation(True, f"unreadable docker inspect output ({exc})")


def _ask_celery(cluster: Cluster, conn: Connection) -> CeleryView:
    result = conn.run(celery_probe_argv(cluster), timeout=PROBE_TIMEOUT, check=False)
    if result.exit_code == 124:
        return CeleryView(error=f"no answer within {PROBE_TIMEOUT:g} s")
    return parse_celery_probe(result.stdout if result.stdout.strip() else result.output)


def _ask_rabbitmq(cluster: Cluster, conn: Connection) -> list[QueueStatus]:
    result = conn.run(list_queues_argv(cluster.name), timeout=PROBE_TIMEOUT, check=False)
    if not result.ok:
        raise InfraError(_last_line(result.output))
    return parse_list_queues(result.stdout)


def gather_status(cluster: Cluster) -> ClusterStatus:
    """Ask every host at once; a host that does not answer costs at most the connect timeout."""
    manifest = Manifest.load(cluster.manifest_path, cluster.name)
    used = [cluster.hosts[name] for name in cluster.used_hosts()]
    departed = departed_hosts(cluster, manifest)
    everyone = used + list(departed.values())
    master = cluster.master_host

    with ConnectionPool(cluster.spec.ssh.connect_timeout) as pool:

        def visit(host: Host) -> dict:
            # Connect and ask in one go per host, so a slow host delays nobody else.
            opened = pool.open([host])
            if opened.failed:
                return {"docker": HostObservation(False, without_host(host.name, one_line(opened.failed[host.name])))}
            conn = pool[host.name]
            asks: dict[str, Callable] = {"docker": lambda: _observe_host(cluster, conn)}
            if host.name == master.name:
                asks["celery"] = lambda: _ask_celery(cluster, conn)
                asks["rabbitmq"] = lambda: _ask_rabbitmq(cluster, conn)
            answers = run_concurrently(list(asks), lambda key: asks[key]())
            found = dict(answers.succeeded)
            found.update({f"{key}-error": without_host(host.name, one_line(err)) for key, err in answers.failed.items()})
            if "docker" not in found:
                found["docker"] = HostObservation(True, found.get("docker-error", "no answer"))
            return found

        visited = run_concurrently(everyone, visit, key=lambda h: h.name)

    answers = {name: visited.succeeded.get(name) or {"docker": HostObservation(False, one_line(visited.failed[name]))}
               for name in (h.name for h in everyone)}
    observations = {name: found["docker"] for name, found in answers.items()}
    at_master = answers[master.name]
    queue_error = at_master.get("rabbitmq-error")
    if not observations[master.name].reachable:
        queue_error = "the master host is unreachable"
    return build_status(
        cluster, observations,
        now=datetime.now(timezone.utc),
        flower_url=flower_url(cluster),
        manifest_path=cluster.manifest_path if cluster.manifest_path.exists() else None,
        other_hosts={name: host.address for name, host in departed.items()},
        celery=at_master.get("celery"),
        queues=at_master.get("rabbitmq"),
        queue_error=queue_error,
    )


# =========================================================================== sync-files


def select_hosts(cluster: Cluster, hosts_option: str | None) -> list[Host]:
    """`--hosts a,b`: hosts the cluster file uses; default all of them, master first."""
    used = cluster.used_hosts()
    if not hosts_option:
        return [cluster.hosts[name] for name in used]
    names = []
    for name in (part.strip() for part in hosts_option.split(",")):
        if not name:
            continue
        if name not in used:
            raise ConfigError(f"--hosts: {name!r} is not a host of cluster {cluster.name} (hosts: {', '.join(used)})")
        if name not in names:
            names.append(name)
    if not names:
        raise ConfigError("--hosts: no host named")
    return [cluster.hosts[name] for name in used if name in names]


def project_digest(files: dict[str, filesync.LocalFile]) -> str:
    """One hash of a project's content: the paths and contents of its (not ignored) files."""
    sha = hashlib.sha256()
    for rel in sorted(files):
        sha.update(f"{rel}\0{files[rel].digest}\n".encode())
    return sha.hexdigest()[:24]


@dataclass(frozen=True)
class CodeRecord:
    """Which project content the workers of a host run: recorded when infra (re)started them."""

    digest: str
    workers: dict[str, str]  # container name -> its State.StartedAt at that moment


def code_records_path(cluster: Cluster) -> Path:
    return cluster.state_dir / "worker-code.json"


def load_code_records(path: Path) -> dict[str, CodeRecord]:
    try:
        raw = json.loads(path.read_text())
        return {host: CodeRecord(rec["digest"], dict(rec["workers"])) for host, rec in raw.get("hosts", {}).items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}  # a lost record only means the mtime rule decides (see restart_decision)


def save_code_records(path: Path, records: dict[str, CodeRecord]) -> None:
    data = {"version": 1, "hosts": {host: asdict(rec) for host, rec in sorted(records.items())}}
    write_private_file(path, json.dumps(data, indent=2).encode() + b"\n")


@dataclass(frozen=True)
class RestartDecision:
    restart: bool
    reason: str
    current: bool  # the workers (will) run the project's current content


def restart_decision(
    record: CodeRecord | None, digest: str, workers: dict[str, str], changed_since_start: bool, allowed: bool = True,
) -> RestartDecision:
    """Whether a host's workers must restart to run the project's current content.

    A record whose workers are still the same starts (same containers, not restarted since)
    says exactly which content they run. Without one (never synced, or restarted by someone
    else since), files modified after the earliest worker start mean they run older code.
    """
    if not workers:
        return RestartDecision(False, "no running worker here", True)
    if record is not None and record.workers == workers:
        stale, why = record.digest != digest, "code changed since the workers started"
        fine = "the workers already run this code"
    else:
        stale, why = changed_since_start, "files changed after the workers started"
        fine = "no file changed since the workers started"
    if not stale:
        return RestartDecision(False, fine, True)
    if not allowed:
        return RestartDecision(False, f"{why}; not restarted (--no-restart)", False)
    return RestartDecision(True, why, True)


def changed_after(mtimes: dict[str, float], moment: datetime | None) -> list[str]:
    """Files modified after `moment` (all of them when there is no moment)."""
    if moment is None:
        return sorted(mtimes)
    limit = moment.timestamp()
    return sorted(rel for rel, mtime in mtimes.items() if mtime > limit)


def earliest_start(workers: dict[str, str]) -> datetime | None:
    starts = [t for t in (parse_docker_time(s) for s in workers.values()) if t is not None]
    return min(starts) if starts else None


def newer_files_command(root: str, moment: datetime) -> str:
    """Files under `root` modified after `moment` (whole seconds, rounded down: a tie counts as newer)."""
    return (f"cd {shlex.quote(root)} 2>/dev/null && "
            f"find . -type f -newermt @{int(moment.timestamp())} -print 2>/dev/null | head -n 1000")


def parse_find(output: str, rules: pathspec.PathSpec) -> list[str]:
    paths = [line[2:] if line.startswith("./") else line for line in output.splitlines() if line.strip()]
    return sorted(p for p in paths if not rules.match_file(p))


def restart_argv(names: list[str]) -> list[str]:
    return ["docker", "restart", "--time", str(RESTART_TIMEOUT), *names]


@dataclass
class SyncOutcome:
    host: str
    project_dir: str
    in_place: bool = False
    sent: list[str] = field(default_factory=list)
    bytes_sent: int = 0  # content of the files sent
    wire_bytes: int = 0  # the tar stream that carried them
    deleted: list[str] = field(default_factory=list)
    unchanged: int = 0
    restarted: list[str] = field(default_factory=list)
    reason: str = ""
    error: str | None = None

    def describe(self) -> str:
        if self.error:
            return f"failed: {self.error}"
        if self.in_place:
            files = f"project used in place ({self.unchanged} files)"
        elif self.sent or self.deleted:
            files = (f"sent {len(self.sent)} file(s), {self.bytes_sent} bytes ({self.wire_bytes} on the wire), "
                     f"deleted {len(self.deleted)}, {self.unchanged} unchanged")
        else:
            files = f"up to date ({self.unchanged} files), nothing sent"
        if self.restarted:
            return f"{files}; restarted {', '.join(self.restarted)} ({self.reason})"
        return f"{files}; {self.reason}"


@dataclass
class SyncResult:
    outcomes: dict[str, SyncOutcome]
    answering: bool | None  # restarted workers answer again (None: nothing restarted)
    wait_error: str | None = None

    @property
    def failed(self) -> bool:
        return any(o.error for o in self.outcomes.values()) or self.answering is False

    def to_json(self) -> dict:
        return {
            "hosts": [asdict(o) for o in self.outcomes.values()],
            "restarted_workers_answer": self.answering,
            "error": self.wait_error,
        }


def _running_workers(cluster: Cluster, facts: HostFacts) -> dict[str, str]:
    return {c.name: c.started_at for c in facts.containers
            if c.role == "worker" and c.running and c.labels.get("infra.cluster") == cluster.name}


def _start_times(conn: Connection, names: list[str]) -> dict[str, str]:
    result = conn.run(["docker", "inspect", "--format", "{{.Name}} {{.State.StartedAt}}", *names],
                      timeout=DOCKER_TIMEOUT, check=False)
    starts = {}
    for line in result.stdout.splitlines():
        name, _, started = line.strip().partition(" ")
        if name:
            starts[name.lstrip("/")] = started
    return starts


def sync_files(cluster: Cluster, reporter: Reporter, *, hosts_option: str | None = None,
               restart: bool = True) -> SyncResult:
    """Bring the project on the hosts up to date, then restart the workers whose code changed."""
    hosts = select_hosts(cluster, hosts_option)
    rules = filesync.ignore_rules(cluster.project_dir)
    local_files = filesync.scan_local(cluster.project_dir, rules)
    digest = project_digest(local_files)
    records_path = code_records_path(cluster)
    records = load_code_records(records_path)
    manifest = Manifest.load(cluster.manifest_path, cluster.name)
    new_records: dict[str, CodeRecord | None] = {}

    with ConnectionPool(cluster.spec.ssh.connect_timeout) as pool:

        def sync_host(host: Host) -> SyncOutcome:
            conn = _connect(pool, host)
            facts = _facts_of(pool, cluster, host)
            layout = host_layout(cluster, host, facts)
            outcome = SyncOutcome(host.name, layout.project_dir)
            workers = _running_workers(cluster, facts)
            record = records.get(host.name)
            record_valid = record is not None and record.workers == workers
            started = earliest_start(workers)
            if host.is_local:
                outcome.in_place = True
                outcome.unchanged = len(local_files)
                changed = False
                if workers and not record_valid:
                    mtimes = {rel: (cluster.project_dir / rel).stat().st_mtime for rel in local_files}
                    changed = bool(changed_after(mtimes, started))
            else:
                manifest.add_files(host, layout.project_dir)
                plan = preview_sync(conn, cluster.project_dir, layout.project_dir, rules)
                outcome.wire_bytes = apply_sync(conn, cluster.project_dir, plan)
                outcome.sent, outcome.deleted = plan.upload, plan.delete
                outcome.bytes_sent, outcome.unchanged = plan.bytes_to_send, plan.unchanged
                changed = plan.changed
                if workers and not changed and not record_valid and started is not None:
                    found = conn.run(newer_files_command(layout.project_dir, started), timeout=60, check=False)
                    changed = bool(parse_find(found.stdout, rules))
            decision = restart_decision(record, digest, workers, changed, allowed=restart)
            outcome.reason = decision.reason
            if decision.restart:
                names = sorted(workers)
                # One `docker restart` per worker, all at once: each waits for a warm shutdown.
                restarted = run_concurrently(names, lambda name: conn.run(restart_argv([name]), timeout=RESTART_TIMEOUT + 60))
                outcome.restarted = sorted(restarted.succeeded)
                restarted.raise_if_failed(f"restarting workers on {host.name}")
                workers = _start_times(conn, names)
            new_records[host.name] = CodeRecord(digest, workers) if decision.current and workers else (
                None if not workers else record)
            return outcome

        done = run_concurrently(hosts, sync_host, key=lambda h: h.name)
        outcomes: dict[str, SyncOutcome] = {}
        for host in hosts:
            if host.name in done.succeeded:
                outcomes[host.name] = done.succeeded[host.name]
            else:
                outcomes[host.name] = SyncOutcome(host.name, "", error=without_host(host.name, one_line(done.failed[host.name])))
            reporter.host(host.name, outcomes[host.name].describe(), style="red" if outcomes[host.name].error else "")

        requirements = cluster.spec.project.requirements
        if requirements and any(requirements in o.sent + o.deleted for o in outcomes.values()):
            reporter.warn(f"{requirements} changed: new packages need new images, run `infra up` to rebuild them")

        for name, rec in new_records.items():
            if rec is None:
                records.pop(name, None)
            else:
                records[name] = rec
        if new_records:
            save_code_records(records_path, records)

        restarted_nodes = [celery_node_name(w, o.host) for o in outcomes.values() for w in o.restarted]
        if not restarted_nodes:
            return SyncResult(outcomes, None)
        try:
            waited = wait_for_workers(cluster, pool, restarted_nodes)
            reporter.info(f"{len(restarted_nodes)} restarted worker(s) answer again ({waited:.1f} s)")
            return SyncResult(outcomes, True)
        except InfraError as exc:
            reporter.warn(str(exc))
            return SyncResult(outcomes, False, str(exc))


# `python -c PING_PROBE APP NODES_JSON TIMEOUT` in the master container: a ping of those nodes
# that returns as soon as all of them answered (`celery inspect ping` waits its whole timeout).
PING_PROBE = r"""
import json, sys
from celery.app.utils import find_app
app = find_app(sys.argv[1])
nodes = json.loads(sys.argv[2])
app.conf.broker_connection_max_retries = 1
replies = app.control.inspect(timeout=float(sys.argv[3]), limit=len(nodes), destination=nodes).ping()
print(json.dumps(replies or {}))
"""


def wait_for_workers(cluster: Cluster, pool: ConnectionPool, nodes: list[str]) -> float:
    """Poll (bounded by timeouts.workers) until the given Celery nodes answer a ping."""
    master = cluster.master_host
    conn = pool.connections.get(master.name) or _connect(pool, master)
    started = time.monotonic()
    deadline = started + cluster.spec.timeouts.workers
    argv = master_exec(cluster, ["python", "-c", PING_PROBE, cluster.spec.project.app, json.dumps(nodes), "2"])
    while True:
        asked = time.monotonic()
        answered = parse_ping(conn.run(argv, timeout=60, check=False).stdout)
        missing = sorted(set(nodes) - answered)
        if not missing:
            return time.monotonic() - started
        if time.monotonic() > deadline:
            raise InfraError(f"{len(missing)} restarted worker(s) did not answer within "
                             f"{cluster.spec.timeouts.workers:g} s: {', '.join(missing)} (see `infra logs`)")
        time.sleep(max(0.0, 1.0 - (time.monotonic() - asked)))  # no busy loop when the probe fails at once
        time.sleep(1)


# =========================================================================== logs


ROLE_NAMES = {
    "worker": "worker", "workers": "worker",
    "broker": "broker", "rabbitmq": "broker",
    "results": "results", "redis": "results",
    "master": "master",
    "flower": "flower",
}
MASTER_HOST_ROLES = {"broker", "results", "master", "flower"}


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
        hosts = (cluster.master_host.name,) if role in MASTER_HOST_ROLES else tuple(cluster.worker_hosts())
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


def list_containers_argv(cluster_name: str) -> list[str]:
    return ["docker", "ps", "--all", "--filter", f"label=infra.cluster={cluster_name}",
            "--format", '{{.Names}}\t{{.Label "infra.role"}}']


def parse_container_list(output: str) -> list[tuple[str, str]]:
    rows = []
    for line in output.splitlines():
        name, _, role = line.strip().partition("\t")
        if name:
            rows.append((name, role.strip()))
    return sorted(rows)


_SINCE = re.compile(r"^(\d+(\.\d+)?(ns|us|ms|s|m|h)?|\d{4}-\d\d-\d\d([T ][0-9:.]+)?(Z|[+-]\d\d:?\d\d)?)$")


def check_since(since: str | None) -> None:
    if since and not _SINCE.match(since):
        raise ConfigError(f"--since: {since!r} is not a duration (10m, 2h, 30s) nor a time (2025-01-31T12:00:00)")


def parse_tail(tail: str) -> str:
    if tail == "all" or (tail.isdigit() and int(tail) >= 0):
        return tail
    raise ConfigError(f"-n/--tail: {tail!r} is not a number of lines nor 'all'")


def logs_argv(container: str, *, follow: bool, since: str | None, tail: str) -> list[str]:
    """`docker logs` with timestamps: they order lines of several containers (and stdout/stderr)."""
    argv = ["docker", "logs", "--timestamps", "--tail", tail]
    if since:
        argv += ["--since", since]
    if follow:
        argv.append("--follow")
    return argv + [container]


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
    check_since(since)
    tail = parse_tail(tail)
    manifest = Manifest.load(cluster.manifest_path, cluster.name)
    departed = departed_hosts(cluster, manifest)
    selection = log_target(cluster, target, list(departed))
    hosts = [cluster.hosts.get(name) or departed[name] for name in selection.hosts]
    all_ok = True

    with ConnectionPool(cluster.spec.ssh.connect_timeout) as pool:
        opened = pool.open(hosts)
        for name, err in sorted(opened.failed.items()):
            warn(f"{name}: unreachable, its logs are left out ({without_host(name, one_line(err))})")
            all_ok = False

        def find(host: Host) -> list[tuple[str, str]]:
            result = pool[host.name].run(list_containers_argv(cluster.name), timeout=DOCKER_TIMEOUT)
            return [(host.name, name) for name, role in parse_container_list(result.stdout)
                    if selection.matches(name, role, host.name)]

        listed = run_concurrently([h for h in hosts if h.name in opened.succeeded], find, key=lambda h: h.name)
        for name, err in sorted(listed.failed.items()):
            warn(f"{name}: cannot list containers ({without_host(name, one_line(err))})")
            all_ok = False
        chosen = [pair for host in hosts for pair in listed.succeeded.get(host.name, [])]
        if not chosen:
            what = f"matching {target!r} " if target else ""
            raise InfraError(f"no container {what}of cluster {cluster.name} found on the hosts that answered")
        host_width = max(len(h) for h, _ in chosen)
        container_width = max(len(c) for _, c in chosen)
        argv_of = {pair: logs_argv(pair[1], follow=follow, since=since, tail=tail) for pair in chosen}

        if not follow:
            def read(pair: tuple[str, str]) -> list[str]:
                result = pool[pair[0]].run(argv_of[pair], timeout=120, check=False)
                if not result.ok:
                    raise InfraError(_last_line(result.stderr or result.output))
                return result.stdout.splitlines() + result.stderr.splitlines()

            got = run_concurrently(chosen, read, key=lambda pair: pair)
            for (host, container), err in got.failed.items():
                warn(f"{host}: logs of {container}: {one_line(err)}")
                all_ok = False
            for line in merge_logs(got.succeeded):
                emit(format_log_line(line, host_width, container_width, timestamps))
            return all_ok

        lock = threading.Lock()
        stop = threading.Event()

        def stream(pair: tuple[str, str]) -> None:
            host, container = pair

            def printer(raw: str) -> None:
                _, stamp, text = split_timestamp(raw)
                with lock:
                    emit(format_log_line(LogLine(host, container, text, stamp), host_width, container_width, timestamps))

            try:
                pool[host].run(["sh", "-c", follow_command(argv_of[pair])], stdin=_HeldOpen(stop), check=False,
                               on_stdout=printer, on_stderr=printer)
            except (InfraError, OSError, EOFError):
                pass  # the connection went away (host lost)

        threads = [threading.Thread(target=stream, args=(pair,), daemon=True) for pair in chosen]
        for thread in threads:
            thread.start()
        try:
            while any(thread.is_alive() for thread in threads):
                for thread in threads:
                    thread.join(0.2)
        except KeyboardInterrupt:
            pass  # Ctrl-C is how `logs -f` ends
        finally:
            stop.set()  # closes every stream's stdin: the remote `docker logs` are killed
            deadline = time.monotonic() + 5
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))
    return all_ok


def follow_command(argv: list[str]) -> str:
    """Run `docker logs --follow` until it ends or this command's stdin closes.

    Without this, a remote `docker logs --follow` outlives the SSH session that started it
    (until the container writes again). Background commands of `sh` get /dev/null as stdin,
    so the watcher reads the real stdin through fd 3.
    """
    return (f"exec 3<&0; {shlex.join(argv)} </dev/null & pid=$!; "
            "(cat <&3 >/dev/null 2>&1; kill $pid 2>/dev/null) >/dev/null 2>&1 & "
            "wait $pid")


class _HeldOpen:
    """A stdin that sends nothing and ends when `event` is set."""

    def __init__(self, event: threading.Event):
        self.event = event

    def read(self, size: int = -1) -> bytes:
        self.event.wait()
        return b""


# =========================================================================== run


PID_MARKER = "__infra_run_pid__="
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def job_words(script: str, args: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """Also accept the job written as a command: `python -m MODULE ...`, `python FILE.py ...`, `-m MODULE`."""
    words = (script, *args)
    if words[0] in ("python", "python3"):
        words = words[1:]
    if len(words) >= 2 and words[0] == "-m":
        words = words[1:]
    if not words:
        raise ConfigError("run: name a script (FILE.py) or a module to run")
    return words[0], tuple(words[1:])


def script_command(script: str, project_dir: Path) -> list[str]:
    """What follows `python` for SCRIPT: a file of the project (`*.py`) or a module (`-m NAME`)."""
    if script.endswith(".py"):
        path = Path(script)
        if path.is_absolute():
            try:
                path = path.resolve().relative_to(project_dir.resolve())
            except ValueError:
                raise ConfigError(f"run: {script} is not inside the project folder {project_dir}") from None
        rel = posixpath.normpath(path.as_posix())
        if rel.startswith("../") or rel == ".." or rel.startswith("/"):
            raise ConfigError(f"run: {script} is not inside the project folder {project_dir}")
        if not (project_dir / rel).is_file():
            raise ConfigError(f"run: no file {rel} in the project folder {project_dir}")
        return [rel]
    if not _MODULE.match(script):
        raise ConfigError(f"run: {script!r} is neither a .py file of the project nor a module name (package.module)")
    return ["-m", script]


def run_argv(cluster_name: str, python_args: list[str], args: list[str] | tuple[str, ...]) -> list[str]:
    """`docker exec` in the master container; a tiny shell first tells the job's pid (for Ctrl-C)."""
    wrapper = f'echo "{PID_MARKER}$$" >&2; exec "$@"'
    return ["docker", "exec", "--workdir", CONTAINER_PROJECT, f"{cluster_name}-master",
            "sh", "-c", wrapper, "infra-run", "python", *python_args, *args]


def signal_argv(cluster_name: str, pid: int, signal: str) -> list[str]:
    return ["docker", "exec", f"{cluster_name}-master", "kill", f"-{signal}", str(pid)]


def _wait_until_gone(conn: Connection, cluster_name: str, pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not conn.run(signal_argv(cluster_name, pid, "0"), timeout=30, check=False).ok:
            return True
        time.sleep(0.3)
    return False


def plan_fetch(remote: dict[str, str], local: dict[str, filesync.LocalFile]) -> list[str]:
    """Output files of the master host that are new here or differ from the local copy."""
    wanted = []
    for rel, digest in sorted(remote.items()):
        parts = rel.split("/")
        if rel.startswith("/") or ".." in parts or "\n" in rel or not rel:
            continue  # never write outside the output folder
        if rel not in local or local[rel].digest != digest:
            wanted.append(rel)
    return wanted


def fetch_command(remote_dir: str) -> str:
    """A gzipped tar of the files named on stdin (one per line), as base64 text on stdout."""
    return f"cd {shlex.quote(remote_dir)} && tar -czf - -T - | base64"


def unpack_files(data: bytes, target: Path, wanted: list[str]) -> int:
    """Write the wanted regular files of a tar.gz under `target`; returns the bytes written."""
    allowed = set(wanted)
    written = 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            rel = posixpath.normpath(member.name)
            if rel.startswith("./"):
                rel = rel[2:]
            if rel not in allowed or not member.isfile():
                continue
            content = tar.extractfile(member).read()
            path = target / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.infra-tmp")
            tmp.write_bytes(content)
            os.chmod(tmp, (member.mode & 0o777) or 0o644)
            os.replace(tmp, path)
            written += len(content)
    return written


@dataclass
class RunResult:
    exit_code: int
    fetched: list[str] = field(default_factory=list)
    fetched_bytes: int = 0
    output_dir: Path | None = None
    in_place: bool = False


def fetch_outputs(conn: Connection, remote_dir: str, local_dir: Path) -> tuple[list[str], int]:
    listing = conn.run(filesync.remote_listing_command(remote_dir), timeout=120, check=False)
    remote = parse_sha256_list(listing.stdout, ".")
    local = filesync.scan_local(local_dir, pathspec.GitIgnoreSpec.from_lines([])) if local_dir.is_dir() else {}
    wanted = plan_fetch(remote, local)
    if not wanted:
        return [], 0
    names = "".join(f"./{rel}\n" for rel in wanted).encode()
    result = conn.run(fetch_command(remote_dir), stdin=names, timeout=600)
    return wanted, unpack_files(base64.b64decode(result.stdout), local_dir, wanted)


def run_job(
    cluster: Cluster, script: str, args: tuple[str, ...], *,
    out: Callable[[str], None], err: Callable[[str], None], note: Callable[[str], None],
) -> RunResult:
    """Run SCRIPT in the master container, streaming its output; then fetch its output files."""
    script, args = job_words(script, args)
    python_args = script_command(script, cluster.project_dir)
    master = cluster.master_host
    local_output = cluster.project_dir / OUTPUT_FOLDER
    with ConnectionPool(cluster.spec.ssh.connect_timeout) as pool:
        conn = _connect(pool, master)
        facts = _facts_of(pool, cluster, master)
        container = facts.container(f"{cluster.name}-master")
        if container is None or not container.running:
            state = container.state if container else "missing"
            raise InfraError(f"{master.name}: the master container {cluster.name}-master is {state}: run `infra up`")
        layout = host_layout(cluster, master, facts)
        if not master.is_local:
            stale = preview_sync(conn, cluster.project_dir, layout.project_dir)
            if stale.changed:
                note(f"warning: the project on {master.name} differs from the local folder "
                     f"({len(stale.upload)} file(s) to send, {len(stale.delete)} to delete): "
                     f"run `infra sync-files` to use your latest code")

        pid: list[int] = []

        def on_stderr(line: str) -> None:
            if not pid and line.startswith(PID_MARKER) and line[len(PID_MARKER):].strip().isdigit():
                pid.append(int(line[len(PID_MARKER):]))
                return
            err(line)

        box: dict = {}

        def execute() -> None:
            try:
                box["result"] = conn.run(run_argv(cluster.name, python_args, args), check=False,
                                         on_stdout=out, on_stderr=on_stderr)
            except BaseException as exc:  # handed to the main thread
                box["error"] = exc

        worker = threading.Thread(target=execute, daemon=True)
        worker.start()
        interrupted = False
        try:
            while worker.is_alive():
                worker.join(0.2)
        except KeyboardInterrupt:
            interrupted = True
            note("interrupted: stopping the job in the master container")
            # Signals go to the job itself: `docker exec` forwards none, and may have died already.
            for signal, grace in (("INT", 10.0), ("TERM", 5.0), ("KILL", 5.0)):
                if not pid:
                    break
                conn.run(signal_argv(cluster.name, pid[0], signal), timeout=30, check=False)
                if _wait_until_gone(conn, cluster.name, pid[0], grace):
                    break
            worker.join(5)
        if "error" in box and not interrupted:
            raise box["error"]
        code = 130 if interrupted else box["result"].exit_code

        result = RunResult(code, output_dir=local_output)
        if master.is_local:
            result.in_place = True
            return result
        remote_output = posixpath.join(layout.project_dir, OUTPUT_FOLDER)
        result.fetched, result.fetched_bytes = fetch_outputs(conn, remote_output, local_output)
        return result
