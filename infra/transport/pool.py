"""Many hosts at once: a pool of open connections, and one function run on every host.

A failure on one host is data (`GroupResult.failed`), not a crash; Ctrl-C stops every host's
next step and closes the connections, so a host's blocked read ends at once.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Callable, Iterable, TypeVar

from ..config import Host
from ..errors import InfraError
from .connection import Connection, LocalConnection, kill_local_commands
from .result import Limits, check_interrupted, interrupted
from .ssh import SSHConnection

T = TypeVar("T")
R = TypeVar("R")

# Every open pool, so that Ctrl-C can close their connections.
_live_pools: "weakref.WeakSet[ConnectionPool]" = weakref.WeakSet()


def connect(host: Host, limits: Limits) -> Connection:
    return LocalConnection(host, limits) if host.is_local else SSHConnection(host, limits)


@dataclass
class GroupResult:
    """Per-item outcome of running one function on many items concurrently."""

    succeeded: dict
    failed: dict

    def raise_if_failed(self, action: str) -> None:
        if self.failed:
            from ..errors import HostsFailedError

            raise HostsFailedError(action, self.failed)


MAX_PARALLEL = 32
INTERRUPTED_EXIT_CODE = 130


INTERRUPT_GRACE = 2.0  # seconds the hosts' threads get to stop once Ctrl-C closed their connections


def run_concurrently(items: Iterable[T], fn: Callable[[T], R], *, key: Callable[[T], str] = str) -> GroupResult:
    """Call `fn` on every item at once; a failure on one item is data, not a crash.

    Ctrl-C while waiting (only the main thread gets it): `interrupted` is set, so no host starts
    another step; every open connection and local command is closed, which ends the steps under
    way; after a short grace KeyboardInterrupt propagates. The threads are daemons, so one stuck
    in a call that ignores its closed connection cannot keep the process alive.
    """
    items = list(items)
    results: dict = {}
    failures: dict = {}
    if not items:
        return GroupResult(results, failures)
    slots = threading.Semaphore(MAX_PARALLEL)

    def work(name: str, item: T) -> None:
        with slots:
            try:
                check_interrupted()
                results[name] = fn(item)
            except InfraError as exc:
                failures[name] = exc
            except Exception as exc:  # an unexpected error on one host must not hide the others
                failures[name] = InfraError(f"{name}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=work, args=(key(item), item), name=f"infra {key(item)}", daemon=True)
               for item in items]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(0.2)  # short joins: Ctrl-C reaches the main thread at once
    except KeyboardInterrupt:
        interrupted.set()
        # A second Ctrl-C ends the process at once, whatever is still closing.
        signal.signal(signal.SIGINT, lambda *_: os._exit(INTERRUPTED_EXIT_CODE))
        abort_everything()
        deadline = time.monotonic() + INTERRUPT_GRACE
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        raise
    return GroupResult({key(i): results[key(i)] for i in items if key(i) in results},
                       {key(i): failures[key(i)] for i in items if key(i) in failures})


def abort_everything() -> None:
    """Close every open connection and kill every local command: the steps under way end now."""
    for pool in list(_live_pools):
        pool.close()
    kill_local_commands()


class ConnectionPool:
    """Opens one connection per host, concurrently, and closes them all at the end."""

    def __init__(self, limits: Limits, connector: Callable[[Host, Limits], Connection] | None = None):
        self.limits = limits
        self.connections: dict[str, Connection] = {}
        # Tests put recording fakes here; by default, SSH or the local machine.
        self.connector = connector or ConnectionPool.default_connector
        self._lock = threading.Lock()
        _live_pools.add(self)

    @classmethod
    def for_cluster(cls, cluster) -> "ConnectionPool":
        return cls(Limits.of(cluster))

    # Set by tests that run whole workflows against recording fakes (see tests/unit/recording.py).
    default_connector: Callable[[Host, Limits], Connection] = staticmethod(lambda host, limits: connect(host, limits))

    def open(self, hosts: Iterable[Host]) -> GroupResult:
        """Connect to the hosts not connected yet, all at once; a failure per host is data."""
        def opener(host: Host) -> Connection:
            if host.name in self.connections:
                return self.connections[host.name]
            conn = self.connector(host, self.limits)
            with self._lock:
                self.connections[host.name] = conn
            return conn

        return run_concurrently(hosts, opener, key=lambda h: h.name)

    def __getitem__(self, name: str) -> Connection:
        return self.connections[name]

    def get(self, host: Host) -> Connection:
        """The host's connection, opened now if needed; a failure raises the host's own error."""
        opened = self.open([host])
        if opened.failed:
            raise opened.failed[host.name]
        return self.connections[host.name]

    def close(self) -> None:
        with self._lock:
            connections, self.connections = list(self.connections.values()), {}
        for conn in connections:
            try:
                conn.close()
            except Exception:
                pass

    def __enter__(self) -> "ConnectionPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
