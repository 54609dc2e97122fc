"""A connection to one host, and the local machine's: run a command, reach the host's engine.

A connection runs a command (a shell string or an argv list), optionally feeding it bytes or a
stream on stdin, and returns its exit code and output. `LocalConnection` runs subprocesses here;
`infra.transport.ssh.SSHConnection` is the same interface over SSH.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
from typing import IO, TYPE_CHECKING, Callable

from ..config import Host
from ..errors import RemoteCommandError
from .result import Command, CommandResult, Limits, LineBuffer, command_text

if TYPE_CHECKING:
    from ..engine.api import Engine

EOF_GRACE_AFTER_EXIT = 2.0  # seconds to wait for the end of output once a command has exited
OutputCallback = Callable[[str], None]


class Connection:
    """Runs commands on one host, and reaches its Docker engine (`engine`)."""

    host: Host

    def __init__(self, host: Host, limits: Limits | None = None):
        self.host = host
        self.limits = limits or Limits()
        self._engine: Engine | None = None
        self._engine_lock = threading.Lock()

    @property
    def engine(self) -> Engine:
        """The host's Docker engine, opened on first use and kept until close().

        Raises EngineUnavailableError (with the reason) when the engine cannot be used; the
        next use tries again.
        """
        with self._engine_lock:
            if self._engine is None:
                self._engine = self._open_engine()
            return self._engine

    def _open_engine(self) -> Engine:
        raise NotImplementedError

    def _close_engine(self) -> None:
        with self._engine_lock:
            engine, self._engine = self._engine, None
        if engine is not None:
            try:
                engine.close()
            except Exception:  # closing must not hide the work's own outcome
                pass

    def run(
        self,
        command: Command,
        *,
        stdin: bytes | IO[bytes] | None = None,
        timeout: float | None = None,
        check: bool = True,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> CommandResult:
        raise NotImplementedError

    def close(self) -> None:
        self._close_engine()

    # Helpers shared by both kinds of connection.

    def _checked(self, command: Command, result: CommandResult, check: bool) -> CommandResult:
        if check and not result.ok:
            raise RemoteCommandError(self.host.name, _shorten(command_text(command)), result.exit_code, result.output)
        return result

    def peer_address(self) -> str | None:
        return None


def _shorten(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class LocalConnection(Connection):
    """The machine running infra, through subprocesses."""

    def __init__(self, host: Host, limits: Limits | None = None):
        super().__init__(host, limits)

    def _open_engine(self) -> Engine:
        from ..engine.api import Engine  # the Docker SDK is imported on first use only

        return Engine.local(self.host.name, timeout=self.limits.command, long_timeout=self.limits.image)

    def run(self, command, *, stdin=None, timeout=None, check=True, on_stdout=None, on_stderr=None):
        argv = ["sh", "-c", command] if isinstance(command, str) else list(command)
        timeout = timeout or self.limits.command
        try:
            # A session of its own: a timeout or Ctrl-C ends the command's whole process group.
            proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            )
        except FileNotFoundError as exc:
            return self._checked(command, CommandResult(127, "", f"{exc.filename}: command not found"), check)
        out, err = bytearray(), bytearray()
        out_lines, err_lines = LineBuffer(on_stdout), LineBuffer(on_stderr)

        def pump(stream, sink: bytearray, lines: LineBuffer) -> None:
            for chunk in iter(lambda: stream.read1(65536), b""):
                sink.extend(chunk)
                lines.feed(chunk)
            lines.close()

        readers = [
            threading.Thread(target=pump, args=(proc.stdout, out, out_lines), daemon=True),
            threading.Thread(target=pump, args=(proc.stderr, err, err_lines), daemon=True),
        ]
        for reader in readers:
            reader.start()
        if stdin is not None:
            try:
                if isinstance(stdin, bytes):
                    proc.stdin.write(stdin)
                else:
                    for chunk in iter(lambda: stdin.read(1 << 20), b""):
                        proc.stdin.write(chunk)
                proc.stdin.close()
            except BrokenPipeError:
                pass
        _running.add(proc)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            code = 124
            err.extend(f"timed out after {timeout:g} s".encode())
        finally:
            _running.discard(proc)
        for reader in readers:
            reader.join(5)  # a grandchild that escaped the group may still hold the pipes
        result = CommandResult(code, out.decode(errors="replace"), err.decode(errors="replace"))
        return self._checked(command, result, check)

    def peer_address(self) -> str | None:
        return "127.0.0.1"


# Local commands running now, so that Ctrl-C can end their process groups too.
_running: set[subprocess.Popen] = set()


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()


def kill_local_commands() -> None:
    """End every local command still running, with its process group (Ctrl-C)."""
    for proc in list(_running):
        _kill_group(proc)


def local_address_towards(address: str) -> str:
    """The address of this machine on the route to `address` (no packet is sent)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect((address, 9))
        return probe.getsockname()[0]
    except OSError:
        return "127.0.0.1"
    finally:
        probe.close()
