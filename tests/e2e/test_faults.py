"""Faults injected for real on the testbed: locks, Ctrl-C, `kill -9` of infra, a frozen engine,
a restarted broker and a lost worker host — and what must hold after each.

The cluster: master on h1, one worker container on h2, h3 and this machine. The tests run in
file order on one cluster; each leaves it either fully up or fully clean, as it says.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tests.e2e.clients import celery_client, default_sigint
from tests.e2e.test_cluster import PROJECT, TEST_IMAGES, WHEELHOUSE

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CLUSTER = "flt"
COMMAND_TIMEOUT = 10  # the cluster file's timeouts.command: how long a frozen engine may hold infra


def infra(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "infra", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)


def start_infra(*args: str) -> subprocess.Popen:
    """infra in the background, its output unbuffered so that the test can react to each line."""
    return subprocess.Popen([sys.executable, "-m", "infra", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=default_sigint)


@pytest.fixture(scope="module")
def flt(testbed, tmp_path_factory):
    assert WHEELHOUSE.is_dir(), "run scripts/make-wheelhouse.sh first (scripts/run-tests.sh does)"
    folder = tmp_path_factory.mktemp("faults")
    project = folder / "wordcount"
    shutil.copytree(PROJECT, project, ignore=shutil.ignore_patterns("output", "__pycache__"))
    h1, h2, h3 = testbed.docker_hosts[:3]
    spec = {
        "name": CLUSTER,
        "hosts": testbed.cluster_hosts([h1, h2, h3]),
        "project": {"path": str(project), "app": "wordcount", "remote_path": "infra-flt"},
        "roles": {"master": {"host": h1.name}, "workers": [
            {"host": h2.name, "containers": 1, "concurrency": 2},
            {"host": h3.name, "containers": 1, "concurrency": 2},
            {"host": "local", "containers": 1, "concurrency": 1},
        ]},
        "images": TEST_IMAGES,
        "ssh": {"connect_timeout": 5, "known_hosts": str(testbed.known_hosts_path)},
        "timeouts": {"command": COMMAND_TIMEOUT, "broker": 90, "workers": 120},
        "state_dir": str(folder / "state"),
    }
    path = folder / "cluster.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    state = folder / "state" / CLUSTER
    yield {"file": str(path), "state": state, "hosts": [h1.name, h2.name, h3.name], "testbed": testbed}
    for host in testbed.docker_hosts[:3]:
        testbed.exec_result(host, "pkill -CONT -x dockerd")
    testbed.heal()
    infra("clean", "-f", str(path), "--files", "--volumes")


# --------------------------------------------------------------------------- what is on the hosts


def containers_on(testbed, host: str) -> list[str]:
    argv = f"docker ps --all --filter label=infra.cluster={CLUSTER} --format '{{{{.Names}}}}'"
    out = subprocess.run(argv, shell=True, capture_output=True, text=True).stdout if host == "local" \
        else testbed.exec(host, argv)
    return sorted(out.split())


def networks_on(testbed, host: str) -> list[str]:
    argv = f"docker network ls --filter label=infra.cluster={CLUSTER} --format '{{{{.Name}}}}'"
    out = subprocess.run(argv, shell=True, capture_output=True, text=True).stdout if host == "local" \
        else testbed.exec(host, argv)
    return sorted(out.split())


def env_files_on(flt, host: str) -> list[str]:
    if host == "local":
        folder = flt["state"] / "env"
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    out = flt["testbed"].exec(host, f"ls -A ~/infra-flt/{CLUSTER}/.infra 2>/dev/null || true")
    return sorted(out.split())


def nothing_left(flt) -> dict:
    """Every host's containers, networks and env files of the cluster (all empty after a clean)."""
    left = {}
    for host in flt["hosts"] + ["local"]:
        found = containers_on(flt["testbed"], host) + networks_on(flt["testbed"], host) + env_files_on(flt, host)
        if found:
            left[host] = found
    return left


def manifest_containers(flt) -> dict[str, set[str]]:
    path = flt["state"] / "manifest.json"
    if not path.exists():
        return {}
    hosts = json.loads(path.read_text())["hosts"]
    return {name: set(record["containers"]) for name, record in hosts.items()}


def expect_clean(flt) -> None:
    """Everything removed, the project copies too (so the next `up` sends the project again)."""
    result = infra("clean", "-f", flt["file"], "--files")
    assert result.returncode == 0, result.stdout + result.stderr
    assert nothing_left(flt) == {}


def expect_up(flt) -> None:
    result = infra("up", "-f", flt["file"])
    assert result.returncode == 0, result.stdout + result.stderr
    status = infra("status", "-f", flt["file"])
    assert status.returncode == 0, status.stdout + status.stderr


def run_until(process: subprocess.Popen, wanted: str, *, nth: int = 1, limit: float = 300) -> list[str]:
    """Read the process's output until the `nth` line containing `wanted`; returns the lines read."""
    lines, seen = [], 0
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise AssertionError(f"infra ended before {wanted!r} (exit {process.wait()}): "
                                 f"{''.join(lines)[-2000:]}{process.stderr.read()[-2000:]}")
        lines.append(line)
        if wanted in line:
            seen += 1
            if seen == nth:
                return lines
    raise AssertionError(f"no {wanted!r} within {limit:g} s")


# --------------------------------------------------------------------------- the tests


def test_two_ups_at_once_one_runs_the_other_reports_the_lock_and_exits_2(flt):
    first = start_infra("up", "-f", flt["file"])
    lock = flt["state"] / ".lock"
    deadline = time.monotonic() + 60
    while not (lock.exists() and lock.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    second = infra("up", "-f", flt["file"])
    out, err = first.communicate(timeout=900)
    assert first.returncode == 0, out + err
    assert second.returncode == 2, second.stdout + second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cluster {CLUSTER} is busy: `infra up` (pid {first.pid}")
    manifest = json.loads((flt["state"] / "manifest.json").read_text())
    assert sorted(manifest["hosts"]) == sorted(flt["hosts"] + ["local"])
    assert infra("status", "-f", flt["file"]).returncode == 0


def test_ctrl_c_while_containers_start_exits_130_within_5_s_and_status_matches_the_manifest(flt):
    expect_clean(flt)
    process = start_infra("up", "-f", flt["file"])
    run_until(process, f"create {CLUSTER}-broker")
    interrupted = time.monotonic()
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=30)
    took = time.monotonic() - interrupted
    assert process.returncode == 130
    assert took < 5, f"took {took:.1f} s to stop"
    # Nothing runs that the manifest does not know of: `clean` can always finish the job.
    recorded = manifest_containers(flt)
    for host in flt["hosts"] + ["local"]:
        assert set(containers_on(flt["testbed"], host)) <= recorded.get(host, set()), host
    status = json.loads(infra("status", "-f", flt["file"], "--json").stdout)
    running = {(c["host"], c["name"]) for c in status["containers"] if c["state"] not in ("missing", "unknown")}
    assert running == {(host, name) for host in recorded for name in recorded[host]
                       if name in containers_on(flt["testbed"], host)}
    expect_clean(flt)


# (description, line to wait for, which occurrence, seconds to wait after it, make the host lack the worker image)
KILL_POINTS = [
    ("project files going out", "project ", 1, 0.0, False),
    ("image transfer starting", "project ", 3, 0.5, True),
    ("image transfer under way", "project ", 3, 3.0, True),
    ("the broker just started", f"create {CLUSTER}-broker", 1, 0.0, False),
    ("the master's services starting", f"create {CLUSTER}-master", 1, 0.0, False),
    ("a worker just started", f"create {CLUSTER}-worker", 1, 0.0, False),
    ("workers starting", f"create {CLUSTER}-worker", 2, 0.0, False),
    ("waiting for the broker's login", f"create {CLUSTER}-worker", 3, 0.3, False),
    ("waiting for the workers", "broker accepts connections", 1, 0.0, False),
    # Workers log in as soon as the broker does, and answer a second or two later: kill in between.
    ("workers answering", "broker accepts connections", 1, 0.3, False),
]
# The last two points race the workers, which log in as soon as the broker does: when they answer
# before the kill, `up` has ended (exit 0), and the point checks what follows a complete `up`
# (an even one: `clean` leaves nothing; an odd one: `up` again is whole).
MAY_FINISH_FIRST = {"waiting for the workers", "workers answering"}


def test_kill_9_of_up_at_ten_points_then_clean_leaves_nothing_or_up_completes(flt):
    testbed = flt["testbed"]
    h3 = flt["hosts"][2]
    for index, (what, line, nth, delay, no_image) in enumerate(KILL_POINTS):
        if no_image:
            testbed.exec(h3, f"docker rmi --force {TEST_IMAGES['worker']} >/dev/null")
        process = start_infra("up", "-f", flt["file"])
        run_until(process, line, nth=nth)
        time.sleep(delay)
        if process.poll() is not None and what in MAY_FINISH_FIRST:
            process.communicate(timeout=30)
            assert process.returncode == 0, f"{what}: up ended before the kill, with exit code {process.returncode}"
        else:
            assert process.poll() is None, f"{what}: up had already ended"
            process.send_signal(signal.SIGKILL)
            process.communicate(timeout=30)
            assert process.returncode == -signal.SIGKILL, what
        if index % 2 == 0:
            result = infra("clean", "-f", flt["file"], "--files")
            assert result.returncode == 0, f"{what}: {result.stdout}{result.stderr}"
            assert nothing_left(flt) == {}, what
        else:
            expect_up(flt)
            expect_clean(flt)


def test_a_frozen_engine_is_named_and_up_status_and_clean_finish_the_rest(flt):
    testbed = flt["testbed"]
    h3 = flt["hosts"][2]
    expect_up(flt)
    testbed.exec(h3, "pkill -STOP -x dockerd")
    try:
        for command, allowed_exit in (("up", 1), ("status", 3)):
            began = time.monotonic()
            result = infra(command, "-f", flt["file"], timeout=300)
            took = time.monotonic() - began
            assert result.returncode == allowed_exit, result.stdout + result.stderr
            assert h3 in result.stdout + result.stderr
            assert took < 3 * COMMAND_TIMEOUT + 30, f"{command} took {took:.0f} s"
        began = time.monotonic()
        result = infra("clean", "-f", flt["file"], "--files", timeout=300)
        assert result.returncode == 1 and h3 in result.stdout + result.stderr, result.stdout + result.stderr
        assert time.monotonic() - began < 2 * COMMAND_TIMEOUT + 30
        for host in flt["hosts"][:2] + ["local"]:  # the others were cleaned
            assert containers_on(testbed, host) == [], host
    finally:
        testbed.exec(h3, "pkill -CONT -x dockerd")
    expect_clean(flt)


PARAMIKO_NOISE = ("Exception", "Traceback", "paramiko", "Errno", "protocol banner")


def test_a_paused_worker_host_is_one_line_of_infra_on_stderr_and_no_noise(flt):
    # docker pause freezes the whole host: TCP still connects, sshd never sends its banner.
    testbed = flt["testbed"]
    h3 = flt["hosts"][2]
    expect_up(flt)
    testbed.pause(h3)
    try:
        for command, exit_code in (("status", 3), ("up", 1), ("clean", 1)):
            result = infra(command, "-f", flt["file"], timeout=300)
            assert result.returncode == exit_code, result.stdout + result.stderr
            said = result.stdout + result.stderr
            assert re.search(rf"\b{h3}\b.*cannot connect to .*no SSH banner within 5 s", said), said
            assert "cannot connect to" in said and "no SSH banner within 5 s" in said, said
            for noise in PARAMIKO_NOISE:
                assert noise not in result.stderr, f"{command}: {result.stderr}"
            assert all(line.startswith("error: ") for line in result.stderr.splitlines()), result.stderr
    finally:
        testbed.unpause(h3)
    expect_clean(flt)


def _client(flt):
    address = flt["testbed"].host(flt["hosts"][0]).address
    return celery_client(flt["state"], address, CLUSTER)


def _thousand_chunks() -> list[str]:
    words = (PROJECT / "data" / "sample.txt").read_text().split()
    return [" ".join(words[(i * 6) % len(words):(i * 6) % len(words) + 6]) for i in range(1000)]


def _expected(chunks: list[str]) -> list[dict]:
    sys.path.insert(0, str(PROJECT))
    try:
        from wordcount.text import count_words
    finally:
        sys.path.remove(str(PROJECT))
    return [count_words(chunk) for chunk in chunks]


def _thousand_tasks_through(flt, fault) -> list[dict]:
    """1,000 tasks of the sample; `fault()` strikes once about a fifth are done; all results back."""
    from celery import group

    app = _client(flt)
    chunks = _thousand_chunks()
    try:
        job = group(app.signature("wordcount.count_words", args=(chunk,), kwargs={"pause": 0.1})
                    for chunk in chunks).apply_async()
        deadline = time.monotonic() + 300
        while job.completed_count() < 200:
            assert time.monotonic() < deadline, f"only {job.completed_count()} tasks done"
            time.sleep(0.2)
        fault()
        results = job.get(timeout=600, interval=0.5)
    finally:
        app.close()
    assert len(results) == 1000
    assert [r["counts"] for r in results] == _expected(chunks)
    return results


def test_a_broker_restarted_in_the_middle_of_1000_tasks_loses_none(flt):
    expect_up(flt)
    h1 = flt["hosts"][0]
    _thousand_tasks_through(flt, lambda: flt["testbed"].exec(h1, f"docker restart {CLUSTER}-broker"))


def test_a_worker_host_killed_in_the_middle_of_1000_tasks_loses_none(flt):
    h3 = flt["hosts"][2]
    results = _thousand_tasks_through(flt, lambda: flt["testbed"].kill(h3))
    hosts = Counter(r["worker"].rpartition("@")[2] for r in results)
    assert hosts[h3] < 1000 and sum(n for host, n in hosts.items() if host != h3) > 0, hosts
