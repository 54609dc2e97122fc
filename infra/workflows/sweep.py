"""`infra sweep`: one run of a command per combination of a parameters file, on the workers.

This machine decides and records; the cluster runs. `prepare_sweep` reads the parameters file
and the earlier results (`--resume`) and lists the runs, touching no host. `run_sweep` writes
the plan next to the project on the master host, starts the driver in the master container
through the engine's exec (as `infra run` starts a job, so the broker never has to be reached
from here, and Ctrl-C stops it the same way), and `SweepRecorder` turns the events the driver
relays into the live output, one log file per run and the CSV, written here as results come.
A sweep cut short (Ctrl-C, a lost connection) leaves a CSV whose rows are all complete, and
`--resume` runs what is missing. When the driver is done, the archives of the runs' own folders
(`$INFRA_RUN_DIR`) it kept on the master are fetched through the same exec as `infra run`'s
output files and unpacked into `output/sweep-NAME/runs/<index>/` (`bring_artifacts`).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import posixpath
import shlex
import tarfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable

from .. import confined
from ..commands.celery import CONTAINER_OUTPUT, CONTAINER_PROJECT, sweep_driver
from ..commands.files import fetch_output, write_file
from ..config import Cluster
from ..errors import ConfigError, ConnectError, InfraError, redact
from ..facts.files import OUTPUT_FOLDER
from ..facts.sections import last_line
from ..runtime import protocol
from ..runtime.artifacts import DEFAULT_LIMIT_BYTES, format_size
from ..sweep.artifacts import runs_folder, unpack_run_archive
from ..sweep.parameters import DEFAULT_MAX_COMBINATIONS, Grid, load_parameters
from ..sweep.plan import (
    Run,
    Selection,
    build_runs,
    runs_of,
    check_command,
    check_name,
    check_queue,
    default_name,
    driver_plan,
    select_runs,
)
from ..sweep.results import (
    MetricsReader,
    Outcome,
    SortSpec,
    best_rows,
    columns_of,
    csv_text,
    format_duration,
    outcome_row,
    progress_line,
    read_csv_rows,
    sort_column,
    table_lines,
)
from ..sweep.search import SearchOptions, Space, load_space, pruning_saved_seconds, random_trials
from ..transport.connection import Connection
from ..transport.pool import ConnectionPool
from .run_job import exec_job, master_ready
from .sweep_report import ReportRefresher

# Ctrl-C: the driver gets SIGINT and time to stop the runs and relay their ends, then harder signals.
DRIVER_STOP_SIGNALS: tuple[tuple[str, float], ...] = (("INT", 45.0), ("TERM", 10.0), ("KILL", 5.0))
ARTIFACTS_COLUMN = "artifacts"  # of a run's $INFRA_RUN_DIR: what came back, and any warning
CSV_WRITE_INTERVAL = 1.0  # seconds between rewrites of the CSV while results come in
FAILURES_LISTED = 10


@dataclass(frozen=True)
class SweepOptions:
    name: str | None = None
    resume: bool = False
    retries: int = 0
    timeout: float | None = None  # per run, seconds
    gpus_per_task: int = 1
    queue: str | None = None
    max_combinations: int = DEFAULT_MAX_COMBINATIONS
    sort: SortSpec | None = None
    top: int = 10
    search: SearchOptions = field(default_factory=SearchOptions)
    artifact_limit: int = DEFAULT_LIMIT_BYTES  # bytes of each run's $INFRA_RUN_DIR brought back


@dataclass
class SweepPlan:
    """What a sweep will do, decided here without contacting any host.

    An Optuna search has no runs yet: the driver makes them as the study asks for trials, and the
    recorder adds each (`trial` events) to `runs` and `selection.to_run`."""

    name: str
    parameters_file: Path
    grid: Grid | Space  # a grid's axes, or a search's distributions: both have names and describe()
    command: tuple[str, ...]
    runs: list[Run]
    selection: Selection
    queue: str
    output_dir: Path  # the local project's output/
    previous_rows: list[dict[str, str]]
    resumed_from: Path | None  # the CSV `--resume` read
    search: SearchOptions = field(default_factory=SearchOptions)
    in_flight: int = 1  # runs an Optuna search keeps out at once

    @property
    def total(self) -> int:
        """Runs of the whole sweep: a grid's combinations, a search's trials."""
        return self.search.trials if self.search.kind == "optuna" and self.search.trials else len(self.runs)

    @property
    def study_file(self) -> Path:
        return self.output_dir / f"sweep-{self.name}" / "study.journal"

    @property
    def csv_path(self) -> Path:
        return self.output_dir / f"sweep-{self.name}.csv"

    @property
    def logs_dir(self) -> Path:
        return self.output_dir / f"sweep-{self.name}" / "logs"

    def run_files(self, run: Run) -> str:
        """The run's own files (its $INFRA_RUN_DIR), relative to the output folder."""
        return f"{runs_folder(self.name)}/{run.index}"

    def log_path(self, run: Run) -> Path:
        return self.logs_dir / f"{run.index:04d}-{run.id}.log"

    def relative(self, path: Path) -> str:
        """A path under the project as the CSV and messages show it (output/...)."""
        try:
            return path.relative_to(self.output_dir.parent).as_posix()
        except ValueError:
            return str(path)


def queues_consumed(cluster: Cluster) -> list[str]:
    queues: list[str] = []
    for group in cluster.spec.roles.workers:
        if group.containers:
            queues += [queue for queue in group.queues if queue not in queues]
    return queues


def worker_processes(cluster: Cluster, queue: str) -> int:
    """The worker processes the cluster file gives the queue (a group without `concurrency`: one per container)."""
    return sum(group.containers * (group.concurrency or 1) for group in cluster.spec.roles.workers
               if queue in group.queues) or 1


def prepare_sweep(cluster: Cluster, parameters_file: str | Path, command: tuple[str, ...],
                  options: SweepOptions) -> SweepPlan:
    """Read the parameters file and earlier results, and list the runs (nothing is contacted)."""
    search = options.search.check(options.sort.metric if options.sort else None)
    name = check_name(options.name) if options.name else default_name(parameters_file)
    command = check_command(tuple(command), cluster.project_dir)
    queue = check_queue(options.queue, queues_consumed(cluster))
    space: Grid | Space
    if search.kind == "grid":
        space = load_parameters(parameters_file, options.max_combinations)
        runs = build_runs(space, command)
    else:
        space = load_space(parameters_file)
        runs = (runs_of(random_trials(space, search.trials or 0, search.effective_seed), command)
                if search.kind == "random" else [])
    output_dir = cluster.project_dir / OUTPUT_FOLDER
    plan = SweepPlan(name, Path(parameters_file), space, command, runs, Selection(list(runs), []), queue,
                     output_dir, [], None, search, worker_processes(cluster, queue))
    previous: list[dict[str, str]] = []
    if options.resume and plan.csv_path.is_file():
        try:
            previous = read_csv_rows(plan.csv_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ConfigError(f"--resume: cannot read {plan.csv_path}: {exc}") from None
        plan.resumed_from = plan.csv_path
    plan.previous_rows = previous
    plan.selection = select_runs(runs, {row["id"]: row.get("status", "") for row in previous}, options.resume)
    return plan


def search_description(plan: SweepPlan) -> str:
    """`random search, 16 trials (seed 0)`, ... ; empty for a grid without early stopping."""
    search = plan.search
    words = []
    if search.kind == "random":
        words.append(f"random search, {search.trials} trials (seed {search.effective_seed})")
    elif search.kind == "optuna":
        words.append(f"Optuna search, {search.trials} trials (sampler {search.sampler or 'tpe'}, seed "
                     f"{search.effective_seed}, {plan.in_flight} at a time), chosen as results come")
    if search.pruner != "none":
        words.append(f"early stopping: {search.pruner} pruner")
    return "; ".join(words)


def dry_run_lines(plan: SweepPlan) -> list[str]:
    total = len(plan.runs)
    described = search_description(plan)
    if plan.search.kind == "grid":
        lines = [f"sweep '{plan.name}' of {plan.parameters_file}: {total} combination{'s' if total != 1 else ''} "
                 f"({plan.grid.describe()}), queue '{plan.queue}'" + (f"; {described}" if described else "")]
    else:
        lines = [f"sweep '{plan.name}' of {plan.parameters_file}: {described} ({plan.grid.describe()}), "
                 f"queue '{plan.queue}'"]
    if plan.resumed_from is not None or plan.selection.done:
        lines.append(f"--resume: {len(plan.selection.done)} of {total} finished ok earlier "
                     f"({plan.relative(plan.csv_path)}); {len(plan.selection.to_run)} to run")
    width = len(str(total))
    for run in plan.selection.to_run:
        lines.append(f"  {run.index:>{width}}  {shlex.join(run.argv)}")
    lines.append(f"results: {plan.relative(plan.csv_path)}, one log per run in {plan.relative(plan.logs_dir)}/")
    if plan.search.uses_study:
        lines.append(f"study: {plan.relative(plan.study_file)} on the master (--resume continues it)")
    return lines


def resume_note(plan: SweepPlan) -> str | None:
    """What `--resume` found of an earlier sweep, said before this one starts; None without it."""
    done, to_run = plan.selection.done, plan.selection.to_run
    if done and to_run:
        return (f"--resume: {len(done)} of {len(plan.runs)} combinations finished ok earlier; "
                f"running the other {len(to_run)}")
    if done:
        return f"--resume: all {len(plan.runs)} combinations finished ok earlier: nothing to run"
    return None


# --------------------------------------------------------------------------- the recorder


@dataclass
class _Live:
    """A run in progress here: its log file and what its output said so far."""

    run: Run
    attempt: int = 0
    host: str = ""
    log: IO[str] | None = None
    metrics: MetricsReader = field(default_factory=MetricsReader)


@dataclass
class SweepSummary:
    total: int  # combinations of the grid
    ran: int  # runs this sweep had to do
    ok: int = 0
    failed: int = 0  # failed or timed out, retries included
    cancelled: int = 0
    pruned: int = 0
    pruning_saved: float | None = None  # seconds of run time early stopping saved (an estimate)
    not_run: int = 0
    interrupted: bool = False
    elapsed: float = 0.0
    hosts: list[str] = field(default_factory=list)
    failures: list[tuple[Run, str, str]] = field(default_factory=list)  # run, "exit 3" / "timeout", log
    table: list[str] = field(default_factory=list)
    table_title: str = ""
    csv_path: str = ""
    report_path: str = ""  # output/sweep-NAME/report.html once written at the end
    artifact_runs: int = 0  # runs whose $INFRA_RUN_DIR files were brought into output/sweep-NAME/runs/
    artifact_warnings: int = 0  # runs whose folder held links or more than the limit

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 1 if self.failed or self.not_run else 0


class SweepRecorder:
    """Turns the driver's events into output lines, log files and the CSV (one row per combination)."""

    def __init__(self, plan: SweepPlan, *, out: Callable[[str], None], note: Callable[[str], None],
                 status: Callable[[str], None] | None = None, quiet: bool = False,
                 clock: Callable[[], float] = time.monotonic,
                 refresh_report: Callable[[bool], object] | None = None):
        self.plan = plan
        self.refresh_report = refresh_report  # after each CSV write: the report, when it is due (final: now)
        self.report_path = ""  # where the last report went, as the summary shows it
        self.out = out
        self.note = note
        self.status = status
        self.quiet = quiet
        self.clock = clock
        self.started = clock()
        self.by_id = {run.id: run for run in plan.runs}
        self.width = len(str(plan.total))
        self.live: dict[str, _Live] = {}
        self.rows: dict[str, dict[str, str]] = {row["id"]: row for row in plan.previous_rows}
        self.to_run = {run.id for run in plan.selection.to_run}
        self.budget = plan.total if plan.search.kind == "optuna" else len(self.to_run)  # runs this sweep makes
        self.finished: dict[str, str] = {}  # run id -> final status, this sweep
        self.hosts: list[str] = []
        self.lock = threading.Lock()
        self.dirty = False
        self.last_write = 0.0
        self.interrupted = False
        self.driver_done = False
        self.archives: dict[str, tuple[str, str]] = {}  # run id -> (archive on the master, its sha256)
        self.artifact_notes: dict[str, str] = {}  # run id -> what the CSV's artifacts column says
        self.warnings = 0

    # ------------------------------------------------------------------ input

    def on_driver_stdout(self, line: str) -> None:
        event = protocol.parse_event_line(line)
        with self.lock:
            if event is None:
                if line.strip():
                    self.note(f"driver: {redact(line)}")
                return
            self._handle(event)
            self._maybe_write()

    def _prefix(self, run: Run) -> str:
        return f"[{run.index:>{self.width}}/{self.plan.total}]"

    def _handle(self, event: dict) -> None:
        kind = event["event"]
        if kind == "trial":
            self._trial(event)
        run = self.by_id.get(str(event.get("run", "")))
        if kind == "start" and run is not None:
            self._start(run, event)
        elif kind == "lines" and run is not None:
            live = self.live.get(run.id)
            for text in event.get("lines") or []:
                text = str(text)
                if live is not None:
                    live.metrics.feed(text)
                    if live.log is not None:
                        live.log.write(text + "\n")
                if not self.quiet:
                    self.out(f"{self._prefix(run)} {text}")
        elif kind == "end" and run is not None:
            self._end(run, event)
        elif kind == "artifacts" and run is not None:
            self._artifacts(run, event)
        elif kind == "pruning" and run is not None:
            live = self.live.get(run.id)
            if live is not None and live.log is not None:
                live.log.write(f"# pruned at step {event.get('step')}: the pruner gave up on this run\n")
            if not self.quiet:
                self.out(f"{self._prefix(run)} pruning at step {event.get('step')}")
        elif kind == "study":
            done, to_run = int(event.get("done") or 0), int(event.get("to_run") or 0)
            self.budget = to_run
            if done:
                self.note(f"--resume: {done} of {self.plan.total} trials finished earlier "
                          f"({self.plan.relative(self.plan.study_file)}); running {to_run} more")
        elif kind == "retry" and run is not None:
            if not self.quiet:
                self.out(f"{self._prefix(run)} retrying (attempt {event.get('attempt')})")
        elif kind == "warning":
            self.note(f"warning: {event.get('text', '')}")
        elif kind == "cancelling":
            self.interrupted = True
            self.note(f"stopping the sweep: {event.get('queued', 0)} queued run(s) cancelled, "
                      f"{event.get('running', 0)} running run(s) being stopped")
        elif kind == "finished":
            self.driver_done = True
            self.interrupted = self.interrupted or bool(event.get("interrupted"))
        self._progress()

    def _trial(self, event: dict) -> None:
        """An Optuna search's new trial: a run the plan could not list."""
        params = tuple((str(name), value) for name, value in event.get("params") or [])
        run = Run(int(event.get("index") or len(self.plan.runs) + 1), str(event.get("run")), params,
                  tuple(str(word) for word in event.get("argv") or []))
        if run.id in self.by_id:
            return
        self.by_id[run.id] = run
        self.plan.runs.append(run)
        self.plan.selection.to_run.append(run)
        self.to_run.add(run.id)

    def _start(self, run: Run, event: dict) -> None:
        live = self.live.get(run.id)
        if live is None:
            live = self.live[run.id] = _Live(run)
            # Never through a link a job planted in output/ (the master may be this machine).
            fd = confined.create_file(self.plan.output_dir, self.plan.log_path(run).relative_to(
                self.plan.output_dir).as_posix())
            live.log = os.fdopen(fd, "w", encoding="utf-8")
            live.log.write(f"# infra sweep {self.plan.name}: combination {run.index} of {self.plan.total} "
                           f"(id {run.id}): {run.label()}\n# command: {shlex.join(run.argv)}\n")
        live.attempt = int(event.get("attempt") or live.attempt + 1)
        live.host = str(event.get("host") or "")
        live.metrics = MetricsReader()  # a new attempt reports afresh
        gpus = f", GPUs {event['gpus']}" if event.get("gpus") else ""
        moved = " (delivered again: the worker that had it was lost)" if event.get("redelivered") else ""
        if live.log is not None:
            live.log.write(f"# attempt {live.attempt} on {live.host} ({event.get('worker', '')}{gpus}), "
                           f"{time.strftime('%Y-%m-%d %H:%M:%S')}{moved}\n")
            live.log.flush()
        if live.host and live.host not in self.hosts:
            self.hosts.append(live.host)
        if not self.quiet:
            again = f" (attempt {live.attempt})" if live.attempt > 1 else ""
            self.out(f"{self._prefix(run)} started on {live.host}{gpus}{again}{moved}: "
                     f"{run.label() or shlex.join(run.argv)}")

    def _artifacts(self, run: Run, event: dict) -> None:
        """What the driver kept of the run's folder (relayed just before its end); a warning is said at once."""
        path, warning = event.get("path"), str(event.get("warning") or "")
        where = f"output/{self.plan.run_files(run)}/"
        if isinstance(path, str) and path:
            self.archives[run.id] = (path, str(event.get("sha256") or ""))
            self.artifact_notes[run.id] = (f"{int(event.get('files') or 0)} file(s), "
                                           f"{format_size(int(event.get('bytes') or 0))} in {where}")
        if warning:
            self.artifact_notes[run.id] = "; ".join(filter(None, [self.artifact_notes.get(run.id), f"warning: {warning}"]))
            self.warnings += 1
            self.out(f"{self._prefix(run)} warning: its files: {warning}")
        live = self.live.get(run.id)
        if live is not None and live.log is not None and run.id in self.artifact_notes:
            live.log.write(f"# files ($INFRA_RUN_DIR): {self.artifact_notes[run.id]}\n")

    def _end(self, run: Run, event: dict) -> None:
        live = self.live.get(run.id) or _Live(run)
        status = str(event.get("status") or protocol.FAILED)
        exit_code = event.get("exit_code")
        seconds = float(event.get("seconds") or 0.0)
        host = str(event.get("host") or live.host)
        final = bool(event.get("final", True))
        log_rel = self.plan.relative(self.plan.log_path(run))
        if live.log is not None:
            live.log.write(f"# end: {status}, exit code {exit_code}, {seconds:.1f} s on {host}\n")
            live.log.flush()
        if not self.quiet:
            how = f"exit {exit_code}, {seconds:.1f} s on {host}"
            where = f": see {log_rel}" if status != protocol.OK else ""
            self.out(f"{self._prefix(run)} {status} ({how}){where}")
        if not final:
            return
        if live.log is not None:
            live.log.close()
            live.log = None
        self.live.pop(run.id, None)
        self.finished[run.id] = status
        outcome = Outcome(status, int(exit_code) if exit_code is not None else None, seconds, host,
                          max(1, int(event.get("attempt") or live.attempt or 1)), live.metrics.metrics, log_rel)
        self.rows[run.id] = outcome_row(run, outcome)
        if run.id in self.artifact_notes:
            self.rows[run.id][ARTIFACTS_COLUMN] = self.artifact_notes[run.id]
        self.dirty = True

    def _progress(self) -> None:
        if self.status is None:
            return
        values = self.finished.values()
        failed = sum(1 for status in values if status in (protocol.FAILED, protocol.TIMEOUT))
        self.status(progress_line(finished=len(self.finished), running=len(self.live), failed=failed,
                                  total=self.budget, elapsed=self.clock() - self.started))

    # ------------------------------------------------------------------ the CSV

    def ordered_rows(self) -> list[dict[str, str]]:
        """This grid's rows in its order, then rows of an earlier sweep for combinations no longer in it."""
        rows = [self.rows[run.id] for run in self.plan.runs if run.id in self.rows]
        rows += [row for key, row in self.rows.items() if key not in self.by_id]
        if self.plan.search.kind == "optuna":  # an earlier driver's trials first: trial numbers go on
            rows.sort(key=lambda row: int(row.get("index") or 0) if (row.get("index") or "").isdigit() else 0)
        return rows

    def columns(self) -> list[str]:
        return columns_of(self.plan.grid.names, self.ordered_rows())

    def _maybe_write(self) -> None:
        if self.dirty and self.clock() - self.last_write >= CSV_WRITE_INTERVAL:
            self.write_csv()

    def write_csv(self, final: bool = False) -> None:
        """Replace the CSV atomically: a reader (or a Ctrl-C) never sees half a file."""
        path = self.plan.csv_path
        confined.replace_file(self.plan.output_dir, path.relative_to(self.plan.output_dir).as_posix(),
                              csv_text(self.columns(), self.ordered_rows()).encode())
        self.dirty = False
        self.last_write = self.clock()
        if self.refresh_report is not None and self.rows:
            written = self.refresh_report(final)
            if final and isinstance(written, Path):
                self.report_path = self.plan.relative(written)

    # ------------------------------------------------------------------ the end

    def close(self, sort: SortSpec | None = None, top: int = 10) -> SweepSummary:
        with self.lock:
            for live in self.live.values():  # stopped without an end: their logs say so
                if live.log is not None:
                    live.log.write("# no end: the sweep stopped before this run reported one\n")
                    live.log.close()
                    live.log = None
            self.write_csv(final=True)
            summary = SweepSummary(total=self.plan.total, ran=len(self.to_run), interrupted=self.interrupted,
                                   elapsed=self.clock() - self.started, hosts=list(self.hosts),
                                   csv_path=self.plan.relative(self.plan.csv_path), report_path=self.report_path)
            for run in self.plan.selection.to_run:
                status = self.finished.get(run.id)
                if status == protocol.OK:
                    summary.ok += 1
                elif status in (protocol.FAILED, protocol.TIMEOUT):
                    summary.failed += 1
                    row = self.rows[run.id]
                    how = "timeout" if status == protocol.TIMEOUT else f"exit {row.get('exit_code')}"
                    summary.failures.append((run, how, row.get("log", "")))
                elif status == protocol.CANCELLED:
                    summary.cancelled += 1
                elif status == protocol.PRUNED:
                    summary.pruned += 1
                else:
                    summary.not_run += 1
            if summary.pruned:
                def seconds_of(status: str) -> list[float]:
                    return [float(row["seconds"]) for row in self.ordered_rows()
                            if row.get("status") == status and row.get("seconds")]

                summary.pruning_saved = pruning_saved_seconds(seconds_of(protocol.OK), seconds_of(protocol.PRUNED))
            if sort is not None:
                columns = self.columns()
                rows = best_rows(self.ordered_rows(), sort, columns, top)
                if rows:
                    summary.table_title = f"best {len(rows)} by {sort.describe()}:"
                    summary.table = table_lines(rows, columns, self.plan.grid.names, sort_column(sort, columns))
                else:
                    summary.table_title = f"no finished run reported a numeric {sort.metric!r}"
            return summary


def summary_lines(plan: SweepPlan, summary: SweepSummary) -> list[str]:
    """What `infra sweep` prints at the end: counts, failures, the best rows."""
    parts = [f"{summary.ok} ok"]
    if summary.failed:
        parts.append(f"{summary.failed} failed")
    if summary.pruned:
        parts.append(f"{summary.pruned} pruned")
    if summary.cancelled:
        parts.append(f"{summary.cancelled} stopped")
    if summary.not_run:
        parts.append(f"{summary.not_run} not run")
    earlier = len(plan.selection.done)
    scope = f"{summary.ran} run(s)" + (f" ({earlier} of {summary.total} done earlier)" if earlier else "")
    hosts = f" on {', '.join(summary.hosts)}" if summary.hosts else ""
    lines = [f"sweep '{plan.name}': {scope}: {', '.join(parts)} in {format_duration(summary.elapsed)}{hosts}; "
             f"results in {summary.csv_path}" + (f", report {summary.report_path}" if summary.report_path else "")]
    if summary.artifact_runs or summary.artifact_warnings:
        warned = (f"; {summary.artifact_warnings} run(s) with a warning about their files (artifacts column)"
                  if summary.artifact_warnings else "")
        lines.append(f"files of {summary.artifact_runs} run(s) ($INFRA_RUN_DIR) in "
                     f"{plan.relative(plan.output_dir / runs_folder(plan.name))}/<index>/{warned}")
    if summary.pruning_saved is not None:
        lines.append(f"early stopping saved about {format_duration(summary.pruning_saved)} of run time "
                     f"({summary.pruning_saved:.1f} s: for each of the {summary.pruned} pruned run(s), the median "
                     "time of the runs that ran to the end minus its own)")
    for run, how, log in summary.failures[:FAILURES_LISTED]:
        lines.append(f"  failed [{run.index}] {run.label()} ({how}): {log}")
    if len(summary.failures) > FAILURES_LISTED:
        lines.append(f"  ... and {len(summary.failures) - FAILURES_LISTED} more failed (status column of the CSV)")
    if summary.interrupted or summary.not_run or summary.cancelled:
        lines.append(f"run the same command with --resume to run the {summary.cancelled + summary.not_run + summary.failed} "
                     "combination(s) not finished ok")
    if summary.table_title:
        lines += ["", summary.table_title, *summary.table]
    return lines


# --------------------------------------------------------------------------- the sweep


def _start_afresh(plan: SweepPlan, note: Callable[[str], None]) -> None:
    """Without --resume an earlier CSV of the same name is kept aside, not mixed in."""
    if plan.resumed_from is None and plan.csv_path.is_file():
        kept = plan.csv_path.with_name(f"sweep-{plan.name}.previous.csv")
        os.replace(plan.csv_path, kept)
        note(f"the earlier {plan.relative(plan.csv_path)} is now {plan.relative(kept)} (--resume continues a sweep)")


def study_settings(plan: SweepPlan, options: SweepOptions) -> dict | None:
    """The driver's Optuna study (`infra_runtime.study.StudyBook.open`); None when the sweep needs none."""
    search = plan.search
    if not search.uses_study or options.sort is None:
        return None
    return {
        "path": posixpath.join(CONTAINER_OUTPUT, f"sweep-{plan.name}", "study.journal"),
        "name": plan.name,
        "fresh": plan.resumed_from is None,  # without --resume, a new study (the earlier one is kept aside)
        "metric": options.sort.metric,
        "direction": "maximize" if options.sort.descending else "minimize",
        "sampler": search.sampler or "tpe",
        "seed": search.effective_seed,
        "pruner": search.pruner,
        "space": plan.grid.to_plan() if isinstance(plan.grid, Space) else [],
    }


def optuna_search(plan: SweepPlan) -> dict | None:
    """An Optuna search's budget and command for the driver, which makes its runs; None otherwise."""
    if plan.search.kind != "optuna":
        return None
    return {"kind": "optuna", "trials": plan.search.trials, "command": list(plan.command),
            "in_flight": plan.in_flight}


def _archive_bytes(conn: Connection, cluster: Cluster, plan: SweepPlan, path: str) -> bytes | None:
    """The archive the driver kept at `path` (relative to the output folder), read as `infra run` fetches output."""
    if cluster.master_host.is_local:  # the master's output folder is this project's
        try:
            return confined.read_file(plan.output_dir, path)[0]
        except (OSError, confined.ConfinementError):
            return None
    for op in fetch_output(cluster.name, [path]):
        answer = conn.engine.exec(op, timeout=600)
        if not answer.ok:
            raise InfraError(f"fetching {path} failed: {last_line(answer.stderr)}")
        with tarfile.open(fileobj=io.BytesIO(base64.b64decode(answer.stdout)), mode="r:gz") as tar:
            for member in tar:
                if member.name == path and member.isfile():
                    return tar.extractfile(member).read()
    return None


def bring_artifacts(conn: Connection, cluster: Cluster, plan: SweepPlan, recorder: SweepRecorder,
                    limit: int) -> tuple[int, list[str]]:
    """Fetch each run's archive from the master and unpack it into output/sweep-NAME/runs/<index>/.

    Returns how many runs' files came, and what was not written here (one line each)."""
    brought, problems = 0, []
    for run_id, (path, digest) in recorder.archives.items():
        run = recorder.by_id.get(run_id)
        if run is None or not confined.is_inside(path):
            continue
        try:
            data = _archive_bytes(conn, cluster, plan, path)
        except (InfraError, tarfile.TarError, ValueError) as exc:
            problems.append(f"[{run.index}] {exc}")
            continue
        if data is None or hashlib.sha256(data).hexdigest() != digest:
            problems.append(f"[{run.index}] {path}: missing or not the archive the driver kept")
            continue
        unpacked = unpack_run_archive(data, plan.output_dir, plan.run_files(run), limit)
        brought += 1
        problems += [f"[{run.index}] {refused}" for refused in unpacked.refused]
    return brought, problems


def run_sweep(cluster: Cluster, plan: SweepPlan, options: SweepOptions, *,
              out: Callable[[str], None], err: Callable[[str], None], note: Callable[[str], None],
              status: Callable[[str], None] | None = None, quiet: bool = False) -> SweepSummary:
    """Run the plan's runs on the cluster and record them; returns what happened."""
    refresher = ReportRefresher(plan.csv_path, sort=options.sort, top=options.top, note=note)
    recorder = SweepRecorder(plan, out=out, note=note, status=status, quiet=quiet, refresh_report=refresher)
    if not plan.selection.to_run and plan.search.kind != "optuna":  # an Optuna search's trials come later
        return recorder.close(options.sort, options.top)
    sweep_id = uuid.uuid4().hex[:12]
    plan_text = json.dumps(driver_plan(
        sweep_id=sweep_id, name=plan.name, runs=plan.selection.to_run, queue=plan.queue, retries=options.retries,
        timeout=options.timeout, gpus_per_task=options.gpus_per_task, cwd=CONTAINER_PROJECT,
        study=study_settings(plan, options), search=optuna_search(plan),
        artifact_limit=options.artifact_limit, artifacts_output=CONTAINER_OUTPUT))
    relative_plan = posixpath.join(f"sweep-{plan.name}", "plan.json")  # in the output folder
    with ConnectionPool.for_cluster(cluster) as pool:
        conn = pool.get(cluster.master_host)
        layout = master_ready(conn, cluster, note)
        conn.run(write_file(posixpath.join(layout.output_dir, relative_plan)), stdin=plan_text.encode())
        _start_afresh(plan, note)
        driver_errors: list[str] = []

        def on_stderr(line: str) -> None:
            line = redact(line)  # a library's message may hold a connection URL
            driver_errors.append(line)
            err(line)

        try:
            code = exec_job(conn, cluster, sweep_driver(cluster.name, posixpath.join(CONTAINER_OUTPUT, relative_plan)),
                            out=recorder.on_driver_stdout, err=on_stderr, note=note,
                            stop_signals=DRIVER_STOP_SIGNALS, what="the sweep", keep_output=False)
        except ConnectError as exc:
            summary = recorder.close(options.sort, options.top)
            raise InfraError(f"{exc}; the {summary.ok + summary.failed} run(s) that finished are in "
                             f"{summary.csv_path}: run the same command with --resume for the rest") from None
        except BaseException:  # a second Ctrl-C, a bug: what was recorded still reaches the CSV
            recorder.close(options.sort, options.top)
            raise
        brought, problems = bring_artifacts(conn, cluster, plan, recorder, options.artifact_limit)
        for problem in problems[:FAILURES_LISTED]:
            note(f"warning: a run's file not brought here: {problem}")
        summary = recorder.close(options.sort, options.top)
        summary.artifact_runs = brought
        summary.artifact_warnings = recorder.warnings
        if code == 130:
            summary.interrupted = True
        elif code != 0 and not recorder.driver_done:
            last = driver_errors[-1] if driver_errors else f"exit code {code}"
            if "No module named" in last and "infra_runtime" in last:
                last = "the master's image has no infra_runtime (it predates `infra sweep`): run `infra up`"
            raise InfraError(f"{cluster.master_host.name}: the sweep stopped: {last}")
        return summary
