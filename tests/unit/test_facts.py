"""Facts about a host are parsed from recorded answers, without any host.

Two sources: the shell probe (home, uid, gid, `uname -m`) and the host's engine, whose answers
are recorded here as the Docker Engine API gives them (fixtures/api/: `GET /containers/json`,
`GET /containers/{id}/json`, and image inspects by reference, of a master host `gpu-box`).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest

from infra.commands.files import PROBE_MARKER, host_probe
from infra.facts.arch import docker_arch
from infra.facts.celery import ReadinessEvent, parse_readiness_line
from infra.facts.containers import (
    Container,
    ImageInfo,
    parse_container_inspect,
    parse_container_list,
    parse_image_inspect,
)
from infra.facts.docker import docker_problem
from infra.facts.files import parse_sha256_list
from infra.facts.host import HostFacts, Identity, host_facts, parse_host_probe
from infra.facts.sections import split_sections

FIXTURES = Path(__file__).parent / "fixtures"
WORKER_ID = "sha256:" + "1f3a" * 16
MASTER_ID = "sha256:" + "9c0d" * 16
BROKER_ID = "sha256:" + "77aa" * 16
SECRETS = ("Brk-pw_0123456789abcdef", "Res-pw_0123456789abcdef")


def recorded(name: str) -> str:
    return (FIXTURES / name).read_text()


def api(name: str):
    return json.loads(recorded(f"api/{name}"))


@pytest.fixture(scope="module")
def listed() -> dict[str, Container]:
    return {c.name: c for c in parse_container_list(api("containers_gpu_box.json"))}


@pytest.fixture(scope="module")
def inspected() -> dict[str, Container]:
    return {c.name: c for c in parse_container_inspect(api("inspect_gpu_box.json"))}


@pytest.fixture(scope="module")
def master_facts() -> HostFacts:
    return host_facts(
        parse_host_probe(recorded("host_probe_gpu_box.txt")), "27.3.1",
        containers=parse_container_list(api("containers_gpu_box.json")),
        images=parse_image_inspect(api("images_gpu_box.json")),
        networks=["lab-net"], volumes=["lab-broker-data", "lab-results-data"],
    )


# --------------------------------------------------------------------------- the shell probe


def test_the_recorded_probe_has_every_section_the_probe_prints():
    assert list(split_sections(recorded("host_probe_gpu_box.txt"), PROBE_MARKER)) == ["home", "uid", "arch", "end"]


def test_home_uid_gid_and_arch_are_read():
    assert parse_host_probe(recorded("host_probe_gpu_box.txt")) == Identity("/home/alice", 1000, 1100, "x86_64")


def test_a_login_banner_before_the_probe_is_ignored():
    assert parse_host_probe(recorded("host_probe_pi1.txt")) == Identity("/home/pi", 1001, 1001, "aarch64")


def test_a_probe_cut_short_is_refused():
    text = recorded("host_probe_gpu_box.txt")
    with pytest.raises(ValueError, match="incomplete"):
        parse_host_probe(text[: text.index(PROBE_MARKER + "end")])


def test_a_probe_without_a_numeric_uid_is_refused():
    text = recorded("host_probe_gpu_box.txt").replace("1000\n1100", "id: cannot find name for user ID")
    with pytest.raises(ValueError, match="no uid"):
        parse_host_probe(text)


def test_a_single_id_line_serves_as_uid_and_gid():
    text = recorded("host_probe_gpu_box.txt").replace("1000\n1100", "1000")
    assert (parse_host_probe(text).uid, parse_host_probe(text).gid) == (1000, 1000)


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX sh")
def test_the_probe_run_by_sh_parses():
    """The probe and its parser agree on the format."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/home/bob"}
    out = subprocess.run(host_probe(), capture_output=True, text=True, env=env, check=True).stdout
    identity = parse_host_probe(out)
    assert identity == Identity("/home/bob", os.getuid(), os.getgid(), platform.machine())


# --------------------------------------------------------------------------- the engine's container list


def test_containers_come_from_the_api_list_sorted_by_name_without_the_slash(listed):
    assert list(listed) == [
        "lab-broker", "lab-flower", "lab-master", "lab-results", "lab-worker-gpu-box-1", "lab-worker-gpu-box-2",
    ]


def test_each_listed_container_carries_its_state_role_image_and_spec_label(listed):
    broker = listed["lab-broker"]
    assert broker.state == "running" and broker.running
    assert (broker.role, broker.labels["infra.cluster"], broker.labels["infra.host"]) == ("broker", "lab", "gpu-box")
    assert broker.fingerprint == "0a1b2c3d4e5f60718293"
    assert (broker.image, broker.image_id) == ("infra-lab-broker:latest", BROKER_ID)
    assert len(broker.id) == 64

    master = listed["lab-master"]
    assert master.state == "exited" and not master.running

    assert listed["lab-worker-gpu-box-1"].image_id == WORKER_ID


def test_the_list_tells_health_only_through_its_status_text(listed):
    assert listed["lab-broker"].health == "healthy"  # "Up 2 hours (healthy)"
    assert listed["lab-worker-gpu-box-1"].health == "starting"  # "(health: starting)"
    assert listed["lab-flower"].health is None  # no health check
    assert listed["lab-master"].health is None


def test_the_list_has_no_start_time_restart_count_or_exit_code(listed):
    assert all((c.started_at, c.restarts, c.exit_code) == ("", None, None) for c in listed.values())
    assert listed["lab-broker"].started is None


def test_a_container_whose_tag_moved_on_is_listed_with_its_image_id(listed):
    stale = listed["lab-worker-gpu-box-2"]
    assert stale.image == stale.image_id == "sha256:" + "0bad" * 16
    assert stale.state == "restarting" and not stale.running


def test_an_empty_answer_means_no_containers():
    assert parse_container_list([]) == ()
    assert parse_container_list(None) == ()
    assert parse_container_inspect([]) == ()
    assert parse_container_inspect(None) == ()


def test_an_unhealthy_status_text_is_read():
    item = {"Names": ["/lab-broker"], "Id": "x", "State": "running", "Status": "Up 3 minutes (unhealthy)"}
    assert parse_container_list([item])[0].health == "unhealthy"


# --------------------------------------------------------------------------- the engine's inspect answers


def test_inspect_gives_start_time_restart_count_health_and_exit_code(inspected):
    broker = inspected["lab-broker"]
    assert (broker.state, broker.health, broker.restarts, broker.exit_code) == ("running", "healthy", 0, None)
    assert broker.started == datetime(2024, 5, 1, 9, 12, 45, 302120, tzinfo=timezone.utc)
    assert (broker.image, broker.image_id) == ("infra-lab-broker:latest", BROKER_ID)

    master = inspected["lab-master"]
    assert (master.state, master.exit_code, master.health) == ("exited", 137, None)

    looping = inspected["lab-worker-gpu-box-2"]
    assert (looping.state, looping.restarts, looping.exit_code) == ("restarting", 7, 1)
    assert looping.image == "infra-lab-worker:latest"  # what it was started from, unlike the list


def test_list_and_inspect_agree_on_names_ids_and_labels(listed, inspected):
    for name, container in inspected.items():
        assert (container.id, container.labels["infra.spec"]) == (listed[name].id, listed[name].fingerprint)


def test_the_inspected_environment_with_its_secrets_is_not_kept():
    raw = api("inspect_gpu_box.json")
    assert any(secret in " ".join(item["Config"]["Env"]) for item in raw for secret in SECRETS)  # the API sends it
    parsed = parse_container_inspect(raw)
    assert not any(secret in repr(parsed) for secret in SECRETS)


# --------------------------------------------------------------------------- images


def test_image_inspects_give_ids_and_labels_and_none_for_a_missing_image():
    images = parse_image_inspect(api("images_gpu_box.json"))
    assert images["infra-lab-worker:latest"] == ImageInfo(WORKER_ID, {
        "infra.cluster": "lab", "infra.context": "c0ffee0123456789abcd",
        "org.opencontainers.image.title": "infra celery worker"})
    assert images["python:3.11-slim-bookworm"] == ImageInfo("sha256:" + "ba5e" * 16, {})  # "Labels": null
    assert images["infra-lab-broker:latest"] is None


# --------------------------------------------------------------------------- HostFacts


def test_facts_carry_the_identity_and_a_working_engine_has_no_problem(master_facts):
    assert (master_facts.home, master_facts.uid, master_facts.gid, master_facts.arch) == (
        "/home/alice", 1000, 1100, "x86_64")
    assert (master_facts.docker_version, master_facts.docker_problem) == ("27.3.1", "")


def test_a_container_that_is_not_there_is_none(master_facts):
    assert master_facts.container("lab-broker").role == "broker"
    assert master_facts.container("lab-worker-gpu-box-9") is None


def test_image_ids_and_labels_are_read_and_a_missing_image_has_none(master_facts):
    assert master_facts.image_ids == {
        "python:3.11-slim-bookworm": "sha256:" + "ba5e" * 16,
        "infra-lab-worker:latest": WORKER_ID,
        "infra-lab-master:latest": MASTER_ID,
        "infra-lab-broker:latest": None,
    }
    assert master_facts.image_id("infra-lab-other:latest") is None
    assert master_facts.images["infra-lab-master:latest"].labels.get("infra.context") == "ba5eba11ba5eba11ba5e"
    assert master_facts.images["infra-lab-master:latest"].labels.get("infra.nothing") is None
    assert master_facts.images["infra-lab-broker:latest"] is None


def test_running_workers_leave_out_services_and_workers_that_do_not_run(master_facts):
    assert list(master_facts.running_workers) == ["lab-worker-gpu-box-1"]  # gpu-box-2 is restarting


def test_networks_and_volumes_of_the_cluster_are_kept(master_facts):
    assert master_facts.networks == ("lab-net",)
    assert master_facts.volumes == ("lab-broker-data", "lab-results-data")


def test_a_host_whose_engine_does_not_answer_has_no_version_a_reason_and_nothing_else():
    facts = host_facts(parse_host_probe(recorded("host_probe_pi1.txt")), None, "Docker is not installed")
    assert (facts.docker_version, facts.docker_problem) == (None, "Docker is not installed")
    assert facts.containers == () and facts.images == {} and facts.image_ids == {}
    assert facts.image_id("infra-lab-worker:latest") is None
    assert facts.networks == () and facts.volumes == () and facts.running_workers == {}
    assert facts.arch == "aarch64" and docker_arch(facts.arch) == "arm64"


# --------------------------------------------------------------------------- why Docker does not answer


def test_docker_not_installed():
    assert docker_problem("sh: 1: docker: not found", 127) == "Docker is not installed"
    assert docker_problem("bash: line 1: docker: command not found", 127) == "Docker is not installed"


def test_docker_permission_denied():
    text = ("permission denied while trying to connect to the Docker daemon socket at "
            "unix:///var/run/docker.sock: Get \"http://%2Fvar%2Frun%2Fdocker.sock/v1.24/version\": "
            "dial unix /var/run/docker.sock: connect: permission denied")
    assert docker_problem(text, 1) == "the SSH user may not use Docker (not in the 'docker' group)"


def test_docker_daemon_not_running():
    text = "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?"
    assert docker_problem(text, 1) == "the Docker engine is not running"


def test_docker_daemon_not_running_as_docker_28_says_it_is_not_mistaken_for_missing_docker():
    text = ("failed to connect to the docker API at unix:///var/run/docker.sock; check if the path is "
            "correct and if the daemon is running: dial unix /var/run/docker.sock: connect: "
            "no such file or directory")
    assert docker_problem(text, 1) == "the Docker engine is not running"


def test_an_unknown_docker_failure_is_reported_with_its_last_line():
    assert docker_problem("Error response from daemon: client version 1.52 is too new", 1) == (
        "Error response from daemon: client version 1.52 is too new")


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


def test_sha256_list_reads_the_escaped_lines_of_odd_file_names():
    # Recorded with GNU coreutils 9.1: `find . -type f -exec sha256sum {} +`.
    text = ("2e7d2c03a9507ae265ecf5b5356885a53393a2029d241394997265a1a25aefc6  ./plain name.txt\n"
            "\\ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb  ./back\\\\slash.txt\n"
            "\\3e23e8160039594a33894f6564e1b1348bbd7a0088d42c4acb73eeaed59c009d  ./new\\nline.txt\n"
            "\\18ac3e7343f016890c510e93f935261169d9e3f565436429830faf0934f4f8e4  ./lit\\\\nname.txt\n")
    assert parse_sha256_list(text, ".") == {
        "plain name.txt": "2e7d2c03a9507ae265ecf5b5356885a53393a2029d241394997265a1a25aefc6",
        "back\\slash.txt": "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb",
        "new\nline.txt": "3e23e8160039594a33894f6564e1b1348bbd7a0088d42c4acb73eeaed59c009d",
        "lit\\nname.txt": "18ac3e7343f016890c510e93f935261169d9e3f565436429830faf0934f4f8e4",  # a backslash, then n
    }


@pytest.mark.parametrize(
    ("machine", "arch"),
    [("x86_64", "amd64"), ("aarch64", "arm64"), ("arm64", "arm64"), ("armv7l", "arm"),
     ("armv6l", "arm"), ("x86_64\n", "amd64"), ("riscv64", "riscv64")],
)
def test_docker_arch_maps_uname_machine(machine, arch):
    assert docker_arch(machine) == arch


# --------------------------------------------------------------------------- readiness probe


def test_readiness_lines_are_read_one_event_each():
    assert parse_readiness_line('{"event": "broker", "ok": true}\n') == ReadinessEvent("broker")
    assert parse_readiness_line('{"event": "answered", "nodes": ["lab-worker-pi1-1@pi1"]}') == \
        ReadinessEvent("answered", nodes=("lab-worker-pi1-1@pi1",))
    assert parse_readiness_line('{"event": "done", "missing": ["lab-worker-pi1-2@pi1"], "error": null}') == \
        ReadinessEvent("done", nodes=("lab-worker-pi1-2@pi1",))


def test_a_broker_that_refused_every_login_says_why_without_its_password():
    event = parse_readiness_line('{"event": "broker", "ok": false, '
                                 '"error": "AccessRefused: amqp://worker:s3cret@10.0.0.1:5671/lab"}')
    assert event.kind == "broker" and not event.ok
    assert "s3cret" not in event.error and "AccessRefused" in event.error


def test_other_lines_of_the_probe_are_not_events():
    for line in ("some warning from celery", "", "{not json", "{}", '{"event": "later"}', "[1, 2]"):
        assert parse_readiness_line(line) is None
