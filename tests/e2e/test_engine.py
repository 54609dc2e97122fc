"""The engine layer on real testbed hosts: the Docker SDK over the SSH connection infra holds.

Every engine operation runs against h1's own Docker engine (20.10, API 1.41) through
channels of one `SSHConnection`; the base image comes from this machine's engine through
save/load. h3's engine is stopped once, to see the diagnosis, and started again.
Everything made here carries the cluster label `engtest` and is removed at the end.
"""

from __future__ import annotations

import re
import threading
import time

import pytest
from docker.constants import DEFAULT_DOCKER_API_VERSION, MINIMUM_DOCKER_API_VERSION

from infra.commands.engine import (
    BuildImage,
    ContainerSpec,
    CreateNetwork,
    CreateVolume,
    EngineVersion,
    Exec,
    InspectContainers,
    InspectImages,
    ListContainers,
    ListNetworks,
    ListVolumes,
    Logs,
    RemoveContainers,
    RemoveNetwork,
    RemoveVolume,
    RestartContainer,
    RunContainer,
    StartContainer,
    cluster_labels,
)
from infra.config import Host
from infra.engine.transport import POOL_SIZE
from infra.engine.wire import negotiate_api_version
from infra.errors import EngineUnavailableError, RemoteCommandError
from infra.transport.connection import LocalConnection
from infra.transport.result import Limits
from infra.transport.ssh import SSHConnection
from infra.workflows.ship import ship_images

pytestmark = pytest.mark.e2e

CLUSTER = "engtest"
BASE = "infra-base:bookworm"
NETWORK = f"{CLUSTER}-net"
VOLUME = f"{CLUSTER}-data"
BUILT = f"{CLUSTER}-built:latest"
TIMESTAMPED = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z ")


def infra_host(testbed_host) -> Host:
    """A testbed machine as the cluster file would describe it (as tests/e2e/test_cluster.py does)."""
    entry = testbed_host.cluster_entry()
    return Host(name=testbed_host.name, address=entry["address"], user=entry["user"], port=entry["port"],
                key=entry["key"])


def spec(name: str, command: tuple[str, ...], **settings) -> ContainerSpec:
    return ContainerSpec(name=f"{CLUSTER}-{name}", role="worker", host="h1", image=BASE, command=command, **settings)


def run(engine, name: str, command: tuple[str, ...], **settings) -> str:
    return engine.apply(RunContainer(spec(name, command, **settings), cluster_labels(CLUSTER, role="worker")))


# The testbed's own known hosts file, holding its hosts' keys (never the user's ~/.ssh/known_hosts).
KNOWN_HOSTS: list = []


@pytest.fixture(scope="module")
def h1(testbed):
    KNOWN_HOSTS[:] = [testbed.known_hosts_path]
    return testbed.docker_hosts[0]


@pytest.fixture(scope="module")
def conn(h1):
    conn = SSHConnection(infra_host(h1), Limits(connect=10, known_hosts=str(KNOWN_HOSTS[0])))
    yield conn
    conn.close()


def remove_leftovers(engine, testbed, h1) -> None:
    """Whatever the tests made on h1, also after a failure (idempotent)."""
    names = tuple(c["Names"][0].lstrip("/") for c in engine.query(ListContainers(CLUSTER)))
    engine.apply(RemoveContainers(names))
    for network in engine.query(ListNetworks(CLUSTER)):
        engine.apply(RemoveNetwork(network))
    for volume in engine.query(ListVolumes(CLUSTER)):
        engine.apply(RemoveVolume(volume))
    testbed.exec_result(h1, ["docker", "image", "rm", "--force", BUILT])


@pytest.fixture(scope="module")
def engine(conn, testbed, h1):
    engine = conn.engine
    yield engine
    remove_leftovers(engine, testbed, h1)


@pytest.fixture(scope="module")
def local_engine():
    local = LocalConnection(Host(name="local", address="local"))
    yield local.engine
    local.close()


@pytest.fixture(scope="module")
def base_image(engine, local_engine, testbed, h1):
    """The base image on h1, shipped from this machine unless h1 has the same image already."""
    local_id = local_engine.query(InspectImages((BASE,)))[BASE]["Id"]
    on_host = engine.query(InspectImages((BASE,)))[BASE]
    shipped = None
    if not on_host or on_host["Id"] != local_id:
        started = time.monotonic()
        sent = ship_images(local_engine, engine, [BASE])
        shipped = (sent, time.monotonic() - started)
        print(f"\nshipped {BASE} to h1: {sent / 1e6:.0f} MB in {shipped[1]:.1f} s")
    yield {"id": local_id, "shipped": shipped}
    if shipped:  # leave h1 as the other tests expect it: without the base image
        remove_leftovers(engine, testbed, h1)
        testbed.exec_result(h1, ["docker", "image", "rm", BASE])


def test_the_engine_speaks_the_api_version_of_the_host(engine):
    version = engine.query(EngineVersion())
    assert engine.api_version == negotiate_api_version(version, DEFAULT_DOCKER_API_VERSION, MINIMUM_DOCKER_API_VERSION)
    if version["Version"].startswith("20.10"):  # Debian 12's docker.io, on the testbed hosts
        assert engine.api_version == "1.41"


def test_the_base_image_arrives_through_save_and_load(engine, base_image):
    if base_image["shipped"]:
        sent, _ = base_image["shipped"]
        assert sent > 50_000_000  # the whole image passed through, counted chunk by chunk
    assert engine.query(InspectImages((BASE,)))[BASE]["Id"] == base_image["id"]


def test_network_and_volume_are_created_listed_and_removed(engine):
    network_id = engine.apply(CreateNetwork(NETWORK, CLUSTER))
    assert re.fullmatch(r"[0-9a-f]{64}", network_id)
    assert engine.apply(CreateVolume(VOLUME, CLUSTER)) == VOLUME
    assert engine.query(ListNetworks(CLUSTER)) == [NETWORK]
    assert engine.query(ListVolumes(CLUSTER)) == [VOLUME]
    engine.apply(RemoveNetwork(NETWORK))
    engine.apply(RemoveVolume(VOLUME))
    engine.apply(RemoveNetwork(NETWORK))  # already gone: no error
    engine.apply(RemoveVolume(VOLUME))
    assert engine.query(ListNetworks(CLUSTER)) == []
    assert engine.query(ListVolumes(CLUSTER)) == []


def test_a_container_runs_with_every_setting_its_argv_shows(engine, base_image):
    engine.apply(CreateNetwork(NETWORK, CLUSTER))
    engine.apply(CreateVolume(VOLUME, CLUSTER))
    container_id = run(
        engine, "full", ("sleep", "600"), environment=(("GREETING", "hello world"), ("EMPTY", "")),
        network=NETWORK, network_alias="sleepy", hostname="napper", ports=((18080, 8080),),
        volumes=((VOLUME, "/data", "rw"),), user="root", workdir="/tmp", restart="on-failure:2",
    )
    [listed] = [c for c in engine.query(ListContainers(CLUSTER)) if c["Id"] == container_id]
    assert listed["Names"] == [f"/{CLUSTER}-full"] and listed["State"] == "running"
    assert listed["Labels"] == {"infra.cluster": CLUSTER, "infra.role": "worker"}
    assert "Env" not in listed and "Config" not in listed  # the list carries no environment

    [info] = engine.query(InspectContainers((f"{CLUSTER}-full", f"{CLUSTER}-missing")))
    host_config, config = info["HostConfig"], info["Config"]
    assert host_config["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 2}
    assert host_config["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "20m", "max-file": "3"}}
    assert host_config["NetworkMode"] == NETWORK
    assert host_config["PortBindings"] == {"8080/tcp": [{"HostIp": "", "HostPort": "18080"}]}
    assert host_config["Binds"] == [f"{VOLUME}:/data:rw"]
    assert "sleepy" in info["NetworkSettings"]["Networks"][NETWORK]["Aliases"]
    assert config["Hostname"] == "napper" and config["User"] == "root" and config["WorkingDir"] == "/tmp"
    assert config["Cmd"] == ["sleep", "600"]
    assert "GREETING=hello world" in config["Env"] and "EMPTY=" in config["Env"]

    engine.apply(RemoveContainers((f"{CLUSTER}-full",)))
    engine.apply(RemoveNetwork(NETWORK))
    engine.apply(RemoveVolume(VOLUME))


@pytest.fixture
def sleeper(engine, base_image):
    name = f"{CLUSTER}-sleeper"
    run(engine, "sleeper", ("sleep", "600"), environment=(("SECRET", "s3cr3t value"),), restart="no")
    yield name
    engine.apply(RemoveContainers((name,)))


def test_exec_streams_both_outputs_and_returns_the_exit_code(engine, sleeper):
    out, err = [], []
    result = engine.exec(
        Exec(sleeper, ("sh", "-c", "echo one; echo two >&2; printenv SECRET; pwd; exit 3"), workdir="/usr"),
        on_stdout=out.append, on_stderr=err.append,
    )
    assert result.exit_code == 3
    assert result.stdout == "one\ns3cr3t value\n/usr\n"
    assert result.stderr == "two\n"
    assert out == ["one", "s3cr3t value", "/usr"] and err == ["two"]
    assert engine.exec(Exec(sleeper, ("true",))).ok


def test_exec_gives_up_after_its_timeout_with_exit_code_124(engine, sleeper):
    started = time.monotonic()
    result = engine.exec(Exec(sleeper, ("sh", "-c", "echo started; sleep 30")), timeout=1.5)
    assert time.monotonic() - started < 5
    assert result.exit_code == 124
    assert result.stdout == "started\n"
    assert "timed out after 1.5 s" in result.stderr
    assert engine.query(EngineVersion())["ApiVersion"]  # the engine still answers


def test_exec_in_a_missing_container_is_a_one_line_error(engine):
    with pytest.raises(RemoteCommandError) as caught:
        engine.exec(Exec(f"{CLUSTER}-nowhere", ("true",)))
    message = str(caught.value)
    assert "\n" not in message
    assert message == f"h1: `docker exec {CLUSTER}-nowhere true` failed (exit 1): No such container: {CLUSTER}-nowhere"


def test_logs_follow_until_stopped_while_other_calls_go_on(engine, base_image):
    name = f"{CLUSTER}-talker"
    run(engine, "talker", ("sh", "-c", "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.1; done"))
    lines: list[str] = []
    stop = threading.Event()
    follower = threading.Thread(target=engine.logs, args=(Logs(name, follow=True), lines.append, stop), daemon=True)
    follower.start()
    deadline = time.monotonic() + 20
    while len(lines) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    # The follow holds one channel; queries and execs get others meanwhile.
    assert engine.query(InspectContainers((name,)))[0]["State"]["Running"]
    assert engine.exec(Exec(name, ("echo", "meanwhile"))).stdout == "meanwhile\n"
    stop.set()
    follower.join(5)
    assert not follower.is_alive()
    assert len(lines) >= 5
    assert all(TIMESTAMPED.match(line) for line in lines)
    assert [line.split(" ", 1)[1] for line in lines[:3]] == ["line 0", "line 1", "line 2"]

    tail: list[str] = []
    engine.logs(Logs(name, tail="2"), tail.append)
    assert len(tail) == 2 and all(TIMESTAMPED.match(line) for line in tail)
    engine.apply(RemoveContainers((name,)))


def test_many_calls_at_once_share_a_few_channels(engine, testbed, h1):
    failures: list[BaseException] = []

    def query_a_few() -> None:
        try:
            for _ in range(3):
                engine.query(ListContainers(CLUSTER))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=query_a_few) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == []
    # Afterwards only the idle pool stays open: a few `docker system dial-stdio` on the host.
    deadline = time.monotonic() + 10
    while True:
        count = int(testbed.exec_result(h1, ["pgrep", "-c", "-f", "docker system dial-stdio"]).stdout or 0)
        if count <= POOL_SIZE or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert 1 <= count <= POOL_SIZE


def test_logs_follow_returns_when_the_container_ends(engine, base_image):
    name = f"{CLUSTER}-brief"
    run(engine, "brief", ("sh", "-c", "echo first; sleep 1; echo last >&2"), restart="no")
    lines: list[str] = []
    started = time.monotonic()
    engine.logs(Logs(name, follow=True), lines.append)
    assert time.monotonic() - started < 15
    assert [line.split(" ", 1)[1] for line in lines] == ["first", "last"]
    engine.apply(RemoveContainers((name,)))


def test_restart_and_start(engine, sleeper, base_image):
    before = engine.query(InspectContainers((sleeper,)))[0]["State"]["StartedAt"]
    engine.apply(RestartContainer(sleeper, timeout=1))  # `sleep` as pid 1 ignores SIGTERM: killed after 1 s
    after = engine.query(InspectContainers((sleeper,)))[0]["State"]
    assert after["Running"] and after["StartedAt"] != before

    name = f"{CLUSTER}-napper"
    run(engine, "napper", ("sleep", "1"), restart="no")
    deadline = time.monotonic() + 15
    while engine.query(InspectContainers((name,)))[0]["State"]["Running"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert engine.query(InspectContainers((name,)))[0]["State"]["Status"] == "exited"
    engine.apply(StartContainer(name))
    assert engine.query(InspectContainers((name,)))[0]["State"]["Running"]
    engine.apply(RemoveContainers((name,)))


def test_removing_containers_tolerates_missing_ones(engine, base_image):
    run(engine, "doomed", ("sleep", "600"))
    engine.apply(RemoveContainers((f"{CLUSTER}-doomed", f"{CLUSTER}-never-was")))
    assert engine.query(InspectContainers((f"{CLUSTER}-doomed",))) == []


def test_a_tiny_build_streams_its_log_and_returns_the_image_id(engine, base_image, tmp_path):
    (tmp_path / "Dockerfile").write_text(
        f"FROM {BASE}\nARG GREETING\nCOPY hello.txt /hello.txt\nRUN echo \"$GREETING\" > /greeting\n")
    (tmp_path / "hello.txt").write_text("hello from the context\n")
    (tmp_path / "ignored.bin").write_bytes(b"x" * 1024)
    (tmp_path / ".dockerignore").write_text("ignored.bin\n")
    lines: list[str] = []
    image_id = engine.apply(BuildImage(BUILT, str(tmp_path), "Dockerfile", build_args=(("GREETING", "hi there"),),
                                       labels=(("infra.cluster", CLUSTER), ("infra.context", "abc"))),
                            on_line=lines.append)
    assert image_id.startswith("sha256:")
    assert any(line.startswith("Step 1/") for line in lines)
    image = engine.query(InspectImages((BUILT,)))[BUILT]
    assert image["Id"] == image_id
    assert image["Labels"] == {"infra.cluster": CLUSTER, "infra.context": "abc"}
    name = f"{CLUSTER}-built"
    engine.apply(RunContainer(ContainerSpec(name=name, role="worker", host="h1", image=BUILT, command=("sleep", "60")),
                              cluster_labels(CLUSTER)))
    result = engine.exec(Exec(name, ("sh", "-c", "cat /greeting /hello.txt; ls /ignored.bin")))
    assert result.stdout == "hi there\nhello from the context\n" and result.exit_code != 0
    engine.apply(RemoveContainers((name,)))


def test_a_failing_build_says_why_in_one_line(engine, base_image, tmp_path):
    (tmp_path / "Dockerfile").write_text(f"FROM {BASE}\nRUN echo about to fail && exit 7\n")
    with pytest.raises(RemoteCommandError) as caught:
        engine.apply(BuildImage(f"{CLUSTER}-broken:latest", str(tmp_path), "Dockerfile"))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("h1: `docker build --network host")
    assert "about to fail" in message and "returned a non-zero code: 7" in message


def test_a_stopped_engine_is_diagnosed_and_found_again_once_started(testbed):
    h3 = testbed.docker_hosts[2]
    conn = SSHConnection(infra_host(h3), Limits(connect=10, known_hosts=str(testbed.known_hosts_path)))
    try:
        engine = conn.engine
        engine.query(ListContainers(CLUSTER))  # a pooled channel, open before the engine stops
        testbed.exec(h3, "pkill -x dockerd; for i in $(seq 100); do pgrep -x dockerd >/dev/null || exit 0; "
                         "sleep 0.2; done; exit 1")
        try:
            with pytest.raises(EngineUnavailableError) as caught:
                engine.query(ListContainers(CLUSTER))
            assert caught.value.problem == "the Docker engine is not running"
            assert str(caught.value) == "h3: the Docker engine is not running"

            fresh = SSHConnection(infra_host(h3), Limits(connect=10, known_hosts=str(testbed.known_hosts_path)))
            try:
                with pytest.raises(EngineUnavailableError) as caught:
                    fresh.engine
                assert caught.value.problem == "the Docker engine is not running"
            finally:
                fresh.close()
        finally:
            start_dockerd(testbed, h3)
        assert engine.query(ListContainers(CLUSTER)) == []  # the same engine object works again
    finally:
        conn.close()


def start_dockerd(testbed, host) -> None:
    """Start the host's engine as its entrypoint does, and wait until it answers."""
    testbed.exec(host, "setsid dockerd >>/var/log/dockerd.log 2>&1 </dev/null &")
    deadline = time.monotonic() + 60
    while testbed.exec_result(host, ["docker", "info"]).returncode != 0:
        if time.monotonic() > deadline:
            testbed.restart(host)  # leave the shared testbed usable for the tests after this one
            pytest.fail(f"dockerd on {host.name} did not come back:\n{testbed.diagnostics(host)}")
        time.sleep(0.2)


def test_queries_through_the_engine_cost_far_less_than_docker_commands_over_ssh(engine, conn):
    engine.query(ListContainers(CLUSTER))  # a warm channel, as in any run
    started = time.monotonic()
    for _ in range(20):
        engine.query(ListContainers(CLUSTER))
    through_engine = time.monotonic() - started
    command = f"docker ps --all --no-trunc --filter label=infra.cluster={CLUSTER} --format '{{{{json .}}}}'"
    started = time.monotonic()
    for _ in range(20):
        conn.run(command)
    through_cli = time.monotonic() - started
    print(f"\n20 x ListContainers: engine {through_engine * 1000:.0f} ms, "
          f"`docker ps` over SSH {through_cli * 1000:.0f} ms")
    assert through_engine < through_cli
