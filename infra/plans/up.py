"""What `infra up` does on each host, decided from the cluster file and the host's facts alone.

`plan_host` returns the host's whole plan: the project files to send and delete, the env files,
the images to build, ship or pull, the network and volumes — as ordered steps — and the
container changes expected with the image ids known now. Containers depend on the ids of the
images they run, which a build only tells at the end: `container_steps` is the pure function
of those ids that the workflow calls once the images are there. Nothing here talks to a host.
"""

from __future__ import annotations

import base64
import hashlib
import json
import posixpath
from dataclasses import dataclass, field
from typing import Literal

from ..commands import files as file_commands
from ..commands.celery import CONTAINER_PROJECT
from ..commands.engine import (
    BuildImage,
    ContainerSpec,
    CreateNetwork,
    CreateVolume,
    PullImage,
    RemoveContainers,
    RemoveNetwork,
    RunContainer,
    StartContainer,
    cluster_labels,
)
from ..config import Cluster, Host
from ..facts.containers import Container
from ..facts.host import HostFacts
from ..names import (
    LABEL_CONTEXT,
    ROLE_ORDER,
    celery_node_name,
    container_name,
    network_name,
    volume_names,
)
from ..runtime import BUILTIN_APP, RUNNER_MODULE
from ..secrets import Secrets
from .addresses import broker_address_for, in_url
from .steps import Record, Step, engine_step, shell_step
from .sync import SyncPlan, sync_steps

ImageRole = Literal["worker", "master", "broker"]
IMAGE_ROLES: tuple[ImageRole, ...] = ("worker", "master", "broker")
DOCKERFILES = {"worker": "Dockerfile.worker", "master": "Dockerfile.master", "broker": "Dockerfile.broker"}

BROKER_INTERNAL_PORT = 5672
RESULTS_INTERNAL_PORT = 6379
FLOWER_INTERNAL_PORT = 5555
MANAGEMENT_INTERNAL_PORT = 15672

# Bounds of the steps (seconds): builds and image transfers can be long, the rest is quick.
FILE_TIMEOUT = 600
IMAGE_TIMEOUT = 3600
ENGINE_TIMEOUT = 120


# --------------------------------------------------------------------------- layout on a host


@dataclass(frozen=True)
class HostLayout:
    """Absolute paths of what infra puts on one host."""

    root: str  # the remote_path, resolved (the state dir on `local`)
    project_dir: str  # where the task project is, bind-mounted into the containers
    env_dir: str  # 0700 folder of 0600 env files

    def env_file(self, name: str) -> str:
        return posixpath.join(self.env_dir, f"{name}.env")


def host_layout(cluster: Cluster, host: Host, facts: HostFacts) -> HostLayout:
    if host.is_local:
        # The project is used where it is; env files live in the state dir.
        state = str(cluster.state_dir)
        return HostLayout(root=state, project_dir=str(cluster.project_dir), env_dir=posixpath.join(state, "env"))
    remote = cluster.spec.project.remote_path.rstrip("/")
    if remote.startswith("~/"):
        remote = remote[2:]
    root = remote if remote.startswith("/") else posixpath.join(facts.home, remote)
    return HostLayout(
        root=root,
        project_dir=posixpath.join(root, cluster.project_dir.name),
        env_dir=posixpath.join(root, f".infra-{cluster.name}"),
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


def celery_urls(cluster: Cluster, secrets: Secrets, address: str, *, internal: bool) -> dict[str, str]:
    broker_port = BROKER_INTERNAL_PORT if internal else cluster.spec.ports.broker
    results_port = RESULTS_INTERNAL_PORT if internal else cluster.spec.ports.results
    broker_host = "broker" if internal else in_url(address)
    results_host = "results" if internal else in_url(address)
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


def worker_count(cluster: Cluster, host: str) -> int:
    """How many worker containers the cluster file asks for on a host (all its groups together)."""
    return sum(g.containers for g in cluster.spec.roles.workers if g.host == host)


def expected_worker_nodes(cluster: Cluster) -> list[str]:
    """Celery node names of every worker the cluster file asks for."""
    return [celery_node_name(container_name(cluster.name, "worker", host, i), host)
            for host in cluster.worker_hosts() for i in range(1, worker_count(cluster, host) + 1)]


def worker_app_args(cluster: Cluster) -> list[str]:
    """`--app APP` of the workers: the project's app with infra's task runner included, or the built-in app."""
    if cluster.spec.project.app:
        return ["--app", cluster.spec.project.app, "worker", "--include", RUNNER_MODULE]
    return ["--app", BUILTIN_APP, "worker"]


def gpus_option(gpus: str | int | tuple[int | str, ...] | None) -> str | None:
    """A worker group's `gpus` as `docker run --gpus` text: all, a count, or device=ID,ID."""
    if gpus is None:
        return None
    if isinstance(gpus, tuple):
        return "device=" + ",".join(str(device) for device in gpus)
    return str(gpus)


def desired_containers(cluster: Cluster, host: Host, facts: HostFacts, layout: HostLayout) -> list[ContainerSpec]:
    app = cluster.celery_app
    ports = cluster.spec.ports
    user = f"{facts.uid}:{facts.gid}"
    specs: list[ContainerSpec] = []
    if host.name == cluster.master_host.name:
        net = network_name(cluster.name)
        volumes = volume_names(cluster.name)
        master_image = cluster.image_tag("master")

        def service(role: str, **settings) -> ContainerSpec:
            name = container_name(cluster.name, role)
            return ContainerSpec(name=name, role=role, host=host.name, network=net, hostname=name, **settings)

        specs += [
            service("broker", image=cluster.image_tag("broker"), env_file=layout.env_file("broker"),
                    ports=((ports.broker, BROKER_INTERNAL_PORT),),
                    volumes=((volumes["broker"], "/var/lib/rabbitmq", "rw"),), network_alias="broker"),
            service("results", image=master_image, command=("infra-results",), env_file=layout.env_file("results"),
                    ports=((ports.results, RESULTS_INTERNAL_PORT),),
                    volumes=((volumes["results"], "/data", "rw"),), network_alias="results"),
            service("master", image=master_image, command=("infra-idle",), env_file=layout.env_file("celery"),
                    volumes=((layout.project_dir, CONTAINER_PROJECT, "rw"),), user=user, workdir=CONTAINER_PROJECT),
            service("flower", image=master_image,
                    command=("celery", "--app", app, "flower", f"--port={FLOWER_INTERNAL_PORT}"),
                    env_file=layout.env_file("flower"), ports=((ports.flower, FLOWER_INTERNAL_PORT),),
                    volumes=((layout.project_dir, CONTAINER_PROJECT, "ro"),), user=user, workdir=CONTAINER_PROJECT),
        ]
    index = 0
    for group in cluster.spec.roles.workers:
        if group.host != host.name:
            continue
        for _ in range(group.containers):
            index += 1
            name = container_name(cluster.name, "worker", host.name, index)
            command = ["celery", *worker_app_args(cluster), "--hostname", celery_node_name(name, host.name),
                       "--queues", ",".join(group.queues), "--pool", group.pool,
                       "--loglevel", group.loglevel, "--task-events"]
            if group.concurrency:
                command += ["--concurrency", str(group.concurrency)]
            specs.append(ContainerSpec(
                name=name, role="worker", host=host.name,
                image=cluster.image_tag("worker"), command=tuple(command),
                env_file=layout.env_file("worker"),
                volumes=((layout.project_dir, CONTAINER_PROJECT, "ro"),),
                network="host", user=user, workdir=CONTAINER_PROJECT, gpus=gpus_option(group.gpus),
            ))
    return specs


# Settings added to ContainerSpec after containers were first fingerprinted: left out of the hash
# while unset, so that a container which does not use them keeps its fingerprint (and is not replaced).
_LATER_SETTINGS = ("gpus",)


def fingerprint(spec: ContainerSpec, image_id: str | None, env_digest: str) -> str:
    """Hash of everything that, when changed, means the container must be replaced."""
    settings = {key: value for key, value in spec.__dict__.items() if not (key in _LATER_SETTINGS and value is None)}
    payload = json.dumps(
        {"spec": settings, "image_id": image_id or spec.image, "env": env_digest},
        sort_keys=True,
        default=list,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


Action = Literal["create", "replace", "start", "remove", "keep"]


@dataclass(frozen=True)
class ContainerChange:
    action: Action
    name: str
    role: str
    reason: str
    spec: ContainerSpec | None = None
    fingerprint: str = ""
    existing: Container | None = None

    def describe(self) -> str:
        return f"{self.action} {self.name} ({self.reason})"


def diff_containers(
    desired: list[tuple[ContainerSpec, str]], observed: tuple[Container, ...] | list[Container]
) -> list[ContainerChange]:
    """Compare wanted (spec, fingerprint) pairs with the cluster's containers found on a host."""
    by_name = {c.name: c for c in observed}
    wanted = {spec.name for spec, _ in desired}
    changes: list[ContainerChange] = []
    for existing in observed:
        if existing.name not in wanted:
            changes.append(ContainerChange("remove", existing.name, existing.role, "no longer wanted", existing=existing))
    for spec, print_ in sorted(desired, key=lambda d: (ROLE_ORDER.get(d[0].role, 9), d[0].name)):
        current = by_name.get(spec.name)
        if current is None:
            changes.append(ContainerChange("create", spec.name, spec.role, "new", spec, print_))
        elif current.fingerprint != print_:
            changes.append(ContainerChange("replace", spec.name, spec.role, "settings or image changed", spec, print_, current))
        elif current.state in ("running", "restarting"):
            changes.append(ContainerChange("keep", spec.name, spec.role, "up to date", spec, print_, current))
        elif current.state in ("paused", "dead", "removing"):
            # A start neither unpauses nor revives these: make a new one.
            changes.append(ContainerChange("replace", spec.name, spec.role, f"was {current.state}", spec, print_, current))
        else:
            changes.append(ContainerChange("start", spec.name, spec.role, f"was {current.state}", spec, print_, current))
    return changes


def container_changes(
    cluster: Cluster, host: Host, facts: HostFacts, layout: HostLayout,
    env_files: list[EnvFile], image_ids: dict[str, str | None],
) -> list[ContainerChange]:
    """The container diff of one host, given the image ids it will run."""
    digests = {f.path: f.digest for f in env_files}
    desired = [
        (spec, fingerprint(spec, image_ids.get(spec.image), digests.get(spec.env_file or "", "")))
        for spec in desired_containers(cluster, host, facts, layout)
    ]
    return diff_containers(desired, facts.containers)


def change_steps(cluster: Cluster, changes: list[ContainerChange], env_files: list[EnvFile]) -> list[Step]:
    """Removals first (a replaced container frees its name and ports), then starts in role order."""
    env_of = {f.path: f.content for f in env_files}
    steps: list[Step] = []
    for change in changes:
        if change.action in ("remove", "replace"):
            verb = "remove" if change.action == "remove" else "remove the old"
            steps.append(engine_step(f"{verb} {change.name} ({change.reason})", RemoveContainers((change.name,)),
                                     Record("remove_container", change.name), timeout=ENGINE_TIMEOUT))
    for change in changes:
        record = Record("add_container", change.name, change.role)
        if change.action in ("create", "replace"):
            spec = change.spec
            labels = cluster_labels(cluster.name, role=spec.role, host=spec.host, spec=change.fingerprint)
            op = RunContainer(spec, labels, env_of.get(spec.env_file or "", ""))
            steps.append(engine_step(f"{change.action} {change.name} ({change.reason})", op, record,
                                     timeout=ENGINE_TIMEOUT))
        elif change.action == "start":
            steps.append(engine_step(f"start {change.name} ({change.reason})", StartContainer(change.name),
                                     Record("add_container", change.name, change.role, ident=change.existing.id),
                                     timeout=ENGINE_TIMEOUT))
        elif change.action == "keep":
            steps.append(Step(f"keep {change.name} (up to date)",
                              records=(Record("add_container", change.name, change.role, ident=change.existing.id),)))
    return steps


# --------------------------------------------------------------------------- images


@dataclass(frozen=True)
class ImagePlan:
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


def build_fingerprint(context_digest: str, role: ImageRole, build_args: tuple[tuple[str, str], ...],
                      parent: str) -> str:
    """What a built image depends on: the context's content, its Dockerfile, arguments and parent.

    The base image's own content is not part of it: whether an image stands on the base the host
    has now is read from its layers (`ImageInfo.built_on`).
    """
    payload = json.dumps([context_digest, role, build_args, parent])
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def build_args(cluster: Cluster, role: ImageRole) -> tuple[tuple[str, str], ...]:
    args = [("BASE_IMAGE", cluster.spec.images.base)]
    if role == "master":
        args.append(("WORKER_IMAGE", cluster.image_tag("worker")))
    return tuple(args)


def build_op(cluster: Cluster, role: ImageRole, context_dir: str, built_from: str) -> BuildImage:
    return BuildImage(
        tag=cluster.image_tag(role), context_dir=context_dir, dockerfile=DOCKERFILES[role],
        build_args=build_args(cluster, role),
        labels=cluster_labels(cluster.name, context=built_from),
    )


def build_fingerprints(cluster: Cluster, context_digest: str) -> dict[str, str]:
    """{tag: fingerprint} of each image as built from this context.

    The master image is built FROM the worker image, so its fingerprint follows the worker's.
    """
    prints: dict[str, str] = {}
    for role in IMAGE_ROLES:
        parent = prints[cluster.image_tag("worker")] if role == "master" else cluster.spec.images.base
        prints[cluster.image_tag(role)] = build_fingerprint(context_digest, role, build_args(cluster, role), parent)
    return prints


def plan_images(
    cluster: Cluster, host: Host, facts: HostFacts, local_image_ids: dict[str, str | None], context_digest: str,
    roles: tuple[ImageRole, ...] | None = None,
) -> list[ImagePlan]:
    """How each needed image gets onto a host. `local_image_ids` are the images built here (ship);
    `roles` overrides which images the host needs (this machine builds all three for shipping)."""
    source = cluster.spec.images.source
    prints = build_fingerprints(cluster, context_digest)
    base = facts.images.get(cluster.spec.images.base)
    plans: list[ImagePlan] = []
    rebuilt = False  # a rebuilt worker image means a rebuilt master image
    for role in roles or images_needed(cluster, host):
        tag = cluster.image_tag(role)
        present = facts.image_id(tag)
        if source == "pull":
            plans.append(ImagePlan(role, tag, "present", "already on the host") if present
                         else ImagePlan(role, tag, "pull", "not on the host"))
        elif source == "build" or (source == "ship" and host.is_local):
            image = facts.images.get(tag)
            same = (image is not None and image.labels.get(LABEL_CONTEXT) == prints[tag] and image.built_on(base)
                    and not (role == "master" and rebuilt))
            why = "built here, then shipped to the other hosts" if source == "ship" else "built on the host"
            if same:
                plans.append(ImagePlan(role, tag, "present", "built from the same context"))
            else:
                rebuilt = rebuilt or role == "worker"
                plans.append(ImagePlan(role, tag, "build", why if present is None else f"{why}: its context changed"))
        else:  # ship to a remote host
            local_id = local_image_ids.get(tag)
            if present and local_id and present == local_id:
                plans.append(ImagePlan(role, tag, "present", "same image already on the host"))
            else:
                plans.append(ImagePlan(role, tag, "ship", "copied from this machine over SSH"))
    return plans


# --------------------------------------------------------------------------- a host's whole plan


@dataclass
class HostPlan:
    host: Host
    layout: HostLayout
    env_files: list[EnvFile]
    images: list[ImagePlan]
    sync: SyncPlan | None  # None on `local`, where the project is used in place
    steps: list[Step] = field(default_factory=list)  # files, images, network, volumes, in order
    containers: list[ContainerChange] = field(default_factory=list)  # expected with today's image ids
    network: str | None = None
    volumes: list[str] = field(default_factory=list)
    stale_networks: list[str] = field(default_factory=list)  # of a host that is no longer the master

    @property
    def changes(self) -> list[ContainerChange]:
        return [c for c in self.containers if c.action != "keep"]

    @property
    def nothing_to_do(self) -> bool:
        return (not self.changes and all(i.action == "present" for i in self.images)
                and not (self.sync and self.sync.changed) and not self.stale_networks)


def image_steps(cluster: Cluster, images: list[ImagePlan], context_dir: str, prints: dict[str, str]) -> list[Step]:
    steps = []
    for image in images:
        if image.action == "build":
            steps.append(engine_step(f"build {image.tag} ({image.reason})",
                                     build_op(cluster, image.role, context_dir, prints[image.tag]),
                                     timeout=IMAGE_TIMEOUT))
        elif image.action == "pull":
            steps.append(engine_step(f"pull {image.tag}", PullImage(image.tag), timeout=IMAGE_TIMEOUT))
    return steps


def plan_host(
    cluster: Cluster, host: Host, facts: HostFacts, secrets: Secrets, master_address: str,
    *, local_image_ids: dict[str, str | None], context_dir: str, context_digest: str,
    sync: SyncPlan | None,
) -> HostPlan:
    """Everything `up` does on one host, in order. Shipped images are sent by the workflow itself
    (a stream from this machine's engine into the host's), after these steps' files."""
    layout = host_layout(cluster, host, facts)
    env_files = env_files_for(cluster, host, layout, secrets, master_address)
    images = plan_images(cluster, host, facts, local_image_ids, context_digest)
    plan = HostPlan(host=host, layout=layout, env_files=env_files, images=images, sync=None if host.is_local else sync)

    # Before images are built the expected ids are those on the host now (or shipped from here).
    plan.containers = container_changes(cluster, host, facts, layout, env_files,
                                        expected_image_ids(plan, facts, local_image_ids))
    files_record = Record("add_files", layout.project_dir)
    if plan.sync is not None and plan.sync.changed:
        plan.steps += sync_steps(plan.sync, files_record)
    elif plan.sync is not None:
        plan.steps.append(Step(f"project {plan.sync.root}: {plan.sync.describe()}", records=(files_record,)))
    # A kept container proves its env file is current: its fingerprint holds the file's digest.
    stale = {c.spec.env_file for c in plan.containers if c.spec is not None and c.action != "keep"}
    if env_files and not any(f.path in stale for f in env_files):
        plan.steps.append(Step(f"env files in {layout.env_dir}: up to date",
                               records=(Record("add_secret_dir", layout.env_dir),)))
    for env_file in env_files:
        if env_file.path in stale:
            plan.steps.append(shell_step(f"write {env_file.path} (mode 0600)",
                                         file_commands.write_private_file(env_file.path),
                                         Record("add_secret_dir", layout.env_dir), stdin=env_file.content.encode(),
                                         timeout=FILE_TIMEOUT))
    plan.steps += image_steps(cluster, images, context_dir, build_fingerprints(cluster, context_digest))

    if host.name == cluster.master_host.name:
        plan.network = network_name(cluster.name)
        plan.volumes = list(volume_names(cluster.name).values())
        if plan.network not in facts.networks:
            plan.steps.append(engine_step(f"create network {plan.network}", CreateNetwork(plan.network, cluster.name),
                                          Record("add_network", plan.network), timeout=ENGINE_TIMEOUT))
        else:
            plan.steps.append(Step(f"keep network {plan.network}", records=(Record("add_network", plan.network),)))
        for volume in plan.volumes:
            if volume not in facts.volumes:
                plan.steps.append(engine_step(f"create volume {volume}", CreateVolume(volume, cluster.name),
                                              Record("add_volume", volume), timeout=ENGINE_TIMEOUT))
            else:
                plan.steps.append(Step(f"keep volume {volume}", records=(Record("add_volume", volume),)))
    else:
        plan.stale_networks = list(facts.networks)
    return plan


def expected_image_ids(plan: HostPlan, facts: HostFacts, local_image_ids: dict[str, str | None]) -> dict[str, str | None]:
    ids = dict(facts.image_ids)
    for image in plan.images:
        if image.action == "ship":
            ids[image.tag] = local_image_ids.get(image.tag)
    return ids


def container_steps(cluster: Cluster, plan: HostPlan, facts: HostFacts, image_ids: dict[str, str | None]) -> list[Step]:
    """The container steps of a host once its images are there, then the networks it no longer needs."""
    plan.containers = container_changes(cluster, plan.host, facts, plan.layout, plan.env_files, image_ids)
    steps = change_steps(cluster, plan.containers, plan.env_files)
    for network in plan.stale_networks:
        steps.append(engine_step(f"remove network {network} (this host is no longer the master)",
                                 RemoveNetwork(network), Record("remove_network", network), timeout=ENGINE_TIMEOUT))
    return steps

