"""`infra status`: ask every host at once what runs, ask Celery and RabbitMQ on the master, compare."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from typing import Callable

from ..commands.celery import celery_probe, list_queues
from ..commands.engine import InspectContainers, ListContainers
from ..commands.files import gpu_query
from ..config import Cluster, Host
from ..errors import InfraError, one_line, redact, without_host
from ..facts.celery import (
    CeleryView,
    QueueStatus,
    parse_celery_probe,
    parse_list_queues,
)
from ..facts.containers import parse_container_inspect, parse_container_list
from ..facts.gpu import Gpu, parse_gpu_query
from ..facts.sections import last_line
from ..commands.volunteer import node_users
from ..facts.status import ClusterStatus, HostObservation, build_status, mark_workers, parse_node_users
from ..plans.addresses import flower_url, master_address
from ..plans.containers import expected_worker_nodes
from ..state.manifest import Manifest
from ..transport.connection import Connection
from ..transport.pool import ConnectionPool, run_concurrently
from .up import departed_hosts
from .volunteer import endpoint_log_lines, volunteer_prefixes, volunteer_rows, wants_endpoint_log

CELERY_REPLY_TIMEOUT = 2.0  # how long workers are given to answer a broadcast
PROBE_TIMEOUT = 25.0  # the whole Celery probe or rabbitmqctl call


def observe_host(cluster: Cluster, conn: Connection) -> HostObservation:
    try:
        listed = parse_container_list(conn.engine.query(ListContainers(cluster.name)))
        inspected = parse_container_inspect(conn.engine.query(InspectContainers(tuple(c.name for c in listed))))
    except InfraError as exc:
        return HostObservation(True, redact(without_host(conn.host.name, one_line(exc))))
    return HostObservation(True, None, list(inspected))


def ask_celery(cluster: Cluster, conn: Connection) -> CeleryView:
    probe = celery_probe(cluster.name, cluster.celery_app, expected_worker_nodes(cluster), CELERY_REPLY_TIMEOUT)
    result = conn.engine.exec(probe, timeout=PROBE_TIMEOUT)
    if result.exit_code == 124:
        return CeleryView(error=f"no answer within {PROBE_TIMEOUT:g} s")
    return parse_celery_probe(result.stdout if result.stdout.strip() else result.output)


def ask_gpus(conn: Connection) -> list[Gpu]:
    """The host's GPUs (none where nvidia-smi is missing or fails: status is about the cluster)."""
    result = conn.run(gpu_query(), timeout=PROBE_TIMEOUT, check=False)
    return parse_gpu_query(result.stdout) if result.ok else []


def ask_rabbitmq(cluster: Cluster, conn: Connection) -> list[QueueStatus]:
    result = conn.engine.exec(list_queues(cluster.name), timeout=PROBE_TIMEOUT)
    if not result.ok:
        raise InfraError(redact(last_line(result.output)))
    return parse_list_queues(result.stdout)


def ask_node_users(cluster: Cluster, conn: Connection) -> dict[str, list[str]]:
    """Celery node -> the broker users holding its pidbox queue (`facts.status.mark_workers`)."""
    result = conn.engine.exec(node_users(cluster.name), timeout=PROBE_TIMEOUT)
    if not result.ok:
        raise InfraError(redact(last_line(result.output)))
    return parse_node_users(result.stdout)


def gather_status(cluster: Cluster) -> ClusterStatus:
    """Ask every host at once; a host that does not answer costs at most the connect timeout."""
    manifest = Manifest.load(cluster.manifest_path, cluster.name)
    departed = departed_hosts(cluster, manifest)
    everyone = [cluster.hosts[name] for name in cluster.used_hosts()] + list(departed.values())
    master = cluster.master_host
    read_join_log = wants_endpoint_log(cluster)

    with ConnectionPool.for_cluster(cluster) as pool:

        def visit(host: Host) -> dict:
            # Connect and ask in one go per host, so a slow host delays nobody else.
            opened = pool.open([host])
            if opened.failed:
                return {"engine": HostObservation(False, without_host(host.name, one_line(opened.failed[host.name])))}
            conn = pool[host.name]
            asks: dict[str, Callable] = {"engine": lambda: observe_host(cluster, conn), "gpus": lambda: ask_gpus(conn)}
            if host.name == master.name:
                asks["celery"] = lambda: ask_celery(cluster, conn)
                asks["rabbitmq"] = lambda: ask_rabbitmq(cluster, conn)
                if read_join_log:  # joins are recorded there, as `volunteer list` reads them
                    asks["join-log"] = lambda: endpoint_log_lines(cluster, conn)
            answers = run_concurrently(list(asks), lambda key: asks[key]())
            found = dict(answers.succeeded)
            found.update({f"{key}-error": without_host(host.name, one_line(err)) for key, err in answers.failed.items()})
            if "celery" in found:  # after Celery's answer: every node that answered holds its pidbox queue by now
                try:
                    found["node-users"] = ask_node_users(cluster, conn)
                except (InfraError, ValueError) as exc:
                    found["node-users-error"] = without_host(host.name, one_line(exc))
            if "engine" not in found:
                found["engine"] = HostObservation(True, found.get("engine-error", "no answer"))
            found["engine"] = replace(found["engine"], gpus=found.get("gpus"))
            return found

        visited = run_concurrently(everyone, visit, key=lambda h: h.name)

    answers = {h.name: visited.succeeded.get(h.name) or {"engine": HostObservation(False, one_line(visited.failed[h.name]))}
               for h in everyone}
    at_master = answers[master.name]
    queue_error = at_master.get("rabbitmq-error")
    if not answers[master.name]["engine"].reachable:
        queue_error = "the master host is unreachable"
    status = build_status(
        cluster, {name: found["engine"] for name, found in answers.items()},
        now=datetime.now(timezone.utc),
        flower_url=flower_url(cluster, master_address(cluster)),
        flower_published=cluster.spec.roles.master.publish_flower,
        manifest_path=cluster.manifest_path if cluster.manifest_path.exists() else None,
        other_hosts={name: host.address for name, host in departed.items()},
        celery=at_master.get("celery"),
        queues=at_master.get("rabbitmq"),
        queue_error=queue_error,
    )
    status.volunteers = volunteer_rows(cluster, at_master.get("celery"), at_master.get("join-log", []))
    mark_workers(status, volunteer_prefixes(cluster), at_master.get("node-users"))  # cluster, volunteer or stranger
    return status
