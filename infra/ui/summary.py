"""What people read after `infra up`: the plan of a dry run, or where the running cluster is."""

from __future__ import annotations

from ..config import Cluster
from ..plans.addresses import broker_url_hidden, flower_url
from ..plans.containers import change_steps, worker_count
from .reporter import Reporter


def print_plan(cluster: Cluster, result, reporter: Reporter) -> None:
    """Each host's steps in order, each with the command it amounts to (secrets never appear)."""
    reporter.heading(f"plan for cluster {cluster.name} (dry run: nothing is changed)")
    for name, plan in result.plans.items():
        if plan.host.is_local:
            reporter.host(name, f"project: used in place at {plan.layout.project_dir}")
        steps = list(plan.steps)
        for image in plan.images:
            if image.action in ("ship", "present"):
                reporter.host(name, f"image: {image.describe()}")
        steps += change_steps(cluster, plan.containers, plan.secret_writes)
        for step in steps:
            if step.op is None and step.command is None:
                continue
            reporter.host(name, step.description)
            reporter.host(name, f"  $ {step.text() if len(step.text()) < 400 else step.text()[:397] + '...'}", style="dim")
        for change in plan.containers:
            if change.action == "keep":
                reporter.host(name, f"container: {change.describe()}", style="dim")
        for network in plan.stale_networks:
            reporter.host(name, f"remove network {network} (this host is no longer the master)")
        if plan.nothing_to_do:
            reporter.host(name, "nothing to do")
    for name, removed in result.departed.items():
        reporter.host(name, f"left the cluster file: remove {', '.join(removed) or 'nothing'}")


def print_summary(cluster: Cluster, result, reporter: Reporter) -> None:
    master = cluster.master_host.name
    roles = []
    for name in cluster.used_hosts():
        parts = ["master"] if name == master else []
        count = worker_count(cluster, name)
        if count:
            parts.append(f"{count} worker container{'s' if count != 1 else ''}")
        roles.append(f"{name} ({', '.join(parts)})")
    address = result.master_address
    reporter.info(f"  hosts:    {'; '.join(roles)}")
    reporter.info(f"  workers:  {len(result.workers)} answering")
    reporter.info(f"  broker:   {broker_url_hidden(cluster, 'worker', address)}")
    where = "" if cluster.spec.roles.master.publish_flower else " on the master host only: `infra flower` opens it here,"
    reporter.info(f"  flower:   {flower_url(cluster, address)}{where} (user admin, password in the secrets file)")
    reporter.info(f"  secrets:  {cluster.secrets_path} (mode 0600)")
    if cluster.spec.tls:
        reporter.info(f"  TLS:      cluster CA {cluster.tls_dir / 'ca.crt'} ({result.ca_fingerprint})")
    else:
        reporter.info("  TLS:      off (tls: false): broker, results and Flower are plain text on the network")
    reporter.info(f"  manifest: {cluster.manifest_path}")
