"""`infra bootstrap --nvidia`: the NVIDIA container toolkit on hosts with a GPU driver, planned from the probe.

No GPU on the machines these tests run on: the plans and scripts are checked here (valid sh,
the steps NVIDIA documents, idempotence by the probe), not their effect on a real GPU host.
"""

from __future__ import annotations

import subprocess

import pytest
from click.testing import CliRunner

from infra.cli import main
from infra.commands.bootstrap import NVIDIA_KEYRING, NVIDIA_LIST, NVIDIA_VERIFY_SCRIPT, PROBE_SCRIPT
from infra.facts.os import SECTION, parse_probe
from infra.plans.bootstrap import plan_bootstrap

from tests.unit.test_bootstrap import probe_output, state

DOCKER_READY = dict(docker_cli=True, dockerd=True, docker_version="24.0.7\nexit=0")


def _with_nvidia_section(nvidia: str, **kw):
    """A host's state as the probe reports it, with the lines of its `nvidia` section."""
    text = probe_output(**kw, end=False) + f"\n{SECTION}nvidia\n{nvidia}\n\n{SECTION}end\n"
    return parse_probe(text)


def test_the_probe_reports_the_driver_the_toolkit_and_the_runtime():
    s = _with_nvidia_section("driver\ntoolkit\nruntime")
    assert (s.nvidia_driver, s.nvidia_toolkit, s.nvidia_runtime) == (True, True, True)
    s = state()  # an older probe's output, or a host without any of it
    assert (s.nvidia_driver, s.nvidia_toolkit, s.nvidia_runtime) == (False, False, False)
    assert "s nvidia" in PROBE_SCRIPT and subprocess.run(["sh", "-n", "-c", PROBE_SCRIPT]).returncode == 0


def test_without_nvidia_the_plan_is_docker_alone():
    s = _with_nvidia_section("driver", **DOCKER_READY)
    assert plan_bootstrap("g", s).nothing_to_do
    assert plan_bootstrap("g", s, nvidia=False).steps == ()


def test_a_gpu_host_with_docker_gets_the_toolkit_the_runtime_and_a_check():
    plan = plan_bootstrap("g", _with_nvidia_section("driver", systemd=True, **DOCKER_READY), nvidia=True)
    assert [step.key for step in plan.steps] == ["nvidia-install", "nvidia-runtime", "nvidia-verify"]
    assert plan.summary == "install the NVIDIA container toolkit; register the nvidia runtime"
    install, runtime, verify = (step.script for step in plan.steps)
    assert f"gpg --batch --yes --dearmor -o {NVIDIA_KEYRING}" in install
    assert "https://nvidia.github.io/libnvidia-container/stable/deb/nvidia-container-toolkit.list" in install
    assert f"> {NVIDIA_LIST}" in install and "install -y nvidia-container-toolkit" in install
    assert "nvidia-ctk runtime configure --runtime=docker" in runtime and "systemctl restart docker.service" in runtime
    assert verify == NVIDIA_VERIFY_SCRIPT


def test_a_fresh_gpu_host_gets_docker_first_then_the_toolkit():
    plan = plan_bootstrap("g", _with_nvidia_section("driver", uid=1000, user="deploy", session_groups="deploy",
                                                    sudo="password"), nvidia=True)
    keys = [step.key for step in plan.steps]
    assert keys[0] == "sudo-check" and keys.count("sudo-check") == 1
    assert keys.index("install") < keys.index("start") < keys.index("nvidia-install") < keys.index("nvidia-runtime")
    assert plan.summary == "install docker.io from Debian's packages; install the NVIDIA container toolkit; " \
                           "register the nvidia runtime"
    assert all(step.argv[:2] == ("sudo", "-S") for step in plan.steps if step.key.startswith("nvidia"))


def test_an_installed_toolkit_only_registers_the_runtime_and_a_ready_one_does_nothing():
    plan = plan_bootstrap("g", _with_nvidia_section("driver\ntoolkit", **DOCKER_READY), nvidia=True)
    assert [step.key for step in plan.steps] == ["nvidia-runtime", "nvidia-verify"]
    ready = plan_bootstrap("g", _with_nvidia_section("driver\ntoolkit\nruntime", **DOCKER_READY), nvidia=True)
    assert ready.nothing_to_do


def test_a_host_without_the_gpu_driver_is_told_so_and_nothing_changes():
    plan = plan_bootstrap("g", _with_nvidia_section("", **DOCKER_READY), nvidia=True)
    assert plan.steps == () and plan.error == (
        "--nvidia: no NVIDIA driver on this host (nvidia-smi not found): install the driver of its GPUs first, "
        "then run bootstrap --nvidia again (nothing was changed)")


@pytest.mark.parametrize("systemd", [True, False])
def test_every_nvidia_script_is_valid_sh(systemd):
    plan = plan_bootstrap("g", _with_nvidia_section("driver", systemd=systemd), nvidia=True)
    assert any(step.key == "nvidia-runtime" for step in plan.steps)
    for step in plan.steps:
        checked = subprocess.run(["sh", "-n", "-c", step.argv[-1]], capture_output=True, text=True)
        assert checked.returncode == 0, f"{step.key}: {checked.stderr}"
    if not systemd:
        runtime = next(step.script for step in plan.steps if step.key == "nvidia-runtime")
        assert "setsid nohup dockerd" in runtime  # started again as bootstrap starts it


def test_nvidia_needs_a_host_whose_workers_have_gpus(tmp_path):
    (tmp_path / "proj").mkdir()
    (tmp_path / "cluster.yaml").write_text(
        "name: lab\nproject: {path: proj}\nroles:\n  master: {host: local}\n  workers:\n    - {host: local}\n")
    result = CliRunner().invoke(main, ["bootstrap", "-f", str(tmp_path / "cluster.yaml"), "--nvidia"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: --nvidia: none of these hosts has a worker group with `gpus` in the cluster file"


def test_an_os_or_cpu_without_nvidias_packages_is_told_so():
    from tests.unit.test_bootstrap import OSES

    fedora = 'ID=fedora\nVERSION_ID=40\nPRETTY_NAME="Fedora Linux 40"\n'
    plan = plan_bootstrap("g", _with_nvidia_section("driver", os_release=fedora, **DOCKER_READY), nvidia=True)
    assert plan.error == ("--nvidia: Fedora Linux 40 on amd64: bootstrap installs the NVIDIA container toolkit on "
                          "Ubuntu and Debian for amd64, arm64 only; install it there yourself (nothing was changed)")
    pi = plan_bootstrap("g", _with_nvidia_section("driver", os_release=OSES["raspbian"][0], dpkg="armhf",
                                                  uname="armv7l", **DOCKER_READY), nvidia=True)
    assert pi.error.startswith("--nvidia: ") and "on armhf" in pi.error
