"""CPU architecture names: what `uname -m` says, and what Docker and Debian call it.

One table, so that the platform an image is built for and the packages apt installs can never
disagree about a machine.
"""

from __future__ import annotations

from typing import NamedTuple


class ArchNames(NamedTuple):
    docker: str  # the platform's architecture (`linux/arm64`, `linux/arm`)
    dpkg: str  # Debian's (`dpkg --print-architecture`, apt sources' `[arch=...]`)


# Keys: `uname -m` output, plus the names the tools themselves print (a host may report either).
ARCHITECTURES: dict[str, ArchNames] = {
    "x86_64": ArchNames("amd64", "amd64"),
    "amd64": ArchNames("amd64", "amd64"),
    "aarch64": ArchNames("arm64", "arm64"),
    "arm64": ArchNames("arm64", "arm64"),
    "armv7l": ArchNames("arm", "armhf"),
    "armv6l": ArchNames("arm", "armhf"),
    "armhf": ArchNames("arm", "armhf"),
}


def docker_arch(uname_machine: str) -> str:
    """The Docker platform architecture for `uname -m` output (unknown names pass through)."""
    machine = uname_machine.strip()
    names = ARCHITECTURES.get(machine)
    return names.docker if names else machine


def dpkg_arch(uname_machine: str) -> str:
    """Debian's architecture name for `uname -m` output (unknown names pass through)."""
    machine = uname_machine.strip()
    names = ARCHITECTURES.get(machine)
    return names.dpkg if names else machine
