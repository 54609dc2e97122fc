"""Generated credentials of a cluster, kept on the local machine in a file only its owner can read."""

from __future__ import annotations

import json
import os
import secrets as random_source
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..errors import StateError
from ..runtime.signing import key_pair_pem, public_pem_of


@dataclass(frozen=True)
class Secrets:
    """Who logs in where. The broker has two users: `broker_user`, its administrator, used only by
    Flower's queue view on the master host, and `worker_user`, which can use the cluster's virtual
    host and nothing else: the one every Celery client and worker logs in with.

    The result backend (Redis) has a user per role (`plans.secret_files.results_users`):
    `results_password` is its administrator's (infra's volunteer commands, inside the master host
    only), the others those of the master container, the workers and Flower."""

    broker_user: str
    broker_password: str
    results_password: str
    flower_user: str
    flower_password: str
    worker_user: str = "worker"
    worker_password: str = ""
    # The Ed25519 key the sweep driver signs runs with (PEM): on the master host alone; workers and
    # volunteers get its public half (`run_verify_key`), which checks runs and cannot sign them.
    run_signing_key: str = ""
    results_master_password: str = ""
    results_worker_password: str = ""
    results_flower_password: str = ""

    @classmethod
    def generate(cls) -> "Secrets":
        # token_urlsafe: letters, digits, '-' and '_' only, so safe in URLs and env files unquoted.
        return cls(
            broker_user="infra",
            broker_password=random_source.token_urlsafe(24),
            results_password=random_source.token_urlsafe(24),
            flower_user="admin",
            flower_password=random_source.token_urlsafe(18),
            worker_user="worker",
            worker_password=random_source.token_urlsafe(24),
            run_signing_key=key_pair_pem()[0],
            results_master_password=random_source.token_urlsafe(24),
            results_worker_password=random_source.token_urlsafe(24),
            results_flower_password=random_source.token_urlsafe(24),
        )

    @property
    def run_verify_key(self) -> str:
        """The public half of the run signing key (PEM; not a secret), "" when there is none."""
        return public_pem_of(self.run_signing_key) if self.run_signing_key else ""

    def values(self) -> list[str]:
        """The secret strings themselves (used to check that nothing prints them)."""
        found = [self.broker_password, self.results_password, self.flower_password, self.worker_password,
                 self.results_master_password, self.results_worker_password, self.results_flower_password]
        if self.run_signing_key:  # the whole PEM and its base64 line, which a command could hold alone
            found += [self.run_signing_key, *_pem_body_lines(self.run_signing_key)]
        return found


def _pem_body_lines(pem: str) -> list[str]:
    return [line for line in pem.splitlines() if line and not line.startswith("-----")]


# Passwords added after the first clusters were made: an older secrets file gets them on its next load.
_ADDED_PASSWORDS = ("worker_password", "results_master_password", "results_worker_password",
                    "results_flower_password")


def write_private_file(path: Path, data: bytes) -> None:
    """Write a file atomically with mode 0600 from the moment it exists."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def load_secrets(path: Path) -> Secrets | None:
    try:
        raw = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return Secrets(**json.loads(raw))
    except (ValueError, TypeError) as exc:
        raise StateError(f"{path}: unreadable secrets file ({exc}); remove it to generate new ones") from None


def _missing_secrets(existing: Secrets) -> dict[str, str]:
    missing = {name: random_source.token_urlsafe(24) for name in _ADDED_PASSWORDS if not getattr(existing, name)}
    if not existing.run_signing_key:
        missing["run_signing_key"] = key_pair_pem()[0]
    return missing


def load_or_create_secrets(path: Path) -> Secrets:
    existing = load_secrets(path)
    if existing:
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)
        missing = _missing_secrets(existing)
        if missing:
            # A secrets file from before some secret existed (the workers' broker user, the run
            # signing key, Redis's users by role): those are made, the others kept. Callers hold the lock.
            existing = replace(existing, **missing)
            write_private_file(path, json.dumps(asdict(existing), indent=2).encode() + b"\n")
        return existing
    created = Secrets.generate()
    data = json.dumps(asdict(created), indent=2).encode() + b"\n"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".new", dir=path.parent)  # mode 0600
    tmp = Path(name)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        # link() refuses an existing name (as O_EXCL would): when two runs generate at once, the
        # first file wins whole and the other run uses it; never a file written by both.
        os.link(tmp, path)
    except FileExistsError:
        return load_secrets(path) or created
    finally:
        tmp.unlink(missing_ok=True)
    return created
