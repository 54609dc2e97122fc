"""What the rest of infra works with: the hosts and the cluster of a validated cluster file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..runtime import BUILTIN_APP
from .cluster_file import ClusterFile
from .values import LOCAL


@dataclass(frozen=True)
class Host:
    """A host of the cluster with everything needed to reach it."""

    name: str
    address: str
    user: str | None = None
    port: int | None = None
    key: str | None = None

    @property
    def is_local(self) -> bool:
        return self.name == LOCAL

    def describe(self) -> str:
        if self.is_local:
            return "local"
        where = f"{self.user}@{self.address}" if self.user else self.address
        return f"{where}:{self.port}" if self.port else where


@dataclass(frozen=True)
class Cluster:
    """A validated cluster file with paths resolved against the file's folder."""

    source: Path
    spec: ClusterFile
    hosts: dict[str, Host]
    project_dir: Path
    state_dir: Path
    wheelhouse: Path | None
    known_hosts: Path | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def master_host(self) -> Host:
        return self.hosts[self.spec.roles.master.host]

    @property
    def celery_app(self) -> str:
        """What `celery --app` gets: the project's app, or infra's built-in one when it names none."""
        return self.spec.project.app or BUILTIN_APP

    def worker_hosts(self) -> list[str]:
        seen: list[str] = []
        for group in self.spec.roles.workers:
            if group.containers and group.host not in seen:
                seen.append(group.host)
        return seen

    def used_hosts(self) -> list[str]:
        """Hosts with a role, master first, in file order; hosts listed but unused are left alone."""
        used = [self.spec.roles.master.host]
        used += [h for h in self.worker_hosts() if h not in used]
        return used

    def image_tag(self, role: Literal["worker", "master", "broker"]) -> str:
        explicit = getattr(self.spec.images, role)
        return explicit or f"infra-{self.name}-{role}:latest"

    @property
    def manifest_path(self) -> Path:
        return self.state_dir / "manifest.json"

    @property
    def secrets_path(self) -> Path:
        return self.state_dir / "secrets.json"

    @property
    def registry_dir(self) -> Path:
        """Storage of the registry that sends images by layers (`images.source: ship`)."""
        return self.state_dir / "registry"

    @property
    def tls_dir(self) -> Path:
        """The cluster CA and the master's certificate, every file 0600."""
        return self.state_dir / "tls"
