"""The teardown manifest and the secrets file: local state, written atomically, owner-only."""

from __future__ import annotations

import json
import stat
import threading
from pathlib import Path

import pytest

from infra.config import Host
from infra.errors import StateError
from infra.state.credentials import (
    Secrets,
    load_or_create_secrets,
    load_secrets,
    write_private_file,
)
from infra.state.manifest import HostRecord, Manifest

GPU = Host(name="gpu-box", address="192.168.1.20", user="alice", port=22, key="/home/me/.ssh/id_ed25519")
PI = Host(name="pi1", address="pi1.local", user="pi")
HOSTS = {"gpu-box": GPU, "pi1": PI}


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def path(tmp_path) -> Path:
    return tmp_path / ".infra" / "lab" / "manifest.json"


# --------------------------------------------------------------------------- manifest


def test_a_missing_manifest_loads_empty_and_is_not_written(path):
    manifest = Manifest.load(path, "lab")
    assert manifest.hosts == {}
    manifest.save()
    assert not path.exists()


def test_each_container_is_recorded_at_once(path):
    manifest = Manifest.load(path, "lab")
    manifest.add_container(GPU, "lab-broker", "c0ffee", "broker")
    on_disk = json.loads(path.read_text())
    assert on_disk["version"] == 1 and on_disk["cluster"] == "lab"
    assert on_disk["hosts"]["gpu-box"]["containers"] == {"lab-broker": {"id": "c0ffee", "role": "broker"}}

    manifest.add_container(GPU, "lab-worker-gpu-box-1", "beef", "worker")
    manifest.add_container(PI, "lab-worker-pi1-1", "f00d", "worker")
    on_disk = json.loads(path.read_text())
    assert sorted(on_disk["hosts"]) == ["gpu-box", "pi1"]
    assert sorted(on_disk["hosts"]["gpu-box"]["containers"]) == ["lab-broker", "lab-worker-gpu-box-1"]


def test_the_manifest_file_is_private_and_no_temporary_file_is_left(path):
    manifest = Manifest.load(path, "lab")
    manifest.add_container(GPU, "lab-broker", "c0ffee", "broker")
    assert mode_of(path) == 0o600
    assert mode_of(path.parent) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["manifest.json"]


def test_a_reloaded_manifest_has_everything_recorded(path):
    manifest = Manifest.load(path, "lab")
    manifest.add_container(GPU, "lab-broker", "c0ffee", "broker")
    manifest.apply(GPU, "add_network", "lab-net")
    manifest.apply(GPU, "add_network", "lab-net")  # recorded once
    manifest.apply(GPU, "add_volume", "lab-broker-data")
    manifest.apply(PI, "add_files", "/home/pi/infra/wordcount")
    manifest.apply(PI, "add_secret_dir", "/home/pi/infra/.infra-lab")

    again = Manifest.load(path, "lab")
    assert again.hosts["gpu-box"] == HostRecord(
        address="192.168.1.20", user="alice", port=22, key="/home/me/.ssh/id_ed25519",
        containers={"lab-broker": {"id": "c0ffee", "role": "broker"}},
        networks=["lab-net"], volumes=["lab-broker-data"],
    )
    assert again.hosts["pi1"].files == ["/home/pi/infra/wordcount"]
    assert again.hosts["pi1"].secret_dirs == ["/home/pi/infra/.infra-lab"]
    assert again.host_of("pi1") == PI
    assert again.host_of("gpu-box") == GPU
    assert again.host_of("nowhere") is None


def test_a_host_record_follows_the_latest_way_to_reach_the_host(path):
    manifest = Manifest.load(path, "lab")
    manifest.add_container(PI, "lab-worker-pi1-1", "f00d", "worker")
    moved = Host(name="pi1", address="10.0.0.9", user="pi", port=2200)
    manifest.add_container(moved, "lab-worker-pi1-2", "f00e", "worker")
    assert Manifest.load(path, "lab").host_of("pi1") == moved


def test_removing_everything_deletes_the_manifest_file(path):
    manifest = Manifest.load(path, "lab")
    manifest.add_container(GPU, "lab-broker", "c0ffee", "broker")
    manifest.apply(GPU, "add_network", "lab-net")
    manifest.apply(GPU, "add_secret_dir", "/home/alice/infra/.infra-lab")
    manifest.add_container(PI, "lab-worker-pi1-1", "f00d", "worker")

    manifest.remove_container("gpu-box", "lab-broker")
    manifest.apply(HOSTS["gpu-box"], "remove_network", "lab-net")
    manifest.apply(HOSTS["gpu-box"], "remove_secret_dir", "/home/alice/infra/.infra-lab")
    manifest.drop_host_if_empty("gpu-box")
    assert path.exists()
    assert list(Manifest.load(path, "lab").hosts) == ["pi1"]

    manifest.remove_container("pi1", "lab-worker-pi1-1")
    manifest.drop_host_if_empty("pi1")
    assert manifest.hosts == {}
    assert not path.exists()


def test_a_host_with_something_left_is_not_dropped(path):
    manifest = Manifest.load(path, "lab")
    manifest.apply(GPU, "add_volume", "lab-broker-data")
    manifest.add_container(GPU, "lab-broker", "c0ffee", "broker")
    manifest.remove_container("gpu-box", "lab-broker")
    manifest.drop_host_if_empty("gpu-box")
    assert Manifest.load(path, "lab").hosts["gpu-box"].volumes == ["lab-broker-data"]


def test_removing_what_is_not_recorded_changes_nothing(path):
    manifest = Manifest.load(path, "lab")
    manifest.add_container(GPU, "lab-broker", "c0ffee", "broker")
    before = path.read_text()
    manifest.remove_container("gpu-box", "lab-nothing")
    manifest.remove_container("nowhere", "lab-broker")
    manifest.apply(HOSTS["gpu-box"], "remove_volume", "nope")
    manifest.drop_host_if_empty("gpu-box")
    assert path.read_text() == before


def test_concurrent_hosts_all_end_up_in_the_manifest(path):
    manifest = Manifest.load(path, "lab")
    hosts = [Host(name=f"h{i}", address=f"10.0.0.{i}") for i in range(8)]

    def record(host):
        for n in range(5):
            manifest.add_container(host, f"lab-worker-{host.name}-{n}", f"id{n}", "worker")

    threads = [threading.Thread(target=record, args=(h,)) for h in hosts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    again = Manifest.load(path, "lab")
    assert sorted(again.hosts) == sorted(h.name for h in hosts)
    assert all(len(rec.containers) == 5 for rec in again.hosts.values())


def test_an_unreadable_manifest_is_a_state_error(path):
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(StateError, match="unreadable manifest") as caught:
        Manifest.load(path, "lab")
    assert caught.value.exit_code == 2


def test_a_manifest_of_another_version_is_refused(path):
    path.parent.mkdir(parents=True)
    path.write_text('{"version": 99, "cluster": "lab", "hosts": {}}')
    with pytest.raises(StateError, match="manifest version 99 is not supported"):
        Manifest.load(path, "lab")


# --------------------------------------------------------------------------- secrets


def test_secrets_are_created_private_and_reused(tmp_path):
    path = tmp_path / ".infra" / "lab" / "secrets.json"
    first = load_or_create_secrets(path)
    assert mode_of(path) == 0o600
    assert json.loads(path.read_text())["broker_password"] == first.broker_password
    assert load_or_create_secrets(path) == first
    assert load_secrets(path) == first


def test_generated_secrets_are_long_distinct_and_url_safe():
    one, two = Secrets.generate(), Secrets.generate()
    assert one.values() != two.values()
    passwords = [one.broker_password, one.results_password, one.flower_password, one.worker_password,
                 one.results_master_password, one.results_worker_password, one.results_flower_password]
    assert len(set(passwords)) == 7 and set(passwords) < set(one.values())
    for value in passwords:
        assert len(value) >= 24
        assert set(value) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert one.run_signing_key in one.values() and one.run_signing_key != two.run_signing_key


def test_a_secrets_file_from_before_the_workers_broker_user_gets_one_and_keeps_the_rest(tmp_path):
    path = tmp_path / "secrets.json"
    old = {"broker_user": "infra", "broker_password": "b" * 24, "results_password": "r" * 24,
           "flower_user": "admin", "flower_password": "f" * 24}
    path.write_text(json.dumps(old))
    path.chmod(0o600)
    loaded = load_or_create_secrets(path)
    assert (loaded.broker_password, loaded.results_password, loaded.flower_password) == ("b" * 24, "r" * 24, "f" * 24)
    assert loaded.worker_user == "worker" and len(loaded.worker_password) >= 24
    assert load_or_create_secrets(path) == loaded  # written back: the same password next time
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_secrets_file_readable_by_others_is_made_private_again(tmp_path):
    path = tmp_path / "secrets.json"
    first = load_or_create_secrets(path)
    path.chmod(0o644)
    assert load_or_create_secrets(path) == first
    assert mode_of(path) == 0o600


def test_no_secrets_file_means_none(tmp_path):
    assert load_secrets(tmp_path / "secrets.json") is None


def test_a_broken_secrets_file_is_a_state_error(tmp_path):
    path = tmp_path / "secrets.json"
    path.write_text('{"broker_user": "infra"}')
    with pytest.raises(StateError, match="unreadable secrets file"):
        load_secrets(path)


def test_write_private_file_replaces_content_and_keeps_mode_0600(tmp_path):
    path = tmp_path / "sub" / "f"
    write_private_file(path, b"one")
    write_private_file(path, b"two")
    assert path.read_bytes() == b"two"
    assert mode_of(path) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["f"]


# --------------------------------------------------------------------------- records of plan steps


@pytest.mark.parametrize("kind, name, field, value", [
    ("add_files", "/home/pi/infra/wordcount", "files", ["/home/pi/infra/wordcount"]),
    ("add_secret_dir", "/home/pi/infra/.infra-lab", "secret_dirs", ["/home/pi/infra/.infra-lab"]),
    ("add_network", "lab-net", "networks", ["lab-net"]),
    ("add_volume", "lab-broker-data", "volumes", ["lab-broker-data"]),
])
def test_each_kind_of_step_record_adds_to_its_list_once_and_its_removal_takes_it_out(path, kind, name, field, value):
    manifest = Manifest.load(path, "lab")
    manifest.apply(PI, kind, name)
    manifest.apply(PI, kind, name)
    assert getattr(Manifest.load(path, "lab").hosts["pi1"], field) == value
    manifest.apply(PI, kind.replace("add_", "remove_"), name)
    assert not path.exists()  # nothing else was recorded


def test_a_container_record_keeps_its_role_and_id_and_its_removal_forgets_it(path):
    manifest = Manifest.load(path, "lab")
    manifest.apply(GPU, "add_container", "lab-broker", "broker", "c0ffee")
    manifest.apply(GPU, "add_network", "lab-net")
    assert Manifest.load(path, "lab").hosts["gpu-box"].containers == {"lab-broker": {"id": "c0ffee", "role": "broker"}}
    manifest.apply(GPU, "remove_container", "lab-broker")
    assert Manifest.load(path, "lab").hosts["gpu-box"].containers == {}


def test_every_record_kind_a_step_can_carry_is_understood(path):
    from typing import get_args

    from infra.plans.steps import RecordKind

    manifest = Manifest.load(path, "lab")
    for kind in get_args(RecordKind):
        manifest.apply(GPU, kind, "/srv/infra/x" if "files" in kind or "dir" in kind else "x", "worker", "id")
    assert not path.exists()  # each removal undid its addition


def test_everything_a_step_may_create_is_recorded_before_it_runs_a_container_again_with_its_id(path):
    """A step that dies halfway leaves what it may have made recorded for `clean`."""
    from infra.commands.engine import ContainerSpec, CreateNetwork, RunContainer
    from infra.plans.steps import Record, engine_step, shell_step
    from infra.workflows.execute import execute_step

    manifest = Manifest.load(path, "lab")
    seen: list[dict] = []

    class Engine:
        def apply(self, op, on_line=None):
            seen.append(json.loads(path.read_text())["hosts"]["gpu-box"] if path.exists() else {})
            if isinstance(op, CreateNetwork):
                raise OSError("the engine went away")
            return "new-id"

    class Conn:
        host = GPU
        engine = Engine()

        def run(self, argv, **kwargs):
            seen.append(json.loads(path.read_text())["hosts"]["gpu-box"])
            raise OSError("connection lost")

    with pytest.raises(OSError):
        execute_step(Conn(), shell_step("send", ["true"], Record("add_files", "/srv/infra/wordcount")), manifest)
    assert seen[-1]["files"] == ["/srv/infra/wordcount"]
    with pytest.raises(OSError):
        execute_step(Conn(), engine_step("net", CreateNetwork("lab-net", "lab"), Record("add_network", "lab-net")),
                     manifest)
    assert seen[-1]["networks"] == ["lab-net"]

    spec = ContainerSpec("lab-broker", "broker", "gpu-box", "img")
    start = engine_step("start", RunContainer(spec, ()), Record("add_container", "lab-broker", "broker"))
    assert execute_step(Conn(), start, manifest) == "new-id"
    assert seen[-1]["containers"]["lab-broker"] == {"id": "", "role": "broker"}  # while the engine worked
    assert Manifest.load(path, "lab").hosts["gpu-box"].containers == {"lab-broker": {"id": "new-id", "role": "broker"}}
