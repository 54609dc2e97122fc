"""`infra status`, `sync-files`, `logs` and `run` on the real testbed, against a running cluster.

The master runs on h1, one worker container on each of h2, h3 and `local`. The project is a
copy of projects/wordcount in a temporary folder (the tests change its task code). The tests run
in file order and share the cluster, as a user would: look at it, run a job, change the code,
read the logs, and finally break it (a stopped worker, a stopped host) and look again.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.e2e.clients import celery_client, default_sigint
from tests.e2e.test_cluster import TEST_IMAGES, WHEELHOUSE

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CLUSTER = "live"
CONNECT_TIMEOUT = 5
# What `status` may take beyond the connect timeout: starting Python and asking the hosts that
# do answer (docker inspect, the Celery probe, rabbitmqctl), all at once.
STATUS_ALLOWANCE = 10
PORTS = {"broker": 5673, "results": 6380, "flower": 5556}  # not those of the other e2e clusters
WORKERS = [f"{CLUSTER}-worker-h2-1@h2", f"{CLUSTER}-worker-h3-1@h3", f"{CLUSTER}-worker-local-1@local"]


def infra(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run the real command line, as a user would."""
    return subprocess.run([sys.executable, "-m", "infra", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)


def started_at(testbed, host: str, container: str) -> str:
    argv = ["docker", "inspect", "--format", "{{.State.StartedAt}}", container]
    if host == "local":
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()
    return testbed.exec(host, argv)


@pytest.fixture(scope="module")
def live(testbed, tmp_path_factory):
    """A running cluster on a copy of the word-count project; removed at the end whatever happens."""
    assert WHEELHOUSE.is_dir(), "run scripts/make-wheelhouse.sh first (scripts/run-tests.sh does)"
    folder = tmp_path_factory.mktemp("live")
    project = folder / "wordcount"
    shutil.copytree(REPO / "projects" / "wordcount", project,
                    ignore=shutil.ignore_patterns("__pycache__", "output", "*.pyc"))
    h1, h2, h3 = testbed.docker_hosts[:3]
    spec = {
        "name": CLUSTER,
        "hosts": testbed.cluster_hosts([h1, h2, h3]),
        "project": {"path": str(project), "app": "wordcount", "remote_path": "infra-live"},
        "roles": {
            "master": {"host": h1.name},
            "workers": [{"host": name, "containers": 1, "concurrency": 1} for name in (h2.name, h3.name, "local")],
        },
        "ports": PORTS,
        "images": TEST_IMAGES,
        "ssh": {"connect_timeout": CONNECT_TIMEOUT, "known_hosts": str(testbed.known_hosts_path)},
        "timeouts": {"workers": 120},
        "state_dir": str(folder / "state"),
    }
    cluster_file = folder / "cluster.yaml"
    cluster_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    info = {"file": str(cluster_file), "project": project, "state": folder / "state" / CLUSTER,
            "master": h1.address, "testbed": testbed}
    try:
        result = infra("up", "-f", str(cluster_file))
        assert result.returncode == 0, f"infra up failed:\n{result.stdout}\n{result.stderr}"
        yield info
    finally:
        testbed.heal()
        infra("clean", "-f", str(cluster_file), "--files", "--volumes")


def celery_app(live):
    return celery_client(live["state"], live["master"], CLUSTER, broker_port=PORTS["broker"],
                         results_port=PORTS["results"])


def count_words_everywhere(live, chunks: int = 12) -> list[dict]:
    """Results of count_words tasks, enough of them that every worker takes some."""
    app = celery_app(live)
    try:
        jobs = [app.signature("wordcount.count_words", args=(f"live test {i} live",)).apply_async() for i in range(chunks)]
        return [job.get(timeout=60) for job in jobs]
    finally:
        app.close()


# --------------------------------------------------------------------------- status


def test_status_of_a_healthy_cluster_exits_0_and_lists_every_worker(live):
    started = time.monotonic()
    result = infra("status", "-f", live["file"], "--json")
    took = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert (data["schema"], data["ok"], data["exit_code"], data["problems"]) == ("infra.status/1", True, 0, [])
    assert {w["name"]: w["online"] for w in data["workers"]} == {name: True for name in WORKERS}
    assert all(h["reachable"] and h["docker"] for h in data["hosts"])
    assert sorted(c["name"] for c in data["containers"]) == sorted(
        [f"{CLUSTER}-{role}" for role in ("broker", "results", "master", "flower")] + [w.split("@")[0] for w in WORKERS])
    assert all(c["state"] == "running" and c["uptime_seconds"] is not None for c in data["containers"])
    assert any(q["name"] == "celery" and q["consumers"] == 3 for q in data["queues"])
    # Not published: Flower listens on the master's loopback (`infra flower` forwards it here).
    assert (data["flower_url"], data["flower_published"]) == (f"https://127.0.0.1:{PORTS['flower']}", False)
    print(f"status of a healthy cluster: {took:.1f} s")

    table = infra("status", "-f", live["file"])
    assert table.returncode == 0, table.stdout + table.stderr
    for name in WORKERS:
        assert name in table.stdout
    assert table.stdout.strip().endswith("all running")


# --------------------------------------------------------------------------- run


def test_run_of_the_word_count_client_prints_the_result_and_its_csv_arrives(live):
    csv = live["project"] / "output" / "wordcount.csv"
    assert not csv.exists()
    result = infra("run", "-f", live["file"], "wordcount.client", "--top", "3", "--verify")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6000 words" in result.stdout and "verified" in result.stdout
    assert "all counts written to output/wordcount.csv" in result.stdout
    assert "fetched 1 output file(s)" in result.stderr
    lines = csv.read_text().splitlines()
    assert lines[0] == "word,count" and lines[1].startswith("the,")
    assert len(lines) > 100


def test_run_returns_the_scripts_exit_code_and_streams_both_outputs(live):
    script = live["project"] / "scripts" / "fail.py"
    script.parent.mkdir(exist_ok=True)
    script.write_text("import sys\nprint('to stdout', sys.argv[1:])\nprint('to stderr', file=sys.stderr)\nsys.exit(7)\n")
    try:
        assert infra("sync-files", "-f", live["file"], "--hosts", "h1").returncode == 0
        result = infra("run", "-f", live["file"], "scripts/fail.py", "--flag", "x y")
        assert result.returncode == 7, result.stdout + result.stderr
        assert result.stdout.strip() == "to stdout ['--flag', 'x y']"
        assert "to stderr" in result.stderr and "__infra_run_pid__" not in result.stderr
    finally:
        shutil.rmtree(script.parent)


# --------------------------------------------------------------------------- sync-files


def test_changed_task_code_is_live_after_sync_files_and_only_hosts_that_needed_it_restart(live, testbed):
    tasks = live["project"] / "wordcount" / "tasks.py"
    code = tasks.read_text()
    new_code = code.replace(
        '    counts = text.count_words(chunk)\n    return {\n',
        '    counts = text.count_words(chunk)\n    print(f"LIVE-MARKER {len(counts)} words")\n    return {\n        "version": 2,\n',
    )
    assert new_code != code
    tasks.write_text(new_code)
    workers = {"h2": f"{CLUSTER}-worker-h2-1", "h3": f"{CLUSTER}-worker-h3-1", "local": f"{CLUSTER}-worker-local-1"}
    before = {host: started_at(testbed, host, name) for host, name in workers.items()}

    # One host first: only its worker restarts.
    result = infra("sync-files", "-f", live["file"], "--hosts", "h2", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    (h2,) = json.loads(result.stdout)["hosts"]
    assert (h2["host"], h2["sent"], h2["bytes_sent"], h2["deleted"]) == ("h2", ["wordcount/tasks.py"], len(new_code.encode()), [])
    assert 0 < h2["wire_bytes"] < 20_000
    assert h2["restarted"] == [workers["h2"]]
    after_one = {host: started_at(testbed, host, name) for host, name in workers.items()}
    assert after_one["h2"] != before["h2"]
    assert (after_one["h3"], after_one["local"]) == (before["h3"], before["local"])

    # Then everyone: h2 is already up to date and is left alone.
    result = infra("sync-files", "-f", live["file"])
    assert result.returncode == 0, result.stdout + result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert "sent 1 file(s)" in lines["h1"] and "restarted" not in lines["h1"]
    assert "up to date" in lines["h2"] and "restarted" not in lines["h2"]
    assert f"sent 1 file(s), {len(new_code.encode())} bytes" in lines["h3"] and f"restarted {workers['h3']}" in lines["h3"]
    assert "used in place" in lines["local"] and f"restarted {workers['local']}" in lines["local"]
    assert "2 restarted worker(s) answer again" in result.stdout
    after_all = {host: started_at(testbed, host, name) for host, name in workers.items()}
    assert after_all["h2"] == after_one["h2"]
    assert after_all["h3"] != before["h3"] and after_all["local"] != before["local"]

    results = count_words_everywhere(live)
    assert {r.get("version") for r in results} == {2}
    assert len({r["worker"] for r in results}) >= 2

    # Nothing changed since: nothing is sent and nobody restarts.
    again = infra("sync-files", "-f", live["file"], "--json")
    assert again.returncode == 0, again.stdout + again.stderr
    outcome = json.loads(again.stdout)
    assert all(not h["sent"] and not h["restarted"] for h in outcome["hosts"])
    assert outcome["restarted_workers_answer"] is None


def test_a_file_deleted_locally_disappears_on_the_hosts(live, testbed):
    extra = live["project"] / "wordcount" / "extra_module.py"
    extra.write_text("VALUE = 1\n")
    result = infra("sync-files", "-f", live["file"], "--no-restart")
    assert result.returncode == 0, result.stdout + result.stderr
    remote = f"/root/infra-live/{CLUSTER}/wordcount/wordcount/extra_module.py"
    for host in ("h1", "h2", "h3"):
        assert testbed.exec(host, f"cat {remote}") == "VALUE = 1"
    extra.unlink()
    result = infra("sync-files", "-f", live["file"], "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    outcome = {h["host"]: h for h in json.loads(result.stdout)["hosts"]}
    for host in ("h1", "h2", "h3"):
        assert outcome[host]["deleted"] == ["wordcount/extra_module.py"] and outcome[host]["sent"] == []
        assert testbed.exec_result(host, f"test -e {remote}").returncode == 1
    # The workers never ran the extra module's version: back to the code they run, no restart.
    assert all(not h["restarted"] for h in outcome.values())


# --------------------------------------------------------------------------- logs


def test_logs_show_a_line_a_task_printed_prefixed_with_its_host(live):
    results = count_words_everywhere(live)
    hosts_used = {r["worker"].rsplit("@", 1)[1] for r in results}
    result = infra("logs", "--file", live["file"], "worker", "-n", "300")
    assert result.returncode == 0, result.stdout + result.stderr
    marked = [line for line in result.stdout.splitlines() if "LIVE-MARKER" in line]
    for host in hosts_used:
        container = f"{CLUSTER}-worker-{host}-1"
        assert any(line.split()[:3] == [host, container, "|"] for line in marked), (host, marked[-5:])
    assert not any(f"{CLUSTER}-broker" in line.split("|")[0] for line in result.stdout.splitlines())


def test_logs_follow_all_hosts_at_once_until_interrupted(live):
    follow = subprocess.Popen([sys.executable, "-m", "infra", "logs", "--file", live["file"], "worker", "-f", "-n", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                              preexec_fn=default_sigint)
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(follow.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        time.sleep(3)  # the streams are open
        results = count_words_everywhere(live)
        hosts_used = {r["worker"].rsplit("@", 1)[1] for r in results}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if hosts_used <= {line.split()[0] for line in list(seen) if "LIVE-MARKER" in line}:
                break
            time.sleep(0.5)
        assert hosts_used <= {line.split()[0] for line in list(seen) if "LIVE-MARKER" in line}, seen[-10:]
        stopped = time.monotonic()
        follow.send_signal(signal.SIGINT)
        assert follow.wait(timeout=20) == 0
        assert time.monotonic() - stopped < 10
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()


# --------------------------------------------------------------------------- a broken cluster


def test_status_names_a_stopped_worker_and_a_stopped_host_and_exits_3_within_the_connect_timeout(live, testbed):
    testbed.exec("h2", f"docker stop {CLUSTER}-worker-h2-1")
    testbed.stop("h3")
    try:
        started = time.monotonic()
        result = infra("status", "-f", live["file"], "--json", timeout=120)
        took = time.monotonic() - started
        assert result.returncode == 3, result.stdout + result.stderr
        assert took < CONNECT_TIMEOUT + STATUS_ALLOWANCE, f"status took {took:.1f} s"
        data = json.loads(result.stdout)
        assert not data["ok"] and data["exit_code"] == 3
        assert any(p.startswith("h3: unreachable") for p in data["problems"]), data["problems"]
        assert f"{CLUSTER}-worker-h2-1 on h2: exited, exit code 0" in data["problems"]
        hosts = {h["name"]: h for h in data["hosts"]}
        assert not hosts["h3"]["reachable"] and hosts["h1"]["reachable"] and hosts["local"]["reachable"]
        online = {w["name"]: w["online"] for w in data["workers"]}
        assert online == {WORKERS[0]: False, WORKERS[1]: False, WORKERS[2]: True}
        print(f"status of a degraded cluster: {took:.1f} s (connect timeout {CONNECT_TIMEOUT} s)")

        table = infra("status", "-f", live["file"], timeout=120)
        assert table.returncode == 3
        assert "UNREACHABLE" in table.stdout and "EXITED" in table.stdout
        assert "2 problem(s):" in table.stdout and "Traceback" not in table.stderr
    finally:
        testbed.heal()
        testbed.exec("h2", f"docker start {CLUSTER}-worker-h2-1")


def test_status_of_a_hung_host_reports_it_within_the_connect_timeout(live, testbed):
    testbed.pause("h2")  # TCP still connects, nothing answers
    try:
        started = time.monotonic()
        result = infra("status", "-f", live["file"], "--json", timeout=120)
        took = time.monotonic() - started
        assert result.returncode == 3, result.stdout + result.stderr
        assert took < CONNECT_TIMEOUT + STATUS_ALLOWANCE, f"status took {took:.1f} s"
        data = json.loads(result.stdout)
        assert [p for p in data["problems"] if p.startswith("h2:")] == [data["problems"][0]]
        assert "unreachable" in data["problems"][0]
        assert {h["name"]: h["reachable"] for h in data["hosts"]} == {"h1": True, "h2": False, "h3": True, "local": True}
        print(f"status with a hung host: {took:.1f} s (connect timeout {CONNECT_TIMEOUT} s)")
    finally:
        testbed.heal()
