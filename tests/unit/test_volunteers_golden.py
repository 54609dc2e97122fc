"""Golden tests of the join endpoint's upkeep (`ensure_endpoint`): these facts in, exactly these commands out.

The master host is a recording fake (tests/unit/recording.py) that also keeps the files infra
writes, so that the digest of the build context written by one run is read back by the next.
Each line carries the time bound the command was given.
"""

from __future__ import annotations

import hashlib
import io
import json
import shlex
import shutil
import threading
from dataclasses import asdict, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from infra.commands.files import write_secret_file
from infra.commands.volunteer import read_small_file
from infra.config import parse_cluster
from infra.facts.host import HostFacts
from infra.plans import volunteer as volunteer_plan
from infra.state.credentials import Secrets, write_private_file
from infra.state.manifest import Manifest
from infra.state.volunteers import VolunteerStore, make_volunteer
from infra.transport.result import CommandResult
from infra.ui.reporter import Reporter
from infra.workflows import volunteer as volunteer_workflow
from tests.unit.recording import FakeHost, RecordingConnection

FIXTURES = Path(__file__).parent / "fixtures"
NOW = datetime(2025, 1, 31, 12, 0, tzinfo=timezone.utc)
TOKEN = "A" * 20 + "b_-" + "c" * 20

CLUSTER = """\
name: lab
hosts:
  m1: {address: 10.0.0.1, user: alice}
project: {path: proj, app: tasks, remote_path: infra}
roles:
  master: {host: m1}
  workers:
    - {host: m1, containers: 1}
"""

JOIN = "/home/alice/infra/lab/.infra/join"
FILES = "/home/alice/infra/lab/.infra/join-files"
IMAGES = {"infra-lab-worker:latest": {"Id": "sha256:worker1", "Labels": {}},
          "infra-lab-master:latest": {"Id": "sha256:master1", "Labels": {}}}


class MasterHost(RecordingConnection):
    """The recording fake, plus: files written with `write_secret_file` are read back by `read_small_file`,
    and the image save says `saved` once, then `unchanged`."""

    def __init__(self, cluster, state: FakeHost):
        super().__init__(cluster.master_host, state, [], threading.Lock())
        self.files: dict[str, bytes] = {}
        self.saved = False

    def run(self, command, *, stdin=None, timeout=None, check=True, on_stdout=None, on_stderr=None):
        result = super().run(command, stdin=stdin, timeout=timeout, check=check)
        self.log[-1] += f" [{timeout:g} s]"
        script = command[-1]
        if "docker save" in script:
            answer, self.saved = ("unchanged" if self.saved else "saved"), True
            return CommandResult(0, answer + "\n", "")
        if "cat > " in script:
            self.files[shlex.split(script)[-1]] = stdin
        elif script.startswith("cat "):
            return CommandResult(0, self.files.get(shlex.split(script)[1], b"").decode(), "")
        return result


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "tasks.py").write_text("X = 1\n")
    (tmp_path / "proj" / ".env").write_text("API_KEY=not for volunteers\n")
    cluster = parse_cluster(CLUSTER, filename="cluster.yaml", base_dir=tmp_path)
    cluster.tls_dir.mkdir(parents=True)
    for name in ("server.crt", "server.key", "ca.crt"):
        shutil.copy(FIXTURES / "tls" / name, cluster.tls_dir / name)
    # The secrets `up` made: the endpoint hands volunteers the public half of their run key.
    secrets = Secrets("infra", "b", "r", "admin", "f", "worker", "w", (FIXTURES / "run-signing.key").read_text())
    write_private_file(cluster.secrets_path, json.dumps(asdict(secrets)).encode())
    # A build context of fixed content, modes and times: the tarball sent is the same in every run.
    context = tmp_path / "context"
    (context / "templates").mkdir(parents=True)
    (context / "Dockerfile.celery").write_text("FROM python\n")
    (context / "templates" / "run.sh").write_text("#!/bin/sh\n")
    (context / "templates" / "run.sh").chmod(0o755)
    (context / "Dockerfile.celery").chmod(0o644)
    (context / "templates-b").write_text("sorted after templates/ by path parts\n")
    (context / "templates-b").chmod(0o640)
    monkeypatch.setattr(volunteer_workflow, "prepare_build_context", lambda cluster: context)
    monkeypatch.setattr(volunteer_plan, "load_template", lambda assets: "#!/bin/sh\nURL='@URL@' TOKEN='@TOKEN@'\n")
    return cluster


def master_facts() -> HostFacts:
    return HostFacts(home="/home/alice", uid=1000, gid=1000, arch="x86_64", docker_version="27.3.1")


def store_of(tmp_path: Path) -> VolunteerStore:
    store = VolunteerStore(tmp_path / "volunteers.json", port=5443)
    made = make_volunteer("lab", "alice", TOKEN, NOW, timedelta(days=7)).volunteer
    # Its secrets are random: fixed here so that the token table written is the same bytes in every run.
    store.volunteers["alice"] = replace(made, key_sha256="k" * 64, results_password_sha256="r" * 64, salt="5" * 16,
                                        node="lab-volunteer-alice.000000@volunteer-alice",
                                        sealed={p: "S" * 44 for p in ("broker", "results", "update-key")})
    return store


def ensure(cluster, conn, tmp_path, *, port=5443) -> tuple[tuple[str, str], str, Manifest]:
    out = io.StringIO()
    manifest = Manifest.load(cluster.manifest_path, cluster.name)
    answer = volunteer_workflow.ensure_endpoint(cluster, conn, master_facts(), manifest, store_of(tmp_path),
                                                "10.0.0.1", port, None, Reporter(stream=out))
    return answer, out.getvalue(), manifest


def write(path: str, fed: str) -> str:
    """A private file written from stdin (the script is spelled out in test_commands.py), and what it was fed."""
    return f"{shlex.join(write_secret_file(path))} <{fed} [600 s]"


SAVE = ("sh -c 'umask 077 && mkdir -p /home/alice/infra/lab/.infra/join-files && chmod 700 "
        "/home/alice/infra/lab/.infra/join-files && if [ -f /home/alice/infra/lab/.infra/join-files/image.tar.gz ] "
        "&& [ \"$(sed -n '\"'\"'s/^IMAGE_ID=//p'\"'\"' /home/alice/infra/lab/.infra/join-files/image.env "
        "2>/dev/null)\" = sha256:worker1 ]; then echo unchanged; exit 0; fi; rm -f "
        "/home/alice/infra/lab/.infra/join-files/image.tar /home/alice/infra/lab/.infra/join-files/image.tar.gz.tmp "
        "&& docker save sha256:worker1 > /home/alice/infra/lab/.infra/join-files/image.tar && gzip -1 -c "
        "/home/alice/infra/lab/.infra/join-files/image.tar > /home/alice/infra/lab/.infra/join-files/image.tar.gz.tmp "
        "&& rm -f /home/alice/infra/lab/.infra/join-files/image.tar && mv -f "
        "/home/alice/infra/lab/.infra/join-files/image.tar.gz.tmp /home/alice/infra/lab/.infra/join-files/image.tar.gz "
        "&& printf %s '\"'\"'IMAGE_ID=sha256:worker1\nIMAGE_ARCH=amd64\nBASE_IMAGE=python:3.11-slim-bookworm\n'\"'\"' > "
        "/home/alice/infra/lab/.infra/join-files/image.env.tmp && mv -f /home/alice/infra/lab/.infra/join-files/image.env.tmp "
        "/home/alice/infra/lab/.infra/join-files/image.env && echo saved' [3600 s]")
INSPECT = "docker image inspect --format '{{.Id}} {{json .Config.Labels}} {{json .RootFS.Layers}}' "
GATHER_IMAGE = [INSPECT + "infra-lab-worker:latest", SAVE,
                f"{shlex.join(read_small_file(FILES + '/context.digest'))} [600 s]"]
CONTEXT = [write(FILES + "/context.tar.gz", "221 bytes sha256:d0df0b24"),
           write(FILES + "/context.digest", "25 bytes sha256:ca527e87")]
SERVED_LIST = volunteer_plan.served_files_json(["tasks.py"]).encode()  # the project's files but .env
TOKENS = [write(JOIN + "/volunteers.json", "597 bytes sha256:dd8ff0a0"),
          ("sh -c 'mkdir -p /home/alice/infra/lab/.infra/join-state && chmod 700 "
           "/home/alice/infra/lab/.infra/join-state' [600 s]"),  # where the endpoint records spent tokens
          write(JOIN + "/project-files.json",
                f"{len(SERVED_LIST)} bytes sha256:{hashlib.sha256(SERVED_LIST).hexdigest()[:8]}")]
GATHER_ENDPOINT = [INSPECT + "infra-lab-master:latest",
                   "docker ps --all --no-trunc --filter label=infra.cluster=lab --format '{{json .}}'"]
CERTIFICATE = [write(JOIN + "/server.crt", "1396 bytes sha256:d2e3b188"),
               write(JOIN + "/server.key", "241 bytes sha256:b5b95d08"),
               write(JOIN + "/ca.crt", "631 bytes sha256:4567799c")]
SCRIPT = write(JOIN + "/join.sh", "54 bytes sha256:4edc8c56")  # the URL is written in
RUN_VERIFY_KEY = write(JOIN + "/run-signing.pub", "113 bytes sha256:6e9e7a5c")  # public: volunteers check runs with it


def run(spec: str, port: int) -> str:
    return ("docker run --detach --name lab-join --label infra.cluster=lab --label infra.role=join --label infra.host=m1 "
            f"--label infra.spec={spec} --restart unless-stopped --log-driver json-file --log-opt max-size=20m "
            f"--log-opt max-file=3 --network bridge --publish {port}:8443 "
            "--volume /home/alice/infra/lab/.infra/join-files:/srv/infra-join:ro "
            "--volume /home/alice/infra/lab/proj:/project:ro "
            "--volume /home/alice/infra/lab/.infra/join-state:/var/lib/infra-join:rw "
            "--volume /home/alice/infra/lab/.infra/join:/run/infra:ro "
            "--env INFRA_CLUSTER=lab --user 1000:1000 --cap-drop ALL --security-opt no-new-privileges --read-only "
            "--tmpfs /tmp:rw,nosuid,nodev,size=64m infra-lab-master:latest python -m infra_runtime.endpoint")


ENDPOINT_FRESH = [
    *GATHER_IMAGE, *CONTEXT, *TOKENS, *GATHER_ENDPOINT,
    *CERTIFICATE, write(JOIN + "/endpoint.json", "305 bytes sha256:d045b094"), SCRIPT, RUN_VERIFY_KEY,
    run("668b7a29effedc08f265", 5443),
]
# The relay of volunteers' follow-ups: the master image on the cluster's network with the master's settings.
RELAY = ("docker run --detach --name lab-relay --label infra.cluster=lab --label infra.role=relay --label infra.host=m1 "
         "--label infra.spec=27a6e4bf209f5a271d83 --restart unless-stopped --log-driver json-file --log-opt max-size=20m "
         "--log-opt max-file=3 --network lab-net --hostname lab-relay --volume /home/alice/infra/lab/proj:/project:ro "
         "--volume /home/alice/infra/lab/.infra/master:/run/infra:ro --env INFRA_CLUSTER=lab "
         "--env INFRA_ENV_FILE=/run/infra/celery.env --user 1000:1000 --workdir /project --cap-drop ALL "
         "--security-opt no-new-privileges --read-only --tmpfs /tmp:rw,nosuid,nodev,size=64m infra-lab-master:latest "
         "python -m infra_runtime.relay tasks")
FRESH = [*ENDPOINT_FRESH, *GATHER_ENDPOINT, RELAY]
CONTAINERS = {"lab-join": {"id": "id-lab-join", "role": "join"}, "lab-relay": {"id": "id-lab-relay", "role": "relay"}}


@pytest.fixture
def master(cluster):
    return MasterHost(cluster, FakeHost(images=dict(IMAGES)))


def test_a_fresh_master_gets_the_image_the_context_the_tokens_the_files_and_the_endpoint(cluster, master, tmp_path):
    (url, pin), said, manifest = ensure(cluster, master, tmp_path)
    assert master.log == FRESH
    assert url == "https://10.0.0.1:5443" and pin.startswith("sha256//")
    assert said.splitlines() == ["m1           worker image saved for volunteers",
                                 "m1           join endpoint lab-join listens on https://10.0.0.1:5443"]
    assert manifest.hosts["m1"].containers == CONTAINERS
    assert manifest.hosts["m1"].secret_dirs == ["/home/alice/infra/lab/.infra"]


def test_an_endpoint_up_to_date_is_kept_and_only_the_tokens_are_written_again(cluster, master, tmp_path):
    ensure(cluster, master, tmp_path)
    master.log.clear()
    _, said, manifest = ensure(cluster, master, tmp_path)
    assert master.log == [*GATHER_IMAGE, *TOKENS, *GATHER_ENDPOINT, *GATHER_ENDPOINT]
    assert said == ""
    assert manifest.hosts["m1"].containers == CONTAINERS


def test_a_new_port_writes_the_files_again_and_replaces_the_endpoint(cluster, master, tmp_path):
    ensure(cluster, master, tmp_path)
    master.log.clear()
    (url, _), said, manifest = ensure(cluster, master, tmp_path, port=6443)
    assert master.log == [
        *GATHER_IMAGE, *TOKENS, *GATHER_ENDPOINT,
        *CERTIFICATE, write(JOIN + "/endpoint.json", "305 bytes sha256:871436d1"),
        write(JOIN + "/join.sh", "54 bytes sha256:23f4443a"), RUN_VERIFY_KEY,
        "docker rm --force lab-join",
        run("f314585e6ea04eb27cd3", 6443),
        *GATHER_ENDPOINT,  # the relay runs: kept
    ]
    assert said.splitlines() == [f"m1           join endpoint lab-join listens on {url}"]
    assert manifest.hosts["m1"].containers == CONTAINERS


@pytest.mark.parametrize("state", ["exited", "restarting", "paused"])
def test_an_endpoint_that_does_not_run_is_made_anew_never_started(cluster, master, tmp_path, state):
    ensure(cluster, master, tmp_path)
    master.state.containers[0]["State"] = state
    master.log.clear()
    ensure(cluster, master, tmp_path)
    assert master.log == [*GATHER_IMAGE, *TOKENS, *GATHER_ENDPOINT, *ENDPOINT_FRESH[-7:-1], "docker rm --force lab-join",
                          ENDPOINT_FRESH[-1], *GATHER_ENDPOINT]
