"""Project files on both sides: the local folder (scanned here) and a host's listing (parsed).

Contents are compared by sha256, never by timestamps; a file's status (inode, size, times)
only decides whether its digest from the last run still holds (see `scan_local`,
`KnownDigests`). Ignore rules (`.infraignore`, gitignore syntax, plus defaults) apply to both
sides, so ignored files on a host are never deleted.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import pathspec

from .. import confined
from ..commands.files import PROBE_MARKER
from ..errors import ConfigError
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
    # "DEVICE INODE SIZE MTIME CTIME" (ns) when the file had settled before the scan (see
    # `scan_local`), so that a later scan may reuse `digest` while the status stays the same.
    status: str = field(default="", compare=False)


def ignore_rules(root: Path) -> pathspec.PathSpec:
    """The default ignores plus the project's `.infraignore`; ConfigError (one line) for a pattern git refuses."""
    lines = list(DEFAULT_IGNORES)
    ignore_file = root / IGNORE_FILE
    if ignore_file.is_file():
        lines += ignore_file.read_text().splitlines()
    try:
        return pathspec.GitIgnoreSpec.from_lines(lines)
    except ValueError as exc:
        raise ConfigError(f"{ignore_file}: {exc}") from None


class RememberedRules:
    """Ignore rules that remember each path's answer: `sync-files` asks about the same paths for
    this machine's scan and for every host's listing. Stands in for the PathSpec (`match_file`)."""

    def __init__(self, spec: pathspec.PathSpec):
        self.spec = spec
        self._answers: dict[str, bool] = {}

    def match_file(self, path: str) -> bool:
        answer = self._answers.get(path)
        if answer is None:
            answer = self._answers[path] = bool(self.spec.match_file(path))
        return answer


def no_ignores() -> pathspec.PathSpec:
    return pathspec.GitIgnoreSpec.from_lines([])


SETTLE_NS = 2_000_000_000  # a file changed this recently may change again within the same status time


def _status(st: os.stat_result) -> str:
    return f"{st.st_dev} {st.st_ino} {st.st_size} {st.st_mtime_ns} {st.st_ctime_ns}"


def _digest(root: Path, rel: str) -> tuple[str, os.stat_result]:
    fd = confined.open_file(root, rel)
    try:
        st = os.fstat(fd)  # before reading: a write while hashing changes the status seen next time
        sha = hashlib.sha256()
        for block in iter(lambda: os.read(fd, 1 << 20), b""):
            sha.update(block)
        return sha.hexdigest(), st
    finally:
        os.close(fd)


def scan_local(root: Path, rules: pathspec.PathSpec | None = None,
               known: dict[str, tuple[str, str]] | None = None) -> dict[str, LocalFile]:
    """Every regular file under `root` that is not ignored, with its content hash.

    Symbolic links are left out, to a file or a folder alike (never followed, never sent): a
    link planted in the project must not carry a file from elsewhere on this machine to the hosts.

    `known`: {relative path: (status, sha256)} of an earlier scan (`LocalFile.status`); a file
    whose status (device, inode, size, modification and status times) is still exactly that is
    not read again. Any write, rename or chmod sets the status time to the present and no call
    sets it back; a file changed less than 2 s before a scan gets no status (it may change again
    within the same tick of the status time), so it is read again next time.
    """
    rules = rules or ignore_rules(root)
    known = known or {}
    settled_before = time.time_ns() - SETTLE_NS
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
            was = known.get(rel)
            if was is not None:
                try:
                    st = os.lstat(os.path.join(folder, name))
                except OSError:
                    continue  # gone since listed
                if stat.S_ISREG(st.st_mode) and _status(st) == was[0]:
                    found[rel] = LocalFile(rel, was[1], st.st_size, st.st_mode & 0o777, was[0])
                    continue
            try:
                digest, st = _digest(root, rel)
            except (OSError, confined.ConfinementError):  # a link, a fifo, gone since listed
                continue
            status = _status(st) if st.st_ctime_ns < settled_before else ""
            found[rel] = LocalFile(rel, digest, st.st_size, st.st_mode & 0o777, status)
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
class PathOwner:
    """One path of the cluster folder's chain (`commands.files._path_owners`), as `stat` saw it (no link followed)."""

    path: str
    above: bool  # a folder or link above the cluster folder; False: the cluster folder itself
    uid: int | None = None  # None: absent (or `unknown`)
    user: str = ""
    mode: int = 0  # st_mode, the file type included
    unknown: bool = False  # there, but `stat` could not read it


@dataclass(frozen=True)
class FolderOwners:
    """Who owns the cluster folder and every folder above it, and their modes, on one host."""

    ssh_uid: int | None
    paths: tuple[PathOwner, ...]


def parse_path_owners(text: str) -> FolderOwners:
    """The section `paths`: the SSH user's uid, then `KIND UID USER HEXMODE PATH`, `KIND absent PATH`
    or `KIND unknown PATH` lines; a line that is none of these is kept as `unknown`."""
    lines = text.splitlines()
    uid = lines[0].strip() if lines else ""
    paths: list[PathOwner] = []
    for line in lines[1:]:
        kind, _, rest = line.partition(" ")
        state, _, path = rest.partition(" ")
        above = kind != "f"
        if state in ("absent", "unknown"):
            paths.append(PathOwner(path, above, unknown=state == "unknown"))
            continue
        user, _, rest = path.partition(" ")
        mode, _, path = rest.partition(" ")
        try:
            paths.append(PathOwner(path, above, int(state), user, int(mode, 16)))
        except ValueError:
            paths.append(PathOwner(line, above, unknown=True))
    return FolderOwners(int(uid) if uid.isdigit() else None, tuple(paths))


def parse_folder_owners(text: str) -> FolderOwners | None:
    """The answer of `commands.files.folder_owners`; None when it is incomplete."""
    sections = split_sections(text, PROBE_MARKER)
    return parse_path_owners(sections["paths"]) if "paths" in sections and "end" in sections else None


@dataclass(frozen=True)
class ProjectListing:
    """A host's answer to `commands.files.list_project`."""

    owner: str  # the cluster folder: absent, empty, ours, other, link, file (see `list_project`)
    folders: tuple[bool, bool, bool]  # the project, its output mount point, the output folder: real folders
    files: dict[str, str]  # regular files of the project, not ignored: {relative path: sha256}
    links: tuple[str, ...]  # symbolic links of the project, not ignored
    home: str = ""  # the SSH user's home, when asked for (`list_project(..., from_home=True)`)
    # With `list_project(..., with_stats=True)` on a host with GNU find: every regular file not
    # ignored with its status ("INODE SIZE MTIME CTIME"), and the host's clock at the start.
    # `files` may then hold only the files hashed anew (see `complete_listing`).
    stats: dict[str, str] | None = None
    clock: int | None = None
    owners: FolderOwners | None = None  # the cluster folder's and its parents' owners and modes

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

    The links (or the entries) come last, NUL-separated: a name may hold newlines and marker
    lines, so they end only at the last end marker. No `sha256sum` line starts with a marker.
    """
    marker, end = PROBE_MARKER, f"\n{PROBE_MARKER}end"
    head, last_mark, tail = text.partition(f"\n{marker}entries\n")
    if not last_mark:
        head, last_mark, tail = text.partition(f"\n{marker}links\n")
    last_text = ""
    cut = tail.rfind(end)
    if last_mark and cut >= 0:
        last_text, head = tail[:cut], head + tail[cut:]
    sections = split_sections(head, marker)
    if "end" not in sections:
        raise ValueError("the project listing is incomplete")
    owner = sections.get("owner", "").strip()
    answers = [line.strip() == "yes" for line in sections.get("folders", "").splitlines()[:3]]
    folders = tuple(answers + [False] * (3 - len(answers)))
    entries = last_mark == f"\n{marker}entries\n"
    links: list[str] = []
    stats: dict[str, str] | None = {} if entries else None
    for item in last_text.split("\0"):
        kind = "l"
        if entries:
            kind, _, item = item.partition(" ")
            if kind == "f":
                *status, item = item.split(" ", 4)
                if len(status) != 4:
                    continue
        name = item[2:] if item.startswith("./") else item
        if not confined.is_inside(name) or rules.match_file(name):
            continue
        if kind == "l":
            links.append(name)
        elif kind == "f":
            stats[name] = " ".join(status)
    clock = sections.get("clock", "").strip()
    return ProjectListing(owner, folders, parse_sha256_list(sections.get("files", ""), ".", rules), tuple(sorted(links)),
                          sections.get("home", "").strip(), stats, int(clock) if clock.isdigit() else None,
                          parse_path_owners(sections["paths"]) if "paths" in sections else None)


@dataclass(frozen=True)
class KnownDigests:
    """The digests of a host's project files as an earlier listing found them, with their status then.

    A digest is reused only for a file whose status (inode, size, modification and status
    times) is exactly the same now, and that the host did not see change after `clock` - 2 s
    (its clock when that listing began): those it hashes anew. Any write, rename or chmod sets
    the status time to the present and no call sets it back (only moving the clock could), so
    a file rewritten or replaced since, even with its old modification time, is hashed again;
    so is one that changed while that listing ran, whatever status it recorded.
    """

    clock: int
    files: dict[str, tuple[str, str]]  # relative path -> (status, sha256)

    MARGIN = 2  # seconds: status times are coarse (a clock tick), and `date +%s` rounds down

    @property
    def hashed_since(self) -> int:
        """For `list_project(..., hashed_since=)`: hash what changed after this time of the host's clock."""
        return self.clock - self.MARGIN

    @classmethod
    def of(cls, listing: ProjectListing) -> KnownDigests | None:
        """What a complete listing with statuses (see `complete_listing`) lets the next one reuse."""
        if listing.stats is None or listing.clock is None:
            return None
        return cls(listing.clock, {rel: (status, listing.files[rel]) for rel, status in listing.stats.items()
                                   if rel in listing.files})

    def to_json(self) -> dict:
        return {"clock": self.clock, "files": {rel: list(pair) for rel, pair in sorted(self.files.items())}}

    @classmethod
    def from_json(cls, data: dict) -> KnownDigests:
        files = {str(rel): (str(status), str(digest)) for rel, (status, digest) in data["files"].items()}
        if not isinstance(data["clock"], int) or not all(_HEX.fullmatch(d) for _, d in files.values()):
            raise ValueError("not a record of known digests")
        return cls(data["clock"], files)


def complete_listing(listing: ProjectListing, known: KnownDigests | None) -> ProjectListing | None:
    """`listing` with the digest of every file, those not hashed anew taken from `known`.

    None when a file's digest is neither in the listing nor known for its present status (or
    the host's clock went back since `known`): then the host must hash every file. A listing
    without statuses already holds every digest.
    """
    if listing.stats is None:
        return listing
    if known is not None and (listing.clock is None or listing.clock < known.clock):
        return None
    files: dict[str, str] = {}
    for rel, status in listing.stats.items():
        digest = listing.files.get(rel)
        if digest is None and known is not None:
            was = known.files.get(rel)
            digest = was[1] if was is not None and was[0] == status else None
        if digest is None:
            return None
        files[rel] = digest
    return replace(listing, files=files)


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
