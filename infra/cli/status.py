"""`infra status`: whether the cluster runs as the cluster file says."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .options import cluster_file_option, handle_errors, load_cluster_file


@click.command()
@cluster_file_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (shape: see below) instead of tables.")
@handle_errors
def status(cluster_file: Path, as_json: bool) -> None:
    """Show whether the cluster runs as the cluster file says.

    Asks every host at once (a host that does not answer is reported within ssh.connect_timeout
    and does not hide the others): per host, reachable or not; per container, role, state,
    health, uptime and image; from Celery, the workers online with their active and processed
    task counts; from RabbitMQ, the depth of each queue; and the Flower URL.

    \b
    Exit codes (for monitoring):
      0  every expected host, container and worker is up
      3  something expected is missing, stopped, unhealthy or unreachable (listed)
      2  bad input: the cluster file or the local state cannot be read
    \b
    --json prints {"schema": "infra.status/1", "cluster", "checked_at", "ok", "exit_code",
    "problems": [str], "flower_url", "manifest", "hosts": [{name, address, roles,
    in_cluster_file, reachable, docker, error}], "containers": [{name, host, role, expected,
    state, health, started_at, uptime_seconds, image, restarts, exit_code}], "workers": [{name,
    host, container, expected, online, active, processed}], "queues": [{name, messages, ready,
    unacked, consumers, internal}], "celery": {answered, error}, "broker": {answered, error}}.
    Keys are only ever added within one schema.

    \b
    Example:
      infra status -f cluster.yaml
      infra status -f cluster.yaml --json | jq '.workers[] | select(.online | not) | .name'
    """
    from ..ui.status import render_json, render_table
    from ..workflows.status import gather_status

    cluster = load_cluster_file(cluster_file)
    result = gather_status(cluster)
    click.echo(render_json(result) if as_json else render_table(result))
    sys.exit(result.exit_code)
