"""Everything `infra bootstrap` sends to a host: the probe, and the scripts that give it Docker.

Pure: each builder returns a POSIX sh script, or the argv that runs one as the SSH user or as
root (as is, `sudo -n`, or `sudo -S -p ''` reading the password on stdin — never in argv).
Every value spliced into a script is quoted here.

Every step script is idempotent and prints `CHANGE` + what it actually changed, once per change
(`infra.plans.bootstrap.changes_in` reads them back), so the report says exactly what happened
and a second run says "already there".
"""

from __future__ import annotations

import posixpath
import shlex
from typing import Literal

from ..facts.os import SECTION, OsInfo, Privilege

CHANGE = "infra-change:"
DOCKERD_LOG = "/var/log/dockerd.log"
START_WAIT = 60  # seconds the engine gets to answer after it was started

# Where the engine comes from: the distribution's docker.io, or Docker's own apt repository.
Source = Literal["distro", "official"]


# --------------------------------------------------------------------------- the probe

# Runs as the SSH user; reads only. Each section: a marker line, then one probe's output
# (read by `infra.facts.os.parse_probe`).
PROBE_SCRIPT = r"""
s() { printf '\n%s%s\n' '@SECTION@' "$1"; }
s os_release; cat /etc/os-release 2>/dev/null || cat /usr/lib/os-release 2>/dev/null
s dpkg_arch; dpkg --print-architecture 2>/dev/null || echo '?'
s uname; uname -m
s uid; id -u
s user; id -un
s session_groups; id -nG
s user_groups; id -nG "$(id -un)"
s sudo
if [ "$(id -u)" = 0 ]; then echo root
elif ! command -v sudo >/dev/null 2>&1; then echo missing
elif sudo -n true >/dev/null 2>&1; then echo nopasswd
else echo password; fi
s systemd; if [ -d /run/systemd/system ]; then echo yes; else echo no; fi
s docker_cli; command -v docker 2>/dev/null || true
s dockerd; (PATH="$PATH:/usr/sbin:/sbin"; command -v dockerd 2>/dev/null || true)
s docker_version
if command -v docker >/dev/null 2>&1; then
  docker version --format '{{.Server.Version}}' 2>&1; echo "exit=$?"
else echo "exit=127"; fi
s docker_version_sg
if command -v docker >/dev/null 2>&1 && command -v sg >/dev/null 2>&1 \
   && id -nG "$(id -un)" | tr ' ' '\n' | grep -qx docker && ! id -nG | tr ' ' '\n' | grep -qx docker; then
  sg docker -c "docker version --format '{{.Server.Version}}'" 2>&1; echo "exit=$?"
fi
s enabled
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  systemctl is-enabled docker.service 2>/dev/null || true
fi
s nvidia
if command -v nvidia-smi >/dev/null 2>&1; then echo driver; fi
if command -v nvidia-ctk >/dev/null 2>&1; then echo toolkit; fi
if grep -qs '"nvidia"' /etc/docker/daemon.json; then echo runtime; fi
s registry; command -v docker-registry 2>/dev/null || true
s end
""".replace("@SECTION@", SECTION)


def probe_argv() -> list[str]:
    """The probe as the SSH user: no privilege, changes nothing."""
    return ["sh", "-c", PROBE_SCRIPT]


# --------------------------------------------------------------------------- how a script runs


def privileged_argv(script: str, privilege: Privilege) -> tuple[tuple[str, ...], bool]:
    """The argv running `script` as root, and whether the sudo password goes on its stdin.

    The script starts with `exec </dev/null`, so a password sudo did not need to read (a cached
    credential) never reaches a command of the script.
    """
    body = "exec </dev/null\n" + script
    if privilege == "root":
        return ("sh", "-c", body), False
    if privilege == "sudo":
        return ("sudo", "-n", "sh", "-c", body), False
    if privilege == "sudo-password":
        return ("sudo", "-S", "-p", "", "sh", "-c", body), True
    raise ValueError("no way to become root on this host")


def user_argv(script: str) -> tuple[str, ...]:
    """The argv running `script` as the SSH user, with nothing on its stdin."""
    return ("sh", "-c", "exec </dev/null\n" + script)


# --------------------------------------------------------------------------- the step scripts


def _announce(change: str) -> str:
    """The shell command announcing one change (see `CHANGE`)."""
    return "echo " + shlex.quote(f"{CHANGE} {change}")


_APT = "apt-get -q -o DPkg::Lock::Timeout=300"
_APT_ENV = "export DEBIAN_FRONTEND=noninteractive\nset -e\n"


def install_script(os_info: OsInfo, arch: str, source: Source) -> tuple[str, str]:
    """(title, script) installing the engine; run as root only when Docker is missing."""
    if source == "distro":
        label = "Ubuntu's" if os_info.family == "ubuntu" else "Debian's"
        title = f"install docker.io from {label} packages"
        script = _APT_ENV + (
            f"{_APT} update\n"
            f"{_APT} install -y --no-install-recommends docker.io ca-certificates\n"
            # Newer releases ship the client as its own package (docker-cli).
            f"command -v docker >/dev/null 2>&1 || {_APT} install -y --no-install-recommends docker-cli\n"
            f"{_announce(f'installed docker.io from {label} packages')}\n"
        )
        return title, script
    repo_os = "ubuntu" if os_info.family == "ubuntu" else ("raspbian" if os_info.id == "raspbian" else "debian")
    url = f"https://download.docker.com/linux/{repo_os}"
    title = "install docker-ce from Docker's apt repository"
    line = f"deb [arch={arch} signed-by=/etc/apt/keyrings/docker.asc] {url} {os_info.codename} stable"
    script = _APT_ENV + (
        f"{_APT} update\n"
        f"{_APT} install -y --no-install-recommends ca-certificates curl\n"
        "install -m 0755 -d /etc/apt/keyrings\n"
        f"curl -fsSL --retry 3 {url}/gpg -o /etc/apt/keyrings/docker.asc.tmp\n"
        "mv -f /etc/apt/keyrings/docker.asc.tmp /etc/apt/keyrings/docker.asc\n"
        "chmod a+r /etc/apt/keyrings/docker.asc\n"
        f"echo {shlex.quote(line)} > /etc/apt/sources.list.d/docker.list\n"
        f"{_APT} update\n"
        f"{_APT} install -y docker-ce docker-ce-cli containerd.io docker-buildx-plugin docker-compose-plugin\n"
        f"{_announce(f'installed docker-ce from the apt repository of Docker ({os_info.codename})')}\n"
    )
    return title, script


def group_script(user: str) -> str:
    """Give `user` the docker group (later logins use docker without sudo)."""
    u = shlex.quote(user)
    return (
        "set -e\n"
        "if ! getent group docker >/dev/null; then groupadd --system docker; "
        f"{_announce('created the group docker')}; fi\n"
        f"if ! id -nG {u} | tr ' ' '\\n' | grep -qx docker; then usermod -aG docker {u}; "
        f"{_announce(f'added {user} to the group docker')}; fi\n"
        # An engine started before the group existed made its socket root-only.
        "if [ -S /var/run/docker.sock ] && [ \"$(stat -c %G /var/run/docker.sock)\" = root ]; then "
        "chgrp docker /var/run/docker.sock; fi\n"
    )


def _wait_script(hint: str, log: str | None = None) -> str:
    """Poll `docker info` once a second, at most START_WAIT times."""
    last = f": $(tail -n 1 {log} 2>/dev/null)" if log else ""
    return (
        "i=0\n"
        "until docker info >/dev/null 2>&1; do\n"
        "  i=$((i+1))\n"
        f"  if [ $i -gt {START_WAIT} ]; then\n"
        f"    echo \"the engine did not answer within {START_WAIT} s ({hint}){last}\" >&2\n"
        "    exit 1\n"
        "  fi\n"
        "  sleep 1\n"
        "done\n"
    )


def start_script(systemd: bool) -> str:
    """Start the engine (and enable it at boot where systemd is); no-op when it runs."""
    if systemd:
        return (
            "set -e\n"
            # An engine of another unit (a snap, a hand-made unit) is left as it is.
            "if systemctl cat docker.service >/dev/null 2>&1; then\n"
            "  if [ \"$(systemctl is-enabled docker.service 2>/dev/null)\" = disabled ]; then\n"
            f"    systemctl enable docker.service >/dev/null 2>&1; {_announce('enabled docker.service at boot')}\n"
            "  fi\n"
            "  if ! systemctl is-active --quiet docker.service; then\n"
            f"    systemctl start docker.service; {_announce('started docker.service')}\n"
            "  fi\n"
            "fi\n"
            "set +e\n" + _wait_script("see journalctl -u docker.service")
        )
    # No systemd: a dockerd of its own session, detached from SSH's, outlives the connection.
    return (
        "PATH=\"$PATH:/usr/sbin:/sbin\"\n"
        "if docker info >/dev/null 2>&1; then exit 0; fi\n"
        "running=''\n"
        "if [ -f /var/run/docker.pid ] && kill -0 \"$(cat /var/run/docker.pid)\" 2>/dev/null; then running=yes; fi\n"
        "if [ -z \"$running\" ]; then\n"
        "  rm -f /var/run/docker.pid\n"
        f"  mkdir -p {posixpath.dirname(DOCKERD_LOG)}\n"
        f"  setsid nohup dockerd >>{DOCKERD_LOG} 2>&1 </dev/null &\n"
        f"  {_announce(f'started dockerd in the background (no systemd; log {DOCKERD_LOG})')}\n"
        "fi\n" + _wait_script(f"see {DOCKERD_LOG}", DOCKERD_LOG)
    )


VERIFY_SCRIPT = "docker version --format '{{.Server.Version}}'\n"
VERIFY_USER_SCRIPT = (
    # A new login of the user gets the docker group; `sg` gives it to this command already.
    "if ! command -v sg >/dev/null 2>&1; then echo 'skipped (no sg)'; exit 0; fi\n"
    "sg docker -c \"docker version --format '{{.Server.Version}}'\"\n"
)


# --------------------------------------------------------------------------- NVIDIA GPUs (bootstrap --nvidia)

POLICY_RC = "/usr/sbin/policy-rc.d"


def registry_script(systemd: bool) -> str:
    """Install Debian's docker-registry (for `images.source: ship`), as root, without its service running.

    infra starts the registry itself, on 127.0.0.1 and only while `up` sends images. The
    package's own service would listen on port 5000 of every address: a policy-rc.d (unless the
    machine has one) keeps the package's scripts from starting it, and the service is then
    disabled, so that a reboot does not start it either.
    """
    return _APT_ENV + (
        "ours=\n"
        f"if [ ! -e {POLICY_RC} ]; then\n"
        f"  printf '#!/bin/sh\\nexit 101\\n' > {POLICY_RC} && chmod 0755 {POLICY_RC} && ours=yes\n"
        "fi\n"
        f"trap '[ -z \"$ours\" ] || rm -f {POLICY_RC}' EXIT\n"
        f"{_APT} update\n"
        f"{_APT} install -y --no-install-recommends docker-registry\n"
        + ("systemctl disable --now docker-registry.service >/dev/null 2>&1 || true\n" if systemd else
           "update-rc.d docker-registry disable >/dev/null 2>&1 || true\n"
           "if [ -x /etc/init.d/docker-registry ]; then /etc/init.d/docker-registry stop >/dev/null 2>&1 || true; fi\n")
        + "command -v docker-registry >/dev/null\n"
        + f"{_announce('installed docker-registry from Debian packages, its own service disabled')}\n"
    )


NVIDIA_KEYRING = "/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg"
NVIDIA_REPO = "https://nvidia.github.io/libnvidia-container"
NVIDIA_LIST = "/etc/apt/sources.list.d/nvidia-container-toolkit.list"


def nvidia_toolkit_script() -> str:
    """Install the NVIDIA container toolkit from NVIDIA's apt repository (its documented steps), as root.

    The downloads go to files first: in a pipe, a failed download would not stop the script.
    """
    return _APT_ENV + (
        f"{_APT} update\n"
        f"{_APT} install -y --no-install-recommends ca-certificates curl gnupg\n"
        "tmp=$(mktemp -d)\n"
        "trap 'rm -rf \"$tmp\"' EXIT\n"
        f"curl -fsSL --retry 3 {NVIDIA_REPO}/gpgkey -o \"$tmp/gpgkey\"\n"
        f"gpg --batch --yes --dearmor -o {NVIDIA_KEYRING} \"$tmp/gpgkey\"\n"
        f"curl -fsSL --retry 3 {NVIDIA_REPO}/stable/deb/nvidia-container-toolkit.list -o \"$tmp/list\"\n"
        f"sed 's#deb https://#deb [signed-by={NVIDIA_KEYRING}] https://#g' \"$tmp/list\" > {NVIDIA_LIST}\n"
        f"{_APT} update\n"
        f"{_APT} install -y nvidia-container-toolkit\n"
        f"{_announce('installed the NVIDIA container toolkit from the apt repository of NVIDIA')}\n"
    )


def nvidia_runtime_script(systemd: bool) -> str:
    """Register the nvidia runtime in /etc/docker/daemon.json and restart the engine to load it.

    The engine's containers with a restart policy (all of infra's) come back by themselves.
    """
    register = (
        "set -e\n"
        "nvidia-ctk runtime configure --runtime=docker\n"
        f"{_announce('registered the nvidia runtime in /etc/docker/daemon.json')}\n"
    )
    if systemd:
        return register + (
            "systemctl restart docker.service\n"
            f"{_announce('restarted docker.service')}\n"
            "set +e\n" + _wait_script("see journalctl -u docker.service")
        )
    # No systemd: stop the dockerd started by bootstrap (or by hand), then start it as bootstrap does.
    return register + (
        "set +e\n"
        "if [ -f /var/run/docker.pid ] && kill \"$(cat /var/run/docker.pid)\" 2>/dev/null; then\n"
        "  i=0\n"
        "  while [ -f /var/run/docker.pid ] && kill -0 \"$(cat /var/run/docker.pid)\" 2>/dev/null; do\n"
        "    i=$((i+1)); [ $i -gt 60 ] && break; sleep 1\n"
        "  done\n"
        f"  {_announce('stopped dockerd to load the nvidia runtime')}\n"
        "fi\n" + start_script(systemd=False)
    )


NVIDIA_VERIFY_SCRIPT = (
    "if docker info --format '{{json .Runtimes}}' | grep -q '\"nvidia\"'; then\n"
    "  echo 'the engine lists the nvidia runtime'\n"
    "else\n"
    "  echo 'the engine does not list the nvidia runtime (see /etc/docker/daemon.json)' >&2; exit 1\n"
    "fi\n"
)
