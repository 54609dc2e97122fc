"""The relay: the follow-ups of tasks that volunteers ran, done by the trusted side.

`python -m infra_runtime.relay APP` in the cluster's `NAME-relay` container on the master host,
as the workers' broker user and the result backend's own password (the master's celery.env).

A volunteer may not publish tasks, nor touch a chord's keys on the result backend, so it does
not do a task's follow-ups: it stores the task's result and rejects the message
(`volunteer_worker`). The broker dead-letters that message (a policy on the cluster's queues) to
the exchange and queue `infra.followups`, which only the broker's definitions make and only the
workers' user may read. What arrives here is therefore the message a trusted producer published,
as it published it: its chain, callbacks and chord are the producer's, not the volunteer's. The
relay reads the task's stored outcome (the volunteer's result: data, like any job output) and
does what Celery's worker would have done after it:
- success: each link callback and the chain's next step, published with the result;
- failure: its error callbacks (`link_error`), as Celery's backend calls them: one that takes
  (request, exc, traceback) is called here, one that takes the task id is published as a task;
- success or failure of a chord's part: the chord's bookkeeping (`on_chord_part_return`), which
  publishes the callback once every part is in;
- any other state (no result stored: the task was rejected without running, or expired): nothing.
Then the message is acknowledged. Celery, kombu and the standard library only.
"""

from __future__ import annotations

import json
import sys
import time

from celery import signature, states
from celery.app.task import Context
from kombu import Consumer, Queue

FOLLOWUP_EXCHANGE = "infra.followups"
FOLLOWUP_QUEUE = "infra.followups"
RESULT_WAIT = 2.0  # seconds: the result is stored before the message is rejected; a margin for its write


def log(event: dict) -> None:
    print(json.dumps(event, sort_keys=True), flush=True)


def embed_of(body) -> dict:
    """The follow-ups a message of Celery's protocol 2 carries: [args, kwargs, embed]."""
    if isinstance(body, (list, tuple)) and len(body) == 3 and isinstance(body[2], dict):
        return body[2]
    return {}


class Relay:
    def __init__(self, app, wait: float = RESULT_WAIT, backend=None):
        self.app = app
        self.wait = wait
        self.backend = backend or app.backend

    def outcome(self, task_id: str) -> dict:
        """The task's stored meta (status, result, traceback), once it is ready or the wait is over."""
        deadline = time.monotonic() + self.wait
        while True:
            meta = self.backend.get_task_meta(task_id)
            if meta.get("status") in states.READY_STATES or time.monotonic() > deadline:
                return meta
            time.sleep(0.2)

    def handle(self, headers: dict, body) -> str:
        """Do the follow-ups of one dead-lettered message; what was done, for the log."""
        task_id, embed = headers.get("id"), embed_of(body)
        if not task_id or not any(embed.get(k) for k in ("callbacks", "errbacks", "chain", "chord")):
            return "nothing to follow"
        meta = self.outcome(task_id)
        state, result = meta.get("status"), meta.get("result")
        if state not in (states.SUCCESS, states.FAILURE):
            return f"left alone ({state})"
        root_id = headers.get("root_id") or task_id
        if state == states.FAILURE and embed.get("errbacks"):
            request = Context(id=task_id, errbacks=embed["errbacks"], root_id=root_id,
                              parent_id=headers.get("parent_id"), task=headers.get("task"), delivery_info={})
            error = result if isinstance(result, BaseException) else Exception(str(result))
            # Celery's own dispatch of error callbacks (both kinds), so they behave as on a worker.
            self.backend._call_task_errbacks(request, error, meta.get("traceback"))
        if state == states.SUCCESS:
            for callback in embed.get("callbacks") or []:
                signature(callback, app=self.app).apply_async((result,), parent_id=task_id, root_id=root_id)
            chain = embed.get("chain")
            if chain:
                signature(chain[-1], app=self.app).apply_async((result,), chain=chain[:-1], parent_id=task_id,
                                                               root_id=root_id)
        if embed.get("chord") and headers.get("group"):
            request = Context(id=task_id, group=headers["group"], group_index=headers.get("group_index"),
                              chord=embed["chord"], root_id=root_id, parent_id=headers.get("parent_id"),
                              task=headers.get("task"), delivery_info={})
            self.backend.on_chord_part_return(request, state, result)
        return f"followed ({state})"

    def on_message(self, body, message) -> None:
        headers = message.headers or {}
        try:
            done = self.handle(headers, body)
        except Exception as exc:  # one bad message must not stop the relay; it is logged and dropped
            done = f"failed: {type(exc).__name__}: {exc}"
        log({"event": "follow-up", "task": headers.get("task"), "id": headers.get("id"), "done": done})
        message.ack()

    def run(self) -> None:
        queue = Queue(FOLLOWUP_QUEUE, no_declare=True)  # made by the broker's definitions
        errors = conn_errors(self.app)
        while True:
            try:
                with self.app.connection_for_read() as conn:
                    with Consumer(conn, [queue], callbacks=[self.on_message], accept=["json"], prefetch_count=16):
                        log({"event": "relaying", "queue": FOLLOWUP_QUEUE})
                        while True:
                            conn.drain_events()
            except errors as exc:
                log({"event": "reconnecting", "error": f"{type(exc).__name__}: {exc}"})
                time.sleep(2)


def conn_errors(app) -> tuple[type[BaseException], ...]:
    conn = app.connection_for_read()  # not connected: only its transport's error classes are read
    return tuple(conn.connection_errors) + tuple(conn.channel_errors) + (OSError,)


def main(argv: list[str]) -> int:
    from celery.app.utils import find_app

    app = find_app(argv[0]) if argv else None
    if app is None:
        print("usage: python -m infra_runtime.relay APP", file=sys.stderr)
        return 2
    Relay(app).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
