"""A parameters file: each parameter, the values it takes; their Cartesian product is the sweep.

    epoch: !!python/tuple [5, 20, 5]   # a range: start, end (excluded), step (default 1)
    lr: {range: [0.1, 0.5, 0.1]}        # the same, readable: 0.1, 0.2, 0.3, 0.4
    batchsize: [50, 100]                # a list: each value
    optimizer: {values: [sgd, adam]}    # the same, readable
    shuffle: true                       # a flag: `--shuffle`; false leaves it out
    gpu: "-1"                           # a single value
    augment: [true, false]              # a flag in some combinations, left out in the others

The files of the framework infra grew from work unchanged, `!!python/tuple` included. They
are read safely: a YAML SafeLoader that knows this one tag besides the standard ones, so no
tag can construct an object or run code. The order of the combinations is the file's: the
first parameter varies slowest, as the original framework's product did.

Ranges are counted exactly in decimal (`0.1, 0.2, 0.3`, not `0.30000000000000004`, and never
one value past the end as floating-point `arange` can give), and their size is known before
any value is made, so a typo cannot make a file of a billion combinations hang the command.
"""

from __future__ import annotations

import datetime
import itertools
import math
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Iterator, Literal

import yaml

from ..config import MAX_FILE_BYTES, read_text_file
from ..errors import ConfigError
from ..runtime.arguments import Value, render_value  # noqa: F401  (shared with the driver)

AxisKind = Literal["value", "values", "range", "flag"]

DEFAULT_MAX_COMBINATIONS = 10_000
DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")  # a search's forms (`infra.sweep.search`)
# A parameter becomes `--name`; a name written with its dashes (`-n`, `--lr`) is used as written.
NAME_PATTERN = re.compile(r"^(?:--?)?[A-Za-z0-9_][A-Za-z0-9_.-]*$")
READABLE_FORMS = "a value, a list, {values: [...]}, {range: [start, stop, step]}, !!python/tuple [start, stop, step] or true/false"


@dataclass(frozen=True)
class Axis:
    """One parameter and the values it takes, in order."""

    name: str
    values: tuple[Value, ...]
    kind: AxisKind
    line: int

    def describe(self) -> str:
        count = len(self.values)
        return f"{self.name}: {count} value{'s' if count != 1 else ''}"


@dataclass(frozen=True)
class Grid:
    """The parameters of a sweep; `combinations()` is their Cartesian product, first axis slowest."""

    source: str
    axes: tuple[Axis, ...]

    @property
    def size(self) -> int:
        return math.prod(len(axis.values) for axis in self.axes)

    @property
    def names(self) -> list[str]:
        return [axis.name for axis in self.axes]

    def combinations(self) -> Iterator[tuple[tuple[str, Value], ...]]:
        names = self.names
        for values in itertools.product(*(axis.values for axis in self.axes)):
            yield tuple(zip(names, values))

    def describe(self) -> str:
        return ", ".join(axis.describe() for axis in self.axes)


# --------------------------------------------------------------------------- reading YAML


@dataclass(frozen=True)
class _RangeTuple:
    """What `!!python/tuple [...]` reads as: the items, and where they were written."""

    items: tuple[Any, ...]


class _ParametersLoader(yaml.SafeLoader):
    """SafeLoader plus `!!python/tuple`; every other non-standard tag stays an error."""


def _construct_tuple(loader: _ParametersLoader, node: yaml.Node) -> _RangeTuple:
    if not isinstance(node, yaml.SequenceNode):
        raise yaml.constructor.ConstructorError(None, None, "!!python/tuple needs a list: [start, stop, step]",
                                                node.start_mark)
    return _RangeTuple(tuple(loader.construct_sequence(node, deep=True)))


_ParametersLoader.add_constructor("tag:yaml.org,2002:python/tuple", _construct_tuple)

# What PyYAML's constructors raise on some hostile scalars instead of a YAMLError (`!!int x`...).
_PYYAML_CRASHES = (ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError, RecursionError)


def _shown(value: Any, limit: int = 60) -> str:
    try:
        text = repr(value)
    except ValueError:  # an integer past Python's int-to-str limit
        text = f"<{type(value).__name__} too large to show>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Where:
    def __init__(self, filename: str):
        self.filename = filename

    def error(self, line: int | None, message: str, name: str | None = None) -> ConfigError:
        where = f"{self.filename}:{line}" if line else self.filename
        return ConfigError(f"{name}: {message} ({where})" if name is not None else f"{where}: {message}")


def _yaml_error(exc: yaml.YAMLError, filename: str) -> ConfigError:
    mark = getattr(exc, "problem_mark", None)
    where = f"{filename}:{mark.line + 1}" if mark else filename
    problem = getattr(exc, "problem", None) or str(exc)
    unknown_tag = re.search(r"could not determine a constructor for the tag '(.*)'", problem)
    if unknown_tag:
        tag = unknown_tag.group(1).replace("tag:yaml.org,2002:", "!!")
        problem = f"the tag {tag[:60]} is not allowed (only !!python/tuple ranges and plain YAML are read)"
    problem = " ".join(problem.split())
    return ConfigError(f"{where}: invalid parameters file: {problem[:200]}")


# --------------------------------------------------------------------------- values


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _decimal(value: int | float) -> Decimal:
    # repr() is the shortest text that reads back as the same float: 0.1 -> Decimal("0.1").
    return Decimal(value) if isinstance(value, int) else Decimal(repr(value))


def _range_values(items: tuple[Any, ...], name: str, line: int, where: _Where, limit: int) -> tuple[Value, ...]:
    if len(items) not in (2, 3):
        raise where.error(line, f"a range is [start, stop] or [start, stop, step], got {len(items)} item(s)", name)
    for item in items:
        if not _is_number(item) or (isinstance(item, float) and not math.isfinite(item)):
            hint = ""
            if isinstance(item, str) and re.fullmatch(r"[-+]?[0-9.]+[eE][-+]?[0-9]+", item):
                hint = " (YAML reads a number with an exponent but no dot as text: write 1.0e-3)"
            raise where.error(line, f"range items must be numbers, got {_shown(item)}{hint}", name)
    start, stop = items[0], items[1]
    step = items[2] if len(items) == 3 else 1
    if step == 0:
        raise where.error(line, "the range step must not be 0", name)
    try:
        d_start, d_stop, d_step = _decimal(start), _decimal(stop), _decimal(step)
        count = max(0, math.ceil((d_stop - d_start) / d_step))
    except (InvalidOperation, OverflowError, ValueError):
        raise where.error(line, "the range is too large to count", name) from None
    if count == 0:
        raise where.error(line, f"the range [{start}, {stop}, {step}] is empty (its stop is excluded)", name)
    if count > limit:
        raise where.error(line, f"the range has {count:,} values, more than the limit of {limit:,} combinations "
                                "(raise it with --max-combinations if you mean it)", name)
    integral = all(isinstance(item, int) for item in (start, stop, step))
    values: list[Value] = []
    for i in range(count):
        exact = d_start + d_step * i
        values.append(int(exact) if integral else float(exact))
    return tuple(values)


def _scalar(value: Any, name: str, line: int, where: _Where) -> Value:
    if isinstance(value, bool) or _is_number(value) or isinstance(value, str):
        return value
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()  # YAML reads 2024-01-31 as a date; the command gets it as written
    if value is None:
        raise where.error(line, f"a parameter needs a value ({READABLE_FORMS})", name)
    if isinstance(value, (list, dict, _RangeTuple)):
        raise where.error(line, "lists and mappings cannot be nested in a list of values", name)
    raise where.error(line, f"cannot use {_shown(value)} as a value", name)


def _axis(name: str, raw: Any, line: int, where: _Where, limit: int) -> Axis:
    if isinstance(raw, _RangeTuple):
        return Axis(name, _range_values(raw.items, name, line, where, limit), "range", line)
    if isinstance(raw, dict):
        distribution = next((key for key in raw if key in DISTRIBUTIONS), None)
        if distribution is not None:
            raise where.error(line, f"{{{distribution}: ...}} is a distribution, for --search random or optuna; "
                                    "a grid lists values", name)
        if len(raw) != 1 or next(iter(raw)) not in ("range", "values"):
            keys = ", ".join(str(key) for key in raw) or "none"
            raise where.error(line, f"a mapping must be {{range: [start, stop, step]}} or {{values: [...]}} "
                                    f"(found keys: {keys[:60]})", name)
        key, inner = next(iter(raw.items()))
        if not isinstance(inner, list):
            raise where.error(line, f"{key} needs a list, got {_shown(inner)}", name)
        if key == "range":
            return Axis(name, _range_values(tuple(inner), name, line, where, limit), "range", line)
        raw = inner
    if isinstance(raw, list):
        if not raw:
            raise where.error(line, "the list of values is empty", name)
        values = tuple(_scalar(item, name, line, where) for item in raw)
        seen: dict[tuple[type, str], Value] = {}
        for value in values:
            key = (bool, str(value)) if isinstance(value, bool) else (str, render_value(value))
            if key in seen:
                raise where.error(line, f"the value {_shown(value)} is listed twice", name)
            seen[key] = value
        return Axis(name, values, "values", line)
    if isinstance(raw, bool):
        return Axis(name, (raw,), "flag", line)
    return Axis(name, (_scalar(raw, name, line, where),), "value", line)


# --------------------------------------------------------------------------- the file


def read_entries(text: str, filename: str) -> list[tuple[str, Any, int]]:
    """Each parameter of a parameters file as (name, what YAML read, line), names checked; no values checked."""
    where = _Where(filename)
    if len(text) > MAX_FILE_BYTES:
        raise ConfigError(f"{filename}: files over {MAX_FILE_BYTES:,} bytes are not parameters files")
    loader = _ParametersLoader(text)
    entries: list[tuple[str, Any, int]] = []
    try:
        root = loader.get_single_node()
        if root is None:
            raise ConfigError(f"{filename}: the file is empty: write one parameter per line, e.g. `lr: [0.1, 0.01]`")
        if not isinstance(root, yaml.MappingNode):
            raise where.error(root.start_mark.line + 1, "a parameters file maps each parameter to its values, "
                                                        "e.g. `lr: [0.1, 0.01]`")
        first_line: dict[str, int] = {}
        for key_node, value_node in root.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != "tag:yaml.org,2002:str":
                shown = key_node.value if isinstance(key_node, yaml.ScalarNode) else "a list or mapping"
                raise where.error(line, f"parameter names are words, got {_shown(shown)}")
            name = key_node.value
            if not NAME_PATTERN.match(name):
                raise where.error(line, "a parameter name is letters, digits, '_', '.' and '-' (it becomes --NAME)",
                                  _shown(name, 40).strip("'") if name.isprintable() else _shown(name, 40))
            if name in first_line:
                raise where.error(line, f"listed twice (also at line {first_line[name]})", name)
            first_line[name] = line
            try:
                raw = loader.construct_object(value_node, deep=True)
            except _PYYAML_CRASHES as exc:
                raise where.error(value_node.start_mark.line + 1, f"cannot read this value: {_shown(str(exc), 100)}",
                                  name) from None
            entries.append((name, raw, line))
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, filename) from None
    except _PYYAML_CRASHES as exc:
        raise ConfigError(f"{filename}: invalid parameters file: {_shown(str(exc), 100)}") from None
    finally:
        loader.dispose()
    if not entries:
        raise ConfigError(f"{filename}: no parameters: write one per line, e.g. `lr: [0.1, 0.01]`")
    return entries


def parse_parameters(text: str, filename: str = "parameters.yml",
                     max_combinations: int = DEFAULT_MAX_COMBINATIONS) -> Grid:
    """Read a parameters file's text; any mistake is one ConfigError naming the parameter and line."""
    where = _Where(filename)
    axes = [_axis(name, raw, line, where, max_combinations) for name, raw, line in read_entries(text, filename)]
    grid = Grid(filename, tuple(axes))
    size = grid.size
    if size > max_combinations:
        raise ConfigError(f"{filename}: {size:,} combinations ({grid.describe()}) is more than the limit of "
                          f"{max_combinations:,}; raise it with --max-combinations if you mean it")
    return grid


def load_parameters(path: str | Path, max_combinations: int = DEFAULT_MAX_COMBINATIONS) -> Grid:
    """Read and check a parameters file; ConfigError (one line) when it is missing or wrong."""
    text = read_text_file(path, "parameters file", "no such parameters file")
    return parse_parameters(text, str(path), max_combinations)
