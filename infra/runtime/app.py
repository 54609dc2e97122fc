"""The built-in Celery app: what the workers run when the cluster file names no `project.app`.

A project that is only a script (`train.py` and a requirements.txt) needs no Celery code: its
workers run this app, whose one task runs command lines (`infra.run_command`, for `infra sweep`).
Broker and result backend come from the environment, as infra sets them in the env files.
"""

from __future__ import annotations

import os

from celery import Celery

_PACKAGE = __name__.rpartition(".")[0]  # infra_runtime in the images, infra.runtime in a checkout

app = Celery(
    "infra",
    broker=os.environ.get("CELERY_BROKER_URL", "amqp://guest:guest@localhost:5672//"),
    backend=os.environ.get("CELERY_RESULT_BACKEND", "redis://localhost:6379/0"),
    include=[f"{_PACKAGE}.tasks"],
)

app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    timezone="UTC",
    enable_utc=True,
    # Runs are long and uneven: a worker takes a new one only when a process is free, so a
    # queue spreads over every worker instead of piling up behind the first ones.
    worker_prefetch_multiplier=1,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    # A worker host that vanishes (power, network) is noticed by the broker within about two
    # heartbeats; its unacknowledged runs are then delivered to other workers.
    broker_heartbeat=10,
    # Workers report their tasks to Flower (`--task-events`); the sender does not add a
    # "task-sent" event per run: on a sweep of thousands of runs that is a publish each for nothing.
    worker_send_task_events=True,
    task_send_sent_event=False,
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=None,
    broker_connection_timeout=5,
    redis_socket_connect_timeout=5,
    redis_retry_on_timeout=True,
    result_expires=3600,
)
