"""Every command infra sends, spelled out exactly: engine operations, shell commands, Celery probes.

Engine operations are carried out through the Engine API; their `text()` is the docker command
line that does the same, which `--dry-run` prints and error messages name. Shell commands run
on the hosts as they are. Both are pinned here word for word, then fed hostile values (quotes,
`$(...)`, backticks, `;`, `&&`, newlines, a leading `-`, unicode) that must come back intact as
one word and never reach a shell unquoted.
"""

from __future__ import annotations

import base64
import inspect
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
from datetime import datetime, timezone
from pathlib import Path

import pytest

from infra.commands import celery as celery_commands
from infra.commands import files as file_commands
from infra.commands.celery import (
    CELERY_PROBE,
    PID_MARKER,
    READINESS_PROBE,
    celery_probe,
    list_queues,
    readiness_probe,
    run_job,
    signal_job,
    sweep_driver,
)
from infra.commands.engine import (
    BuildImage,
    ContainerSpec,
    CreateNetwork,
    CreateVolume,
    EngineOp,
    EngineVersion,
    Exec,
    InspectContainers,
    InspectImages,
    ListContainers,
    ListImageRefs,
    ListNetworks,
    ListVolumes,
    LoadImages,
    Logs,
    PullImage,
    PushImage,
    RemoveContainers,
    RemoveNetwork,
    RemoveVolume,
    RestartContainer,
    RunContainer,
    SaveImages,
    StartContainer,
    TagImage,
    UntagImage,
    cluster_labels,
)
from infra.commands.files import (
    FETCH_OUTPUT,
    HOST_PROBE,
    LIST_OUTPUT,
    MARKER_FILE,
    delete_files,
    extract_files,
    fetch_output,
    files_newer_than,
    folder_owners,
    host_probe,
    list_output,
    list_project,
    prepare_project,
    remove_folder,
    remove_owned_folder,
    tar_of,
    write_file,
    write_secret_file,
)
from infra.config import parse_cluster
from infra.facts.containers import ImageInfo
from infra.facts.files import no_ignores, parse_project_listing, parse_removal
from infra.facts.host import HostFacts
from infra.plans.layout import host_layout
from infra.plans.steps import Record, Step, engine_step, shell_step
from infra.plans.sync import SyncPlan
from infra.plans.up import plan_host
from infra.state.credentials import Secrets
from infra.state.tls import load_or_create as load_or_create_identity

FIXTURES = Path(__file__).parent / "fixtures"
MOMENT = datetime(2026, 11, 22, 2, 44, 2, 473877, tzinfo=timezone.utc)  # 1795315442.473877

WORKER = ContainerSpec(
    name="lab-worker-pi1-1", role="worker", host="pi1", image="infra-lab-worker:latest",
    command=("celery", "--app", "wordcount", "worker", "--hostname", "lab-worker-pi1-1@pi1", "--concurrency", "2"),
    environment=(("INFRA_CLUSTER", "lab"), ("INFRA_ENV_FILE", "/run/infra/celery.env")),
    secrets="/home/pi/infra/lab/.infra/worker", volumes=(("/home/pi/infra/wordcount", "/project", "ro"),),
    user="1001:1101", workdir="/project",
)
BROKER = ContainerSpec(
    name="lab-broker", role="broker", host="gpu-box", image="infra-lab-broker:latest",
    secrets="/home/alice/infra/lab/.infra/broker", ports=((5671, 5671),), bind_address="192.168.1.20",
    volumes=(("lab-broker-data", "/var/lib/rabbitmq", "rw"),), network="lab-net", network_alias="broker",
    hostname="lab-broker",
)


# --------------------------------------------------------------------------- engine: queries


def test_engine_version():
    assert EngineVersion().text() == "docker version --format '{{json .Server}}'"


def test_list_containers_finds_the_clusters_running_or_not():
    assert ListContainers("lab").text() == \
        "docker ps --all --no-trunc --filter label=infra.cluster=lab --format '{{json .}}'"


def test_inspect_containers():
    assert InspectContainers(("lab-broker", "lab-master")).text() == "docker container inspect lab-broker lab-master"


def test_inspect_images():
    assert InspectImages(("python:3.11-slim-bookworm", "infra-lab-worker:latest")).text() == (
        "docker image inspect --format '{{.Id}} {{json .Config.Labels}} {{json .RootFS.Layers}}' "
        "python:3.11-slim-bookworm infra-lab-worker:latest")


def test_list_image_refs_matching_any_pattern():
    assert ListImageRefs(("127.0.0.1:*/infra/lab-worker", "127.0.0.1:*/infra/lab-master")).text() == (
        "docker image ls --filter 'reference=127.0.0.1:*/infra/lab-worker' "
        "--filter 'reference=127.0.0.1:*/infra/lab-master' --format '{{.Repository}}:{{.Tag}}'")


def test_list_networks_and_volumes_of_the_cluster():
    assert ListNetworks("lab").text() == "docker network ls --filter label=infra.cluster=lab --format '{{.Name}}'"
    assert ListVolumes("lab").text() == "docker volume ls --filter label=infra.cluster=lab --format '{{.Name}}'"


# --------------------------------------------------------------------------- engine: containers


def test_run_a_worker():
    op = RunContainer(WORKER, cluster_labels("lab", role="worker", host="pi1", spec="f00"))
    assert op.text() == (
        "docker run --detach --name lab-worker-pi1-1 "
        "--label infra.cluster=lab --label infra.role=worker --label infra.host=pi1 --label infra.spec=f00 "
        "--restart unless-stopped --log-driver json-file --log-opt max-size=20m --log-opt max-file=3 --network host "
        "--volume /home/pi/infra/wordcount:/project:ro --volume /home/pi/infra/lab/.infra/worker:/run/infra:ro "
        "--env INFRA_CLUSTER=lab --env INFRA_ENV_FILE=/run/infra/celery.env "
        "--user 1001:1101 --workdir /project "
        "infra-lab-worker:latest celery --app wordcount worker --hostname lab-worker-pi1-1@pi1 --concurrency 2")


def test_run_the_broker_on_its_network_with_its_port_and_volume():
    op = RunContainer(BROKER, cluster_labels("lab", role="broker", host="gpu-box", spec="abc"))
    assert op.text() == (
        "docker run --detach --name lab-broker "
        "--label infra.cluster=lab --label infra.role=broker --label infra.host=gpu-box --label infra.spec=abc "
        "--restart unless-stopped --log-driver json-file --log-opt max-size=20m --log-opt max-file=3 "
        "--network lab-net --network-alias broker --hostname lab-broker --publish 192.168.1.20:5671:5671 "
        "--volume lab-broker-data:/var/lib/rabbitmq:rw --volume /home/alice/infra/lab/.infra/broker:/run/infra:ro "
        "infra-lab-broker:latest")


def test_run_a_bare_container_with_its_defaults():
    bare = ContainerSpec(name="c", role="worker", host="h", image="img:1")
    assert RunContainer(bare, ()).text() == (
        "docker run --detach --name c --restart unless-stopped --log-driver json-file --log-opt max-size=20m --log-opt max-file=3 "
        "--network host img:1")


def test_cluster_labels_come_cluster_first_then_in_the_order_given():
    assert cluster_labels("lab") == (("infra.cluster", "lab"),)
    assert cluster_labels("lab", spec="f", role="r") == (("infra.cluster", "lab"), ("infra.spec", "f"), ("infra.role", "r"))


def test_remove_start_and_restart_containers():
    assert RemoveContainers(("lab-worker-pi1-1", "lab-worker-pi1-2")).text() == \
        "docker rm --force lab-worker-pi1-1 lab-worker-pi1-2"
    assert StartContainer("lab-master").text() == "docker start lab-master"
    assert RestartContainer("lab-worker-pi1-1", 10).text() == "docker restart --time 10 lab-worker-pi1-1"


# --------------------------------------------------------------------------- engine: networks, volumes, images


def test_networks_and_volumes_are_made_with_the_cluster_label():
    assert CreateNetwork("lab-net", "lab").text() == "docker network create --label infra.cluster=lab lab-net"
    assert RemoveNetwork("lab-net").text() == "docker network rm lab-net"
    assert CreateVolume("lab-broker-data", "lab").text() == \
        "docker volume create --label infra.cluster=lab lab-broker-data"
    assert RemoveVolume("lab-broker-data").text() == "docker volume rm --force lab-broker-data"


def test_build_an_image_from_a_context_folder_on_the_hosts_network():
    op = BuildImage(tag="infra-lab-master:latest", context_dir="/home/me/.infra/lab/build",
                    dockerfile="Dockerfile.celery", target="master",
                    build_args=(("BASE_IMAGE", "python:3.11-slim-bookworm"),),
                    labels=cluster_labels("lab", context="9f8e7d6c5b4a39281706"))
    assert op.text() == (
        "docker build --network host --file /home/me/.infra/lab/build/Dockerfile.celery --target master "
        "--tag infra-lab-master:latest --label infra.cluster=lab --label infra.context=9f8e7d6c5b4a39281706 "
        "--build-arg BASE_IMAGE=python:3.11-slim-bookworm "
        "/home/me/.infra/lab/build")
    assert BuildImage("t:1", "/ctx", "Dockerfile").text() == "docker build --network host --file /ctx/Dockerfile --tag t:1 /ctx"


def test_pull_save_and_load_images():
    assert PullImage("registry.example.com/team/worker:1.2").text() == "docker pull registry.example.com/team/worker:1.2"
    assert SaveImages(("infra-lab-worker:latest", "infra-lab-master:latest")).text() == \
        "docker save infra-lab-worker:latest infra-lab-master:latest"
    assert LoadImages().text() == "docker load --quiet"


# --------------------------------------------------------------------------- engine: processes and logs


def test_exec_in_a_container_with_and_without_a_working_folder():
    assert Exec("lab-master", ("ls", "-l", "out put"), "/project").text() == \
        "docker exec --workdir /project lab-master ls -l 'out put'"
    assert Exec("lab-broker", ("rabbitmqctl", "status")).text() == "docker exec lab-broker rabbitmqctl status"


def test_logs_with_timestamps_a_tail_a_since_and_follow():
    assert Logs("lab-broker").text() == "docker logs --timestamps --tail all lab-broker"
    assert Logs("lab-broker", tail="100", since=1_795_315_442.0, follow=True).text() == \
        "docker logs --timestamps --tail 100 --since 1795315442 --follow lab-broker"
    assert Logs("lab-broker", since=1_795_315_442.47).text() == \
        "docker logs --timestamps --tail all --since 1795315442.47 lab-broker"
    assert Logs("lab-broker", since=0.0).argv()[5:7] == ["--since", "0"]


# --------------------------------------------------------------------------- shell: the host probe and files


def test_the_host_probe():
    assert host_probe() == ["sh", "-c", HOST_PROBE]
    assert HOST_PROBE == (
        "printf '=====infra:home\\n%s\\n' \"$HOME\"; printf '=====infra:uid\\n'; id -u; id -g; "
        "printf '=====infra:arch\\n'; uname -m; printf '=====infra:end\\n'")


def test_write_a_private_file_from_stdin_atomically():
    assert write_secret_file("/home/pi/infra/.infra-lab/worker.env") == ["sh", "-c", (
        "umask 077 && mkdir -p /home/pi/infra/.infra-lab && chmod 700 /home/pi/infra/.infra-lab && "
        "rm -f /home/pi/infra/.infra-lab/worker.env.tmp && cat > /home/pi/infra/.infra-lab/worker.env.tmp && "
        "chmod 400 /home/pi/infra/.infra-lab/worker.env.tmp && "
        "mv -f /home/pi/infra/.infra-lab/worker.env.tmp /home/pi/infra/.infra-lab/worker.env")]


# The marker of /home/pi/infra/lab, read only when it is a regular file.
MARKER_LAB = ("marker=$(if [ -f /home/pi/infra/lab/.infra-cluster ] && [ ! -L /home/pi/infra/lab/.infra-cluster ]; "
              "then head -c 256 /home/pi/infra/lab/.infra-cluster; fi); ")
# The owners and modes of the cluster folder and each folder above it: as written, then as links resolve.
EACH_PATH = ('while :; do if [ ! -e "$p" ] && [ ! -L "$p" ]; then echo "$k absent $p"; '
             'elif s=$(stat -c "%u %U %f" -- "$p" 2>/dev/null); then echo "$k $s $p"; else echo "$k unknown $p"; fi; '
             '[ "$p" = / ] && break; p=$(dirname -- "$p"); k=p; done; ')
PATHS_LAB = ("printf '=====infra:paths\\n'; id -u; r=/home/pi/infra/lab ; case $r in /*) ;; *) r=$PWD/$r ;; esac; "
             "p=$r; k=f; " + EACH_PATH +
             'q=$(dirname -- "$r"); while [ ! -d "$q" ]; do q=$(dirname -- "$q"); done; '
             'if p=$(cd -P -- "$q" 2>/dev/null && pwd -P); then k=p; ' + EACH_PATH + "fi; ")


def test_list_the_project_its_folders_files_and_links_and_whose_the_cluster_folder_is():
    assert list_project("/home/pi/infra/lab", "/home/pi/infra/lab/wordcount", "/home/pi/infra/lab/output", "lab") == [
        "sh", "-c", (
            "printf '=====infra:owner\\n'; " + MARKER_LAB +
            "if [ -L /home/pi/infra/lab ]; then echo link; elif [ ! -e /home/pi/infra/lab ]; then echo absent; "
            "elif [ ! -d /home/pi/infra/lab ]; then echo file; "
            "elif [ -d /home/pi/infra/lab ] && [ ! -L /home/pi/infra/lab ] && [ \"$marker\" = lab ]; then echo ours; "
            "elif entries=$(ls -A /home/pi/infra/lab) && [ -z \"$entries\" ]; then echo empty; else echo other; fi; "
            + PATHS_LAB +
            "printf '=====infra:folders\\n'; "
            "for d in /home/pi/infra/lab/wordcount /home/pi/infra/lab/wordcount/output /home/pi/infra/lab/output ; "
            "do if [ -d \"$d\" ] && [ ! -L \"$d\" ]; then echo yes; else echo no; fi; done; "
            "printf '=====infra:files\\n'; "
            "if [ -d /home/pi/infra/lab/wordcount ] && [ ! -L /home/pi/infra/lab/wordcount ] && "
            "cd /home/pi/infra/lab/wordcount; then find . -type f -exec sha256sum {} + ; "
            "printf '=====infra:links\\n'; find . -type l -print0; fi; "
            "printf '\\n=====infra:end\\n'")]


def test_claim_the_cluster_folder_marker_first_then_make_the_project_its_mount_point_and_the_output_folder():
    assert prepare_project("/home/pi/infra/lab", "/home/pi/infra/lab/wordcount", "/home/pi/infra/lab/output",
                           "lab") == ["sh", "-c", (
        "umask 022; " + MARKER_LAB + "if [ -d /home/pi/infra/lab ] && [ ! -L /home/pi/infra/lab ] && "
        "[ \"$marker\" = lab ]; then :; "
        "elif [ -L /home/pi/infra/lab ] || { [ -e /home/pi/infra/lab ] && [ ! -d /home/pi/infra/lab ]; }; "
        "then echo /home/pi/infra/lab: not a folder of cluster lab, left alone >&2; exit 3; "
        "elif [ -e /home/pi/infra/lab ] && { ! entries=$(ls -A /home/pi/infra/lab) || [ -n \"$entries\" ]; }; "
        "then echo /home/pi/infra/lab: not a folder of cluster lab, left alone >&2; exit 3; "
        "else mkdir -p /home/pi/infra/lab && tmp=$(mktemp /home/pi/infra/.lab.infra-cluster.XXXXXX) && "
        "printf '%s\\n' lab > \"$tmp\" && mv -f \"$tmp\" /home/pi/infra/lab/.infra-cluster || exit 1; fi; "
        "for d in /home/pi/infra/lab/wordcount /home/pi/infra/lab/wordcount/output /home/pi/infra/lab/output ; "
        "do if [ -L \"$d\" ]; then rm -f \"$d\" || exit 1; fi; mkdir -p \"$d\" || exit 1; done")]


def test_remove_a_folder_only_when_its_cluster_folder_holds_the_marker_saying_what_happened():
    assert remove_owned_folder("/home/pi/infra/lab/.infra", "/home/pi/infra/lab", "lab") == ["sh", "-c", (
        MARKER_LAB + "if [ ! -e /home/pi/infra/lab/.infra ] && [ ! -L /home/pi/infra/lab/.infra ]; then echo absent; "
        "elif [ -L /home/pi/infra/lab ]; then echo 'refused: '/home/pi/infra/lab' is a symbolic link'; "
        "elif [ -L /home/pi/infra/lab/.infra ]; then echo 'refused: a symbolic link'; "
        "elif [ ! -L /home/pi/infra/lab/.infra ] && [ -d /home/pi/infra/lab/.infra ] && [ -O /home/pi/infra/lab/.infra ] "
        "&& rmdir -- /home/pi/infra/lab/.infra 2>/dev/null; then echo removed; "
        "elif [ -d /home/pi/infra/lab ] && [ ! -L /home/pi/infra/lab ] && [ \"$marker\" = lab ]; "
        "then rm -rf -- /home/pi/infra/lab/.infra && echo removed; "
        "else echo 'refused: '/home/pi/infra/lab' holds no marker of cluster 'lab; fi")]
    assert remove_folder("/home/me/.infra/lab/env") == ["sh", "-c", (
        "if [ -L /home/me/.infra/lab/env ]; then echo 'refused: a symbolic link'; "
        "elif [ ! -e /home/me/.infra/lab/env ]; then echo absent; "
        "else rm -rf -- /home/me/.infra/lab/env && echo removed; fi")]


def removal_verdict(folder: Path) -> tuple[str, str]:
    answer = subprocess.run(remove_owned_folder(str(folder), str(folder), "lab"), capture_output=True, text=True)
    assert answer.returncode == 0, answer.stderr
    return parse_removal(answer.stdout)


def test_an_empty_folder_an_up_killed_before_its_marker_left_is_removed_and_nothing_else_without_one(tmp_path):
    empty = tmp_path / "empty" / "lab"
    empty.mkdir(parents=True)
    assert removal_verdict(empty) == ("removed", "") and not empty.exists()
    full = tmp_path / "full" / "lab"
    full.mkdir(parents=True)
    (full / "theirs.txt").write_text("not infra's\n")
    assert removal_verdict(full)[0] == "refused" and (full / "theirs.txt").exists()
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "link").mkdir()
    (tmp_path / "link" / "lab").symlink_to(target)
    assert removal_verdict(tmp_path / "link" / "lab")[0] == "refused" and target.is_dir()
    marked = tmp_path / "marked" / "lab"
    (marked / "proj").mkdir(parents=True)
    (marked / MARKER_FILE).write_text("lab\n")
    assert removal_verdict(marked) == ("removed", "") and not marked.exists()


def test_extract_a_tar_from_stdin_into_the_project_never_through_a_link():
    assert extract_files("/home/pi/infra/lab/wordcount") == ["sh", "-c", (
        "[ ! -L /home/pi/infra/lab/wordcount ] && cd /home/pi/infra/lab/wordcount && "
        "tar -x --no-same-owner --no-same-permissions --no-overwrite-dir -m -f -")]


def test_delete_files_and_links_then_the_folders_they_leave_empty_without_following_a_link():
    assert delete_files("/home/pi/infra/lab/wordcount", ["a/b/c.txt", "a/d.txt", "top.txt"]) == ["sh", "-c", (
        "[ ! -L /home/pi/infra/lab/wordcount ] && cd /home/pi/infra/lab/wordcount && find . -depth "
        "\\( \\( -path ./a/b/c.txt -o -path ./a/d.txt -o -path ./top.txt \\) ! -type d -delete \\) "
        "-o \\( \\( -path ./a -o -path ./a/b \\) -type d -empty -delete \\)")]
    assert delete_files("/srv/wc", ["x.txt"]) == ["sh", "-c", (
        "[ ! -L /srv/wc ] && cd /srv/wc && find . -depth \\( \\( -path ./x.txt \\) ! -type d -delete \\)")]


def test_a_file_name_with_glob_characters_matches_only_itself():
    words = shlex.split(delete_files("/srv/wc", ["[a]*?.txt", "back\\slash"])[2])
    assert "./\\[a\\]\\*\\?.txt" in words and "./back\\\\slash" in words


def test_find_the_files_modified_after_a_moment_in_whole_seconds():
    assert files_newer_than("/home/pi/infra/wordcount", MOMENT) == ["sh", "-c", (
        "cd /home/pi/infra/wordcount 2>/dev/null && "
        "find . -type f -newermt @1795315442 -print 2>/dev/null | head -n 1000")]


def test_the_output_folder_is_listed_and_fetched_inside_the_master_container():
    assert list_output("lab").argv() == ["docker", "exec", "lab-master", "python", "-c", LIST_OUTPUT, "/project/output"]
    [fetch] = fetch_output("lab", ["wordcount.csv", "sub dir/-x.txt"])
    assert fetch.argv() == ["docker", "exec", "lab-master", "python", "-c", FETCH_OUTPUT, "/project/output",
                            '["wordcount.csv", "sub dir/-x.txt"]']


@pytest.mark.parametrize("program", [LIST_OUTPUT, FETCH_OUTPUT])
def test_the_output_programs_are_python_programs(program):
    compile(program, "<output>", "exec")


def test_many_output_files_are_fetched_in_several_execs_each_under_a_words_limit():
    names = [f"run-{i:05}/metrics.json" for i in range(5000)]
    ops = fetch_output("lab", names)
    assert len(ops) > 1 and all(len(op.command[-1]) < 100_000 for op in ops)
    assert [name for op in ops for name in json.loads(op.command[-1])] == names


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../../b", "", "a//b"])
def test_an_output_file_outside_the_folder_is_never_asked_for(name):
    with pytest.raises(ValueError):
        fetch_output("lab", ["ok.csv", name])


def test_the_tar_for_extract_holds_exactly_the_chosen_files_and_their_folders_owner_neutral(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.py").write_text("A = 1\n")
    (tmp_path / "b.txt").write_text("b")
    with tarfile.open(fileobj=io.BytesIO(tar_of(tmp_path, ["sub/a.py"]))) as tar:
        folder, member = tar.getmembers()
        assert (folder.name, folder.isdir()) == ("sub", True)
        assert (member.name, member.size, member.uid, member.gid, member.uname, member.gname) == (
            "sub/a.py", 6, 0, 0, "", "")
        assert tar.extractfile(member).read() == b"A = 1\n"


# --------------------------------------------------------------------------- celery: probes, jobs, signals


def test_the_readiness_probe_runs_in_the_master_container_with_the_nodes_and_its_three_bounds():
    op = readiness_probe("lab", "wordcount", ["lab-worker-pi1-1@pi1", "lab-worker-pi1-2@pi1"], 120, 180.0, 1.0)
    assert op.argv() == ["docker", "exec", "lab-master", "python", "-c", READINESS_PROBE, "wordcount",
                         '["lab-worker-pi1-1@pi1", "lab-worker-pi1-2@pi1"]', "120", "180", "1"]
    assert op.text().endswith(""" wordcount '["lab-worker-pi1-1@pi1", "lab-worker-pi1-2@pi1"]' 120 180 1""")


def test_the_celery_probe_names_the_expected_workers_and_the_reply_timeout():
    assert celery_probe("lab", "wordcount", ["lab-worker-pi1-1@pi1"], 2.5).argv() == [
        "docker", "exec", "lab-master", "python", "-c", CELERY_PROBE, "wordcount", '["lab-worker-pi1-1@pi1"]', "2.5"]
    assert celery_probe("lab", "wordcount", [], 2.0).argv()[-2:] == ["[]", "2"]


@pytest.mark.parametrize("program", [READINESS_PROBE, CELERY_PROBE])
def test_the_probes_are_python_programs(program):
    compile(program, "<probe>", "exec")


def test_the_queue_listing_asks_rabbitmq_for_json():
    assert list_queues("lab").text() == (
        "docker exec lab-broker rabbitmqctl list_queues --quiet --vhost lab --formatter json "
        "name messages messages_ready messages_unacknowledged consumers")


def test_a_job_tells_its_pid_then_runs_with_its_arguments_untouched():
    op = run_job("lab", ["-m", "wordcount.client"], ("--top", "5", "--output", "out put/x.csv"))
    assert op.text() == (
        "docker exec --workdir /project lab-master "
        f"""sh -c 'echo "{PID_MARKER}$$" >&2; exec "$@"' infra-run """
        "python -m wordcount.client --top 5 --output 'out put/x.csv'")


def test_a_sweep_driver_tells_its_pid_then_runs_the_driver_module_on_its_plan():
    op = sweep_driver("lab", "/project/output/sweep-my sweep/plan.json")
    assert op.text() == (
        "docker exec --workdir /project lab-master "
        f"""sh -c 'echo "{PID_MARKER}$$" >&2; exec "$@"' infra-sweep """
        "python -m infra_runtime.driver '/project/output/sweep-my sweep/plan.json'")


def test_writing_a_plain_file_makes_its_folder_and_replaces_the_file_at_once():
    assert write_file("/home/pi/infra/lab/output/sweep-a/plan.json") == ["sh", "-c", (
        "mkdir -p /home/pi/infra/lab/output/sweep-a && { [ ! -L /home/pi/infra/lab/output/sweep-a ] || "
        "{ echo /home/pi/infra/lab/output/sweep-a: a symbolic link, not written through >&2; exit 3; }; } && "
        "tmp=$(mktemp /home/pi/infra/lab/output/sweep-a/.plan.json.XXXXXX) && cat > \"$tmp\" && "
        "chmod 644 \"$tmp\" && mv -f \"$tmp\" /home/pi/infra/lab/output/sweep-a/plan.json")]


@pytest.mark.skipif(sys.platform != "linux", reason="GNU coreutils, as on the hosts")
def test_writing_a_plain_file_never_writes_through_a_link_planted_in_the_output_folder(tmp_path):
    victim = tmp_path / "outside" / "victim.txt"
    victim.parent.mkdir()
    victim.write_text("precious")
    out = tmp_path / "output"
    (out / "sweep-a").mkdir(parents=True)
    os.symlink(victim, out / "sweep-a" / "plan.json")
    os.symlink(victim, out / "sweep-a" / "plan.json.tmp")
    os.symlink(victim.parent, out / "sweep-b")
    subprocess.run(write_file(str(out / "sweep-a" / "plan.json")), input=b"{}", check=True)
    assert victim.read_text() == "precious" and (out / "sweep-a" / "plan.json").read_bytes() == b"{}"
    assert not (out / "sweep-a" / "plan.json").is_symlink()
    refused = subprocess.run(write_file(str(out / "sweep-b" / "plan.json")), input=b"{}", capture_output=True)
    assert refused.returncode == 3 and sorted(p.name for p in victim.parent.iterdir()) == ["victim.txt"]


def test_a_container_with_gpus_asks_for_them_as_docker_run_would():
    def gpus(value):
        return RunContainer(ContainerSpec(name="w", role="worker", host="h", image="i", gpus=value), ()).argv()
    assert gpus(None)[-1:] == ["i"] and "--gpus" not in gpus(None)
    assert gpus("all")[-3:] == ["--gpus", "all", "i"]
    assert gpus("2")[-3:] == ["--gpus", "2", "i"]
    # A list is quoted for the CLI's CSV reading of --gpus: `--gpus '"device=0,1"'`.
    assert shlex.join(gpus("device=0,1")[-3:]) == """--gpus '"device=0,1"' i"""
    assert gpus("device=GPU-3a7f")[-3:] == ["--gpus", "device=GPU-3a7f", "i"]


def test_a_signal_goes_to_the_job_by_pid():
    assert signal_job("lab", 4242, "INT").text() == "docker exec lab-master kill -INT 4242"
    assert signal_job("lab", 4242, "0").text() == "docker exec lab-master kill -0 4242"


# --------------------------------------------------------------------------- plan steps as printed


@pytest.fixture
def cluster(tmp_path):
    (tmp_path / "wordcount").mkdir()
    (tmp_path / "wordcount" / "tasks.py").write_text("def count(): pass\n")
    return parse_cluster((FIXTURES / "plan_cluster.yaml").read_text(), filename="cluster.yaml", base_dir=tmp_path)


SECRETS = Secrets(broker_user="infra", broker_password="Brk-pw_0123456789abcdef", results_password="Res-pw_0123456789abcdef",
                  flower_user="admin", flower_password="Flw-pw_0123456789",
                  results_master_password="RsM-pw_0123456789abcdef", results_worker_password="RsW-pw_0123456789abcdef",
                  results_flower_password="RsF-pw_0123456789abcdef")


def test_the_steps_of_a_fresh_worker_host_read_as_these_commands(cluster):
    facts = HostFacts(home="/home/pi", uid=1001, gid=1001, arch="aarch64", docker_version="27.3.1",
                      images={"python:3.11-slim-bookworm": ImageInfo("sha256:base", {})})
    sync = SyncPlan(layout=host_layout(cluster, cluster.hosts["pi1"], facts), cluster="lab",
                    local_root=cluster.project_dir, upload=["tasks.py"], delete=["old dir/gone.py"], bytes_to_send=18)
    identity = load_or_create_identity(Path("/nonexistent"), "lab", ["192.168.1.20"], save=False)
    plan = plan_host(cluster, cluster.hosts["pi1"], facts, SECRETS, "192.168.1.20", local_image_ids={},
                     context_dir="/home/me/.infra/lab/build", context_digest="d" * 24, sync=sync, identity=identity)
    build = next(step for step in plan.steps if step.op is not None)
    assert [step.text() for step in plan.steps] == [
        shlex.join(prepare_project("/home/pi/infra/lab", "/home/pi/infra/lab/wordcount", "/home/pi/infra/lab/output",
                                   "lab")),
        "sh -c '[ ! -L /home/pi/infra/lab/wordcount ] && cd /home/pi/infra/lab/wordcount && find . -depth "
        "\\( \\( -path '\"'\"'./old dir/gone.py'\"'\"' \\) ! -type d -delete \\) "
        "-o \\( \\( -path '\"'\"'./old dir'\"'\"' \\) -type d -empty -delete \\)'",
        "sh -c '[ ! -L /home/pi/infra/lab/wordcount ] && cd /home/pi/infra/lab/wordcount && "
        "tar -x --no-same-owner --no-same-permissions --no-overwrite-dir -m -f -'",
        "docker build --network host --file /home/me/.infra/lab/build/Dockerfile.celery --target worker "
        "--tag infra-lab-worker:latest --label infra.cluster=lab "
        f"--label infra.context={dict(build.op.labels)['infra.context']} "
        "--build-arg BASE_IMAGE=python:3.11-slim-bookworm /home/me/.infra/lab/build",
    ]
    # The secret files come right before the first worker starts (`change_steps`).
    assert {folder: [step.text() for step in writes] for folder, writes in plan.secret_writes.items()} == {
        "/home/pi/infra/lab/.infra/worker": [
            f"sh -c 'umask 077 && mkdir -p /home/pi/infra/lab/.infra/worker && chmod 700 /home/pi/infra/lab/.infra/worker"
            f" && rm -f /home/pi/infra/lab/.infra/worker/{name}.tmp && cat > /home/pi/infra/lab/.infra/worker/{name}.tmp"
            f" && chmod 400 /home/pi/infra/lab/.infra/worker/{name}.tmp"
            f" && mv -f /home/pi/infra/lab/.infra/worker/{name}.tmp /home/pi/infra/lab/.infra/worker/{name}'"
            for name in ("celery.env", "ca.crt")]}
    assert shlex.split(plan.steps[1].text())[2] == (
        "[ ! -L /home/pi/infra/lab/wordcount ] && cd /home/pi/infra/lab/wordcount && find . -depth "
        "\\( \\( -path './old dir/gone.py' \\) ! -type d -delete \\) "
        "-o \\( \\( -path './old dir' \\) -type d -empty -delete \\)")


def test_a_step_without_a_command_reads_as_nothing_and_a_fed_one_hides_what_it_is_fed():
    assert Step("keep lab-broker (up to date)", records=(Record("add_container", "lab-broker", "broker"),)).text() == ""
    fed = shell_step("write", write_secret_file("/srv/a.env"), stdin=b"PASSWORD=s3cret\n")
    assert "s3cret" not in fed.text() and "s3cret" not in repr(fed)
    assert engine_step("net", CreateNetwork("lab-net", "lab")).text() == \
        "docker network create --label infra.cluster=lab lab-net"


# --------------------------------------------------------------------------- secrets never on a command line


def test_a_containers_secrets_are_a_read_only_folder_never_its_environment():
    op = RunContainer(WORKER, cluster_labels("lab", role="worker", host="pi1", spec="f00"))
    assert "--volume /home/pi/infra/lab/.infra/worker:/run/infra:ro" in op.text()
    assert dict(WORKER.environment) == {"INFRA_CLUSTER": "lab", "INFRA_ENV_FILE": "/run/infra/celery.env"}


# --------------------------------------------------------------------------- hostile values


HOSTILE = [
    "two words  here",
    "it's",
    'say "hi"',
    "$(touch /tmp/pwned)",
    "`touch /tmp/pwned`",
    "x; touch /tmp/pwned",
    "x && touch /tmp/pwned",
    "x | tee /tmp/pwned",
    "x > /tmp/pwned",
    "first\nsecond",
    "-leading-dash",
    "ünïcødé-✓-名前",
    "~/*.py",
    "$HOME",
    "back\\slash",
    "#not-a-comment",
    "tab\there",
]
BENIGN = "benign value"  # needs quoting too: a reference for where quotes may be
SAFE = re.compile(r"[\w@%+=:,./-]+", re.ASCII)  # what shlex.quote leaves unquoted
OPERATOR = re.compile(r"[();<>|&]+")


def benign_like(value: str) -> str:
    """A harmless value with the same folders as `value` (its `/` are path separators in a path)."""
    return "/".join(BENIGN for _ in value.split("/"))


def quoted_skeleton(text: str) -> str:
    """`text` with every quoted run ('...', "...") replaced by one Q: what a shell reads unquoted."""
    out, i, in_quotes = [], 0, False
    while i < len(text):
        char = text[i]
        if char in "'\"":
            end = text.index(char, i + 1)
            if not in_quotes:
                out.append("Q")
            in_quotes, i = True, end + 1
            continue
        in_quotes = False
        out.append(char)
        i += 1
    return "".join(out)


def shell_words(script: str) -> list[str]:
    """Words and operators of a script as sh splits them (`;`, `&&`, `|`, `(`, `>` are tokens of their own)."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    return list(lexer)


def shape(words: list[str]) -> list[str]:
    """The operators of a script, and a W for each word between them."""
    return [word if OPERATOR.fullmatch(word) else "W" for word in words]


# Each builder that takes a value, with where the value shows in its words.
ENGINE_BUILDERS = {
    "ListContainers": (lambda v: ListContainers(v), lambda v: [f"label=infra.cluster={v}"]),
    "InspectContainers": (lambda v: InspectContainers((v, "lab-master")), lambda v: [v]),
    "InspectImages": (lambda v: InspectImages((v,)), lambda v: [v]),
    "ListImageRefs": (lambda v: ListImageRefs((v,)), lambda v: [f"reference={v}"]),
    "ListNetworks": (lambda v: ListNetworks(v), lambda v: [f"label=infra.cluster={v}"]),
    "ListVolumes": (lambda v: ListVolumes(v), lambda v: [f"label=infra.cluster={v}"]),
    "RunContainer": (
        lambda v: RunContainer(ContainerSpec(
            name=v, role=v, host=v, image=v, command=(v, "--flag", v), environment=(("K", v),), secrets=v,
            volumes=((v, v, "ro"),), network=v, network_alias=v, hostname=v, user=v, workdir=v, restart=v),
            cluster_labels(v, role=v, spec=v)),
        lambda v: [v, f"infra.cluster={v}", f"infra.role={v}", f"{v}:{v}:ro", f"{v}:/run/infra:ro", f"K={v}"]),
    "RemoveContainers": (lambda v: RemoveContainers((v,)), lambda v: [v]),
    "StartContainer": (lambda v: StartContainer(v), lambda v: [v]),
    "RestartContainer": (lambda v: RestartContainer(v, 10), lambda v: [v]),
    "CreateNetwork": (lambda v: CreateNetwork(v, v), lambda v: [v, f"infra.cluster={v}"]),
    "RemoveNetwork": (lambda v: RemoveNetwork(v), lambda v: [v]),
    "CreateVolume": (lambda v: CreateVolume(v, v), lambda v: [v, f"infra.cluster={v}"]),
    "RemoveVolume": (lambda v: RemoveVolume(v), lambda v: [v]),
    "BuildImage": (lambda v: BuildImage(v, v, v, (("BASE_IMAGE", v),), cluster_labels(v, context=v)),
                   lambda v: [v, f"{v}/{v}", f"BASE_IMAGE={v}", f"infra.context={v}"]),
    "PullImage": (lambda v: PullImage(v), lambda v: [v]),
    "PushImage": (lambda v: PushImage(v), lambda v: [v]),
    "TagImage": (lambda v: TagImage(v, v), lambda v: [v, v]),
    "UntagImage": (lambda v: UntagImage(v), lambda v: [v]),
    "SaveImages": (lambda v: SaveImages((v, v)), lambda v: [v]),
    "Exec": (lambda v: Exec(v, ("echo", v), v), lambda v: [v]),
    "Logs": (lambda v: Logs(v, tail=v), lambda v: [v]),
    "readiness_probe": (lambda v: readiness_probe(v, v, [v], 60, 60, 1.0), lambda v: [f"{v}-master"]),
    "celery_probe": (lambda v: celery_probe(v, v, [v], 2.0), lambda v: [f"{v}-master", v]),
    "list_queues": (lambda v: list_queues(v), lambda v: [f"{v}-broker"]),
    "run_job": (lambda v: run_job(v, ["-m", v], (v, "--out", v)), lambda v: [f"{v}-master", v]),
    "signal_job": (lambda v: signal_job(v, 42, "INT"), lambda v: [f"{v}-master"]),
    "sweep_driver": (lambda v: sweep_driver(v, f"/project/output/sweep-{v}/plan.json"),
                     lambda v: [f"{v}-master", f"/project/output/sweep-{v}/plan.json"]),
    "list_output": (lambda v: list_output(v), lambda v: [f"{v}-master"]),
    "fetch_output": (lambda v: fetch_output(v, [v, f"sub/{v}"])[0],
                     lambda v: [f"{v}-master", json.dumps([v, f"sub/{v}"])]),
}


def find_pattern(rel: str) -> str:
    """`./rel` as `delete_files` hands it to `find -path`: glob characters escaped."""
    return "./" + "".join("\\" + char if char in "*?[]\\" else char for char in rel)


SHELL_BUILDERS = {
    "write_secret_file": (lambda v: write_secret_file(f"/srv/{v}/.infra-lab/worker.env"),
                          lambda v: [f"/srv/{v}/.infra-lab", f"/srv/{v}/.infra-lab/worker.env.tmp",
                                     f"/srv/{v}/.infra-lab/worker.env"]),
    "list_project": (lambda v: list_project(f"/srv/{v}", f"/srv/{v}/wc", f"/srv/{v}/output", "lab"),
                     lambda v: [f"/srv/{v}", f"/srv/{v}/wc", f"/srv/{v}/wc/output", f"/srv/{v}/output"]),
    "prepare_project": (lambda v: prepare_project(f"/srv/{v}", f"/srv/{v}/wc", f"/srv/{v}/output", "lab"),
                        lambda v: [f"/srv/{v}", f"/srv/{v}/{MARKER_FILE}", f"/srv/{v}/wc", f"/srv/{v}/output"]),
    "remove_owned_folder": (lambda v: remove_owned_folder(f"/srv/{v}/.infra", f"/srv/{v}", "lab"),
                            lambda v: [f"/srv/{v}/.infra", f"/srv/{v}", f"/srv/{v}/{MARKER_FILE}"]),
    "remove_folder": (lambda v: remove_folder(f"/srv/{v}/env"), lambda v: [f"/srv/{v}/env"]),
    "folder_owners": (lambda v: folder_owners(f"/srv/{v}/lab"), lambda v: [f"r=/srv/{v}/lab"]),  # an assignment
    "extract_files": (lambda v: extract_files(f"/srv/{v}"), lambda v: [f"/srv/{v}"]),
    "delete_files": (lambda v: delete_files(f"/srv/{v}", [v, f"sub/{v}"]),
                     lambda v: [f"/srv/{v}", find_pattern(v), find_pattern(f"sub/{v}")]),
    "files_newer_than": (lambda v: files_newer_than(f"/srv/{v}", MOMENT), lambda v: [f"/srv/{v}"]),
    "write_file": (lambda v: write_file(f"/srv/{v}/output/plan.json"),
                   lambda v: [f"/srv/{v}/output", f"/srv/{v}/output/plan.json"]),
}


def public_functions(module) -> set[str]:
    return {name for name, item in vars(module).items()
            if inspect.isfunction(item) and item.__module__ == module.__name__ and not name.startswith("_")}


def test_every_builder_that_takes_a_value_is_fed_hostile_values():
    assert {cls.__name__ for cls in EngineOp.__subclasses__()} - set(ENGINE_BUILDERS) == {
        "EngineVersion", "LoadImages"}  # they take none
    assert public_functions(celery_commands) - set(ENGINE_BUILDERS) == set()
    assert public_functions(file_commands) - set(SHELL_BUILDERS) == {
        "host_probe", "gpu_query",  # take none
        "tar_of",  # no shell: the tests below
        "list_output", "fetch_output",  # engine operations: with the engine builders
    }


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("builder", list(ENGINE_BUILDERS))
def test_hostile_values_come_back_intact_from_every_engine_and_celery_rendering(builder, value):
    make, words_of = ENGINE_BUILDERS[builder]
    op = make(value)
    text = op.text()
    assert shlex.split(text) == op.argv()  # every word comes back as it was given
    for word in words_of(value):
        assert word in op.argv(), word
    if not SAFE.fullmatch(value):  # a value of safe characters only needs no quotes
        assert quoted_skeleton(text) == quoted_skeleton(make(BENIGN).text())  # nothing of it outside quotes


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("builder", list(SHELL_BUILDERS))
def test_hostile_values_stay_one_quoted_word_in_every_shell_script(builder, value):
    make, words_of = SHELL_BUILDERS[builder]
    argv = make(value)
    assert argv[:2] == ["sh", "-c"] and len(argv) == 3
    assert shlex.split(shlex.join(argv)) == argv
    script, reference = argv[2], make(benign_like(value))[2]
    words = shell_words(script)
    for word in words_of(value):
        assert word in shlex.split(script) and word in words, word  # whole, as one word
    # The same words and operators as with a harmless value: the value added no `;`, `&&`, `|`, `$(`...
    assert shape(words) == shape(shell_words(reference))
    if not SAFE.fullmatch(value):
        assert quoted_skeleton(script) == quoted_skeleton(reference)


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_file_names_reach_the_output_fetch_whole_as_json(value):
    [op] = fetch_output("lab", [value, f"sub/{value}"])
    assert json.loads(op.command[-1]) == [value, f"sub/{value}"]
    assert shlex.split(op.text()) == op.argv()


@pytest.mark.skipif(sys.platform != "linux", reason="file names with any character but / and NUL")
@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_file_names_travel_in_the_tar_exactly_as_they_are(tmp_path, value):
    (tmp_path / value).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / value).write_bytes(b"content")
    with tarfile.open(fileobj=io.BytesIO(tar_of(tmp_path, [value]))) as tar:
        assert [m.name for m in tar.getmembers() if m.isfile()] == [value]
        assert [m.name for m in tar.getmembers() if m.isdir()] == ["/".join(value.split("/")[:i])
                                                                 for i in range(1, value.count("/") + 1)]
        assert tar.extractfile(value).read() == b"content"


@pytest.mark.parametrize("value", HOSTILE)
def test_file_names_with_a_leading_dash_are_never_read_as_options(value):
    words = shell_words(delete_files("/srv/wc", [f"-{value}", f"-{value}/x"])[2])
    patterns = [words[i + 1] for i, word in enumerate(words) if word == "-path"]
    assert len(patterns) >= 3 and all(pattern.startswith("./-") for pattern in patterns)


@pytest.mark.skipif(sys.platform != "linux", reason="GNU find, tar, rmdir and base64, as on the hosts")
@pytest.mark.parametrize("value", HOSTILE)
def test_the_file_commands_run_by_sh_on_hostile_folder_names_do_only_what_they_say(tmp_path, value):
    canary = tmp_path / "pwned"
    value = value.replace("/tmp/pwned", str(canary))
    root = str(tmp_path / "hosts" / value / "lab")  # the cluster folder
    project_dir, output_dir = f"{root}/wordcount", f"{root}/output"
    sandbox = tmp_path / "hosts"
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "it's a file.txt").write_text("hello\n")

    def sh(argv, stdin=b""):
        return subprocess.run(argv, input=stdin, capture_output=True, check=True, cwd=tmp_path).stdout

    sh(prepare_project(root, project_dir, output_dir, "lab"))
    assert Path(root, MARKER_FILE).read_text() == "lab\n" and Path(project_dir, "output").is_dir()
    sh(write_secret_file(f"{root}/.infra-lab/worker.env"), b"PASSWORD=s3cret\n")
    sh(write_file(f"{output_dir}/sweep/plan.json"), b"{}")
    assert Path(output_dir, "sweep", "plan.json").read_bytes() == b"{}"
    env_file = Path(root, ".infra-lab", "worker.env")
    assert env_file.read_bytes() == b"PASSWORD=s3cret\n" and (env_file.stat().st_mode & 0o777) == 0o400
    sh(write_secret_file(f"{root}/.infra-lab/worker.env"), b"PASSWORD=new\n")  # a 0400 file is replaced
    assert env_file.read_bytes() == b"PASSWORD=new\n"
    sh(extract_files(project_dir), tar_of(project, ["data/it's a file.txt"]))
    listing = parse_project_listing(sh(list_project(root, project_dir, output_dir, "lab")).decode(), no_ignores())
    assert (listing.owner, listing.folders, sorted(listing.files)) == ("ours", (True, True, True),
                                                                      ["data/it's a file.txt"])
    assert sh(files_newer_than(project_dir, datetime(2000, 1, 1, tzinfo=timezone.utc))).decode().splitlines() != []
    out = Path(output_dir, "it's out.txt")
    out.write_text("result\n")
    run_here = [sys.executable, "-c"]
    fetched = sh([*run_here, FETCH_OUTPUT, output_dir, json.dumps(["it's out.txt"])])
    with tarfile.open(fileobj=io.BytesIO(base64.b64decode(fetched)), mode="r:gz") as tar:
        assert tar.extractfile("it's out.txt").read() == b"result\n"
    assert "it's out.txt" in sh([*run_here, LIST_OUTPUT, output_dir]).decode()
    sh(delete_files(project_dir, ["data/it's a file.txt"]))
    assert not Path(project_dir, "data").exists() and Path(root, ".infra-lab").is_dir()
    assert parse_removal(sh(remove_owned_folder(f"{root}/.infra-lab", root, "lab")).decode()) == ("removed", "")
    assert parse_removal(sh(remove_owned_folder(root, root, "lab")).decode()) == ("removed", "")
    assert not Path(root).exists()
    assert not canary.exists()
    assert sorted(os.listdir(tmp_path)) == ["hosts", "project"]
    assert all(str(path).startswith(str(sandbox)) for path in sandbox.rglob("*"))


def test_writing_a_private_file_right_under_the_root_never_changes_the_roots_mode():
    assert "chmod 700 / " not in write_secret_file("/infra.env")[2]


def test_writing_a_private_file_by_a_bare_name_writes_that_file(tmp_path):
    subprocess.run(write_secret_file("worker.env"), input=b"A=1\n", cwd=tmp_path, check=True)
    assert (tmp_path / "worker.env").read_bytes() == b"A=1\n"
