"""`infra volunteer add | list | revoke`: machines of other people join with one line, and leave.

Everything happens on the master host, over infra's own SSH connection to it; infra never
reaches a volunteer's machine. `add` gives the volunteer a broker user and a Redis ACL user,
makes sure the join endpoint runs with the current worker image, build context and certificate,
registers the token's digest there and prints the line. `revoke` unregisters the token (the
endpoint refuses it from then on), deletes both users and closes the volunteer's broker
connections, so that its unacknowledged tasks go back to the queue for the other workers.
`revoke_everyone` is what `infra clean` does first.
"""

from __future__ import annotations

import json
import posixpath
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterable, Iterator

from ..commands import files as file_commands
from ..commands import volunteer as volunteer_commands
from ..commands.celery import celery_probe
from ..commands.engine import ContainerSpec, InspectImages, ListContainers, Logs
from ..config import Cluster
from ..errors import ConfigError, InfraError, StateError, one_line, redact
from ..facts.arch import docker_arch
from ..facts.celery import CeleryView, parse_celery_probe
from ..facts.containers import Container, is_running, parse_container_list, parse_image_inspect
from ..facts.files import scan_local
from ..facts.host import HostFacts
from ..names import container_name, registry_repository
from ..plans import relay as relay_plan
from ..plans import volunteer as volunteer_plan
from ..plans.addresses import master_address
from ..plans.layout import host_layout
from ..plans.secret_files import RESULTS_ADMIN_FILE, secret_in_container
from ..plans.steps import FILE_TIMEOUT, IMAGE_TIMEOUT
from ..runtime.tarball import Member, pack_gzip
from ..state.build_context import assets_dir, context_digest, prepare_build_context
from ..state.credentials import load_secrets
from ..state.lock import cluster_lock
from ..state.manifest import Manifest
from ..state.tls import ServerIdentity
from ..state.volunteers import (
    DEFAULT_EXPIRES,
    Volunteer,
    VolunteerStore,
    check_name,
    expired_unused,
    learn_exchanges,
    make_volunteer,
    new_token,
    parse_duration,
    public_key_pin,
    store_path,
    token_table_json,
)
from ..transport.connection import Connection, LocalConnection
from ..transport.pool import ConnectionPool
from ..ui.reporter import Reporter
from .execute import execute_steps
from .gather import read_host_facts
from .ship import ImageSender, ShippedImage

PROBE_TIMEOUT = 25.0
# A token is taken for expired unused this long after its expiry only: the master's clock decides
# at the endpoint, and may lag behind this machine's.
EXPIRY_GRACE = timedelta(minutes=5)
BROKER_FILE = "volunteer-definitions.json"  # written into the broker's folder just for the import


@dataclass
class AddedVolunteer:
    """What `add` prints: the line, its expiry, the leave line."""

    name: str
    line: str
    leave: str
    expires: str
    url: str
    pin: str


@dataclass
class VolunteerRow:
    name: str
    state: str  # token valid, token expired, revoked
    added: str
    expires: str
    joined: str | None
    last_seen: str | None
    arch: str | None
    workers: list[str] = field(default_factory=list)  # Celery nodes online now
    tasks_done: int | None = None


# --------------------------------------------------------------------------- shared


def _store(cluster: Cluster) -> VolunteerStore:
    return VolunteerStore.load(store_path(cluster.state_dir))


def _identity(cluster: Cluster) -> ServerIdentity:
    """The master's certificate as `infra up` made it (never a new one here: workers already trust it)."""
    tls = cluster.tls_dir
    try:
        return ServerIdentity((tls / "server.crt").read_text(), (tls / "server.key").read_text(),
                              (tls / "ca.crt").read_text())
    except FileNotFoundError:
        raise StateError(f"no certificate of the master in {tls}: run `infra up` first") from None


def _run_verify_key(cluster: Cluster) -> str:
    """The public key volunteers check runs with, from the secrets `infra up` made (never the signing key)."""
    secrets = load_secrets(cluster.secrets_path)
    if secrets is None or not secrets.run_signing_key:
        raise StateError(f"no run signing key in {cluster.secrets_path}: run `infra up` first")
    return secrets.run_verify_key


def _require_started(cluster: Cluster) -> None:
    if not cluster.spec.tls:
        raise ConfigError("volunteers need TLS: their machines reach the master over networks infra does not "
                          "control; remove `tls: false` from the cluster file and run `infra up`")
    manifest = Manifest.load(cluster.manifest_path, cluster.name)
    if cluster.master_host.name not in manifest.hosts:
        raise StateError(f"cluster {cluster.name} is not running (no manifest entry for its master): run `infra up`")


def _master(pool: ConnectionPool, cluster: Cluster) -> Connection:
    return pool.get(cluster.master_host)


def _exec(conn: Connection, op, what: str, *, ok_if: tuple[str, ...] = ()) -> str:
    result = conn.engine.exec(op, timeout=PROBE_TIMEOUT)
    if not result.ok and not any(text in result.output for text in ok_if):
        lines = result.output.strip().splitlines()
        raise InfraError(f"{conn.host.name}: {what} failed: {redact(lines[-1]) if lines else f'exit {result.exit_code}'}")
    return result.stdout


def sync_results_users(cluster: Cluster, conn: Connection, store: VolunteerStore, *, drop: list[str] = ()) -> list[str]:
    """Give Redis the ACL user of every active volunteer, and none of the others.

    Redis keeps users made at run time in memory only: a restarted results container has
    forgotten them, so every `infra volunteer` command sets them again (ACL SETUSER with the same
    rules changes nothing when they are there).
    """
    want = {v.user: volunteer_plan.results_acl_rules(v.results_password_sha256) for v in store.active()}
    gone = sorted({v.user for v in store.volunteers.values() if v.revoked} | set(drop))
    admin_url = secret_in_container(RESULTS_ADMIN_FILE)
    out = _exec(conn, volunteer_commands.results_users(cluster.name, admin_url, want, gone),
                "setting the result backend's users")
    for line in reversed(out.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line).get("users", [])
    return []


# --------------------------------------------------------------------------- the endpoint


def _context_members(context: Path) -> Iterator[Member]:
    """The build context's files in path order, with their modes (no write bit for others) and no time."""
    for item in sorted(context.rglob("*")):
        if item.is_file():
            yield Member(item.relative_to(context).as_posix(), item.read_bytes(), item.stat().st_mode & 0o755)


def _worker_image_on_master(cluster: Cluster, conn: Connection, pool: ConnectionPool, reporter: Reporter) -> str:
    tag = cluster.image_tag("worker")
    found = parse_image_inspect(conn.engine.query(InspectImages((tag,))))
    if found.get(tag) is None and cluster.spec.images.source == "ship" and not conn.host.is_local:
        local = pool.connections.get("local") or LocalConnection(cluster.hosts["local"], pool.limits)
        here = parse_image_inspect(local.engine.query(InspectImages((tag,)))).get(tag)
        if here is not None:  # by layers: the master host has all but the worker's top one already
            with ImageSender(cluster, local, reporter, [ShippedImage(tag, registry_repository(cluster.name, "worker"), here.id)]) as sender:
                sent = sender.send(conn, [tag])
            reporter.host(conn.host.name, f"image {tag} received for volunteers ({sent / 1e6:.1f} MB)")
            found = parse_image_inspect(conn.engine.query(InspectImages((tag,))))
    if found.get(tag) is None:
        raise InfraError(f"{conn.host.name}: the worker image {tag} is not on the master host, which serves it to "
                         f"volunteers: give the master host a worker in the cluster file, or use images.source: build, "
                         f"and run `infra up`")
    return found[tag].id


def ensure_endpoint(cluster: Cluster, conn: Connection, facts: HostFacts, manifest: Manifest, store: VolunteerStore,
                    address: str, port: int, pool: ConnectionPool, reporter: Reporter) -> tuple[str, str]:
    """The endpoint runs, serves the current image, context and certificate, and knows the tokens. (url, pin)"""
    host = conn.host
    layout = host_layout(cluster, host, facts)
    folders = volunteer_plan.endpoint_layout(layout)
    identity = _identity(cluster)
    url = volunteer_plan.endpoint_url(address, port)
    pin = public_key_pin(identity.certificate)

    image_id = _worker_image_on_master(cluster, conn, pool, reporter)
    manifest.apply(host, "add_secret_dir", layout.env_dir)
    _save_worker_image(cluster, conn, facts, folders, image_id, reporter)
    _send_build_context(cluster, conn, folders, manifest)
    script = volunteer_plan.render_join_script(volunteer_plan.load_template(assets_dir()), cluster.name, url, pin)
    files = volunteer_plan.endpoint_files(cluster, folders, identity,
                                          volunteer_plan.endpoint_settings(cluster, address, port), script,
                                          _run_verify_key(cluster))
    write_token_table(conn, folders, store)  # whether or not the endpoint is replaced: it re-reads the table
    conn.run(volunteer_commands.make_private_folder(folders.state_dir), timeout=FILE_TIMEOUT)
    write_served_files(conn, folders, scan_local(cluster.project_dir))  # re-read too
    spec = volunteer_plan.endpoint_container(cluster, layout, facts, port)
    plan = volunteer_plan.plan_endpoint(cluster, spec, files, *_endpoint_facts(cluster, conn, spec))
    execute_steps(conn, plan.steps, manifest)
    if plan.change.action != "keep":
        reporter.host(host.name, f"join endpoint {spec.name} listens on {url}")
    ensure_relay(cluster, conn, layout, facts, manifest)
    return url, pin


def ensure_relay(cluster: Cluster, conn: Connection, layout, facts: HostFacts, manifest: Manifest) -> None:
    """The relay of volunteers' follow-ups (plans/relay.py), kept or made anew like the endpoint."""
    spec = relay_plan.relay_container(cluster, layout, facts)
    execute_steps(conn, volunteer_plan.plan_endpoint(cluster, spec, [], *_endpoint_facts(cluster, conn, spec)).steps,
                  manifest)


def _save_worker_image(cluster: Cluster, conn: Connection, facts: HostFacts, folders: volunteer_plan.EndpointLayout,
                       image_id: str, reporter: Reporter) -> None:
    """The worker image, saved beside the endpoint; the host itself tells whether that image is there already."""
    saved = conn.run(volunteer_commands.save_worker_image(image_id, folders.files_dir, docker_arch(facts.arch),
                                                          cluster.spec.images.base), timeout=IMAGE_TIMEOUT)
    if "saved" in saved.stdout:
        reporter.host(conn.host.name, "worker image saved for volunteers")


def _send_build_context(cluster: Cluster, conn: Connection, folders: volunteer_plan.EndpointLayout,
                        manifest: Manifest) -> None:
    """The build context beside the image, for volunteers of other architectures, when the host's copy is not it."""
    context = prepare_build_context(cluster)
    digest = context_digest(context)
    there = conn.run(volunteer_commands.read_small_file(folders.context_digest), timeout=FILE_TIMEOUT).stdout.strip()
    steps = volunteer_plan.context_steps(folders, digest, there, lambda: pack_gzip(_context_members(context)))
    execute_steps(conn, steps, manifest)


def _endpoint_facts(cluster: Cluster, conn: Connection,
                    spec: ContainerSpec) -> tuple[str | None, tuple[Container, ...]]:
    """What `plan_endpoint` compares with: the id of the endpoint's image on the host, and the cluster's containers."""
    image = parse_image_inspect(conn.engine.query(InspectImages((spec.image,)))).get(spec.image)
    return (image.id if image else None), parse_container_list(conn.engine.query(ListContainers(cluster.name)))


def write_token_table(conn: Connection, folders: volunteer_plan.EndpointLayout, store: VolunteerStore) -> None:
    """The digests of the volunteers' tokens and keys: the running endpoint goes by them at its next request."""
    conn.run(file_commands.write_secret_file(folders.token_table),
             stdin=token_table_json(store.volunteers.values()).encode(), timeout=FILE_TIMEOUT)


def settle_tokens(cluster: Cluster, conn: Connection, facts: HostFacts, store: VolunteerStore,
                  reporter: Reporter) -> list[str]:
    """Learn from the endpoint's spent file who joined, then remove the users of tokens that expired unused
    (nobody can log in as them: their passwords were only ever sealed under the token). Names removed."""
    folders = volunteer_plan.endpoint_layout(host_layout(cluster, conn.host, facts))
    spent = conn.run(volunteer_commands.read_small_file(folders.spent_file), timeout=FILE_TIMEOUT).stdout
    learn_exchanges(store, spent)
    stale = expired_unused(store, _now(), EXPIRY_GRACE)
    if stale:
        revoke_access(cluster, conn, facts, store, stale, because="token expired unused")
        reporter.host(conn.host.name, f"token of volunteer(s) {', '.join(stale)} expired unused: "
                                      f"their broker and result-backend users removed")
    return stale


def write_served_files(conn: Connection, folders: volunteer_plan.EndpointLayout, project_files: Iterable[str]) -> None:
    """Which project files the endpoint serves: those of `sync-files`' scan of this machine's project."""
    conn.run(file_commands.write_secret_file(folders.served_files),
             stdin=volunteer_plan.served_files_json(project_files).encode(), timeout=FILE_TIMEOUT)


# --------------------------------------------------------------------------- add


def add(cluster: Cluster, reporter: Reporter, name: str, *, expires: str = DEFAULT_EXPIRES, port: int | None = None,
        wait: bool = False, line_options: str = "") -> AddedVolunteer:
    """Credentials for NAME alone, the endpoint up to date, and the line (with `line_options` at its end)."""
    check_name(name)
    lifetime = parse_duration(expires)
    _require_started(cluster)
    with cluster_lock(cluster.state_dir, cluster.name, "volunteer add", wait=wait):
        store = _store(cluster)
        existing = store.volunteers.get(name)
        if existing is not None and not existing.revoked:
            raise ConfigError(f"{name} is a volunteer already (its token {existing.state(_now())}): "
                              f"`infra volunteer revoke {name}` first to give it a new line")
        port = port or store.port or volunteer_plan.DEFAULT_PORT
        with ConnectionPool.for_cluster(cluster) as pool:
            conn = _master(pool, cluster)
            facts = read_host_facts(conn, cluster)
            manifest = Manifest.load(cluster.manifest_path, cluster.name)
            address = master_address(cluster, master_peer=conn.peer_address())
            settle_tokens(cluster, conn, facts, store, reporter)
            token = new_token()
            made = make_volunteer(cluster.name, name, token, _now(), lifetime)
            volunteer = made.volunteer
            grant_broker_user(cluster, conn, facts, volunteer, made.broker_password)
            store.volunteers[name] = volunteer
            store.port = port
            sync_results_users(cluster, conn, store)
            store.save()
            url, pin = ensure_endpoint(cluster, conn, facts, manifest, store, address, port, pool, reporter)
        reporter.host(cluster.master_host.name, f"volunteer {name} may join until {volunteer.expires}")
        return AddedVolunteer(name, volunteer_plan.join_line(url, pin, token, line_options),
                              volunteer_plan.leave_line(cluster.name), volunteer.expires, url, pin)


def grant_broker_user(cluster: Cluster, conn: Connection, facts: HostFacts, volunteer: Volunteer,
                      password: str) -> None:
    """The volunteer's broker user, from a definitions file in the broker's folder (removed right after)."""
    layout = host_layout(cluster, conn.host, facts)
    folder = posixpath.join(layout.env_dir, "broker")
    path = posixpath.join(folder, BROKER_FILE)
    definitions = volunteer_plan.broker_user_definitions(cluster, volunteer.user, password)
    conn.run(file_commands.write_secret_file(path), stdin=definitions.encode(), timeout=FILE_TIMEOUT)
    try:
        _exec(conn, volunteer_commands.import_broker_definitions(cluster.name, f"/run/infra/{BROKER_FILE}"),
              "adding the volunteer's broker user")
    finally:
        conn.run(volunteer_commands.remove_file(path), timeout=FILE_TIMEOUT, check=False)


# --------------------------------------------------------------------------- revoke


def revoke_access(cluster: Cluster, conn: Connection, facts: HostFacts, store: VolunteerStore,
                  names: list[str], because: str | None = None) -> None:
    """The endpoint first (it refuses their tokens and keys), then their users and connections."""
    now = _iso(_now())
    for name in names:
        store.volunteers[name].revoked = now
        store.volunteers[name].revoked_because = because
        store.volunteers[name].sealed = None
    folders = volunteer_plan.endpoint_layout(host_layout(cluster, conn.host, facts))
    write_token_table(conn, folders, store)
    for name in names:
        user = store.volunteers[name].user
        _exec(conn, volunteer_commands.delete_broker_user(cluster.name, user), f"deleting broker user {user}",
              ok_if=("does not exist", "no_such_user"))
        _exec(conn, volunteer_commands.close_user_connections(cluster.name, user), f"closing {user}'s connections")
    sync_results_users(cluster, conn, store, drop=[store.volunteers[n].user for n in names])
    store.save()


def revoke(cluster: Cluster, reporter: Reporter, name: str, *, wait: bool = False) -> float:
    """Revoke one volunteer; returns how long it took (seconds)."""
    started = time.monotonic()
    with cluster_lock(cluster.state_dir, cluster.name, "volunteer revoke", wait=wait):
        store = _store(cluster)
        volunteer = store.volunteers.get(name)
        if volunteer is None:
            known = ", ".join(sorted(store.volunteers)) or "none"
            raise ConfigError(f"no volunteer {name!r} (volunteers: {known})")
        with ConnectionPool.for_cluster(cluster) as pool:
            conn = _master(pool, cluster)
            facts = read_host_facts(conn, cluster)
            revoke_access(cluster, conn, facts, store, [name])
    took = time.monotonic() - started
    reporter.host(cluster.master_host.name, f"volunteer {name} revoked: token refused, broker and result-backend "
                                            f"users deleted, connections closed ({took:.1f} s)")
    return took


def revoke_everyone(cluster: Cluster, conn: Connection, reporter: Reporter) -> list[str]:
    """For `infra clean` (which holds the lock): revoke every volunteer still active, on a reachable master.

    A broker that does not answer (stopped already) is no error: the user stays in its data
    volume, and is deleted by the next `infra clean` with the broker up, or with `--volumes`.
    """
    store = _store(cluster)
    names = [v.name for v in store.active()]
    if not names:
        return []
    try:
        facts = read_host_facts(conn, cluster)
        revoke_access(cluster, conn, facts, store, names)
    except InfraError as exc:
        reporter.host(conn.host.name, f"volunteers not revoked: {one_line(exc)}", style="red")
        return []
    reporter.host(conn.host.name, f"revoked volunteer(s) {', '.join(names)}")
    return names


def restore_results_users(cluster: Cluster, conn: Connection, reporter: Reporter) -> None:
    """For `infra up` after it (re)started the results container: Redis forgot the volunteers' ACL users."""
    store = _store(cluster)
    if not store.active():
        return
    try:
        sync_results_users(cluster, conn, store)
    except InfraError as exc:
        reporter.host(conn.host.name, f"volunteers' result-backend users not restored: {one_line(exc)}", style="red")


# --------------------------------------------------------------------------- list


def _settle_unless_busy(cluster: Cluster, conn: Connection) -> VolunteerStore | None:
    """For `list`: `settle_tokens` under the cluster's lock, and the store as it is then; None (nothing done)
    while another command holds the lock: a later `list` or `add` does it."""
    try:
        with cluster_lock(cluster.state_dir, cluster.name, "volunteer list"):
            store = _store(cluster)
            settle_tokens(cluster, conn, read_host_facts(conn, cluster), store, Reporter(quiet=True))
            store.save()
            return store
    except StateError:
        return None


def parse_endpoint_log(lines: list[str]) -> dict[str, dict]:
    """name -> {joined, last_seen, arch} from the endpoint's JSON log lines (Docker's timestamp first)."""
    seen: dict[str, dict] = {}
    for line in lines:
        text = line[line.find("{"):] if "{" in line else ""
        try:
            event = json.loads(text)
        except ValueError:
            continue
        name = event.get("volunteer")
        if not name or event.get("status") != 200:
            continue
        entry = seen.setdefault(name, {"joined": None, "last_seen": None, "arch": None})
        if event.get("what") == "bundle" and entry["joined"] is None:
            entry["joined"] = event.get("time")
        entry["last_seen"] = event.get("time")
        if event.get("arch"):
            entry["arch"] = event["arch"]
    return seen


def volunteer_nodes_prefix(cluster: str, name: str) -> str:
    return f"{cluster}-volunteer-{name}."


def volunteer_nodes(cluster: str, name: str, nodes: set[str]) -> list[str]:
    prefix = volunteer_nodes_prefix(cluster, name)
    return sorted(n for n in nodes if n.startswith(prefix))


def rows_of(cluster: Cluster, store: VolunteerStore, celery: CeleryView | None, now: datetime) -> list[VolunteerRow]:
    """One row per volunteer; workers and tasks from Celery when it answered."""
    rows = []
    for name, v in sorted(store.volunteers.items()):
        nodes = volunteer_nodes(cluster.name, name, celery.online) if celery and celery.answered else []
        done = sum(celery.processed.get(n, 0) for n in nodes) if celery and celery.answered else None
        last_seen = _iso(now) if nodes else v.last_seen
        rows.append(VolunteerRow(name, v.state(now), v.added, v.expires, v.joined, last_seen, v.arch, nodes, done))
    return rows


def volunteer_prefixes(cluster: Cluster) -> dict[str, str]:
    """`CLUSTER-volunteer-NAME.` -> NAME of the active volunteers: the node names each one's worker may take."""
    return {volunteer_nodes_prefix(cluster.name, v.name): v.name for v in _store(cluster).active()}


def volunteer_rows(cluster: Cluster, celery: CeleryView | None, endpoint_lines: list[str] = ()) -> list:
    """For `infra status`: the volunteers as kept here and as the endpoint's log tells (the same source as
    `volunteer list`), their workers and tasks as Celery told (no extra call)."""
    store = _store(cluster)
    if not store.volunteers:
        return []
    learn_from_endpoint_log(store, list(endpoint_lines))
    return rows_of(cluster, store, celery, _now())


def wants_endpoint_log(cluster: Cluster) -> bool:
    """Whether `status` should read the endpoint's log: only for a cluster that ever had volunteers."""
    return bool(_store(cluster).volunteers)


def endpoint_log_lines(cluster: Cluster, conn: Connection) -> list[str]:
    """The join endpoint's log, where it records each volunteer's requests; none without an endpoint."""
    lines: list[str] = []
    try:
        conn.engine.logs(Logs(volunteer_plan.endpoint_name(cluster.name)), lines.append)
    except InfraError:
        pass  # no endpoint (any more): what was learnt before stays
    return lines


def learn_from_endpoint_log(store: VolunteerStore, lines: list[str]) -> None:
    """Each volunteer's joined, last seen and arch as the endpoint's log tells, into `store` (not saved)."""
    for name, learnt in parse_endpoint_log(lines).items():
        if name in store.volunteers:
            v = store.volunteers[name]
            v.joined = v.joined or learnt["joined"]
            v.last_seen = max(filter(None, (v.last_seen, learnt["last_seen"])), default=None)
            v.arch = learnt["arch"] or v.arch


LIST_SCHEMA = "infra.volunteers/1"
MASTER_NOT_RUNNING = "the master is not running (`infra up` starts it)"


def list_json(rows: list[VolunteerRow], problem: str | None) -> dict:
    """`volunteer list --json`: {"schema": "infra.volunteers/1", "volunteers": [row...], "error": str|null}.

    Stable within one schema: keys may be added, never renamed or removed. A row has name, state,
    added, expires, joined, last_seen, arch, workers (Celery nodes online) and tasks_done (null when
    Celery could not be asked); `error` says why the master could not be asked, null when it was.
    """
    return {"schema": LIST_SCHEMA, "volunteers": [asdict(row) for row in rows], "error": problem}


def _ask_master(cluster: Cluster, store: VolunteerStore) -> tuple[CeleryView | None, str | None]:
    """Learn from the endpoint's log and ask Celery in the master container: (Celery's view, why not)."""
    with ConnectionPool.for_cluster(cluster) as pool:
        conn = _master(pool, cluster)
        containers = parse_container_list(conn.engine.query(ListContainers(cluster.name)))
        master_runs = is_running(containers, container_name(cluster.name, "master"))
        if master_runs:  # who joined, and the users of tokens expired unused removed (`settle_tokens`)
            settled = _settle_unless_busy(cluster, conn)
            if settled is not None:
                store.volunteers = settled.volunteers
        learn_from_endpoint_log(store, endpoint_log_lines(cluster, conn))
        if not master_runs:
            return None, MASTER_NOT_RUNNING
        if store.active():
            sync_results_users(cluster, conn, store)
        result = conn.engine.exec(celery_probe(cluster.name, cluster.celery_app, [], 2.0), timeout=PROBE_TIMEOUT)
        celery = parse_celery_probe(result.stdout if result.stdout.strip() else result.output)
        return celery, None if celery.answered else f"celery: {celery.error}"


def list_volunteers(cluster: Cluster) -> tuple[list[VolunteerRow], str | None]:
    """The volunteers, with what the endpoint's log and Celery tell; (rows, why the master could not be asked)."""
    store = _store(cluster)
    if not store.volunteers:
        return [], None
    try:
        celery, problem = _ask_master(cluster, store)
    except InfraError as exc:
        celery, problem = None, one_line(exc)
    rows = rows_of(cluster, store, celery, _now())
    for row in rows:
        if row.workers:
            store.volunteers[row.name].last_seen = row.last_seen
    try:
        with cluster_lock(cluster.state_dir, cluster.name, "volunteer list"):
            fresh = _store(cluster)
            for name, v in store.volunteers.items():
                if name in fresh.volunteers:
                    kept = fresh.volunteers[name]
                    kept.joined, kept.last_seen, kept.arch = v.joined, v.last_seen, v.arch
            fresh.save()
    except StateError:
        pass  # another command holds the lock: what was learnt is shown, and learnt again next time
    return rows, problem


# --------------------------------------------------------------------------- helpers


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

