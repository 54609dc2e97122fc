"""`infra volunteer add | list | revoke`: machines of other people join with one line, no SSH."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click

from .options import cluster_file_option, handle_errors, load_cluster_file, wait_option


@click.group()
def volunteer() -> None:
    """Let people lend a machine with Docker to the cluster, with one line, and take it back.

    \b
    `add NAME` prints the line the volunteer runs; `revoke NAME` ends its access at once;
    `list` shows who joined, from which CPU, with how many workers and tasks done.
    infra never connects to a volunteer's machine: the line fetches what it needs from
    the cluster's join endpoint on the master host (HTTPS, the master's key pinned in the line).

    \b
    Example:
      infra volunteer add alice --expires 2d
      infra volunteer list
      infra volunteer revoke alice
    """


@volunteer.command("add")
@cluster_file_option
@click.argument("name")
@click.option("--expires", default="7d", show_default=True, metavar="DURATION",
              help="How long the line may join (30m, 12h, 7d, 2w); it joins one machine, once. A worker that "
                   "joined keeps working until revoked.")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Port of the join endpoint on the master host (default 5443, or the one chosen before).")
@click.option("--cpus", "cpus", default=None, metavar="N", help="Suggest --cpus N in the printed line.")
@click.option("--memory", default=None, metavar="SIZE", help="Suggest --memory SIZE (e.g. 2g) in the printed line.")
@click.option("--concurrency", type=click.IntRange(1, 999), default=None,
              help="Suggest --concurrency N in the printed line.")
@click.option("--json", "as_json", is_flag=True, help="Print {name, line, leave, expires, url, pin} as JSON.")
@wait_option
@handle_errors
def add(cluster_file: Path, name: str, expires: str, port: int | None, cpus: str | None, memory: str | None,
        concurrency: int | None, as_json: bool, wait: bool) -> None:
    """Give NAME credentials of its own and print the one line that joins a machine.

    Makes a broker user that may take the cluster's tasks but publish none, and a
    result-backend user limited to result keys, starts the join endpoint and the relay of
    volunteers' chains and chords if they do not run, and prints the line: the volunteer
    runs it on a machine with Docker and curl. The token in it is shown once and
    kept nowhere in clear.

    \b
    Example:
      infra volunteer add alice --expires 2d --cpus 2 --memory 2g
    """
    from ..ui.reporter import Reporter
    from ..workflows.volunteer import add as run_add

    cluster = load_cluster_file(cluster_file)
    reporter = Reporter(quiet=as_json)
    if cpus and not re.fullmatch(r"[0-9]+(\.[0-9]+)?", cpus):
        raise click.BadParameter("a number such as 2 or 1.5", param_hint="--cpus")
    if memory and not re.fullmatch(r"[0-9]+[bkmgBKMG]?", memory):
        raise click.BadParameter("a size such as 2g or 512m", param_hint="--memory")
    options = " ".join(part for part in (
        f"--cpus {cpus}" if cpus else "", f"--memory {memory}" if memory else "",
        f"--concurrency {concurrency}" if concurrency else "") if part)
    added = run_add(cluster, reporter, name, expires=expires, port=port, wait=wait, line_options=options)
    line = added.line
    if as_json:
        click.echo(json.dumps({"name": added.name, "line": line, "leave": added.leave,
                               "expires": added.expires, "url": added.url, "pin": added.pin}, indent=2))
        return
    click.echo("")
    click.echo(f"{name} joins a machine with Docker and curl by running (until {added.expires}):")
    click.echo("")
    click.echo(f"  {line}")
    click.echo("")
    click.echo("Options at the end of the line: --cpus N, --memory SIZE, --concurrency N.")
    click.echo("To leave, on that machine:")
    click.echo("")
    click.echo(f"  {added.leave}")
    click.echo("")
    click.echo("The line holds the only copy of the token: send it to them privately.")


@volunteer.command("list")
@cluster_file_option
@click.option("--json", "as_json", is_flag=True,
              help='Print one JSON object: {"schema": "infra.volunteers/1", "volunteers": [{name, state, added, '
                   'expires, joined, last_seen, arch, workers, tasks_done}], "error": why the master could not '
                   'be asked, or null}.')
@handle_errors
def list_command(cluster_file: Path, as_json: bool) -> None:
    """Show the volunteers: joined, last seen, CPU, workers online and tasks done.

    \b
    Example:
      infra volunteer list
    """
    from ..workflows.volunteer import list_json, list_volunteers

    cluster = load_cluster_file(cluster_file)
    rows, problem = list_volunteers(cluster)
    if as_json:
        click.echo(json.dumps(list_json(rows, problem), indent=2))
        return
    if not rows:
        click.echo("no volunteers (add one with `infra volunteer add NAME`)")
        return
    click.echo("\n".join(render_rows(rows)))
    if problem:
        click.echo(f"(the master could not be asked everything: {problem})", err=True)


def render_rows(rows) -> list[str]:
    headers = ["volunteer", "state", "joined", "last seen", "arch", "workers", "tasks done"]
    table = [[r.name, r.state, r.joined or "-", r.last_seen or "-", r.arch or "-", str(len(r.workers)),
              "-" if r.tasks_done is None else str(r.tasks_done)] for r in rows]
    widths = [max(len(row[i]) for row in [headers, *table]) for i in range(len(headers))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [headers, *table]]


@volunteer.command("revoke")
@cluster_file_option
@click.argument("name")
@wait_option
@handle_errors
def revoke(cluster_file: Path, name: str, wait: bool) -> None:
    """End NAME's access now: its token and key are refused, its users deleted, its connections closed.

    The tasks its workers held go back to the queue and run on the other workers. Its
    machine keeps the container, idle, until the volunteer runs the leave line.

    \b
    Example:
      infra volunteer revoke alice
    """
    from ..ui.reporter import Reporter
    from ..workflows.volunteer import revoke as run_revoke

    cluster = load_cluster_file(cluster_file)
    run_revoke(cluster, Reporter(), name, wait=wait)
