"""What infra knows about a host before it plans: who the SSH user is, the CPU, and the engine's state.

Two sources, read at once: the shell probe (`infra.commands.files.host_probe`: home, uid, gid,
`uname -m`, which no engine API tells) and the host's engine (version, the cluster's containers,
images, networks and volumes, through `infra.commands.engine` queries). Everything after that
is decided from `HostFacts` alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..commands.files import PROBE_MARKER
from .containers import Container, ImageInfo
from .sections import split_sections


@dataclass(frozen=True)
class Identity:
    """The shell probe's answer."""

    home: str
    uid: int
    gid: int
    arch: str  # `uname -m`


def parse_host_probe(output: str) -> Identity:
    sections = split_sections(output, PROBE_MARKER)
    if "end" not in sections:
        raise ValueError("the host's probe output is incomplete")
    ids = sections.get("uid", "").split()
    if not ids or not all(part.isdigit() for part in ids):
        raise ValueError(f"no uid in the host's probe output ({sections.get('uid', '')!r})")
    return Identity(
        home=sections.get("home", "").strip(),
        uid=int(ids[0]),
        gid=int(ids[1]) if len(ids) > 1 else int(ids[0]),
        arch=sections.get("arch", "").strip(),
    )


@dataclass(frozen=True)
class HostFacts:
    home: str
    uid: int
    gid: int
    arch: str
    docker_version: str | None  # None when the engine does not answer
    docker_problem: str = ""  # why it does not answer ("" when it does)
    containers: tuple[Container, ...] = ()
    images: dict[str, ImageInfo | None] = field(default_factory=dict)
    networks: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()

    def container(self, name: str) -> Container | None:
        return next((c for c in self.containers if c.name == name), None)

    def image_id(self, ref: str) -> str | None:
        image = self.images.get(ref)
        return image.id if image else None

    @property
    def image_ids(self) -> dict[str, str | None]:
        return {ref: self.image_id(ref) for ref in self.images}

    @property
    def running_workers(self) -> dict[str, Container]:
        return {c.name: c for c in self.containers if c.role == "worker" and c.running}


def host_facts(identity: Identity, docker_version: str | None, docker_problem: str = "", *,
               containers: tuple[Container, ...] = (), images: dict[str, ImageInfo | None] | None = None,
               networks: list[str] | tuple[str, ...] = (), volumes: list[str] | tuple[str, ...] = ()) -> HostFacts:
    return HostFacts(identity.home, identity.uid, identity.gid, identity.arch, docker_version, docker_problem,
                     tuple(containers), dict(images or {}), tuple(networks), tuple(volumes))
