"""What `infra up` does on each host, decided from the cluster file and the host's facts alone.

`plan_host` returns the host's whole plan: the project files to send and delete, the secret files,
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
from ..commands.celery import CONTAINER_OUTPUT, CONTAINER_PROJECT
from ..commands.engine import (
    BuildImage,
    ContainerSpec,
    CreateNetwork,
    CreateVolume,
    PullImage,
    RemoveContainers,
    RemoveNetwork,
    SECRETS_MOUNT,
    RunContainer,
    StartContainer,
    cluster_labels,
)
from ..config import Cluster, Host
from ..facts.containers import Container
from ..facts.files import OUTPUT_FOLDER
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
from ..tls import ServerIdentity
from .addresses import broker_address_for, in_url
from .steps import Record, Step, engine_step, shell_step
from .sync import SyncPlan, sync_steps

ImageRole = Literal["worker", "master", "broker"]
IMAGE_ROLES: tuple[ImageRole, ...] = ("worker", "master", "broker")
DOCKERFILES = {"worker": "Dockerfile.celery", "master": "Dockerfile.celery", "broker": "Dockerfile.broker"}
# The stage each image is: the worker and master images are two targets of one Dockerfile, so
# the layers below the project's (base, Python, celery) are the same in both and travel once.
BUILD_TARGETS: dict[str, str | None] = {"worker": "worker", "master": "master", "broker": None}

BROKER_INTERNAL_PORT = 5672  # plain, on the cluster's own network only when TLS is on
BROKER_TLS_PORT = 5671
RESULTS_INTERNAL_PORT = 6379
RESULTS_TLS_PORT = 6380
FLOWER_INTERNAL_PORT = 5555
MANAGEMENT_INTERNAL_PORT = 15672

# Bounds of the steps (seconds): builds and image transfers can be long, the rest is quick.
FILE_TIMEOUT = 600
IMAGE_TIMEOUT = 3600
ENGINE_TIMEOUT = 120


# --------------------------------------------------------------------------- layout on a host


@dataclass(frozen=True)
class HostLayout:
    """Absolute paths of what infra puts on one host.

    On a remote host everything lives in the cluster's own folder, `REMOTE_PATH/NAME` (`root`),
    which holds a marker file naming the cluster: two clusters, or two projects of the same
    folder name, never share a folder, and `sync-files` / `clean --files` touch only a folder
    whose marker names their cluster. On `local` the project is used in place.
    """

    root: str  # the cluster's folder on the host, REMOTE_PATH/NAME (the state dir on `local`)
    project_dir: str  # the project, bind-mounted read-only at /project
    env_dir: str  # 0700 folder of the secret files
    output_dir: str  # where jobs write, bind-mounted read-write at /project/output

    def env_file(self, name: str) -> str:
        return posixpath.join(self.env_dir, f"{name}.env")

    @property
    def marker(self) -> str:
        """The file naming the cluster that owns `root` (remote hosts)."""
        return posixpath.join(self.root, file_commands.MARKER_FILE)

    @property
    def mount_point(self) -> str:
        """`output` in the project: where the output folder is mounted, so it must exist."""
        return posixpath.join(self.project_dir, OUTPUT_FOLDER)


# The cluster folder's own entries: a project folder of one of these names is copied to `project`.
_CLUSTER_FOLDER_ENTRIES = (OUTPUT_FOLDER, ".infra", file_commands.MARKER_FILE)


def host_layout(cluster: Cluster, host: Host, facts: HostFacts) -> HostLayout:
    if host.is_local:
        # The project is used where it is, its output folder too; secret files live in the state dir.
        state = str(cluster.state_dir)
        return HostLayout(root=state, project_dir=str(cluster.project_dir), env_dir=posixpath.join(state, "env"),
                          output_dir=str(cluster.project_dir / OUTPUT_FOLDER))
    remote = cluster.spec.project.remote_path.rstrip("/")
    if remote.startswith("~/"):
        remote = remote[2:]
    base = remote if remote.startswith("/") else posixpath.join(facts.home, remote)
    root = posixpath.join(base, cluster.name)
    name = cluster.project_dir.name
    return HostLayout(
        root=root,
        project_dir=posixpath.join(root, "project" if name in _CLUSTER_FOLDER_ENTRIES else name),
        env_dir=posixpath.join(root, ".infra"),
        output_dir=posixpath.join(root, OUTPUT_FOLDER),
    )


# --------------------------------------------------------------------------- secret files


@dataclass(frozen=True)
class SecretFile:
    """A file of secrets or settings for the containers of one role, written 0400 on the host.

    Each role has a folder of its own (`secrets_dir`), mounted read-only at SECRETS_MOUNT in its
    containers alone: the broker never sees Flower's password, a worker never sees the broker's
    administrator. Nothing secret is in a container's environment, so `docker inspect` shows none.
    """

    role: str  # broker, results, master, flower, worker
    name: str  # the file's name in the folder
    path: str
    content: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.content.encode()).hexdigest()[:16]


def secrets_dir(layout: HostLayout, role: str) -> str:
    return posixpath.join(layout.env_dir, role)


def _in_secrets(name: str) -> str:
    return posixpath.join(SECRETS_MOUNT, name)


def _render_env(values: dict[str, str]) -> str:
    # Read by infra_runtime.boot: one KEY=value per line, taken literally (no quotes, no expansion).
    return "".join(f"{key}={value}\n" for key, value in values.items())


def rabbitmq_password_hash(password: str) -> str:
    """RabbitMQ's stored form of a password (rabbit_password_hashing_sha256).

    base64(salt + sha256(salt + password)). The broker imports it at every start, so the
    password in the secrets file wins even over an older data volume. The salt is derived
    from the password, so the file (and the container's fingerprint) stays stable.
    """
    salt = hashlib.sha256(b"infra-broker-salt:" + password.encode()).digest()[:4]
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def broker_vhost(cluster: Cluster) -> str:
    """The cluster's virtual host on the broker: the only one its workers may use."""
    return cluster.name


def broker_definitions(cluster: Cluster, secrets: Secrets) -> str:
    """RabbitMQ definitions imported at every start: the two users, the vhost, their rights.

    The administrator (Flower's queue view, on the master host only) and the workers' user, which
    has no management tag and rights on the cluster's vhost alone. Passwords only as salted hashes.
    """
    vhost = broker_vhost(cluster)
    users = [(secrets.broker_user, secrets.broker_password, ["administrator"]),
             (secrets.worker_user, secrets.worker_password, [])]
    return json.dumps({
        "users": [{"name": name, "password_hash": rabbitmq_password_hash(password),
                   "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": tags}
                  for name, password, tags in users],
        "vhosts": [{"name": vhost}],
        "permissions": [{"user": name, "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"}
                        for name, _, _ in users],
    }, indent=2) + "\n"


def broker_config(cluster: Cluster) -> str:
    """rabbitmq.conf of the broker: its whole configuration (the image has none of its own)."""
    lines = [
        "# Written by infra up.",
        f"listeners.tcp.default = {BROKER_INTERNAL_PORT}",
        f"management.tcp.port = {MANAGEMENT_INTERNAL_PORT}",
        f"load_definitions = {_in_secrets('definitions.json')}",
        # With definitions to import the broker makes no default user; `guest` would be loopback-only.
        "loopback_users.guest = true",
        # Logs go to the container's output (docker logs), not to files.
        "log.console = true",
        "log.console.level = info",
        "log.console.use_colors = off",
        "log.file = false",
        # A task acknowledged late (a sweep's run, acked when it ends) may take as long as it needs:
        # RabbitMQ's default would close the channel of a run longer than 30 minutes. 7 days, in ms.
        "consumer_timeout = 604800000",
    ]
    if cluster.spec.tls:
        lines += [
            f"listeners.ssl.default = {BROKER_TLS_PORT}",
            f"ssl_options.cacertfile = {_in_secrets('ca.crt')}",
            f"ssl_options.certfile = {_in_secrets('server.crt')}",
            f"ssl_options.keyfile = {_in_secrets('server.key')}",
            # Clients prove who they are with a password; the server proves itself with the certificate.
            "ssl_options.verify = verify_none",
            "ssl_options.fail_if_no_peer_cert = false",
            "ssl_options.versions.1 = tlsv1.3",
            "ssl_options.versions.2 = tlsv1.2",
        ]
    return "\n".join(lines) + "\n"


def _redis_quoted(text: str) -> str:
    # Inside double quotes redis reads \\ and \" as escapes.
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def results_config(cluster: Cluster, secrets: Secrets) -> str:
    """redis.conf of the result backend: plain on the cluster's network, TLS on the published port."""
    lines = [
        "# Written by infra up.",
        "bind 0.0.0.0",
        f"port {RESULTS_INTERNAL_PORT}",
        # A password is always required; protected mode would only refuse the other containers.
        "protected-mode no",
        f"requirepass {_redis_quoted(secrets.results_password)}",
        "dir /data",
        "appendonly yes",
        "save 60 1000",
        "daemonize no",
        'logfile ""',
    ]
    if cluster.spec.tls:
        lines += [
            f"tls-port {RESULTS_TLS_PORT}",
            f"tls-cert-file {_in_secrets('server.crt')}",
            f"tls-key-file {_in_secrets('server.key')}",
            f"tls-ca-cert-file {_in_secrets('ca.crt')}",
            "tls-auth-clients no",
            "tls-protocols \"TLSv1.2 TLSv1.3\"",
        ]
    return "\n".join(lines) + "\n"


def flower_config(cluster: Cluster, secrets: Secrets) -> str:
    """Flower's configuration file (Python, read with --conf): its login and the broker's API."""
    settings: dict[str, object] = {
        "basic_auth": [f"{secrets.flower_user}:{secrets.flower_password}"],
        "broker_api": (f"http://{secrets.broker_user}:{secrets.broker_password}"
                       f"@broker:{MANAGEMENT_INTERNAL_PORT}/api/"),
    }
    if cluster.spec.tls:
        settings["certfile"] = _in_secrets("server.crt")
        settings["keyfile"] = _in_secrets("server.key")
    # repr() of str and list values is Python literal syntax: the file cannot run anything else.
    return "# Written by infra up.\n" + "".join(f"{key} = {value!r}\n" for key, value in settings.items())


def celery_urls(cluster: Cluster, secrets: Secrets, address: str, *, internal: bool) -> dict[str, str]:
    """Broker and result backend URLs, with the workers' user: on the master's own network
    (`internal`, plain: it never leaves the host) or at the published ports (TLS unless `tls: false`)."""
    user = f"{secrets.worker_user}:{secrets.worker_password}"
    vhost = broker_vhost(cluster)
    if internal:
        return {
            "CELERY_BROKER_URL": f"amqp://{user}@broker:{BROKER_INTERNAL_PORT}/{vhost}",
            "CELERY_RESULT_BACKEND": f"redis://:{secrets.results_password}@results:{RESULTS_INTERNAL_PORT}/0",
        }
    host = in_url(address)
    if not cluster.spec.tls:
        return {
            "CELERY_BROKER_URL": f"amqp://{user}@{host}:{cluster.spec.ports.broker}/{vhost}",
            "CELERY_RESULT_BACKEND": f"redis://:{secrets.results_password}@{host}:{cluster.spec.ports.results}/0",
        }
    ca = _in_secrets("ca.crt")
    return {
        "CELERY_BROKER_URL": f"amqps://{user}@{host}:{cluster.spec.ports.broker}/{vhost}",
        "CELERY_RESULT_BACKEND": (f"rediss://:{secrets.results_password}@{host}:{cluster.spec.ports.results}/0"
                                  f"?ssl_cert_reqs=required&ssl_ca_certs={ca}"),
    }


def secret_files_for(cluster: Cluster, host: Host, layout: HostLayout, secrets: Secrets, master_address: str,
                     identity: ServerIdentity | None) -> list[SecretFile]:
    """Every secret file of a host, by role. `identity` (the master's certificate) when TLS is on."""
    if cluster.spec.tls and identity is None:
        raise ValueError("a cluster with TLS needs the master's certificate to plan its secret files")
    files: list[SecretFile] = []

    def add(role: str, name: str, content: str) -> None:
        files.append(SecretFile(role, name, posixpath.join(secrets_dir(layout, role), name), content))

    def add_identity(role: str) -> None:
        if identity is not None:
            add(role, "ca.crt", identity.ca_certificate)
            add(role, "server.crt", identity.certificate + identity.ca_certificate)
            add(role, "server.key", identity.key)

    common = {"INFRA_CLUSTER": cluster.name}
    if host.name == cluster.master_host.name:
        internal = _render_env({**common, **celery_urls(cluster, secrets, "", internal=True)})
        add("broker", "rabbitmq.conf", broker_config(cluster))
        add("broker", "definitions.json", broker_definitions(cluster, secrets))
        add_identity("broker")
        add("results", "redis.conf", results_config(cluster, secrets))
        add_identity("results")
        add("master", "celery.env", internal)
        add("flower", "celery.env", internal)
        add("flower", "flowerconfig.py", flower_config(cluster, secrets))
        add_identity("flower")
    if host.name in cluster.worker_hosts():
        address = broker_address_for(cluster, host, master_address)
        add("worker", "celery.env", _render_env({**common, **celery_urls(cluster, secrets, address, internal=False)}))
        if identity is not None:
            add("worker", "ca.crt", identity.ca_certificate)
    return files


def secrets_digest(files: list[SecretFile], folder: str | None) -> str:
    """One digest of the files of a secrets folder: part of its containers' fingerprints."""
    if folder is None:
        return ""
    inside = sorted((f.name, f.digest) for f in files if posixpath.dirname(f.path) == folder)
    return hashlib.sha256(json.dumps(inside).encode()).hexdigest()[:16]


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


def celery_environment(cluster: Cluster, *, verify_with_ca: bool) -> tuple[tuple[str, str], ...]:
    """What a Celery container's environment holds: never a secret, only where the secrets are.

    infra_runtime.boot (run by every Python of the image) reads INFRA_ENV_FILE into the
    environment of the process; INFRA_CA_FILE makes Celery's TLS to the broker trust that CA alone.
    """
    env = [("INFRA_CLUSTER", cluster.name), ("INFRA_ENV_FILE", _in_secrets("celery.env"))]
    if verify_with_ca:
        env.append(("INFRA_CA_FILE", _in_secrets("ca.crt")))
    return tuple(env)


def desired_containers(cluster: Cluster, host: Host, facts: HostFacts, layout: HostLayout) -> list[ContainerSpec]:
    app = cluster.celery_app
    ports = cluster.spec.ports
    tls = cluster.spec.tls
    bind = cluster.spec.roles.master.bind_address
    # Every container runs as the SSH user: it owns the 0400 secret files, and files written in
    # the output folder are that user's on the host.
    user = f"{facts.uid}:{facts.gid}"
    project = (layout.project_dir, CONTAINER_PROJECT, "ro")
    specs: list[ContainerSpec] = []
    if host.name == cluster.master_host.name:
        net = network_name(cluster.name)
        volumes = volume_names(cluster.name)
        master_image = cluster.image_tag("master")

        def service(role: str, **settings) -> ContainerSpec:
            name = container_name(cluster.name, role)
            return ContainerSpec(name=name, role=role, host=host.name, network=net, hostname=name, user=user,
                                 secrets=secrets_dir(layout, role), **settings)

        specs += [
            service("broker", image=cluster.image_tag("broker"),
                    ports=((ports.broker, BROKER_TLS_PORT if tls else BROKER_INTERNAL_PORT),), bind_address=bind,
                    volumes=((volumes["broker"], "/var/lib/rabbitmq", "rw"),), network_alias="broker"),
            service("results", image=master_image, command=("infra-results",),
                    ports=((ports.results, RESULTS_TLS_PORT if tls else RESULTS_INTERNAL_PORT),), bind_address=bind,
                    volumes=((volumes["results"], "/data", "rw"),), network_alias="results"),
            service("master", image=master_image, command=("infra-idle",),
                    environment=celery_environment(cluster, verify_with_ca=False),
                    volumes=(project, (layout.output_dir, CONTAINER_OUTPUT, "rw")), workdir=CONTAINER_PROJECT),
            service("flower", image=master_image,
                    command=("celery", "--app", app, "flower", f"--port={FLOWER_INTERNAL_PORT}",
                             f"--conf={_in_secrets('flowerconfig.py')}"),
                    environment=celery_environment(cluster, verify_with_ca=False),
                    ports=((ports.flower, FLOWER_INTERNAL_PORT),), bind_address=bind,
                    volumes=(project,), workdir=CONTAINER_PROJECT),
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
                       "--loglevel", group.loglevel]
            # Without events, the app's own worker_send_task_events is overridden too (Celery's
            # `key=value` arguments), so that `events: false` means none whatever the app says.
            command += ["--task-events"] if group.events else ["worker_send_task_events=false"]
            if group.concurrency:
                command += ["--concurrency", str(group.concurrency)]
            specs.append(ContainerSpec(
                name=name, role="worker", host=host.name,
                image=cluster.image_tag("worker"), command=tuple(command),
                environment=celery_environment(cluster, verify_with_ca=tls),
                secrets=secrets_dir(layout, "worker"), volumes=(project,),
                network="host", user=user, workdir=CONTAINER_PROJECT, gpus=gpus_option(group.gpus),
            ))
    return specs


# Settings added to ContainerSpec after containers were first fingerprinted: left out of the hash
# while unset, so that a container which does not use them keeps its fingerprint (and is not replaced).
_LATER_SETTINGS = ("gpus", "bind_address")


def fingerprint(spec: ContainerSpec, image_id: str | None, secrets_digest: str) -> str:
    """Hash of everything that, when changed, means the container must be replaced."""
    settings = {key: value for key, value in spec.__dict__.items() if not (key in _LATER_SETTINGS and value is None)}
    payload = json.dumps(
        {"spec": settings, "image_id": image_id or spec.image, "secrets": secrets_digest},
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
    secret_files: list[SecretFile], image_ids: dict[str, str | None],
) -> list[ContainerChange]:
    """The container diff of one host, given the image ids it will run."""
    desired = [
        (spec, fingerprint(spec, image_ids.get(spec.image), secrets_digest(secret_files, spec.secrets)))
        for spec in desired_containers(cluster, host, facts, layout)
    ]
    # The join endpoint is `infra volunteer`'s (infra/plans/join.py), not the cluster file's: up leaves it alone.
    return diff_containers(desired, [c for c in facts.containers if c.role != "join"])


def change_steps(cluster: Cluster, changes: list[ContainerChange],
                 secret_writes: dict[str, list[Step]] | None = None) -> list[Step]:
    """Removals first (a replaced container frees its name and ports), then starts in role order,
    each right after the writes of the secret files it mounts (`secret_writes`, by folder) that
    no container before it needed. The broker, first in role order, thus starts as early as it can."""
    pending = {folder: list(writes) for folder, writes in (secret_writes or {}).items()}
    starting = {change.spec.secrets for change in changes
                if change.action in ("create", "replace", "start") and change.spec is not None}
    steps: list[Step] = []
    for change in changes:
        if change.action in ("remove", "replace"):
            verb = "remove" if change.action == "remove" else "remove the old"
            steps.append(engine_step(f"{verb} {change.name} ({change.reason})", RemoveContainers((change.name,)),
                                     Record("remove_container", change.name), timeout=ENGINE_TIMEOUT))
    for folder in [folder for folder in pending if folder not in starting]:
        steps += pending.pop(folder)  # no container of this plan mounts it now: written all the same
    for change in changes:
        record = Record("add_container", change.name, change.role)
        if change.action in ("create", "replace", "start") and change.spec is not None:
            steps += pending.pop(change.spec.secrets, [])
        if change.action in ("create", "replace"):
            spec = change.spec
            labels = cluster_labels(cluster.name, role=spec.role, host=spec.host, spec=change.fingerprint)
            op = RunContainer(spec, labels)
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
    """Images a host must have. The master host of a cluster that builds its images has the worker
    image too: it serves that image to volunteers (`infra volunteer`)."""
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
    return (("BASE_IMAGE", cluster.spec.images.base),)


def build_op(cluster: Cluster, role: ImageRole, context_dir: str, built_from: str) -> BuildImage:
    return BuildImage(
        tag=cluster.image_tag(role), context_dir=context_dir, dockerfile=DOCKERFILES[role],
        target=BUILD_TARGETS[role], build_args=build_args(cluster, role),
        labels=cluster_labels(cluster.name, context=built_from),
    )


def build_fingerprints(cluster: Cluster, context_digest: str) -> dict[str, str]:
    """{tag: fingerprint} of each image as built from this context (each stands on the base image)."""
    return {cluster.image_tag(role): build_fingerprint(context_digest, role, build_args(cluster, role),
                                                       cluster.spec.images.base)
            for role in IMAGE_ROLES}


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
    for role in roles or images_needed(cluster, host):
        tag = cluster.image_tag(role)
        present = facts.image_id(tag)
        if source == "pull":
            plans.append(ImagePlan(role, tag, "present", "already on the host") if present
                         else ImagePlan(role, tag, "pull", "not on the host"))
        elif source == "build" or (source == "ship" and host.is_local):
            image = facts.images.get(tag)
            same = image is not None and image.labels.get(LABEL_CONTEXT) == prints[tag] and image.built_on(base)
            why = "built here, then shipped to the other hosts" if source == "ship" else "built on the host"
            if same:
                plans.append(ImagePlan(role, tag, "present", "built from the same context"))
            else:
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
    secret_files: list[SecretFile]
    images: list[ImagePlan]
    sync: SyncPlan | None  # None on `local`, where the project is used in place
    steps: list[Step] = field(default_factory=list)  # project files, images, network, volumes, in order
    containers: list[ContainerChange] = field(default_factory=list)  # expected with today's image ids
    # Secret files to write, by folder: each folder right before the first container that mounts it
    # starts (`change_steps`), so the broker starts before the other roles' files are written.
    secret_writes: dict[str, list[Step]] = field(default_factory=dict)
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
    sync: SyncPlan | None, identity: ServerIdentity | None = None,
) -> HostPlan:
    """Everything `up` does on one host, in order. Shipped images are sent by the workflow itself
    (a stream from this machine's engine into the host's), after these steps' files.
    `identity` is the master's TLS certificate (needed when the cluster file leaves `tls` on)."""
    layout = host_layout(cluster, host, facts)
    secret_files = secret_files_for(cluster, host, layout, secrets, master_address, identity)
    images = plan_images(cluster, host, facts, local_image_ids, context_digest)
    plan = HostPlan(host=host, layout=layout, secret_files=secret_files, images=images,
                    sync=None if host.is_local else sync)

    # Before images are built the expected ids are those on the host now (or shipped from here).
    plan.containers = container_changes(cluster, host, facts, layout, secret_files,
                                        expected_image_ids(plan, facts, local_image_ids))
    files_record = Record("add_files", layout.project_dir)
    if plan.sync is not None and plan.sync.changed:
        plan.steps += sync_steps(plan.sync, files_record)
    elif plan.sync is not None:
        plan.steps.append(Step(f"project {plan.sync.root}: {plan.sync.describe()}", records=(files_record,)))
    # A kept container proves its secret files are current: its fingerprint holds their digest.
    stale = {c.spec.secrets for c in plan.containers if c.spec is not None and c.action != "keep"}
    if secret_files and not any(posixpath.dirname(f.path) in stale for f in secret_files):
        plan.steps.append(Step(f"secret files in {layout.env_dir}: up to date",
                               records=(Record("add_secret_dir", layout.env_dir),)))
    for secret_file in secret_files:
        folder = posixpath.dirname(secret_file.path)
        if folder in stale:
            plan.secret_writes.setdefault(folder, []).append(
                shell_step(f"write {secret_file.path} (mode 0400)", file_commands.write_private_file(secret_file.path),
                           Record("add_secret_dir", layout.env_dir), stdin=secret_file.content.encode(),
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
    plan.containers = container_changes(cluster, plan.host, facts, plan.layout, plan.secret_files, image_ids)
    steps = change_steps(cluster, plan.containers, plan.secret_writes)
    for network in plan.stale_networks:
        steps.append(engine_step(f"remove network {network} (this host is no longer the master)",
                                 RemoveNetwork(network), Record("remove_network", network), timeout=ENGINE_TIMEOUT))
    return steps

