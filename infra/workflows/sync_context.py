"""What `sync-files`' steps share: the run's context, each host's outcome and the whole result."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pathspec

    from ..config import Cluster
    from ..facts.files import LocalFile
    from ..plans.sync import CodeRecord
    from ..state.manifest import Manifest


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
