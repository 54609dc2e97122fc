"""The one tar builder: members in the order given, owned by no one, with their own modes and times.

infra packs the project files it sends and the build context volunteers fetch with it; the join
endpoint, in its container, the project and a volunteer's bundle. Callers only gather members
(reading files their own way); nothing here touches the disk, so the same members always give
the same bytes (the project's digest and the context's stay the same for the same content).
"""

from __future__ import annotations

import gzip
import io
import tarfile
from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Member:
    """A regular file of the tar, or a folder when `data` is None."""

    name: str
    data: bytes | None
    mode: int
    mtime: int = 0  # whole seconds: a float would add a PAX header of its own


def folder(name: str, mode: int = 0o755) -> Member:
    return Member(name, None, mode)


def pack(members: Iterable[Member]) -> bytes:
    """The members as a PAX tar, uid and gid 0 without names (each member is read from `members` once, in turn)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.mode, info.mtime = member.mode, member.mtime
            if member.data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(member.data)
                tar.addfile(info, io.BytesIO(member.data))
    return buffer.getvalue()


def pack_gzip(members: Iterable[Member]) -> bytes:
    """`pack`, gzipped with no time in the gzip header either."""
    return gzip.compress(pack(members), compresslevel=6, mtime=0)
