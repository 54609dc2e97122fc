"""Run one command line on a worker and report it as events: the body of the `infra.run_command` task.

Kept apart from Celery (`tasks.py` is the thin task around it) so that it is tested with a
fake channel and real processes. The command is an argv list, never a shell string; it runs in
its own session (so a timeout or a cancel stops its whole process group), with stdout and
stderr merged in order, and its lines travel in batches: one Redis round trip per batch, not
per line, so a chatty script is not slowed down by its own output. Each attempt gets a fresh
folder of its own, `$INFRA_RUN_DIR` (`{run_dir}` in its command), whose files are packed and
sent to the driver when it ends, whatever its status (`artifacts`).
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import artifacts, protocol
from .gpu import GpuError, SlotLocks, cuda_visible_devices, gpu_slots, visible_gpu_count

BATCH_SECONDS = 0.1  # output lines wait at most this long to travel
BATCH_LINES = 500
MAX_LINE_CHARS = 65536  # longer lines are cut into pieces of this size
CHECK_SECONDS = 1.0  # how often a run asks whether it must stop
STOP_GRACE_SECONDS = 5.0  # between SIGTERM and SIGKILL
EXIT_GRACE_SECONDS = 1.0  # output still read after the process ended (children holding the pipe)


class Channel(Protocol):
    """Where a run reports to and asks whether to stop (Redis in the images, a fake in tests)."""

    def push(self, events: list[dict]) -> None: ...

    def should_stop(self) -> bool: ...

    def stop_reason(self, submission: str) -> str | None:
        """protocol.CANCELLED (the sweep stops), protocol.PRUNED (this run is given up), or None."""
        ...

    def already_done(self, submission: str) -> bool: ...

    def finish(self, submission: str, end: dict) -> None: ...

    def send_artifacts(self, submission: str, chunks: list[bytes]) -> None: ...


@dataclass(frozen=True)
class RunRequest:
    """One attempt of one combination, as the driver sends it (see `from_message`)."""

    sweep_id: str
    run: str  # the combination's id
    submission: str  # the Celery task id of this attempt
    argv: tuple[str, ...]
    cwd: str = "/project"
    env: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None
    gpus_per_task: int = 1
    artifact_limit: int = artifacts.DEFAULT_LIMIT_BYTES  # bytes of files brought back from $INFRA_RUN_DIR

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> "RunRequest":
        """A request from a payload `signing.verify_message` accepted (its fields and types are checked there)."""
        timeout = payload.get("timeout")
        return cls(
            sweep_id=payload["sweep_id"],
            run=payload["run"],
            submission=payload["submission"],
            argv=tuple(payload["argv"]),
            cwd=payload.get("cwd") or "/project",
            env=dict(payload.get("env") or {}),
            timeout=float(timeout) if timeout else None,
            gpus_per_task=int(payload.get("gpus_per_task", 1)),
            artifact_limit=int(payload.get("artifact_limit", artifacts.DEFAULT_LIMIT_BYTES)),
        )


# What a run gets of its worker's environment: the names below and those that start with a
# prefix below, nothing else. The worker's own environment holds the broker and Redis URLs with
# their passwords (from celery.env) and the paths of its secret files; a run's output travels to
# Redis, the log files and the CSV, so a run that prints its environment must show none of them.
PASSED_NAMES = frozenset({
    "PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM", "HOSTNAME", "USER", "LOGNAME",
    "VIRTUAL_ENV", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE", "PYTHONIOENCODING", "INFRA_CLUSTER",
})
PASSED_PREFIXES = ("LC_", "NVIDIA_")  # locales; the GPUs the container was given (docker --gpus)


def run_environment(worker_env: dict[str, str], request: RunRequest, cuda_devices: str | None = None) -> dict[str, str]:
    """The environment of a run: the allowed part of the worker's, the message's, then infra's own values."""
    env = {name: value for name, value in worker_env.items()
           if name in PASSED_NAMES or name.startswith(PASSED_PREFIXES)}
    env.update(request.env)
    env.update({"PYTHONUNBUFFERED": "1", "INFRA_RUN": request.run})
    if cuda_devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = cuda_devices
    return env


def _split_long(line: str) -> list[str]:
    if len(line) <= MAX_LINE_CHARS:
        return [line]
    return [line[i:i + MAX_LINE_CHARS] for i in range(0, len(line), MAX_LINE_CHARS)]


def _read_lines(stream, lines: "queue.Queue[str | None]") -> None:
    try:
        for raw in iter(stream.readline, b""):
            text = raw.decode("utf-8", errors="replace").rstrip("\n").rstrip("\r")
            for piece in _split_long(text):
                lines.put(piece)
    except (OSError, ValueError):
        pass  # the pipe was closed under us: the run is being stopped
    finally:
        lines.put(None)


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)  # the run is the leader of its own session
    except (ProcessLookupError, PermissionError):
        pass


def _exit_code(returncode: int) -> int:
    """As a shell reports it: a process killed by signal N ends with 128 + N."""
    return returncode if returncode >= 0 else 128 - returncode


@dataclass
class _Batcher:
    channel: Channel
    base: dict
    pending: list[str] = field(default_factory=list)
    since: float = 0.0

    def add(self, line: str) -> None:
        if not self.pending:
            self.since = time.monotonic()
        self.pending.append(line)
        if len(self.pending) >= BATCH_LINES:
            self.flush()

    def due(self) -> bool:
        return bool(self.pending) and time.monotonic() - self.since >= BATCH_SECONDS

    def flush(self) -> None:
        if self.pending:
            self.channel.push([{**self.base, "event": "lines", "lines": self.pending}])
            self.pending = []


def execute(request: RunRequest, channel: Channel, *, host: str, worker: str, redelivered: bool = False,
            dev_dir: str = "/dev", lock_dir: str = "/tmp", scratch: str = "/tmp") -> dict:
    """Run the request's command to its end and report it; returns the end event (or a skip).

    `redelivered`: the broker delivers this message again (the worker that had it was lost).
    `scratch`: where the attempt's own folder is made (the container's /tmp, a size-limited tmpfs).
    """
    base = {"run": request.run, "submission": request.submission}
    if channel.already_done(request.submission):
        return {**base, "event": "skip", "reason": "already done"}  # a second delivery of the same message
    if channel.should_stop():
        return {**base, "event": "skip", "reason": "the sweep was stopped"}

    held = None
    notes: list[str] = []
    try:
        slots = gpu_slots(visible_gpu_count(dev_dir), request.gpus_per_task)
    except GpuError as exc:
        return _fail_before_start(request, channel, base, host, worker, f"infra: {exc}", 1)
    if slots:
        held = SlotLocks(slots, lock_dir).acquire(
            channel.should_stop, on_wait=lambda: notes.append("infra: waiting for a free GPU"))
        if held is None:
            return {**base, "event": "skip", "reason": "the sweep was stopped"}
    gpus = cuda_visible_devices(held.devices) if held is not None else None
    env = run_environment(dict(os.environ), request, gpus)
    run_dir = None
    try:
        try:
            run_dir = artifacts.fresh_run_dir(scratch, request.submission)
        except OSError as exc:
            return _fail_before_start(request, channel, base, host, worker,
                                      f"infra: cannot make the run's folder in {scratch}: {exc.strerror or exc}", 1)
        env[artifacts.RUN_DIR_ENV] = run_dir
        return _run(request, channel, base, env, notes, host=host, worker=worker, redelivered=redelivered,
                    gpus=gpus or "", run_dir=run_dir)
    finally:
        if run_dir is not None:
            try:
                artifacts.remove_run_dir(run_dir)
            except OSError:
                pass  # scratch space: the container's tmpfs goes with it
        if held is not None:
            held.release()


def _fail_before_start(request: RunRequest, channel: Channel, base: dict, host: str, worker: str,
                       message: str, exit_code: int) -> dict:
    channel.push([{**base, "event": "start", "host": host, "worker": worker, "gpus": ""},
                  {**base, "event": "lines", "lines": [message]}])
    end = {**base, "event": "end", "status": protocol.FAILED, "exit_code": exit_code, "seconds": 0.0, "host": host}
    channel.finish(request.submission, end)
    return end


def _run(request: RunRequest, channel: Channel, base: dict, env: dict, notes: list[str], *,
         host: str, worker: str, gpus: str, redelivered: bool, run_dir: str) -> dict:
    start = {**base, "event": "start", "host": host, "worker": worker, "gpus": gpus}
    if redelivered:
        start["redelivered"] = True
    channel.push([start]
                 + ([{**base, "event": "lines", "lines": notes}] if notes else []))
    started = time.monotonic()
    try:
        process = subprocess.Popen(
            list(artifacts.with_run_dir(request.argv, run_dir)), cwd=request.cwd, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        return _not_started(request, channel, base, host, *_why_not_started(request.argv[0], exc))

    lines: "queue.Queue[str | None]" = queue.Queue()
    threading.Thread(target=_read_lines, args=(process.stdout, lines), daemon=True).start()
    batcher = _Batcher(channel, base)
    stopper = _Stopper(process, channel, deadline=started + request.timeout if request.timeout else None,
                       next_check=started + CHECK_SECONDS, submission=request.submission)
    _follow(process, lines, batcher, stopper)
    seconds = round(time.monotonic() - started, 3)
    batcher.flush()
    status, exit_code = _ending(request, batcher, stopper.reason, process.wait())
    batcher.flush()
    end = {**base, "event": "end", "status": status, "exit_code": exit_code, "seconds": seconds, "host": host,
           "artifacts": _send_artifacts(request, channel, run_dir)}
    channel.finish(request.submission, end)
    return end


def _send_artifacts(request: RunRequest, channel: Channel, run_dir: str) -> dict:
    """Pack the run's folder and send it in chunks, before the end event that announces them."""
    try:
        packed = artifacts.pack_run_folder(run_dir, request.artifact_limit)
    except OSError as exc:
        return {"chunks": 0, "error": f"the run's folder could not be read: {exc.strerror or exc}"}
    if not packed.files:  # nothing to bring back: no chunk at all (the listing of what was refused stays)
        return artifacts.announcement(packed, 0, request.artifact_limit)
    chunks = artifacts.split_chunks(packed.data)
    try:
        channel.send_artifacts(request.submission, chunks)
    except Exception as exc:  # Redis gone for longer than the channel waits: the end must still be told
        return {"chunks": 0, "error": f"the run's files could not be sent: {type(exc).__name__}"}
    return artifacts.announcement(packed, len(chunks), request.artifact_limit)


def _why_not_started(program: str, exc: OSError) -> tuple[str, int]:
    """The line a run that could not start reports, and its exit code (as a shell's)."""
    if isinstance(exc, FileNotFoundError):
        return f"infra: no such command: {program}", protocol.COMMAND_NOT_FOUND_EXIT_CODE
    if isinstance(exc, PermissionError):
        return f"infra: not executable: {program}", protocol.COMMAND_NOT_EXECUTABLE_EXIT_CODE
    # A missing working folder, an exec format error...
    return f"infra: cannot run {program}: {exc.strerror or exc}", protocol.COMMAND_NOT_EXECUTABLE_EXIT_CODE


@dataclass
class _Stopper:
    """Stops a run at its timeout or when the sweep is cancelled: SIGTERM to its process group,
    then SIGKILL if it is still there `STOP_GRACE_SECONDS` later."""

    process: subprocess.Popen
    channel: Channel
    deadline: float | None
    next_check: float  # the channel is asked every CHECK_SECONDS, not at every turn
    submission: str = ""
    reason: str | None = None  # protocol.TIMEOUT, CANCELLED or PRUNED, once stopped
    kill_at: float | None = None

    def check(self, now: float, reported: bool = False) -> None:
        """`reported`: lines were just sent. The driver decides early stopping on them, so the flag is
        asked then too: a pruned run stops before its next line, not up to CHECK_SECONDS later."""
        if self.reason is None:
            if self.deadline is not None and now >= self.deadline:
                self.reason = protocol.TIMEOUT
            elif now >= self.next_check or reported:
                self.next_check = now + CHECK_SECONDS
                self.reason = self.channel.stop_reason(self.submission)
            if self.reason is not None:
                _signal_group(self.process, signal.SIGTERM)
                self.kill_at = now + STOP_GRACE_SECONDS
        elif self.kill_at is not None and now >= self.kill_at:
            _signal_group(self.process, signal.SIGKILL)
            self.kill_at = None


def _take_lines(lines: "queue.Queue[str | None]", batcher: _Batcher) -> bool:
    """Batch the lines read so far, waiting up to BATCH_SECONDS for the first; False once the output is closed."""
    try:
        line = lines.get(timeout=BATCH_SECONDS)
        while line is not None:
            batcher.add(line)
            line = lines.get_nowait()  # whatever else is already there, without waiting
        return False
    except queue.Empty:
        return True


def _follow(process: subprocess.Popen, lines: "queue.Queue[str | None]", batcher: _Batcher,
            stopper: _Stopper) -> None:
    """Pass the output on and stop the run when it must, until the process ended and its output is read."""
    reading = True
    exited_at: float | None = None
    while reading or process.poll() is None:
        if reading:
            reading = _take_lines(lines, batcher)
        if not reading and process.poll() is None:
            # Output closed, the process not reaped yet (or still running): wait for it, not the
            # pipe, returning the moment it ends.
            try:
                process.wait(timeout=BATCH_SECONDS)
            except subprocess.TimeoutExpired:
                pass
        reported = batcher.due()
        if reported:
            batcher.flush()
        now = time.monotonic()
        stopper.check(now, reported)
        if process.poll() is not None and reading:
            # The process ended but something it started still holds the pipe: read a little
            # more, then stop the whole group so the run can end.
            exited_at = exited_at or now
            if now - exited_at > EXIT_GRACE_SECONDS:
                _signal_group(process, signal.SIGKILL)
                reading = False  # a process of another session may keep it: the reader is left to it


def _ending(request: RunRequest, batcher: _Batcher, stopped_for: str | None, returncode: int) -> tuple[str, int]:
    """The run's status and exit code; why infra stopped it, if it did, goes to its output."""
    if stopped_for == protocol.TIMEOUT:
        batcher.add(f"infra: stopped after the run's timeout of {request.timeout:g} s")
        return protocol.TIMEOUT, protocol.TIMEOUT_EXIT_CODE
    if stopped_for == protocol.CANCELLED:
        batcher.add("infra: stopped: the sweep was interrupted")
        return protocol.CANCELLED, _exit_code(returncode)
    if stopped_for == protocol.PRUNED:
        batcher.add("infra: stopped early: the sweep's pruner gave up on this run")
        return protocol.PRUNED, _exit_code(returncode)
    exit_code = _exit_code(returncode)
    return (protocol.OK if exit_code == 0 else protocol.FAILED), exit_code


def _not_started(request: RunRequest, channel: Channel, base: dict, host: str, message: str, exit_code: int) -> dict:
    channel.push([{**base, "event": "lines", "lines": [message]}])
    end = {**base, "event": "end", "status": protocol.FAILED, "exit_code": exit_code, "seconds": 0.0, "host": host}
    channel.finish(request.submission, end)
    return end


class RedisChannel:
    """The channel of one sweep in the cluster's Redis (the result backend)."""

    RETRY_SECONDS = 300.0  # a Redis restart is waited for; the run's report must not be lost

    def __init__(self, client, sweep_id: str):
        self.client = client
        self.sweep_id = sweep_id

    def _retrying(self, action):
        deadline = time.monotonic() + self.RETRY_SECONDS
        delay = 0.5
        while True:
            try:
                return action()
            except Exception:  # redis' ConnectionError, TimeoutError, BusyLoadingError...
                if time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def push(self, events: list[dict]) -> None:
        key = protocol.events_key(self.sweep_id)

        def send():
            pipe = self.client.pipeline(transaction=False)
            pipe.rpush(key, *(protocol.encode(event) for event in events))
            pipe.expire(key, protocol.KEYS_EXPIRE_SECONDS)
            pipe.execute()

        self._retrying(send)

    def should_stop(self) -> bool:
        cancel, alive = self._retrying(lambda: self.client.mget(
            protocol.cancel_key(self.sweep_id), protocol.alive_key(self.sweep_id)))
        return cancel is not None or alive is None

    def stop_reason(self, submission: str) -> str | None:
        # One MGET: a volunteer's Redis user may read these three keys and nothing else of the sweep.
        cancel, alive, stop = self._retrying(lambda: self.client.mget(
            protocol.cancel_key(self.sweep_id), protocol.alive_key(self.sweep_id),
            protocol.stop_key(self.sweep_id, submission)))
        if cancel is not None or alive is None:
            return protocol.CANCELLED
        return protocol.PRUNED if stop is not None else None

    def already_done(self, submission: str) -> bool:
        return bool(self._retrying(lambda: self.client.sismember(protocol.done_key(self.sweep_id), submission)))

    def send_artifacts(self, submission: str, chunks: list[bytes]) -> None:
        """Each chunk under its own key (a SET repeated after a lost reply does no harm), for the driver alone."""
        for number, chunk in enumerate(chunks):
            key = protocol.artifact_chunk_key(self.sweep_id, submission, number)
            self._retrying(lambda key=key, chunk=chunk: self.client.set(key, chunk, ex=protocol.ARTIFACT_EXPIRE_SECONDS))

    def finish(self, submission: str, end: dict) -> None:
        """The end event and the submission's place among the done ones, in one transaction."""
        events, done = protocol.events_key(self.sweep_id), protocol.done_key(self.sweep_id)

        def send():
            pipe = self.client.pipeline(transaction=True)
            pipe.rpush(events, protocol.encode(end))
            pipe.sadd(done, submission)
            pipe.expire(events, protocol.KEYS_EXPIRE_SECONDS)
            pipe.expire(done, protocol.KEYS_EXPIRE_SECONDS)
            pipe.execute()

        self._retrying(send)
