"""`infra bootstrap`: install and start Docker on the cluster's hosts that lack it.

The acting half: connections come from `infra.runner`, every decision from `infra.bootstrap`.
All hosts at once: probe (read-only, as the SSH user), plan, ask for a sudo password once if a
host needs one, then run each host's steps in order. One line per host at the end: already
there, installed (or configured), or failed and why. Exit code 1 if any host failed.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import click

from .bootstrap import (
    Plan,
    Step,
    changes_in,
    explain_failure,
    last_line,
    parse_probe,
    plan_bootstrap,
    PROBE_SCRIPT,
)
from .config import Cluster, Host
from .errors import ConfigError, InfraError, one_line
from .report import Reporter

PasswordSource = Callable[[list[str]], "str | None"]


@dataclass
class HostOutcome:
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
    pass


def select_hosts(cluster: Cluster, hosts_option: str | None) -> list[Host]:
    """`--hosts a,b` (any host of the file, or local), else the hosts the cluster file uses."""
    if not hosts_option:
        return [cluster.hosts[name] for name in cluster.used_hosts()]
    names: list[str] = []
    for name in (part.strip() for part in hosts_option.split(",")):
        if not name:
            continue
        if name not in cluster.hosts:
            known = ", ".join(sorted(cluster.hosts))
            raise ConfigError(f"--hosts: unknown host {name!r} (hosts: {known})")
        if name not in names:
            names.append(name)
    if not names:
        raise ConfigError("--hosts: no host named")
    return [cluster.hosts[name] for name in names]


def _strip_host(name: str, message: str) -> str:
    prefix = f"{name}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def _run_step(conn, step: Step, password: str | None):
    stdin = None
    if step.password_on_stdin:
        stdin = ((password or "") + "\n").encode()
    return conn.run(list(step.argv), stdin=stdin, timeout=step.timeout, check=False)


def execute_plan(conn, plan: Plan, password: str | None, reporter: Reporter) -> HostOutcome:
    """Run one host's steps in order; the first failing step ends the host's work."""
    state = plan.state
    changes: list[str] = []
    version = state.engine_version if state else None
    installed = False
    for step in plan.steps:
        if step.key in ("install", "start"):
            reporter.host(plan.host, f"{step.title} ...", style="dim")
        started = time.monotonic()
        result = _run_step(conn, step, password)
        if not result.ok:
            raise StepFailed(explain_failure(step, result.exit_code, result.output, state))
        changes += changes_in(result.stdout)
        if step.key == "install":
            installed = True
            reporter.host(plan.host, f"{step.title}: done ({time.monotonic() - started:.1f} s)", style="dim")
        elif step.key == "verify":
            version = last_line(result.stdout, default="") or version
    status = "installed" if installed else ("configured" if changes else "already there")
    note = ""
    if conn.host.is_local and state and not state.is_root and any("group docker" in c for c in changes):
        note = "log out and in again (or run `newgrp docker`) so that this shell can use docker without sudo"
    return HostOutcome(plan.host, status, version, changes, note=note)


def bootstrap_hosts(
    cluster: Cluster,
    hosts: list[Host],
    reporter: Reporter,
    ask_password: PasswordSource,
    *,
    dry_run: bool = False,
) -> dict[str, HostOutcome]:
    """Probe, plan and (unless dry_run) bootstrap every host at once; failures are outcomes."""
    from .runner import ConnectionPool, run_concurrently

    source = cluster.spec.docker.source
    outcomes: dict[str, HostOutcome] = {}
    with ConnectionPool(cluster.spec.ssh.connect_timeout) as pool:
        opened = pool.open(hosts)
        for name, err in opened.failed.items():
            outcomes[name] = HostOutcome(name, "failed", error=_strip_host(name, one_line(err)))
        reachable = [h for h in hosts if h.name in opened.succeeded]

        def probe(host: Host) -> Plan:
            result = pool[host.name].run(["sh", "-c", PROBE_SCRIPT], timeout=60, check=False)
            try:
                state = parse_probe(result.stdout)
            except ValueError as exc:
                raise InfraError(f"could not read the host's state ({exc}): {last_line(result.output)}") from None
            return plan_bootstrap(host.name, state, source)

        probed = run_concurrently(reachable, probe, key=lambda h: h.name)
        for name, err in probed.failed.items():
            outcomes[name] = HostOutcome(name, "failed", error=_strip_host(name, one_line(err)))
        plans: dict[str, Plan] = probed.succeeded
        for name, plan in plans.items():
            if plan.error:
                outcomes[name] = HostOutcome(name, "failed", error=plan.error)
            elif plan.nothing_to_do:
                outcomes[name] = HostOutcome(name, "already there", plan.state.engine_version,
                                             note=_group_note(pool[name].host, plan))
            elif dry_run:
                outcomes[name] = HostOutcome(name, "would change", plan.state.engine_version,
                                             [s.title for s in plan.steps if s.key != "sudo-check"])
        todo = [plan for name, plan in plans.items() if name not in outcomes]

        password = None
        needing = [p for p in todo if p.needs_password]
        if needing:
            who = [f"{p.state.user}@{p.host}" for p in needing]
            password = ask_password(who)
            if password is None:
                for plan in needing:
                    outcomes[plan.host] = HostOutcome(plan.host, "failed", error=(
                        f"{plan.state.user} needs a sudo password: run bootstrap in a terminal to be asked "
                        f"for it, or pass --sudo-password-stdin (nothing was changed)"))
                todo = [p for p in todo if not p.needs_password]

        done = run_concurrently(todo, lambda plan: execute_plan(pool[plan.host], plan, password, reporter),
                                key=lambda plan: plan.host)
        outcomes.update(done.succeeded)
        for name, err in done.failed.items():
            outcomes[name] = HostOutcome(name, "failed", error=_strip_host(name, one_line(err)))
    return {h.name: outcomes[h.name] for h in hosts}


def _group_note(host: Host, plan: Plan) -> str:
    state = plan.state
    if host.is_local and state.docker_version is None and state.docker_version_via_group:
        return "this login has not the group docker yet: log out and in again, or run `newgrp docker`"
    return ""


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


def register(main: click.Group) -> None:
    from .cli import cluster_file_option, handle_errors, load

    @main.command()
    @cluster_file_option
    @click.option("--hosts", "hosts_option", metavar="A,B",
                  help="Only these hosts (any host of the file, or local); default: every host the cluster uses.")
    @click.option("--sudo-password-stdin", is_flag=True,
                  help="Read the sudo password from the first line of stdin instead of asking at the terminal.")
    @click.option("--dry-run", is_flag=True, help="Probe the hosts and print what would be done; change nothing.")
    @handle_errors
    def bootstrap(cluster_file: Path, hosts_option: str | None, sudo_password_stdin: bool, dry_run: bool) -> None:
        """Install and start the Docker engine on hosts that lack it.

        \b
        Ubuntu and Debian (amd64, arm64, armhf), from the distribution's packages
        (docker.io) or, with `docker: {source: official}` in the cluster file, from
        Docker's apt repository. Works as root or through sudo: a password is asked
        once, at the terminal, only if a host needs one, and is never stored. The SSH
        user joins the group docker. Hosts without systemd get dockerd started in the
        background (log /var/log/dockerd.log). Running it again changes nothing.

        \b
        Example:
          infra bootstrap -f cluster.yaml --hosts local
          infra bootstrap -f cluster.yaml
          echo "$PASSWORD" | infra bootstrap -f cluster.yaml --sudo-password-stdin
        """
        started = time.monotonic()
        cluster = load(cluster_file)
        hosts = select_hosts(cluster, hosts_option)
        reporter = Reporter()
        outcomes = bootstrap_hosts(cluster, hosts, reporter, password_source(sudo_password_stdin), dry_run=dry_run)
        for name, outcome in outcomes.items():
            reporter.host(name, outcome.line(), style="red" if outcome.failed else ("dim" if outcome.status == "already there" else ""))
        failed = sorted(name for name, o in outcomes.items() if o.failed)
        counts: dict[str, int] = {}
        for outcome in outcomes.values():
            counts[outcome.status] = counts.get(outcome.status, 0) + 1
        summary = ", ".join(f"{n} {status}" for status, n in counts.items())
        reporter.info(f"bootstrap{' (dry run)' if dry_run else ''}: {summary} ({time.monotonic() - started:.1f} s)")
        if failed:
            raise InfraError(f"bootstrap failed on {len(failed)} of {len(outcomes)} host(s): {', '.join(failed)}")
