"""A search space: each parameter's distribution, for `--search random` and `--search optuna`.

The same parameters file as a grid, with a distribution per parameter instead of values:

    lr: {loguniform: [1.0e-5, 1.0e-1]}   # a float, uniform in its logarithm
    momentum: {uniform: [0.5, 0.99]}      # a float
    layers: {int: [1, 8]}                 # an integer, both ends included
    width: {int: [16, 512], log: true}    # an integer, uniform in its logarithm
    optimizer: {choice: [sgd, adam]}      # one of these
    gpu: "-1"                             # one value (a flag: true), as in a grid

A grid's lists and ranges are refused here (and distributions in a grid), with the file, line
and parameter. `random_trials` draws a random search's trials from a seeded RNG: the same seed
gives the same trials, so `--resume` finds them again by their ids. An Optuna search gets the
space as data (`to_plan`) and lets the study draw.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..config import read_text_file
from ..errors import ConfigError
from ..runtime.arguments import Value
from .parameters import DISTRIBUTIONS, _RangeTuple, _shown, _Where, read_entries

Kind = Literal["uniform", "loguniform", "int", "choice", "value"]
FORMS = "{uniform: [low, high]}, {loguniform: [low, high]}, {int: [low, high]} or {choice: [...]}"
SIGNIFICANT_DIGITS = 6  # a drawn float as a command line shows it: 0.00123457, not 0.0012345678901234
MAX_DRAWS_PER_TRIAL = 100  # redraws of a trial already drawn, before the space counts as too small


@dataclass(frozen=True)
class Dimension:
    """One parameter of a search: its distribution, or its one value."""

    name: str
    kind: Kind
    line: int
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    choices: tuple[Value, ...] = ()
    value: Value | None = None

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.name}: one of {len(self.choices)}"
        if self.kind == "value":
            return f"{self.name}: 1 value"
        log = " (log)" if self.kind == "int" and self.log else ""
        return f"{self.name}: {self.kind} [{self.low}, {self.high}]{log}"

    @property
    def size(self) -> int | None:
        """How many values it can take; None for a float."""
        if self.kind == "choice":
            return len(self.choices)
        if self.kind == "value":
            return 1
        if self.kind == "int":
            return int(self.high) - int(self.low) + 1
        return None

    def to_plan(self) -> dict[str, Any]:
        item: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.kind in ("uniform", "loguniform", "int"):
            item.update(low=self.low, high=self.high, log=self.log)
        elif self.kind == "choice":
            item["choices"] = list(self.choices)
        else:
            item["value"] = self.value
        return item

    def draw(self, rng: random.Random) -> Value:
        if self.kind == "value":
            return self.value  # type: ignore[return-value]
        if self.kind == "choice":
            return self.choices[rng.randrange(len(self.choices))]
        low, high = self.low, self.high
        if self.kind == "int":
            if not self.log:
                return rng.randint(int(low), int(high))
            drawn = math.exp(rng.uniform(math.log(low), math.log(high + 1)))
            return min(int(high), max(int(low), math.floor(drawn)))
        drawn = (math.exp(rng.uniform(math.log(low), math.log(high))) if self.kind == "loguniform"
                 else rng.uniform(low, high))
        return min(float(high), max(float(low), float(f"{drawn:.{SIGNIFICANT_DIGITS}g}")))


@dataclass(frozen=True)
class Space:
    """The parameters of a search, in the file's order."""

    source: str
    dimensions: tuple[Dimension, ...]

    @property
    def names(self) -> list[str]:
        return [dimension.name for dimension in self.dimensions]

    @property
    def size(self) -> int | None:
        """How many distinct trials it holds; None when a float makes it endless."""
        sizes = [dimension.size for dimension in self.dimensions]
        return None if None in sizes else math.prod(sizes)  # type: ignore[arg-type]

    def describe(self) -> str:
        return ", ".join(dimension.describe() for dimension in self.dimensions)

    def to_plan(self) -> list[dict[str, Any]]:
        return [dimension.to_plan() for dimension in self.dimensions]


# --------------------------------------------------------------------------- reading


def _number(item: Any) -> bool:
    return isinstance(item, (int, float)) and not isinstance(item, bool) and math.isfinite(item)


def _bounds(kind: str, inner: Any, name: str, line: int, where: _Where) -> tuple[Any, Any]:
    if not isinstance(inner, list) or len(inner) != 2:
        raise where.error(line, f"{kind} needs two numbers, [low, high], got {_shown(inner)}", name)
    low, high = inner
    for item in inner:
        if not _number(item):
            hint = (" (YAML reads a number with an exponent but no dot as text: write 1.0e-3)"
                    if isinstance(item, str) and "e" in item.lower() else "")
            raise where.error(line, f"{kind} bounds must be numbers, got {_shown(item)}{hint}", name)
        if kind == "int" and not isinstance(item, int):
            raise where.error(line, f"int bounds must be whole numbers, got {_shown(item)}", name)
    if not low < high:
        raise where.error(line, f"{kind} needs low < high, got [{low}, {high}]", name)
    if kind == "loguniform" and low <= 0:
        raise where.error(line, f"loguniform needs low > 0 (it draws the logarithm), got {low}", name)
    return low, high


def _choices(inner: Any, name: str, line: int, where: _Where) -> tuple[Value, ...]:
    if not isinstance(inner, list) or not inner:
        raise where.error(line, f"choice needs a list of values, got {_shown(inner)}", name)
    seen: set[tuple[type, str]] = set()
    for item in inner:
        if not (isinstance(item, (bool, str)) or _number(item)):
            raise where.error(line, f"cannot use {_shown(item)} as a choice (values are numbers, words, true/false)",
                              name)
        key = (type(item), str(item))
        if key in seen:
            raise where.error(line, f"the choice {_shown(item)} is listed twice", name)
        seen.add(key)
    return tuple(inner)


def _dimension(name: str, raw: Any, line: int, where: _Where) -> Dimension:
    if isinstance(raw, (list, _RangeTuple)) or (isinstance(raw, dict) and set(raw) & {"values", "range"}):
        form = "a range" if isinstance(raw, _RangeTuple) or (isinstance(raw, dict) and "range" in raw) else "a list of values"
        raise where.error(line, f"{form} is a grid's (--search grid); a search needs a distribution: {FORMS}", name)
    if isinstance(raw, dict):
        kinds = [key for key in raw if key in DISTRIBUTIONS]
        others = [str(key) for key in raw if key not in DISTRIBUTIONS and key != "log"]
        if len(kinds) != 1 or others:
            found = ", ".join(str(key) for key in raw)[:60] or "none"
            raise where.error(line, f"a distribution is one of {FORMS} (found keys: {found})", name)
        kind = kinds[0]
        log = raw.get("log", False)
        if "log" in raw and kind != "int":
            raise where.error(line, "log: applies to {int: [low, high]} (loguniform is the float one)", name)
        if not isinstance(log, bool):
            raise where.error(line, f"log: is true or false, got {_shown(log)}", name)
        if kind == "choice":
            return Dimension(name, "choice", line, choices=_choices(raw[kind], name, line, where))
        low, high = _bounds(kind, raw[kind], name, line, where)
        if kind == "int" and log and low < 1:
            raise where.error(line, f"{{int: ..., log: true}} needs low >= 1, got {low}", name)
        return Dimension(name, kind, line, low=low, high=high, log=log)
    if isinstance(raw, (bool, str)) or _number(raw):
        return Dimension(name, "value", line, value=raw)
    if raw is None:
        raise where.error(line, f"a parameter needs a distribution ({FORMS}) or one value", name)
    raise where.error(line, f"cannot use {_shown(raw)} as a value", name)


def parse_space(text: str, filename: str = "space.yml") -> Space:
    """Read a search's parameters file; any mistake is one ConfigError naming the parameter and line."""
    where = _Where(filename)
    dimensions = tuple(_dimension(name, raw, line, where) for name, raw, line in read_entries(text, filename))
    return Space(filename, dimensions)


def load_space(path: str | Path) -> Space:
    text = read_text_file(path, "parameters file", "no such parameters file")
    return parse_space(text, str(path))


# --------------------------------------------------------------------------- random search


def random_trials(space: Space, count: int, seed: int) -> list[tuple[tuple[str, Value], ...]]:
    """`count` distinct trials drawn with `random.Random(seed)`: the same seed, the same trials in the same order."""
    size = space.size
    if size is not None and size < count:
        raise ConfigError(f"{space.source}: the space holds {size:,} distinct trial(s), fewer than --trials {count} "
                          "(a grid would run them all: --search grid with their values)")
    rng = random.Random(seed)
    trials: list[tuple[tuple[str, Value], ...]] = []
    seen: set[tuple] = set()
    draws = 0
    while len(trials) < count:
        draws += 1
        if draws > count * MAX_DRAWS_PER_TRIAL:
            raise ConfigError(f"{space.source}: drew only {len(trials)} distinct trials of --trials {count}: "
                              "widen the space or lower --trials")
        params = tuple((dimension.name, dimension.draw(rng)) for dimension in space.dimensions)
        key = tuple((name, type(value), str(value)) for name, value in params)
        if key not in seen:
            seen.add(key)
            trials.append(params)
    return trials


# --------------------------------------------------------------------------- the options


SEARCHES = ("grid", "random", "optuna")
PRUNERS = ("none", "median", "halving", "hyperband")  # as infra.runtime.study makes them
SAMPLERS = ("tpe", "random")
DEFAULT_SEED = 0  # a search without --seed is still reproducible


@dataclass(frozen=True)
class SearchOptions:
    """How a sweep picks its runs and stops them early (`--search`, `--trials`, `--seed`, `--sampler`, `--pruner`)."""

    kind: str = "grid"
    trials: int | None = None
    seed: int | None = None
    sampler: str | None = None
    pruner: str = "none"

    @property
    def uses_study(self) -> bool:
        """An Optuna study runs in the driver: to choose the trials, or to decide early stopping."""
        return self.kind == "optuna" or self.pruner != "none"

    @property
    def effective_seed(self) -> int:
        return DEFAULT_SEED if self.seed is None else self.seed

    def check(self, objective: str | None) -> "SearchOptions":
        """The options once they make sense together; `objective`: the --sort metric, if given."""
        if self.kind not in SEARCHES:
            raise ConfigError(f"sweep: --search {self.kind!r}: one of {', '.join(SEARCHES)}")
        if self.kind == "grid":
            if self.trials is not None:
                raise ConfigError("sweep: --trials is for --search random or optuna (a grid runs every combination)")
            if self.seed is not None:
                raise ConfigError("sweep: --seed is for --search random or optuna (a grid draws nothing)")
        elif self.trials is None:
            raise ConfigError(f"sweep: --search {self.kind} needs --trials N, the number of runs")
        if self.sampler is not None and self.kind != "optuna":
            raise ConfigError("sweep: --sampler is for --search optuna")
        if self.uses_study and objective is None:
            why = "the study's objective" if self.kind == "optuna" else "what the pruner compares"
            raise ConfigError(f"sweep: --{'search optuna' if self.kind == 'optuna' else 'pruner ' + self.pruner} "
                              f"needs --sort METRIC, {why}: --sort loss (lowest best) or --sort -accuracy "
                              "(highest best)")
        return self


# --------------------------------------------------------------------------- early stopping


def pruning_saved_seconds(ok_seconds: list[float], pruned_seconds: list[float]) -> float | None:
    """An estimate of the run time early stopping saved: for each pruned run, the median time of the
    runs that ran to the end minus its own. None when nothing was pruned or nothing ran to the end."""
    if not pruned_seconds or not ok_seconds:
        return None
    ordered = sorted(ok_seconds)
    middle = len(ordered) // 2
    median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    return sum(max(0.0, median - seconds) for seconds in pruned_seconds)
