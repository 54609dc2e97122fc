"""`infra flower`: what it tells (never the password), what it refuses, and its local forward."""

from __future__ import annotations

import json
import socket
import threading
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from infra.cli import main
from infra.errors import ConnectError, InfraError, StateError
from infra.plans.addresses import flower_address_on_master
from infra.transport.forward import LocalForward
from infra.workflows.flower import check_flower_runs, flower_access, hold_until_interrupted
from tests.unit.test_plan import make_cluster

MASTER = "    host: gpu-box\n  workers:"


def with_secrets(cluster, password="Flw-pw_0123456789"):
    cluster.secrets_path.parent.mkdir(parents=True, exist_ok=True)
    cluster.secrets_path.write_text(json.dumps({
        "broker_user": "infra", "broker_password": "b", "results_password": "r",
        "flower_user": "admin", "flower_password": password}))
    return password


def test_it_tells_the_local_url_the_user_and_where_the_password_is_never_the_password(tmp_path):
    cluster = make_cluster(tmp_path)
    password = with_secrets(cluster)
    access = flower_access(cluster, 40111)
    text = "\n".join(access.lines())
    assert access.url == "https://127.0.0.1:40111"
    assert "user admin" in text and str(cluster.secrets_path) in text
    assert str(cluster.tls_dir / "ca.crt") in text
    assert password not in text


def test_with_tls_off_the_url_is_plain_http_on_loopback(tmp_path):
    cluster = make_cluster(tmp_path, lambda t: t.replace("ports:\n  broker: 5671\n", "tls: false\nports:\n"))
    with_secrets(cluster)
    access = flower_access(cluster, 40111)
    assert access.url == "http://127.0.0.1:40111" and access.ca_path is None


def test_a_cluster_never_started_from_here_is_a_state_error(tmp_path):
    with pytest.raises(StateError) as raised:
        flower_access(make_cluster(tmp_path), 40111)
    assert "run `infra up`" in str(raised.value) and "\n" not in str(raised.value)


def test_the_forward_goes_to_flowers_published_address_on_the_master(tmp_path):
    assert flower_address_on_master(make_cluster(tmp_path)) == "127.0.0.1"
    vpn = make_cluster(tmp_path, lambda t: t.replace(
        MASTER, "    host: gpu-box\n    bind_address: 10.8.0.1\n    publish_flower: true\n  workers:"))
    assert flower_address_on_master(vpn) == "10.8.0.1"
    everywhere = make_cluster(tmp_path, lambda t: t.replace(MASTER, "    host: gpu-box\n    publish_flower: true\n"
                                                                    "  workers:"))
    assert flower_address_on_master(everywhere) == "127.0.0.1"


class FakeEngine:
    def __init__(self, listed):
        self.listed = listed

    def query(self, op):
        return self.listed


def conn_with(listed):
    return SimpleNamespace(host=SimpleNamespace(name="gpu-box"), engine=FakeEngine(listed))


def docker_ps_row(name, state):
    return {"Names": [f"/{name}"], "Id": "abc", "State": state, "Image": "i", "ImageID": "sha256:1",
            "Labels": {"infra.cluster": "lab", "infra.role": "flower"}}


@pytest.mark.parametrize("listed, words", [
    ([], "no container lab-flower"),
    ([docker_ps_row("lab-flower", "exited")], "lab-flower is exited"),
])
def test_a_flower_that_is_not_running_is_one_line(tmp_path, listed, words):
    with pytest.raises(InfraError) as raised:
        check_flower_runs(make_cluster(tmp_path), conn_with(listed))
    assert str(raised.value).startswith("gpu-box: Flower is not running") and words in str(raised.value)
    check_flower_runs(make_cluster(tmp_path), conn_with([docker_ps_row("lab-flower", "running")]))


class SocketChannel:
    """A paramiko channel's few methods, over one end of a socket pair."""

    def __init__(self, sock):
        self.sock = sock

    def recv(self, size):
        return self.sock.recv(size)

    def sendall(self, data):
        self.sock.sendall(data)

    def shutdown_write(self):
        self.sock.shutdown(socket.SHUT_WR)

    def close(self):
        self.sock.close()


class EchoTransport:
    """Each direct-tcpip channel leads to an echo service that upper-cases what it gets."""

    def __init__(self):
        self.opened = []
        self.active = True

    def open_channel(self, kind, target, origin, timeout=None):
        self.opened.append((kind, target))
        ours, theirs = socket.socketpair()
        threading.Thread(target=self._echo, args=(theirs,), daemon=True).start()
        return SocketChannel(ours)

    @staticmethod
    def _echo(sock):
        with sock:
            while data := sock.recv(1024):
                sock.sendall(data.upper())

    def is_active(self):
        return self.active


def test_the_local_forward_listens_on_loopback_and_carries_each_connection_through_a_channel():
    transport = EchoTransport()
    forward = LocalForward(transport, ("127.0.0.1", 5555))
    try:
        assert forward._listener.getsockname()[0] == "127.0.0.1"
        forward.check()
        with socket.create_connection(("127.0.0.1", forward.port), timeout=5) as client:
            client.sendall(b"hello flower")
            assert client.recv(1024) == b"HELLO FLOWER"
        assert transport.opened == [("direct-tcpip", ("127.0.0.1", 5555))] * 2
    finally:
        forward.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", forward.port), timeout=2)


def test_a_taken_local_port_is_refused():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        with pytest.raises(OSError):
            LocalForward(EchoTransport(), ("127.0.0.1", 5555), port=taken.getsockname()[1])


def test_holding_ends_with_ctrl_c_as_a_normal_end_and_with_a_lost_connection_as_an_error(monkeypatch):
    closed = []
    forward = SimpleNamespace(alive=True, close=lambda: closed.append(True))

    def interrupted(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr("infra.workflows.flower.time.sleep", interrupted)
    hold_until_interrupted(conn_with([]), forward)  # returns: exit 0
    assert closed == [True]
    lost = SimpleNamespace(alive=False, close=lambda: closed.append(True))
    with pytest.raises(ConnectError) as raised:
        hold_until_interrupted(conn_with([]), lost)
    assert "gpu-box: lost the SSH connection" in str(raised.value) and closed == [True, True]


def test_the_flower_command_has_help_with_an_example():
    result = CliRunner().invoke(main, ["flower", "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.output and "infra flower -f cluster.yaml" in result.output
    assert "--no-browser" in result.output and "--port" in result.output


def test_a_bad_port_is_a_usage_error():
    result = CliRunner().invoke(main, ["flower", "--port", "70000"])
    assert result.exit_code == 2


def test_a_master_that_cannot_be_reached_is_one_line_and_exit_1(tmp_path, monkeypatch):
    from infra.transport.pool import ConnectionPool

    cluster = make_cluster(tmp_path)

    def unreachable(host, limits):
        raise ConnectError(f"{host.name}: cannot connect to 192.168.1.20:22 (timed out)")

    monkeypatch.setattr(ConnectionPool, "default_connector", staticmethod(unreachable))
    monkeypatch.setattr("infra.cli.flower.load_cluster_file", lambda _: cluster)
    result = CliRunner().invoke(main, ["flower", "--no-browser"])
    assert result.exit_code == 1
    assert result.output.strip() == "error: gpu-box: cannot connect to 192.168.1.20:22 (timed out)"
