"""`infra sync-files`: bring the project on the hosts up to date, then restart the workers whose code changed.

Which workers run which code is recorded in `STATE_DIR/NAME/worker-code.json` (their start
times at the moment infra restarted them), so only hosts whose code changed restart.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InfraError, one_line, without_host
from ..lock import cluster_lock
from ..runner import ConnectionPool, run_concurrently
from ..secrets import write_private_file

if TYPE_CHECKING:
    import pathspec

    from ..config import Cluster, Host
    from ..facts.files import LocalFile
    from ..manifest import Manifest
    from ..plans.sync import CodeRecord
    from ..report import Reporter

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
    from ..plans.sync import CodeRecord

    try:
        raw = json.loads(path.read_text())
        return {host: CodeRecord(rec["digest"], dict(rec["workers"])) for host, rec in raw.get("hosts", {}).items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}  # a lost record only means the mtime rule decides (see restart_decision)


def save_code_records(path: Path, records: dict[str, CodeRecord]) -> None:
    data = {"version": 1, "hosts": {host: asdict(rec) for host, rec in sorted(records.items())}}
    write_private_file(path, json.dumps(data, indent=2).encode() + b"\n")


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
    ignore: Future  # -> the ignore rules (pathspec.PathSpec)
    scan: Future  # -> {relative path: LocalFile}
    records: dict[str, CodeRecord]
    manifest: Manifest
    restart: bool
    new_records: dict[str, CodeRecord | None] = field(default_factory=dict)

    @property
    def rules(self) -> pathspec.PathSpec:
        return self.ignore.result()

    @property
    def local_files(self) -> dict[str, LocalFile]:
        return self.scan.result()

    @property
    def digest(self) -> str:
        from ..facts.files import project_digest

        return project_digest(self.local_files)


def write_digest_record(path: Path, data: dict) -> None:
    """Write a record of known digests (0600, atomically). No fsync: losing one in a crash
    only means hashing every file again."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, json.dumps(data, separators=(",", ":")).encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def local_digests_path(cluster: Cluster) -> Path:
    return cluster.state_dir / "local-digests.json"


def load_local_digests(path: Path, root: Path) -> dict[str, tuple[str, str]]:
    """{relative path: (status, sha256)} of the last scan of `root` (see `facts.files.scan_local`)."""
    try:
        raw = json.loads(path.read_text())
        if raw.get("root") != str(root):
            return {}
        return {str(rel): (str(status), str(digest)) for rel, (status, digest) in raw["files"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}  # a lost record only means hashing every file again


# The helper thread's work while the hosts connect: the ignore rules, then the hosts' part (see
# `sync_host`), whose modules the hosts need only once connected, then the local project's digests.

def _ignore_rules(cluster: Cluster) -> pathspec.PathSpec:
    from ..facts.files import RememberedRules, ignore_rules

    return RememberedRules(ignore_rules(cluster.project_dir))


def _load_then_scan(cluster: Cluster, ignore: Future) -> dict[str, LocalFile]:
    """Every local file and its digest, hashing only the files changed since the last scan."""
    from . import sync_host  # noqa: F401  (loaded here, used by the hosts' threads)
    from ..facts.files import scan_local

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
    from ..manifest import Manifest

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
