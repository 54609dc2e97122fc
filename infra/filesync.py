"""Which project files a host needs: compare contents (sha256), not timestamps.

The local side is scanned here; the remote side is a `sha256sum` listing the runner fetches.
The plan says what to send and what to delete; ignore rules (`.infraignore`, gitignore syntax,
plus defaults) apply to both sides, so ignored files on a host are never deleted.
"""

from __future__ import annotations

import hashlib
import io
import os
import shlex
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import pathspec

IGNORE_FILE = ".infraignore"
DEFAULT_IGNORES = (
    ".git/",
    ".hg/",
    "__pycache__/",
    "*.pyc",
    ".venv/",
    "venv/",
    ".infra/",
    ".mypy_cache/",
    ".pytest_cache/",
    ".ruff_cache/",
    "node_modules/",
    ".DS_Store",
    # `infra run` copies results into output/; they flow back, never out.
    "/output/",
)


@dataclass(frozen=True)
class LocalFile:
    path: str  # relative, POSIX separators
    digest: str
    size: int
    mode: int


def ignore_rules(root: Path) -> pathspec.PathSpec:
    lines = list(DEFAULT_IGNORES)
    ignore_file = root / IGNORE_FILE
    if ignore_file.is_file():
        lines += ignore_file.read_text().splitlines()
    return pathspec.GitIgnoreSpec.from_lines(lines)


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def scan_local(root: Path, rules: pathspec.PathSpec | None = None) -> dict[str, LocalFile]:
    """Every file under `root` that is not ignored, with its content hash."""
    rules = rules or ignore_rules(root)
    found: dict[str, LocalFile] = {}
    for folder, dirs, files in os.walk(root):
        rel_folder = Path(folder).relative_to(root).as_posix()
        rel_folder = "" if rel_folder == "." else rel_folder + "/"
        dirs[:] = sorted(d for d in dirs if not rules.match_file(rel_folder + d + "/"))
        for name in sorted(files):
            rel = rel_folder + name
            full = Path(folder) / name
            if rules.match_file(rel) or not full.is_file():
                continue
            stat = full.stat()
            found[rel] = LocalFile(rel, _digest(full), stat.st_size, stat.st_mode & 0o777)
    return found


def remote_listing_command(root: str) -> str:
    """A shell command printing `sha256sum` lines of every file under `root` (nothing if absent)."""
    quoted = shlex.quote(root)
    return f"if [ -d {quoted} ]; then cd {quoted} && find . -type f -exec sha256sum {{}} + ; fi"


@dataclass
class SyncPlan:
    root: str
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


def plan_sync(root: str, local: dict[str, LocalFile], remote: dict[str, str], rules: pathspec.PathSpec) -> SyncPlan:
    plan = SyncPlan(root=root)
    for rel, info in sorted(local.items()):
        if remote.get(rel) == info.digest:
            plan.unchanged += 1
        else:
            plan.upload.append(rel)
            plan.bytes_to_send += info.size
    plan.delete = sorted(rel for rel in remote if rel not in local and not rules.match_file(rel))
    return plan


def tar_of(root: Path, paths: list[str]) -> bytes:
    """An uncompressed tar of the given files (relative to root), owner-neutral."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in paths:
            info = tar.gettarinfo(str(root / rel), arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with (root / rel).open("rb") as handle:
                tar.addfile(info, handle)
    return buffer.getvalue()


def extract_command(root: str) -> str:
    quoted = shlex.quote(root)
    # --no-same-owner: files belong to the SSH user even when it is root.
    return f"mkdir -p {quoted} && tar -x --no-same-owner -m -f - -C {quoted}"


def delete_command(root: str, paths: list[str]) -> str:
    # Relative paths from inside root, so `rmdir -p` can never climb above the project folder.
    files = " ".join(shlex.quote(p) for p in paths)
    parents = sorted({os.path.dirname(p) for p in paths if os.path.dirname(p)}, key=len, reverse=True)
    command = f"cd {shlex.quote(root)} && rm -f -- {files}"
    if parents:
        folders = " ".join(shlex.quote(p) for p in parents)
        command += f" && (rmdir -p --ignore-fail-on-non-empty -- {folders} 2>/dev/null || true)"
    return command
