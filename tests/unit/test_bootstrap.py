"""`infra bootstrap` without any network: OS detection, the command plan of every supported
OS / architecture / privilege / source / init case, and the workflow over fake connections."""

from __future__ import annotations

import itertools
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from infra.commands.bootstrap import CHANGE, PROBE_SCRIPT, START_WAIT, privileged_argv
from infra.facts.arch import docker_arch, dpkg_arch
from infra.facts.os import (
    SECTION,
    HostState,
    normalize_arch,
    parse_os_release,
    parse_probe,
)
from infra.facts.sections import last_line, split_sections
from infra.plans.bootstrap import changes_in, explain_failure, plan_bootstrap
from infra.transport.connection import Connection
from infra.transport.result import CommandResult

# --------------------------------------------------------------------------- os-release samples

UBUNTU_2404 = """\
PRETTY_NAME="Ubuntu 24.04.1 LTS"
NAME="Ubuntu"
VERSION_ID="24.04"
VERSION="24.04.1 LTS (Noble Numbat)"
VERSION_CODENAME=noble
ID=ubuntu
ID_LIKE=debian
HOME_URL="https://www.ubuntu.com/"
UBUNTU_CODENAME=noble
LOGO=ubuntu-logo
"""

UBUNTU_2004 = """\
NAME="Ubuntu"
VERSION="20.04.6 LTS (Focal Fossa)"
ID=ubuntu
ID_LIKE=debian
PRETTY_NAME="Ubuntu 20.04.6 LTS"
VERSION_ID="20.04"
VERSION_CODENAME=focal
UBUNTU_CODENAME=focal
"""

DEBIAN_12 = """\
PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL="https://www.debian.org/"
"""

DEBIAN_OLD_NO_CODENAME = """\
PRETTY_NAME="Debian GNU/Linux 9 (stretch)"
NAME="Debian GNU/Linux"
VERSION_ID="9"
VERSION="9 (stretch)"
ID=debian
"""

DEBIAN_SID = """\
PRETTY_NAME="Debian GNU/Linux trixie/sid"
NAME="Debian GNU/Linux"
ID=debian
"""

RASPBIAN_11 = """\
PRETTY_NAME="Raspbian GNU/Linux 11 (bullseye)"
NAME="Raspbian GNU/Linux"
VERSION_ID="11"
VERSION="11 (bullseye)"
VERSION_CODENAME=bullseye
ID=raspbian
ID_LIKE=debian
"""

FEDORA_39 = """\
NAME="Fedora Linux"
VERSION="39 (Container Image)"
ID=fedora
VERSION_ID=39
PRETTY_NAME="Fedora Linux 39 (Container Image)"
"""

ALPINE = """\
NAME="Alpine Linux"
ID=alpine
VERSION_ID=3.20.3
PRETTY_NAME="Alpine Linux v3.20"
"""

MINT = """\
NAME="Linux Mint"
VERSION="21.3 (Virginia)"
ID=linuxmint
ID_LIKE="ubuntu debian"
PRETTY_NAME="Linux Mint 21.3"
VERSION_ID="21.3"
VERSION_CODENAME=virginia
UBUNTU_CODENAME=jammy
"""


@pytest.mark.parametrize(
    "text, family, os_id, version, codename",
    [
        (UBUNTU_2404, "ubuntu", "ubuntu", "24.04", "noble"),
        (UBUNTU_2004, "ubuntu", "ubuntu", "20.04", "focal"),
        (DEBIAN_12, "debian", "debian", "12", "bookworm"),
        (DEBIAN_OLD_NO_CODENAME, "debian", "debian", "9", "stretch"),
        (DEBIAN_SID, "debian", "debian", "", ""),
        (RASPBIAN_11, "debian", "raspbian", "11", "bullseye"),
        (FEDORA_39, None, "fedora", "39", ""),
        (ALPINE, None, "alpine", "3.20.3", ""),
        (MINT, None, "linuxmint", "21.3", "virginia"),
        ("", None, "", "", ""),
    ],
)
def test_os_release_is_parsed(text, family, os_id, version, codename):
    info = parse_os_release(text)
    assert (info.family, info.id, info.version_id, info.codename) == (family, os_id, version, codename)


def test_os_release_quoting_comments_and_junk():
    info = parse_os_release(
        "# a comment\n\nID='ubuntu'\nPRETTY_NAME=\"Ubuntu \\\"special\\\" 22.04\"\nnot a pair\n"
        "VERSION_CODENAME=jammy\nBROKEN=\"unterminated\n"
    )
    assert info.id == "ubuntu"
    assert info.pretty_name == 'Ubuntu "special" 22.04'
    assert info.codename == "jammy"
    assert info.name == 'Ubuntu "special" 22.04'
    assert parse_os_release("ID=Debian\n").family == "debian"  # IDs are lowercase; be lenient
    assert parse_os_release("").name == "unknown"


@pytest.mark.parametrize(
    "dpkg, uname, expected",
    [("amd64", "x86_64", "amd64"), ("arm64", "aarch64", "arm64"), ("armhf", "armv7l", "armhf"),
     ("?", "x86_64", "amd64"), ("", "aarch64", "arm64"), ("?", "armv7l", "armhf"), ("", "armv6l", "armhf"),
     ("?", "riscv64", "riscv64"), ("i386", "i686", "i386"), ("", "", "unknown")],
)
def test_architecture(dpkg, uname, expected):
    assert normalize_arch(dpkg, uname) == expected


@pytest.mark.parametrize(
    "uname, docker, dpkg",
    [("x86_64", "amd64", "amd64"), ("aarch64", "arm64", "arm64"), ("armv7l", "arm", "armhf"),
     ("armv6l", "arm", "armhf"), ("riscv64", "riscv64", "riscv64"), ("x86_64\n", "amd64", "amd64")],
)
def test_one_table_names_each_architecture_for_docker_and_for_debian(uname, docker, dpkg):
    assert (docker_arch(uname), dpkg_arch(uname)) == (docker, dpkg)


def test_probe_sections_are_read_by_the_shared_splitter():
    output = f"motd noise\n\n{SECTION}user\n  deploy\n\n{SECTION}empty\n\n{SECTION}end\n"
    assert split_sections(output, SECTION) == {"user": "  deploy", "empty": "", "end": ""}
    assert last_line("apt output\nE: the reason  \n\n") == "E: the reason"
    assert last_line("  \n", default="none") == "none"


# --------------------------------------------------------------------------- probe output


def probe_output(
    os_release: str = DEBIAN_12, *, dpkg: str = "amd64", uname: str = "x86_64", uid: int = 0,
    user: str = "root", session_groups: str = "root", user_groups: str | None = None, sudo: str = "root",
    systemd: bool = False, docker_cli: bool = False, dockerd: bool = False,
    docker_version: str = "sh: 1: docker: not found\nexit=127", sg: str = "", enabled: str = "",
    end: bool = True,
) -> str:
    sections = {
        "os_release": os_release, "dpkg_arch": dpkg, "uname": uname, "uid": str(uid), "user": user,
        "session_groups": session_groups, "user_groups": session_groups if user_groups is None else user_groups,
        "sudo": sudo, "systemd": "yes" if systemd else "no",
        "docker_cli": "/usr/bin/docker" if docker_cli else "", "dockerd": "/usr/sbin/dockerd" if dockerd else "",
        "docker_version": docker_version, "docker_version_sg": sg, "enabled": enabled,
    }
    text = "".join(f"\n{SECTION}{name}\n{value}\n" for name, value in sections.items())
    return text + (f"\n{SECTION}end\n" if end else "")


def state(**kw) -> HostState:
    return parse_probe(probe_output(**kw))


def test_probe_of_a_fresh_root_host():
    s = state()
    assert s.os.family == "debian" and s.os.codename == "bookworm"
    assert (s.arch, s.uid, s.user, s.privilege, s.systemd) == ("amd64", 0, "root", "root", False)
    assert not s.docker_cli and not s.dockerd
    assert s.docker_version is None and s.docker_problem == "Docker is not installed"
    assert not s.ready


def test_probe_of_a_sudo_user_in_the_docker_group_from_a_new_login():
    s = state(uid=1000, user="deploy", session_groups="deploy docker", sudo="nopasswd", docker_cli=True,
              dockerd=True, docker_version="20.10.24+dfsg1\nexit=0")
    assert s.privilege == "sudo" and s.in_docker_group
    assert s.docker_version == "20.10.24+dfsg1" and s.ready


def test_probe_sees_docker_through_the_group_not_yet_in_this_login():
    s = state(uid=1000, user="alice", session_groups="alice", user_groups="alice docker", sudo="password",
              docker_cli=True, dockerd=True,
              docker_version="permission denied while trying to connect to the Docker daemon socket\nexit=1",
              sg="24.0.7\nexit=0")
    assert s.docker_version is None
    assert "permission denied" in s.docker_problem
    assert s.docker_version_via_group == "24.0.7" and s.engine_version == "24.0.7"
    assert s.ready and s.privilege == "sudo-password"


def test_probe_privilege_cases():
    assert state(uid=1000, user="u", sudo="missing").privilege == "none"
    assert state(uid=1000, user="u", sudo="password").privilege == "sudo-password"
    assert state(uid=1000, user="u", sudo="nopasswd").privilege == "sudo"
    assert state(uid=0, sudo="missing").privilege == "root"  # root needs no sudo


def test_cut_short_probe_is_an_error():
    with pytest.raises(ValueError):
        parse_probe(probe_output(end=False))
    with pytest.raises(ValueError):
        parse_probe("bash: sh: command not found")


def test_probe_script_runs_here_and_parses():
    """The real probe on this machine (read-only, no network): whatever is here, it parses."""
    sh = shutil.which("sh")
    out = subprocess.run([sh, "-c", PROBE_SCRIPT], capture_output=True, text=True, timeout=60).stdout
    s = parse_probe(out)
    assert s.uid >= 0 and s.user
    assert s.arch != "unknown"


# --------------------------------------------------------------------------- plans

OSES = {"ubuntu": (UBUNTU_2404, "noble"), "debian": (DEBIAN_12, "bookworm"), "raspbian": (RASPBIAN_11, "bullseye")}
PRIVILEGES = {  # name: (uid, user, probe's sudo answer)
    "root": (0, "root", "root"),
    "sudo": (1000, "deploy", "nopasswd"),
    "sudo-password": (1000, "deploy", "password"),
}
UNAME = {"amd64": "x86_64", "arm64": "aarch64", "armhf": "armv7l"}

CASES = list(itertools.product(OSES, ("amd64", "arm64", "armhf"), PRIVILEGES, ("distro", "official"), (True, False)))


def _fresh(os_name, arch, privilege, systemd) -> HostState:
    uid, user, sudo = PRIVILEGES[privilege]
    return state(os_release=OSES[os_name][0], dpkg=arch, uname=UNAME[arch], uid=uid, user=user,
                 session_groups=user, sudo=sudo, systemd=systemd)


@pytest.mark.parametrize("os_name, arch, privilege, source, systemd", CASES)
def test_plan_of_a_fresh_host(os_name, arch, privilege, source, systemd):
    s = _fresh(os_name, arch, privilege, systemd)
    plan = plan_bootstrap("h", s, source)
    assert plan.error is None and not plan.nothing_to_do
    keys = [step.key for step in plan.steps]
    expected = ["install", "start", "verify"]
    if privilege == "sudo-password":
        expected.insert(0, "sudo-check")
    if privilege != "root":
        expected = expected[:-2] + ["group"] + expected[-2:] + ["verify-user"]
    assert keys == expected

    for step in plan.steps:
        argv = list(step.argv)
        assert argv[-1].startswith("exec </dev/null\n") and argv[-1].endswith(step.script)
        if step.key == "verify-user":  # as the user himself, through the new group
            assert argv[:2] == ["sh", "-c"] and "sg docker -c" in step.script and not step.password_on_stdin
        elif privilege == "root":
            assert argv[:2] == ["sh", "-c"] and not step.password_on_stdin
        elif privilege == "sudo":
            assert argv[:4] == ["sudo", "-n", "sh", "-c"] and not step.password_on_stdin
        else:
            assert argv[:6] == ["sudo", "-S", "-p", "", "sh", "-c"] and step.password_on_stdin
    assert plan.needs_password == (privilege == "sudo-password")

    install = plan.steps[keys.index("install")].script
    assert "DEBIAN_FRONTEND=noninteractive" in install and "set -e" in install
    if source == "distro":
        assert "install -y --no-install-recommends docker.io" in install
        assert "download.docker.com" not in install
    else:
        repo_os = {"ubuntu": "ubuntu", "debian": "debian", "raspbian": "raspbian"}[os_name]
        url = f"https://download.docker.com/linux/{repo_os}"
        assert f"{url}/gpg" in install
        assert f"deb [arch={arch} signed-by=/etc/apt/keyrings/docker.asc] {url} {OSES[os_name][1]} stable" in install
        assert "docker-ce docker-ce-cli containerd.io" in install

    start = plan.steps[keys.index("start")].script
    if systemd:
        assert "systemctl start docker.service" in start and "dockerd >>" not in start
    else:
        assert "setsid nohup dockerd >>/var/log/dockerd.log 2>&1 </dev/null &" in start
        assert "systemctl" not in start
    assert "until docker info" in start and f"-gt {START_WAIT}" in start  # a bounded wait

    if privilege != "root":
        group = plan.steps[keys.index("group")].script
        assert "usermod -aG docker deploy" in group


@pytest.mark.parametrize("os_name, arch, privilege, source, systemd", CASES)
def test_every_generated_script_is_valid_sh(os_name, arch, privilege, source, systemd):
    plan = plan_bootstrap("h", _fresh(os_name, arch, privilege, systemd), source)
    for step in plan.steps:
        checked = subprocess.run(["sh", "-n", "-c", step.argv[-1]], capture_output=True, text=True)
        assert checked.returncode == 0, f"{step.key}: {checked.stderr}"


def test_the_probe_script_is_valid_sh():
    assert subprocess.run(["sh", "-n", "-c", PROBE_SCRIPT]).returncode == 0


def test_the_password_is_never_part_of_a_plan():
    plan = plan_bootstrap("h", _fresh("debian", "amd64", "sudo-password", False))
    assert plan.needs_password
    argv, on_stdin = privileged_argv("true", "sudo-password")
    assert on_stdin and "-S" in argv and argv[argv.index("-p") + 1] == ""  # no prompt text on stderr
    with pytest.raises(ValueError):
        privileged_argv("true", "none")


def test_docker_answering_means_nothing_to_do():
    for priv in PRIVILEGES:
        uid, user, sudo = PRIVILEGES[priv]
        s = state(uid=uid, user=user, session_groups=f"{user} docker", sudo=sudo, docker_cli=True,
                  dockerd=True, docker_version="26.1.5\nexit=0")
        plan = plan_bootstrap("h", s, "official")
        assert plan.nothing_to_do and plan.steps == () and not plan.needs_password


def test_docker_answering_on_an_unsupported_os_is_fine():
    s = state(os_release=FEDORA_39, docker_cli=True, dockerd=True, docker_version="24.0.5\nexit=0")
    assert plan_bootstrap("h", s).nothing_to_do


def test_installed_but_stopped_engine_is_only_started():
    s = state(uid=1000, user="deploy", session_groups="deploy", user_groups="deploy docker", sudo="nopasswd",
              docker_cli=True, dockerd=True,
              docker_version="Cannot connect to the Docker daemon at unix:///var/run/docker.sock.\nexit=1")
    plan = plan_bootstrap("h", s)
    assert [st.key for st in plan.steps] == ["group", "start", "verify", "verify-user"]
    assert plan.summary == "start the engine"


def test_user_outside_the_docker_group_is_added():
    s = state(uid=1000, user="bob", session_groups="bob", sudo="nopasswd", docker_cli=True, dockerd=True,
              docker_version="permission denied while trying to connect\nexit=1")
    plan = plan_bootstrap("h", s)
    assert "install" not in [st.key for st in plan.steps]
    assert "usermod -aG docker bob" in plan.steps[0].script


def test_disabled_systemd_service_is_enabled():
    s = state(systemd=True, docker_cli=True, dockerd=True, docker_version="20.10.24\nexit=0", enabled="disabled")
    plan = plan_bootstrap("h", s)
    assert [st.key for st in plan.steps] == ["start", "verify"]
    assert "systemctl enable docker.service" in plan.steps[0].script
    # A unit systemd does not know (a snap's engine, say) is left alone.
    other = state(systemd=True, docker_cli=True, dockerd=True, docker_version="24.0\nexit=0", enabled="")
    assert plan_bootstrap("h", other).nothing_to_do


@pytest.mark.parametrize("text", [FEDORA_39, ALPINE, MINT, ""])
def test_unsupported_os_gets_a_clear_error_and_no_steps(text):
    plan = plan_bootstrap("h", state(os_release=text))
    assert plan.steps == () and plan.error
    assert plan.error.startswith("unsupported OS")
    assert "Ubuntu and Debian" in plan.error and "nothing was changed" in plan.error


def test_unsupported_architecture():
    plan = plan_bootstrap("h", state(dpkg="riscv64", uname="riscv64"))
    assert plan.steps == () and "unsupported CPU architecture 'riscv64'" in plan.error


def test_official_repository_needs_a_codename():
    plan = plan_bootstrap("h", state(os_release=DEBIAN_SID), "official")
    assert plan.steps == () and "codename" in plan.error
    assert plan_bootstrap("h", state(os_release=DEBIAN_SID), "distro").error is None


def test_no_root_and_no_sudo():
    plan = plan_bootstrap("h", state(uid=1000, user="carol", session_groups="carol", sudo="missing"))
    assert plan.steps == () and "carol is not root and sudo is not installed" in plan.error


def test_changes_and_failures_are_explained():
    out = f"Reading...\n{CHANGE} installed docker.io\nnoise\n{CHANGE} added deploy to the group docker\n"
    assert changes_in(out) == ["installed docker.io", "added deploy to the group docker"]
    s = _fresh("ubuntu", "amd64", "sudo-password", False)
    plan = plan_bootstrap("h", s)
    steps = {step.key: step for step in plan.steps}
    msg = explain_failure(steps["sudo-check"], 1, "Sorry, try again.\nsudo: 1 incorrect password attempt", s)
    assert "sudo did not accept the password of deploy" in msg
    msg = explain_failure(steps["install"], 100, "E: Unable to locate package docker.io", s)
    assert "universe" in msg
    msg = explain_failure(steps["install"], 100, "W: Failed to fetch http://deb.debian.org/...\nE: Some index files failed", s)
    assert "cannot reach its package mirror" in msg
    msg = explain_failure(steps["start"], 1, "the engine did not answer within 60 s (see /var/log/dockerd.log): boom", s)
    assert msg.endswith("failed (exit 1): the engine did not answer within 60 s (see /var/log/dockerd.log): boom")
    assert "timed out" in explain_failure(steps["install"], 124, "timed out after 1800 s", s)


# --------------------------------------------------------------------------- the workflow, faked hosts

from infra.cli import main  # noqa: E402
from infra.config import Host  # noqa: E402
from infra.transport import pool  # noqa: E402
from infra.errors import ConnectError  # noqa: E402


class FakeHost:
    """A host whose state changes as the bootstrap steps run on it."""

    def __init__(self, probe: str, fail: str | None = None, password: str = "s3cret"):
        self.probe = probe
        self.fail = fail
        self.password = password
        self.calls: list[tuple[list[str], bytes | None]] = []


class FakeConnection(Connection):
    def __init__(self, host: Host, fake: FakeHost):
        self.host = host
        self.fake = fake

    def run(self, command, *, stdin=None, timeout=None, check=True, on_stdout=None, on_stderr=None):
        argv = list(command)
        self.fake.calls.append((argv, stdin))
        script = argv[-1]
        if script == PROBE_SCRIPT:
            return CommandResult(0, self.fake.probe, "")
        if argv[:2] == ["sudo", "-S"] and stdin != (self.fake.password + "\n").encode():
            return CommandResult(1, "", "Sorry, try again.\nsudo: 1 incorrect password attempt")
        for key, marker in (("install", "apt-get"), ("start", "until docker info"), ("group", "usermod")):
            if marker in script:
                if self.fake.fail == key:
                    return CommandResult(100, "", "E: Unable to locate package docker.io")
                return CommandResult(0, f"{CHANGE} did {key}\n", "")
        if "docker version" in script:
            return CommandResult(0, "20.10.24+dfsg1\n", "")
        return CommandResult(0, "", "")


@pytest.fixture
def fake_hosts(monkeypatch, tmp_path):
    fakes: dict[str, FakeHost] = {}

    def connect(host, timeout):
        if host.name not in fakes:
            raise ConnectError(f"{host.name}: cannot connect to {host.describe()}: connection refused")
        return FakeConnection(host, fakes[host.name])

    monkeypatch.setattr(pool, "connect", connect)
    (tmp_path / "proj").mkdir()
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(
        "name: lab\nhosts:\n"
        + "".join(f"  {n}: {{address: 10.0.0.{i}}}\n" for i, n in enumerate(["a", "b", "c", "d", "e"], 1))
        + "project: {path: proj, app: wordcount}\n"
        "roles:\n  master: {host: a}\n  workers:\n    - {host: b}\n    - {host: c}\n    - {host: local}\n"
    )
    return fakes, cluster


def _fresh_probe(privilege: str, os_release: str = DEBIAN_12) -> str:
    uid, user, sudo = PRIVILEGES[privilege]
    return probe_output(os_release=os_release, uid=uid, user=user, session_groups=user, sudo=sudo)


READY = probe_output(docker_cli=True, dockerd=True, docker_version="20.10.24+dfsg1\nexit=0")


def test_cli_reports_each_host_and_fails_if_one_failed(fake_hosts):
    fakes, cluster = fake_hosts
    fakes["a"] = FakeHost(READY)
    fakes["b"] = FakeHost(_fresh_probe("root"))
    fakes["c"] = FakeHost(_fresh_probe("sudo", FEDORA_39))
    fakes["local"] = FakeHost(_fresh_probe("sudo"), fail="install")
    result = CliRunner().invoke(main, ["bootstrap", "-f", str(cluster)])
    assert result.exit_code == 1, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines() if line.split()[0] in ("a", "b", "c", "local")}
    assert "already there: Docker 20.10.24+dfsg1, nothing changed" in lines["a"]
    assert "installed: Docker 20.10.24+dfsg1 (did install; did start)" in lines["b"]
    assert "failed: unsupported OS 'Fedora Linux 39 (Container Image)'" in lines["c"]
    assert "failed: install docker.io from Debian's packages failed (exit 100)" in lines["local"]
    assert "error: bootstrap failed on 2 of 4 host(s): c, local" in result.output
    # The unsupported host got the probe only: nothing was run there.
    assert len(fakes["c"].calls) == 1


def every_host_ready(fakes: dict[str, FakeHost]) -> None:
    """Docker answers on every host the fake cluster uses."""
    for name in ("a", "b", "c", "local"):
        fakes[name] = FakeHost(READY)


def test_cli_second_run_says_nothing_changed(fake_hosts):
    fakes, cluster = fake_hosts
    every_host_ready(fakes)
    result = CliRunner().invoke(main, ["bootstrap", "-f", str(cluster)])
    assert result.exit_code == 0, result.output
    assert result.output.count("already there: Docker 20.10.24+dfsg1, nothing changed") == 4
    assert "4 already there" in result.output
    assert all(len(f.calls) == 1 for f in fakes.values())


def test_password_is_read_once_sent_on_stdin_only_and_never_shown(fake_hosts):
    fakes, cluster = fake_hosts
    fakes["a"] = FakeHost(_fresh_probe("sudo-password"))
    fakes["b"] = FakeHost(_fresh_probe("sudo-password", UBUNTU_2404))
    fakes["d"] = FakeHost(_fresh_probe("sudo"))
    result = CliRunner().invoke(main, ["bootstrap", "-f", str(cluster), "--hosts", "a,b,d", "--sudo-password-stdin"],
                                input="s3cret\nleft over\n")
    assert result.exit_code == 0, result.output
    assert "s3cret" not in result.output
    for name in ("a", "b"):
        calls = fakes[name].calls
        assert all("s3cret" not in " ".join(argv) for argv, _ in calls)
        for argv, stdin in calls[1:]:
            if argv[0] == "sudo":
                assert argv[:4] == ["sudo", "-S", "-p", ""] and stdin == b"s3cret\n"
            else:
                assert stdin is None  # the user's own check gets no password
    assert all(stdin is None for _, stdin in fakes["d"].calls)  # passwordless sudo: never sent
    assert "installed" in result.output


def test_wrong_password_fails_the_host_with_one_line(fake_hosts):
    fakes, cluster = fake_hosts
    fakes["a"] = FakeHost(_fresh_probe("sudo-password"))
    result = CliRunner().invoke(main, ["bootstrap", "-f", str(cluster), "--hosts", "a", "--sudo-password-stdin"],
                                input="wrong\n")
    assert result.exit_code == 1
    assert "a            failed: sudo did not accept the password of deploy" in result.output
    assert "wrong" not in result.output.replace("(wrong password", "")
    # Only the probe and the password check ran.
    assert len(fakes["a"].calls) == 2


def test_without_a_terminal_the_password_is_not_guessed(fake_hosts):
    fakes, cluster = fake_hosts
    fakes["a"] = FakeHost(_fresh_probe("sudo-password"))
    fakes["b"] = FakeHost(_fresh_probe("root"))
    result = CliRunner().invoke(main, ["bootstrap", "-f", str(cluster), "--hosts", "a,b"])
    assert result.exit_code == 1
    assert "deploy needs a sudo password" in result.output and "--sudo-password-stdin" in result.output
    assert len(fakes["a"].calls) == 1  # probed, nothing else
    assert "b            installed" in result.output


def test_hosts_option(fake_hosts):
    fakes, cluster = fake_hosts
    fakes["e"] = FakeHost(READY)  # listed under hosts:, used by no role
    result = CliRunner().invoke(main, ["bootstrap", "-f", str(cluster), "--hosts", "e"])
    assert result.exit_code == 0 and "e            already there" in result.output
    result = CliRunner().invoke(main, ["bootstrap", "-f", str(cluster), "--hosts", "e,nope"])
    assert result.exit_code == 2 and "unknown host 'nope'" in result.output


def test_unreachable_host_is_one_failed_line(fake_hosts):
    fakes, cluster = fake_hosts
    fakes["a"] = FakeHost(READY)
    result = CliRunner().invoke(main, ["bootstrap", "-f", str(cluster), "--hosts", "a,b"])
    assert result.exit_code == 1
    assert "b            failed: cannot connect to 10.0.0.2: connection refused" in result.output


def test_dry_run_changes_nothing(fake_hosts):
    fakes, cluster = fake_hosts
    fakes["a"] = FakeHost(_fresh_probe("sudo-password"))
    result = CliRunner().invoke(main, ["bootstrap", "-f", str(cluster), "--hosts", "a", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "would install docker.io from Debian's packages" in result.output
    assert len(fakes["a"].calls) == 1


def test_docker_source_in_the_cluster_file(tmp_path):
    from infra.config import parse_cluster
    from infra.errors import ConfigError

    (tmp_path / "p").mkdir()
    base = "name: x\nproject: {path: p, app: a}\nroles: {master: {host: local}, workers: [{host: local}]}\n"
    assert parse_cluster(base, base_dir=tmp_path).spec.docker.source == "distro"
    official = parse_cluster(base + "docker: {source: official}\n", base_dir=tmp_path)
    assert official.spec.docker.source == "official"
    with pytest.raises(ConfigError, match=r"docker\.source"):
        parse_cluster(base + "docker: {source: snap}\n", base_dir=tmp_path)


def test_example_cluster_file_documents_docker_source():
    text = (Path(__file__).resolve().parents[2] / "config.example.yaml").read_text()
    assert "docker:" in text and "source: distro" in text
    assert text.index("docker:") < text.index("\nssh:")
