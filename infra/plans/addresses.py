"""One rule each for where the master's services are reached: by workers, and by people here."""

from __future__ import annotations

import ipaddress

from ..config import Cluster, Host

# The ports of the master host's services inside the cluster's network (the published ports are
# the cluster file's `ports`).
BROKER_INTERNAL_PORT = 5672  # plain, on the cluster's own network only when TLS is on
BROKER_TLS_PORT = 5671
RESULTS_INTERNAL_PORT = 6379
RESULTS_TLS_PORT = 6380
FLOWER_INTERNAL_PORT = 5555
MANAGEMENT_INTERNAL_PORT = 15672


def master_address(cluster: Cluster, *, master_peer: str | None = None, towards_workers: str | None = None) -> str:
    """The address of the master's published ports.

    `roles.master.advertise_address` when the cluster file sets one. Otherwise, for a remote
    master, the address infra's own connection reached it at (`master_peer`), else its
    configured address; for a master on this machine, this machine's address on the route to
    the remote workers (`towards_workers`), else loopback.
    """
    master = cluster.master_host
    if cluster.spec.roles.master.advertise_address:
        return cluster.spec.roles.master.advertise_address
    if master.is_local:
        return towards_workers or "127.0.0.1"
    return master_peer or master.address


def broker_address_for(cluster: Cluster, host: Host, address: str) -> str:
    """The address a worker container on `host` (host networking) uses to reach the broker.

    On the master host itself: loopback, or the bind address when the ports listen on one address only.
    """
    if host.name != cluster.master_host.name:
        return address
    bind = cluster.spec.roles.master.bind_address
    if bind and not ipaddress.ip_address(bind).is_unspecified:
        return bind
    return "127.0.0.1"


LOOPBACK = "127.0.0.1"


def flower_bind_address(cluster: Cluster) -> str | None:
    """Where Flower's port is published on the master host: its loopback, unless the cluster file
    publishes it on purpose (`roles.master.publish_flower`), then where the other ports are.

    Docker's published ports bypass the host's firewall, and Flower's API can apply any task: on
    loopback only the master host itself reaches it (`infra flower` forwards it over SSH)."""
    master = cluster.spec.roles.master
    return master.bind_address if master.publish_flower else LOOPBACK


def flower_address_on_master(cluster: Cluster) -> str:
    """Where, on the master host itself, Flower's published port is reached (`infra flower`'s target)."""
    bind = flower_bind_address(cluster)
    if bind and not ipaddress.ip_address(bind).is_unspecified:
        return bind
    return LOOPBACK


def flower_command_options(cluster: Cluster) -> tuple[str, ...]:
    """Flower's options beyond its port and config file: read-only when published, so that its
    password opens no way to run tasks. On the command line (not in the config file, where an
    older Flower would ignore an option it lacks): a Flower without it then refuses to start."""
    return ("--read_only=True",) if cluster.spec.roles.master.publish_flower else ()


def in_url(address: str) -> str:
    """An address as the host part of a URL: an IPv6 address goes in brackets."""
    return f"[{address}]" if ":" in address else address


def flower_url(cluster: Cluster, address: str) -> str:
    """Flower's URL at the master's `address`, or on the master's loopback when it is not published."""
    if not cluster.spec.roles.master.publish_flower:
        address = LOOPBACK
    return f"{_flower_scheme(cluster)}://{in_url(address)}:{cluster.spec.ports.flower}"


def forwarded_flower_url(cluster: Cluster, local_port: int) -> str:
    """Flower's URL here, through `infra flower`'s forward (the certificate names 127.0.0.1 too)."""
    return f"{_flower_scheme(cluster)}://{LOOPBACK}:{local_port}"


def _flower_scheme(cluster: Cluster) -> str:
    return "https" if cluster.spec.tls else "http"


def broker_url_hidden(cluster: Cluster, user: str, address: str) -> str:
    scheme = "amqps" if cluster.spec.tls else "amqp"
    return f"{scheme}://{user}:****@{in_url(address)}:{cluster.spec.ports.broker}/{cluster.name}"
