"""What volunteers need on the master host, decided without touching it.

- the join endpoint: a container of the cluster (`NAME-join`, role `join`) in the master image,
  HTTPS with the master's certificate on `port`, its files in its own folder of the cluster
  (`ENV_DIR/join`, mounted read-only at /run/infra: certificate, settings, the join script,
  the table of token digests) and the worker image and build context beside it
  (`ENV_DIR/join-files`, read-only at /srv/infra-join); the project, read-only at /project; the
  tokens it exchanged (`ENV_DIR/join-state`, the one folder it writes, at /var/lib/infra-join);
- a volunteer's broker user (its rights: a worker's least, `broker_rights`) and its Redis ACL user
  (writes its tasks' results and its sweep runs' events, reads nothing else, no administration);
- the join script, the one line that fetches it, and the leave line.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import pathspec

from ..commands import files as file_commands
from ..commands.engine import ContainerSpec
from ..config import Cluster
from ..facts.containers import Container
from ..facts.host import HostFacts
from ..names import container_name
from ..runtime import ENDPOINT_MODULE, IMAGE_PACKAGE
from ..runtime.endpoint import (
    CONTEXT_FILE,
    FILES_DIR,
    PORT,
    PROJECT_DIR,
    RUN_VERIFY_KEY_FILE,
    SERVED_FILES,
    SPENT_FILE,
    STATE_DIR,
    VOLUNTEER_STATE,
)
from ..state.tls import ServerIdentity
from .addresses import in_url
from .broker_rights import volunteer_node_prefix, volunteer_queues, volunteer_rights, volunteer_topic_rights
from .containers import ContainerChange, change_steps, fingerprint, worker_app_args
from .hardening import hardening
from .layout import HostLayout
from .secret_files import (
    SecretFile,
    broker_vhost,
    rabbitmq_password_hash,
    secret_file_step,
    secrets_digest,
)
from .steps import FILE_TIMEOUT, Step, shell_step

DEFAULT_PORT = 5443
ROLE = "join"
CHECK_EVERY = 120  # seconds between a volunteer worker's checks for a new project
TEMPLATE = "volunteer-join.sh"

# What a volunteer's worker may do on the result backend: hand back the results of the tasks it
# was given, and nothing else (Redis 7 key permissions and selectors, found by running a real
# worker with the volunteer's settings against the results image's Redis 7.0):
# - write, never read, a task's result (`%W~`: it cannot GET another task's result, and ids are
#   uuid4) with SET/SETEX in MULTI/EXEC, and PUBLISH it on the task's channel; its worker's
#   backend skips Celery's read before each write (`runtime.results`);
# - a sweep's run (infra.run_command): append to the sweep's events, set their expiry; read the
#   cancel and alive flags and the runs' stop flags (early stopping: read, never set, so a volunteer
#   cannot stop another's run); check and add its submission in the done set; write, never read,
#   the chunks of its runs' files (`%W~`: the keys hold the submission id, unguessable, so it
#   writes only its own runs' and reads no one's);
# - what redis-py sends at connect. No SCAN or KEYS, no DEL, no SUBSCRIBE, no chord bookkeeping
#   (EVALSHA on celery-taskset-meta-*: the trusted side joins chords), no administration.
RESULT_KEY_PATTERNS = ("celery-task-meta-*",)
RESULT_CHANNEL_PATTERNS = ("celery-task-meta-*",)
RESULT_COMMANDS = ("-@all", "+hello", "+auth", "+ping", "+select", "+client|setname",
                   "+set", "+setex", "+multi", "+exec", "+discard", "+publish")
SWEEP_SELECTORS = ("(%W~infra:sweep:*:events +rpush +expire)",
                   "(%R~infra:sweep:*:cancel %R~infra:sweep:*:alive %R~infra:sweep:*:stop:* +mget)",
                   "(~infra:sweep:*:done +sismember +sadd +expire)",
                   "(%W~infra:sweep:*:artifact:* +set)")

def endpoint_name(cluster: str) -> str:
    return container_name(cluster, ROLE)


@dataclass(frozen=True)
class EndpointLayout:
    config_dir: str  # the endpoint's own folder: mounted read-only at CONFIG_DIR
    files_dir: str  # the worker image and the build context: read-only at FILES_DIR
    state_dir: str = ""  # the spent tokens, the one folder the endpoint writes: at STATE_DIR

    @property
    def token_table(self) -> str:
        return posixpath.join(self.config_dir, "volunteers.json")

    @property
    def spent_file(self) -> str:
        """Where the endpoint records each token it exchanged (`runtime.endpoint.SpentTokens`)."""
        return posixpath.join(self.state_dir, SPENT_FILE)

    @property
    def served_files(self) -> str:
        """The project files the endpoint serves (`served_files_json`), rewritten live like the token table."""
        return posixpath.join(self.config_dir, SERVED_FILES)

    @property
    def context_tarball(self) -> str:
        return posixpath.join(self.files_dir, CONTEXT_FILE)

    @property
    def context_digest(self) -> str:
        """The digest of the build context the tarball holds (`state.build_context.context_digest`)."""
        return posixpath.join(self.files_dir, "context.digest")


def endpoint_layout(layout: HostLayout) -> EndpointLayout:
    """Inside the cluster's secret folder, so `infra clean` removes it with the rest."""
    return EndpointLayout(posixpath.join(layout.env_dir, "join"), posixpath.join(layout.env_dir, "join-files"),
                          posixpath.join(layout.env_dir, "join-state"))


# What `sync-files` sends to the cluster's own hosts but a volunteer never gets: environment files,
# where projects keep their secrets (gitignore patterns, in any folder).
NEVER_TO_VOLUNTEERS = (".env", ".env.*")


def served_files_json(project_files: Iterable[str]) -> str:
    """project-files.json: the project files volunteers get. `project_files` are those `sync-files`
    sends (its scan, by `.infraignore` and the default ignores: no virtual environment, no output);
    of them, environment files are left out too."""
    never = pathspec.GitIgnoreSpec.from_lines(NEVER_TO_VOLUNTEERS)
    return json.dumps({"files": sorted(rel for rel in project_files if not never.match_file(rel))}, indent=0) + "\n"


def endpoint_url(address: str, port: int) -> str:
    return f"https://{in_url(address)}:{port}"


def endpoint_settings(cluster: Cluster, address: str, port: int, queues: list[str] | None = None) -> dict:
    """endpoint.json: what the endpoint needs to render a volunteer's settings (no secret in it)."""
    return {
        "cluster": cluster.name,
        "url": endpoint_url(address, port),
        "address": address,
        "broker_port": cluster.spec.ports.broker or 5671,
        "results_port": cluster.spec.ports.results,
        "vhost": broker_vhost(cluster),
        "app_args": worker_app_args(cluster),
        "queues": queues or volunteer_queues(cluster),
        "check_every": CHECK_EVERY,
    }


def endpoint_files(cluster: Cluster, folders: EndpointLayout, identity: ServerIdentity, settings: dict,
                   script: str, run_verify_key: str) -> list[SecretFile]:
    """The endpoint's folder, but for the token table (rewritten by every add and revoke, re-read live).

    `run_verify_key`: the public key volunteers check runs with (never the signing key)."""
    def file(name: str, content: str) -> SecretFile:
        return SecretFile(ROLE, name, posixpath.join(folders.config_dir, name), content)

    return [
        file("server.crt", identity.certificate + identity.ca_certificate),
        file("server.key", identity.key),
        file("ca.crt", identity.ca_certificate),
        file("endpoint.json", json.dumps(settings, indent=2, sort_keys=True) + "\n"),
        file("join.sh", script),
        file(RUN_VERIFY_KEY_FILE, run_verify_key),
    ]


def endpoint_container(cluster: Cluster, layout: HostLayout, facts: HostFacts, port: int) -> ContainerSpec:
    """The join endpoint: the master image, as the SSH user, on Docker's default bridge (it needs
    no other container of the cluster), publishing `port` only."""
    folders = endpoint_layout(layout)
    return ContainerSpec(
        name=endpoint_name(cluster.name), role=ROLE, host=cluster.master_host.name,
        image=cluster.image_tag("master"), command=("python", "-m", ENDPOINT_MODULE),
        environment=(("INFRA_CLUSTER", cluster.name),), secrets=folders.config_dir,
        ports=((port, PORT),), bind_address=cluster.spec.roles.master.bind_address,
        volumes=((folders.files_dir, FILES_DIR, "ro"), (layout.project_dir, PROJECT_DIR, "ro"),
                 (folders.state_dir, STATE_DIR, "rw")),
        network="bridge", user=f"{facts.uid}:{facts.gid}", **hardening(ROLE),
    )


def endpoint_fingerprint(spec: ContainerSpec, image_id: str | None, files: list[SecretFile]) -> str:
    return fingerprint(spec, image_id, secrets_digest(files, spec.secrets))


def context_steps(folders: EndpointLayout, digest: str, digest_there: str,
                  make_tarball: Callable[[], bytes]) -> list[Step]:
    """The build context beside the worker image, sent only when the host holds another digest (or none).

    `make_tarball` is called only then: a context with wheels takes a while to pack.
    """
    if digest_there == digest:
        return []
    return [
        shell_step(f"write {folders.context_tarball}", file_commands.write_secret_file(folders.context_tarball),
                   stdin=make_tarball(), timeout=FILE_TIMEOUT),
        shell_step(f"write {folders.context_digest}", file_commands.write_secret_file(folders.context_digest),
                   stdin=(digest + "\n").encode(), timeout=FILE_TIMEOUT),
    ]


@dataclass(frozen=True)
class EndpointPlan:
    change: ContainerChange  # keep, create or replace
    steps: list[Step]


def endpoint_change(spec: ContainerSpec, wanted: str, existing: Container | None) -> ContainerChange:
    """Keep the endpoint only when it runs with the `wanted` fingerprint, else make it anew.

    Unlike `up`'s containers (`containers.diff_containers`), one that stopped is replaced rather than
    started again: it keeps no state, so a new one costs no more and leaves no doubt about its settings.
    """
    if existing is None:
        return ContainerChange("create", spec.name, spec.role, "new", spec, wanted)
    if existing.fingerprint != wanted:
        return ContainerChange("replace", spec.name, spec.role, "settings or image changed", spec, wanted, existing)
    if existing.state != "running":
        return ContainerChange("replace", spec.name, spec.role, f"was {existing.state}", spec, wanted, existing)
    return ContainerChange("keep", spec.name, spec.role, "up to date", spec, wanted, existing)


def plan_endpoint(cluster: Cluster, spec: ContainerSpec, files: list[SecretFile], image_id: str | None,
                  containers: tuple[Container, ...]) -> EndpointPlan:
    """The endpoint's files and container, given the id of its image and the cluster's containers on its host.

    The files are written before the old endpoint is removed: it read them when it started, so it
    serves until the new one takes over.
    """
    wanted = endpoint_fingerprint(spec, image_id, files)
    change = endpoint_change(spec, wanted, next((c for c in containers if c.name == spec.name), None))
    writes = [] if change.action == "keep" else [secret_file_step(file) for file in files]
    return EndpointPlan(change, writes + change_steps(cluster, [change]))


# --------------------------------------------------------------------------- a volunteer's access


def broker_user_definitions(cluster: Cluster, user: str, password: str) -> str:
    """Definitions `rabbitmqctl import_definitions` adds: the user (salted hash only), no tag (so no
    management API), and on the cluster's vhost alone a worker's least rights (`broker_rights`):
    consume the cluster's queues, its own pidbox queue, replies and worker/task events, no publishing
    of tasks, no broadcast, no reading of events."""
    vhost = broker_vhost(cluster)
    rights = volunteer_rights(volunteer_node_prefix(cluster.name, user), volunteer_queues(cluster))
    return json.dumps({
        "users": [{"name": user, "password_hash": rabbitmq_password_hash(password),
                   "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": []}],
        "permissions": [rights.permission(user, vhost)],
        "topic_permissions": [volunteer_topic_rights(user, vhost)],
    }, indent=2) + "\n"


def results_acl_rules(password_sha256: str) -> list[str]:
    """`ACL SETUSER USER reset RULES...`: on, the password's sha256, write-only result keys, their
    channels (publish only), the connection and write commands, and the sweep selectors."""
    return (["on", f"#{password_sha256}"] + [f"%W~{p}" for p in RESULT_KEY_PATTERNS]
            + [f"&{p}" for p in RESULT_CHANNEL_PATTERNS] + list(RESULT_COMMANDS) + list(SWEEP_SELECTORS))


# --------------------------------------------------------------------------- the lines and the script


def volunteer_objects(cluster: str) -> dict[str, str]:
    """What the join line makes on a volunteer's machine: one container, one volume, one image tag."""
    base = f"infra-{cluster}-volunteer"
    return {"container": base, "volume": base, "image": f"{base}:latest"}


def render_join_script(template: str, cluster: str, url: str, pin: str) -> str:
    """The join script with everything but the token (`@TOKEN@`, written in by the endpoint)."""
    objects = volunteer_objects(cluster)
    values = {"CLUSTER": cluster, "URL": url, "PIN": pin, "CONTAINER": objects["container"],
              "VOLUME": objects["volume"], "IMAGE": objects["image"], "STATE": VOLUNTEER_STATE,
              "PACKAGE": IMAGE_PACKAGE, "LEAVE": leave_line(cluster)}
    for key, value in values.items():
        if "'" in value:  # every value is written inside single quotes
            raise ValueError(f"{key} holds a quote")
        template = template.replace(f"@{key}@", value)
    template = template.replace("@CURL_FAILURES@", curl_failure_cases())
    leftover = re.findall(r"@[A-Z]+@", template)
    if set(leftover) - {"@TOKEN@"}:
        raise ValueError(f"unfilled placeholders in the join script: {sorted(set(leftover))}")
    return template


# Why curl failed, by its exit code: the join line and the join script say which it is, since
# only curl's own line above tells a refused token from a master that is not the pinned one.
CURL_FAILURES = {
    "22": "the master refused the token: it is wrong, expired or revoked (ask for a new line)",
    "90": "the server is not the pinned master (its public key differs from the line): nothing was sent to it",
    "6": "the address of the master does not resolve here",
    "7": "the master does not take connections on its join port (is the cluster running, the port open?)",
    "28": "the master did not answer in time",
    "35|60": "no TLS connection could be made with the master",
    "127": "curl is not installed on this machine",
}
CURL_FAILED = "curl failed (exit $e, see its error above)"


def curl_failure_cases() -> str:
    """The `case "$e" in ... esac` that sets `m` to why curl failed with exit code `e`: POSIX sh, one line."""
    for reason in CURL_FAILURES.values():
        if any(char in reason for char in "'\\\"$`!"):  # written inside single quotes, pasted into any shell
            raise ValueError(f"a character the shell would read in {reason!r}")
    cases = " ".join(f"{code}) m='{reason}';;" for code, reason in CURL_FAILURES.items())
    return f'case "$e" in {cases} *) m="{CURL_FAILED}";; esac'


def join_line(url: str, pin: str, token: str, options: str = "") -> str:
    """The one line a volunteer runs. curl checks the master's key against the pin before it sends
    anything (the token included); when curl fails, the line says why (a refused token, another
    key than the pin, no answer...), by curl's exit code, and exits 1 instead of running an empty
    script. POSIX sh, and the same in bash, zsh and dash."""
    for value in (url, pin, token):
        if "'" in value or "\\" in value:
            raise ValueError("a quote in the join line")
    # Quoted even where the shell would not need it: the line is pasted into shells of all kinds.
    fetch = f"curl -fsS --proto =https -k --pinnedpubkey '{pin}' '{url}/join/{token}'"
    refuse = f"{{ e=$?; {curl_failure_cases()}; echo \"infra-join: $m\" >&2; echo 'exit 1'; }}"
    return f"({fetch} || {refuse}) | sh -s --" + (f" {options}" if options else "")


def leave_line(cluster: str) -> str:
    """Removes what the join line made on the volunteer's machine, and nothing else; needs no network."""
    o = volunteer_objects(cluster)
    return (f"docker rm -f {o['container']}; docker volume rm {o['volume']}; "
            f"docker image rm {o['image']}")


def load_template(assets: Path) -> str:
    return (assets / "templates" / TEMPLATE).read_text()
