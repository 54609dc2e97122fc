"""Another git revision of infra beside this checkout, for the benchmarks' `--baseline REV`."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def checkout(rev: str, into: Path) -> Path:
    """REV checked out into `into` (a temporary worktree of this repository)."""
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(into), rev], check=True,
                   capture_output=True)
    return into


def remove_checkout(worktree: Path | None) -> None:
    """The worktree gone again, also from git's list (nothing when there is none)."""
    if worktree is not None:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(worktree)],
                       capture_output=True)
