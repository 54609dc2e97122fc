"""What the `infra` commands share: the cluster file options, `--hosts`, and error handling.

Every InfraError becomes one `error:` line on stderr and its exit code; a traceback is a bug.
Exit codes: 0 success, 1 a host or command failed, 2 bad input (cluster file, options, state),
3 (`status`) the cluster is not fully running, 130 interrupted.

Command modules import this module and library modules only, never `infra.cli` itself, so
each of them imports on its own.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..errors import ConfigError, InfraError

if TYPE_CHECKING:
    from ..config import Cluster, Host

DEFAULT_CLUSTER_FILE = "cluster.yaml"
INTERRUPTED_EXIT_CODE = 130


def cluster_file_option(func):
    """`-f/--file PATH`: the cluster file."""
    return click.option(
        "-f", "--file", "cluster_file", default=DEFAULT_CLUSTER_FILE, show_default=True,
        type=click.Path(dir_okay=False, path_type=Path), help="The cluster file (YAML).",
    )(func)


def cluster_file_long_option(func):
    """`--file` without `-f`, which `infra logs` uses for --follow (as `docker logs -f` does)."""
    return click.option(
        "--file", "cluster_file", default=DEFAULT_CLUSTER_FILE, show_default=True,
        type=click.Path(dir_okay=False, path_type=Path), help="The cluster file (YAML).",
    )(func)


def hosts_option(func):
    """`--hosts A,B` as the `hosts_option` parameter; `select_hosts` says what it means."""
    return click.option(
        "--hosts", "hosts_option", metavar="A,B",
        help="Only these hosts (any host of the cluster file, or local); default: every host the cluster uses.",
    )(func)


def wait_option(func):
    """`--wait`: wait for another command that holds the cluster's lock instead of exiting 2."""
    return click.option("--wait", is_flag=True,
                        help="If another infra command is changing this cluster, wait for it instead of stopping.")(func)


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
            sys.exit(INTERRUPTED_EXIT_CODE)

    return wrapper


# Set by a command (see `end_at_once`) that leaves nothing for the interpreter's teardown to do.
_ending_at_once = False


def end_at_once() -> None:
    """Let the program (`infra.cli.program`) end the process as soon as this command is done,
    without the interpreter's teardown.

    For short commands whose whole run users wait on (`sync-files`): after the last line is
    printed, Python would still spend tens of milliseconds freeing, module by module, every
    object that pydantic, paramiko and cryptography made while loading. A command calls this
    only once nothing it started needs to end cleanly: its threads joined, its connections and
    locks closed, no temporary file to remove.
    """
    global _ending_at_once
    _ending_at_once = True


def ending_at_once() -> bool:
    return _ending_at_once


def load_cluster_file(path: Path) -> Cluster:
    """The validated cluster file; ConfigError (one located line) when it is not valid."""
    from ..config import load_cluster  # pydantic and YAML only once a command runs, not for --help

    return load_cluster(path)


def select_hosts(cluster: Cluster, option: str | None) -> list[Host]:
    """The hosts `--hosts A,B` means, for every command that takes it.

    Without the option: every host the cluster uses (one with a role). With it: the hosts
    named, each a host of the cluster file or `local`; an unknown or missing name is a
    ConfigError. Repeats are dropped and the hosts come in the cluster's order, whatever the
    option's: the hosts it uses (master first, then the workers in file order), then the
    other hosts of `hosts:` in file order, then `local`.
    """
    used = cluster.used_hosts()
    if option is None:
        return [cluster.hosts[name] for name in used]
    named: list[str] = []
    for name in (part.strip() for part in option.split(",")):
        if not name or name in named:
            continue
        if name not in cluster.hosts:
            known = ", ".join(sorted(cluster.hosts))
            raise ConfigError(f"--hosts: unknown host {name!r} (hosts: {known})")
        named.append(name)
    if not named:
        raise ConfigError("--hosts: no host named")
    listed = [name for name, host in cluster.hosts.items() if not host.is_local]
    local = [name for name, host in cluster.hosts.items() if host.is_local]
    order = used + [name for name in listed + local if name not in used]
    return [cluster.hosts[name] for name in order if name in named]
