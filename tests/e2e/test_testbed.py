"""The testbed itself: hosts are real, separate SSH + Docker machines."""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import PREFIX
from tests.testbed import Testbed, TestbedError, remove_orphans

REPO = Path(__file__).resolve().parents[2]

BASE_IMAGE = "infra-base:bookworm"
# A one-line TCP server in the base image (it has perl, not python): answers its hostname and a tag.
SERVE = (
    "perl -MIO::Socket::INET -e '$s = IO::Socket::INET->new(LocalPort => shift, Listen => 5, ReuseAddr => 1) "
    "or die $!; while ($c = $s->accept) { print $c qx(hostname) =~ s/\\n//r, \" $ARGV[0]\\n\"; close $c }' "
)


def serve_command(port: int, tag: str) -> str:
    return SERVE + f"{port} {tag}"


def read_line(address: str, port: int, timeout: float = 20.0) -> str:
    """Connect from this machine until the server answers (bounded), return its line."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((address, port), timeout=2) as conn:
                data = conn.makefile().readline().strip()
                if data:
                    return data
        except OSError as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"{address}:{port} did not answer within {timeout}s: {exc}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def base_image_on(testbed):
    """Load the base image into a host's engine once per module."""
    loaded = set()

    def load(host):
        if host.name not in loaded:
            testbed.load_image(host, BASE_IMAGE)
            loaded.add(host.name)

    return load


def test_each_host_has_its_own_address_name_and_engine(testbed):
    hosts = testbed.docker_hosts
    assert [h.name for h in hosts] == ["h1", "h2", "h3"]
    addresses = [h.address for h in hosts]
    assert len(set(addresses)) == 3
    subnet = ipaddress.ip_network(testbed.subnet)
    assert all(ipaddress.ip_address(a) in subnet for a in addresses)
    engine_ids = set()
    for host in hosts:
        status, out = testbed.ssh(host, "hostname; hostname -I; docker info --format '{{.ID}}'")
        assert status == 0, out
        name, ips, engine_id = out.splitlines()
        assert name == host.name
        assert host.address in ips.split()
        engine_ids.add(engine_id)
    assert len(engine_ids) == 3


def test_fabric_connects_as_root_and_docker_answers(testbed):
    # in_stream=False: Fabric otherwise reads this process's stdin, which pytest forbids.
    for host in testbed.docker_hosts:
        with host.connect() as conn:
            assert conn.run("id -u", hide=True, in_stream=False).stdout.strip() == "0"
            version = conn.run("docker info --format '{{.ServerVersion}}'", hide=True, in_stream=False).stdout.strip()
            assert version.startswith("20.10")


def test_cluster_hosts_describe_every_host_for_a_cluster_file(testbed):
    hosts = testbed.cluster_hosts()
    assert list(hosts) == ["h1", "h2", "h3"]
    assert hosts["h1"] == {
        "address": testbed["h1"].address, "user": "root", "port": 22, "key": str(testbed.key_path),
    }
    assert testbed.cluster_hosts_yaml(["h2"]).startswith("hosts:\n  h2:\n    address: ")


def test_openssh_client_works_with_the_written_ssh_config(testbed):
    proc = subprocess.run(
        ["ssh", "-F", str(testbed.ssh_config_path), "-o", "BatchMode=yes", "h2", "hostname"],
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "h2"


def test_published_port_on_one_host_is_reachable_from_another_and_from_the_machine(testbed, base_image_on):
    h1, h2 = testbed["h1"], testbed["h2"]
    base_image_on(h1)
    testbed.exec(h1, f"docker run -d --name tb-echo -p 18080:8000 {BASE_IMAGE} " + serve_command(8000, "bridge"))
    try:
        assert read_line(h1.address, 18080).endswith(" bridge")
        probe = (
            "import socket,sys\n"
            f"c = socket.create_connection(('{h1.address}', 18080), timeout=5)\n"
            "sys.stdout.write(c.makefile().readline())\n"
        )
        status, out = testbed.ssh(h2, f"python3 -c \"{probe}\"")
        assert status == 0, out
        assert out.endswith(" bridge")
    finally:
        testbed.exec(h1, "docker rm -f tb-echo")


def test_nested_container_with_host_network_serves_at_the_hosts_address(testbed, base_image_on):
    h1 = testbed["h1"]
    base_image_on(h1)
    testbed.exec(h1, f"docker run -d --name tb-hostnet --network host {BASE_IMAGE} " + serve_command(18081, "hostnet"))
    try:
        assert read_line(h1.address, 18081) == "h1 hostnet"
    finally:
        testbed.exec(h1, "docker rm -f tb-hostnet")


def test_a_stopped_host_comes_back_with_its_address_engine_and_containers(testbed, base_image_on):
    h3 = testbed["h3"]
    base_image_on(h3)
    testbed.exec(h3, f"docker run -d --init --name tb-survivor --restart unless-stopped {BASE_IMAGE} sleep infinity")
    try:
        testbed.stop(h3, timeout=5)
        assert testbed.state(h3) == "exited"
        with pytest.raises(OSError):
            socket.create_connection((h3.address, 22), timeout=2).close()
        testbed.start(h3)
        assert testbed.state(h3) == "running"
        status, out = testbed.ssh(h3, "hostname -I; docker ps --format '{{.Names}}'")
        assert status == 0, out
        assert h3.address in out.splitlines()[0].split()
        assert "tb-survivor" in out.splitlines()[1:]
    finally:
        testbed.exec(h3, "docker rm -f tb-survivor")


def test_a_killed_host_is_gone_until_started(testbed):
    h2 = testbed["h2"]
    testbed.kill(h2)
    assert testbed.state(h2) == "exited"
    testbed.start(h2)
    assert testbed.ssh(h2, "docker info --format ok") == (0, "ok")


def test_a_paused_host_accepts_no_ssh_until_unpaused(testbed):
    h2 = testbed["h2"]
    testbed.pause(h2)
    try:
        with pytest.raises(Exception):
            testbed.ssh(h2, "true", timeout=3)
    finally:
        testbed.unpause(h2)
    assert testbed.ssh(h2, "true") == (0, "")


def test_faults_left_by_a_test_are_healed(testbed):
    testbed.pause("h1")
    testbed.disconnect("h2")
    testbed.stop("h3", timeout=1)
    assert sorted(testbed.heal()) == ["h1: unpaused", "h2: reconnected", "h3: started"]
    for host in testbed.docker_hosts:
        assert testbed.ssh(host, "docker info --format ok") == (0, "ok")


def test_fresh_hosts_have_ssh_and_sudo_but_no_docker(fresh_testbed):
    fresh, unsupported = fresh_testbed["fresh1"], fresh_testbed["unsupported1"]
    assert fresh.user == "deploy" and unsupported.user == "deploy"
    for host in (fresh, unsupported):
        assert fresh_testbed.ssh(host, "id -un; sudo -n id -un") == (0, "deploy\nroot")
        assert fresh_testbed.ssh(host, "id -un", user="root") == (0, "root")
        status, _ = fresh_testbed.ssh(host, "command -v docker")
        assert status != 0
        assert fresh_testbed.ssh(host, "command -v python3") == (0, "/usr/bin/python3")
    assert "ID=debian" in fresh_testbed.ssh(fresh, "cat /etc/os-release")[1].splitlines()
    assert "ID=fedora" in fresh_testbed.ssh(unsupported, "cat /etc/os-release")[1].splitlines()
    assert fresh_testbed.cluster_hosts()["fresh1"]["user"] == "deploy"


def test_fresh_host_reaches_debian_packages_for_bootstrap(fresh_testbed):
    status, out = fresh_testbed.ssh("fresh1", "sudo -n apt-get update -q 2>&1 | tail -1", timeout=120)
    assert status == 0, out
    status, out = fresh_testbed.ssh("fresh1", "apt-cache policy docker.io | grep Candidate")
    assert status == 0 and "(none)" not in out, out


def test_close_removes_containers_volumes_and_network(make_testbed):
    prefix = f"{PREFIX}-close"
    tb = make_testbed(hosts=1, fresh=1, prefix=prefix)
    names = [h.container for h in tb.hosts] + [h.volume for h in tb.hosts] + [tb.network]
    tb.close()
    tb.close()  # idempotent
    assert labelled(prefix) == []
    for name in names:
        assert subprocess.run(["docker", "inspect", name], capture_output=True).returncode != 0


def test_a_host_that_does_not_come_up_fails_loudly_and_leaves_nothing(monkeypatch):
    monkeypatch.setattr(Testbed, "_ready_command", lambda self, host: "echo sshd is up but not ready; false")
    with pytest.raises(TestbedError) as failure:
        Testbed.start(hosts=1, prefix=f"{PREFIX}-broken", timeout=5)
    message = str(failure.value)
    assert "did not come up" in message and "sshd is up but not ready" in message
    assert "Server listening" in message  # the host's own log is part of the message
    assert labelled(f"{PREFIX}-broken") == []


def test_a_testbed_whose_process_died_is_removed_by_the_next_start(tmp_path):
    prefix = f"{PREFIX}-orphan"
    script = (
        "import sys, time\n"
        "from tests.testbed import Testbed\n"
        f"tb = Testbed.start(hosts=0, fresh=1, prefix={prefix!r})\n"
        "print('up', flush=True)\n"
        "time.sleep(300)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout.readline().strip() == "up"
    finally:
        proc.kill()  # SIGKILL: no close(), as when CI or a developer kills a run
        proc.wait(timeout=30)
    assert labelled(prefix) != []
    removed = remove_orphans()
    assert f"{prefix}-fresh1" in removed
    assert labelled(prefix) == []


def labelled(prefix: str) -> list[str]:
    found = []
    for kind in ("container", "volume", "network"):
        cmd = ["docker", kind, "ls", "-q", "--filter", f"label=infra.testbed={prefix}"]
        if kind == "container":
            cmd.insert(3, "-a")
        found += subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
    return found
