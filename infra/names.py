"""The one place that names what infra creates on hosts: labels, containers, networks, volumes.

Every container, network, volume and built image carries `infra.cluster=NAME`; containers
also carry their role, host and spec fingerprint. Pure functions of the cluster's name.
"""

from __future__ import annotations

LABEL_CLUSTER = "infra.cluster"
LABEL_ROLE = "infra.role"
LABEL_SPEC = "infra.spec"  # hash of a container's full settings and image id
LABEL_CONTEXT = "infra.context"  # on built images: hash of the build context and arguments

# The services on the master host, in start order (those the others connect to come first).
MASTER_ROLES = ("broker", "results", "master", "flower")
ROLE_ORDER = {"broker": 0, "results": 1, "master": 2, "flower": 3, "worker": 4}


def cluster_label(cluster: str) -> str:
    """The label filter that finds everything of a cluster: `infra.cluster=NAME`."""
    return f"{LABEL_CLUSTER}={cluster}"


def container_name(cluster: str, role: str, host: str | None = None, index: int | None = None) -> str:
    """`NAME-ROLE` for the master's services, `NAME-worker-HOST-N` for workers."""
    if role == "worker":
        if host is None or index is None:
            raise ValueError("a worker container is named after its host and index")
        return f"{cluster}-worker-{host}-{index}"
    return f"{cluster}-{role}"


def celery_node_name(container: str, host: str) -> str:
    """The Celery node name of a worker container: unique in the cluster and says where it runs."""
    return f"{container}@{host}"


def network_name(cluster: str) -> str:
    """The bridge network of the master's services."""
    return f"{cluster}-net"


def volume_names(cluster: str) -> dict[str, str]:
    """Data volumes of the master's services, by role."""
    return {"broker": f"{cluster}-broker-data", "results": f"{cluster}-results-data"}

# The Unix group whose members may use the Docker engine (bootstrap adds the SSH user to it).
DOCKER_GROUP = "docker"
IMAGE_ROLES = ("worker", "master", "broker")


def registry_repository(cluster: str, role: str) -> str:
    """An image's name in the registry that sends images by layers (`images.source: ship`)."""
    return f"infra/{cluster}-{role}"


def forwarded_registry_patterns(cluster: str) -> tuple[str, ...]:
    """What a host's engine may still call the cluster's images after a transfer cut short:
    `127.0.0.1:PORT/infra/NAME-ROLE:ID`, as it pulled them through a forwarded port (patterns
    for the engine's reference filter; `*` stands for any port)."""
    return tuple(f"127.0.0.1:*/{registry_repository(cluster, role)}" for role in IMAGE_ROLES)
