"""Shell commands for what no engine API does: a host's identity, and files on the host.

Every value that reaches a shell is quoted here; paths inside the project are given relative
to its folder, so no command can climb above it. Contents (secrets, tar streams) travel on
stdin, never on a command line.

Jobs can write the output folder (and anyone with the SSH user's rights the project copy): no
command here follows a symbolic link found in them, and the cluster's folder is touched only
when it carries the marker naming the cluster (see `list_project`, `prepare_project`,
`remove_owned_folder`). The output folder is read inside the master container (`list_output`).
"""

from __future__ import annotations

import json
import posixpath
import shlex
from datetime import datetime
from itertools import chain
from pathlib import Path
from typing import Iterator

from .. import confined
from ..errors import InfraError
from ..names import container_name
from ..runtime.tarball import Member, folder, pack
from .celery import CONTAINER_OUTPUT
from .engine import Exec

PROBE_MARKER = "=====infra:"

# The SSH user's home, uid and gid, and the CPU: what the plans need that the engine does not tell.
HOST_PROBE = (
    f"printf '{PROBE_MARKER}home\\n%s\\n' \"$HOME\"; "
    f"printf '{PROBE_MARKER}uid\\n'; id -u; id -g; "
    f"printf '{PROBE_MARKER}arch\\n'; uname -m; "
    f"printf '{PROBE_MARKER}end\\n'"
)


def host_probe() -> list[str]:
    return ["sh", "-c", HOST_PROBE]


# The host's NVIDIA GPUs, one CSV line each (read by `infra.facts.gpu`); nothing, and exit 0,
# on a host without nvidia-smi.
GPU_QUERY = ("command -v nvidia-smi >/dev/null 2>&1 || exit 0; "
             "nvidia-smi --query-gpu=index,name,memory.total,utilization.gpu --format=csv,noheader,nounits")


def gpu_query() -> list[str]:
    return ["sh", "-c", GPU_QUERY]


def write_secret_file(path: str) -> list[str]:
    """Write stdin to `path`, readable by the SSH user only (folder 0700, file 0400), atomically."""
    folder = posixpath.dirname(path)
    quoted, tmp = shlex.quote(path), shlex.quote(path + ".tmp")
    # Only a folder of infra's own becomes 0700: never `/` or the current folder.
    make = f"mkdir -p {shlex.quote(folder)} && chmod 700 {shlex.quote(folder)} && " if folder not in ("", "/") else ""
    # A 0400 leftover of an interrupted run would refuse `cat >`: it is removed first.
    return ["sh", "-c", f"umask 077 && {make}rm -f {tmp} && cat > {tmp} && chmod 400 {tmp} && mv -f {tmp} {quoted}"]


def write_file(path: str) -> list[str]:
    """Write stdin to `path` (its folder made if missing), atomically; for files that hold no secret.

    The folder may be one jobs write to (the output folder): a folder that is a symbolic link is
    refused, the content goes to a fresh file (`mktemp`, never an existing one) renamed over
    `path`, so a link planted at `path` or beside it is replaced, never written through.
    """
    folder = posixpath.dirname(path) or "."
    quoted, folder_q = shlex.quote(path), shlex.quote(folder)
    template = shlex.quote(posixpath.join(folder, "." + posixpath.basename(path) + ".XXXXXX"))
    return ["sh", "-c", f"mkdir -p {folder_q} && {{ [ ! -L {folder_q} ] || {{ echo {folder_q}: "
                        f"a symbolic link, not written through >&2; exit 3; }}; }} && "
                        f"tmp=$(mktemp {template}) && cat > \"$tmp\" && chmod 644 \"$tmp\" && mv -f \"$tmp\" {quoted}"]


# --------------------------------------------------------------------------- the cluster's folder on a host

# In the cluster's folder on a host (REMOTE_PATH/NAME): the cluster's name, written before anything
# else. A folder without it, or naming another cluster, is never written to or deleted.
MARKER_FILE = ".infra-cluster"


def _read_marker(folder: str) -> str:
    """Shell: `marker=` the content of `folder`'s marker when it is a regular file (not a link), else nothing."""
    marker = shlex.quote(posixpath.join(folder, MARKER_FILE))
    return f"marker=$(if [ -f {marker} ] && [ ! -L {marker} ]; then head -c 256 {marker}; fi); "


def _owner_test(folder: str, cluster: str) -> str:
    """A shell test, after `_read_marker(folder)`: `folder` is a real folder whose marker names exactly `cluster`."""
    return f"[ -d {shlex.quote(folder)} ] && [ ! -L {shlex.quote(folder)} ] && [ \"$marker\" = {shlex.quote(cluster)} ]"


def _path_owners(root: str) -> str:
    """Shell: section `paths`, read by `facts.files.parse_path_owners`: the SSH user's uid, then one
    line per path: `KIND UID USER HEXMODE PATH` (`stat`, links not followed), `KIND absent PATH` or
    `KIND unknown PATH`. KIND `f` is the cluster folder, `p` each folder or link above it up to /:
    first as written (a relative root is below the current folder), then as the links above it
    resolve (the real parent of its deepest existing folder, up to /)."""
    each = ('while :; do if [ ! -e "$p" ] && [ ! -L "$p" ]; then echo "$k absent $p"; '
            'elif s=$(stat -c "%u %U %f" -- "$p" 2>/dev/null); then echo "$k $s $p"; else echo "$k unknown $p"; fi; '
            '[ "$p" = / ] && break; p=$(dirname -- "$p"); k=p; done; ')
    return (f"printf '{PROBE_MARKER}paths\\n'; id -u; r={shlex.quote(root)} ; case $r in /*) ;; *) r=$PWD/$r ;; esac; "
            f"p=$r; k=f; {each}"
            'q=$(dirname -- "$r"); while [ ! -d "$q" ]; do q=$(dirname -- "$q"); done; '
            f'if p=$(cd -P -- "$q" 2>/dev/null && pwd -P); then k=p; {each}fi; ')


def folder_owners(root: str) -> list[str]:
    """Who owns the cluster folder and every folder above it, and their modes (`_path_owners`), alone."""
    return ["sh", "-c", _path_owners(root) + f"printf '{PROBE_MARKER}end\\n'"]


def list_project(root: str, project_dir: str, output_dir: str, cluster: str, *, from_home: bool = False,
                 with_stats: bool = False, hashed_since: int | None = None) -> list[str]:
    """What `sync-files` needs to know of a host, in one round trip (read by `facts.files.parse_project_listing`).

    `owner`: whose the cluster folder is (absent, empty, ours, other: a folder of something else,
    link, file). `paths`: who owns it and each folder above it, and their modes (`_path_owners`).
    `folders`: which of the project, its `output` mount point and the output folder are real folders. `files`: `sha256sum` lines of the project's regular files (`find` lists no
    link and enters none). `links`: the project's symbolic links, NUL-separated (last: a name
    may hold anything).

    `from_home`: first print the SSH user's home (section `home`) and go there, so relative paths
    are the home's, as `plans.up.host_layout` makes them: no host probe is needed before it.

    `with_stats`: also print the host's clock first (section `clock`, seconds) and, in place of
    `links`, the section `entries`: NUL-separated `f INODE SIZE MTIME CTIME ./PATH` of every
    regular file and `l ./PATH` of every link, so that digests known from an earlier listing can
    be reused (see `facts.files.complete_listing`). With `hashed_since` (a time of the host's
    clock) only files whose status changed after it are hashed. A host without GNU find answers
    as without `with_stats`.
    """
    r, p, o = shlex.quote(root), shlex.quote(project_dir), shlex.quote(output_dir)
    mount = shlex.quote(posixpath.join(project_dir, "output"))
    home = (f"printf '{PROBE_MARKER}home\\n%s\\n' \"$HOME\"; "
            f"case $HOME in /*) cd \"$HOME\" || exit 1 ;; *) echo 'no home folder' >&2; exit 1 ;; esac; ")
    all_files = f"find . -type f -exec sha256sum {{}} + ; printf '{PROBE_MARKER}links\\n'; find . -type l -print0"
    listing = all_files
    if with_stats:
        # A file's status time (ctime) is set to the present by every write, rename or chmod, never back.
        recent = f" -newerct @{int(hashed_since)}" if hashed_since is not None else ""
        listing = (f"if find . -maxdepth 0 -newerct @0 -printf '' 2>/dev/null; then "
                   f"find . -type f{recent} -exec sha256sum {{}} + ; printf '{PROBE_MARKER}entries\\n'; "
                   f"find . \\( -type f -printf 'f %i %s %T@ %C@ %p\\0' \\) -o \\( -type l -printf 'l %p\\0' \\); "
                   f"else {all_files}; fi")
    clock = f"printf '{PROBE_MARKER}clock\\n'; date +%s; " if with_stats else ""
    return ["sh", "-c", (
        (home if from_home else "") + clock +
        f"printf '{PROBE_MARKER}owner\\n'; {_read_marker(root)}"
        f"if [ -L {r} ]; then echo link; elif [ ! -e {r} ]; then echo absent; elif [ ! -d {r} ]; then echo file; "
        f"elif {_owner_test(root, cluster)}; then echo ours; "
        f"elif entries=$(ls -A {r}) && [ -z \"$entries\" ]; then echo empty; else echo other; fi; "
        + _path_owners(root) +
        f"printf '{PROBE_MARKER}folders\\n'; "
        f"for d in {p} {mount} {o} ; do if [ -d \"$d\" ] && [ ! -L \"$d\" ]; then echo yes; else echo no; fi; done; "
        f"printf '{PROBE_MARKER}files\\n'; "
        f"if [ -d {p} ] && [ ! -L {p} ] && cd {p}; then {listing}; fi; "
        f"printf '\\n{PROBE_MARKER}end\\n'")]


def prepare_project(root: str, project_dir: str, output_dir: str, cluster: str, made: tuple[str, ...] = ()) -> list[str]:
    """Claim the cluster folder (or check it is ours), then make the project, its mount point and the output folder.

    A new or empty folder gets the marker first; one with the marker of this cluster is used;
    anything else (a link, a file, another cluster's marker, files without a marker) is refused
    with exit code 3. A link where one of the folders belongs is removed (the link, never its
    target) before the folder is made.

    `made`: the folders the listing found absent (the cluster folder and those above it). Once
    made, each must be a real folder of the SSH user's, else exit code 3 before the marker is
    written: in a sticky world-writable folder (/tmp) another user may have made one in between.
    """
    r, m = shlex.quote(root), shlex.quote(posixpath.join(root, MARKER_FILE))
    # Written beside the folder, then moved in: a run cut short leaves the new folder empty (free
    # to claim again), never holding a stray file that would make it someone else's.
    # A fresh file (`mktemp`, never one already there): the folder above may be a sticky /tmp,
    # where another user could have planted a link or a file of theirs at a fixed name.
    template = shlex.quote(posixpath.join(posixpath.dirname(root) or "/", f".{cluster}{MARKER_FILE}.XXXXXX"))
    folders = " ".join(shlex.quote(d) for d in (project_dir, posixpath.join(project_dir, "output"), output_dir))
    refuse = f"echo {r}: not a folder of cluster {shlex.quote(cluster)}, left alone >&2; exit 3"
    ours = "".join(f"{{ [ -d {d} ] && [ ! -L {d} ] && [ -O {d} ] || {{ echo {d}: made by another user meanwhile, "
                   f"left alone >&2; exit 3; }}; }} && " for d in map(shlex.quote, made))
    return ["sh", "-c", (
        f"umask 022; {_read_marker(root)}if {_owner_test(root, cluster)}; then :; "
        f"elif [ -L {r} ] || {{ [ -e {r} ] && [ ! -d {r} ]; }}; then {refuse}; "
        f"elif [ -e {r} ] && {{ ! entries=$(ls -A {r}) || [ -n \"$entries\" ]; }}; then {refuse}; "
        f"else mkdir -p {r} && {ours}tmp=$(mktemp {template}) && printf '%s\\n' {shlex.quote(cluster)} > \"$tmp\" "
        f"&& mv -f \"$tmp\" {m} || exit 1; fi; "
        f"for d in {folders} ; do if [ -L \"$d\" ]; then rm -f \"$d\" || exit 1; fi; mkdir -p \"$d\" || exit 1; done")]


def remove_owned_folder(folder: str, owner: str, cluster: str) -> list[str]:
    """Delete `folder` (`owner` itself, or inside it) when `owner` carries the marker of `cluster`.

    Prints one verdict line, read by `facts.files.parse_removal`: `removed`, `absent`, or
    `refused: WHY`; exit code 0 for all three. `rm -rf` never follows a link inside the folder,
    and a folder that is itself a link is refused. An empty folder owned by the SSH user is
    removed without a marker (`rmdir`).
    """
    f, o = shlex.quote(folder), shlex.quote(owner)
    nested = "" if folder == owner else f"elif [ -L {f} ]; then echo 'refused: a symbolic link'; "
    # An empty folder of the SSH user's is what an `up` killed before it wrote the marker leaves:
    # rmdir removes it only while it is empty, so nothing of anyone else's can go with it.
    nested += f"elif [ ! -L {f} ] && [ -d {f} ] && [ -O {f} ] && rmdir -- {f} 2>/dev/null; then echo removed; "
    return ["sh", "-c", (
        f"{_read_marker(owner)}if [ ! -e {f} ] && [ ! -L {f} ]; then echo absent; "
        f"elif [ -L {o} ]; then echo 'refused: '{o}' is a symbolic link'; "
        f"{nested}"
        f"elif {_owner_test(owner, cluster)}; then rm -rf -- {f} && echo removed; "
        f"else echo 'refused: '{o}' holds no marker of cluster '{shlex.quote(cluster)}; fi")]


def remove_folder(folder: str) -> list[str]:
    """Delete `folder` of infra's own (a secret folder in the state dir), with `remove_owned_folder`'s verdict."""
    f = shlex.quote(folder)
    return ["sh", "-c", (
        f"if [ -L {f} ]; then echo 'refused: a symbolic link'; elif [ ! -e {f} ]; then echo absent; "
        f"else rm -rf -- {f} && echo removed; fi")]


# --------------------------------------------------------------------------- the project on a host


def extract_files(project_dir: str) -> list[str]:
    """Unpack the tar on stdin (made by `tar_of`) into the project folder, files owned by the SSH user.

    The tar holds a directory entry for every folder above its files: for such an entry GNU tar
    replaces a symbolic link found in its place by a real folder (since 1.28; unless
    --keep-directory-symlink), and a regular file replaces a link at its own name. So no link
    already on the host is written through. --no-overwrite-dir leaves existing folders' modes.
    """
    quoted = shlex.quote(project_dir)
    return ["sh", "-c", f"[ ! -L {quoted} ] && cd {quoted} && "
                        f"tar -x --no-same-owner --no-same-permissions --no-overwrite-dir -m -f -"]


def _path_pattern(rel: str) -> str:
    """`./rel` as a `find -path` pattern that matches only itself."""
    escaped = "".join("\\" + char if char in "*?[]\\" else char for char in rel)
    return "./" + escaped


def _folders_above(paths: list[str]) -> list[str]:
    """Every folder above the given paths (`a` and `a/b` for `a/b/c`), once, each before what it holds."""
    return list(dict.fromkeys("/".join(rel.split("/")[:i]) for rel in paths for i in range(1, rel.count("/") + 1)))


def delete_files(project_dir: str, paths: list[str]) -> list[str]:
    """Delete files and links given relative to the project folder, then the folders they leave empty.

    `find` walks the folder without following links (never into one), so a path through a
    link is never reached: what is deleted is a file or a link itself, never a link's target.
    `-depth` visits a folder after its content, which is what makes it empty.
    """
    for rel in paths:
        if not confined.is_inside(rel):
            raise ValueError(f"not a path inside the project: {rel!r}")
    parents = _folders_above(paths)
    files = " -o ".join(f"-path {shlex.quote(_path_pattern(rel))}" for rel in paths)
    command = f"[ ! -L {shlex.quote(project_dir)} ] && cd {shlex.quote(project_dir)} && find . -depth "
    command += f"\\( \\( {files} \\) ! -type d -delete \\)"
    if parents:
        folders = " -o ".join(f"-path {shlex.quote(_path_pattern(rel))}" for rel in parents)
        command += f" -o \\( \\( {folders} \\) -type d -empty -delete \\)"
    return ["sh", "-c", command]


def files_newer_than(root: str, moment: datetime) -> list[str]:
    """Files under `root` modified after `moment` (whole seconds, rounded down: a tie counts as newer)."""
    return ["sh", "-c", f"cd {shlex.quote(root)} 2>/dev/null && "
                        f"find . -type f -newermt @{int(moment.timestamp())} -print 2>/dev/null | head -n 1000"]


def tar_of(root: Path, paths: list[str]) -> bytes:
    """The stdin of `extract_files`: a tar of the given regular files and of every folder above them.

    Owner-neutral; each file is read through `confined` (no link followed, a file that became a
    link since the scan is refused). Folders come first, each before what it holds.
    """
    return pack(chain((folder(name) for name in _folders_above(paths)), _confined_members(root, paths)))


def _confined_members(root: Path, paths: list[str]) -> Iterator[Member]:
    """Each file as read through `confined`, with its mode and mtime; read one at a time, as the tar is made."""
    for rel in paths:
        try:
            data, stat = confined.read_file(root, rel)
        except (OSError, confined.ConfinementError) as exc:  # removed, or replaced by a link, since the scan
            why = getattr(exc, "strerror", None) or exc
            raise InfraError(f"{root / rel}: not sent ({why}): run the command again") from None
        yield Member(rel, data, stat.st_mode & 0o777, int(stat.st_mtime))


# --------------------------------------------------------------------------- the output folder, read in the master container

# Both run with `python -c` in the master container, as the SSH user: they see the output folder
# as the job saw it and nothing of the host beyond the container's mounts, so no link, and no link
# swapped in while they read, can reach a file of the host. Links are skipped all the same.

# What both programs share: a file under ROOT opened one folder at a time, none through a link.
_OPEN_BENEATH = r"""
import os, stat
def open_beneath(root, rel):
    parts = rel.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise OSError("not a path inside the folder")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = child
        file = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(file).st_mode):
        os.close(file)
        raise OSError("not a regular file")
    return file
"""

# `python -c LIST_OUTPUT ROOT`: `sha256sum` lines (GNU's escaping) of the regular files under ROOT.
LIST_OUTPUT = _OPEN_BENEATH + r"""
import hashlib, sys
root = sys.argv[1]
for folder, dirs, files in os.walk(root):  # never into a linked folder
    dirs.sort()
    for name in sorted(files):
        rel = os.path.relpath(os.path.join(folder, name), root)
        try:
            rel.encode("utf-8")  # a name that is not UTF-8 cannot be fetched by name
            fd = open_beneath(root, rel)
        except (OSError, UnicodeEncodeError):
            continue
        sha = hashlib.sha256()
        with os.fdopen(fd, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                sha.update(block)
        if "\\" in rel or "\n" in rel:
            print("\\" + sha.hexdigest() + "  ./" + rel.replace("\\", "\\\\").replace("\n", "\\n"))
        else:
            print(sha.hexdigest() + "  ./" + rel)
"""

# `python -c FETCH_OUTPUT ROOT NAMES_JSON`: base64 of a tar.gz of those regular files, modes 0644 or 0755.
FETCH_OUTPUT = _OPEN_BENEATH + r"""
import base64, io, json, sys, tarfile
root, names = sys.argv[1], json.loads(sys.argv[2])
buffer = io.BytesIO()
with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
    for rel in names:
        try:
            fd = open_beneath(root, rel)
        except OSError:
            continue
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(fd)
            data = handle.read()
        member = tarfile.TarInfo(rel)
        member.size, member.mtime = len(data), int(info.st_mtime)
        member.mode = 0o755 if info.st_mode & 0o111 else 0o644
        tar.addfile(member, io.BytesIO(data))
sys.stdout.write(base64.b64encode(buffer.getvalue()).decode())
"""

FETCH_NAMES_BYTES = 60_000  # of names per fetch: a command-line word holds at most 128 kB


def list_output(cluster: str) -> Exec:
    return Exec(container_name(cluster, "master"), ("python", "-c", LIST_OUTPUT, CONTAINER_OUTPUT))


def fetch_output(cluster: str, names: list[str]) -> list[Exec]:
    """The fetches of these output files (paths relative to the output folder), as few as the word limit allows."""
    batches: list[list[str]] = [[]]
    size = 0
    for rel in names:
        if not confined.is_inside(rel):
            raise ValueError(f"not a path inside the output folder: {rel!r}")
        if batches[-1] and size + len(json.dumps(rel)) > FETCH_NAMES_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(rel)
        size += len(json.dumps(rel)) + 2
    return [Exec(container_name(cluster, "master"), ("python", "-c", FETCH_OUTPUT, CONTAINER_OUTPUT, json.dumps(batch)))
            for batch in batches if batch]
