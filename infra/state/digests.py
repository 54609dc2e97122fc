"""The digest records `sync-files` keeps here, so that a second run hashes only what changed.

The local digests (mtime and size → sha256 of each project file), each host's known digests of
its copy, and the code record of each worker (which files it started with).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from ..facts.files import KnownDigests
from .credentials import write_private_file

if TYPE_CHECKING:

    from ..config import Cluster, Host
    from ..plans.sync import CodeRecord


def code_records_path(cluster: Cluster) -> Path:
    return cluster.state_dir / "worker-code.json"


def load_code_records(path: Path) -> dict[str, CodeRecord]:
    from ..plans.sync import CodeRecord

    try:
        raw = json.loads(path.read_text())
        return {host: CodeRecord(rec["digest"], dict(rec["workers"])) for host, rec in raw.get("hosts", {}).items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}  # a lost record only means the mtime rule decides (see restart_decision)


def save_code_records(path: Path, records: dict[str, CodeRecord]) -> None:
    data = {"version": 1, "hosts": {host: asdict(rec) for host, rec in sorted(records.items())}}
    write_private_file(path, json.dumps(data, indent=2).encode() + b"\n")


def write_digest_record(path: Path, data: dict) -> None:
    """Write a record of known digests (0600, atomically). No fsync: losing one in a crash
    only means hashing every file again."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, json.dumps(data, separators=(",", ":")).encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def local_digests_path(cluster: Cluster) -> Path:
    return cluster.state_dir / "local-digests.json"


def load_local_digests(path: Path, root: Path) -> dict[str, tuple[str, str]]:
    """{relative path: (status, sha256)} of the last scan of `root` (see `facts.files.scan_local`)."""
    try:
        raw = json.loads(path.read_text())
        if raw.get("root") != str(root):
            return {}
        return {str(rel): (str(status), str(digest)) for rel, (status, digest) in raw["files"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}  # a lost record only means hashing every file again


def known_digests_path(cluster: Cluster, host: Host) -> Path:
    return cluster.state_dir / "host-digests" / f"{host.name}.json"


def known_digests_target(host: Host, project_dir: str) -> str:
    """Whose files a record of known digests describes: the same host name elsewhere is another host."""
    return f"{host.user or ''}@{host.address}:{host.port or ''}:{project_dir}"


def load_known_digests(path: Path, target: str) -> tuple[KnownDigests | None, str]:
    """(the digests known of `target`'s project files, the home they were under); (None, "") if unknown."""
    try:
        raw = json.loads(path.read_text())
        if raw.get("target") != target:
            return None, ""
        return KnownDigests.from_json(raw), str(raw["home"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None, ""  # a lost record only means the host hashes every file again


def save_known_digests(path: Path, target: str, home: str, known: KnownDigests) -> None:
    """Kept in the state dir, not on the host: a host's own files never decide what infra believes of it."""
    write_digest_record(path, {"version": 1, "target": target, "home": home, **known.to_json()})
