"""Signed runs on the real testbed: a worker runs only what the cluster's master signed.

A cluster with the master on h1 and one worker container on h1 and on h2. The test process
publishes `infra.run_command` messages with the cluster's TRUSTED broker credentials (as any
client of the cluster, or a volunteer, could): unsigned, tampered after signing, or signed by
another key. Every worker refuses them: the task's result says RunRefused, the worker's log has
a 'refused' line, and the command (which would touch a marker file) never runs. The same
command signed with the cluster's key, as the driver signs, does run: the marker check can
fail. Then a real `infra sweep` still runs, and a run that prints its environment shows none of
the cluster's secrets.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from infra.runtime import protocol, signing
from tests.e2e.clients import celery_client, secrets_in
from tests.e2e.test_cluster import TEST_IMAGES, WHEELHOUSE
from tests.e2e.test_volunteers import give_curl

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CLUSTER = "signed"
PORTS = {"broker": 5699, "results": 6399, "flower": 5599}  # not those of the other e2e clusters
RESULT_TIMEOUT = 90
VOLUNTEER = f"infra-{CLUSTER}-volunteer"  # the container, volume and image tag a join line makes


def infra(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "infra", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)


@pytest.fixture(scope="module")
def signed_cluster(testbed, tmp_path_factory):
    assert WHEELHOUSE.is_dir(), "run scripts/make-wheelhouse.sh first (scripts/run-tests.sh does)"
    folder = tmp_path_factory.mktemp("signed")
    project = folder / "sweep-demo"
    shutil.copytree(REPO / "projects" / "sweep-demo", project,
                    ignore=shutil.ignore_patterns("__pycache__", "output", "*.pyc"))
    h1, h2 = testbed.docker_hosts[:2]
    spec = {
        "name": CLUSTER,
        "hosts": testbed.cluster_hosts([h1, h2]),
        "project": {"path": str(project), "remote_path": "infra-signed"},  # no app: the built-in runner
        "roles": {"master": {"host": h1.name},
                  "workers": [{"host": h.name, "containers": 1, "concurrency": 1} for h in (h1, h2)]},
        "ports": PORTS,
        "images": TEST_IMAGES,
        "ssh": {"connect_timeout": 5, "known_hosts": str(testbed.known_hosts_path)},
        "timeouts": {"workers": 180},
        "state_dir": str(folder / "state"),
    }
    cluster_file = folder / "cluster.yaml"
    cluster_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    try:
        started = time.monotonic()
        result = infra("up", "-f", str(cluster_file))
        assert result.returncode == 0, f"infra up failed:\n{result.stdout}\n{result.stderr}"
        print(f"infra up of the signed-runs cluster: {time.monotonic() - started:.0f} s")
        state = folder / "state" / CLUSTER
        app = celery_client(state, h1.address, CLUSTER, broker_port=PORTS["broker"], results_port=PORTS["results"])
        yield {"file": str(cluster_file), "project": project, "state": state, "app": app, "hosts": [h1, h2]}
    finally:
        testbed.heal()
        volunteer_host = testbed.docker_hosts[2]
        testbed.exec_result(volunteer_host, f"docker rm -f {VOLUNTEER}; docker volume rm {VOLUNTEER}; "
                                            f"docker image rm {VOLUNTEER}")
        infra("clean", "-f", str(cluster_file), "--files", "--volumes")


def workers(cluster) -> list[tuple[object, str]]:
    return [(h, f"{CLUSTER}-worker-{h.name}-1") for h in cluster["hosts"]]


def markers_on_workers(testbed, cluster, marker: str, among=None) -> list[str]:
    """The worker containers in which the file `marker` exists."""
    found = []
    for host, container in among or workers(cluster):
        done = testbed.exec_result(host, ["docker", "exec", container, "test", "-e", marker])
        if done.returncode == 0:
            found.append(container)
    return found


def payload(sweep_id: str, submission: str, marker: str) -> dict:
    return signing.new_payload({
        "sweep_id": sweep_id, "run": "r1", "submission": submission, "argv": ["sh", "-c", f"touch {marker}"],
        "cwd": "/project", "env": {}, "timeout": None, "gpus_per_task": 0}, now=time.time())


def stored_result(app, task_id: str, timeout: float = RESULT_TIMEOUT) -> dict | None:
    """The raw result a worker stored for a task (celery-task-meta-ID), once there."""
    client = app.backend.client
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        raw = client.get(f"celery-task-meta-{task_id}")
        if raw:
            return json.loads(raw)
        time.sleep(0.5)
    return None


def publish_hostile_runs(cluster, copies: int) -> tuple[str, str, dict[str, str]]:
    """Unsigned, tampered and foreign-key messages of a touch command; (sweep id, marker, task id → kind)."""
    app, state = cluster["app"], cluster["state"]
    key = secrets_in(state)["run_signing_key"].encode()  # what the operator holds, as the master does
    other_key = signing.key_pair_pem()[0].encode()
    sweep_id = uuid.uuid4().hex[:12]
    marker = f"/tmp/signed-e2e-{sweep_id}"
    sent: dict[str, str] = {}
    for copy in range(copies):  # several of each: every worker (concurrency 1, prefetch 1) gets some
        for kind in ("unsigned", "tampered", "foreign"):
            task_id = protocol.submission_id(sweep_id, f"{kind}{copy}", 1, protocol.new_nonce())
            good = signing.sign_message(payload(sweep_id, task_id, marker), key)
            if kind == "unsigned":
                message = json.loads(good["payload"])
            elif kind == "tampered":
                inner = json.loads(good["payload"])
                inner["argv"] = ["sh", "-c", f"touch {marker}; id"]
                message = {**good, "payload": signing.canonical(inner)}
            else:
                message = signing.sign_message(payload(sweep_id, task_id, marker), other_key)
            app.send_task(protocol.TASK_NAME, args=[message], task_id=task_id, queue="celery")
            sent[task_id] = kind
    return sweep_id, marker, sent


def assert_all_refused(app, sent: dict[str, str]) -> set[str]:
    reasons = set()
    for task_id, kind in sent.items():
        meta = stored_result(app, task_id)
        assert meta is not None, f"no result for the {kind} message {task_id}"
        assert meta["status"] == "FAILURE" and meta["result"]["exc_type"] == "RunRefused", (kind, meta)
        reasons.add(meta["result"]["exc_message"][0])
    return reasons


def test_unsigned_tampered_or_foreign_runs_are_refused_by_every_worker_and_nothing_runs(signed_cluster, testbed):
    sweep_id, marker, sent = publish_hostile_runs(signed_cluster, copies=4)
    reasons = assert_all_refused(signed_cluster["app"], sent)
    assert markers_on_workers(testbed, signed_cluster, marker) == []
    for host, container in workers(signed_cluster):
        log = testbed.exec(host, f"docker logs {container} 2>&1")
        assert f"{sweep_id}" in log and "refused" in log, f"{container} refused none of them:\n{log[-2000:]}"
    assert any("not a signed run" in r for r in reasons) and any("bad signature" in r for r in reasons)


def test_the_same_command_signed_by_the_clusters_key_does_run(signed_cluster, testbed):
    app, state = signed_cluster["app"], signed_cluster["state"]
    key = secrets_in(state)["run_signing_key"].encode()
    sweep_id = uuid.uuid4().hex[:12]
    marker = f"/tmp/signed-e2e-{sweep_id}"
    task_id = protocol.submission_id(sweep_id, "r1", 1, protocol.new_nonce())
    app.backend.client.set(protocol.alive_key(sweep_id), "1", ex=120)  # as the driver says it is there
    app.send_task(protocol.TASK_NAME, args=[signing.sign_message(payload(sweep_id, task_id, marker), key)],
                  task_id=task_id, queue="celery")
    deadline = time.monotonic() + RESULT_TIMEOUT
    ends = []
    while time.monotonic() < deadline and not ends:
        events = [json.loads(e) for e in app.backend.client.lrange(protocol.events_key(sweep_id), 0, -1)]
        ends = [e for e in events if e.get("event") == "end"]
        time.sleep(0.5)
    assert ends and ends[0]["status"] == "ok", ends
    assert len(markers_on_workers(testbed, signed_cluster, marker)) == 1


def test_a_real_sweep_runs_and_a_run_printing_its_environment_shows_no_secret(signed_cluster):
    project, state = signed_cluster["project"], signed_cluster["state"]
    params = project.parent / "env-params.yml"
    params.write_text("i: [1, 2, 3, 4]\n")
    show_env = "import os\nfor k, v in sorted(os.environ.items()): print(f'{k}={v}')\n"
    result = infra("sweep", "-f", signed_cluster["file"], str(params), "--", "python", "-c", show_env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert "sweep 'env-params': 4 run(s): 4 ok" in result.stdout
    logs = sorted((project / "output").glob("sweep-env-params/**/*.log"))
    assert len(logs) == 4, logs
    printed = "\n".join(path.read_text() for path in logs)
    assert "INFRA_RUN=" in printed and "PATH=" in printed and "INFRA_SWEEP=env-params" in printed
    secrets = secrets_in(state)
    values = [secrets[k] for k in ("broker_password", "results_password", "flower_password", "worker_password")]
    values += [line for line in secrets["run_signing_key"].splitlines() if not line.startswith("-----")]
    for value in values:
        assert value not in printed and value not in result.stdout
    for word in ("CELERY_", "/run/infra", "INFRA_ENV_FILE", "INFRA_CA_FILE"):
        assert word not in printed, word


def test_a_volunteer_gets_the_public_key_alone_refuses_hostile_runs_and_runs_signed_ones(signed_cluster, testbed):
    volunteer_host = testbed.docker_hosts[2]
    give_curl(testbed, volunteer_host)
    added = infra("volunteer", "add", "vera", "-f", signed_cluster["file"], "--json", "--concurrency", "1")
    assert added.returncode == 0, added.stdout + added.stderr
    joined = testbed.exec_result(volunteer_host, json.loads(added.stdout)["line"], timeout=600)
    assert joined.returncode == 0, (joined.stdout + joined.stderr).decode()
    held = testbed.exec(volunteer_host, f"docker exec {VOLUNTEER} ls /var/lib/infra-volunteer")
    assert "run-signing.pub" in held.split() and "run-signing.key" not in held
    key_body = [line for line in secrets_in(signed_cluster["state"])["run_signing_key"].splitlines()
                if not line.startswith("-----")]
    grep = testbed.exec_result(volunteer_host, ["docker", "exec", VOLUNTEER, "grep", "-rlF", key_body[0],
                                                "/var/lib/infra-volunteer"])
    assert grep.stdout.strip() == b""  # the signing key is nowhere on the volunteer's machine
    everyone = workers(signed_cluster) + [(volunteer_host, VOLUNTEER)]
    sweep_id, marker, sent = publish_hostile_runs(signed_cluster, copies=5)
    assert_all_refused(signed_cluster["app"], sent)
    assert markers_on_workers(testbed, signed_cluster, marker, among=everyone) == []
    log = testbed.exec(volunteer_host, f"docker logs {VOLUNTEER} 2>&1")
    assert sweep_id in log and "refused" in log, log[-2000:]
    # Signed runs: some reach the volunteer (three workers, one process each) and run there.
    app, key = signed_cluster["app"], secrets_in(signed_cluster["state"])["run_signing_key"].encode()
    good_id = uuid.uuid4().hex[:12]
    good_marker = f"/tmp/signed-e2e-{good_id}"
    app.backend.client.set(protocol.alive_key(good_id), "1", ex=300)
    for n in range(9):
        task_id = protocol.submission_id(good_id, f"r{n}", 1, protocol.new_nonce())
        app.send_task(protocol.TASK_NAME, args=[signing.sign_message(payload(good_id, task_id, good_marker), key)],
                      task_id=task_id, queue="celery")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        events = [json.loads(e) for e in app.backend.client.lrange(protocol.events_key(good_id), 0, -1)]
        if sum(e.get("event") == "end" for e in events) == 9:
            break
        time.sleep(1)
    ends = [e for e in events if e.get("event") == "end"]
    assert len(ends) == 9 and all(e["status"] == "ok" for e in ends), ends
    ran_on = markers_on_workers(testbed, signed_cluster, good_marker, among=everyone)
    print(f"9 signed runs ended ok; markers in {ran_on}")
    assert VOLUNTEER in ran_on
