"""A volunteer is a stranger: on the real testbed, from INSIDE a joined volunteer's container, each
thing beyond taking work and handing back results is attempted and refused by the broker, while
the cluster keeps working; and the honest path works: tasks, a chain and a chord whose steps run
on the volunteer (their follow-ups through the relay, NAME-relay).

Shares the cluster and helpers of tests/e2e/test_volunteers.py (h1 master with one worker, h2 the
volunteer's machine). The tests run in file order on one cluster.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.e2e.clients import celery_client
from tests.e2e.test_volunteers import CLUSTER, OBJECT, PORTS, add, cluster, run_line, status_json  # noqa: F401

pytestmark = pytest.mark.e2e

ATTEMPTS = Path(__file__).with_name("volunteer_attempts.py")
REFUSED = [
    "publish infra.run_command to exchange '' key celery",
    "publish wordcount.count_words to exchange '' key celery",
    "publish infra.run_command to exchange 'celery' key celery",
    "publish wordcount.count_words to exchange 'celery' key celery",
    "forge a follow-up on infra.followups",
    "broadcast shutdown",
    "broadcast pool_restart",
    "consume a trusted node's pidbox queue",
    "consume the relay's queue",
    "consume another group's queue private",
    "purge another group's queue private",
    "purge the relay's queue",
    "delete queue celery",
    "delete queue private",
    "delete exchange celery.pidbox",
    "declare exchange celeryev",
    "declare a trusted node's pidbox queue",
    "read celeryev",
    "send an event that is not worker.* or task.*",
]
ALLOWED = ["declare its own pidbox queue", "send a task event", "delete its own pidbox queue",
           "purge a queue it serves"]  # RabbitMQ: consuming and purging are one right; the README says so


def client(cluster):
    return celery_client(cluster["state"], cluster["address"], CLUSTER, broker_port=PORTS["broker"],
                         results_port=PORTS["results"])


def online_workers(cluster) -> set[str]:
    return {w["name"] for w in status_json(cluster)["workers"] if w["online"]}


@pytest.fixture(scope="module")
def joined(cluster, testbed):
    """alice joined and online; the trusted worker's node name."""
    add(cluster, "alice", "--expires", "1h", "--concurrency", "2")
    result = run_line(testbed, cluster["volunteer"], cluster["lines"]["alice"]["line"])
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
    deadline = time.monotonic() + 90
    while True:
        online = online_workers(cluster)
        node = next((n for n in online if n.startswith(f"{CLUSTER}-volunteer-alice.")), None)
        if node or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert node, f"alice's worker never answered: {online}"
    # The worker of the `celery` group (the first on the master host), not the `private` one's.
    trusted = next(n for n in online if n.startswith(f"{CLUSTER}-worker-") and n.split("@")[0].endswith("-1"))
    return {"node": node, "trusted": trusted}


def test_from_inside_a_volunteer_every_step_beyond_its_work_is_refused(cluster, testbed, joined):
    out = testbed.exec(cluster["volunteer"], f"docker exec -i {OBJECT} python - {joined['node']} {joined['trusted']}",
                       input=ATTEMPTS.read_bytes(), timeout=180)
    results = json.loads(out.strip().splitlines()[-1])
    assert {name: results[name] for name in ALLOWED} == {name: "allowed" for name in ALLOWED}
    allowed = {name: results[name] for name in REFUSED if not results[name].startswith("refused")}
    assert allowed == {}, f"a volunteer could: {sorted(allowed)}"
    assert all("ACCESS_REFUSED" in results[name] or "403" in results[name] for name in REFUSED), results


def test_the_cluster_keeps_working_after_the_attempts(cluster, testbed, joined):
    assert {joined["node"], joined["trusted"]} <= online_workers(cluster)  # no shutdown reached anyone
    queues = testbed.exec(cluster["master"], f"docker exec {CLUSTER}-broker rabbitmqctl list_queues --quiet "
                                              f"--vhost {CLUSTER} name")
    assert {"celery", "private", "infra.followups"} <= set(queues.split())
    app = client(cluster)
    try:
        values = [r.get(timeout=120) for r in [app.signature("wordcount.count_words", args=(f"a b {i}", 0.2))
                                               .apply_async() for i in range(40)]]
    finally:
        app.close()
    assert all(v["words"] == 3 for v in values)
    workers = {v["worker"] for v in values}
    assert joined["node"] in workers, f"the volunteer took none of 40 tasks: {workers}"  # its results arrive
    assert all(not w.startswith(f"{CLUSTER}-volunteer-") or w == joined["node"] for w in workers)
    # The group the volunteers were not given still takes its work, from the trusted side alone.
    app = client(cluster)
    try:
        private = [app.signature("wordcount.count_words", args=(f"p q {i}", 0.1)).apply_async(queue="private")
                   for i in range(6)]
        private_workers = {r.get(timeout=120)["worker"] for r in private}
    finally:
        app.close()
    assert private_workers and all(w.startswith(f"{CLUSTER}-worker-") for w in private_workers), private_workers


def test_a_chain_and_a_chord_whose_steps_run_on_the_volunteer_complete_through_the_relay(cluster, testbed, joined):
    from celery import chain, chord

    app = client(cluster)
    trusted = [joined["trusted"]]
    # The trusted worker stops taking tasks, so that every step runs on the volunteer.
    assert app.control.cancel_consumer("celery", destination=trusted, reply=True, timeout=10)
    try:
        steps = chain(app.signature("wordcount.count_words", args=("one two", 0)).set(immutable=True),
                      app.signature("wordcount.count_words", args=("one two three", 0)).set(immutable=True),
                      app.signature("wordcount.count_words", args=("one two three four", 0)).set(immutable=True))
        last = steps.apply_async().get(timeout=120)
        merged = chord([app.signature("wordcount.count_words", args=(f"w{i} x y", 0)) for i in range(6)],
                       app.signature("wordcount.merge_counts")).apply_async().get(timeout=120)
    finally:
        app.control.add_consumer("celery", destination=trusted, reply=True, timeout=10)
        app.close()
    assert last["words"] == 4 and last["worker"] == joined["node"]
    assert merged["chunks"] == 6 and merged["words"] == 18 and merged["workers"] == [joined["node"]]
    log = testbed.exec(cluster["master"], f"docker logs {CLUSTER}-relay 2>&1")
    followed = [json.loads(line) for line in log.splitlines() if line.startswith("{") and "follow-up" in line]
    assert sum(e["done"] == "followed (SUCCESS)" for e in followed) >= 2 + 6  # two chain steps, six chord parts


def test_a_forged_follow_up_never_runs(cluster, testbed, joined):
    # The attempts' infra.run_command on infra.followups was refused at the broker; had it passed, the
    # relay would have logged it. Nothing of it there.
    log = testbed.exec(cluster["master"], f"docker logs {CLUSTER}-relay 2>&1")
    assert "infra.run_command" not in log
