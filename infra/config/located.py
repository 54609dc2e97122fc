"""Errors that name the key path and the line of the file: `roles.workers[2].host: ... (cluster.yaml:14)`."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .values import quoted


def format_path(path: tuple) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            shown = _path_part(part)
            text += f".{shown}" if text else shown
    return text or "(top level)"


def _path_part(part: Any) -> str:
    """A key as written, unless it would break the one-line message (a newline, a control character)
    or drown it (a 10 kB key): then quoted and clipped."""
    text = part if isinstance(part, str) else str(part)
    return text if text.isprintable() and len(text) <= 60 else quoted(part)


class Located:
    """Builds `key.path: message (file:line)` errors for one loaded file."""

    def __init__(self, filename: str, lines: dict[tuple, int]):
        self.filename = filename
        self.lines = lines

    def line_of(self, path: tuple) -> int | None:
        while True:
            if path in self.lines:
                return self.lines[path]
            if not path:
                return None
            path = path[:-1]

    def error(self, path: tuple, message: str) -> ConfigError:
        line = self.line_of(tuple(path))
        where = f"{self.filename}:{line}" if line else self.filename
        return ConfigError(f"{format_path(tuple(path))}: {message} ({where})")
