"""workflows.readiness: one probe process for the whole wait, read line by line."""

from __future__ import annotations

import json
import threading

import pytest

from infra.commands.celery import READINESS_PROBE
from infra.config import Host
from infra.errors import InfraError
from infra.transport.result import CommandResult
from infra.workflows.readiness import Readiness, wait_for_workers
from tests.unit.test_plan import make_cluster

NODES = ["lab-worker-gpu-box-1@gpu-box", "lab-worker-pi1-1@pi1"]


class ProbeEngine:
    """Answers the readiness probe with the given lines, one at a time, as the real stream does."""

    def __init__(self, lines: list[dict | str], stderr: str = ""):
        self.lines, self.stderr = lines, stderr
        self.commands: list[tuple[str, ...]] = []
        self.release = threading.Event()
        self.release.set()

    def exec(self, op, *, on_stdout=None, on_stderr=None, timeout=None, keep_output=True) -> CommandResult:
        self.commands.append(op.command)
        for line in self.lines:
            if line == "pause":
                self.release.wait(10)
                continue
            on_stdout(line if isinstance(line, str) else json.dumps(line))
        return CommandResult(0, "", self.stderr)


class Master:
    def __init__(self, engine: ProbeEngine):
        self.host = Host(name="gpu-box", address="192.168.1.20")
        self.engine = engine


def test_one_probe_names_the_nodes_and_both_bounds_and_returns_once_all_answered(tmp_path):
    engine = ProbeEngine(["celery says hello", {"event": "broker", "ok": True},
                          {"event": "answered", "nodes": NODES[:1]}, {"event": "answered", "nodes": NODES[1:]},
                          {"event": "done", "missing": [], "error": None}])
    readiness = Readiness(make_cluster(tmp_path), Master(engine), NODES)
    readiness.broker()
    assert readiness.workers() >= 0
    [command] = engine.commands
    assert command[:3] == ("python", "-c", READINESS_PROBE)
    assert command[4:] == (json.dumps(NODES), "120", "180", "0.5")


def test_the_broker_is_reported_while_the_workers_are_still_awaited(tmp_path):
    engine = ProbeEngine([{"event": "broker", "ok": True}, "pause", {"event": "done", "missing": [], "error": None}])
    engine.release.clear()
    readiness = Readiness(make_cluster(tmp_path), Master(engine), NODES)
    readiness.broker()  # returns while the probe still waits for the workers
    engine.release.set()
    readiness.workers()


def test_a_broker_that_took_no_login_is_named_with_why(tmp_path):
    engine = ProbeEngine([{"event": "broker", "ok": False, "error": "ConnectionRefusedError: [Errno 111]"}])
    readiness = Readiness(make_cluster(tmp_path), Master(engine), NODES)
    with pytest.raises(InfraError, match=r"gpu-box: the broker did not accept connections within 120 s "
                                         r"\(ConnectionRefusedError: \[Errno 111\]\)"):
        readiness.broker()
    with pytest.raises(InfraError, match="broker did not accept"):
        readiness.workers()


def test_workers_that_did_not_answer_are_named(tmp_path):
    engine = ProbeEngine([{"event": "broker", "ok": True}, {"event": "answered", "nodes": NODES[:1]},
                          {"event": "done", "missing": NODES[1:], "error": None}])
    with pytest.raises(InfraError, match=r"^1 of 2 restarted worker\(s\) did not answer within 180 s: "
                                         r"lab-worker-pi1-1@pi1 \(see `infra logs`\)$"):
        wait_for_workers(make_cluster(tmp_path), Master(engine), NODES, "restarted worker(s)")


def test_a_probe_that_ended_without_a_word_is_a_failed_wait_not_a_hang(tmp_path):
    engine = ProbeEngine([], stderr="Traceback ...\nModuleNotFoundError: No module named 'wordcount'\n")
    with pytest.raises(InfraError, match=r"the broker did not accept connections within 120 s "
                                         r"\(ModuleNotFoundError: No module named 'wordcount'\)"):
        Readiness(make_cluster(tmp_path), Master(engine), NODES).broker()
