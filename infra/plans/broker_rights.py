"""Who may do what on the cluster's vhost: RabbitMQ's configure, write and read regexes per user.

RabbitMQ checks a name against a user's regex for each operation: declaring (even an object that
exists) or deleting a queue or exchange needs `configure` on it; publishing needs `write` on the
exchange (the default exchange is `amq.default`); binding a queue needs `write` on the queue and
`read` on the exchange; consuming, `get` and purging need `read` on the queue. A regex cannot tell
a queue from an exchange of the same name. A topic exchange is limited further by routing key
(`topic_permissions`).

- The workers' user (`worker`: trusted workers, the master container's probes, jobs and sweep
  driver, Flower) may use Celery's objects of the cluster and nothing else: the task queues of the
  cluster file and their exchanges, the broadcast, reply and event exchanges, its nodes' pidbox
  queues and the reply and event queues of clients. Not the default exchange, not a volunteer's
  queues, no other name.
- A volunteer's user may consume the queues it is given, declare and use its own pidbox queue
  (named under the node prefix infra assigned it, so it cannot take a trusted node's), bind it
  to the broadcast exchange, publish control replies, and publish events whose routing key is
  `worker.*` or `task.*`. It declares no exchange (the broker's definitions make Celery's at every
  start, and the volunteer's worker only checks they exist: `runtime.volunteer_worker`), and it
  may not publish a task anywhere, broadcast, read events, delete or purge a queue.

Every name is escaped (re.escape) and every regex anchored (^...$).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..config import Cluster

# Celery's own objects (kombu's Mailbox('celery') and celery.events), the same in every cluster.
BROADCAST_EXCHANGE = "celery.pidbox"  # fanout: remote control to every node
REPLY_EXCHANGE = "reply.celery.pidbox"  # direct: the nodes' answers, to each client's reply queue
DEFAULT_EXCHANGE = "amq.default"  # the nameless exchange "", as RabbitMQ checks it
EVENT_EXCHANGE = "celeryev"  # topic: worker-* and task-* events
PIDBOX_SUFFIX = ".celery.pidbox"  # a node's queue on the broadcast exchange: NODE.celery.pidbox
UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
NOTHING = "^$"  # RabbitMQ's way of saying no name at all
VOLUNTEER_EVENT_KEYS = r"^(worker|task)\.[a-z.]+$"  # worker.heartbeat, task.succeeded...

# Where a volunteer's tasks with follow-ups are dead-lettered, for the relay (runtime/relay.py).
FOLLOWUP_EXCHANGE = "infra.followups"
FOLLOWUP_QUEUE = "infra.followups"
FOLLOWUP_EXCHANGE_SPEC = {"name": FOLLOWUP_EXCHANGE, "type": "fanout", "durable": True}

# The exchanges Celery's nodes declare, as kombu declares them: made by the broker's definitions at
# every start, so that a volunteer's worker, which may not declare them, finds them there.
CELERY_EXCHANGES = (
    {"name": BROADCAST_EXCHANGE, "type": "fanout", "durable": False},
    {"name": REPLY_EXCHANGE, "type": "direct", "durable": False},
    {"name": EVENT_EXCHANGE, "type": "topic", "durable": True},
)


@dataclass(frozen=True)
class BrokerRights:
    configure: str
    write: str
    read: str

    def permission(self, user: str, vhost: str) -> dict:
        return {"user": user, "vhost": vhost, "configure": self.configure, "write": self.write, "read": self.read}


def any_of(*patterns: str) -> str:
    """One anchored regex matching exactly one of `patterns` (already regexes), or nothing."""
    return f"^({'|'.join(patterns)})$" if patterns else NOTHING


def literal(name: str) -> str:
    return re.escape(name)


def pidbox_queues_of(node_prefix: str) -> str:
    """The pidbox queues of nodes named `PREFIX...`: `PREFIX...@HOST.celery.pidbox`."""
    return f"{literal(node_prefix)}.+{literal(PIDBOX_SUFFIX)}"


def trusted_node_prefix(cluster: str) -> str:
    """Trusted workers are `NAME-worker-HOST-N@HOST` (names.py); volunteers `NAME-volunteer-...`."""
    return f"{cluster}-worker-"


def volunteer_node_prefix(cluster: str, user: str) -> str:
    """`NAME-volunteer-VOLUNTEER.` (the join endpoint's node prefix and a dot): the user is
    `volunteer-VOLUNTEER` (runtime.endpoint.volunteer_user)."""
    return f"{cluster}-{user}."


def worker_rights(cluster: str, queues: list[str]) -> BrokerRights:
    """The cluster's own Celery objects: trusted workers declare their queues, exchanges and pidbox
    queues, publish tasks (canvas), broadcasts, replies and events, and consume; clients (probes,
    Flower) declare reply and event queues named by a UUID."""
    objects = [
        *(literal(queue) for queue in queues),  # each task queue and its direct exchange of that name
        literal(BROADCAST_EXCHANGE), literal(REPLY_EXCHANGE), literal(EVENT_EXCHANGE),
        pidbox_queues_of(trusted_node_prefix(cluster)),
        f"{UUID}{literal('.' + REPLY_EXCHANGE)}",  # a client's reply queue (inspect, ping, mingle)
        f"{literal(EVENT_EXCHANGE + '.')}{UUID}",  # an event receiver's queue (Flower, gossip)
    ]
    # Celery sends a task for a direct queue through the default exchange (routing key: the queue);
    # the relay consumes the follow-ups' queue, which the broker's definitions make.
    return BrokerRights(configure=any_of(*objects), write=any_of(literal(DEFAULT_EXCHANGE), *objects),
                        read=any_of(*objects, literal(FOLLOWUP_QUEUE)))


def volunteer_rights(node_prefix: str, queues: list[str]) -> BrokerRights:
    own = pidbox_queues_of(node_prefix)
    return BrokerRights(
        configure=any_of(own),  # its pidbox queue, and nothing else: no exchange, no task queue
        write=any_of(own, literal(REPLY_EXCHANGE), literal(EVENT_EXCHANGE)),  # bind its queue; reply; events
        read=any_of(*(literal(queue) for queue in queues), literal(BROADCAST_EXCHANGE), own),
    )


def volunteer_topic_rights(user: str, vhost: str) -> dict:
    """On the event exchange: worker and task events to send, no binding to read others' events."""
    return {"user": user, "vhost": vhost, "exchange": EVENT_EXCHANGE, "write": VOLUNTEER_EVENT_KEYS,
            "read": NOTHING}


def cluster_queues(cluster: Cluster) -> list[str]:
    """The task queues of the cluster: every queue its worker groups serve, in file order, then
    those only volunteers serve (`roles.volunteers.queues`)."""
    queues: list[str] = []
    for group in cluster.spec.roles.workers:
        queues += [q for q in group.queues if q not in queues]
    queues += [q for q in cluster.spec.roles.volunteers.queues or () if q not in queues]
    return queues or ["celery"]


def volunteer_queues(cluster: Cluster) -> list[str]:
    """The queues volunteers consume: `roles.volunteers.queues`, else every queue of the cluster.
    Consuming a queue and purging it are one right in RabbitMQ (`read`): a volunteer can empty
    the queues it is given, and only those."""
    given = cluster.spec.roles.volunteers.queues
    return list(dict.fromkeys(given)) if given else cluster_queues(cluster)


def volunteers_only_queues(cluster: Cluster) -> list[str]:
    """The queues volunteers serve and no worker group does: nobody trusted declares them."""
    served = {q for group in cluster.spec.roles.workers for q in group.queues}
    return [q for q in volunteer_queues(cluster) if q not in served]


def task_queue_definitions(vhost: str, queues: list[str]) -> dict:
    """Each queue with its direct exchange and binding, as Celery declares them (durable, no
    arguments, so Celery's own declaration matches): a queue served by volunteers alone exists
    before anyone consumes it, since a volunteer may not declare one."""
    return {
        "queues": [{"name": q, "vhost": vhost, "durable": True, "auto_delete": False, "arguments": {}}
                   for q in queues],
        "exchanges": [{"name": q, "vhost": vhost, "type": "direct", "durable": True, "auto_delete": False,
                       "internal": False, "arguments": {}} for q in queues],
        "bindings": [{"source": q, "vhost": vhost, "destination": q, "destination_type": "queue",
                      "routing_key": q, "arguments": {}} for q in queues],
    }


def celery_exchanges(vhost: str) -> list[dict]:
    return [{**exchange, "vhost": vhost, "auto_delete": False, "internal": False, "arguments": {}}
            for exchange in CELERY_EXCHANGES + (FOLLOWUP_EXCHANGE_SPEC,)]


def followup_definitions(vhost: str, queues: list[str]) -> dict:
    """The relay's queue, bound to its exchange, and the policy that dead-letters there every
    message rejected (not requeued) from a task queue: how a volunteer's follow-ups reach the relay."""
    return {
        "queues": [{"name": FOLLOWUP_QUEUE, "vhost": vhost, "durable": True, "auto_delete": False, "arguments": {}}],
        "bindings": [{"source": FOLLOWUP_EXCHANGE, "vhost": vhost, "destination": FOLLOWUP_QUEUE,
                      "destination_type": "queue", "routing_key": "", "arguments": {}}],
        "policies": [{"vhost": vhost, "name": "infra-followups", "pattern": any_of(*(literal(q) for q in queues)),
                      "apply-to": "queues", "definition": {"dead-letter-exchange": FOLLOWUP_EXCHANGE},
                      "priority": 0}],
    }
