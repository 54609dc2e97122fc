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
    "flower_url": "https://192.168.1.20:5555",     # http:// with `tls: false`; on the master's
                                                    # loopback (https://127.0.0.1:5555) unless published
    "flower_published": false,                      # roles.master.publish_flower; false: `infra flower`
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
                 "online": bool|null, "active": int|null, "processed": int|null,
                 "kind": "cluster|volunteer|stranger", "volunteer": str|null, "broker_users": [str]|null}],
    "queues": [{"name", "messages": int, "ready": int|null, "unacked": int|null, "consumers": int,
                "internal": bool}],
    "celery": {"answered": bool, "error": str|null},
    "broker": {"answered": bool, "error": str|null},
    "volunteers": [{"name", "state", "joined", "last_seen", "arch", "workers": [node], "tasks_done": int|null}]
  }

`state` "missing" means the container does not exist; "unknown" that its host could not be
asked. A worker's `kind` is `cluster` for a node name the cluster file expects, `volunteer` for a
node under an active volunteer's own prefix (`volunteer` names who), and `stranger` for anything
else, including a node that answers under a name the file expects while the broker says it logs in
as a volunteer (`broker_users`: who consumes its pidbox queue; null when the broker was not asked). `online` is null when Celery could not be asked at all. `internal` queues are Celery's
own (events, broadcast replies); the table leaves them out.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..config import Cluster
from ..names import MASTER_ROLES, container_name
from ..plans.containers import expected_worker_nodes, worker_count
from .celery import CeleryView, QueueStatus
from .containers import Container
from .gpu import Gpu

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
    kind: str = "cluster"  # cluster, volunteer or stranger (`mark_workers`)
    volunteer: str | None = None
    broker_users: list[str] | None = None  # who consumes the node's pidbox queue, as the broker says


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
    flower_published: bool = True  # False: Flower listens on the master's loopback only (`infra flower`)

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
    flower_published: bool = True,
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
        flower_published=flower_published,
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
        kind = "cluster" if is_expected else "stranger"  # by its name alone, until `mark_workers`
        if celery is None or not celery.answered:
            workers.append(WorkerStatus(node, host, container, is_expected, None, kind=kind))
            continue
        online = node in celery.online
        workers.append(WorkerStatus(node, host, container, is_expected, online,
                                    celery.active.get(node) if online else None,
                                    celery.processed.get(node) if online else None, kind=kind))
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
        health=found.health, started_at=iso_utc(started) if started else None,
        uptime_seconds=uptime, image=found.image or None, restarts=found.restarts, exit_code=found.exit_code,
    )


# --------------------------------------------------------------------------- who a worker is

VOLUNTEER_USER_PREFIX = "volunteer-"  # `runtime.endpoint.volunteer_user`
PIDBOX_SUFFIX = ".celery.pidbox"  # a Celery node NAME consumes its control queue NAME.celery.pidbox


def parse_node_users(output: str) -> dict[str, list[str]]:
    """Celery node -> the broker users consuming its pidbox queue, from `commands.volunteer.node_users`
    (rabbitmqctl's consumers, a marker line, its channels; both JSON arrays)."""
    consumers_text, _, channels_text = output.partition("\n--- channels\n")
    consumers, channels = _json_rows(consumers_text), _json_rows(channels_text)
    user_of = {row.get("pid"): row.get("user") for row in channels}
    nodes: dict[str, set[str]] = {}
    for row in consumers:
        queue = str(row.get("queue_name", ""))
        if queue.endswith(PIDBOX_SUFFIX) and not queue.endswith(".reply" + PIDBOX_SUFFIX):
            nodes.setdefault(queue[:-len(PIDBOX_SUFFIX)], set()).add(str(user_of.get(row.get("channel_pid")) or "?"))
    return {node: sorted(users) for node, users in nodes.items()}


def _json_rows(text: str) -> list[dict]:
    match = re.search(r"^\[", text, re.MULTILINE)  # rabbitmqctl may print lines before the array
    if match is None:
        raise ValueError(f"no JSON list in rabbitmqctl's answer: {text.strip()[-80:] or 'empty'}")
    rows = json.loads(text[match.start():])
    return [row for row in rows if isinstance(row, dict)] if isinstance(rows, list) else []


def worker_kind(node: str, expected: bool, volunteers: dict[str, str], users: list[str] | None) -> tuple[str, str | None]:
    """(kind, volunteer) of a Celery node, from its name and, when the broker told, who logs in as it.

    The name alone is the worker's own claim: a node the cluster file expects is the cluster's
    unless a volunteer's broker user holds it; one under a volunteer's prefix (`volunteers`:
    `CLUSTER-volunteer-NAME.` -> NAME) is that volunteer's unless another user holds it.
    `users == []` (the broker told, and nobody consumes the node's pidbox queue) means the answer
    came from another node: a ping's reply names its node in its body, which any worker may write,
    while only the node itself receives the ping on its queue. It is asked after Celery's answers,
    so a node that answered holds its queue by then.
    """
    if users is not None and not users:
        return "stranger", None
    if expected:
        forged = any(u.startswith(VOLUNTEER_USER_PREFIX) for u in users or [])
        return ("stranger", None) if forged else ("cluster", None)
    for prefix, name in volunteers.items():
        if node.startswith(prefix):
            if users is None or set(users) <= {VOLUNTEER_USER_PREFIX + name, "?"}:  # "?": its channel closed meanwhile
                return "volunteer", name
            return "stranger", None
    return "stranger", None


def mark_workers(status: ClusterStatus, volunteers: dict[str, str], node_users: dict[str, list[str]] | None) -> None:
    """Tell each worker's kind (`worker_kind`); a stranger under a name the file expects is a problem."""
    for worker in status.workers:
        users = None if node_users is None else node_users.get(worker.name, [])
        worker.broker_users = users
        worker.kind, worker.volunteer = worker_kind(worker.name, worker.expected, volunteers,
                                                    users if worker.online else None)
        if worker.expected and worker.kind == "stranger":
            who = (f"it logs in to the broker as {', '.join(users)}" if users else
                   "nobody holds this worker's control queue: another node answers in its name")
            status.problems.append(f"worker {worker.name}: a stranger answers under this name of the cluster file ({who})")


# --------------------------------------------------------------------------- renderings


def iso_utc(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
