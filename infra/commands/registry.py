"""Debian's `docker-registry` run on this machine's loopback: its configuration, its login, its
command lines, and which tags a prune forgets.

Pure: `infra.transport.registry.LocalRegistry` writes the files, runs the commands and deletes the
tag folders chosen here.

On each host the registry is a port of the host's loopback that its sshd forwards here, open to
every local user and host-network container of that host while `up` runs: so it takes only the
login made for this `up` (basic auth, `htpasswd` with bcrypt) and deletes nothing through its API.
Basic auth travels in clear only on loopback at either end, and inside SSH between them.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import bcrypt

REGISTRY_PROGRAM = "docker-registry"  # Debian's package of the same name
REGISTRY_USER = "infra"
REGISTRY_REALM = "infra"
# The password is 256 random bits: no work factor makes guessing it harder than it is, while the
# registry checks the hash on every request (1.3 ms at cost 4, 300 ms at bcrypt's default 12).
BCRYPT_COST = 4


@dataclass(frozen=True)
class RegistryLogin:
    """The one login of the registry during one `up`: given to engines with each push or pull only."""

    username: str
    password: str = field(repr=False)

    def auth_config(self) -> dict[str, str]:
        """As the Engine API takes it (the X-Registry-Auth header of a pull or push), never as argv."""
        return {"username": self.username, "password": self.password}


def new_login() -> RegistryLogin:
    return RegistryLogin(REGISTRY_USER, secrets.token_urlsafe(32))


def htpasswd_line(login: RegistryLogin, salt: bytes | None = None) -> str:
    """The registry's `htpasswd` file: the login's bcrypt hash, the only format it reads."""
    hashed = bcrypt.hashpw(login.password.encode(), salt or bcrypt.gensalt(rounds=BCRYPT_COST))
    return f"{login.username}:{hashed.decode()}\n"


def config_path(storage: Path) -> Path:
    return storage / "config.yml"


def htpasswd_path(storage: Path) -> Path:
    return storage / "htpasswd"


def gc_config_path(storage: Path) -> Path:
    return storage / "gc-config.yml"


def config_text(storage: Path, port: int, http_secret: str | None = None) -> str:
    """What the serving registry reads: loopback only, the login of `htpasswd_path`, no deletes."""
    # JSON is valid YAML: no second serialiser needed for a file only the registry reads.
    config = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(storage / "data")},
                    "delete": {"enabled": False}},
        "auth": {"htpasswd": {"realm": REGISTRY_REALM, "path": str(htpasswd_path(storage))}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": http_secret or secrets.token_hex(16)},
    }
    return json.dumps(config, indent=2) + "\n"


def gc_config_text(storage: Path) -> str:
    """What `garbage-collect` reads while the registry is stopped: the store alone, nothing served.
    Deleting is its whole job, and no API is open to anyone meanwhile."""
    config = {
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(storage / "data")}, "delete": {"enabled": True}},
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
