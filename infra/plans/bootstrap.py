"""What `infra bootstrap` does on a host, decided from the probe alone.

`plan_bootstrap` turns a `HostState` (`infra.facts.os`) and the cluster file's `docker.source`
into a `Plan`: the steps still needed, each a script of `infra.commands.bootstrap` with the argv
that runs it with the right privilege. A host whose Docker already answers gets no step.
`changes_in` and `explain_failure` read what a step printed back into the report's words.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..commands.bootstrap import (
    CHANGE,
    NVIDIA_VERIFY_SCRIPT,
    START_WAIT,
    VERIFY_SCRIPT,
    VERIFY_USER_SCRIPT,
    Source,
    group_script,
    install_script,
    nvidia_runtime_script,
    nvidia_toolkit_script,
    privileged_argv,
    registry_script,
    start_script,
    user_argv,
)
from ..facts.os import HostState
from ..facts.sections import last_line

SUPPORTED_ARCHES = ("amd64", "arm64", "armhf")
NVIDIA_ARCHES = ("amd64", "arm64")  # those NVIDIA's apt repository has the toolkit for


@dataclass(frozen=True)
class BootstrapStep:
    """One thing to do on a host: a POSIX sh script, and the argv that runs it."""

    key: str  # "sudo-check", "install", "group", "start", "verify", "verify-user", "nvidia-install"...
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
    steps: tuple[BootstrapStep, ...] = ()
    error: str | None = None  # why nothing will be done (unsupported OS, no privilege)
    summary: str = ""  # "install docker.io from Debian's packages" / "start the engine"

    @property
    def needs_password(self) -> bool:
        return any(step.password_on_stdin for step in self.steps)

    @property
    def nothing_to_do(self) -> bool:
        return not self.steps and self.error is None


def unsupported_reason(state: HostState, source: Source) -> str | None:
    """Why bootstrap cannot install Docker on this host (None: it can)."""
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


def plan_bootstrap(host: str, state: HostState, source: Source = "distro", nvidia: bool = False,
                   registry: bool = False) -> Plan:
    """The steps that make Docker usable on a host, given what the probe saw; with `nvidia`, also
    the NVIDIA container toolkit, so that containers can be given the host's GPUs; with
    `registry` (this machine, when images are shipped), also Debian's docker-registry."""
    plan = _docker_plan(host, state, source)
    if nvidia and plan.error is None:
        plan = _with_nvidia(plan, state)
    if registry and plan.error is None:
        plan = _with_registry(plan, state)
    return plan


def _privileged(state: HostState, key: str, title: str, script: str, timeout: float) -> BootstrapStep:
    """A step run as root: directly, or through sudo (with the password on stdin when it asks one)."""
    argv, password = privileged_argv(script, state.privilege)
    return BootstrapStep(key, title, script, argv, password, timeout)


def _steps_then_privileged(plan: Plan, state: HostState) -> list[BootstrapStep]:
    """The plan's steps so far, ready for privileged ones: the sudo password is checked first, once."""
    steps = list(plan.steps)
    if state.privilege == "sudo-password" and not any(step.key == "sudo-check" for step in steps):
        steps.append(_privileged(state, "sudo-check", "check the sudo password", "true\n", 60))
    return steps


def _no_privilege(host: str, state: HostState) -> Plan:
    return Plan(host, state, error=(
        f"{state.user} is not root and sudo is not installed: log in as root, or install sudo "
        f"and allow {state.user} to use it (nothing was changed)"))


def _docker_plan(host: str, state: HostState, source: Source) -> Plan:
    if state.ready:
        return Plan(host, state)
    installed = state.docker_cli and state.dockerd
    if not installed:
        reason = unsupported_reason(state, source)
        if reason:
            return Plan(host, state, error=reason)
    if state.privilege == "none":
        return _no_privilege(host, state)

    steps = _steps_then_privileged(Plan(host, state), state)

    def add(key: str, title: str, script: str, timeout: float) -> None:
        steps.append(_privileged(state, key, title, script, timeout))

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
        steps.append(BootstrapStep("verify-user", f"check that {state.user} can use docker", VERIFY_USER_SCRIPT,
                                   user_argv(VERIFY_USER_SCRIPT), False, 60))
    if not summary:
        summary.append("start the engine" if state.engine_version is None else "configure the engine")
    return Plan(host, state, tuple(steps), summary="; ".join(summary))


def _with_nvidia(plan: Plan, state: HostState) -> Plan:
    """Docker's steps followed by those that give it the nvidia runtime (none when it has it)."""
    if state.nvidia_toolkit and state.nvidia_runtime:
        return plan
    host = plan.host
    if not state.nvidia_driver:
        return Plan(host, state, error=(
            "--nvidia: no NVIDIA driver on this host (nvidia-smi not found): install the driver of its GPUs "
            "first, then run bootstrap --nvidia again (nothing was changed)"))
    if not state.nvidia_toolkit and (state.os.family is None or state.arch not in NVIDIA_ARCHES):
        return Plan(host, state, error=(
            f"--nvidia: {state.os.name} on {state.arch}: bootstrap installs the NVIDIA container toolkit on "
            f"Ubuntu and Debian for {', '.join(NVIDIA_ARCHES)} only; install it there yourself (nothing was changed)"))
    if state.privilege == "none":
        return _no_privilege(host, state)
    steps = _steps_then_privileged(plan, state)

    def add(key: str, title: str, script: str, timeout: float) -> None:
        steps.append(_privileged(state, key, title, script, timeout))

    summary = [plan.summary] if plan.summary else []
    if not state.nvidia_toolkit:
        add("nvidia-install", "install the NVIDIA container toolkit from NVIDIA's apt repository",
            nvidia_toolkit_script(), 1800)
        summary.append("install the NVIDIA container toolkit")
    if not state.nvidia_runtime:
        add("nvidia-runtime", "register the nvidia runtime with Docker and restart the engine",
            nvidia_runtime_script(state.systemd), START_WAIT + 120)
        summary.append("register the nvidia runtime")
    add("nvidia-verify", "check that the engine lists the nvidia runtime", NVIDIA_VERIFY_SCRIPT, 60)
    return Plan(host, state, tuple(steps), summary="; ".join(summary))


def _with_registry(plan: Plan, state: HostState) -> Plan:
    """The steps so far, then Debian's docker-registry when it is missing: `up` runs it on this
    machine's loopback to send images by layers (`images.source: ship`).

    Where it cannot be installed (not Debian or Ubuntu, no root or sudo) nothing is added and
    nothing fails: `up` then sends whole images and says so.
    """
    if state.registry or state.os.family is None or state.privilege == "none":
        return plan
    steps = _steps_then_privileged(plan, state)
    title = "install docker-registry from Debian's packages (to send images by layers)"
    steps.append(_privileged(state, "registry", title, registry_script(state.systemd), 900))
    summary = "; ".join(part for part in (plan.summary, "install docker-registry") if part)
    return Plan(plan.host, state, tuple(steps), summary=summary)


def changes_in(output: str) -> list[str]:
    """The changes a step announced (its `CHANGE` lines)."""
    return [line[len(CHANGE):].strip() for line in output.splitlines() if line.startswith(CHANGE)]


def step_result(output: str, default: str = "no output") -> str:
    """The last line a step printed that is not a change announcement: its answer, or why it failed."""
    return last_line("\n".join(line for line in output.splitlines() if not line.startswith(CHANGE)), default)


def explain_failure(step: BootstrapStep, exit_code: int, output: str, state: HostState) -> str:
    """One line saying why a step failed, with a hint where the cause is a common one."""
    tail = step_result(output)
    user = state.user
    if step.key == "sudo-check":
        return f"sudo did not accept the password of {user} (wrong password, or {user} may not use sudo): {tail}"
    if exit_code == 124:
        return f"{step.title}: timed out after {step.timeout:g} s ({tail})"
    if "a password is required" in output or "a terminal is required" in output:
        return f"{step.title}: sudo now asks {user} for a password; run bootstrap again to be asked for it"
    if step.key == "registry" and "Unable to locate package" in output:
        return (f"{step.title}: this release has no docker-registry package (on Ubuntu it is in universe); "
                f"`up` sends whole images without it ({tail})")
    if step.key in ("install", "registry"):
        if "Unable to locate package docker" in output and state.os.family == "ubuntu":
            return (f"{step.title}: docker.io was not found; enable Ubuntu's universe component "
                    f"(add-apt-repository universe) or set docker.source: official ({tail})")
        if any(s in output for s in ("Temporary failure resolving", "Could not resolve", "Failed to fetch",
                                     "Could not connect", "Connection timed out")):
            return f"{step.title}: the host cannot reach its package mirror ({tail})"
    return f"{step.title} failed (exit {exit_code}): {tail}"
