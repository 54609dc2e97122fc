"""`infra status` shown: a table per section for people, one JSON document for scripts."""

from __future__ import annotations

import json

from ..facts.gpu import summarize as summarize_gpus
from ..facts.status import SCHEMA, ClusterStatus, iso_utc


def to_json(status: ClusterStatus) -> dict:
    """The documented `--json` shape (see the module's docstring)."""
    return {
        "schema": SCHEMA,
        "cluster": status.cluster,
        "checked_at": iso_utc(status.checked_at),
        "ok": status.ok,
        "exit_code": status.exit_code,
        "problems": list(status.problems),
        "flower_url": status.flower_url,
        "flower_published": status.flower_published,
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
             "online": w.online, "active": w.active, "processed": w.processed, "kind": w.kind,
             "volunteer": w.volunteer, "broker_users": w.broker_users}
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
    flower = status.flower_url if status.flower_published else (
        f"{status.flower_url} on the master host only (`infra flower` opens it here)")
    lines = [_headline(status), f"flower: {flower}"]
    lines += ["", "HOSTS", *_host_table(status)]
    lines += ["", "CONTAINERS", *_container_table(status)]
    lines += ["", "WORKERS" + ("" if status.celery_error is None else f" (celery: {status.celery_error})")]
    lines += _table(["worker", "online", "active", "processed", "kind"],
                    [[w.name, _yes_no(w.online), _count(w.active), _count(w.processed), _kind(w)]
                     for w in status.workers])
    lines += ["", "QUEUES" + ("" if status.broker_error is None else f" (rabbitmq: {status.broker_error})")]
    lines += _queue_table(status)
    if status.volunteers:
        lines += ["", "VOLUNTEERS"]
        lines += _table(["volunteer", "state", "joined", "last seen", "arch", "workers", "tasks done"],
                        [[v.name, v.state, v.joined or "-", v.last_seen or "-", v.arch or "-", str(len(v.workers)),
                          _count(v.tasks_done)] for v in status.volunteers])
    lines += ["", *_verdict(status)]
    return "\n".join(lines)


def _kind(worker) -> str:
    """cluster, volunteer NAME, or STRANGER (a name that is neither, or a volunteer under the cluster's)."""
    if worker.kind == "volunteer":
        return f"volunteer {worker.volunteer}"
    return "STRANGER" if worker.kind == "stranger" else worker.kind


def _headline(status: ClusterStatus) -> str:
    reachable = sum(1 for h in status.hosts if h.reachable)
    expected = [c for c in status.containers if c.expected]
    up = sum(1 for c in expected if c.state == "running")
    expected_workers = [w for w in status.workers if w.expected]
    online = sum(1 for w in expected_workers if w.online and w.kind == "cluster")  # a stranger under its name is not it
    return (f"cluster {status.cluster}: {reachable}/{len(status.hosts)} hosts reachable, "
            f"{up}/{len(expected)} containers running, {online}/{len(expected_workers)} workers online")


def _host_table(status: ClusterStatus) -> list[str]:
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
    return _table(host_headers, host_rows)


def _container_table(status: ClusterStatus) -> list[str]:
    container_rows = []
    for c in status.containers:
        state = c.state if c.state == "running" else c.state.upper()
        if c.exit_code not in (None, 0) and c.state != "running":
            state += f" ({c.exit_code})"
        if not c.expected:
            state += " (not in the cluster file)"
        container_rows.append([c.name, c.host, c.role, state, c.health or "-",
                               format_duration(c.uptime_seconds), c.image or "-"])
    return _table(["container", "host", "role", "state", "health", "uptime", "image"], container_rows)


def _queue_table(status: ClusterStatus) -> list[str]:
    """The work queues (Celery's own are left out); a note when there is none yet."""
    work_queues = [q for q in status.queues if not q.internal]
    if work_queues:
        return _table(["queue", "messages", "ready", "unacked", "consumers"],
                      [[q.name, str(q.messages), _count(q.ready), _count(q.unacked), str(q.consumers)]
                       for q in work_queues])
    return ["  (no queue yet)"] if status.broker_error is None else []


def _verdict(status: ClusterStatus) -> list[str]:
    if status.ok:
        return ["all running"]
    return [f"{len(status.problems)} problem(s):", *(f"  - {p}" for p in status.problems)]
