"""How a command on a host is bounded in time, so that one whose caller gave up does not run on."""

from __future__ import annotations

KILL_AFTER = 5  # seconds between the polite SIGTERM and the SIGKILL


def with_time_limit(argv: list[str], seconds: float) -> list[str]:
    """`timeout` (coreutils, busybox) runs `argv` in a process group of its own, sends the whole group
    SIGTERM after `seconds` and SIGKILL `KILL_AFTER` seconds later; exit code 124 says it timed out."""
    return ["timeout", "-k", str(KILL_AFTER), f"{max(seconds, 0.1):g}", *argv]
