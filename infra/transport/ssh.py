"""A host reached over SSH: Fabric for ~/.ssh/config, ssh-agent and keys; paramiko channels for streams.

Binary streams such as `docker save | docker load` pass unchanged; host keys are checked as
OpenSSH does (`infra.transport.hostkeys`).
"""

from __future__ import annotations

import io
import logging
import os
import select
import shlex
import socket
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING

from ..commands.process import KILL_AFTER, with_time_limit
from ..config import Host
from ..errors import ConnectError
from . import hostkeys
from .connection import EOF_GRACE_AFTER_EXIT, Connection
from .result import CommandResult, Limits, LineBuffer

if TYPE_CHECKING:
    from ..engine.api import Engine


# paramiko logs a failed connection itself, from its transport's thread, with tracebacks (the
# banner not read, a socket closed under it); infra says the same in one line per host, so
# paramiko's log reaches no terminal.
_PARAMIKO_LOG = logging.getLogger("paramiko")
_PARAMIKO_LOG.addHandler(logging.NullHandler())
_PARAMIKO_LOG.propagate = False

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
            # A server that accepted but never spoke SSH (a frozen host) fails later as "No
            # existing session"; what it did not send says more.
            transport = self._fabric.client.get_transport()
            silent = transport is not None and not transport.remote_version
            # The client's transport first (its thread reads the socket until stopped; Fabric
            # leaves it running when the connection never opened), then the socket under it.
            self._fabric.client.close()
            self._fabric.close()
            if sock is not None:
                sock.close()
            refusal = hostkeys.explain(host.name, exc, self._known_hosts[0])
            if refusal:
                raise ConnectError(refusal) from None
            why = f"no SSH banner within {connect_timeout:g} s (host hung or not an SSH server)" if silent \
                else _describe_connect_error(exc)
            raise ConnectError(f"{host.name}: cannot connect to {host.describe()}: {why}") from None
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
        from .forward import RemoteForward

        return RemoteForward(self._transport, target)

    def forward_local_port(self, target: tuple[str, int], port: int = 0):
        """A port on this machine's loopback that leads, through this connection, to `target` on
        the host (as `ssh -L`). OSError when the port here is taken."""
        from .forward import LocalForward

        return LocalForward(self._transport, target, port)

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
        ended = _read_until_done(channel, (out, out_lines), (err, err_lines),
                                 deadline=time.monotonic() + timeout if timeout else None)
        out_lines.close()
        err_lines.close()
        if ended:
            code = channel.recv_exit_status()
            channel.close()
        else:
            channel.close()
            code = 124
            err.extend(f"timed out after {timeout:g} s".encode())
        if writer:
            writer.join(timeout=5)
        result = CommandResult(code, out.decode(errors="replace"), err.decode(errors="replace"))
        return self._checked(command, result, check)

    def _open_engine(self) -> Engine:
        from ..engine.api import Engine  # the Docker SDK is imported on first use only

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


def _read_until_done(channel, stdout: tuple[bytearray, LineBuffer], stderr: tuple[bytearray, LineBuffer],
                     deadline: float | None) -> bool:
    """Collect a command's output until it ended; False if `deadline` came first."""
    exited_at = 0.0
    while True:
        got_out = _take_ready(channel.recv_ready, channel.recv, *stdout)
        got_err = _take_ready(channel.recv_stderr_ready, channel.recv_stderr, *stderr)
        drained = not channel.recv_ready() and not channel.recv_stderr_ready()
        # The exit status may arrive before the last output (sshd sends it when the
        # command exits, not when its pipes are drained): read on until EOF. A command
        # that leaves a background process holding its output gets a short grace instead.
        if drained and (channel.eof_received or channel.closed):
            return True
        if channel.exit_status_ready():
            exited_at = exited_at or time.monotonic()
            if drained and time.monotonic() - exited_at > EOF_GRACE_AFTER_EXIT:
                return True
        if deadline and time.monotonic() > deadline:
            return False
        if not (got_out or got_err):
            select.select([channel], [], [], 0.05)


def _take_ready(ready, receive, collected: bytearray, lines: LineBuffer) -> bool:
    """Take what one of the channel's streams holds now, without waiting; True if it held anything."""
    got = False
    while ready():
        chunk = receive(65536)
        collected.extend(chunk)
        lines.feed(chunk)
        got = True
    return got


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
