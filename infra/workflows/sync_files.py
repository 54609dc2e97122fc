"""`infra sync-files`: bring the project on the hosts up to date, then restart the workers whose code changed.

Which workers run which code is recorded in `STATE_DIR/NAME/worker-code.json` (their start
times at the moment infra restarted them), so only hosts whose code changed restart.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from ..errors import InfraError, one_line, without_host
from ..state.digests import (
    code_records_path,
    load_code_records,
    load_local_digests,
    local_digests_path,
    save_code_records,
    write_digest_record,
)
from ..state.lock import cluster_lock
from ..transport.pool import ConnectionPool, run_concurrently
from .sync_context import SyncContext, SyncOutcome, SyncResult

if TYPE_CHECKING:
    import pathspec

    from ..config import Cluster, Host
    from ..facts.files import LocalFile
    from ..ui.reporter import Reporter


def sync_files(cluster: Cluster, reporter: Reporter, *, hosts: list[Host] | None = None,
               restart: bool = True, wait: bool = False) -> SyncResult:
    """Bring the project on `hosts` (default: every host of the cluster) up to date, then restart
    the workers whose code changed."""
    with cluster_lock(cluster.state_dir, cluster.name, "sync-files", wait=wait):
        return _sync_files(cluster, reporter, hosts=hosts, restart=restart)


# The helper thread's work while the hosts connect: the ignore rules, then the hosts' part (see
# `sync_host`), whose modules the hosts need only once connected, then the local project's digests.

def _ignore_rules(cluster: Cluster) -> pathspec.PathSpec:
    from ..facts.files import RememberedRules, ignore_rules

    return RememberedRules(ignore_rules(cluster.project_dir))


def _load_then_scan(cluster: Cluster, ignore: Future) -> dict[str, LocalFile]:
    """Every local file and its digest, hashing only the files changed since the last scan."""
    from ..facts.files import scan_local
    from . import sync_host  # noqa: F401  (loaded here, used by the hosts' threads)

    path = local_digests_path(cluster)
    known = load_local_digests(path, cluster.project_dir)
    files = scan_local(cluster.project_dir, ignore.result(), known)
    settled = {rel: (f.status, f.digest) for rel, f in files.items() if f.status}
    if settled != known:
        try:
            write_digest_record(path, {"version": 1, "root": str(cluster.project_dir), "files": settled})
        except OSError:
            pass  # the next run hashes every file again, nothing worse
    return files


def _sync_files(cluster: Cluster, reporter: Reporter, *, hosts: list[Host] | None,
                restart: bool) -> SyncResult:
    from ..state.manifest import Manifest

    hosts = hosts if hosts is not None else [cluster.hosts[name] for name in cluster.used_hosts()]
    records_path = code_records_path(cluster)
    records = load_code_records(records_path) if restart else {}  # who runs what matters only to restarts
    manifest = Manifest.load(cluster.manifest_path, cluster.name)

    def sync_one(host: Host) -> SyncOutcome:
        conn = pool.get(host)
        from .sync_host import sync_host  # loaded by the helper thread meanwhile

        return sync_host(ctx, conn)

    with ThreadPoolExecutor(1, thread_name_prefix="scan") as helper, ConnectionPool.for_cluster(cluster) as pool:
        ignore = helper.submit(_ignore_rules, cluster)
        ctx = SyncContext(cluster, ignore, helper.submit(_load_then_scan, cluster, ignore), records, manifest, restart)
        if not reporter.quiet:
            helper.submit(lambda: reporter.console)  # rich loads while the hosts answer, not after
        done = run_concurrently(hosts, sync_one, key=lambda h: h.name)
        if isinstance(ignore.exception(), InfraError):
            raise ignore.exception()  # a bad .infraignore is bad input (exit 2), not a failure of every host
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

        for name, rec in ctx.new_records.items():
            if rec is None:
                records.pop(name, None)
            else:
                records[name] = rec
        if ctx.new_records:
            save_code_records(records_path, records)

        if not any(o.restarted for o in outcomes.values()):
            return SyncResult(outcomes, None)
        from ..names import celery_node_name
        from .readiness import wait_for_workers

        restarted_nodes = [celery_node_name(w, o.host) for o in outcomes.values() for w in o.restarted]
        try:
            waited = wait_for_workers(cluster, pool.get(cluster.master_host), restarted_nodes, "restarted worker(s)")
            reporter.info(f"{len(restarted_nodes)} restarted worker(s) answer again ({waited:.1f} s)")
            return SyncResult(outcomes, True)
        except InfraError as exc:
            reporter.warn(str(exc))
            return SyncResult(outcomes, False, str(exc))
