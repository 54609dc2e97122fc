"""`infra up`: start the cluster, or bring it in line with the cluster file."""

from __future__ import annotations

from pathlib import Path

import click

from .options import cluster_file_option, handle_errors, load_cluster_file, wait_option


@click.command()
@cluster_file_option
@click.option("--dry-run", is_flag=True, help="Print what would be copied, built, started and removed; change nothing.")
@wait_option
@handle_errors
def up(cluster_file: Path, dry_run: bool, wait: bool) -> None:
    """Start the cluster, or bring it in line with the cluster file.

    Connects to every host at once, copies the task project, makes the images available
    (built on each host, shipped from here over SSH, or pulled), starts RabbitMQ, the
    result backend, the Celery master, Flower and the workers, and waits until every
    worker answers. Running it again changes only what differs from the file.

    \b
    Example:
      infra up -f cluster.yaml --dry-run
      infra up -f cluster.yaml
    """
    from ..ui.reporter import Reporter
    from ..ui.summary import print_plan, print_summary
    from ..workflows.up import up as run_up

    cluster = load_cluster_file(cluster_file)
    reporter = Reporter()
    result = run_up(cluster, reporter, dry_run=dry_run, wait=wait)
    if dry_run:
        print_plan(cluster, result, reporter)
    else:
        print_summary(cluster, result, reporter)
