"""Helpers of the tests that build a small project folder and check file digests."""

from __future__ import annotations

import hashlib
from pathlib import Path


def write(root: Path, rel: str, content: str | bytes = "x") -> Path:
    """Write `content` at `root/rel`, making its folders; returns the file's path."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def sha(content: str) -> str:
    return hashlib.sha256(content.encode()).hexdigest()
