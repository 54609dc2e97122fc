"""The Celery application of the word-count project.

Broker and result backend come from the environment (set by infra through an env
file, never on a command line): CELERY_BROKER_URL and CELERY_RESULT_BACKEND.
"""

from __future__ import annotations

import os

from celery import Celery

app = Celery(
    "wordcount",
    broker=os.environ.get("CELERY_BROKER_URL", "amqp://guest:guest@localhost:5672//"),
    backend=os.environ.get("CELERY_RESULT_BACKEND", "redis://localhost:6379/0"),
    include=["wordcount.tasks"],
)

app.conf.update(
    # JSON only: nothing is unpickled from the broker.
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    timezone="UTC",
    enable_utc=True,
    # Results are fetched right away by the client; do not keep them for a day.
    result_expires=3600,
    # Short tasks spread evenly over the workers; a task lost with its worker is redone.
    worker_prefetch_multiplier=1,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    task_track_started=True,
    # Flower and `celery events` want task events; workers are also started with -E.
    worker_send_task_events=True,
    task_send_sent_event=True,
    # Workers may start before the broker is up, and the broker may restart: keep retrying.
    broker_connection_retry_on_startup=True,
    broker_connection_retry=True,
    broker_connection_max_retries=None,
    # A worker host that dies without closing its connections (power cut, kill -9 of the
    # machine) is noticed by RabbitMQ after two missed heartbeats; its unacknowledged tasks
    # then go to other workers. Celery's default (120 s) would leave them waiting minutes.
    broker_heartbeat=10,
    broker_connection_timeout=5,
    redis_socket_connect_timeout=5,
    redis_retry_on_timeout=True,
)
