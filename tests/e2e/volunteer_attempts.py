"""Run INSIDE a joined volunteer's container (`python - NODE TRUSTED_NODE < this file`): everything a
stranger with the volunteer's broker login might try, each on a connection of its own, printed as
one JSON object {attempt: "allowed" | "refused: ..."}. Standard library and kombu only (the image's).

A publish is asynchronous in AMQP: a round trip after it (basic.qos) makes a refused one show.
"""

import json
import os
import ssl
import sys
import uuid

from kombu import Connection

NODE, TRUSTED = sys.argv[1], sys.argv[2]  # this volunteer's Celery node, a trusted worker's
URL = os.environ["CELERY_BROKER_URL"]  # from the volunteer's celery.env (infra_runtime.boot)
CA = os.environ.get("INFRA_CA_FILE") or "/var/lib/infra-volunteer/ca.crt"
OWN_QUEUE = f"{NODE}.x.celery.pidbox"  # a name under its own prefix: it may declare this one
results = {}


def publish(channel, exchange, key, body, headers=None):
    message = channel.prepare_message(json.dumps(body), content_type="application/json",
                                      content_encoding="utf-8", headers=headers or {})
    channel.basic_publish(message, exchange=exchange, routing_key=key)
    channel.basic_qos(0, 1, False)


def attempt(name, action):
    with Connection(URL, ssl={"ca_certs": CA, "cert_reqs": ssl.CERT_REQUIRED, "server_hostname": None},
                    connect_timeout=10) as conn:
        channel = conn.channel()
        try:
            action(channel)
            results[name] = "allowed"
        except Exception as exc:  # what the broker said, for the test's message
            results[name] = f"refused: {type(exc).__name__}: {exc}"


def task(name, args):
    task_id = str(uuid.uuid4())
    return [args, {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}], {
        "lang": "py", "task": name, "id": task_id, "root_id": task_id, "parent_id": None, "group": None}


run_command_body, run_command_headers = task("infra.run_command", [{"argv": ["sh", "-c", "echo pwned"]}])
project_body, project_headers = task("wordcount.count_words", ["owned by a stranger"])
for exchange, key in (("", "celery"), ("celery", "celery")):
    attempt(f"publish infra.run_command to exchange '{exchange}' key {key}",
            lambda ch, e=exchange, k=key: publish(ch, e, k, run_command_body, run_command_headers))
    attempt(f"publish wordcount.count_words to exchange '{exchange}' key {key}",
            lambda ch, e=exchange, k=key: publish(ch, e, k, project_body, project_headers))
attempt("forge a follow-up on infra.followups",
        lambda ch: publish(ch, "infra.followups", "", run_command_body, run_command_headers))
for method in ("shutdown", "pool_restart"):
    attempt(f"broadcast {method}", lambda ch, m=method: publish(
        ch, "celery.pidbox", "", {"method": m, "arguments": {}, "destination": None, "pattern": None,
                                  "matcher": None}))
attempt("consume a trusted node's pidbox queue",
        lambda ch: ch.basic_consume(f"{TRUSTED}.celery.pidbox", callback=lambda *a: None))
attempt("consume the relay's queue", lambda ch: ch.basic_consume("infra.followups", callback=lambda *a: None))
attempt("consume another group's queue private", lambda ch: ch.basic_consume("private", callback=lambda *a: None))
attempt("purge another group's queue private", lambda ch: ch.queue_purge("private"))
attempt("purge the relay's queue", lambda ch: ch.queue_purge("infra.followups"))
attempt("delete queue celery", lambda ch: ch.queue_delete("celery"))
attempt("delete queue private", lambda ch: ch.queue_delete("private"))
attempt("delete exchange celery.pidbox", lambda ch: ch.exchange_delete("celery.pidbox"))
attempt("declare exchange celeryev", lambda ch: ch.exchange_declare("celeryev", "topic", durable=True))
attempt("declare a trusted node's pidbox queue",
        lambda ch: ch.queue_declare(f"{TRUSTED}.celery.pidbox", auto_delete=True, durable=False))
attempt("read celeryev", lambda ch: (ch.queue_declare(OWN_QUEUE, auto_delete=True, durable=False),
                                     ch.queue_bind(OWN_QUEUE, "celeryev", "#")))
attempt("send an event that is not worker.* or task.*", lambda ch: publish(ch, "celeryev", "job.output", {}))
# The honest part of its rights, so that the refusals above are not a failed login.
attempt("declare its own pidbox queue", lambda ch: ch.queue_declare(OWN_QUEUE, auto_delete=True, durable=False))
attempt("send a task event", lambda ch: publish(ch, "celeryev", "task.probe", {}))
attempt("delete its own pidbox queue", lambda ch: ch.queue_delete(OWN_QUEUE))
# Consuming a queue and purging it are one right (`read`): the limit the README states, pinned.
attempt("purge a queue it serves", lambda ch: ch.queue_purge("celery"))
print(json.dumps(results))
