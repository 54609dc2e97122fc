"""The state of a running cluster: parsers of what the hosts answer, the status model, renderings.

Pure: `infra.live` runs the commands (`docker inspect` of the cluster's containers on every host,
a Celery probe in the master container, `rabbitmqctl list_queues` in the broker container) and
hands their outputs here; everything `infra status` shows or decides is computed below.

Exit code of `infra status` (`ClusterStatus.exit_code`):
  0  every host of the cluster answers, every expected container is running (and not unhealthy),
     every expected Celery worker answers;
  3  something expected is missing, stopped, unhealthy or unreachable (the problems are listed);
  2  bad input: the cluster file or the local state cannot be read (nothing was asked).

`infra status --json` prints one object; its shape is stable (keys may be added, never renamed
or removed, within one "schema"):

  {
    "schema": "infra.status/1",
    "cluster": "lab",
    "checked_at": "2025-01-31T12:00:00Z",          # UTC
    "ok": true,                                     # no problem found
    "exit_code": 0,                                 # 0 or 3, as above
    "problems": ["h3: unreachable (timed out)"],    # one sentence each, empty when ok
    "flower_url": "http://192.168.1.20:5555",
    "manifest": ".infra/lab/manifest.json",         # null when the cluster was never started
    "hosts": [{"name", "address", "roles": ["master", "worker"], "in_cluster_file": bool,
               "reachable": bool, "docker": bool, "error": str|null}],
    "containers": [{"name", "host", "role", "expected": bool,
                    "state": "running|restarting|paused|exited|created|dead|missing|unknown",
                    "health": "healthy|unhealthy|starting"|null, "started_at": str|null,
                    "uptime_seconds": int|null, "image": str|null, "restarts": int|null,
                    "exit_code": int|null}],
    "workers": [{"name": "lab-worker-pi1-1@pi1", "host", "container", "expected": bool,
                 "online": bool|null, "active": int|null, "processed": int|null}],
    "queues": [{"name", "messages": int, "ready": int|null, "unacked": int|null, "consumers": int,
                "internal": bool}],
    "celery": {"answered": bool, "error": str|null},
    "broker": {"answered": bool, "error": str|null}
  }

`state` "missing" means the container does not exist; "unknown" that its host could not be
asked. `online` is null when Celery could not be asked at all. `internal` queues are Celery's
own (events, broadcast replies); the table leaves them out.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from .config import Cluster
from .plan import expected_worker_nodes, worker_name

SCHEMA = "infra.status/1"
EXIT_RUNNING = 0
EXIT_NOT_RUNNING = 3
MASTER_ROLES = ("broker", "results", "master", "flower")


# --------------------------------------------------------------------------- what should run


@dataclass(frozen=True)
class ExpectedContainer:
    name: str
    host: str
    role: str


def expected_containers(cluster: Cluster) -> list[ExpectedContainer]:
    """Every container the cluster file asks for (same names as `infra.plan.desired_containers`)."""
    master = cluster.master_host.name
    wanted = [ExpectedContainer(f"{cluster.name}-{role}", master, role) for role in MASTER_ROLES]
    for host in cluster.worker_hosts():
        count = sum(g.containers for g in cluster.spec.roles.workers if g.host == host)
        wanted += [ExpectedContainer(worker_name(cluster, host, i), host, "worker") for i in range(1, count + 1)]
    return wanted


# --------------------------------------------------------------------------- parsers


@dataclass(frozen=True)
class ContainerInfo:
    """One container as `docker inspect` describes it."""

    name: str
    id: str
    role: str  # label infra.role ("" for a container without it)
    state: str  # running, restarting, paused, exited, created, dead
    health: str | None  # healthy, unhealthy, starting; None without a health check
    started_at: datetime | None
    image: str  # the image name the container was started from
    restarts: int
    exit_code: int | None  # of the last run, when not running

    @property
    def running(self) -> bool:
        return self.state == "running"


def parse_docker_time(text: str | None) -> datetime | None:
    """Docker's RFC 3339 times with nanoseconds (`2025-01-31T12:00:00.123456789Z`); None for its zero time."""
    if not text or text.startswith("0001-01-01"):
        return None
    match = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?$", text.strip())
    if not match:
        return None
    base, fraction, zone = match.groups()
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    parsed = datetime.fromisoformat(base).replace(microsecond=micro)
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        parsed -= sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
    return parsed.replace(tzinfo=timezone.utc)


def parse_containers(text: str) -> list[ContainerInfo]:
    """`docker inspect` of containers: its JSON array, or one JSON object per line (`--format`)."""
    text = text.strip()
    if not text:
        return []
    items = json.loads(text) if text.startswith("[") else [json.loads(line) for line in text.splitlines() if line.strip()]
    found = []
    for item in items:
        state = item.get("State") or {}
        config = item.get("Config") or {}
        labels = config.get("Labels") or {}
        health = (state.get("Health") or {}).get("Status") or None
        status = state.get("Status", "unknown")
        found.append(ContainerInfo(
            name=item.get("Name", "").lstrip("/"),
            id=item.get("Id", "")[:12],
            role=labels.get("infra.role", ""),
            state=status,
            health=health,
            started_at=parse_docker_time(state.get("StartedAt")),
            image=config.get("Image", ""),
            restarts=int(item.get("RestartCount") or 0),
            exit_code=None if status == "running" else state.get("ExitCode"),
        ))
    return sorted(found, key=lambda c: c.name)


def last_json_line(output: str, opening: str = "{"):
    """The last line of `output` that is a JSON value starting with `opening` (others are log noise)."""
    for line in reversed(output.strip().splitlines()):
        line = line.strip()
        if line.startswith(opening):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


def active_counts(replies: dict | None) -> dict[str, int]:
    """Node -> tasks running now, from `celery inspect active --json` (a list of tasks per node)."""
    return {node: len(tasks or []) for node, tasks in (replies or {}).items()}


def processed_counts(replies: dict | None) -> dict[str, int]:
    """Node -> tasks processed since the worker started, from `celery inspect stats --json` ("total")."""
    counts = {}
    for node, stats in (replies or {}).items():
        total = (stats or {}).get("total") or {}
        counts[node] = sum(int(n) for n in total.values()) if isinstance(total, dict) else 0
    return counts


@dataclass(frozen=True)
class CeleryView:
    """What the workers told the master: which answered, their active and processed counts."""

    active: dict[str, int] = field(default_factory=dict)
    processed: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    @property
    def answered(self) -> bool:
        return self.error is None

    @property
    def online(self) -> set[str]:
        return set(self.active) | set(self.processed)


# Run in the master container as `python -c CELERY_PROBE APP EXPECTED_JSON TIMEOUT`. One process
# asks `active` then `stats`, each returning as soon as every expected worker answered (the
# `celery inspect` command always waits its whole timeout). Prints one JSON line.
CELERY_PROBE = r"""
import json, sys
out = {"active": None, "stats": None, "error": None}
try:
    from celery.app.utils import find_app
    app = find_app(sys.argv[1])
    expected = set(json.loads(sys.argv[2]))
    timeout = float(sys.argv[3])
    app.conf.broker_connection_timeout = timeout
    app.conf.broker_connection_max_retries = 1
    active = app.control.inspect(timeout=timeout, limit=len(expected) or None).active() or {}
    if expected - set(active) and len(active) >= len(expected):
        active = app.control.inspect(timeout=timeout).active() or {}  # others answered first
    stats = app.control.inspect(timeout=timeout, limit=len(active)).stats() or {} if active else {}
    out["active"], out["stats"] = active, stats
except Exception as exc:
    out["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
print(json.dumps(out, default=str))
"""


def parse_celery_probe(output: str) -> CeleryView:
    """The JSON line printed by CELERY_PROBE."""
    data = last_json_line(output)
    if not isinstance(data, dict):
        lines = output.strip().splitlines()
        return CeleryView(error=redact(lines[-1]) if lines else "no answer from the master container")
    if data.get("error"):
        return CeleryView(error=redact(str(data["error"])))
    return CeleryView(active_counts(data.get("active")), processed_counts(data.get("stats")))


def parse_celery_cli(active_output: str, stats_output: str) -> CeleryView:
    """The same view from `celery inspect active --json` and `celery inspect stats --json` outputs."""
    return CeleryView(active_counts(last_json_line(active_output)), processed_counts(last_json_line(stats_output)))


@dataclass(frozen=True)
class QueueStatus:
    name: str
    messages: int  # ready + unacknowledged (taken by a worker, not finished)
    consumers: int
    ready: int | None = None
    unacked: int | None = None

    @property
    def internal(self) -> bool:
        """Celery's own queues: events (celeryev.*), broadcast and reply queues (*.pidbox)."""
        return self.name.startswith(("celeryev.", "amq.")) or self.name.endswith(".pidbox")


def list_queues_argv(cluster_name: str) -> list[str]:
    return ["docker", "exec", f"{cluster_name}-broker", "rabbitmqctl", "list_queues", "--quiet",
            "--formatter", "json", "name", "messages", "messages_ready", "messages_unacknowledged", "consumers"]


def parse_list_queues(output: str) -> list[QueueStatus]:
    """`rabbitmqctl list_queues --formatter json name messages ... consumers`: a JSON array of objects."""
    text = output.strip()
    rows = None
    for match in re.finditer(r"^\[", text, re.MULTILINE):  # the list starts a line; messages may precede it
        try:
            rows = json.loads(text[match.start():])
            break
        except ValueError:
            continue
    if not isinstance(rows, list):
        raise ValueError(f"no JSON list in the output: {text.splitlines()[-1] if text else 'empty'}")

    def number(row: dict, key: str) -> int | None:
        return int(row[key]) if isinstance(row.get(key), (int, float)) else None

    queues = [QueueStatus(str(r.get("name", "")), number(r, "messages") or 0, number(r, "consumers") or 0,
                          number(r, "messages_ready"), number(r, "messages_unacknowledged"))
              for r in rows if isinstance(r, dict)]
    return sorted(queues, key=lambda q: (q.internal, q.name))


_URL_CREDENTIALS = re.compile(r"(://)[^@/\s]*@")


def redact(text: str) -> str:
    """Hide `user:password@` in URLs of error messages."""
    return _URL_CREDENTIALS.sub(r"\1****@", text)


# --------------------------------------------------------------------------- the model


@dataclass
class HostObservation:
    """What one host answered (or why it did not)."""

    reachable: bool
    error: str | None = None  # why it could not be reached or Docker could not be asked
    containers: list[ContainerInfo] | None = None  # None: Docker was not asked or did not answer


@dataclass
class HostStatus:
    name: str
    address: str
    roles: list[str]
    in_cluster_file: bool
    reachable: bool
    docker: bool
    error: str | None


@dataclass
class ContainerStatus:
    name: str
    host: str
    role: str
    expected: bool
    state: str
    health: str | None = None
    started_at: str | None = None
    uptime_seconds: int | None = None
    image: str | None = None
    restarts: int | None = None
    exit_code: int | None = None


@dataclass
class WorkerStatus:
    name: str
    host: str
    container: str
    expected: bool
    online: bool | None
    active: int | None = None
    processed: int | None = None


@dataclass
class ClusterStatus:
    cluster: str
    checked_at: datetime
    flower_url: str
    manifest: str | None
    hosts: list[HostStatus]
    containers: list[ContainerStatus]
    workers: list[WorkerStatus]
    queues: list[QueueStatus]
    celery_error: str | None
    broker_error: str | None
    celery_asked: bool = True
    broker_asked: bool = True
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def exit_code(self) -> int:
        return EXIT_RUNNING if self.ok else EXIT_NOT_RUNNING


def _host_roles(cluster: Cluster, name: str) -> list[str]:
    roles = ["master"] if name == cluster.master_host.name else []
    if name in cluster.worker_hosts():
        roles.append("worker")
    return roles


def build_status(
    cluster: Cluster,
    observations: dict[str, HostObservation],
    *,
    now: datetime,
    flower_url: str,
    manifest_path: Path | None,
    other_hosts: dict[str, str] | None = None,
    celery: CeleryView | None = None,
    queues: list[QueueStatus] | None = None,
    queue_error: str | None = None,
) -> ClusterStatus:
    """Compare what the hosts answered with what the cluster file asks for.

    `other_hosts` are hosts the manifest still lists but the cluster file no longer uses
    (name -> address); their containers are shown as not expected. `celery` None means the
    master container could not be asked; `queues` None means the broker could not be asked.
    """
    problems: list[str] = []
    if manifest_path is None:
        problems.append("the cluster has not been started from here (no manifest): run `infra up`")
    other_hosts = other_hosts or {}

    hosts: list[HostStatus] = []
    for name in cluster.used_hosts() + sorted(other_hosts):
        seen = observations.get(name, HostObservation(False, "not asked"))
        in_file = name in cluster.used_hosts()
        address = cluster.hosts[name].address if in_file else other_hosts[name]
        docker = seen.reachable and seen.containers is not None
        hosts.append(HostStatus(name, address, _host_roles(cluster, name) if in_file else [], in_file,
                                seen.reachable, docker, seen.error))
        if not seen.reachable:
            problems.append(f"{name}: unreachable ({seen.error or 'no answer'})")
        elif not docker:
            problems.append(f"{name}: Docker does not answer ({seen.error or 'no answer'})")

    containers: list[ContainerStatus] = []
    expected = expected_containers(cluster)
    expected_names = {c.name for c in expected}
    for want in expected:
        seen = observations.get(want.host, HostObservation(False))
        found = next((c for c in seen.containers or [] if c.name == want.name), None)
        if seen.containers is None:
            containers.append(ContainerStatus(want.name, want.host, want.role, True, "unknown"))
            continue
        if found is None:
            containers.append(ContainerStatus(want.name, want.host, want.role, True, "missing"))
            problems.append(f"{want.name} on {want.host}: missing (run `infra up`)")
            continue
        status = _container_status(found, want.host, True, now)
        status.role = want.role
        containers.append(status)
        if found.state != "running":
            code = f", exit code {found.exit_code}" if found.state == "exited" else ""
            problems.append(f"{want.name} on {want.host}: {found.state}{code}")
        elif found.health == "unhealthy":
            problems.append(f"{want.name} on {want.host}: running but unhealthy")
    for name in [h.name for h in hosts]:
        for found in observations.get(name, HostObservation(False)).containers or []:
            if found.name not in expected_names:
                containers.append(_container_status(found, name, False, now))

    workers: list[WorkerStatus] = []
    running = {c.name for c in containers if c.state == "running"}
    nodes = expected_worker_nodes(cluster)
    if celery is not None and celery.answered:
        nodes += sorted(celery.online - set(nodes))
    for node in nodes:
        container, _, host = node.rpartition("@")
        is_expected = container in expected_names
        if celery is None or not celery.answered:
            workers.append(WorkerStatus(node, host, container, is_expected, None))
            continue
        online = node in celery.online
        workers.append(WorkerStatus(node, host, container, is_expected, online,
                                    celery.active.get(node) if online else None,
                                    celery.processed.get(node) if online else None))
        if is_expected and not online and container in running:
            problems.append(f"worker {node}: its container runs but it does not answer Celery (see `infra logs {container}`)")

    master = f"{cluster.name}-master"
    broker = f"{cluster.name}-broker"
    celery_error = None
    if celery is None:
        celery_error = "the master container could not be asked"
    elif not celery.answered:
        celery_error = celery.error
    if celery_error and master in running:
        problems.append(f"celery: the workers could not be asked ({celery_error})")
    if queues is None and broker in running:
        problems.append(f"rabbitmq: the queues could not be listed ({queue_error or 'no answer'})")

    return ClusterStatus(
        cluster=cluster.name,
        checked_at=now,
        flower_url=flower_url,
        manifest=str(manifest_path) if manifest_path else None,
        hosts=hosts,
        containers=containers,
        workers=workers,
        queues=queues or [],
        celery_error=celery_error,
        broker_error=None if queues is not None else (queue_error or "the broker container could not be asked"),
        celery_asked=celery is not None,
        broker_asked=queues is not None,
        problems=problems,
    )


def _container_status(found: ContainerInfo, host: str, expected: bool, now: datetime) -> ContainerStatus:
    uptime = None
    if found.running and found.started_at:
        uptime = max(0, int((now - found.started_at).total_seconds()))
    return ContainerStatus(
        name=found.name, host=host, role=found.role or "?", expected=expected, state=found.state,
        health=found.health, started_at=_iso(found.started_at) if found.started_at else None,
        uptime_seconds=uptime, image=found.image or None, restarts=found.restarts, exit_code=found.exit_code,
    )


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- renderings


def to_json(status: ClusterStatus) -> dict:
    """The documented `--json` shape (see the module's docstring)."""
    return {
        "schema": SCHEMA,
        "cluster": status.cluster,
        "checked_at": _iso(status.checked_at),
        "ok": status.ok,
        "exit_code": status.exit_code,
        "problems": list(status.problems),
        "flower_url": status.flower_url,
        "manifest": status.manifest,
        "hosts": [
            {"name": h.name, "address": h.address, "roles": h.roles, "in_cluster_file": h.in_cluster_file,
             "reachable": h.reachable, "docker": h.docker, "error": h.error}
            for h in status.hosts
        ],
        "containers": [
            {"name": c.name, "host": c.host, "role": c.role, "expected": c.expected, "state": c.state,
             "health": c.health, "started_at": c.started_at, "uptime_seconds": c.uptime_seconds,
             "image": c.image, "restarts": c.restarts, "exit_code": c.exit_code}
            for c in status.containers
        ],
        "workers": [
            {"name": w.name, "host": w.host, "container": w.container, "expected": w.expected,
             "online": w.online, "active": w.active, "processed": w.processed}
            for w in status.workers
        ],
        "queues": [
            {"name": q.name, "messages": q.messages, "ready": q.ready, "unacked": q.unacked,
             "consumers": q.consumers, "internal": q.internal}
            for q in status.queues
        ],
        "celery": {"answered": status.celery_error is None, "error": status.celery_error},
        "broker": {"answered": status.broker_error is None, "error": status.broker_error},
    }


def render_json(status: ClusterStatus) -> str:
    return json.dumps(to_json(status), indent=2)


def format_duration(seconds: int | None) -> str:
    """45s, 12m03s, 3h12m, 2d04h."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def _table(headers: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    lines = []
    for row in [headers, *rows]:
        lines.append((indent + "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths))).rstrip())
    return lines


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def _yes_no(value: bool | None) -> str:
    return "?" if value is None else ("yes" if value else "NO")


def render_table(status: ClusterStatus) -> str:
    """The people's view: hosts, containers, workers, queues, then the problems and the verdict."""
    reachable = sum(1 for h in status.hosts if h.reachable)
    expected = [c for c in status.containers if c.expected]
    up = sum(1 for c in expected if c.state == "running")
    expected_workers = [w for w in status.workers if w.expected]
    online = sum(1 for w in expected_workers if w.online)
    lines = [
        f"cluster {status.cluster}: {reachable}/{len(status.hosts)} hosts reachable, "
        f"{up}/{len(expected)} containers running, {online}/{len(expected_workers)} workers online",
        f"flower: {status.flower_url}",
        "",
        "HOSTS",
    ]
    host_rows = []
    for h in status.hosts:
        roles = ", ".join(h.roles) if h.in_cluster_file else "(left the cluster file)"
        if not h.reachable:
            state = f"UNREACHABLE: {h.error}"
        elif not h.docker:
            state = f"DOCKER DOWN: {h.error}"
        else:
            state = "ok"
        host_rows.append([h.name, h.address, roles or "-", state])
    lines += _table(["host", "address", "roles", "state"], host_rows)

    lines += ["", "CONTAINERS"]
    container_rows = []
    for c in status.containers:
        state = c.state if c.state == "running" else c.state.upper()
        if c.exit_code not in (None, 0) and c.state != "running":
            state += f" ({c.exit_code})"
        if not c.expected:
            state += " (not in the cluster file)"
        container_rows.append([c.name, c.host, c.role, state, c.health or "-",
                               format_duration(c.uptime_seconds), c.image or "-"])
    lines += _table(["container", "host", "role", "state", "health", "uptime", "image"], container_rows)

    lines += ["", "WORKERS" + ("" if status.celery_error is None else f" (celery: {status.celery_error})")]
    worker_rows = [[w.name, _yes_no(w.online), "-" if w.active is None else str(w.active),
                    "-" if w.processed is None else str(w.processed)] for w in status.workers]
    lines += _table(["worker", "online", "active", "processed"], worker_rows)

    lines += ["", "QUEUES" + ("" if status.broker_error is None else f" (rabbitmq: {status.broker_error})")]
    work_queues = [q for q in status.queues if not q.internal]
    if work_queues:
        lines += _table(["queue", "messages", "ready", "unacked", "consumers"],
                        [[q.name, str(q.messages), _count(q.ready), _count(q.unacked), str(q.consumers)]
                         for q in work_queues])
    elif status.broker_error is None:
        lines.append("  (no queue yet)")

    lines.append("")
    if status.ok:
        lines.append("all running")
    else:
        lines.append(f"{len(status.problems)} problem(s):")
        lines += [f"  - {p}" for p in status.problems]
    return "\n".join(lines)
