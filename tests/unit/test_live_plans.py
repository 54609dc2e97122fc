"""The decisions of `sync-files`, `logs` and `run`, checked without any host.

Which hosts and containers a command means, whether workers must restart, which files count
(ignore rules), which output files come back, and the exact commands sent.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from datetime import datetime, timezone
from pathlib import Path

import pytest

from infra.cli.options import select_hosts
from infra.commands.celery import PID_MARKER, celery_probe, run_job, signal_job
from infra.commands.engine import (
    InspectContainers,
    ListContainers,
    Logs,
    RestartContainer,
)
from infra.commands.files import FETCH_OUTPUT, LIST_OUTPUT, files_newer_than
from infra.config import Cluster, parse_cluster
from infra.errors import ConfigError, InfraError
from infra.facts.containers import parse_container_list
from infra.facts.files import (
    LocalFile,
    ignore_rules,
    parse_find,
    parse_sha256_list,
    project_digest,
    scan_local,
)
from infra.plans.containers import expected_worker_nodes
from infra.plans.sync import CodeRecord, changed_after, earliest_start, restart_decision
from infra.state.digests import code_records_path, load_code_records, save_code_records
from infra.workflows.logs import (
    LogLine,
    format_log_line,
    log_target,
    merge_logs,
    parse_tail,
    since_timestamp,
    split_timestamp,
)
from infra.workflows.run_job import (
    fetch_outputs,
    job_words,
    plan_fetch,
    script_command,
    unpack_files,
)
from infra.workflows.status import CELERY_REPLY_TIMEOUT
from infra.workflows.sync_context import RESTART_TIMEOUT, SyncOutcome

FIXTURES = Path(__file__).parent / "fixtures" / "live"
DIGEST = "a" * 24
STARTS = {"lab-worker-pi1-1": "2026-11-22T02:44:02.473877562Z", "lab-worker-pi1-2": "2026-11-22T02:44:04.301429709Z"}


@pytest.fixture
def cluster(tmp_path) -> Cluster:
    project = tmp_path / "wordcount"
    (project / "wordcount").mkdir(parents=True)
    (project / "wordcount" / "tasks.py").write_text("def count(): pass\n")
    (project / "scripts").mkdir()
    (project / "scripts" / "report.py").write_text("print('hi')\n")
    text = """
name: lab
hosts:
  gpu-box: {address: 192.168.1.20, user: alice}
  pi1: {address: 192.168.1.30, user: pi}
  spare: {address: 192.168.1.40}
project: {path: wordcount, app: wordcount}
roles:
  master: {host: gpu-box}
  workers:
    - {host: pi1, containers: 2}
    - {host: local, containers: 1}
"""
    return parse_cluster(text, base_dir=tmp_path)


def write(root: Path, rel: str, content: str = "x") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    return path


# --------------------------------------------------------------------------- --hosts (sync-files, bootstrap)


def test_all_hosts_of_the_cluster_by_default_master_first(cluster):
    assert [h.name for h in select_hosts(cluster, None)] == ["gpu-box", "pi1", "local"]


def test_hosts_option_keeps_the_cluster_order_and_drops_repeats(cluster):
    assert [h.name for h in select_hosts(cluster, "local, pi1,pi1")] == ["pi1", "local"]


def test_hosts_option_takes_any_host_of_the_file_after_those_the_cluster_uses(cluster):
    # spare is listed under hosts: but has no role; local needs no entry.
    assert [h.name for h in select_hosts(cluster, "spare,local,gpu-box")] == ["gpu-box", "local", "spare"]


@pytest.mark.parametrize("option, message", [
    ("nope", "--hosts: unknown host 'nope' (hosts: gpu-box, local, pi1, spare)"),
    ("pi1,nope", "--hosts: unknown host 'nope'"),
    (" , ", "--hosts: no host named"),
    ("", "--hosts: no host named"),
])
def test_hosts_option_refuses_unknown_hosts_and_an_empty_list(cluster, option, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        select_hosts(cluster, option)


# --------------------------------------------------------------------------- change detection


def test_the_project_digest_follows_content_not_timestamps(tmp_path):
    write(tmp_path, "wordcount/tasks.py", "v1")
    write(tmp_path, "data/sample.txt", "words")
    first = project_digest(scan_local(tmp_path))
    os.utime(tmp_path / "wordcount/tasks.py", (1, 1))
    assert project_digest(scan_local(tmp_path)) == first
    write(tmp_path, "wordcount/tasks.py", "v2")
    assert project_digest(scan_local(tmp_path)) != first


def test_a_deleted_or_renamed_file_changes_the_digest(tmp_path):
    write(tmp_path, "a.py", "same")
    one = project_digest(scan_local(tmp_path))
    (tmp_path / "a.py").rename(tmp_path / "b.py")
    assert project_digest(scan_local(tmp_path)) != one
    (tmp_path / "b.py").unlink()
    assert project_digest(scan_local(tmp_path)) != one


@pytest.mark.parametrize("ignored", [
    ".git/HEAD", "wordcount/__pycache__/tasks.cpython-311.pyc", ".venv/bin/python", "venv/x.py",
    "output/wordcount.csv", "notes/draft.md",
])
def test_ignored_files_do_not_change_the_digest(tmp_path, ignored):
    write(tmp_path, "wordcount/tasks.py")
    write(tmp_path, ".infraignore", "# local notes\nnotes/\n")
    before = project_digest(scan_local(tmp_path))
    write(tmp_path, ignored)
    assert project_digest(scan_local(tmp_path)) == before


def test_files_newer_than_the_workers_found_on_a_host_are_filtered_by_the_ignore_rules(tmp_path):
    write(tmp_path, ".infraignore", "*.log\n")
    rules = ignore_rules(tmp_path)
    found = "./wordcount/tasks.py\n./output/wordcount.csv\n./wordcount/__pycache__/tasks.pyc\n./run.log\n"
    assert parse_find(found, rules) == ["wordcount/tasks.py"]
    assert parse_find("", rules) == []


def test_the_newer_files_command_compares_with_the_workers_start():
    moment = datetime(2026, 11, 22, 2, 44, 2, 473877, tzinfo=timezone.utc)
    sh, dash_c, command = files_newer_than("/home/pi/infra/word count", moment)
    assert (sh, dash_c) == ("sh", "-c")
    assert command.startswith("cd '/home/pi/infra/word count' 2>/dev/null && find . -type f -newermt @")
    assert f"@{int(moment.timestamp())} " in command


def test_the_newer_files_command_run_by_sh_finds_files_modified_after_the_moment(tmp_path):
    root = tmp_path / "word count"
    old = write(root, "old.py")
    write(root, "sub/new.py")
    os.utime(old, (1_000_000_000, 1_000_000_000))
    moment = datetime.fromtimestamp(1_500_000_000, timezone.utc)
    found = subprocess.run(files_newer_than(str(root), moment), capture_output=True, text=True, check=True).stdout
    assert parse_find(found, ignore_rules(root)) == ["sub/new.py"]
    gone = subprocess.run(files_newer_than(str(tmp_path / "absent"), moment), capture_output=True, text=True)
    assert gone.stdout == ""  # no file found; the caller reads it without check


def test_files_modified_after_the_earliest_start_count_as_changed():
    start = earliest_start(STARTS)
    assert start == datetime(2026, 11, 22, 2, 44, 2, 473877, tzinfo=timezone.utc)
    t = start.timestamp()
    assert changed_after({"a.py": t - 10, "b.py": t + 1, "c.py": t + 0.5}, start) == ["b.py", "c.py"]
    assert changed_after({"a.py": t - 10}, start) == []
    assert changed_after({"a.py": 1.0}, None) == ["a.py"]
    assert earliest_start({}) is None


def test_workers_recorded_with_this_code_are_not_restarted():
    decision = restart_decision(CodeRecord(DIGEST, dict(STARTS)), DIGEST, dict(STARTS), changed_since_start=True)
    assert (decision.restart, decision.current) == (False, True)
    assert decision.reason == "the workers already run this code"


def test_workers_recorded_with_older_code_are_restarted_even_if_the_files_look_old():
    decision = restart_decision(CodeRecord("b" * 24, dict(STARTS)), DIGEST, dict(STARTS), changed_since_start=False)
    assert (decision.restart, decision.reason) == (True, "code changed since the workers started")


def test_a_record_of_other_starts_is_ignored_and_file_times_decide():
    restarted_since = {**STARTS, "lab-worker-pi1-2": "2026-11-22T03:00:00Z"}
    record = CodeRecord(DIGEST, dict(STARTS))
    assert restart_decision(record, DIGEST, restarted_since, changed_since_start=True).restart
    unchanged = restart_decision(record, DIGEST, restarted_since, changed_since_start=False)
    assert (unchanged.restart, unchanged.current, unchanged.reason) == (False, True, "no file changed since the workers started")
    assert restart_decision(None, DIGEST, dict(STARTS), changed_since_start=True).reason == "files changed after the workers started"


def test_no_restart_leaves_stale_workers_and_says_so():
    decision = restart_decision(None, DIGEST, dict(STARTS), changed_since_start=True, allowed=False)
    assert (decision.restart, decision.current) == (False, False)
    assert decision.reason == "files changed after the workers started; not restarted (--no-restart)"


def test_a_host_without_running_workers_restarts_nothing():
    decision = restart_decision(None, DIGEST, {}, changed_since_start=True)
    assert (decision.restart, decision.reason) == (False, "no running worker here")


def test_code_records_survive_a_round_trip_and_a_broken_file_is_no_record(cluster):
    path = code_records_path(cluster)
    assert path == cluster.state_dir / "worker-code.json"
    assert load_code_records(path) == {}
    save_code_records(path, {"pi1": CodeRecord(DIGEST, dict(STARTS))})
    assert load_code_records(path) == {"pi1": CodeRecord(DIGEST, dict(STARTS))}
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    path.write_text("{not json")
    assert load_code_records(path) == {}


def test_restarts_give_workers_time_for_a_warm_shutdown():
    assert RestartContainer("lab-worker-pi1-1", RESTART_TIMEOUT).argv() == [
        "docker", "restart", "--time", "10", "lab-worker-pi1-1"]


def test_the_sync_report_gives_files_and_bytes_per_host():
    sent = SyncOutcome("pi1", "/home/pi/infra/wordcount", sent=["wordcount/tasks.py"], bytes_sent=1047,
                       wire_bytes=10240, unchanged=8, restarted=["lab-worker-pi1-1"], reason="code changed since the workers started")
    assert sent.describe() == ("sent 1 file(s), 1047 bytes (10240 on the wire), deleted 0, 8 unchanged; "
                               "restarted lab-worker-pi1-1 (code changed since the workers started)")
    same = SyncOutcome("pi1", "/p", unchanged=9, reason="the workers already run this code")
    assert same.describe() == "up to date (9 files), nothing sent; the workers already run this code"
    local = SyncOutcome("local", "/p", in_place=True, unchanged=9, reason="no running worker here")
    assert local.describe() == "project used in place (9 files); no running worker here"
    assert SyncOutcome("pi1", "", error="cannot connect to pi@192.168.1.30: timed out").describe() == \
        "failed: cannot connect to pi@192.168.1.30: timed out"


# --------------------------------------------------------------------------- status commands


def test_status_lists_the_clusters_containers_by_label_then_inspects_exactly_those():
    assert ListContainers("lab").text() == (
        "docker ps --all --no-trunc --filter label=infra.cluster=lab --format '{{json .}}'")
    assert InspectContainers(("lab-broker", "lab-master")).argv() == [
        "docker", "container", "inspect", "lab-broker", "lab-master"]


def test_the_celery_probe_carries_no_secret_and_names_the_expected_workers(cluster):
    argv = celery_probe(cluster.name, cluster.spec.project.app, expected_worker_nodes(cluster),
                        CELERY_REPLY_TIMEOUT).argv()
    assert argv[:4] == ["docker", "exec", "lab-master", "python"]
    assert argv[-3:] == ["wordcount", json.dumps(["lab-worker-pi1-1@pi1", "lab-worker-pi1-2@pi1",
                                                  "lab-worker-local-1@local"]), "2"]
    assert not any("amqp://" in part or "redis://" in part for part in argv)


# --------------------------------------------------------------------------- logs


@pytest.mark.parametrize("target, hosts, matched", [
    (None, ("gpu-box", "pi1", "local"), ["lab-broker", "lab-master", "lab-worker-pi1-1", "lab-worker-local-1"]),
    ("worker", ("pi1", "local"), ["lab-worker-pi1-1", "lab-worker-local-1"]),
    ("workers", ("pi1", "local"), ["lab-worker-pi1-1", "lab-worker-local-1"]),
    ("broker", ("gpu-box",), ["lab-broker"]),
    ("rabbitmq", ("gpu-box",), ["lab-broker"]),
    ("flower", ("gpu-box",), []),
    ("pi1", ("pi1",), ["lab-worker-pi1-1"]),
    ("lab-worker-pi1-1", ("pi1",), ["lab-worker-pi1-1"]),
    ("lab-worker-pi1-9", ("gpu-box", "pi1", "local"), []),  # not in the file: looked for everywhere
])
def test_a_logs_target_is_a_role_a_host_or_a_container(cluster, target, hosts, matched):
    selection = log_target(cluster, target)
    assert selection.hosts == hosts
    found = [("lab-broker", "broker", "gpu-box"), ("lab-master", "master", "gpu-box"),
             ("lab-worker-pi1-1", "worker", "pi1"), ("lab-worker-local-1", "worker", "local")]
    assert [name for name, role, host in found if host in hosts and selection.matches(name, role, host)] == matched


def test_a_host_only_in_the_manifest_is_a_valid_target(cluster):
    assert log_target(cluster, "old-box", ["old-box"]).hosts == ("old-box",)
    assert log_target(cluster, None, ["old-box"]).hosts == ("gpu-box", "pi1", "local", "old-box")


def test_an_unknown_logs_target_names_the_choices(cluster):
    with pytest.raises(ConfigError, match=r"logs: 'spare' is neither a role \(broker, flower, master, results, worker\), "
                                          r"a host \(gpu-box, pi1, local\) nor a container of cluster lab"):
        log_target(cluster, "spare")


def test_logs_commands(cluster):
    assert Logs("lab-broker", tail="100").argv() == ["docker", "logs", "--timestamps", "--tail", "100", "lab-broker"]
    assert Logs("lab-broker", tail="all", since=1_706_702_400.0, follow=True).argv() == \
        ["docker", "logs", "--timestamps", "--tail", "all", "--since", "1706702400", "--follow", "lab-broker"]
    assert Logs("lab-broker", since=1_706_702_400.25).argv()[5:7] == ["--since", "1706702400.25"]


def test_the_containers_to_show_logs_of_come_from_the_api_list_with_their_roles():
    listed = [
        {"Names": ["/lab-master"], "Id": "b" * 64, "State": "running", "Status": "Up 2 hours",
         "Labels": {"infra.cluster": "lab", "infra.role": "master"}},
        {"Names": ["/lab-broker"], "Id": "a" * 64, "State": "running", "Status": "Up 2 hours (healthy)",
         "Labels": {"infra.cluster": "lab", "infra.role": "broker"}},
    ]
    assert [(c.name, c.role) for c in parse_container_list(listed)] == [("lab-broker", "broker"), ("lab-master", "master")]


NOW = datetime(2026, 11, 22, 2, 45, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("since, seconds_back", [
    ("10m", 600), ("2h", 7200), ("30s", 30), ("1.5h", 5400), ("500ms", 0.5), ("0s", 0),
])
def test_since_takes_durations_back_from_now(since, seconds_back):
    assert since_timestamp(since, NOW) == pytest.approx(NOW.timestamp() - seconds_back)


# BUG (Python 3.10 only, which pyproject allows): infra/workflows/logs.py since_timestamp hands the
# text to datetime.fromisoformat, which before 3.11 rejects "Z", "+0100" and fractions other than 3
# or 6 digits, so `--since 2025-01-31T12:00:00Z` fails with "not a valid date or time" although the
# pattern admits it. Fix: normalise as parse_docker_time does (Z -> +00:00, +HHMM -> +HH:MM, the
# fraction padded to 6 digits) before fromisoformat.
ON_310 = pytest.mark.xfail(sys.version_info < (3, 11), strict=True,
                           reason="BUG: datetime.fromisoformat of Python 3.10 rejects these forms")


@pytest.mark.parametrize("since, moment", [
    ("1706702400", 1_706_702_400.0),  # a bare number is a Unix time, as for docker logs
    ("1706702400.5", 1_706_702_400.5),
    ("2025-01-31T12:00:00+01:00", datetime(2025, 1, 31, 11, tzinfo=timezone.utc).timestamp()),
    pytest.param("2025-01-31T12:00:00Z", datetime(2025, 1, 31, 12, tzinfo=timezone.utc).timestamp(), marks=ON_310),
    pytest.param("2025-01-31T12:00:00+0100", datetime(2025, 1, 31, 11, tzinfo=timezone.utc).timestamp(), marks=ON_310),
    pytest.param("2025-01-31T12:00:00.5Z", datetime(2025, 1, 31, 12, 0, 0, 500000, tzinfo=timezone.utc).timestamp(),
                 marks=ON_310),
])
def test_since_takes_unix_times_and_times_with_a_zone(since, moment):
    assert since_timestamp(since, NOW) == moment


@pytest.mark.parametrize("since", ["2025-01-31", "2025-01-31T12:00:00", "2025-01-31 12:00"])
def test_since_without_a_zone_is_local_time(since):
    expected = datetime.fromisoformat(since.replace(" ", "T")).astimezone().timestamp()
    assert since_timestamp(since, NOW) == expected


def test_no_since_means_from_the_beginning():
    assert since_timestamp(None, NOW) is None


@pytest.mark.parametrize("since", ["yesterday", "10 m", "$(reboot)", "-1h", "10d", "2025-13-45", ""])
def test_since_refuses_anything_else(since):
    with pytest.raises(ConfigError, match="--since"):
        since_timestamp(since, NOW)


def test_tail_is_a_count_or_all():
    assert parse_tail("0") == "0" and parse_tail("all") == "all"
    for bad in ("-3", "ten", ""):
        with pytest.raises(ConfigError, match="--tail"):
            parse_tail(bad)


def test_timestamps_are_split_off_with_nanosecond_order():
    key, stamp, text = split_timestamp("2026-11-22T02:48:09.258645912Z [2026-11-22 02:48:09,218: INFO] ready")
    assert (key, stamp, text) == (("2026-11-22T02:48:09", 258645912), "2026-11-22T02:48:09.258645912Z",
                                  "[2026-11-22 02:48:09,218: INFO] ready")
    # Docker trims trailing zeros: .5Z is later than .123456789Z, though it sorts before as text.
    assert split_timestamp("2026-11-22T02:48:09.5Z a")[0] > split_timestamp("2026-11-22T02:48:09.123456789Z b")[0]
    assert split_timestamp("no time here") == (("", 0), "", "no time here")


def test_logs_of_several_hosts_are_merged_in_time_order_keeping_each_containers_order():
    blocks = {
        ("h2", "livem-worker-h2-1"): (FIXTURES / "docker_logs_livem-worker-h2-1.txt").read_text().splitlines(),
        ("h3", "livem-worker-h3-1"): (FIXTURES / "docker_logs_livem-worker-h3-1.txt").read_text().splitlines(),
    }
    merged = merge_logs(blocks)
    assert len(merged) == sum(len(lines) for lines in blocks.values())
    keys = [line.key for line in merged]
    assert keys == sorted(keys)
    assert {line.host for line in merged} == {"h2", "h3"}
    for (host, container), lines in blocks.items():
        assert [line.text for line in merged if line.container == container] == [split_timestamp(raw)[2] for raw in lines]


def test_each_log_line_is_prefixed_with_host_and_container():
    line = LogLine("h2", "livem-worker-h2-1", "[..: WARNING/ForkPoolWorker-1] LIVE-MARKER 7", "2026-11-22T02:48:09.5Z")
    assert format_log_line(line, 5, 20, timestamps=False) == "h2    livem-worker-h2-1    | [..: WARNING/ForkPoolWorker-1] LIVE-MARKER 7"
    assert format_log_line(line, 2, 17, timestamps=True) == \
        "h2 livem-worker-h2-1 | 2026-11-22T02:48:09.5Z [..: WARNING/ForkPoolWorker-1] LIVE-MARKER 7"


def test_a_followed_stream_asks_the_engine_for_new_lines_as_they_come():
    assert Logs("lab-worker-pi1-1", tail="10", follow=True).text() == \
        "docker logs --timestamps --tail 10 --follow lab-worker-pi1-1"


# --------------------------------------------------------------------------- run


def test_a_py_script_is_a_file_of_the_project_and_anything_else_a_module(cluster):
    assert script_command("scripts/report.py", cluster.project_dir) == ["scripts/report.py"]
    assert script_command("./scripts/../scripts/report.py", cluster.project_dir) == ["scripts/report.py"]
    assert script_command(str(cluster.project_dir / "scripts" / "report.py"), cluster.project_dir) == ["scripts/report.py"]
    assert script_command("wordcount.client", cluster.project_dir) == ["-m", "wordcount.client"]


@pytest.mark.parametrize("words, job", [
    (("wordcount.client", "--top", "5"), ("wordcount.client", ("--top", "5"))),
    (("python", "-m", "wordcount.client", "--top", "5"), ("wordcount.client", ("--top", "5"))),
    (("python3", "scripts/report.py", "-m", "x"), ("scripts/report.py", ("-m", "x"))),
    (("-m", "wordcount.client"), ("wordcount.client", ())),
    (("scripts/report.py", "python"), ("scripts/report.py", ("python",))),
])
def test_the_job_may_be_written_as_a_python_command(words, job):
    assert job_words(words[0], words[1:]) == job


def test_a_bare_python_names_no_job():
    with pytest.raises(ConfigError, match="name a script"):
        job_words("python", ())


@pytest.mark.parametrize("script, message", [
    ("../elsewhere.py", "is not inside the project folder"),
    ("/etc/evil.py", "is not inside the project folder"),
    ("scripts/missing.py", "no file scripts/missing.py in the project folder"),
    ("os; rm -rf /", "is neither a .py file of the project nor a module name"),
    ("-c", "is neither"),
    ("wordcount/client", "is neither"),
])
def test_scripts_outside_the_project_and_odd_names_are_refused(cluster, script, message):
    with pytest.raises(ConfigError, match=message):
        script_command(script, cluster.project_dir)


def test_the_job_runs_in_the_master_container_in_the_project_folder_with_its_args_unchanged():
    argv = run_job("lab", ["-m", "wordcount.client"], ("--top", "5", "--output", "out put/x.csv")).argv()
    assert argv[:5] == ["docker", "exec", "--workdir", "/project", "lab-master"]
    assert argv[5:7] == ["sh", "-c"] and PID_MARKER in argv[7]
    assert argv[8:] == ["infra-run", "python", "-m", "wordcount.client", "--top", "5", "--output", "out put/x.csv"]
    assert signal_job("lab", 42, "INT").argv() == ["docker", "exec", "lab-master", "kill", "-INT", "42"]
    assert signal_job("lab", 42, "0").argv() == ["docker", "exec", "lab-master", "kill", "-0", "42"]


def test_the_wrapper_tells_its_pid_then_becomes_the_job():
    argv = run_job("lab", ["-c", "import os, sys; print(os.getpid()); sys.exit(4)"], ()).argv()
    wrapper_and_job = argv[argv.index("sh"):]
    job = subprocess.run([*wrapper_and_job[:-3], "python3", *wrapper_and_job[-2:]], capture_output=True, text=True)
    assert job.returncode == 4
    assert job.stderr.strip() == f"{PID_MARKER}{job.stdout.strip()}"


def test_output_files_that_are_new_or_differ_come_back_and_nothing_outside_the_folder():
    local = {"same.csv": LocalFile("same.csv", "1" * 64, 3, 0o644),
             "old.csv": LocalFile("old.csv", "2" * 64, 3, 0o644),
             "only-here.csv": LocalFile("only-here.csv", "4" * 64, 3, 0o644)}
    remote = {"same.csv": "1" * 64, "old.csv": "3" * 64, "new/deep.csv": "5" * 64, "../escape": "6" * 64,
              "/abs": "7" * 64, "a/../../b": "8" * 64, "a//b": "9" * 64, "": "0" * 64}
    assert plan_fetch(remote, local) == ["new/deep.csv", "old.csv"]


def list_output_here(folder: Path) -> str:
    """`list_output`'s script run with this Python on a folder standing for the container's output folder."""
    return subprocess.run([sys.executable, "-c", LIST_OUTPUT, str(folder)], capture_output=True, text=True,
                          check=True).stdout


def fetch_here(folder: Path, names: list[str]) -> bytes:
    encoded = subprocess.run([sys.executable, "-c", FETCH_OUTPUT, str(folder), json.dumps(names)],
                             capture_output=True, check=True).stdout
    return base64.b64decode(encoded)


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def job_output(tmp_path):
    """An output folder as a hostile job leaves it: files, odd names, links to a secret and to a folder, a fifo."""
    secret = write(tmp_path / "home" / ".ssh", "id_ed25519", "PRIVATE KEY\n")
    out = tmp_path / "host-output"
    write(out, "wordcount.csv", "word,count\nthe,941\n")
    write(out, "sub dir/-odd name.txt", "odd")
    write(out, "new\nline\\name.txt", "nl")
    write(out, "run.sh", "echo hi\n").chmod(0o777)
    write(out, "open.txt", "o").chmod(0o666)
    os.symlink(secret, out / "leak.txt")
    os.symlink(secret.parent, out / "ssh")
    os.mkfifo(out / "a fifo")
    return out, secret


def test_the_output_listing_holds_regular_files_only_never_what_a_link_points_to(job_output):
    out, secret = job_output
    listing = parse_sha256_list(list_output_here(out))
    assert listing == {"wordcount.csv": digest("word,count\nthe,941\n"), "sub dir/-odd name.txt": digest("odd"),
                       "new\nline\\name.txt": digest("nl"), "run.sh": digest("echo hi\n"), "open.txt": digest("o")}


def test_the_output_fetch_sends_regular_files_with_modes_0644_or_0755_and_skips_links(job_output):
    out, _ = job_output
    data = fetch_here(out, ["wordcount.csv", "run.sh", "open.txt", "leak.txt", "ssh/id_ed25519", "a fifo"])
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert sorted(members) == ["open.txt", "run.sh", "wordcount.csv"]
    assert {name: m.mode for name, m in members.items()} == {"open.txt": 0o644, "run.sh": 0o755, "wordcount.csv": 0o644}
    assert all(m.isfile() for m in members.values())


def test_fetched_files_land_in_the_output_folder_with_0644_or_0755_whatever_the_hosts_mode(job_output, tmp_path):
    out, _ = job_output
    remote = parse_sha256_list(list_output_here(out))
    local = tmp_path / "project" / "output"
    (tmp_path / "project").mkdir()
    wanted = plan_fetch(remote, {})
    fetched = unpack_files(fetch_here(out, wanted), local, {rel: remote[rel] for rel in wanted})
    assert sorted(fetched.files) == sorted(remote) and fetched.refused == []
    assert fetched.bytes == sum(len(p.read_bytes()) for p in local.rglob("*") if p.is_file())
    assert (local / "wordcount.csv").read_text() == "word,count\nthe,941\n"
    assert (local / "sub dir" / "-odd name.txt").read_text() == "odd"
    assert (local / "run.sh").stat().st_mode & 0o7777 == 0o755
    assert (local / "open.txt").stat().st_mode & 0o7777 == 0o644
    assert not (local / "leak.txt").exists() and not (local / "ssh").exists()


def gz_tar(members: list[tuple[str, bytes | str]]) -> bytes:
    """A tar.gz of regular files (bytes) and symbolic links (str: the target)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in members:
            info = tarfile.TarInfo(name)
            if isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content
                tar.addfile(info)
            else:
                info.size, info.mode = len(content), 0o777
                tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def test_a_file_whose_content_is_not_the_one_listed_is_refused(tmp_path):
    data = gz_tar([("a.txt", b"swapped in after the listing")])
    fetched = unpack_files(data, tmp_path / "output", {"a.txt": digest("listed")})
    assert fetched.files == [] and fetched.refused == ["a.txt (not the content listed: changed while it was fetched)"]
    assert not (tmp_path / "output" / "a.txt").exists()


@pytest.mark.parametrize("planted", ["file link", "folder link", "link on the way"])
def test_a_local_link_is_never_written_through(tmp_path, planted):
    victim = write(tmp_path / "elsewhere", "victim.txt", "precious")
    local = tmp_path / "output"
    local.mkdir()
    rel = {"file link": "a.txt", "folder link": "d/a.txt", "link on the way": "d/e/a.txt"}[planted]
    if planted == "file link":
        os.symlink(victim, local / "a.txt")
    elif planted == "folder link":
        os.symlink(victim.parent, local / "d")
    else:
        (local / "d").mkdir()
        os.symlink(victim.parent, local / "d" / "e")
    fetched = unpack_files(gz_tar([(rel, b"from the job")]), local, {rel: digest("from the job")})
    assert fetched.files == [] and len(fetched.refused) == 1
    assert sorted(p.name for p in victim.parent.iterdir()) == ["victim.txt"] and victim.read_text() == "precious"


def test_an_output_folder_that_is_a_link_here_gets_nothing(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, tmp_path / "output")
    with pytest.raises(InfraError, match="symbolic link"):
        unpack_files(gz_tar([("a.txt", b"x")]), tmp_path / "output", {"a.txt": digest("x")})
    assert list(elsewhere.iterdir()) == []


def test_unpacking_ignores_members_that_were_not_asked_for_links_and_climbing_names(tmp_path):
    data = gz_tar([("../evil.txt", b"hi"), ("ok.txt", b"hi"), ("link", "/etc/passwd"), ("./extra.txt", b"hi")])
    target = tmp_path / "output"
    wanted = {"ok.txt": digest("hi"), "link": digest("hi"), "../evil.txt": digest("hi")}
    fetched = unpack_files(data, target, wanted)
    assert (fetched.files, fetched.bytes) == (["ok.txt"], 2)
    assert sorted(p.name for p in target.iterdir()) == ["ok.txt"]
    assert not (tmp_path / "evil.txt").exists()


# --------------------------------------------------------------------------- command line


@pytest.mark.parametrize("command", ["status", "sync-files", "logs", "run"])
def test_every_live_command_has_help_with_an_example(command):
    from click.testing import CliRunner

    from infra.cli import main

    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0 and "Example:" in result.output


def test_status_help_documents_the_exit_codes_and_the_json_shape():
    from click.testing import CliRunner

    from infra.cli import main

    text = CliRunner().invoke(main, ["status", "--help"]).output
    for code in ("0  every expected", "3  something expected", "2  bad input"):
        assert code in text
    assert '"schema": "infra.status/1"' in text


def test_bad_input_exits_2(tmp_path):
    from click.testing import CliRunner

    from infra.cli import main

    missing = str(tmp_path / "none.yaml")
    assert CliRunner().invoke(main, ["status", "-f", missing]).exit_code == 2
    assert CliRunner().invoke(main, ["sync-files", "-f", missing]).exit_code == 2
    mistaken = CliRunner().invoke(main, ["logs", "-f", "cluster.yaml"])
    assert mistaken.exit_code == 2 and "--file cluster.yaml (here -f means --follow)" in mistaken.output


class ContainerStandIn:
    """`conn.engine.exec` of the output programs, run here on a folder standing for the container's output folder."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.host = type("H", (), {"name": "m1"})()
        self.engine = self
        self.ops = []

    def exec(self, op, timeout=None):
        from infra.transport.result import CommandResult
        self.ops.append(op)
        command = [sys.executable, *op.command[1:3], str(self.folder), *op.command[4:]]
        done = subprocess.run(command, capture_output=True, text=True)
        return CommandResult(done.returncode, done.stdout, done.stderr)


def test_infra_run_fetches_only_the_jobs_regular_files_and_writes_nothing_through_links_here(job_output, tmp_path):
    out, secret = job_output
    project = tmp_path / "project"
    (project / "output").mkdir(parents=True)
    victim = write(tmp_path / "mine", "notes.txt", "mine")
    os.symlink(victim, project / "output" / "wordcount.csv")  # planted here: not written through
    fetched = fetch_outputs(ContainerStandIn(out), "lab", project / "output")
    assert sorted(fetched.files) == ["new\nline\\name.txt", "open.txt", "run.sh", "sub dir/-odd name.txt"]
    assert fetched.refused == ["wordcount.csv (wordcount.csv is a symbolic link here: left as it is)"]
    assert victim.read_text() == "mine" and secret.read_text() == "PRIVATE KEY\n"
    assert not any("PRIVATE KEY" in p.read_text() for p in (project / "output").rglob("*")
                   if p.is_file() and not p.is_symlink())


def test_infra_run_writes_nothing_into_an_output_folder_that_is_a_link_here(job_output, tmp_path):
    out, _ = job_output
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "project").mkdir()
    os.symlink(elsewhere, tmp_path / "project" / "output")
    conn = ContainerStandIn(out)
    fetched = fetch_outputs(conn, "lab", tmp_path / "project" / "output")
    assert fetched.files == [] and "a symbolic link here" in fetched.refused[0]
    assert conn.ops == [] and list(elsewhere.iterdir()) == []
