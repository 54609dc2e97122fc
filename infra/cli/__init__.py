"""The `infra` command line: the `main` group and its commands, one module each.

Each command is thin: it parses its options, calls one library function and prints. What the
commands share (cluster file options, `--hosts`, error handling) is in `infra.cli.options`.
Every InfraError becomes one line on stderr and a non-zero exit code; a traceback is a bug.
Exit codes: 0 success, 1 a host or command failed, 2 bad input (cluster file, options, state),
3 (`status`) the cluster is not fully running, 130 interrupted.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from .options import ending_at_once

# Each command's module, imported only when that command runs (or when --help lists them all):
# `infra status` pays for status's imports alone, not for sweep's, bootstrap's or volunteer's.
COMMAND_MODULES = {
    "up": ".up",
    "clean": ".clean",
    "status": ".status",
    "sync-files": ".sync_files",
    "logs": ".logs",
    "run": ".run",
    "sweep": ".sweep",
    "bootstrap": ".bootstrap",
    "check": ".check",
    "schema": ".schema",
    "volunteer": ".volunteer",
    "flower": ".flower",
}


class CommandsOnDemand(click.Group):
    """A group whose commands are imported by name, the first time they are asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        module = COMMAND_MODULES.get(name)
        if module is None:
            return None
        return getattr(importlib.import_module(module, __name__), name.replace("-", "_"))


@click.group(cls=CommandsOnDemand, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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


def program() -> None:
    """The `infra` program: the console script and `python -m infra`."""
    try:
        main()
    except SystemExit as exc:
        if not ending_at_once():
            raise
        code = exc.code
        if not isinstance(code, int):
            if code is not None:
                print(code, file=sys.stderr)
            code = 0 if code is None else 1
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                code = code or 1  # as Python's own exit does when its last flush fails (e.g. a closed pipe)
        os._exit(code)


__all__ = ["main", "program"]
