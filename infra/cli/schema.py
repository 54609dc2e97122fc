"""`infra schema`: the JSON Schema of the cluster file, for editors and other tools."""

from __future__ import annotations

import json
from typing import TextIO

import click


@click.command()
# Opened while the options are read (not lazily): a path that cannot be written is then a bad
# option (exit code 2), like any other.
@click.option("-o", "--output", type=click.File("w", encoding="utf-8", lazy=False), default="-", metavar="FILE",
              help="Write the schema to FILE instead of printing it.")
def schema(output: TextIO) -> None:
    """Print the JSON Schema (draft 2020-12) of the cluster file.

    With it, editors using yaml-language-server (VS Code's YAML extension, Neovim,
    Helix, ...) complete keys, explain each one and flag mistakes as you type: put
    `# yaml-language-server: $schema=PATH` on the first line of the cluster file, PATH
    relative to that file. The schema checks keys and values one by one; `infra check`
    also checks what needs the whole file or the disk (hosts named in roles, ports,
    folders).

    \b
    Example:
      infra schema -o cluster.schema.json
      infra schema | jq '.properties | keys'
    """
    from ..config import cluster_json_schema  # pydantic only once the command runs, not for --help

    output.write(json.dumps(cluster_json_schema(), indent=2) + "\n")
