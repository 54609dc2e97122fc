"""`infra up`: gather every host's facts, plan, carry the plan out on all hosts at once, wait, record.

Nothing is written anywhere before every host answered and has a working engine. Each host's
steps run in order (files, images, network and volumes, containers); a host that fails does not
stop the others; the manifest records each step as it happens, so it always covers what was
actually started.
"""

from __future__ import annotations

import os
import platform
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import ContextManager

from .. import confined
from ..commands.engine import BuildImage, InspectImages, PullImage
from ..commands.files import list_project
from ..config import Cluster, Host
from ..errors import (
    DockerMissingError,
    HostsFailedError,
    InfraError,
    one_line,
    without_host,
)
from ..facts.arch import docker_arch
from ..facts.containers import parse_image_inspect
from ..facts.files import ignore_rules, parse_project_listing, scan_local
from ..facts.host import HostFacts
from ..names import registry_repository
from ..plans.addresses import master_address
from ..plans.clean import CleanPlan, plan_clean
from ..plans.containers import expected_worker_nodes
from ..plans.images import (
    IMAGE_ROLES,
    build_fingerprints,
    image_steps,
    images_needed,
    plan_images,
)
from ..plans.layout import host_layout
from ..plans.sync import SyncPlan, plan_sync
from ..plans.up import HostPlan, container_steps, plan_host
from ..state.build_context import context_digest, prepare_build_context
from ..state.credentials import Secrets, load_or_create_secrets, load_secrets
from ..state.lock import cluster_lock
from ..state.manifest import Manifest
from ..state.tls import ServerIdentity, ca_fingerprint, server_names
from ..state.tls import load_or_create as load_or_create_identity
from ..transport.connection import Connection, LocalConnection, local_address_towards
from ..transport.pool import ConnectionPool, run_concurrently
from ..ui.reporter import Reporter
from .clean import remove_folders
from .execute import execute_step, execute_steps
from .gather import gather_facts, read_host_facts, require_docker
from .readiness import Readiness
from .ship import ImageSender, ShippedImage
from .volunteer import restore_results_users

LISTING_TIMEOUT = 300


@dataclass
class HostOutcome:
    host: str
    changes: list[str] = field(default_factory=list)


@dataclass
class ReachedHosts:
    """The hosts `up` goes on with, and their facts; those it leaves out are in `failed`, with why."""

    hosts: list[Host]  # of the cluster file
    departed: dict[str, Host]  # recorded in the manifest, gone from the cluster file
    facts: dict[str, HostFacts]
    failed: dict[str, BaseException]

    @property
    def everyone(self) -> list[Host]:
        return self.hosts + list(self.departed.values())


@dataclass
class UpPlan:
    """What `up` does: each host's plan, the removals on the hosts that left, and what they share."""

    address: str  # of the master's published ports
    identity: ServerIdentity | None  # the master's certificate (None with `tls: false`)
    plans: dict[str, HostPlan]
    retirements: dict[str, CleanPlan]
    local: Connection | None  # this machine's engine, where shipped images come from
    local_ids: dict[str, str | None]  # the images built here for shipping

    @property
    def ca_fingerprint(self) -> str | None:
        return self.identity and ca_fingerprint(self.identity.ca_certificate)


@dataclass
class UpResult:
    plans: dict[str, HostPlan]
    outcomes: dict[str, HostOutcome]
    master_address: str
    workers: list[str]
    departed: dict[str, list[str]] = field(default_factory=dict)  # host -> what is removed there
    dry_run: bool = False
    ca_fingerprint: str | None = None  # sha256 of the cluster CA's certificate, when TLS is on


def departed_hosts(cluster: Cluster, manifest: Manifest) -> dict[str, Host]:
    """Hosts the manifest still records that the cluster file no longer uses."""
    used = cluster.used_hosts()
    return {name: manifest.host_of(name) for name in manifest.hosts if name not in used}


def check_architectures(cluster: Cluster, facts: dict[str, HostFacts], hosts: list[Host]) -> None:
    """Images built here run only on hosts of this machine's CPU architecture."""
    if cluster.spec.images.source != "ship":
        return
    local_arch = docker_arch(facts["local"].arch if "local" in facts else platform.machine())
    for host in hosts:
        arch = docker_arch(facts[host.name].arch)
        if arch != local_arch:
            raise InfraError(f"{host.name}: the host is {arch} but images built here are {local_arch}; "
                             f"set images.source: build so each host builds its own")


def resolve_master_address(cluster: Cluster, pool: ConnectionPool, reachable: list[str]) -> str:
    master = cluster.master_host
    remote_workers = [n for n in cluster.worker_hosts() if not cluster.hosts[n].is_local and n in reachable]
    towards = None
    if master.is_local and remote_workers:
        first = remote_workers[0]
        towards = local_address_towards(pool[first].peer_address() or cluster.hosts[first].address)
    peer = None if master.is_local else pool[master.name].peer_address()
    return master_address(cluster, master_peer=peer, towards_workers=towards)


def project_sync_plans(cluster: Cluster, pool: ConnectionPool, hosts: list[Host],
                       facts: dict[str, HostFacts]) -> dict[str, SyncPlan]:
    """What each remote host lacks of the project (one listing per host, all at once)."""
    rules = ignore_rules(cluster.project_dir)
    local_files = scan_local(cluster.project_dir, rules)

    def plan_one(host: Host) -> SyncPlan:
        layout = host_layout(cluster, host, facts[host.name])
        listing = pool[host.name].run(list_project(layout.root, layout.project_dir, layout.output_dir, cluster.name),
                                      timeout=LISTING_TIMEOUT)
        return plan_sync(layout, cluster.name, cluster.project_dir, local_files,
                         parse_project_listing(listing.stdout, rules), rules)

    listed = run_concurrently([h for h in hosts if not h.is_local], plan_one, key=lambda h: h.name)
    listed.raise_if_failed("listing the project on the hosts")
    return listed.succeeded


def build_images_here(cluster: Cluster, local: Connection, facts: HostFacts, context_dir: str, digest: str,
                      reporter: Reporter, *, dry_run: bool) -> dict[str, str | None]:
    """`images.source: ship`: the images are built on this machine first; returns their ids."""
    if not facts.docker_version:
        raise DockerMissingError(f"local: images are built here before they are shipped, but Docker does not "
                                 f"answer ({facts.docker_problem}) — run `infra bootstrap --hosts local`")
    plans = plan_images(cluster, Host(name="local", address="127.0.0.1"), facts, {}, digest, roles=IMAGE_ROLES)
    if dry_run:
        return facts.image_ids
    for step in image_steps(cluster, plans, context_dir, build_fingerprints(cluster, digest)):
        started = time.monotonic()
        local.engine.apply(step.op)
        reporter.host("local", f"image {step.op.tag} built for shipping ({time.monotonic() - started:.1f} s)")
    return image_ids_on(local, [cluster.image_tag(role) for role in IMAGE_ROLES])


def image_sender(cluster: Cluster, plans: dict[str, HostPlan], local: Connection | None,
                 local_ids: dict[str, str | None], reporter: Reporter) -> ContextManager[ImageSender | None]:
    """While hosts are brought up: what sends them the images built here, if any host lacks one."""
    roles = {image.tag: image.role for plan in plans.values() for image in plan.images if image.action == "ship"}
    if not roles:
        return nullcontext(None)
    images = [ShippedImage(tag, registry_repository(cluster.name, role), local_ids[tag]) for tag, role in sorted(roles.items())]
    return ImageSender(cluster, local, reporter, images)


def _images(tags: list[str]) -> str:
    return f"image {tags[0]}" if len(tags) == 1 else f"images {', '.join(tags)}"


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size < 10e6 else f"{size / 1e6:.0f} MB"


def image_ids_on(conn: Connection, refs: list[str]) -> dict[str, str | None]:
    return {ref: info.id if info else None
            for ref, info in parse_image_inspect(conn.engine.query(InspectImages(tuple(refs)))).items()}


def up(cluster: Cluster, reporter: Reporter, *, dry_run: bool = False, wait: bool = False) -> UpResult:
    """Bring the hosts in line with the cluster file; a dry run only plans (and takes no lock)."""
    if dry_run:
        return _up(cluster, reporter, dry_run=True)
    with cluster_lock(cluster.state_dir, cluster.name, "up", wait=wait):
        return _up(cluster, reporter, dry_run=False)


def _up(cluster: Cluster, reporter: Reporter, *, dry_run: bool) -> UpResult:
    started = time.monotonic()
    manifest = Manifest.load(cluster.manifest_path, cluster.name)
    hosts = [cluster.hosts[name] for name in cluster.used_hosts()]
    departed = departed_hosts(cluster, manifest)

    with ConnectionPool.for_cluster(cluster) as pool:
        reached = reach_hosts(cluster, pool, hosts, departed, reporter)
        planned = plan_up(cluster, pool, reached, manifest, reporter, dry_run=dry_run)
        if dry_run:
            return UpResult(planned.plans, {}, planned.address, expected_worker_nodes(cluster),
                            {name: plan.planned() for name, plan in planned.retirements.items()}, dry_run=True,
                            ca_fingerprint=planned.ca_fingerprint)
        outcomes = bring_hosts_up(cluster, pool, reached, planned, manifest, reporter)
        wait_until_ready(cluster, pool[cluster.master_host.name], planned.plans, outcomes, reporter)
        for name, outcome in outcomes.items():
            if not outcome.changes:
                reporter.host(name, "nothing to do: already up to date", style="dim")
    if reached.failed:
        raise HostsFailedError("up", reached.failed, note="the rest of the cluster is up; run `infra up` again once "
                                                          "they answer")
    reporter.info(f"cluster {cluster.name} is up ({time.monotonic() - started:.1f} s)")
    return UpResult(planned.plans, outcomes, planned.address, expected_worker_nodes(cluster),
                    ca_fingerprint=planned.ca_fingerprint)


def reach_hosts(cluster: Cluster, pool: ConnectionPool, hosts: list[Host], departed: dict[str, Host],
                reporter: Reporter) -> ReachedHosts:
    """Connect to every host and read its facts, all at once; check they can take the cluster.

    A worker host that cannot be reached, or whose engine does not answer in time, is left
    out and named at the end; the rest of the cluster comes up. Without the master, nothing can.
    """
    everyone = hosts + list(departed.values())
    master_name = cluster.master_host.name
    opened = pool.open(everyone)
    gathered = gather_facts(pool, cluster, [h for h in everyone if h.name in opened.succeeded])
    failed: dict[str, BaseException] = {**opened.failed, **gathered.failed}
    if master_name in failed:
        raise HostsFailedError("reading host state", {master_name: failed[master_name]})
    facts = gathered.succeeded
    reached = ReachedHosts(hosts=[h for h in hosts if h.name in facts],
                           departed={name: host for name, host in departed.items() if name in facts},
                           facts=facts, failed=failed)
    for name, err in sorted(failed.items()):
        reporter.host(name, f"left out: {without_host(name, one_line(err))}", style="red")
    require_docker(facts, reached.everyone, cluster.source)
    check_architectures(cluster, facts, [h for h in reached.hosts if not h.is_local])
    return reached


def plan_up(cluster: Cluster, pool: ConnectionPool, reached: ReachedHosts, manifest: Manifest, reporter: Reporter,
            *, dry_run: bool) -> UpPlan:
    """The secrets, the master's certificate and the images built here (none written on a dry run),
    then each host's plan and the removals on the hosts that left the cluster file."""
    facts = reached.facts
    address = resolve_master_address(cluster, pool, [h.name for h in reached.hosts])
    # Only now, with every host reachable and ready, is anything written.
    secrets = (load_secrets(cluster.secrets_path) or Secrets.generate()) if dry_run \
        else load_or_create_secrets(cluster.secrets_path)
    identity = master_identity(cluster, address, save=not dry_run)
    context = prepare_build_context(cluster)
    digest = context_digest(context)
    local, local_ids = images_for_shipping(cluster, pool, facts, str(context), digest, reporter, dry_run=dry_run)
    syncs = project_sync_plans(cluster, pool, reached.hosts, facts)
    plans = {h.name: plan_host(cluster, h, facts[h.name], secrets, address, local_image_ids=local_ids,
                               context_dir=str(context), context_digest=digest, sync=syncs.get(h.name),
                               identity=identity)
             for h in reached.hosts}
    retirements = {name: plan_clean(name, manifest.hosts.get(name),
                                    containers=[c.name for c in facts[name].containers],
                                    networks=list(facts[name].networks), volumes=[], files=False,
                                    remove_volumes=False, cluster=cluster.name, state_dir=str(cluster.state_dir))
                   for name in reached.departed}
    return UpPlan(address, identity, plans, retirements, local, local_ids)


def images_for_shipping(cluster: Cluster, pool: ConnectionPool, facts: dict[str, HostFacts], context_dir: str,
                        digest: str, reporter: Reporter, *, dry_run: bool,
                        ) -> tuple[Connection | None, dict[str, str | None]]:
    """`images.source: ship`: this machine's engine and the ids of the images built on it (none otherwise).

    When this machine is one of the hosts its facts (in `facts`) are read again, with the images just built.
    """
    if cluster.spec.images.source != "ship":
        return None, {}
    local = pool.connections.get("local") or LocalConnection(cluster.hosts["local"], pool.limits)
    here = facts.get("local") or read_host_facts(local, cluster)  # read once when local is a host too
    local_ids = build_images_here(cluster, local, here, context_dir, digest, reporter, dry_run=dry_run)
    if "local" in facts and not dry_run:
        facts["local"] = read_host_facts(local, cluster)  # now with the images just built
    return local, local_ids


def master_identity(cluster: Cluster, address: str, *, save: bool) -> ServerIdentity | None:
    """The master's certificate, for every address a client may use: the one workers are given,
    the master's own in the cluster file, and the bind address. None with `tls: false`."""
    if not cluster.spec.tls:
        return None
    master = cluster.master_host
    names = server_names(address, None if master.is_local else master.address,
                         cluster.spec.roles.master.advertise_address, cluster.spec.roles.master.bind_address)
    return load_or_create_identity(cluster.tls_dir, cluster.name, names, save=save)


def bring_hosts_up(cluster: Cluster, pool: ConnectionPool, reached: ReachedHosts, planned: UpPlan,
                   manifest: Manifest, reporter: Reporter) -> dict[str, HostOutcome]:
    """Every host at once: its plan, or its removals when it left the cluster file.

    A host that fails does not stop the others; it joins `reached.failed`, the master excepted:
    without it, the cluster is not up.
    """
    def apply(host: Host) -> HostOutcome:
        conn = pool[host.name]
        if host.name in reached.departed:
            return retire_host(conn, planned.retirements[host.name], manifest, reporter)
        return apply_host_plan(cluster, planned.plans[host.name], conn, reached.facts[host.name], manifest, reporter,
                               sender)

    with image_sender(cluster, planned.plans, planned.local, planned.local_ids, reporter) as sender:
        applied = run_concurrently(reached.everyone, apply, key=lambda h: h.name)
    for name, err in sorted(applied.failed.items()):
        reporter.host(name, f"failed: {without_host(name, one_line(err))}", style="red")
    if cluster.master_host.name in applied.failed:
        raise HostsFailedError("bringing the cluster up", {**reached.failed, **applied.failed})
    reached.failed.update(applied.failed)
    return applied.succeeded


def retire_host(conn: Connection, retirement: CleanPlan, manifest: Manifest, reporter: Reporter) -> HostOutcome:
    """A host the cluster file no longer uses: the cluster's containers and networks go, then its folders."""
    name = retirement.host
    execute_steps(conn, retirement.steps, manifest)
    folders = remove_folders(conn, retirement, manifest)
    manifest.drop_host_if_empty(name)
    if folders.refused:
        reporter.host(name, f"refused to delete {', '.join(folders.refused)}", style="yellow")
    return HostOutcome(name, retirement.removed() + [f"folder {folder}" for folder in folders.removed])


def apply_host_plan(cluster: Cluster, plan: HostPlan, conn: Connection, facts: HostFacts, manifest: Manifest,
                    reporter: Reporter, sender: ImageSender | None) -> HostOutcome:
    """One host: files and images first, then the containers those image ids call for."""
    host = plan.host
    outcome = HostOutcome(host.name)
    if host.is_local and host.name == cluster.master_host.name:
        # The project's own output/ is the master's output folder here: a bind mount's source
        # must exist, and must be a real folder (a link would take the jobs' writes elsewhere).
        os.close(confined.open_folder(plan.layout.output_dir, create=True))
    if plan.sync is not None and plan.sync.changed:
        outcome.changes.append(f"project: {plan.sync.describe()}")
        reporter.host(host.name, f"project {plan.layout.project_dir}: {plan.sync.describe()}")
    for step in plan.steps:
        started = time.monotonic()
        answer = execute_step(conn, step, manifest)
        if isinstance(step.op, (BuildImage, PullImage)):
            tag = step.op.tag if isinstance(step.op, BuildImage) else step.op.ref
            if answer != facts.image_id(tag):
                verb = "built" if isinstance(step.op, BuildImage) else "pulled"
                reporter.host(host.name, f"image {tag} {verb} ({time.monotonic() - started:.1f} s)")
                outcome.changes.append(f"image {tag}")
        elif step.op is not None or step.command is not None:
            outcome.changes.append(step.description)
    shipped = [image.tag for image in plan.images if image.action == "ship"]
    if shipped:
        started = time.monotonic()
        sent = sender.send(conn, shipped)
        reporter.host(host.name, f"{_images(shipped)} received ({_megabytes(sent)} in {time.monotonic() - started:.1f} s)")
        outcome.changes += [f"image {tag}" for tag in shipped]
    ids = facts.image_ids
    if any(image.action != "present" for image in plan.images):
        ids = image_ids_on(conn, sorted({cluster.image_tag(r) for r in images_needed(cluster, host)}))
    for step in container_steps(cluster, plan, facts, ids):
        execute_step(conn, step, manifest)
        if step.op is not None:
            reporter.host(host.name, step.description)
            outcome.changes.append(step.description)
    return outcome


def wait_until_ready(cluster: Cluster, master: Connection, plans: dict[str, HostPlan],
                     outcomes: dict[str, HostOutcome], reporter: Reporter) -> None:
    """Wait for the broker, then for every worker of the hosts brought up.

    A results container just (re)started gets the volunteers' users back in between.
    """
    master_name = cluster.master_host.name
    nodes = [node for node in expected_worker_nodes(cluster) if node.rpartition("@")[2] in outcomes]
    readiness = Readiness(cluster, master, nodes)  # one wait for the broker, then the workers
    readiness.broker()
    reporter.host(master_name, "broker accepts connections")
    if any(c.role == "results" and c.action != "keep" for c in plans[master_name].containers):
        restore_results_users(cluster, master, reporter)
    readiness.workers()
    reporter.info(f"all {len(nodes)} workers answer")
