"""What a sweep's results look like: metrics read from output, CSV rows, the best rows, progress.

Metrics are what a run says about itself in its output (`infra.runtime.metrics`: the last JSON
object line, else its `key=value` lines).

The CSV has one row per combination: `index, id`, the parameters, `status, exit_code, seconds,
host, attempts`, the metrics (any name a run reported, in the order first seen; one that
clashes with a column above is `metric:NAME`), then `log`, the run's output file.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from typing import Any, Iterable

from ..runtime.metrics import MetricsReader, metric_value  # noqa: F401  (their home is the runtime: the driver reads them too)
from .parameters import render_value
from .plan import Run

FIXED_COLUMNS = ("status", "exit_code", "seconds", "host", "attempts")
LEAD_COLUMNS = ("index", "id")
LOG_COLUMN = "log"
TABLE_CELL_CHARS = 24
TABLE_METRICS = 6  # metric columns shown in the final table (all are in the CSV)


# --------------------------------------------------------------------------- metrics


def metric_text(value: Any) -> str:
    """A metric as a CSV cell: numbers as Python writes them, text as is, anything else as JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (int, str)):
        return str(value)
    if value is None:
        return ""
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


# --------------------------------------------------------------------------- rows


@dataclass
class Outcome:
    """How one combination ended."""

    status: str
    exit_code: int | None
    seconds: float | None
    host: str
    attempts: int
    metrics: dict[str, Any]
    log: str


def metric_column(name: str, param_names: Iterable[str]) -> str:
    reserved = set(param_names) | set(FIXED_COLUMNS) | set(LEAD_COLUMNS) | {LOG_COLUMN}
    return f"metric:{name}" if name in reserved else name


def param_column(name: str) -> str:
    return f"param:{name}" if name in FIXED_COLUMNS or name in LEAD_COLUMNS or name == LOG_COLUMN else name


def outcome_row(run: Run, outcome: Outcome) -> dict[str, str]:
    """A CSV row (column -> text) of one combination."""
    names = [name for name, _ in run.params]
    row = {"index": str(run.index), "id": run.id}
    row.update({param_column(name): render_value(value) for name, value in run.params})
    row.update({
        "status": outcome.status,
        "exit_code": "" if outcome.exit_code is None else str(outcome.exit_code),
        "seconds": "" if outcome.seconds is None else f"{outcome.seconds:.3f}",
        "host": outcome.host,
        "attempts": str(outcome.attempts),
    })
    for name, value in outcome.metrics.items():
        row[metric_column(str(name), names)] = metric_text(value)
    row[LOG_COLUMN] = outcome.log
    return row


def columns_of(param_names: list[str], rows: Iterable[dict[str, str]]) -> list[str]:
    """The CSV's columns: fixed ones in their places, metrics (and any others) in first-seen order."""
    head = [*LEAD_COLUMNS, *(param_column(name) for name in param_names), *FIXED_COLUMNS]
    others: list[str] = []
    for row in rows:
        for column in row:
            if column not in head and column != LOG_COLUMN and column not in others:
                others.append(column)
    return head + others + [LOG_COLUMN]


def csv_text(columns: list[str], rows: Iterable[dict[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    return buffer.getvalue()


def read_csv_rows(text: str) -> list[dict[str, str]]:
    """The rows of an earlier sweep's CSV (rows without an id are not ours and are dropped)."""
    reader = csv.DictReader(io.StringIO(text))
    return [{k: (v or "") for k, v in row.items() if k is not None} for row in reader if row.get("id")]


# --------------------------------------------------------------------------- the best rows


@dataclass(frozen=True)
class SortSpec:
    metric: str
    descending: bool

    @classmethod
    def parse(cls, text: str) -> "SortSpec":
        """`-accuracy`: highest first; `loss` or `+loss`: lowest first."""
        text = text.strip()
        descending = text.startswith("-")
        name = text.lstrip("+-").strip()
        if not name:
            raise ValueError("--sort needs a metric name, e.g. --sort -accuracy or --sort loss")
        return cls(name, descending)

    def describe(self) -> str:
        return f"{self.metric} ({'highest' if self.descending else 'lowest'} first)"


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and not math.isnan(value) else None


def sort_column(spec: SortSpec, columns: list[str]) -> str | None:
    for candidate in (f"metric:{spec.metric}", spec.metric):
        if candidate in columns:
            return candidate
    return None


def best_rows(rows: list[dict[str, str]], spec: SortSpec, columns: list[str], top: int) -> list[dict[str, str]]:
    """The `top` finished-ok rows with a numeric value of the metric, best first (ties: grid order)."""
    column = sort_column(spec, columns)
    if column is None:
        return []
    scored = [(value, int(row.get("index") or 0), row) for row in rows
              if row.get("status") == "ok" and (value := _number(row.get(column))) is not None]
    scored.sort(key=lambda item: ((-item[0] if spec.descending else item[0]), item[1]))
    return [row for _, _, row in scored[:top]]


def _clip(text: str, limit: int = TABLE_CELL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def table_lines(rows: list[dict[str, str]], columns: list[str], param_names: list[str],
                first_metric: str | None = None) -> list[str]:
    """A plain text table of rows: index, parameters, metrics (the sort metric first), seconds, host."""
    params = [param_column(name) for name in param_names]
    fixed = set(LEAD_COLUMNS) | set(FIXED_COLUMNS) | {LOG_COLUMN} | set(params)
    metrics = [column for column in columns if column not in fixed]
    if first_metric in metrics:
        metrics.remove(first_metric)
        metrics.insert(0, first_metric)
    shown = ["index", *params, *metrics[:TABLE_METRICS], "seconds", "host"]
    headers = ["#" if column == "index" else column for column in shown]
    cells = [[_clip(row.get(column, "")) for column in shown] for row in rows]
    widths = [max([len(header)] + [len(line[i]) for line in cells]) for i, header in enumerate(headers)]

    def line(values: list[str]) -> str:
        return "  ".join(value.rjust(width) if i == 0 else value.ljust(width)
                         for i, (value, width) in enumerate(zip(values, widths))).rstrip()

    return [line(headers)] + [line(values) for values in cells]


# --------------------------------------------------------------------------- progress


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def eta_seconds(finished: int, total: int, elapsed: float) -> float | None:
    """Time left at the pace so far; None before anything finished, and once everything has."""
    if finished <= 0 or finished >= total:
        return None
    return elapsed / finished * (total - finished)


def progress_line(*, finished: int, running: int, failed: int, total: int, elapsed: float, width: int = 24) -> str:
    """`[#########...............] 9/24 done, 4 running, 1 failed, 0:42 elapsed, ETA 1:10`"""
    filled = 0 if total <= 0 else min(width, int(width * finished / total))
    eta = eta_seconds(finished, total, elapsed)
    text = (f"[{'#' * filled}{'.' * (width - filled)}] {finished}/{total} done, {running} running, "
            f"{failed} failed, {format_duration(elapsed)} elapsed")
    return text + (f", ETA {format_duration(eta)}" if eta is not None else "")
