"""A volunteer's Celery worker, confined to what its broker user may do: `python -m` this with
celery's own arguments (`--app APP worker ...`), in the container the join line starts.

The broker gives a volunteer no right to declare an exchange or a task queue (declaring one that
exists already needs the same right as deleting it), so this worker declares neither:
- every exchange is declared passively: the broker checks that it exists and changes nothing
  (the broker's definitions make Celery's broadcast, reply and event exchanges at every start;
  the trusted workers declare the task queues);
- the task queues it consumes are not declared at all (`no_declare`), only consumed;
- it declares one queue, its own pidbox queue (`NODE.celery.pidbox`), under the node name infra
  gave it, so `ping` and `inspect` still reach it.
With `--without-mingle --without-gossip` (`volunteer.worker_command`) it neither broadcasts nor
reads other nodes' events.

Nor does it publish a task's follow-ups (a chain's next step, link callbacks, a chord's part
return and callback): it may not publish tasks, nor touch a chord's keys on the result backend.
It runs the task and stores its result as usual, without them, then rejects the message instead
of acknowledging it; the broker dead-letters that original message, untouched, to the relay
(`relay.py`, on the master, trusted), which does the follow-ups the message itself carries.
"""

from __future__ import annotations

import sys

from celery import signals
from celery.app.task import Task
from celery.worker.request import Request
from kombu import Exchange

FOLLOW_UPS = ("callbacks", "errbacks", "chain", "chord")  # what a message of protocol 2 embeds


def declare_exchanges_passively() -> None:
    # kombu reads `passive` from the class when an Exchange is made without it (every Exchange
    # celery and kombu make for a worker): each declaration becomes a check that it exists.
    Exchange.passive = True


def consume_without_declaring(instance, **_kwargs) -> None:
    """After the worker chose its queues (celeryd_after_setup): consume them, never declare them."""
    for queue in instance.app.amqp.queues.consume_from.values():
        queue.no_declare = True


def has_follow_ups(embed: dict) -> bool:
    return any(embed.get(key) for key in FOLLOW_UPS)


def leave_follow_ups_to_the_relay(task, **_kwargs) -> None:
    """task_prerun, in the process that runs the task: the trusted relay does them (see above)."""
    for key in FOLLOW_UPS:
        setattr(task.request, key, None)


class FollowUpRequest(Request):
    """A task's message, as the worker's main process holds it: one with follow-ups is rejected
    (dead-lettered to the relay) where it would be acknowledged."""

    def acknowledge(self) -> None:
        try:
            embed = self.message.payload[2]
        except (AttributeError, IndexError, KeyError, TypeError, ValueError):
            embed = {}
        if isinstance(embed, dict) and has_follow_ups(embed):
            self.reject(requeue=False)
        else:
            super().acknowledge()


def main(argv: list[str]) -> int:
    declare_exchanges_passively()
    signals.celeryd_after_setup.connect(consume_without_declaring, weak=False)
    signals.task_prerun.connect(leave_follow_ups_to_the_relay, weak=False)
    Task.Request = FollowUpRequest  # every task of the app inherits it (celery's strategy reads it)
    from celery.bin.celery import main as celery_main

    sys.argv = ["celery", *argv]
    return celery_main()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
