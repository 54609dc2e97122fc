"""Engine operations as data: everything infra asks of a host's Docker engine.

Each operation is a frozen dataclass that `infra.engine.Engine` carries out through the Docker
SDK (a typed API call, no shell). `argv()` gives the docker command line that does the same:
what `--dry-run` prints, what error messages name and what golden tests compare. It is a
rendering for people, never executed.

Secrets never appear in a rendering: a container's environment is shown as the env file it
comes from (`--env-file PATH`), its values travel only inside the API call.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..names import LABEL_CLUSTER, cluster_label

if TYPE_CHECKING:
    from .registry import RegistryLogin

# Where a container finds its secret files (read-only; each file 0400, owned by the container's user).
SECRETS_MOUNT = "/run/infra"
LOG_DRIVER = "json-file"  # `docker logs` reads it back; rotated by LOG_OPTIONS
LOG_OPTIONS = (("max-size", "20m"), ("max-file", "3"))


class EngineOp:
    """Base of every engine operation."""

    def argv(self) -> list[str]:
        raise NotImplementedError

    def text(self) -> str:
        return shlex.join(self.argv())


def _labels_argv(labels: tuple[tuple[str, str], ...]) -> list[str]:
    words: list[str] = []
    for key, value in labels:
        words += ["--label", f"{key}={value}"]
    return words


# --------------------------------------------------------------------------- queries (read only)


@dataclass(frozen=True)
class EngineVersion(EngineOp):
    """The engine's version and platform (answers: the API's `/version` object)."""

    def argv(self) -> list[str]:
        return ["docker", "version", "--format", "{{json .Server}}"]


@dataclass(frozen=True)
class ListContainers(EngineOp):
    """The cluster's containers, running or not (answers: the API's container list, no environment)."""

    cluster: str

    def argv(self) -> list[str]:
        return ["docker", "ps", "--all", "--no-trunc", "--filter", f"label={cluster_label(self.cluster)}",
                "--format", "{{json .}}"]


@dataclass(frozen=True)
class InspectContainers(EngineOp):
    """State details of containers (answers: one inspect object per container found)."""

    names: tuple[str, ...]

    def argv(self) -> list[str]:
        return ["docker", "container", "inspect", *self.names]


@dataclass(frozen=True)
class InspectImages(EngineOp):
    """Id, labels and layers of images by reference (answers: {ref: {"Id", "Labels", "Layers"} or None})."""

    refs: tuple[str, ...]

    def argv(self) -> list[str]:
        return ["docker", "image", "inspect", "--format", "{{.Id}} {{json .Config.Labels}} {{json .RootFS.Layers}}",
                *self.refs]


@dataclass(frozen=True)
class ListImageRefs(EngineOp):
    """References (REPOSITORY:TAG) of the images that match any of these patterns (answers: a sorted list)."""

    patterns: tuple[str, ...]

    def argv(self) -> list[str]:
        filters = [word for pattern in self.patterns for word in ("--filter", f"reference={pattern}")]
        return ["docker", "image", "ls", *filters, "--format", "{{.Repository}}:{{.Tag}}"]


@dataclass(frozen=True)
class ListNetworks(EngineOp):
    cluster: str

    def argv(self) -> list[str]:
        return ["docker", "network", "ls", "--filter", f"label={cluster_label(self.cluster)}", "--format", "{{.Name}}"]


@dataclass(frozen=True)
class ListVolumes(EngineOp):
    cluster: str

    def argv(self) -> list[str]:
        return ["docker", "volume", "ls", "--filter", f"label={cluster_label(self.cluster)}", "--format", "{{.Name}}"]


# --------------------------------------------------------------------------- containers


@dataclass(frozen=True)
class ContainerSpec:
    """Everything a container is started with, as data. Secrets are never part of it: they are files
    in the `secrets` folder on the host, which the container reads at SECRETS_MOUNT."""

    name: str
    role: str
    host: str
    image: str
    command: tuple[str, ...] = ()
    environment: tuple[tuple[str, str], ...] = ()  # never a secret: `docker inspect` shows these
    secrets: str | None = None  # host folder of its 0400 secret files, mounted read-only at SECRETS_MOUNT
    ports: tuple[tuple[int, int], ...] = ()  # (host port, container port)
    bind_address: str | None = None  # the host address its ports are published on; None: all
    volumes: tuple[tuple[str, str, str], ...] = ()  # (source, target, mode)
    network: str = "host"
    network_alias: str | None = None
    hostname: str | None = None
    user: str | None = None
    workdir: str | None = None
    restart: str = "unless-stopped"
    gpus: str | None = None  # `docker run --gpus` text: all, a count, or device=ID[,ID...]
    # Confinement (chosen per role in `plans.hardening`); the defaults are the engine's own.
    cap_drop: tuple[str, ...] = ()
    cap_add: tuple[str, ...] = ()
    security_opt: tuple[str, ...] = ()  # e.g. no-new-privileges
    read_only: bool = False  # the root filesystem; writes go to volumes and `tmpfs` only
    tmpfs: tuple[tuple[str, str], ...] = ()  # (container path, mount options)
    pids_limit: int | None = None


def published(bind_address: str | None, host_port: int, container_port: int) -> str:
    """`docker run --publish` text: [ADDRESS:]HOST_PORT:CONTAINER_PORT, an IPv6 address in brackets."""
    if bind_address is None:
        return f"{host_port}:{container_port}"
    address = f"[{bind_address}]" if ":" in bind_address else bind_address
    return f"{address}:{host_port}:{container_port}"


@dataclass(frozen=True)
class RunContainer(EngineOp):
    """Create and start a container (answers: its id)."""

    spec: ContainerSpec
    labels: tuple[tuple[str, str], ...]

    def argv(self) -> list[str]:
        spec = self.spec
        argv = ["docker", "run", "--detach", "--name", spec.name, *_labels_argv(self.labels)]
        argv += ["--restart", spec.restart, "--log-driver", LOG_DRIVER]
        for key, value in LOG_OPTIONS:
            argv += ["--log-opt", f"{key}={value}"]
        argv += ["--network", spec.network]
        if spec.network_alias:
            argv += ["--network-alias", spec.network_alias]
        if spec.hostname:
            argv += ["--hostname", spec.hostname]
        for host_port, container_port in spec.ports:
            argv += ["--publish", published(spec.bind_address, host_port, container_port)]
        for source, target, mode in self.mounts():
            argv += ["--volume", f"{source}:{target}:{mode}"]
        for key, value in spec.environment:
            argv += ["--env", f"{key}={value}"]
        if spec.user:
            argv += ["--user", spec.user]
        if spec.workdir:
            argv += ["--workdir", spec.workdir]
        if spec.gpus:
            # The docker CLI reads --gpus as CSV: a list of devices must be quoted to stay one field.
            argv += ["--gpus", f'"{spec.gpus}"' if "," in spec.gpus else spec.gpus]
        return argv + self.confinement_argv() + [spec.image, *spec.command]

    def confinement_argv(self) -> list[str]:
        """`docker run`'s words for the spec's capabilities, privileges, read-only root, tmpfs and pids limit."""
        spec = self.spec
        argv = [word for cap in spec.cap_drop for word in ("--cap-drop", cap)]
        argv += [word for cap in spec.cap_add for word in ("--cap-add", cap)]
        argv += [word for option in spec.security_opt for word in ("--security-opt", option)]
        if spec.read_only:
            argv.append("--read-only")
        argv += [word for path, options in spec.tmpfs for word in ("--tmpfs", f"{path}:{options}")]
        if spec.pids_limit is not None:
            argv += ["--pids-limit", str(spec.pids_limit)]
        return argv

    def mounts(self) -> tuple[tuple[str, str, str], ...]:
        """Its volumes, then its secrets folder (read-only)."""
        secrets = ((self.spec.secrets, SECRETS_MOUNT, "ro"),) if self.spec.secrets else ()
        return (*self.spec.volumes, *secrets)


@dataclass(frozen=True)
class RemoveContainers(EngineOp):
    """Remove containers, running or not; a container already gone is no error."""

    names: tuple[str, ...]

    def argv(self) -> list[str]:
        return ["docker", "rm", "--force", *self.names]


@dataclass(frozen=True)
class StartContainer(EngineOp):
    name: str

    def argv(self) -> list[str]:
        return ["docker", "start", self.name]


@dataclass(frozen=True)
class RestartContainer(EngineOp):
    """Restart a container, giving it `timeout` seconds to stop (then SIGKILL)."""

    name: str
    timeout: int

    def argv(self) -> list[str]:
        return ["docker", "restart", "--time", str(self.timeout), self.name]


# --------------------------------------------------------------------------- networks and volumes


@dataclass(frozen=True)
class CreateNetwork(EngineOp):
    name: str
    cluster: str

    def argv(self) -> list[str]:
        return ["docker", "network", "create", "--label", cluster_label(self.cluster), self.name]


@dataclass(frozen=True)
class RemoveNetwork(EngineOp):
    """Remove a network; one already gone is no error."""

    name: str

    def argv(self) -> list[str]:
        return ["docker", "network", "rm", self.name]


@dataclass(frozen=True)
class CreateVolume(EngineOp):
    name: str
    cluster: str

    def argv(self) -> list[str]:
        return ["docker", "volume", "create", "--label", cluster_label(self.cluster), self.name]


@dataclass(frozen=True)
class RemoveVolume(EngineOp):
    """Remove a volume; one already gone is no error."""

    name: str

    def argv(self) -> list[str]:
        return ["docker", "volume", "rm", "--force", self.name]


# --------------------------------------------------------------------------- images


@dataclass(frozen=True)
class BuildImage(EngineOp):
    """Build an image from a local folder, sent to the engine as the build context (answers: image id).

    `dockerfile` is relative to the context folder. Builds use the host's network, so a
    build reaches the package mirrors the host reaches.
    """

    tag: str
    context_dir: str
    dockerfile: str
    build_args: tuple[tuple[str, str], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    target: str | None = None  # the Dockerfile's stage to build; None: its last

    def argv(self) -> list[str]:
        argv = ["docker", "build", "--network", "host", "--file", f"{self.context_dir}/{self.dockerfile}",
                *(["--target", self.target] if self.target else []),
                "--tag", self.tag, *_labels_argv(self.labels)]
        for key, value in self.build_args:
            argv += ["--build-arg", f"{key}={value}"]
        return argv + [self.context_dir]


@dataclass(frozen=True)
class PullImage(EngineOp):
    ref: str
    # The registry's login for this pull alone: sent in the request (X-Registry-Auth), never stored
    # by the engine nor on any command line (the argv below is what `docker login` + pull would show).
    login: RegistryLogin | None = field(default=None, repr=False, compare=False)

    def argv(self) -> list[str]:
        return ["docker", "pull", self.ref]


@dataclass(frozen=True)
class PushImage(EngineOp):
    """Push an image to the registry its reference names (answers: None)."""

    ref: str
    login: RegistryLogin | None = field(default=None, repr=False, compare=False)  # as PullImage's

    def argv(self) -> list[str]:
        return ["docker", "push", self.ref]


@dataclass(frozen=True)
class TagImage(EngineOp):
    """Give an image (by reference or id) another reference."""

    source: str
    ref: str

    def argv(self) -> list[str]:
        return ["docker", "tag", self.source, self.ref]


@dataclass(frozen=True)
class UntagImage(EngineOp):
    """Remove one reference of an image; the image stays while another reference or a container uses it."""

    ref: str

    def argv(self) -> list[str]:
        return ["docker", "image", "rm", "--no-prune", self.ref]


@dataclass(frozen=True)
class SaveImages(EngineOp):
    """The images as one tar stream (answers: an iterator of byte chunks)."""

    refs: tuple[str, ...]

    def argv(self) -> list[str]:
        return ["docker", "save", *self.refs]


@dataclass(frozen=True)
class LoadImages(EngineOp):
    """Load images from a tar stream given to the engine."""

    def argv(self) -> list[str]:
        return ["docker", "load", "--quiet"]


# --------------------------------------------------------------------------- processes in containers


@dataclass(frozen=True)
class Exec(EngineOp):
    """Run a process in a running container; its output streams back, its exit code is returned."""

    container: str
    command: tuple[str, ...]
    workdir: str | None = None

    def argv(self) -> list[str]:
        argv = ["docker", "exec"]
        if self.workdir:
            argv += ["--workdir", self.workdir]
        return argv + [self.container, *self.command]


@dataclass(frozen=True)
class Logs(EngineOp):
    """A container's log lines, with Docker's timestamps; `follow` keeps streaming new ones.

    `since` is a Unix time in seconds (pure code turns `10m` or a date into one); `tail` a
    number of lines or "all".
    """

    container: str
    tail: str = "all"
    since: float | None = None
    follow: bool = False

    def argv(self) -> list[str]:
        argv = ["docker", "logs", "--timestamps", "--tail", self.tail]
        if self.since is not None:
            argv += ["--since", f"{self.since:.3f}".rstrip("0").rstrip(".")]
        if self.follow:
            argv.append("--follow")
        return argv + [self.container]


def cluster_labels(cluster: str, **more: str) -> tuple[tuple[str, str], ...]:
    """`infra.cluster=NAME` first, then `infra.KEY=VALUE` for each keyword, in order."""
    return ((LABEL_CLUSTER, cluster), *((f"infra.{key}", value) for key, value in more.items()))
