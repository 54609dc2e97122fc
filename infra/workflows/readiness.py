"""Waiting, bounded, until the broker takes logins and workers answer: one polling loop for all."""

from __future__ import annotations

import time
from typing import Callable

from ..commands.celery import broker_check, ping_workers
from ..config import Cluster
from ..errors import InfraError
from ..facts.celery import parse_ping
from ..facts.sections import last_line
from ..runner import Connection, check_interrupted

PING_REPLY_TIMEOUT = 2.0  # how long one ping gives the workers to answer
ROUND_INTERVAL = 1.0  # the least time between the starts of two rounds


def poll(ask: Callable[[], tuple[bool, str]], timeout: float, interval: float = ROUND_INTERVAL) -> tuple[bool, str]:
    """Ask until `ask` says done or `timeout` seconds passed; returns (done, what the last answer said)."""
    deadline = time.monotonic() + timeout
    while True:
        check_interrupted()
        started = time.monotonic()
        done, said = ask()
        if done or time.monotonic() > deadline:
            return done, said
        time.sleep(max(0.0, interval - (time.monotonic() - started)))


def wait_for_broker(cluster: Cluster, master: Connection) -> None:
    def ask() -> tuple[bool, str]:
        result = master.engine.exec(broker_check(cluster.name), timeout=30)
        return result.ok, last_line(result.output, "no answer")

    ok, said = poll(ask, cluster.spec.timeouts.broker)
    if not ok:
        raise InfraError(f"{master.host.name}: the broker did not accept connections within "
                         f"{cluster.spec.timeouts.broker:g} s ({said})")


def wait_for_workers(cluster: Cluster, master: Connection, nodes: list[str], what: str = "workers") -> float:
    """Ask until every one of `nodes` answers a ping; returns the seconds it took."""
    started = time.monotonic()
    probe = ping_workers(cluster.name, cluster.celery_app, nodes, PING_REPLY_TIMEOUT)
    missing: list[str] = []

    def ask() -> tuple[bool, str]:
        answered = parse_ping(master.engine.exec(probe, timeout=60).stdout)
        missing[:] = sorted(set(nodes) - answered)
        return not missing, ""

    ok, _ = poll(ask, cluster.spec.timeouts.workers)
    if not ok:
        raise InfraError(
            f"{len(missing)} of {len(nodes)} {what} did not answer within {cluster.spec.timeouts.workers:g} s: "
            f"{', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else "") + " (see `infra logs`)"
        )
    return time.monotonic() - started
