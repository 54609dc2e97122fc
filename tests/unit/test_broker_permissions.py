"""The broker's rights by role: the exact regexes, and what each lets a user name or not.

The sets were found against the real broker image with real Celery workers (a trusted one with
mingle and gossip, a volunteer's through `runtime.volunteer_worker`); tests/e2e/test_volunteer_broker.py
checks them on the testbed. RabbitMQ matches a whole name with Erlang's PCRE; Python's `re` reads
these patterns the same way.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from infra.config import parse_cluster
from infra.plans import broker_rights
from infra.plans import volunteer as volunteer_plan
from infra.plans.secret_files import broker_definitions
from infra.runtime import volunteer as volunteer_runtime
from infra.state.credentials import Secrets

FIXTURES = Path(__file__).parent / "fixtures"
UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
A_UUID = "0f8e2a49-3c1d-4b5e-9a7f-1c2d3e4f5a6b"
SECRETS = Secrets(broker_user="infra", broker_password="Brk-pw_0123456789abcdef", results_password="R" * 24,
                  flower_user="admin", flower_password="F" * 18, worker_user="worker", worker_password="W" * 24)


@pytest.fixture
def cluster(tmp_path):
    (tmp_path / "wordcount").mkdir()
    return parse_cluster((FIXTURES / "plan_cluster.yaml").read_text(), filename="cluster.yaml", base_dir=tmp_path)


def volunteer_definitions(cluster) -> dict:
    return json.loads(volunteer_plan.broker_user_definitions(cluster, "volunteer-alice", "s3cret-pw"))


def allows(pattern: str, name: str) -> bool:
    """As RabbitMQ matches: a search for the regex in the name (the anchors make it the whole name)."""
    return re.search(pattern, name) is not None


# --------------------------------------------------------------------------- a volunteer


def test_a_volunteer_gets_exactly_these_rights_on_the_clusters_vhost(cluster):
    definitions = volunteer_definitions(cluster)
    own = r"lab\-volunteer\-alice\..+\.celery\.pidbox"
    assert definitions["permissions"] == [{
        "user": "volunteer-alice", "vhost": "lab",
        "configure": f"^({own})$",
        "write": f"^({own}|reply\\.celery\\.pidbox|celeryev)$",
        "read": f"^(celery|heavy|celery\\.pidbox|{own})$",
    }]
    assert definitions["topic_permissions"] == [{"user": "volunteer-alice", "vhost": "lab", "exchange": "celeryev",
                                                 "write": r"^(worker|task)\.[a-z.]+$", "read": "^$"}]
    assert "s3cret-pw" not in json.dumps(definitions)


@pytest.mark.parametrize("name", ["amq.default", "celery", "heavy", "celery.pidbox", ""])
def test_a_volunteer_may_publish_to_no_exchange_that_carries_tasks_or_broadcasts(cluster, name):
    assert not allows(volunteer_definitions(cluster)["permissions"][0]["write"], name)


@pytest.mark.parametrize("name", ["celery", "heavy", "celery.pidbox", "reply.celery.pidbox", "celeryev",
                                  "lab-worker-gpu-box-1@gpu-box.celery.pidbox",
                                  "lab-volunteer-bob.1a2b3c@pc.celery.pidbox",
                                  "lab-volunteer-alicex.1a2b3c@pc.celery.pidbox",
                                  f"{A_UUID}.reply.celery.pidbox", f"celeryev.{A_UUID}"])
def test_a_volunteer_may_declare_or_delete_nothing_but_its_own_pidbox_queue(cluster, name):
    configure = volunteer_definitions(cluster)["permissions"][0]["configure"]
    assert not allows(configure, name)
    assert allows(configure, "lab-volunteer-alice.1a2b3c@pc.celery.pidbox")


@pytest.mark.parametrize("name", ["celeryev", f"celeryev.{A_UUID}", f"{A_UUID}.reply.celery.pidbox",
                                  "lab-worker-gpu-box-1@gpu-box.celery.pidbox", "reply.celery.pidbox", "other"])
def test_a_volunteer_reads_no_events_no_replies_and_no_other_nodes_queue(cluster, name):
    assert not allows(volunteer_definitions(cluster)["permissions"][0]["read"], name)


@pytest.mark.parametrize("key,allowed", [("worker.heartbeat", True), ("task.succeeded", True),
                                         ("task.started", True), ("celery", False), ("", False),
                                         ("workers.x", False), ("task.", False)])
def test_a_volunteer_sends_only_worker_and_task_events(cluster, key, allowed):
    assert allows(volunteer_definitions(cluster)["topic_permissions"][0]["write"], key) is allowed


def test_names_in_a_regex_are_escaped_and_anchored():
    rights = broker_rights.volunteer_rights("a.b-volunteer-x.", ["q.1", "q+"])
    assert rights.read == r"^(q\.1|q\+|celery\.pidbox|a\.b\-volunteer\-x\..+\.celery\.pidbox)$"
    assert not allows(rights.read, "qx1") and not allows(rights.read, "qq+") and not allows(rights.read, "q.1x")


def test_the_prefix_in_the_rights_is_the_node_prefix_the_endpoint_gives_the_volunteer():
    # runtime.endpoint.Endpoint.bundle: node_prefix = CLUSTER-volunteer-NAME; node_name adds ".ID@MACHINE"
    from infra.runtime.endpoint import volunteer_user
    prefix = broker_rights.volunteer_node_prefix("lab", volunteer_user("alice"))
    assert prefix == "lab-volunteer-alice."
    node = "lab-volunteer-alice.1a2b3c@pc"
    own = broker_rights.volunteer_rights(prefix, ["celery"]).configure
    assert allows(own, f"{node}.celery.pidbox") and not allows(own, node)


def test_a_volunteers_worker_neither_mingles_nor_gossips_and_keeps_remote_control():
    settings = {"app_args": ["--app", "tasks", "worker", "--include", "infra_runtime.tasks"], "queues": ["celery", "heavy"]}
    command = volunteer_runtime.worker_command(settings, "lab-volunteer-alice.1a2b3c@pc")
    assert command[:3] == [sys.executable, "-m", "infra.runtime.volunteer_worker"]
    assert command[3:8] == ["--app", "tasks", "worker", "--include", "infra_runtime.tasks"]
    assert "--without-mingle" in command and "--without-gossip" in command
    assert "--without-heartbeat" not in command and "--task-events" in command
    assert command[command.index("--hostname") + 1] == "lab-volunteer-alice.1a2b3c@pc"
    assert command[command.index("--queues") + 1] == "celery,heavy"


def test_the_worker_module_is_found_when_the_volunteer_runs_as_a_script():
    # `python -m infra_runtime.volunteer` names the module __main__: the worker's module must not come from it.
    import runpy
    names = runpy.run_module("infra.runtime.volunteer", run_name="__not_main__")
    assert names["WORKER_MODULE"] == "infra.runtime.volunteer_worker"


def test_a_volunteers_worker_declares_exchanges_only_passively_and_its_task_queues_not_at_all(monkeypatch):
    from kombu import Exchange, Queue

    from infra.runtime import volunteer_worker
    monkeypatch.setattr(Exchange, "passive", Exchange.passive)  # restored after the test
    volunteer_worker.declare_exchanges_passively()
    assert Exchange("celery.pidbox", type="fanout").passive is True

    class Instance:
        class app:
            class amqp:
                queues = type("Q", (), {"consume_from": {"celery": Queue("celery"), "heavy": Queue("heavy")}})()

    volunteer_worker.consume_without_declaring(Instance)
    assert all(q.no_declare for q in Instance.app.amqp.queues.consume_from.values())


# --------------------------------------------------------------------------- trusted workers and clients


def test_the_workers_user_gets_exactly_the_clusters_celery_objects(cluster):
    definitions = json.loads(broker_definitions(cluster, SECRETS))
    objects = ("celery|heavy|celery\\.pidbox|reply\\.celery\\.pidbox|celeryev|lab\\-worker\\-.+\\.celery\\.pidbox|"
               f"{UUID}\\.reply\\.celery\\.pidbox|celeryev\\.{UUID}")
    assert definitions["permissions"] == [
        {"user": "infra", "vhost": "lab", "configure": ".*", "write": ".*", "read": ".*"},
        {"user": "worker", "vhost": "lab", "configure": f"^({objects})$", "write": f"^(amq\\.default|{objects})$",
         "read": f"^({objects}|infra\\.followups)$"},
    ]
    assert "topic_permissions" not in definitions


@pytest.mark.parametrize("name", ["lab-volunteer-alice.1a2b3c@pc.celery.pidbox", "other", "celeryev.x",
                                  "x.reply.celery.pidbox", "lab-worker-", "celery.pidboxes"])
def test_the_workers_user_names_no_volunteers_queue_and_no_other_object(cluster, name):
    permission = json.loads(broker_definitions(cluster, SECRETS))["permissions"][1]
    assert not any(allows(permission[op], name) for op in ("configure", "write", "read"))


@pytest.mark.parametrize("name", ["celery", "heavy", "lab-worker-gpu-box-1@gpu-box.celery.pidbox",
                                  f"{A_UUID}.reply.celery.pidbox", f"celeryev.{A_UUID}", "celeryev"])
def test_the_workers_user_declares_and_consumes_what_workers_flower_and_probes_use(cluster, name):
    permission = json.loads(broker_definitions(cluster, SECRETS))["permissions"][1]
    assert all(allows(permission[op], name) for op in ("configure", "write", "read"))


def test_the_broker_makes_celerys_exchanges_as_kombu_declares_them(cluster):
    exchanges = json.loads(broker_definitions(cluster, SECRETS))["exchanges"]
    by_name = {e["name"]: (e["type"], e["durable"], e["auto_delete"], e["vhost"]) for e in exchanges}
    assert by_name == {"celery.pidbox": ("fanout", False, False, "lab"),
                       "reply.celery.pidbox": ("direct", False, False, "lab"),
                       "celeryev": ("topic", True, False, "lab"),
                       "infra.followups": ("fanout", True, False, "lab")}
    # What kombu and celery declare: a mismatch would make RabbitMQ refuse their declarations.
    from celery import Celery
    from celery.events.event import event_exchange
    mailbox = Celery("probe", broker="memory://").control.mailbox
    assert (mailbox.exchange.type, mailbox.exchange.durable, mailbox.exchange.auto_delete) == ("fanout", False, False)
    assert (mailbox.reply_exchange.type, mailbox.reply_exchange.durable) == ("direct", False)
    assert (event_exchange.type, event_exchange.durable, event_exchange.auto_delete) == ("topic", True, False)
    assert (mailbox.exchange.name, mailbox.reply_exchange.name, event_exchange.name) == (
        "celery.pidbox", "reply.celery.pidbox", "celeryev")


def test_a_rejected_task_of_the_clusters_queues_is_dead_lettered_to_the_relays_queue_alone(cluster):
    definitions = json.loads(broker_definitions(cluster, SECRETS))
    assert definitions["policies"] == [{"vhost": "lab", "name": "infra-followups", "pattern": "^(celery|heavy)$",
                                        "apply-to": "queues", "definition": {"dead-letter-exchange": "infra.followups"},
                                        "priority": 0}]
    assert definitions["queues"] == [{"name": "infra.followups", "vhost": "lab", "durable": True,
                                      "auto_delete": False, "arguments": {}}]
    assert [(b["source"], b["destination"]) for b in definitions["bindings"]] == [("infra.followups", "infra.followups")]
    # Nobody but the broker's definitions makes it; only the workers' user (the relay) reads it.
    volunteer = volunteer_definitions(cluster)["permissions"][0]
    workers = definitions["permissions"][1]
    assert not any(allows(volunteer[op], "infra.followups") for op in ("configure", "write", "read"))
    assert allows(workers["read"], "infra.followups")
    assert not allows(workers["configure"], "infra.followups") and not allows(workers["write"], "infra.followups")


# --------------------------------------------------------------------------- queues of volunteers' own


def with_volunteer_queues(cluster, tmp_path, queues: str):
    text = (FIXTURES / "plan_cluster.yaml").read_text() + f"  volunteers:\n    queues: {queues}\n"
    assert "\nroles:" in text and text.rstrip().endswith(queues)
    return parse_cluster(text, filename="cluster.yaml", base_dir=tmp_path)


def test_volunteers_given_a_queue_of_their_own_consume_it_alone(cluster, tmp_path):
    lab = with_volunteer_queues(cluster, tmp_path, "[volunteers]")
    read = volunteer_definitions(lab)["permissions"][0]["read"]
    assert allows(read, "volunteers")
    # The other groups' queues are out of reach: neither consumed nor purged (both need `read`).
    assert not allows(read, "celery") and not allows(read, "heavy")
    assert volunteer_plan.endpoint_settings(lab, "10.0.0.5", 5443)["queues"] == ["volunteers"]


def test_a_queue_only_volunteers_serve_is_made_by_the_broker_and_the_trusted_side_may_send_to_it(cluster, tmp_path):
    lab = with_volunteer_queues(cluster, tmp_path, "[volunteers, heavy]")
    definitions = json.loads(broker_definitions(lab, SECRETS))
    assert definitions["queues"][1:] == [{"name": "volunteers", "vhost": "lab", "durable": True,
                                          "auto_delete": False, "arguments": {}}]
    assert [(e["name"], e["type"], e["durable"]) for e in definitions["exchanges"]][-1] == ("volunteers", "direct", True)
    assert definitions["bindings"][-1] == {"source": "volunteers", "vhost": "lab", "destination": "volunteers",
                                           "destination_type": "queue", "routing_key": "volunteers", "arguments": {}}
    workers = definitions["permissions"][1]
    assert allows(workers["write"], "volunteers") and allows(workers["configure"], "volunteers")
    assert definitions["policies"][0]["pattern"] == "^(celery|heavy|volunteers)$"  # its follow-ups reach the relay
    # Celery declares a task queue as the definitions do, so a trusted declaration matches it.
    from celery import Celery
    queue = Celery("probe", broker="memory://").amqp.Queues({}).new_missing("volunteers")
    assert (queue.durable, queue.auto_delete, queue.queue_arguments or {}) == (True, False, {})
    assert (queue.exchange.name, queue.exchange.type, queue.exchange.durable, queue.routing_key) == (
        "volunteers", "direct", True, "volunteers")


def test_by_default_volunteers_consume_every_queue_and_no_queue_is_made_for_them(cluster):
    assert broker_rights.volunteer_queues(cluster) == ["celery", "heavy"]
    assert [q["name"] for q in json.loads(broker_definitions(cluster, SECRETS))["queues"]] == ["infra.followups"]


@pytest.mark.parametrize("queues, problem", [("[]", "at least one queue is needed"),
                                             ("['-Qx']", "invalid queue name '-Qx'")])
def test_a_bad_volunteers_queue_is_one_line_naming_the_key(cluster, tmp_path, queues, problem):
    from infra.errors import ConfigError
    with pytest.raises(ConfigError) as failure:
        with_volunteer_queues(cluster, tmp_path, queues)
    assert "roles.volunteers.queues" in str(failure.value) and problem in str(failure.value)
    assert "\n" not in str(failure.value)
