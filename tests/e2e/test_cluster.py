"""`infra up` and `infra clean` on the real testbed: three SSH + Docker hosts and this machine.

The master (RabbitMQ, Redis, Celery master, Flower) runs on h1, workers on h2, h3 and `local`.
The tests run in file order and share one cluster, as a user would: up, use it, up again,
scale, clean, and clean with a host down.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import requests
import yaml

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
PROJECT = REPO / "projects" / "wordcount"
WHEELHOUSE = REPO / ".cache" / "wheels"
CLUSTER = "e2e"
# Every e2e cluster names the same images, so they are built and shipped to a host only once.
TEST_IMAGES = {
    "source": "ship", "base": "infra-base:bookworm", "wheelhouse": str(WHEELHOUSE),
    "worker": "infra-test-worker:latest", "master": "infra-test-master:latest", "broker": "infra-test-broker:latest",
}


def infra(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run the real command line, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "infra", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO,
    )


def labelled_containers(testbed, host) -> list[str]:
    """Names of the cluster's containers on a testbed host (its own engine) or on `local`."""
    argv = ["docker", "ps", "--all", "--filter", f"label=infra.cluster={CLUSTER}", "--format", "{{.Names}} {{.ID}}"]
    if host == "local":
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    else:
        out = testbed.exec(host, " ".join(argv[:-1]) + " '{{.Names}} {{.ID}}'")
    return sorted(line for line in out.splitlines() if line.strip())


def write_cluster_file(path: Path, testbed, workers_on_h2: int = 2) -> Path:
    h1, h2, h3 = testbed.docker_hosts[:3]
    project = path.parent / "wordcount"
    if not project.exists():  # a copy: the tests never depend on edits to the repo's project
        shutil.copytree(PROJECT, project, ignore=shutil.ignore_patterns("output", "__pycache__"))
    spec = {
        "name": CLUSTER,
        "hosts": testbed.cluster_hosts([h1, h2, h3]),
        "project": {"path": str(project), "app": "wordcount", "remote_path": "infra-e2e"},
        "roles": {
            "master": {"host": h1.name},
            "workers": [
                {"host": h2.name, "containers": workers_on_h2, "concurrency": 2},
                {"host": h3.name, "containers": 1, "concurrency": 2},
                {"host": "local", "containers": 1, "concurrency": 1},
            ],
        },
        "images": TEST_IMAGES,
        "ssh": {"connect_timeout": 5, "known_hosts": str(testbed.known_hosts_path)},
        "state_dir": str(path.parent / "state"),
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def cluster(testbed, tmp_path_factory):
    """The cluster file and its state; whatever happens, the cluster is removed at the end."""
    assert WHEELHOUSE.is_dir(), "run scripts/make-wheelhouse.sh first (scripts/run-tests.sh does)"
    folder = tmp_path_factory.mktemp("cluster")
    path = write_cluster_file(folder / "cluster.yaml", testbed)
    hosts = [h.name for h in testbed.docker_hosts[:3]]
    yield {"file": path, "state": folder / "state" / CLUSTER, "hosts": hosts, "testbed": testbed}
    for host in testbed.docker_hosts[:3]:
        if testbed.state(host) != "running":
            testbed.start(host)
    infra("clean", "-f", str(path), "--volumes", "--files")


def secrets_of(cluster) -> dict:
    return json.loads((cluster["state"] / "secrets.json").read_text())


def master_address(cluster) -> str:
    return cluster["testbed"].host(cluster["hosts"][0]).address


def test_dry_run_prints_the_plan_and_touches_nothing(cluster, testbed):
    result = infra("up", "-f", str(cluster["file"]), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "dry run" in result.stdout
    assert f"create {CLUSTER}-broker" in result.stdout
    assert f"create {CLUSTER}-worker-h2-2" in result.stdout
    for host in cluster["hosts"]:
        assert labelled_containers(testbed, host) == []
    assert labelled_containers(testbed, "local") == []
    assert not (cluster["state"] / "manifest.json").exists()


def test_up_starts_every_role_and_waits_for_all_workers(cluster, testbed):
    result = infra("up", "-f", str(cluster["file"]))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all 4 workers answer" in result.stdout
    h1, h2, h3 = cluster["hosts"]
    names = lambda host: [line.split()[0] for line in labelled_containers(testbed, host)]  # noqa: E731
    assert names(h1) == [f"{CLUSTER}-broker", f"{CLUSTER}-flower", f"{CLUSTER}-master", f"{CLUSTER}-results"]
    assert names(h2) == [f"{CLUSTER}-worker-h2-1", f"{CLUSTER}-worker-h2-2"]
    assert names(h3) == [f"{CLUSTER}-worker-h3-1"]
    assert names("local") == [f"{CLUSTER}-worker-local-1"]
    manifest = json.loads((cluster["state"] / "manifest.json").read_text())
    assert sorted(manifest["hosts"]) == sorted([h1, h2, h3, "local"])
    # The summary hides the password and tells where it is kept.
    for secret in secrets_of(cluster).values():
        assert secret not in result.stdout + result.stderr or secret in ("infra", "admin")
    assert "****" in result.stdout and "secrets.json" in result.stdout


def test_tasks_come_back_correct_and_were_computed_on_several_hosts(cluster):
    from celery import Celery, chord

    secrets = secrets_of(cluster)
    address = master_address(cluster)
    app = Celery(
        broker=f"amqp://{secrets['broker_user']}:{secrets['broker_password']}@{address}:5672//",
        backend=f"redis://:{secrets['results_password']}@{address}:6379/0",
    )
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"])
    text = (PROJECT / "data" / "sample.txt").read_text()
    words = text.split()
    chunks = [" ".join(words[i:i + 100]) for i in range(0, len(words), 100)]
    assert len(chunks) >= 20
    try:
        job = chord(
            [app.signature("wordcount.count_words", args=(chunk,)) for chunk in chunks],
            app.signature("wordcount.merge_counts"),
        ).apply_async()
        result = job.get(timeout=120)
    finally:
        app.close()
    sys.path.insert(0, str(PROJECT))
    try:
        from wordcount.text import tokenize
    finally:
        sys.path.remove(str(PROJECT))
    assert result["counts"] == dict(Counter(tokenize(text)))
    assert result["chunks"] == len(chunks)
    hosts_used = {worker.rsplit("@", 1)[1] for worker in result["workers"]}
    assert len(hosts_used) >= 2, result["workers"]


def test_flower_lists_every_worker_with_the_password_and_refuses_without(cluster):
    secrets = secrets_of(cluster)
    url = f"http://{master_address(cluster)}:5555/api/workers"
    expected = {f"{CLUSTER}-worker-h2-1@h2", f"{CLUSTER}-worker-h2-2@h2", f"{CLUSTER}-worker-h3-1@h3",
                f"{CLUSTER}-worker-local-1@local"}
    deadline = time.monotonic() + 60
    while True:
        answer = requests.get(url, auth=(secrets["flower_user"], secrets["flower_password"]),
                              params={"refresh": "1"}, timeout=20)
        assert answer.status_code == 200
        if expected <= set(answer.json()) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert expected <= set(answer.json())
    assert requests.get(url, timeout=10).status_code == 401
    assert requests.get(url, auth=("admin", "wrong"), timeout=10).status_code == 401


def test_no_password_is_visible_in_ps_and_secret_files_are_private(cluster, testbed):
    secrets = [v for k, v in secrets_of(cluster).items() if k.endswith("password")]
    listings = {host: testbed.exec(host, "ps auxww") for host in cluster["hosts"]}
    listings["local"] = subprocess.run(["ps", "auxww"], capture_output=True, text=True).stdout
    for host, listing in listings.items():
        assert "celery" in listing or host == cluster["hosts"][0] or "sshd" in listing
        for secret in secrets:
            assert secret not in listing, f"a password is visible in ps on {host}"
    assert stat.S_IMODE(os.stat(cluster["state"] / "secrets.json").st_mode) == 0o600
    modes = testbed.exec(cluster["hosts"][0], "stat -c '%a %n' /root/infra-e2e/.infra-e2e/*.env")
    assert modes.strip() and all(line.startswith("600 ") for line in modes.strip().splitlines())


def test_second_up_reports_no_change_and_starts_nothing(cluster, testbed):
    before = {host: labelled_containers(testbed, host) for host in cluster["hosts"] + ["local"]}
    result = infra("up", "-f", str(cluster["file"]))
    assert result.returncode == 0, result.stdout + result.stderr
    for host in cluster["hosts"] + ["local"]:
        assert f"{host}" in result.stdout
    assert result.stdout.count("nothing to do") == 4
    assert "started" not in result.stdout and "replaced" not in result.stdout
    after = {host: labelled_containers(testbed, host) for host in cluster["hosts"] + ["local"]}
    assert after == before


def test_changing_one_hosts_worker_count_changes_only_that_host(cluster, testbed):
    h1, h2, h3 = cluster["hosts"]
    before = {host: labelled_containers(testbed, host) for host in [h1, h2, h3, "local"]}
    write_cluster_file(cluster["file"], testbed, workers_on_h2=3)
    result = infra("up", "-f", str(cluster["file"]))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all 5 workers answer" in result.stdout
    after = {host: labelled_containers(testbed, host) for host in [h1, h2, h3, "local"]}
    assert set(before[h2]) < set(after[h2])
    assert [line.split()[0] for line in after[h2]] == [f"{CLUSTER}-worker-h2-{i}" for i in (1, 2, 3)]
    for host in (h1, h3, "local"):
        assert after[host] == before[host], f"{host} changed"
    assert result.stdout.count("nothing to do") == 3


def test_clean_leaves_no_container_of_the_cluster_anywhere(cluster, testbed):
    result = infra("clean", "-f", str(cluster["file"]))
    assert result.returncode == 0, result.stdout + result.stderr
    for host in cluster["hosts"] + ["local"]:
        assert labelled_containers(testbed, host) == [], host
    # The broker's data volume and the project copies stay unless asked.
    assert f"{CLUSTER}-broker-data" in testbed.exec(cluster["hosts"][0], "docker volume ls --format '{{.Name}}'")
    manifest = json.loads((cluster["state"] / "manifest.json").read_text())
    assert all(not record["containers"] for record in manifest["hosts"].values())


def test_clean_with_a_host_down_reports_it_and_cleans_the_others(cluster, testbed):
    h1, h2, h3 = cluster["hosts"]
    result = infra("up", "-f", str(cluster["file"]))
    assert result.returncode == 0, result.stdout + result.stderr
    testbed.stop(h3)
    try:
        started = time.monotonic()
        result = infra("clean", "-f", str(cluster["file"]))
        assert time.monotonic() - started < 60
        assert result.returncode == 1
        assert h3 in result.stderr and "run `infra clean` again" in result.stderr
        assert "Traceback" not in result.stderr
        for host in (h1, h2, "local"):
            assert labelled_containers(testbed, host) == [], host
        manifest = json.loads((cluster["state"] / "manifest.json").read_text())
        assert manifest["hosts"][h3]["containers"], "the manifest must keep what is left on h3"
    finally:
        testbed.start(h3)
    result = infra("clean", "-f", str(cluster["file"]))
    assert result.returncode == 0, result.stdout + result.stderr
    assert labelled_containers(testbed, h3) == []


def test_up_after_losing_the_secrets_file_logs_in_to_the_kept_broker_volume(cluster, testbed):
    # clean kept the broker's data volume; new credentials must still work with it.
    (cluster["state"] / "secrets.json").unlink()
    result = infra("up", "-f", str(cluster["file"]))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all 5 workers answer" in result.stdout
    assert f"{CLUSTER}-broker-data" in testbed.exec(cluster["hosts"][0], "docker volume ls --format '{{.Name}}'")
