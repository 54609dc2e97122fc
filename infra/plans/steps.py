"""A step: one thing to do on one host, as data — what runs, what it is fed, what it records.

Plans are ordered lists of steps; `infra.workflows.execute.execute_step` carries one out and the workflow
writes its record into the manifest. `--dry-run` prints the steps' descriptions and commands.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..commands.engine import EngineOp

RecordKind = Literal[
    "add_files", "remove_files", "add_secret_dir", "remove_secret_dir",
    "add_container", "remove_container", "add_network", "remove_network", "add_volume", "remove_volume",
]

# Bounds of the steps (seconds): builds and image transfers can be long, the rest is quick.
FILE_TIMEOUT = 600
IMAGE_TIMEOUT = 3600
ENGINE_TIMEOUT = 120


@dataclass(frozen=True)
class Record:
    """What a step changes in the manifest.

    Everything a step may create is recorded before it runs, so that a run killed at any moment
    leaves nothing `clean` cannot find (a container again once it exists, with its id);
    removals are recorded once they are done.
    """

    kind: RecordKind
    name: str
    role: str = ""
    ident: str = ""  # a container's id when the plan knows it (kept or started, not created)

    @property
    def before(self) -> bool:
        return self.kind.startswith("add_")

    @property
    def after(self) -> bool:
        return not self.kind.startswith("add_") or self.kind == "add_container"


@dataclass(frozen=True)
class FilesTar:
    """Project files a step sends as one tar (`commands.files.tar_of`), named only.

    The plan stays pure, `--dry-run` included: the files are read when the step runs.
    """

    root: Path  # the folder here
    paths: tuple[str, ...]  # relative to `root`


@dataclass(frozen=True)
class Step:
    """Either an engine operation (`op`) or a shell command (`command`), never both.

    A command is fed either `stdin` (content known to the plan) or `files` (read as it runs).
    """

    description: str
    op: EngineOp | None = None
    command: tuple[str, ...] | None = None
    stdin: bytes | None = field(default=None, repr=False, compare=False)  # content, possibly secret
    files: FilesTar | None = None
    records: tuple[Record, ...] = ()
    timeout: float | None = None

    def text(self) -> str:
        """The command line this step amounts to (secrets never appear: they travel on stdin)."""
        if self.op is not None:
            return self.op.text()
        return shlex.join(self.command or ())


def engine_step(description: str, op: EngineOp, *records: Record, timeout: float | None = None) -> Step:
    return Step(description, op=op, records=tuple(records), timeout=timeout)


def shell_step(description: str, command: list[str], *records: Record, stdin: bytes | None = None,
               files: FilesTar | None = None, timeout: float | None = None) -> Step:
    return Step(description, command=tuple(command), stdin=stdin, files=files, records=tuple(records), timeout=timeout)
