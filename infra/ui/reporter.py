"""What people see: one line per event, prefixed by the host it concerns."""

from __future__ import annotations

import sys
import threading
from functools import cached_property
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console


def escape(text: str) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(text)


class Reporter:
    """Prints through rich, imported with the first line printed, not with this module: a
    command may load it while it waits for the hosts (see `workflows.sync_files`)."""

    def __init__(self, quiet: bool = False, stream=None):
        self.quiet = quiet
        self._stream = stream
        self._lock = threading.Lock()

    @cached_property
    def console(self) -> Console:
        from rich.console import Console

        return Console(file=self._stream or sys.stdout, highlight=False, soft_wrap=True)

    @cached_property
    def errors(self) -> Console:
        from rich.console import Console

        return Console(file=sys.stderr, highlight=False, soft_wrap=True)

    def host(self, host: str, message: str, style: str = "") -> None:
        if self.quiet:
            return
        with self._lock:
            text = f"[bold]{escape(host):<12}[/bold] {escape(message)}"
            self.console.print(f"[{style}]{text}[/{style}]" if style else text)

    def info(self, message: str) -> None:
        if not self.quiet:
            with self._lock:
                self.console.print(escape(message))

    def heading(self, message: str) -> None:
        if not self.quiet:
            with self._lock:
                self.console.print(f"[bold]{escape(message)}[/bold]")

    def warn(self, message: str) -> None:
        with self._lock:
            self.errors.print(f"[yellow]warning:[/yellow] {escape(message)}")
