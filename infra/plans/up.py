"""What `infra up` does on each host, decided from the cluster file and the host's facts alone.

`plan_host` returns the host's whole plan: the project files to send and delete, the images to
build, ship or pull, the network and volumes — as ordered steps — the secret files to write, and
the container changes expected with the image ids known now. Containers depend on the ids of the
images they run, which a build only tells at the end: `container_steps` is the pure function
of those ids that the workflow calls once the images are there. Nothing here talks to a host.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

from ..commands.engine import (
    CreateNetwork,
    CreateVolume,
    RemoveNetwork,
)
from ..config import Cluster, Host
from ..facts.host import HostFacts
from ..names import (
    network_name,
    volume_names,
)
from ..state.credentials import Secrets
from ..state.tls import ServerIdentity
from .containers import ContainerChange, change_steps, container_changes
from .images import ImagePlan, build_fingerprints, image_steps, plan_images
from .layout import HostLayout, host_layout
from .secret_files import SecretFile, secret_file_step, secret_files_for
from .steps import ENGINE_TIMEOUT, Record, Step, engine_step
from .sync import SyncPlan, sync_steps


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
                secret_file_step(secret_file, Record("add_secret_dir", layout.env_dir)))
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

