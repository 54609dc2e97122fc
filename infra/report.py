"""What people see: one line per event, prefixed by the host it concerns."""

from __future__ import annotations

import sys
import threading

from rich.console import Console
from rich.markup import escape


class Reporter:
    def __init__(self, quiet: bool = False, stream=None):
        self.console = Console(file=stream or sys.stdout, highlight=False, soft_wrap=True)
        self.errors = Console(file=sys.stderr, highlight=False, soft_wrap=True)
        self.quiet = quiet
        self._lock = threading.Lock()

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
