"""Debian's `docker-registry` run on this machine's loopback: its configuration, its command lines,
and which tags a prune forgets.

Pure: `infra.transport.registry.LocalRegistry` writes the configuration, runs the commands and
deletes the tag folders chosen here.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import NamedTuple

REGISTRY_PROGRAM = "docker-registry"  # Debian's package of the same name


def config_path(storage: Path) -> Path:
    return storage / "config.yml"


def config_text(storage: Path, port: int) -> str:
    # JSON is valid YAML: no second serialiser needed for a file only the registry reads.
    config = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(storage / "data")},
                    "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16)},
    }
    return json.dumps(config, indent=2) + "\n"


def serve_argv(program: str, config: Path) -> list[str]:
    return [program, "serve", str(config)]


def garbage_collect_argv(program: str, config: Path) -> list[str]:
    """Delete the layers and manifests no tag names any more."""
    return [program, "garbage-collect", "--delete-untagged", str(config)]


def tags_folder(storage: Path, repository: str) -> Path:
    """Where the registry keeps a repository's tags, one folder each, under `config_text`'s root."""
    return storage / "data" / "docker" / "registry" / "v2" / "repositories" / repository / "_manifests" / "tags"


class HeldTag(NamedTuple):
    """An entry of a repository's tags folder."""

    name: str
    is_link: bool


def tags_to_forget(held: dict[str, list[HeldTag]], keep: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(repository, tag) of every tag the store holds in the repositories of `keep` but not among
    the tags kept there. A symbolic link is left alone: what it points to is not the store's."""
    return [(repository, tag.name)
            for repository, tags in keep.items()
            for tag in held.get(repository, [])
            if tag.name not in tags and not tag.is_link]
