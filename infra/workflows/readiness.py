"""Waiting, bounded, until the broker takes logins and workers answer: one process for the whole wait.

`commands.celery.readiness_probe` runs in the master container and prints a line when the broker
took a login, when workers answered a ping, and when it is done. Celery and the app are imported
once, while the broker still boots, instead of in a fresh Python for every round (seconds each on
a small master). The probe runs in a thread of its own, so that `up` can report the broker, and
act on it, while the workers are still being waited for.
"""

from __future__ import annotations

import threading
import time

from ..commands.celery import readiness_probe
from ..config import Cluster
from ..errors import InfraError, redact
from ..facts.celery import ReadinessEvent, parse_readiness_line
from ..facts.sections import last_line
from ..transport.connection import Connection

REPLY_TIMEOUT = 0.5  # how long one round of pings waits for the workers that have not answered yet
PROBE_MARGIN = 60.0  # the probe keeps its own deadlines; this bound only catches one that hangs


class Readiness:
    """The readiness probe under way in the master container, read as its lines arrive."""

    def __init__(self, cluster: Cluster, master: Connection, nodes: list[str], what: str = "workers"):
        self.cluster, self.master, self.nodes, self.what = cluster, master, list(nodes), what
        self._started = time.monotonic()
        self._broker: ReadinessEvent | None = None
        self._done: ReadinessEvent | None = None
        self._failure: BaseException | None = None
        self._said = "no answer"
        self._broker_seen = threading.Event()
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._run, name="readiness", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        timeouts = self.cluster.spec.timeouts
        probe = readiness_probe(self.cluster.name, self.cluster.celery_app, self.nodes, timeouts.broker,
                                timeouts.workers, REPLY_TIMEOUT)
        try:
            result = self.master.engine.exec(probe, on_stdout=self._on_line,
                                             timeout=timeouts.broker + timeouts.workers + PROBE_MARGIN)
            self._said = redact(last_line(result.stderr, "") or last_line(result.stdout, "no answer"))
        except BaseException as exc:  # handed to the waiting thread
            self._failure = exc
        finally:
            self._broker_seen.set()
            self._finished.set()

    def _on_line(self, line: str) -> None:
        event = parse_readiness_line(line)
        if event is None:
            return
        if event.kind == "broker":
            self._broker = event
            self._broker_seen.set()
        elif event.kind == "done":
            self._done = event

    @staticmethod
    def _wait(event: threading.Event) -> None:
        while not event.wait(0.2):  # short waits: Ctrl-C reaches the main thread at once
            pass

    def broker(self) -> None:
        """Return once the broker took a login; InfraError when it took none within `timeouts.broker`."""
        self._wait(self._broker_seen)
        if self._broker is None and self._failure is not None:
            raise self._failure
        if self._broker is None or not self._broker.ok:
            said = self._broker.error if self._broker is not None and self._broker.error else self._said
            raise InfraError(f"{self.master.host.name}: the broker did not accept connections within "
                             f"{self.cluster.spec.timeouts.broker:g} s ({said})")

    def workers(self) -> float:
        """Return once every node answered (seconds since the wait began); InfraError naming those that did not."""
        self.broker()
        self._wait(self._finished)
        if self._done is None and self._failure is not None:
            raise self._failure
        missing = list(self._done.nodes) if self._done is not None else self.nodes
        if missing:
            why = (self._done.error if self._done is not None else self._said) or ""
            raise InfraError(
                f"{len(missing)} of {len(self.nodes)} {self.what} did not answer within "
                f"{self.cluster.spec.timeouts.workers:g} s: {', '.join(missing[:5])}"
                + (" ..." if len(missing) > 5 else "") + (f" ({why})" if why else "") + " (see `infra logs`)"
            )
        return time.monotonic() - self._started


def wait_for_workers(cluster: Cluster, master: Connection, nodes: list[str], what: str = "workers") -> float:
    """Wait until every one of `nodes` answers a ping; returns the seconds it took."""
    return Readiness(cluster, master, nodes, what).workers()
