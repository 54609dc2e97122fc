"""Which images a host needs and how it gets each: built there, shipped from here, or pulled.

A built image carries the hash of its build context, Dockerfile, arguments and base image
(`build_fingerprint`), so an unchanged image is never built again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Literal

from ..commands.engine import (
    BuildImage,
    PullImage,
    cluster_labels,
)
from ..config import Cluster, Host
from ..facts.host import HostFacts
from ..names import LABEL_CONTEXT
from .steps import IMAGE_TIMEOUT, Step, engine_step

ImageRole = Literal["worker", "master", "broker"]
IMAGE_ROLES: tuple[ImageRole, ...] = ("worker", "master", "broker")


DOCKERFILES = {"worker": "Dockerfile.celery", "master": "Dockerfile.celery", "broker": "Dockerfile.broker"}


# The stage each image is: the worker and master images are two targets of one Dockerfile, so
# the layers below the project's (base, Python, celery) are the same in both and travel once.
BUILD_TARGETS: dict[str, str | None] = {"worker": "worker", "master": "master", "broker": None}


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
