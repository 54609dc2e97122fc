"""`infra bootstrap`: install and start Docker on the cluster's hosts that lack it.

All hosts at once: probe (read-only, as the SSH user), plan, ask for a sudo password once if a
host needs one, then run each host's steps in order. Connections come from `infra.transport`, the
commands from `infra.commands.bootstrap`, every decision from `infra.plans.bootstrap`. The
result is one `BootstrapOutcome` per host: already there, installed (or configured), would
change (dry run), or failed and why. A failed host is data, never a crash.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import click

from ..commands.bootstrap import probe_argv
from ..config import Cluster, Host
from ..errors import InfraError, one_line, without_host
from ..facts.os import parse_probe
from ..facts.sections import last_line
from ..plans.bootstrap import (
    BootstrapStep,
    Plan,
    changes_in,
    explain_failure,
    plan_bootstrap,
    step_result,
)
from ..transport.connection import Connection
from ..transport.pool import ConnectionPool, GroupResult, run_concurrently
from ..transport.result import CommandResult
from ..ui.reporter import Reporter

# Given the `user@host` of the hosts that need it, the sudo password, or None when none can be had.
PasswordSource = Callable[[list[str]], "str | None"]

PROBE_TIMEOUT = 60.0


@dataclass
class BootstrapOutcome:
    """What bootstrap did (or would do) on one host, as the report's one line says it."""

    host: str
    status: str  # "already there", "installed", "configured", "failed", "would change"
    version: str | None = None
    changes: list[str] = field(default_factory=list)
    error: str | None = None
    note: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    def line(self) -> str:
        if self.failed:
            return f"failed: {self.error}"
        if self.status == "would change":
            return f"would {'; '.join(self.changes)}"
        version = f"Docker {self.version}" if self.version else "Docker"
        if self.status == "already there":
            text = f"already there: {version}, nothing changed"
        else:
            text = f"{self.status}: {version} ({'; '.join(self.changes)})" if self.changes else f"{self.status}: {version}"
        return text + (f" — {self.note}" if self.note else "")


class StepFailed(InfraError):
    """A step of a host's plan failed; its message says why, in one line."""


def _failed(name: str, err: BaseException) -> BootstrapOutcome:
    # The report prefixes each line with the host already.
    return BootstrapOutcome(name, "failed", error=without_host(name, one_line(err)))


def _run_step(conn: Connection, step: BootstrapStep, password: str | None) -> CommandResult:
    stdin = ((password or "") + "\n").encode() if step.password_on_stdin else None
    return conn.run(list(step.argv), stdin=stdin, timeout=step.timeout, check=False)


def execute_plan(conn: Connection, plan: Plan, password: str | None, reporter: Reporter) -> BootstrapOutcome:
    """Run one host's steps in order; the first failing step ends the host's work."""
    state = plan.state
    changes: list[str] = []
    version = state.engine_version if state else None
    installed = False
    for step in plan.steps:
        if step.key in ("install", "start", "registry"):
            reporter.host(plan.host, f"{step.title} ...", style="dim")
        started = time.monotonic()
        result = _run_step(conn, step, password)
        if not result.ok:
            raise StepFailed(explain_failure(step, result.exit_code, result.output, state))
        changes += changes_in(result.stdout)
        if step.key in ("install", "registry"):
            installed = installed or step.key == "install"
            reporter.host(plan.host, f"{step.title}: done ({time.monotonic() - started:.1f} s)", style="dim")
        elif step.key == "verify":
            version = step_result(result.stdout, default="") or version
    status = "installed" if installed else ("configured" if changes else "already there")
    note = ""
    if conn.host.is_local and state and not state.is_root and any("group docker" in c for c in changes):
        note = "log out and in again (or run `newgrp docker`) so that this shell can use docker without sudo"
    return BootstrapOutcome(plan.host, status, version, changes, note=note)


def _group_note(host: Host, plan: Plan) -> str:
    """This very login (on `local`) cannot use docker yet, though later ones will."""
    state = plan.state
    if host.is_local and state.docker_version is None and state.docker_version_via_group:
        return "this login has not the group docker yet: log out and in again, or run `newgrp docker`"
    return ""


def bootstrap_hosts(
    cluster: Cluster,
    hosts: list[Host],
    reporter: Reporter,
    ask_password: PasswordSource,
    *,
    dry_run: bool = False,
    nvidia_hosts: frozenset[str] = frozenset(),
) -> dict[str, BootstrapOutcome]:
    """Probe, plan and (unless dry_run) bootstrap every host at once; failures are outcomes.

    `nvidia_hosts` also get the NVIDIA container toolkit (`bootstrap --nvidia`)."""
    outcomes: dict[str, BootstrapOutcome] = {}
    with ConnectionPool.for_cluster(cluster) as pool:
        opened = pool.open(hosts)
        for name, err in opened.failed.items():
            outcomes[name] = _failed(name, err)
        reachable = [h for h in hosts if h.name in opened.succeeded]
        probed = _probe_and_plan(pool, cluster, reachable, nvidia_hosts)
        for name, err in probed.failed.items():
            outcomes[name] = _failed(name, err)
        plans: dict[str, Plan] = probed.succeeded
        outcomes.update(_settled_by_plans(pool, plans, dry_run))
        todo = [plan for name, plan in plans.items() if name not in outcomes]
        outcomes.update(_refused_a_password(pool, todo))
        todo = [p for p in todo if p.host not in outcomes]
        password, unasked = _sudo_password(todo, ask_password)
        outcomes.update(unasked)
        todo = [p for p in todo if p.host not in outcomes]

        done = run_concurrently(todo, lambda plan: execute_plan(pool[plan.host], plan, password, reporter),
                                key=lambda plan: plan.host)
        outcomes.update(done.succeeded)
        for name, err in done.failed.items():
            outcomes[name] = _failed(name, err)
    return {h.name: outcomes[h.name] for h in hosts}


def _probe_and_plan(pool: ConnectionPool, cluster: Cluster, hosts: list[Host],
                    nvidia_hosts: frozenset[str]) -> GroupResult:
    """Each host's plan, from its probe (read-only, as the SSH user), all hosts at once."""
    source = cluster.spec.docker.source
    # `up` sends shipped images through a registry it runs here: this machine gets docker-registry.
    shipping = cluster.spec.images.source == "ship"

    def probe(host: Host) -> Plan:
        result = pool[host.name].run(probe_argv(), timeout=PROBE_TIMEOUT, check=False)
        try:
            state = parse_probe(result.stdout)
        except ValueError as exc:
            raise InfraError(f"could not read the host's state ({exc}): {last_line(result.output)}") from None
        return plan_bootstrap(host.name, state, source, nvidia=host.name in nvidia_hosts,
                              registry=host.is_local and shipping)

    return run_concurrently(hosts, probe, key=lambda h: h.name)


def _settled_by_plans(pool: ConnectionPool, plans: dict[str, Plan], dry_run: bool) -> dict[str, BootstrapOutcome]:
    """The outcomes known without running a step: a plan that failed, nothing to do, or a dry run."""
    outcomes = {}
    for name, plan in plans.items():
        if plan.error:
            outcomes[name] = BootstrapOutcome(name, "failed", error=plan.error)
        elif plan.nothing_to_do:
            outcomes[name] = BootstrapOutcome(name, "already there", plan.state.engine_version,
                                              note=_group_note(pool[name].host, plan))
        elif dry_run:
            outcomes[name] = BootstrapOutcome(name, "would change", plan.state.engine_version,
                                              [s.title for s in plan.steps if s.key != "sudo-check"])
    return outcomes


def _refused_a_password(pool: ConnectionPool, todo: list[Plan]) -> dict[str, BootstrapOutcome]:
    """A sudo password goes only to a host whose key was known before this run: one learned just
    now (first use) may belong to whoever answered for the address."""
    outcomes = {}
    for plan in [p for p in todo if p.needs_password]:
        learned = getattr(pool[plan.host], "learned_host_key", None)
        if learned:
            outcomes[plan.host] = BootstrapOutcome(plan.host, "failed", error=(
                f"its host key ({learned}) was first seen in this run: a sudo password is only sent to a "
                f"host whose key was known before; check the key (now in your known hosts file) and run "
                f"bootstrap again (nothing was changed)"))
    return outcomes


def _sudo_password(todo: list[Plan], ask_password: PasswordSource) -> tuple[str | None, dict[str, BootstrapOutcome]]:
    """The sudo password, asked once if a host needs one; without it, those hosts fail unchanged."""
    needing = [p for p in todo if p.needs_password]
    if not needing:
        return None, {}
    password = ask_password([f"{p.state.user}@{p.host}" for p in needing])
    if password is not None:
        return password, {}
    return None, {plan.host: BootstrapOutcome(plan.host, "failed", error=(
        f"{plan.state.user} needs a sudo password: run bootstrap in a terminal to be asked "
        f"for it, or pass --sudo-password-stdin (nothing was changed)")) for plan in needing}


def password_source(from_stdin: bool) -> PasswordSource:
    """Asks once (terminal, hidden) or reads one line of stdin; never stores the password."""
    cache: dict[str, str | None] = {}

    def ask(who: list[str]) -> str | None:
        if "pw" in cache:
            return cache["pw"]
        if from_stdin:
            line = sys.stdin.readline()
            cache["pw"] = line[:-1] if line.endswith("\n") else line
        elif sys.stdin.isatty():
            cache["pw"] = click.prompt(f"sudo password for {', '.join(who)}", hide_input=True,
                                       default="", show_default=False, err=True)
        else:
            cache["pw"] = None
        return cache["pw"]

    return ask
