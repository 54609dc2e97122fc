"""The sample project's tasks, run in this process (no broker): names and results."""

import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2] / "projects" / "wordcount"
sys.path.insert(0, str(PROJECT))

from wordcount import app, tasks  # noqa: E402


def test_noop_is_registered_under_the_name_the_throughput_benchmark_sends():
    assert tasks.noop.name == "wordcount.noop"
    assert "wordcount.noop" in app.tasks


def test_noop_does_nothing_and_returns_none():
    assert tasks.noop.apply().get() is None
