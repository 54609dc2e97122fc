"""`infra logs`: the logs of the cluster's containers, from every host at once."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..errors import ConfigError
from .options import cluster_file_long_option, handle_errors, load_cluster_file


@click.command()
@cluster_file_long_option
@click.argument("target", required=False, metavar="[ROLE|HOST|CONTAINER]")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines from all hosts at once (Ctrl-C ends).")
@click.option("--since", metavar="WHEN", help="Only lines since WHEN: a duration (10m, 2h) or a time (2025-01-31T12:00).")
@click.option("-n", "--tail", default="100", show_default=True, metavar="N",
              help="Lines per container from the end of its log ('all' for everything).")
@click.option("-t", "--timestamps", is_flag=True, help="Show each line's time.")
@handle_errors
def logs(cluster_file: Path, target: str | None, follow: bool, since: str | None, tail: str, timestamps: bool) -> None:
    """Print the logs of the cluster's containers, each line prefixed with host and container.

    TARGET is a role (worker, broker, results, master, flower), a host name or a container
    name; without it, every container of the cluster. Without -f the lines of all the
    containers are merged in time order; with -f they are printed as they come, from all
    hosts at once. An unreachable host is reported on stderr and the others are shown
    (exit code 1). Here -f means --follow (as in `docker logs -f`): give the cluster file
    with --file.

    \b
    Example:
      infra logs --file cluster.yaml worker -n 20
      infra logs --file cluster.yaml pi1 -f
      infra logs --file cluster.yaml lab-broker --since 10m
    """
    from ..workflows.logs import show_logs

    # `infra logs -f cluster.yaml` reads as "follow the target cluster.yaml": say what was meant.
    if target and target.endswith((".yaml", ".yml")):
        raise ConfigError(f"logs: give the cluster file with --file {target} (here -f means --follow)")
    cluster = load_cluster_file(cluster_file)
    ok = show_logs(
        cluster, target, follow=follow, since=since, tail=tail, timestamps=timestamps,
        emit=lambda line: click.echo(line),
        warn=lambda message: click.echo(f"warning: {message}", err=True),
    )
    if not ok:
        sys.exit(1)
