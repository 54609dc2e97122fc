"""`infra clean`: on every host at once, remove what the manifest recorded and what carries the cluster's label."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field

from ..commands.engine import ListContainers, ListImageRefs, ListNetworks, ListVolumes
from ..config import Cluster, Host
from ..errors import InfraError, one_line, without_host
from ..facts.containers import parse_container_list
from ..facts.files import parse_removal
from ..names import forwarded_registry_patterns
from ..plans.clean import CleanPlan, plan_clean
from ..state.lock import cluster_lock
from ..state.manifest import Manifest
from ..transport.connection import Connection
from ..transport.pool import ConnectionPool, run_concurrently
from ..transport.result import check_interrupted
from ..ui.reporter import Reporter
from .execute import execute_steps
from .volunteer import revoke_everyone


@dataclass
class CleanResult:
    cleaned: dict[str, list[str]]
    failed: dict[str, BaseException]
    refused: dict[str, list[str]] = field(default_factory=dict)  # host -> folders not deleted, "FOLDER (why)"


@dataclass
class FolderOutcome:
    removed: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # "FOLDER (why)"


def remove_folders(conn: Connection, plan: CleanPlan, manifest: Manifest) -> FolderOutcome:
    """Run the plan's folder steps; each tells whether it removed, found nothing, or refused.

    The manifest forgets a folder in all three cases: one that is not the cluster's (no marker
    naming it) is not infra's to delete, now or later — it is reported, never counted as removed.
    """
    outcome = FolderOutcome(refused=list(plan.refused))
    for removal in plan.folders:
        check_interrupted()
        step, folder = removal.step, removal.folder
        if removal.owners_query is not None:
            refusal = removal.refusal(conn.run(list(removal.owners_query), timeout=step.timeout).stdout)
            if refusal:  # kept in the manifest: removed by a later clean once the modes are fixed
                outcome.refused.append(f"{folder} ({refusal})")
                continue
        answer = conn.run(list(step.command), timeout=step.timeout)
        verdict, why = parse_removal(answer.stdout)
        if verdict == "removed":
            outcome.removed.append(folder)
        elif verdict == "refused":
            outcome.refused.append(f"{folder} ({why})")
        for record in step.records:
            manifest.apply(conn.host, record.kind, record.name)
    return outcome


def plan_host_clean(cluster: Cluster, conn: Connection, manifest: Manifest, *, files: bool, volumes: bool) -> CleanPlan:
    engine = conn.engine
    name = conn.host.name
    return plan_clean(
        name, manifest.hosts.get(name),
        containers=[c.name for c in parse_container_list(engine.query(ListContainers(cluster.name)))],
        networks=engine.query(ListNetworks(cluster.name)),
        volumes=engine.query(ListVolumes(cluster.name)) if volumes else [],
        registry_refs=engine.query(ListImageRefs(forwarded_registry_patterns(cluster.name))),
        files=files, remove_volumes=volumes, cluster=cluster.name, state_dir=str(cluster.state_dir),
    )


def clean_host(cluster: Cluster, conn: Connection, manifest: Manifest, reporter: Reporter, *,
               files: bool, volumes: bool) -> tuple[list[str], list[str]]:
    """What was removed from the host, and the folders it refused to delete (reported already)."""
    plan = plan_host_clean(cluster, conn, manifest, files=files, volumes=volumes)
    execute_steps(conn, plan.steps, manifest)
    folders = remove_folders(conn, plan, manifest)
    left = parse_container_list(conn.engine.query(ListContainers(cluster.name)))
    if left:
        raise InfraError(f"{conn.host.name}: {len(left)} container(s) could not be removed: "
                         f"{', '.join(c.name for c in left)}")
    manifest.drop_host_if_empty(conn.host.name)
    record = manifest.hosts.get(conn.host.name)
    kept = ([f"volume {v}" for v in record.volumes] + [f"files {f}" for f in record.files]) if record else []
    line = f"removed {len(plan.containers)} container(s)"
    if folders.removed:
        line += f", folder(s) {', '.join(folders.removed)}"
    if kept:
        line += f"; kept {', '.join(kept)}"
    if folders.refused:
        line += f"; refused to delete {', '.join(folders.refused)}"
    reporter.host(conn.host.name, line, style="yellow" if folders.refused else "")
    return plan.removed() + [f"folder {folder}" for folder in folders.removed], folders.refused


def clean(cluster: Cluster, reporter: Reporter, *, files: bool = False, volumes: bool = False,
          wait: bool = False) -> CleanResult:
    with cluster_lock(cluster.state_dir, cluster.name, "clean", wait=wait):
        return _clean(cluster, reporter, files=files, volumes=volumes)


def _clean(cluster: Cluster, reporter: Reporter, *, files: bool, volumes: bool) -> CleanResult:
    manifest = Manifest.load(cluster.manifest_path, cluster.name)
    hosts: dict[str, Host] = {name: manifest.host_of(name) for name in manifest.hosts}
    for name in cluster.used_hosts():  # a label sweep also where the manifest lost track
        hosts.setdefault(name, cluster.hosts[name])

    with ConnectionPool.for_cluster(cluster) as pool:
        opened = pool.open(hosts.values())
        if cluster.master_host.name in opened.succeeded:  # volunteers lose their access first (workflows/volunteer.py)
            revoke_everyone(cluster, pool[cluster.master_host.name], reporter)
        for name, err in sorted(opened.failed.items()):
            reporter.host(name, f"not cleaned: {without_host(name, one_line(err))}", style="red")
        reachable = [h for h in hosts.values() if h.name in opened.succeeded]
        done = run_concurrently(
            reachable, lambda host: clean_host(cluster, pool[host.name], manifest, reporter, files=files, volumes=volumes),
            key=lambda h: h.name)
    for name, err in sorted(done.failed.items()):
        reporter.host(name, f"not cleaned: {without_host(name, one_line(err))}", style="red")
    failed = {**opened.failed, **done.failed}
    if not failed and volumes and not manifest.hosts:
        # The broker's data (and the credentials it holds) is gone: new ones next time, and a new CA.
        cluster.secrets_path.unlink(missing_ok=True)
        shutil.rmtree(cluster.tls_dir, ignore_errors=True)
        # The layers kept for sending images by layers (workflows/ship.py): a cache, rebuilt on demand.
        shutil.rmtree(cluster.registry_dir, ignore_errors=True)
    cleaned = {name: removed for name, (removed, _) in done.succeeded.items()}
    refused = {name: why for name, (_, why) in done.succeeded.items() if why}
    return CleanResult(cleaned, failed, refused)
