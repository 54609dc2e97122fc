"""The state of a running cluster: the status model, its verdict and its renderings.

Pure: `infra.workflows.status` asks the hosts (each engine for the cluster's containers, a
Celery probe in the master container, `rabbitmqctl list_queues` in the broker container),
`infra.facts` parses the answers, and everything `infra status` shows or decides is computed here.

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
    "flower_url": "https://192.168.1.20:5555",     # http:// with `tls: false`
    "manifest": ".infra/lab/manifest.json",         # null when the cluster was never started
    "hosts": [{"name", "address", "roles": ["master", "worker"], "in_cluster_file": bool,
               "reachable": bool, "docker": bool, "error": str|null,
               "gpus": [{"index", "name", "memory_mib", "utilization"}]|null}],
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
    "broker": {"answered": bool, "error": str|null},
    "volunteers": [{"name", "state", "joined", "last_seen", "arch", "workers": [node], "tasks_done": int|null}]
  }

`state` "missing" means the container does not exist; "unknown" that its host could not be
asked. `online` is null when Celery could not be asked at all. `internal` queues are Celery's
own (events, broadcast replies); the table leaves them out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .config import Cluster
from .facts.celery import CeleryView, QueueStatus
from .facts.containers import Container
from .facts.gpu import Gpu
from .facts.gpu import summarize as summarize_gpus
from .names import MASTER_ROLES, container_name
from .plans.up import expected_worker_nodes, worker_count

SCHEMA = "infra.status/1"
EXIT_RUNNING = 0
EXIT_NOT_RUNNING = 3


# --------------------------------------------------------------------------- what should run


@dataclass(frozen=True)
class ExpectedContainer:
    name: str
    host: str
    role: str


def expected_containers(cluster: Cluster) -> list[ExpectedContainer]:
    """Every container the cluster file asks for (same names as `infra.plan.desired_containers`)."""
    master = cluster.master_host.name
    wanted = [ExpectedContainer(container_name(cluster.name, role), master, role) for role in MASTER_ROLES]
    for host in cluster.worker_hosts():
        wanted += [ExpectedContainer(container_name(cluster.name, "worker", host, i), host, "worker")
                   for i in range(1, worker_count(cluster, host) + 1)]
    return wanted


# --------------------------------------------------------------------------- the model


@dataclass
class HostObservation:
    """What one host answered (or why it did not)."""

    reachable: bool
    error: str | None = None  # why it could not be reached or Docker could not be asked
    containers: list[Container] | None = None  # None: Docker was not asked or did not answer
    gpus: list[Gpu] | None = None  # None: not asked; [] no nvidia-smi there


@dataclass
class HostStatus:
    name: str
    address: str
    roles: list[str]
    in_cluster_file: bool
    reachable: bool
    docker: bool
    error: str | None
    gpus: list[Gpu] | None = None


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
    volunteers: list = field(default_factory=list)  # infra.workflows.volunteer.VolunteerRow, set by the workflow

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
    hosts = _host_statuses(cluster, observations, other_hosts or {}, problems)
    containers = _container_statuses(cluster, observations, [h.name for h in hosts], now, problems)
    running = {c.name for c in containers if c.state == "running"}
    workers = _worker_statuses(cluster, celery, running, problems)

    master = container_name(cluster.name, "master")
    broker = container_name(cluster.name, "broker")
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


def _host_statuses(cluster: Cluster, observations: dict[str, HostObservation], other_hosts: dict[str, str],
                   problems: list[str]) -> list[HostStatus]:
    hosts: list[HostStatus] = []
    for name in cluster.used_hosts() + sorted(other_hosts):
        seen = observations.get(name, HostObservation(False, "not asked"))
        in_file = name in cluster.used_hosts()
        address = cluster.hosts[name].address if in_file else other_hosts[name]
        docker = seen.reachable and seen.containers is not None
        hosts.append(HostStatus(name, address, _host_roles(cluster, name) if in_file else [], in_file,
                                seen.reachable, docker, seen.error, seen.gpus))
        if not seen.reachable:
            problems.append(f"{name}: unreachable ({seen.error or 'no answer'})")
        elif not docker:
            problems.append(f"{name}: Docker does not answer ({seen.error or 'no answer'})")
    return hosts


def _container_statuses(cluster: Cluster, observations: dict[str, HostObservation], host_names: list[str],
                        now: datetime, problems: list[str]) -> list[ContainerStatus]:
    """Every expected container (found or not), then the cluster's others found on the hosts."""
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
    for name in host_names:
        for found in observations.get(name, HostObservation(False)).containers or []:
            if found.name not in expected_names:
                containers.append(_container_status(found, name, False, now))
    return containers


def _worker_statuses(cluster: Cluster, celery: CeleryView | None, running: set[str],
                     problems: list[str]) -> list[WorkerStatus]:
    """Every expected Celery node, then others that answered; online as Celery says."""
    workers: list[WorkerStatus] = []
    expected_names = {c.name for c in expected_containers(cluster)}
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
    return workers


def _container_status(found: Container, host: str, expected: bool, now: datetime) -> ContainerStatus:
    started = found.started
    uptime = None
    if found.running and started:
        uptime = max(0, int((now - started).total_seconds()))
    return ContainerStatus(
        name=found.name, host=host, role=found.role or "?", expected=expected, state=found.state,
        health=found.health, started_at=_iso(started) if started else None,
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
             "reachable": h.reachable, "docker": h.docker, "error": h.error,
             "gpus": None if h.gpus is None else [
                 {"index": g.index, "name": g.name, "memory_mib": g.memory_mib, "utilization": g.utilization}
                 for g in h.gpus]}
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
        "volunteers": [
            {"name": v.name, "state": v.state, "joined": v.joined, "last_seen": v.last_seen, "arch": v.arch,
             "workers": list(v.workers), "tasks_done": v.tasks_done}
            for v in status.volunteers
        ],
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
    host_headers = ["host", "address", "roles", "state"]
    if any(h.gpus for h in status.hosts):  # a column only for clusters that have GPUs
        host_headers.append("gpus")
        for row, h in zip(host_rows, status.hosts):
            row.append(summarize_gpus(h.gpus or []))
    lines += _table(host_headers, host_rows)

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

    if status.volunteers:
        lines += ["", "VOLUNTEERS"]
        lines += _table(["volunteer", "state", "joined", "last seen", "arch", "workers", "tasks done"],
                        [[v.name, v.state, v.joined or "-", v.last_seen or "-", v.arch or "-", str(len(v.workers)),
                          _count(v.tasks_done)] for v in status.volunteers])

    lines.append("")
    if status.ok:
        lines.append("all running")
    else:
        lines.append(f"{len(status.problems)} problem(s):")
        lines += [f"  - {p}" for p in status.problems]
    return "\n".join(lines)
