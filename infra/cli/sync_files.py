"""`infra sync-files`: bring the task project on the hosts up to date, restart what needs it."""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

import click

from .options import (
    cluster_file_option,
    end_at_once,
    handle_errors,
    hosts_option,
    load_cluster_file,
    select_hosts,
    wait_option,
)


@click.command("sync-files")
@cluster_file_option
@hosts_option
@click.option("--no-restart", is_flag=True, help="Only copy; leave the workers running their old code.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON (one object per host).")
@wait_option
@handle_errors
def sync_files(cluster_file: Path, hosts_option: str | None, no_restart: bool, as_json: bool, wait: bool) -> None:
    """Bring the task project on the hosts up to date, then restart the workers that need it.

    Compares contents (sha256), not timestamps, and sends only the files that differ, in one
    tar stream per host (a file whose status, inode, size and times, is as at the last run is
    not hashed again, here or on the hosts); files deleted locally are deleted in the project's folder on the
    hosts. Ignored: .git, __pycache__, virtual environments, output/ and the patterns of the
    project's .infraignore (gitignore syntax). Then restarts (`docker restart`) the workers of
    the hosts whose code changed, so new task code is live without rebuilding images, and
    waits until they answer again; hosts whose workers already run this code are not
    restarted. On `local` the project is used in place: its workers restart when the project
    changed since they started. The master container is not restarted: every `infra run`
    starts a new Python process there, which reads the current files.

    \b
    Reports per host the files and bytes sent. Exit code 1 if a host failed or restarted
    workers did not answer again, 2 for bad input.

    \b
    Example:
      infra sync-files -f cluster.yaml
      infra sync-files -f cluster.yaml --hosts gpu-box,pi1 --no-restart
    """
    # A short-lived command: the cyclic garbage collector only slows it down. It runs over and
    # over while the modules load (pydantic, paramiko, cryptography: about a third of the import
    # time; more load on a helper thread while the hosts answer) and would free nothing that
    # matters: what the sync makes in cycles is a few objects per SSH channel, a few hundred
    # even over a restart's wait of minutes.
    collecting = gc.isenabled()
    gc.disable()
    try:
        _sync_files(cluster_file, hosts_option, no_restart, as_json, wait)
    finally:
        if collecting:
            gc.enable()  # as it was, for a caller in the same process (tests)


def _sync_files(cluster_file: Path, hosts_option: str | None, no_restart: bool, as_json: bool, wait: bool) -> None:
    from ..ui.reporter import Reporter
    from ..workflows.sync_files import sync_files as run_sync

    cluster = load_cluster_file(cluster_file)
    hosts = select_hosts(cluster, hosts_option)
    reporter = Reporter(quiet=as_json)
    result = run_sync(cluster, reporter, hosts=hosts, restart=not no_restart, wait=wait)
    end_at_once()  # its threads are joined, its connections and the cluster's lock closed
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    if result.failed:
        sys.exit(1)
