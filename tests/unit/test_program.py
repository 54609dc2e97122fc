"""The `infra` program ends a command that allows it without the interpreter's teardown, and keeps its exit code."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

import infra.cli as cli
from infra.cli import options


class Ended(Exception):
    def __init__(self, code: int):
        self.code = code


@pytest.fixture
def ending(monkeypatch):
    """os._exit records its code instead of ending the test run; the flag starts unset."""
    monkeypatch.setattr(options, "_ending_at_once", False)

    def fake_exit(code: int) -> None:
        raise Ended(code)

    monkeypatch.setattr(cli.os, "_exit", fake_exit)


def command(code, *, at_once: bool):
    @click.command()
    def quick() -> None:
        click.echo("done")
        if at_once:
            options.end_at_once()
        if code is not None:
            sys.exit(code)

    return quick


@pytest.mark.parametrize("code, expected", [(None, 0), (0, 0), (1, 1), (3, 3), ("a message", 1)])
def test_a_command_that_ends_at_once_leaves_with_its_exit_code(monkeypatch, ending, capsys, code, expected):
    monkeypatch.setattr(cli, "main", command(code, at_once=True))
    monkeypatch.setattr(sys, "argv", ["infra"])
    with pytest.raises(Ended) as ended:
        cli.program()
    assert ended.value.code == expected
    out, err = capsys.readouterr()
    assert out == "done\n"
    assert err == ("a message\n" if code == "a message" else "")


def test_other_commands_leave_through_the_interpreter_as_usual(monkeypatch, ending):
    monkeypatch.setattr(cli, "main", command(2, at_once=False))
    monkeypatch.setattr(sys, "argv", ["infra"])
    with pytest.raises(SystemExit) as exited:
        cli.program()
    assert exited.value.code == 2


def test_python_m_infra_runs_the_program():
    result = subprocess.run([sys.executable, "-m", "infra", "sync-files", "-f", "/nonexistent/cluster.yaml"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "cluster.yaml" in result.stderr
