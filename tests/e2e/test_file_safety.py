"""Symbolic links planted by a job, on a host or here never make infra read or write outside the project.

One cluster (master and one worker on h1). A job run with `infra run` plants links in its output
folder (to a host file holding a secret, to a host folder) and tries to plant some in the project
and to replace `output`; links are also planted over SSH, in the output folder and in the project
copy, and here, in the local project and its output folder. Then `infra run`, `sync-files` and
`clean --files` run as a user would, and the tests check, byte for byte, that the victims on the
host and here are untouched, that no secret reached the other side, and what each command said.
The tests run in file order and share the cluster.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.e2e.test_cluster import TEST_IMAGES, WHEELHOUSE

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CLUSTER = "safe"
PORTS = {"broker": 5697, "results": 6397, "flower": 5597}  # not those of the other e2e clusters
REMOTE = "/root/infra-safe"  # remote_path on h1 (the SSH user is root)
ROOT = f"{REMOTE}/{CLUSTER}"  # the cluster's folder
COPY = f"{ROOT}/wordcount"  # the project copy
OUTPUT = f"{ROOT}/output"  # the output folder, mounted at /project/output in the master container
VICTIM = "/root/victim-safe"  # on h1: what the planted links point to
HOST_SECRET = "host secret: -----BEGIN OPENSSH PRIVATE KEY-----"
LOCAL_SECRET = "local secret: -----BEGIN OPENSSH PRIVATE KEY-----"

PLANT = """\
import json, os, sys
victim = sys.argv[1]
with open("output/result.txt", "w") as f:
    f.write("result\\n")
os.chmod("output/result.txt", 0o777)
os.makedirs("output/sub", exist_ok=True)
with open("output/sub/deep.txt", "w") as f:
    f.write("deep\\n")
with open("output/here-link.txt", "w") as f:
    f.write("from the job\\n")
os.symlink(victim + "/secret.txt", "output/leak.txt")
os.symlink(victim, "output/leakdir")
tried = {}
for name, target in (("planted.txt", victim + "/secret.txt"), ("planted-dir", victim)):
    try:
        os.symlink(target, name)
        tried[name] = "planted"
    except OSError as exc:
        tried[name] = type(exc).__name__
try:
    os.rename("output", "output-moved")
    tried["output"] = "moved"
except OSError as exc:
    tried["output"] = type(exc).__name__
print(json.dumps(tried))
"""


def infra(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run the real command line, as a user would."""
    return subprocess.run([sys.executable, "-m", "infra", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)


def host_files(testbed, folder: str) -> dict[str, str]:
    """{path: sha256} of every file under a folder of h1, and `->target` for its links (empty when absent)."""
    out = testbed.exec("h1", f"cd {folder} 2>/dev/null || exit 0; find . -type f -exec sha256sum {{}} + ; "
                             f"find . -type l -printf '%p ->%l\\n'")
    found = {}
    for line in out.splitlines():
        if " ->" in line:
            path, _, target = line.partition(" ->")
            found[path] = f"->{target}"
        elif line.strip():
            digest, _, path = line.partition("  ")
            found[path] = digest
    return found


def local_files(folder: Path) -> dict[str, str]:
    found = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink():
            found[rel] = f"->{os.readlink(path)}"
        elif path.is_file():
            found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def holds(testbed, folder: str, text: str) -> list[str]:
    """Files under a folder of h1 (links not followed) whose content holds `text`."""
    out = testbed.exec("h1", f"[ -d {folder} ] || exit 0; grep -rlF -- '{text}' {folder} || true")
    return [line for line in out.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def safe(testbed, tmp_path_factory):
    """The cluster, victims on h1 and here; everything removed at the end, whatever happens."""
    assert WHEELHOUSE.is_dir(), "run scripts/make-wheelhouse.sh first (scripts/run-tests.sh does)"
    folder = tmp_path_factory.mktemp("safe")
    project = folder / "wordcount"
    shutil.copytree(REPO / "projects" / "wordcount", project,
                    ignore=shutil.ignore_patterns("__pycache__", "output", "*.pyc"))
    (project / "scripts").mkdir()
    (project / "scripts" / "plant.py").write_text(PLANT)
    (project / "scripts" / "again.py").write_text("print('again')\n")
    (project / "notes.txt").write_text("v1\n")
    victim = folder / "victim-here"  # this machine's files the links here point to
    (victim / "dir").mkdir(parents=True)
    (victim / "secret.txt").write_text(LOCAL_SECRET + "\n")
    (victim / "notes.txt").write_text("mine\n")
    (victim / "dir" / "inside.txt").write_text(LOCAL_SECRET + " (in a folder)\n")
    testbed.exec("h1", f"rm -rf {VICTIM} {REMOTE} && mkdir -p {VICTIM}/dir && "
                       f"printf '%s\\n' '{HOST_SECRET}' > {VICTIM}/secret.txt && "
                       f"printf 'inside\\n' > {VICTIM}/dir/inside.txt")
    h1 = testbed.docker_hosts[0]
    spec = {
        "name": CLUSTER,
        "hosts": testbed.cluster_hosts([h1]),
        "project": {"path": str(project), "app": "wordcount", "remote_path": REMOTE.removeprefix("/root/")},
        "roles": {"master": {"host": h1.name}, "workers": [{"host": h1.name, "containers": 1, "concurrency": 1}]},
        "ports": PORTS,
        "images": TEST_IMAGES,
        "ssh": {"connect_timeout": 5, "known_hosts": str(testbed.known_hosts_path)},
        "timeouts": {"workers": 120},
        "state_dir": str(folder / "state"),
    }
    cluster_file = folder / "cluster.yaml"
    cluster_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    info = {"file": str(cluster_file), "project": project, "victim": victim, "state": folder / "state" / CLUSTER,
            "testbed": testbed}
    try:
        result = infra("up", "-f", str(cluster_file))
        assert result.returncode == 0, f"infra up failed:\n{result.stdout}\n{result.stderr}"
        info["host_victim"] = host_files(testbed, VICTIM)
        info["local_victim"] = local_files(victim)
        yield info
    finally:
        testbed.heal()
        infra("clean", "-f", str(cluster_file), "--files", "--volumes")
        testbed.exec("h1", f"rm -rf {VICTIM} {REMOTE}")


def victims_untouched(safe) -> None:
    assert host_files(safe["testbed"], VICTIM) == safe["host_victim"]
    assert local_files(safe["victim"]) == safe["local_victim"]


# --------------------------------------------------------------------------- the cluster's folder


def test_up_puts_the_project_in_the_clusters_own_folder_marker_first(safe):
    testbed = safe["testbed"]
    assert testbed.exec("h1", f"cat {ROOT}/.infra-cluster") == CLUSTER
    assert testbed.exec("h1", f"[ -d {COPY}/output ] && [ -d {OUTPUT} ] && echo yes") == "yes"
    assert "scripts/plant.py" in "\n".join(host_files(testbed, COPY))


# --------------------------------------------------------------------------- infra run


def test_a_job_planting_links_in_its_output_gets_back_only_its_regular_files(safe):
    testbed, project = safe["testbed"], safe["project"]
    output = project / "output"
    output.mkdir()
    os.symlink(safe["victim"] / "notes.txt", output / "here-link.txt")  # a link here, where the job writes a file
    result = infra("run", "-f", safe["file"], "scripts/plant.py", VICTIM)
    assert result.returncode == 0, result.stdout + result.stderr
    tried = json.loads(result.stdout.strip().splitlines()[-1])
    # The project is read-only in the container and the output folder a mount: neither takes a link.
    assert sorted(tried) == ["output", "planted-dir", "planted.txt"]
    assert not {"planted", "moved"} & set(tried.values()), tried
    # What came back: the job's regular files, modes 0644 / 0755, nothing a link pointed to.
    assert (output / "result.txt").read_text() == "result\n"
    assert stat.S_IMODE((output / "result.txt").stat().st_mode) == 0o755  # 0777 on the host
    assert stat.S_IMODE((output / "sub" / "deep.txt").stat().st_mode) == 0o644
    assert not (output / "leak.txt").exists() and not (output / "leak.txt").is_symlink()
    assert not (output / "leakdir").exists() and not (output / "leakdir").is_symlink()
    assert (output / "here-link.txt").is_symlink()
    assert "warning: output file not fetched: here-link.txt" in result.stderr
    for path in project.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert HOST_SECRET not in path.read_text(errors="replace"), path
    victims_untouched(safe)
    # The links are on the host, in the output folder where the job left them, pointing where they did.
    planted = host_files(testbed, OUTPUT)
    assert planted["./leak.txt"] == f"->{VICTIM}/secret.txt" and planted["./leakdir"] == f"->{VICTIM}"
    assert planted["./result.txt"] == hashlib.sha256(b"result\n").hexdigest()
    assert not [path for path, what in host_files(testbed, COPY).items() if what.startswith("->")]


def test_links_planted_in_the_output_folder_over_ssh_are_not_fetched_either(safe):
    testbed, output = safe["testbed"], safe["project"] / "output"
    testbed.exec("h1", f"ln -s {VICTIM}/secret.txt {OUTPUT}/ssh-leak.txt && ln -s {VICTIM}/dir {OUTPUT}/ssh-dir")
    result = infra("run", "-f", safe["file"], "scripts/again.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "again"
    assert not (output / "ssh-leak.txt").exists() and not (output / "ssh-dir").exists()
    victims_untouched(safe)


# --------------------------------------------------------------------------- sync-files


def test_sync_files_neither_writes_through_links_in_the_project_copy_nor_sends_links_from_here(safe):
    testbed, project = safe["testbed"], safe["project"]
    # There: a folder and a file of the project replaced by links, and a stray link.
    testbed.exec("h1", f"cd {COPY} && rm -f notes.txt && ln -s {VICTIM}/secret.txt notes.txt && "
                       f"ln -s {VICTIM} extra && ln -s {VICTIM}/dir stray")
    # Here: new content where the links are, and links to this machine's secrets.
    (project / "notes.txt").write_text("v2\n")
    (project / "extra").mkdir()
    (project / "extra" / "new.txt").write_text("new\n")
    os.symlink(safe["victim"] / "secret.txt", project / "local-leak.txt")
    os.symlink(safe["victim"] / "dir", project / "local-leakdir")
    result = infra("sync-files", "-f", safe["file"], "--no-restart")
    assert result.returncode == 0, result.stdout + result.stderr
    victims_untouched(safe)
    copy = host_files(testbed, COPY)
    assert copy["./notes.txt"] == hashlib.sha256(b"v2\n").hexdigest()  # a file again, the link replaced
    assert copy["./extra/new.txt"] == hashlib.sha256(b"new\n").hexdigest()
    assert not [path for path, what in copy.items() if what.startswith("->")], copy  # no link left, none sent
    assert "./local-leak.txt" not in copy and not any(p.startswith("./local-leakdir") for p in copy)
    assert holds(testbed, ROOT, "local secret") == []


def test_sync_files_refuses_a_cluster_folder_whose_marker_names_another_cluster(safe):
    testbed, project = safe["testbed"], safe["project"]
    testbed.exec("h1", f"printf 'someone-else\\n' > {ROOT}/.infra-cluster")
    try:
        before = host_files(testbed, ROOT)
        (project / "notes.txt").write_text("v3\n")
        result = infra("sync-files", "-f", safe["file"], "--no-restart")
        assert result.returncode != 0
        assert f"{ROOT} holds files but no marker of cluster {CLUSTER}" in result.stdout + result.stderr
        assert host_files(testbed, ROOT) == before
    finally:
        testbed.exec("h1", f"printf '{CLUSTER}\\n' > {ROOT}/.infra-cluster")


# --------------------------------------------------------------------------- clean --files


def test_clean_files_deletes_the_clusters_folder_without_following_links_and_reports_what_it_refused(safe):
    testbed = safe["testbed"]
    testbed.exec("h1", f"ln -s {VICTIM} {OUTPUT}/victim-link && ln -s {VICTIM} {COPY}/victim-link && "
                       f"ln -s {VICTIM}/secret.txt {ROOT}/.infra/victim-file")
    # Another cluster's folder beside ours, which the manifest names too (two clusters, one remote_path).
    testbed.exec("h1", f"mkdir -p {REMOTE}/other/wordcount && printf 'other\\n' > {REMOTE}/other/.infra-cluster && "
                       f"printf 'theirs\\n' > {REMOTE}/other/wordcount/keep.txt")
    manifest_path = safe["state"] / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["hosts"]["h1"]["files"].append(f"{REMOTE}/other/wordcount")
    manifest_path.write_text(json.dumps(manifest))
    other = host_files(testbed, f"{REMOTE}/other")
    local_project = local_files(safe["project"])

    result = infra("clean", "-f", safe["file"], "--files", "--volumes")
    assert result.returncode == 1, result.stdout + result.stderr  # a refusal is a failure, named in one line
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: cluster {CLUSTER} removed, but a folder "
                                                             f"was refused on h1")
    said = " ".join(result.stdout.split())
    assert f"folder(s) {ROOT}/.infra, {ROOT};" in said
    assert f"refused to delete {REMOTE}/other ({REMOTE}/other holds no marker of cluster {CLUSTER})" in said
    assert testbed.exec("h1", f"[ -e {ROOT} ] || echo gone") == "gone"
    assert host_files(testbed, f"{REMOTE}/other") == other
    victims_untouched(safe)
    assert local_files(safe["project"]) == local_project  # here, nothing of the project was touched
    assert not manifest_path.exists()


# --------------------------------------------------------------------------- a folder another user could swap

SHARED = "/srv/infra-shared"  # on h1: a world-writable folder, not sticky


def test_up_refuses_a_remote_path_below_a_world_writable_folder_and_writes_nothing_there(testbed, tmp_path):
    h1 = testbed.docker_hosts[0]
    testbed.exec("h1", f"rm -rf {SHARED} && mkdir -p {SHARED} && chmod 0777 {SHARED}")
    project = tmp_path / "wordcount"
    shutil.copytree(REPO / "projects" / "wordcount", project, ignore=shutil.ignore_patterns("__pycache__", "output"))
    spec = {
        "name": "planted",
        "hosts": testbed.cluster_hosts([h1]),
        "project": {"path": str(project), "app": "wordcount", "remote_path": f"{SHARED}/infra"},
        "roles": {"master": {"host": h1.name}, "workers": [{"host": h1.name, "containers": 1}]},
        "ports": {"broker": 5698, "results": 6398, "flower": 5598},
        "images": TEST_IMAGES,
        "ssh": {"connect_timeout": 5, "known_hosts": str(testbed.known_hosts_path)},
        "state_dir": str(tmp_path / "state"),
    }
    cluster_file = tmp_path / "cluster.yaml"
    cluster_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    try:
        result = infra("up", "-f", str(cluster_file))
        said = result.stdout + result.stderr
        assert result.returncode != 0, said
        assert (f"{SHARED} (owner root, uid 0, mode 0777), above it, is writable by other users and not sticky: "
                f"another user could swap the cluster folder, left alone") in said
        assert "Traceback" not in said
        assert testbed.exec("h1", f"find {SHARED} -mindepth 1") == ""  # nothing written there
        assert testbed.exec("h1", "docker ps --all --filter label=infra.cluster=planted --format '{{.Names}}'") == ""
    finally:
        infra("clean", "-f", str(cluster_file))
        testbed.exec("h1", f"rm -rf {SHARED}")
