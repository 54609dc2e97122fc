"""The sweep's Optuna study, in the master container: trials of a search, early stopping of runs.

Used by the driver when its plan has a `study` (an Optuna search, or any sweep with a pruner);
imports Optuna only then, so a plain grid needs nothing beyond Celery and redis-py. The study
lives in Optuna's JournalStorage file in the sweep's output folder (`study.journal`): a driver
that is started again (`--resume`) continues the same study, its trial numbers going on and
its finished trials kept; trials an earlier driver left running are marked failed.

A run is one trial. What it prints (`metrics.intermediate_report`) is reported to the trial as
it comes; when the pruner says so, the driver sets the run's stop flag. Its end tells the trial:
complete with the final value of the metric, pruned, or failed.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any

from .arguments import Value
from .metrics import MetricsReader, finite_number, intermediate_report

PRUNERS = ("none", "median", "halving", "hyperband")
SAMPLERS = ("tpe", "random")


def _optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # its INFO lines would reach the CLI as notes
    warnings.filterwarnings("ignore", module="optuna")
    return optuna


def make_pruner(name: str):
    """Optuna's pruner of that name, with its defaults (median: 5 finished runs before any is pruned)."""
    optuna = _optuna()
    if name == "median":
        return optuna.pruners.MedianPruner()
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {name!r} (one of {', '.join(PRUNERS)})")


def make_sampler(name: str, seed: int | None):
    optuna = _optuna()
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r} (one of {', '.join(SAMPLERS)})")


def distributions_of(space: list[dict]) -> tuple[dict[str, Any], dict[str, Value]]:
    """The plan's space as Optuna distributions, and the parameters that have one value."""
    optuna = _optuna()
    dists: dict[str, Any] = {}
    fixed: dict[str, Value] = {}
    for item in space:
        name, kind = item["name"], item["kind"]
        if kind == "uniform":
            dists[name] = optuna.distributions.FloatDistribution(item["low"], item["high"])
        elif kind == "loguniform":
            dists[name] = optuna.distributions.FloatDistribution(item["low"], item["high"], log=True)
        elif kind == "int":
            dists[name] = optuna.distributions.IntDistribution(item["low"], item["high"], log=bool(item.get("log")))
        elif kind == "choice":
            dists[name] = optuna.distributions.CategoricalDistribution(item["choices"])
        else:
            fixed[name] = item["value"]
    return dists, fixed


@dataclass
class _TrialOfRun:
    trial: Any
    reader: MetricsReader = field(default_factory=MetricsReader)
    last_step: int | None = None
    pruned: bool = False


@dataclass
class StudyBook:
    """The study and the trial of each run; decides early stopping from the runs' lines."""

    study: Any
    metric: str
    space: list[dict] = field(default_factory=list)
    trials: dict[str, _TrialOfRun] = field(default_factory=dict)

    @classmethod
    def open(cls, settings: dict) -> "StudyBook":
        optuna = _optuna()
        path = settings["path"]
        if settings.get("fresh") and os.path.exists(path):
            os.replace(path, path.replace(".journal", ".previous.journal"))  # kept aside, as the CSV is
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))
        study = optuna.create_study(
            storage=storage, study_name=settings["name"], load_if_exists=True,
            direction=settings.get("direction", "minimize"),
            sampler=make_sampler(settings.get("sampler", "tpe"), settings.get("seed")),
            pruner=make_pruner(settings.get("pruner", "none")))
        for orphan in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,
                                                                 optuna.trial.TrialState.WAITING)):
            study.tell(orphan.number, state=optuna.trial.TrialState.FAIL)  # its driver is gone
        return cls(study, settings["metric"], list(settings.get("space") or []))

    def finished_count(self) -> int:
        """Trials that count against a search's budget: complete or pruned."""
        optuna = _optuna()
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        return len(self.study.get_trials(deepcopy=False, states=states))

    def ask(self) -> tuple[Any, list[tuple[str, Value]]]:
        """A new trial of the search and its parameters, in the space file's order."""
        dists, fixed = distributions_of(self.space)
        trial = self.study.ask(dists)
        params = [(item["name"], trial.params[item["name"]] if item["name"] in dists else fixed[item["name"]])
                  for item in self.space]
        return trial, params

    def begin(self, run: str, trial: Any = None) -> None:
        """A run starts (again): a grid's or random search's run gets a trial that only records."""
        entry = self.trials.get(run)
        if entry is None:
            self.trials[run] = _TrialOfRun(trial if trial is not None else self.study.ask())
        else:
            entry.reader = MetricsReader()  # a new attempt reports afresh; steps already reported stay

    def feed(self, run: str, lines: list[str]) -> int | None:
        """Report the lines' intermediate values; the step at which the pruner gives up the run, else None."""
        entry = self.trials.get(run)
        if entry is None:
            return None
        decided = None
        for line in lines:
            entry.reader.feed(str(line))
            if entry.pruned:
                continue
            report = intermediate_report(str(line), self.metric)
            if report is None:
                continue
            step, value = report
            if entry.last_step is not None and step <= entry.last_step:
                continue  # a retried attempt going over steps already reported
            entry.last_step = step
            entry.trial.report(value, step)
            if entry.trial.should_prune():
                entry.pruned = True
                decided = step
        return decided

    def end(self, run: str, status: str) -> None:
        """Tell the run's trial how it ended (pruned, complete with the metric's final value, or failed)."""
        optuna = _optuna()
        entry = self.trials.pop(run, None)
        if entry is None:
            return
        state = optuna.trial.TrialState
        if status == "pruned":
            self.study.tell(entry.trial, state=state.PRUNED)
            return
        value = finite_number(entry.reader.metrics.get(self.metric))
        if status == "ok" and value is not None:
            self.study.tell(entry.trial, value)
        else:
            self.study.tell(entry.trial, state=state.FAIL)
