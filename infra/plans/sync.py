"""Which project files a host needs, and the steps that send them: contents compared by sha256.

The project lives in the cluster's folder on the host (`HostLayout.root`), which is claimed with
a marker file naming the cluster before anything is written there; a folder that is someone
else's is refused whole. Files are deleted before new ones arrive (a file may become a folder
and back), and neither step ever follows a symbolic link (see `commands.files`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pathspec

from ..commands import files as file_commands
from ..errors import InfraError
from ..facts.containers import parse_docker_time
from ..facts.files import LocalFile, ProjectListing
from .ownership import absent_folders, folder_refusal
from .steps import FilesTar, Record, Step, shell_step

if TYPE_CHECKING:
    from .layout import HostLayout

SYNC_TIMEOUT = 600
DELETE_BATCH_BYTES = 60_000  # of paths per delete command: a command line holds at most 128 kB


@dataclass
class SyncPlan:
    layout: HostLayout  # the cluster's folder on the host and the project in it
    cluster: str
    local_root: Path  # the folder here
    upload: list[str] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)  # files and links, relative to the project
    unchanged: int = 0
    bytes_to_send: int = 0
    claim: bool = False  # the cluster folder is new: its marker is written first
    make_folders: bool = False  # the project, its output mount point or the output folder is missing
    made: tuple[str, ...] = ()  # the cluster folder and folders above it that the listing found absent

    @property
    def root(self) -> str:
        """The project folder on the host."""
        return self.layout.project_dir

    @property
    def files_changed(self) -> bool:
        return bool(self.upload or self.delete)

    @property
    def changed(self) -> bool:
        return self.files_changed or self.claim or self.make_folders

    def describe(self) -> str:
        claim = f"claim {self.layout.root} for cluster {self.cluster}, " if self.claim else ""
        if not self.files_changed:
            return f"{claim}{self.unchanged} files up to date"
        return (f"{claim}send {len(self.upload)} files ({self.bytes_to_send} bytes), delete {len(self.delete)}, "
                f"{self.unchanged} unchanged")


def plan_sync(layout: HostLayout, cluster: str, local_root: Path, local: dict[str, LocalFile],
              listing: ProjectListing, rules: pathspec.PathSpec) -> SyncPlan:
    """Send what differs; delete what the host has and this machine not (ignored files stay).

    The host's symbolic links (not ignored) are deleted like files: infra never makes one, and
    a file sent replaces a link at its name. A cluster folder that is not this cluster's, or that
    another user could swap (`ownership.folder_refusal`), is refused.
    """
    refusal = listing.refusal(layout.root, cluster) or folder_refusal(listing.owners)
    if refusal:
        raise InfraError(refusal)
    plan = SyncPlan(layout=layout, cluster=cluster, local_root=local_root,
                    claim=listing.owner != "ours", make_folders=not all(listing.folders),
                    made=absent_folders(listing.owners))
    remote = listing.files
    for rel, info in sorted(local.items()):
        if remote.get(rel) == info.digest:
            plan.unchanged += 1
        else:
            plan.upload.append(rel)
            plan.bytes_to_send += info.size
    gone = {rel for rel in remote if rel not in local and not rules.match_file(rel)}
    gone |= {rel for rel in listing.links if rel not in local}
    plan.delete = sorted(gone)
    return plan


def _batches(paths: list[str], limit: int) -> list[list[str]]:
    batches: list[list[str]] = [[]]
    size = 0
    for rel in paths:
        if batches[-1] and size + len(rel) > limit:
            batches.append([])
            size = 0
        batches[-1].append(rel)
        size += 2 * len(rel) + 16  # the path and the folders above it, quoted
    return [batch for batch in batches if batch]


def sync_steps(sync: SyncPlan, *records: Record) -> list[Step]:
    """Claim the cluster folder (or check it is still ours), delete what went away, then send what is new.

    `records` are those of the folder's creation: they go on the first step. The files to send
    are only named (`FilesTar`): they are read when the step runs.
    """
    layout = sync.layout
    if not sync.changed:
        return [Step(f"project {layout.project_dir}: {sync.describe()}", records=tuple(records))]
    steps = [shell_step(f"cluster folder {layout.root}" + (" (new: marker first)" if sync.claim else ""),
                        file_commands.prepare_project(layout.root, layout.project_dir, layout.output_dir, sync.cluster,
                                                      sync.made),
                        *records, timeout=SYNC_TIMEOUT)]
    for batch in _batches(sync.delete, DELETE_BATCH_BYTES):
        steps.append(shell_step(f"delete {len(batch)} file(s) from {layout.project_dir}",
                                file_commands.delete_files(layout.project_dir, batch), timeout=SYNC_TIMEOUT))
    if sync.upload:
        steps.append(shell_step(f"send {len(sync.upload)} file(s), {sync.bytes_to_send} bytes, to {layout.project_dir}",
                                file_commands.extract_files(layout.project_dir),
                                files=FilesTar(sync.local_root, tuple(sync.upload)), timeout=SYNC_TIMEOUT))
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
