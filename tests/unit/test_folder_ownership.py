"""A cluster folder that another user could swap is neither used nor removed: the facts, the rule, the commands."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from infra.commands.files import folder_owners, prepare_project
from infra.errors import InfraError
from infra.facts.files import (
    FolderOwners,
    PathOwner,
    ProjectListing,
    no_ignores,
    parse_folder_owners,
    parse_path_owners,
)
from infra.plans.clean import plan_clean
from infra.plans.layout import HostLayout
from infra.plans.ownership import absent_folders, folder_refusal
from infra.plans.sync import plan_sync, sync_steps
from infra.state.manifest import HostRecord

UID = 1000
DIR = 0o040000  # S_IFDIR
LINK = 0o120000  # S_IFLNK


def folder(path, mode=0o755, uid=UID, user="alice") -> PathOwner:
    return PathOwner(path, False, uid, user, DIR | mode)


def above(path, mode=0o755, uid=0, user="root", kind=DIR) -> PathOwner:
    return PathOwner(path, True, uid, user, kind | mode)


def home_chain(*, lab=None, infra=None, home=None) -> FolderOwners:
    """/home/alice/infra/lab, the usual layout: all 0755, the user's own from the home down."""
    return FolderOwners(UID, (lab or folder("/home/alice/infra/lab"), infra or above("/home/alice/infra", uid=UID, user="alice"),
                              home or above("/home/alice", uid=UID, user="alice"), above("/home"), above("/")))


# --------------------------------------------------------------------------- the rule


def test_the_usual_layout_below_the_home_is_safe():
    assert folder_refusal(home_chain()) == ""


def test_a_world_writable_parent_that_is_not_sticky_is_refused_naming_it_its_owner_and_its_mode():
    why = folder_refusal(home_chain(infra=above("/home/alice/infra", 0o777, UID, "alice")))
    assert why.startswith("/home/alice/infra (owner alice, uid 1000, mode 0777), above it, is writable by other "
                          "users and not sticky")
    assert "\n" not in why


def test_a_group_writable_parent_is_refused_too():
    assert "mode 0775" in folder_refusal(home_chain(home=above("/home/alice", 0o775, UID, "alice")))


def test_a_folder_owned_by_another_user_is_refused():
    why = folder_refusal(home_chain(lab=folder("/home/alice/infra/lab", uid=1001, user="mallory")))
    assert why.startswith("/home/alice/infra/lab (owner mallory, uid 1001, mode 0755) is not the SSH user's (uid 1000)")


def test_a_folder_owned_by_root_is_not_the_ssh_users():
    assert "is not the SSH user's" in folder_refusal(home_chain(lab=folder("/home/alice/infra/lab", uid=0, user="root")))


def test_a_folder_writable_by_others_is_refused_even_when_it_is_the_users():
    assert "is writable by other users" in folder_refusal(home_chain(lab=folder("/home/alice/infra/lab", 0o777)))


def test_a_folder_that_is_a_symbolic_link_is_refused():
    link = PathOwner("/home/alice/infra/lab", False, UID, "alice", LINK | 0o777)
    assert "is a symbolic link" in folder_refusal(home_chain(lab=link))


def test_a_parent_owned_by_another_user_is_refused_even_with_mode_0755():
    why = folder_refusal(home_chain(infra=above("/home/alice/infra", 0o755, 1001, "mallory")))
    assert "owned by neither the SSH user (uid 1000) nor root" in why and "mallory" in why


def test_a_link_above_owned_by_another_user_is_refused_one_owned_by_root_is_not():
    theirs = above("/home/alice/infra", 0o777, 1001, "mallory", kind=LINK)
    assert "owned by neither" in folder_refusal(home_chain(infra=theirs))
    assert folder_refusal(home_chain(infra=above("/home/alice/infra", 0o777, 0, "root", kind=LINK))) == ""


def tmp_chain(lab: PathOwner | None) -> FolderOwners:
    lab = lab or PathOwner("/tmp/lab", False)  # absent
    return FolderOwners(UID, (lab, above("/tmp", 0o1777), above("/")))


def test_the_users_own_folder_in_sticky_tmp_is_allowed():
    assert folder_refusal(tmp_chain(folder("/tmp/lab"))) == ""


def test_a_new_folder_in_sticky_tmp_is_allowed_and_made_then_checked_again():
    owners = tmp_chain(None)
    assert folder_refusal(owners) == ""
    assert absent_folders(owners) == ("/tmp/lab",)


def test_someone_elses_folder_in_sticky_tmp_is_refused():
    assert "is not the SSH user's" in folder_refusal(tmp_chain(folder("/tmp/lab", uid=1001, user="mallory")))


def test_a_world_writable_non_sticky_tmp_is_refused():
    owners = FolderOwners(UID, (folder("/tmp/lab"), above("/tmp", 0o777), above("/")))
    assert folder_refusal(owners).startswith("/tmp (owner root, uid 0, mode 0777), above it, is writable")


def test_what_cannot_be_read_is_refused():
    assert "could not be read" in folder_refusal(None)
    assert "could not be read" in folder_refusal(FolderOwners(None, (folder("/x/lab"),)))
    assert "could not be read" in folder_refusal(FolderOwners(UID, ()))
    unknown = FolderOwners(UID, (folder("/x/lab"), PathOwner("/x", True, unknown=True)))
    assert folder_refusal(unknown).startswith("/x: its owner and mode could not be read")


def test_absent_folders_are_listed_outermost_first():
    owners = FolderOwners(UID, (PathOwner("/srv/a/b/lab", False), PathOwner("/srv/a/b", True),
                                PathOwner("/srv/a", True), above("/srv"), above("/")))
    assert absent_folders(owners) == ("/srv/a", "/srv/a/b", "/srv/a/b/lab")


# --------------------------------------------------------------------------- the facts


def test_the_paths_section_is_parsed_line_by_line():
    text = ("1000\nf 1000 alice 41ed /home/alice/infra/lab\np 1000 alice 43ff /home/alice/with space\n"
            "p absent /gone\np unknown /secret\np 0 root a1ff /link\ngarbage\n")
    owners = parse_path_owners(text)
    assert owners.ssh_uid == 1000
    assert owners.paths == (
        PathOwner("/home/alice/infra/lab", False, 1000, "alice", 0o40755),
        PathOwner("/home/alice/with space", True, 1000, "alice", 0o41777),
        PathOwner("/gone", True),
        PathOwner("/secret", True, unknown=True),
        PathOwner("/link", True, 0, "root", 0o120777),
        PathOwner("garbage", True, unknown=True),
    )
    assert "could not be read" in folder_refusal(owners)


def run_here(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd)


def test_the_real_command_reads_the_folder_and_each_folder_above_it_and_catches_a_world_writable_one(tmp_path):
    (tmp_path / "shared").mkdir()
    lab = tmp_path / "shared" / "lab"
    lab.mkdir(mode=0o755)
    os.chmod(tmp_path / "shared", 0o755)
    owners = parse_folder_owners(run_here(folder_owners(str(lab))).stdout)
    assert owners.ssh_uid == os.getuid()
    assert [p.path for p in owners.paths][:3] == [str(lab), str(tmp_path / "shared"), str(tmp_path)]
    assert owners.paths[0].uid == os.getuid() and not owners.paths[0].above
    assert owners.paths[-1].path == "/"
    os.chmod(tmp_path / "shared", 0o777)  # as a careless shared folder
    why = folder_refusal(parse_folder_owners(run_here(folder_owners(str(lab))).stdout))
    assert why.startswith(f"{tmp_path / 'shared'} (owner ") and "mode 0777" in why


def test_the_real_command_follows_a_link_above_to_the_folders_it_leads_to(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "via").symlink_to(tmp_path / "real")
    owners = parse_folder_owners(run_here(folder_owners("via/lab"), cwd=tmp_path).stdout)
    paths = [p.path for p in owners.paths]
    assert paths[0] == f"{tmp_path}/via/lab" and owners.paths[0].uid is None  # absent: relative to the folder it runs in
    assert f"{tmp_path}/via" in paths and str(tmp_path / "real") in paths  # the link, then where it leads
    assert absent_folders(owners) == (f"{tmp_path}/via/lab",)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a folder of another user's")
def test_a_folder_another_user_made_in_between_stops_the_claim_before_the_marker(tmp_path):
    root = tmp_path / "lab"
    root.mkdir()
    os.chown(root, 12345, 12345)  # made by another user after the listing found it absent
    result = run_here(prepare_project(str(root), f"{root}/wc", f"{root}/output", "lab", (str(root),)))
    assert result.returncode == 3
    assert f"{root}: made by another user meanwhile, left alone" in result.stderr
    assert list(root.iterdir()) == []  # no marker, no folder
    os.chown(root, 0, 0)
    assert run_here(prepare_project(str(root), f"{root}/wc", f"{root}/output", "lab", (str(root),))).returncode == 0
    assert (root / ".infra-cluster").read_text() == "lab\n"


# --------------------------------------------------------------------------- the plan


LAYOUT = HostLayout(root="/tmp/lab", project_dir="/tmp/lab/wc", env_dir="/tmp/lab/.infra", output_dir="/tmp/lab/output")


def test_sync_refuses_the_host_with_the_one_line_reason(tmp_path):
    listing = ProjectListing("ours", (True, True, True), {}, (),
                             owners=FolderOwners(UID, (folder("/tmp/lab"), above("/tmp", 0o777), above("/"))))
    with pytest.raises(InfraError, match=r"^/tmp \(owner root, uid 0, mode 0777\), above it, is writable"):
        plan_sync(LAYOUT, "lab", tmp_path, {}, listing, no_ignores())


def test_a_listing_without_owners_is_refused(tmp_path):
    with pytest.raises(InfraError, match="could not be read"):
        plan_sync(LAYOUT, "lab", tmp_path, {}, ProjectListing("absent", (False,) * 3, {}, ()), no_ignores())


def test_a_new_folder_is_claimed_with_the_check_that_it_is_the_users_once_made(tmp_path):
    listing = ProjectListing("absent", (False,) * 3, {}, (), owners=tmp_chain(None))
    plan = plan_sync(LAYOUT, "lab", tmp_path, {}, listing, no_ignores())
    assert plan.made == ("/tmp/lab",)
    [claim] = sync_steps(plan)
    assert list(claim.command) == prepare_project("/tmp/lab", "/tmp/lab/wc", "/tmp/lab/output", "lab", ("/tmp/lab",))


def test_clean_asks_who_owns_a_remote_cluster_folder_before_removing_it_and_refuses_an_unsafe_one():
    record = HostRecord(address="10.0.0.2", files=["/tmp/lab/wc"], secret_dirs=["/tmp/lab/.infra"])
    plan = plan_clean("w1", record, containers=[], networks=[], volumes=[], files=True, remove_volumes=False,
                      cluster="lab", state_dir="/home/me/.infra/lab")
    assert [removal.owners_query for removal in plan.folders] == [tuple(folder_owners("/tmp/lab"))] * 2
    unsafe = "=====infra:paths\n1000\nf 1000 alice 41ed /tmp/lab\np 0 root 41ff /tmp\np 0 root 41ed /\n=====infra:end\n"
    assert plan.folders[0].refusal(unsafe).startswith("/tmp (owner root, uid 0, mode 0777), above it")
    assert plan.folders[0].refusal(unsafe.replace("41ff /tmp", "43ff /tmp")) == ""  # sticky: the folder is alice's
    assert "could not be read" in plan.folders[0].refusal("=====infra:paths\n1000\n")  # cut short


def test_clean_on_this_machine_asks_nothing_its_secret_folders_are_in_the_state_dir():
    record = HostRecord(address="127.0.0.1", secret_dirs=["/home/me/.infra/lab/env"])
    plan = plan_clean("local", record, containers=[], networks=[], volumes=[], files=True, remove_volumes=False,
                      cluster="lab", state_dir="/home/me/.infra/lab")
    assert [removal.owners_query for removal in plan.folders] == [None]
