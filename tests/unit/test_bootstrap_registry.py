"""`infra bootstrap` gives this machine Debian's docker-registry when images are shipped, never its service."""

from __future__ import annotations

import subprocess

import pytest
from click.testing import CliRunner

from infra.cli import main
from infra.commands.bootstrap import POLICY_RC, PROBE_SCRIPT, registry_script
from infra.facts.os import SECTION, parse_probe
from infra.plans.bootstrap import explain_failure, plan_bootstrap

from tests.unit.test_bootstrap import FEDORA_39, every_host_ready, fake_hosts, probe_output  # noqa: F401

DOCKER_READY = dict(docker_cli=True, dockerd=True, docker_version="24.0.7\nexit=0")


def with_registry(found: bool, **kw):
    """A host's state as the probe reports it, with or without docker-registry."""
    section = "/usr/bin/docker-registry" if found else ""
    return parse_probe(probe_output(**kw, end=False) + f"\n{SECTION}registry\n{section}\n\n{SECTION}end\n")


def test_the_probe_says_whether_docker_registry_is_there():
    assert with_registry(True).registry and not with_registry(False).registry
    assert not parse_probe(probe_output()).registry  # an older probe's output
    assert "s registry; command -v docker-registry" in PROBE_SCRIPT


def test_a_machine_with_docker_gets_only_the_registry():
    plan = plan_bootstrap("local", with_registry(False, systemd=True, **DOCKER_READY), registry=True)
    assert [step.key for step in plan.steps] == ["registry"]
    assert plan.summary == "install docker-registry"
    script = plan.steps[0].script
    assert "install -y --no-install-recommends docker-registry" in script
    # The package's own service (port 5000, every address) never runs: kept from starting, then disabled.
    assert script.index(POLICY_RC) < script.index("install -y")
    assert "systemctl disable --now docker-registry.service" in script


def test_nothing_to_do_when_the_registry_is_there_or_not_wanted():
    assert plan_bootstrap("local", with_registry(True, **DOCKER_READY), registry=True).nothing_to_do
    assert plan_bootstrap("local", with_registry(False, **DOCKER_READY), registry=False).nothing_to_do


def test_a_fresh_machine_gets_docker_first_then_the_registry_with_one_password_check():
    plan = plan_bootstrap("local", with_registry(False, uid=1000, user="ann", session_groups="ann", sudo="password"),
                          registry=True)
    keys = [step.key for step in plan.steps]
    assert keys[0] == "sudo-check" and keys.count("sudo-check") == 1 and keys[-1] == "registry"
    assert plan.summary.endswith("; install docker-registry")
    assert plan.steps[-1].argv[:2] == ("sudo", "-S") and plan.steps[-1].password_on_stdin


def test_where_it_cannot_be_installed_nothing_is_added_and_nothing_fails():
    fedora = with_registry(False, os_release=FEDORA_39, **DOCKER_READY)
    assert plan_bootstrap("local", fedora, registry=True).nothing_to_do
    no_sudo = with_registry(False, uid=1000, user="ann", session_groups="ann docker", sudo="missing", **DOCKER_READY)
    assert plan_bootstrap("local", no_sudo, registry=True).nothing_to_do


@pytest.mark.parametrize("systemd", [True, False])
def test_the_registry_script_is_valid_sh_and_removes_only_its_own_policy(systemd):
    script = registry_script(systemd)
    assert subprocess.run(["sh", "-n", "-c", script]).returncode == 0
    assert f"if [ ! -e {POLICY_RC} ]" in script and f"rm -f {POLICY_RC}" in script
    assert ("update-rc.d docker-registry disable" in script) is (not systemd)


def test_a_release_without_the_package_is_explained():
    plan = plan_bootstrap("local", with_registry(False, **DOCKER_READY), registry=True)
    line = explain_failure(plan.steps[0], 100, "E: Unable to locate package docker-registry", plan.state)
    assert "no docker-registry package" in line and "whole images" in line


def test_cli_installs_the_registry_on_local_only_when_images_are_shipped(fake_hosts):
    fakes, cluster = fake_hosts
    every_host_ready(fakes)
    built = CliRunner().invoke(main, ["bootstrap", "-f", str(cluster)])
    assert built.exit_code == 0, built.output
    assert not any("docker-registry" in argv[-1] for argv, _ in fakes["local"].calls if argv[-1] != PROBE_SCRIPT)
    cluster.write_text(cluster.read_text() + "images: {source: ship}\n")
    shipped = CliRunner().invoke(main, ["bootstrap", "-f", str(cluster)])
    assert shipped.exit_code == 0, shipped.output
    ran = [argv[-1] for argv, _ in fakes["local"].calls if argv[-1] != PROBE_SCRIPT]
    assert len(ran) == 1 and "install -y --no-install-recommends docker-registry" in ran[0]
    for name in ("a", "b", "c"):  # the registry runs here only: the hosts pull through SSH
        assert all(argv[-1] == PROBE_SCRIPT for argv, _ in fakes[name].calls)
