"""The `infra` command line: thin Click commands over the library.

Every InfraError becomes one line on stderr and a non-zero exit code; a traceback is a bug.
Exit codes: 0 success, 1 a host or command failed, 2 bad input (cluster file, options, state),
3 (`status`) the cluster is not fully running, 130 interrupted.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from .errors import InfraError

DEFAULT_CLUSTER_FILE = "cluster.yaml"


def cluster_file_option(func):
    return click.option(
        "-f", "--file", "cluster_file", default=DEFAULT_CLUSTER_FILE, show_default=True,
        type=click.Path(dir_okay=False, path_type=Path), help="The cluster file (YAML).",
    )(func)


def handle_errors(func):
    """Turn library errors into one-line messages and exit codes."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except InfraError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted; run the same command again to finish, or `infra clean`", err=True)
            sys.exit(130)

    return wrapper


def load(cluster_file: Path):
    from .config import load_cluster

    return load_cluster(cluster_file)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="infra-celery", prog_name="infra")
def main() -> None:
    """Turn machines you can SSH into into a Celery cluster, and take it down again.

    \b
    A cluster file says which hosts there are and what each runs: RabbitMQ, the Celery
    master and Flower on one host, Celery workers on any (`local` is this machine).
    Start from config.example.yaml.

    \b
    Example:
      infra up -f cluster.yaml      # start or update everything, on all hosts at once
      infra clean -f cluster.yaml   # remove what `up` started
    """


@main.command()
@cluster_file_option
@click.option("--dry-run", is_flag=True, help="Print what would be copied, built, started and removed; change nothing.")
@handle_errors
def up(cluster_file: Path, dry_run: bool) -> None:
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
    from .deploy import up as run_up
    from .report import Reporter
    from .summary import print_plan, print_summary

    cluster = load(cluster_file)
    reporter = Reporter()
    result = run_up(cluster, reporter, dry_run=dry_run)
    if dry_run:
        print_plan(cluster, result, reporter)
    else:
        print_summary(cluster, result, reporter)


@main.command()
@cluster_file_option
@click.option("--files", is_flag=True, help="Also delete the project copies on the hosts.")
@click.option("--volumes", is_flag=True, help="Also delete the broker's and result backend's data volumes.")
@handle_errors
def clean(cluster_file: Path, files: bool, volumes: bool) -> None:
    """Remove everything `infra up` started, on all hosts at once.

    Removes the containers recorded in the manifest and any container still carrying the
    cluster's label, the cluster's network and the env files holding its secrets. Project
    files and data volumes stay unless asked. A host that cannot be reached is reported,
    the others are cleaned, the exit code is 1 and the manifest keeps what is left there.

    \b
    Example:
      infra clean -f cluster.yaml
      infra clean -f cluster.yaml --files --volumes
    """
    from .deploy import clean as run_clean
    from .report import Reporter

    cluster = load(cluster_file)
    reporter = Reporter()
    result = run_clean(cluster, reporter, files=files, volumes=volumes)
    if result.failed:
        names = ", ".join(sorted(result.failed))
        raise InfraError(f"could not clean {names}; the manifest keeps what is left there — run `infra clean` again")
    reporter.info(f"cluster {cluster.name} removed from {len(result.cleaned)} host(s)")


# Commands that live in their own modules add themselves to the group.
from . import commands_bootstrap, commands_live  # noqa: E402

commands_bootstrap.register(main)
commands_live.register(main)


if __name__ == "__main__":
    main()
