"""`infra sweep`'s side in the master container, next to the broker and Redis.

    python -m infra_runtime.driver PLAN.json

Sends one `infra.run_command` task per combination of the plan, each signed with the master's
run key (`signing`: workers run nothing else), then relays what the runs report (see
`protocol`) as lines on stdout, which `infra sweep` reads through the engine's exec
and turns into live output, log files and the CSV. It decides only what needs the cluster:
resubmitting a failed run while it has retries left, and, on SIGINT or SIGTERM, stopping the
sweep: the cancel flag makes queued runs skip and running ones stop, queued tasks are also
revoked, and the ends of the stopped runs are relayed before it exits with 130.

If its own output stops being read for `STALLED_OUTPUT_SECONDS` (the CLI's connection is gone),
it stops the sweep too, and exits: nobody would record the results.

With a `study` in the plan (`study.StudyBook`: an Optuna search, or early stopping), each run is a
trial: its lines are reported to the pruner as they come, and a run the pruner gives up gets its
stop flag (`protocol.stop_key`), which its worker reads before its next line. An Optuna search
has no list of runs: the driver asks the study for a trial whenever fewer than `in_flight` runs
are out, sends it, and tells the study its result when it ends, until the budget is spent.

A run's end announces the files it left in its folder (`artifacts`); for the attempt that counts
the driver takes their chunks from Redis, checks them against the announcement and writes the
archive into `artifacts_folder` of the output folder, then relays an `artifacts` event (with a
warning when the run's folder held links or more than its limit) before the run's end.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from . import artifacts, protocol, signing
from .arguments import parameter_args, trial_run_id

ALIVE_REFRESH_SECONDS = 10.0
NO_START_WARNING_SECONDS = 60.0
CANCEL_GRACE_SECONDS = 20.0  # the runs' own stop takes up to runner.STOP_GRACE_SECONDS + a check
STALLED_OUTPUT_SECONDS = 120.0
POP_TIMEOUT_SECONDS = 1
POP_BATCH = 1000
INTERRUPTED_EXIT_CODE = 130


class Sender(Protocol):
    def send(self, submission: str, message: dict, queue: str) -> None: ...

    def revoke(self, submissions: list[str]) -> None: ...


class CelerySender:
    """Tasks through the broker, with the built-in app's settings (JSON messages)."""

    def __init__(self, app):
        self.app = app

    def send(self, submission: str, message: dict, queue: str) -> None:
        self.app.send_task(protocol.TASK_NAME, args=[message], task_id=submission, queue=queue)

    def revoke(self, submissions: list[str]) -> None:
        if submissions:
            self.app.control.revoke(submissions)


class Output:
    """Event lines on stdout, with a watchdog for a reader that went away."""

    def __init__(self, stream=None, on_stalled: Callable[[], None] | None = None,
                 stalled_after: float = STALLED_OUTPUT_SECONDS):
        self.stream = stream or sys.stdout
        self.busy_since: float | None = None
        self.lock = threading.Lock()
        if on_stalled is not None:
            def watch() -> None:
                while True:
                    time.sleep(5)
                    since = self.busy_since
                    if since is not None and time.monotonic() - since > stalled_after:
                        on_stalled()
                        return

            threading.Thread(target=watch, name="output watchdog", daemon=True).start()

    def event(self, event: dict) -> None:
        self.write(protocol.event_line(event))

    def write(self, line: str) -> None:
        with self.lock:
            self.busy_since = time.monotonic()
            try:
                self.stream.write(line + "\n")
                self.stream.flush()
            finally:
                self.busy_since = None


@dataclass
class RunState:
    run: str
    attempts: int = 0
    submission: str = ""
    started: bool = False
    finished: bool = False


@dataclass
class Driver:
    plan: dict
    redis: Any
    sender: Sender
    output: Output
    signing_key: bytes  # the master's run signing key (PEM): workers run only what it signed
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time  # issue and expiry of the signed messages
    new_nonce: Callable[[], str] = protocol.new_nonce  # the unguessable part of each submission id
    runs: dict[str, RunState] = field(default_factory=dict)
    interrupted: bool = False
    book: Any = None  # the study.StudyBook of a plan with a study (opened in `run`)

    @property
    def sweep_id(self) -> str:
        return self.plan["sweep_id"]

    def _message(self, run: str, submission: str, argv: list[str]) -> dict:
        """The signed message of one attempt: every field that decides what runs is in its payload."""
        settings = self.plan.get("message", {})
        payload = signing.new_payload({
            "sweep_id": self.sweep_id, "run": run, "submission": submission, "argv": list(argv),
            "cwd": settings.get("cwd") or "/project", "env": dict(settings.get("env") or {}),
            "timeout": settings.get("timeout"), "gpus_per_task": int(settings.get("gpus_per_task", 1)),
        }, now=self.wall_clock())
        if "artifact_limit" in settings:
            payload["artifact_limit"] = int(settings["artifact_limit"])
        return signing.sign_message(payload, self.signing_key)

    def _submit(self, state: RunState, argv: list[str]) -> None:
        state.attempts += 1
        state.submission = protocol.submission_id(self.sweep_id, state.run, state.attempts, self.new_nonce())
        state.started = False
        self.sender.send(state.submission, self._message(state.run, state.submission, argv), self.plan["queue"])

    def _refresh_alive(self) -> None:
        self.redis.set(protocol.alive_key(self.sweep_id), "1", ex=protocol.ALIVE_SECONDS)

    # ------------------------------------------------------------------ the sweep

    def _open_study(self) -> None:
        if self.book is None and self.plan.get("study"):
            from .study import StudyBook

            self.book = StudyBook.open(self.plan["study"])

    def run(self) -> int:
        self._refresh_alive()
        self._open_study()
        if (self.plan.get("search") or {}).get("kind") == "optuna":
            return self.run_search()
        argv_of = {run["run"]: run["argv"] for run in self.plan["runs"]}
        last_refresh = self.clock()
        for run in self.plan["runs"]:
            if self.interrupted:
                break
            state = self.runs[run["run"]] = RunState(run["run"])
            self._submit(state, run["argv"])
            if self.clock() - last_refresh > ALIVE_REFRESH_SECONDS:
                self._refresh_alive()
                last_refresh = self.clock()
        self.output.event({"event": "submitted", "count": len(self.runs)})
        submitted_at = self.clock()
        warned = False
        while True:
            if self.interrupted:
                return self.cancel()
            for event in self._pop():
                self._handle(event, argv_of)
            if self._finished_if_all_ended():
                return 0
            now = self.clock()
            last_refresh = self._refresh_alive_if_due(last_refresh, now)
            if (not warned and now - submitted_at > NO_START_WARNING_SECONDS
                    and not any(s.started or s.finished for s in self.runs.values())):
                warned = True
                self.output.event({"event": "warning", "text": (
                    f"no run has started within {NO_START_WARNING_SECONDS:g} s: does a worker consume the queue "
                    f"'{self.plan['queue']}'? (`infra status` lists the workers and queues; workers started "
                    "before `infra sweep` existed need `infra up`; a worker without the cluster's run key "
                    "refuses every run: `infra logs` shows 'refused')")})

    def run_search(self) -> int:
        """An Optuna search: ask, send, tell, with at most `in_flight` runs out at a time."""
        search = self.plan["search"]
        command = list(search["command"])
        budget = int(search["trials"])
        in_flight = max(1, int(search.get("in_flight", 1)))
        done_before = self.book.finished_count()
        to_ask = max(0, budget - done_before)
        self.output.event({"event": "study", "done": done_before, "to_run": to_ask})
        argv_of: dict[str, list[str]] = {}
        asked = 0
        last_refresh = self.clock()
        while True:
            if self.interrupted:
                return self.cancel()
            running = sum(1 for state in self.runs.values() if not state.finished)
            while asked < to_ask and running < in_flight and not self.interrupted:
                trial, params = self.book.ask()
                argv = [*command, *parameter_args(params)]
                run = trial_run_id(argv, trial.number)
                argv_of[run] = argv
                state = self.runs[run] = RunState(run)
                self.book.begin(run, trial)
                self.output.event({"event": "trial", "run": run, "index": trial.number + 1,
                                   "params": [[name, value] for name, value in params], "argv": argv})
                self._submit(state, argv)
                asked += 1
                running += 1
            for event in self._pop():
                self._handle(event, argv_of)
            if asked >= to_ask and self._finished_if_all_ended():
                return 0
            last_refresh = self._refresh_alive_if_due(last_refresh, self.clock())

    def _finished_if_all_ended(self) -> bool:
        """When every run has ended: say so, clean up the sweep's keys, and True."""
        if not all(state.finished for state in self.runs.values()):
            return False
        self.output.event({"event": "finished", "interrupted": False})
        self._clean_up(keep_cancel=False)
        return True

    def _refresh_alive_if_due(self, last_refresh: float, now: float) -> float:
        """Refresh the alive flag when it is due; when it was last refreshed."""
        if now - last_refresh > ALIVE_REFRESH_SECONDS:
            self._refresh_alive()
            return now
        return last_refresh

    def _prune(self, state: RunState, step: int) -> None:
        """The pruner gave up on this run: its worker stops it before its next line."""
        self.redis.set(protocol.stop_key(self.sweep_id, state.submission), "1", ex=protocol.KEYS_EXPIRE_SECONDS)
        self.output.event({"event": "pruning", "run": state.run, "step": step})

    def _pop(self) -> list[dict]:
        key = protocol.events_key(self.sweep_id)
        first = self.redis.blpop([key], timeout=POP_TIMEOUT_SECONDS)
        if not first:
            return []
        raw = [first[1]] + list(self.redis.lpop(key, POP_BATCH) or [])
        events = []
        for item in raw:
            try:
                event = json.loads(item)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
        return events

    def _handle(self, event: dict, argv_of: dict[str, list[str]]) -> None:
        state = self.runs.get(str(event.get("run")))
        kind = event.get("event")
        if state is None or state.finished or kind == "skip":
            return  # a late report of a run already recorded, or one of another attempt
        if event.get("submission") != state.submission:
            return  # an earlier attempt that still talks (its host came back): the current one counts
        if kind == "start":
            state.started = True
            if self.book is not None:
                self.book.begin(state.run)
            self.output.event({**event, "attempt": state.attempts})
        elif kind == "lines":
            self.output.event(event)
            if self.book is not None:
                step = self.book.feed(state.run, list(event.get("lines") or []))
                if step is not None:
                    self._prune(state, step)
        elif kind == "end":
            status = event.get("status")
            retry = (status in (protocol.FAILED, protocol.TIMEOUT) and not self.interrupted
                     and state.attempts <= int(self.plan.get("retries", 0)))
            self._take_artifacts(state, event.get("artifacts"), final=not retry)
            self.output.event({**event, "attempt": state.attempts, "final": not retry})
            if retry:
                self._submit(state, argv_of[state.run])
                self.output.event({"event": "retry", "run": state.run, "attempt": state.attempts})
            else:
                state.finished = True
                if self.book is not None:
                    self.book.end(state.run, str(status))

    def _take_artifacts(self, state: RunState, info: Any, final: bool) -> None:
        """Put the run's archive together from its chunks and keep it (final attempt) or drop it (retried)."""
        if not isinstance(info, dict):
            return  # a worker that predates artifacts, or a run that never started
        try:
            chunks = max(0, int(info.get("chunks") or 0))
        except (TypeError, ValueError):
            chunks = 0
        limit = int(self.plan.get("message", {}).get("artifact_limit", artifacts.DEFAULT_LIMIT_BYTES))
        most = artifacts.max_archive_bytes(limit) // artifacts.CHUNK_BYTES + 1
        keys = [protocol.artifact_chunk_key(self.sweep_id, state.submission, n) for n in range(min(chunks, most))]
        event: dict = {"event": "artifacts", "run": state.run, "path": None, "files": 0, "bytes": 0}
        problems = [artifacts.warning_text(info) or ""]
        if not final:
            if keys:
                self.redis.delete(*keys)
            return
        folder = self.plan.get("artifacts_folder")
        if chunks > most:
            problems.append(f"the run announced {chunks} chunks of files, more than its limit allows: none kept")
        elif keys:
            data = b"".join(self._chunk(key) for key in keys)
            if hashlib.sha256(data).hexdigest() != info.get("sha256"):
                problems.append("the run's files did not arrive whole: none kept")
            elif folder:
                name = f"{state.run}.tar.gz"
                try:
                    artifacts.write_archive(self.plan.get("artifacts_output") or "/output",
                                            [*folder.split("/"), name], data)
                    event.update(path=f"{folder}/{name}", sha256=info.get("sha256"),
                                 files=int(info.get("files") or 0), bytes=int(info.get("bytes") or 0))
                except (OSError, ValueError) as exc:
                    problems.append(f"the run's files could not be written on the master: "
                                    f"{getattr(exc, 'strerror', None) or exc}")
        if keys:
            self.redis.delete(*keys)
        warning = "; ".join(problem for problem in problems if problem)
        if warning:
            event["warning"] = warning
        if event["path"] or warning:
            self.output.event(event)

    def _chunk(self, key: str) -> bytes:
        value = self.redis.get(key)
        if value is None:
            return b""
        return value if isinstance(value, bytes) else str(value).encode("latin-1")

    def cancel(self) -> int:
        """Stop the sweep: nothing queued runs any more, running runs stop; relay their ends."""
        self.redis.set(protocol.cancel_key(self.sweep_id), "1", ex=protocol.KEYS_EXPIRE_SECONDS)
        queued = [s.submission for s in self.runs.values() if not s.finished and not s.started]
        running = [s for s in self.runs.values() if not s.finished and s.started]
        self.output.event({"event": "cancelling", "queued": len(queued), "running": len(running)})
        try:
            self.sender.revoke(queued)
        except Exception as exc:  # the cancel flag alone makes them skip
            self.output.write(f"revoking the queued runs failed ({type(exc).__name__}); they will be skipped")
        argv_of: dict[str, list[str]] = {}
        deadline = self.clock() + CANCEL_GRACE_SECONDS
        while any(s.started and not s.finished for s in self.runs.values()) and self.clock() < deadline:
            for event in self._pop():
                self._handle(event, argv_of)
        if self.book is not None:  # runs stopped without an end: failed trials, not running ones
            for state in self.runs.values():
                if not state.finished:
                    self.book.end(state.run, protocol.CANCELLED)
        self.output.event({"event": "finished", "interrupted": True})
        self._clean_up(keep_cancel=True)
        return INTERRUPTED_EXIT_CODE

    def _clean_up(self, keep_cancel: bool) -> None:
        keys = [protocol.events_key(self.sweep_id), protocol.done_key(self.sweep_id), protocol.alive_key(self.sweep_id)]
        if not keep_cancel:  # after a Ctrl-C, late deliveries of queued runs must still see it
            keys.append(protocol.cancel_key(self.sweep_id))
        self.redis.delete(*keys)


def load_plan(path: str) -> dict:
    with open(path, encoding="utf-8") as handle:
        plan = json.load(handle)
    if not isinstance(plan, dict) or plan.get("format") != protocol.PLAN_FORMAT:
        raise ValueError(f"{path} is not a sweep plan of this version ({protocol.PLAN_FORMAT})")
    return plan


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m infra_runtime.driver PLAN.json", file=sys.stderr)
        return 2
    try:
        plan = load_plan(argv[0])
    except (OSError, ValueError) as exc:
        print(f"cannot read the sweep plan: {exc}", file=sys.stderr)
        return 2

    try:
        signing_key = signing.load_signing_key()
    except signing.RunRefused as exc:
        print(f"the sweep cannot sign its runs: {exc}", file=sys.stderr)
        return 2

    import redis

    from .app import app

    client = redis.Redis.from_url(os.environ["CELERY_RESULT_BACKEND"], socket_connect_timeout=10,
                                  socket_timeout=30, health_check_interval=30)

    def stalled() -> None:
        # The CLI no longer reads: stop the runs (nobody would record them) and go.
        try:
            client.set(protocol.cancel_key(plan["sweep_id"]), "1", ex=protocol.KEYS_EXPIRE_SECONDS)
        finally:
            os._exit(3)

    driver = Driver(plan, client, CelerySender(app), Output(on_stalled=stalled), signing_key)

    def interrupt(signum, frame) -> None:
        if driver.interrupted:
            raise SystemExit(INTERRUPTED_EXIT_CODE)  # a second Ctrl-C: stop waiting for the runs
        driver.interrupted = True

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        return driver.run()
    except (redis.RedisError, OSError) as exc:
        print(f"the sweep lost the cluster's broker or Redis: {type(exc).__name__}: {exc}".splitlines()[0],
              file=sys.stderr)
        return 1
    except Exception as exc:  # kombu's OperationalError and the like: one line, not a traceback
        print(f"the sweep failed: {type(exc).__name__}: {exc}".splitlines()[0], file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
