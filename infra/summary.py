"""Human-readable renderings of an `up` plan and of a running cluster's coordinates."""

from __future__ import annotations

from .config import Cluster
from .report import Reporter


def broker_url_hidden(cluster: Cluster, user: str, address: str) -> str:
    return f"amqp://{user}:****@{address}:{cluster.spec.ports.broker}//"


def flower_url(cluster: Cluster, address: str) -> str:
    return f"http://{address}:{cluster.spec.ports.flower}"


def print_plan(cluster: Cluster, result, reporter: Reporter) -> None:
    reporter.heading(f"plan for cluster {cluster.name} (dry run: nothing is changed)")
    for name, plan in result.plans.items():
        lines = []
        sync = getattr(plan, "project_sync", None)
        if plan.host.is_local:
            lines.append(f"project: used in place at {plan.layout.project_dir}")
        elif sync is not None:
            lines.append(f"project -> {plan.layout.project_dir}: {sync.describe()}")
        lines.append(f"env files: {', '.join(f.name for f in plan.env_files)} in {plan.layout.env_dir} (mode 0600)")
        for step in plan.images:
            lines.append(f"image: {step.describe()}")
        if plan.network:
            lines.append(f"network: {plan.network}; volumes: {', '.join(plan.volumes)}")
        for change in plan.containers:
            lines.append(f"container: {change.describe()}")
        if not plan.changes and all(s.action == "present" for s in plan.images) and not (sync and sync.changed):
            lines.append("nothing to do")
        for line in lines:
            reporter.host(name, line)


def print_summary(cluster: Cluster, result, reporter: Reporter) -> None:
    master = cluster.master_host.name
    roles = []
    for name in cluster.used_hosts():
        parts = []
        if name == master:
            parts.append("master")
        count = sum(g.containers for g in cluster.spec.roles.workers if g.host == name)
        if count:
            parts.append(f"{count} worker container{'s' if count != 1 else ''}")
        roles.append(f"{name} ({', '.join(parts)})")
    address = result.master_address
    reporter.info(f"  hosts:    {'; '.join(roles)}")
    reporter.info(f"  workers:  {len(result.workers)} answering")
    reporter.info(f"  broker:   {broker_url_hidden(cluster, 'infra', result.master_address)}")
    reporter.info(f"  flower:   {flower_url(cluster, address)} (user admin, password in the secrets file)")
    reporter.info(f"  secrets:  {cluster.secrets_path} (mode 0600)")
    reporter.info(f"  manifest: {cluster.manifest_path}")
