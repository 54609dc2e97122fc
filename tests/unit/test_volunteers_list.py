"""`infra volunteer list` and the VOLUNTEERS of `infra status`: one JSON shape, one source of what joined.

The master host is a small fake (its engine's container list, the endpoint's log and execs in the
master container); each test says what it holds and what infra asked it.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from infra.cli.volunteer import list_command
from infra.config import Cluster, parse_cluster
from infra.facts.celery import CeleryView
from infra.facts.status import build_status
from infra.state.volunteers import VolunteerStore, make_volunteer, store_path
from infra.transport.result import CommandResult
from infra.ui.status import render_table, to_json
from infra.workflows import volunteer as volunteer_workflow

FIXTURES = Path(__file__).parent / "fixtures"
NOW = datetime.now(timezone.utc)
TOKEN = "A" * 20 + "b_-" + "c" * 20
JOIN_LOG = [
    '2025-01-31T12:00:00.1Z {"event": "listening", "port": 8443}',
    '2025-01-31T12:00:03.1Z {"volunteer": "alice", "what": "bundle", "status": 200, "arch": "arm64", '
    '"time": "2025-01-31T12:00:03Z"}',
]


def make_cluster(tmp_path: Path) -> Cluster:
    (tmp_path / "wordcount").mkdir(exist_ok=True)
    return parse_cluster((FIXTURES / "plan_cluster.yaml").read_text(), filename="cluster.yaml", base_dir=tmp_path)


def with_alice(cluster: Cluster, *, revoked: bool = False) -> None:
    store = VolunteerStore(store_path(cluster.state_dir))
    store.volunteers["alice"] = make_volunteer("lab", "alice", TOKEN, NOW, timedelta(days=7)).volunteer
    if revoked:
        store.volunteers["alice"].revoked = "2025-01-31T13:00:00Z"
    store.save()


def container(name: str, state: str = "running") -> dict:
    return {"Names": [f"/{name}"], "Id": f"id-{name}", "State": state, "Labels": {"infra.cluster": "lab"}}


class FakeEngine:
    def __init__(self, containers: list[dict], join_log: list[str]):
        self.containers, self.join_log, self.asked = containers, join_log, []

    def query(self, op):
        self.asked.append(type(op).__name__)
        return list(self.containers)

    def logs(self, op, on_line, stop=None):
        self.asked.append(f"logs {op.container}")
        if not any(c["Names"] == [f"/{op.container}"] for c in self.containers):
            raise volunteer_workflow.InfraError(f"m1: no such container: {op.container}")
        for line in self.join_log:
            on_line(line)

    def exec(self, op, timeout=None):
        self.asked.append(f"exec {op.container}")
        if op.container == "lab-master" and "lab-master" not in [c["Names"][0][1:] for c in self.containers]:
            raise volunteer_workflow.InfraError(f"m1: docker exec lab-master python -c '")
        answer = {"online": ["lab-volunteer-alice.1a2b@pi"], "active": {}, "processed": {}, "users": ["default"]}
        return CommandResult(0, json.dumps(answer) + "\n", "")


@pytest.fixture
def master(monkeypatch):
    engine = FakeEngine([], [])

    class Pool:
        @classmethod
        @contextmanager
        def for_cluster(cls, cluster):
            yield cls()

        def get(self, host):
            return type("Conn", (), {"engine": engine, "host": host})()

    monkeypatch.setattr(volunteer_workflow, "ConnectionPool", Pool)
    # Settling the tokens (spent.json, expired users) is tested in test_volunteer_tokens.py; here it finds nothing.
    monkeypatch.setattr(volunteer_workflow, "_settle_unless_busy",
                        lambda cluster, conn: engine.asked.append("settle") and None)
    return engine


def test_after_clean_the_list_says_the_master_is_not_running_and_asks_it_nothing(tmp_path, master):
    cluster = make_cluster(tmp_path)
    with_alice(cluster, revoked=True)
    rows, problem = volunteer_workflow.list_volunteers(cluster)
    assert problem == "the master is not running (`infra up` starts it)"
    assert [r.name for r in rows] == ["alice"] and rows[0].state == "revoked"
    assert not any(asked.startswith("exec") for asked in master.asked)


def test_a_stopped_master_is_not_running_either(tmp_path, master):
    cluster = make_cluster(tmp_path)
    with_alice(cluster)
    master.containers = [container("lab-master", "exited"), container("lab-join")]
    master.join_log = JOIN_LOG
    rows, problem = volunteer_workflow.list_volunteers(cluster)
    assert problem == volunteer_workflow.MASTER_NOT_RUNNING
    assert rows[0].joined == "2025-01-31T12:00:03Z" and rows[0].arch == "arm64"  # the endpoint still tells


def test_with_the_master_running_the_list_has_no_error(tmp_path, master):
    cluster = make_cluster(tmp_path)
    with_alice(cluster)
    master.containers = [container("lab-master"), container("lab-join")]
    master.join_log = JOIN_LOG
    rows, problem = volunteer_workflow.list_volunteers(cluster)
    assert problem is None, problem
    assert "exec lab-master" in master.asked


def test_list_json_is_one_versioned_object_as_its_help_says(tmp_path, master, monkeypatch):
    cluster = make_cluster(tmp_path)
    with_alice(cluster, revoked=True)
    (tmp_path / "cluster.yaml").write_text((FIXTURES / "plan_cluster.yaml").read_text())
    result = CliRunner().invoke(list_command, ["-f", str(tmp_path / "cluster.yaml"), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert list(document) == ["schema", "volunteers", "error"]
    assert document["schema"] == "infra.volunteers/1"
    assert document["error"] == "the master is not running (`infra up` starts it)"
    assert set(document["volunteers"][0]) == {"name", "state", "added", "expires", "joined", "last_seen", "arch",
                                              "workers", "tasks_done"}
    help_text = CliRunner().invoke(list_command, ["--help"]).output
    assert '"schema": "infra.volunteers/1"' in help_text and "JSON list" not in help_text


def test_status_shows_joined_and_arch_from_the_endpoints_log_as_list_does(tmp_path):
    cluster = make_cluster(tmp_path)
    with_alice(cluster)
    celery = CeleryView(active={"lab-volunteer-alice.1a2b@pi": 0}, processed={"lab-volunteer-alice.1a2b@pi": 3})
    status = build_status(cluster, {}, now=NOW, flower_url="https://x:5555", manifest_path=None, celery=celery)
    status.volunteers = volunteer_workflow.volunteer_rows(cluster, celery, JOIN_LOG)
    alice = to_json(status)["volunteers"][0]
    assert (alice["joined"], alice["arch"], alice["workers"]) == ("2025-01-31T12:00:03Z", "arm64",
                                                                  ["lab-volunteer-alice.1a2b@pi"])
    row = next(line for line in render_table(status).splitlines() if line.strip().startswith("alice"))
    assert "2025-01-31T12:00:03Z" in row and "arm64" in row


def test_status_reads_the_endpoints_log_only_for_a_cluster_that_had_volunteers(tmp_path):
    cluster = make_cluster(tmp_path)
    assert not volunteer_workflow.wants_endpoint_log(cluster)
    with_alice(cluster)
    assert volunteer_workflow.wants_endpoint_log(cluster)
