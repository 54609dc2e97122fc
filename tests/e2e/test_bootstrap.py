"""`infra bootstrap` on the real testbed: fresh hosts (sshd, Python, sudo; no Docker, no systemd).

One testbed for the module: h1 (a Docker host: the master), fresh1 (reached as root), fresh2
(reached as `deploy`, passwordless sudo) and unsupported1 (says it is Fedora). Docker is
installed for real from Debian bookworm's docker.io (the fresh hosts reach Debian's mirror
from the testbed network). The tests run in file order, as a user would: refuse the
unsupported host, bootstrap, bootstrap again, a user with a sudo password, then `infra up`
puts workers on the bootstrapped hosts and tasks run there.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.e2e.clients import celery_client
from tests.e2e.test_cluster import TEST_IMAGES
from tests.testbed import Testbed

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
PROJECT = REPO / "projects" / "wordcount"
WHEELHOUSE = REPO / ".cache" / "wheels"
CLUSTER = "e2e-bs"
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
PREFIX = f"infra-tb-e2e{('-' + _WORKER) if _WORKER else ''}-bootstrap"
SUDO_USER, SUDO_PASSWORD = "alice", "alice-Pa55 word!"


def infra(*args: str, input: str | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run the real command line, as a user would (stdin is not a terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "infra", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO,
        input=input if input is not None else "",
    )


def host_lines(output: str) -> dict[str, str]:
    """The per-host lines of bootstrap's report that carry an outcome."""
    lines = {}
    for line in output.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[1].split(":")[0] in ("already there", "installed", "configured", "failed"):
            lines[parts[0]] = parts[1]
    return lines


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    """The testbed, the cluster file and its state; the cluster and the testbed go at the end."""
    if not WHEELHOUSE.is_dir():
        subprocess.run(["bash", str(REPO / "scripts" / "make-wheelhouse.sh"), str(WHEELHOUSE),
                        str(PROJECT / "requirements.txt")], check=True, timeout=900)
    started = time.monotonic()
    tb = Testbed.start(hosts=1, fresh=2, unsupported=1, prefix=PREFIX)
    print(f"\ntestbed up in {time.monotonic() - started:.1f} s")
    folder = tmp_path_factory.mktemp("bootstrap")
    h1, fresh1, fresh2 = tb.host("h1"), tb.host("fresh1"), tb.host("fresh2")
    hosts = {
        "h1": h1.cluster_entry(),
        "fresh1": fresh1.as_user("root").cluster_entry(),
        "fresh2": fresh2.as_user("deploy").cluster_entry(),
        "fresh2-alice": fresh2.as_user(SUDO_USER).cluster_entry(),
        "unsupported1": tb.host("unsupported1").cluster_entry(),
    }
    spec = {
        "name": CLUSTER,
        "hosts": hosts,
        "project": {"path": str(PROJECT), "app": "wordcount", "remote_path": "infra-e2e-bs"},
        "roles": {
            "master": {"host": "h1"},
            "workers": [
                {"host": "fresh1", "containers": 1, "concurrency": 2, "queues": ["on-fresh1"]},
                {"host": "fresh2", "containers": 1, "concurrency": 2, "queues": ["on-fresh2"]},
            ],
        },
        "images": TEST_IMAGES,
        "docker": {"source": "distro"},
        "ssh": {"connect_timeout": 5, "known_hosts": str(tb.known_hosts_path)},
        "state_dir": str(folder / "state"),
    }
    path = folder / "cluster.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    info = {"file": str(path), "state": folder / "state" / CLUSTER, "tb": tb, "timings": {}}
    try:
        yield info
    finally:
        try:
            infra("clean", "-f", str(path), "--volumes", "--files", timeout=300)
        finally:
            tb.close()
            for name, seconds in info["timings"].items():
                print(f"timing: {name}: {seconds:.1f} s")


def snapshot(tb: Testbed, host: str) -> str:
    """What bootstrap would change on a host: packages, apt sources and lists, groups, /etc/docker."""
    return tb.exec(host, "dpkg-query -W -f '${Package} ${Version}\\n' | sha256sum; "
                         "ls -la /etc/apt/sources.list.d /etc/apt/keyrings /var/lib/apt/lists 2>&1; "
                         "getent group docker || echo no-docker-group; id deploy; "
                         "find /etc/docker -type f -exec sha256sum {} + 2>&1; "
                         "ls /var/log; command -v docker dockerd || echo no-docker")


def test_unsupported_os_gets_a_clear_error_and_is_left_untouched(bed):
    tb = bed["tb"]
    before = snapshot(tb, "unsupported1")
    result = infra("bootstrap", "-f", bed["file"], "--hosts", "unsupported1")
    assert result.returncode == 1, result.stdout + result.stderr
    line = host_lines(result.stdout)["unsupported1"]
    assert line.startswith("failed: unsupported OS 'Fedora Linux 39 (Container Image)'")
    assert "Ubuntu and Debian" in line and "nothing was changed" in line
    assert "error: bootstrap failed on 1 of 1 host(s): unsupported1" in result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(tb, "unsupported1") == before


def test_up_before_bootstrap_names_the_hosts_without_docker_and_touches_nothing(bed):
    tb = bed["tb"]
    result = infra("up", "-f", bed["file"])
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "fresh1: Docker is not installed" in lines[0] and "fresh2: Docker is not installed" in lines[0]
    assert "infra bootstrap" in lines[0] and "--hosts fresh1,fresh2" in lines[0]
    assert tb.exec("h1", "docker ps --all --quiet").strip() == ""
    assert not (bed["state"] / "manifest.json").exists() and not (bed["state"] / "secrets.json").exists()


def test_bootstrap_installs_docker_as_root_and_through_sudo(bed):
    tb = bed["tb"]
    for name in ("fresh1", "fresh2"):
        assert "no-docker" in tb.exec(name, "command -v docker dockerd || echo no-docker")
        assert tb.exec(name, "[ -d /run/systemd/system ] && echo systemd || echo none") == "none"
    started = time.monotonic()
    result = infra("bootstrap", "-f", bed["file"])  # the hosts the cluster uses: h1, fresh1, fresh2
    bed["timings"]["first bootstrap (2 installs at once)"] = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    lines = host_lines(result.stdout)
    assert set(lines) == {"h1", "fresh1", "fresh2"}
    assert lines["h1"].startswith("already there: Docker ") and "nothing changed" in lines["h1"]
    for name in ("fresh1", "fresh2"):
        assert lines[name].startswith("installed: Docker 20.10"), lines[name]
        assert "installed docker.io from Debian's packages" in lines[name]
        assert "started dockerd in the background (no systemd; log /var/log/dockerd.log)" in lines[name]
    assert "added deploy to the group docker" in lines["fresh2"]
    assert "group docker" not in lines["fresh1"]  # root needs none
    assert "2 installed" in result.stdout and "1 already there" in result.stdout

    # New logins use the engine without sudo; dockerd outlived bootstrap's SSH session.
    code, out = tb.ssh("fresh1", "docker version --format '{{.Server.Version}}'", user="root")
    assert code == 0 and out.startswith("20.10"), out
    code, out = tb.ssh("fresh2", "id -nG; docker version --format '{{.Server.Version}}'", user="deploy")
    assert code == 0 and "docker" in out.splitlines()[0].split() and out.splitlines()[1].startswith("20.10"), out
    for name in ("fresh1", "fresh2"):
        pid = tb.exec(name, "cat /var/run/docker.pid")
        session = tb.exec(name, f"ps -o sid= -p {pid}").strip()
        assert session == pid, "dockerd must lead a session of its own (setsid)"
        assert "sshd" not in tb.exec(name, f"ps -o args= -p $(ps -o ppid= -p {pid})")
        assert "API listen on /var/run/docker.sock" in tb.exec(name, "cat /var/log/dockerd.log")


def test_second_bootstrap_changes_nothing_and_says_so(bed):
    tb = bed["tb"]
    before = {name: snapshot(tb, name) for name in ("fresh1", "fresh2")}
    pids = {name: tb.exec(name, "cat /var/run/docker.pid") for name in ("fresh1", "fresh2")}
    started = time.monotonic()
    result = infra("bootstrap", "-f", bed["file"])
    bed["timings"]["second bootstrap (no change)"] = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    lines = host_lines(result.stdout)
    for name in ("h1", "fresh1", "fresh2"):
        assert lines[name].startswith("already there: Docker ") and lines[name].endswith("nothing changed"), lines
    assert "3 already there" in result.stdout
    assert {name: snapshot(tb, name) for name in ("fresh1", "fresh2")} == before
    assert {name: tb.exec(name, "cat /var/run/docker.pid") for name in ("fresh1", "fresh2")} == pids


def test_one_failed_host_among_good_ones_exits_1_with_one_line_each(bed):
    result = infra("bootstrap", "-f", bed["file"], "--hosts", "fresh1,unsupported1,fresh2")
    assert result.returncode == 1
    lines = host_lines(result.stdout)
    assert lines["fresh1"].startswith("already there") and lines["fresh2"].startswith("already there")
    assert lines["unsupported1"].startswith("failed: unsupported OS")
    assert result.stderr.strip().splitlines() == ["error: bootstrap failed on 1 of 3 host(s): unsupported1"]


def test_user_whose_sudo_asks_a_password(bed):
    """alice: sudo with a password, not in the group docker. The password goes on stdin only."""
    tb = bed["tb"]
    tb.exec("fresh2", f"useradd --create-home --shell /bin/bash {SUDO_USER} && "
                      f"echo '{SUDO_USER} ALL=(ALL:ALL) ALL' > /etc/sudoers.d/{SUDO_USER} && "
                      f"chmod 0440 /etc/sudoers.d/{SUDO_USER} && "
                      f"install -d -m 700 -o {SUDO_USER} -g {SUDO_USER} /home/{SUDO_USER}/.ssh && "
                      f"install -m 600 -o {SUDO_USER} -g {SUDO_USER} /root/.ssh/authorized_keys "
                      f"/home/{SUDO_USER}/.ssh/authorized_keys")
    tb.exec("fresh2", "chpasswd", input=f"{SUDO_USER}:{SUDO_PASSWORD}\n")
    code, out = tb.ssh("fresh2", "sudo -n true", user=SUDO_USER)
    assert code != 0 and "password is required" in out

    # No terminal and no --sudo-password-stdin: told how, nothing done.
    result = infra("bootstrap", "-f", bed["file"], "--hosts", "fresh2-alice")
    assert result.returncode == 1
    assert "alice needs a sudo password" in host_lines(result.stdout)["fresh2-alice"]

    result = infra("bootstrap", "-f", bed["file"], "--hosts", "fresh2-alice", "--sudo-password-stdin",
                   input="not the password\n")
    assert result.returncode == 1
    assert host_lines(result.stdout)["fresh2-alice"].startswith("failed: sudo did not accept the password of alice")
    assert "not the password" not in result.stdout + result.stderr
    assert "docker" not in tb.exec("fresh2", f"id -nG {SUDO_USER}")

    result = infra("bootstrap", "-f", bed["file"], "--hosts", "fresh2-alice", "--sudo-password-stdin",
                   input=SUDO_PASSWORD + "\n")
    assert result.returncode == 0, result.stdout + result.stderr
    line = host_lines(result.stdout)["fresh2-alice"]
    assert line.startswith("configured: Docker 20.10") and "added alice to the group docker" in line
    assert "installed" not in line and "started" not in line  # the engine was already there
    assert SUDO_PASSWORD not in result.stdout + result.stderr
    assert SUDO_PASSWORD not in tb.exec("fresh2", "ps auxww; cat /var/log/dockerd.log")
    code, out = tb.ssh("fresh2", "docker version --format '{{.Server.Version}}'", user=SUDO_USER)
    assert code == 0 and out.startswith("20.10"), out

    # Again: nothing to do, so no password is needed (none is given).
    result = infra("bootstrap", "-f", bed["file"], "--hosts", "fresh2-alice")
    assert result.returncode == 0, result.stdout + result.stderr
    assert host_lines(result.stdout)["fresh2-alice"].startswith("already there")


def test_up_places_workers_on_the_bootstrapped_hosts_and_tasks_run_there(bed):
    started = time.monotonic()
    result = infra("up", "-f", bed["file"])
    bed["timings"]["infra up (ship images, master on h1, workers on fresh1 and fresh2)"] = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    tb = bed["tb"]
    for name in ("fresh1", "fresh2"):
        names = tb.exec(name, "docker ps --filter label=infra.cluster=" + CLUSTER + " --format '{{.Names}}'")
        assert names.split() == [f"{CLUSTER}-worker-{name}-1"]

    app = celery_client(bed["state"], tb.host("h1").address, CLUSTER)
    try:
        started = time.monotonic()
        results = {
            name: app.send_task("wordcount.count_words", args=(f"the {name} host counts the words the",),
                                queue=f"on-{name}")
            for name in ("fresh1", "fresh2")
        }
        answers = {name: r.get(timeout=120) for name, r in results.items()}
        bed["timings"]["one task on each bootstrapped host"] = time.monotonic() - started
    finally:
        app.close()
    for name, answer in answers.items():
        assert answer["counts"]["the"] == 3 and answer["words"] == 7, answer
        assert answer["worker"] == f"{CLUSTER}-worker-{name}-1@{name}", answer


def test_the_registry_step_installs_docker_registry_without_its_service(bed):
    """What `bootstrap` adds on this machine when images are shipped, run for real on a fresh host
    (as `deploy`, through sudo): Debian's docker-registry is installed and its own service, which
    would listen on port 5000 of every address, never starts; no policy-rc.d is left behind."""
    from infra.commands.bootstrap import POLICY_RC, probe_argv
    from infra.config import load_cluster
    from infra.facts.os import parse_probe
    from infra.plans.bootstrap import plan_bootstrap
    from infra.transport.pool import ConnectionPool
    from infra.ui.reporter import Reporter
    from infra.workflows.bootstrap import execute_plan

    tb = bed["tb"]
    assert tb.exec_result("fresh2", f"test -e {POLICY_RC}").returncode == 1
    cluster = load_cluster(Path(bed["file"]))
    with ConnectionPool.for_cluster(cluster) as pool:
        conn = pool.get(cluster.hosts["fresh2"])
        state = parse_probe(conn.run(probe_argv(), timeout=60).stdout)
        assert not state.registry
        plan = plan_bootstrap("fresh2", state, "distro", registry=True)
        assert [step.key for step in plan.steps] == ["registry"]  # Docker is there since the tests above
        outcome = execute_plan(conn, plan, None, Reporter(quiet=True))
        assert outcome.changes == ["installed docker-registry from Debian packages, its own service disabled"]
        assert parse_probe(conn.run(probe_argv(), timeout=60).stdout).registry
    assert tb.exec_result("fresh2", "pgrep -x docker-registry").returncode == 1  # not running
    assert tb.exec_result("fresh2", f"test -e {POLICY_RC}").returncode == 1  # ours, removed again
    assert tb.exec("fresh2", "ls /etc/rc2.d /etc/rc3.d | grep docker-registry || true").strip().split() in (
        [], ["K01docker-registry", "K01docker-registry"])  # not started at boot either
