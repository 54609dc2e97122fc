"""Volunteers on the real testbed: h1 is the master (infra reaches it over SSH); h2 is a volunteer's
machine with Docker that infra has no access to and that the cluster file does not name: the tests
reach it only as the volunteer would, by typing the printed line into a shell on it (docker exec).

The tests run in file order and share one cluster: add, join, take tasks, the same line again
(refused: the token was spent), a restart without the token, old token-derived passwords that log
in nowhere, a volunteer posing as a trusted node, revoke under load, the same line after
revocation, an expired line, a line whose pin does not match, leave, clean.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import re
import ssl
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.e2e.clients import ca_file, celery_client
from tests.testbed.testbed import FRESH, ensure_image

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
PROJECT = REPO / "projects" / "wordcount"
WHEELHOUSE = REPO / ".cache" / "wheels"
CLUSTER = "vol"
PORTS = {"broker": 5681, "results": 6391, "flower": 5561}  # not those of the other e2e clusters
JOIN_PORT = 5443
TEST_IMAGES = {
    "source": "ship", "base": "infra-base:bookworm", "wheelhouse": str(WHEELHOUSE),
    "worker": "infra-test-worker:latest", "master": "infra-test-master:latest", "broker": "infra-test-broker:latest",
}
OBJECT = f"infra-{CLUSTER}-volunteer"  # the container, volume and image tag the line makes
NEVER_SERVED = (".env", ".venv/lib/site.py", "notes-private.txt")


def infra(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "infra", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)


def give_curl(testbed, host) -> None:
    """The testbed's Docker hosts have no curl; a volunteer's machine has. Copy Debian's curl and the
    libraries it needs from the testbed's fresh-host image (same Debian release), keeping what is there."""
    if testbed.exec_result(host, "command -v curl").returncode == 0:
        return
    image = ensure_image(FRESH)
    libs = subprocess.run(["docker", "run", "--rm", "--entrypoint", "sh", image, "-c",
                           "ldd /usr/bin/curl | grep -o '/[^ ]*'"], capture_output=True, text=True, check=True,
                          timeout=120).stdout.split()
    files = subprocess.run(["docker", "run", "--rm", "--entrypoint", "tar", image, "-chf", "-", "/usr/bin/curl",
                            *libs], capture_output=True, check=True, timeout=120).stdout
    testbed.exec(host, "tar -C / -xkf - 2>/dev/null; command -v curl", input=files)


def inventory(testbed, host) -> dict[str, set[str]]:
    """What Docker holds on a machine: containers, volumes, images (ids)."""
    def lines(cmd: str) -> set[str]:
        return set(testbed.exec(host, cmd).split())
    return {"containers": lines("docker ps -aq --no-trunc"), "volumes": lines("docker volume ls -q"),
            "images": lines("docker image ls -aq --no-trunc")}


def status_json(cluster) -> dict:
    result = infra("status", "-f", str(cluster["file"]), "--json", timeout=120)
    return json.loads(result.stdout)


def endpoint_log(testbed, master) -> list[dict]:
    out = testbed.exec(master, f"docker logs {CLUSTER}-join 2>&1")
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def run_line(testbed, host, line: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """As the volunteer types it into a shell on their machine."""
    return testbed.exec_result(host, line, timeout=timeout)


def write_cluster_file(testbed, folder, name: str, ports: dict, project, roles: dict):
    """The cluster file of a volunteer test: the wordcount copy on the testbed's h1, with these roles."""
    master = roles["master"]["host"]
    spec = {
        "name": name,
        "hosts": testbed.cluster_hosts([h for h in testbed.docker_hosts if h.name == master]),
        "project": {"path": str(project), "app": "wordcount", "remote_path": f"infra-e2e-{name}"},
        "ports": ports,
        "roles": roles,
        "images": TEST_IMAGES,
        "ssh": {"connect_timeout": 5, "known_hosts": str(testbed.known_hosts_path)},
        "state_dir": str(folder / "state"),
    }
    path = folder / "cluster.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def cluster(testbed, tmp_path_factory):
    assert WHEELHOUSE.is_dir(), "run scripts/make-wheelhouse.sh first (scripts/run-tests.sh does)"
    h1, volunteer_host = testbed.docker_hosts[0], testbed.docker_hosts[1]
    folder = tmp_path_factory.mktemp("volunteers")
    project = folder / "wordcount"
    shutil.copytree(PROJECT, project, ignore=shutil.ignore_patterns("output", "__pycache__"))
    # What sync-files sends to the cluster's hosts (.env) or never sends (.venv, .infraignore'd):
    # a volunteer gets none of them.
    (project / ".infraignore").write_text("notes-private.txt\n")
    for rel in NEVER_SERVED:
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text("not for volunteers\n")
    # Volunteers are given `celery`; `private` is the trusted side's alone (test_volunteer_broker).
    path = write_cluster_file(testbed, folder, CLUSTER, PORTS, project, {
        "master": {"host": h1.name},
        "workers": [{"host": h1.name, "containers": 1, "concurrency": 2},
                    {"host": h1.name, "containers": 1, "concurrency": 1, "queues": ["private"]}],
        "volunteers": {"queues": ["celery"]}})
    give_curl(testbed, volunteer_host)
    # Whatever an earlier run left of this cluster on the volunteer's machine.
    testbed.exec_result(volunteer_host, f"docker rm -f {OBJECT}; docker volume rm {OBJECT}; docker image rm {OBJECT}")
    before = inventory(testbed, volunteer_host)
    testbed.exec(volunteer_host, "touch /tmp/.before-joining && sleep 1")
    up = infra("up", "-f", str(path))
    assert up.returncode == 0, up.stdout + up.stderr
    yield {"file": path, "state": folder / "state" / CLUSTER, "master": h1.name, "volunteer": volunteer_host.name,
           "address": h1.address, "before": before, "lines": {}}
    testbed.exec_result(volunteer_host, f"docker rm -f {OBJECT}; docker volume rm {OBJECT}; docker image rm {OBJECT}")
    infra("clean", "-f", str(path), "--volumes", "--files")


def token_of(line: str) -> str:
    return re.search(r"/join/([A-Za-z0-9_-]+)", line).group(1)


def old_derived_secret(token: str, purpose: str) -> str:
    """A volunteer's password as infra derived it from the token before (HMAC-SHA256): what a leaked line gave."""
    mac = hmac.new(token.encode(), f"infra-volunteer:{purpose}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def broker_login(cluster, user: str, password: str) -> bool:
    from kombu import Connection

    ca = str(ca_file(cluster["state"]))
    connection = Connection(f"amqps://{user}:{password}@{cluster['address']}:{PORTS['broker']}/{CLUSTER}",
                            ssl={"ca_certs": ca, "cert_reqs": ssl.CERT_REQUIRED, "server_hostname": None},
                            connect_timeout=10)
    try:
        connection.connect()
        return True
    except Exception:  # noqa: BLE001 (refused is what is asked; any failure means no login)
        return False
    finally:
        connection.release()


def results_login(cluster, user: str, password: str) -> bool:
    import redis

    client = redis.Redis(host=cluster["address"], port=PORTS["results"], username=user, password=password, ssl=True,
                         ssl_ca_certs=str(ca_file(cluster["state"])), ssl_check_hostname=False, socket_timeout=10)
    try:
        return client.ping()
    except redis.RedisError:
        return False
    finally:
        client.close()


def volunteer_env(testbed, cluster) -> dict[str, str]:
    """The worker's celery.env as its container keeps it (what the exchange gave)."""
    text = testbed.exec(cluster["volunteer"], f"docker exec {OBJECT} cat /var/lib/infra-volunteer/celery.env")
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def password_in(url: str) -> str:
    return re.match(r"[a-z]+://[^:]+:([^@]+)@", url).group(1)


def wait_for_worker(cluster, node: str, want, seconds: float = 90) -> dict:
    """status --json until the row of `node` satisfies `want` (or the time is up): that row (or {})."""
    deadline = time.monotonic() + seconds
    while True:
        rows = {w["name"]: w for w in status_json(cluster)["workers"]}
        if want(rows.get(node, {})) or time.monotonic() > deadline:
            return rows.get(node, {})
        time.sleep(3)


def add(cluster, name: str, *options: str) -> dict:
    result = infra("volunteer", "add", name, "-f", str(cluster["file"]), "--json", *options)
    assert result.returncode == 0, result.stdout + result.stderr
    joining = json.loads(result.stdout)
    cluster["lines"][name] = joining
    return joining


def test_add_prints_a_pinned_line_and_starts_the_endpoint_on_the_master(cluster, testbed):
    joining = add(cluster, "alice", "--expires", "1h", "--cpus", "1", "--memory", "768m", "--concurrency", "2")
    line = joining["line"]
    assert f"https://{cluster['address']}:{JOIN_PORT}/join/" in line and "--pinnedpubkey 'sha256//" in line
    assert line.endswith("| sh -s -- --cpus 1 --memory 768m --concurrency 2")
    assert joining["leave"] == f"docker rm -f {OBJECT}; docker volume rm {OBJECT}; docker image rm {OBJECT}:latest"
    names = testbed.exec(cluster["master"], f"docker ps --filter label=infra.cluster={CLUSTER} "
                                            "--filter label=infra.role=join --format '{{.Names}}'")
    assert names == f"{CLUSTER}-join"
    manifest = json.loads((cluster["state"] / "manifest.json").read_text())
    assert f"{CLUSTER}-join" in manifest["hosts"][cluster["master"]]["containers"]
    # The token is kept nowhere in clear, here or on the master.
    token = re.search(r"/join/([A-Za-z0-9_-]+)", line).group(1)
    for state_file in cluster["state"].rglob("*"):
        if state_file.is_file():
            assert token not in state_file.read_text(errors="replace"), state_file
    assert testbed.exec_result(cluster["master"], f"grep -rl {token} /root 2>/dev/null").stdout.strip() == b""


def test_the_line_joins_the_volunteers_machine_and_its_worker_shows_in_status(cluster, testbed):
    result = run_line(testbed, cluster["volunteer"], cluster["lines"]["alice"]["line"])
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
    assert b"joined" in result.stderr
    inspect = json.loads(testbed.exec(cluster["volunteer"], f"docker inspect {OBJECT}"))[0]
    host_config = inspect["HostConfig"]
    assert inspect["Config"]["User"] == "celery"
    assert host_config["RestartPolicy"]["Name"] == "unless-stopped"
    assert host_config["NanoCpus"] == 1_000_000_000 and host_config["Memory"] == 768 * 1024 * 1024
    assert host_config["ReadonlyRootfs"] and host_config["CapDrop"] == ["ALL"]
    assert [m["Type"] for m in inspect["Mounts"]] == ["volume"]  # no folder of the volunteer's machine
    assert not host_config.get("PortBindings")
    deadline = time.monotonic() + 60
    while True:
        status = status_json(cluster)
        alice = next(v for v in status["volunteers"] if v["name"] == "alice")
        if alice["workers"] or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert len(alice["workers"]) == 1 and alice["workers"][0].startswith(f"{CLUSTER}-volunteer-alice.")
    # The node's name is the one infra drew at `add`, whole: not the volunteer machine's hostname.
    kept = json.loads((cluster["state"] / "volunteers.json").read_text())["volunteers"]["alice"]
    assert alice["workers"][0] == kept["node"] and kept["node"].endswith("@volunteer-alice")
    row = next(w for w in status["workers"] if w["name"] == kept["node"])
    assert (row["kind"], row["volunteer"], row["broker_users"]) == ("volunteer", "alice", ["volunteer-alice"])
    assert any(w["name"] == alice["workers"][0] and w["online"] for w in status["workers"])
    shown = infra("status", "-f", str(cluster["file"])).stdout
    assert "VOLUNTEERS" in shown and "alice" in shown
    cluster["node"] = alice["workers"][0]


def test_the_volunteers_copy_of_the_project_is_what_sync_files_sends_without_env_files(cluster, testbed):
    found = testbed.exec(cluster["volunteer"], f"docker exec {OBJECT} sh -c 'cd /var/lib/infra-volunteer/project "
                                               "&& find . -type f | sort'")
    names = {line[2:] for line in found.splitlines()}
    assert "wordcount/tasks.py" in names and ".infraignore" in names
    assert not names & set(NEVER_SERVED), names & set(NEVER_SERVED)
    # The master host got .env from sync-files (a host of the cluster), not the ignored files.
    copy = testbed.exec(cluster["master"], "find / -path '*/infra-e2e-vol/vol/wordcount/*' -type f 2>/dev/null")
    assert "/.env" in copy and ".venv" not in copy and "notes-private.txt" not in copy


def test_the_volunteer_takes_tasks_of_the_sample_job_and_results_come_back(cluster, testbed):
    from celery import chord

    app = celery_client(cluster["state"], cluster["address"], CLUSTER, broker_port=PORTS["broker"],
                        results_port=PORTS["results"])
    words = (PROJECT / "data" / "sample.txt").read_text().split()
    chunks = [" ".join(words[i:i + 50]) for i in range(0, len(words), 50)]
    try:
        result = chord([app.signature("wordcount.count_words", args=(c, 0.2)) for c in chunks],
                       app.signature("wordcount.merge_counts")).apply_async().get(timeout=180)
    finally:
        app.close()
    assert result["chunks"] == len(chunks)
    assert cluster["node"] in result["workers"], result["workers"]
    listed = json.loads(infra("volunteer", "list", "-f", str(cluster["file"]), "--json").stdout)["volunteers"]
    alice = next(v for v in listed if v["name"] == "alice")
    assert alice["joined"] and alice["last_seen"] and alice["arch"] and alice["tasks_done"] >= 1


def test_the_same_line_after_joining_is_refused_and_leaves_the_joined_worker_alone(cluster, testbed):
    host = cluster["volunteer"]
    before = testbed.exec(host, f"docker inspect --format '{{{{.Id}}}} {{{{.State.StartedAt}}}}' {OBJECT}")
    result = run_line(testbed, host, cluster["lines"]["alice"]["line"])
    assert result.returncode == 1
    assert "infra-join: the master refused the token" in result.stderr.decode()
    assert testbed.exec(host, f"docker inspect --format '{{{{.Id}}}} {{{{.State.StartedAt}}}}' {OBJECT}") == before
    refused = [e for e in endpoint_log(testbed, cluster["master"]) if e.get("status") == 403]
    assert (refused[-1]["reason"], refused[-1]["claimed"], refused[-1]["what"]) == ("spent", "alice", "script")
    # The bundle itself, asked for again with the token, gives nothing either.
    token = token_of(cluster["lines"]["alice"]["line"])
    pin = cluster["lines"]["alice"]["pin"]
    asked = testbed.exec_result(host, f"curl -sS -o /dev/null -D - -k --pinnedpubkey '{pin}' "
                                      f"'{cluster['lines']['alice']['url']}/v1/{token}/bundle'")
    assert b" 403" in asked.stdout and b"X-Infra-Refused: spent" in asked.stdout
    bundles = [e for e in endpoint_log(testbed, cluster["master"]) if e.get("what") == "bundle" and e["status"] == 200]
    assert [e["volunteer"] for e in bundles] == ["alice"]


def test_the_joined_worker_comes_back_after_a_restart_without_the_token(cluster, testbed):
    env = volunteer_env(testbed, cluster)
    testbed.exec(cluster["volunteer"], f"docker restart {OBJECT}", timeout=180)
    row = wait_for_worker(cluster, cluster["node"], lambda w: w.get("online"))
    assert row.get("online") and row["kind"] == "volunteer", row
    assert volunteer_env(testbed, cluster) == env
    bundles = [e for e in endpoint_log(testbed, cluster["master"]) if e.get("what") == "bundle" and e["status"] == 200]
    assert len(bundles) == 1  # it asked for no credentials again


def test_passwords_derived_from_the_token_the_old_way_log_in_nowhere(cluster, testbed):
    env = volunteer_env(testbed, cluster)
    broker, results = password_in(env["CELERY_BROKER_URL"]), password_in(env["CELERY_RESULT_BACKEND"])
    # What the exchange gave logs in (so the checks below can fail)...
    assert broker_login(cluster, "volunteer-alice", broker) and results_login(cluster, "volunteer-alice", results)
    # ...and what the token alone gives does not.
    token = token_of(cluster["lines"]["alice"]["line"])
    assert {old_derived_secret(token, p) for p in ("broker", "results")}.isdisjoint({broker, results})
    assert not broker_login(cluster, "volunteer-alice", old_derived_secret(token, "broker"))
    assert not results_login(cluster, "volunteer-alice", old_derived_secret(token, "results"))


@contextlib.contextmanager
def trusted_worker_stopped(cluster, testbed, pidfile: str):
    """The cluster file's one worker (on the master host) stopped for the block; yields its node
    name. After it: the process whose pid the block wrote to `pidfile` in the volunteer's container
    is killed, the worker started again and shown as the cluster's."""
    worker = f"{CLUSTER}-worker-{cluster['master']}-1"
    trusted_node = f"{worker}@{cluster['master']}"
    testbed.exec(cluster["master"], f"docker stop {worker}", timeout=120)
    try:
        assert not wait_for_worker(cluster, trusted_node, lambda w: not w.get("online"), 60).get("online")
        yield trusted_node
    finally:
        testbed.exec_result(cluster["volunteer"], f"docker exec {OBJECT} sh -c 'kill $(cat {pidfile})'")
        testbed.exec(cluster["master"], f"docker start {worker}", timeout=120)
        row = wait_for_worker(cluster, trusted_node, lambda w: w.get("online") and w.get("kind") == "cluster", 120)
        assert row.get("kind") == "cluster" and row.get("online"), row


def status_until_online(cluster, node: str, seconds: float = 60) -> tuple[list, dict, dict]:
    """(every (online, kind) status showed for `node`, the last status, its row), until it is online."""
    deadline, seen = time.monotonic() + seconds, []
    while True:
        status = status_json(cluster)
        row = next((w for w in status["workers"] if w["name"] == node), {})
        seen.append((row.get("online"), row.get("kind")))
        if row.get("online") or time.monotonic() > deadline:
            return seen, status, row
        time.sleep(3)


def test_a_volunteer_posing_as_the_trusted_worker_is_shown_as_a_stranger(cluster, testbed):
    """With the trusted worker stopped (Celery's pidbox queue is exclusive), the volunteer's container
    runs a second worker named as the cluster file's; status must not take it for that worker."""
    host = cluster["volunteer"]
    with trusted_worker_stopped(cluster, testbed, "/tmp/forger.pid") as trusted_node:
        testbed.exec(host, f"docker exec -d {OBJECT} sh -c 'echo $$ > /tmp/forger.pid; cd /var/lib/infra-volunteer/project "
                           f"&& PYTHONPATH=. exec python -m celery --app wordcount worker -n {trusted_node} --pool solo "
                           f"--queues nobody-sends-here --loglevel WARNING > /tmp/forger.log 2>&1'")
        seen, status, row = status_until_online(cluster, trusted_node)
        assert (True, "cluster") not in seen, seen
        forger_log = testbed.exec_result(host, f"docker exec {OBJECT} cat /tmp/forger.log").stdout.decode()
        if "ACCESS_REFUSED" in forger_log or "access_refused" in forger_log.lower():
            return  # the broker's permissions refused the name already: it is not shown at all
        assert seen[-1] == (True, "stranger"), (seen, forger_log[-2000:])
        assert row["broker_users"] == ["volunteer-alice"]
        assert status["exit_code"] == 3 and any("a stranger answers" in p for p in status["problems"])
        shown = infra("status", "-f", str(cluster["file"])).stdout
        assert "STRANGER" in next(line for line in shown.splitlines() if line.strip().startswith(trusted_node))


# Runs in the volunteer's container with its own broker login: a control node on a pidbox queue the
# volunteer may declare (its own name's), whose replies name another node (argv[2]). Celery's
# replies carry the node's name in their body, which is the volunteer's to write.
FORGED_REPLIES = r"""
import socket, sys
from kombu import Exchange
from wordcount.celery_app import app
Exchange.passive = True  # as the volunteer's worker does: it may not declare an exchange, only find it
own, posing = sys.argv[1], sys.argv[2]
answers = {"ping": {"ok": "pong"}, "active": [], "stats": {"pool": {"max-concurrency": 1}, "total": {}},
           "active_queues": [{"name": "celery"}]}
handlers = {name: (lambda value: lambda state, **kwargs: value)(value) for name, value in answers.items()}
with app.connection_for_write() as conn:
    node = app.control.mailbox(conn).Node(own, handlers=handlers, channel=conn.default_channel)
    node.listen()
    node.hostname = posing  # the queue stays the volunteer's own; the replies say they are the other node's
    print("listening", flush=True)
    while True:
        try:
            conn.drain_events(timeout=5)
        except socket.timeout:
            pass
"""


def test_replies_a_volunteer_writes_in_a_trusted_workers_name_show_it_as_a_stranger(cluster, testbed):
    """The trusted worker stopped, a control node in the volunteer's container answers the pings in
    its name: status must not show that worker online as the cluster's (nobody holds its queue)."""
    host = cluster["volunteer"]
    script = base64.b64encode(FORGED_REPLIES.encode()).decode()
    testbed.exec(host, f"docker exec {OBJECT} sh -c 'echo {script} | base64 -d > /tmp/replier.py'")
    with trusted_worker_stopped(cluster, testbed, "/tmp/replier.pid") as trusted_node:
        testbed.exec(host, f"docker exec -d {OBJECT} sh -c 'echo $$ > /tmp/replier.pid; "
                           f"cd /var/lib/infra-volunteer/project && PYTHONPATH=. exec python /tmp/replier.py "
                           f"{CLUSTER}-volunteer-alice.replier@volunteer-alice {trusted_node} > /tmp/replier.log 2>&1'")
        seen, status, _ = status_until_online(cluster, trusted_node)
        log = testbed.exec_result(host, f"docker exec {OBJECT} cat /tmp/replier.log").stdout.decode()
        assert "listening" in log, log[-2000:]  # the forged node ran with the volunteer's rights
        assert (True, "cluster") not in seen, seen
        assert seen[-1] == (True, "stranger"), (seen, log[-2000:])
        assert status["exit_code"] == 3
        assert any(p.startswith(f"worker {trusted_node}: a stranger answers") and "nobody holds" in p
                   for p in status["problems"]), status["problems"]


def test_revoke_under_load_stops_its_work_within_30_s_and_every_task_completes_elsewhere(cluster, testbed):
    app = celery_client(cluster["state"], cluster["address"], CLUSTER, broker_port=PORTS["broker"],
                        results_port=PORTS["results"])
    try:
        results = [app.signature("wordcount.count_words", args=(f"word{i} other", 0.1)).apply_async()
                   for i in range(1000)]
        time.sleep(4)  # the volunteer has tasks in flight
        revoked = infra("volunteer", "revoke", "alice", "-f", str(cluster["file"]))
        assert revoked.returncode == 0, revoked.stdout + revoked.stderr
        revoked_at = time.monotonic()
        # Within 30 s it is no longer a worker of the cluster (its connections were closed, its login deleted).
        while True:
            status = status_json(cluster)
            online = {w["name"] for w in status["workers"] if w["online"]}
            if cluster["node"] not in online:
                break
            assert time.monotonic() - revoked_at < 30, "the revoked volunteer still answers Celery"
            time.sleep(2)
        values = [r.get(timeout=300) for r in results]
    finally:
        app.close()
    assert len(values) == 1000 and all(v["words"] == 2 for v in values)
    assert any(v["worker"] == cluster["node"] for v in values), "the volunteer took no task: revoked under no load"
    late = [v for v in values[-200:] if v["worker"] == cluster["node"]]
    assert not late, f"{len(late)} of the last 200 tasks ran on the revoked volunteer"
    users = testbed.exec(cluster["master"], f"docker exec {CLUSTER}-broker rabbitmqctl list_users --quiet")
    assert "volunteer-alice" not in users


def test_the_same_line_after_revocation_fails_with_a_clear_message(cluster, testbed):
    result = run_line(testbed, cluster["volunteer"], cluster["lines"]["alice"]["line"])
    assert result.returncode == 1
    err = result.stderr.decode()
    assert "403" in err and "infra-join: the master refused the token: it is wrong, expired or revoked" in err
    assert "pinned" not in err


def test_an_expired_line_fails_the_same_way_and_its_token_opens_nothing(cluster, testbed):
    joining = add(cluster, "bob", "--expires", "2s")
    time.sleep(3)
    result = run_line(testbed, cluster["volunteer"], joining["line"])
    assert result.returncode == 1
    assert "infra-join: the master refused the token: it is wrong, expired or revoked" in result.stderr.decode()
    token = token_of(joining["line"])
    asked = testbed.exec_result(cluster["volunteer"], f"curl -sS -D - -k --pinnedpubkey '{joining['pin']}' "
                                                      f"'{joining['url']}/v1/{token}/bundle'")
    assert b" 403" in asked.stdout and b"X-Infra-Refused: expired" in asked.stdout
    assert asked.stdout.endswith(b"\r\n\r\n")  # headers only: no body
    log = endpoint_log(testbed, cluster["master"])
    assert not any(e.get("volunteer") == "bob" for e in log)
    assert {e.get("reason") for e in log if e.get("claimed") == "bob"} == {"expired"}
    # Its users exist until the next `volunteer list` or `add` an expiry later, but nothing logs in as them:
    # their passwords were random, and sealed only for the exchange that never happened.
    for purpose, login in (("broker", broker_login), ("results", results_login)):
        assert not login(cluster, "volunteer-bob", old_derived_secret(token, purpose))


def test_a_line_whose_pin_does_not_match_the_master_runs_nothing_and_sends_no_token(cluster, testbed):
    joining = add(cluster, "carol", "--expires", "1h")
    wrong = "sha256//" + "A" * 43 + "="
    line = re.sub(r"sha256//[A-Za-z0-9+/=]+", wrong, joining["line"])
    assert wrong in line
    before = inventory(testbed, cluster["volunteer"])
    result = run_line(testbed, cluster["volunteer"], line)
    assert result.returncode == 1
    err = result.stderr.decode()
    assert "pinned public key" in err and "infra-join: the server is not the pinned master" in err
    assert "refused the token" not in err
    assert inventory(testbed, cluster["volunteer"]) == before
    assert not any(e.get("volunteer") == "carol" for e in endpoint_log(testbed, cluster["master"]))


def test_the_leave_line_leaves_nothing_of_the_cluster_on_the_volunteers_machine(cluster, testbed):
    host = cluster["volunteer"]
    assert testbed.exec_result(host, f"docker inspect {OBJECT}").returncode == 0  # (idle since revoked)
    result = run_line(testbed, host, cluster["lines"]["alice"]["leave"])
    assert result.returncode == 0, result.stderr
    after = inventory(testbed, host)
    for kind in ("containers", "volumes", "images"):
        assert after[kind] <= cluster["before"][kind], (kind, after[kind] - cluster["before"][kind])
    files = testbed.exec(host, "find / -xdev -newer /tmp/.before-joining -type f "
                               "-not -path '/proc/*' -not -path '/sys/*' -not -path '/var/lib/docker/*' -not -path '/var/lib/containerd/*' "
                               "-not -path '/var/log/*' -not -path '/run/*' 2>/dev/null || true")
    assert [f for f in files.splitlines() if f.strip()] == []


def test_clean_revokes_every_volunteer_and_removes_the_endpoint(cluster, testbed):
    result = infra("clean", "-f", str(cluster["file"]))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "revoked volunteer(s) bob, carol" in result.stdout
    assert testbed.exec(cluster["master"], f"docker ps -a --filter label=infra.cluster={CLUSTER} -q") == ""
    store = json.loads((cluster["state"] / "volunteers.json").read_text())["volunteers"]
    assert all(v["revoked"] for v in store.values())
