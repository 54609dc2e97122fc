"""`infra up` and `infra clean` on the real testbed: three SSH + Docker hosts and this machine.

The master (RabbitMQ, Redis, Celery master, Flower) runs on h1, workers on h2, h3 and `local`.
The tests run in file order and share one cluster, as a user would: up, use it, up again,
scale, clean, and clean with a host down.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import requests
import yaml

from tests.e2e.clients import celery_client, default_sigint, flower_get

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


def write_cluster_file(path: Path, testbed, workers_on_h2: int = 2, publish_flower: bool = False) -> Path:
    h1, h2, h3 = testbed.docker_hosts[:3]
    project = path.parent / "wordcount"
    if not project.exists():  # a copy: the tests never depend on edits to the repo's project
        shutil.copytree(PROJECT, project, ignore=shutil.ignore_patterns("output", "__pycache__"))
    spec = {
        "name": CLUSTER,
        "hosts": testbed.cluster_hosts([h1, h2, h3]),
        "project": {"path": str(project), "app": "wordcount", "remote_path": "infra-e2e"},
        "roles": {
            "master": {"host": h1.name, "bind_address": h1.address, "publish_flower": publish_flower},
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
        assert secret not in result.stdout + result.stderr or secret in ("infra", "admin", "worker")
    assert "****" in result.stdout and "secrets.json" in result.stdout


def inspect_confinement(testbed, host: str) -> dict[str, dict]:
    """{container: its CapDrop, CapAdd, SecurityOpt, ReadonlyRootfs, Tmpfs, PidsLimit and User} on a host."""
    fmt = ("{{.Name}}|{{json .HostConfig.CapDrop}}|{{json .HostConfig.CapAdd}}|{{json .HostConfig.SecurityOpt}}|"
           "{{.HostConfig.ReadonlyRootfs}}|{{json .HostConfig.Tmpfs}}|{{json .HostConfig.PidsLimit}}|{{.Config.User}}")
    names = [line.split()[0] for line in labelled_containers(testbed, host)]
    argv = ["docker", "inspect", "--format", fmt, *names]
    if host == "local":
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    else:
        out = testbed.exec(host, argv)
    found = {}
    for line in out.splitlines():
        name, drop, add, opts, read_only, tmpfs, pids, user = line.split("|")
        found[name.lstrip("/")] = {"CapDrop": json.loads(drop), "CapAdd": json.loads(add),
                                   "SecurityOpt": json.loads(opts), "ReadonlyRootfs": read_only == "true",
                                   "Tmpfs": json.loads(tmpfs), "PidsLimit": json.loads(pids), "User": user}
    return found


def test_every_container_runs_without_capabilities_privileges_or_a_writable_root(cluster, testbed):
    # They all answered in the test above: hardened, each role still does its work.
    seen = {}
    for host in [*cluster["hosts"], "local"]:
        seen.update(inspect_confinement(testbed, host))
    assert len(seen) == 8, sorted(seen)  # broker, results, master, flower and 4 workers
    for name, confinement in seen.items():
        assert confinement["CapDrop"] == ["ALL"] and not confinement["CapAdd"], name
        assert confinement["SecurityOpt"] == ["no-new-privileges"], name
        assert confinement["ReadonlyRootfs"], name
        assert confinement["Tmpfs"]["/tmp"].startswith("rw,nosuid,nodev,size="), name
        assert confinement["User"], name  # the SSH user's UID:GID, never the image's default
        if "-worker-" in name or name.endswith("-master"):  # where jobs run
            assert confinement["PidsLimit"] == 4096, name
        else:
            assert confinement["PidsLimit"] in (None, 0), name  # the engine's default: no limit
    assert "/var/log/rabbitmq" in seen[f"{CLUSTER}-broker"]["Tmpfs"]


def test_tasks_come_back_correct_and_were_computed_on_several_hosts(cluster):
    from celery import chord

    app = celery_client(cluster["state"], master_address(cluster), CLUSTER)
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


def flower_lists_workers(state, address: str, expected: set[str], port: int = 5555) -> None:
    """Flower at address:port answers the admin with every expected worker, and nobody else."""
    deadline = time.monotonic() + 60
    while True:
        answer = flower_get(state, address, "/api/workers", port=port, auth=True, refresh="1")
        assert answer.status_code == 200
        if expected <= set(answer.json()) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert expected <= set(answer.json())
    assert flower_get(state, address, "/api/workers", port=port).status_code == 401
    assert flower_get(state, address, "/api/workers", port=port, auth=("admin", "wrong")).status_code == 401
    # Plain HTTP is not served on Flower's port.
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://{address}:{port}/api/workers", timeout=10)


FIRST_WORKERS = {f"{CLUSTER}-worker-h2-1@h2", f"{CLUSTER}-worker-h2-2@h2", f"{CLUSTER}-worker-h3-1@h3",
                 f"{CLUSTER}-worker-local-1@local"}
# Whether a TCP connection to HOST:PORT opens, asked from a testbed host (python3 is there, curl is not).
CONNECTS = ("import socket, sys\ntry:\n    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5).close()\n"
            "    print('open')\nexcept OSError as exc:\n    print('closed', exc)\n")


def test_flower_listens_on_the_masters_loopback_only_by_default(cluster, testbed):
    h1, h2, _ = cluster["hosts"]
    assert testbed.exec(h1, f"docker port {CLUSTER}-flower").split() == ["5555/tcp", "->", "127.0.0.1:5555"]
    from_h2 = testbed.exec(h2, ["python3", "-c", CONNECTS, master_address(cluster), "5555"])
    assert from_h2.startswith("closed"), from_h2
    with pytest.raises(requests.exceptions.ConnectionError):  # nor from here
        flower_get(cluster["state"], master_address(cluster), "/api/workers", auth=True)
    # The other published ports are still reached from h2, so the refusal is Flower's alone.
    assert testbed.exec(h2, ["python3", "-c", CONNECTS, master_address(cluster), "5671"]).startswith("open")


def test_infra_flower_forwards_it_here_until_ctrl_c_and_never_prints_the_password(cluster):
    import signal

    command = [sys.executable, "-m", "infra", "flower", "-f", str(cluster["file"]), "--no-browser"]
    child = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=default_sigint)
    try:
        first = child.stdout.readline()
        assert first.startswith("flower:   https://127.0.0.1:"), (first, child.poll() is not None and child.stderr.read())
        port = int(first.split()[1].rsplit(":", 1)[1])
        told = first + child.stdout.readline() + child.stdout.readline()
        assert "user admin" in told and secrets_of(cluster)["flower_password"] not in told
        flower_lists_workers(cluster["state"], "127.0.0.1", FIRST_WORKERS, port=port)
        child.send_signal(signal.SIGINT)
        assert child.wait(45) == 0, child.stderr.read()  # closing the forward and SSH, on a loaded machine
    finally:
        if child.poll() is None:
            child.kill()
    with pytest.raises(requests.exceptions.ConnectionError):  # the forward ended with it
        flower_get(cluster["state"], "127.0.0.1", "/api/workers", port=port, auth=True)


def test_infra_flower_with_flower_stopped_is_one_line_and_exit_1(cluster, testbed):
    h1 = cluster["hosts"][0]
    testbed.exec(h1, f"docker stop {CLUSTER}-flower")
    try:
        result = infra("flower", "-f", str(cluster["file"]), "--no-browser", timeout=60)
    finally:
        testbed.exec(h1, f"docker start {CLUSTER}-flower")
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip() == f"error: {h1}: Flower is not running ({CLUSTER}-flower is exited): run `infra up`"


@pytest.mark.parametrize("port", [5671, 6379], ids=["amqps", "redis-tls"])
def test_each_published_port_presents_the_master_certificate_of_the_cluster_ca(cluster, port):
    address = master_address(cluster)
    shown = subprocess.run(
        ["openssl", "s_client", "-connect", f"{address}:{port}", "-CAfile", str(cluster["state"] / "tls" / "ca.crt"),
         "-verify_return_error", "-verify_ip", address, "-brief"],
        input="", capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0, shown.stderr
    assert "Verification: OK" in shown.stderr
    assert f"CN = infra cluster {CLUSTER} CA" in shown.stderr or "infra cluster" in shown.stderr


def test_the_published_ports_listen_on_the_bind_address_only(cluster, testbed):
    h1 = cluster["hosts"][0]
    address = master_address(cluster)
    for role, port in (("broker", 5671), ("results", 6379)):  # Flower: on loopback (see above)
        shown = testbed.exec(h1, f"docker port {CLUSTER}-{role}").split()
        assert f"{address}:{port}" in shown and f"0.0.0.0:{port}" not in shown, (role, shown)


def test_plain_amqp_and_plain_redis_are_refused_on_the_published_ports(cluster):
    import redis
    from kombu import Connection

    secrets = secrets_of(cluster)
    address = master_address(cluster)
    plain = Connection(f"amqp://{secrets['worker_user']}:{secrets['worker_password']}@{address}:5671/{CLUSTER}",
                       connect_timeout=5)
    with pytest.raises(Exception):  # noqa: B017 - whatever the client makes of a TLS server's silence
        plain.ensure_connection(max_retries=1)
    plain.release()
    with pytest.raises(redis.exceptions.ConnectionError):
        redis.Redis(host=address, port=6379, password=secrets["results_password"], socket_timeout=5).ping()
    # Nothing listens in plain text on the broker's and Redis's usual ports either.
    for port in (5672, 6380):
        with pytest.raises(OSError):
            socket.create_connection((address, port), timeout=5).close()


def test_the_workers_broker_user_has_the_clusters_vhost_only_and_no_guest_exists(cluster, testbed):
    h1 = cluster["hosts"][0]
    users = json.loads(testbed.exec(h1, f"docker exec {CLUSTER}-broker rabbitmqctl list_users --quiet --formatter json"))
    tags = {user["user"]: user["tags"] for user in users}
    assert tags == {"infra": ["administrator"], "worker": []}
    rights = json.loads(testbed.exec(
        h1, f"docker exec {CLUSTER}-broker rabbitmqctl list_user_permissions worker --quiet --formatter json"))
    assert [r["vhost"] for r in rights] == [CLUSTER]


def peer_address(value) -> str:
    """rabbitmqctl's JSON gives a peer's address as Erlang's tuple: 4 bytes (IPv4) or 8 16-bit words (IPv6,
    an IPv4-mapped one for an IPv4 client of a dual-stack listener)."""
    if isinstance(value, list) and len(value) == 4:
        return str(ipaddress.IPv4Address(bytes(value)))
    if isinstance(value, list) and len(value) == 8:
        address = ipaddress.IPv6Address(b"".join(word.to_bytes(2, "big") for word in value))
        return str(address.ipv4_mapped or address)
    return value


def test_workers_on_other_hosts_are_connected_over_tls_as_the_worker_user(cluster, testbed):
    h1, h2, h3 = cluster["hosts"]
    peers = {testbed.host(h).address: h for h in (h2, h3)}
    connections = json.loads(testbed.exec(
        h1, f"docker exec {CLUSTER}-broker rabbitmqctl list_connections user vhost ssl peer_host "
            "--quiet --formatter json"))
    for connection in connections:
        connection["peer_host"] = peer_address(connection["peer_host"])
    remote = [c for c in connections if c["peer_host"] in peers]
    assert {peers[c["peer_host"]] for c in remote} == {h2, h3}
    assert all(c["ssl"] is True and c["user"] == "worker" and c["vhost"] == CLUSTER for c in remote), remote
    assert all(c["user"] == "worker" for c in connections), "only Flower's API view may use the administrator"


def test_no_secret_is_in_docker_inspect_of_any_container(cluster, testbed):
    secrets = [v for k, v in secrets_of(cluster).items() if k.endswith("password")]
    for host in cluster["hosts"] + ["local"]:
        ids = "$(docker ps --all --quiet --filter label=infra.cluster=" + CLUSTER + ")"
        if host == "local":
            shown = subprocess.run(["sh", "-c", f"docker inspect {ids}"], capture_output=True, text=True,
                                   check=True).stdout
        else:
            shown = testbed.exec(host, f"docker inspect {ids}")
        assert '"Env"' in shown, host
        for secret in secrets:
            assert secret not in shown, f"a password shows in docker inspect on {host}"


def test_no_password_is_visible_in_ps_and_secret_files_are_private(cluster, testbed):
    secrets = [v for k, v in secrets_of(cluster).items() if k.endswith("password")]
    listings = {host: testbed.exec(host, "ps auxww") for host in cluster["hosts"]}
    listings["local"] = subprocess.run(["ps", "auxww"], capture_output=True, text=True).stdout
    for host, listing in listings.items():
        assert "celery" in listing or host == cluster["hosts"][0] or "sshd" in listing
        for secret in secrets:
            assert secret not in listing, f"a password is visible in ps on {host}"
    assert stat.S_IMODE(os.stat(cluster["state"] / "secrets.json").st_mode) == 0o600
    # The cluster's folder on the host: REMOTE_PATH/NAME, its secret files in .infra/ROLE/ (0400).
    modes = testbed.exec(cluster["hosts"][0], f"stat -c '%a %n' /root/infra-e2e/{CLUSTER}/.infra/*/*")
    assert modes.strip() and all(line.startswith("400 ") for line in modes.strip().splitlines())


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


def test_flower_published_on_purpose_replaces_only_flower_and_its_api_applies_no_task(cluster, testbed):
    h1 = cluster["hosts"][0]
    address = master_address(cluster)
    write_cluster_file(cluster["file"], testbed, workers_on_h2=3, publish_flower=True)
    result = infra("up", "-f", str(cluster["file"]))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"replace {CLUSTER}-flower" in result.stdout and result.stdout.count("nothing to do") == 3
    assert testbed.exec(h1, f"docker port {CLUSTER}-flower").split() == ["5555/tcp", "->", f"{address}:5555"]
    state = cluster["state"]
    flower_lists_workers(state, address, FIRST_WORKERS | {f"{CLUSTER}-worker-h2-3@h2"})
    shown = subprocess.run(
        ["openssl", "s_client", "-connect", f"{address}:5555", "-CAfile", str(state / "tls" / "ca.crt"),
         "-verify_return_error", "-verify_ip", address, "-brief"], input="", capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0 and "Verification: OK" in shown.stderr, shown.stderr
    secrets = secrets_of(cluster)
    login = (secrets["flower_user"], secrets["flower_password"])
    ca = str(state / "tls" / "ca.crt")
    for path, body in (("/api/task/async-apply/infra.run_command", {"args": [["true"]]}),
                       ("/api/task/apply/infra.run_command", {"args": [["true"]]}),
                       ("/api/task/send-task/infra.run_command", {"args": [["true"]]}),
                       (f"/api/worker/shutdown/{CLUSTER}-worker-h3-1@h3", None)):
        refused = requests.post(f"https://{address}:5555{path}", json=body, auth=login, verify=ca, timeout=20)
        assert refused.status_code == 403, (path, refused.status_code, refused.text)
    assert "publish_flower" not in result.stderr


def test_clean_leaves_no_container_of_the_cluster_anywhere(cluster, testbed):
    # As a transfer cut short by `kill -9` leaves them: the worker image also named as pulled
    # through the forwarded registry, and another cluster's name of it, which is not ours.
    h2 = cluster["hosts"][1]
    ours, theirs = f"127.0.0.1:40123/infra/{CLUSTER}-worker:0123abcd", "127.0.0.1:40123/infra/other-worker:0123abcd"
    testbed.exec(h2, f"docker tag {TEST_IMAGES['worker']} {ours} && docker tag {TEST_IMAGES['worker']} {theirs}")
    result = infra("clean", "-f", str(cluster["file"]))
    assert result.returncode == 0, result.stdout + result.stderr
    for host in cluster["hosts"] + ["local"]:
        assert labelled_containers(testbed, host) == [], host
    names = testbed.exec(h2, "docker image ls --format '{{.Repository}}:{{.Tag}}'").split()
    assert ours not in names and theirs in names and TEST_IMAGES["worker"] in names
    testbed.exec(h2, f"docker image rm --no-prune {theirs}")
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
