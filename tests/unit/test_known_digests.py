"""Digests known from an earlier scan or listing are reused only for files whose status is exactly the same."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra.commands.files import PROBE_MARKER, list_project
from infra.errors import ConfigError
from infra.facts import files as facts_files
from infra.facts.files import (
    KnownDigests,
    ProjectListing,
    complete_listing,
    ignore_rules,
    no_ignores,
    parse_project_listing,
    scan_local,
)
from infra.plans.layout import HostLayout
from infra.plans.sync import plan_sync, sync_steps
from infra.workflows.execute import step_input
from tests.unit.project_files import sha, write

LINUX = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="GNU find and sh")


@pytest.fixture
def project(tmp_path) -> Path:
    root = tmp_path / "wordcount"
    write(root, "wordcount/tasks.py", "def count(): pass\n")
    write(root, "data/sample.txt", "hello world\n")
    return root


@pytest.fixture
def settled(monkeypatch):
    """Every file counts as settled, however recently written (the scan otherwise leaves out the last 2 s)."""
    monkeypatch.setattr(facts_files, "SETTLE_NS", -10**15)


# --------------------------------------------------------------------------- this machine


def test_a_scan_reuses_the_known_digest_of_a_file_whose_status_is_unchanged(project, settled):
    first = scan_local(project)
    known = {rel: (f.status, "f" * 64) for rel, f in first.items()}
    again = scan_local(project, known=known)
    assert {f.digest for f in again.values()} == {"f" * 64}  # not read again: the known digest is taken


def test_a_scan_hashes_again_a_file_rewritten_since_even_with_its_old_modification_time(project, settled):
    first = scan_local(project)
    known = {rel: (f.status, f.digest) for rel, f in first.items()}
    path = project / "data/sample.txt"
    before = path.stat()
    time.sleep(0.01)
    path.write_text("hello WORLD\n")  # same size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    again = scan_local(project, known=known)
    assert again["data/sample.txt"].digest == sha("hello WORLD\n")
    assert again["wordcount/tasks.py"].digest == first["wordcount/tasks.py"].digest


def test_a_file_changed_just_before_a_scan_gets_no_status_so_it_is_read_again_next_time(project):
    assert {f.status for f in scan_local(project).values()} == {""}


def test_a_known_digest_is_never_taken_for_a_link_that_replaced_the_file(project, settled, tmp_path):
    first = scan_local(project)
    known = {rel: (f.status, f.digest) for rel, f in first.items()}
    (project / "data/sample.txt").unlink()
    os.symlink(write(tmp_path, "secret.txt", "secret"), project / "data/sample.txt")
    assert "data/sample.txt" not in scan_local(project, known=known)


def test_a_bad_ignore_pattern_is_one_located_line(project):
    write(project, ".infraignore", "data/\n!\n")
    with pytest.raises(ConfigError, match=r"\.infraignore: .*'!'"):
        ignore_rules(project)


# --------------------------------------------------------------------------- a host's listing


def entries_listing(entries: list[str], files: str = "", clock: str = "1700000000") -> str:
    return (f"{PROBE_MARKER}clock\n{clock}\n{PROBE_MARKER}owner\nours\n"
            f"{PROBE_MARKER}paths\n1000\nf 1000 user 41ed /srv/lab\np 0 root 41ed /srv\np 0 root 41ed /\n"
            f"{PROBE_MARKER}folders\nyes\nyes\nyes\n"
            f"{PROBE_MARKER}files\n{files}{PROBE_MARKER}entries\n" + "".join(e + "\0" for e in entries)
            + f"\n{PROBE_MARKER}end\n")


def test_the_entries_give_each_files_status_and_the_links():
    listing = parse_project_listing(entries_listing(
        ["f 11 5 1.5 1.5 ./a.py", "f 12 7 2.5 2.5 ./dir/with space.txt", "l ./link"],
        files=f"{sha('a')}  ./a.py\n"), no_ignores())
    assert listing.clock == 1700000000
    assert listing.stats == {"a.py": "11 5 1.5 1.5", "dir/with space.txt": "12 7 2.5 2.5"}
    assert listing.links == ("link",)
    assert listing.files == {"a.py": sha("a")}


def test_a_name_holding_newlines_and_marker_lines_cannot_forge_entries():
    name = f"./x\n{PROBE_MARKER}end\n{PROBE_MARKER}files\n{sha('b')}  ./forged"
    listing = parse_project_listing(entries_listing([f"f 1 1 1.0 1.0 {name}"]), no_ignores())
    assert list(listing.stats) == [name[2:]] and listing.files == {}


def test_entries_that_would_leave_the_folder_or_are_ignored_are_dropped(project):
    listing = parse_project_listing(entries_listing(
        ["f 1 1 1.0 1.0 ./../x", "f 2 1 1.0 1.0 ./__pycache__/m.pyc", "l ./../l", "f 3 1 1.0 1.0 ./ok.py"]),
        ignore_rules(project))
    assert list(listing.stats) == ["ok.py"] and listing.links == ()


def listing_of(stats: dict[str, str], files: dict[str, str], clock: int = 100) -> ProjectListing:
    return ProjectListing("ours", (True, True, True), files, (), "/home/u", stats, clock)


def test_a_listing_takes_known_digests_for_files_whose_status_is_the_same():
    known = KnownDigests(90, {"a.py": ("1 1 1.0 1.0", sha("a")), "b.py": ("2 1 1.0 1.0", sha("b"))})
    listing = listing_of({"a.py": "1 1 1.0 1.0", "b.py": "2 1 9.0 9.0"}, {"b.py": sha("B")})
    assert complete_listing(listing, known).files == {"a.py": sha("a"), "b.py": sha("B")}


@pytest.mark.parametrize("listing", [
    listing_of({"a.py": "1 1 1.0 5.0"}, {}),  # status changed, yet not hashed anew: hash everything
    listing_of({"new.py": "3 1 1.0 1.0"}, {}),  # not known at all
    listing_of({"a.py": "1 1 1.0 1.0"}, {}, clock=80),  # the host's clock went back since
])
def test_a_listing_with_a_file_neither_hashed_nor_known_as_it_is_is_incomplete(listing):
    known = KnownDigests(90, {"a.py": ("1 1 1.0 1.0", sha("a"))})
    assert complete_listing(listing, known) is None


def test_files_deleted_since_the_hash_are_left_out_and_a_listing_without_statuses_is_complete_as_it_is():
    listing = listing_of({"a.py": "1 1 1.0 1.0"}, {"a.py": sha("a"), "gone.py": sha("g")})
    assert complete_listing(listing, None).files == {"a.py": sha("a")}
    plain = ProjectListing("ours", (True, True, True), {"a.py": sha("a")}, ())
    assert complete_listing(plain, None) is plain and KnownDigests.of(plain) is None


def test_known_digests_survive_json_and_refuse_what_is_not_a_digest():
    known = KnownDigests(90, {"a.py": ("1 1 1.0 1.0", sha("a"))})
    assert KnownDigests.from_json(known.to_json()) == known
    with pytest.raises(ValueError):
        KnownDigests.from_json({"clock": 90, "files": {"a.py": ["1 1 1.0 1.0", "not hex"]}})


def host_layout_at(root: Path) -> HostLayout:
    return HostLayout(root=str(root), project_dir=str(root / "wc"), env_dir=str(root / ".infra"),
                      output_dir=str(root / "output"))


@LINUX
def test_on_a_real_folder_the_statuses_and_known_digests_give_the_same_files_as_hashing_everything(project, tmp_path):
    layout = host_layout_at(tmp_path / "home" / "infra" / "lab")
    local = scan_local(project)
    full = list_project(layout.root, layout.project_dir, layout.output_dir, "lab")
    first = parse_project_listing(subprocess.run(full, capture_output=True, check=True).stdout.decode(), no_ignores())
    for step in sync_steps(plan_sync(layout, "lab", project, local, first, ignore_rules(project))):
        subprocess.run(list(step.command), input=step_input(step) or b"", check=True, capture_output=True)
    os.symlink("wordcount", Path(layout.project_dir, "a-link"))

    def listed(since: int | None) -> ProjectListing:
        argv = list_project(layout.root, layout.project_dir, layout.output_dir, "lab", with_stats=True,
                            hashed_since=since)
        return parse_project_listing(subprocess.run(argv, capture_output=True, check=True).stdout.decode(),
                                     ignore_rules(project))

    everything = listed(None)
    assert abs(everything.clock - time.time()) < 5 and everything.links == ("a-link",)
    assert everything.files == {rel: f.digest for rel, f in local.items()} and set(everything.stats) == set(local)
    known = KnownDigests.of(everything)
    # Nothing changed after a moment still to come: nothing is hashed, every digest is known.
    nothing_hashed = listed(int(time.time()) + 60)
    assert nothing_hashed.files == {}
    assert complete_listing(nothing_hashed, known).files == everything.files
    # A file rewritten since is not as known: the listing is incomplete and everything is hashed again.
    time.sleep(0.01)
    Path(layout.project_dir, "data/sample.txt").write_text("hello WORLD\n")
    assert complete_listing(listed(int(time.time()) + 60), known) is None
    assert listed(known.hashed_since).files["data/sample.txt"] == sha("hello WORLD\n")


# --------------------------------------------------------------------------- what `sync-files` loads


def test_sync_files_without_restart_loads_neither_the_docker_sdk_nor_certificates_nor_celery():
    code = ("import sys, infra.cli, infra.workflows.sync_files, infra.workflows.sync_host; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('docker', 'celery', 'kombu') "
            "or m.startswith('cryptography.x509') or m == 'infra.workflows.readiness'))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[2]).stdout.strip()
    assert loaded == "[]"


def test_remembered_rules_answer_as_the_rules_they_remember():
    rules = ignore_rules(Path("/nonexistent"))
    remembered = facts_files.RememberedRules(rules)
    for path in ("a.py", "__pycache__/m.pyc", "output/x.csv", "pkg/output/x.csv", ".git/HEAD", "a.py"):
        assert remembered.match_file(path) == rules.match_file(path)
