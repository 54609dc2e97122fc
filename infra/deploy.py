"""`infra up` and `infra clean`: gather facts, ask the planner, execute, record in the manifest.

All hosts work at once; each host's steps run in order (files, images, containers). A host that
fails does not stop the others; the manifest records everything that was actually started.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import filesync
from .assets import prepare_build_context
from .config import Cluster, Host
from .errors import DockerMissingError, InfraError, RemoteCommandError, one_line, without_host
from .facts.host import HostFacts, docker_arch, facts_script, parse_host_facts, parse_sha256_list
from .manifest import Manifest
from .plan import (
    ContainerChange,
    HostPlan,
    build_argv,
    container_changes,
    expected_worker_nodes,
    images_needed,
    plan_host,
    removal_plan,
)
from .report import Reporter
from .runner import (
    Connection,
    ConnectionPool,
    LocalConnection,
    local_address_towards,
    run_concurrently,
    ship_images,
)
from .secrets import Secrets, load_or_create_secrets, load_secrets


# --------------------------------------------------------------------------- facts


def gather_facts(pool: ConnectionPool, cluster: Cluster, hosts: list[Host]) -> dict[str, HostFacts]:
    tags = [cluster.image_tag(role) for role in ("worker", "master", "broker")]
    script = facts_script(cluster.name, tags)

    def probe(host: Host) -> HostFacts:
        result = pool[host.name].run(["sh", "-c", script], timeout=60, check=False)
        try:
            return parse_host_facts(result.stdout)
        except (ValueError, IndexError) as exc:
            raise InfraError(f"{host.name}: could not read the host's state ({exc}): {result.stderr.strip()[:200]}") from None

    gathered = run_concurrently(hosts, probe, key=lambda h: h.name)
    gathered.raise_if_failed("reading host state")
    return gathered.succeeded


def require_docker(facts: dict[str, HostFacts], hosts: list[Host], config_path: Path) -> None:
    missing = [(h.name, facts[h.name].docker_problem) for h in hosts if not facts[h.name].docker_version]
    if missing:
        names = ",".join(name for name, _ in missing)
        detail = "; ".join(f"{name}: {problem}" for name, problem in missing)
        raise DockerMissingError(
            f"{detail} — run `infra bootstrap -f {config_path} --hosts {names}` to install and start it"
        )


def image_ids_on(conn: Connection, tags: list[str]) -> dict[str, str | None]:
    ids: dict[str, str | None] = {}
    for tag in tags:
        result = conn.run(["docker", "image", "inspect", "--format", "{{.Id}}", tag], check=False)
        ids[tag] = result.stdout.strip() if result.ok and result.stdout.strip() else None
    return ids


# --------------------------------------------------------------------------- up


@dataclass
class HostOutcome:
    host: str
    changes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.changes)


@dataclass
class UpResult:
    plans: dict[str, HostPlan]
    outcomes: dict[str, HostOutcome]
    master_address: str
    workers: list[str]
    dry_run: bool = False


def departed_hosts(cluster: Cluster, manifest: Manifest) -> dict[str, Host]:
    """Hosts the manifest still records that the cluster file no longer uses."""
    used = cluster.used_hosts()
    return {name: manifest.host_of(name) for name in manifest.hosts if name not in used}


def resolve_master_address(cluster: Cluster, pool: ConnectionPool) -> str:
    """The address workers on other hosts use for the broker and result backend."""
    master = cluster.master_host
    if cluster.spec.roles.master.advertise_address:
        return cluster.spec.roles.master.advertise_address
    if master.is_local:
        remote = [n for n in cluster.worker_hosts() if not cluster.hosts[n].is_local]
        if not remote:
            return "127.0.0.1"
        return local_address_towards(pool[remote[0]].peer_address() or cluster.hosts[remote[0]].address)
    return pool[master.name].peer_address() or master.address


def check_architectures(cluster: Cluster, facts: dict[str, HostFacts], hosts: list[Host]) -> None:
    if cluster.spec.images.source != "ship":
        return
    local_arch = docker_arch(facts["local"].arch) if "local" in facts else None
    if local_arch is None:
        import platform

        local_arch = docker_arch(platform.machine())
    for host in hosts:
        arch = docker_arch(facts[host.name].arch)
        if arch != local_arch:
            raise InfraError(
                f"{host.name}: the host is {arch} but images built here are {local_arch}; "
                f"set images.source: build so each host builds its own"
            )


def up(cluster: Cluster, reporter: Reporter, *, dry_run: bool = False) -> UpResult:
    started = time.monotonic()
    manifest = Manifest.load(cluster.manifest_path, cluster.name)
    hosts = [cluster.hosts[name] for name in cluster.used_hosts()]
    departed = list(departed_hosts(cluster, manifest).values())
    everyone = hosts + departed

    with ConnectionPool(cluster.spec.ssh.connect_timeout) as pool:
        pool.open(everyone).raise_if_failed("connecting")
        facts = gather_facts(pool, cluster, everyone)
        require_docker(facts, everyone, cluster.source)
        check_architectures(cluster, facts, [h for h in hosts if not h.is_local])
        master_address = resolve_master_address(cluster, pool)
        # Only now, with every host reachable and ready, is anything written.
        if dry_run:
            secrets = load_secrets(cluster.secrets_path) or Secrets.generate()
        else:
            secrets = load_or_create_secrets(cluster.secrets_path)

        # Shipped images are built here first, so the plan knows which hosts already have them.
        local_ids: dict[str, str | None] = {}
        if cluster.spec.images.source == "ship":
            if dry_run:
                needed_tags = sorted({cluster.image_tag(r) for h in hosts for r in images_needed(cluster, h)})
                local_ids = image_ids_on(LocalConnection(cluster.hosts["local"]), needed_tags)
            else:
                local_ids = build_images_locally(cluster, hosts, reporter)

        plans = {h.name: plan_host(cluster, h, facts[h.name], secrets, master_address, local_ids) for h in hosts}
        if dry_run:
            for host in hosts:
                if not host.is_local:
                    plans[host.name].project_sync = preview_sync(pool[host.name], cluster.project_dir,
                                                                 plans[host.name].layout.project_dir)
            return UpResult(plans, {}, master_address, expected_worker_nodes(cluster), dry_run=True)
        context = prepare_build_context(cluster)

        def apply(host: Host) -> HostOutcome:
            if host in departed:
                return retire_host(cluster, host, pool[host.name], facts[host.name], manifest, reporter)
            return apply_host_plan(cluster, plans[host.name], pool[host.name], facts[host.name], manifest,
                                   reporter, context)

        applied = run_concurrently(everyone, apply, key=lambda h: h.name)
        applied.raise_if_failed("bringing the cluster up")
        outcomes: dict[str, HostOutcome] = applied.succeeded
        wait_until_ready(cluster, pool[cluster.master_host.name], reporter)
        for name, outcome in outcomes.items():
            if not outcome.changed:
                reporter.host(name, "nothing to do: already up to date", style="dim")
    reporter.info(f"cluster {cluster.name} is up ({time.monotonic() - started:.1f} s)")
    return UpResult(plans, outcomes, master_address, expected_worker_nodes(cluster))


def build_images_locally(cluster: Cluster, hosts: list[Host], reporter: Reporter) -> dict[str, str | None]:
    roles = []
    for role in ("worker", "master", "broker"):
        if any(role in images_needed(cluster, h) for h in hosts) or role == "worker":
            roles.append(role)
    local = LocalConnection(cluster.hosts["local"])
    version = local.run(["docker", "version", "--format", "{{.Server.Version}}"], check=False)
    if not version.ok:
        raise DockerMissingError(
            f"local: images are built here before they are shipped, but Docker does not answer "
            f"({version.output.splitlines()[-1] if version.output else 'not installed'}) — run `infra bootstrap --hosts local`"
        )
    context = prepare_build_context(cluster)
    tags = [cluster.image_tag(r) for r in roles]
    before = image_ids_on(local, tags)
    built: dict[str, str | None] = {}
    for role, tag in zip(roles, tags):
        started = time.monotonic()
        build_image(cluster, local, role, str(context))
        built.update(image_ids_on(local, [tag]))
        if built[tag] != before[tag]:
            reporter.host("local", f"image {tag} built for shipping ({time.monotonic() - started:.1f} s)")
    return built


def build_image(cluster: Cluster, conn: Connection, role: str, context: str) -> None:
    try:
        conn.run(build_argv(cluster, role, context), timeout=3600)
    except RemoteCommandError as exc:
        tail = " | ".join(line for line in exc.output.strip().splitlines()[-3:])
        raise InfraError(f"{conn.host.name}: building {cluster.image_tag(role)} failed: {tail}") from None


def preview_sync(conn: Connection, local_root: Path, remote_root: str, rules=None) -> filesync.SyncPlan:
    """What `sync_tree` would send and delete; reads the host's file list, changes nothing."""
    rules = rules or filesync.ignore_rules(local_root)
    listing = conn.run(filesync.remote_listing_command(remote_root), timeout=300)
    return filesync.plan_sync(remote_root, filesync.scan_local(local_root, rules),
                              parse_sha256_list(listing.stdout, "."), rules)


def apply_sync(conn: Connection, local_root: Path, plan: filesync.SyncPlan) -> int:
    """Send and delete what a sync plan says; returns the bytes of the tar stream sent."""
    sent = 0
    if plan.upload:
        tar = filesync.tar_of(local_root, plan.upload)
        sent = len(tar)
        conn.run(filesync.extract_command(plan.root), stdin=tar, timeout=600)
    else:
        conn.run(["mkdir", "-p", plan.root], timeout=60)
    if plan.delete:
        conn.run(filesync.delete_command(plan.root, plan.delete), timeout=120)
    return sent


def sync_tree(conn: Connection, local_root: Path, remote_root: str, rules=None) -> filesync.SyncPlan:
    """Make remote_root hold the same files as local_root, sending only what differs."""
    plan = preview_sync(conn, local_root, remote_root, rules)
    apply_sync(conn, local_root, plan)
    return plan


def apply_host_plan(
    cluster: Cluster, plan: HostPlan, conn: Connection, facts: HostFacts, manifest: Manifest,
    reporter: Reporter, context: Path,
) -> HostOutcome:
    host = plan.host
    outcome = HostOutcome(host.name)
    layout = plan.layout

    # Files: the project (used in place on the local machine) and the env files with secrets.
    if not host.is_local:
        manifest.add_files(host, layout.project_dir)
        sync = sync_tree(conn, cluster.project_dir, layout.project_dir)
        if sync.changed:
            outcome.changes.append(f"project: {sync.describe()}")
            reporter.host(host.name, f"project {layout.project_dir}: {sync.describe()}")
    manifest.add_secret_dir(host, layout.env_dir)
    for env_file in plan.env_files:
        conn.write_private_file(env_file.path, env_file.content.encode())

    # Images.
    for step in plan.images:
        if step.action == "present":
            continue
        before = facts.image_ids.get(step.tag)
        started = time.monotonic()
        if step.action == "pull":
            conn.run(["docker", "pull", step.tag], timeout=3600)
            reporter.host(host.name, f"image {step.tag} pulled")
        elif step.action == "build":
            if not host.is_local:
                sync_tree(conn, context, layout.build_dir, rules=_no_ignores())
            build_image(cluster, conn, step.role, str(context) if host.is_local else layout.build_dir)
        elif step.action == "ship":
            sent = ship_images(LocalConnection(cluster.hosts["local"]), conn, [step.tag])
            reporter.host(host.name, f"image {step.tag} shipped ({sent / 1e6:.0f} MB in {time.monotonic() - started:.1f} s)")
        after = image_ids_on(conn, [step.tag])[step.tag]
        if after != before:
            outcome.changes.append(f"image {step.tag}")
            if step.action == "build":
                reporter.host(host.name, f"image {step.tag} built ({time.monotonic() - started:.1f} s)")

    # Network and volumes of the master's services.
    if plan.network:
        if plan.network not in facts.networks:
            exists = conn.run(["docker", "network", "inspect", plan.network], check=False).ok
            if not exists:
                conn.run(["docker", "network", "create", "--label", f"infra.cluster={cluster.name}", plan.network])
                outcome.changes.append(f"network {plan.network}")
        manifest.add_network(host, plan.network)
        for volume in plan.volumes:
            if volume not in facts.volumes:
                conn.run(["docker", "volume", "create", "--label", f"infra.cluster={cluster.name}", volume])
            manifest.add_volume(host, volume)

    # Containers, planned again with the image ids now on the host.
    ids = image_ids_on(conn, sorted({cluster.image_tag(r) for r in images_needed(cluster, host)} |
                                    {spec_image for spec_image in _images_of(plan)}))
    changes = container_changes(cluster, host, facts, layout, plan.env_files, ids)
    plan.containers = changes
    apply_container_changes(cluster, host, conn, changes, manifest, reporter, outcome)

    # A host that is no longer the master keeps no master network.
    if not plan.network:
        for network in facts.networks:
            conn.run(["docker", "network", "rm", network], check=False)
            manifest.remove_network(host.name, network)
            outcome.changes.append(f"network {network} removed")
    return outcome


def _images_of(plan: HostPlan) -> set[str]:
    return {c.spec.image for c in plan.containers if c.spec is not None}


def _no_ignores():
    import pathspec

    return pathspec.GitIgnoreSpec.from_lines([])


def apply_container_changes(
    cluster: Cluster, host: Host, conn: Connection, changes: list[ContainerChange], manifest: Manifest,
    reporter: Reporter, outcome: HostOutcome,
) -> None:
    for change in changes:
        if change.action in ("remove", "replace"):
            conn.run(["docker", "rm", "--force", change.name])
            manifest.remove_container(host.name, change.name)
        if change.action == "remove":
            reporter.host(host.name, f"removed {change.name}")
            outcome.changes.append(f"removed {change.name}")
    for change in changes:
        if change.action in ("create", "replace"):
            result = conn.run(change.spec.run_argv(cluster.name, change.fingerprint))
            container_id = result.stdout.strip().splitlines()[-1]
            manifest.add_container(host, change.name, container_id, change.role)
            verb = "started" if change.action == "create" else "replaced"
            reporter.host(host.name, f"{verb} {change.name} ({change.reason})")
            outcome.changes.append(f"{verb} {change.name}")
        elif change.action == "start":
            conn.run(["docker", "start", change.name])
            manifest.add_container(host, change.name, change.existing.id, change.role)
            reporter.host(host.name, f"started {change.name} ({change.reason})")
            outcome.changes.append(f"started {change.name}")
        elif change.action == "keep":
            manifest.add_container(host, change.name, change.existing.id, change.role)


def retire_host(cluster: Cluster, host: Host, conn: Connection, facts: HostFacts, manifest: Manifest,
                reporter: Reporter) -> HostOutcome:
    """A host in the manifest that the cluster file no longer uses: remove its containers."""
    outcome = HostOutcome(host.name)
    apply_container_changes(cluster, host, conn, removal_plan(facts), manifest, reporter, outcome)
    for network in facts.networks:
        conn.run(["docker", "network", "rm", network], check=False)
        manifest.remove_network(host.name, network)
    manifest.drop_host_if_empty(host.name)
    return outcome


# --------------------------------------------------------------------------- readiness


def master_exec(cluster: Cluster, argv: list[str]) -> list[str]:
    return ["docker", "exec", f"{cluster.name}-master", *argv]


BROKER_CHECK = (
    "import os, sys\n"
    "from kombu import Connection\n"
    "try:\n"
    "    Connection(os.environ['CELERY_BROKER_URL'], connect_timeout=3).ensure_connection(max_retries=1)\n"
    "except Exception as exc:\n"
    "    sys.exit(f'{type(exc).__name__}: {exc}')\n"
)


def parse_ping(output: str) -> set[str]:
    """Worker node names in `celery inspect ping --json` output (other lines are ignored)."""
    for line in reversed(output.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return set(json.loads(line))
            except ValueError:
                continue
    return set()


def wait_until_ready(cluster: Cluster, master: Connection, reporter: Reporter) -> None:
    """Wait (polling, bounded) until the broker accepts logins and every worker answers a ping."""
    deadline = time.monotonic() + cluster.spec.timeouts.broker
    last = ""
    while True:
        result = master.run(master_exec(cluster, ["python", "-c", BROKER_CHECK]), check=False, timeout=30)
        if result.ok:
            break
        last = result.output.splitlines()[-1] if result.output else "no answer"
        if time.monotonic() > deadline:
            raise InfraError(f"{master.host.name}: the broker did not accept connections within "
                             f"{cluster.spec.timeouts.broker:g} s ({last})")
        time.sleep(1)
    reporter.host(master.host.name, "broker accepts connections")

    expected = set(expected_worker_nodes(cluster))
    deadline = time.monotonic() + cluster.spec.timeouts.workers
    app = cluster.spec.project.app
    while True:
        result = master.run(
            master_exec(cluster, ["celery", "--app", app, "inspect", "ping", "--json", "--timeout", "2"]),
            check=False, timeout=60,
        )
        answered = parse_ping(result.stdout)
        missing = sorted(expected - answered)
        if not missing:
            break
        if time.monotonic() > deadline:
            raise InfraError(
                f"{len(missing)} of {len(expected)} workers did not answer within "
                f"{cluster.spec.timeouts.workers:g} s: {', '.join(missing[:5])}"
                + (" ..." if len(missing) > 5 else "") + " (see `infra logs`)"
            )
        time.sleep(1)
    reporter.info(f"all {len(expected)} workers answer")


# --------------------------------------------------------------------------- clean


@dataclass
class CleanResult:
    cleaned: dict[str, list[str]]
    failed: dict[str, BaseException]


def clean(cluster: Cluster, reporter: Reporter, *, files: bool = False, volumes: bool = False) -> CleanResult:
    manifest = Manifest.load(cluster.manifest_path, cluster.name)
    hosts: dict[str, Host] = {}
    for name in manifest.hosts:
        hosts[name] = manifest.host_of(name)
    for name in cluster.used_hosts():  # a label sweep also where the manifest lost track
        hosts.setdefault(name, cluster.hosts[name])

    with ConnectionPool(cluster.spec.ssh.connect_timeout) as pool:
        opened = pool.open(hosts.values())
        reachable = [h for h in hosts.values() if h.name in opened.succeeded]
        for name, err in sorted(opened.failed.items()):
            reporter.host(name, f"not cleaned: {without_host(name, one_line(err))}", style="red")

        def clean_host(host: Host) -> list[str]:
            return clean_one_host(cluster, host, pool[host.name], manifest, reporter, files=files, volumes=volumes)

        done = run_concurrently(reachable, clean_host, key=lambda h: h.name)
    failed = {**opened.failed, **done.failed}
    for name, err in sorted(done.failed.items()):
        reporter.host(name, f"not cleaned: {without_host(name, one_line(err))}", style="red")
    if not failed and volumes and not manifest.hosts:
        # The broker's data (and the credentials it holds) is gone: new ones next time.
        cluster.secrets_path.unlink(missing_ok=True)
    return CleanResult(done.succeeded, failed)


def _safe_to_delete(path: str) -> bool:
    parts = [p for p in path.split("/") if p]
    return path.startswith("/") and len(parts) >= 2 and ".." not in parts


def clean_one_host(cluster: Cluster, host: Host, conn: Connection, manifest: Manifest, reporter: Reporter,
                   *, files: bool, volumes: bool) -> list[str]:
    record = manifest.hosts.get(host.name)
    removed: list[str] = []
    labelled = conn.run(["docker", "ps", "--all", "--filter", f"label=infra.cluster={cluster.name}",
                         "--format", "{{.Names}}"], check=False)
    if not labelled.ok:
        raise InfraError(f"{host.name}: Docker does not answer: {labelled.output.splitlines()[-1] if labelled.output else ''}")
    names = set(labelled.stdout.split())
    if record:
        names |= set(record.containers)
    if names:
        conn.run(["docker", "rm", "--force", *sorted(names)], check=False)
        still = conn.run(["docker", "ps", "--all", "--quiet", "--filter", f"label=infra.cluster={cluster.name}"],
                         check=False).stdout.split()
        if still:
            raise InfraError(f"{host.name}: {len(still)} container(s) could not be removed")
    for name in sorted(names):
        manifest.remove_container(host.name, name)
    removed += sorted(names)

    networks = set(conn.run(["docker", "network", "ls", "--filter", f"label=infra.cluster={cluster.name}",
                             "--format", "{{.Name}}"], check=False).stdout.split())
    if record:
        networks |= set(record.networks)
    for network in sorted(networks):
        conn.run(["docker", "network", "rm", network], check=False)
        manifest.remove_network(host.name, network)
        removed.append(f"network {network}")

    if volumes:
        found = set(conn.run(["docker", "volume", "ls", "--quiet", "--filter", f"label=infra.cluster={cluster.name}"],
                             check=False).stdout.split())
        if record:
            found |= set(record.volumes)
        for volume in sorted(found):
            conn.run(["docker", "volume", "rm", "--force", volume])
            manifest.remove_volume(host.name, volume)
            removed.append(f"volume {volume}")

    folders = list(record.secret_dirs) if record else []
    if files and record:
        folders += record.files
    for folder in folders:
        if _safe_to_delete(folder):
            conn.run(["rm", "-rf", "--", folder])
        if record and folder in record.files:
            manifest.remove_files(host.name, folder)
        else:
            manifest.remove_secret_dir(host.name, folder)
        removed.append(f"files {folder}")
    manifest.drop_host_if_empty(host.name)
    kept = []
    rec = manifest.hosts.get(host.name)
    if rec:
        kept = [f"volume {v}" for v in rec.volumes] + [f"files {f}" for f in rec.files]
    reporter.host(host.name, f"removed {len(names)} container(s)" + (f"; kept {', '.join(kept)}" if kept else ""))
    return removed
