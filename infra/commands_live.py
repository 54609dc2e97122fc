"""`infra status`, `infra sync-files`, `infra logs`, `infra run`: living with a running cluster.

Thin Click commands over `infra.live` (workflows) and `infra.status` (model and renderings);
`infra.cli` calls `register(main)` when this module exists.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .cli import DEFAULT_CLUSTER_FILE, cluster_file_option, handle_errors, load


def cluster_file_long_option(func):
    """`--file` without `-f`, which `infra logs` uses for --follow (as `docker logs -f` does)."""
    return click.option(
        "--file", "cluster_file", default=DEFAULT_CLUSTER_FILE, show_default=True,
        type=click.Path(dir_okay=False, path_type=Path), help="The cluster file (YAML).",
    )(func)


def register(main: click.Group) -> None:
    for command in (status, sync_files, logs, run):
        main.add_command(command)


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
    from .live import gather_status
    from .status import render_json, render_table

    cluster = load(cluster_file)
    result = gather_status(cluster)
    click.echo(render_json(result) if as_json else render_table(result))
    sys.exit(result.exit_code)


@click.command("sync-files")
@cluster_file_option
@click.option("--hosts", "hosts_option", metavar="H1,H2", help="Only these hosts (default: every host of the cluster).")
@click.option("--no-restart", is_flag=True, help="Only copy; leave the workers running their old code.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON (one object per host).")
@handle_errors
def sync_files(cluster_file: Path, hosts_option: str | None, no_restart: bool, as_json: bool) -> None:
    """Bring the task project on the hosts up to date, then restart the workers that need it.

    Compares contents (sha256), not timestamps, and sends only the files that differ, in one
    tar stream per host; files deleted locally are deleted in the project's folder on the
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
    from .live import sync_files as run_sync
    from .report import Reporter

    cluster = load(cluster_file)
    reporter = Reporter(quiet=as_json)
    result = run_sync(cluster, reporter, hosts_option=hosts_option, restart=not no_restart)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    if result.failed:
        sys.exit(1)


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
    from .errors import ConfigError
    from .live import show_logs

    if target and target.endswith((".yaml", ".yml")):
        raise ConfigError(f"logs: give the cluster file with --file {target} (here -f means --follow)")
    cluster = load(cluster_file)
    ok = show_logs(
        cluster, target, follow=follow, since=since, tail=tail, timestamps=timestamps,
        emit=lambda line: click.echo(line),
        warn=lambda message: click.echo(f"warning: {message}", err=True),
    )
    if not ok:
        sys.exit(1)


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@cluster_file_option
@click.argument("script")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@handle_errors
def run(cluster_file: Path, script: str, args: tuple[str, ...]) -> None:
    """Run a script of the task project in the master container, then fetch its output files.

    SCRIPT is a file of the project ending in .py (path relative to the project folder) or a
    module (`python -m SCRIPT`); ARGS go to it unchanged (everything after SCRIPT, options
    included). `python -m MODULE ARGS` and `python FILE.py ARGS` are understood too. It runs in the master container on the master host, next to the broker, with
    the project as its current folder and the cluster's connection settings in its
    environment. Its output is streamed here; Ctrl-C stops it. Afterwards the files it wrote
    under the project's output/ folder on the master host that are new or differ from the
    local ones are copied to the local project's output/ folder.

    \b
    The exit code is the script's (130 when interrupted); 1 or 2 with an `error:` line when
    infra itself failed (master unreachable or not running; bad SCRIPT).

    \b
    Example:
      infra run -f cluster.yaml wordcount.client --top 5
      infra run -f cluster.yaml scripts/report.py --day 2025-01-31
    """
    from .live import run_job

    cluster = load(cluster_file)

    def note(message: str) -> None:
        click.echo(f"infra: {message}", err=True)

    result = run_job(
        cluster, script, args,
        out=lambda line: click.echo(line),
        err=lambda line: click.echo(line, err=True),
        note=note,
    )
    if result.fetched:
        names = ", ".join(result.fetched[:5]) + (f" and {len(result.fetched) - 5} more" if len(result.fetched) > 5 else "")
        note(f"fetched {len(result.fetched)} output file(s), {result.fetched_bytes} bytes, "
             f"into {result.output_dir}: {names}")
    elif result.in_place:
        note(f"the master is this machine: output files are already in {result.output_dir}")
    sys.exit(result.exit_code)
