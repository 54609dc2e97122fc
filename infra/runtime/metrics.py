"""What a run says about itself in its output: its metrics, and its intermediate reports.

Metrics come in either of two forms:
- a line that is a JSON object (`{"accuracy": 0.91, "loss": 0.3}`): the last such line wins;
- lines made only of `key=value` words (`epoch=3 loss=0.31`): later values replace earlier
  ones; used when the run printed no JSON object line.

An intermediate report is one line of either form that holds a step (`epoch` or `step`) and
the sweep's metric: what early stopping compares between runs. Here rather than in
`infra.sweep` because the driver in the master container reads them as they come, and must
read them as the CLI does.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

_KEY_VALUE = re.compile(r"^([A-Za-z_][A-Za-z0-9_.\-/]*)=(.+)$")
STEP_KEYS = ("epoch", "step")  # the first one a line holds is its step


def metric_value(text: str) -> int | float | str:
    """A `key=value` value as a number when it reads as one."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def line_metrics(line: str) -> tuple[str, dict[str, Any]] | None:
    """("json", {...}) for a JSON object line, ("pairs", {...}) for a line of key=value words, else None."""
    text = line.strip()
    if text.startswith("{") and text.endswith("}"):
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if isinstance(value, dict):
            return "json", value
    words = text.replace(",", " ").split()
    matches = [_KEY_VALUE.match(word) for word in words]
    if words and all(matches):
        return "pairs", {match.group(1): metric_value(match.group(2)) for match in matches}
    return None


@dataclass
class MetricsReader:
    """Reads a run's output line by line and keeps its metrics (see the module's rules)."""

    last_json: dict | None = None
    pairs: dict[str, Any] = field(default_factory=dict)

    def feed(self, line: str) -> None:
        found = line_metrics(line)
        if found is None:
            return
        kind, values = found
        if kind == "json":
            self.last_json = values
        else:
            self.pairs.update(values)

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.last_json) if self.last_json is not None else dict(self.pairs)


def finite_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def intermediate_report(line: str, metric: str) -> tuple[int, float] | None:
    """(step, value) when the line reports the metric at a whole step, e.g. `epoch=3 loss=0.31`."""
    found = line_metrics(line)
    if found is None:
        return None
    values = found[1]
    value = finite_number(values.get(metric))
    step_key = next((key for key in STEP_KEYS if key in values), None)
    if value is None or step_key is None:
        return None
    step = values[step_key]
    if isinstance(step, float) and step.is_integer():
        step = int(step)
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        return None
    return step, value
