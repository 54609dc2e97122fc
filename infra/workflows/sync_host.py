"""One host's part of `infra sync-files`: list its project, send what differs, restart its workers if needed.

`sync_files` (the command's workflow) loads this module on a helper thread while the hosts
connect: the plans, parsers and command builders below load during the SSH handshakes rather
than before them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..commands.engine import InspectContainers, ListContainers, RestartContainer
from ..commands.files import files_newer_than, list_project
from ..errors import EngineUnavailableError, InfraError
from ..facts.containers import parse_container_inspect, parse_container_list
from ..facts.files import (
    KnownDigests,
    ProjectListing,
    complete_listing,
    parse_find,
    parse_project_listing,
)
from ..facts.host import HostFacts
from ..plans.layout import HostLayout, host_layout
from ..plans.steps import Record
from ..plans.sync import (
    CodeRecord,
    SyncPlan,
    changed_after,
    earliest_start,
    plan_sync,
    restart_decision,
    sync_steps,
)
from ..state.digests import (
    known_digests_path,
    known_digests_target,
    load_known_digests,
    save_known_digests,
)
from ..transport.pool import run_concurrently
from .execute import execute_steps
from .sync_context import LISTING_TIMEOUT, RESTART_TIMEOUT, SyncOutcome

if TYPE_CHECKING:
    from ..config import Cluster, Host
    from ..facts.files import LocalFile
    from ..transport.connection import Connection
    from .sync_context import SyncContext


def list_remote_project(conn: Connection, ctx: SyncContext, relative: HostLayout) -> ProjectListing:
    """The host's home and project listing in one round trip, every file's digest complete.

    The host hashes only the files whose status changed since the last listing (whose digests
    are kept in the state dir); when one of the others is not as recorded, a second round trip
    hashes every file. The ignore rules are waited for only once the answer is in.
    """
    cluster = ctx.cluster
    path = known_digests_path(cluster, conn.host)
    target = known_digests_target(conn.host, relative.project_dir)
    known, known_home = load_known_digests(path, target)

    def ask(since: int | None) -> ProjectListing:
        answer = conn.run(list_project(relative.root, relative.project_dir, relative.output_dir, cluster.name,
                                       from_home=True, with_stats=True, hashed_since=since), timeout=LISTING_TIMEOUT)
        return parse_project_listing(answer.stdout, ctx.rules)

    since = known.hashed_since if known else None
    listing = ask(since)
    complete = complete_listing(listing, known if known_home == listing.home else None)
    if complete is None and since is not None:
        listing = ask(None)  # a file not as recorded, or the host's clock went back: hash every file
        complete = complete_listing(listing, None)
    complete = complete or listing  # a file made between the listing's two `find`s: seen as absent
    recorded = KnownDigests.of(complete)
    if recorded is not None:
        try:
            save_known_digests(path, target, complete.home, recorded)
        except OSError:
            pass  # the next run hashes every file again, nothing worse
    return complete


def start_times(conn: Connection, names: list[str]) -> dict[str, str]:
    """{container: its State.StartedAt} of the given containers."""
    if not names:
        return {}
    return {c.name: c.started_at for c in parse_container_inspect(conn.engine.query(InspectContainers(tuple(names))))}


def running_workers(conn: Connection, cluster: Cluster) -> dict[str, str]:
    """{worker container running on the host: its State.StartedAt}; none when the engine does not answer."""
    try:
        containers = parse_container_list(conn.engine.query(ListContainers(cluster.name)))
    except EngineUnavailableError:
        return {}  # as `gather.read_host_facts`: no engine, no worker to restart; the files still go
    return start_times(conn, sorted(c.name for c in containers if c.role == "worker" and c.running))


def layout_below(cluster: Cluster, host: Host, home: str) -> HostLayout:
    """The cluster's folder on a host, below `home` when `project.remote_path` is relative.

    `host_layout` reads nothing of the facts but the home: the other fields stay empty.
    """
    return host_layout(cluster, host, HostFacts(home=home, uid=-1, gid=-1, arch="", docker_version=None))


def has_volunteers(cluster: Cluster) -> bool:
    """Whether the join endpoint serves the project to anyone."""
    from ..state.volunteers import VolunteerStore, store_path

    path = store_path(cluster.state_dir)
    return path.exists() and bool(VolunteerStore.load(path).active())


def serve_to_volunteers(conn: Connection, layout: HostLayout, synced: dict[str, LocalFile]) -> None:
    """The join endpoint serves volunteers the files just synced, and no other file of the folder."""
    # Imported here: only clusters with volunteers load them, and sync-files stays quick for the others.
    from ..plans.volunteer import endpoint_layout
    from .volunteer import write_served_files

    write_served_files(conn, endpoint_layout(layout), synced)


def sync_host(ctx: SyncContext, conn: Connection) -> SyncOutcome:
    """One host: send what differs, then restart its workers if they run older code.

    A remote host is asked once for its home and its project listing together; its engine is
    asked only when workers may restart (not with --no-restart).
    """
    cluster, host = ctx.cluster, conn.host
    plan: SyncPlan | None = None  # None on `local`, where the project is used in place
    if host.is_local:
        layout = layout_below(cluster, host, "")  # the project in place: no home involved
        outcome = SyncOutcome(host.name, layout.project_dir, in_place=True, unchanged=len(ctx.local_files))
    else:
        # Relative to the home, which the same answer names: "./" keeps a path from reading as an option.
        relative = layout_below(cluster, host, ".")
        listing = list_remote_project(conn, ctx, relative)
        if not listing.home.startswith("/") or "\n" in listing.home:
            raise InfraError(f"{host.name}: no home folder in the project listing ({listing.home!r})")
        layout = layout_below(cluster, host, listing.home)
        outcome = SyncOutcome(host.name, layout.project_dir)
        # A cluster folder that is not this cluster's is refused here, before anything is written.
        plan = plan_sync(layout, cluster.name, cluster.project_dir, ctx.local_files, listing, ctx.rules)
        steps = sync_steps(plan, Record("add_files", layout.project_dir))
        outcome.wire_bytes = execute_steps(conn, steps, ctx.manifest)
        outcome.sent, outcome.deleted = plan.upload, plan.delete
        outcome.bytes_sent, outcome.unchanged = plan.bytes_to_send, plan.unchanged
    if host.name == cluster.master_host.name and has_volunteers(cluster):
        serve_to_volunteers(conn, layout, ctx.local_files)
    if not ctx.restart:
        # The record of which code the workers run stays as it is: still true, they were not restarted.
        outcome.reason = "not restarted (--no-restart)"
        return outcome
    workers = running_workers(conn, cluster)
    record = ctx.records.get(host.name)
    record_valid = record is not None and record.workers == workers
    changed = plan is not None and plan.files_changed
    if workers and not changed and not record_valid:
        # Without a record to trust, files newer than the oldest worker mean it may run older code.
        started = earliest_start(workers)
        if plan is None:
            mtimes = {rel: (cluster.project_dir / rel).stat().st_mtime for rel in ctx.local_files}
            changed = bool(changed_after(mtimes, started))
        elif started is not None:
            found = conn.run(files_newer_than(layout.project_dir, started), timeout=60, check=False)
            changed = bool(parse_find(found.stdout, ctx.rules))
    decision = restart_decision(record, ctx.digest, workers, changed, allowed=ctx.restart)
    outcome.reason = decision.reason
    if decision.restart:
        names = sorted(workers)
        # One restart per worker, all at once: each waits for a warm shutdown.
        restarted = run_concurrently(names, lambda name: conn.engine.apply(RestartContainer(name, RESTART_TIMEOUT)))
        outcome.restarted = sorted(restarted.succeeded)
        restarted.raise_if_failed(f"restarting workers on {host.name}")
        workers = start_times(conn, names)
    ctx.new_records[host.name] = CodeRecord(ctx.digest, workers) if decision.current and workers else (
        None if not workers else record)
    return outcome
