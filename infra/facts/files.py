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

from .. import confined
from ..commands.files import PROBE_MARKER
from .sections import split_sections

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


def _digest(root: Path, rel: str) -> tuple[str, os.stat_result]:
    fd = confined.open_file(root, rel)
    try:
        sha = hashlib.sha256()
        for block in iter(lambda: os.read(fd, 1 << 20), b""):
            sha.update(block)
        return sha.hexdigest(), os.fstat(fd)
    finally:
        os.close(fd)


def scan_local(root: Path, rules: pathspec.PathSpec | None = None) -> dict[str, LocalFile]:
    """Every regular file under `root` that is not ignored, with its content hash.

    Symbolic links are left out, to a file or a folder alike (never followed, never sent): a
    link planted in the project must not carry a file from elsewhere on this machine to the hosts.
    """
    rules = rules or ignore_rules(root)
    found: dict[str, LocalFile] = {}
    for folder, dirs, files in os.walk(root):  # never into a linked folder
        rel_folder = Path(folder).relative_to(root).as_posix()
        rel_folder = "" if rel_folder == "." else rel_folder + "/"
        dirs[:] = sorted(d for d in dirs if not rules.match_file(rel_folder + d + "/")
                         and not os.path.islink(os.path.join(folder, d)))
        for name in sorted(files):
            rel = rel_folder + name
            if rules.match_file(rel) or not confined.is_inside(rel):
                continue
            try:
                digest, stat = _digest(root, rel)
            except (OSError, confined.ConfinementError):  # a link, a fifo, gone since listed
                continue
            found[rel] = LocalFile(rel, digest, stat.st_size, stat.st_mode & 0o777)
    return found


def project_digest(files: dict[str, LocalFile]) -> str:
    """One hash of a project's content: the paths and contents of its (not ignored) files."""
    sha = hashlib.sha256()
    for rel in sorted(files):
        sha.update(f"{rel}\0{files[rel].digest}\n".encode())
    return sha.hexdigest()[:24]


def parse_sha256_list(text: str, root: str = ".", rules: pathspec.PathSpec | None = None) -> dict[str, str]:
    """`sha256sum` lines of files under `root` -> {relative path: digest}.

    A host's answer is filtered as the local scan is: a path that could leave the folder
    (absolute, `..`, empty parts) is dropped, and so is what `rules` ignore.
    """
    digests: dict[str, str] = {}
    prefix = root.rstrip("/") + "/"
    for line in text.splitlines():
        # GNU sha256sum marks a line whose name it escaped (a backslash or a newline in it) with
        # a leading backslash, and writes those characters as `\\` and `\n`.
        escaped = line.startswith("\\")
        if escaped:
            line = line[1:]
        if len(line) < 66 or line[64:66] not in ("  ", " *") or not _HEX.fullmatch(line[:64]):
            continue
        digest, path = line[:64], line[66:]
        if escaped:
            path = re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), path)
        if path.startswith(prefix):
            path = path[len(prefix):]
        elif path.startswith("./"):
            path = path[2:]
        if not confined.is_inside(path) or (rules is not None and rules.match_file(path)):
            continue
        digests[path] = digest
    return digests


_HEX = re.compile(r"[0-9a-f]{64}")


# --------------------------------------------------------------------------- the project on a host


@dataclass(frozen=True)
class ProjectListing:
    """A host's answer to `commands.files.list_project`."""

    owner: str  # the cluster folder: absent, empty, ours, other, link, file (see `list_project`)
    folders: tuple[bool, bool, bool]  # the project, its output mount point, the output folder: real folders
    files: dict[str, str]  # regular files of the project, not ignored: {relative path: sha256}
    links: tuple[str, ...]  # symbolic links of the project, not ignored
    home: str = ""  # the SSH user's home, when asked for (`list_project(..., from_home=True)`)

    @property
    def usable(self) -> bool:
        """The cluster folder is this cluster's, or free to become it."""
        return self.owner in ("ours", "absent", "empty")

    def refusal(self, root: str, cluster: str) -> str:
        """Why the cluster folder must not be touched ("" when it may)."""
        return {
            "link": f"{root} is a symbolic link, not a folder of cluster {cluster}: left alone",
            "file": f"{root} is a file, not a folder of cluster {cluster}: left alone",
            "other": f"{root} holds files but no marker of cluster {cluster} ({root}/.infra-cluster): "
                     f"another cluster's or someone else's folder, left alone",
        }.get(self.owner, "" if self.usable else f"{root}: unreadable answer ({self.owner!r}): left alone")


def parse_project_listing(text: str, rules: pathspec.PathSpec) -> ProjectListing:
    """Read `list_project`'s answer; every path filtered as the local scan is (see `parse_sha256_list`).

    The links come last, NUL-separated: a link's name may hold newlines and marker lines, so
    they end only at the last end marker. No `sha256sum` line starts with a marker.
    """
    marker, end = PROBE_MARKER, f"\n{PROBE_MARKER}end"
    head, links_mark, tail = text.partition(f"\n{marker}links\n")
    links_text = ""
    cut = tail.rfind(end)
    if links_mark and cut >= 0:
        links_text, head = tail[:cut], head + tail[cut:]
    sections = split_sections(head, marker)
    if "end" not in sections:
        raise ValueError("the project listing is incomplete")
    owner = sections.get("owner", "").strip()
    answers = [line.strip() == "yes" for line in sections.get("folders", "").splitlines()[:3]]
    folders = tuple(answers + [False] * (3 - len(answers)))
    links = []
    for name in links_text.split("\0"):
        name = name[2:] if name.startswith("./") else name
        if confined.is_inside(name) and not rules.match_file(name):
            links.append(name)
    return ProjectListing(owner, folders, parse_sha256_list(sections.get("files", ""), ".", rules), tuple(sorted(links)),
                          sections.get("home", "").strip())


def parse_removal(text: str) -> tuple[str, str]:
    """`remove_owned_folder`'s verdict: ("removed" | "absent" | "refused", why)."""
    line = text.strip().splitlines()[-1] if text.strip() else ""
    verdict, _, why = line.partition(":")
    if verdict in ("removed", "absent"):
        return verdict, ""
    if verdict == "refused":
        return "refused", why.strip()
    return "refused", f"unexpected answer {line[:80]!r}"


def parse_find(output: str, rules: pathspec.PathSpec) -> list[str]:
    """`find . -print` lines (the answer of `files_newer_than`), without ignored files."""
    paths = [line[2:] if line.startswith("./") else line for line in output.splitlines() if line.strip()]
    return sorted(p for p in paths if not rules.match_file(p))
