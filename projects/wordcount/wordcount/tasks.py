"""Tasks: `count_words` maps one chunk of text to its word counts, `merge_counts`
(the chord callback) reduces all of them to one count."""

from __future__ import annotations

import time

from . import text
from .celery_app import app


@app.task(bind=True, name="wordcount.count_words")
def count_words(self, chunk: str, pause: float = 0.0) -> dict:
    """Count the words of one chunk; tell which worker did it.

    `pause` stands for heavier work (seconds of waiting): the fault tests keep a job running
    with it while they restart the broker or kill a worker host.
    """
    if pause:
        time.sleep(pause)
    counts = text.count_words(chunk)
    return {
        "counts": counts,
        "words": sum(counts.values()),
        "worker": self.request.hostname,
    }


@app.task(name="wordcount.merge_counts")
def merge_counts(parts: list[dict]) -> dict:
    """Sum the chunk counts; report how many chunks and which workers took part."""
    counts = text.merge_counts(p["counts"] for p in parts)
    return {
        "counts": counts,
        "words": sum(p["words"] for p in parts),
        "chunks": len(parts),
        "workers": sorted({p["worker"] for p in parts if p.get("worker")}),
    }


@app.task(name="wordcount.noop")
def noop() -> None:
    """Do nothing: what benchmarks/throughput.py sends, to time the cluster's own cost per task."""
