"""`infra status` decided without any host: recorded outputs in, model, table, JSON and exit code out.

The fixtures in fixtures/live/ were recorded on the testbed from a cluster named `livem`
(master on h1, workers: 2 on h2, 1 on h3, 1 on local), with the commands infra itself sends;
the inspect_*.jsonl files hold one container inspect object per line (the fields infra reads of
the API's `GET /containers/{id}/json` answer, recorded without the environment).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from infra.commands.celery import list_queues
from infra.config import Cluster, parse_cluster
from infra.errors import redact
from infra.facts.celery import (
    CeleryView,
    QueueStatus,
    parse_celery_probe,
    parse_list_queues,
)
from infra.facts.containers import Container, parse_container_inspect, parse_docker_time
from infra.facts.status import (
    EXIT_NOT_RUNNING,
    EXIT_RUNNING,
    SCHEMA,
    HostObservation,
    build_status,
    expected_containers,
)
from infra.ui.status import format_duration, render_json, render_table, to_json

FIXTURES = Path(__file__).parent / "fixtures" / "live"
NOW = datetime(2026, 11, 22, 2, 45, 0, tzinfo=timezone.utc)  # a little after the recordings
FLOWER = "http://172.30.2.11:5555"
NODES = ["livem-worker-h2-1@h2", "livem-worker-h2-2@h2", "livem-worker-h3-1@h3", "livem-worker-local-1@local"]


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def inspected(name: str) -> list[Container]:
    """The containers of a recorded inspect answer (one object per line)."""
    return list(parse_container_inspect([json.loads(line) for line in fixture(name).splitlines() if line.strip()]))


@pytest.fixture
def cluster(tmp_path) -> Cluster:
    """The recorded cluster's file."""
    (tmp_path / "wordcount").mkdir()
    text = """
name: livem
hosts:
  h1: {address: 172.30.2.11, user: root}
  h2: {address: 172.30.2.12, user: root}
  h3: {address: 172.30.2.13, user: root}
project: {path: wordcount, app: wordcount}
roles:
  master: {host: h1}
  workers:
    - {host: h2, containers: 2}
    - {host: h3, containers: 1}
    - {host: local, containers: 1}
"""
    return parse_cluster(text, base_dir=tmp_path)


def healthy_observations() -> dict[str, HostObservation]:
    workers = inspected("inspect_worker_host.jsonl")
    h3 = [c for c in workers if c.name.startswith("livem-worker-h2-1")]
    return {
        "h1": HostObservation(True, None, inspected("inspect_master_host.jsonl")),
        "h2": HostObservation(True, None, workers),
        "h3": HostObservation(True, None, [_renamed(c, "livem-worker-h3-1") for c in h3]),
        "local": HostObservation(True, None, [_renamed(c, "livem-worker-local-1") for c in h3]),
    }


def _renamed(container: Container, name: str) -> Container:
    from dataclasses import replace

    return replace(container, name=name)


def healthy_status(cluster: Cluster, tmp_path: Path, **changes):
    args = dict(
        now=NOW, flower_url=FLOWER, manifest_path=tmp_path / "manifest.json",
        celery=parse_celery_probe(fixture("celery_probe.txt")),
        queues=parse_list_queues(fixture("rabbitmqctl_list_queues.txt")),
    )
    observations = changes.pop("observations", None) or healthy_observations()
    args.update(changes)
    return build_status(cluster, observations, **args)


# --------------------------------------------------------------------------- parsers


def test_docker_times_with_nanoseconds_and_zones_are_read_and_the_zero_time_is_none():
    assert parse_docker_time("2026-11-22T02:41:39.331843782Z") == datetime(2026, 11, 22, 2, 41, 39, 331843, tzinfo=timezone.utc)
    assert parse_docker_time("2026-11-22T04:41:39+02:00") == datetime(2026, 11, 22, 2, 41, 39, tzinfo=timezone.utc)
    assert parse_docker_time("0001-01-01T00:00:00Z") is None
    assert parse_docker_time("") is None
    assert parse_docker_time("yesterday") is None


def test_containers_of_the_master_host_are_read_from_recorded_inspect_lines():
    found = inspected("inspect_master_host.jsonl")
    assert [(c.name, c.role, c.state, c.image) for c in found] == [
        ("livem-broker", "broker", "running", "infra-test-broker:latest"),
        ("livem-flower", "flower", "running", "infra-test-master:latest"),
        ("livem-master", "master", "running", "infra-test-master:latest"),
        ("livem-results", "results", "running", "infra-test-master:latest"),
    ]
    broker = found[0]
    assert broker.health in ("healthy", "starting")
    assert found[1].health is None  # no health check in the master image
    assert broker.started is not None and broker.started.tzinfo is timezone.utc
    assert found[1].started == datetime(2026, 11, 22, 2, 41, 39, 331843, tzinfo=timezone.utc)
    assert found[1].id == "60ac06e41c99c2c566db2343c62b89ef955adec1ea68319e7e38e7f5d01ba23f"
    assert all(c.exit_code is None and c.restarts == 0 for c in found)


def test_a_stopped_worker_is_exited_with_its_exit_code():
    found = {c.name: c for c in inspected("inspect_worker_host_one_exited.jsonl")}
    assert found["livem-worker-h2-1"].running
    stopped = found["livem-worker-h2-2"]
    assert (stopped.state, stopped.exit_code, stopped.running) == ("exited", 0, False)


def test_inspect_objects_are_read_in_any_order_and_sorted_by_name():
    items = [json.loads(line) for line in fixture("inspect_master_host.jsonl").splitlines()]
    assert parse_container_inspect(list(reversed(items))) == parse_container_inspect(items)
    assert parse_container_inspect([]) == ()


def test_the_celery_probe_gives_every_worker_with_active_and_processed_counts():
    view = parse_celery_probe(fixture("celery_probe.txt"))
    assert view.answered and view.online == set(NODES)
    assert view.active == {node: 0 for node in NODES}
    assert sum(view.processed.values()) == 21  # 20 chunks and the chord's merge
    assert view.processed["livem-worker-h3-1@h3"] == 9


def test_busy_workers_report_their_running_tasks():
    view = parse_celery_probe(fixture("celery_probe_busy.txt"))
    assert view.active == {"livem-worker-h2-1@h2": 2, "livem-worker-h2-2@h2": 2, "livem-worker-h3-1@h3": 2,
                           "livem-worker-local-1@local": 1}
    assert all(view.processed[node] >= view.active[node] for node in NODES)


def test_workers_that_did_not_answer_are_not_online():
    view = parse_celery_probe(fixture("celery_probe_two_missing.txt"))
    assert view.online == {"livem-worker-h2-1@h2", "livem-worker-local-1@local"}


@pytest.mark.parametrize("output, expected", [
    ('{"active": null, "stats": null, "error": "OperationalError: [Errno 111] Connection refused"}',
     "OperationalError: [Errno 111] Connection refused"),
    ("Error response from daemon: container 0a1b is not running", "Error response from daemon: container 0a1b is not running"),
    ('{"active": null, "stats": null, "error": "cannot reach amqp://infra:S3cret@h1:5672//"}',
     "cannot reach amqp://****@h1:5672//"),
    ("", "no answer from the master container"),
])
def test_a_failed_probe_is_an_error_with_credentials_hidden(output, expected):
    view = parse_celery_probe(output)
    assert not view.answered and view.error == expected and view.online == set()


def test_queue_depths_come_from_rabbitmqctl_json_with_celerys_own_queues_marked_internal():
    queues = parse_list_queues(fixture("rabbitmqctl_list_queues_busy.txt"))
    work = [q for q in queues if not q.internal]
    assert work == [QueueStatus("celery", 20, 4, ready=13, unacked=7)]
    internal = {q.name for q in queues if q.internal}
    assert "livem-worker-h2-1@h2.celery.pidbox" in internal
    assert any(name.startswith("celeryev.") for name in internal)
    assert queues[0].name == "celery"  # work queues first


def test_the_older_three_column_listing_is_read_as_well():
    queues = parse_list_queues(fixture("rabbitmqctl_list_queues_3_columns.txt"))
    assert [q for q in queues if q.name == "celery"] == [QueueStatus("celery", 0, 2)]


def test_rabbitmqctl_is_asked_for_json_without_headers():
    argv = list_queues("lab").argv()
    assert argv[:4] == ["docker", "exec", "lab-broker", "rabbitmqctl"]
    assert "--formatter" in argv and argv[argv.index("--formatter") + 1] == "json" and "--quiet" in argv
    assert argv[-5:] == ["name", "messages", "messages_ready", "messages_unacknowledged", "consumers"]


def test_a_queue_listing_after_a_notice_line_is_still_read():
    notice = "Timeout: 60.0 seconds ...\nListing queues for vhost / ...\n"
    queues = parse_list_queues(notice + fixture("rabbitmqctl_list_queues_busy.txt"))
    assert queues == parse_list_queues(fixture("rabbitmqctl_list_queues_busy.txt"))
    assert parse_list_queues("[]") == []


def test_a_usage_message_instead_of_json_is_an_error():
    with pytest.raises(ValueError, match="no JSON list"):
        parse_list_queues("rabbitmqctl [--node <node>] list_queues ...")


def test_credentials_in_urls_are_hidden():
    assert redact("amqp://infra:pw@h1:5672// and redis://:pw2@h1:6379/0") == "amqp://****@h1:5672// and redis://****@h1:6379/0"
    assert redact("http://h1:5555/api") == "http://h1:5555/api"


# --------------------------------------------------------------------------- the model


def test_expected_containers_follow_the_cluster_file(cluster):
    assert [(c.name, c.host, c.role) for c in expected_containers(cluster)] == [
        ("livem-broker", "h1", "broker"), ("livem-results", "h1", "results"),
        ("livem-master", "h1", "master"), ("livem-flower", "h1", "flower"),
        ("livem-worker-h2-1", "h2", "worker"), ("livem-worker-h2-2", "h2", "worker"),
        ("livem-worker-h3-1", "h3", "worker"), ("livem-worker-local-1", "local", "worker"),
    ]


def test_a_healthy_cluster_has_no_problem_and_exit_code_0(cluster, tmp_path):
    status = healthy_status(cluster, tmp_path)
    assert status.problems == [] and status.ok and status.exit_code == EXIT_RUNNING == 0
    assert [c.state for c in status.containers] == ["running"] * 8
    assert all(c.expected for c in status.containers)
    assert [(w.name, w.online, w.active) for w in status.workers] == [(n, True, 0) for n in NODES]
    assert all(c.uptime_seconds and c.uptime_seconds > 0 for c in status.containers)


def test_a_stopped_worker_and_an_unreachable_host_are_both_named_with_exit_code_3(cluster, tmp_path):
    observations = healthy_observations()
    observations["h2"] = HostObservation(True, None, inspected("inspect_worker_host_one_exited.jsonl"))
    observations["h3"] = HostObservation(False, "cannot connect to root@172.30.2.13:22: timed out")
    status = healthy_status(cluster, tmp_path, observations=observations,
                            celery=parse_celery_probe(fixture("celery_probe_two_missing.txt")))
    assert status.exit_code == EXIT_NOT_RUNNING == 3
    assert status.problems == [
        "h3: unreachable (cannot connect to root@172.30.2.13:22: timed out)",
        "livem-worker-h2-2 on h2: exited, exit code 0",
    ]
    states = {c.name: c.state for c in status.containers}
    assert states["livem-worker-h2-2"] == "exited" and states["livem-worker-h3-1"] == "unknown"
    online = {w.name: w.online for w in status.workers}
    assert online == {"livem-worker-h2-1@h2": True, "livem-worker-h2-2@h2": False,
                      "livem-worker-h3-1@h3": False, "livem-worker-local-1@local": True}
    host = next(h for h in status.hosts if h.name == "h3")
    assert (host.reachable, host.docker) == (False, False)


def test_a_missing_container_and_a_silent_worker_are_problems(cluster, tmp_path):
    observations = healthy_observations()
    observations["h2"].containers = [c for c in observations["h2"].containers if c.name != "livem-worker-h2-2"]
    silent = CeleryView(active={n: 0 for n in NODES if "h3" not in n}, processed={})
    status = healthy_status(cluster, tmp_path, observations=observations, celery=silent)
    assert status.problems == [
        "livem-worker-h2-2 on h2: missing (run `infra up`)",
        "worker livem-worker-h3-1@h3: its container runs but it does not answer Celery "
        "(see `infra logs livem-worker-h3-1`)",
    ]


def test_an_unhealthy_broker_is_a_problem(cluster, tmp_path):
    from dataclasses import replace

    observations = healthy_observations()
    observations["h1"].containers = [replace(c, health="unhealthy") if c.role == "broker" else c
                                     for c in observations["h1"].containers]
    status = healthy_status(cluster, tmp_path, observations=observations)
    assert status.problems == ["livem-broker on h1: running but unhealthy"]


def test_docker_down_on_a_host_is_a_problem_and_its_containers_are_unknown(cluster, tmp_path):
    observations = healthy_observations()
    observations["h3"] = HostObservation(True, "Cannot connect to the Docker daemon at unix:///var/run/docker.sock")
    status = healthy_status(cluster, tmp_path, observations=observations)
    assert status.problems[0] == "h3: Docker does not answer (Cannot connect to the Docker daemon at unix:///var/run/docker.sock)"
    assert {c.name: c.state for c in status.containers}["livem-worker-h3-1"] == "unknown"


def test_celery_and_rabbitmq_failures_are_problems_only_when_their_containers_run(cluster, tmp_path):
    status = healthy_status(cluster, tmp_path, celery=CeleryView(error="TimeoutError: timed out"), queues=None,
                            queue_error="Error: unable to perform an operation on node")
    assert status.problems == [
        "celery: the workers could not be asked (TimeoutError: timed out)",
        "rabbitmq: the queues could not be listed (Error: unable to perform an operation on node)",
    ]
    assert all(w.online is None for w in status.workers)

    observations = healthy_observations()
    observations["h1"] = HostObservation(False, "timed out")
    down = healthy_status(cluster, tmp_path, observations=observations, celery=None, queues=None,
                          queue_error="the master host is unreachable")
    assert down.problems == ["h1: unreachable (timed out)"]  # not three times the same cause


def test_containers_not_in_the_cluster_file_are_listed_but_not_a_problem(cluster, tmp_path):
    observations = healthy_observations()
    extra = _renamed(observations["h2"].containers[0], "livem-worker-h2-3")
    observations["h2"].containers = observations["h2"].containers + [extra]
    status = healthy_status(cluster, tmp_path, observations=observations,
                            celery=CeleryView(active={n: 0 for n in NODES + ["livem-worker-h2-3@h2"]}))
    assert status.ok
    listed = {c.name: c.expected for c in status.containers}
    assert listed["livem-worker-h2-3"] is False
    assert {w.name: w.expected for w in status.workers}["livem-worker-h2-3@h2"] is False


def test_a_host_that_left_the_cluster_file_is_shown_from_the_manifest(cluster, tmp_path):
    observations = healthy_observations()
    observations["old"] = HostObservation(True, None, [_renamed(observations["h2"].containers[0], "livem-worker-old-1")])
    status = healthy_status(cluster, tmp_path, observations=observations, other_hosts={"old": "10.0.0.9"})
    old = next(h for h in status.hosts if h.name == "old")
    assert (old.in_cluster_file, old.address, old.roles) == (False, "10.0.0.9", [])
    assert {c.name: c.expected for c in status.containers}["livem-worker-old-1"] is False
    assert status.ok


def test_without_a_manifest_the_cluster_is_not_running(cluster, tmp_path):
    empty = {name: HostObservation(True, None, []) for name in ("h1", "h2", "h3", "local")}
    status = build_status(cluster, empty, now=NOW, flower_url=FLOWER, manifest_path=None,
                          celery=CeleryView(error="Error: No such container: livem-master"), queues=None)
    assert status.exit_code == 3
    assert status.problems[0] == "the cluster has not been started from here (no manifest): run `infra up`"
    assert status.problems.count("livem-broker on h1: missing (run `infra up`)") == 1
    assert not any(p.startswith(("celery", "rabbitmq")) for p in status.problems)


# --------------------------------------------------------------------------- renderings


def test_json_has_the_documented_stable_shape(cluster, tmp_path):
    data = json.loads(render_json(healthy_status(cluster, tmp_path)))
    assert list(data) == ["schema", "cluster", "checked_at", "ok", "exit_code", "problems", "flower_url",
                          "flower_published", "manifest", "hosts", "containers", "workers", "queues", "celery", "broker", "volunteers"]
    assert data["schema"] == SCHEMA == "infra.status/1"
    assert (data["cluster"], data["ok"], data["exit_code"], data["problems"]) == ("livem", True, 0, [])
    assert data["checked_at"] == "2026-11-22T02:45:00Z" and data["flower_url"] == FLOWER
    assert list(data["hosts"][0]) == ["name", "address", "roles", "in_cluster_file", "reachable", "docker", "error",
                                      "gpus"]
    assert data["hosts"][0] == {"name": "h1", "address": "172.30.2.11", "roles": ["master"], "in_cluster_file": True,
                                "reachable": True, "docker": True, "error": None, "gpus": None}
    assert list(data["containers"][0]) == ["name", "host", "role", "expected", "state", "health", "started_at",
                                           "uptime_seconds", "image", "restarts", "exit_code"]
    assert data["workers"][0] == {"name": "livem-worker-h2-1@h2", "host": "h2", "container": "livem-worker-h2-1",
                                  "expected": True, "online": True, "active": 0, "processed": 4, "kind": "cluster",
                                  "volunteer": None, "broker_users": None}
    assert {"name": "celery", "messages": 0, "ready": 0, "unacked": 0, "consumers": 4, "internal": False} in data["queues"]
    assert data["celery"] == {"answered": True, "error": None} and data["broker"] == {"answered": True, "error": None}


def test_json_of_a_degraded_cluster_says_why(cluster, tmp_path):
    observations = healthy_observations()
    observations["h3"] = HostObservation(False, "timed out")
    data = to_json(healthy_status(cluster, tmp_path, observations=observations))
    assert (data["ok"], data["exit_code"], data["problems"]) == (False, 3, ["h3: unreachable (timed out)"])
    h3 = next(h for h in data["hosts"] if h["name"] == "h3")
    assert (h3["reachable"], h3["error"]) == (False, "timed out")
    assert next(c for c in data["containers"] if c["name"] == "livem-worker-h3-1")["state"] == "unknown"


def test_the_table_lists_hosts_containers_workers_queues_and_the_verdict(cluster, tmp_path):
    text = render_table(healthy_status(cluster, tmp_path, queues=parse_list_queues(fixture("rabbitmqctl_list_queues_busy.txt")),
                                       celery=parse_celery_probe(fixture("celery_probe_busy.txt"))))
    lines = text.splitlines()
    assert lines[0] == "cluster livem: 4/4 hosts reachable, 8/8 containers running, 4/4 workers online"
    assert lines[1] == f"flower: {FLOWER}"
    assert lines[-1] == "all running"
    assert any(line.split()[:4] == ["livem-broker", "h1", "broker", "running"] for line in lines)
    worker = next(line for line in lines if line.strip().startswith("livem-worker-h2-1@h2"))
    assert worker.split()[:3] == ["livem-worker-h2-1@h2", "yes", "2"]
    queue = next(line for line in lines if line.strip().startswith("celery "))
    assert queue.split() == ["celery", "20", "13", "7", "4"]
    assert "pidbox" not in text and "celeryev" not in text


def test_the_table_of_a_degraded_cluster_ends_with_its_problems(cluster, tmp_path):
    observations = healthy_observations()
    observations["h2"] = HostObservation(True, None, inspected("inspect_worker_host_one_exited.jsonl"))
    observations["h3"] = HostObservation(False, "timed out")
    text = render_table(healthy_status(cluster, tmp_path, observations=observations,
                                       celery=parse_celery_probe(fixture("celery_probe_two_missing.txt"))))
    assert "h3     172.30.2.13  worker  UNREACHABLE: timed out" in text
    assert text.splitlines()[0] == "cluster livem: 3/4 hosts reachable, 6/8 containers running, 2/4 workers online"
    assert text.endswith("2 problem(s):\n  - h3: unreachable (timed out)\n  - livem-worker-h2-2 on h2: exited, exit code 0")
    row = next(line for line in text.splitlines() if line.strip().startswith("livem-worker-h2-2 "))
    assert "EXITED" in row


@pytest.mark.parametrize("seconds, text", [
    (None, "-"), (0, "0s"), (59, "59s"), (60, "1m00s"), (3599, "59m59s"), (3600, "1h00m"), (90061, "1d01h"),
])
def test_uptimes_are_short(seconds, text):
    assert format_duration(seconds) == text


def test_uptime_is_counted_from_the_start_time(cluster, tmp_path):
    later = healthy_status(cluster, tmp_path, now=NOW + timedelta(hours=2))
    earlier = healthy_status(cluster, tmp_path)
    assert later.containers[0].uptime_seconds - earlier.containers[0].uptime_seconds == 7200
