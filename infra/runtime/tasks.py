"""The `infra.run_command` task: run one command line of a sweep on this worker.

A shared task, so it joins whatever app the worker runs: the built-in one (`infra_runtime.app`
includes this module) or a project's own (its workers are started with
`--include infra_runtime.tasks`).

- `acks_late` + `reject_on_worker_lost`: the message is acknowledged only when the run has
  ended, so the runs of a worker host that is lost go back to the queue and run elsewhere;
- the message must be signed by the cluster's master (`signing`): anything else is refused
  before a process starts;
- `ignore_result`: everything a run has to say travels as events (`runner.RedisChannel`),
  so nothing piles up in the result backend.

Every worker imports this module, so it also brings `startup`: the worker connects to the broker
as soon as the broker takes logins.
"""

from __future__ import annotations

import os
import time

import redis
from celery import shared_task
from celery.utils.log import get_task_logger

from . import protocol, startup  # noqa: F401  (startup: connects its worker_init handler)
from .command import RedisChannel, RunRequest, execute
from .signing import RunRefused, load_verify_key, verify_message

logger = get_task_logger(__name__)

_client: tuple[int, redis.Redis] | None = None  # (pid, client): a forked pool process makes its own


def _redis() -> redis.Redis:
    global _client
    if _client is None or _client[0] != os.getpid():
        url = os.environ.get("CELERY_RESULT_BACKEND", "")
        if not url.startswith(("redis://", "rediss://")):
            raise RuntimeError("infra.run_command needs CELERY_RESULT_BACKEND to be the cluster's Redis")
        _client = (os.getpid(), redis.Redis.from_url(url, socket_connect_timeout=10, socket_timeout=30,
                                                      health_check_interval=30))
    return _client[1]


@shared_task(name=protocol.TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True,
             throws=(RunRefused,), store_errors_even_if_ignored=True)
def run_command(self, message: dict) -> dict:
    """Run a signed message's argv in the project folder, streaming its output; returns its end event.

    A message the master did not sign for this submission, or one that expired, fails the task
    with the reason (stored as its result, one line in the worker's log) and runs nothing; it
    reports nothing to the sweep either, whose id it only claims.
    """
    try:
        payload = verify_message(message, load_verify_key(), submission=self.request.id or "", now=time.time())
    except RunRefused as exc:
        logger.warning("%s %s refused: %s", protocol.TASK_NAME, self.request.id, exc)
        raise
    request = RunRequest.from_payload(payload)
    worker = self.request.hostname or ""
    host = worker.rpartition("@")[2] or os.uname().nodename
    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    return execute(request, RedisChannel(_redis(), request.sweep_id), host=host, worker=worker,
                   redelivered=redelivered)
