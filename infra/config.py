"""The cluster file: YAML in, validated typed objects out.

Every error names the key path and the file's line (`roles.workers[2].host: unknown host 'c'
(cluster.yaml:14)`) so the user can go straight to it. Validation is pure: nothing is contacted.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .errors import ConfigError
from .runtime import BUILTIN_APP

LOCAL = "local"
NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,39}$"
HOST_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
QUEUE_PATTERN = r"^[A-Za-z0-9_.:][A-Za-z0-9_.:-]{0,254}$"  # AMQP allows 255; a first '-' reads as an option
GPU_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_:-]{0,99}$"  # an index, or a UUID: GPU-..., MIG-...
# What `celery --app` takes: a dotted module path, optionally `:` and a dotted attribute path.
APP_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*(?::[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)?$"


# --------------------------------------------------------------------------- value rules
#
# Values of the cluster file reach env files (KEY=value lines), labels, the commands `--dry-run` and
# error messages show, Docker's API and, as paths, the hosts' shells. The commands quote what they send;
# these rules see to it that no value can mean more than it says anyway: no line break, no shell syntax
# where a name is expected, no leading '-' that a program would take for an option. Each rule is a
# function telling why a value is refused (None: accepted), so the messages say what to fix.

INVALID_VALUE = "infra_invalid_value"  # the type of the errors below; their message is used as it is

# A character that breaks a line or hides text: the C0 controls but tab, DEL, the C1 controls (U+0085
# among them), U+2028 and U+2029 (line breaks to Python's splitlines() and to many editors), and the
# bidirectional overrides and isolates, which make text display in another order than it is read.
# The YAML reader refuses them in the raw text only; escapes ("a\nb", "\0", "\u2028") still make them.
_CONTROL_CHARACTER = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")

# Docker image references, after the grammar of distribution's `reference` package (what Docker parses
# image names with): [registry/]path[:tag][@digest]. The registry is host[:port], the host a DNS name
# (letters of either case), an IPv4 address or an IPv6 address in brackets; the path is '/'-separated
# components of lowercase letters and digits, joined inside a component by '.', '_', '__' or a run of '-'.
_REGISTRY_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*")
_REPOSITORY_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_IMAGE_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_IMAGE_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_IMAGE_ID = re.compile(r"[0-9a-f]{64}")  # Docker refuses it as a name: it would read as an image id
IMAGE_NAME_MAX = 255  # registry and path together (distribution's NameTotalLengthMax)

# Host names: dot-separated labels of letters, digits and '-' (RFC 1123), at most 253 characters, with
# an optional final dot. '_' is accepted too: aliases of ~/.ssh/config often have one, and it means
# nothing to a shell or an env file.
_HOST_NAME_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST_NAME = re.compile(rf"{_HOST_NAME_LABEL}(?:\.{_HOST_NAME_LABEL})*\.?")
HOST_NAME_MAX = 253
_IPV6_ZONE = re.compile(r"[A-Za-z0-9_.-]{1,15}")  # fe80::1%eth0: a network interface name

# SSH user names: POSIX-like, as useradd accepts them (a trailing '$' marks Samba machine accounts).
_SSH_USER = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\$?")
SSH_USER_MAX = 32


def _invalid(reason: str, *, within: tuple = ()) -> PydanticCustomError:
    """A validation error whose message is `reason` as it is. `within` is the key path, below the field
    or model being validated, of the value at fault, so the message names the key itself."""
    # The reason goes into the context, not the template, as a value quoted in it may hold '{...}';
    # `_pydantic_message` reads it from there. (The context is also substituted into the template in
    # order, `within` first: the rendered message is the reason too.)
    return PydanticCustomError(INVALID_VALUE, "{reason}", {"within": within, "reason": reason})


_Text = TypeVar("_Text", bound="str | None")


def _checked(value: _Text, problem_of: Callable[[str], str | None], what: str) -> _Text:
    """`value` if `problem_of` finds nothing wrong with it; else an error: `'value' is not WHAT (why)`."""
    if value is not None:
        problem = problem_of(value)
        if problem:
            raise _invalid(f"{_shown(value)} is not {what} ({problem})")
    return value


def _character(character: str) -> str:
    """A character quoted in a message: repr() escapes the invisible ones; a look-alike of an ASCII
    character (Cyrillic 'о' for 'o') shows its code point."""
    shown = repr(character)
    return shown if character.isascii() or not character.isprintable() else f"{shown} (U+{ord(character):04X})"


def _stray_character(text: str, allowed: str) -> str | None:
    """The first character of `text` that is neither an ASCII letter or digit nor one of `allowed`."""
    for character in text:
        if not (character.isascii() and (character.isalnum() or character in allowed)):
            return character
    return None


def _control_character_problem(text: str) -> str | None:
    found = _CONTROL_CHARACTER.search(text)
    return f"contains a control character (U+{ord(found.group()):04X})" if found else None


def _strings_in(value: Any, path: tuple) -> Iterator[tuple[tuple, str]]:
    """(key path, string) of every string in a field's value, dict keys included. Models are left out:
    each checks its own strings."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, (tuple, list)):
        for index, item in enumerate(value):
            yield from _strings_in(item, path + (index,))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings_in(key, path + (key,))
            yield from _strings_in(item, path + (key,))


def _image_reference_problem(reference: str) -> str | None:
    if not reference:
        return "it is empty"
    if reference.startswith("-"):
        return "it starts with '-', which docker would take for an option"
    stray = _stray_character(reference, "._-:/@[]")
    if stray is not None:
        return f"it contains {_character(stray)}"
    if _IMAGE_ID.fullmatch(reference):
        return "64 hex digits are an image id, not a name"
    rest, at, digest = reference.partition("@")
    if at and not _IMAGE_DIGEST.fullmatch(digest):
        return "a digest is 'sha256:' and 64 lowercase hex digits"
    name, tag = rest, None
    if rest.rfind(":") > rest.rfind("/"):  # a ':' after the last '/' starts the tag; one before, a port
        name, _, tag = rest.rpartition(":")
    if tag is not None and not _IMAGE_TAG.fullmatch(tag):
        return "a tag is 1 to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-'"
    if len(name) > IMAGE_NAME_MAX:
        return f"names are at most {IMAGE_NAME_MAX} characters"
    first, slash, path = name.partition("/")
    # Docker's rule: the first component names a registry when a path follows and it holds '.' or ':',
    # is 'localhost' or has an uppercase letter; otherwise it is part of the path (`team/image`).
    if slash and (any(c in first for c in ".:[") or first == "localhost" or first != first.lower()):
        problem = _registry_problem(first)
        if problem:
            return problem
    else:
        path = name
    for component in path.split("/"):
        if not _REPOSITORY_COMPONENT.fullmatch(component):
            if "[" in component or "]" in component:
                return "brackets only enclose an IPv6 registry address, as in '[::1]:5000/image'"
            if component != component.lower():
                return "repository names are lowercase"
            if not component:
                return "a name has no empty component: no '//', no '/' at either end"
            return (f"name components such as {_shown(component)} are lowercase letters and digits, "
                    "joined by '.', '_', '__' or '-'")
    return None


def _registry_problem(registry: str) -> str | None:
    host, port = registry, None
    if registry.startswith("["):  # [IPv6]:port
        end = registry.find("]")
        if end < 0:
            return f"the registry {_shown(registry)} opens a '[' it does not close"
        host, after = registry[1:end], registry[end + 1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"the registry {_shown(registry)} is not an IPv6 address in brackets"
        if after:
            if not after.startswith(":"):
                return f"the registry {_shown(registry)} is an IPv6 address in brackets, then :port"
            port = after[1:]
    else:
        host, colon, port = registry.partition(":")
        port = port if colon else None
        if not _REGISTRY_HOST.fullmatch(host):
            return f"the registry {_shown(registry)} is not a host name or IPv4 address, with an optional :port"
    if port is not None and not (port.isascii() and port.isdigit()):
        return f"the registry port of {_shown(registry)} is not a number"
    return None


def _bind_address_problem(address: str) -> str | None:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return "Docker publishes ports on addresses, not host names"
    return None


def _host_address_problem(address: str) -> str | None:
    if not address:
        return "it is empty"
    if address.startswith("-"):
        return "it starts with '-', which ssh would take for an option"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        pass
    else:
        zone = getattr(ip, "scope_id", None)
        if zone is not None and not _IPV6_ZONE.fullmatch(zone):
            return f"the zone after '%' is a network interface name, not {_shown(zone)}"
        return None
    stray = _stray_character(address, "._-")
    if stray is not None:
        if stray in ":%" and address.count(":") >= 2:
            return "it is not a valid IPv6 address"
        hints = {":": "the SSH port goes under `port`", "@": "the user name goes under `user`",
                 "[": "write an IPv6 address without brackets", "]": "write an IPv6 address without brackets"}
        return hints.get(stray) or f"it contains {_character(stray)}"
    if len(address) > HOST_NAME_MAX:
        return f"host names are at most {HOST_NAME_MAX} characters"
    if all(c.isdigit() or c == "." for c in address):
        return "it is not a valid IPv4 address"
    if not _HOST_NAME.fullmatch(address):
        return ("host names are dot-separated labels of 1 to 63 letters, digits, '-' or '_', "
                "not starting or ending with '-'")
    return None


def _ssh_user_problem(user: str) -> str | None:
    if not user:
        return "it is empty; leave the key out for the default"
    if user.startswith("-"):
        return "it starts with '-', which ssh would take for an option"
    stray = _stray_character(user, "_.-$")
    if stray is not None:
        return f"it contains {_character(stray)}"
    if len(user) > SSH_USER_MAX:
        return f"user names are at most {SSH_USER_MAX} characters"
    if not _SSH_USER.fullmatch(user):
        return "a user name starts with a letter or '_', and only its last character may be '$'"
    return None


def _path_problem(path: str) -> str | None:
    # Any other printable name is a valid folder or file name, and is quoted wherever it is sent.
    if path.startswith("-"):
        return "it starts with '-', which a command would take for an option; write ./-name"
    return None


def _mounted_path_problem(path: str) -> str | None:
    """A path under which the project is bind-mounted into containers (`SOURCE:/project:ro`)."""
    if ":" in path:
        return "it contains ':', which separates the parts of a Docker bind mount"
    return _path_problem(path)


def _project_file_problem(path: str) -> str | None:
    """A file named relative to the project folder, which must stay inside it."""
    if path.startswith("/") or path.startswith("~"):
        return "it names a file of the project folder, relative to it"
    if ".." in path.split("/"):
        return "it names a file of the project folder: no '..'"
    return _path_problem(path)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @model_validator(mode="after")
    def _no_control_characters(self) -> _Model:
        # Every string of every model, those of fields added later included. Runs after the fields'
        # own rules, whose messages say more; nested models have checked their own strings by then.
        for field in type(self).model_fields:
            for within, text in _strings_in(getattr(self, field), (field,)):
                problem = _control_character_problem(text)
                if problem:
                    raise _invalid(f"{_shown(text)} {problem}", within=within)
        return self


class HostConfig(_Model):
    """A machine reachable over SSH. Unset fields fall back to ~/.ssh/config, then SSH defaults."""

    address: str = Field(
        min_length=1, description="IP address or host name to connect to; an alias from ~/.ssh/config works too.")
    user: str | None = Field(
        default=None, description="SSH user; default: ~/.ssh/config, else your local user name.")
    port: int | None = Field(
        default=None, ge=1, le=65535, description="SSH port; default: ~/.ssh/config, else 22.")
    key: str | None = Field(
        default=None,
        description="Private key file (must exist), relative to the cluster file or absolute; "
                    "default: ~/.ssh/config, then ssh-agent.")

    @field_validator("address")
    @classmethod
    def _address_valid(cls, address: str) -> str:
        return _checked(address, _host_address_problem, "a host name or an IP address")

    @field_validator("user")
    @classmethod
    def _user_valid(cls, user: str | None) -> str | None:
        return _checked(user, _ssh_user_problem, "a valid user name")

    @field_validator("key")
    @classmethod
    def _key_valid(cls, key: str | None) -> str | None:
        return _checked(key, _path_problem, "a usable key file path")


class ProjectConfig(_Model):
    """The task project, copied to every host that runs a role: a Celery app, or scripts for `infra sweep`."""

    path: str = Field(
        min_length=1, description="The project folder, relative to the cluster file or absolute.")
    app: str | None = Field(
        default=None, min_length=1, pattern=APP_PATTERN, max_length=200,
        description="What `celery --app` gets: a module, or module:attribute. Leave it out for a project "
                    "without Celery code (a script for `infra sweep`): workers then run infra's built-in app.")
    remote_path: str = Field(
        default="infra", min_length=1,
        description="Where the cluster's folder goes on each host (REMOTE_PATH/NAME, holding the project, its "
                    "output folder and secret files): relative to the SSH user's home, or absolute.")
    requirements: str | None = Field(
        default="requirements.txt",
        description="File of the project folder listing packages installed into the images (optional).")

    @field_validator("path", "remote_path")
    @classmethod
    def _mounted_path_valid(cls, path: str) -> str:
        return _checked(path, _mounted_path_problem, "a usable folder path")

    @field_validator("requirements")
    @classmethod
    def _requirements_valid(cls, requirements: str | None) -> str | None:
        return _checked(requirements, _project_file_problem, "a usable file path")


class MasterRole(_Model):
    """The host of RabbitMQ, the Redis result backend, the Celery master container and Flower."""

    host: str = Field(description="Name of a host under `hosts`, or `local`.")
    advertise_address: str | None = Field(
        default=None,
        description="Address workers use to reach the broker; default: the address infra connects to.")

    bind_address: str | None = Field(
        default=None,
        description="IP address of the master host that the published ports listen on (e.g. its LAN "
                    "or VPN address); default: every address of the host.")

    @field_validator("advertise_address")
    @classmethod
    def _advertise_address_valid(cls, address: str | None) -> str | None:
        return _checked(address, _host_address_problem, "a host name or an IP address")

    @field_validator("bind_address")
    @classmethod
    def _bind_address_valid(cls, address: str | None) -> str | None:
        return _checked(address, _bind_address_problem, "an IP address of the master host")


class WorkerGroup(_Model):
    """Worker containers on one host; a host may have several groups (e.g. one per queue)."""

    host: str = Field(description="Name of a host under `hosts`, or `local`.")
    containers: int = Field(default=1, ge=0, le=64, description="Worker containers on this host.")
    concurrency: int | None = Field(
        default=None, ge=1, le=1024, description="Processes per container; default: the host's CPU count.")
    queues: tuple[str, ...] = Field(default=("celery",), description="Queues these workers consume.")
    pool: Literal["prefork", "threads", "solo"] = Field(default="prefork", description="Celery worker pool.")
    loglevel: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="WARNING",
        description="Log level of the workers; WARNING is Celery's own default. INFO adds a \"received\" and a "
                    "\"succeeded\" line per task to `infra logs`, which costs short tasks throughput.")
    events: bool = Field(
        default=True,
        description="Workers send task events (`--task-events`), which Flower's task pages and `celery events` "
                    "show; false turns them off even where the app turns them on (`infra status` still works).")
    gpus: Literal["all"] | int | tuple[int | str, ...] | None = Field(
        default=None,
        description="NVIDIA GPUs of these containers (`docker run --gpus`): all, a number, or a list of device "
                    "indexes or UUIDs; needs the NVIDIA container toolkit on the host (`infra bootstrap --nvidia`).")

    @field_validator("gpus", mode="before")
    @classmethod
    def _gpus_valid(cls, gpus: Any) -> Any:
        if gpus is None or gpus == "all":
            return gpus
        if isinstance(gpus, bool) or not isinstance(gpus, (int, tuple)):
            raise ValueError(f"must be all, a number of GPUs or a list of GPU ids, got {_shown(gpus)}")
        if isinstance(gpus, int) and gpus < 1:
            raise ValueError(f"must be at least 1 (leave the key out for no GPU), got {gpus}")
        if isinstance(gpus, tuple):
            if not gpus:
                raise ValueError("the list of GPU ids is empty (leave the key out for no GPU)")
            for device in gpus:
                valid = (isinstance(device, int) and not isinstance(device, bool) and device >= 0) or (
                    isinstance(device, str) and re.fullmatch(GPU_ID_PATTERN, device))
                if not valid:
                    raise ValueError(f"invalid GPU id {_shown(device)} (an index such as 0, or a UUID such as GPU-...)")
            if len(set(map(str, gpus))) != len(gpus):
                raise ValueError("a GPU is listed twice")
        return gpus

    @field_validator("queues")
    @classmethod
    def _queues_valid(cls, queues: tuple[str, ...]) -> tuple[str, ...]:
        if not queues:
            raise ValueError("at least one queue is needed")
        for queue in queues:
            if not re.fullmatch(QUEUE_PATTERN, queue):  # `$` alone would let 'celery\n' through
                raise ValueError(f"invalid queue name {_shown(queue)}")
        return queues


class Roles(_Model):
    """What runs where."""

    master: MasterRole = Field(
        description="The host running RabbitMQ, Redis (results), the Celery master container and Flower.")
    workers: tuple[WorkerGroup, ...] = Field(
        default=(), description="Groups of worker containers; at least one container in all.")


class Ports(_Model):
    """Ports published on the master host."""

    broker: int | None = Field(
        default=None, ge=1, le=65535,
        description="RabbitMQ; workers connect here. Default 5671 (AMQPS) with TLS, 5672 (AMQP) with `tls: false`.")
    results: int = Field(
        default=6379, ge=1, le=65535, description="Redis result backend; workers store results here.")
    flower: int = Field(default=5555, ge=1, le=65535, description="Flower web UI and API (password protected).")


class Images(_Model):
    """How the Docker images are made and reach the hosts."""

    source: Literal["build", "ship", "pull"] = Field(
        default="build",
        description="build: each host builds its own (right CPU architecture everywhere); "
                    "ship: built here and sent over SSH to hosts that lack it, by layers (only the layers a "
                    "host lacks travel); "
                    "pull: from a registry (worker, master and broker must then be set).")
    base: str = Field(
        default="python:3.11-slim-bookworm", min_length=1,
        description="Base image of the builds (any Debian or Ubuntu image).")
    wheelhouse: str | None = Field(
        default=None,
        description="Folder of wheels installed without PyPI (air-gapped hosts), relative to the cluster file.")
    worker: str | None = Field(default=None, description="Worker image name; default: infra-NAME-worker:latest.")
    master: str | None = Field(default=None, description="Master image name; default: infra-NAME-master:latest.")
    broker: str | None = Field(default=None, description="Broker image name; default: infra-NAME-broker:latest.")

    @field_validator("base", "worker", "master", "broker")
    @classmethod
    def _image_reference_valid(cls, reference: str | None) -> str | None:
        return _checked(reference, _image_reference_problem, "a valid image reference")

    @field_validator("wheelhouse")
    @classmethod
    def _wheelhouse_valid(cls, wheelhouse: str | None) -> str | None:
        return _checked(wheelhouse, _path_problem, "a usable folder path")


class DockerSettings(_Model):
    """Where `infra bootstrap` installs the Docker engine from."""

    source: Literal["distro", "official"] = Field(
        default="distro",
        description="distro: the distribution's own package (docker.io); "
                    "official: Docker's apt repository (docker-ce).")


class SshSettings(_Model):
    """How infra connects to hosts."""

    connect_timeout: float = Field(
        default=10.0, gt=0, le=300, description="Seconds to connect and authenticate to a host.")
    host_keys: Literal["strict", "accept-new"] | None = Field(
        default=None,
        description="Host keys are always checked and a changed key is always refused. An unknown key: "
                    "`strict` refuses it, `accept-new` learns it on first use. Default: ~/.ssh/config's "
                    "StrictHostKeyChecking for the host (yes: strict), else accept-new.")
    known_hosts: str | None = Field(
        default=None,
        description="The known hosts file where host keys are checked and learned (relative to this file). "
                    "Default: ~/.ssh/config's UserKnownHostsFile, else ~/.ssh/known_hosts.")


class Timeouts(_Model):
    """How long infra waits."""

    broker: float = Field(default=120.0, gt=0, description="Seconds to wait for the broker to accept logins.")
    workers: float = Field(default=180.0, gt=0, description="Seconds to wait for every worker to answer a ping.")
    command: float = Field(
        default=120.0, gt=0, le=3600,
        description="Seconds one command on a host or one call to its Docker engine may take; a host that "
                    "does not answer within it is reported and the others go on.")
    image: float = Field(
        default=3600.0, gt=0, le=86400,
        description="Seconds an image build, pull or transfer may stay silent before it counts as stalled.")


class ClusterFile(_Model):
    """An infra cluster file: the hosts, and which Celery role each runs."""

    name: str = Field(
        pattern=NAME_PATTERN,
        description="Cluster name (lowercase letters, digits, '-'); containers, networks, volumes and "
                    "labels carry it, so several clusters can share hosts.")
    hosts: dict[str, HostConfig] = Field(
        default_factory=dict,
        description="Machines reachable over SSH, by name; `local` (the machine running infra) needs no entry.",
        # The names are checked after validation (for a located message); editors learn them here.
        json_schema_extra={"propertyNames": {"pattern": HOST_NAME_PATTERN, "not": {"const": LOCAL}}},
    )
    project: ProjectConfig = Field(
        description="The task project: a folder with a Celery app, or scripts run by `infra sweep`.")
    roles: Roles = Field(description="The master host and the groups of worker containers.")
    ports: Ports = Field(
        default=Ports(), description="Ports published on the master host: broker, result backend, Flower.")
    images: Images = Field(
        default=Images(),
        description="How the Docker images are made: built on each host, shipped from here, or pulled.")
    docker: DockerSettings = Field(
        default=DockerSettings(), description="How `infra bootstrap` installs Docker where it is missing.")
    ssh: SshSettings = Field(default=SshSettings(), description="SSH connection settings.")
    timeouts: Timeouts = Field(
        default=Timeouts(), description="How long `infra up` waits for the cluster to be ready.")
    state_dir: str = Field(
        default=".infra",
        description="Folder of the manifest and the secrets (STATE_DIR/NAME/), relative to the cluster file.")
    tls: bool = Field(
        default=True,
        description="Encrypt every link that leaves the master host with the cluster's own CA: AMQPS to the "
                    "broker, TLS to Redis, HTTPS to Flower. `false` publishes plain AMQP, Redis and HTTP: "
                    "only on a network you trust entirely.")

    @model_validator(mode="after")
    def _default_broker_port(self) -> ClusterFile:
        # The broker's default port follows `tls` (IANA's amqps and amqp ports), as the seeds used.
        if self.ports.broker is None:
            ports = self.ports.model_copy(update={"broker": 5671 if self.tls else 5672})
            object.__setattr__(self, "ports", ports)
        return self

    @field_validator("state_dir")
    @classmethod
    def _state_dir_valid(cls, state_dir: str) -> str:
        return _checked(state_dir, _path_problem, "a usable folder path")


# --------------------------------------------------------------------------- JSON Schema

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
CLUSTER_SCHEMA_ID = "urn:infra-celery:cluster-file"


def cluster_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the cluster file, for editors and other tools.

    Generated from the models that validate the file, so the two cannot drift apart. What needs the
    whole file or the disk (known host names, distinct ports, existing folders) is checked by
    `load_cluster` only.
    """
    generated = ClusterFile.model_json_schema()
    generated.pop("title", None)
    return {"$schema": JSON_SCHEMA_DIALECT, "$id": CLUSTER_SCHEMA_ID, "title": "infra cluster file", **generated}


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


# --------------------------------------------------------------------------- YAML with lines

# Limits far above any real cluster file (a few kB, a few hundred values, 5 levels deep) that keep
# a hostile or mistaken file from hanging or crashing the loader: the composer recurses once per
# level, and every value costs time and memory.
MAX_FILE_BYTES = 1_000_000
MAX_DEPTH = 64
MAX_NODES = 100_000

# What PyYAML's pure-Python constructor (and, for a few inputs, its scanner) raises on hostile
# scalars instead of a YAMLError: `2024-13-45` (read as a date), `!!int x`, `!!bool x`,
# `!!timestamp x`, an integer of more than 4,300 digits...
_PYYAML_CRASHES = (ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError)


class _ClusterFileLoader(yaml.SafeLoader):
    """SafeLoader that refuses, event by event before any node is composed, what could make loading
    explode: anchors and aliases (an alias repeats a whole subtree, so a few hundred bytes can stand
    for billions of values), nesting deeper than MAX_DEPTH and more than MAX_NODES values.
    """

    def __init__(self, text: str, filename: str):
        super().__init__(text)
        self.filename = filename
        self.depth = 0
        self.node_count = 0

    def get_event(self) -> yaml.Event:
        # The composer takes every event through here, and a node's start event before its children.
        event = super().get_event()
        if isinstance(event, yaml.NodeEvent):
            self.node_count += 1
            if event.anchor is not None:
                sign = "*" if isinstance(event, yaml.AliasEvent) else "&"
                self._refuse(event, "anchors and aliases (&name, *name) are not allowed in a cluster file "
                                    f"(found {sign}{_clip(event.anchor, 40)})")
            if self.node_count > MAX_NODES:
                self._refuse(event, f"more than {MAX_NODES:,} values are not allowed in a cluster file")
            if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                self.depth += 1
                if self.depth > MAX_DEPTH:
                    self._refuse(event, f"nesting deeper than {MAX_DEPTH} levels is not allowed in a cluster file")
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            self.depth -= 1
        return event

    def _refuse(self, event: yaml.Event, message: str) -> NoReturn:
        raise ConfigError(f"{self.filename}:{event.start_mark.line + 1}: {message}")

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except _PYYAML_CRASHES as exc:
            # Raised for the innermost node first: the scalar that could not be read, with its line.
            what = _shown(node.value) if isinstance(node, yaml.ScalarNode) else "this value"
            tag = _clip(node.tag.replace("tag:yaml.org,2002:", "!!"), 40)
            # A KeyError's text is only the key, which `what` already shows.
            detail = "" if isinstance(exc, KeyError) else f": {_clip(str(exc), 100)}"
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {what} as {tag}{detail}", node.start_mark) from None


def _read_yaml(text: str, filename: str) -> tuple[Any, dict[tuple, int]]:
    """The document's data and the 1-based line of each key path; any failure is a one-line ConfigError."""
    if len(text) > MAX_FILE_BYTES:
        raise ConfigError(f"{filename}: files over {MAX_FILE_BYTES:,} bytes are not allowed as cluster files "
                          "(is this the right file?)")
    loader = None
    try:
        loader = _ClusterFileLoader(text, filename)  # refuses non-printable characters (NUL...) at once
        root = loader.get_single_node()
        if root is None:
            raise ConfigError(f"{filename}: the file is empty (start from config.example.yaml)")
        # Before construction, which silently keeps the last of duplicate keys.
        lines = _key_lines(root, filename)
        data = loader.construct_document(root)
    except yaml.YAMLError as exc:
        raise ConfigError(_invalid_yaml_message(exc, text, filename)) from None
    except _PYYAML_CRASHES as exc:
        where = f"{filename}:{loader.get_mark().line + 1}" if loader else filename
        raise ConfigError(f"{where}: invalid YAML: {_clip(str(exc), 100)}") from None
    finally:
        if loader is not None:
            loader.dispose()
    return data, lines


def _invalid_yaml_message(exc: yaml.YAMLError, text: str, filename: str) -> str:
    if isinstance(exc, yaml.reader.ReaderError):
        # Raised for the whole text before scanning: it knows the position, not the line.
        line = text.count("\n", 0, exc.position) + 1
        return f"{filename}:{line}: invalid YAML: character #x{exc.character:04x} is not allowed in YAML text"
    mark = getattr(exc, "problem_mark", None)
    where = f"{filename}:{mark.line + 1}" if mark else filename
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    if context and problem.startswith("but "):  # "but found another document" needs what was expected
        problem = f"{context}, {problem}"
    return f"{where}: invalid YAML: {_clip(problem, 200)}"


def _key_lines(root: yaml.Node, filename: str) -> dict[tuple, int]:
    """Map every key path of a composed document to its 1-based line, refusing duplicate keys (naming
    both lines). Recursion is bounded by MAX_DEPTH, and no alias can make a node appear twice.
    """
    lines: dict[tuple, int] = {(): root.start_mark.line + 1}

    def visit(node: yaml.Node, path: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            first_lines: dict[tuple[str, str], int] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    continue  # a complex key: construction refuses it as invalid YAML
                key, line = key_node.value, key_node.start_mark.line + 1
                if (key_node.tag, key) in first_lines:
                    raise ConfigError(f"{format_path(path + (key,))}: duplicate key "
                                      f"(also at line {first_lines[(key_node.tag, key)]}) ({filename}:{line})")
                first_lines[(key_node.tag, key)] = line
                lines[path + (key,)] = line
                visit(value_node, path + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                lines[path + (index,)] = item.start_mark.line + 1
                visit(item, path + (index,))

    visit(root, ())
    return lines


def format_path(path: tuple) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            shown = _path_part(part)
            text += f".{shown}" if text else shown
    return text or "(top level)"


def _path_part(part: Any) -> str:
    """A key as written, unless it would break the one-line message (a newline, a control character)
    or drown it (a 10 kB key): then quoted and clipped."""
    text = part if isinstance(part, str) else str(part)
    return text if text.isprintable() and len(text) <= 60 else _shown(part)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _shown(value: Any) -> str:
    """repr() of a value quoted in an error: one line, clipped to stay readable."""
    try:
        text = repr(value)
    except ValueError:  # an integer past Python's int-to-str limit (YAML's base 60 makes them: 1:2:3:...)
        text = f"<{type(value).__name__} too large to show>"
    return _clip(text, 60)


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
    if kind == INVALID_VALUE:
        return err["ctx"]["reason"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "string_pattern_mismatch" and err["loc"] == ("name",):
        return "must be lowercase letters, digits and '-', at most 40 characters, e.g. 'lab'"
    if kind == "string_pattern_mismatch" and err["loc"] == ("project", "app"):
        return (f"{_shown(err['input'])} is not a Python module path (a module such as 'wordcount' or "
                "'proj.tasks', or module:attribute such as 'proj.tasks:app')")
    message = err["msg"]
    if kind.endswith("_type") or kind in ("literal_error",):
        got = err.get("input")
        if not isinstance(got, (dict, list)):
            message += f", got {_shown(got)}"
    return message[0].lower() + message[1:] if message else kind


def read_text_file(path: str | os.PathLike, kind: str, missing: str) -> str:
    """A small UTF-8 file infra reads (a cluster or parameters file), or ConfigError in one line.

    `kind` names it in errors ("cluster file"); `missing` is the message for a file that is not there.
    """
    filename = str(path)
    try:
        with Path(path).expanduser().open("rb") as stream:
            # One byte over the limit is enough to refuse; never read a huge file (or /dev/zero) whole.
            data = stream.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{filename}: {missing}") from None
    except IsADirectoryError:
        raise ConfigError(f"{filename}: is a folder, not a {kind}") from None
    except OSError as exc:
        raise ConfigError(f"{filename}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"{filename}: files over {MAX_FILE_BYTES:,} bytes are not allowed as {kind}s "
                          "(is this the right file?)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{filename}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); "
                          "save the file as UTF-8") from None


def load_cluster(path: str | os.PathLike) -> Cluster:
    """Read and validate a cluster file. Raises ConfigError with a one-line, located message."""
    text = read_text_file(path, "cluster file", "no such file (write one from config.example.yaml)")
    return parse_cluster(text, filename=str(path), base_dir=Path(path).expanduser().resolve().parent)


def parse_cluster(text: str, *, filename: str = "cluster.yaml", base_dir: Path | None = None) -> Cluster:
    base_dir = base_dir or Path.cwd()
    data, lines = _read_yaml(text, filename)
    if data is None:
        raise ConfigError(f"{filename}: the file is empty (start from config.example.yaml)")
    located = _Located(filename, lines)
    if not isinstance(data, dict):
        raise located.error((), "the cluster file must be a mapping of keys (name, hosts, project, roles, ...)")
    data = _yaml_lists_to_tuples(data)
    try:
        spec = ClusterFile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        # A rule checking a whole list or model names the key inside it that holds the value at fault.
        within = tuple((first.get("ctx") or {}).get("within", ())) if first["type"] == INVALID_VALUE else ()
        raise located.error(first["loc"] + within, _pydantic_message(first)) from None
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
        if not re.fullmatch(HOST_NAME_PATTERN, name):
            raise located.error(path, "host names are letters, digits, '.', '_' and '-'")
        key = None
        if host.key:
            key_path = _local_path(host.key, base_dir)
            if not _is_file(key_path):
                raise located.error(path + ("key",), f"no such key file {_shown(host.key)}")
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

    project_dir = _local_path(spec.project.path, base_dir)
    if not _is_dir(project_dir):
        raise located.error(("project", "path"), f"no such folder {_shown(spec.project.path)}")
    remote = spec.project.remote_path.rstrip("/")
    if remote in ("", "~", ".", "/", "$HOME") or ".." in Path(remote).parts:
        raise located.error(
            ("project", "remote_path"),
            f"{_shown(spec.project.remote_path)} is not a folder of its own (use e.g. 'infra' or '/srv/infra')",
        )
    if spec.project.requirements:
        req = project_dir / spec.project.requirements
        if spec.project.requirements != "requirements.txt" and not _is_file(req):
            raise located.error(("project", "requirements"), f"no such file {_shown(str(req))}")

    wheelhouse = None
    if spec.images.wheelhouse:
        wheelhouse = _local_path(spec.images.wheelhouse, base_dir)
        if not _is_dir(wheelhouse):
            raise located.error(("images", "wheelhouse"), f"no such folder {_shown(spec.images.wheelhouse)}")

    if spec.images.source == "pull":
        for role in ("worker", "master", "broker"):
            if not getattr(spec.images, role):
                raise located.error(("images",), f"images.{role} must name a registry image when source is 'pull'")

    if not spec.roles.workers or not any(g.containers for g in spec.roles.workers):
        raise located.error(("roles", "workers"), "at least one worker container is needed")

    try:
        state_dir = (_local_path(spec.state_dir, base_dir) / spec.name).resolve()
    except (OSError, ValueError, RuntimeError) as exc:  # a NUL character, a symlink loop...
        raise located.error(
            ("state_dir",), f"{_shown(spec.state_dir)} cannot be a folder: {_clip(str(exc), 80)}") from None
    project = project_dir.resolve()
    if state_dir == project or project in state_dir.parents:
        # The secrets would travel to every host with the project, and sit in its containers.
        raise located.error(
            ("state_dir",), f"{_shown(spec.state_dir)} is inside the project folder {_shown(str(project))}: "
                            f"its secrets would be copied to the hosts; choose a folder outside it")
    return Cluster(
        source=source,
        spec=spec,
        hosts=hosts,
        project_dir=project_dir.resolve(),
        state_dir=state_dir,
        wheelhouse=wheelhouse.resolve() if wheelhouse else None,
        known_hosts=_local_path(spec.ssh.known_hosts, base_dir) if spec.ssh.known_hosts else None,
    )


def _unknown_host(name: str, hosts: dict[str, Host]) -> str:
    known = ", ".join(sorted(hosts))
    return f"unknown host {_shown(name)} (hosts: {known})"


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
