"""The containers a host should run, their fingerprints, and the steps that make the host match.

`desired_containers` is the full spec of every container the cluster file asks for on a host;
`fingerprint` hashes a spec with its image id and secret files, and `container_changes` compares
those with what runs there: create, replace, start, remove or keep, each a pure decision.
`change_steps` turns the changes into steps, each start right after the secret files it mounts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Literal

from ..commands.celery import CONTAINER_OUTPUT, CONTAINER_PROJECT
from ..commands.engine import (
    ContainerSpec,
    RemoveContainers,
    RunContainer,
    StartContainer,
    cluster_labels,
)
from ..config import Cluster, Host
from ..facts.containers import Container
from ..facts.host import HostFacts
from ..names import (
    ROLE_ORDER,
    celery_node_name,
    container_name,
    network_name,
    volume_names,
)
from ..runtime import BUILTIN_APP, TASKS_MODULE
from .addresses import (
    BROKER_INTERNAL_PORT,
    BROKER_TLS_PORT,
    FLOWER_INTERNAL_PORT,
    RESULTS_INTERNAL_PORT,
    RESULTS_TLS_PORT,
    flower_bind_address,
    flower_command_options,
)
from .hardening import hardening
from .layout import HostLayout
from .secret_files import SecretFile, secret_in_container, secrets_digest, secrets_dir
from .steps import ENGINE_TIMEOUT, Record, Step, engine_step


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
        return ["--app", cluster.spec.project.app, "worker", "--include", TASKS_MODULE]
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
    env = [("INFRA_CLUSTER", cluster.name), ("INFRA_ENV_FILE", secret_in_container("celery.env"))]
    if verify_with_ca:
        env.append(("INFRA_CA_FILE", secret_in_container("ca.crt")))
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
                                 secrets=secrets_dir(layout, role), **hardening(role), **settings)

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
                             f"--conf={secret_in_container('flowerconfig.py')}", *flower_command_options(cluster)),
                    environment=celery_environment(cluster, verify_with_ca=False),
                    ports=((ports.flower, FLOWER_INTERNAL_PORT),), bind_address=flower_bind_address(cluster),
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
                network="host", user=user, workdir=CONTAINER_PROJECT, gpus=gpus_option(group.gpus), **hardening("worker"),
            ))
    return specs


# Settings added to ContainerSpec after containers were first fingerprinted, with their unset value:
# left out of the hash while unset, so that a container which does not use them keeps its
# fingerprint (and is not replaced).
_LATER_SETTINGS = {"gpus": None, "bind_address": None, "cap_drop": (), "cap_add": (), "security_opt": (),
                   "read_only": False, "tmpfs": (), "pids_limit": None}


def fingerprint(spec: ContainerSpec, image_id: str | None, secrets_digest: str) -> str:
    """Hash of everything that, when changed, means the container must be replaced."""
    settings = {key: value for key, value in spec.__dict__.items()
                if not (key in _LATER_SETTINGS and value == _LATER_SETTINGS[key])}
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
    # The join endpoint and the relay are `infra volunteer`'s (plans/volunteer.py, plans/relay.py), not the
    # cluster file's: up leaves them alone.
    return diff_containers(desired, [c for c in facts.containers if c.role not in ("join", "relay")])


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
