"""A run's own folder (`$INFRA_RUN_DIR`) and the files it leaves there, on their way back.

The project is read-only on the workers and their root too: a run writes into a fresh, empty
folder of its attempt on the worker's scratch tmpfs (`/tmp`, size-limited). When the run ends,
whatever its status, the worker packs that folder as a tar.gz, with the run's size limit and
without ever following a link: a symbolic link, a FIFO, a device or a socket is left out and
named, and so are the files that no longer fit under the limit. The archive travels through
Redis in chunks (`protocol.artifact_chunk_key`), to keys only the driver reads; the driver
puts them together, checks them against what the end event announced, and writes the archive
into the sweep's output folder on the master (`write_archive`), from where `infra sweep`
fetches it and unpacks it into `output/sweep-NAME/runs/<index>/`.

A command word may point at the folder: `RUN_DIR_PLACEHOLDER` (`{run_dir}`) in any word of
the command, a parameter's value included, is replaced by its path on the worker. Braces are
not part of any number or name a parameters file gives, so a real value never collides.

Only the standard library: this module is part of `infra_runtime`, in the images.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import shutil
import stat
from dataclasses import dataclass, field

from .tarball import Member, folder, pack

RUN_DIR_PLACEHOLDER = "{run_dir}"
RUN_DIR_ENV = "INFRA_RUN_DIR"
DEFAULT_LIMIT_BYTES = 100 * 1000 * 1000
GZIP_LEVEL = 1  # checkpoints and models barely compress: the fastest level, not the smallest archive
CHUNK_BYTES = 1 << 20  # one Redis value: large enough for few round trips, small for Redis' memory
MAX_DEPTH = 64  # folders inside folders: deeper ones are left out, not walked
LISTED_PROBLEMS = 5  # names given in a warning; the count says the rest

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


def with_run_dir(argv, run_dir: str) -> tuple[str, ...]:
    """The command with every `{run_dir}` replaced by the run's folder."""
    return tuple(word.replace(RUN_DIR_PLACEHOLDER, run_dir) for word in argv)


def run_dir_name(submission: str) -> str:
    """The folder of one attempt under the scratch folder: its submission id, in safe characters."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in submission)
    return f"infra-run-{safe or 'run'}"


def fresh_run_dir(scratch: str, submission: str) -> str:
    """An empty folder, only for this attempt (a redelivered message's earlier one is removed first)."""
    path = os.path.join(scratch, run_dir_name(submission))
    remove_run_dir(path)
    os.mkdir(path, 0o700)
    return path


def remove_run_dir(path: str) -> None:
    # shutil.rmtree removes links, never what they point at (it walks with descriptors on Linux).
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except NotADirectoryError:
        os.unlink(path)


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


@dataclass
class Packed:
    """A run folder as a tar.gz, and what was left out of it."""

    data: bytes
    files: int = 0
    bytes: int = 0  # of the files' contents, before compression
    refused: list[str] = field(default_factory=list)  # "NAME (a symbolic link)": never read
    left_out: list[str] = field(default_factory=list)  # files that did not fit under the limit

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def pack_run_folder(root: str, limit: int) -> Packed:
    """The regular files and folders under `root` as a tar.gz of at most `limit` bytes of content.

    Walked with descriptors and O_NOFOLLOW: a link is never followed, whatever it points at, and
    nothing outside `root` is opened. Files are taken in name order while they fit.
    """
    members: list[Member] = []
    packed = Packed(b"")
    fd = os.open(root, _DIR_FLAGS)
    try:
        _walk(fd, "", 0, limit, members, packed)
    finally:
        os.close(fd)
    packed.data = gzip.compress(pack(members), compresslevel=GZIP_LEVEL, mtime=0)
    return packed


def _walk(dir_fd: int, prefix: str, depth: int, limit: int, members: list[Member], packed: Packed) -> None:
    for name in sorted(os.listdir(dir_fd)):
        rel = prefix + name
        try:
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue  # removed while packed (something of the run still running)
        if stat.S_ISDIR(info.st_mode):
            if depth >= MAX_DEPTH:
                packed.refused.append(f"{rel} (more than {MAX_DEPTH} folders deep)")
                continue
            try:
                sub = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            except OSError as exc:
                packed.refused.append(f"{rel} ({_why(exc)})")
                continue
            try:
                members.append(folder(rel, 0o755))
                _walk(sub, rel + "/", depth + 1, limit, members, packed)
            finally:
                os.close(sub)
        elif stat.S_ISREG(info.st_mode):
            _add_file(dir_fd, name, rel, limit, members, packed)
        else:
            packed.refused.append(f"{rel} ({_kind(info.st_mode)})")


def _add_file(dir_fd: int, name: str, rel: str, limit: int, members: list[Member], packed: Packed) -> None:
    room = limit - packed.bytes
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:  # swapped for a link or a FIFO since it was listed
        packed.refused.append(f"{rel} ({_why(exc)})")
        return
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            packed.refused.append(f"{rel} ({_kind(info.st_mode)})")
            return
        if info.st_size > room:
            packed.left_out.append(rel)
            return
        chunks, size = [], 0
        while size <= room and (chunk := os.read(fd, min(1 << 20, room + 1 - size))):
            chunks.append(chunk)
            size += len(chunk)
        if size > room:  # it grew since fstat
            packed.left_out.append(rel)
            return
    finally:
        os.close(fd)
    members.append(Member(rel, b"".join(chunks), 0o755 if info.st_mode & 0o111 else 0o644, int(info.st_mtime)))
    packed.files += 1
    packed.bytes += size


def _why(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "a symbolic link"
    return exc.strerror or str(exc)


def split_chunks(data: bytes, size: int | None = None) -> list[bytes]:
    size = size or CHUNK_BYTES
    return [data[i:i + size] for i in range(0, len(data), size)] or [b""]


def announcement(packed: Packed, chunks: int, limit: int) -> dict:
    """What the end event says of the archive: the driver checks the chunks against it."""
    return {"chunks": chunks, "archive_bytes": len(packed.data), "sha256": packed.sha256, "files": packed.files,
            "bytes": packed.bytes, "limit": limit, "refused": packed.refused[:LISTED_PROBLEMS],
            "refused_count": len(packed.refused), "left_out": packed.left_out[:LISTED_PROBLEMS],
            "left_out_count": len(packed.left_out)}


def max_archive_bytes(limit: int) -> int:
    """The largest archive a run within `limit` can make: its content barely compressed, plus tar headers.

    The driver refuses more (a volunteer could announce anything) before it reads a chunk."""
    return limit + limit // 10 + (1 << 20)


def warning_text(info: dict) -> str | None:
    """The one-line warning of a run whose folder held links or more than its limit; None when all came back."""
    parts = []
    refused, left_out = int(info.get("refused_count") or 0), int(info.get("left_out_count") or 0)
    if refused:
        names = ", ".join(str(name) for name in info.get("refused") or [])
        more = f" and {refused - LISTED_PROBLEMS} more" if refused > LISTED_PROBLEMS else ""
        parts.append(f"{refused} item(s) not a regular file or folder left out, never read: {names}{more}")
    if left_out:
        names = ", ".join(str(name) for name in info.get("left_out") or [])
        more = f" and {left_out - LISTED_PROBLEMS} more" if left_out > LISTED_PROBLEMS else ""
        parts.append(f"{left_out} file(s) over the artifact limit of {format_size(int(info.get('limit') or 0))} "
                     f"left out: {names}{more} (--artifact-limit raises it)")
    if info.get("error"):
        parts.append(str(info["error"]))
    return "; ".join(parts) or None


def format_size(size: int) -> str:
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size} B"


def write_archive(output_root: str, parts: list[str], data: bytes) -> None:
    """Write `data` at `output_root/parts...` (folders made), never through a link, atomically.

    The driver's side: the output folder is also the one `infra run` jobs write, so a link
    planted there by a job must not redirect the archive anywhere else.
    """
    fd = os.open(output_root, _DIR_FLAGS)
    try:
        for part in parts[:-1]:
            if part in ("", ".", "..") or "/" in part:
                raise ValueError(f"not a folder name: {part!r}")
            try:
                os.mkdir(part, 0o755, dir_fd=fd)
            except FileExistsError:
                pass
            sub = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = sub
        name = parts[-1]
        tmp = f".{name}.infra-tmp-{os.getpid()}"
        try:
            os.unlink(tmp, dir_fd=fd)
        except FileNotFoundError:
            pass
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
                      0o644, dir_fd=fd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(out, view):]
        finally:
            os.close(out)
        os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)  # a link at `name` is replaced, not followed
    finally:
        os.close(fd)
