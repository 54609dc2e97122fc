"""Carry out plan steps on a host and record what they changed in the manifest."""

from __future__ import annotations

from typing import Callable

from ..plans.steps import Step
from ..state.manifest import Manifest
from ..transport.connection import Connection
from ..transport.result import check_interrupted


def execute_step(conn: Connection, step: Step, manifest: Manifest, *, on_line: Callable[[str], None] | None = None):
    """Run one step; returns what the engine answered (a container's or image's id) or None.

    After Ctrl-C no step starts (Interrupted); the step under way ends with its connection.
    """
    check_interrupted()
    host = conn.host
    for record in step.records:
        if record.before:
            manifest.apply(host, record.kind, record.name, record.role, record.ident)
    answer = None
    if step.op is not None:
        answer = conn.engine.apply(step.op, on_line=on_line)
    elif step.command is not None:
        conn.run(list(step.command), stdin=step.stdin, timeout=step.timeout)
    for record in step.records:
        if record.after:
            ident = answer if isinstance(answer, str) and record.kind == "add_container" else record.ident
            manifest.apply(host, record.kind, record.name, record.role, ident)
    return answer


def execute_steps(conn: Connection, steps: list[Step], manifest: Manifest, *,
                  on_done: Callable[[Step], None] | None = None) -> None:
    """Run steps in order; the first failing step ends the host's work (its error propagates)."""
    for step in steps:
        execute_step(conn, step, manifest)
        if on_done is not None:
            on_done(step)
