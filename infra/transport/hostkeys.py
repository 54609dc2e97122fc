"""SSH host keys, checked as OpenSSH checks them: known hosts files, `strict` or `accept-new`.

A changed key is always refused (someone may answer for the host's address). An unknown key
is refused with `strict`, and with `accept-new` learned into the user's known hosts file on
first use and checked ever after. The files are the user's own (`~/.ssh/known_hosts`, or
`UserKnownHostsFile` from `~/.ssh/config`, or the cluster file's `ssh.known_hosts`), so `ssh`
and infra agree about every host.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

from ..errors import ConnectError

STRICT, ACCEPT_NEW = "strict", "accept-new"
SYSTEM_KNOWN_HOSTS = Path("/etc/ssh/ssh_known_hosts")
_APPEND_LOCK = threading.Lock()


def fingerprint(key: paramiko.PKey) -> str:
    """`SHA256:...` as `ssh-keygen -l` and OpenSSH's messages print it."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def policy_from_ssh_config(value: str | None) -> str | None:
    """`StrictHostKeyChecking` of ~/.ssh/config as infra's rule (infra never asks, never accepts a change)."""
    if value is None:
        return None
    value = value.strip().lower()
    if value in ("yes", "ask"):
        return STRICT
    return ACCEPT_NEW  # accept-new, no, off: learn new keys; a changed key is refused all the same


class UnknownHostKeyError(paramiko.SSHException):
    def __init__(self, hostname: str, key: paramiko.PKey):
        super().__init__(f"unknown host key for {hostname}")
        self.hostname = hostname
        self.key = key


@dataclass
class HostKeyRule(paramiko.MissingHostKeyPolicy):
    """What to do with a host key no known hosts file holds; remembers whether it learned one."""

    policy: str
    learn_into: Path
    hash_names: bool = False
    learned: list[tuple[str, paramiko.PKey]] = field(default_factory=list)

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        if self.policy != ACCEPT_NEW:
            raise UnknownHostKeyError(hostname, key)
        append_known_host(self.learn_into, hostname, key, hashed=self.hash_names)
        client.get_host_keys().add(hostname, key.get_name(), key)
        self.learned.append((hostname, key))


def append_known_host(path: Path, entry: str, key: paramiko.PKey, *, hashed: bool = False) -> None:
    """Add one line to a known hosts file (created 0600 in a 0700 folder), safe from other writers."""
    name = paramiko.HostKeys.hash_host(entry) if hashed else entry
    line = f"{name} {key.get_name()} {key.get_base64()}\n".encode()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with _APPEND_LOCK:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # `ssh` or another infra may be appending too
            os.write(fd, line)
        finally:
            os.close(fd)


def trust(client: paramiko.SSHClient, policy: str, known_hosts: list[Path], hash_names: bool) -> HostKeyRule:
    """Make `client` check host keys against `known_hosts` (the first is where new keys are learned)."""
    if SYSTEM_KNOWN_HOSTS.is_file():
        client.load_system_host_keys(str(SYSTEM_KNOWN_HOSTS))
    for path in known_hosts:
        if path.is_file():
            try:
                client.get_host_keys().load(str(path))
            except (OSError, paramiko.SSHException) as exc:
                raise ConnectError(f"cannot read the known hosts file {path}: {exc}") from None
    rule = HostKeyRule(policy, known_hosts[0], hash_names)
    client.set_missing_host_key_policy(rule)
    return rule


def explain(host_name: str, exc: BaseException, known_hosts: Path) -> str | None:
    """A one-line reason for a host key refusal (None for other errors)."""
    if isinstance(exc, paramiko.BadHostKeyException):
        entry = exc.hostname
        return (f"{host_name}: the host key of {entry} has CHANGED (now {exc.key.get_name()} "
                f"{fingerprint(exc.key)}, known as {fingerprint(exc.expected_key)}): someone may be answering for "
                f"this address, or the host was reinstalled; if you trust the new key, remove the old one with "
                f"`ssh-keygen -R '{entry}' -f {known_hosts}` and run again — nothing was sent to it")
    if isinstance(exc, UnknownHostKeyError):
        return (f"{host_name}: unknown host key of {exc.hostname} ({exc.key.get_name()} {fingerprint(exc.key)}) "
                f"and ssh.host_keys is strict: check it and add it to {known_hosts} (for example with "
                f"`ssh-keyscan`), or set ssh.host_keys: accept-new — nothing was sent to it")
    return None
