"""The result backend by role, on the real testbed: a volunteer may hand back results and nothing else,
and a trusted worker's task cannot administer Redis.

h1 is the master (and a worker); h2 is a volunteer's machine joined with the printed line, as in
tests/e2e/test_volunteers.py. The probes run INSIDE the containers, with the credentials the
containers hold (their celery.env, loaded by infra_runtime.boot): what a task there could do.
"""

from __future__ import annotations

import csv
import json
import shlex
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from tests.e2e.clients import celery_client
from tests.testbed.testbed import TestbedError
from tests.e2e.test_volunteers import PROJECT, WHEELHOUSE, give_curl, infra, run_line, write_cluster_file

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
    path = write_cluster_file(testbed, folder, CLUSTER, PORTS, project, {
        "master": {"host": h1.name}, "workers": [{"host": h1.name, "containers": 1, "concurrency": 2}]})
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
           "address": h1.address, "worker": WORKER.format(host=h1.name), "project": project, "folder": folder}
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


# A run that takes a while, then prints its metric: 7 times its --i.
SLOW_RUN = "import sys, time; time.sleep(5); print('value=%d' % (7 * int(sys.argv[2])))"

# Runs in the volunteer's container: forges, for every run of the sweep argv[1] names and for the
# ids an attacker can work out (sweep.run.attempt), an ok end with a made-up metric, and marks
# them done so that their delivery would be skipped. Prints what Redis answered.
FORGER = r"""
import json, os, sys
import redis
r = redis.Redis.from_url(os.environ["CELERY_RESULT_BACKEND"], socket_timeout=10, socket_connect_timeout=10)
sweep, runs = sys.argv[1], json.loads(sys.argv[2])
answers = []
for attempt in (1, 2):
    for run in runs:
        guess = f"{sweep}.{run}.{attempt}"
        base = {"run": run, "submission": guess}
        events = [{**base, "event": "start", "host": "forged", "worker": "forged", "gpus": ""},
                  {**base, "event": "lines", "lines": ["value=-1"]},
                  {**base, "event": "end", "status": "ok", "exit_code": 0, "seconds": 0, "host": "forged"}]
        answers.append(r.rpush(f"infra:sweep:{sweep}:events", *[json.dumps(e) for e in events]))
        answers.append(r.sadd(f"infra:sweep:{sweep}:done", guess))
print(json.dumps(answers))
"""


def test_events_and_done_marks_a_volunteer_forges_for_other_runs_of_a_sweep_change_nothing(cluster, testbed):
    from infra.sweep.plan import run_id

    params = cluster["folder"] / "forged.yml"
    params.write_text("i: [1, 2, 3, 4, 5, 6, 7, 8]\n")
    command = ["python", "-c", SLOW_RUN]
    runs = [run_id([*command, "--i", str(i)]) for i in range(1, 9)]
    sweep = subprocess.Popen([sys.executable, "-m", "infra", "sweep", "-f", str(cluster["file"]), str(params),
                              "--name", "forged", "-q", "--", *command],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (alive := admin(testbed, cluster, "KEYS", "infra:sweep:*:alive")).startswith("[b'"):
            assert time.monotonic() < deadline and sweep.poll() is None, alive
            time.sleep(0.5)
        sweep_id = alive.split(":")[2]  # the strongest attacker: it knows the sweep and every run
        argv = ["docker", "exec", OBJECT, "python", "-c", FORGER, sweep_id, json.dumps(runs)]
        answers = json.loads(testbed.exec(cluster["volunteer"], shlex.join(argv), timeout=60).strip().splitlines()[-1])
        assert len(answers) == 32 and all(isinstance(a, int) for a in answers)  # the volunteer may append: it did
        out, _ = sweep.communicate(timeout=300)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 0, out[-3000:]
    with (cluster["project"] / "output" / "sweep-forged.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    # Every run ran for real, once, and its metric is its own: no forged end, no skipped delivery.
    assert [(row["i"], row["status"], row["attempts"], row["value"]) for row in rows] == [
        (str(i), "ok", "1", str(7 * i)) for i in range(1, 9)]
    assert "forged" not in {row["host"] for row in rows}


def test_revoke_deletes_the_volunteers_redis_user_through_the_administrator(cluster, testbed):
    users = admin(testbed, cluster, "ACL", "USERS")
    assert "volunteer-vera" in users and "default" in users
    revoked = infra("volunteer", "revoke", "vera", "-f", str(cluster["file"]))
    assert revoked.returncode == 0, revoked.stdout + revoked.stderr
    assert "volunteer-vera" not in admin(testbed, cluster, "ACL", "USERS")
    # Its worker, refused, exits and the engine restarts the container: probe between two restarts.
    deadline = time.monotonic() + 90
    while True:
        try:
            answers = probe(testbed, cluster["volunteer"], OBJECT, {"ping": ["PING"]})
            break
        except TestbedError as exc:
            assert "is restarting" in str(exc) or "is not running" in str(exc), exc
            assert time.monotonic() < deadline, exc
            time.sleep(0.3)
    assert refused(answers["ping"]) or answers["ping"].startswith("ConnectionError"), answers
