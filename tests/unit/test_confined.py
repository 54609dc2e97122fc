"""infra/confined.py: files inside a folder, never reached through a symbolic link."""

from __future__ import annotations

import os
import stat

import pytest

from infra import confined
from infra.confined import ConfinementError


@pytest.fixture
def tree(tmp_path):
    """root/ with a file, a sub folder, and links planted towards `outside/`."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("private key\n")
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "file.txt").write_text("hello\n")
    (root / "link-to-secret").symlink_to(outside / "secret")
    (root / "link-to-outside").symlink_to(outside)
    return root, outside


@pytest.mark.parametrize("rel", ["", "/etc/passwd", "../x", "a/../b", "a//b", "./a", "a/.", "a\0b"])
def test_paths_that_could_leave_the_folder_are_refused(rel):
    assert confined.path_problem(rel)
    with pytest.raises(ConfinementError):
        confined.open_file("/", rel)


def test_a_regular_file_is_read(tree):
    root, _ = tree
    data, info = confined.read_file(root, "sub/file.txt")
    assert data == b"hello\n" and stat.S_ISREG(info.st_mode)


@pytest.mark.parametrize("rel", ["link-to-secret", "link-to-outside/secret"])
def test_reading_through_a_link_is_refused(tree, rel):
    root, _ = tree
    with pytest.raises(ConfinementError, match="symbolic link"):
        confined.read_file(root, rel)


def test_a_root_that_is_a_link_is_refused(tree, tmp_path):
    root, outside = tree
    (tmp_path / "root-link").symlink_to(outside)
    with pytest.raises(ConfinementError, match="symbolic link"):
        confined.read_file(tmp_path / "root-link", "secret")


def test_writing_replaces_a_file_atomically_with_its_mode(tree):
    root, _ = tree
    confined.replace_file(root, "new/deep/result.csv", b"a,b\n", 0o644)
    written = root / "new" / "deep" / "result.csv"
    assert written.read_bytes() == b"a,b\n" and stat.S_IMODE(written.stat().st_mode) == 0o644
    confined.replace_file(root, "new/deep/result.csv", b"c\n", 0o755)
    assert written.read_bytes() == b"c\n" and stat.S_IMODE(written.stat().st_mode) == 0o755
    assert sorted(os.listdir(written.parent)) == ["result.csv"]  # no temporary file left


@pytest.mark.parametrize("rel", ["link-to-secret", "link-to-outside/secret", "link-to-outside/new.txt"])
def test_writing_through_a_link_is_refused_and_the_target_is_untouched(tree, rel):
    root, outside = tree
    with pytest.raises(ConfinementError):
        confined.replace_file(root, rel, b"overwritten\n")
    with pytest.raises(ConfinementError):
        os.close(confined.create_file(root, rel))
    assert (outside / "secret").read_text() == "private key\n"
    assert sorted(os.listdir(outside)) == ["secret"]


def test_a_file_created_for_writing_is_new_or_truncated(tree):
    root, _ = tree
    with os.fdopen(confined.create_file(root, "logs/run.log"), "w") as log:
        log.write("first\n")
    with os.fdopen(confined.create_file(root, "logs/run.log"), "w") as log:
        log.write("second\n")
    assert (root / "logs" / "run.log").read_text() == "second\n"
