"""What no single key can tell: host names known, ports distinct, folders and files there."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .cluster import Cluster, Host
from .cluster_file import ClusterFile
from .located import Located
from .values import HOST_NAME_PATTERN, LOCAL, clipped, quoted


def check_consistency(spec: ClusterFile, located: Located, source: Path, base_dir: Path) -> Cluster:
    """The cluster `spec` describes, its paths resolved against `base_dir`, once what no single key can
    tell is checked; the first problem found is raised, located."""
    hosts = _resolved_hosts(spec, located, base_dir)
    _check_role_hosts(spec, located, hosts)
    _check_ports(spec, located, hosts)
    project_dir = _project_dir(spec, located, base_dir)
    wheelhouse = _wheelhouse(spec, located, base_dir)
    _check_pulled_images(spec, located)
    _check_worker_containers(spec, located)
    state_dir = _state_dir(spec, located, base_dir)
    project_dir = project_dir.resolve()
    _check_state_dir_outside_project(spec, located, state_dir, project_dir)
    return Cluster(
        source=source,
        spec=spec,
        hosts=hosts,
        project_dir=project_dir,
        state_dir=state_dir,
        wheelhouse=wheelhouse.resolve() if wheelhouse else None,
        known_hosts=_local_path(spec.ssh.known_hosts, base_dir) if spec.ssh.known_hosts else None,
    )


def _resolved_hosts(spec: ClusterFile, located: Located, base_dir: Path) -> dict[str, Host]:
    """The hosts by name, `local` included; a key file must exist and is named by its path from here."""
    hosts: dict[str, Host] = {LOCAL: Host(name=LOCAL, address=LOCAL)}
    for name, host in spec.hosts.items():
        path = ("hosts", name)
        if name == LOCAL:
            raise located.error(path, "'local' is the machine running infra and needs no entry")
        if not re.fullmatch(HOST_NAME_PATTERN, name):
            raise located.error(path, "host names are letters, digits, '.', '_' and '-'")
        key = None
        if host.key:
            key_path = _local_path(host.key, base_dir)
            if not _is_file(key_path):
                raise located.error(path + ("key",), f"no such key file {quoted(host.key)}")
            key = str(key_path)
        hosts[name] = Host(name=name, address=host.address, user=host.user, port=host.port, key=key)
    return hosts


def _check_role_hosts(spec: ClusterFile, located: Located, hosts: dict[str, Host]) -> None:
    master = spec.roles.master
    if master.host not in hosts:
        raise located.error(("roles", "master", "host"), _unknown_host(master.host, hosts))
    for index, group in enumerate(spec.roles.workers):
        if group.host not in hosts:
            raise located.error(("roles", "workers", index, "host"), _unknown_host(group.host, hosts))


def _check_ports(spec: ClusterFile, located: Located, hosts: dict[str, Host]) -> None:
    """The master's published ports are distinct, and none is the port infra reaches it by SSH on."""
    ports = spec.ports.model_dump()
    seen_ports: dict[int, str] = {}
    for role, port in ports.items():
        if port in seen_ports:
            other = seen_ports[port]
            # Blame the key the user wrote (a default cannot be the mistake).
            if ("ports", role) not in located.lines and ("ports", other) in located.lines:
                role, other = other, role
            raise located.error(("ports", role), f"port {port} is also used by ports.{other}")
        seen_ports[port] = role
    master = spec.roles.master
    master_ssh_port = hosts[master.host].port or 22
    if not hosts[master.host].is_local and master_ssh_port in seen_ports:
        role = seen_ports[master_ssh_port]
        raise located.error(
            ("ports", role), f"port {master_ssh_port} is the SSH port of master host '{master.host}'"
        )


def _project_dir(spec: ClusterFile, located: Located, base_dir: Path) -> Path:
    """The project folder, which must exist; its remote path must be a folder of its own, and a requirements
    file other than the default one must exist (a project may well have no requirements.txt)."""
    project_dir = _local_path(spec.project.path, base_dir)
    if not _is_dir(project_dir):
        raise located.error(("project", "path"), f"no such folder {quoted(spec.project.path)}")
    remote = spec.project.remote_path.rstrip("/")
    if remote in ("", "~", ".", "/", "$HOME") or ".." in Path(remote).parts:
        raise located.error(
            ("project", "remote_path"),
            f"{quoted(spec.project.remote_path)} is not a folder of its own (use e.g. 'infra' or '/srv/infra')",
        )
    if spec.project.requirements:
        req = project_dir / spec.project.requirements
        if spec.project.requirements != "requirements.txt" and not _is_file(req):
            raise located.error(("project", "requirements"), f"no such file {quoted(str(req))}")
    return project_dir


def _wheelhouse(spec: ClusterFile, located: Located, base_dir: Path) -> Path | None:
    if not spec.images.wheelhouse:
        return None
    wheelhouse = _local_path(spec.images.wheelhouse, base_dir)
    if not _is_dir(wheelhouse):
        raise located.error(("images", "wheelhouse"), f"no such folder {quoted(spec.images.wheelhouse)}")
    return wheelhouse


def _check_pulled_images(spec: ClusterFile, located: Located) -> None:
    if spec.images.source == "pull":
        for role in ("worker", "master", "broker"):
            if not getattr(spec.images, role):
                raise located.error(("images",), f"images.{role} must name a registry image when source is 'pull'")


def _check_worker_containers(spec: ClusterFile, located: Located) -> None:
    if not spec.roles.workers or not any(g.containers for g in spec.roles.workers):
        raise located.error(("roles", "workers"), "at least one worker container is needed")


def _state_dir(spec: ClusterFile, located: Located, base_dir: Path) -> Path:
    """STATE_DIR/NAME, resolved: the folder of this cluster's manifest and secrets."""
    try:
        return (_local_path(spec.state_dir, base_dir) / spec.name).resolve()
    except (OSError, ValueError, RuntimeError) as exc:  # a NUL character, a symlink loop...
        raise located.error(
            ("state_dir",), f"{quoted(spec.state_dir)} cannot be a folder: {clipped(str(exc), 80)}") from None


def _check_state_dir_outside_project(spec: ClusterFile, located: Located, state_dir: Path, project: Path) -> None:
    if state_dir == project or project in state_dir.parents:
        # The secrets would travel to every host with the project, and sit in its containers.
        raise located.error(
            ("state_dir",), f"{quoted(spec.state_dir)} is inside the project folder {quoted(str(project))}: "
                            f"its secrets would be copied to the hosts; choose a folder outside it")


def _unknown_host(name: str, hosts: dict[str, Host]) -> str:
    known = ", ".join(sorted(hosts))
    return f"unknown host {quoted(name)} (hosts: {known})"


def _local_path(written: str, base_dir: Path) -> Path:
    """A path as written in the cluster file: `~` expanded, relative to the file's folder."""
    try:
        path = Path(os.path.expanduser(written))
    except ValueError:  # `~name` holding a NUL character: the user database refuses to look it up
        path = Path(written)
    return path if path.is_absolute() else base_dir / path


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long for the OS, a NUL character: no such file either
        return False


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False
