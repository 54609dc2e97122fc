"""Ports forwarded through infra's own SSH connection to a host, in either direction.

`RemoteForward`, as `ssh -R 0:TARGET`: a port on the host's loopback that its sshd forwards back
here. During `up`, each host's engine pulls images from the registry on this machine's loopback
through it, and the bytes it carries are counted for the progress bar.

`LocalForward`, as `ssh -L PORT:TARGET`: a port on this machine's loopback that leads to a port
of the host's loopback (`infra flower`: Flower, published on the master's loopback only), each
connection a `direct-tcpip` channel of the connection.
"""

from __future__ import annotations

import socket
import threading
from typing import Callable

CONNECT_TIMEOUT = 10.0  # a forwarded connection's way to the target
CHUNK = 64 * 1024
LOOPBACK = "127.0.0.1"
ACCEPT_POLL = 0.5  # seconds between two looks at whether a local forward is closing


def _relay(channel, upstream: socket.socket, on_received: Callable[[int], None] | None = None) -> None:
    """Carry one connection both ways until either side ends it; `on_received` counts what goes
    from `upstream` into the channel."""
    to_upstream = threading.Thread(target=_pump_to_socket, args=(channel, upstream), daemon=True)
    to_upstream.start()
    try:
        while True:
            data = upstream.recv(CHUNK)
            if not data:
                break
            channel.sendall(data)
            if on_received is not None:
                on_received(len(data))
        channel.shutdown_write()
    except Exception:  # socket and SSH errors alike end this one connection, and only it
        pass
    finally:
        to_upstream.join(CONNECT_TIMEOUT)
        upstream.close()
        channel.close()


def _pump_to_socket(channel, upstream: socket.socket) -> None:
    try:
        while True:
            data = channel.recv(CHUNK)
            if not data:
                break
            upstream.sendall(data)
        upstream.shutdown(socket.SHUT_WR)
    except Exception:  # socket and SSH errors alike end this one connection, and only it
        pass


class RemoteForward:
    """A port on a host's loopback that its sshd forwards here, to `target` (as `ssh -R 0:TARGET`).

    Counts the bytes that go from the target to the host: what the host received.
    """

    def __init__(self, transport, target: tuple[str, int]):
        self.target = target
        self._transport = transport
        self._lock = threading.Lock()
        self._received = 0
        self._open: set = set()
        # Port 0: the host's sshd picks a free one and says which.
        self.port = transport.request_port_forward(LOOPBACK, 0, handler=self._accept)

    @property
    def received(self) -> int:
        with self._lock:
            return self._received

    def _count(self, size: int) -> None:
        with self._lock:
            self._received += size

    def _accept(self, channel, origin, server) -> None:
        # Called by paramiko's transport thread, which must not wait: each connection gets a thread.
        threading.Thread(target=self._serve, args=(channel,), name="infra-forward", daemon=True).start()

    def _serve(self, channel) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=CONNECT_TIMEOUT)
        except OSError:
            channel.close()
            return
        upstream.settimeout(None)
        with self._lock:
            self._open.add(channel)
        try:
            _relay(channel, upstream, self._count)
        finally:
            with self._lock:
                self._open.discard(channel)

    def close(self) -> None:
        try:
            self._transport.cancel_port_forward(LOOPBACK, self.port)
        except Exception:  # the connection may be gone already: nothing is left to cancel
            pass
        with self._lock:
            channels = list(self._open)
        for channel in channels:
            channel.close()


class LocalForward:
    """A port on this machine's loopback leading to `target` on the host (as `ssh -L PORT:TARGET`).

    `port` 0 takes a free one. Listens on 127.0.0.1 only: nobody on the network reaches it.
    `check()` opens one channel to the target, so that a target nobody listens on is known
    before anyone is told the URL.
    """

    def __init__(self, transport, target: tuple[str, int], port: int = 0):
        self.target = target
        self._transport = transport
        self._stopping = threading.Event()
        self._listener = socket.create_server((LOOPBACK, port))  # OSError when the port is taken
        self._listener.settimeout(ACCEPT_POLL)  # a closed listener does not wake accept() everywhere
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_all, name="infra-local-forward", daemon=True)
        self._thread.start()

    def _open_channel(self, origin: tuple[str, int]):
        return self._transport.open_channel("direct-tcpip", self.target, origin, timeout=CONNECT_TIMEOUT)

    def check(self) -> None:
        """Raises (paramiko's ChannelException, or SSHException) when the host cannot reach the target."""
        self._open_channel((LOOPBACK, 0)).close()

    @property
    def alive(self) -> bool:
        return self._transport.is_active()

    def _accept_all(self) -> None:
        while not self._stopping.is_set():
            try:
                client, origin = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:  # the listener was closed: the forward ends
                return
            client.settimeout(None)
            threading.Thread(target=self._serve, args=(client, origin), name="infra-forward", daemon=True).start()

    def _serve(self, client: socket.socket, origin) -> None:
        try:
            channel = self._open_channel(origin[:2])
        except Exception:  # the host refused or lost the way to the target: this connection ends
            client.close()
            return
        _relay(channel, client)

    def close(self) -> None:
        self._stopping.set()
        self._listener.close()
        self._thread.join(CONNECT_TIMEOUT)
