"""What runs where: plans from a cluster file and host facts, checked without any host."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shlex
from pathlib import Path
from typing import Callable

import pytest

from infra.commands.engine import (
    BuildImage,
    CreateNetwork,
    CreateVolume,
    RemoveContainers,
    RemoveNetwork,
    RemoveVolume,
    RunContainer,
    StartContainer,
    cluster_labels,
)
from infra.commands.files import remove_folder, remove_owned_folder
from infra.config import Cluster, Host, parse_cluster
from infra.engine.wire import create_arguments
from infra.facts.containers import Container, ImageInfo
from infra.facts.host import HostFacts
from infra.plans.addresses import (
    broker_address_for,
    broker_url_hidden,
    flower_url,
    master_address,
)
from infra.plans.clean import plan_clean
from infra.plans.containers import (
    desired_containers,
    diff_containers,
    expected_worker_nodes,
    fingerprint,
    worker_count,
)
from infra.plans.images import build_fingerprints, build_op, images_needed, plan_images
from infra.plans.layout import HostLayout, host_layout
from infra.plans.secret_files import rabbitmq_password_hash, secret_files_for
from infra.plans.steps import Record, Step
from infra.plans.sync import SyncPlan
from infra.plans.up import HostPlan, container_steps, plan_host
from infra.state.credentials import Secrets
from infra.state.manifest import HostRecord
from infra.state.tls import load_or_create as load_or_create_identity
from infra.state.tls import server_names

FIXTURES = Path(__file__).parent / "fixtures"
MASTER_ADDRESS = "192.168.1.20"
ENV_DIR = "/home/alice/infra/lab/.infra"  # the master host's secret folders: ENV_DIR/ROLE
CONTEXT_DIR = "/home/me/.infra/lab/build"
DIGEST = "c0ffee" * 4
BASE = "python:3.11-slim-bookworm"
WORKER_TAG, MASTER_TAG, BROKER_TAG = "infra-lab-worker:latest", "infra-lab-master:latest", "infra-lab-broker:latest"
IMAGE_IDS = {WORKER_TAG: "sha256:w1", MASTER_TAG: "sha256:m1", BROKER_TAG: "sha256:b1"}
SECRETS = Secrets(broker_user="infra", broker_password="Brk-pw_0123456789abcdef", results_password="Res-pw_0123456789abcdef",
                  flower_user="admin", flower_password="Flw-pw_0123456789", worker_user="worker",
                  worker_password="Wrk-pw_0123456789abcdef",
                  results_master_password="RsM-pw_0123456789abcdef", results_worker_password="RsW-pw_0123456789abcdef",
                  results_flower_password="RsF-pw_0123456789abcdef")
# The master's certificate, made in memory once (nothing is written with save=False).
IDENTITY = load_or_create_identity(Path("/nonexistent/infra-test-tls"), "lab", server_names(MASTER_ADDRESS), save=False)


def make_cluster(tmp_path: Path, edit: Callable[[str], str] = lambda text: text) -> Cluster:
    """The fixture cluster (gpu-box: master + 2 workers, pi1: 1 worker), optionally edited."""
    (tmp_path / "wordcount").mkdir(exist_ok=True)
    text = edit((FIXTURES / "plan_cluster.yaml").read_text())
    return parse_cluster(text, filename="cluster.yaml", base_dir=tmp_path)


def images_of(ids: dict[str, str | None], labels: dict[str, dict[str, str]] | None = None,
              built_on: str | None = None) -> dict[str, ImageInfo | None]:
    """Image inspect answers: an id per reference (None: absent), labels where given.

    Layers as Docker gives them: the base image has one of its own; every other image stands on
    the base it was built on (`built_on`, default the base present now) plus a layer of its own.
    """
    labels = labels or {}
    base_id = built_on or ids.get(BASE)
    base_layers = (f"layer-of-{base_id}",) if base_id else ()

    def layers(ref: str, image_id: str) -> tuple[str, ...]:
        return (f"layer-of-{image_id}",) if ref == BASE else (*base_layers, f"layer-of-{image_id}")

    return {ref: ImageInfo(image_id, dict(labels.get(ref, {})), layers(ref, image_id)) if image_id else None
            for ref, image_id in ids.items()}


def host_facts(host: str, containers=(), image_ids=None, *, images=None, networks=(), volumes=()) -> HostFacts:
    home, uid = {"gpu-box": ("/home/alice", 1000), "pi1": ("/home/pi", 1001), "local": ("/home/me", 501)}[host]
    if images is None:
        images = images_of(IMAGE_IDS if image_ids is None else image_ids)
    return HostFacts(home=home, uid=uid, gid=uid + 100, arch="x86_64", docker_version="27.3.1", docker_problem="",
                     containers=tuple(containers), images=images, networks=tuple(networks), volumes=tuple(volumes))


def plan_for(cluster: Cluster, host: str, facts: HostFacts | None = None, *, secrets: Secrets = SECRETS,
             master_address: str = MASTER_ADDRESS, local_ids=None, sync: SyncPlan | None = None,
             digest: str = DIGEST, identity=IDENTITY) -> HostPlan:
    facts = facts or host_facts(host)
    return plan_host(cluster, cluster.hosts[host], facts, secrets, master_address, local_image_ids=local_ids or {},
                     context_dir=CONTEXT_DIR, context_digest=digest, sync=sync, identity=identity)


def running_as_planned(plan: HostPlan, state: str = "running") -> list[Container]:
    """The containers a host would have after `up` carried out `plan`."""
    return [
        Container(name=c.name, id=f"id-{c.name}", state=state, image=c.spec.image,
                  image_id=IMAGE_IDS.get(c.spec.image, ""),
                  labels={"infra.cluster": "lab", "infra.role": c.role, "infra.host": plan.host.name,
                          "infra.spec": c.fingerprint})
        for c in plan.containers if c.spec is not None
    ]


def actions(plan_or_changes) -> dict[str, str]:
    changes = plan_or_changes.containers if isinstance(plan_or_changes, HostPlan) else plan_or_changes
    return {c.name: c.action for c in changes}


def specs_by_name(cluster: Cluster, host: str, facts: HostFacts | None = None):
    facts = facts or host_facts(host)
    layout = host_layout(cluster, cluster.hosts[host], facts)
    return {s.name: s for s in desired_containers(cluster, cluster.hosts[host], facts, layout)}


def steps_after_images(cluster: Cluster, plan: HostPlan, facts: HostFacts, ids=None) -> list[Step]:
    return container_steps(cluster, plan, facts, dict(IMAGE_IDS if ids is None else ids))


@pytest.fixture
def cluster(tmp_path) -> Cluster:
    return make_cluster(tmp_path)


# --------------------------------------------------------------------------- host layout


def test_remote_layout_with_a_relative_remote_path_lives_in_the_cluster_folder_in_the_home_folder(cluster):
    layout = host_layout(cluster, cluster.hosts["gpu-box"], host_facts("gpu-box"))
    assert layout == HostLayout(
        root="/home/alice/infra/lab",
        project_dir="/home/alice/infra/lab/wordcount",
        env_dir="/home/alice/infra/lab/.infra",
        output_dir="/home/alice/infra/lab/output",
    )
    assert layout.marker == "/home/alice/infra/lab/.infra-cluster"


@pytest.mark.parametrize(
    ("remote_path", "base"),
    [("/srv/infra", "/srv/infra"), ("/srv/infra/", "/srv/infra"), ("~/jobs", "/home/pi/jobs"), ("a/b", "/home/pi/a/b")],
)
def test_remote_layout_for_absolute_and_home_relative_remote_paths(tmp_path, remote_path, base):
    cluster = make_cluster(tmp_path, lambda t: t.replace("remote_path: infra", f"remote_path: {remote_path}"))
    layout = host_layout(cluster, cluster.hosts["pi1"], host_facts("pi1"))
    assert layout.root == f"{base}/lab"
    assert layout.project_dir == f"{base}/lab/wordcount"
    assert layout.env_dir == f"{base}/lab/.infra"
    assert layout.output_dir == f"{base}/lab/output"


def test_two_clusters_with_one_remote_path_and_project_folder_name_never_share_a_folder(tmp_path):
    (tmp_path / "b").mkdir()
    one = make_cluster(tmp_path)
    other = make_cluster(tmp_path / "b", lambda t: t.replace("name: lab", "name: lab2"))
    assert one.project_dir.name == other.project_dir.name
    a, b = (host_layout(c, c.hosts["pi1"], host_facts("pi1")) for c in (one, other))
    assert a.root != b.root and not b.root.startswith(a.root + "/") and not a.root.startswith(b.root + "/")
    assert {a.project_dir, a.output_dir, a.env_dir}.isdisjoint({b.project_dir, b.output_dir, b.env_dir})


@pytest.mark.parametrize("name", ["output", ".infra", ".infra-cluster"])
def test_a_project_folder_named_like_an_entry_of_the_cluster_folder_is_copied_to_project(tmp_path, name):
    (tmp_path / name).mkdir()
    cluster = make_cluster(tmp_path, lambda t: t.replace("path: wordcount", f"path: '{name}'") + "state_dir: state\n")
    layout = host_layout(cluster, cluster.hosts["pi1"], host_facts("pi1"))
    assert layout.project_dir == "/home/pi/infra/lab/project"
    assert len({layout.project_dir, layout.output_dir, layout.env_dir, layout.marker}) == 4


def test_local_layout_uses_the_project_and_its_output_folder_in_place_and_the_state_dir(tmp_path):
    cluster = make_cluster(tmp_path, lambda t: t + "    - host: local\n")
    layout = host_layout(cluster, cluster.hosts["local"], host_facts("local"))
    state = tmp_path.resolve() / ".infra" / "lab"
    assert layout == HostLayout(
        root=str(state),
        project_dir=str(tmp_path.resolve() / "wordcount"),
        env_dir=str(state / "env"),
        output_dir=str(tmp_path.resolve() / "wordcount" / "output"),
    )


# --------------------------------------------------------------------------- desired containers


def test_the_master_host_runs_broker_results_master_flower_and_its_workers(cluster):
    specs = specs_by_name(cluster, "gpu-box")
    assert [(s.name, s.role) for s in specs.values()] == [
        ("lab-broker", "broker"), ("lab-results", "results"), ("lab-master", "master"), ("lab-flower", "flower"),
        ("lab-worker-gpu-box-1", "worker"), ("lab-worker-gpu-box-2", "worker"),
    ]
    assert all(s.host == "gpu-box" for s in specs.values())


def test_the_broker_publishes_its_tls_port_keeps_data_in_a_volume_and_reads_its_own_secrets(cluster):
    broker = specs_by_name(cluster, "gpu-box")["lab-broker"]
    assert broker.image == BROKER_TAG
    assert broker.ports == ((5671, 5671),)
    assert broker.bind_address is None
    assert broker.volumes == (("lab-broker-data", "/var/lib/rabbitmq", "rw"),)
    assert (broker.network, broker.network_alias, broker.hostname) == ("lab-net", "broker", "lab-broker")
    assert broker.secrets == f"{ENV_DIR}/broker"
    assert broker.environment == ()
    assert broker.user == "1000:1100"  # the owner of its 0400 files


def test_the_result_backend_runs_from_the_master_image_and_publishes_its_tls_port(cluster):
    results = specs_by_name(cluster, "gpu-box")["lab-results"]
    assert results.image == MASTER_TAG
    assert results.command == ("infra-results",)
    assert results.ports == ((6379, 6380),)
    assert results.volumes == (("lab-results-data", "/data", "rw"),)
    assert (results.network, results.network_alias) == ("lab-net", "results")
    assert results.secrets == f"{ENV_DIR}/results"


def test_the_master_container_has_the_project_read_only_and_the_output_folder_writable(cluster):
    master = specs_by_name(cluster, "gpu-box")["lab-master"]
    layout = host_layout(cluster, cluster.hosts["gpu-box"], host_facts("gpu-box"))
    assert master.command == ("infra-idle",)
    assert master.volumes == ((layout.project_dir, "/project", "ro"), (layout.output_dir, "/project/output", "rw"))
    assert master.user == "1000:1100"
    assert master.workdir == "/project"
    assert master.network == "lab-net"
    assert master.ports == ()
    assert master.secrets == f"{ENV_DIR}/master"
    assert master.environment == (("INFRA_CLUSTER", "lab"), ("INFRA_ENV_FILE", "/run/infra/celery.env"))


def test_flower_serves_https_with_its_config_file_and_the_project_read_only(cluster):
    flower = specs_by_name(cluster, "gpu-box")["lab-flower"]
    layout = host_layout(cluster, cluster.hosts["gpu-box"], host_facts("gpu-box"))
    assert flower.command == ("celery", "--app", "wordcount", "flower", "--port=5555",
                              "--conf=/run/infra/flowerconfig.py")
    assert flower.ports == ((5555, 5555),)
    assert flower.volumes == ((layout.project_dir, "/project", "ro"),)
    assert flower.secrets == f"{ENV_DIR}/flower"
    assert flower.user == "1000:1100"


def test_workers_on_the_master_host_use_host_networking_and_their_group_settings(cluster):
    worker = specs_by_name(cluster, "gpu-box")["lab-worker-gpu-box-2"]
    layout = host_layout(cluster, cluster.hosts["gpu-box"], host_facts("gpu-box"))
    assert worker.image == WORKER_TAG
    assert worker.network == "host"
    assert worker.ports == ()
    assert worker.user == "1000:1100"
    assert worker.volumes == ((layout.project_dir, "/project", "ro"),)
    assert worker.secrets == f"{ENV_DIR}/worker"
    assert worker.environment == (("INFRA_CLUSTER", "lab"), ("INFRA_ENV_FILE", "/run/infra/celery.env"),
                                  ("INFRA_CA_FILE", "/run/infra/ca.crt"))
    assert worker.command == (
        "celery", "--app", "wordcount", "worker", "--include", "infra_runtime.tasks",
        "--hostname", "lab-worker-gpu-box-2@gpu-box",
        "--queues", "celery", "--pool", "prefork", "--loglevel", "WARNING", "--task-events", "--concurrency", "4",
    )


def test_a_worker_host_runs_only_its_workers_with_its_own_uid_queues_pool_and_concurrency(cluster):
    specs = specs_by_name(cluster, "pi1")
    assert list(specs) == ["lab-worker-pi1-1"]
    worker = specs["lab-worker-pi1-1"]
    layout = host_layout(cluster, cluster.hosts["pi1"], host_facts("pi1"))
    assert worker.user == "1001:1101"
    assert worker.volumes == ((layout.project_dir, "/project", "ro"),)
    assert worker.secrets == f"{layout.env_dir}/worker"
    command = list(worker.command)
    assert command[command.index("--hostname") + 1] == "lab-worker-pi1-1@pi1"
    assert command[command.index("--queues") + 1] == "celery,heavy"
    assert command[command.index("--pool") + 1] == "threads"
    assert command[command.index("--loglevel") + 1] == "DEBUG"
    assert command[command.index("--concurrency") + 1] == "2"


def test_without_a_concurrency_celery_picks_the_cpu_count(tmp_path):
    cluster = make_cluster(tmp_path, lambda t: t.replace("      concurrency: 2\n", ""))
    assert "--concurrency" not in specs_by_name(cluster, "pi1")["lab-worker-pi1-1"].command


def test_workers_send_task_events_unless_their_group_says_events_false(tmp_path):
    cluster = make_cluster(tmp_path, lambda t: t.replace("      concurrency: 2\n", "      concurrency: 2\n      events: false\n"))
    quiet = specs_by_name(cluster, "pi1")["lab-worker-pi1-1"].command
    assert "--task-events" not in quiet
    # The app's own worker_send_task_events (the sample project turns it on) is overridden as well.
    assert "worker_send_task_events=false" in quiet
    assert "--task-events" in specs_by_name(cluster, "gpu-box")["lab-worker-gpu-box-1"].command


def test_a_group_with_events_on_keeps_the_command_and_so_the_fingerprint_it_had_before_the_setting(cluster):
    command = specs_by_name(cluster, "pi1")["lab-worker-pi1-1"].command
    assert "--task-events" in command and not any("worker_send_task_events" in word for word in command)


def test_two_groups_on_one_host_number_their_workers_in_sequence(tmp_path):
    cluster = make_cluster(tmp_path, lambda t: t + "    - host: pi1\n      containers: 2\n      queues: [io]\n")
    specs = specs_by_name(cluster, "pi1")
    assert list(specs) == ["lab-worker-pi1-1", "lab-worker-pi1-2", "lab-worker-pi1-3"]
    assert "io" in specs["lab-worker-pi1-3"].command and "heavy" not in " ".join(specs["lab-worker-pi1-3"].command)
    assert worker_count(cluster, "pi1") == 3 and worker_count(cluster, "gpu-box") == 2


def test_local_workers_mount_the_project_where_it_is(tmp_path):
    cluster = make_cluster(tmp_path, lambda t: t + "    - host: local\n")
    specs = specs_by_name(cluster, "local")
    assert list(specs) == ["lab-worker-local-1"]
    assert specs["lab-worker-local-1"].volumes == ((str(tmp_path.resolve() / "wordcount"), "/project", "ro"),)
    assert specs["lab-worker-local-1"].secrets == str(tmp_path.resolve() / ".infra" / "lab" / "env" / "worker")


def test_the_run_command_of_a_worker_is_exactly_this(cluster):
    worker = specs_by_name(cluster, "pi1")["lab-worker-pi1-1"]
    layout = host_layout(cluster, cluster.hosts["pi1"], host_facts("pi1"))
    op = RunContainer(worker, cluster_labels("lab", role="worker", host="pi1", spec="f00"))
    assert op.argv() == [
        "docker", "run", "--detach", "--name", "lab-worker-pi1-1",
        "--label", "infra.cluster=lab", "--label", "infra.role=worker", "--label", "infra.host=pi1",
        "--label", "infra.spec=f00",
        "--restart", "unless-stopped", "--log-driver", "json-file", "--log-opt", "max-size=20m", "--log-opt", "max-file=3",
        "--network", "host",
        "--volume", f"{layout.project_dir}:/project:ro",
        "--volume", f"{layout.env_dir}/worker:/run/infra:ro",
        "--env", "INFRA_CLUSTER=lab", "--env", "INFRA_ENV_FILE=/run/infra/celery.env",
        "--env", "INFRA_CA_FILE=/run/infra/ca.crt",
        "--user", "1001:1101", "--workdir", "/project",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--read-only",
        "--tmpfs", "/tmp:rw,nosuid,nodev,size=1g", "--pids-limit", "4096",
        WORKER_TAG,
        "celery", "--app", "wordcount", "worker", "--include", "infra_runtime.tasks",
        "--hostname", "lab-worker-pi1-1@pi1", "--queues", "celery,heavy",
        "--pool", "threads", "--loglevel", "DEBUG", "--task-events", "--concurrency", "2",
    ]


def test_the_run_command_of_the_broker_publishes_and_joins_the_network_under_its_alias(cluster):
    broker = specs_by_name(cluster, "gpu-box")["lab-broker"]
    argv = RunContainer(broker, cluster_labels("lab", role="broker", host="gpu-box", spec="abc")).argv()
    assert argv[argv.index("--network") + 1] == "lab-net"
    assert argv[argv.index("--network-alias") + 1] == "broker"
    assert argv[argv.index("--hostname") + 1] == "lab-broker"
    assert argv[argv.index("--publish") + 1] == "5671:5671"
    assert argv[argv.index("--volume") + 1] == "lab-broker-data:/var/lib/rabbitmq:rw"
    assert f"{ENV_DIR}/broker:/run/infra:ro" in argv
    assert argv[-1] == BROKER_TAG


def test_a_bind_address_publishes_the_masters_ports_there_and_its_workers_use_it(tmp_path):
    cluster = make_cluster(tmp_path, lambda t: t.replace("    host: gpu-box\n  workers:",
                                                         "    host: gpu-box\n    bind_address: 10.8.0.1\n  workers:"))
    specs = specs_by_name(cluster, "gpu-box")
    for name in ("lab-broker", "lab-results"):
        assert specs[name].bind_address == "10.8.0.1"
        assert "--publish 10.8.0.1:" in RunContainer(specs[name], ()).text()
    assert specs["lab-flower"].bind_address == "127.0.0.1"  # unless published on purpose: see test_flower.py
    assert specs["lab-worker-gpu-box-1"].bind_address is None
    assert broker_address_for(cluster, cluster.hosts["gpu-box"], MASTER_ADDRESS) == "10.8.0.1"
    worker_env = files_of(plan_for(cluster, "gpu-box"), "worker")["celery.env"]
    assert "@10.8.0.1:5671/lab" in worker_env


def test_with_tls_off_the_plain_ports_are_published_and_workers_use_plain_urls(tmp_path):
    cluster = make_cluster(tmp_path, lambda t: t.replace("ports:\n  broker: 5671\n", "tls: false\nports:\n"))
    assert cluster.spec.ports.broker == 5672
    specs = specs_by_name(cluster, "gpu-box")
    assert specs["lab-broker"].ports == ((5672, 5672),)
    assert specs["lab-results"].ports == ((6379, 6379),)
    assert ("INFRA_CA_FILE", "/run/infra/ca.crt") not in specs["lab-worker-gpu-box-1"].environment
    plan = plan_for(cluster, "pi1", identity=None)
    assert files_of(plan, "worker") == {"celery.env": (
        "INFRA_CLUSTER=lab\n"
        "CELERY_BROKER_URL=amqp://worker:Wrk-pw_0123456789abcdef@192.168.1.20:5672/lab\n"
        "CELERY_RESULT_BACKEND=redis://worker:RsW-pw_0123456789abcdef@192.168.1.20:6379/0\n")}
    master = files_of(plan_for(cluster, "gpu-box", identity=None), "broker")["rabbitmq.conf"]
    assert "ssl" not in master
    assert "tls" not in files_of(plan_for(cluster, "gpu-box", identity=None), "results")["redis.conf"]
    assert "certfile" not in files_of(plan_for(cluster, "gpu-box", identity=None), "flower")["flowerconfig.py"]


def test_the_default_broker_port_follows_tls(tmp_path):
    with_tls = make_cluster(tmp_path, lambda t: t.replace("  broker: 5671\n", ""))
    assert with_tls.spec.ports.broker == 5671
    without = make_cluster(tmp_path, lambda t: t.replace("  broker: 5671\n", "").replace("ports:", "tls: false\nports:"))
    assert without.spec.ports.broker == 5672


# --------------------------------------------------------------------------- secrets and their files

# Every secret file of a master host that also runs workers, by role, in the order they are written.
MASTER_HOST_SECRET_FILES = [
    ("broker", "rabbitmq.conf"), ("broker", "definitions.json"),
    ("broker", "ca.crt"), ("broker", "server.crt"), ("broker", "server.key"),
    ("results", "redis.conf"), ("results", "admin.url"), ("results", "ca.crt"), ("results", "server.crt"), ("results", "server.key"),
    ("master", "celery.env"),
    ("flower", "celery.env"), ("flower", "flowerconfig.py"),
    ("flower", "ca.crt"), ("flower", "server.crt"), ("flower", "server.key"),
    ("worker", "celery.env"), ("worker", "ca.crt"),
]


def files_of(plan: HostPlan, role: str) -> dict[str, str]:
    return {f.name: f.content for f in plan.secret_files if f.role == role}


def test_no_command_on_any_host_contains_a_secret(tmp_path):
    cluster = make_cluster(tmp_path, lambda t: t + "    - host: local\n")
    secrets = Secrets.generate()
    assert len(secrets.values()) == 9 and all(len(v) >= 20 for v in secrets.values())  # 7 passwords, the run key
    texts: list[str] = []
    fed: list[bytes] = []
    for host in ("gpu-box", "pi1", "local"):
        facts = host_facts(host, image_ids={})
        plan = plan_for(cluster, host, facts, secrets=secrets)
        steps = plan.steps + steps_after_images(cluster, plan, facts)
        assert any(isinstance(step.op, RunContainer) for step in steps), host
        for step in steps:
            texts += [step.text(), step.description, repr(step)]
            fed.append(step.stdin or b"")
            if isinstance(step.op, RunContainer):
                texts += [repr(step.op), json.dumps(create_arguments(step.op))]
        texts += [image.describe() for image in plan.images] + [change.describe() for change in plan.containers]
    assert len(texts) > 60
    for secret in secrets.values():
        assert not any(secret in text for text in texts)
        assert any(secret.encode() in data for data in fed)  # they travel, on stdin only
    assert not any(IDENTITY.key.encode() in text.encode() for text in texts)
    assert any(IDENTITY.key.encode() in data for data in fed)


def test_the_master_host_gets_one_folder_of_secret_files_per_role(cluster):
    plan = plan_for(cluster, "gpu-box")
    assert [(f.role, f.name) for f in plan.secret_files] == MASTER_HOST_SECRET_FILES
    assert all(f.path == f"{ENV_DIR}/{f.role}/{f.name}" for f in plan.secret_files)
    assert files_of(plan, "broker")["server.key"] == IDENTITY.key
    assert files_of(plan, "broker")["server.crt"] == IDENTITY.certificate + IDENTITY.ca_certificate
    assert files_of(plan, "worker")["ca.crt"] == IDENTITY.ca_certificate
    assert "server.key" not in files_of(plan, "worker") and "server.key" not in files_of(plan, "master")


def test_the_broker_imports_an_administrator_and_a_worker_user_limited_to_the_clusters_vhost(cluster):
    definitions = json.loads(files_of(plan_for(cluster, "gpu-box"), "broker")["definitions.json"])
    assert definitions["vhosts"] == [{"name": "lab"}]
    users = {u["name"]: u for u in definitions["users"]}
    assert users["infra"]["tags"] == ["administrator"] and users["worker"]["tags"] == []
    assert users["worker"]["password_hash"] == rabbitmq_password_hash("Wrk-pw_0123456789abcdef")
    assert users["infra"]["password_hash"] == rabbitmq_password_hash("Brk-pw_0123456789abcdef")
    assert [(p["user"], p["vhost"]) for p in definitions["permissions"]] == [("infra", "lab"), ("worker", "lab")]
    assert "Brk-pw" not in json.dumps(definitions) and "Wrk-pw" not in json.dumps(definitions)


def test_the_broker_listens_plain_on_its_network_and_tls_on_the_published_port(cluster):
    conf = files_of(plan_for(cluster, "gpu-box"), "broker")["rabbitmq.conf"]
    assert "listeners.tcp.default = 5672\n" in conf
    assert "listeners.ssl.default = 5671\n" in conf
    assert "ssl_options.certfile = /run/infra/server.crt\n" in conf
    assert "ssl_options.keyfile = /run/infra/server.key\n" in conf
    assert "load_definitions = /run/infra/definitions.json\n" in conf
    assert "loopback_users.guest = true\n" in conf and "loopback_users = none" not in conf


def test_redis_has_a_user_per_role_and_no_default_and_serves_tls_on_6380(cluster):
    conf = files_of(plan_for(cluster, "gpu-box"), "results")["redis.conf"]
    assert "requirepass" not in conf
    assert "user default off resetpass resetkeys resetchannels -@all\n" in conf
    users = [line.split()[1] for line in conf.splitlines() if line.startswith("user ")]
    assert users == ["default", "admin", "master", "worker", "flower"]
    assert "port 6379\n" in conf and "tls-port 6380\n" in conf
    assert "tls-cert-file /run/infra/server.crt\n" in conf and "tls-auth-clients no\n" in conf


def test_redis_is_given_password_hashes_only_and_infra_the_administrators_url_in_its_own_file(cluster):
    files = files_of(plan_for(cluster, "gpu-box"), "results")
    for password in ("Res-pw_0123456789abcdef", "RsM-pw_0123456789abcdef", "RsW-pw_0123456789abcdef",
                     "RsF-pw_0123456789abcdef"):
        assert password not in files["redis.conf"]
        assert f"#{hashlib.sha256(password.encode()).hexdigest()} " in files["redis.conf"]
    assert files["admin.url"] == "redis://admin:Res-pw_0123456789abcdef@127.0.0.1:6379/0\n"


def test_flowers_config_holds_its_login_the_brokers_api_and_its_certificate_as_literals(cluster):
    conf = files_of(plan_for(cluster, "gpu-box"), "flower")["flowerconfig.py"]
    values: dict = {}
    exec(compile(conf, "flowerconfig.py", "exec"), {}, values)  # what flower --conf does
    assert values == {
        "basic_auth": ["admin:Flw-pw_0123456789"],
        "broker_api": "http://infra:Brk-pw_0123456789abcdef@broker:15672/api/",
        "certfile": "/run/infra/server.crt",
        "keyfile": "/run/infra/server.key",
    }


def test_celery_on_the_master_host_uses_the_workers_user_on_the_clusters_own_network(cluster):
    plan = plan_for(cluster, "gpu-box")
    internal = ("INFRA_CLUSTER=lab\n"
                "CELERY_BROKER_URL=amqp://worker:Wrk-pw_0123456789abcdef@broker:5672/lab\n"
                "CELERY_RESULT_BACKEND=redis://master:RsM-pw_0123456789abcdef@results:6379/0\n")
    assert files_of(plan, "master")["celery.env"] == internal
    assert files_of(plan, "flower")["celery.env"] == internal.replace(
        "redis://master:RsM-pw_0123456789abcdef@", "redis://flower:RsF-pw_0123456789abcdef@")


def test_workers_on_the_master_host_reach_the_broker_over_tls_on_127_0_0_1(cluster):
    assert files_of(plan_for(cluster, "gpu-box"), "worker")["celery.env"] == (
        "INFRA_CLUSTER=lab\n"
        "CELERY_BROKER_URL=amqps://worker:Wrk-pw_0123456789abcdef@127.0.0.1:5671/lab\n"
        "CELERY_RESULT_BACKEND=rediss://worker:RsW-pw_0123456789abcdef@127.0.0.1:6379/0"
        "?ssl_cert_reqs=required&ssl_ca_certs=/run/infra/ca.crt\n")


def test_workers_on_other_hosts_reach_the_broker_on_the_master_address_and_published_ports(tmp_path):
    cluster = make_cluster(tmp_path, lambda t: t.replace("broker: 5671", "broker: 5700").replace(
        "results: 6379", "results: 6400"))
    plan = plan_for(cluster, "pi1")
    assert [(f.role, f.name) for f in plan.secret_files] == [("worker", "celery.env"), ("worker", "ca.crt")]
    layout = host_layout(cluster, cluster.hosts["pi1"], host_facts("pi1"))
    assert plan.secret_files[0].path == f"{layout.env_dir}/worker/celery.env"
    assert plan.secret_files[0].content == (
        "INFRA_CLUSTER=lab\n"
        "CELERY_BROKER_URL=amqps://worker:Wrk-pw_0123456789abcdef@192.168.1.20:5700/lab\n"
        "CELERY_RESULT_BACKEND=rediss://worker:RsW-pw_0123456789abcdef@192.168.1.20:6400/0"
        "?ssl_cert_reqs=required&ssl_ca_certs=/run/infra/ca.crt\n")


def test_a_master_host_without_workers_has_no_worker_files(tmp_path):
    cluster = make_cluster(tmp_path, lambda t: t.replace("containers: 2", "containers: 0"))
    facts = host_facts("gpu-box")
    layout = host_layout(cluster, cluster.hosts["gpu-box"], facts)
    roles = {f.role for f in secret_files_for(cluster, cluster.hosts["gpu-box"], layout, SECRETS, MASTER_ADDRESS,
                                              IDENTITY)}
    assert roles == {"broker", "results", "master", "flower"}


def test_tls_without_the_masters_certificate_is_a_programming_error(cluster):
    with pytest.raises(ValueError, match="certificate"):
        plan_for(cluster, "pi1", identity=None)


def test_each_secret_file_is_written_0400_from_stdin_and_recorded_as_a_secret_folder(cluster):
    plan = plan_for(cluster, "pi1")
    layout = host_layout(cluster, cluster.hosts["pi1"], host_facts("pi1"))
    assert not [step for step in plan.steps if step.description.startswith("write ")]  # they come with the containers
    writes = [step for folder_writes in plan.secret_writes.values() for step in folder_writes]
    assert [w.description for w in writes] == [f"write {layout.env_dir}/worker/celery.env (mode 0400)",
                                               f"write {layout.env_dir}/worker/ca.crt (mode 0400)"]
    for write, secret_file in zip(writes, plan.secret_files):
        assert write.op is None and write.command[:2] == ("sh", "-c") and "umask 077" in write.command[2]
        assert "chmod 400" in write.command[2]
        assert write.stdin == secret_file.content.encode()
        assert write.records == (Record("add_secret_dir", layout.env_dir),)


def test_each_container_mounts_its_roles_folder_and_no_other(cluster):
    facts = host_facts("gpu-box")
    plan = plan_for(cluster, "gpu-box", facts)
    runs = {step.op.spec.name: step.op for step in steps_after_images(cluster, plan, facts)
            if isinstance(step.op, RunContainer)}
    assert len(runs) == 6
    for name, op in runs.items():
        mounted = [source for source, target, _ in op.mounts() if target == "/run/infra"]
        assert mounted == [f"{ENV_DIR}/{op.spec.role}"], name
        assert not any(source.startswith(ENV_DIR) for source, target, _ in op.spec.volumes), name


# --------------------------------------------------------------------------- fingerprints


def test_the_fingerprint_is_stable_for_the_same_spec_image_and_env(cluster):
    first = specs_by_name(cluster, "gpu-box")
    again = specs_by_name(cluster, "gpu-box")
    for name, spec in first.items():
        assert fingerprint(spec, "sha256:w1", "env1") == fingerprint(again[name], "sha256:w1", "env1")


def test_the_fingerprint_changes_with_the_image_id(cluster):
    spec = specs_by_name(cluster, "pi1")["lab-worker-pi1-1"]
    assert fingerprint(spec, "sha256:w1", "env1") != fingerprint(spec, "sha256:w2", "env1")


def test_the_fingerprint_changes_with_the_secret_files(cluster):
    spec = specs_by_name(cluster, "pi1")["lab-worker-pi1-1"]
    assert fingerprint(spec, "sha256:w1", "env1") != fingerprint(spec, "sha256:w1", "env2")


@pytest.mark.parametrize("change", [
    {"command": ("celery", "--app", "wordcount", "worker", "--concurrency", "8")},
    {"user": "0:0"},
    {"volumes": (("/elsewhere", "/project", "ro"),)},
    {"image": "other:latest"},
    {"restart": "no"},
    {"secrets": "/elsewhere/worker"},
    {"environment": (("INFRA_CLUSTER", "other"),)},
    {"bind_address": "10.0.0.1"},
    {"hostname": "w1"},
])
def test_the_fingerprint_changes_with_any_setting(cluster, change):
    spec = specs_by_name(cluster, "pi1")["lab-worker-pi1-1"]
    assert fingerprint(spec, "sha256:w1", "env1") != fingerprint(dataclasses.replace(spec, **change), "sha256:w1", "env1")


def test_planning_twice_gives_the_same_fingerprints(cluster):
    first = {c.name: c.fingerprint for c in plan_for(cluster, "gpu-box").containers}
    again = {c.name: c.fingerprint for c in plan_for(cluster, "gpu-box").containers}
    assert first == again and all(first.values())


def test_new_secrets_change_every_fingerprint_because_every_secrets_folder_changes(cluster):
    before = {c.name: c.fingerprint for c in plan_for(cluster, "gpu-box").containers}
    after = {c.name: c.fingerprint for c in plan_for(cluster, "gpu-box", secrets=Secrets.generate()).containers}
    assert all(before[name] != after[name] for name in before)


def test_a_new_master_address_changes_only_the_workers_of_other_hosts(cluster):
    def fingerprints(host, address):
        return {c.name: c.fingerprint for c in plan_for(cluster, host, master_address=address).containers}

    assert fingerprints("gpu-box", "192.168.1.20") == fingerprints("gpu-box", "10.9.9.9")
    assert fingerprints("pi1", "192.168.1.20") != fingerprints("pi1", "10.9.9.9")


# --------------------------------------------------------------------------- container diff


def test_a_fresh_host_creates_everything_services_first(cluster):
    plan = plan_for(cluster, "gpu-box")
    assert [(c.action, c.name) for c in plan.containers] == [
        ("create", "lab-broker"), ("create", "lab-results"), ("create", "lab-master"), ("create", "lab-flower"),
        ("create", "lab-worker-gpu-box-1"), ("create", "lab-worker-gpu-box-2"),
    ]
    assert plan.network == "lab-net"
    assert plan.volumes == ["lab-broker-data", "lab-results-data"]


def test_a_worker_host_gets_no_network_or_volumes(cluster):
    plan = plan_for(cluster, "pi1")
    assert actions(plan) == {"lab-worker-pi1-1": "create"}
    assert plan.network is None and plan.volumes == []
    assert not any(isinstance(step.op, (CreateNetwork, CreateVolume)) for step in plan.steps)


@pytest.mark.parametrize("host", ["gpu-box", "pi1"])
def test_up_again_on_an_unchanged_cluster_plans_nothing(cluster, host):
    first = plan_for(cluster, host)
    again = plan_for(cluster, host, host_facts(host, running_as_planned(first)))
    assert set(actions(again).values()) == {"keep"}
    assert again.changes == []


def test_scaling_up_from_2_to_3_on_one_host_creates_exactly_one_container_there(tmp_path):
    before = make_cluster(tmp_path)
    after = make_cluster(tmp_path, lambda t: t.replace("containers: 2", "containers: 3"))
    for host in ("gpu-box", "pi1"):
        running = running_as_planned(plan_for(before, host))
        plan = plan_for(after, host, host_facts(host, running))
        wanted = [("create", "lab-worker-gpu-box-3")] if host == "gpu-box" else []
        assert [(c.action, c.name) for c in plan.changes] == wanted
        assert len([c for c in plan.containers if c.action == "keep"]) == len(running)


def test_scaling_down_from_3_to_1_removes_two_containers(tmp_path):
    before = make_cluster(tmp_path, lambda t: t.replace("containers: 2", "containers: 3"))
    after = make_cluster(tmp_path, lambda t: t.replace("containers: 2", "containers: 1"))
    running = running_as_planned(plan_for(before, "gpu-box"))
    plan = plan_for(after, "gpu-box", host_facts("gpu-box", running))
    assert [(c.action, c.name) for c in plan.changes] == [
        ("remove", "lab-worker-gpu-box-2"), ("remove", "lab-worker-gpu-box-3"),
    ]
    assert all(c.existing is not None and c.spec is None for c in plan.changes)


def test_a_concurrency_change_replaces_only_that_hosts_workers(tmp_path):
    before = make_cluster(tmp_path)
    after = make_cluster(tmp_path, lambda t: t.replace("concurrency: 2", "concurrency: 3"))
    gpu = plan_for(after, "gpu-box", host_facts("gpu-box", running_as_planned(plan_for(before, "gpu-box"))))
    pi = plan_for(after, "pi1", host_facts("pi1", running_as_planned(plan_for(before, "pi1"))))
    assert gpu.changes == []
    assert [(c.action, c.name, c.reason) for c in pi.changes] == [
        ("replace", "lab-worker-pi1-1", "settings or image changed")]
    assert pi.changes[0].existing.name == "lab-worker-pi1-1"


def test_a_new_worker_image_replaces_only_the_containers_running_it(cluster):
    running = running_as_planned(plan_for(cluster, "gpu-box"))
    rebuilt = {**IMAGE_IDS, WORKER_TAG: "sha256:w2"}
    plan = plan_for(cluster, "gpu-box", host_facts("gpu-box", running, image_ids=rebuilt))
    assert actions(plan) == {
        "lab-broker": "keep", "lab-results": "keep", "lab-master": "keep", "lab-flower": "keep",
        "lab-worker-gpu-box-1": "replace", "lab-worker-gpu-box-2": "replace",
    }


def test_a_new_master_image_replaces_results_master_and_flower(cluster):
    running = running_as_planned(plan_for(cluster, "gpu-box"))
    rebuilt = {**IMAGE_IDS, MASTER_TAG: "sha256:m2"}
    plan = plan_for(cluster, "gpu-box", host_facts("gpu-box", running, image_ids=rebuilt))
    assert [c.name for c in plan.changes] == ["lab-results", "lab-master", "lab-flower"]
    assert {c.action for c in plan.changes} == {"replace"}


def test_an_image_built_during_up_decides_the_containers_by_its_new_id(cluster):
    """`container_steps` runs once the images are there: the ids a build gave count, not the old ones."""
    facts = host_facts("gpu-box", running_as_planned(plan_for(cluster, "gpu-box")))
    plan = plan_for(cluster, "gpu-box", facts)
    assert plan.changes == []  # with the ids known before the build
    steps = steps_after_images(cluster, plan, facts, {**IMAGE_IDS, WORKER_TAG: "sha256:built-now"})
    assert [c.name for c in plan.changes] == ["lab-worker-gpu-box-1", "lab-worker-gpu-box-2"]
    assert [step.description for step in steps if step.op is not None] == [
        "remove the old lab-worker-gpu-box-1 (settings or image changed)",
        "remove the old lab-worker-gpu-box-2 (settings or image changed)",
        "replace lab-worker-gpu-box-1 (settings or image changed)",
        "replace lab-worker-gpu-box-2 (settings or image changed)",
    ]


def test_a_stopped_container_is_started(cluster):
    running = running_as_planned(plan_for(cluster, "gpu-box"))
    running = [dataclasses.replace(c, state="exited") if c.name == "lab-master" else c for c in running]
    plan = plan_for(cluster, "gpu-box", host_facts("gpu-box", running))
    assert [(c.action, c.name, c.reason) for c in plan.changes] == [("start", "lab-master", "was exited")]


@pytest.mark.parametrize("state", ["paused", "dead"])
def test_a_paused_or_dead_container_is_replaced_since_a_start_would_not_revive_it(cluster, state):
    running = running_as_planned(plan_for(cluster, "pi1"), state=state)
    plan = plan_for(cluster, "pi1", host_facts("pi1", running))
    assert [(c.action, c.name, c.reason) for c in plan.changes] == [("replace", "lab-worker-pi1-1", f"was {state}")]


def test_a_restarting_container_is_left_alone(cluster):
    running = running_as_planned(plan_for(cluster, "pi1"), state="restarting")
    assert plan_for(cluster, "pi1", host_facts("pi1", running)).changes == []


def test_a_labelled_container_no_longer_wanted_is_removed_first(cluster):
    running = running_as_planned(plan_for(cluster, "pi1"))
    stray = Container(name="lab-worker-pi1-7", id="x7", state="running", image_id="sha256:w0",
                      labels={"infra.cluster": "lab", "infra.role": "worker", "infra.spec": "old"})
    plan = plan_for(cluster, "pi1", host_facts("pi1", [*running, stray]))
    assert [(c.action, c.name, c.role) for c in plan.containers] == [
        ("remove", "lab-worker-pi1-7", "worker"), ("keep", "lab-worker-pi1-1", "worker"),
    ]
    assert plan.changes[0].describe() == "remove lab-worker-pi1-7 (no longer wanted)"


def test_diff_with_nothing_wanted_and_nothing_found_is_empty():
    assert diff_containers([], []) == []


# --------------------------------------------------------------------------- container steps


def test_container_steps_remove_first_then_start_in_role_order_with_labels_and_records(cluster):
    facts = host_facts("gpu-box")
    running = running_as_planned(plan_for(cluster, "gpu-box", facts))
    changed = [dataclasses.replace(c, labels={**c.labels, "infra.spec": "old"}) if c.name == "lab-broker" else
               dataclasses.replace(c, state="exited") if c.name == "lab-master" else c
               for c in running if c.name != "lab-worker-gpu-box-2"]
    stray = Container("lab-worker-gpu-box-9", "id9", "running", labels={"infra.role": "worker"})
    facts = host_facts("gpu-box", [*changed, stray])
    plan = plan_for(cluster, "gpu-box", facts)
    steps = steps_after_images(cluster, plan, facts)
    assert [(step.description, type(step.op).__name__ if step.op else None) for step in steps] == [
        ("remove lab-worker-gpu-box-9 (no longer wanted)", "RemoveContainers"),
        ("remove the old lab-broker (settings or image changed)", "RemoveContainers"),
        *[(f"write {ENV_DIR}/broker/{name} (mode 0400)", None) for role, name in MASTER_HOST_SECRET_FILES
          if role == "broker"],
        ("replace lab-broker (settings or image changed)", "RunContainer"),
        ("keep lab-results (up to date)", None),
        (f"write {ENV_DIR}/master/celery.env (mode 0400)", None),
        ("start lab-master (was exited)", "StartContainer"),
        ("keep lab-flower (up to date)", None),
        ("keep lab-worker-gpu-box-1 (up to date)", None),
        *[(f"write {ENV_DIR}/worker/{name} (mode 0400)", None) for name in ("celery.env", "ca.crt")],
        ("create lab-worker-gpu-box-2 (new)", "RunContainer"),
    ]
    by_description = {step.description: step for step in steps}
    assert by_description["remove lab-worker-gpu-box-9 (no longer wanted)"].op == RemoveContainers(("lab-worker-gpu-box-9",))
    assert by_description["remove lab-worker-gpu-box-9 (no longer wanted)"].records == (
        Record("remove_container", "lab-worker-gpu-box-9"),)
    new_broker = by_description["replace lab-broker (settings or image changed)"]
    fingerprint_of = {c.name: c.fingerprint for c in plan.containers}
    assert new_broker.op.labels == (("infra.cluster", "lab"), ("infra.role", "broker"), ("infra.host", "gpu-box"),
                                    ("infra.spec", fingerprint_of["lab-broker"]))
    assert new_broker.records == (Record("add_container", "lab-broker", "broker"),)
    assert by_description["start lab-master (was exited)"].op == StartContainer("lab-master")
    assert by_description["keep lab-results (up to date)"].records == (
        Record("add_container", "lab-results", "results", ident="id-lab-results"),)


def test_a_started_container_is_recorded_with_the_id_it_already_has(cluster):
    running = [dataclasses.replace(c, state="exited") for c in running_as_planned(plan_for(cluster, "pi1"))]
    facts = host_facts("pi1", running)
    *writes, step = steps_after_images(cluster, plan_for(cluster, "pi1", facts), facts)
    assert [write.description.rsplit("/", 1)[1] for write in writes] == ["celery.env (mode 0400)", "ca.crt (mode 0400)"]
    assert step.op == StartContainer("lab-worker-pi1-1")
    assert step.records == (Record("add_container", "lab-worker-pi1-1", "worker", ident="id-lab-worker-pi1-1"),)


def test_a_host_that_is_no_longer_the_master_removes_its_old_network_after_its_containers(cluster):
    facts = host_facts("pi1", networks=["lab-net"])
    plan = plan_for(cluster, "pi1", facts)
    assert plan.stale_networks == ["lab-net"] and not plan.nothing_to_do
    last = steps_after_images(cluster, plan, facts)[-1]
    assert last.op == RemoveNetwork("lab-net")
    assert last.description == "remove network lab-net (this host is no longer the master)"
    assert last.records == (Record("remove_network", "lab-net"),)


# --------------------------------------------------------------------------- a host's steps


def sync_plan(cluster: Cluster, host: str) -> SyncPlan:
    files = cluster.project_dir
    (files / "tasks.py").write_text("def count(): pass\n")
    return SyncPlan(layout=host_layout(cluster, cluster.hosts[host], host_facts(host)), cluster=cluster.name,
                    local_root=files, upload=["tasks.py"], delete=["old.py"], unchanged=3, bytes_to_send=18)


def up_to_date(cluster: Cluster, host: str) -> SyncPlan:
    return SyncPlan(layout=host_layout(cluster, cluster.hosts[host], host_facts(host)), cluster=cluster.name,
                    local_root=cluster.project_dir, unchanged=4)


def test_a_fresh_master_host_sends_files_writes_env_files_builds_then_creates_network_and_volumes(cluster):
    plan = plan_for(cluster, "gpu-box", host_facts("gpu-box", image_ids={}),
                    sync=sync_plan(cluster, "gpu-box"))
    assert [step.description for step in plan.steps] == [
        "cluster folder /home/alice/infra/lab",
        "delete 1 file(s) from /home/alice/infra/lab/wordcount",
        "send 1 file(s), 18 bytes, to /home/alice/infra/lab/wordcount",
        f"build {WORKER_TAG} (built on the host)",
        f"build {MASTER_TAG} (built on the host)",
        f"build {BROKER_TAG} (built on the host)",
        "create network lab-net",
        "create volume lab-broker-data",
        "create volume lab-results-data",
    ]
    assert plan.steps[0].records == (Record("add_files", "/home/alice/infra/lab/wordcount"),)
    assert plan.steps[-3].op == CreateNetwork("lab-net", "lab")
    assert plan.steps[-3].records == (Record("add_network", "lab-net"),)
    assert plan.steps[-1].op == CreateVolume("lab-results-data", "lab")
    assert plan.steps[-1].records == (Record("add_volume", "lab-results-data"),)
    assert all(step.timeout for step in plan.steps)
    # Each role's secret files are written right before its first container starts: the broker's first.
    assert [step.description for writes in plan.secret_writes.values() for step in writes] == [
        f"write {ENV_DIR}/{role}/{name} (mode 0400)" for role, name in MASTER_HOST_SECRET_FILES]
    assert [description for description in (step.description for step in steps_after_images(
        cluster, plan, host_facts("gpu-box", image_ids={}))) if description.startswith(("write", "create"))][:7] == [
        *[f"write {ENV_DIR}/broker/{name} (mode 0400)" for role, name in MASTER_HOST_SECRET_FILES if role == "broker"],
        "create lab-broker (new)",
        f"write {ENV_DIR}/results/redis.conf (mode 0400)"]


def test_the_network_and_volumes_a_host_has_are_kept_and_still_recorded(cluster):
    plan = plan_for(cluster, "gpu-box", host_facts("gpu-box", networks=["lab-net"], volumes=["lab-broker-data"]))
    tail = plan.steps[-3:]
    assert [(step.description, step.op) for step in tail] == [
        ("keep network lab-net", None),
        ("keep volume lab-broker-data", None),
        ("create volume lab-results-data", CreateVolume("lab-results-data", "lab")),
    ]
    assert tail[0].records == (Record("add_network", "lab-net"),)
    assert tail[1].records == (Record("add_volume", "lab-broker-data"),)


def test_a_project_already_up_to_date_is_only_recorded(cluster):
    plan = plan_for(cluster, "pi1", sync=up_to_date(cluster, "pi1"))
    first = plan.steps[0]
    assert first.description == "project /home/pi/infra/lab/wordcount: 4 files up to date"
    assert (first.op, first.command, first.text()) == (None, None, "")
    assert first.records == (Record("add_files", "/home/pi/infra/lab/wordcount"),)


def test_secret_files_are_written_only_for_containers_that_start_since_a_kept_one_proves_its_files_current(cluster):
    running = running_as_planned(plan_for(cluster, "gpu-box"))
    running = [dataclasses.replace(c, state="exited") if c.name == "lab-flower" else c for c in running]
    plan = plan_for(cluster, "gpu-box", host_facts("gpu-box", running))
    assert [step.description for writes in plan.secret_writes.values() for step in writes] == [
        f"write {ENV_DIR}/flower/{name} (mode 0400)"
        for name in ("celery.env", "flowerconfig.py", "ca.crt", "server.crt", "server.key")]
    everything_kept = plan_for(cluster, "gpu-box", host_facts("gpu-box", running_as_planned(plan)))
    assert not everything_kept.secret_writes


def test_the_secrets_folder_is_recorded_even_when_no_secret_file_is_rewritten(cluster):
    first = plan_for(cluster, "pi1")
    again = plan_for(cluster, "pi1", host_facts("pi1", running_as_planned(first)))
    assert not any(step.description.startswith("write") for step in again.steps)
    assert Record("add_secret_dir", first.layout.env_dir) in [r for step in again.steps for r in step.records]


def test_the_local_host_uses_the_project_in_place_and_gets_no_sync_steps(tmp_path):
    cluster = make_cluster(tmp_path, lambda t: t + "    - host: local\n")
    plan = plan_for(cluster, "local", sync=sync_plan(cluster, "pi1"))
    assert plan.sync is None
    assert not any(step.description.startswith(("send", "delete", "project")) for step in plan.steps)


def test_an_unchanged_host_has_nothing_to_do(cluster):
    prints = build_fingerprints(cluster, DIGEST)
    images = images_of({WORKER_TAG: "sha256:w1"}, {WORKER_TAG: {"infra.context": prints[WORKER_TAG]}})
    first = plan_for(cluster, "pi1", host_facts("pi1", images=images))
    again = plan_for(cluster, "pi1", host_facts("pi1", running_as_planned(first), images=images),
                     sync=up_to_date(cluster, "pi1"))
    assert again.nothing_to_do
    assert not any(isinstance(step.op, BuildImage) for step in again.steps)


# --------------------------------------------------------------------------- images


def image_plan(cluster: Cluster, host: str, present: dict, local_ids: dict | None = None, *, labels=None, digest=DIGEST,
               built_on: str | None = None):
    facts = host_facts(host, images=images_of(present, labels, built_on))
    return [(s.role, s.action) for s in plan_images(cluster, cluster.hosts[host], facts, local_ids or {}, digest)]


def built_here(cluster: Cluster, host: str, ids: dict[str, str | None], digest: str = DIGEST) -> dict[str, dict]:
    """Labels of images as `up` builds them (on any host: the base an image stands on is in its layers)."""
    prints = build_fingerprints(cluster, digest)
    return {tag: {"infra.cluster": "lab", "infra.context": prints[tag]} for tag in (WORKER_TAG, MASTER_TAG, BROKER_TAG)}


WITH_BASE = {BASE: "sha256:base1", **IMAGE_IDS}


def test_build_builds_every_needed_image_a_host_lacks(cluster):
    assert image_plan(cluster, "gpu-box", {}) == [("worker", "build"), ("master", "build"), ("broker", "build")]
    assert image_plan(cluster, "pi1", {}) == [("worker", "build")]


def test_build_rebuilds_images_that_carry_no_or_another_context(cluster):
    assert image_plan(cluster, "gpu-box", WITH_BASE) == [("worker", "build"), ("master", "build"), ("broker", "build")]
    other = built_here(cluster, "gpu-box", WITH_BASE, digest="another-context")
    assert image_plan(cluster, "gpu-box", WITH_BASE, labels=other) == [
        ("worker", "build"), ("master", "build"), ("broker", "build")]
    facts = host_facts("gpu-box", images=images_of(WITH_BASE))
    reasons = [p.reason for p in plan_images(cluster, cluster.hosts["gpu-box"], facts, {}, DIGEST)]
    assert reasons == ["built on the host: its context changed"] * 3


def test_build_skips_images_built_from_the_same_context(cluster):
    labels = built_here(cluster, "gpu-box", WITH_BASE)
    assert image_plan(cluster, "gpu-box", WITH_BASE, labels=labels) == [
        ("worker", "present"), ("master", "present"), ("broker", "present")]
    assert image_plan(cluster, "pi1", WITH_BASE, labels=labels) == [("worker", "present")]


def test_a_new_base_image_rebuilds_every_image(cluster):
    labels = built_here(cluster, "gpu-box", WITH_BASE)
    newer = {**WITH_BASE, BASE: "sha256:base2"}
    assert image_plan(cluster, "gpu-box", newer, labels=labels, built_on="sha256:base1") == [
        ("worker", "build"), ("master", "build"), ("broker", "build")]


def test_a_new_base_image_setting_rebuilds_every_image(tmp_path):
    before = make_cluster(tmp_path)
    after = make_cluster(tmp_path, lambda t: t + "images:\n  base: python:3.12-slim-bookworm\n")
    labels = built_here(before, "gpu-box", WITH_BASE)
    assert image_plan(after, "gpu-box", WITH_BASE, labels=labels) == [
        ("worker", "build"), ("master", "build"), ("broker", "build")]


def test_the_master_image_stands_on_the_base_image_not_on_the_worker_image(cluster):
    labels = built_here(cluster, "gpu-box", WITH_BASE)
    worker_gone = {**WITH_BASE, WORKER_TAG: None}
    assert image_plan(cluster, "gpu-box", worker_gone, labels=labels) == [
        ("worker", "build"), ("master", "present"), ("broker", "present")]


def test_images_built_on_a_host_that_lacked_the_base_image_are_not_rebuilt_next_time(cluster):
    before = {}  # a fresh host: no base, no images
    labels = built_here(cluster, "gpu-box", before)  # what the first up labels its builds with
    after = {BASE: "sha256:base1", **IMAGE_IDS}  # the build pulled the base
    assert image_plan(cluster, "gpu-box", after, labels=labels) == [
        ("worker", "present"), ("master", "present"), ("broker", "present")]


def test_images_built_on_a_host_that_lacked_the_base_image_follow_a_new_base_image(cluster):
    labels = built_here(cluster, "gpu-box", {})
    newer_base = {BASE: "sha256:base2", **IMAGE_IDS}
    assert image_plan(cluster, "gpu-box", newer_base, labels=labels, built_on="sha256:base1") == [
        ("worker", "build"), ("master", "build"), ("broker", "build")]


def test_build_on_a_master_host_without_workers_still_builds_the_worker_image_first(tmp_path):
    cluster = make_cluster(tmp_path, lambda t: t.replace("containers: 2", "containers: 0"))
    assert images_needed(cluster, cluster.hosts["gpu-box"]) == ["worker", "master", "broker"]


def test_build_steps_label_each_image_with_its_context_fingerprint(cluster):
    facts = host_facts("gpu-box", image_ids={})
    plan = plan_for(cluster, "gpu-box", facts)
    prints = build_fingerprints(cluster, DIGEST)
    builds = [step.op for step in plan.steps if isinstance(step.op, BuildImage)]
    assert [op.tag for op in builds] == [WORKER_TAG, MASTER_TAG, BROKER_TAG]
    assert all(dict(op.labels) == {"infra.cluster": "lab", "infra.context": prints[op.tag]} for op in builds)
    assert all(op.context_dir == CONTEXT_DIR for op in builds)
    assert len(set(prints.values())) == 3


def test_worker_and_master_are_two_targets_of_one_dockerfile_on_the_base_image(cluster):
    assert build_op(cluster, "master", "/ctx", "f1f2").argv() == [
        "docker", "build", "--network", "host", "--file", "/ctx/Dockerfile.celery", "--target", "master",
        "--tag", MASTER_TAG, "--label", "infra.cluster=lab", "--label", "infra.context=f1f2",
        "--build-arg", "BASE_IMAGE=python:3.11-slim-bookworm", "/ctx"]
    worker = build_op(cluster, "worker", "/ctx", "f1f2")
    assert (worker.dockerfile, worker.target) == ("Dockerfile.celery", "worker")
    broker = build_op(cluster, "broker", "/ctx", "f1f2")
    assert (broker.dockerfile, broker.target) == ("Dockerfile.broker", None)


def test_ship_sends_images_the_host_lacks_or_has_in_another_version(tmp_path):
    cluster = make_cluster(tmp_path, lambda t: t + "images:\n  source: ship\n")
    local = {WORKER_TAG: "sha256:w1"}
    assert image_plan(cluster, "pi1", {}, local) == [("worker", "ship")]
    assert image_plan(cluster, "pi1", {WORKER_TAG: "sha256:old"}, local) == [("worker", "ship")]
    assert image_plan(cluster, "pi1", {WORKER_TAG: "sha256:w1"}, local) == [("worker", "present")]


def test_ship_builds_on_the_local_machine_unless_built_from_the_same_context(tmp_path):
    cluster = make_cluster(tmp_path, lambda t: t + "    - host: local\nimages:\n  source: ship\n")
    assert image_plan(cluster, "local", {}, {}) == [("worker", "build")]
    labels = built_here(cluster, "local", WITH_BASE)
    assert image_plan(cluster, "local", WITH_BASE, labels=labels) == [("worker", "present")]
    facts = host_facts("local", images=images_of({}))
    assert plan_images(cluster, cluster.hosts["local"], facts, {}, DIGEST)[0].reason == \
        "built here, then shipped to the other hosts"


def test_ship_builds_all_three_images_here_when_asked_for_every_role(tmp_path):
    cluster = make_cluster(tmp_path, lambda t: t + "images:\n  source: ship\n")
    facts = host_facts("local", images=images_of({}))
    plans = plan_images(cluster, Host(name="local", address="127.0.0.1"), facts, {}, DIGEST,
                        roles=("worker", "master", "broker"))
    assert [(p.role, p.action) for p in plans] == [("worker", "build"), ("master", "build"), ("broker", "build")]


def test_ship_expects_the_shipped_image_ids_in_the_container_fingerprints(tmp_path):
    cluster = make_cluster(tmp_path, lambda t: t + "images:\n  source: ship\n")
    local = {WORKER_TAG: "sha256:new"}
    stale = plan_for(cluster, "pi1", host_facts("pi1", image_ids={WORKER_TAG: "sha256:old"}), local_ids=local)
    fresh = plan_for(cluster, "pi1", host_facts("pi1", image_ids={WORKER_TAG: "sha256:new"}), local_ids=local)
    assert stale.containers[0].fingerprint == fresh.containers[0].fingerprint
    assert not any(isinstance(step.op, BuildImage) for step in stale.steps)  # shipped by the workflow itself


def test_pull_fetches_only_missing_images_and_never_the_worker_image_for_a_master_only_host(tmp_path):
    images = "images:\n  source: pull\n  worker: reg.example/w:1\n  master: reg.example/m:1\n  broker: reg.example/b:1\n"
    cluster = make_cluster(tmp_path, lambda t: t.replace("containers: 2", "containers: 0") + images)
    assert image_plan(cluster, "gpu-box", {}) == [("master", "pull"), ("broker", "pull")]
    assert image_plan(cluster, "gpu-box", {"reg.example/m:1": "sha256:m", "reg.example/b:1": None}) == [
        ("master", "present"), ("broker", "pull")]
    assert image_plan(cluster, "pi1", {"reg.example/w:1": "sha256:w"}) == [("worker", "present")]
    assert image_plan(cluster, "pi1", {}) == [("worker", "pull")]
    pulls = [step.text() for step in plan_for(cluster, "gpu-box", host_facts("gpu-box", image_ids={})).steps
             if step.description.startswith("pull")]
    assert pulls == ["docker pull reg.example/m:1", "docker pull reg.example/b:1"]


# --------------------------------------------------------------------------- a host leaving, and clean


STATE = "/home/me/.infra/lab"


def clean_plan(host: str, record: HostRecord | None, **kw):
    settings = dict(containers=[], networks=[], volumes=[], files=False, remove_volumes=False)
    return plan_clean(host, record, cluster="lab", state_dir=STATE, **{**settings, **kw})


def folder_steps(plan) -> list[tuple[str, str]]:
    return [(removal.folder, removal.step.text()) for removal in plan.folders]


def test_a_host_leaving_the_cluster_has_all_its_containers_and_networks_removed_and_its_data_kept():
    record = HostRecord("192.168.1.30", "pi", containers={"lab-worker-pi1-1": {"id": "i1", "role": "worker"}},
                        volumes=["lab-broker-data"], files=["/home/pi/infra/lab/wordcount"],
                        secret_dirs=["/home/pi/infra/lab/.infra"])
    # As `up` retires a departed host: what it finds by label, no files, no volumes.
    plan = clean_plan("pi1", record, containers=["lab-worker-pi1-1", "lab-worker-pi1-2"], networks=["lab-net"])
    assert plan.containers == ["lab-worker-pi1-1", "lab-worker-pi1-2"]
    assert [(step.description, step.text()) for step in plan.steps] == [
        ("remove 2 container(s)", "docker rm --force lab-worker-pi1-1 lab-worker-pi1-2"),
        ("network lab-net", "docker network rm lab-net"),
    ]
    assert plan.steps[0].records == (Record("remove_container", "lab-worker-pi1-1"),
                                     Record("remove_container", "lab-worker-pi1-2"))
    # The secret folder goes only if its cluster folder holds the marker naming `lab` (checked on the host).
    assert folder_steps(plan) == [("/home/pi/infra/lab/.infra", shlex.join(
        remove_owned_folder("/home/pi/infra/lab/.infra", "/home/pi/infra/lab", "lab")))]
    assert plan.folders[0].step.records == (Record("remove_secret_dir", "/home/pi/infra/lab/.infra"),)
    assert plan.removed() == ["remove 2 container(s)", "network lab-net"]  # folders: as the host answers
    assert plan.planned() == ["remove 2 container(s)", "network lab-net", "folder /home/pi/infra/lab/.infra"]


def test_clean_removes_what_the_manifest_recorded_and_what_carries_the_label():
    record = HostRecord("192.168.1.20", containers={"lab-broker": {"id": "c0", "role": "broker"}},
                        networks=["lab-net"], volumes=["lab-broker-data"], files=["/home/alice/infra/lab/wordcount"],
                        secret_dirs=["/home/alice/infra/lab/.infra"])
    plan = clean_plan("gpu-box", record, containers=["lab-master"], networks=["lab-net", "lab-old-net"],
                      volumes=["lab-results-data"], files=True, remove_volumes=True)
    assert [step.text() for step in plan.steps] == [
        "docker rm --force lab-broker lab-master",
        "docker network rm lab-net",
        "docker network rm lab-old-net",
        "docker volume rm --force lab-broker-data",
        "docker volume rm --force lab-results-data",
    ]
    assert [step.op for step in plan.steps[3:5]] == [RemoveVolume("lab-broker-data"), RemoveVolume("lab-results-data")]
    # --files: the whole cluster folder holding the project copy (project, output, secrets, marker).
    assert [removal.folder for removal in plan.folders] == ["/home/alice/infra/lab/.infra", "/home/alice/infra/lab"]
    assert plan.folders[1].step.command == tuple(
        remove_owned_folder("/home/alice/infra/lab", "/home/alice/infra/lab", "lab"))
    assert plan.folders[1].step.records == (Record("remove_files", "/home/alice/infra/lab/wordcount"),)


def test_clean_without_volumes_or_files_keeps_them():
    record = HostRecord("h", volumes=["lab-broker-data"], files=["/srv/infra/lab/wordcount"])
    plan = clean_plan("gpu-box", record, volumes=["lab-broker-data"])
    assert plan.steps == [] and plan.folders == [] and plan.removed() == []


def test_clean_refuses_folders_that_are_not_two_levels_deep_but_forgets_them():
    record = HostRecord("h", secret_dirs=["/home", "relative/dir", "/srv/../etc"], files=["/srv/wc", "/a/./b"])
    plan = clean_plan("gpu-box", record, files=True)
    assert plan.refused == ["/home (not an absolute path two levels deep)",
                            "relative/dir (not an absolute path two levels deep)",
                            "/srv/../etc (not an absolute path two levels deep)",
                            "/srv/wc (not an absolute path two levels deep)",
                            "/a/./b (not an absolute path two levels deep)"]
    assert [(step.description, step.op, step.command) for step in plan.steps] == [
        ("forget /home", None, None), ("forget relative/dir", None, None), ("forget /srv/../etc", None, None),
        ("forget /srv/wc", None, None), ("forget /a/./b", None, None)]
    assert plan.steps[0].records == (Record("remove_secret_dir", "/home"),)
    assert plan.folders == [] and plan.removed() == []


def test_an_old_layouts_project_copy_is_deleted_only_if_its_folder_holds_the_marker_so_it_is_refused_there():
    record = HostRecord("h", files=["/home/pi/infra/wordcount"], secret_dirs=["/home/pi/infra/.infra-lab"])
    plan = clean_plan("pi1", record, files=True)
    assert folder_steps(plan) == [
        ("/home/pi/infra/.infra-lab", shlex.join(remove_owned_folder("/home/pi/infra/.infra-lab", "/home/pi/infra", "lab"))),
        ("/home/pi/infra", shlex.join(remove_owned_folder("/home/pi/infra", "/home/pi/infra", "lab"))),
    ]


def test_two_project_copies_recorded_in_one_cluster_folder_make_one_removal():
    record = HostRecord("h", files=["/srv/infra/lab/wordcount", "/srv/infra/lab/project"])
    plan = clean_plan("pi1", record, files=True)
    [removal] = plan.folders
    assert removal.folder == "/srv/infra/lab"
    assert removal.step.records == (Record("remove_files", "/srv/infra/lab/wordcount"),
                                    Record("remove_files", "/srv/infra/lab/project"))


def test_on_local_only_secret_folders_inside_the_state_dir_are_deleted_and_the_project_never():
    record = HostRecord("127.0.0.1", secret_dirs=[f"{STATE}/env", "/home/me/elsewhere/env"],
                        files=["/home/me/wordcount"])
    plan = clean_plan("local", record, files=True)
    assert folder_steps(plan) == [(f"{STATE}/env", shlex.join(remove_folder(f"{STATE}/env")))]
    assert plan.refused == [f"/home/me/elsewhere/env (not inside the state dir {STATE})",
                            "/home/me/wordcount (the project is used in place here)"]


def test_clean_of_a_host_the_manifest_does_not_know_removes_what_carries_the_label():
    plan = clean_plan("pi1", None, containers=["lab-worker-pi1-1"], volumes=["v"], files=True, remove_volumes=True)
    assert [step.text() for step in plan.steps] == ["docker rm --force lab-worker-pi1-1", "docker volume rm --force v"]
    assert plan.folders == []


# --------------------------------------------------------------------------- addresses


def test_the_master_address_is_the_advertised_one_when_set(tmp_path):
    cluster = make_cluster(tmp_path, lambda t: t.replace("    host: gpu-box\n  workers",
                                                         "    host: gpu-box\n    advertise_address: 10.8.0.1\n  workers"))
    assert master_address(cluster, master_peer="192.168.1.99") == "10.8.0.1"


def test_a_remote_master_is_reached_where_infra_reached_it_else_at_its_configured_address(cluster):
    assert master_address(cluster, master_peer="192.168.1.99") == "192.168.1.99"
    assert master_address(cluster) == "192.168.1.20"


def test_a_local_master_is_reached_on_the_route_to_the_workers_else_on_loopback(tmp_path):
    cluster = make_cluster(tmp_path, lambda t: t.replace("master:\n    host: gpu-box", "master:\n    host: local"))
    assert master_address(cluster, towards_workers="192.168.1.5") == "192.168.1.5"
    assert master_address(cluster) == "127.0.0.1"


def test_workers_on_the_master_host_use_loopback_and_the_others_the_master_address(cluster):
    assert broker_address_for(cluster, cluster.hosts["gpu-box"], "192.168.1.20") == "127.0.0.1"
    assert broker_address_for(cluster, cluster.hosts["pi1"], "192.168.1.20") == "192.168.1.20"


def test_flower_and_broker_urls_for_people_use_the_published_ports_and_hide_the_password(tmp_path):
    published = "    host: gpu-box\n    publish_flower: true\n  workers:"
    cluster = make_cluster(tmp_path, lambda t: t.replace("flower: 5555", "flower: 5600")
                           .replace("    host: gpu-box\n  workers:", published))
    assert flower_url(cluster, "192.168.1.20") == "https://192.168.1.20:5600"
    assert broker_url_hidden(cluster, "worker", "192.168.1.20") == "amqps://worker:****@192.168.1.20:5671/lab"
    plain = make_cluster(tmp_path, lambda t: t.replace("ports:\n  broker: 5671\n", "tls: false\nports:\n")
                         .replace("    host: gpu-box\n  workers:", published))
    assert flower_url(plain, "192.168.1.20") == "http://192.168.1.20:5555"
    assert broker_url_hidden(plain, "worker", "192.168.1.20") == "amqp://worker:****@192.168.1.20:5672/lab"


# --------------------------------------------------------------------------- worker nodes


def test_expected_worker_nodes_name_every_worker_container_with_its_host(cluster):
    assert expected_worker_nodes(cluster) == [
        "lab-worker-gpu-box-1@gpu-box", "lab-worker-gpu-box-2@gpu-box", "lab-worker-pi1-1@pi1",
    ]


def test_expected_worker_nodes_match_the_hostname_given_to_each_worker(tmp_path):
    cluster = make_cluster(tmp_path, lambda t: t + "    - host: pi1\n      containers: 2\n    - host: local\n"
                                                   "      containers: 0\n")
    hostnames = []
    for host in ("gpu-box", "pi1"):
        for spec in specs_by_name(cluster, host).values():
            if spec.role == "worker":
                hostnames.append(spec.command[spec.command.index("--hostname") + 1])
    assert expected_worker_nodes(cluster) == hostnames
    assert len(hostnames) == 5


def test_the_broker_password_hash_is_rabbitmqs_salted_sha256_and_stable():
    import base64
    import hashlib

    stored = base64.b64decode(rabbitmq_password_hash("s3cret"))
    salt, digest = stored[:4], stored[4:]
    assert digest == hashlib.sha256(salt + b"s3cret").digest()
    assert rabbitmq_password_hash("s3cret") == rabbitmq_password_hash("s3cret")
    assert rabbitmq_password_hash("s3cret") != rabbitmq_password_hash("other")


def test_an_ipv6_master_address_is_bracketed_in_every_url(tmp_path):
    from infra.plans.addresses import broker_url_hidden, flower_url

    cluster = make_cluster(tmp_path, lambda t: t.replace("    host: gpu-box\n  workers:",
                                                         "    host: gpu-box\n    publish_flower: true\n  workers:"))
    pi1 = cluster.hosts["pi1"]
    worker_env, _ = secret_files_for(cluster, pi1, host_layout(cluster, pi1, host_facts("pi1")), SECRETS, "fd00::20",
                                     IDENTITY)
    assert "@[fd00::20]:5671/lab" in worker_env.content and "@[fd00::20]:6379/0" in worker_env.content
    assert flower_url(cluster, "fd00::20") == "https://[fd00::20]:5555"
    assert broker_url_hidden(cluster, "worker", "fd00::20") == "amqps://worker:****@[fd00::20]:5671/lab"
    assert flower_url(cluster, "192.168.1.20") == "https://192.168.1.20:5555"
