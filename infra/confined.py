"""Files inside a folder, reached without ever following a symbolic link.

The project folder and the output folder can be written by jobs (the output folder always,
the project on `local`): a symbolic link planted there must never make infra read or write
outside them. Every path is checked first (relative, no `.` or `..`, nothing empty), then
opened one folder at a time with O_NOFOLLOW relative to the folder above, so a link anywhere
on the way — even one swapped in after the check — is refused, never followed.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from .errors import InfraError


class ConfinementError(InfraError):
    """A path that would leave its folder, or goes through or ends at a symbolic link."""


def path_problem(rel: str) -> str | None:
    """Why `rel` cannot name a file inside its folder, or None when it can."""
    if not rel:
        return "an empty path"
    if "\0" in rel:
        return "a NUL character"
    if rel.startswith("/"):
        return "an absolute path"
    parts = rel.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "a path with an empty, '.' or '..' part"
    return None


def is_inside(rel: str) -> bool:
    return path_problem(rel) is None


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def _checked(rel: str) -> list[str]:
    problem = path_problem(rel)
    if problem:
        raise ConfinementError(f"{rel!r}: {problem}")
    return rel.split("/")


def open_folder(root: Path | str, *, create: bool = False) -> int:
    """A descriptor of `root` itself, refused when `root` is a symbolic link (made first if `create`)."""
    if create:
        try:
            os.mkdir(root, 0o755)
        except FileExistsError:
            pass
    try:
        return os.open(root, _DIR_FLAGS)
    except OSError as exc:
        if os.path.islink(root):
            raise ConfinementError(f"{root} is a symbolic link") from None
        raise exc


def _walk(root_fd: int, folders: list[str], *, create: bool) -> int:
    """A descriptor of `root/folders...`, each opened without following links (made if `create`)."""
    fd = os.dup(root_fd)
    try:
        for name in folders:
            if create:
                try:
                    os.mkdir(name, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise ConfinementError(f"{name} is a symbolic link or not a folder") from None
                raise
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_file(root: Path | str, rel: str) -> int:
    """A read descriptor of the regular file `root/rel`; a link or anything but a file is refused."""
    parts = _checked(rel)
    root_fd = open_folder(root)
    try:
        folder = _walk(root_fd, parts[:-1], create=False)
    finally:
        os.close(root_fd)
    try:
        try:
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0),
                         dir_fd=folder)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ConfinementError(f"{rel} is a symbolic link") from None
            raise
    finally:
        os.close(folder)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConfinementError(f"{rel} is not a regular file")
    return fd


def read_file(root: Path | str, rel: str) -> tuple[bytes, os.stat_result]:
    fd = open_file(root, rel)
    try:
        info = os.fstat(fd)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks), info
    finally:
        os.close(fd)


def write_file(root_fd: int, rel: str, data: bytes, mode: int) -> None:
    """Write `data` to `rel` under the folder `root_fd` with exactly `mode`, atomically.

    Missing folders are made; a folder on the way that is a link or a file is refused, and so
    is a link (or a folder) already at `rel`. The file is written under a fresh name and
    renamed over `rel`, so a reader never sees half of it.
    """
    parts = _checked(rel)
    folder = _walk(root_fd, parts[:-1], create=True)
    try:
        try:
            target = os.stat(parts[-1], dir_fd=folder, follow_symlinks=False)
        except FileNotFoundError:
            target = None
        if target is not None and not stat.S_ISREG(target.st_mode):
            kind = "a symbolic link" if stat.S_ISLNK(target.st_mode) else "not a regular file"
            raise ConfinementError(f"{rel} is {kind} here: left as it is")
        tmp = f".{parts[-1]}.infra-tmp-{os.getpid()}"
        try:
            os.unlink(tmp, dir_fd=folder)
        except FileNotFoundError:
            pass
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
                     0o600, dir_fd=folder)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        os.replace(tmp, parts[-1], src_dir_fd=folder, dst_dir_fd=folder)
    finally:
        os.close(folder)


def create_file(root: Path | str, rel: str, mode: int = 0o644) -> int:
    """A write descriptor of a new, empty `root/rel` (missing folders made); links anywhere refused.

    For files written as they come (a sweep's run logs): an existing regular file is truncated,
    a link or anything else at `rel` is refused, never followed.
    """
    parts = _checked(rel)
    root_fd = open_folder(root, create=True)
    try:
        folder = _walk(root_fd, parts[:-1], create=True)
    finally:
        os.close(root_fd)
    try:
        try:
            return os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK
                           | getattr(os, "O_CLOEXEC", 0), mode, dir_fd=folder)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                raise ConfinementError(f"{rel} is a symbolic link or not a regular file here: left as it is") from None
            raise
    finally:
        os.close(folder)


def replace_file(root: Path | str, rel: str, data: bytes, mode: int = 0o644) -> None:
    """`write_file` under the folder `root` (made if missing, refused if it is a link)."""
    root_fd = open_folder(root, create=True)
    try:
        write_file(root_fd, rel, data, mode)
    finally:
        os.close(root_fd)
