"""The TCP connection under every SSH connection: no Nagle, no delayed ACK, and a refusal in one line."""

from __future__ import annotations

import socket
import sys
import threading

import pytest

from infra.config import Host
from infra.errors import ConnectError
from infra.transport import ssh
from infra.transport.result import Limits
from infra.transport.ssh import SSHConnection


@pytest.fixture
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    yield server
    server.close()


def test_the_socket_has_nagles_algorithm_off_from_the_first_packet_and_reads_as_any_socket(listener):
    sock = ssh._nodelay_socket("127.0.0.1", listener.getsockname()[1], timeout=5)
    peer, _ = listener.accept()
    try:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert sock.gettimeout() == 5
        peer.sendall(b"SSH-2.0-test\r\n")
        assert sock.recv(64) == b"SSH-2.0-test\r\n"
    finally:
        peer.close()
        sock.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="TCP_QUICKACK is Linux's")
def test_on_linux_every_read_acknowledges_at_once(listener):
    sock = ssh._nodelay_socket("127.0.0.1", listener.getsockname()[1], timeout=5)
    peer, _ = listener.accept()
    seen = []
    original = sock.setsockopt

    def record(level, option, value):
        seen.append((level, option, value))
        original(level, option, value)

    try:
        sock.setsockopt = record
        threading.Thread(target=peer.sendall, args=(b"x",)).start()
        assert sock.recv(1) == b"x"
        assert seen == [(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)]
    finally:
        peer.close()
        sock.close()


def test_a_refused_connection_is_one_line_naming_the_host():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    host = Host(name="h1", address="127.0.0.1", port=port, user="nobody")
    with pytest.raises(ConnectError, match=r"^h1: cannot connect to nobody@127.0.0.1:\d+: connection refused$"):
        SSHConnection(host, Limits(connect=2, known_hosts="/nonexistent/known_hosts"))
