"""A port on a host's loopback that its sshd forwards back here, over infra's own SSH connection.

As `ssh -R 0:TARGET`: during `up`, each host's engine pulls images from the registry on this
machine's loopback through it, and the bytes it carries are counted for the progress bar.
"""

from __future__ import annotations

import socket
import threading

CONNECT_TIMEOUT = 10.0  # a forwarded connection's way to the target
CHUNK = 64 * 1024


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
        self.port = transport.request_port_forward("127.0.0.1", 0, handler=self._accept)

    @property
    def received(self) -> int:
        with self._lock:
            return self._received

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
        to_target = threading.Thread(target=self._pump_to_target, args=(channel, upstream), daemon=True)
        to_target.start()
        try:
            while True:
                data = upstream.recv(CHUNK)
                if not data:
                    break
                channel.sendall(data)
                with self._lock:
                    self._received += len(data)
            channel.shutdown_write()
        except Exception:  # socket and SSH errors alike end this one connection, and only it
            pass
        finally:
            to_target.join(CONNECT_TIMEOUT)
            upstream.close()
            channel.close()
            with self._lock:
                self._open.discard(channel)

    @staticmethod
    def _pump_to_target(channel, upstream: socket.socket) -> None:
        try:
            while True:
                data = channel.recv(CHUNK)
                if not data:
                    break
                upstream.sendall(data)
            upstream.shutdown(socket.SHUT_WR)
        except Exception:  # socket and SSH errors alike end this one connection, and only it
            pass

    def close(self) -> None:
        try:
            self._transport.cancel_port_forward("127.0.0.1", self.port)
        except Exception:  # the connection may be gone already: nothing is left to cancel
            pass
        with self._lock:
            channels = list(self._open)
        for channel in channels:
            channel.close()
