"""The tars infra makes, byte for byte: the same members give the same bytes.

The project tar's digest is what a volunteer's worker compares to learn that the project changed,
and the tar for `extract_files` is what the golden tests of `up` and `sync-files` fingerprint:
a change of these bytes shows up here first.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import time
from pathlib import Path

import pytest

from infra.commands.files import tar_of
from infra.facts.files import scan_local
from infra.runtime import endpoint

LONG = "deep/" + "x" * 120 + ".py"  # a name over ustar's 100 characters: a PAX header of its own
STAMP = 1_700_000_000


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    files = {"run.sh": (b"#!/bin/sh\n", 0o755), "pkg/tasks.py": (b"X = 1\n", 0o644), "pkg/caf\u00e9.txt": (b"c", 0o600),
             LONG: (b"long\n", 0o640), "output/big.csv": (b"skipped\n", 0o644)}
    for rel, (data, mode) in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(mode)
        os.utime(path, (STAMP, STAMP))
    return root


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def test_the_tar_for_extract_keeps_modes_and_times_with_folders_first(project):
    data = tar_of(project, ["pkg/tasks.py", "pkg/caf\u00e9.txt", LONG, "run.sh"])
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert [(m.name, m.isdir(), oct(m.mode), m.mtime) for m in tar.getmembers()] == [
            ("pkg", True, "0o755", 0), ("deep", True, "0o755", 0),
            ("pkg/tasks.py", False, "0o644", STAMP), ("pkg/caf\u00e9.txt", False, "0o600", STAMP),
            (LONG, False, "0o640", STAMP), ("run.sh", False, "0o755", STAMP)]
    assert (len(data), digest(data)) == (10240, "5511b9a017446288")


def test_the_project_tar_for_volunteers_has_fixed_times_and_two_modes(project):
    data, sha = endpoint.project_tar(str(project), frozenset(scan_local(project)))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert [(m.name, oct(m.mode), m.mtime) for m in tar.getmembers()] == [
            (LONG, "0o644", 0), ("pkg/caf\u00e9.txt", "0o644", 0), ("pkg/tasks.py", "0o644", 0), ("run.sh", "0o755", 0)]
    assert sha == hashlib.sha256(data).hexdigest()
    assert (len(data), digest(data)) == (10240, "b13d21a1c054ecd6")


def test_the_bundle_is_private_files_stamped_with_the_time_it_was_made(monkeypatch):
    monkeypatch.setattr(time, "time", lambda: STAMP + 0.5)
    data = endpoint.bundle_tar({"volunteer.json": "{}\n", "ca.crt": "CA\n"})
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert [(m.name, oct(m.mode), m.mtime) for m in tar.getmembers()] == [
            ("ca.crt", "0o600", STAMP), ("volunteer.json", "0o600", STAMP)]
    assert (len(data), digest(data)) == (10240, "05f10058af15aa45")
