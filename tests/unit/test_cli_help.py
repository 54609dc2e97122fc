"""Every command explains itself with an example."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from infra.cli import main

COMMANDS = sorted(main.commands)


def test_the_core_commands_exist():
    assert {"up", "clean"} <= set(COMMANDS)


def test_the_group_help_has_an_example():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "Example" in result.output
    for name in COMMANDS:
        assert name in result.output


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_help_text_has_an_example(name):
    command = main.commands[name]
    assert command.help and "Example" in command.help, f"`infra {name} --help` shows no example"


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_shows_its_example_in_help(name):
    result = CliRunner().invoke(main, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output
    assert f"infra {name}" in result.output
