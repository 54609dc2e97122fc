"""The files of secrets and settings each role's containers read: broker, results, Flower, Celery.

Each is rendered here from the cluster file and the generated secrets, and written 0400 on the
host from stdin into a folder of its role (`secrets_dir`): no secret is in a command line or in a
container's environment.
"""

from __future__ import annotations

import base64
import hashlib
import json
import posixpath
from dataclasses import dataclass

from ..commands import files as file_commands
from ..commands.engine import SECRETS_MOUNT
from ..config import Cluster, Host
from ..runtime.signing import SIGNING_KEY_FILE, VERIFY_KEY_FILE
from ..state.credentials import Secrets
from ..state.tls import ServerIdentity
from .addresses import (
    BROKER_INTERNAL_PORT,
    BROKER_TLS_PORT,
    MANAGEMENT_INTERNAL_PORT,
    RESULTS_INTERNAL_PORT,
    RESULTS_TLS_PORT,
    broker_address_for,
    in_url,
)
from .broker_rights import (BrokerRights, celery_exchanges, cluster_queues, followup_definitions,
                            task_queue_definitions, volunteers_only_queues, worker_rights)
from .layout import HostLayout
from .steps import FILE_TIMEOUT, Record, Step, shell_step


@dataclass(frozen=True)
class SecretFile:
    """A file of secrets or settings for the containers of one role, written 0400 on the host.

    Each role has a folder of its own (`secrets_dir`), mounted read-only at SECRETS_MOUNT in its
    containers alone: the broker never sees Flower's password, a worker never sees the broker's
    administrator. Nothing secret is in a container's environment, so `docker inspect` shows none.
    """

    role: str  # broker, results, master, flower, worker
    name: str  # the file's name in the folder
    path: str
    content: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.content.encode()).hexdigest()[:16]


def secrets_dir(layout: HostLayout, role: str) -> str:
    return posixpath.join(layout.env_dir, role)


def secret_in_container(name: str) -> str:
    """Where a container sees the file `name` of its role's secrets folder."""
    return posixpath.join(SECRETS_MOUNT, name)


def _render_env(values: dict[str, str]) -> str:
    # Read by infra_runtime.boot: one KEY=value per line, taken literally (no quotes, no expansion).
    return "".join(f"{key}={value}\n" for key, value in values.items())


def rabbitmq_password_hash(password: str) -> str:
    """RabbitMQ's stored form of a password (rabbit_password_hashing_sha256).

    base64(salt + sha256(salt + password)). The broker imports it at every start, so the
    password in the secrets file wins even over an older data volume. The salt is derived
    from the password, so the file (and the container's fingerprint) stays stable.
    """
    salt = hashlib.sha256(b"infra-broker-salt:" + password.encode()).digest()[:4]
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def broker_vhost(cluster: Cluster) -> str:
    """The cluster's virtual host on the broker: the only one its workers may use."""
    return cluster.name


def broker_definitions(cluster: Cluster, secrets: Secrets) -> str:
    """RabbitMQ definitions imported at every start: the two users, the vhost, their rights.

    The administrator (Flower's queue view, on the master host only) and the workers' user, which
    has no management tag and, on the cluster's vhost alone, only Celery's objects of the cluster
    (`broker_rights.worker_rights`). Passwords only as salted hashes. Celery's broadcast, reply and
    event exchanges are made here, so volunteers, who may not declare them, find them.
    """
    vhost = broker_vhost(cluster)
    users = [(secrets.broker_user, secrets.broker_password, ["administrator"]),
             (secrets.worker_user, secrets.worker_password, [])]
    administrator = BrokerRights(configure=".*", write=".*", read=".*")
    workers = worker_rights(cluster.name, cluster_queues(cluster))
    return json.dumps({
        "users": [{"name": name, "password_hash": rabbitmq_password_hash(password),
                   "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": tags}
                  for name, password, tags in users],
        "vhosts": [{"name": vhost}],
        "permissions": [administrator.permission(secrets.broker_user, vhost),
                        workers.permission(secrets.worker_user, vhost)],
        **merged_definitions(
            {"exchanges": celery_exchanges(vhost)},
            followup_definitions(vhost, cluster_queues(cluster)),
            task_queue_definitions(vhost, volunteers_only_queues(cluster))),
    }, indent=2) + "\n"


def merged_definitions(*parts: dict) -> dict:
    """Definitions' parts joined list by list (queues, exchanges, bindings, policies), in order."""
    merged: dict[str, list] = {}
    for part in parts:
        for key, items in part.items():
            merged.setdefault(key, []).extend(items)
    return merged


def broker_config(cluster: Cluster) -> str:
    """rabbitmq.conf of the broker: its whole configuration (the image has none of its own)."""
    lines = [
        "# Written by infra up.",
        f"listeners.tcp.default = {BROKER_INTERNAL_PORT}",
        f"management.tcp.port = {MANAGEMENT_INTERNAL_PORT}",
        f"load_definitions = {secret_in_container('definitions.json')}",
        # With definitions to import the broker makes no default user; `guest` would be loopback-only.
        "loopback_users.guest = true",
        # Logs go to the container's output (docker logs), not to files.
        "log.console = true",
        "log.console.level = info",
        "log.console.use_colors = off",
        "log.file = false",
        # A task acknowledged late (a sweep's run, acked when it ends) may take as long as it needs:
        # RabbitMQ's default would close the channel of a run longer than 30 minutes. 7 days, in ms.
        "consumer_timeout = 604800000",
    ]
    if cluster.spec.tls:
        lines += [
            f"listeners.ssl.default = {BROKER_TLS_PORT}",
            f"ssl_options.cacertfile = {secret_in_container('ca.crt')}",
            f"ssl_options.certfile = {secret_in_container('server.crt')}",
            f"ssl_options.keyfile = {secret_in_container('server.key')}",
            # Clients prove who they are with a password; the server proves itself with the certificate.
            "ssl_options.verify = verify_none",
            "ssl_options.fail_if_no_peer_cert = false",
            "ssl_options.versions.1 = tlsv1.3",
            "ssl_options.versions.2 = tlsv1.2",
        ]
    return "\n".join(lines) + "\n"


# The cluster's keys in Redis: Celery's results, groups and chords, infra's sweeps; and the channels
# Celery publishes results on. No role has a key or channel outside these.
RESULT_KEY_PATTERNS = ("celery-task-meta-*", "celery-taskset-meta-*", "chord-unlock-*", "infra:sweep:*")
RESULT_CHANNEL_PATTERNS = ("celery-task-meta-*",)
# What a trusted Celery process needs (results, chords' Lua scripts, pub/sub, MULTI): data commands,
# no administration (ACL, CONFIG, FLUSH*, KEYS, DEBUG, SHUTDOWN, CLIENT KILL... are @admin or
# @dangerous), and no FUNCTION (a library loaded there would outlive the task that loaded it).
DATA_COMMANDS = ("-@all", "+@read", "+@write", "+@keyspace", "+@connection", "+@transaction", "+@pubsub",
                 "+@scripting", "-@admin", "-@dangerous", "-function")
# Flower reads results (its task API) and waits for them on their channels: no write at all.
READ_COMMANDS = ("-@all", "+@connection", "+@read", "+subscribe", "+unsubscribe", "-@admin", "-@dangerous")
# The output buffer Redis keeps for one pub/sub client (`client-output-buffer-limit pubsub`).
# Celery's client subscribes to one channel per task of a group while it is still sending the
# group, and reads nothing until `.get()`: the confirmations and the results it is sent meanwhile
# (about 450 bytes a task with the sample project) wait in this buffer. Redis's default (8 MB for
# 60 s, or 32 MB) cuts such a client for any group that takes over a minute to send (tens of
# thousands of tasks): Celery then re-reads every result (MGET) and subscribes again to every
# channel, over and over, and a result published between those two steps is never seen, so
# `.get()` can wait forever. No soft limit; a hard one still bounds what a subscriber that never
# reads (one per authenticated client) can make Redis hold.
RESULTS_PUBSUB_BUFFER_LIMIT = "256mb 0 0"
RESULTS_ADMIN = "admin"
RESULTS_ADMIN_FILE = "admin.url"  # in the results container's folder: the URL infra's ACL calls use


def results_acl_key_rules() -> list[str]:
    """The cluster's keys (read and write) and result channels, after forgetting any others."""
    return (["resetkeys"] + [f"~{p}" for p in RESULT_KEY_PATTERNS]
            + ["resetchannels"] + [f"&{p}" for p in RESULT_CHANNEL_PATTERNS])


def results_users(secrets: Secrets) -> dict[str, tuple[str, list[str]]]:
    """Redis's users by role: name -> (password, rules). `default` is off; volunteers are added at run time.

    - admin: infra's `volunteer` commands (ACL SETUSER/DELUSER), from inside the results container only;
    - master: the master container (job clients, the sweep driver) on the cluster's keys;
    - worker: trusted workers, the same rights under their own password;
    - flower: reads results and their channels.
    """
    return {
        RESULTS_ADMIN: (secrets.results_password, ["allkeys", "allchannels", "+@all"]),
        "master": (secrets.results_master_password, results_acl_key_rules() + list(DATA_COMMANDS)),
        "worker": (secrets.results_worker_password, results_acl_key_rules() + list(DATA_COMMANDS)),
        "flower": (secrets.results_flower_password,
                   ["resetkeys", "%R~celery-task-meta-*", "resetchannels", "&celery-task-meta-*"]
                   + list(READ_COMMANDS)),
    }


def results_user_line(name: str, password: str, rules: list[str]) -> str:
    """A `user` line of redis.conf: on, the password's sha256 only (never the password), the rules."""
    return " ".join(["user", name, "on", "#" + hashlib.sha256(password.encode()).hexdigest(), *rules])


def results_config(cluster: Cluster, secrets: Secrets) -> str:
    """redis.conf of the result backend: plain on the cluster's network, TLS on the published port.

    Its users by role (`results_users`); the default user is off, so every client names its user.
    """
    lines = [
        "# Written by infra up.",
        "bind 0.0.0.0",
        f"port {RESULTS_INTERNAL_PORT}",
        # A login is always required; protected mode would only refuse the other containers.
        "protected-mode no",
        "user default off resetpass resetkeys resetchannels -@all",
        *(results_user_line(name, password, rules) for name, (password, rules) in results_users(secrets).items()),
        "dir /data",
        "appendonly yes",
        f"client-output-buffer-limit pubsub {RESULTS_PUBSUB_BUFFER_LIMIT}",
        "save 60 1000",
        "daemonize no",
        'logfile ""',
    ]
    if cluster.spec.tls:
        lines += [
            f"tls-port {RESULTS_TLS_PORT}",
            f"tls-cert-file {secret_in_container('server.crt')}",
            f"tls-key-file {secret_in_container('server.key')}",
            f"tls-ca-cert-file {secret_in_container('ca.crt')}",
            "tls-auth-clients no",
            "tls-protocols \"TLSv1.2 TLSv1.3\"",
        ]
    return "\n".join(lines) + "\n"


def results_admin_url(secrets: Secrets) -> str:
    """The administrator's URL, read inside the results container alone (plain: it never leaves it)."""
    return f"redis://{RESULTS_ADMIN}:{secrets.results_password}@127.0.0.1:{RESULTS_INTERNAL_PORT}/0\n"


def flower_config(cluster: Cluster, secrets: Secrets) -> str:
    """Flower's configuration file (Python, read with --conf): its login and the broker's API."""
    settings: dict[str, object] = {
        "basic_auth": [f"{secrets.flower_user}:{secrets.flower_password}"],
        "broker_api": (f"http://{secrets.broker_user}:{secrets.broker_password}"
                       f"@broker:{MANAGEMENT_INTERNAL_PORT}/api/"),
    }
    if cluster.spec.tls:
        settings["certfile"] = secret_in_container("server.crt")
        settings["keyfile"] = secret_in_container("server.key")
    # repr() of str and list values is Python literal syntax: the file cannot run anything else.
    return "# Written by infra up.\n" + "".join(f"{key} = {value!r}\n" for key, value in settings.items())


def results_login(secrets: Secrets, role: str) -> str:
    """`USER:PASSWORD` of a role (master, worker, flower) on the result backend, as a URL holds it."""
    password, _ = results_users(secrets)[role]
    return f"{role}:{password}"


def celery_urls(cluster: Cluster, secrets: Secrets, address: str, *, internal: bool,
                role: str = "worker") -> dict[str, str]:
    """Broker and result backend URLs, with the workers' broker user and `role`'s Redis user: on the
    master's own network (`internal`, plain: it never leaves the host) or at the published ports
    (TLS unless `tls: false`)."""
    user = f"{secrets.worker_user}:{secrets.worker_password}"
    results = results_login(secrets, role)
    vhost = broker_vhost(cluster)
    if internal:
        return {
            "CELERY_BROKER_URL": f"amqp://{user}@broker:{BROKER_INTERNAL_PORT}/{vhost}",
            "CELERY_RESULT_BACKEND": f"redis://{results}@results:{RESULTS_INTERNAL_PORT}/0",
        }
    host = in_url(address)
    if not cluster.spec.tls:
        return {
            "CELERY_BROKER_URL": f"amqp://{user}@{host}:{cluster.spec.ports.broker}/{vhost}",
            "CELERY_RESULT_BACKEND": f"redis://{results}@{host}:{cluster.spec.ports.results}/0",
        }
    ca = secret_in_container("ca.crt")
    return {
        "CELERY_BROKER_URL": f"amqps://{user}@{host}:{cluster.spec.ports.broker}/{vhost}",
        "CELERY_RESULT_BACKEND": (f"rediss://{results}@{host}:{cluster.spec.ports.results}/0"
                                  f"?ssl_cert_reqs=required&ssl_ca_certs={ca}"),
    }


def secret_files_for(cluster: Cluster, host: Host, layout: HostLayout, secrets: Secrets, master_address: str,
                     identity: ServerIdentity | None) -> list[SecretFile]:
    """Every secret file of a host, by role. `identity` (the master's certificate) when TLS is on."""
    if cluster.spec.tls and identity is None:
        raise ValueError("a cluster with TLS needs the master's certificate to plan its secret files")
    files: list[SecretFile] = []

    def add(role: str, name: str, content: str) -> None:
        files.append(SecretFile(role, name, posixpath.join(secrets_dir(layout, role), name), content))

    def add_identity(role: str) -> None:
        if identity is not None:
            add(role, "ca.crt", identity.ca_certificate)
            add(role, "server.crt", identity.certificate + identity.ca_certificate)
            add(role, "server.key", identity.key)

    common = {"INFRA_CLUSTER": cluster.name}
    if host.name == cluster.master_host.name:
        def internal(role: str) -> str:
            return _render_env({**common, **celery_urls(cluster, secrets, "", internal=True, role=role)})

        add("broker", "rabbitmq.conf", broker_config(cluster))
        add("broker", "definitions.json", broker_definitions(cluster, secrets))
        add_identity("broker")
        add("results", "redis.conf", results_config(cluster, secrets))
        add("results", RESULTS_ADMIN_FILE, results_admin_url(secrets))
        add_identity("results")
        add("master", "celery.env", internal("master"))
        if secrets.run_signing_key:  # the sweep driver signs runs in the master container: nowhere else
            add("master", SIGNING_KEY_FILE, secrets.run_signing_key)
        add("flower", "celery.env", internal("flower"))
        add("flower", "flowerconfig.py", flower_config(cluster, secrets))
        add_identity("flower")
    if host.name in cluster.worker_hosts():
        address = broker_address_for(cluster, host, master_address)
        add("worker", "celery.env", _render_env({**common, **celery_urls(cluster, secrets, address, internal=False)}))
        if identity is not None:
            add("worker", "ca.crt", identity.ca_certificate)
        if secrets.run_signing_key:  # the public half: workers check runs with it and cannot sign
            add("worker", VERIFY_KEY_FILE, secrets.run_verify_key)
    return files


def secrets_digest(files: list[SecretFile], folder: str | None) -> str:
    """One digest of the files of a secrets folder: part of its containers' fingerprints."""
    if folder is None:
        return ""
    inside = sorted((f.name, f.digest) for f in files if posixpath.dirname(f.path) == folder)
    return hashlib.sha256(json.dumps(inside).encode()).hexdigest()[:16]


def secret_file_step(secret_file: SecretFile, *records: Record) -> Step:
    """The step that writes one secret file on the host: 0400, its content on stdin, never in argv."""
    return shell_step(f"write {secret_file.path} (mode 0400)", file_commands.write_secret_file(secret_file.path),
                      *records, stdin=secret_file.content.encode(), timeout=FILE_TIMEOUT)
