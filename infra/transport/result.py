"""What every connection shares: a command's result, the time limits, Ctrl-C, output lines.

A neutral module: the connections here and the engine client (`infra.engine.api`) both return
`CommandResult` and split output into lines with `LineBuffer`, so neither imports the other for them.
"""

from __future__ import annotations

import shlex
import threading
from dataclasses import dataclass
from typing import Callable, Sequence

from ..errors import InfraError

Command = str | Sequence[str]
LineCallback = Callable[[str], None]

# Set by the first Ctrl-C: every host's work stops before its next step (see run_concurrently).
interrupted = threading.Event()


@dataclass(frozen=True)
class Limits:
    """How infra reaches hosts: how long it waits (seconds) and which host keys it trusts.

    From the cluster file's `ssh` and `timeouts`.
    """

    connect: float = 10.0  # to connect and authenticate
    command: float = 120.0  # one shell command or engine call: a host that does not answer within it is reported
    image: float = 3600.0  # one build, pull or image transfer: the longest its stream may stay silent
    host_keys: str | None = None  # "strict" or "accept-new"; None: as ~/.ssh/config says, else accept-new
    known_hosts: str | None = None  # where host keys are checked and learned; None: as ~/.ssh/config says

    @classmethod
    def of(cls, cluster) -> "Limits":
        ssh = cluster.spec.ssh
        return cls(ssh.connect_timeout, cluster.spec.timeouts.command, cluster.spec.timeouts.image,
                   ssh.host_keys, str(cluster.known_hosts) if cluster.known_hosts else None)


class Interrupted(InfraError):
    """Work not started because the user pressed Ctrl-C."""

    exit_code = 130


def check_interrupted() -> None:
    if interrupted.is_set():
        raise Interrupted("interrupted")


@dataclass(frozen=True)
class CommandResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def output(self) -> str:
        return (self.stdout + ("\n" if self.stdout and self.stderr else "") + self.stderr).strip()


def command_text(command: Command) -> str:
    return command if isinstance(command, str) else shlex.join(command)


class LineBuffer:
    """Turns chunks of bytes into complete lines for a callback (the last, unended line at close)."""

    def __init__(self, callback: LineCallback | None):
        self.callback = callback
        self.pending = b""

    def feed(self, data: bytes) -> None:
        if not self.callback:
            return
        self.pending += data
        *lines, self.pending = self.pending.split(b"\n")
        for line in lines:
            self.callback(line.decode(errors="replace"))

    def close(self) -> None:
        if self.callback and self.pending:
            self.callback(self.pending.decode(errors="replace"))
        self.pending = b""
