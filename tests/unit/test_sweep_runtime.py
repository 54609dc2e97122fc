"""What runs in the containers: GPU slots, the runner (real processes, a fake channel), the driver.

No GPU on the machines these tests run on: which devices a run gets is checked here, with a
fake /dev of NVIDIA device nodes; `docker run --gpus` itself is in test_sweep_workflow.py.
"""

from __future__ import annotations

import json
import re
import os
import sys
import threading
import time
from collections import defaultdict

import pytest

from infra.runtime import protocol, signing
from infra.runtime.command import MAX_LINE_CHARS, RedisChannel, RunRequest, execute
from infra.runtime.driver import Driver, Output, load_plan
from infra.runtime.gpu import (
    GpuError,
    SlotLocks,
    cuda_visible_devices,
    gpu_slots,
    visible_gpu_count,
)

PY = sys.executable
SIGNING_KEY, VERIFY_KEY = signing.key_pair_pem()  # made for these tests alone


# --------------------------------------------------------------------------- GPU slots


def test_slots_cut_the_devices_into_groups_of_the_tasks_size():
    assert gpu_slots(4, 1) == [(0,), (1,), (2,), (3,)]
    assert gpu_slots(4, 2) == [(0, 1), (2, 3)]
    assert gpu_slots(5, 2) == [(0, 1), (2, 3)]  # the fifth stays idle
    assert gpu_slots(3, 3) == [(0, 1, 2)]
    assert gpu_slots(0, 1) == [] and gpu_slots(4, 0) == []  # no GPU, or runs that share them
    with pytest.raises(GpuError, match="a run asks for 3 GPUs, this worker has 2"):
        gpu_slots(2, 3)
    assert cuda_visible_devices((2, 3)) == "2,3"


def test_the_gpus_of_a_container_are_its_nvidia_device_nodes(tmp_path):
    for name in ("nvidia0", "nvidia3", "nvidiactl", "nvidia-uvm", "nvidia-modeset", "null"):
        (tmp_path / name).touch()
    assert visible_gpu_count(str(tmp_path)) == 2
    assert visible_gpu_count(str(tmp_path / "missing")) == 0


def test_each_concurrent_run_holds_its_own_slot_and_a_released_slot_is_taken_again(tmp_path):
    locks = SlotLocks(gpu_slots(4, 2), str(tmp_path))
    first, second = locks.try_acquire(), locks.try_acquire()
    assert (first.devices, second.devices) == ((0, 1), (2, 3))
    assert locks.try_acquire() is None
    first.release()
    third = locks.try_acquire()
    assert third.devices == (0, 1)
    # A run asking for one GPU at a time never gets a device a two-GPU run holds.
    assert SlotLocks(gpu_slots(4, 1), str(tmp_path)).try_acquire() is None
    second.release()
    assert SlotLocks(gpu_slots(4, 1), str(tmp_path)).try_acquire().devices == (2,)


def test_slots_are_exclusive_across_processes_and_freed_when_a_holder_dies(tmp_path):
    script = ("import sys, time; sys.path.insert(0, sys.argv[1]); from infra.runtime.gpu import SlotLocks; "
              "held = SlotLocks([(0,), (1,)], sys.argv[2]).try_acquire(); print(held.devices, flush=True); "
              "time.sleep(60)")
    import subprocess
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    holder = subprocess.Popen([PY, "-c", script, repo, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "(0,)"
        mine = SlotLocks([(0,), (1,)], str(tmp_path)).try_acquire()
        assert mine.devices == (1,)
        assert SlotLocks([(0,), (1,)], str(tmp_path)).try_acquire() is None
    finally:
        holder.kill()
        holder.wait()
    assert SlotLocks([(0,), (1,)], str(tmp_path)).try_acquire().devices == (0,)


def test_waiting_for_a_slot_ends_when_the_sweep_stops(tmp_path):
    locks = SlotLocks([(0,)], str(tmp_path))
    held = locks.try_acquire()
    waits = []
    stop = iter([False, False, True])
    assert locks.acquire(lambda: next(stop), on_wait=lambda: waits.append(1), poll=0.01) is None
    assert waits == [1]
    held.release()
    assert locks.acquire(lambda: True).devices == (0,)


# --------------------------------------------------------------------------- the runner


class FakeChannel:
    def __init__(self, stop_after: float | None = None):
        self.events: list[dict] = []
        self.done: set[str] = set()
        self.pruned: set[str] = set()
        self.stop = False
        self.stop_at = None if stop_after is None else time.monotonic() + stop_after

    def push(self, events):
        self.events += events

    def should_stop(self):
        return self.stop or (self.stop_at is not None and time.monotonic() >= self.stop_at)

    def stop_reason(self, submission):
        if self.should_stop():
            return "cancelled"
        return "pruned" if submission in self.pruned else None

    def already_done(self, submission):
        return submission in self.done

    def finish(self, submission, end):
        self.events.append(end)
        self.done.add(submission)

    def lines(self):
        return [line for e in self.events if e["event"] == "lines" for line in e["lines"]]

    def kinds(self):
        return [e["event"] for e in self.events]


def request(argv, **kw) -> RunRequest:
    return RunRequest(sweep_id="s1", run="r1", submission="s1.r1.1", argv=tuple(argv), **kw)


def run(argv, channel=None, tmp_path=None, **kw):
    channel = channel or FakeChannel()
    kw.setdefault("cwd", str(tmp_path) if tmp_path else "/")
    end = execute(request(argv, **kw), channel, host="h2", worker="w-h2-1@h2", dev_dir="/nonexistent",
                  lock_dir=str(tmp_path or "/tmp"))
    return end, channel


def test_a_run_reports_its_start_its_lines_in_order_and_its_end(tmp_path):
    code = "import sys\nprint('one')\nsys.stderr.write('two\\n')\nprint('{\"acc\": 1}')\nsys.exit(3)\n"
    end, channel = run([PY, "-c", code], tmp_path=tmp_path)
    assert channel.events[0] == {"run": "r1", "submission": "s1.r1.1", "event": "start", "host": "h2",
                                 "worker": "w-h2-1@h2", "gpus": ""}
    assert channel.lines() == ["one", "two", '{"acc": 1}']
    assert end == channel.events[-1]
    assert (end["event"], end["status"], end["exit_code"], end["host"]) == ("end", "failed", 3, "h2")
    assert end["seconds"] >= 0 and channel.done == {"s1.r1.1"}


def test_a_run_gets_its_argv_as_given_its_folder_and_its_environment(tmp_path):
    code = "import sys, os, json; print(json.dumps([sys.argv[1:], os.getcwd(), os.environ.get('INFRA_RUN'), os.environ.get('INFRA_SWEEP'), 'CUDA_VISIBLE_DEVICES' in os.environ]))"
    end, channel = run([PY, "-c", code, "$(x)", "a b", "--"], tmp_path=tmp_path, env={"INFRA_SWEEP": "demo"})
    assert end["status"] == "ok"
    assert json.loads(channel.lines()[0]) == [["$(x)", "a b", "--"], str(tmp_path), "r1", "demo", False]


def test_many_lines_travel_in_few_batches_and_long_lines_are_cut(tmp_path):
    code = f"print('x' * {MAX_LINE_CHARS * 2 + 5})\nfor i in range(3000): print(i)\n"
    _, channel = run([PY, "-c", code], tmp_path=tmp_path)
    lines = channel.lines()
    assert [len(line) for line in lines[:3]] == [MAX_LINE_CHARS, MAX_LINE_CHARS, 5]
    assert lines[3:] == [str(i) for i in range(3000)]
    assert channel.kinds().count("lines") < 100


def test_a_run_past_its_timeout_is_stopped_with_its_whole_process_group(tmp_path):
    marker = tmp_path / "child-alive"
    code = (f"import subprocess, time\nsubprocess.Popen(['sh', '-c', 'sleep 3; touch {marker}'])\n"
            "print('working', flush=True)\ntime.sleep(60)\n")
    started = time.monotonic()
    end, channel = run([PY, "-c", code], tmp_path=tmp_path, timeout=1.0)
    assert time.monotonic() - started < 10
    assert (end["status"], end["exit_code"]) == ("timeout", 124)
    assert channel.lines()[0] == "working"
    assert channel.lines()[-1] == "infra: stopped after the run's timeout of 1 s"
    time.sleep(3.5)
    assert not marker.exists()  # the child it started was stopped too


def test_a_cancelled_sweep_stops_its_running_runs(tmp_path):
    end, channel = run([PY, "-c", "import time; print('go', flush=True); time.sleep(60)"],
                       channel=FakeChannel(stop_after=0.5), tmp_path=tmp_path)
    assert end["status"] == "cancelled" and end["exit_code"] == 128 + 15
    assert channel.lines()[-1] == "infra: stopped: the sweep was interrupted"


def test_a_run_that_ignores_sigterm_is_killed_after_the_grace(tmp_path, monkeypatch):
    monkeypatch.setattr("infra.runtime.command.STOP_GRACE_SECONDS", 0.5)
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('x', flush=True); time.sleep(60)"
    started = time.monotonic()
    end, _ = run([PY, "-c", code], tmp_path=tmp_path, timeout=0.5)
    assert end["status"] == "timeout" and time.monotonic() - started < 10


def test_a_run_whose_child_keeps_the_output_open_still_ends(tmp_path):
    started = time.monotonic()
    end, channel = run(["sh", "-c", "sleep 30 & echo parent done"], tmp_path=tmp_path)
    assert end["status"] == "ok" and channel.lines() == ["parent done"]
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("name, mode, code, line", [
    ("no-such-command-xyz", None, 127, "infra: no such command: no-such-command-xyz"),
    ("data.txt", 0o644, 126, "infra: not executable: ./data.txt"),
    ("garbage.bin", 0o755, 126, "infra: cannot run ./garbage.bin: Exec format error"),
])
def test_a_command_that_cannot_start_is_a_failed_run_that_says_why(tmp_path, name, mode, code, line):
    argv = [name]
    if mode is not None:
        (tmp_path / name).write_bytes(b"\x00\x01 not a program")
        (tmp_path / name).chmod(mode)
        argv = [f"./{name}"]
    end, channel = run(argv, tmp_path=tmp_path)
    assert (end["status"], end["exit_code"]) == ("failed", code)
    assert channel.lines() == [line]
    assert channel.kinds() == ["start", "lines", "end"]


def test_a_second_delivery_and_a_stopped_sweep_run_nothing(tmp_path):
    channel = FakeChannel()
    channel.done.add("s1.r1.1")
    end, _ = run([PY, "-c", "open('ran', 'w')"], channel=channel, tmp_path=tmp_path)
    assert end == {"run": "r1", "submission": "s1.r1.1", "event": "skip", "reason": "already done"}
    channel = FakeChannel()
    channel.stop = True
    end, _ = run([PY, "-c", "open('ran', 'w')"], channel=channel, tmp_path=tmp_path)
    assert end["event"] == "skip" and channel.events == []
    assert not (tmp_path / "ran").exists()


def gpu_dev(tmp_path, count):
    dev = tmp_path / "dev"
    dev.mkdir()
    for i in range(count):
        (dev / f"nvidia{i}").touch()
    (dev / "nvidiactl").touch()
    return str(dev)


def test_concurrent_runs_on_a_gpu_worker_each_get_their_own_devices(tmp_path):
    dev, locks = gpu_dev(tmp_path, 4), tmp_path / "locks"
    locks.mkdir()
    code = "import os, time; print(os.environ['CUDA_VISIBLE_DEVICES'], flush=True); time.sleep(1)"
    seen: list[str] = []
    gpus: list[str] = []

    def one(i):
        channel = FakeChannel()
        execute(RunRequest("s", f"r{i}", f"s.r{i}.1", (PY, "-c", code), cwd=str(tmp_path), gpus_per_task=2),
                channel, host="g", worker="w@g", dev_dir=dev, lock_dir=str(locks))
        seen.extend(channel.lines())
        gpus.append(channel.events[0]["gpus"])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(seen) == ["0,1", "2,3"] and sorted(gpus) == ["0,1", "2,3"]


def test_a_run_waits_for_a_free_gpu_and_says_so(tmp_path):
    dev, locks = gpu_dev(tmp_path, 1), tmp_path / "locks"
    locks.mkdir()
    held = SlotLocks([(0,)], str(locks)).try_acquire()
    threading.Timer(1.0, held.release).start()
    channel = FakeChannel()
    end = execute(request([PY, "-c", "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"], cwd=str(tmp_path)),
                  channel, host="g", worker="w@g", dev_dir=dev, lock_dir=str(locks))
    assert end["status"] == "ok"
    assert channel.lines() == ["infra: waiting for a free GPU", "0"]


def test_a_run_asking_for_more_gpus_than_its_worker_has_fails_and_says_so(tmp_path):
    channel = FakeChannel()
    end = execute(request(["true"], cwd=str(tmp_path), gpus_per_task=2), channel, host="g", worker="w@g",
                  dev_dir=gpu_dev(tmp_path, 1), lock_dir=str(tmp_path))
    assert (end["status"], end["exit_code"]) == ("failed", 1)
    assert channel.lines() == ["infra: a run asks for 2 GPUs, this worker has 1"]


def test_a_worker_without_gpus_sets_no_cuda_devices(tmp_path):
    channel = FakeChannel()
    execute(request([PY, "-c", "import os; print(os.environ.get('CUDA_VISIBLE_DEVICES', 'unset'))"], cwd=str(tmp_path)),
            channel, host="c", worker="w@c", dev_dir=str(tmp_path), lock_dir=str(tmp_path))
    assert channel.lines() == ["unset"]


def test_a_signed_payload_from_the_driver_becomes_a_request():
    payload = {"sweep_id": "s", "run": "r", "submission": "s.r.1", "argv": ["python", "t.py", "1"], "cwd": "/project",
               "timeout": 30, "gpus_per_task": 2, "env": {"INFRA_SWEEP": "x"}}
    req = RunRequest.from_payload(payload)
    assert req == RunRequest("s", "r", "s.r.1", ("python", "t.py", "1"), "/project", {"INFRA_SWEEP": "x"}, 30.0, 2)
    assert RunRequest.from_payload({**payload, "timeout": None}).timeout is None


# --------------------------------------------------------------------------- the driver


class FakeRedis:
    """The few Redis commands the driver and the runner's channel use."""

    def __init__(self):
        self.lists: dict[str, list[str]] = defaultdict(list)
        self.values: dict[str, str] = {}
        self.sets: dict[str, set] = defaultdict(set)
        self.deleted: list[str] = []
        self.on_pop = None  # called before each blpop: the test's "workers" push events there

    def set(self, key, value, ex=None):
        self.values[key] = value

    def mget(self, *keys):
        return [self.values.get(k) for k in keys]

    def delete(self, *keys):
        self.deleted += keys
        for key in keys:
            self.lists.pop(key, None)
            self.values.pop(key, None)
            self.sets.pop(key, None)

    def blpop(self, keys, timeout=0):
        if self.on_pop:
            self.on_pop()
        for key in keys:
            if self.lists.get(key):
                return key, self.lists[key].pop(0)
        return None

    def lpop(self, key, count=None):
        items = self.lists.get(key) or []
        taken, self.lists[key] = items[:count], items[count:]
        return taken or None

    def rpush(self, key, *values):
        self.lists[key] += list(values)

    def sadd(self, key, value):
        self.sets[key].add(value)

    def sismember(self, key, value):
        return value in self.sets[key]

    def expire(self, key, seconds):
        pass

    def pipeline(self, transaction=True):
        redis = self

        class Pipe:
            def __init__(self):
                self.calls = []

            def __getattr__(self, name):
                return lambda *a, **k: self.calls.append((name, a, k))

            def execute(self):
                return [getattr(redis, name)(*a, **k) for name, a, k in self.calls]

        return Pipe()


class FakeSender:
    def __init__(self):
        self.sent: list[tuple[str, dict, str]] = []
        self.revoked: list[str] = []

    def send(self, submission, message, queue):
        """Kept as the payload a worker would accept: the driver's signature is checked here."""
        payload = signing.verify_message(message, VERIFY_KEY.encode(), submission=submission, now=time.time())
        self.sent.append((submission, payload, queue))

    def revoke(self, submissions):
        self.revoked += submissions


class Lines:
    def __init__(self):
        self.lines: list[str] = []

    def write(self, text):
        self.lines += text.splitlines()

    def flush(self):
        pass

    def events(self):
        return [protocol.parse_event_line(line) for line in self.lines if protocol.parse_event_line(line)]


def make_driver(runs=2, retries=0):
    plan = {"format": protocol.PLAN_FORMAT, "sweep_id": "sw", "name": "demo", "queue": "celery", "retries": retries,
            "message": {"cwd": "/project", "timeout": None, "gpus_per_task": 1, "env": {}},
            "runs": [{"run": f"r{i}", "argv": ["job", str(i)]} for i in range(1, runs + 1)]}
    redis, sender, out = FakeRedis(), FakeSender(), Lines()
    return Driver(plan, redis, sender, Output(out), SIGNING_KEY.encode(), new_nonce=lambda: "n"), redis, sender, out


def worker_reports(redis, sender, outcome):
    """A fake cluster: each submission sent is run at the next pop, ending with `outcome(message)`."""
    channel = RedisChannel(redis, "sw")
    handled = set()

    def work():
        for submission, message, _ in list(sender.sent):
            if submission in handled:
                continue
            handled.add(submission)
            base = {"run": message["run"], "submission": submission}
            channel.push([{**base, "event": "start", "host": "h1", "worker": "w@h1", "gpus": ""},
                          {**base, "event": "lines", "lines": [f"output of {submission}"]}])
            status, code = outcome(message, submission)
            channel.finish(submission, {**base, "event": "end", "status": status, "exit_code": code,
                                        "seconds": 0.1, "host": "h1"})
    redis.on_pop = work


def test_the_driver_sends_every_run_relays_its_events_and_cleans_up():
    driver, redis, sender, out = make_driver(runs=2)
    worker_reports(redis, sender, lambda message, submission: ("ok", 0))
    assert driver.run() == 0
    assert [(s, m["argv"], q) for s, m, q in sender.sent] == [("sw.r1.1.n", ["job", "1"], "celery"),
                                                               ("sw.r2.1.n", ["job", "2"], "celery")]
    first = dict(sender.sent[0][1])
    issued, expires = first.pop("issued"), first.pop("expires")
    assert first == {"cwd": "/project", "timeout": None, "gpus_per_task": 1, "env": {}, "format": signing.FORMAT,
                     "task": protocol.TASK_NAME, "sweep_id": "sw", "run": "r1", "submission": "sw.r1.1.n",
                     "argv": ["job", "1"]}
    assert abs(issued - time.time()) < 60 and expires == pytest.approx(issued + signing.LIFETIME_SECONDS)
    kinds = [(e["event"], e.get("run")) for e in out.events()]
    assert kinds == [("submitted", None), ("start", "r1"), ("lines", "r1"), ("end", "r1"),
                     ("start", "r2"), ("lines", "r2"), ("end", "r2"), ("finished", None)]
    ends = [e for e in out.events() if e["event"] == "end"]
    assert all(e["final"] and e["attempt"] == 1 for e in ends)
    assert protocol.events_key("sw") in redis.deleted and protocol.cancel_key("sw") in redis.deleted


def test_a_failed_run_is_sent_again_while_it_has_retries_then_recorded():
    driver, redis, sender, out = make_driver(runs=1, retries=2)
    worker_reports(redis, sender, lambda message, submission: ("failed", 3))
    assert driver.run() == 0
    assert [s for s, _, _ in sender.sent] == ["sw.r1.1.n", "sw.r1.2.n", "sw.r1.3.n"]
    ends = [(e["attempt"], e["final"]) for e in out.events() if e["event"] == "end"]
    assert ends == [(1, False), (2, False), (3, True)]
    assert [e["attempt"] for e in out.events() if e["event"] == "retry"] == [2, 3]


def test_a_retry_that_succeeds_ends_the_run():
    driver, redis, sender, out = make_driver(runs=1, retries=3)
    worker_reports(redis, sender, lambda message, submission: ("ok", 0) if submission.endswith(".2.n") else ("timeout", 124))
    assert driver.run() == 0
    assert [s for s, _, _ in sender.sent] == ["sw.r1.1.n", "sw.r1.2.n"]


def test_reports_of_an_earlier_attempt_or_a_second_end_are_ignored():
    driver, redis, sender, out = make_driver(runs=1)
    channel = RedisChannel(redis, "sw")

    def work():
        if redis.on_pop is None:
            return
        redis.on_pop = None
        channel.push([{"run": "r1", "submission": "sw.r1.0.n", "event": "start", "host": "old"},
                      {"run": "r1", "submission": "sw.r1.1.n", "event": "start", "host": "h1"}])
        channel.finish("sw.r1.1.n", {"run": "r1", "submission": "sw.r1.1.n", "event": "end", "status": "ok",
                                   "exit_code": 0, "seconds": 1, "host": "h1"})
        channel.finish("sw.r1.1.n", {"run": "r1", "submission": "sw.r1.1.n", "event": "end", "status": "failed",
                                   "exit_code": 1, "seconds": 1, "host": "h9"})

    redis.on_pop = work
    assert driver.run() == 0
    relayed = [(e["event"], e.get("host")) for e in out.events() if e["event"] in ("start", "end")]
    assert relayed == [("start", "h1"), ("end", "h1")]


def test_an_interrupted_driver_cancels_revokes_the_queued_runs_and_relays_the_stopped_ones():
    driver, redis, sender, out = make_driver(runs=3)
    channel = RedisChannel(redis, "sw")
    step = {"n": 0}

    def work():
        step["n"] += 1
        if step["n"] == 1:  # r1 starts, then Ctrl-C
            channel.push([{"run": "r1", "submission": "sw.r1.1.n", "event": "start", "host": "h1"}])
            driver.interrupted = True
        elif redis.values.get(protocol.cancel_key("sw")) and step["n"] < 10:  # the runner sees the flag
            channel.finish("sw.r1.1.n", {"run": "r1", "submission": "sw.r1.1.n", "event": "end", "status": "cancelled",
                                       "exit_code": 143, "seconds": 1, "host": "h1"})
            redis.on_pop = None

    redis.on_pop = work
    assert driver.run() == 130
    assert sender.revoked == ["sw.r2.1.n", "sw.r3.1.n"]
    kinds = [e["event"] for e in out.events()]
    assert kinds == ["submitted", "start", "cancelling", "end", "finished"]
    cancelling = out.events()[2]
    assert (cancelling["queued"], cancelling["running"]) == (2, 1)
    assert out.events()[-1] == {"event": "finished", "interrupted": True}
    assert protocol.cancel_key("sw") not in redis.deleted  # late deliveries must still see it


def test_the_driver_warns_when_no_run_starts():
    driver, redis, sender, out = make_driver(runs=1)
    now = {"t": 0.0}
    driver.clock = lambda: now["t"]

    def tick():
        now["t"] += 30
        if now["t"] > 200:
            driver.interrupted = True

    redis.on_pop = tick
    assert driver.run() == 130
    warnings = [e["text"] for e in out.events() if e["event"] == "warning"]
    assert warnings == ["no run has started within 60 s: does a worker consume the queue 'celery'? "
                        "(`infra status` lists the workers and queues; workers started before `infra sweep` "
                        "existed need `infra up`; a worker without the cluster's run key refuses every run: "
                        "`infra logs` shows 'refused')"]


def test_the_driver_refuses_a_plan_of_another_version(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"format": "infra.sweep-plan/999"}))
    with pytest.raises(ValueError, match="is not a sweep plan of this version"):
        load_plan(str(path))


def test_event_lines_and_notes_are_told_apart():
    line = protocol.event_line({"event": "end", "run": "r", "text": "é\n"})
    assert "\n" not in line
    assert protocol.parse_event_line(line) == {"event": "end", "run": "r", "text": "é\n"}
    assert protocol.parse_event_line("a note") is None
    assert protocol.parse_event_line(protocol.EVENT_MARKER + "[1]") is None
    assert protocol.parse_event_line(protocol.EVENT_MARKER + "{broken") is None


# --------------------------------------------------------------------------- the task on either app


def test_the_runner_task_joins_a_projects_own_app_and_the_built_in_one(tmp_path):
    """What `celery -A tasks worker --include infra_runtime.tasks` does: the task is on the project's app."""
    import subprocess

    (tmp_path / "tasks.py").write_text("from celery import Celery\napp = Celery('project')\n")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    code = (
        "import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
        "from celery.app.utils import find_app\n"
        "app = find_app('tasks')\n"
        "import importlib; importlib.import_module('infra.runtime.tasks')\n"  # what --include does
        "task = app.tasks['infra.run_command']\n"
        "print(task.acks_late, task.reject_on_worker_lost, task.ignore_result)\n"
        "from infra.runtime.app import app as builtin\n"
        "print('infra.run_command' in builtin.tasks, builtin.conf.worker_prefetch_multiplier, builtin.conf.broker_heartbeat)\n"
    )
    done = subprocess.run([PY, "-c", code, str(tmp_path), repo], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["True True True", "True 1 10"]


def test_a_redelivered_run_says_so_when_it_starts(tmp_path):
    channel = FakeChannel()
    execute(request(["true"], cwd=str(tmp_path)), channel, host="h2", worker="w@h2", redelivered=True,
            dev_dir=str(tmp_path), lock_dir=str(tmp_path))
    assert channel.events[0]["redelivered"] is True
    _, plain = run(["true"], tmp_path=tmp_path)
    assert "redelivered" not in plain.events[0]


def test_submission_ids_carry_a_fresh_nonce_so_a_volunteer_cannot_work_out_another_runs_id():
    plan = {"format": protocol.PLAN_FORMAT, "sweep_id": "sw", "name": "demo", "queue": "celery", "retries": 1,
            "message": {"cwd": "/project", "timeout": None, "gpus_per_task": 1, "env": {}},
            "runs": [{"run": f"r{i}", "argv": ["job", str(i)]} for i in range(1, 4)]}
    redis, sender = FakeRedis(), FakeSender()
    driver = Driver(plan, redis, sender, Output(Lines()), SIGNING_KEY.encode())  # the real nonce
    worker_reports(redis, sender, lambda message, submission: ("failed", 1))
    assert driver.run() == 0
    ids = [s for s, _, _ in sender.sent]
    assert len(ids) == 6 and len(set(ids)) == 6
    for submission, payload, _ in sender.sent:
        prefix, nonce = submission.rsplit(".", 1)
        assert prefix.startswith(f"sw.{payload['run']}.") and re.fullmatch(r"[0-9a-f]{16}", nonce)
    # An id guessed from what a volunteer sees (sweep, run, attempt) is none of them.
    assert not {f"sw.r{i}.{a}" for i in range(1, 4) for a in (1, 2)} & set(ids)
