"""The relay's container (`NAME-relay`, role `relay`): the trusted side of volunteers' follow-ups.

Started with the join endpoint by `infra volunteer add`, since only volunteers' tasks need it
(runtime/relay.py says what it does). On the master host, in the master image, on the cluster's
network with the master container's own settings (its folder of secrets: celery.env with the
internal, plain broker and result backend URLs); no port. `up` leaves it alone, as it leaves the
endpoint; `clean` removes it with everything that carries the cluster's label.
"""

from __future__ import annotations

from ..commands.celery import CONTAINER_PROJECT
from ..commands.engine import ContainerSpec
from ..config import Cluster
from ..facts.host import HostFacts
from ..names import container_name, network_name
from ..runtime import RELAY_MODULE
from .containers import celery_environment
from .hardening import hardening
from .layout import HostLayout
from .secret_files import secrets_dir

ROLE = "relay"


def relay_name(cluster: str) -> str:
    return container_name(cluster, ROLE)


def relay_container(cluster: Cluster, layout: HostLayout, facts: HostFacts) -> ContainerSpec:
    return ContainerSpec(
        name=relay_name(cluster.name), role=ROLE, host=cluster.master_host.name,
        image=cluster.image_tag("master"), command=("python", "-m", RELAY_MODULE, cluster.celery_app),
        environment=celery_environment(cluster, verify_with_ca=False), secrets=secrets_dir(layout, "master"),
        volumes=((layout.project_dir, CONTAINER_PROJECT, "ro"),), network=network_name(cluster.name),
        hostname=relay_name(cluster.name), user=f"{facts.uid}:{facts.gid}", workdir=CONTAINER_PROJECT,
        **hardening(ROLE),
    )
