"""Never hang, never half-done: the lock, timeouts, Ctrl-C and secrets created once — on this machine only."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from infra.commands.process import with_time_limit
from infra.config import Host
from infra.state.credentials import load_or_create_secrets
from infra.state.lock import ClusterBusyError, cluster_lock
from infra.errors import ConnectError
from infra.transport import pool, result
from infra.transport.connection import LocalConnection
from infra.transport.pool import run_concurrently
from infra.transport.result import Limits
from infra.transport.ssh import SSHConnection

LOCAL = Host(name="local", address="127.0.0.1")


# --------------------------------------------------------------------------- the lock


def test_a_second_command_on_the_same_cluster_says_who_holds_it_and_stops(tmp_path):
    with cluster_lock(tmp_path, "lab", "up"):
        with pytest.raises(ClusterBusyError) as caught:
            with cluster_lock(tmp_path, "lab", "clean"):
                pass
    message = str(caught.value)
    assert message.startswith(f"cluster lab is busy: `infra up` (pid {os.getpid()} on ")
    assert str(tmp_path / ".lock") in message and "--wait" in message
    assert caught.value.exit_code == 2


def test_the_lock_is_free_again_once_its_holder_is_done(tmp_path):
    with cluster_lock(tmp_path, "lab", "up"):
        pass
    with cluster_lock(tmp_path, "lab", "clean"):
        assert json.loads((tmp_path / ".lock").read_text())["command"] == "clean"
    assert (tmp_path / ".lock").read_text() == ""


def test_with_wait_a_second_command_waits_for_the_first(tmp_path):
    order = []
    holding = threading.Event()

    def first():
        with cluster_lock(tmp_path, "lab", "up"):
            holding.set()
            time.sleep(0.5)
            order.append("first done")

    thread = threading.Thread(target=first)
    thread.start()
    holding.wait(5)
    # flock locks belong to open files: another descriptor in this process waits like another process.
    with cluster_lock(tmp_path, "lab", "clean", wait=True):
        order.append("second runs")
    thread.join()
    assert order == ["first done", "second runs"]


def test_a_killed_holder_leaves_no_lock_behind(tmp_path):
    script = (f"from infra.state.lock import cluster_lock; import os, pathlib\n"
              f"with cluster_lock(pathlib.Path({str(tmp_path)!r}), 'lab', 'up'):\n"
              f"    print('held', flush=True); os.kill(os.getpid(), 9)\n")
    proc = subprocess.run(["python", "-c", script], capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert proc.returncode == -9 and "held" in proc.stdout
    with cluster_lock(tmp_path, "lab", "clean"):
        pass


# --------------------------------------------------------------------------- secrets made once


def test_secrets_generated_by_several_runs_at_once_are_one_and_the_same(tmp_path):
    path = tmp_path / "state" / "secrets.json"
    got = run_concurrently(range(16), lambda _: load_or_create_secrets(path))
    assert len({s.broker_password for s in got.succeeded.values()}) == 1
    assert json.loads(path.read_text())["broker_password"] == got.succeeded["0"].broker_password
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["secrets.json"]  # no temporary file left


# --------------------------------------------------------------------------- timeouts


def test_a_remote_command_is_bounded_on_the_host_too():
    assert with_time_limit(["sh", "-c", "sleep 100"], 30) == ["timeout", "-k", "5", "30", "sh", "-c", "sleep 100"]
    assert with_time_limit(["true"], 0.5) == ["timeout", "-k", "5", "0.5", "true"]


def test_a_local_command_that_times_out_is_ended_with_its_whole_process_group():
    marker = "31.4159"
    began = time.monotonic()
    result = LocalConnection(LOCAL).run(["sh", "-c", f"sleep {marker} & sleep {marker}; echo done"],
                                        timeout=1, check=False)
    assert time.monotonic() - began < 4
    assert result.exit_code == 124 and "timed out after 1 s" in result.stderr
    time.sleep(0.2)
    left = subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True, text=True).stdout
    assert left == ""


def test_a_local_command_without_a_timeout_gets_the_command_limit():
    result = LocalConnection(LOCAL, Limits(command=0.5)).run(["sleep", "5"], check=False)
    assert result.exit_code == 124


def test_a_sub_second_connect_timeout_is_honoured():
    """A server that accepts and never speaks: the SSH banner never comes."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    began = time.monotonic()
    try:
        with pytest.raises(ConnectError) as caught:
            SSHConnection(Host(name="mute", address="127.0.0.1", port=port, user="nobody"), Limits(connect=0.5))
    finally:
        server.close()
    assert time.monotonic() - began < 3
    assert "mute: cannot connect" in str(caught.value)


# --------------------------------------------------------------------------- Ctrl-C


@pytest.fixture
def restore_interrupts():
    yield
    result.interrupted.clear()
    signal.signal(signal.SIGINT, signal.default_int_handler)


def test_ctrl_c_stops_waiting_for_the_hosts_at_once_and_no_host_starts_another_step(restore_interrupts):
    started = []

    def slow(item):
        started.append(item)
        result.check_interrupted()
        time.sleep(10)
        return item

    threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    began = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_concurrently(range(3), slow)
    assert time.monotonic() - began < pool.INTERRUPT_GRACE + 1.5
    assert result.interrupted.is_set()
    with pytest.raises(result.Interrupted):
        result.check_interrupted()
    later = run_concurrently(["next"], slow)  # nothing starts after Ctrl-C
    assert later.succeeded == {} and isinstance(later.failed["next"], result.Interrupted)


def test_ctrl_c_ends_local_commands_under_way(restore_interrupts):
    conn = LocalConnection(LOCAL)
    threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    began = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_concurrently([1], lambda _: conn.run(["sleep", "27.1828"], timeout=60, check=False))
    assert time.monotonic() - began < 3
    time.sleep(0.2)
    assert subprocess.run(["pgrep", "-f", "sleep 27.1828"], capture_output=True, text=True).stdout == ""
