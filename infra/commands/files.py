"""Shell commands for what no engine API does: a host's identity, and files on the host.

Every value that reaches a shell is quoted here; paths inside the project are given relative
to its folder, so no command can climb above it. Contents (secrets, tar streams, file lists)
travel on stdin, never on a command line.
"""

from __future__ import annotations

import io
import os
import posixpath
import shlex
import tarfile
from datetime import datetime
from pathlib import Path

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


def write_private_file(path: str) -> list[str]:
    """Write stdin to `path` readable by the SSH user only (folder 0700, file 0600), atomically."""
    folder = posixpath.dirname(path)
    quoted, tmp = shlex.quote(path), shlex.quote(path + ".tmp")
    # Only a folder of infra's own becomes 0700: never `/` or the current folder.
    make = f"mkdir -p {shlex.quote(folder)} && chmod 700 {shlex.quote(folder)} && " if folder not in ("", "/") else ""
    return ["sh", "-c", f"umask 077 && {make}cat > {tmp} && mv -f {tmp} {quoted}"]


def write_file(path: str) -> list[str]:
    """Write stdin to `path` (its folder made if missing), atomically; for files that hold no secret."""
    folder = posixpath.dirname(path) or "."
    quoted, tmp = shlex.quote(path), shlex.quote(path + ".tmp")
    return ["sh", "-c", f"mkdir -p {shlex.quote(folder)} && cat > {tmp} && mv -f {tmp} {quoted}"]


def make_folder(path: str) -> list[str]:
    return ["mkdir", "-p", "--", path]


def remove_tree(path: str) -> list[str]:
    return ["rm", "-rf", "--", path]


def list_files(root: str) -> list[str]:
    """`sha256sum` lines of every file under `root`, paths relative to it (nothing if absent)."""
    quoted = shlex.quote(root)
    return ["sh", "-c", f"if [ -d {quoted} ]; then cd {quoted} && find . -type f -exec sha256sum {{}} + ; fi"]


def extract_files(root: str) -> list[str]:
    """Unpack the tar on stdin into `root` (created if missing), files owned by the SSH user."""
    quoted = shlex.quote(root)
    # --no-same-owner: files belong to the SSH user even when it is root.
    return ["sh", "-c", f"mkdir -p {quoted} && tar -x --no-same-owner -m -f - -C {quoted}"]


def delete_files(root: str, paths: list[str]) -> list[str]:
    """Delete files given relative to `root`, then the folders they leave empty."""
    # Relative paths from inside root, so `rmdir -p` can never climb above the project folder.
    files = " ".join(shlex.quote(p) for p in paths)
    parents = sorted({os.path.dirname(p) for p in paths if os.path.dirname(p)}, key=len, reverse=True)
    command = f"cd {shlex.quote(root)} && rm -f -- {files}"
    if parents:
        folders = " ".join(shlex.quote(p) for p in parents)
        command += f" && (rmdir -p --ignore-fail-on-non-empty -- {folders} 2>/dev/null || true)"
    return ["sh", "-c", command]


def files_newer_than(root: str, moment: datetime) -> list[str]:
    """Files under `root` modified after `moment` (whole seconds, rounded down: a tie counts as newer)."""
    return ["sh", "-c", f"cd {shlex.quote(root)} 2>/dev/null && "
                        f"find . -type f -newermt @{int(moment.timestamp())} -print 2>/dev/null | head -n 1000"]


def fetch_files(root: str) -> list[str]:
    """A gzipped tar of the files named on stdin (one per line, relative to `root`), as base64 text."""
    return ["sh", "-c", f"cd {shlex.quote(root)} && tar -czf - -T - | base64"]


def tar_of(root: Path, paths: list[str]) -> bytes:
    """The stdin of `extract_files`: an uncompressed tar of the given files, owner-neutral."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in paths:
            info = tar.gettarinfo(str(root / rel), arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with (root / rel).open("rb") as handle:
                tar.addfile(info, handle)
    return buffer.getvalue()


def names_on_stdin(paths: list[str]) -> bytes:
    """The stdin of `fetch_files`."""
    return "".join(f"./{rel}\n" for rel in paths).encode()
