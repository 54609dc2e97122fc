"""`infra run`: run project code in the master container, then fetch its output files."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .options import cluster_file_option, handle_errors, load_cluster_file

FETCHED_NAMES_SHOWN = 5  # output files named in the closing note; the rest are counted


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
    from ..workflows.run_job import run_job

    cluster = load_cluster_file(cluster_file)

    def note(message: str) -> None:
        click.echo(f"infra: {message}", err=True)

    result = run_job(
        cluster, script, args,
        out=lambda line: click.echo(line),
        err=lambda line: click.echo(line, err=True),
        note=note,
    )
    if result.fetched:
        names = ", ".join(result.fetched[:FETCHED_NAMES_SHOWN])
        more = len(result.fetched) - FETCHED_NAMES_SHOWN
        if more > 0:
            names += f" and {more} more"
        note(f"fetched {len(result.fetched)} output file(s), {result.fetched_bytes} bytes, "
             f"into {result.output_dir}: {names}")
    elif result.in_place:
        note(f"the master is this machine: output files are already in {result.output_dir}")
    for refused in result.refused:
        note(f"warning: output file not fetched: {refused}")
    sys.exit(result.exit_code)
