"""`images.source: build` (the default) on a remote host, with the master on this machine.

The worker host builds its own image from the Dockerfiles and the wheelhouse that `up` sends
it (as a Raspberry Pi would, for its own architecture); the broker runs here and the remote
worker reaches it at the address this machine has on the route to that host.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.e2e.clients import celery_client

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
WHEELHOUSE = REPO / ".cache" / "wheels"
CLUSTER = "bld"
PORTS = {"broker": 5674, "results": 6381, "flower": 5557}


def infra(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "infra", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, input="")


@pytest.fixture(scope="module")
def built(testbed, tmp_path_factory):
    folder = tmp_path_factory.mktemp("build")
    project = folder / "wordcount"
    shutil.copytree(REPO / "projects" / "wordcount", project,
                    ignore=shutil.ignore_patterns("__pycache__", "output"))
    h3 = testbed.docker_hosts[2]
    # The host has the base image, as a host with a registry would pull it.
    testbed.load_image(h3, "infra-base:bookworm")
    spec = {
        "name": CLUSTER,
        "hosts": testbed.cluster_hosts([h3]),
        "project": {"path": str(project), "app": "wordcount", "remote_path": "infra-bld"},
        "roles": {"master": {"host": "local"},
                  "workers": [{"host": h3.name, "containers": 1, "concurrency": 2, "queues": ["on-h3"]}]},
        "ports": PORTS,
        "images": {"source": "build", "base": "infra-base:bookworm", "wheelhouse": str(WHEELHOUSE)},
        "ssh": {"connect_timeout": 5, "known_hosts": str(testbed.known_hosts_path)},
        "state_dir": str(folder / "state"),
    }
    path = folder / "cluster.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    info = {"file": str(path), "state": folder / "state" / CLUSTER, "host": h3.name}
    yield info
    infra("clean", "-f", str(path), "--files", "--volumes")


def test_the_worker_host_builds_its_own_image_and_runs_tasks_for_a_master_here(built, testbed):
    result = infra("up", "-f", built["file"])
    assert result.returncode == 0, result.stdout + result.stderr
    host = built["host"]
    assert any(line.split()[0] == host and f"image infra-{CLUSTER}-worker:latest built" in line
               for line in result.stdout.splitlines() if line.strip())
    assert "shipped" not in result.stdout
    images = testbed.exec(host, "docker image ls --format '{{.Repository}}:{{.Tag}}'")
    assert f"infra-{CLUSTER}-worker:latest" in images
    assert f"infra-{CLUSTER}-master:latest" not in images  # only what the host runs

    app = celery_client(built["state"], "127.0.0.1", CLUSTER, broker_port=PORTS["broker"],
                        results_port=PORTS["results"])
    try:
        reply = app.send_task("wordcount.count_words", args=("to be or not to be",), queue="on-h3").get(timeout=60)
    finally:
        app.close()
    assert reply["counts"] == {"to": 2, "be": 2, "or": 1, "not": 1}
    assert reply["worker"] == f"{CLUSTER}-worker-{host}-1@{host}"


def test_a_second_up_rebuilds_from_the_cache_and_changes_nothing(built):
    result = infra("up", "-f", built["file"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("nothing to do") == 2
    assert " built" not in result.stdout


def test_clean_with_files_removes_the_project_and_build_context_from_the_host(built, testbed):
    result = infra("clean", "-f", built["file"], "--files", "--volumes")
    assert result.returncode == 0, result.stdout + result.stderr
    assert testbed.exec(built["host"], "ls -A /root/infra-bld 2>/dev/null || true").strip() == ""
    assert not (built["state"] / "manifest.json").exists()
