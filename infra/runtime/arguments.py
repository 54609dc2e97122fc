"""A run's command words: parameter values as the command line gets them, and the run's id.

Here rather than in `infra.sweep` because both sides spell commands: the CLI for a grid or a
random search, the driver in the master container for the trials of an Optuna search, which
are only chosen as results come. Both must write `--lr 0.001` the same way and give the same
command the same id.
"""

from __future__ import annotations

import hashlib
import json
from typing import Union

Value = Union[str, int, float, bool]


def render_value(value: Value) -> str:
    """A value as the command line gets it: `5`, `0.001`, `1e-05`, `adam` (flags never reach here)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def option_name(name: str) -> str:
    """`lr` -> `--lr`; a name written with its dashes (`-n`, `--lr`) stays as written."""
    return name if name.startswith("-") else f"--{name}"


def parameter_args(params) -> list[str]:
    """`--name value` per parameter; a flag (`true`) is `--name` alone, `false` leaves it out."""
    words: list[str] = []
    for name, value in params:
        if value is True:
            words.append(option_name(name))
        elif value is False:
            continue
        else:
            words += [option_name(name), render_value(value)]
    return words


def run_id(argv) -> str:
    return hashlib.sha256(json.dumps(list(argv)).encode()).hexdigest()[:12]


def trial_run_id(argv, trial_number: int) -> str:
    """An Optuna trial's id: its command and its number, since two trials may draw the same values."""
    return run_id([*argv, f"#trial={trial_number}"])
