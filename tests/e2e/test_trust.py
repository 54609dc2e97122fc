"""Host keys on the testbed: a changed key is refused and the others go on; an unknown key is
learned once with `accept-new` and refused with `strict`.

The cluster checks keys against a known hosts file of its own (a copy of the testbed's), so the
keys these tests change or forget never touch the file the other tests use.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import paramiko
import pytest
import yaml

from tests.e2e.test_cluster import PROJECT, TEST_IMAGES, WHEELHOUSE

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CLUSTER = "tru"


def infra(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "infra", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)


def write_cluster(folder: Path, testbed, known_hosts: Path, host_keys: str) -> str:
    h1, h2, h3 = testbed.docker_hosts[:3]
    spec = {
        "name": CLUSTER,
        "hosts": testbed.cluster_hosts([h1, h2, h3]),
        "project": {"path": str(folder / "wordcount"), "app": "wordcount", "remote_path": "infra-tru"},
        "roles": {"master": {"host": h1.name}, "workers": [{"host": h2.name}, {"host": h3.name}]},
        "ports": {"broker": 5692, "results": 6399, "flower": 5575},
        "images": TEST_IMAGES,
        "ssh": {"connect_timeout": 5, "known_hosts": str(known_hosts), "host_keys": host_keys},
        "timeouts": {"command": 20},
        "state_dir": str(folder / "state"),
    }
    path = folder / f"cluster-{host_keys}-{known_hosts.name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(path)


@pytest.fixture(scope="module")
def tru(testbed, tmp_path_factory):
    assert WHEELHOUSE.is_dir(), "run scripts/make-wheelhouse.sh first (scripts/run-tests.sh does)"
    folder = tmp_path_factory.mktemp("trust")
    shutil.copytree(PROJECT, folder / "wordcount", ignore=shutil.ignore_patterns("output", "__pycache__"))
    known = folder / "known_hosts"
    shutil.copy(testbed.known_hosts_path, known)
    path = write_cluster(folder, testbed, known, "strict")
    yield {"folder": folder, "file": path, "known": known, "testbed": testbed}
    infra("clean", "-f", path, "--files", "--volumes")


def change_host_key(testbed, host: str) -> None:
    testbed.exec(host, "mkdir -p /root/old-host-keys && cp -a /etc/ssh/ssh_host_* /root/old-host-keys/ && "
                       "rm -f /etc/ssh/ssh_host_* && ssh-keygen -A -q && pkill -HUP -x sshd && sleep 0.5")


def restore_host_key(testbed, host: str) -> None:
    testbed.exec(host, "cp -a /root/old-host-keys/ssh_host_* /etc/ssh/ && pkill -HUP -x sshd && sleep 0.5")


def test_a_host_whose_key_changed_is_refused_and_the_others_go_on(tru):
    testbed = tru["testbed"]
    first = infra("up", "-f", tru["file"])
    assert first.returncode == 0, first.stdout + first.stderr
    h3 = testbed.docker_hosts[2].name
    change_host_key(testbed, h3)
    try:
        new_key = testbed.exec(h3, "ssh-keygen -l -f /etc/ssh/ssh_host_ed25519_key.pub").split()[1]
        result = infra("up", "-f", tru["file"])
        assert result.returncode == 1, result.stdout + result.stderr
        errors = result.stderr.strip().splitlines()
        assert len(errors) == 1 and errors[0].startswith("error: up failed on 1 host(s): h3: the host key of "), errors
        assert "CHANGED" in errors[0] and new_key in errors[0]
        assert "ssh-keygen -R" in errors[0] and str(tru["known"]) in errors[0]
        assert "all 1 workers answer" in result.stdout  # h2 (and the master) went on
        status = infra("status", "-f", tru["file"])
        assert status.returncode == 3 and "h3: unreachable" in status.stdout
    finally:
        restore_host_key(testbed, h3)
    again = infra("up", "-f", tru["file"])
    assert again.returncode == 0, again.stdout + again.stderr


def test_an_unknown_host_is_refused_with_strict_and_learned_once_with_accept_new(tru):
    testbed = tru["testbed"]
    empty = tru["folder"] / "empty_known_hosts"
    empty.write_text("")
    strict = write_cluster(tru["folder"], testbed, empty, "strict")
    refused = infra("status", "-f", strict)
    assert refused.returncode == 3
    for host in testbed.docker_hosts[:3]:
        assert f"{host.name}: unreachable ({host.name}: unknown host key of {host.address} (ssh-ed25519 SHA256:" \
            in refused.stdout or f"{host.name}: unreachable (unknown host key of {host.address}" in refused.stdout, \
            refused.stdout
    assert empty.read_text() == ""  # strict learns nothing

    learning = write_cluster(tru["folder"], testbed, empty, "accept-new")
    learned = infra("status", "-f", learning, "--json")
    assert all_reachable(learned), learned.stdout + learned.stderr
    lines = empty.read_text().splitlines()
    assert len(lines) == 3  # one key per host (names hashed when the ssh config says HashKnownHosts yes)
    learned_keys = paramiko.HostKeys(str(empty))
    assert all(learned_keys.lookup(h.address) for h in testbed.docker_hosts[:3])

    again = infra("status", "-f", learning, "--json")
    assert all_reachable(again) and empty.read_text().splitlines() == lines  # learned once
    now_strict = infra("status", "-f", strict, "--json")
    assert all_reachable(now_strict), now_strict.stdout  # what was learned is known now


def all_reachable(result: subprocess.CompletedProcess) -> bool:
    hosts = json.loads(result.stdout)["hosts"]
    return len(hosts) == 3 and all(h["reachable"] for h in hosts)
