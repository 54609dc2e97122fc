"""`infra check`: validate a cluster file without contacting any host."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from .options import cluster_file_option, handle_errors, load_cluster_file

if TYPE_CHECKING:
    from ..config import Cluster


@click.command()
@cluster_file_option
@handle_errors
def check(cluster_file: Path) -> None:
    """Validate a cluster file completely, without contacting any host.

    Checks every key and value, that the hosts named in roles exist, that ports do not
    collide and that the project folder, key files and wheelhouse are there. No SSH, no
    Docker, no network. A valid file gets one line and exit code 0; a mistake gets one
    `error:` line naming the key and the line, and exit code 2.

    \b
    Example:
      infra check -f cluster.yaml
      infra check -f config.example.yaml
    """
    cluster = load_cluster_file(cluster_file)
    click.echo(validity_line(cluster_file, cluster))


def validity_line(cluster_file: Path, cluster: Cluster) -> str:
    """`cluster.yaml: cluster lab is valid (3 hosts, 4 worker containers)`; hosts are those with a role."""
    containers = sum(group.containers for group in cluster.spec.roles.workers)
    hosts = len(cluster.used_hosts())
    return (f"{cluster_file}: cluster {cluster.name} is valid "
            f"({_counted(hosts, 'host')}, {_counted(containers, 'worker container')})")


def _counted(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"
