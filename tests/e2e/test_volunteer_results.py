"""The result backend by role, on the real testbed: a volunteer may hand back results and nothing else,
and a trusted worker's task cannot administer Redis.

h1 is the master (and a worker); h2 is a volunteer's machine joined with the printed line, as in
tests/e2e/test_volunteers.py. The probes run INSIDE the containers, with the credentials the
containers hold (their celery.env, loaded by infra_runtime.boot): what a task there could do.
"""

from __future__ import annotations

import json
import shlex
import shutil
import time
import uuid

import pytest
import yaml

from tests.e2e.clients import celery_client
from tests.e2e.test_volunteers import PROJECT, TEST_IMAGES, WHEELHOUSE, give_curl, infra, run_line

pytestmark = pytest.mark.e2e

CLUSTER = "volres"
PORTS = {"broker": 5682, "results": 6392, "flower": 5562}  # not those of the other e2e clusters
OBJECT = f"infra-{CLUSTER}-volunteer"
WORKER = f"{CLUSTER}-worker-{{host}}-1"

# Runs in a container: tries each command with the container's own Redis URL; prints
# {name: "ok" | "ErrorClass: message"} as one JSON line. argv[1]: JSON [[name, [words...]], ...].
PROBE = r"""
import json, os, sys
import redis
r = redis.Redis.from_url(os.environ["CELERY_RESULT_BACKEND"], socket_timeout=10, socket_connect_timeout=10)
out = {}
for name, words in json.loads(sys.argv[1]):
    try:
        r.execute_command(*words)
        out[name] = "ok"
    except redis.RedisError as exc:
        out[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
print(json.dumps(out))
"""


def probe(testbed, host, container: str, commands: dict[str, list[str]]) -> dict[str, str]:
    argv = ["docker", "exec", container, "python", "-c", PROBE, json.dumps(list(commands.items()))]
    out = testbed.exec(host, shlex.join(argv), timeout=60)
    return json.loads(out.strip().splitlines()[-1])


def admin(testbed, cluster, *words: str) -> str:
    """A command as Redis's administrator, inside the results container (where its URL is)."""
    script = ("import redis,sys; url=open('/run/infra/admin.url').read().strip(); "
              "print(redis.Redis.from_url(url).execute_command(*sys.argv[1:]))")
    return testbed.exec(cluster["master"], shlex.join(["docker", "exec", f"{CLUSTER}-results", "python", "-c",
                                                       script, *words]))


def refused(answer: str) -> bool:
    # DEBUG is refused to every remote client whatever its user (Redis's enable-debug-command).
    return answer.startswith(("NoPermissionError", "AuthenticationError", "ResponseError: WRONGPASS",
                              "ResponseError: DEBUG command not allowed"))


@pytest.fixture(scope="module")
def cluster(testbed, tmp_path_factory):
    assert WHEELHOUSE.is_dir(), "run scripts/make-wheelhouse.sh first (scripts/run-tests.sh does)"
    h1, volunteer_host = testbed.docker_hosts[0], testbed.docker_hosts[1]
    folder = tmp_path_factory.mktemp("volunteer-results")
    project = folder / "wordcount"
    shutil.copytree(PROJECT, project, ignore=shutil.ignore_patterns("output", "__pycache__"))
    spec = {
        "name": CLUSTER,
        "hosts": testbed.cluster_hosts([h1]),
        "project": {"path": str(project), "app": "wordcount", "remote_path": "infra-e2e-volres"},
        "ports": PORTS,
        "roles": {"master": {"host": h1.name}, "workers": [{"host": h1.name, "containers": 1, "concurrency": 2}]},
        "images": TEST_IMAGES,
        "ssh": {"connect_timeout": 5, "known_hosts": str(testbed.known_hosts_path)},
        "state_dir": str(folder / "state"),
    }
    path = folder / "cluster.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    give_curl(testbed, volunteer_host)
    leave = f"docker rm -f {OBJECT}; docker volume rm {OBJECT}; docker image rm {OBJECT}"
    testbed.exec_result(volunteer_host, leave)
    up = infra("up", "-f", str(path))
    assert up.returncode == 0, up.stdout + up.stderr
    added = infra("volunteer", "add", "vera", "-f", str(path), "--json", "--concurrency", "2")
    assert added.returncode == 0, added.stdout + added.stderr
    joined = run_line(testbed, volunteer_host, json.loads(added.stdout)["line"])
    assert joined.returncode == 0, (joined.stdout + joined.stderr).decode()
    state = folder / "state" / CLUSTER
    yield {"file": path, "state": state, "master": h1.name, "volunteer": volunteer_host.name,
           "address": h1.address, "worker": WORKER.format(host=h1.name)}
    testbed.exec_result(volunteer_host, leave)
    infra("clean", "-f", str(path), "--volumes", "--files")


def client(cluster):
    return celery_client(cluster["state"], cluster["address"], CLUSTER, broker_port=PORTS["broker"],
                         results_port=PORTS["results"])


def test_the_volunteer_takes_tasks_and_its_results_arrive(cluster):
    app = client(cluster)
    try:
        deadline = time.monotonic() + 180
        while True:  # until the volunteer's worker is up and has taken some of them
            results = [app.signature("wordcount.count_words", args=(f"w{i} x", 0.05)).apply_async()
                       for i in range(60)]
            values = [r.get(timeout=120) for r in results]
            assert all(v["words"] == 2 for v in values)
            workers = {v["worker"] for v in values}
            if any(w.startswith(f"{CLUSTER}-volunteer-vera.") for w in workers) or time.monotonic() > deadline:
                break
            time.sleep(5)
    finally:
        app.close()
    assert any(w.startswith(f"{CLUSTER}-volunteer-vera.") for w in workers), workers
    # A result of the trusted worker, for the next test to try and read.
    cluster["other_result"] = next(r.id for r, v in zip(results, values) if v["worker"].startswith(cluster["worker"]))


def test_inside_the_volunteer_listing_reading_forging_and_administering_redis_are_refused(cluster, testbed):
    other = f"celery-task-meta-{cluster['other_result']}"
    sweep = f"infra:sweep:{uuid.uuid4().hex[:12]}"
    admin(testbed, cluster, "SET", f"{sweep}:cancel", "0")
    admin(testbed, cluster, "RPUSH", f"{sweep}:events", "{}")
    admin(testbed, cluster, "SADD", f"{sweep}:done", "x")
    before = admin(testbed, cluster, "GET", other)
    answers = probe(testbed, cluster["volunteer"], OBJECT, {
        "scan": ["SCAN", "0"], "keys": ["KEYS", "*"], "get other result": ["GET", other],
        "mget other result": ["MGET", other], "pubsub channels": ["PUBSUB", "CHANNELS"],
        "subscribe": ["SUBSCRIBE", other],
        "set cancel": ["SET", f"{sweep}:cancel", "1"], "del cancel": ["DEL", f"{sweep}:cancel"],
        "del done": ["DEL", f"{sweep}:done"], "del events": ["DEL", f"{sweep}:events"],
        "read events": ["LRANGE", f"{sweep}:events", "0", "-1"], "set events": ["SET", f"{sweep}:events", "x"],
        "del result": ["DEL", other], "chord join": ["EVALSHA", "0" * 40, "1", "celery-taskset-meta-x.j"],
        "acl setuser": ["ACL", "SETUSER", "evil", "on", ">pw", "~*", "+@all"], "acl list": ["ACL", "LIST"],
        "flushall": ["FLUSHALL"], "flushdb": ["FLUSHDB"], "config": ["CONFIG", "GET", "*"],
        "config set": ["CONFIG", "SET", "appendonly", "no"], "debug": ["DEBUG", "SLEEP", "0"],
        "shutdown": ["SHUTDOWN", "NOSAVE"], "client kill": ["CLIENT", "KILL", "USER", "worker"],
        "auth default": ["AUTH", "default", "anything"], "auth admin": ["AUTH", "admin", "guess"],
    })
    assert {name: answer for name, answer in answers.items() if not refused(answer)} == {}
    # Nothing changed: the other task's result, the sweep's flag, events and done set.
    assert admin(testbed, cluster, "GET", other) == before
    assert admin(testbed, cluster, "GET", f"{sweep}:cancel") == "b'0'"
    assert admin(testbed, cluster, "LLEN", f"{sweep}:events") == "1"
    assert "evil" not in admin(testbed, cluster, "ACL", "USERS")


def test_inside_the_volunteer_what_a_run_and_a_result_need_is_allowed(cluster, testbed):
    sweep = f"infra:sweep:{uuid.uuid4().hex[:12]}"
    mine = f"celery-task-meta-{uuid.uuid4()}"
    answers = probe(testbed, cluster["volunteer"], OBJECT, {
        "store a result": ["SETEX", mine, "60", '{"status": "SUCCESS"}'], "publish it": ["PUBLISH", mine, "{}"],
        "push events": ["RPUSH", f"{sweep}:events", "{}"], "their expiry": ["EXPIRE", f"{sweep}:events", "60"],
        "read the flags": ["MGET", f"{sweep}:cancel", f"{sweep}:alive"],
        "done?": ["SISMEMBER", f"{sweep}:done", "s.r.1"], "done": ["SADD", f"{sweep}:done", "s.r.1"],
    })
    assert answers == {name: "ok" for name in answers}
    assert admin(testbed, cluster, "LLEN", f"{sweep}:events") == "1"


def test_a_trusted_workers_task_cannot_administer_redis_but_uses_the_clusters_keys(cluster, testbed):
    answers = probe(testbed, cluster["master"], cluster["worker"], {
        "acl setuser": ["ACL", "SETUSER", "evil", "on", ">pw", "~*", "+@all"], "acl deluser": ["ACL", "DELUSER", "admin"],
        "flushall": ["FLUSHALL"], "flushdb": ["FLUSHDB"], "config": ["CONFIG", "SET", "appendonly", "no"],
        "keys": ["KEYS", "*"], "debug": ["DEBUG", "SLEEP", "0"], "shutdown": ["SHUTDOWN", "NOSAVE"],
        "function": ["FUNCTION", "FLUSH"], "outside the cluster's keys": ["SET", "elsewhere", "1"],
        "auth default": ["AUTH", "default", "anything"],
        "a result": ["GET", f"celery-task-meta-{uuid.uuid4()}"], "a sweep key": ["DEL", "infra:sweep:x:events"],
    })
    assert {n: a for n, a in answers.items() if not refused(a)} == {"a result": "ok", "a sweep key": "ok"}
    assert "evil" not in admin(testbed, cluster, "ACL", "USERS")


def test_revoke_deletes_the_volunteers_redis_user_through_the_administrator(cluster, testbed):
    users = admin(testbed, cluster, "ACL", "USERS")
    assert "volunteer-vera" in users and "default" in users
    revoked = infra("volunteer", "revoke", "vera", "-f", str(cluster["file"]))
    assert revoked.returncode == 0, revoked.stdout + revoked.stderr
    assert "volunteer-vera" not in admin(testbed, cluster, "ACL", "USERS")
    answers = probe(testbed, cluster["volunteer"], OBJECT, {"ping": ["PING"]})
    assert refused(answers["ping"]) or answers["ping"].startswith("ConnectionError"), answers
