"""Carry out plan steps on a host and record what they changed in the manifest."""

from __future__ import annotations

from typing import Callable

from ..commands.files import tar_of
from ..plans.steps import Step
from ..state.manifest import Manifest
from ..transport.connection import Connection
from ..transport.result import check_interrupted


def step_input(step: Step) -> bytes | None:
    """What a step's command is fed on stdin: its content, or the tar of the files it sends.

    The files are read here, right before they travel, so that planning (and `--dry-run`) reads none.
    """
    if step.files is not None:
        return tar_of(step.files.root, list(step.files.paths))
    return step.stdin


def _carry_out(conn: Connection, step: Step, manifest: Manifest,
               on_line: Callable[[str], None] | None) -> tuple[object, int]:
    """Run one step; returns what the engine answered (or None) and how many bytes went on stdin."""
    check_interrupted()
    host = conn.host
    for record in step.records:
        if record.before:
            manifest.apply(host, record.kind, record.name, record.role, record.ident)
    answer, fed = None, 0
    if step.op is not None:
        answer = conn.engine.apply(step.op, on_line=on_line)
    elif step.command is not None:
        stdin = step_input(step)
        conn.run(list(step.command), stdin=stdin, timeout=step.timeout)
        fed = len(stdin or b"")
    for record in step.records:
        if record.after:
            ident = answer if isinstance(answer, str) and record.kind == "add_container" else record.ident
            manifest.apply(host, record.kind, record.name, record.role, ident)
    return answer, fed


def execute_step(conn: Connection, step: Step, manifest: Manifest, *, on_line: Callable[[str], None] | None = None):
    """Run one step; returns what the engine answered (a container's or image's id) or None.

    After Ctrl-C no step starts (Interrupted); the step under way ends with its connection.
    """
    answer, _ = _carry_out(conn, step, manifest, on_line)
    return answer


def execute_steps(conn: Connection, steps: list[Step], manifest: Manifest) -> int:
    """Run steps in order; the first failing step ends the host's work (its error propagates).

    Returns how many bytes the steps fed on stdin: the tar of the files sent, for one.
    """
    fed = 0
    for step in steps:
        fed += _carry_out(conn, step, manifest, None)[1]
    return fed
