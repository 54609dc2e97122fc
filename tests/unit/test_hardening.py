"""Each of infra's own containers is confined as far as its role allows: the table, the specs, the create request."""

from __future__ import annotations

import dataclasses

import pytest

from infra.commands.engine import ContainerSpec, RunContainer, cluster_labels
from infra.engine.wire import create_arguments
from infra.names import ROLE_ORDER
from infra.plans import relay as relay_plan
from infra.plans import volunteer as volunteer_plan
from infra.plans.containers import fingerprint
from infra.plans.hardening import HARDENING, hardening
from infra.plans.layout import host_layout
from tests.unit.test_plan import host_facts, make_cluster, specs_by_name
from tests.unit.test_volunteers import make_cluster as make_volunteer_cluster
from tests.unit.test_volunteers import master_facts

SMALL_TMP = ("/tmp", "rw,nosuid,nodev,size=64m")
JOB_TMP = ("/tmp", "rw,nosuid,nodev,size=1g")


def test_the_table_gives_every_role_no_capability_no_new_privileges_and_a_read_only_root():
    assert set(HARDENING) == set(ROLE_ORDER) | {"join", "relay"}
    for role in HARDENING:
        settings = hardening(role)
        assert settings["cap_drop"] == ("ALL",) and settings["cap_add"] == (), role
        assert settings["security_opt"] == ("no-new-privileges",), role
        assert settings["read_only"] is True, role
        assert all("nosuid" in options and "nodev" in options and "size=" in options
                   for _, options in settings["tmpfs"]), role


@pytest.mark.parametrize(("role", "tmpfs", "pids_limit"), [
    ("broker", (SMALL_TMP, ("/var/log/rabbitmq", "rw,nosuid,nodev,size=64m")), None),  # its upgrade log
    ("results", (SMALL_TMP,), None),
    ("flower", (SMALL_TMP,), None),
    ("join", (SMALL_TMP,), None),
    ("relay", (SMALL_TMP,), None),
    ("master", (JOB_TMP,), 4096),  # `infra run` and sweep drivers run here
    ("worker", (JOB_TMP,), 4096),
])
def test_each_role_writes_only_where_it_must_and_job_containers_have_a_pids_limit(role, tmpfs, pids_limit):
    assert hardening(role)["tmpfs"] == tmpfs
    assert hardening(role)["pids_limit"] == pids_limit


def test_a_role_missing_from_the_table_is_an_error_not_an_unconfined_container():
    with pytest.raises(KeyError):
        hardening("something-new")


def test_every_container_up_starts_carries_its_roles_hardening(tmp_path):
    cluster = make_cluster(tmp_path)
    specs = {**specs_by_name(cluster, "gpu-box"), **specs_by_name(cluster, "pi1")}
    assert {spec.role for spec in specs.values()} == set(ROLE_ORDER)
    for spec in specs.values():
        for key, value in hardening(spec.role).items():
            assert getattr(spec, key) == value, (spec.name, key)
        assert spec.user == f"{host_facts(spec.host).uid}:{host_facts(spec.host).gid}"  # never root here


def test_the_join_endpoint_carries_its_hardening(tmp_path):
    cluster = make_volunteer_cluster(tmp_path)
    facts = master_facts()
    spec = volunteer_plan.endpoint_container(cluster, host_layout(cluster, cluster.master_host, facts), facts, 5443)
    assert spec.cap_drop == ("ALL",) and spec.security_opt == ("no-new-privileges",)
    assert spec.read_only and spec.tmpfs == (SMALL_TMP,) and spec.pids_limit is None


def test_the_relay_carries_its_hardening(tmp_path):
    cluster = make_volunteer_cluster(tmp_path)
    facts = master_facts()
    spec = relay_plan.relay_container(cluster, host_layout(cluster, cluster.master_host, facts), facts)
    assert spec.cap_drop == ("ALL",) and spec.security_opt == ("no-new-privileges",)
    assert spec.read_only and spec.tmpfs == (SMALL_TMP,) and spec.pids_limit is None


def test_the_create_request_carries_the_hardening_as_docker_run_would():
    spec = ContainerSpec(name="lab-worker-h-1", role="worker", host="h", image="w:1", **hardening("worker"))
    op = RunContainer(spec, cluster_labels("lab", role="worker"))
    host_config = create_arguments(op)["config"]["HostConfig"]
    assert host_config["CapDrop"] == ["ALL"]
    assert "CapAdd" not in host_config
    assert host_config["SecurityOpt"] == ["no-new-privileges"]
    assert host_config["ReadonlyRootfs"] is True
    assert host_config["Tmpfs"] == {"/tmp": "rw,nosuid,nodev,size=1g"}
    assert host_config["PidsLimit"] == 4096
    words = op.argv()
    assert words[words.index("--cap-drop"):words.index("w:1")] == [
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--read-only",
        "--tmpfs", "/tmp:rw,nosuid,nodev,size=1g", "--pids-limit", "4096"]


def test_an_added_capability_reaches_the_create_request():
    spec = ContainerSpec(name="x", role="broker", host="h", image="b:1", cap_drop=("ALL",), cap_add=("CHOWN",))
    assert create_arguments(RunContainer(spec, ()))["config"]["HostConfig"]["CapAdd"] == ["CHOWN"]
    assert RunContainer(spec, ()).argv()[-3:] == ["--cap-add", "CHOWN", "b:1"]


def test_hardening_changes_the_fingerprint_so_the_next_up_replaces_old_containers_once():
    plain = ContainerSpec(name="w", role="worker", host="h", image="i")
    hardened = dataclasses.replace(plain, **hardening("worker"))
    assert fingerprint(plain, "sha256:x", "e") != fingerprint(hardened, "sha256:x", "e")
    assert fingerprint(hardened, "sha256:x", "e") == fingerprint(dataclasses.replace(hardened), "sha256:x", "e")
    for key in ("cap_add", "read_only", "tmpfs", "pids_limit"):
        changed = {"cap_add": ("CHOWN",), "read_only": False, "tmpfs": (), "pids_limit": 10}[key]
        assert fingerprint(dataclasses.replace(hardened, **{key: changed}), "sha256:x", "e") != \
            fingerprint(hardened, "sha256:x", "e"), key
