"""What bootstrap knows about a host: its OS, CPU, user, privilege and Docker, parsed from one probe.

The probe script itself is built in `infra.commands.bootstrap` (`PROBE_SCRIPT`); it prints a
`SECTION` marker line before each answer, and `parse_probe` turns its output into a `HostState`.
Pure: nothing here connects anywhere.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Literal

from ..names import DOCKER_GROUP
from .arch import dpkg_arch
from .sections import split_sections

SECTION = "=====infra-bootstrap:"

# How the SSH user becomes root: already is, passwordless sudo, sudo asking a password, no way.
Privilege = Literal["root", "sudo", "sudo-password", "none"]


@dataclass(frozen=True)
class OsInfo:
    """What /etc/os-release says."""

    id: str
    id_like: tuple[str, ...] = ()
    version_id: str = ""
    codename: str = ""
    pretty_name: str = ""

    @property
    def family(self) -> Literal["ubuntu", "debian"] | None:
        """The supported distribution this is, or None."""
        if self.id == "ubuntu":
            return "ubuntu"
        if self.id in ("debian", "raspbian"):  # Raspberry Pi OS (32-bit) says raspbian
            return "debian"
        return None

    @property
    def name(self) -> str:
        return self.pretty_name or " ".join(p for p in (self.id, self.version_id) if p) or "unknown"


def parse_os_release(text: str) -> OsInfo:
    """Parse os-release(5): KEY=value lines, values optionally quoted shell-style."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, raw = line.partition("=")
        try:
            parts = shlex.split(raw, comments=False, posix=True)
        except ValueError:
            parts = [raw.strip("\"'")]
        values[key.strip()] = " ".join(parts)
    os_id = values.get("ID", "").lower()
    codename = values.get("VERSION_CODENAME") or values.get("UBUNTU_CODENAME") or ""
    if not codename and os_id == "debian":
        # Debian 8-era files and some images put the codename only in VERSION: "12 (bookworm)".
        version = values.get("VERSION", "")
        if "(" in version and version.endswith(")"):
            codename = version[version.index("(") + 1 : -1].strip()
    return OsInfo(
        id=os_id,
        id_like=tuple(values.get("ID_LIKE", "").lower().split()),
        version_id=values.get("VERSION_ID", ""),
        codename=codename.lower(),
        pretty_name=values.get("PRETTY_NAME", ""),
    )


def normalize_arch(dpkg_answer: str, uname_machine: str = "") -> str:
    """Debian's name of the CPU architecture: dpkg's own answer, else derived from `uname -m`."""
    arch = dpkg_answer.strip()
    if arch and arch != "?":  # the probe prints '?' where dpkg is missing
        return arch
    return dpkg_arch(uname_machine) or "unknown"


@dataclass(frozen=True)
class HostState:
    """A host as the probe saw it."""

    os: OsInfo
    arch: str
    uid: int
    user: str
    session_groups: tuple[str, ...]
    user_groups: tuple[str, ...]
    privilege: Privilege
    systemd: bool
    docker_cli: bool
    dockerd: bool
    docker_version: str | None  # the engine's version as the user sees it, None when it does not answer
    docker_problem: str  # why it does not answer ("" when it does)
    docker_version_via_group: str | None = None  # answer through `sg docker` (group not yet in this session)
    service_enabled: str = ""  # `systemctl is-enabled docker.service` ("" without systemd)
    nvidia_driver: bool = False  # nvidia-smi is there (the GPU driver is the host's own business)
    nvidia_toolkit: bool = False  # nvidia-ctk is there (the NVIDIA container toolkit)
    nvidia_runtime: bool = False  # /etc/docker/daemon.json registers the nvidia runtime
    registry: bool = False  # Debian's docker-registry is there (layer transfer, `images.source: ship`)

    @property
    def is_root(self) -> bool:
        return self.uid == 0

    @property
    def in_docker_group(self) -> bool:
        """The user's group membership as later logins will see it."""
        return DOCKER_GROUP in self.user_groups

    @property
    def engine_version(self) -> str | None:
        return self.docker_version or self.docker_version_via_group

    @property
    def ready(self) -> bool:
        """Docker answers and the user can use it from new logins; nothing to do."""
        if self.engine_version is None:
            return False
        if self.systemd and self.service_enabled == "disabled":  # runs now, but not after a reboot
            return False
        return self.is_root or self.docker_version is not None or self.in_docker_group


def _engine_answer(text: str) -> tuple[str | None, str]:
    """(version, problem) from `docker version ...; echo exit=$?` output."""
    lines = [line for line in text.splitlines() if line.strip()]
    code = None
    if lines and lines[-1].startswith("exit="):
        code = lines.pop()[5:].strip()
    if code == "0" and lines:
        return lines[-1].strip(), ""
    if code == "127":
        return None, "Docker is not installed"
    problem = next((line.strip() for line in reversed(lines) if line.strip()), "") or "Docker does not answer"
    return None, problem


def parse_probe(output: str) -> HostState:
    """Raises ValueError when the output is not a complete probe (the host cut it short)."""
    sec = split_sections(output, SECTION)
    if "end" not in sec:
        raise ValueError("the probe did not finish")
    try:
        uid = int(sec.get("uid", "").split()[0])
    except (IndexError, ValueError):
        raise ValueError("no user id in the probe output") from None
    sudo = sec.get("sudo", "").strip()
    privilege: Privilege = {"root": "root", "nopasswd": "sudo", "password": "sudo-password"}.get(sudo, "none")
    if uid == 0:
        privilege = "root"
    version, problem = _engine_answer(sec.get("docker_version", ""))
    via_group = None
    if sec.get("docker_version_sg", "").strip():
        via_group, _ = _engine_answer(sec["docker_version_sg"])
    enabled = sec.get("enabled", "").strip()
    nvidia = sec.get("nvidia", "").split()
    return HostState(
        os=parse_os_release(sec.get("os_release", "")),
        arch=normalize_arch(sec.get("dpkg_arch", ""), sec.get("uname", "")),
        uid=uid,
        user=sec.get("user", "").strip() or str(uid),
        session_groups=tuple(sec.get("session_groups", "").split()),
        user_groups=tuple(sec.get("user_groups", "").split()),
        privilege=privilege,
        systemd=sec.get("systemd", "").strip() == "yes",
        docker_cli=bool(sec.get("docker_cli", "").strip()),
        dockerd=bool(sec.get("dockerd", "").strip()),
        docker_version=version,
        docker_problem=problem,
        docker_version_via_group=via_group,
        service_enabled=enabled.splitlines()[-1] if enabled else "",
        nvidia_driver="driver" in nvidia,
        nvidia_toolkit="toolkit" in nvidia,
        nvidia_runtime="runtime" in nvidia,
        registry=bool(sec.get("registry", "").strip()),
    )
