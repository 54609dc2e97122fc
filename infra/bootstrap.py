"""`infra bootstrap`, the deciding half: what a host is, and the commands that give it Docker.

Pure: nothing here connects anywhere. `PROBE_SCRIPT` runs once per host as the SSH user (no
privilege, changes nothing); `parse_probe` turns its output into a `HostState`; `plan_bootstrap`
turns that state and the cluster file's `docker.source` into a `Plan`: the steps still needed,
each a POSIX sh script plus the argv that runs it with the right privilege (root as is,
`sudo -n`, or `sudo -S -p ''` reading the password on stdin — never in argv).

Every step script is itself idempotent and prints `infra-change: WHAT` for each thing it
actually changed, so the report says exactly what happened, and a second run says "already there".
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Literal

SECTION = "=====infra-bootstrap:"
CHANGE = "infra-change:"

SUPPORTED_ARCHES = ("amd64", "arm64", "armhf")
UNAME_TO_DPKG = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "armhf", "armv6l": "armhf"}
DOCKERD_LOG = "/var/log/dockerd.log"
START_WAIT = 60  # seconds the engine gets to answer after it was started

Privilege = Literal["root", "sudo", "sudo-password", "none"]
Source = Literal["distro", "official"]


# --------------------------------------------------------------------------- the OS


@dataclass(frozen=True)
class OsInfo:
    """What /etc/os-release says."""

    id: str
    id_like: tuple[str, ...] = ()
    version_id: str = ""
    codename: str = ""
    pretty_name: str = ""

    @property
    def family(self) -> Literal["ubuntu", "debian"] | None:
        """The supported distribution this is, or None."""
        if self.id == "ubuntu":
            return "ubuntu"
        if self.id in ("debian", "raspbian"):  # Raspberry Pi OS (32-bit) says raspbian
            return "debian"
        return None

    @property
    def name(self) -> str:
        return self.pretty_name or " ".join(p for p in (self.id, self.version_id) if p) or "unknown"


def parse_os_release(text: str) -> OsInfo:
    """Parse os-release(5): KEY=value lines, values optionally quoted shell-style."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, raw = line.partition("=")
        try:
            parts = shlex.split(raw, comments=False, posix=True)
        except ValueError:
            parts = [raw.strip("\"'")]
        values[key.strip()] = " ".join(parts)
    os_id = values.get("ID", "").lower()
    codename = values.get("VERSION_CODENAME") or values.get("UBUNTU_CODENAME") or ""
    if not codename and os_id == "debian":
        # Debian 8-era files and some images put the codename only in VERSION: "12 (bookworm)".
        version = values.get("VERSION", "")
        if "(" in version and version.endswith(")"):
            codename = version[version.index("(") + 1 : -1].strip()
    return OsInfo(
        id=os_id,
        id_like=tuple(values.get("ID_LIKE", "").lower().split()),
        version_id=values.get("VERSION_ID", ""),
        codename=codename.lower(),
        pretty_name=values.get("PRETTY_NAME", ""),
    )


def normalize_arch(dpkg_arch: str, uname_machine: str = "") -> str:
    """Debian's name of the CPU architecture (dpkg's, else derived from `uname -m`)."""
    arch = dpkg_arch.strip()
    if arch and arch != "?":
        return arch
    return UNAME_TO_DPKG.get(uname_machine.strip(), uname_machine.strip() or "unknown")


# --------------------------------------------------------------------------- the probe

# Runs as the SSH user; reads only. Each section: a marker line, then one probe's output.
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
s end
""".replace("@SECTION@", SECTION)


@dataclass(frozen=True)
class HostState:
    """A host as the probe saw it."""

    os: OsInfo
    arch: str
    uid: int
    user: str
    session_groups: tuple[str, ...]
    user_groups: tuple[str, ...]
    privilege: Privilege
    systemd: bool
    docker_cli: bool
    dockerd: bool
    docker_version: str | None  # the engine's version as the user sees it, None when it does not answer
    docker_problem: str  # why it does not answer ("" when it does)
    docker_version_via_group: str | None = None  # answer through `sg docker` (group not yet in this session)
    service_enabled: str = ""  # `systemctl is-enabled docker.service` ("" without systemd)

    @property
    def is_root(self) -> bool:
        return self.uid == 0

    @property
    def in_docker_group(self) -> bool:
        """The user's group membership as later logins will see it."""
        return "docker" in self.user_groups

    @property
    def engine_version(self) -> str | None:
        return self.docker_version or self.docker_version_via_group

    @property
    def ready(self) -> bool:
        """Docker answers and the user can use it from new logins; nothing to do."""
        if self.engine_version is None:
            return False
        if self.systemd and self.service_enabled == "disabled":  # runs now, but not after a reboot
            return False
        return self.is_root or self.docker_version is not None or self.in_docker_group


def split_sections(output: str) -> dict[str, str]:
    sections: dict[str, list[str]] = {}
    current = None
    for line in output.splitlines():
        if line.startswith(SECTION):
            current = line[len(SECTION):].strip()
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
    return {name: "\n".join(lines).strip() for name, lines in sections.items()}


def _answer(text: str) -> tuple[str | None, str]:
    """(version, problem) from `docker version ...; echo exit=$?` output."""
    lines = [line for line in text.splitlines() if line.strip()]
    code = None
    if lines and lines[-1].startswith("exit="):
        code = lines.pop()[5:].strip()
    if code == "0" and lines:
        return lines[-1].strip(), ""
    if code == "127":
        return None, "Docker is not installed"
    problem = next((line.strip() for line in reversed(lines) if line.strip()), "") or "Docker does not answer"
    return None, problem


def parse_probe(output: str) -> HostState:
    """Raises ValueError when the output is not a complete probe (the host cut it short)."""
    sec = split_sections(output)
    if "end" not in sec:
        raise ValueError("the probe did not finish")
    try:
        uid = int(sec.get("uid", "").split()[0])
    except (IndexError, ValueError):
        raise ValueError("no user id in the probe output") from None
    sudo = sec.get("sudo", "").strip()
    privilege: Privilege = {"root": "root", "nopasswd": "sudo", "password": "sudo-password"}.get(sudo, "none")
    if uid == 0:
        privilege = "root"
    version, problem = _answer(sec.get("docker_version", ""))
    via_group = None
    if sec.get("docker_version_sg"):
        via_group, _ = _answer(sec["docker_version_sg"])
    return HostState(
        os=parse_os_release(sec.get("os_release", "")),
        arch=normalize_arch(sec.get("dpkg_arch", ""), sec.get("uname", "")),
        uid=uid,
        user=sec.get("user", "").strip() or str(uid),
        session_groups=tuple(sec.get("session_groups", "").split()),
        user_groups=tuple(sec.get("user_groups", "").split()),
        privilege=privilege,
        systemd=sec.get("systemd", "").strip() == "yes",
        docker_cli=bool(sec.get("docker_cli", "").strip()),
        dockerd=bool(sec.get("dockerd", "").strip()),
        docker_version=version,
        docker_problem=problem,
        docker_version_via_group=via_group,
        service_enabled=sec.get("enabled", "").strip().splitlines()[-1] if sec.get("enabled", "").strip() else "",
    )


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Step:
    """One thing to do on a host: a POSIX sh script, and the argv that runs it."""

    key: str  # "sudo-check", "install", "group", "start", "verify", "verify-user"
    title: str  # for people: "install docker.io from Debian's packages"
    script: str
    argv: tuple[str, ...]
    password_on_stdin: bool = False  # feed the sudo password (and a newline) on stdin
    timeout: float = 120.0


@dataclass(frozen=True)
class Plan:
    """What bootstrap does on one host; `steps == ()` with no error means: already there."""

    host: str
    state: HostState | None
    steps: tuple[Step, ...] = ()
    error: str | None = None  # why nothing will be done (unsupported OS, no privilege)
    summary: str = ""  # "install docker.io from Debian's packages" / "start the engine"

    @property
    def needs_password(self) -> bool:
        return any(step.password_on_stdin for step in self.steps)

    @property
    def nothing_to_do(self) -> bool:
        return not self.steps and self.error is None


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
    return ("sh", "-c", "exec </dev/null\n" + script)


def _say(change: str) -> str:
    """The shell command announcing one change (see `changes_in`)."""
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
            f"{_say(f'installed docker.io from {label} packages')}\n"
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
        f"{_say(f'installed docker-ce from the apt repository of Docker ({os_info.codename})')}\n"
    )
    return title, script


def group_script(user: str) -> str:
    """Give `user` the docker group (later logins use docker without sudo)."""
    u = shlex.quote(user)
    return (
        "set -e\n"
        "if ! getent group docker >/dev/null; then groupadd --system docker; "
        f"{_say('created the group docker')}; fi\n"
        f"if ! id -nG {u} | tr ' ' '\\n' | grep -qx docker; then usermod -aG docker {u}; "
        f"{_say(f'added {user} to the group docker')}; fi\n"
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
            f"    systemctl enable docker.service >/dev/null 2>&1; {_say('enabled docker.service at boot')}\n"
            "  fi\n"
            "  if ! systemctl is-active --quiet docker.service; then\n"
            f"    systemctl start docker.service; {_say('started docker.service')}\n"
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
        f"  mkdir -p {DOCKERD_LOG.rsplit('/', 1)[0]}\n"
        f"  setsid nohup dockerd >>{DOCKERD_LOG} 2>&1 </dev/null &\n"
        f"  {_say(f'started dockerd in the background (no systemd; log {DOCKERD_LOG})')}\n"
        "fi\n" + _wait_script(f"see {DOCKERD_LOG}", DOCKERD_LOG)
    )


VERIFY_SCRIPT = "docker version --format '{{.Server.Version}}'\n"
VERIFY_USER_SCRIPT = (
    # A new login of the user gets the docker group; `sg` gives it to this command already.
    "if ! command -v sg >/dev/null 2>&1; then echo 'skipped (no sg)'; exit 0; fi\n"
    "sg docker -c \"docker version --format '{{.Server.Version}}'\"\n"
)


def unsupported_reason(state: HostState, source: Source) -> str | None:
    os_info = state.os
    if os_info.family is None:
        found = f"'{os_info.name}'" if os_info.id else "an OS without /etc/os-release"
        return (f"unsupported OS {found}: bootstrap installs Docker on Ubuntu and Debian only; "
                f"install Docker there yourself (nothing was changed)")
    if state.arch not in SUPPORTED_ARCHES:
        return (f"unsupported CPU architecture '{state.arch}' ({os_info.name}): bootstrap supports "
                f"{', '.join(SUPPORTED_ARCHES)}; install Docker there yourself (nothing was changed)")
    if source == "official" and not os_info.codename:
        return (f"{os_info.name}: /etc/os-release names no release codename, which Docker's apt repository "
                f"needs; set docker.source: distro (nothing was changed)")
    return None


def plan_bootstrap(host: str, state: HostState, source: Source = "distro") -> Plan:
    """The steps that make Docker usable on a host, given what the probe saw."""
    if state.ready:
        return Plan(host, state)
    installed = state.docker_cli and state.dockerd
    if not installed:
        reason = unsupported_reason(state, source)
        if reason:
            return Plan(host, state, error=reason)
    if state.privilege == "none":
        return Plan(host, state, error=(
            f"{state.user} is not root and sudo is not installed: log in as root, or install sudo "
            f"and allow {state.user} to use it (nothing was changed)"))

    steps: list[Step] = []

    def add(key: str, title: str, script: str, timeout: float) -> None:
        argv, password = privileged_argv(script, state.privilege)
        steps.append(Step(key, title, script, argv, password, timeout))

    if state.privilege == "sudo-password":
        add("sudo-check", "check the sudo password", "true\n", 60)
    summary = []
    if not installed:
        title, script = install_script(state.os, state.arch, source)
        add("install", title, script, 1800)
        summary.append(title)
    if not state.is_root:
        add("group", f"add {state.user} to the group docker", group_script(state.user), 60)
    add("start", "start the engine" + (" with systemd" if state.systemd else " in the background (no systemd)"),
        start_script(state.systemd), START_WAIT + 60)
    add("verify", "check that the engine answers", VERIFY_SCRIPT, 60)
    if not state.is_root:
        steps.append(Step("verify-user", f"check that {state.user} can use docker", VERIFY_USER_SCRIPT,
                          user_argv(VERIFY_USER_SCRIPT), False, 60))
    if not summary:
        summary.append("start the engine" if state.engine_version is None else "configure the engine")
    return Plan(host, state, tuple(steps), summary="; ".join(summary))


def changes_in(output: str) -> list[str]:
    """The `infra-change:` lines a step printed."""
    return [line[len(CHANGE):].strip() for line in output.splitlines() if line.startswith(CHANGE)]


def last_line(text: str, default: str = "no output") -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip() and not line.startswith(CHANGE)]
    return lines[-1] if lines else default


def explain_failure(step: Step, exit_code: int, output: str, state: HostState) -> str:
    """One line saying why a step failed, with a hint where the cause is a common one."""
    tail = last_line(output)
    user = state.user
    if step.key == "sudo-check":
        return f"sudo did not accept the password of {user} (wrong password, or {user} may not use sudo): {tail}"
    if exit_code == 124:
        return f"{step.title}: timed out after {step.timeout:g} s ({tail})"
    if "a password is required" in output or "a terminal is required" in output:
        return f"{step.title}: sudo now asks {user} for a password; run bootstrap again to be asked for it"
    if step.key == "install":
        if "Unable to locate package docker" in output and state.os.family == "ubuntu":
            return (f"{step.title}: docker.io was not found; enable Ubuntu's universe component "
                    f"(add-apt-repository universe) or set docker.source: official ({tail})")
        if any(s in output for s in ("Temporary failure resolving", "Could not resolve", "Failed to fetch",
                                     "Could not connect", "Connection timed out")):
            return f"{step.title}: the host cannot reach its package mirror ({tail})"
    return f"{step.title} failed (exit {exit_code}): {tail}"
