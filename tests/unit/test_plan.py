"""What runs where: plans from a cluster file and host facts, checked without any host."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import pytest

from infra.config import Cluster, parse_cluster
from infra.facts.host import HostFacts, ObservedContainer
from infra.plan import (
    rabbitmq_password_hash,
    ContainerChange,
    HostLayout,
    HostPlan,
    build_argv,
    desired_containers,
    diff_containers,
    env_files_for,
    expected_worker_nodes,
    host_layout,
    images_needed,
    plan_host,
    plan_images,
    removal_plan,
)
from infra.secrets import Secrets

FIXTURES = Path(__file__).parent / "fixtures"
MASTER_ADDRESS = "192.168.1.20"
WORKER_TAG, MASTER_TAG, BROKER_TAG = "infra-lab-worker:latest", "infra-lab-master:latest", "infra-lab-broker:latest"
IMAGE_IDS = {WORKER_TAG: "sha256:w1", MASTER_TAG: "sha256:m1", BROKER_TAG: "sha256:b1"}
SECRETS = Secrets(broker_user="infra", broker_password="Brk-pw_0123456789abcdef", results_password="Res-pw_0123456789abcdef",
                  flower_user="admin", flower_password="Flw-pw_0123456789")


def make_cluster(tmp_path: Path, edit: Callable[[str], str] = lambda text: text) -> Cluster:
    """The fixture cluster (gpu-box: master + 2 workers, pi1: 1 worker), optionally edited."""
    (tmp_path / "wordcount").mkdir(exist_ok=True)
    text = edit((FIXTURES / "plan_cluster.yaml").read_text())
    return parse_cluster(text, filename="cluster.yaml", base_dir=tmp_path)


def host_facts(host: str, containers=(), image_ids=None) -> HostFacts:
    home, uid = {"gpu-box": ("/home/alice", 1000), "pi1": ("/home/pi", 1001), "local": ("/home/me", 501)}[host]
    return HostFacts(home=home, uid=uid, gid=uid + 100, arch="x86_64", docker_version="27.3.1", docker_problem="",
                     containers=tuple(containers), image_ids=dict(IMAGE_IDS if image_ids is None else image_ids))


def plan_for(cluster: Cluster, host: str, facts: HostFacts | None = None, *, secrets: Secrets = SECRETS,
             master_address: str = MASTER_ADDRESS, local_ids=None) -> HostPlan:
    facts = facts or host_facts(host)
    return plan_host(cluster, cluster.hosts[host], facts, secrets, master_address, local_ids or {})


def running_as_planned(plan: HostPlan, state: str = "running") -> list[ObservedContainer]:
    """The containers a host would have after `up` carried out `plan`."""
    return [
        ObservedContainer(name=c.name, id=f"id-{c.name}", image_id=IMAGE_IDS.get(c.spec.image, ""), state=state,
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


@pytest.fixture
def cluster(tmp_path) -> Cluster:
    return make_cluster(tmp_path)


# --------------------------------------------------------------------------- host layout


def test_remote_layout_with_a_relative_remote_path_lives_in_the_home_folder(cluster):
    layout = host_layout(cluster, cluster.hosts["gpu-box"], host_facts("gpu-box"))
    assert layout == HostLayout(
        root="/home/alice/infra",
        project_dir="/home/alice/infra/wordcount",
        env_dir="/home/alice/infra/.infra-lab",
        build_dir="/home/alice/infra/.infra-lab/build",
    )
    assert layout.env_file("worker") == "/home/alice/infra/.infra-lab/worker.env"


@pytest.mark.parametrize(
    ("remote_path", "root"),
    [("/srv/infra", "/srv/infra"), ("/srv/infra/", "/srv/infra"), ("~/jobs", "/home/pi/jobs"), ("a/b", "/home/pi/a/b")],
)
def test_remote_layout_for_absolute_and_home_relative_remote_paths(tmp_path, remote_path, root):
    cluster = make_cluster(tmp_path, lambda t: t.replace("remote_path: infra", f"remote_path: {remote_path}"))
    layout = host_layout(cluster, cluster.hosts["pi1"], host_facts("pi1"))
    assert layout.root == root
    assert layout.project_dir == f"{root}/wordcount"
    assert layout.env_dir == f"{root}/.infra-lab"


def test_local_layout_uses_the_project_in_place_and_the_state_dir(tmp_path):
    cluster = make_cluster(tmp_path, lambda t: t + "    - host: local\n")
    layout = host_layout(cluster, cluster.hosts["local"], host_facts("local"))
    state = tmp_path.resolve() / ".infra" / "lab"
    assert layout == HostLayout(
        root=str(state),
        project_dir=str(tmp_path.resolve() / "wordcount"),
        env_dir=str(state / "env"),
        build_dir=str(state / "build"),
    )


# --------------------------------------------------------------------------- desired containers


def test_the_master_host_runs_broker_results_master_flower_and_its_workers(cluster):
    specs = specs_by_name(cluster, "gpu-box")
    assert [(s.name, s.role) for s in specs.values()] == [
        ("lab-broker", "broker"), ("lab-results", "results"), ("lab-master", "master"), ("lab-flower", "flower"),
        ("lab-worker-gpu-box-1", "worker"), ("lab-worker-gpu-box-2", "worker"),
    ]
    assert all(s.host == "gpu-box" for s in specs.values())


def test_the_broker_publishes_its_port_keeps_data_in_a_volume_and_runs_as_its_own_user(cluster):
    broker = specs_by_name(cluster, "gpu-box")["lab-broker"]
    assert broker.image == BROKER_TAG
    assert broker.ports == ((5672, 5672),)
    assert broker.volumes == (("lab-broker-data", "/var/lib/rabbitmq", "rw"),)
    assert (broker.network, broker.network_alias) == ("lab-net", "broker")
    assert broker.env_file == "/home/alice/infra/.infra-lab/broker.env"
    assert broker.user is None


def test_the_result_backend_runs_from_the_master_image(cluster):
    results = specs_by_name(cluster, "gpu-box")["lab-results"]
    assert results.image == MASTER_TAG
    assert results.command == ("infra-results",)
    assert results.ports == ((6379, 6379),)
    assert results.volumes == (("lab-results-data", "/data", "rw"),)
    assert (results.network, results.network_alias) == ("lab-net", "results")
    assert results.env_file == "/home/alice/infra/.infra-lab/results.env"


def test_the_master_container_idles_with_the_project_writable_as_the_ssh_user(cluster):
    master = specs_by_name(cluster, "gpu-box")["lab-master"]
    assert master.command == ("infra-idle",)
    assert master.volumes == (("/home/alice/infra/wordcount", "/project", "rw"),)
    assert master.user == "1000:1100"
    assert master.workdir == "/project"
    assert master.network == "lab-net"
    assert master.ports == ()
    assert master.env_file == "/home/alice/infra/.infra-lab/celery.env"


def test_flower_serves_the_app_on_its_port_with_the_project_read_only(cluster):
    flower = specs_by_name(cluster, "gpu-box")["lab-flower"]
    assert flower.command == ("celery", "--app", "wordcount", "flower", "--port=5555")
    assert flower.ports == ((5555, 5555),)
    assert flower.volumes == (("/home/alice/infra/wordcount", "/project", "ro"),)
    assert flower.env_file == "/home/alice/infra/.infra-lab/flower.env"
    assert flower.user == "1000:1100"


def test_workers_on_the_master_host_use_host_networking_and_their_group_settings(cluster):
    worker = specs_by_name(cluster, "gpu-box")["lab-worker-gpu-box-2"]
    assert worker.image == WORKER_TAG
    assert worker.network == "host"
    assert worker.ports == ()
    assert worker.user == "1000:1100"
    assert worker.volumes == (("/home/alice/infra/wordcount", "/project", "ro"),)
    assert worker.env_file == "/home/alice/infra/.infra-lab/worker.env"
    assert worker.command == (
        "celery", "--app", "wordcount", "worker", "--hostname", "lab-worker-gpu-box-2@gpu-box",
        "--queues", "celery", "--pool", "prefork", "--loglevel", "INFO", "--task-events", "--concurrency", "4",
    )


def test_a_worker_host_runs_only_its_workers_with_its_own_uid_queues_pool_and_concurrency(cluster):
    specs = specs_by_name(cluster, "pi1")
    assert list(specs) == ["lab-worker-pi1-1"]
    worker = specs["lab-worker-pi1-1"]
    assert worker.user == "1001:1101"
    assert worker.volumes == (("/home/pi/infra/wordcount", "/project", "ro"),)
    assert worker.env_file == "/home/pi/infra/.infra-lab/worker.env"
    command = list(worker.command)
    assert command[command.index("--hostname") + 1] == "lab-worker-pi1-1@pi1"
    assert command[command.index("--queues") + 1] == "celery,heavy"
    assert command[command.index("--pool") + 1] == "threads"
    assert command[command.index("--loglevel") + 1] == "DEBUG"
    assert command[command.index("--concurrency") + 1] == "2"


def test_without_a_concurrency_celery_picks_the_cpu_count(tmp_path):
    cluster = make_cluster(tmp_path, lambda t: t.replace("      concurrency: 2\n", ""))
    assert "--concurrency" not in specs_by_name(cluster, "pi1")["lab-worker-pi1-1"].command


def test_two_groups_on_one_host_number_their_workers_in_sequence(tmp_path):
    cluster = make_cluster(tmp_path, lambda t: t + "    - host: pi1\n      containers: 2\n      queues: [io]\n")
    specs = specs_by_name(cluster, "pi1")
    assert list(specs) == ["lab-worker-pi1-1", "lab-worker-pi1-2", "lab-worker-pi1-3"]
    assert "io" in specs["lab-worker-pi1-3"].command and "heavy" not in " ".join(specs["lab-worker-pi1-3"].command)


def test_local_workers_mount_the_project_where_it_is(tmp_path):
    cluster = make_cluster(tmp_path, lambda t: t + "    - host: local\n")
    specs = specs_by_name(cluster, "local")
    assert list(specs) == ["lab-worker-local-1"]
    assert specs["lab-worker-local-1"].volumes == ((str(tmp_path.resolve() / "wordcount"), "/project", "ro"),)
    assert specs["lab-worker-local-1"].env_file == str(tmp_path.resolve() / ".infra" / "lab" / "env" / "worker.env")


def test_run_argv_of_a_worker_is_exactly_this(cluster):
    worker = specs_by_name(cluster, "pi1")["lab-worker-pi1-1"]
    assert worker.run_argv("lab", "f00") == [
        "docker", "run", "--detach", "--name", "lab-worker-pi1-1",
        "--label", "infra.cluster=lab", "--label", "infra.role=worker", "--label", "infra.host=pi1",
        "--label", "infra.spec=f00",
        "--restart", "unless-stopped", "--log-opt", "max-size=20m", "--log-opt", "max-file=3",
        "--network", "host",
        "--volume", "/home/pi/infra/wordcount:/project:ro",
        "--env-file", "/home/pi/infra/.infra-lab/worker.env",
        "--user", "1001:1101", "--workdir", "/project",
        WORKER_TAG,
        "celery", "--app", "wordcount", "worker", "--hostname", "lab-worker-pi1-1@pi1", "--queues", "celery,heavy",
        "--pool", "threads", "--loglevel", "DEBUG", "--task-events", "--concurrency", "2",
    ]


def test_run_argv_of_the_broker_publishes_and_joins_the_network_under_its_alias(cluster):
    argv = specs_by_name(cluster, "gpu-box")["lab-broker"].run_argv("lab", "abc")
    assert argv[argv.index("--network") + 1] == "lab-net"
    assert argv[argv.index("--network-alias") + 1] == "broker"
    assert argv[argv.index("--publish") + 1] == "5672:5672"
    assert argv[argv.index("--volume") + 1] == "lab-broker-data:/var/lib/rabbitmq:rw"
    assert "--user" not in argv
    assert argv[-1] == BROKER_TAG


# --------------------------------------------------------------------------- secrets and env files


def test_no_argv_on_any_host_contains_a_secret(tmp_path):
    cluster = make_cluster(tmp_path, lambda t: t + "    - host: local\n")
    secrets = Secrets.generate()
    assert len(secrets.values()) == 3 and all(len(v) >= 20 for v in secrets.values())
    argvs = []
    for host in ("gpu-box", "pi1", "local"):
        plan = plan_for(cluster, host, secrets=secrets)
        assert plan.containers, host
        for change in plan.containers:
            argvs.append(change.spec.run_argv(cluster.name, change.fingerprint))
            argvs.append([change.describe()])
        for step in plan.images:
            argvs.append(build_argv(cluster, step.role, plan.layout.build_dir))
            argvs.append([step.describe()])
    assert len(argvs) > 20
    for argv in argvs:
        for word in argv:
            for secret in secrets.values():
                assert secret not in word


def test_env_files_of_the_master_host_carry_the_secrets(cluster):
    plan = plan_for(cluster, "gpu-box")
    files = {f.name: f for f in plan.env_files}
    assert list(files) == ["broker", "results", "celery", "flower", "worker"]
    assert all(f.path == f"/home/alice/infra/.infra-lab/{name}.env" for name, f in files.items())
    assert files["broker"].content == (
        "RABBITMQ_DEFAULT_USER=infra\nRABBITMQ_DEFAULT_PASS=Brk-pw_0123456789abcdef\n"
        f"INFRA_BROKER_PASSWORD_HASH={rabbitmq_password_hash('Brk-pw_0123456789abcdef')}\n")
    assert files["results"].content == "REDIS_PASSWORD=Res-pw_0123456789abcdef\n"
    assert files["celery"].content == (
        "INFRA_CLUSTER=lab\n"
        "CELERY_BROKER_URL=amqp://infra:Brk-pw_0123456789abcdef@broker:5672//\n"
        "CELERY_RESULT_BACKEND=redis://:Res-pw_0123456789abcdef@results:6379/0\n")
    assert "FLOWER_BASIC_AUTH=admin:Flw-pw_0123456789\n" in files["flower"].content
    assert "FLOWER_BROKER_API=http://infra:Brk-pw_0123456789abcdef@broker:15672/api/\n" in files["flower"].content
    assert "CELERY_BROKER_URL=amqp://infra:Brk-pw_0123456789abcdef@broker:5672//\n" in files["flower"].content


def test_workers_on_the_master_host_reach_the_broker_on_127_0_0_1(cluster):
    worker_env = next(f for f in plan_for(cluster, "gpu-box").env_files if f.name == "worker")
    assert worker_env.content == (
        "INFRA_CLUSTER=lab\n"
        "CELERY_BROKER_URL=amqp://infra:Brk-pw_0123456789abcdef@127.0.0.1:5672//\n"
        "CELERY_RESULT_BACKEND=redis://:Res-pw_0123456789abcdef@127.0.0.1:6379/0\n")


def test_workers_on_other_hosts_reach_the_broker_on_the_master_address_and_published_ports(tmp_path):
    cluster = make_cluster(tmp_path, lambda t: t.replace("broker: 5672", "broker: 5700").replace(
        "results: 6379", "results: 6400"))
    files = plan_for(cluster, "pi1").env_files
    assert [f.name for f in files] == ["worker"]
    assert files[0].path == "/home/pi/infra/.infra-lab/worker.env"
    assert files[0].content == (
        "INFRA_CLUSTER=lab\n"
        "CELERY_BROKER_URL=amqp://infra:Brk-pw_0123456789abcdef@192.168.1.20:5700//\n"
        "CELERY_RESULT_BACKEND=redis://:Res-pw_0123456789abcdef@192.168.1.20:6400/0\n")


def test_a_master_host_without_workers_has_no_worker_env_file(tmp_path):
    cluster = make_cluster(tmp_path, lambda t: t.replace("containers: 2", "containers: 0"))
    facts = host_facts("gpu-box")
    layout = host_layout(cluster, cluster.hosts["gpu-box"], facts)
    names = [f.name for f in env_files_for(cluster, cluster.hosts["gpu-box"], layout, SECRETS, MASTER_ADDRESS)]
    assert names == ["broker", "results", "celery", "flower"]


# --------------------------------------------------------------------------- fingerprints


def test_the_fingerprint_is_stable_for_the_same_spec_image_and_env(cluster):
    first = specs_by_name(cluster, "gpu-box")
    again = specs_by_name(cluster, "gpu-box")
    for name, spec in first.items():
        assert spec.fingerprint("sha256:w1", "env1") == again[name].fingerprint("sha256:w1", "env1")


def test_the_fingerprint_changes_with_the_image_id(cluster):
    spec = specs_by_name(cluster, "pi1")["lab-worker-pi1-1"]
    assert spec.fingerprint("sha256:w1", "env1") != spec.fingerprint("sha256:w2", "env1")


def test_the_fingerprint_changes_with_the_env_file(cluster):
    spec = specs_by_name(cluster, "pi1")["lab-worker-pi1-1"]
    assert spec.fingerprint("sha256:w1", "env1") != spec.fingerprint("sha256:w1", "env2")


@pytest.mark.parametrize("change", [
    {"command": ("celery", "--app", "wordcount", "worker", "--concurrency", "8")},
    {"user": "0:0"},
    {"volumes": (("/elsewhere", "/project", "ro"),)},
    {"image": "other:latest"},
    {"restart": "no"},
])
def test_the_fingerprint_changes_with_any_setting(cluster, change):
    spec = specs_by_name(cluster, "pi1")["lab-worker-pi1-1"]
    assert spec.fingerprint("sha256:w1", "env1") != dataclasses.replace(spec, **change).fingerprint("sha256:w1", "env1")


def test_planning_twice_gives_the_same_fingerprints(cluster):
    first = {c.name: c.fingerprint for c in plan_for(cluster, "gpu-box").containers}
    again = {c.name: c.fingerprint for c in plan_for(cluster, "gpu-box").containers}
    assert first == again and all(first.values())


def test_new_secrets_change_every_fingerprint_because_every_env_file_changes(cluster):
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


def test_a_stopped_container_is_started(cluster):
    running = running_as_planned(plan_for(cluster, "gpu-box"))
    running = [dataclasses.replace(c, state="exited") if c.name == "lab-master" else c for c in running]
    plan = plan_for(cluster, "gpu-box", host_facts("gpu-box", running))
    assert [(c.action, c.name, c.reason) for c in plan.changes] == [("start", "lab-master", "was exited")]


def test_a_restarting_container_is_left_alone(cluster):
    running = running_as_planned(plan_for(cluster, "pi1"), state="restarting")
    assert plan_for(cluster, "pi1", host_facts("pi1", running)).changes == []


def test_a_labelled_container_no_longer_wanted_is_removed_first(cluster):
    running = running_as_planned(plan_for(cluster, "pi1"))
    stray = ObservedContainer(name="lab-worker-pi1-7", id="x7", image_id="sha256:w0", state="running",
                              labels={"infra.cluster": "lab", "infra.role": "worker", "infra.spec": "old"})
    plan = plan_for(cluster, "pi1", host_facts("pi1", [*running, stray]))
    assert [(c.action, c.name, c.role) for c in plan.containers] == [
        ("remove", "lab-worker-pi1-7", "worker"), ("keep", "lab-worker-pi1-1", "worker"),
    ]
    assert plan.changes[0].describe() == "remove lab-worker-pi1-7 (no longer wanted)"


def test_diff_with_nothing_wanted_and_nothing_found_is_empty():
    assert diff_containers([], []) == []


def test_a_host_leaving_the_cluster_has_all_its_containers_removed():
    facts = host_facts("pi1", [ObservedContainer("lab-worker-pi1-1", "i1", "sha256:w1", "running",
                                                 {"infra.role": "worker"})])
    assert removal_plan(facts) == [
        ContainerChange("remove", "lab-worker-pi1-1", "worker", "host left the cluster", existing=facts.containers[0])]


# --------------------------------------------------------------------------- images


def image_plan(cluster: Cluster, host: str, present: dict, local_ids: dict | None = None):
    facts = host_facts(host, image_ids=present)
    return [(s.role, s.action) for s in plan_images(cluster, cluster.hosts[host], facts, local_ids or {})]


def test_build_builds_every_needed_image_on_each_host_whether_present_or_not(cluster):
    assert image_plan(cluster, "gpu-box", {}) == [("worker", "build"), ("master", "build"), ("broker", "build")]
    assert image_plan(cluster, "gpu-box", IMAGE_IDS) == [("worker", "build"), ("master", "build"), ("broker", "build")]
    assert image_plan(cluster, "pi1", IMAGE_IDS) == [("worker", "build")]


def test_build_on_a_master_host_without_workers_still_builds_the_worker_image_first(tmp_path):
    cluster = make_cluster(tmp_path, lambda t: t.replace("containers: 2", "containers: 0"))
    assert images_needed(cluster, cluster.hosts["gpu-box"]) == ["worker", "master", "broker"]


def test_build_argv_passes_the_base_image_and_for_the_master_the_worker_image(cluster):
    argv = build_argv(cluster, "master", "/ctx")
    assert argv == ["docker", "build", "--network", "host", "--file", "/ctx/Dockerfile.master",
                    "--tag", MASTER_TAG, "--label", "infra.cluster=lab",
                    "--build-arg", "BASE_IMAGE=python:3.11-slim-bookworm",
                    "--build-arg", f"WORKER_IMAGE={WORKER_TAG}", "/ctx"]
    assert "WORKER_IMAGE" not in " ".join(build_argv(cluster, "worker", "/ctx"))


def test_ship_sends_images_the_host_lacks_or_has_in_another_version(tmp_path):
    cluster = make_cluster(tmp_path, lambda t: t + "images:\n  source: ship\n")
    local = {WORKER_TAG: "sha256:w1"}
    assert image_plan(cluster, "pi1", {}, local) == [("worker", "ship")]
    assert image_plan(cluster, "pi1", {WORKER_TAG: "sha256:old"}, local) == [("worker", "ship")]
    assert image_plan(cluster, "pi1", {WORKER_TAG: "sha256:w1"}, local) == [("worker", "present")]


def test_ship_builds_on_the_local_machine_unless_already_built(tmp_path):
    cluster = make_cluster(tmp_path, lambda t: t + "    - host: local\nimages:\n  source: ship\n")
    assert image_plan(cluster, "local", {}, {}) == [("worker", "build")]
    assert image_plan(cluster, "local", {}, {WORKER_TAG: "sha256:w1"}) == [("worker", "present")]


def test_ship_expects_the_shipped_image_ids_in_the_container_fingerprints(tmp_path):
    cluster = make_cluster(tmp_path, lambda t: t + "images:\n  source: ship\n")
    local = {WORKER_TAG: "sha256:new"}
    stale = plan_for(cluster, "pi1", host_facts("pi1", image_ids={WORKER_TAG: "sha256:old"}), local_ids=local)
    fresh = plan_for(cluster, "pi1", host_facts("pi1", image_ids={WORKER_TAG: "sha256:new"}), local_ids=local)
    assert stale.containers[0].fingerprint == fresh.containers[0].fingerprint


def test_pull_fetches_only_missing_images_and_never_the_worker_image_for_a_master_only_host(tmp_path):
    images = "images:\n  source: pull\n  worker: reg.example/w:1\n  master: reg.example/m:1\n  broker: reg.example/b:1\n"
    cluster = make_cluster(tmp_path, lambda t: t.replace("containers: 2", "containers: 0") + images)
    assert image_plan(cluster, "gpu-box", {}) == [("master", "pull"), ("broker", "pull")]
    assert image_plan(cluster, "gpu-box", {"reg.example/m:1": "sha256:m", "reg.example/b:1": None}) == [
        ("master", "present"), ("broker", "pull")]
    assert image_plan(cluster, "pi1", {"reg.example/w:1": "sha256:w"}) == [("worker", "present")]
    assert image_plan(cluster, "pi1", {}) == [("worker", "pull")]


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
