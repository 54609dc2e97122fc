"""`infra bootstrap`: install and start the Docker engine on hosts that lack it."""

from __future__ import annotations

import time
from pathlib import Path

import click

from ..errors import ConfigError, InfraError
from .options import (
    cluster_file_option,
    handle_errors,
    hosts_option,
    load_cluster_file,
    select_hosts,
)


@click.command()
@cluster_file_option
@hosts_option
@click.option("--sudo-password-stdin", is_flag=True,
              help="Read the sudo password from the first line of stdin instead of asking at the terminal.")
@click.option("--dry-run", is_flag=True, help="Probe the hosts and print what would be done; change nothing.")
@click.option("--nvidia", is_flag=True,
              help="Also install the NVIDIA container toolkit on the hosts whose workers have `gpus` "
                   "(their NVIDIA driver must be installed already).")
@handle_errors
def bootstrap(cluster_file: Path, hosts_option: str | None, sudo_password_stdin: bool, dry_run: bool,
              nvidia: bool) -> None:
    """Install and start the Docker engine on hosts that lack it.

    \b
    Ubuntu and Debian (amd64, arm64, armhf), from the distribution's packages
    (docker.io) or, with `docker: {source: official}` in the cluster file, from
    Docker's apt repository. Works as root or through sudo: a password is asked
    once, at the terminal, only if a host needs one, and is never stored. The SSH
    user joins the group docker. Hosts without systemd get dockerd started in the
    background (log /var/log/dockerd.log). Running it again changes nothing.

    \b
    With --nvidia, the hosts whose worker groups set `gpus` also get the NVIDIA
    container toolkit (NVIDIA's apt repository) and the nvidia runtime registered
    with Docker, which is then restarted; the GPU driver itself must be there.

    \b
    With `images: {source: ship}`, `local` (this machine) also gets Debian's
    docker-registry, which `up` runs on loopback to send images by layers; the
    package's own service is kept from starting and disabled.

    \b
    Example:
      infra bootstrap -f cluster.yaml --hosts local
      infra bootstrap -f cluster.yaml
      echo "$PASSWORD" | infra bootstrap -f cluster.yaml --sudo-password-stdin
      infra bootstrap -f cluster.yaml --nvidia
    """
    from ..ui.reporter import Reporter
    from ..workflows.bootstrap import bootstrap_hosts, password_source

    started = time.monotonic()
    cluster = load_cluster_file(cluster_file)
    hosts = select_hosts(cluster, hosts_option)
    nvidia_hosts = frozenset()
    if nvidia:
        with_gpus = {group.host for group in cluster.spec.roles.workers if group.gpus is not None and group.containers}
        nvidia_hosts = frozenset(host.name for host in hosts if host.name in with_gpus)
        if not nvidia_hosts:
            raise ConfigError("--nvidia: none of these hosts has a worker group with `gpus` in the cluster file")
    reporter = Reporter()
    outcomes = bootstrap_hosts(cluster, hosts, reporter, password_source(sudo_password_stdin), dry_run=dry_run,
                               nvidia_hosts=nvidia_hosts)
    for name, outcome in outcomes.items():
        style = "red" if outcome.failed else ("dim" if outcome.status == "already there" else "")
        reporter.host(name, outcome.line(), style=style)
    counts: dict[str, int] = {}
    for outcome in outcomes.values():
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in counts.items())
    reporter.info(f"bootstrap{' (dry run)' if dry_run else ''}: {summary} ({time.monotonic() - started:.1f} s)")
    failed = sorted(name for name, outcome in outcomes.items() if outcome.failed)
    if failed:
        raise InfraError(f"bootstrap failed on {len(failed)} of {len(outcomes)} host(s): {', '.join(failed)}")
