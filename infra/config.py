"""The cluster file: YAML in, validated typed objects out.

Every error names the key path and the file's line (`roles.workers[2].host: unknown host 'c'
(cluster.yaml:14)`) so the user can go straight to it. Validation is pure: nothing is contacted.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError

LOCAL = "local"
NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,39}$"
HOST_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
QUEUE_PATTERN = r"^[A-Za-z0-9_.:-]+$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class HostConfig(_Model):
    """A machine reachable over SSH. Unset fields fall back to ~/.ssh/config, then SSH defaults."""

    address: str = Field(min_length=1)
    user: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    key: str | None = None


class ProjectConfig(_Model):
    path: str = Field(min_length=1)
    app: str = Field(min_length=1, pattern=r"^[A-Za-z_][A-Za-z0-9_.:]*$")
    remote_path: str = Field(default="infra", min_length=1)
    requirements: str | None = "requirements.txt"


class MasterRole(_Model):
    host: str
    advertise_address: str | None = None


class WorkerGroup(_Model):
    host: str
    containers: int = Field(default=1, ge=0, le=64)
    concurrency: int | None = Field(default=None, ge=1, le=1024)
    queues: tuple[str, ...] = ("celery",)
    pool: Literal["prefork", "threads", "solo"] = "prefork"
    loglevel: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("queues")
    @classmethod
    def _queues_valid(cls, queues: tuple[str, ...]) -> tuple[str, ...]:
        if not queues:
            raise ValueError("at least one queue is needed")
        for queue in queues:
            if not re.match(QUEUE_PATTERN, queue):
                raise ValueError(f"invalid queue name {queue!r}")
        return queues


class Roles(_Model):
    master: MasterRole
    workers: tuple[WorkerGroup, ...] = ()


class Ports(_Model):
    broker: int = Field(default=5672, ge=1, le=65535)
    results: int = Field(default=6379, ge=1, le=65535)
    flower: int = Field(default=5555, ge=1, le=65535)


class Images(_Model):
    source: Literal["build", "ship", "pull"] = "build"
    base: str = Field(default="python:3.11-slim-bookworm", min_length=1)
    wheelhouse: str | None = None
    worker: str | None = None
    master: str | None = None
    broker: str | None = None


class DockerSettings(_Model):
    """Where `infra bootstrap` installs the Docker engine from."""

    source: Literal["distro", "official"] = "distro"


class SshSettings(_Model):
    connect_timeout: float = Field(default=10.0, gt=0, le=300)


class Timeouts(_Model):
    broker: float = Field(default=120.0, gt=0)
    workers: float = Field(default=180.0, gt=0)


class ClusterFile(_Model):
    name: str = Field(pattern=NAME_PATTERN)
    hosts: dict[str, HostConfig] = Field(default_factory=dict)
    project: ProjectConfig
    roles: Roles
    ports: Ports = Ports()
    images: Images = Images()
    docker: DockerSettings = DockerSettings()
    ssh: SshSettings = SshSettings()
    timeouts: Timeouts = Timeouts()
    state_dir: str = ".infra"


# --------------------------------------------------------------------------- typed result


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

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def master_host(self) -> Host:
        return self.hosts[self.spec.roles.master.host]

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


# --------------------------------------------------------------------------- YAML with lines


class _LineLoader(yaml.SafeLoader):
    """SafeLoader; duplicate keys are refused beforehand by `_check_duplicate_keys`."""


def _check_duplicate_keys(node: yaml.Node | None, filename: str, path: tuple = ()) -> None:
    """Refuse duplicate keys (PyYAML silently keeps the last one), naming the key path and both lines."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue  # complex keys: the loader reports them as invalid YAML
            key, line = key_node.value, key_node.start_mark.line + 1
            if (key_node.tag, key) in seen:
                raise ConfigError(f"{format_path(path + (key,))}: duplicate key "
                                  f"(also at line {seen[(key_node.tag, key)]}) ({filename}:{line})")
            seen[(key_node.tag, key)] = line
            _check_duplicate_keys(value_node, filename, path + (key,))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _check_duplicate_keys(item, filename, path + (index,))


def _line_map(node: yaml.Node, path: tuple = (), lines: dict | None = None) -> dict[tuple, int]:
    """Map every key path of a composed YAML document to its 1-based line."""
    lines = {} if lines is None else lines
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            lines[path + (key,)] = key_node.start_mark.line + 1
            _line_map(value_node, path + (key,), lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[path + (index,)] = item.start_mark.line + 1
            _line_map(item, path + (index,), lines)
    return lines


def format_path(path: tuple) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "(top level)"


class _Located:
    """Builds `key.path: message (file:line)` errors for one loaded file."""

    def __init__(self, filename: str, lines: dict[tuple, int]):
        self.filename = filename
        self.lines = lines

    def line_of(self, path: tuple) -> int | None:
        while True:
            if path in self.lines:
                return self.lines[path]
            if not path:
                return None
            path = path[:-1]

    def error(self, path: tuple, message: str) -> ConfigError:
        line = self.line_of(tuple(path))
        where = f"{self.filename}:{line}" if line else self.filename
        return ConfigError(f"{format_path(tuple(path))}: {message} ({where})")


def _pydantic_message(err: dict) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "string_pattern_mismatch" and err["loc"] == ("name",):
        return "must be lowercase letters, digits and '-', at most 40 characters, e.g. 'lab'"
    message = err["msg"]
    if kind.endswith("_type") or kind in ("literal_error",):
        got = err.get("input")
        if not isinstance(got, (dict, list)):
            message += f", got {got!r}"
    return message[0].lower() + message[1:] if message else kind


def load_cluster(path: str | os.PathLike) -> Cluster:
    """Read and validate a cluster file. Raises ConfigError with a one-line, located message."""
    source = Path(path).expanduser()
    filename = str(path)
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{filename}: no such file (write one from config.example.yaml)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{filename}: cannot read: {exc}") from None
    return parse_cluster(text, filename=filename, base_dir=source.resolve().parent)


def parse_cluster(text: str, *, filename: str = "cluster.yaml", base_dir: Path | None = None) -> Cluster:
    base_dir = base_dir or Path.cwd()
    try:
        node = yaml.compose(text, Loader=_LineLoader)
        _check_duplicate_keys(node, filename)
        data = yaml.load(text, Loader=_LineLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{filename}:{mark.line + 1}" if mark else filename
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    if node is None or data is None:
        raise ConfigError(f"{filename}: the file is empty (start from config.example.yaml)")
    located = _Located(filename, _line_map(node))
    if not isinstance(data, dict):
        raise located.error((), "the cluster file must be a mapping of keys (name, hosts, project, roles, ...)")
    data = _yaml_lists_to_tuples(data)
    try:
        spec = ClusterFile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise located.error(first["loc"], _pydantic_message(first)) from None
    return _check_consistency(spec, located, Path(filename), base_dir)


def _yaml_lists_to_tuples(value: Any) -> Any:
    # Strict mode wants tuples for tuple fields; YAML gives lists.
    if isinstance(value, dict):
        return {k: _yaml_lists_to_tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_yaml_lists_to_tuples(v) for v in value)
    return value


def _check_consistency(spec: ClusterFile, located: _Located, source: Path, base_dir: Path) -> Cluster:
    hosts: dict[str, Host] = {LOCAL: Host(name=LOCAL, address=LOCAL)}
    for name, host in spec.hosts.items():
        path = ("hosts", name)
        if name == LOCAL:
            raise located.error(path, "'local' is the machine running infra and needs no entry")
        if not re.match(HOST_NAME_PATTERN, name):
            raise located.error(path, "host names are letters, digits, '.', '_' and '-'")
        key = None
        if host.key:
            key_path = Path(os.path.expanduser(host.key))
            if not key_path.is_absolute():
                key_path = base_dir / key_path
            if not key_path.is_file():
                raise located.error(path + ("key",), f"no such key file '{host.key}'")
            key = str(key_path)
        hosts[name] = Host(name=name, address=host.address, user=host.user, port=host.port, key=key)

    master = spec.roles.master
    if master.host not in hosts:
        raise located.error(("roles", "master", "host"), _unknown_host(master.host, hosts))
    for index, group in enumerate(spec.roles.workers):
        if group.host not in hosts:
            raise located.error(("roles", "workers", index, "host"), _unknown_host(group.host, hosts))

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
    master_ssh_port = hosts[master.host].port or 22
    if not hosts[master.host].is_local and master_ssh_port in seen_ports:
        role = seen_ports[master_ssh_port]
        raise located.error(
            ("ports", role), f"port {master_ssh_port} is the SSH port of master host '{master.host}'"
        )

    project_dir = Path(os.path.expanduser(spec.project.path))
    if not project_dir.is_absolute():
        project_dir = base_dir / project_dir
    if not project_dir.is_dir():
        raise located.error(("project", "path"), f"no such folder '{spec.project.path}'")
    remote = spec.project.remote_path.rstrip("/")
    if remote in ("", "~", ".", "/", "$HOME") or ".." in Path(remote).parts:
        raise located.error(
            ("project", "remote_path"),
            f"'{spec.project.remote_path}' is not a folder of its own (use e.g. 'infra' or '/srv/infra')",
        )
    if spec.project.requirements:
        req = project_dir / spec.project.requirements
        if spec.project.requirements != "requirements.txt" and not req.is_file():
            raise located.error(("project", "requirements"), f"no such file '{req}'")

    wheelhouse = None
    if spec.images.wheelhouse:
        wheelhouse = Path(os.path.expanduser(spec.images.wheelhouse))
        if not wheelhouse.is_absolute():
            wheelhouse = base_dir / wheelhouse
        if not wheelhouse.is_dir():
            raise located.error(("images", "wheelhouse"), f"no such folder '{spec.images.wheelhouse}'")

    if spec.images.source == "pull":
        for role in ("worker", "master", "broker"):
            if not getattr(spec.images, role):
                raise located.error(("images",), f"images.{role} must name a registry image when source is 'pull'")

    if not spec.roles.workers or not any(g.containers for g in spec.roles.workers):
        raise located.error(("roles", "workers"), "at least one worker container is needed")

    state_dir = Path(os.path.expanduser(spec.state_dir))
    if not state_dir.is_absolute():
        state_dir = base_dir / state_dir
    return Cluster(
        source=source,
        spec=spec,
        hosts=hosts,
        project_dir=project_dir.resolve(),
        state_dir=(state_dir / spec.name).resolve(),
        wheelhouse=wheelhouse.resolve() if wheelhouse else None,
    )


def _unknown_host(name: str, hosts: dict[str, Host]) -> str:
    known = ", ".join(sorted(hosts))
    return f"unknown host {name!r} (hosts: {known})"
