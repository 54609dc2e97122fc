"""Facts about a host are parsed from recorded probe output, without any host."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from infra.deploy import parse_ping
from infra.facts.host import (
    SECTION,
    HostFacts,
    docker_arch,
    facts_script,
    parse_docker_inspect,
    parse_docker_version,
    parse_host_facts,
    parse_sha256_list,
    split_sections,
)

FIXTURES = Path(__file__).parent / "fixtures"
WORKER_ID = "sha256:" + "1f3a" * 16
MASTER_ID = "sha256:" + "9c0d" * 16


def recorded(name: str) -> str:
    return (FIXTURES / name).read_text()


# --------------------------------------------------------------------------- parse_host_facts


@pytest.fixture(scope="module")
def master_facts() -> HostFacts:
    return parse_host_facts(recorded("probe_gpu_box.txt"))


def test_the_recorded_probe_has_every_section_the_script_prints():
    sections = split_sections(recorded("probe_gpu_box.txt"))
    assert list(sections) == [
        "home", "uid", "arch", "docker_version", "containers", "images", "networks", "volumes", "end",
    ]


def test_home_uid_gid_and_arch_are_read(master_facts):
    assert master_facts.home == "/home/alice"
    assert (master_facts.uid, master_facts.gid) == (1000, 1000)
    assert master_facts.arch == "x86_64"


def test_a_working_docker_gives_its_server_version_and_no_problem(master_facts):
    assert master_facts.docker_version == "27.3.1"
    assert master_facts.docker_problem == ""


def test_containers_come_from_docker_inspect_sorted_by_name_without_the_slash(master_facts):
    assert [c.name for c in master_facts.containers] == [
        "lab-broker", "lab-flower", "lab-master", "lab-results", "lab-worker-gpu-box-1",
    ]


def test_each_container_carries_its_state_role_and_spec_label(master_facts):
    broker = master_facts.container("lab-broker")
    assert broker.state == "running" and broker.running
    assert broker.role == "broker"
    assert broker.fingerprint == "0a1b2c3d4e5f60718293"
    assert broker.labels["infra.cluster"] == "lab"
    assert broker.health == "healthy"
    assert broker.started_at == "2024-05-01T09:12:45.30212Z"
    assert broker.id.startswith("6c61622d")

    master = master_facts.container("lab-master")
    assert master.state == "exited" and not master.running
    assert master.health == ""

    worker = master_facts.container("lab-worker-gpu-box-1")
    assert worker.image_id == WORKER_ID
    assert worker.role == "worker"


def test_a_container_that_is_not_there_is_none(master_facts):
    assert master_facts.container("lab-worker-gpu-box-9") is None


def test_image_ids_are_read_and_a_dash_means_the_image_is_missing(master_facts):
    assert master_facts.image_ids == {
        "infra-lab-worker:latest": WORKER_ID,
        "infra-lab-master:latest": MASTER_ID,
        "infra-lab-broker:latest": None,
    }


def test_networks_and_volumes_of_the_cluster_are_listed(master_facts):
    assert master_facts.networks == ("lab-net",)
    assert master_facts.volumes == ("lab-broker-data", "lab-results-data")


def test_a_host_without_docker_has_no_version_a_reason_and_no_containers():
    facts = parse_host_facts(recorded("probe_no_docker.txt"))
    assert facts.docker_version is None
    assert facts.docker_problem == "Docker is not installed"
    assert facts.containers == ()
    assert facts.image_ids == {
        "infra-lab-worker:latest": None, "infra-lab-master:latest": None, "infra-lab-broker:latest": None,
    }
    assert facts.networks == () and facts.volumes == ()
    assert facts.arch == "aarch64" and docker_arch(facts.arch) == "arm64"


def test_containers_are_ignored_when_docker_does_not_answer():
    # Whatever the containers section holds, it cannot be trusted without a working engine.
    text = recorded("probe_gpu_box.txt").replace("27.3.1\nexit=0", "Cannot connect to the Docker daemon at "
                                                 "unix:///var/run/docker.sock. Is the docker daemon running?\nexit=1")
    facts = parse_host_facts(text)
    assert facts.docker_version is None
    assert facts.containers == ()


def test_a_probe_cut_short_is_refused():
    text = recorded("probe_gpu_box.txt")
    truncated = text[: text.index(SECTION + "networks")]
    with pytest.raises(ValueError, match="incomplete"):
        parse_host_facts(truncated)


def test_an_empty_inspect_output_means_no_containers():
    assert parse_docker_inspect("[]") == ()
    assert parse_docker_inspect("") == ()


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX sh")
def test_the_probe_script_run_by_sh_against_a_stub_docker_parses(tmp_path):
    """The script and the parser agree on the format (sections, image lines, `exit=`)."""
    stub = tmp_path / "docker"
    stub.write_text(
        "#!/bin/sh\n"
        'case "$1 $2" in\n'
        '  "version --format") echo 26.1.4;;\n'
        '  "ps -aq") ;;\n'
        '  "image inspect") [ "$5" = "infra-lab-worker:latest" ] && echo sha256:abc || exit 1;;\n'
        '  "network ls") echo lab-net;;\n'
        '  "volume ls") ;;\n'
        "esac\n"
    )
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    script = facts_script("lab", ["infra-lab-worker:latest", "infra-lab-broker:latest"])
    env = {"PATH": f"{tmp_path}:{os.environ.get('PATH', '/usr/bin:/bin')}", "HOME": "/home/bob"}
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=env, check=True).stdout
    facts = parse_host_facts(out)
    assert facts.home == "/home/bob"
    assert facts.uid == os.getuid() and facts.gid == os.getgid()
    assert facts.docker_version == "26.1.4"
    assert facts.containers == ()
    assert facts.image_ids == {"infra-lab-worker:latest": "sha256:abc", "infra-lab-broker:latest": None}
    assert facts.networks == ("lab-net",)


# --------------------------------------------------------------------------- docker version


def test_docker_version_ok():
    assert parse_docker_version("27.3.1\nexit=0\n") == ("27.3.1", "")


def test_docker_not_installed():
    assert parse_docker_version("sh: 1: docker: not found\nexit=127") == (None, "Docker is not installed")
    assert parse_docker_version("bash: line 1: docker: command not found\nexit=127") == (
        None, "Docker is not installed")


def test_docker_permission_denied():
    text = ("permission denied while trying to connect to the Docker daemon socket at "
            "unix:///var/run/docker.sock: Get \"http://%2Fvar%2Frun%2Fdocker.sock/v1.24/version\": "
            "dial unix /var/run/docker.sock: connect: permission denied\nexit=1")
    assert parse_docker_version(text) == (None, "the SSH user may not use Docker (not in the 'docker' group)")


def test_docker_daemon_not_running():
    text = "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?\nexit=1"
    assert parse_docker_version(text) == (None, "the Docker engine is not running")


def test_docker_daemon_not_running_as_docker_28_says_it_is_not_mistaken_for_missing_docker():
    text = ("failed to connect to the docker API at unix:///var/run/docker.sock; check if the path is "
            "correct and if the daemon is running: dial unix /var/run/docker.sock: connect: "
            "no such file or directory\nexit=1")
    assert parse_docker_version(text) == (None, "the Docker engine is not running")


def test_an_unknown_docker_failure_is_reported_with_its_last_line():
    assert parse_docker_version("Error response from daemon: client version 1.52 is too new\nexit=1") == (
        None, "Error response from daemon: client version 1.52 is too new")


def test_a_version_without_exit_line_is_not_trusted():
    assert parse_docker_version("27.3.1") == (None, "27.3.1")
    assert parse_docker_version("") == (None, "Docker does not answer")


# --------------------------------------------------------------------------- sha256 lists and arch


def test_sha256_list_from_find_in_the_folder_gives_relative_paths():
    digests = parse_sha256_list(recorded("sha256_listing.txt"), ".")
    assert digests == {
        "data dir/sample.txt": "a948904f2f0f479b8f8197694b30184b0d2ed1c1cd2a1ec0fb85d299a192a447",
        "requirements.txt": "b1043e6b91cdb19222d80f0388a4270751ce0c531f9abcc8019204f2dfd788e0",
        "wordcount/__init__.py": "01ba4719c80b6fe911b091a7c05124b64eeece964e09c058ef8f9805daca546b",
        "wordcount/tasks.py": "cc42155088fca5730758db72b2a5bca33112a941dfaa2d43098ec422ce4ea213",
    }


def test_sha256_list_with_absolute_paths_is_made_relative_to_the_root():
    digest = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    text = f"{digest}  /home/alice/infra/wordcount/a.py\n{digest} */home/alice/infra/wordcount/sub/b.bin\n"
    assert parse_sha256_list(text, "/home/alice/infra/wordcount/") == {"a.py": digest, "sub/b.bin": digest}


def test_sha256_list_skips_lines_that_are_not_digests():
    text = "sha256sum: ./gone: No such file or directory\n\nshort  ./x\n"
    assert parse_sha256_list(text, ".") == {}


@pytest.mark.parametrize(
    ("machine", "arch"),
    [("x86_64", "amd64"), ("aarch64", "arm64"), ("arm64", "arm64"), ("armv7l", "arm"),
     ("armv6l", "arm"), ("x86_64\n", "amd64"), ("riscv64", "riscv64")],
)
def test_docker_arch_maps_uname_machine(machine, arch):
    assert docker_arch(machine) == arch


# --------------------------------------------------------------------------- celery ping


def test_ping_answers_are_read_from_the_last_json_line():
    output = (
        "some warning from celery\n"
        '{"lab-worker-gpu-box-1@gpu-box": {"ok": "pong"}, "lab-worker-pi1-1@pi1": {"ok": "pong"}}\n'
    )
    assert parse_ping(output) == {"lab-worker-gpu-box-1@gpu-box", "lab-worker-pi1-1@pi1"}


def test_no_json_in_ping_output_means_nobody_answered():
    assert parse_ping("Error: No nodes replied within time constraint\n") == set()
    assert parse_ping("") == set()
    assert parse_ping("{not json\n") == set()
