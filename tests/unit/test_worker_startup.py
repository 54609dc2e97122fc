"""infra_runtime.startup: a worker logs in as soon as the broker takes logins, within a bound."""

from __future__ import annotations

from types import SimpleNamespace

from celery import Celery, signals

from infra.runtime import startup


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_broker_that_opens_after_a_second_is_logged_into_within_a_quarter_second_of_it():
    clock = Clock()
    tries: list[float] = []

    def connect() -> None:
        tries.append(clock.now)
        if clock.now < 1.0:
            raise ConnectionRefusedError("not yet")

    assert startup.wait_for_login(connect, clock=clock, sleep=clock.sleep)
    assert tries[-1] == 1.0 and len(tries) == 5  # 0, 0.25, 0.5, 0.75, 1.0: no back-off


def test_a_broker_that_never_opens_is_given_up_on_after_the_bound():
    clock = Clock()

    def connect() -> None:
        raise OSError("connection refused")

    assert not startup.wait_for_login(connect, limit=10, clock=clock, sleep=clock.sleep)
    assert 10 <= clock.now <= 10.25


def test_the_wait_follows_celerys_own_rule_for_retrying_at_startup():
    conf = lambda on_startup, retry: SimpleNamespace(broker_connection_retry_on_startup=on_startup,  # noqa: E731
                                                     broker_connection_retry=retry)
    assert startup.retries_at_startup(conf(True, False))
    assert not startup.retries_at_startup(conf(False, True))
    assert startup.retries_at_startup(conf(None, True))
    assert not startup.retries_at_startup(conf(None, False))


class Worker:
    """What `worker_init` is sent with: a worker, which has an app."""

    def __init__(self, app: Celery):
        self.app = app


def test_worker_init_waits_for_a_login_of_the_workers_app_and_not_for_an_app_that_does_not_retry(monkeypatch):
    logins: list[str] = []
    monkeypatch.setattr(startup, "_login_once", lambda app: logins.append(app.main))
    retrying = Celery("retrying", broker="memory://", set_as_current=False)
    retrying.conf.broker_connection_retry_on_startup = True
    signals.worker_init.send(sender=Worker(retrying))
    refusing = Celery("refusing", broker="memory://", set_as_current=False)
    refusing.conf.broker_connection_retry_on_startup = False
    signals.worker_init.send(sender=Worker(refusing))
    assert logins == ["retrying"]
