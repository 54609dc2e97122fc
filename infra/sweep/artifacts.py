"""A sweep's per-run files on this machine: `--artifact-limit` and the archives unpacked into `runs/<index>/`.

The worker packed each run's `$INFRA_RUN_DIR` (`infra.runtime.artifacts`), the driver kept the
archive in the output folder on the master, and `infra sweep` fetched it (as `infra run` fetches
output files). Here it is unpacked into `output/sweep-NAME/runs/<index>/` with the same care as
any fetched file: only regular files and folders, names that stay inside, nothing written
through a link (`confined`), and no more than the run's limit, whatever the archive claims.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from .. import confined
from ..runtime.artifacts import DEFAULT_LIMIT_BYTES, RUN_DIR_PLACEHOLDER, format_size  # noqa: F401

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?\s*$", re.IGNORECASE)
_SCALE = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def parse_size(text: str) -> int:
    """`100MB`, `500k`, `1.5G`, `2GiB`, `0` -> bytes (kB = 1000, KiB = 1024); ValueError otherwise."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size (write e.g. 100MB, 500kB, 2GB, or 0 for none)")
    number, unit, binary = match.groups()
    return int(float(number) * (1024 if binary else 1000) ** _SCALE[unit.lower()])


def runs_folder(name: str) -> str:
    """Where a sweep's runs' files go, relative to the output folder."""
    return f"sweep-{name}/runs"


@dataclass
class Unpacked:
    files: list[str] = field(default_factory=list)
    bytes: int = 0
    refused: list[str] = field(default_factory=list)  # "NAME (why)": not written


def unpack_run_archive(data: bytes, output_dir: Path, folder: str, limit: int) -> Unpacked:
    """Write the archive's regular files under `output_dir/folder`, at most `limit` bytes in all.

    `folder` is relative to `output_dir` (`sweep-NAME/runs/3`); links anywhere on the way, names
    that would leave it, and members that are neither files nor folders are refused, never followed.
    """
    unpacked = Unpacked()
    if confined.path_problem(folder):
        raise ValueError(f"not a folder inside the output folder: {folder!r}")
    root = confined.open_folder(output_dir, create=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member in tar:
                rel = member.name[2:] if member.name.startswith("./") else member.name
                problem = confined.path_problem(rel)
                if problem:
                    unpacked.refused.append(f"{rel!r} ({problem})")
                    continue
                if member.isdir():
                    continue  # made as the files in it are written
                if not member.isfile():
                    unpacked.refused.append(f"{rel} (not a regular file)")
                    continue
                if unpacked.bytes + member.size > limit:
                    unpacked.refused.append(f"{rel} (over the limit of {format_size(limit)})")
                    continue
                content = tar.extractfile(member).read(member.size)
                try:
                    confined.write_file(root, f"{folder}/{rel}", content, 0o755 if member.mode & 0o111 else 0o644)
                except (OSError, confined.ConfinementError) as exc:
                    unpacked.refused.append(f"{rel} ({getattr(exc, 'strerror', None) or exc})")
                    continue
                unpacked.files.append(rel)
                unpacked.bytes += len(content)
    except (tarfile.TarError, EOFError, OSError) as exc:
        unpacked.refused.append(f"the archive ({type(exc).__name__}: {exc})")
    finally:
        os.close(root)
    return unpacked
