"""What a sweep's report shows, decided from its results alone: the figures as plain plotly data.

The input is the sweep's CSV (see `results`) and, when there are any, the runs' log files. The
CSV is read by position, not by a list of known names, so any parameters and metrics work:
the parameters are the columns between `id` and `status`, the metrics the columns after the
fixed ones (`status, exit_code, seconds, host, attempts`) other than `log`. A status is any
word (`ok`, `failed`, `timeout`, `cancelled`, `pruned`, ...); only `ok` runs compete for best.

Intermediate metrics come from the logs: every output line that is a JSON object or only
`key=value` words and carries a step (`epoch`, `step`, ...) is one point of a learning curve.
The figures are dicts of plotly's figure schema (`{"data": [...], "layout": {...}}`), so this
module needs no plotting library and its tests look at numbers, not pictures.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from .results import (
    FIXED_COLUMNS,
    LEAD_COLUMNS,
    LOG_COLUMN,
    SortSpec,
    best_rows,
    sort_column,
)
from ..runtime.metrics import line_metrics as reported_metrics

PRUNED = "pruned"
OK = "ok"
STATUS_ORDER = ("ok", "failed", "pruned", "timeout", "cancelled")
STEP_KEYS = ("epoch", "step", "iteration", "iter", "round")
# Names that say which way a metric is better, for a report made without --sort.
HIGHER_IS_BETTER = ("acc", "auc", "f1", "score", "precision", "recall", "r2", "reward", "iou", "bleu")
LOWER_IS_BETTER = ("loss", "error", "err", "mse", "rmse", "mae", "perplexity", "regret")
NOT_OBJECTIVES = ("seconds", "time", "duration", "epoch", "step", "iteration", "attempt")
BEST_ROWS = 10
TABLE_METRICS = 5  # other metric columns in the best-runs table, beside the objective
CURVE_METRICS = 4  # learning-curve figures at most (one per intermediate metric)
MAX_POINTS_PER_RUN = 2000  # a longer curve is thinned evenly: the figure stays light
LOG_SCALE_RATIO = 50.0  # a positive numeric parameter spanning this factor gets a log axis
CURVE_RUNS = 200  # runs drawn in a learning-curve figure at most: the best first, then in grid order
LEGEND_RUNS = 30  # a curve figure of more runs has no legend (hover names each line)
# Ok runs' lines take blues and greens, so the red of pruned runs and the grey of failed ones stand out.
OK_COLOURS = ("#1f77b4", "#2ca02c", "#17becf", "#9467bd", "#bcbd22", "#8c564b", "#e377c2", "#393b79", "#637939")
PRUNED_COLOUR, FAILED_COLOUR = "#d62728", "#7f7f7f"


class ReportInputError(ValueError):
    """Results the report cannot be made from (an empty or malformed CSV, an unknown metric)."""


# --------------------------------------------------------------------------- the results


@dataclass(frozen=True)
class SweepTable:
    """The CSV, with which columns are parameters and which are metrics."""

    columns: list[str]
    rows: list[dict[str, str]]
    params: list[str]
    metrics: list[str]

    def status(self, row: Mapping[str, str]) -> str:
        return (row.get("status") or "").strip().lower() or "unknown"


def read_results_csv(text: str) -> SweepTable:
    """The sweep's CSV as a SweepTable; ReportInputError when it is not one."""
    if not text.strip():
        raise ReportInputError("the results CSV is empty")
    try:
        reader = csv.DictReader(io.StringIO(text), strict=True)
        columns = list(reader.fieldnames or [])
        rows = [{k: (v or "") for k, v in row.items() if k is not None} for row in reader]
    except csv.Error as exc:
        raise ReportInputError(f"the results CSV is malformed: {exc}") from None
    missing = [column for column in ("id", "status") if column not in columns]
    if missing:
        raise ReportInputError(f"the results CSV has no {' or '.join(repr(m) for m in missing)} column "
                               f"(columns: {', '.join(columns[:8]) or 'none'})")
    first, last = columns.index("id"), columns.index("status")
    if last < first:
        raise ReportInputError("the results CSV is malformed: its 'status' column comes before 'id'")
    params = columns[first + 1:last]
    known = set(LEAD_COLUMNS) | set(FIXED_COLUMNS) | {LOG_COLUMN} | set(params)
    metrics = [column for column in columns[last + 1:] if column not in known]
    rows = [row for row in rows if row.get("id")]
    if not rows:
        raise ReportInputError("the results CSV has no runs yet")
    return SweepTable(columns, rows, params, metrics)


def number(text: str | None) -> float | None:
    """A cell as a finite float, or None (empty, text, nan, inf)."""
    if text is None or isinstance(text, bool):
        return None
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def display_name(column: str) -> str:
    """`metric:seconds` (a metric named like a column) and `param:host` read as their own names."""
    for prefix in ("metric:", "param:"):
        if column.startswith(prefix):
            return column[len(prefix):]
    return column


def run_label(table: SweepTable, row: Mapping[str, str]) -> str:
    return " ".join(f"{display_name(p)}={row.get(p, '')}" for p in table.params)


# --------------------------------------------------------------------------- the objective


@dataclass(frozen=True)
class Objective:
    """The metric runs are ranked by, and which way is better."""

    column: str
    maximize: bool

    @property
    def name(self) -> str:
        return display_name(self.column)

    def describe(self) -> str:
        return f"{self.name} ({'highest' if self.maximize else 'lowest'} is best)"


def _numeric_metric(table: SweepTable, column: str) -> bool:
    return any(number(row.get(column)) is not None for row in table.rows)


def guess_maximize(name: str) -> bool:
    lowered = name.lower()
    if any(hint in lowered for hint in LOWER_IS_BETTER):
        return False
    return any(hint in lowered for hint in HIGHER_IS_BETTER)


def choose_objective(table: SweepTable, sort: SortSpec | None = None) -> Objective | None:
    """The metric asked for (`--sort`), else the first numeric metric whose name tells its direction
    (accuracy, loss, ...), else the first numeric one (lower is better); None when no metric is numeric."""
    if sort is not None:
        column = sort_column(sort, table.metrics)
        if column is None:
            raise ReportInputError(f"no metric {sort.metric!r} in the results "
                                   f"(metrics: {', '.join(display_name(m) for m in table.metrics) or 'none'})")
        return Objective(column, sort.descending)
    numeric = [column for column in table.metrics if _numeric_metric(table, column)]
    candidates = [c for c in numeric if not any(word in display_name(c).lower() for word in NOT_OBJECTIVES)]
    for column in candidates:
        lowered = display_name(column).lower()
        if any(hint in lowered for hint in HIGHER_IS_BETTER + LOWER_IS_BETTER):
            return Objective(column, guess_maximize(lowered))
    chosen = (candidates or numeric or [None])[0]
    return None if chosen is None else Objective(chosen, guess_maximize(display_name(chosen)))


def ranked_rows(table: SweepTable, objective: Objective | None, top: int = BEST_ROWS) -> list[dict[str, str]]:
    """The best `ok` runs by the objective, best first (ties: the grid's order)."""
    if objective is None:
        return []
    return best_rows(table.rows, SortSpec(objective.column, objective.maximize), table.columns, top)


# --------------------------------------------------------------------------- learning curves


@dataclass
class RunCurve:
    """What one run's log said as it went: points of (step, {metric: value})."""

    steps: list[float] = field(default_factory=list)
    values: list[dict[str, float]] = field(default_factory=list)
    step_key: str = ""
    logged_status: str = ""  # from the log's `# end: STATUS, ...` line, if any


def line_metrics(line: str) -> dict[str, Any] | None:
    """The metrics a line reports: a JSON object, or `key=value` words; None for anything else."""
    found = reported_metrics(line)  # read as the CLI and the driver read them
    return found[1] if found else None


def read_curve(lines: Iterable[str]) -> RunCurve:
    """A run's intermediate metrics from its log lines (infra's own `# ...` lines give its end)."""
    curve = RunCurve()
    for line in lines:
        if line.startswith("# end: "):
            curve.logged_status = line[len("# end: "):].split(",")[0].strip().lower()
            continue
        if line.startswith("#"):
            continue
        metrics = line_metrics(line)
        if not metrics:
            continue
        key = curve.step_key or next((k for k in STEP_KEYS if k in metrics), "")
        step = number(metrics.get(key)) if key else None
        if step is None:
            continue
        curve.step_key = key
        values = {str(k): v for k, raw in metrics.items() if k != key and (v := number(raw)) is not None}
        if values:
            curve.steps.append(step)
            curve.values.append(values)
    if len(curve.steps) > MAX_POINTS_PER_RUN:
        stride = math.ceil(len(curve.steps) / MAX_POINTS_PER_RUN)
        keep = list(range(0, len(curve.steps), stride))
        if keep[-1] != len(curve.steps) - 1:
            keep.append(len(curve.steps) - 1)  # the last point is where a pruned run stopped
        curve.steps = [curve.steps[i] for i in keep]
        curve.values = [curve.values[i] for i in keep]
    return curve


# --------------------------------------------------------------------------- the report's data


@dataclass
class Figure:
    """One plot: its heading, the plotly figure as plain data, and a line said under it."""

    key: str
    title: str
    spec: dict
    note: str = ""


@dataclass
class ReportData:
    name: str
    counts: dict[str, int]
    objective: Objective | None
    best: dict[str, str] | None
    best_label: str
    table_header: list[str]
    table_rows: list[list[str]]
    table_statuses: list[str]
    figures: list[Figure]
    notes: list[str]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary_line(self) -> str:
        """`24 runs: 20 ok, 3 failed, 1 pruned; best accuracy 0.91 (lr=0.1 ...), run #7`"""
        counts = ", ".join(f"{n} {status}" for status, n in self.counts.items())
        text = f"{self.total} run{'s' if self.total != 1 else ''}: {counts}"
        if self.objective is None:
            return text + "; no numeric metric to rank the runs by"
        if self.best is None:
            return text + f"; no run finished ok with a numeric {self.objective.name}"
        return (text + f"; best {self.objective.name} {self.best[self.objective.column]} "
                f"(run #{self.best.get('index', '?')}: {self.best_label or 'no parameters'})")


def status_counts(table: SweepTable) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in table.rows:
        status = table.status(row)
        counts[status] = counts.get(status, 0) + 1
    ordered = {status: counts.pop(status) for status in STATUS_ORDER if status in counts}
    return {**ordered, **dict(sorted(counts.items()))}


def _is_numeric_param(table: SweepTable, column: str) -> bool:
    cells = [row.get(column, "") for row in table.rows if row.get(column, "") != ""]
    return bool(cells) and all(number(cell) is not None for cell in cells)


def _axis_for(values: list[float]) -> dict:
    positive = [v for v in values if v > 0]
    if positive and len(positive) == len(values) and max(positive) / min(positive) >= LOG_SCALE_RATIO:
        return {"type": "log"}
    return {}


def _category_order(cells: Iterable[str]) -> list[str]:
    seen: list[str] = []
    for cell in cells:
        if cell not in seen:
            seen.append(cell)
    return seen


def best_table(table: SweepTable, objective: Objective | None,
               rows: list[dict[str, str]]) -> tuple[list[str], list[list[str]]]:
    metrics = [m for m in table.metrics if objective is None or m != objective.column][:TABLE_METRICS]
    shown = ["index", *table.params, *([objective.column] if objective else []), *metrics, "seconds", "host"]
    header = ["#" if c == "index" else display_name(c) for c in shown]
    return header, [[row.get(column, "") for column in shown] for row in rows]


def varied_params(table: SweepTable) -> list[str]:
    """The parameters that take more than one value: a constant one has nothing to show."""
    return [p for p in table.params if len({row.get(p, "") for row in table.rows}) > 1]


def parallel_coordinates(table: SweepTable, objective: Objective, rows: list[dict[str, str]]) -> dict:
    """One line per ok run through each varied parameter's axis to the objective's, coloured by it."""
    dimensions = []
    for param in varied_params(table):
        cells = [row.get(param, "") for row in rows]
        if _is_numeric_param(table, param):
            dimensions.append({"label": display_name(param), "values": [number(c) for c in cells]})
        else:
            order = _category_order(row.get(param, "") for row in table.rows)
            dimensions.append({"label": display_name(param), "values": [order.index(c) for c in cells],
                               "tickvals": list(range(len(order))), "ticktext": order})
    scores = [number(row.get(objective.column)) for row in rows]
    dimensions.append({"label": objective.name, "values": scores})
    return {
        "data": [{"type": "parcoords", "dimensions": dimensions,
                  "line": {"color": scores, "colorscale": "Viridis", "reversescale": not objective.maximize,
                           "showscale": True, "colorbar": {"title": {"text": objective.name}}}}],
        "layout": {"margin": {"l": 60, "r": 60, "t": 50, "b": 30}, "height": 420},
    }


def metric_against(table: SweepTable, objective: Objective, param: str, rows: list[dict[str, str]],
                   best_index: str | None) -> dict:
    """The objective of every ok run against one parameter (categories in the grid's order)."""
    numeric = _is_numeric_param(table, param)
    xs = [number(row.get(param)) if numeric else row.get(param, "") for row in rows]
    ys = [number(row.get(objective.column)) for row in rows]
    xaxis: dict = {"title": {"text": display_name(param)}}
    if numeric:
        xaxis.update(_axis_for([x for x in xs if x is not None]))
    else:
        xaxis.update({"type": "category",
                      "categoryorder": "array",
                      "categoryarray": _category_order(row.get(param, "") for row in table.rows)})
    symbols = ["star" if row.get("index") == best_index else "circle" for row in rows]
    sizes = [14 if row.get("index") == best_index else 8 for row in rows]
    return {
        "data": [{"type": "scatter", "mode": "markers", "x": xs, "y": ys, "name": objective.name,
                  "text": [f"#{row.get('index')}: {run_label(table, row)}" for row in rows],
                  "marker": {"symbol": symbols, "size": sizes, "color": ys, "colorscale": "Viridis",
                             "reversescale": not objective.maximize}}],
        "layout": {"xaxis": xaxis, "yaxis": {"title": {"text": objective.name}}, "height": 300,
                   "margin": {"l": 60, "r": 20, "t": 40, "b": 50}, "showlegend": False},
    }


def curve_metric_names(curves: Mapping[str, RunCurve], objective: Objective | None) -> list[str]:
    names: list[str] = []
    for curve in curves.values():
        for values in curve.values:
            for name in values:
                if name not in names:
                    names.append(name)
    if objective is not None and objective.name in names:
        names.remove(objective.name)
        names.insert(0, objective.name)
    return names[:CURVE_METRICS]


def curves_to_draw(table: SweepTable, curves: Mapping[str, RunCurve], objective: Objective | None,
                   limit: int = CURVE_RUNS) -> dict[str, RunCurve]:
    """The curves a figure can hold and still be read: all of them, or the best runs' first."""
    if len(curves) <= limit:
        return dict(curves)
    first = [row["id"] for row in ranked_rows(table, objective, limit)]
    chosen = set(first)
    order = [*first, *(row["id"] for row in table.rows if row["id"] not in chosen)]
    return {run_id: curves[run_id] for run_id in [run_id for run_id in order if run_id in curves][:limit]}


def learning_curves(table: SweepTable, metric: str, curves: Mapping[str, RunCurve],
                    best_index: str | None) -> tuple[dict, int]:
    """One line per run of an intermediate metric over its steps; pruned runs dotted and ended with an ✕.

    Returns the figure and how many pruned runs it holds."""
    traces = []
    pruned_shown = 0
    step_keys: list[str] = []
    for row in table.rows:
        curve = curves.get(row["id"])
        if curve is None:
            continue
        points = [(step, values[metric]) for step, values in zip(curve.steps, curve.values) if metric in values]
        if not points:
            continue
        if curve.step_key not in step_keys:
            step_keys.append(curve.step_key)
        status = table.status(row)
        pruned = status == PRUNED or curve.logged_status == PRUNED
        pruned_shown += pruned
        best = row.get("index") == best_index
        name = f"#{row.get('index')}" + (" pruned" if pruned else "" if status == OK else f" {status}")
        line: dict = {"width": 4 if best else 1.5, "color": OK_COLOURS[len(traces) % len(OK_COLOURS)]}
        if pruned:
            line.update({"dash": "dot", "color": PRUNED_COLOUR, "width": 2})
        elif status != OK:
            line.update({"dash": "dash", "color": FAILED_COLOUR})
        marker = {"color": line["color"], "symbol": ["circle"] * (len(points) - 1) + ["x" if pruned else "circle"],
                  "size": [4] * (len(points) - 1) + [11 if pruned else 4]}
        traces.append({"type": "scatter", "mode": "lines+markers", "name": name + (" (best)" if best else ""),
                       "x": [p[0] for p in points], "y": [p[1] for p in points], "line": line, "marker": marker,
                       "hovertext": f"#{row.get('index')} {status}: {run_label(table, row)}",
                       "opacity": 0.7 if status != OK and not pruned else 1.0})
    # A run that diverged (loss 1e12 beside 0.1) would flatten every other curve: a log axis then.
    yaxis = {"title": {"text": metric}, **_axis_for([y for trace in traces for y in trace["y"]])}
    figure = {
        "data": traces,
        "layout": {"xaxis": {"title": {"text": " / ".join(step_keys) or "step"}},
                   "yaxis": yaxis, "height": 380,
                   "margin": {"l": 60, "r": 20, "t": 40, "b": 50}, "legend": {"font": {"size": 10}},
                   "showlegend": len(traces) <= LEGEND_RUNS},
    }
    return figure, pruned_shown


def run_time_per_host(table: SweepTable) -> dict | None:
    """Each host's runs' seconds as a box with every run shown; None when no run has a time."""
    hosts: dict[str, list[tuple[float, dict[str, str]]]] = {}
    for row in table.rows:
        seconds = number(row.get("seconds"))
        if seconds is not None:
            hosts.setdefault(row.get("host") or "(no host)", []).append((seconds, row))
    if not hosts:
        return None
    traces = [{"type": "box", "name": f"{host} ({len(runs)})", "y": [s for s, _ in runs], "boxpoints": "all",
               "jitter": 0.4, "pointpos": 0, "marker": {"color": OK_COLOURS[number % len(OK_COLOURS)]},
               "text": [f"#{row.get('index')} {table.status(row)}: {run_label(table, row)}" for _, row in runs]}
              for number, (host, runs) in enumerate(sorted(hosts.items()))]
    return {"data": traces,
            "layout": {"yaxis": {"title": {"text": "seconds per run"}, "rangemode": "tozero"},
                       "xaxis": {"title": {"text": "host (runs)"}}, "height": 360, "showlegend": False,
                       "margin": {"l": 60, "r": 20, "t": 40, "b": 50}}}


def build_report(name: str, table: SweepTable, curves: Mapping[str, RunCurve] | None = None,
                 sort: SortSpec | None = None, top: int = BEST_ROWS) -> ReportData:
    """Everything the report shows, from the CSV and the runs' curves (by run id)."""
    curves = curves or {}
    objective = choose_objective(table, sort)
    best = ranked_rows(table, objective, top)
    best_row = best[0] if best else None
    best_index = best_row.get("index") if best_row else None
    header, cells = best_table(table, objective, best)
    figures: list[Figure] = []
    notes: list[str] = []
    scored = ranked_rows(table, objective, len(table.rows))
    scored.sort(key=lambda row: int(number(row.get("index")) or 0))
    if objective is None:
        notes.append("no run reported a numeric metric: nothing to rank or plot against the parameters")
    elif not scored:
        notes.append(f"no run finished ok with a numeric {objective.name}: no parameter plots yet")
    elif varied_params(table):
        figures.append(Figure("parallel", f"{objective.name} across the parameters (parallel coordinates)",
                              parallel_coordinates(table, objective, scored),
                              "drag along an axis to select a range"))
        for param in varied_params(table):
            figures.append(Figure(f"param-{param}", f"{objective.name} against {display_name(param)}",
                                  metric_against(table, objective, param, scored, best_index)))
    constant = [p for p in table.params if p not in varied_params(table)]
    if constant:
        notes.append("the same in every run: " + ", ".join(f"{display_name(p)}={table.rows[0].get(p, '')}"
                                                            for p in constant))
    metrics = curve_metric_names(curves, objective)
    if not metrics:
        notes.append("no intermediate metrics in the logs (lines such as `epoch=3 loss=0.31`): no learning curves")
    drawn = curves_to_draw(table, curves, objective)
    left_out = f" (the best first; {len(curves) - len(drawn)} more runs left out)" if len(drawn) < len(curves) else ""
    for metric in metrics:
        figure, pruned = learning_curves(table, metric, drawn, best_index)
        note = (f"{len(figure['data'])} runs{left_out}"
                + (f", {pruned} pruned (dotted, ✕ where they stopped)" if pruned else ""))
        figures.append(Figure(f"curve-{metric}", f"learning curves: {metric}", figure, note))
    hosts = run_time_per_host(table)
    if hosts is not None:
        figures.append(Figure("hosts", "run time per host", hosts))
    return ReportData(name=name, counts=status_counts(table), objective=objective, best=best_row,
                      best_label=run_label(table, best_row) if best_row else "", table_header=header,
                      table_rows=cells, table_statuses=[table.status(row) for row in best], figures=figures,
                      notes=notes)
