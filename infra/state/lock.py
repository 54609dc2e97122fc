"""One command at a time changes a cluster: a per-cluster lock, `STATE_DIR/NAME/.lock` (flock).

The lock file also says who holds it (pid, command, since when), so a second command can tell
the user. The kernel drops a flock when its process dies, even by `kill -9`: a lock is never
left behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from ..errors import StateError

LOCK_FILE = ".lock"


class ClusterBusyError(StateError):
    """Another command holds the cluster's lock."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another infra command"
    return (f"`infra {info.get('command', '?')}` (pid {info.get('pid', '?')} on {info.get('host', '?')}, "
            f"since {info.get('since', '?')})")


@contextlib.contextmanager
def cluster_lock(state_dir: Path, cluster: str, command: str, *, wait: bool = False) -> Iterator[None]:
    """Hold the cluster's lock for the block; ClusterBusyError (exit 2) if another command has it.

    With `wait`, wait for it instead (Ctrl-C still ends the wait).
    """
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = state_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise ClusterBusyError(
                    f"cluster {cluster} is busy: {_holder(path)} holds {path}; "
                    f"wait for it to finish, or run again with --wait") from None
            fcntl.flock(fd, fcntl.LOCK_EX)
        info = {"pid": os.getpid(), "command": command, "host": socket.gethostname(),
                "since": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "at": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing the descriptor releases the flock
