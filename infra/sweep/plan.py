"""From a grid and a command to the runs of a sweep: argv lists, ids, what `--resume` still runs.

A run's command is `COMMAND --name value ...` as a list of words that reaches the worker's
`subprocess` unchanged: a value is one word whatever it holds (spaces, quotes, `;`, `$(...)`),
never text for a shell. A flag (`true`) is `--name` alone; `false` leaves it out.

A run's id is a hash of its whole command line, so it names the same combination across
sweeps of the same file (`--resume`), whatever its position, and changes when the command does.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..errors import ConfigError
from ..runtime.protocol import PLAN_FORMAT
from ..runtime.arguments import option_name, parameter_args, run_id  # noqa: F401  (shared with the driver)
from .parameters import Grid, Value, render_value

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_PYTHONS = ("python", "python3", "python3.11")


@dataclass(frozen=True)
class Run:
    """One combination of the sweep: its position (1-based), id, parameters and command."""

    index: int
    id: str
    params: tuple[tuple[str, Value], ...]
    argv: tuple[str, ...]

    def label(self) -> str:
        """`lr=0.1 epochs=5 shuffle` (a flag by its name; one that is off is left out)."""
        words = []
        for name, value in self.params:
            if value is True:
                words.append(name)
            elif value is not False:
                words.append(f"{name}={render_value(value)}")
        return " ".join(words)


def build_runs(grid: Grid, command: tuple[str, ...]) -> list[Run]:
    return runs_of(grid.combinations(), command)


def runs_of(param_sets: Iterable[tuple[tuple[str, Value], ...]], command: tuple[str, ...]) -> list[Run]:
    """One run per set of parameters (a grid's combinations, a random search's trials), numbered from 1."""
    runs = []
    for index, params in enumerate(param_sets, start=1):
        argv = (*command, *parameter_args(params))
        runs.append(Run(index, run_id(argv), params, argv))
    return runs


def check_command(command: tuple[str, ...], project_dir: Path) -> tuple[str, ...]:
    """The command as given, once it is plausible: not empty; a `python FILE.py` names a project file."""
    if not command:
        raise ConfigError("sweep: name the command after the parameters file, e.g. "
                          "`infra sweep parameters.yml -- python train.py`")
    if any("\0" in word for word in command):
        raise ConfigError("sweep: the command holds a NUL character")
    if command[0] in _PYTHONS:
        script = next((word for word in command[1:] if not word.startswith("-")), None)
        if script is not None and script.endswith(".py") and command[1] != "-c":
            rel = posixpath.normpath(script)
            if rel.startswith("/") or rel == ".." or rel.startswith("../"):
                raise ConfigError(f"sweep: {script} is not inside the project folder {project_dir} "
                                  "(runs start in the project folder on the workers)")
            if not (project_dir / rel).is_file():
                raise ConfigError(f"sweep: no file {rel} in the project folder {project_dir}")
    return command


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise ConfigError(f"sweep: --name {name[:40]!r} must be letters, digits, '_', '.' and '-' (at most 64)")
    return name


def default_name(parameters_file: str | Path) -> str:
    """The sweep's name when none is given: the parameters file's stem, made safe for a file name."""
    stem = Path(parameters_file).stem
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-.") or "sweep"
    return safe[:64]


@dataclass(frozen=True)
class Selection:
    """What a sweep runs now, and what it keeps from an earlier one (`--resume`)."""

    to_run: list[Run]
    done: list[Run]  # finished ok earlier: not run again


FINISHED_STATUSES = ("ok", "pruned")  # a pruned run was decided on: --resume does not run it again


def select_runs(runs: list[Run], previous_status: dict[str, str], resume: bool) -> Selection:
    """Without `--resume`, every run. With it, the runs that did not finish before (ok, or pruned by
    early stopping): those never run, failed, timed out or stopped by a Ctrl-C."""
    if not resume:
        return Selection(list(runs), [])
    done = [run for run in runs if previous_status.get(run.id) in FINISHED_STATUSES]
    finished = {run.id for run in done}
    return Selection([run for run in runs if run.id not in finished], done)


def driver_plan(*, sweep_id: str, name: str, runs: list[Run], queue: str, retries: int,
                timeout: float | None, gpus_per_task: int, cwd: str,
                study: dict | None = None, search: dict | None = None,
                artifact_limit: int | None = None, artifacts_output: str = "/output") -> dict:
    """What the driver in the master container reads (`infra_runtime.driver.load_plan`).

    `artifact_limit`: bytes of each run's `$INFRA_RUN_DIR` brought back; the driver keeps the
    archives in `artifacts_folder` of the output folder (`artifacts_output` in its container).
    `study`: the Optuna study of an Optuna search or of early stopping (`study_settings`);
    `search`: an Optuna search's budget and command (`optuna_search`), whose runs the driver makes."""
    plan = {
        "format": PLAN_FORMAT,
        "sweep_id": sweep_id,
        "name": name,
        "queue": queue,
        "retries": retries,
        "message": {"cwd": cwd, "timeout": timeout, "gpus_per_task": gpus_per_task,
                    "env": {"INFRA_SWEEP": name}},
        "runs": [{"run": run.id, "argv": list(run.argv)} for run in runs],
    }
    plan.update({key: value for key, value in (("study", study), ("search", search)) if value is not None})
    if artifact_limit is not None:
        plan["message"]["artifact_limit"] = artifact_limit
        plan.update(artifacts_output=artifacts_output, artifacts_folder=artifacts_folder(name))
    return plan


def artifacts_folder(name: str) -> str:
    """Where the driver keeps the runs' archives, relative to the output folder (on the master)."""
    return f"sweep-{name}/artifacts"


def default_queue(queues_consumed: list[str]) -> str:
    """`celery` when some worker consumes it, else the first queue of the first worker group."""
    return "celery" if "celery" in queues_consumed or not queues_consumed else queues_consumed[0]


def check_queue(queue: str | None, queues_consumed: list[str]) -> str:
    if queue is None:
        return default_queue(queues_consumed)
    if queue not in queues_consumed:
        raise ConfigError(f"sweep: --queue {queue!r}: no worker consumes it (queues: {', '.join(queues_consumed)})")
    return queue
