"""The teardown manifest: what infra started where, so `infra clean` removes exactly that.

It is rewritten atomically after every change on any host (several hosts work at once, so
updates go through a lock), so a run that fails halfway leaves a manifest covering everything
that was actually started. It holds how to reach each host too: `clean` works even after the
cluster file changed or lost a host.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..config import Host
from ..errors import StateError
from .credentials import write_private_file

VERSION = 1


@dataclass
class HostRecord:
    address: str
    user: str | None = None
    port: int | None = None
    key: str | None = None
    containers: dict[str, dict] = field(default_factory=dict)  # name -> {"id", "role"}
    networks: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # project copies (kept by clean unless --files)
    secret_dirs: list[str] = field(default_factory=list)  # env files and build context (always removed)

    def is_empty(self) -> bool:
        return not (self.containers or self.networks or self.volumes or self.files or self.secret_dirs)


class Manifest:
    def __init__(self, path: Path, cluster: str, hosts: dict[str, HostRecord] | None = None):
        self.path = path
        self.cluster = cluster
        self.hosts: dict[str, HostRecord] = hosts or {}
        self._lock = threading.RLock()

    # ---- reading and writing

    @classmethod
    def load(cls, path: Path, cluster: str) -> "Manifest":
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return cls(path, cluster)
        except (OSError, ValueError) as exc:
            raise StateError(f"{path}: unreadable manifest ({exc})") from None
        if not isinstance(raw, dict) or raw.get("version") != VERSION:
            version = raw.get("version") if isinstance(raw, dict) else None
            raise StateError(f"{path}: manifest version {version!r} is not supported")
        try:
            hosts = {name: HostRecord(**record) for name, record in raw.get("hosts", {}).items()}
        except (TypeError, AttributeError) as exc:
            raise StateError(f"{path}: malformed manifest ({exc})") from None
        return cls(path, raw.get("cluster", cluster), hosts)

    def to_dict(self) -> dict:
        return {
            "version": VERSION,
            "cluster": self.cluster,
            "hosts": {name: asdict(rec) for name, rec in sorted(self.hosts.items())},
        }

    def save(self) -> None:
        with self._lock:
            if not any(not rec.is_empty() for rec in self.hosts.values()):
                self.path.unlink(missing_ok=True)
                return
            data = json.dumps(self.to_dict(), indent=2).encode() + b"\n"
            write_private_file(self.path, data)

    # ---- recording (each call saves at once)

    def _record(self, host: Host) -> HostRecord:
        rec = self.hosts.get(host.name)
        if rec is None:
            rec = self.hosts[host.name] = HostRecord(host.address, host.user, host.port, host.key)
        else:
            rec.address, rec.user, rec.port, rec.key = host.address, host.user, host.port, host.key
        return rec

    def add_container(self, host: Host, name: str, container_id: str, role: str) -> None:
        with self._lock:
            self._record(host).containers[name] = {"id": container_id, "role": role}
            self.save()

    def remove_container(self, host_name: str, name: str) -> None:
        with self._lock:
            rec = self.hosts.get(host_name)
            if rec and rec.containers.pop(name, None) is not None:
                self.save()

    def _add_to_list(self, host: Host, attr: str, value: str) -> None:
        with self._lock:
            items = getattr(self._record(host), attr)
            if value not in items:
                items.append(value)
                self.save()

    def _remove_from_list(self, host_name: str, attr: str, value: str) -> None:
        with self._lock:
            rec = self.hosts.get(host_name)
            if rec and value in getattr(rec, attr):
                getattr(rec, attr).remove(value)
                self.save()

    # One entry point for the records of executed plan steps (`infra.plans.steps.Record`).
    _LISTS = {"files": "files", "secret_dir": "secret_dirs", "network": "networks", "volume": "volumes"}

    def apply(self, host: Host, kind: str, name: str, role: str = "", ident: str = "") -> None:
        """Record `add_container`, `remove_container`, or `add_`/`remove_` of files, secret_dir, network, volume."""
        change, _, what = kind.partition("_")
        if what == "container":
            if change == "add":
                self.add_container(host, name, ident, role)
            else:
                self.remove_container(host.name, name)
        elif change == "add":
            self._add_to_list(host, self._LISTS[what], name)
        else:
            self._remove_from_list(host.name, self._LISTS[what], name)

    def drop_host_if_empty(self, host_name: str) -> None:
        with self._lock:
            rec = self.hosts.get(host_name)
            if rec is not None and rec.is_empty():
                del self.hosts[host_name]
                self.save()

    def host_of(self, name: str) -> Host | None:
        rec = self.hosts.get(name)
        if rec is None:
            return None
        return Host(name=name, address=rec.address, user=rec.user, port=rec.port, key=rec.key)
