"""What runs where: pure functions from a validated cluster and host facts to plans.

Nothing here talks to a host. The runner gathers `HostFacts`, asks this module what to do, and
executes the resulting argv lists; tests check the same plans without any network.
"""

from __future__ import annotations

import base64
import hashlib
import json
import posixpath
from dataclasses import dataclass, field
from typing import Literal

from .config import Cluster, Host
from .facts.host import HostFacts, ObservedContainer
from .filesync import SyncPlan
from .secrets import Secrets

ImageRole = Literal["worker", "master", "broker"]
IMAGE_ROLES: tuple[ImageRole, ...] = ("worker", "master", "broker")
DOCKERFILES = {"worker": "Dockerfile.worker", "master": "Dockerfile.master", "broker": "Dockerfile.broker"}

CONTAINER_PROJECT = "/project"
BROKER_INTERNAL_PORT = 5672
RESULTS_INTERNAL_PORT = 6379
FLOWER_INTERNAL_PORT = 5555
MANAGEMENT_INTERNAL_PORT = 15672
# Start order on a host: services the others connect to come first.
ROLE_ORDER = {"broker": 0, "results": 1, "master": 2, "flower": 3, "worker": 4}


# --------------------------------------------------------------------------- layout on a host


@dataclass(frozen=True)
class HostLayout:
    """Absolute paths of what infra puts on one host."""

    root: str  # the remote_path, resolved (None of it exists on `local`, see project_dir)
    project_dir: str  # where the task project is, bind-mounted into the containers
    env_dir: str  # 0700 folder of 0600 env files
    build_dir: str  # build context when images are built on the host

    def env_file(self, name: str) -> str:
        return posixpath.join(self.env_dir, f"{name}.env")


def host_layout(cluster: Cluster, host: Host, facts: HostFacts) -> HostLayout:
    if host.is_local:
        # The project is used where it is; env files and the build context live in the state dir.
        state = str(cluster.state_dir)
        return HostLayout(
            root=state,
            project_dir=str(cluster.project_dir),
            env_dir=posixpath.join(state, "env"),
            build_dir=posixpath.join(state, "build"),
        )
    remote = cluster.spec.project.remote_path.rstrip("/")
    if remote.startswith("~/"):
        remote = remote[2:]
    root = remote if remote.startswith("/") else posixpath.join(facts.home, remote)
    return HostLayout(
        root=root,
        project_dir=posixpath.join(root, cluster.project_dir.name),
        env_dir=posixpath.join(root, f".infra-{cluster.name}"),
        build_dir=posixpath.join(root, f".infra-{cluster.name}", "build"),
    )


# --------------------------------------------------------------------------- env files


@dataclass(frozen=True)
class EnvFile:
    name: str  # broker, results, celery, flower, worker
    path: str
    content: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.content.encode()).hexdigest()[:16]


def _render_env(values: dict[str, str]) -> str:
    # Docker env files take each line literally: no quotes, no expansion.
    return "".join(f"{key}={value}\n" for key, value in values.items())


def rabbitmq_password_hash(password: str) -> str:
    """RabbitMQ's stored form of a password (rabbit_password_hashing_sha256).

    base64(salt + sha256(salt + password)). The broker imports it at every start, so the
    password in the secrets file wins even over an older data volume. The salt is derived
    from the password, so the env file (and the container's fingerprint) stays stable.
    """
    salt = hashlib.sha256(b"infra-broker-salt:" + password.encode()).digest()[:4]
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def broker_address_for(cluster: Cluster, host: Host, master_address: str) -> str:
    """The address a worker container on `host` (host networking) uses to reach the broker."""
    return "127.0.0.1" if host.name == cluster.master_host.name else master_address


def celery_urls(cluster: Cluster, secrets: Secrets, address: str, *, internal: bool) -> dict[str, str]:
    broker_port = BROKER_INTERNAL_PORT if internal else cluster.spec.ports.broker
    results_port = RESULTS_INTERNAL_PORT if internal else cluster.spec.ports.results
    broker_host = "broker" if internal else address
    results_host = "results" if internal else address
    return {
        "CELERY_BROKER_URL": f"amqp://{secrets.broker_user}:{secrets.broker_password}@{broker_host}:{broker_port}//",
        "CELERY_RESULT_BACKEND": f"redis://:{secrets.results_password}@{results_host}:{results_port}/0",
    }


def env_files_for(cluster: Cluster, host: Host, layout: HostLayout, secrets: Secrets, master_address: str) -> list[EnvFile]:
    files: list[EnvFile] = []
    common = {"INFRA_CLUSTER": cluster.name}
    if host.name == cluster.master_host.name:
        internal = celery_urls(cluster, secrets, "", internal=True)
        files.append(EnvFile("broker", layout.env_file("broker"), _render_env({
            "RABBITMQ_DEFAULT_USER": secrets.broker_user,
            "RABBITMQ_DEFAULT_PASS": secrets.broker_password,
            "INFRA_BROKER_PASSWORD_HASH": rabbitmq_password_hash(secrets.broker_password),
        })))
        files.append(EnvFile("results", layout.env_file("results"), _render_env({
            "REDIS_PASSWORD": secrets.results_password,
        })))
        files.append(EnvFile("celery", layout.env_file("celery"), _render_env({**common, **internal})))
        files.append(EnvFile("flower", layout.env_file("flower"), _render_env({
            **common,
            **internal,
            "FLOWER_BASIC_AUTH": f"{secrets.flower_user}:{secrets.flower_password}",
            "FLOWER_BROKER_API": (
                f"http://{secrets.broker_user}:{secrets.broker_password}@broker:{MANAGEMENT_INTERNAL_PORT}/api/"
            ),
        })))
    if host.name in cluster.worker_hosts():
        address = broker_address_for(cluster, host, master_address)
        files.append(EnvFile("worker", layout.env_file("worker"), _render_env({
            **common, **celery_urls(cluster, secrets, address, internal=False),
        })))
    return files


# --------------------------------------------------------------------------- containers


@dataclass(frozen=True)
class ContainerSpec:
    """Everything `docker run` is told about one container, as data."""

    name: str
    role: str
    host: str
    image: str
    command: tuple[str, ...]
    env_file: str | None = None
    ports: tuple[tuple[int, int], ...] = ()
    volumes: tuple[tuple[str, str, str], ...] = ()  # (source, target, mode)
    network: str = "host"
    network_alias: str | None = None
    hostname: str | None = None
    user: str | None = None
    workdir: str | None = None
    restart: str = "unless-stopped"

    def fingerprint(self, image_id: str | None, env_digest: str) -> str:
        """Hash of everything that, when changed, means the container must be replaced."""
        payload = json.dumps(
            {"spec": self.__dict__, "image_id": image_id or self.image, "env": env_digest},
            sort_keys=True,
            default=list,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:20]

    def run_argv(self, cluster_name: str, fingerprint: str) -> list[str]:
        argv = ["docker", "run", "--detach", "--name", self.name]
        labels = {
            "infra.cluster": cluster_name,
            "infra.role": self.role,
            "infra.host": self.host,
            "infra.spec": fingerprint,
        }
        for key, value in labels.items():
            argv += ["--label", f"{key}={value}"]
        argv += ["--restart", self.restart, "--log-opt", "max-size=20m", "--log-opt", "max-file=3"]
        argv += ["--network", self.network]
        if self.network_alias:
            argv += ["--network-alias", self.network_alias]
        if self.hostname:
            argv += ["--hostname", self.hostname]
        for host_port, container_port in self.ports:
            argv += ["--publish", f"{host_port}:{container_port}"]
        for source, target, mode in self.volumes:
            argv += ["--volume", f"{source}:{target}:{mode}"]
        if self.env_file:
            argv += ["--env-file", self.env_file]
        if self.user:
            argv += ["--user", self.user]
        if self.workdir:
            argv += ["--workdir", self.workdir]
        argv.append(self.image)
        argv += list(self.command)
        return argv


def network_name(cluster: Cluster) -> str:
    return f"{cluster.name}-net"


def volume_names(cluster: Cluster) -> dict[str, str]:
    return {"broker": f"{cluster.name}-broker-data", "results": f"{cluster.name}-results-data"}


def worker_name(cluster: Cluster, host: str, index: int) -> str:
    return f"{cluster.name}-worker-{host}-{index}"


def celery_node_name(container_name: str, host: str) -> str:
    """The Celery node name of a worker container: unique in the cluster and says where it runs."""
    return f"{container_name}@{host}"


def desired_containers(cluster: Cluster, host: Host, facts: HostFacts, layout: HostLayout) -> list[ContainerSpec]:
    app = cluster.spec.project.app
    ports = cluster.spec.ports
    user = f"{facts.uid}:{facts.gid}"
    specs: list[ContainerSpec] = []
    if host.name == cluster.master_host.name:
        net = network_name(cluster)
        volumes = volume_names(cluster)
        master_image = cluster.image_tag("master")
        specs += [
            ContainerSpec(
                name=f"{cluster.name}-broker", role="broker", host=host.name,
                image=cluster.image_tag("broker"), command=(),
                env_file=layout.env_file("broker"),
                ports=((ports.broker, BROKER_INTERNAL_PORT),),
                volumes=((volumes["broker"], "/var/lib/rabbitmq", "rw"),),
                network=net, network_alias="broker", hostname=f"{cluster.name}-broker",
            ),
            ContainerSpec(
                name=f"{cluster.name}-results", role="results", host=host.name,
                image=master_image, command=("infra-results",),
                env_file=layout.env_file("results"),
                ports=((ports.results, RESULTS_INTERNAL_PORT),),
                volumes=((volumes["results"], "/data", "rw"),),
                network=net, network_alias="results", hostname=f"{cluster.name}-results",
            ),
            ContainerSpec(
                name=f"{cluster.name}-master", role="master", host=host.name,
                image=master_image, command=("infra-idle",),
                env_file=layout.env_file("celery"),
                volumes=((layout.project_dir, CONTAINER_PROJECT, "rw"),),
                network=net, hostname=f"{cluster.name}-master", user=user, workdir=CONTAINER_PROJECT,
            ),
            ContainerSpec(
                name=f"{cluster.name}-flower", role="flower", host=host.name,
                image=master_image,
                command=("celery", "--app", app, "flower", f"--port={FLOWER_INTERNAL_PORT}"),
                env_file=layout.env_file("flower"),
                ports=((ports.flower, FLOWER_INTERNAL_PORT),),
                volumes=((layout.project_dir, CONTAINER_PROJECT, "ro"),),
                network=net, hostname=f"{cluster.name}-flower", user=user, workdir=CONTAINER_PROJECT,
            ),
        ]
    index = 0
    for group in cluster.spec.roles.workers:
        if group.host != host.name:
            continue
        for _ in range(group.containers):
            index += 1
            name = worker_name(cluster, host.name, index)
            command = ["celery", "--app", app, "worker", "--hostname", celery_node_name(name, host.name),
                       "--queues", ",".join(group.queues), "--pool", group.pool,
                       "--loglevel", group.loglevel, "--task-events"]
            if group.concurrency:
                command += ["--concurrency", str(group.concurrency)]
            specs.append(ContainerSpec(
                name=name, role="worker", host=host.name,
                image=cluster.image_tag("worker"), command=tuple(command),
                env_file=layout.env_file("worker"),
                volumes=((layout.project_dir, CONTAINER_PROJECT, "ro"),),
                network="host", user=user, workdir=CONTAINER_PROJECT,
            ))
    return specs


def expected_worker_nodes(cluster: Cluster) -> list[str]:
    """Celery node names of every worker the cluster file asks for."""
    names = []
    for host in cluster.worker_hosts():
        count = sum(g.containers for g in cluster.spec.roles.workers if g.host == host)
        names += [celery_node_name(worker_name(cluster, host, i), host) for i in range(1, count + 1)]
    return names


# --------------------------------------------------------------------------- container diff


Action = Literal["create", "replace", "start", "remove", "keep"]


@dataclass(frozen=True)
class ContainerChange:
    action: Action
    name: str
    role: str
    reason: str
    spec: ContainerSpec | None = None
    fingerprint: str = ""
    existing: ObservedContainer | None = None

    def describe(self) -> str:
        return f"{self.action} {self.name} ({self.reason})"


def diff_containers(
    desired: list[tuple[ContainerSpec, str]], observed: tuple[ObservedContainer, ...] | list[ObservedContainer]
) -> list[ContainerChange]:
    """Compare wanted (spec, fingerprint) pairs with the cluster's containers found on a host."""
    by_name = {c.name: c for c in observed}
    wanted = {spec.name for spec, _ in desired}
    changes: list[ContainerChange] = []
    for existing in observed:
        if existing.name not in wanted:
            changes.append(ContainerChange("remove", existing.name, existing.role, "no longer wanted", existing=existing))
    for spec, fingerprint in sorted(desired, key=lambda d: (ROLE_ORDER.get(d[0].role, 9), d[0].name)):
        current = by_name.get(spec.name)
        if current is None:
            changes.append(ContainerChange("create", spec.name, spec.role, "new", spec, fingerprint))
        elif current.fingerprint != fingerprint:
            changes.append(ContainerChange("replace", spec.name, spec.role, "settings or image changed", spec, fingerprint, current))
        elif current.state in ("running", "restarting"):
            changes.append(ContainerChange("keep", spec.name, spec.role, "up to date", spec, fingerprint, current))
        elif current.state in ("paused", "dead", "removing"):
            # `docker start` neither unpauses nor revives these: make a new one.
            changes.append(ContainerChange("replace", spec.name, spec.role, f"was {current.state}", spec, fingerprint, current))
        else:
            changes.append(ContainerChange("start", spec.name, spec.role, f"was {current.state}", spec, fingerprint, current))
    return changes


# --------------------------------------------------------------------------- images


@dataclass(frozen=True)
class ImageStep:
    role: ImageRole
    tag: str
    action: Literal["build", "ship", "pull", "present"]
    reason: str

    def describe(self) -> str:
        return f"{self.action} {self.tag} ({self.reason})"


def images_needed(cluster: Cluster, host: Host) -> list[ImageRole]:
    """Images a host must have, in build order (the master image is built FROM the worker image)."""
    needed: list[ImageRole] = []
    is_master = host.name == cluster.master_host.name
    if host.name in cluster.worker_hosts() or (is_master and cluster.spec.images.source == "build"):
        needed.append("worker")
    if is_master:
        needed += ["master", "broker"]
    return needed


def build_argv(cluster: Cluster, role: ImageRole, context_dir: str) -> list[str]:
    argv = ["docker", "build", "--network", "host", "--file", posixpath.join(context_dir, DOCKERFILES[role]),
            "--tag", cluster.image_tag(role), "--label", f"infra.cluster={cluster.name}",
            "--build-arg", f"BASE_IMAGE={cluster.spec.images.base}"]
    if role == "master":
        argv += ["--build-arg", f"WORKER_IMAGE={cluster.image_tag('worker')}"]
    argv.append(context_dir)
    return argv


def plan_images(
    cluster: Cluster, host: Host, facts: HostFacts, local_image_ids: dict[str, str | None]
) -> list[ImageStep]:
    """How each needed image gets onto a host. `local_image_ids` are the images built here (ship)."""
    source = cluster.spec.images.source
    steps: list[ImageStep] = []
    for role in images_needed(cluster, host):
        tag = cluster.image_tag(role)
        present = facts.image_ids.get(tag)
        if source == "pull":
            steps.append(ImageStep(role, tag, "present", "already on the host") if present
                         else ImageStep(role, tag, "pull", "not on the host"))
        elif source == "build":
            steps.append(ImageStep(role, tag, "build", "built on the host; unchanged layers come from its cache"))
        elif host.is_local:
            steps.append(ImageStep(role, tag, "present", "built here for shipping") if local_image_ids.get(tag)
                         else ImageStep(role, tag, "build", "built here, then shipped to the other hosts"))
        else:  # ship
            local_id = local_image_ids.get(tag)
            if present and local_id and present == local_id:
                steps.append(ImageStep(role, tag, "present", "same image already on the host"))
            else:
                steps.append(ImageStep(role, tag, "ship", "copied from this machine over SSH"))
    return steps


# --------------------------------------------------------------------------- whole-cluster plan


@dataclass
class HostPlan:
    host: Host
    layout: HostLayout
    env_files: list[EnvFile]
    images: list[ImageStep]
    containers: list[ContainerChange] = field(default_factory=list)
    network: str | None = None  # bridge network to create if missing
    volumes: list[str] = field(default_factory=list)
    project_sync: "SyncPlan | None" = None  # filled in by a dry run, which lists the host's files

    @property
    def changes(self) -> list[ContainerChange]:
        return [c for c in self.containers if c.action != "keep"]


def container_changes(
    cluster: Cluster, host: Host, facts: HostFacts, layout: HostLayout,
    env_files: list[EnvFile], image_ids: dict[str, str | None],
) -> list[ContainerChange]:
    """The container diff of one host, given the image ids it will run."""
    digests = {f.path: f.digest for f in env_files}
    desired = [
        (spec, spec.fingerprint(image_ids.get(spec.image), digests.get(spec.env_file or "", "")))
        for spec in desired_containers(cluster, host, facts, layout)
    ]
    return diff_containers(desired, facts.containers)


def plan_host(
    cluster: Cluster, host: Host, facts: HostFacts, secrets: Secrets, master_address: str,
    local_image_ids: dict[str, str | None],
) -> HostPlan:
    layout = host_layout(cluster, host, facts)
    env_files = env_files_for(cluster, host, layout, secrets, master_address)
    images = plan_images(cluster, host, facts, local_image_ids)
    # Before images are built the expected ids are those on the host now (or shipped from here).
    expected_ids = dict(facts.image_ids)
    for step in images:
        if step.action == "ship":
            expected_ids[step.tag] = local_image_ids.get(step.tag)
    plan = HostPlan(host=host, layout=layout, env_files=env_files, images=images)
    plan.containers = container_changes(cluster, host, facts, layout, env_files, expected_ids)
    if host.name == cluster.master_host.name:
        plan.network = network_name(cluster)
        plan.volumes = list(volume_names(cluster).values())
    return plan


def removal_plan(facts: HostFacts) -> list[ContainerChange]:
    """Every container of the cluster on a host that is no longer part of the cluster file."""
    return [ContainerChange("remove", c.name, c.role, "host left the cluster", existing=c) for c in facts.containers]
