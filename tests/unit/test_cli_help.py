"""Every command explains itself with an example, and each module of the command line imports on its own."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from infra.cli import main
from tests.unit.package_imports import PACKAGE, REPO, imported_modules, module_name

COMMANDS = main.list_commands(click.Context(main))


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
    command = main.get_command(click.Context(main), name)
    assert command.help and "Example" in command.help, f"`infra {name} --help` shows no example"


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_shows_its_example_in_help(name):
    result = CliRunner().invoke(main, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output
    assert f"infra {name}" in result.output


# --------------------------------------------------------------------------- the package's imports

CLI_MODULES = sorted(
    "infra.cli" if path.name == "__init__.py" else f"infra.cli.{path.stem}"
    for path in (PACKAGE / "cli").glob("*.py")
)
ENTRY_POINTS = {"infra.__main__"}  # run the command line; nothing imports them


def is_cli(module: str) -> bool:
    return module == "infra.cli" or module.startswith("infra.cli.")


@pytest.mark.parametrize("module", CLI_MODULES)
def test_every_cli_module_imports_on_its_own(module):
    result = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr


def test_no_library_module_imports_the_command_line():
    offenders = [
        module_name(path) for path in PACKAGE.rglob("*.py")
        if not is_cli(module_name(path)) and module_name(path) not in ENTRY_POINTS
        and any(is_cli(imported) for imported in imported_modules(path))
    ]
    assert offenders == [], f"library modules importing infra.cli: {offenders}"


@pytest.mark.parametrize("module", [m for m in CLI_MODULES if m != "infra.cli"])
def test_command_modules_import_only_the_shared_options_from_the_cli(module):
    path = PACKAGE / "cli" / f"{module.rpartition('.')[2]}.py"
    cli_imports = {imported for imported in imported_modules(path) if is_cli(imported)}
    allowed = set() if module == "infra.cli.options" else {"infra.cli.options"}
    # `from .options import handle_errors` also lists infra.cli.options.handle_errors: a name, not a module.
    modules = {imported for imported in cli_imports if not imported.startswith("infra.cli.options.")}
    assert modules <= allowed, f"{module} imports {sorted(modules - allowed)}"


def test_a_command_imports_its_own_module_of_the_command_line_and_no_other():
    program = ("import sys\n"
               "from infra.cli import main\n"
               "main(['status', '--help'], standalone_mode=False)\n"
               "print(' '.join(sorted(m for m in sys.modules if m.startswith('infra.cli.'))))\n")
    result = subprocess.run([sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].split() == ["infra.cli.options", "infra.cli.status"]
