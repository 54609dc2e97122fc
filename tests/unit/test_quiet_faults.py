"""A host that takes the connection and never speaks SSH (frozen, or not an SSH server): each
command says so in its own line for that host, and nothing of paramiko's reaches the terminal."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CONNECT_TIMEOUT = 1


@pytest.fixture
def silent_host():
    """A TCP port on loopback that accepts every connection and never sends a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    server.close()


@pytest.fixture
def cluster_file(tmp_path, silent_host):
    project = tmp_path / "proj"
    project.mkdir()
    (project / "requirements.txt").write_text("")
    path = tmp_path / "cluster.yaml"
    path.write_text(f"""\
name: quiet
hosts:
  frozen: {{address: 127.0.0.1, port: {silent_host}, user: nobody}}
project: {{path: proj}}
state_dir: {tmp_path / "state"}
roles:
  master: {{host: frozen}}
  workers:
    - {{host: frozen}}
ssh: {{connect_timeout: {CONNECT_TIMEOUT}, known_hosts: {tmp_path / "known_hosts"}}}
""")
    return path


def infra(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "infra", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


NO_BANNER = f"no SSH banner within {CONNECT_TIMEOUT} s (host hung or not an SSH server)"


@pytest.mark.parametrize("command, exit_code", [("status", 3), ("up", 1), ("clean", 1)])
def test_a_silent_host_gets_one_line_of_infra_and_no_noise_of_paramiko(cluster_file, command, exit_code):
    began = time.monotonic()
    result = infra(command, "-f", str(cluster_file))
    assert result.returncode == exit_code, result.stdout + result.stderr
    assert NO_BANNER in result.stdout + result.stderr
    for noise in ("Exception", "Traceback", "paramiko", "Errno", "banner["):
        assert noise not in result.stderr, result.stderr
    assert all(line.startswith("error: ") for line in result.stderr.splitlines()), result.stderr
    assert time.monotonic() - began < 30
