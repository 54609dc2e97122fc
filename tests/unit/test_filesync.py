"""Project sync: contents decide what is sent, ignore rules protect files on both sides."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from infra.commands.files import (
    MARKER_FILE,
    delete_files,
    extract_files,
    list_project,
    prepare_project,
    remove_folder,
    remove_owned_folder,
    tar_of,
)
from infra.errors import InfraError
from infra.facts.files import (
    FolderOwners,
    LocalFile,
    PathOwner,
    ProjectListing,
    ignore_rules,
    no_ignores,
    parse_project_listing,
    parse_removal,
    parse_sha256_list,
    scan_local,
)
from infra.plans.clean import safe_to_delete
from infra.plans.layout import HostLayout
from infra.plans.steps import FilesTar, Record
from infra.plans.sync import SyncPlan, plan_sync, sync_steps
from infra.workflows.execute import step_input
from tests.unit.project_files import sha, write


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


LINUX = pytest.mark.skipif(sys.platform != "linux", reason="GNU find, tar and coreutils, as on the hosts")


def test_scan_leaves_out_symbolic_links_to_files_and_folders_and_never_reads_their_targets(project, tmp_path):
    secret = write(tmp_path / "elsewhere", "id_ed25519", "PRIVATE KEY\n")
    os.symlink(secret, project / "leak.txt")
    os.symlink(secret.parent, project / "data" / "linked")
    os.symlink(tmp_path / "missing", project / "dangling")
    files = scan_local(project)
    assert sorted(files) == ["data/sample.txt", "requirements.txt", "wordcount/__init__.py", "wordcount/tasks.py"]
    assert sha("PRIVATE KEY\n") not in {f.digest for f in files.values()}


def test_scan_leaves_out_what_is_not_a_regular_file(project):
    os.mkfifo(project / "a fifo")  # reading it would hang
    assert "a fifo" not in scan_local(project)


def test_the_tar_refuses_a_file_that_became_a_link_since_the_scan(project, tmp_path):
    local = scan_local(project)
    (project / "requirements.txt").unlink()
    os.symlink(write(tmp_path / "elsewhere", "secret", "s"), project / "requirements.txt")
    with pytest.raises(InfraError, match="requirements.txt: not sent"):
        tar_of(project, sorted(local))


def test_the_tar_refuses_a_folder_that_became_a_link_since_the_scan(project, tmp_path):
    write(tmp_path / "elsewhere", "tasks.py", "stolen")
    local = scan_local(project)
    os.rename(project / "wordcount", tmp_path / "moved")
    os.symlink(tmp_path / "elsewhere", project / "wordcount")
    with pytest.raises(InfraError, match="not sent"):
        tar_of(project, sorted(local))


# --------------------------------------------------------------------------- a host's listing, filtered like the scan


HOSTILE_LISTING_PATHS = ["../escape.txt", "a/../../etc/passwd", "/etc/passwd", "./../x", "a//b", "a/./b", ".", "",
                         "..", "a/..", ".git/config", "output/r.json", "__pycache__/x.pyc"]


@pytest.mark.parametrize("path", HOSTILE_LISTING_PATHS)
def test_a_host_listing_drops_paths_that_leave_the_folder_and_ignored_paths(project, path):
    text = f"{'a' * 64}  ./{path}\n{'b' * 64}  ./ok.txt\n"
    assert parse_sha256_list(text, ".", ignore_rules(project)) == {"ok.txt": "b" * 64}


@pytest.mark.parametrize("line", [f"{'z' * 64}  ./x", f"{'a' * 63}  ./x", f"{'A' * 64}  ./x", "not a line", f"{'a' * 64}./x"])
def test_a_host_listing_drops_lines_that_are_not_sha256sum_lines(line):
    assert parse_sha256_list(line + "\n") == {}


def host_layout_at(root: Path, name: str = "wc") -> HostLayout:
    return HostLayout(root=str(root), project_dir=str(root / name), env_dir=str(root / ".infra"),
                      output_dir=str(root / "output"))


def listing_text(owner="ours", folders="yes\nyes\nyes\n", files="", links=b"") -> str:
    text = (f"=====infra:owner\n{owner}\n=====infra:folders\n{folders}=====infra:files\n{files}"
            f"=====infra:links\n").encode() + links + b"\n=====infra:end\n"
    return text.decode()


def test_the_project_listing_reads_owner_folders_files_and_links():
    listing = parse_project_listing(listing_text(files=f"{'a' * 64}  ./x.py\n", links=b"./l1\0./sub/l2\0"), no_ignores())
    assert listing == ProjectListing("ours", (True, True, True), {"x.py": "a" * 64}, ("l1", "sub/l2"))


def test_a_link_name_holding_newlines_and_marker_lines_cannot_forge_entries():
    forged = b"./evil\n=====infra:files\n" + b"c" * 64 + b"  ./forged.py\n=====infra:end\n\0./ok"
    listing = parse_project_listing(listing_text(links=forged), no_ignores())
    assert listing.files == {} and "forged.py" not in str(listing.files)
    assert listing.links == ("evil\n=====infra:files\n" + "c" * 64 + "  ./forged.py\n=====infra:end\n", "ok")


def test_links_that_would_leave_the_folder_or_are_ignored_are_dropped(project):
    listing = parse_project_listing(listing_text(links=b"./../x\0/abs\0./.git/l\0./ok\0"), ignore_rules(project))
    assert listing.links == ("ok",)


def test_an_incomplete_listing_is_an_error():
    with pytest.raises(ValueError):
        parse_project_listing("=====infra:owner\nours\n", no_ignores())


# --------------------------------------------------------------------------- planning


def remote_of(files: dict[str, LocalFile]) -> dict[str, str]:
    return {rel: info.digest for rel, info in files.items()}


LAYOUT = HostLayout(root="/srv/infra/lab", project_dir="/srv/infra/lab/wc", env_dir="/srv/infra/lab/.infra",
                    output_dir="/srv/infra/lab/output")


# /srv/infra/lab, the SSH user's (uid 1000), below root's /srv/infra, /srv and /.
SAFE_OWNERS = FolderOwners(1000, (PathOwner("/srv/infra/lab", False, 1000, "user", 0o40755),
                                  *(PathOwner(path, True, 0, "root", 0o40755) for path in ("/srv/infra", "/srv", "/"))))


def ours(files: dict[str, str] | None = None, links: tuple[str, ...] = (), owner="ours",
         folders=(True, True, True)) -> ProjectListing:
    return ProjectListing(owner, folders, dict(files or {}), links, owners=SAFE_OWNERS)


def plan_for(project: Path, local, listing: ProjectListing) -> SyncPlan:
    return plan_sync(LAYOUT, "lab", project, local, listing, ignore_rules(project))


def test_a_fresh_host_gets_its_cluster_folder_claimed_then_every_file(project):
    local = scan_local(project)
    plan = plan_for(project, local, ours(owner="absent", folders=(False, False, False)))
    assert plan.claim and plan.make_folders
    assert plan.upload == sorted(local)
    assert plan.delete == []
    assert plan.bytes_to_send == sum(f.size for f in local.values())
    assert plan.changed and plan.files_changed
    assert plan.describe().startswith("claim /srv/infra/lab for cluster lab, send 4 files")


def test_an_empty_cluster_folder_is_claimed_too(project):
    plan = plan_for(project, scan_local(project), ours(owner="empty"))
    assert plan.claim


@pytest.mark.parametrize("owner", ["other", "link", "file", "", "garbage"])
def test_a_cluster_folder_that_is_not_this_clusters_is_refused_whole(project, owner):
    with pytest.raises(InfraError, match="/srv/infra/lab"):
        plan_for(project, scan_local(project), ours(owner=owner))


def test_an_identical_host_gets_nothing(project):
    local = scan_local(project)
    plan = plan_for(project, local, ours(remote_of(local)))
    assert (plan.upload, plan.delete, plan.unchanged, plan.changed) == ([], [], 4, False)
    assert plan.describe() == "4 files up to date"


def test_a_missing_output_folder_or_mount_point_is_a_change_but_not_a_file_change(project):
    local = scan_local(project)
    plan = plan_for(project, local, ours(remote_of(local), folders=(True, False, True)))
    assert plan.changed and not plan.files_changed


def test_a_new_mtime_with_the_same_content_is_unchanged(project):
    remote = remote_of(scan_local(project))
    os.utime(project / "wordcount/tasks.py", (1_000_000_000, 1_000_000_000))
    plan = plan_for(project, scan_local(project), ours(remote))
    assert plan.upload == [] and not plan.changed


def test_only_changed_content_is_sent(project):
    remote = remote_of(scan_local(project))
    write(project, "wordcount/tasks.py", "def count(): return 2\n")
    write(project, "wordcount/new.py", "N = 1\n")
    plan = plan_for(project, scan_local(project), ours(remote))
    assert plan.upload == ["wordcount/new.py", "wordcount/tasks.py"]
    assert plan.bytes_to_send == len("def count(): return 2\n") + len("N = 1\n")
    assert plan.unchanged == 3
    assert plan.describe() == f"send 2 files ({plan.bytes_to_send} bytes), delete 0, 3 unchanged"


def test_files_removed_locally_are_deleted_on_the_host(project):
    remote = remote_of(scan_local(project))
    (project / "data/sample.txt").unlink()
    plan = plan_for(project, scan_local(project), ours(remote))
    assert plan.delete == ["data/sample.txt"]
    assert plan.upload == []


def test_links_on_the_host_are_deleted_like_files_and_a_file_sent_replaces_one_at_its_name(project):
    local = scan_local(project)
    plan = plan_for(project, local, ours(remote_of(local), links=("data", "evil", "requirements.txt")))
    assert plan.delete == ["data", "evil"]  # the links themselves (a folder of files here: the tar makes it)


def test_ignored_files_on_the_host_are_never_deleted(project):
    write(project, ".infraignore", "data/\n")
    remote = remote_of(scan_local(project))
    remote.update({
        "output/result.json": sha("r"),  # the output folder's mount point
        "wordcount/__pycache__/tasks.cpython-311.pyc": sha("p"),
        "data/huge.bin": sha("h"),  # ignored by .infraignore
        ".venv/bin/python": sha("v"),
        "stale.py": sha("s"),  # not ignored and gone locally: deleted
    })
    plan = plan_for(project, scan_local(project), ours(remote))
    assert plan.delete == ["stale.py"]


def test_a_sync_plan_with_nothing_to_do_is_not_changed(tmp_path):
    assert not SyncPlan(layout=LAYOUT, cluster="lab", local_root=tmp_path).changed


# --------------------------------------------------------------------------- sync steps


def test_the_folder_is_claimed_first_then_removed_files_are_deleted_then_files_travel_as_one_tar(project):
    remote = remote_of(scan_local(project))
    write(project, "wordcount/tasks.py", "def count(): return 2\n")
    (project / "data/sample.txt").unlink()
    plan = plan_for(project, scan_local(project), ours(remote))
    claim, delete, send = sync_steps(plan, Record("add_files", LAYOUT.project_dir))
    assert claim.command == tuple(prepare_project(LAYOUT.root, LAYOUT.project_dir, LAYOUT.output_dir, "lab"))
    assert claim.records == (Record("add_files", LAYOUT.project_dir),)
    assert delete.description == "delete 1 file(s) from /srv/infra/lab/wc"
    assert delete.text() == ("sh -c '[ ! -L /srv/infra/lab/wc ] && cd /srv/infra/lab/wc && find . -depth "
                             "\\( \\( -path ./data/sample.txt \\) ! -type d -delete \\) "
                             "-o \\( \\( -path ./data \\) -type d -empty -delete \\)'")
    assert delete.records == () and delete.stdin is None
    assert send.description == f"send 1 file(s), {len('def count(): return 2' + chr(10))} bytes, to /srv/infra/lab/wc"
    assert send.command == tuple(extract_files("/srv/infra/lab/wc"))
    assert send.files == FilesTar(project, ("wordcount/tasks.py",)) and send.stdin is None  # read when it runs
    with tarfile.open(fileobj=io.BytesIO(step_input(send))) as tar:
        assert [(m.name, m.type) for m in tar.getmembers()] == [("wordcount", tarfile.DIRTYPE),
                                                                ("wordcount/tasks.py", tarfile.REGTYPE)]
    assert claim.timeout and send.timeout and delete.timeout


def test_planning_reads_no_file_the_tar_is_made_when_the_step_runs(project):
    plan = plan_for(project, scan_local(project), ours({}))
    (project / "requirements.txt").unlink()  # gone after the scan: the plan does not notice
    send = sync_steps(plan)[-1]
    with pytest.raises(InfraError, match="requirements.txt: not sent"):
        step_input(send)


def test_many_deletions_are_split_so_no_command_line_grows_past_what_a_host_takes(project):
    plan = plan_for(project, {}, ours({f"deep/folder/file-{i:05}.txt": "a" * 64 for i in range(4000)}))
    deletes = [step for step in sync_steps(plan) if step.description.startswith("delete")]
    assert len(deletes) > 1
    assert all(len(step.text()) < 120_000 for step in deletes)
    assert sum(int(step.description.split()[1]) for step in deletes) == 4000


def test_a_host_with_nothing_to_send_gets_no_command_but_the_record(project):
    local = scan_local(project)
    [step] = sync_steps(plan_for(project, local, ours(remote_of(local))), Record("add_files", LAYOUT.project_dir))
    assert step.description == "project /srv/infra/lab/wc: 4 files up to date"
    assert step.command is None and step.op is None and step.stdin is None
    assert step.records == (Record("add_files", LAYOUT.project_dir),)


def test_the_tar_holds_every_folder_before_its_files_owner_neutral(project):
    os.chmod(project / "wordcount/tasks.py", 0o755)
    data = tar_of(project, ["wordcount/tasks.py", "data/sample.txt"])
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert list(members) == ["wordcount", "data", "wordcount/tasks.py", "data/sample.txt"]
        assert all((m.uid, m.gid, m.uname, m.gname) == (0, 0, "", "") for m in members.values())
        assert members["wordcount/tasks.py"].mode & 0o777 == 0o755
        assert all(m.isfile() or m.isdir() for m in members.values())


# --------------------------------------------------------------------------- the commands, run for real on a folder standing for a host


def sh(argv, stdin: bytes = b"", check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, input=stdin, capture_output=True, check=check)


@pytest.fixture
def host(tmp_path):
    """A host's cluster folder (not made yet), and a folder outside it that must stay untouched."""
    outside = tmp_path / "outside"
    write(outside, "victim.txt", "precious\n")
    write(outside, "sub/deep.txt", "deep\n")
    layout = host_layout_at(tmp_path / "home" / "infra" / "lab")
    return layout, outside


def snapshot(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): (p.read_text() if p.is_file() and not p.is_symlink() else "<dir>")
            for p in sorted(folder.rglob("*"))}


def listed(layout: HostLayout, rules=None) -> ProjectListing:
    out = sh(list_project(layout.root, layout.project_dir, layout.output_dir, "lab")).stdout.decode()
    return parse_project_listing(out, rules or no_ignores())


def run_steps(steps) -> None:
    for step in steps:
        if step.command:
            sh(list(step.command), step_input(step) or b"")


@LINUX
def test_a_fresh_host_is_claimed_marker_first_and_the_listing_then_matches(project, host):
    layout, _ = host
    assert listed(layout).owner == "absent"
    local = scan_local(project)
    run_steps(sync_steps(plan_sync(layout, "lab", project, local, listed(layout), ignore_rules(project))))
    assert Path(layout.root, MARKER_FILE).read_text() == "lab\n"
    assert Path(layout.project_dir, "output").is_dir() and Path(layout.output_dir).is_dir()
    again = listed(layout, ignore_rules(project))
    assert again.owner == "ours" and again.folders == (True, True, True)
    assert plan_sync(layout, "lab", project, local, again, ignore_rules(project)).changed is False


@LINUX
@pytest.mark.parametrize("setup, owner", [
    (lambda root, out: (root.mkdir(parents=True), write(root, "their-data.txt")), "other"),
    (lambda root, out: (root.mkdir(parents=True), write(root, MARKER_FILE, "prod\n")), "other"),
    (lambda root, out: (root.parent.mkdir(parents=True), os.symlink(out, root)), "link"),
    (lambda root, out: (root.parent.mkdir(parents=True), write(root.parent, root.name)), "file"),
    (lambda root, out: (root.mkdir(parents=True), os.symlink(out / "victim.txt", root / MARKER_FILE)), "other"),
])
def test_a_folder_that_is_not_this_clusters_is_neither_claimed_nor_written(project, host, setup, owner):
    layout, outside = host
    root = Path(layout.root)
    setup(root, outside)
    before, outside_before = snapshot(root.parent), snapshot(outside)
    assert listed(layout).owner == owner
    refused = sh(prepare_project(layout.root, layout.project_dir, layout.output_dir, "lab"), check=False)
    assert refused.returncode == 3 and b"not a folder of cluster lab" in refused.stderr
    assert snapshot(root.parent) == before and snapshot(outside) == outside_before


@LINUX
def test_links_planted_in_the_project_copy_are_never_written_through(project, host):
    layout, outside = host
    sh(prepare_project(layout.root, layout.project_dir, layout.output_dir, "lab"))
    copy = Path(layout.project_dir)
    os.symlink(outside, copy / "wordcount")  # a folder the tar writes into
    os.symlink(outside / "victim.txt", copy / "requirements.txt")  # a file the tar writes
    (copy / "data").mkdir()
    os.symlink(outside / "sub", copy / "data" / "sub")
    before = snapshot(outside)
    local = scan_local(project)
    listing = listed(layout, ignore_rules(project))
    assert listing.links == ("data/sub", "requirements.txt", "wordcount") and listing.files == {}
    run_steps(sync_steps(plan_sync(layout, "lab", project, local, listing, ignore_rules(project))))
    assert snapshot(outside) == before
    assert not (copy / "wordcount").is_symlink() and (copy / "wordcount/tasks.py").read_text() == "def count(): pass\n"
    assert not (copy / "requirements.txt").is_symlink() and (copy / "requirements.txt").read_text() == "celery\n"
    assert not (copy / "data/sub").exists()  # not a file here: deleted, the link itself
    assert listed(layout, ignore_rules(project)).links == ()


@LINUX
def test_deleting_never_follows_a_link_and_deletes_links_themselves(host):
    layout, outside = host
    sh(prepare_project(layout.root, layout.project_dir, layout.output_dir, "lab"))
    copy = Path(layout.project_dir)
    os.symlink(outside, copy / "dir-link")
    os.symlink(outside / "victim.txt", copy / "file-link")
    write(copy, "odd dir/it's [here]*.txt")
    write(copy, "sub/deep/x.txt")
    write(copy, "keep.txt")
    before = snapshot(outside)
    sh(delete_files(layout.project_dir, ["dir-link/victim.txt", "dir-link/sub/deep.txt", "dir-link", "file-link",
                                         "odd dir/it's [here]*.txt", "sub/deep/x.txt"]))
    assert snapshot(outside) == before
    assert sorted(p.name for p in copy.iterdir()) == ["keep.txt", "output"]


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", "a/../../x", "", "a//b", "."])
def test_a_delete_of_a_path_that_could_leave_the_folder_is_never_built(path):
    with pytest.raises(ValueError):
        delete_files("/srv/wc", ["ok.txt", path])


@LINUX
def test_the_listing_lists_no_file_behind_a_link(host):
    layout, outside = host
    sh(prepare_project(layout.root, layout.project_dir, layout.output_dir, "lab"))
    os.symlink(outside, Path(layout.project_dir, "dir-link"))
    os.symlink(outside / "victim.txt", Path(layout.project_dir, "file-link"))
    write(Path(layout.project_dir), "mine.txt", "m")
    listing = listed(layout)
    assert listing.files == {"mine.txt": sha("m")} and listing.links == ("dir-link", "file-link")


@LINUX
def test_a_project_folder_that_is_a_link_is_neither_listed_nor_entered_and_is_replaced(project, host):
    layout, outside = host
    sh(prepare_project(layout.root, layout.project_dir, layout.output_dir, "lab"))
    Path(layout.project_dir, "output").rmdir()
    Path(layout.project_dir).rmdir()
    os.symlink(outside, layout.project_dir)
    before = snapshot(outside)
    listing = listed(layout)
    assert listing.files == {} and listing.folders[0] is False
    assert sh(extract_files(layout.project_dir), tar_of(project, ["requirements.txt"]), check=False).returncode != 0
    assert sh(delete_files(layout.project_dir, ["victim.txt"]), check=False).returncode != 0
    sh(prepare_project(layout.root, layout.project_dir, layout.output_dir, "lab"))
    assert not Path(layout.project_dir).is_symlink() and snapshot(outside) == before


# --------------------------------------------------------------------------- clean's folder guard


@pytest.mark.parametrize("path", ["/home/alice/infra/lab", "/home/alice/infra/lab/.infra", "/srv/infra"])
def test_clean_may_delete_folders_infra_made(path):
    assert safe_to_delete(path)


@pytest.mark.parametrize("path", ["/", "/home", "//", "infra/wordcount", "~/infra", "/home/alice/../..", "",
                                  "/home/./alice"])
def test_clean_never_deletes_roots_relative_paths_or_climbing_paths(path):
    assert not safe_to_delete(path)


@LINUX
def test_a_cluster_folder_is_removed_only_with_the_marker_of_its_cluster(host):
    layout, outside = host
    sh(prepare_project(layout.root, layout.project_dir, layout.output_dir, "lab"))
    os.symlink(outside, Path(layout.project_dir, "dir-link"))
    os.symlink(outside, Path(layout.output_dir, "out-link"))
    before = snapshot(outside)
    other = sh(remove_owned_folder(layout.root, layout.root, "prod")).stdout.decode()
    assert parse_removal(other) == ("refused", f"{layout.root} holds no marker of cluster prod")
    assert Path(layout.root).is_dir()
    assert parse_removal(sh(remove_owned_folder(layout.env_dir, layout.root, "lab")).stdout.decode()) == ("absent", "")
    assert parse_removal(sh(remove_owned_folder(layout.root, layout.root, "lab")).stdout.decode()) == ("removed", "")
    assert not Path(layout.root).exists() and snapshot(outside) == before


@LINUX
@pytest.mark.parametrize("setup", [
    lambda root, out: (root.mkdir(parents=True), write(root, "theirs.txt")),  # no marker
    lambda root, out: (root.parent.mkdir(parents=True), os.symlink(out, root)),  # a link to elsewhere
    lambda root, out: (root.mkdir(parents=True), os.symlink(out / "victim.txt", root / MARKER_FILE)),
])
def test_a_folder_without_a_real_marker_of_the_cluster_is_refused_and_left_whole(host, setup):
    layout, outside = host
    root = Path(layout.root)
    setup(root, outside)
    (outside / MARKER_FILE).write_text("lab\n")  # a marker seen through the link does not count
    before, outside_before = snapshot(root.parent), snapshot(outside)
    for folder in (layout.root, layout.env_dir):
        verdict, why = parse_removal(sh(remove_owned_folder(folder, layout.root, "lab")).stdout.decode())
        assert verdict in ("refused", "absent"), why
    assert snapshot(root.parent) == before and snapshot(outside) == outside_before


@LINUX
def test_a_secret_folder_that_is_a_link_is_refused_even_in_a_cluster_folder(host):
    layout, outside = host
    sh(prepare_project(layout.root, layout.project_dir, layout.output_dir, "lab"))
    os.symlink(outside, layout.env_dir)
    assert parse_removal(sh(remove_owned_folder(layout.env_dir, layout.root, "lab")).stdout.decode()) == (
        "refused", "a symbolic link")
    assert parse_removal(sh(remove_folder(layout.env_dir)).stdout.decode()) == ("refused", "a symbolic link")
    assert (outside / "victim.txt").exists()


@pytest.mark.parametrize("text, verdict", [
    ("removed\n", ("removed", "")), ("absent\n", ("absent", "")), ("refused: why\n", ("refused", "why")),
    ("", ("refused", "unexpected answer ''")), ("rm: cannot remove\n", ("refused", "unexpected answer 'rm: cannot remove'")),
])
def test_the_verdict_of_a_removal_is_read_and_anything_else_counts_as_refused(text, verdict):
    assert parse_removal(text) == verdict


@LINUX
def test_a_claim_cut_short_leaves_an_empty_folder_that_is_claimed_next_time(host):
    layout, _ = host
    Path(layout.root).mkdir(parents=True)  # made, then the run was cut short before the marker
    assert listed(layout).owner == "empty"
    sh(prepare_project(layout.root, layout.project_dir, layout.output_dir, "lab"))
    assert listed(layout).owner == "ours"
    assert sorted(os.listdir(layout.root)) == [MARKER_FILE, "output", "wc"]
    assert not [name for name in os.listdir(Path(layout.root).parent) if name.endswith(".tmp")]


def test_the_listing_from_home_names_the_home_and_lists_the_same_as_with_absolute_paths(project, host, tmp_path):
    layout, _ = host
    local = scan_local(project)
    run_steps(sync_steps(plan_sync(layout, "lab", project, local, listed(layout), ignore_rules(project))))
    home = tmp_path / "home"
    relative = host_layout_at(Path("./infra/lab"))
    argv = list_project(relative.root, relative.project_dir, relative.output_dir, "lab", from_home=True)
    answer = subprocess.run(argv, capture_output=True, check=True, cwd="/", env={**os.environ, "HOME": str(home)})
    from_home = parse_project_listing(answer.stdout.decode(), ignore_rules(project))
    assert from_home.home == str(home)
    assert (from_home.owner, from_home.folders, from_home.files) == ("ours", (True, True, True), listed(layout).files)
    assert from_home.files == {rel: f.digest for rel, f in local.items()}


def test_the_listing_from_home_refuses_a_home_that_is_not_an_absolute_folder(tmp_path):
    argv = list_project("./infra/lab", "./infra/lab/wc", "./infra/lab/output", "lab", from_home=True)
    answer = subprocess.run(argv, capture_output=True, cwd=tmp_path, env={**os.environ, "HOME": ""})
    assert answer.returncode == 1 and b"no home folder" in answer.stderr and b"owner" not in answer.stdout
