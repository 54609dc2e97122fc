"""`infra sync-files`: bring the project on the hosts up to date, then restart the workers whose code changed.

Which workers run which code is recorded in `STATE_DIR/NAME/worker-code.json` (their start
times at the moment infra restarted them), so only hosts whose code changed restart.
"""

from __future__ import annotations

import json
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pathspec

from ..commands.engine import InspectContainers, ListContainers, RestartContainer
from ..commands.files import files_newer_than, list_project
from ..config import Cluster, Host
from ..errors import EngineUnavailableError, InfraError, one_line, without_host
from ..facts.containers import parse_container_inspect, parse_container_list
from ..facts.files import LocalFile, ignore_rules, parse_find, parse_project_listing, project_digest, scan_local
from ..facts.host import HostFacts
from ..lock import cluster_lock
from ..manifest import Manifest
from ..names import celery_node_name
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
from ..plans.up import HostLayout, host_layout
from ..report import Reporter
from ..runner import Connection, ConnectionPool, run_concurrently
from ..secrets import write_private_file
from .execute import execute_steps
from .readiness import wait_for_workers

RESTART_TIMEOUT = 10  # seconds a restart gives a worker to finish its tasks (then SIGKILL)
LISTING_TIMEOUT = 300


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


def sync_files(cluster: Cluster, reporter: Reporter, *, hosts: list[Host] | None = None,
               restart: bool = True, wait: bool = False) -> SyncResult:
    """Bring the project on `hosts` (default: every host of the cluster) up to date, then restart
    the workers whose code changed."""
    with cluster_lock(cluster.state_dir, cluster.name, "sync-files", wait=wait):
        return _sync_files(cluster, reporter, hosts=hosts, restart=restart)


@dataclass
class SyncContext:
    """What every host's sync shares: the local project (scanned while the hosts connect), its
    digest, and the records of who runs what."""

    cluster: Cluster
    rules: pathspec.PathSpec
    scan: Future  # -> {relative path: LocalFile}
    records: dict[str, CodeRecord]
    manifest: Manifest
    restart: bool
    new_records: dict[str, CodeRecord | None] = field(default_factory=dict)

    @property
    def local_files(self) -> dict[str, LocalFile]:
        return self.scan.result()

    @property
    def digest(self) -> str:
        return project_digest(self.local_files)


def layout_below(cluster: Cluster, host: Host, home: str) -> HostLayout:
    """The cluster's folder on a host, below `home` when `project.remote_path` is relative.

    `host_layout` reads nothing of the facts but the home: the other fields stay empty.
    """
    return host_layout(cluster, host, HostFacts(home=home, uid=-1, gid=-1, arch="", docker_version=None))


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
        answer = conn.run(list_project(relative.root, relative.project_dir, relative.output_dir, cluster.name,
                                       from_home=True), timeout=LISTING_TIMEOUT)
        listing = parse_project_listing(answer.stdout, ctx.rules)
        if not listing.home.startswith("/") or "\n" in listing.home:
            raise InfraError(f"{host.name}: no home folder in the project listing ({listing.home!r})")
        layout = layout_below(cluster, host, listing.home)
        outcome = SyncOutcome(host.name, layout.project_dir)
        # A cluster folder that is not this cluster's is refused here, before anything is written.
        plan = plan_sync(layout, cluster.name, cluster.project_dir, ctx.local_files, listing, ctx.rules)
        steps = sync_steps(plan, Record("add_files", layout.project_dir))
        execute_steps(conn, steps, ctx.manifest)
        outcome.wire_bytes = sum(len(step.stdin or b"") for step in steps)
        outcome.sent, outcome.deleted = plan.upload, plan.delete
        outcome.bytes_sent, outcome.unchanged = plan.bytes_to_send, plan.unchanged
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


def _sync_files(cluster: Cluster, reporter: Reporter, *, hosts: list[Host] | None,
                restart: bool) -> SyncResult:
    hosts = hosts if hosts is not None else [cluster.hosts[name] for name in cluster.used_hosts()]
    rules = ignore_rules(cluster.project_dir)
    records_path = code_records_path(cluster)
    records = load_code_records(records_path)
    with ThreadPoolExecutor(1, thread_name_prefix="scan") as scanner, ConnectionPool.for_cluster(cluster) as pool:
        # The local project is hashed while the hosts connect and list theirs.
        ctx = SyncContext(cluster, rules, scanner.submit(scan_local, cluster.project_dir, rules), records,
                          Manifest.load(cluster.manifest_path, cluster.name), restart)
        done = run_concurrently(hosts, lambda host: sync_host(ctx, pool.get(host)), key=lambda h: h.name)
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

        restarted_nodes = [celery_node_name(w, o.host) for o in outcomes.values() for w in o.restarted]
        if not restarted_nodes:
            return SyncResult(outcomes, None)
        try:
            waited = wait_for_workers(cluster, pool.get(cluster.master_host), restarted_nodes, "restarted worker(s)")
            reporter.info(f"{len(restarted_nodes)} restarted worker(s) answer again ({waited:.1f} s)")
            return SyncResult(outcomes, True)
        except InfraError as exc:
            reporter.warn(str(exc))
            return SyncResult(outcomes, False, str(exc))
