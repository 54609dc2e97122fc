"""Images sent by layers (`images.source: ship`) to a real testbed host, through its SSH connection.

Two images are built on this machine: `layers-a` (the base image plus 6 MB of random bytes) and
`layers-b` (`layers-a` plus 300 kB more). h3 receives `layers-a`, then `layers-b`: the second time
only the new layer may travel. The registry runs on this machine's loopback, the host pulls
through a port its sshd forwards back over infra's connection. Also: the registry ends with
infra, even when infra is killed with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from infra.commands.engine import BuildImage, InspectImages
from infra.config import Host
from infra.transport.connection import LocalConnection
from infra.transport.registry import LocalRegistry
from infra.transport.result import Limits
from infra.transport.ssh import SSHConnection
from infra.ui.reporter import Reporter
from infra.workflows.ship import ImageSender, ShippedImage

pytestmark = pytest.mark.e2e

BASE = "infra-base:bookworm"
IMAGE_A = "infra-layers-a:latest"
IMAGE_B = "infra-layers-b:latest"
RANDOM_A = 6_000_000
RANDOM_B = 300_000


class Cluster:
    """What ImageSender needs of a cluster: where the registry keeps its layers."""

    def __init__(self, state: Path):
        self.registry_dir = state / "registry"


def build(engine, tag: str, dockerfile: str, folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Dockerfile").write_text(textwrap.dedent(dockerfile))
    return engine.apply(BuildImage(tag, str(folder), "Dockerfile", build_args=(("BASE", BASE),)))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    local = LocalConnection(Host(name="local", address="local"))
    folder = tmp_path_factory.mktemp("layers")
    # Random bytes: no compression can make them smaller, so the bytes counted are the layer's.
    a = build(local.engine, IMAGE_A, f"""
        ARG BASE
        FROM $BASE
        RUN head -c {RANDOM_A} /dev/urandom > /layer-a
        """, folder / "a")
    b = build(local.engine, IMAGE_B, f"""
        FROM {IMAGE_A}
        RUN head -c {RANDOM_B} /dev/urandom > /layer-b
        """, folder / "b")
    yield {"local": local, "a": a, "b": b}
    subprocess.run(["docker", "image", "rm", "--force", IMAGE_B, IMAGE_A], capture_output=True)
    local.close()


@pytest.fixture(scope="module")
def h3(testbed):
    host = testbed.docker_hosts[2]
    entry = host.cluster_entry()
    conn = SSHConnection(Host(name=host.name, address=entry["address"], user=entry["user"], port=entry["port"],
                              key=entry["key"]), Limits(connect=10, known_hosts=str(testbed.known_hosts_path)))
    testbed.exec_result(host, ["docker", "image", "rm", "--force", IMAGE_B, IMAGE_A])
    yield conn
    testbed.exec_result(host, ["docker", "image", "rm", "--force", IMAGE_B, IMAGE_A])
    conn.close()


def send(tmp_path, images, conn, tag: str, image_id: str) -> int:
    shipped = [ShippedImage(tag, "infra/layers", image_id)]  # one repository: each send replaces the last
    with ImageSender(Cluster(tmp_path), images["local"], Reporter(quiet=True), shipped) as sender:
        assert sender.registry is not None, "docker-registry must be installed here (scripts/run-tests.sh does)"
        return sender.send(conn, [tag])


def test_only_the_layers_a_host_lacks_travel(tmp_path, images, h3, testbed):
    first = send(tmp_path, images, h3, IMAGE_A, images["a"])
    assert first > RANDOM_A
    found = h3.engine.query(InspectImages((IMAGE_A,)))
    assert found[IMAGE_A]["Id"] == images["a"]  # the same image, named as the cluster names it

    second = send(tmp_path, images, h3, IMAGE_B, images["b"])
    assert RANDOM_B < second < RANDOM_B + 200_000, second  # the new layer, a manifest and a config
    assert h3.engine.query(InspectImages((IMAGE_B,)))[IMAGE_B]["Id"] == images["b"]
    # The store keeps the image just sent, not the one before it (its layers are B's too).
    tags = tmp_path / "registry" / "data" / "docker" / "registry" / "v2" / "repositories" / "infra" / "layers"
    assert [p.name for p in (tags / "_manifests" / "tags").iterdir()] == [images["b"].partition(":")[2][:32]]
    # No name of the registry's is left on the host.
    tags = testbed.exec(testbed.docker_hosts[2], "docker image ls --format '{{.Repository}}:{{.Tag}}'").split()
    assert not [tag for tag in tags if tag.startswith("127.0.0.1:")], tags


# Asked on the host, of the registry at its forwarded port: the status of each request (python3 is
# there, curl is not). The login arrives on stdin inside the script, never on a command line.
REGISTRY_PROBE = """
import base64, json, urllib.error, urllib.request
PORT, LOGIN, TAG = {port}, {login!r}, {tag!r}
def status(method, path, login=None):
    request = urllib.request.Request(f"http://127.0.0.1:{{PORT}}{{path}}", method=method)
    request.add_header("Accept", "application/vnd.docker.distribution.manifest.v2+json")
    if login:
        request.add_header("Authorization", "Basic " + base64.b64encode(login.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.headers.get("Docker-Content-Digest")
    except urllib.error.HTTPError as refused:
        return refused.code, None
manifest = f"/v2/infra/layers/manifests/{{TAG}}"
_, digest = status("GET", manifest, LOGIN)
print(json.dumps({{
    "catalog": status("GET", "/v2/_catalog")[0],
    "manifest": status("GET", manifest)[0],
    "manifest with the login": status("GET", manifest, LOGIN)[0],
    "wrong login": status("GET", manifest, "infra:wrong")[0],
    "delete": status("DELETE", f"/v2/infra/layers/manifests/{{digest}}")[0],
    "delete with the login": status("DELETE", f"/v2/infra/layers/manifests/{{digest}}", LOGIN)[0],
    "delete a layer with the login": status("DELETE", f"/v2/infra/layers/blobs/{{digest}}", LOGIN)[0],
}}))
"""


def test_the_forwarded_registry_takes_only_this_ups_login_and_deletes_nothing(tmp_path, images, h3, testbed):
    import json

    from infra.workflows.ship import _registry_tag

    host = testbed.docker_hosts[2]
    shipped = ShippedImage(IMAGE_A, "infra/layers", images["a"])
    with ImageSender(Cluster(tmp_path), images["local"], Reporter(quiet=True), [shipped]) as sender:
        assert sender.registry is not None, "docker-registry must be installed here (scripts/run-tests.sh does)"
        sender._pushed.wait()  # pushed with the login: the registry accepted it
        assert sender._push_error is None, sender._push_error
        forward = h3.forward_remote_port(("127.0.0.1", sender.registry.port))
        try:
            login = f"{sender.registry.login.username}:{sender.registry.login.password}"
            script = REGISTRY_PROBE.format(port=forward.port, login=login, tag=_registry_tag(shipped))
            answers = json.loads(testbed.exec(host, ["python3", "-"], input=script))
            pulled = testbed.exec_result(host, ["docker", "pull", f"127.0.0.1:{forward.port}/infra/layers:"
                                                f"{_registry_tag(shipped)}"])
        finally:
            forward.close()
        assert answers == {"catalog": 401, "manifest": 401, "manifest with the login": 200, "wrong login": 401,
                           "delete": 401, "delete with the login": 405, "delete a layer with the login": 405}
        refusal = pulled.stderr.decode(errors="replace")
        assert pulled.returncode != 0 and ("no basic auth credentials" in refusal or "unauthorized" in refusal), refusal
        assert (tmp_path / "registry" / "htpasswd").stat().st_mode & 0o777 == 0o600
        assert login.split(":", 1)[1] not in (tmp_path / "registry" / "htpasswd").read_text()
        sender.send(h3, [IMAGE_A])  # and infra's own pull, with the login, works
        assert h3.engine.query(InspectImages((IMAGE_A,)))[IMAGE_A]["Id"] == images["a"]
    # When it stops, nothing of this run's login or configuration is left.
    left = sorted(p.name for p in (tmp_path / "registry").iterdir())
    assert "htpasswd" not in left and "config.yml" not in left and "gc-config.yml" not in left, left


def test_the_registry_listens_on_loopback_only_and_keeps_its_config_private(tmp_path):
    with LocalRegistry(tmp_path / "registry") as registry:
        listening = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True).stdout
        lines = [line for line in listening.splitlines() if f":{registry.port} " in line]
        assert lines and all("127.0.0.1:" in line for line in lines), lines
        assert (tmp_path / "registry" / "config.yml").stat().st_mode & 0o777 == 0o600
    assert not _registry_running(tmp_path)


def _registry_running(tmp_path: Path) -> bool:
    return subprocess.run(["pgrep", "-f", f"docker-registry serve {tmp_path}"], capture_output=True).returncode == 0


def test_the_registry_ends_with_infra_even_after_sigkill(tmp_path):
    program = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from infra.transport.registry import LocalRegistry
        LocalRegistry(Path({str(tmp_path / 'registry')!r})).start()
        print("started", flush=True)
        time.sleep(600)
        """)
    child = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, text=True,
                             cwd=Path(__file__).resolve().parents[2])
    try:
        assert child.stdout.readline().strip() == "started"
        assert _registry_running(tmp_path)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        deadline = time.monotonic() + 5
        while _registry_running(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _registry_running(tmp_path)
    finally:
        if child.poll() is None:
            child.kill()


NO_FORWARDING = "/etc/ssh/sshd_config.d/00-infra-test-no-forwarding.conf"


@pytest.fixture
def refusing_forwarding(testbed, h3):
    """h3's sshd with `AllowTcpForwarding no` (first in its drop-ins: sshd keeps a keyword's first value)."""
    host = testbed.docker_hosts[2]
    reload = "kill -HUP \"$(cat /run/sshd.pid)\""  # the listener re-executes itself; sessions stay
    testbed.exec(host, f"echo 'AllowTcpForwarding no' > {NO_FORWARDING} && {reload}")
    time.sleep(1)
    yield host
    testbed.exec(host, f"rm -f {NO_FORWARDING} && {reload}")
    time.sleep(1)


def test_a_host_whose_sshd_refuses_forwarding_gets_whole_images_and_a_warning(
        tmp_path, images, testbed, refusing_forwarding, capsys):
    entry = refusing_forwarding.cluster_entry()
    conn = SSHConnection(Host(name=refusing_forwarding.name, address=entry["address"], user=entry["user"],
                              port=entry["port"], key=entry["key"]),
                         Limits(connect=10, known_hosts=str(testbed.known_hosts_path)))
    try:
        testbed.exec_result(refusing_forwarding, ["docker", "image", "rm", "--force", IMAGE_B, IMAGE_A])
        sent = send(tmp_path, images, conn, IMAGE_A, images["a"])
        assert sent > RANDOM_A  # the whole image: docker save | docker load through the Engine API
        assert conn.engine.query(InspectImages((IMAGE_A,)))[IMAGE_A]["Id"] == images["a"]
    finally:
        conn.close()
    warning = capsys.readouterr().err
    assert f"{refusing_forwarding.name}: the SSH server refuses port forwarding" in warning
    assert "images are sent whole" in warning
