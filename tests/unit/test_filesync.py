"""Project sync: contents decide what is sent, ignore rules protect files on both sides."""

from __future__ import annotations

import hashlib
import io
import os
import shlex
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from infra.commands.files import delete_files, extract_files, list_files, make_folder, tar_of
from infra.facts.files import LocalFile, ignore_rules, parse_sha256_list, scan_local
from infra.plans.clean import safe_to_delete
from infra.plans.steps import Record
from infra.plans.sync import SyncPlan, plan_sync, sync_steps


def delete_command(root: str, paths: list[str]) -> str:
    """The script `delete_files` hands to `sh -c`."""
    argv = delete_files(root, paths)
    assert argv[:2] == ["sh", "-c"] and len(argv) == 3
    return argv[2]


def write(root: Path, rel: str, content: str | bytes = "x") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    return path


def sha(content: str) -> str:
    return hashlib.sha256(content.encode()).hexdigest()


@pytest.fixture
def project(tmp_path) -> Path:
    root = tmp_path / "wordcount"
    write(root, "wordcount/__init__.py", "")
    write(root, "wordcount/tasks.py", "def count(): pass\n")
    write(root, "requirements.txt", "celery\n")
    write(root, "data/sample.txt", "hello world\n")
    return root


# --------------------------------------------------------------------------- scanning


def test_scan_lists_project_files_with_content_hash_size_and_mode(project):
    os.chmod(project / "requirements.txt", 0o640)
    files = scan_local(project)
    assert sorted(files) == ["data/sample.txt", "requirements.txt", "wordcount/__init__.py", "wordcount/tasks.py"]
    assert files["requirements.txt"] == LocalFile("requirements.txt", sha("celery\n"), 7, 0o640)


@pytest.mark.parametrize("ignored", [
    ".git/config", ".git/objects/ab/cdef", "wordcount/__pycache__/tasks.cpython-311.pyc", "wordcount/old.pyc",
    ".venv/bin/python", "venv/lib/x.py", "output/result.json", ".infra/lab/secrets.json",
    "node_modules/a/index.js", ".pytest_cache/v/x", ".DS_Store", "data/.DS_Store",
])
def test_scan_skips_default_ignores(project, ignored):
    write(project, ignored)
    assert ignored not in scan_local(project)
    assert "requirements.txt" in scan_local(project)


def test_only_the_top_level_output_folder_is_ignored(project):
    write(project, "output/r.json")
    write(project, "wordcount/output/template.txt")
    files = scan_local(project)
    assert "output/r.json" not in files
    assert "wordcount/output/template.txt" in files


def test_infraignore_adds_gitignore_style_rules(project):
    write(project, ".infraignore", "# big data stays here\ndata/\n*.log\n!keep.log\n")
    write(project, "run.log")
    write(project, "keep.log")
    write(project, "wordcount/debug.log")
    files = scan_local(project)
    assert "data/sample.txt" not in files
    assert "run.log" not in files and "wordcount/debug.log" not in files
    assert "keep.log" in files
    assert ".infraignore" in files
    assert "wordcount/tasks.py" in files


# --------------------------------------------------------------------------- planning


def remote_of(files: dict[str, LocalFile]) -> dict[str, str]:
    return {rel: info.digest for rel, info in files.items()}


def test_a_fresh_host_gets_every_file(project):
    local = scan_local(project)
    plan = plan_sync("/home/alice/infra/wordcount", project, local, {}, ignore_rules(project))
    assert plan.upload == sorted(local)
    assert plan.delete == []
    assert plan.bytes_to_send == sum(f.size for f in local.values())
    assert plan.changed


def test_an_identical_host_gets_nothing(project):
    local = scan_local(project)
    plan = plan_sync("/r", project, local, remote_of(local), ignore_rules(project))
    assert (plan.upload, plan.delete, plan.unchanged, plan.changed) == ([], [], 4, False)
    assert plan.describe() == "4 files up to date"


def test_a_new_mtime_with_the_same_content_is_unchanged(project):
    remote = remote_of(scan_local(project))
    os.utime(project / "wordcount/tasks.py", (1_000_000_000, 1_000_000_000))
    plan = plan_sync("/r", project, scan_local(project), remote, ignore_rules(project))
    assert plan.upload == [] and not plan.changed


def test_only_changed_content_is_sent(project):
    remote = remote_of(scan_local(project))
    write(project, "wordcount/tasks.py", "def count(): return 2\n")
    write(project, "wordcount/new.py", "N = 1\n")
    plan = plan_sync("/r", project, scan_local(project), remote, ignore_rules(project))
    assert plan.upload == ["wordcount/new.py", "wordcount/tasks.py"]
    assert plan.bytes_to_send == len("def count(): return 2\n") + len("N = 1\n")
    assert plan.unchanged == 3
    assert plan.describe() == f"send 2 files ({plan.bytes_to_send} bytes), delete 0, 3 unchanged"


def test_files_removed_locally_are_deleted_on_the_host(project):
    remote = remote_of(scan_local(project))
    (project / "data/sample.txt").unlink()
    plan = plan_sync("/r", project, scan_local(project), remote, ignore_rules(project))
    assert plan.delete == ["data/sample.txt"]
    assert plan.upload == []


def test_ignored_files_on_the_host_are_never_deleted(project):
    write(project, ".infraignore", "data/\n")
    remote = remote_of(scan_local(project))
    remote.update({
        "output/result.json": sha("r"),  # results of `infra run` flow back, never away
        "wordcount/__pycache__/tasks.cpython-311.pyc": sha("p"),
        "data/huge.bin": sha("h"),  # ignored by .infraignore
        ".venv/bin/python": sha("v"),
        "stale.py": sha("s"),  # not ignored and gone locally: deleted
    })
    plan = plan_sync("/r", project, scan_local(project), remote, ignore_rules(project))
    assert plan.delete == ["stale.py"]


def test_the_remote_listing_command_feeds_the_parser(tmp_path, project):
    remote_root = tmp_path / "remote copy"
    write(remote_root, "a b/c'd.txt", "quoted\n")
    write(remote_root, "requirements.txt", "celery\n")
    write(remote_root, "odd/back\\slash.txt", "b")
    write(remote_root, "odd/new\nline.txt", "n")
    out = subprocess.run(list_files(str(remote_root)), capture_output=True, text=True, check=True).stdout
    assert parse_sha256_list(out, ".") == {"a b/c'd.txt": sha("quoted\n"), "requirements.txt": sha("celery\n"),
                                           "odd/back\\slash.txt": sha("b"), "odd/new\nline.txt": sha("n")}
    missing = subprocess.run(list_files(str(tmp_path / "absent")), capture_output=True, text=True)
    assert (missing.returncode, missing.stdout) == (0, "")


# --------------------------------------------------------------------------- tar and shell commands


def test_tar_round_trips_the_chosen_files_without_owners(project, tmp_path):
    os.chmod(project / "wordcount/tasks.py", 0o755)
    data = tar_of(project, ["wordcount/tasks.py", "data/sample.txt"])
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert sorted(members) == ["data/sample.txt", "wordcount/tasks.py"]
        assert all((m.uid, m.gid, m.uname, m.gname) == (0, 0, "", "") for m in members.values())
        assert members["wordcount/tasks.py"].mode & 0o777 == 0o755
        out = tmp_path / "out"
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(out, **kwargs)
    assert (out / "wordcount/tasks.py").read_text() == "def count(): pass\n"
    assert (out / "data/sample.txt").read_text() == "hello world\n"


def test_extract_command_quotes_the_root_and_does_not_keep_owners():
    assert extract_files("/home/al ice/infra/wc") == [
        "sh", "-c", "mkdir -p '/home/al ice/infra/wc' && tar -x --no-same-owner -m -f - -C '/home/al ice/infra/wc'"]


def test_delete_command_quotes_odd_names():
    command = delete_command("/home/alice/infra/wc", ["my file.txt", "it's.py", "-rf", "sub dir/x;y.txt"])
    assert command.startswith("cd /home/alice/infra/wc && rm -f -- ")
    words = shlex.split(command.split(" && ")[1])
    assert words == ["rm", "-f", "--", "my file.txt", "it's.py", "-rf", "sub dir/x;y.txt"]


def test_delete_command_removes_emptied_folders_by_relative_paths_deepest_first():
    command = delete_command("/srv/infra/wc", ["a/b/c.txt", "a/d.txt", "top.txt"])
    rmdir = command.split(" && ", 2)[2]
    assert rmdir == "(rmdir -p --ignore-fail-on-non-empty -- a/b a 2>/dev/null || true)"
    assert all(not word.startswith("/") for word in shlex.split(rmdir.strip("()")))


def test_delete_command_without_folders_has_no_rmdir():
    assert delete_command("/srv/wc", ["x.txt"]) == "cd /srv/wc && rm -f -- x.txt"


@pytest.mark.skipif(sys.platform != "linux", reason="GNU rmdir, as on the hosts")
def test_delete_command_really_deletes_only_inside_the_root(tmp_path):
    root = tmp_path / "wc"
    write(root, "keep.txt")
    write(root, "odd dir/it's here.txt")
    write(root, "sub/deep/x.txt")
    write(tmp_path, "outside.txt")
    subprocess.run(delete_files(str(root), ["odd dir/it's here.txt", "sub/deep/x.txt"]), check=True)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "outside.txt", "wc", "wc/keep.txt"]


# --------------------------------------------------------------------------- clean's folder guard


@pytest.mark.parametrize("path", ["/home/alice/infra/wordcount", "/home/alice/infra/.infra-lab", "/srv/infra"])
def test_clean_may_delete_folders_infra_made(path):
    assert safe_to_delete(path)


@pytest.mark.parametrize("path", ["/", "/home", "//", "infra/wordcount", "~/infra", "/home/alice/../..", ""])
def test_clean_never_deletes_roots_relative_paths_or_climbing_paths(path):
    assert not safe_to_delete(path)


def test_a_sync_plan_with_nothing_to_do_is_not_changed(tmp_path):
    assert not SyncPlan(root="/r", local_root=tmp_path).changed


# --------------------------------------------------------------------------- sync steps


def test_files_to_send_travel_as_one_tar_on_stdin_then_removed_files_are_deleted(project):
    remote = remote_of(scan_local(project))
    write(project, "wordcount/tasks.py", "def count(): return 2\n")
    (project / "data/sample.txt").unlink()
    plan = plan_sync("/srv/wc", project, scan_local(project), remote, ignore_rules(project))
    send, delete = sync_steps(plan, Record("add_files", "/srv/wc"))
    assert send.description == f"send 1 file(s), {len('def count(): return 2' + chr(10))} bytes, to /srv/wc"
    assert send.command == tuple(extract_files("/srv/wc"))
    assert send.records == (Record("add_files", "/srv/wc"),)
    with tarfile.open(fileobj=io.BytesIO(send.stdin)) as tar:
        assert tar.getnames() == ["wordcount/tasks.py"]
    assert delete.description == "delete 1 file(s) from /srv/wc"
    assert delete.text() == "sh -c 'cd /srv/wc && rm -f -- data/sample.txt && " \
                            "(rmdir -p --ignore-fail-on-non-empty -- data 2>/dev/null || true)'"
    assert delete.records == () and delete.stdin is None
    assert send.timeout and delete.timeout


def test_a_host_with_nothing_to_send_only_makes_sure_the_folder_exists(project):
    local = scan_local(project)
    [step] = sync_steps(plan_sync("/srv/wc", project, local, remote_of(local), ignore_rules(project)),
                        Record("add_files", "/srv/wc"))
    assert step.description == "project /srv/wc: 4 files up to date"
    assert step.command == tuple(make_folder("/srv/wc")) and step.stdin is None
    assert step.records == (Record("add_files", "/srv/wc"),)


@pytest.mark.skipif(sys.platform != "linux", reason="GNU tar, as on the hosts")
def test_the_send_step_really_unpacks_into_the_folder_and_the_listing_then_matches(project, tmp_path):
    target = tmp_path / "on the host" / "wc"
    local = scan_local(project)
    [send] = sync_steps(plan_sync(str(target), project, local, {}, ignore_rules(project)))
    subprocess.run(list(send.command), input=send.stdin, check=True)
    listing = subprocess.run(list_files(str(target)), capture_output=True, text=True, check=True).stdout
    again = plan_sync(str(target), project, local, parse_sha256_list(listing), ignore_rules(project))
    assert (again.upload, again.delete, again.unchanged) == ([], [], 4)
