"""Which project files a host needs, and the steps that send them: contents compared by sha256."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pathspec

from ..commands import files as file_commands
from ..facts.containers import parse_docker_time
from ..facts.files import LocalFile
from .steps import Record, Step, shell_step

SYNC_TIMEOUT = 600


@dataclass
class SyncPlan:
    root: str  # the folder on the host
    local_root: Path  # the folder here
    upload: list[str] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    unchanged: int = 0
    bytes_to_send: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.upload or self.delete)

    def describe(self) -> str:
        if not self.changed:
            return f"{self.unchanged} files up to date"
        return (f"send {len(self.upload)} files ({self.bytes_to_send} bytes), delete {len(self.delete)}, "
                f"{self.unchanged} unchanged")


def plan_sync(root: str, local_root: Path, local: dict[str, LocalFile], remote: dict[str, str],
              rules: pathspec.PathSpec) -> SyncPlan:
    """Send what differs; delete what the host has and this machine not (ignored files stay)."""
    plan = SyncPlan(root=root, local_root=local_root)
    for rel, info in sorted(local.items()):
        if remote.get(rel) == info.digest:
            plan.unchanged += 1
        else:
            plan.upload.append(rel)
            plan.bytes_to_send += info.size
    plan.delete = sorted(rel for rel in remote if rel not in local and not rules.match_file(rel))
    return plan


def sync_steps(sync: SyncPlan, *records: Record) -> list[Step]:
    """Send the files a host lacks (one tar on stdin), then delete those removed here."""
    steps = []
    if sync.upload:
        steps.append(shell_step(f"send {len(sync.upload)} file(s), {sync.bytes_to_send} bytes, to {sync.root}",
                                file_commands.extract_files(sync.root), *records,
                                stdin=file_commands.tar_of(sync.local_root, sync.upload), timeout=SYNC_TIMEOUT))
    else:
        steps.append(shell_step(f"project {sync.root}: {sync.describe()}", file_commands.make_folder(sync.root),
                                *records, timeout=SYNC_TIMEOUT))
    if sync.delete:
        steps.append(shell_step(f"delete {len(sync.delete)} file(s) from {sync.root}",
                                file_commands.delete_files(sync.root, sync.delete), timeout=SYNC_TIMEOUT))
    return steps


# --------------------------------------------------------------------------- which workers restart


@dataclass(frozen=True)
class CodeRecord:
    """Which project content the workers of a host run: recorded when infra (re)started them."""

    digest: str
    workers: dict[str, str]  # container name -> its State.StartedAt at that moment


@dataclass(frozen=True)
class RestartDecision:
    restart: bool
    reason: str
    current: bool  # the workers (will) run the project's current content


def restart_decision(
    record: CodeRecord | None, digest: str, workers: dict[str, str], changed_since_start: bool, allowed: bool = True,
) -> RestartDecision:
    """Whether a host's workers must restart to run the project's current content.

    A record whose workers are still the same starts (same containers, not restarted since)
    says exactly which content they run. Without one (never synced, or restarted by someone
    else since), files modified after the earliest worker start mean they run older code.
    """
    if not workers:
        return RestartDecision(False, "no running worker here", True)
    if record is not None and record.workers == workers:
        stale, why = record.digest != digest, "code changed since the workers started"
        fine = "the workers already run this code"
    else:
        stale, why = changed_since_start, "files changed after the workers started"
        fine = "no file changed since the workers started"
    if not stale:
        return RestartDecision(False, fine, True)
    if not allowed:
        return RestartDecision(False, f"{why}; not restarted (--no-restart)", False)
    return RestartDecision(True, why, True)


def changed_after(mtimes: dict[str, float], moment: datetime | None) -> list[str]:
    """Files modified after `moment` (all of them when there is no moment)."""
    if moment is None:
        return sorted(mtimes)
    limit = moment.timestamp()
    return sorted(rel for rel, mtime in mtimes.items() if mtime > limit)


def earliest_start(workers: dict[str, str]) -> datetime | None:
    starts = [t for t in (parse_docker_time(s) for s in workers.values()) if t is not None]
    return min(starts) if starts else None
