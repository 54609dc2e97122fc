"""`infra sweep` on this machine's side: the driver's events in; output lines, logs and the CSV out.

Also the GPU settings at the plan level (`gpus` → `docker run --gpus` → the API's DeviceRequests):
the machines these tests run on have no GPU, so this is where that path is checked.
"""

from __future__ import annotations

import csv
import io
import json
import shlex
import uuid
from dataclasses import replace

import pytest
from click.testing import CliRunner

from infra.cli import main
from infra.commands.engine import ContainerSpec, RunContainer
from infra.commands.files import write_file
from infra.config import parse_cluster
from infra.engine.wire import create_arguments, device_requests
from infra.errors import ConfigError
from infra.facts.host import HostFacts
from infra.plans.containers import desired_containers, fingerprint, gpus_option
from infra.plans.layout import host_layout
from infra.runtime import DRIVER_MODULE, protocol
from infra.sweep.results import SortSpec
from infra.transport.pool import ConnectionPool
from infra.workflows.sweep import (
    SweepOptions,
    SweepRecorder,
    dry_run_lines,
    prepare_sweep,
    resume_note,
    run_sweep,
    summary_lines,
)
from tests.unit.recording import (
    FakeHost,
    RecordingEngine,
    RecordingHosts,
    sha256_listing,
)

CLUSTER = """\
name: lab
hosts:
  m1: {address: 10.0.0.1, user: alice}
  w1: {address: 10.0.0.2, user: bob}
project: {path: proj}
roles:
  master: {host: m1}
  workers:
    - {host: m1, containers: 1, concurrency: 2}
    - {host: w1, containers: 2, gpus: [0, 1]}
"""
TRAIN = "import sys\nprint(sys.argv)\n"
PARAMETERS = "lr: [0.1, 0.01]\nshuffle: [true, false]\n"


@pytest.fixture
def cluster(tmp_path):
    project = tmp_path / "proj"
    project.mkdir()
    (project / "train.py").write_text(TRAIN)
    (tmp_path / "parameters.yml").write_text(PARAMETERS)
    return parse_cluster(CLUSTER, filename="cluster.yaml", base_dir=tmp_path)


def prepared(cluster, **options):
    return prepare_sweep(cluster, cluster.project_dir.parent / "parameters.yml", ("python", "train.py"),
                         SweepOptions(**options))


def event(kind, run=None, **fields):
    return protocol.event_line({"event": kind, **({"run": run.id} if run else {}), **fields})


class Captured:
    def __init__(self):
        self.out, self.notes, self.status = [], [], []

    def recorder(self, plan, quiet=False):
        return SweepRecorder(plan, out=self.out.append, note=self.notes.append, status=self.status.append, quiet=quiet)


def csv_rows(plan):
    return list(csv.DictReader(io.StringIO(plan.csv_path.read_text())))


# --------------------------------------------------------------------------- preparing


def test_a_dry_run_lists_every_combination_and_its_command(cluster):
    plan = prepared(cluster)
    assert plan.name == "parameters" and plan.queue == "celery"
    assert dry_run_lines(plan) == [
        "sweep 'parameters' of " + str(cluster.project_dir.parent / "parameters.yml")
        + ": 4 combinations (lr: 2 values, shuffle: 2 values), queue 'celery'",
        "  1  python train.py --lr 0.1 --shuffle",
        "  2  python train.py --lr 0.1",
        "  3  python train.py --lr 0.01 --shuffle",
        "  4  python train.py --lr 0.01",
        "results: output/sweep-parameters.csv, one log per run in output/sweep-parameters/logs/",
    ]


def test_resume_reads_the_earlier_csv_and_lists_only_what_is_left(cluster):
    plan = prepared(cluster)
    rec = Captured().recorder(plan)
    runs = plan.runs
    for run, status in ((runs[0], "ok"), (runs[1], "failed"), (runs[3], "ok")):
        rec.on_driver_stdout(event("start", run, host="m1", attempt=1))
        rec.on_driver_stdout(event("end", run, status=status, exit_code=0 if status == "ok" else 2, seconds=1.0,
                                   host="m1", attempt=1, final=True))
    rec.close()
    again = prepared(cluster, resume=True)
    assert [r.index for r in again.selection.done] == [1, 4]
    assert [r.index for r in again.selection.to_run] == [2, 3]
    assert dry_run_lines(again)[1] == "--resume: 2 of 4 finished ok earlier (output/sweep-parameters.csv); 2 to run"
    assert resume_note(again) == "--resume: 2 of 4 combinations finished ok earlier; running the other 2"
    assert resume_note(plan) is None


def test_bad_options_are_one_line_each(cluster):
    with pytest.raises(ConfigError, match="no worker consumes it"):
        prepared(cluster, queue="gpu")
    with pytest.raises(ConfigError, match="--name"):
        prepared(cluster, name="a/b")


# --------------------------------------------------------------------------- recording


def test_events_become_prefixed_lines_logs_and_one_csv_row_per_combination(cluster):
    plan = prepared(cluster)
    cap = Captured()
    rec = cap.recorder(plan)
    r1, r2 = plan.runs[0], plan.runs[1]
    for line in [
        event("submitted", count=2),
        event("start", r1, host="m1", worker="lab-worker-m1-1@m1", gpus="", attempt=1),
        event("start", r2, host="w1", worker="lab-worker-w1-1@w1", gpus="0", attempt=1),
        event("lines", r1, lines=["epoch=1 loss=0.5", '{"accuracy": 0.9, "loss": 0.2}']),
        event("lines", r2, lines=["Traceback: boom"]),
        event("end", r1, status="ok", exit_code=0, seconds=1.5, host="m1", attempt=1, final=True),
        event("end", r2, status="failed", exit_code=3, seconds=0.5, host="w1", attempt=1, final=True),
        "a note from the driver",
        "retrying amqp://infra:s3cret@broker:5672//",
        event("warning", text="slow"),
    ]:
        rec.on_driver_stdout(line)
    summary = rec.close(SortSpec("accuracy", True), 5)
    assert cap.out == [
        "[1/4] started on m1: lr=0.1 shuffle",
        "[2/4] started on w1, GPUs 0: lr=0.1",
        "[1/4] epoch=1 loss=0.5",
        '[1/4] {"accuracy": 0.9, "loss": 0.2}',
        "[2/4] Traceback: boom",
        "[1/4] ok (exit 0, 1.5 s on m1)",
        f"[2/4] failed (exit 3, 0.5 s on w1): see output/sweep-parameters/logs/0002-{r2.id}.log",
    ]
    assert cap.notes == ["driver: a note from the driver", "driver: retrying amqp://****@broker:5672//",
                         "warning: slow"]
    rows = csv_rows(plan)
    assert [(r["index"], r["lr"], r["shuffle"], r["status"], r["exit_code"], r["host"], r["accuracy"]) for r in rows] == [
        ("1", "0.1", "true", "ok", "0", "m1", "0.9"), ("2", "0.1", "false", "failed", "3", "w1", "")]
    assert rows[0]["log"] == f"output/sweep-parameters/logs/0001-{r1.id}.log"
    log = (cluster.project_dir / rows[0]["log"]).read_text().splitlines()
    assert log[0] == f"# infra sweep parameters: combination 1 of 4 (id {r1.id}): lr=0.1 shuffle"
    assert log[1] == "# command: python train.py --lr 0.1 --shuffle"
    assert log[2].startswith("# attempt 1 on m1 (lab-worker-m1-1@m1), ")
    assert log[3:] == ["epoch=1 loss=0.5", '{"accuracy": 0.9, "loss": 0.2}', "# end: ok, exit code 0, 1.5 s on m1"]
    assert (summary.ok, summary.failed, summary.not_run, summary.exit_code) == (1, 1, 2, 1)
    assert summary.table_title == "best 1 by accuracy (highest first):"
    assert summary.table[1].split() == ["1", "0.1", "true", "0.9", "0.2", "1.500", "m1"]
    assert cap.status[-1].startswith("[############............] 2/4 done, 0 running, 1 failed")


def test_a_retried_run_keeps_both_attempts_in_its_log_and_the_last_ones_metrics(cluster):
    plan = prepared(cluster)
    rec = Captured().recorder(plan, quiet=True)
    run = plan.runs[0]
    for line in [
        event("start", run, host="m1", attempt=1),
        event("lines", run, lines=["loss=9"]),
        event("end", run, status="failed", exit_code=1, seconds=1, host="m1", attempt=1, final=False),
        event("retry", run, attempt=2),
        event("start", run, host="w1", attempt=2),
        event("lines", run, lines=["acc=0.5"]),
        event("end", run, status="ok", exit_code=0, seconds=2, host="w1", attempt=2, final=True),
    ]:
        rec.on_driver_stdout(line)
    rec.close()
    (row,) = csv_rows(plan)
    assert (row["status"], row["attempts"], row["host"], row["acc"]) == ("ok", "2", "w1", "0.5")
    assert "loss" not in row  # what the first attempt said is not a result
    log = (cluster.project_dir / row["log"]).read_text()
    assert "# attempt 1 on m1" in log and "# attempt 2 on w1" in log and "loss=9" in log


def test_an_interrupted_sweep_keeps_complete_rows_and_says_how_to_go_on(cluster):
    plan = prepared(cluster)
    cap = Captured()
    rec = cap.recorder(plan)
    r1, r2 = plan.runs[:2]
    for line in [
        event("start", r1, host="m1", attempt=1), event("start", r2, host="m1", attempt=1),
        event("end", r1, status="ok", exit_code=0, seconds=1, host="m1", attempt=1, final=True),
        event("cancelling", queued=2, running=1),
        event("end", r2, status="cancelled", exit_code=143, seconds=1, host="m1", attempt=1, final=True),
        event("finished", interrupted=True),
    ]:
        rec.on_driver_stdout(line)
    summary = rec.close()
    assert [(r["index"], r["status"]) for r in csv_rows(plan)] == [("1", "ok"), ("2", "cancelled")]
    assert (summary.ok, summary.cancelled, summary.not_run, summary.interrupted, summary.exit_code) == (1, 1, 2, True, 130)
    assert "stopping the sweep: 2 queued run(s) cancelled, 1 running run(s) being stopped" in cap.notes
    assert summary_lines(plan, summary)[-1] == ("run the same command with --resume to run the 3 combination(s) "
                                                "not finished ok")


def test_a_resumed_sweep_keeps_earlier_rows_even_of_combinations_no_longer_in_the_file(cluster):
    plan = prepared(cluster)
    plan.csv_path.parent.mkdir()
    plan.csv_path.write_text(
        "index,id,lr,shuffle,status,exit_code,seconds,host,attempts,accuracy,log\n"
        f"1,{plan.runs[0].id},0.1,true,ok,0,1.000,m1,1,0.8,l1\n"
        "9,0123456789ab,0.5,true,ok,0,1.000,m1,1,0.7,l9\n"
        f"2,{plan.runs[1].id},0.1,false,failed,1,1.000,m1,1,,l2\n")
    again = prepared(cluster, resume=True)
    rec = Captured().recorder(again)
    run = again.runs[1]
    rec.on_driver_stdout(event("start", run, host="w1", attempt=1))
    rec.on_driver_stdout(event("end", run, status="ok", exit_code=0, seconds=1, host="w1", attempt=1, final=True))
    rec.close()
    assert [(r["index"], r["status"], r["host"]) for r in csv_rows(again)] == [
        ("1", "ok", "m1"), ("2", "ok", "w1"), ("9", "ok", "m1")]


# --------------------------------------------------------------------------- the whole workflow, faked hosts


def test_a_sweep_writes_its_plan_on_the_master_runs_the_driver_there_and_records_here(cluster, monkeypatch):
    local = cluster.project_dir
    files = {"train.py": TRAIN.encode()}
    master_container = {"Names": ["/lab-master"], "Id": "id-master", "State": "running", "Status": "Up 1 hour",
                        "Image": "infra-lab-master:latest", "ImageID": "sha256:m",
                        "Labels": {"infra.cluster": "lab", "infra.role": "master", "infra.host": "m1"}}
    hosts = RecordingHosts(m1=FakeHost(home="/home/alice", containers=[master_container],
                                       listings={"/home/alice/infra/lab/proj": sha256_listing(files)},
                                       claimed={"/home/alice/infra/lab": "lab"}),
                           w1=FakeHost(home="/home/bob"))
    monkeypatch.setattr(ConnectionPool, "default_connector", staticmethod(hosts.connect))
    monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID(int=0xabc))
    plan = prepared(cluster)
    original_exec = RecordingEngine.exec

    def driver_exec(self, op, *, on_stdout=None, on_stderr=None, timeout=None, keep_output=True):
        assert keep_output is False  # a sweep's stream is never held in memory
        result = original_exec(self, op, on_stdout=on_stdout, on_stderr=on_stderr, timeout=timeout)
        if DRIVER_MODULE in op.command:
            for run in plan.runs:
                on_stdout(event("start", run, host="w1", attempt=1))
                on_stdout(event("lines", run, lines=[json.dumps({"score": run.index})]))
                on_stdout(event("end", run, status="ok", exit_code=0, seconds=1, host="w1", attempt=1, final=True))
            on_stdout(event("finished", interrupted=False))
        return result

    monkeypatch.setattr(RecordingEngine, "exec", driver_exec)
    out, notes = [], []
    summary = run_sweep(cluster, plan, SweepOptions(sort=SortSpec("score", True), top=2),
                        out=out.append, err=notes.append, note=notes.append)
    sent = hosts.sent("m1")
    plan_path = "/home/alice/infra/lab/output/sweep-parameters/plan.json"  # the output folder, mounted at /project/output
    assert sent[-2].startswith(shlex.join(write_file(plan_path)) + " <")
    assert sent[-1] == (
        "docker exec --workdir /project lab-master sh -c 'echo \"__infra_run_pid__=$$\" >&2; exec \"$@\"' "
        "infra-sweep python -m infra_runtime.driver /project/output/sweep-parameters/plan.json")
    assert hosts.sent("w1") == []  # the workers are reached through the broker, never from here
    assert notes == []
    assert (summary.ok, summary.exit_code) == (4, 0)
    assert [row["score"] for row in csv_rows(plan)] == ["1", "2", "3", "4"]
    assert summary.table[1].split()[0] == "4"
    assert (local / "output" / "sweep-parameters" / "logs").is_dir()


# --------------------------------------------------------------------------- the command line


def test_the_command_line_dry_run_and_its_mistakes(cluster, tmp_path):
    (tmp_path / "cluster.yaml").write_text(CLUSTER)
    base = ["sweep", "-f", str(tmp_path / "cluster.yaml"), str(tmp_path / "parameters.yml")]
    result = CliRunner().invoke(main, [*base, "--dry-run", "--", "python", "train.py", "--data", "x y"])
    assert result.exit_code == 0, result.output
    assert "  4  python train.py --data 'x y' --lr 0.01" in result.output
    missing = CliRunner().invoke(main, [*base, "--dry-run"])
    assert missing.exit_code == 2 and "error: sweep: name the command after the parameters file" in missing.output
    bad_sort = CliRunner().invoke(main, [*base, "--sort", "-", "--", "python", "train.py"])
    assert bad_sort.exit_code == 2 and "error: --sort needs a metric name" in bad_sort.output
    no_dashes = CliRunner().invoke(main, [*base, "python", "train.py", "--data", "x"])
    assert no_dashes.exit_code == 2 and "put the command to run after `--`" in no_dashes.output
    bad_file = tmp_path / "bad.yml"
    bad_file.write_text("lr: {range: [1, 1]}\n")
    result = CliRunner().invoke(main, ["sweep", "-f", str(tmp_path / "cluster.yaml"), str(bad_file), "--", "python", "train.py"])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: lr: the range [1, 1, 1] is empty (its stop is excluded) ({bad_file}:1)"


# --------------------------------------------------------------------------- GPUs at the plan level


def facts() -> HostFacts:
    return HostFacts(home="/home/bob", uid=1001, gid=1001, arch="x86_64", docker_version="24.0.7")


def test_gpu_workers_get_docker_run_gpus_and_the_api_gets_device_requests(cluster):
    host = cluster.hosts["w1"]
    specs = desired_containers(cluster, host, facts(), host_layout(cluster, host, facts()))
    assert [s.gpus for s in specs] == ["device=0,1", "device=0,1"]
    argv = RunContainer(specs[0], ()).argv()
    assert argv[argv.index("--gpus") + 1] == '"device=0,1"'
    request = create_arguments(RunContainer(specs[0], ()))["config"]["HostConfig"]["DeviceRequests"]
    assert request == [{"Driver": "", "Capabilities": [["gpu"]], "DeviceIDs": ["0", "1"]}]
    master = cluster.hosts["m1"]
    m_facts = replace(facts(), home="/home/alice")
    assert all(s.gpus is None for s in desired_containers(cluster, master, m_facts, host_layout(cluster, master, m_facts)))


def test_gpus_settings_as_docker_and_the_api_spell_them():
    assert [gpus_option(g) for g in (None, "all", 2, (0, "GPU-3a7f"))] == [None, "all", "2", "device=0,GPU-3a7f"]
    assert device_requests("all") == [{"Driver": "", "Capabilities": [["gpu"]], "Count": -1}]
    assert device_requests("2") == [{"Driver": "", "Capabilities": [["gpu"]], "Count": 2}]
    assert device_requests("device=GPU-3a7f") == [{"Driver": "", "Capabilities": [["gpu"]], "DeviceIDs": ["GPU-3a7f"]}]


def test_the_worker_command_uses_the_built_in_app_or_includes_the_runner_in_the_projects(cluster, tmp_path):
    host = cluster.hosts["w1"]
    spec = desired_containers(cluster, host, facts(), host_layout(cluster, host, facts()))[0]
    assert spec.command[:4] == ("celery", "--app", "infra_runtime.app", "worker")
    with_app = parse_cluster(CLUSTER.replace("project: {path: proj}", "project: {path: proj, app: tasks}"),
                             filename="cluster.yaml", base_dir=tmp_path)
    spec = desired_containers(with_app, host, facts(), host_layout(with_app, host, facts()))[0]
    assert spec.command[:6] == ("celery", "--app", "tasks", "worker", "--include", "infra_runtime.tasks")


def test_a_container_without_gpus_keeps_the_fingerprint_it_had_before_gpus_existed():
    import hashlib

    spec = ContainerSpec(name="w", role="worker", host="h", image="i", command=("celery",))
    # The spec's fields without those added later and left unset.
    later = ("gpus", "bind_address", "cap_drop", "cap_add", "security_opt", "read_only", "tmpfs", "pids_limit")
    before = {key: value for key, value in spec.__dict__.items() if key not in later}
    payload = json.dumps({"spec": before, "image_id": "sha256:x", "secrets": "e"}, sort_keys=True, default=list)
    assert fingerprint(spec, "sha256:x", "e") == hashlib.sha256(payload.encode()).hexdigest()[:20]
    assert fingerprint(replace(spec, gpus="all"), "sha256:x", "e") != fingerprint(spec, "sha256:x", "e")


def test_a_run_delivered_again_after_its_worker_was_lost_says_so(cluster):
    plan = prepared(cluster)
    cap = Captured()
    rec = cap.recorder(plan)
    run = plan.runs[0]
    rec.on_driver_stdout(event("start", run, host="h3", worker="w@h3", attempt=1))
    rec.on_driver_stdout(event("lines", run, lines=["half way"]))
    rec.on_driver_stdout(event("start", run, host="h2", worker="w@h2", attempt=1, redelivered=True))
    rec.on_driver_stdout(event("end", run, status="ok", exit_code=0, seconds=1, host="h2", attempt=1, final=True))
    rec.close()
    assert cap.out[2] == "[1/4] started on h2 (delivered again: the worker that had it was lost): lr=0.1 shuffle"
    log = (cluster.project_dir / csv_rows(plan)[0]["log"]).read_text()
    assert "# attempt 1 on h3 (w@h3)" in log and "half way" in log
    assert "(delivered again: the worker that had it was lost)" in log
