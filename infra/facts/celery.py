"""Parsers of what the probes of `infra.commands.celery` print, and of RabbitMQ's queue list."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from ..errors import redact


def last_json_line(output: str, opening: str = "{"):
    """The last line of `output` that is a JSON value starting with `opening` (others are log noise)."""
    for line in reversed(output.strip().splitlines()):
        line = line.strip()
        if line.startswith(opening):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


@dataclass(frozen=True)
class ReadinessEvent:
    """One line of `READINESS_PROBE`: the broker's login (`broker`), workers that answered
    (`answered`), or the end of the wait (`done`, with the nodes still `missing`)."""

    kind: str
    ok: bool = True
    nodes: tuple[str, ...] = ()
    error: str | None = None


def parse_readiness_line(line: str) -> ReadinessEvent | None:
    """The event of one line the readiness probe printed; None for anything else (log noise)."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("event") not in ("broker", "answered", "done"):
        return None
    kind = data["event"]
    names = data.get("missing" if kind == "done" else "nodes") or []
    error = data.get("error")
    return ReadinessEvent(kind, ok=bool(data.get("ok", True)),
                          nodes=tuple(str(name) for name in names if isinstance(name, str)),
                          error=redact(str(error)) if error else None)


def active_counts(replies: dict | None) -> dict[str, int]:
    """Node -> tasks running now, from `inspect().active()` (a list of tasks per node)."""
    return {node: len(tasks or []) for node, tasks in (replies or {}).items()}


def processed_counts(replies: dict | None) -> dict[str, int]:
    """Node -> tasks processed since the worker started, from `inspect().stats()` ("total")."""
    counts = {}
    for node, stats in (replies or {}).items():
        total = (stats or {}).get("total") or {}
        counts[node] = sum(int(n) for n in total.values()) if isinstance(total, dict) else 0
    return counts


@dataclass(frozen=True)
class CeleryView:
    """What the workers told the master: which answered, their active and processed counts."""

    active: dict[str, int] = field(default_factory=dict)
    processed: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    @property
    def answered(self) -> bool:
        return self.error is None

    @property
    def online(self) -> set[str]:
        return set(self.active) | set(self.processed)


def parse_celery_probe(output: str) -> CeleryView:
    """The JSON line printed by CELERY_PROBE."""
    data = last_json_line(output)
    if not isinstance(data, dict):
        lines = output.strip().splitlines()
        return CeleryView(error=redact(lines[-1]) if lines else "no answer from the master container")
    if data.get("error"):
        return CeleryView(error=redact(str(data["error"])))
    return CeleryView(active_counts(data.get("active")), processed_counts(data.get("stats")))


@dataclass(frozen=True)
class QueueStatus:
    name: str
    messages: int  # ready + unacknowledged (taken by a worker, not finished)
    consumers: int
    ready: int | None = None
    unacked: int | None = None

    @property
    def internal(self) -> bool:
        """Celery's own queues: events (celeryev.*), broadcast and reply queues (*.pidbox)."""
        return self.name.startswith(("celeryev.", "amq.")) or self.name.endswith(".pidbox")


def parse_list_queues(output: str) -> list[QueueStatus]:
    """`rabbitmqctl list_queues --formatter json name messages ... consumers`: a JSON array of objects."""
    text = output.strip()
    rows = None
    for match in re.finditer(r"^\[", text, re.MULTILINE):  # the list starts a line; messages may precede it
        try:
            rows = json.loads(text[match.start():])
            break
        except ValueError:
            continue
    if not isinstance(rows, list):
        raise ValueError(f"no JSON list in the output: {text.splitlines()[-1] if text else 'empty'}")

    def number(row: dict, key: str) -> int | None:
        return int(row[key]) if isinstance(row.get(key), (int, float)) else None

    queues = [QueueStatus(str(r.get("name", "")), number(r, "messages") or 0, number(r, "consumers") or 0,
                          number(r, "messages_ready"), number(r, "messages_unacknowledged"))
              for r in rows if isinstance(r, dict)]
    return sorted(queues, key=lambda q: (q.internal, q.name))
