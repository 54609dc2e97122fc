"""Project files on both sides: the local folder (scanned here) and a host's listing (parsed).

Contents are compared by sha256, never by timestamps. Ignore rules (`.infraignore`, gitignore
syntax, plus defaults) apply to both sides, so ignored files on a host are never deleted.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pathspec

IGNORE_FILE = ".infraignore"
OUTPUT_FOLDER = "output"  # where `infra run` jobs write results: fetched back, never synced out
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
    f"/{OUTPUT_FOLDER}/",
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


def no_ignores() -> pathspec.PathSpec:
    return pathspec.GitIgnoreSpec.from_lines([])


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


def project_digest(files: dict[str, LocalFile]) -> str:
    """One hash of a project's content: the paths and contents of its (not ignored) files."""
    sha = hashlib.sha256()
    for rel in sorted(files):
        sha.update(f"{rel}\0{files[rel].digest}\n".encode())
    return sha.hexdigest()[:24]


def parse_sha256_list(text: str, root: str = ".") -> dict[str, str]:
    """`sha256sum` lines of files under `root` (the answer of `list_files`) -> {relative path: digest}."""
    digests: dict[str, str] = {}
    prefix = root.rstrip("/") + "/"
    for line in text.splitlines():
        # GNU sha256sum marks a line whose name it escaped (a backslash or a newline in it) with
        # a leading backslash, and writes those characters as `\\` and `\n`.
        escaped = line.startswith("\\")
        if escaped:
            line = line[1:]
        if len(line) < 66 or line[64:66] not in ("  ", " *"):
            continue
        digest, path = line[:64], line[66:]
        if escaped:
            path = re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), path)
        if path.startswith(prefix):
            path = path[len(prefix):]
        elif path.startswith("./"):
            path = path[2:]
        digests[path] = digest
    return digests


def parse_find(output: str, rules: pathspec.PathSpec) -> list[str]:
    """`find . -print` lines (the answer of `files_newer_than`), without ignored files."""
    paths = [line[2:] if line.startswith("./") else line for line in output.splitlines() if line.strip()]
    return sorted(p for p in paths if not rules.match_file(p))
