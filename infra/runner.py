"""The one layer that acts: connections to hosts (SSH or the local machine) and running on many at once.

Every other module decides; this one executes. A connection runs a command (a shell string or an
argv list), optionally feeding it bytes or a stream on stdin, and returns its exit code and
output. SSH goes through Fabric (so ~/.ssh/config, ssh-agent and keys work as with `ssh`) and
paramiko channels (so binary streams such as `docker save | docker load` pass unchanged).
"""

from __future__ import annotations

import io
import os
import select
import shlex
import signal
import socket
import subprocess
import threading
import time
import weakref
from pathlib import Path
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Callable, Iterable, Iterator, Sequence, TypeVar

from .commands.process import KILL_AFTER, with_time_limit
from . import hostkeys
from .config import Host
from .engine.wire import LineBuffer
from .errors import ConnectError, InfraError, RemoteCommandError

if TYPE_CHECKING:
    from .engine.engine import Engine

Command = str | Sequence[str]
EOF_GRACE_AFTER_EXIT = 2.0  # seconds to wait for the end of output once a command has exited
OutputCallback = Callable[[str], None]

T = TypeVar("T")
R = TypeVar("R")


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


# Set by the first Ctrl-C: every host's work stops before its next step (see run_concurrently).
interrupted = threading.Event()


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
        from .engine.engine import Engine  # the Docker SDK is imported on first use only

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


# Fabric (and paramiko) are imported by the first SSH connection, so that pure modules and
# `--help` never pay for them; connections open from many threads at once.
_SSH_IMPORT_LOCK = threading.Lock()


class SSHConnection(Connection):
    """A host reached over SSH."""

    def __init__(self, host: Host, limits: Limits | None = None):
        # Imported here so that pure modules and `--help` never pay for paramiko's import.
        with _SSH_IMPORT_LOCK:  # paramiko's first import is not safe from several threads at once
            from fabric import Config as FabricConfig
            from fabric import Connection as FabricConnection

        super().__init__(host, limits)
        connect_timeout = self.limits.connect
        connect_kwargs: dict = {"banner_timeout": connect_timeout, "auth_timeout": connect_timeout}
        if host.key:
            connect_kwargs["key_filename"] = [host.key]
        self._fabric = FabricConnection(
            host.address, user=host.user, port=host.port, connect_timeout=connect_timeout,
            connect_kwargs=connect_kwargs, config=FabricConfig(),
        )
        # Fabric truncates connect_timeout with int(): 0.5 s would become no timeout at all.
        self._fabric.connect_timeout = connect_timeout
        # Fabric accepts any host key; check them as OpenSSH does, gateways (ProxyJump) included.
        self._known_hosts, self._key_rules = self._trust_host_keys(self._fabric)
        sock = None
        try:
            if not self._fabric.gateway:  # ProxyJump/ProxyCommand: the gateway's own channel
                sock = _nodelay_socket(self._fabric.host, self._fabric.port, connect_timeout)
                self._fabric.connect_kwargs["sock"] = sock
            self._fabric.open()
        except Exception as exc:  # paramiko and socket errors of every kind
            # The client's transport first (its thread reads the socket until stopped; Fabric
            # leaves it running when the connection never opened), then the socket under it.
            self._fabric.client.close()
            self._fabric.close()
            if sock is not None:
                sock.close()
            refusal = hostkeys.explain(host.name, exc, self._known_hosts[0])
            if refusal:
                raise ConnectError(refusal) from None
            raise ConnectError(f"{host.name}: cannot connect to {host.describe()}: {_describe_connect_error(exc)}") from None
        transport = self._fabric.client.get_transport()
        transport.set_keepalive(15)
        # The same for a gateway's socket, when it is one (a ProxyCommand's has no such option).
        try:
            transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (AttributeError, OSError):
            pass
        self._transport = transport

    def _trust_host_keys(self, fabric) -> tuple[list[Path], list]:
        ssh_config = fabric.ssh_config
        if self.limits.known_hosts:
            files = [Path(self.limits.known_hosts)]
        else:
            configured = (ssh_config.get("userknownhostsfile") or "~/.ssh/known_hosts").split()
            files = [Path(os.path.expanduser(name)) for name in configured]
        policy = (self.limits.host_keys or hostkeys.policy_from_ssh_config(ssh_config.get("stricthostkeychecking"))
                  or hostkeys.ACCEPT_NEW)
        hashed = str(ssh_config.get("hashknownhosts", "no")).lower() == "yes"
        rules = [hostkeys.trust(fabric.client, policy, files, hashed)]
        gateway = getattr(fabric, "gateway", None)
        if gateway is not None and hasattr(gateway, "client"):  # a ProxyJump hop: the same rule
            rules += self._trust_host_keys(gateway)[1]
        return files, rules

    @property
    def learned_host_key(self) -> str | None:
        """The fingerprint of the host key learned in this connection (first use), else None."""
        for rule in self._key_rules:
            for _, key in rule.learned:
                return hostkeys.fingerprint(key)
        return None

    def forward_remote_port(self, target: tuple[str, int]):
        """A port on the host's loopback that leads, through this connection, to `target` here
        (as `ssh -R`). Raises when the host's sshd refuses forwarding (AllowTcpForwarding)."""
        from .registry import RemoteForward

        return RemoteForward(self._transport, target)

    def peer_address(self) -> str | None:
        try:
            return self._transport.getpeername()[0]
        except OSError:
            return None

    def run(self, command, *, stdin=None, timeout=None, check=True, on_stdout=None, on_stderr=None):
        timeout = timeout or self.limits.command
        # The host ends the command itself when its time is up, so that it never runs on after
        # infra gave up; this side waits a little longer to hear its exit code 124.
        argv = ["sh", "-c", command] if isinstance(command, str) else list(command)
        text = shlex.join(with_time_limit(argv, timeout))
        timeout += KILL_AFTER + 2
        try:
            channel = self._transport.open_session(timeout=self.limits.command)
            channel.exec_command(text)
        except Exception as exc:
            raise ConnectError(f"{self.host.name}: lost the SSH connection: {_describe_connect_error(exc)}") from None
        out, err = bytearray(), bytearray()
        out_lines, err_lines = LineBuffer(on_stdout), LineBuffer(on_stderr)
        writer = None
        if stdin is not None:
            writer = threading.Thread(target=_feed_channel, args=(channel, stdin), daemon=True)
            writer.start()
        deadline = time.monotonic() + timeout if timeout else None
        timed_out = False
        exited_at = 0.0
        while True:
            got = False
            while channel.recv_ready():
                chunk = channel.recv(65536)
                out.extend(chunk)
                out_lines.feed(chunk)
                got = True
            while channel.recv_stderr_ready():
                chunk = channel.recv_stderr(65536)
                err.extend(chunk)
                err_lines.feed(chunk)
                got = True
            drained = not channel.recv_ready() and not channel.recv_stderr_ready()
            # The exit status may arrive before the last output (sshd sends it when the
            # command exits, not when its pipes are drained): read on until EOF. A command
            # that leaves a background process holding its output gets a short grace instead.
            if drained and (channel.eof_received or channel.closed):
                break
            if channel.exit_status_ready():
                exited_at = exited_at or time.monotonic()
                if drained and time.monotonic() - exited_at > EOF_GRACE_AFTER_EXIT:
                    break
            if deadline and time.monotonic() > deadline:
                timed_out = True
                break
            if not got:
                select.select([channel], [], [], 0.05)
        out_lines.close()
        err_lines.close()
        if timed_out:
            channel.close()
            code = 124
            err.extend(f"timed out after {timeout:g} s".encode())
        else:
            code = channel.recv_exit_status()
            channel.close()
        if writer:
            writer.join(timeout=5)
        result = CommandResult(code, out.decode(errors="replace"), err.decode(errors="replace"))
        return self._checked(command, result, check)

    def _open_engine(self) -> Engine:
        from .engine.engine import Engine  # the Docker SDK is imported on first use only

        return Engine.over_ssh(self.host.name, self._transport, timeout=self.limits.command,
                               long_timeout=self.limits.image)

    def close(self) -> None:
        self._close_engine()
        self._fabric.close()


class _QuickAckSocket(socket.socket):
    """A TCP socket that acknowledges at once what it receives (Linux's TCP_QUICKACK, set again
    after every read, as the kernel drops it by itself).

    Right after authentication sshd sends two small packets of its own (host keys, a debug
    message) before it answers the first channel open, and its Nagle's algorithm holds that
    answer until they are acknowledged: with delayed ACKs, ~40 ms on every new connection.
    """

    def recv(self, *args):
        data = super().recv(*args)
        try:
            self.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        except OSError:
            pass
        return data


def _nodelay_socket(host: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection to the host with Nagle's algorithm off from the first packet, as OpenSSH does.

    paramiko never turns it off: each small packet (the authentication's, then every command's)
    would wait ~40 ms for the peer's delayed ACK.
    """
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass
    if hasattr(socket, "TCP_QUICKACK"):  # Linux
        sock = _QuickAckSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
        sock.settimeout(timeout)
    return sock


def _feed_channel(channel, stdin: bytes | IO[bytes]) -> None:
    try:
        if isinstance(stdin, bytes):
            stdin = io.BytesIO(stdin)
        for chunk in iter(lambda: stdin.read(1 << 16), b""):
            channel.sendall(chunk)
        channel.shutdown_write()
    except (OSError, EOFError):
        pass  # the remote command ended early; its exit code tells why


def _describe_connect_error(exc: BaseException) -> str:
    name = type(exc).__name__
    text = str(exc).strip()
    if isinstance(exc, socket.timeout) or "timed out" in text.lower():
        return "timed out"
    if name == "AuthenticationException":
        return "authentication failed (check user and key)"
    if name == "NoValidConnectionsError" or isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return "unknown host name"
    if name == "SSHException" and "banner" in text.lower():
        return "no SSH banner (host hung or not an SSH server)"
    return text.splitlines()[0] if text else name


def connect(host: Host, limits: Limits) -> Connection:
    return LocalConnection(host, limits) if host.is_local else SSHConnection(host, limits)


# Local commands running now, so that Ctrl-C can end their process groups too.
_running: set[subprocess.Popen] = set()


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()


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


# --------------------------------------------------------------------------- many hosts at once


@dataclass
class GroupResult:
    """Per-item outcome of running one function on many items concurrently."""

    succeeded: dict
    failed: dict

    def raise_if_failed(self, action: str) -> None:
        if self.failed:
            from .errors import HostsFailedError

            raise HostsFailedError(action, self.failed)


MAX_PARALLEL = 32
INTERRUPTED_EXIT_CODE = 130
INTERRUPT_GRACE = 2.0  # seconds the hosts' threads get to stop once Ctrl-C closed their connections


def run_concurrently(items: Iterable[T], fn: Callable[[T], R], *, key: Callable[[T], str] = str) -> GroupResult:
    """Call `fn` on every item at once; a failure on one item is data, not a crash.

    Ctrl-C while waiting (only the main thread gets it): `interrupted` is set, so no host starts
    another step; every open connection and local command is closed, which ends the steps under
    way; after a short grace KeyboardInterrupt propagates. The threads are daemons, so one stuck
    in a call that ignores its closed connection cannot keep the process alive.
    """
    items = list(items)
    results: dict = {}
    failures: dict = {}
    if not items:
        return GroupResult(results, failures)
    slots = threading.Semaphore(MAX_PARALLEL)

    def work(name: str, item: T) -> None:
        with slots:
            try:
                check_interrupted()
                results[name] = fn(item)
            except InfraError as exc:
                failures[name] = exc
            except Exception as exc:  # an unexpected error on one host must not hide the others
                failures[name] = InfraError(f"{name}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=work, args=(key(item), item), name=f"infra {key(item)}", daemon=True)
               for item in items]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(0.2)  # short joins: Ctrl-C reaches the main thread at once
    except KeyboardInterrupt:
        interrupted.set()
        # A second Ctrl-C ends the process at once, whatever is still closing.
        signal.signal(signal.SIGINT, lambda *_: os._exit(INTERRUPTED_EXIT_CODE))
        abort_everything()
        deadline = time.monotonic() + INTERRUPT_GRACE
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        raise
    return GroupResult({key(i): results[key(i)] for i in items if key(i) in results},
                       {key(i): failures[key(i)] for i in items if key(i) in failures})


_live_pools: "weakref.WeakSet[ConnectionPool]" = weakref.WeakSet()


def abort_everything() -> None:
    """Close every open connection and kill every local command: the steps under way end now."""
    for pool in list(_live_pools):
        pool.close()
    for proc in list(_running):
        _kill_group(proc)


class ConnectionPool:
    """Opens one connection per host, concurrently, and closes them all at the end."""

    def __init__(self, limits: Limits, connector: Callable[[Host, Limits], Connection] | None = None):
        self.limits = limits
        self.connections: dict[str, Connection] = {}
        # Tests put recording fakes here; by default, SSH or the local machine.
        self.connector = connector or ConnectionPool.default_connector
        self._lock = threading.Lock()
        _live_pools.add(self)

    @classmethod
    def for_cluster(cls, cluster) -> "ConnectionPool":
        return cls(Limits.of(cluster))

    # Set by tests that run whole workflows against recording fakes (see tests/unit/recording.py).
    default_connector: Callable[[Host, Limits], Connection] = staticmethod(lambda host, limits: connect(host, limits))

    def open(self, hosts: Iterable[Host]) -> GroupResult:
        """Connect to the hosts not connected yet, all at once; a failure per host is data."""
        def opener(host: Host) -> Connection:
            if host.name in self.connections:
                return self.connections[host.name]
            conn = self.connector(host, self.limits)
            with self._lock:
                self.connections[host.name] = conn
            return conn

        return run_concurrently(hosts, opener, key=lambda h: h.name)

    def __getitem__(self, name: str) -> Connection:
        return self.connections[name]

    def get(self, host: Host) -> Connection:
        """The host's connection, opened now if needed; a failure raises the host's own error."""
        opened = self.open([host])
        if opened.failed:
            raise opened.failed[host.name]
        return self.connections[host.name]

    def close(self) -> None:
        with self._lock:
            connections, self.connections = list(self.connections.values()), {}
        for conn in connections:
            try:
                conn.close()
            except Exception:
                pass

    def __enter__(self) -> "ConnectionPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def ship_images(source: Engine, target: Engine, tags: list[str]) -> int:
    """Copy images from one engine to another (`docker save | docker load`, through the Engine API).

    The tar stream passes through in chunks as the target takes them, never whole in
    memory. Returns the number of bytes sent.
    """
    from .commands.engine import LoadImages, SaveImages

    sent = 0

    def counted(chunks: Iterable[bytes]) -> Iterator[bytes]:
        nonlocal sent
        for chunk in chunks:
            sent += len(chunk)
            yield chunk

    target.load(LoadImages(), counted(source.save(SaveImages(tuple(tags)))))
    return sent
