"""A worker's first broker connection: as soon as the broker takes logins, not on Celery's back-off.

`infra up` starts the workers together with the broker, not after it: a worker imports Celery and
its app while RabbitMQ boots. Celery then retries its first connection after 2, 4, 6, 8 ...
seconds (kombu's defaults; no setting changes them), so a worker that was ready first would sleep
up to several seconds past the moment the broker opened. On `worker_init` (the worker's main
process, after its modules are imported and before it connects) this tries a login every quarter
second until one succeeds, for at most STARTUP_WAIT seconds; Celery's own connection then
succeeds at once. After that bound, or for an app that does not retry at start-up, Celery's own
behaviour is left as it is.

Connected by importing this module: `tasks` does, and every worker imports `tasks` (the built-in
app includes it; a project's app gets `--include infra_runtime.tasks`).
"""

from __future__ import annotations

import sys
import time

from celery import signals

TRY_INTERVAL = 0.25  # seconds between two logins while the broker boots
STARTUP_WAIT = 120.0  # then Celery's own retries take over


def retries_at_startup(conf) -> bool:
    """Whether Celery itself would retry the first connection (its own rule, Celery 5)."""
    on_startup = conf.broker_connection_retry_on_startup
    return bool(conf.broker_connection_retry if on_startup is None else on_startup)


def wait_for_login(connect, *, interval: float = TRY_INTERVAL, limit: float = STARTUP_WAIT,
                   clock=time.monotonic, sleep=time.sleep) -> bool:
    """Call `connect` (a fresh login, closed again) until it succeeds or `limit` seconds passed."""
    deadline = clock() + limit
    while True:
        try:
            connect()
            return True
        except Exception:  # refused, reset, TLS or login refused while the broker boots: not yet
            if clock() >= deadline:
                return False
        sleep(interval)


def _login_once(app) -> None:
    with app.connection_for_read() as connection:
        connection.connect()


@signals.worker_init.connect(weak=False)
def wait_for_the_broker(sender=None, **_) -> None:
    app = getattr(sender, "app", None)
    if app is None or not retries_at_startup(app.conf):
        return
    began = time.monotonic()
    if wait_for_login(lambda: _login_once(app)):
        waited = time.monotonic() - began
        if waited >= 1:  # Celery's logging is not set up yet
            print(f"infra: the broker took a login after {waited:.1f} s", file=sys.stderr, flush=True)
    else:
        print(f"infra: the broker took no login within {STARTUP_WAIT:g} s; Celery retries on its own",
              file=sys.stderr, flush=True)
