"""Golden tests of the workflows: these facts in, exactly these commands out.

Each test describes what the hosts answer (`FakeHost`), runs the real workflow (`up`, `clean`,
`sync-files`) against recording fakes, and compares every command it sent, in order, with the
list spelled out here. A change to a workflow shows up here as a diff of command lines, without
any host; the end-to-end tests check the same workflows on real hosts.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
from pathlib import Path

import pytest

from infra.commands.files import (
    MARKER_FILE,
    folder_owners,
    list_project,
    prepare_project,
    remove_owned_folder,
)
from infra.config import parse_cluster
from infra.plans.secret_files import rabbitmq_password_hash
from infra.state.credentials import Secrets, write_private_file
from infra.state.manifest import Manifest
from infra.state.tls import ServerIdentity
from infra.transport.pool import ConnectionPool
from infra.ui.reporter import Reporter
from infra.workflows import up as up_workflow
from infra.workflows.clean import clean
from infra.workflows.sync_files import sync_files
from infra.workflows.up import up
from tests.unit.recording import FakeHost, RecordingHosts

# A throwaway run signing key made for these tests alone (a new one would change the golden digests).
RUN_SIGNING_KEY = (Path(__file__).parent / "fixtures" / "run-signing.key").read_text()
SECRETS = Secrets("infra", "brokerpw", "resultspw", "admin", "flowerpw", "worker", "workerpw", RUN_SIGNING_KEY,
                  "resultsmasterpw", "resultsworkerpw", "resultsflowerpw")
# The master's certificate, made once and kept as fixtures: the golden lines hold the digests of
# what is sent, and a new certificate (random keys, signatures, serials) would differ on every run.
# A throwaway key made for these tests alone; tests/unit/test_tls.py covers the making.
_TLS = Path(__file__).parent / "fixtures" / "tls"
IDENTITY = ServerIdentity(certificate=(_TLS / "server.crt").read_text(), key=(_TLS / "server.key").read_text(),
                          ca_certificate=(_TLS / "ca.crt").read_text())
CONTEXT = "ctx0"  # the build context's digest, fixed so that the golden lines do not follow the Dockerfiles

CLUSTER = """\
name: lab
hosts:
  m1: {address: 10.0.0.1, user: alice}
  w1: {address: 10.0.0.2, user: bob}
project: {path: proj, app: tasks, remote_path: infra}
roles:
  master: {host: m1}
  workers:
    - {host: m1, containers: 1, concurrency: 2}
    - {host: w1, containers: 1}
"""


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    project = tmp_path / "proj"
    project.mkdir()
    (project / "tasks.py").write_text("from celery import Celery\napp = Celery()\n")
    (project / "README").write_text("hello\n")
    for item in project.iterdir():  # fixed times and modes: the tar sent is the same in every run
        item.chmod(0o644)
        os.utime(item, (1_700_000_000, 1_700_000_000))
    cluster = parse_cluster(CLUSTER, filename="cluster.yaml", base_dir=tmp_path)
    write_private_file(cluster.secrets_path, json.dumps(SECRETS.__dict__).encode())
    monkeypatch.setattr(up_workflow, "context_digest", lambda context: CONTEXT)
    monkeypatch.setattr(up_workflow, "master_identity", lambda cluster, address, save: IDENTITY)
    return cluster


@pytest.fixture
def hosts(monkeypatch):
    fakes = RecordingHosts(
        m1=FakeHost(home="/home/alice", uid=1000, gid=1000),
        w1=FakeHost(home="/home/bob", uid=1001, gid=1001),
    )
    monkeypatch.setattr(ConnectionPool, "default_connector", staticmethod(fakes.connect))
    return fakes


def quiet() -> Reporter:
    return Reporter(stream=io.StringIO())


def sent(hosts: RecordingHosts, name: str, cluster) -> list[str]:
    """What a host was sent, with the test's own folder written as <tmp>."""
    tmp = str(cluster.project_dir.parent)
    return [line.replace(tmp, "<tmp>") for line in hosts.sent(name)]


def forget(hosts: RecordingHosts) -> None:
    for log in hosts.logs.values():
        log.clear()


PROBE = ("sh -c 'printf '\"'\"'=====infra:home\\n%s\\n'\"'\"' \"$HOME\"; printf '\"'\"'=====infra:uid\\n'\"'\"'; "
         "id -u; id -g; printf '\"'\"'=====infra:arch\\n'\"'\"'; uname -m; printf '\"'\"'=====infra:end\\n'\"'\"''")
FACTS = [
    PROBE,
    "docker version --format '{{json .Server}}'",
    "docker ps --all --no-trunc --filter label=infra.cluster=lab --format '{{json .}}'",
    "docker image inspect --format '{{.Id}} {{json .Config.Labels}} {{json .RootFS.Layers}}' python:3.11-slim-bookworm "
    "infra-lab-worker:latest infra-lab-master:latest infra-lab-broker:latest",
    "docker network ls --filter label=infra.cluster=lab --format '{{.Name}}'",
    "docker volume ls --filter label=infra.cluster=lab --format '{{.Name}}'",
]


def listing(home: str) -> str:
    """The project listing of a host (its script is spelled out in test_commands.py)."""
    return shlex.join(list_project(f"{home}/infra/lab", f"{home}/infra/lab/proj", f"{home}/infra/lab/output", "lab"))


def sync_listing() -> str:
    """`sync-files`' one question to a host: its home and, below it, the project listing."""
    return shlex.join(list_project("./infra/lab", "./infra/lab/proj", "./infra/lab/output", "lab", from_home=True,
                                   with_stats=True))


def claim(home: str, *, new: bool = False) -> str:
    """The cluster folder claimed or checked before anything is written (spelled out in test_commands.py);
    a `new` one is checked to be the SSH user's once made."""
    made = (f"{home}/infra/lab",) if new else ()
    return shlex.join(prepare_project(f"{home}/infra/lab", f"{home}/infra/lab/proj", f"{home}/infra/lab/output", "lab",
                                      made))


def remove(folder: str, owner: str) -> list[str]:
    """Who owns `owner` and the folders above it, then the folder deleted only if `owner` holds the
    marker of `lab` (both spelled out in test_commands.py)."""
    return [shlex.join(folder_owners(owner)), shlex.join(remove_owned_folder(folder, owner, "lab"))]


def test_the_golden_lines_start_with_the_facts_probe(cluster, hosts):
    """A guard for the fixtures below: one probe and five engine queries per host."""
    up(cluster, quiet(), dry_run=True)
    assert hosts.sent("w1")[:6] == FACTS


UP_FRESH_M1 = [
    *FACTS,
    listing("/home/alice"),
    claim("/home/alice", new=True),
    "sh -c '[ ! -L /home/alice/infra/lab/proj ] && cd /home/alice/infra/lab/proj && "
    "tar -x --no-same-owner --no-same-permissions --no-overwrite-dir -m -f -' <10240 bytes sha256:ec7ba8d3",
    "docker build --network host --file <tmp>/.infra/lab/build/Dockerfile.celery --target worker --tag infra-lab-worker:latest --label infra.cluster=lab --label infra.context=b3e1db0c208b6acd81bd --build-arg BASE_IMAGE=python:3.11-slim-bookworm <tmp>/.infra/lab/build",
    "docker build --network host --file <tmp>/.infra/lab/build/Dockerfile.celery --target master --tag infra-lab-master:latest --label infra.cluster=lab --label infra.context=18b4a7a6fefdce477563 --build-arg BASE_IMAGE=python:3.11-slim-bookworm <tmp>/.infra/lab/build",
    "docker build --network host --file <tmp>/.infra/lab/build/Dockerfile.broker --tag infra-lab-broker:latest --label infra.cluster=lab --label infra.context=7c63902eed836de05b81 --build-arg BASE_IMAGE=python:3.11-slim-bookworm <tmp>/.infra/lab/build",
    "docker network create --label infra.cluster=lab lab-net",
    "docker volume create --label infra.cluster=lab lab-broker-data",
    "docker volume create --label infra.cluster=lab lab-results-data",
    "docker image inspect --format '{{.Id}} {{json .Config.Labels}} {{json .RootFS.Layers}}' infra-lab-broker:latest infra-lab-master:latest infra-lab-worker:latest",
    "sh -c 'umask 077 && mkdir -p /home/alice/infra/lab/.infra/broker && chmod 700 /home/alice/infra/lab/.infra/broker && rm -f /home/alice/infra/lab/.infra/broker/rabbitmq.conf.tmp && cat > /home/alice/infra/lab/.infra/broker/rabbitmq.conf.tmp && chmod 400 /home/alice/infra/lab/.infra/broker/rabbitmq.conf.tmp && mv -f /home/alice/infra/lab/.infra/broker/rabbitmq.conf.tmp /home/alice/infra/lab/.infra/broker/rabbitmq.conf' <575 bytes sha256:dedd4f24",
    "sh -c 'umask 077 && mkdir -p /home/alice/infra/lab/.infra/broker && chmod 700 /home/alice/infra/lab/.infra/broker && rm -f /home/alice/infra/lab/.infra/broker/definitions.json.tmp && cat > /home/alice/infra/lab/.infra/broker/definitions.json.tmp && chmod 400 /home/alice/infra/lab/.infra/broker/definitions.json.tmp && mv -f /home/alice/infra/lab/.infra/broker/definitions.json.tmp /home/alice/infra/lab/.infra/broker/definitions.json' <2935 bytes sha256:ffe59214",
    "sh -c 'umask 077 && mkdir -p /home/alice/infra/lab/.infra/broker && chmod 700 /home/alice/infra/lab/.infra/broker && rm -f /home/alice/infra/lab/.infra/broker/ca.crt.tmp && cat > /home/alice/infra/lab/.infra/broker/ca.crt.tmp && chmod 400 /home/alice/infra/lab/.infra/broker/ca.crt.tmp && mv -f /home/alice/infra/lab/.infra/broker/ca.crt.tmp /home/alice/infra/lab/.infra/broker/ca.crt' <631 bytes sha256:4567799c",
    "sh -c 'umask 077 && mkdir -p /home/alice/infra/lab/.infra/broker && chmod 700 /home/alice/infra/lab/.infra/broker && rm -f /home/alice/infra/lab/.infra/broker/server.crt.tmp && cat > /home/alice/infra/lab/.infra/broker/server.crt.tmp && chmod 400 /home/alice/infra/lab/.infra/broker/server.crt.tmp && mv -f /home/alice/infra/lab/.infra/broker/server.crt.tmp /home/alice/infra/lab/.infra/broker/server.crt' <1396 bytes sha256:d2e3b188",
    "sh -c 'umask 077 && mkdir -p /home/alice/infra/lab/.infra/broker && chmod 700 /home/alice/infra/lab/.infra/broker && rm -f /home/alice/infra/lab/.infra/broker/server.key.tmp && cat > /home/alice/infra/lab/.infra/broker/server.key.tmp && chmod 400 /home/alice/infra/lab/.infra/broker/server.key.tmp && mv -f /home/alice/infra/lab/.infra/broker/server.key.tmp /home/alice/infra/lab/.infra/broker/server.key' <241 bytes sha256:b5b95d08",
    "docker run --detach --name lab-broker --label infra.cluster=lab --label infra.role=broker --label infra.host=m1 --label infra.spec=6b9a5b4fac3f451140e9 --restart unless-stopped --log-driver json-file --log-opt max-size=20m --log-opt max-file=3 --network lab-net --network-alias broker --hostname lab-broker --publish 5671:5671 --volume lab-broker-data:/var/lib/rabbitmq:rw --volume /home/alice/infra/lab/.infra/broker:/run/infra:ro --user 1000:1000 --cap-drop ALL --security-opt no-new-privileges --read-only --tmpfs /tmp:rw,nosuid,nodev,size=64m --tmpfs /var/log/rabbitmq:rw,nosuid,nodev,size=64m infra-lab-broker:latest",
    "sh -c 'umask 077 && mkdir -p /home/alice/infra/lab/.infra/results && chmod 700 /home/alice/infra/lab/.infra/results && rm -f /home/alice/infra/lab/.infra/results/redis.conf.tmp && cat > /home/alice/infra/lab/.infra/results/redis.conf.tmp && chmod 400 /home/alice/infra/lab/.infra/results/redis.conf.tmp && mv -f /home/alice/infra/lab/.infra/results/redis.conf.tmp /home/alice/infra/lab/.infra/results/redis.conf' <1340 bytes sha256:c48b9faa",
    "sh -c 'umask 077 && mkdir -p /home/alice/infra/lab/.infra/results && chmod 700 /home/alice/infra/lab/.infra/results && rm -f /home/alice/infra/lab/.infra/results/admin.url.tmp && cat > /home/alice/infra/lab/.infra/results/admin.url.tmp && chmod 400 /home/alice/infra/lab/.infra/results/admin.url.tmp && mv -f /home/alice/infra/lab/.infra/results/admin.url.tmp /home/alice/infra/lab/.infra/results/admin.url' <41 bytes sha256:190a95c2",
    "sh -c 'umask 077 && mkdir -p /home/alice/infra/lab/.infra/results && chmod 700 /home/alice/infra/lab/.infra/results && rm -f /home/alice/infra/lab/.infra/results/ca.crt.tmp && cat > /home/alice/infra/lab/.infra/results/ca.crt.tmp && chmod 400 /home/alice/infra/lab/.infra/results/ca.crt.tmp && mv -f /home/alice/infra/lab/.infra/results/ca.crt.tmp /home/alice/infra/lab/.infra/results/ca.crt' <631 bytes sha256:4567799c",
    "sh -c 'umask 077 && mkdir -p /home/alice/infra/lab/.infra/results && chmod 700 /home/alice/infra/lab/.infra/results && rm -f /home/alice/infra/lab/.infra/results/server.crt.tmp && cat > /home/alice/infra/lab/.infra/results/server.crt.tmp && chmod 400 /home/alice/infra/lab/.infra/results/server.crt.tmp && mv -f /home/alice/infra/lab/.infra/results/server.crt.tmp /home/alice/infra/lab/.infra/results/server.crt' <1396 bytes sha256:d2e3b188",
    "sh -c 'umask 077 && mkdir -p /home/alice/infra/lab/.infra/results && chmod 700 /home/alice/infra/lab/.infra/results && rm -f /home/alice/infra/lab/.infra/results/server.key.tmp && cat > /home/alice/infra/lab/.infra/results/server.key.tmp && chmod 400 /home/alice/infra/lab/.infra/results/server.key.tmp && mv -f /home/alice/infra/lab/.infra/results/server.key.tmp /home/alice/infra/lab/.infra/results/server.key' <241 bytes sha256:b5b95d08",
    "docker run --detach --name lab-results --label infra.cluster=lab --label infra.role=results --label infra.host=m1 --label infra.spec=738b0272a19fb20ba025 --restart unless-stopped --log-driver json-file --log-opt max-size=20m --log-opt max-file=3 --network lab-net --network-alias results --hostname lab-results --publish 6379:6380 --volume lab-results-data:/data:rw --volume /home/alice/infra/lab/.infra/results:/run/infra:ro --user 1000:1000 --cap-drop ALL --security-opt no-new-privileges --read-only --tmpfs /tmp:rw,nosuid,nodev,size=64m infra-lab-master:latest infra-results",
    "sh -c 'umask 077 && mkdir -p /home/alice/infra/lab/.infra/master && chmod 700 /home/alice/infra/lab/.infra/master && rm -f /home/alice/infra/lab/.infra/master/celery.env.tmp && cat > /home/alice/infra/lab/.infra/master/celery.env.tmp && chmod 400 /home/alice/infra/lab/.infra/master/celery.env.tmp && mv -f /home/alice/infra/lab/.infra/master/celery.env.tmp /home/alice/infra/lab/.infra/master/celery.env' <143 bytes sha256:af766b40",
    "sh -c 'umask 077 && mkdir -p /home/alice/infra/lab/.infra/master && chmod 700 /home/alice/infra/lab/.infra/master && rm -f /home/alice/infra/lab/.infra/master/run-signing.key.tmp && cat > /home/alice/infra/lab/.infra/master/run-signing.key.tmp && chmod 400 /home/alice/infra/lab/.infra/master/run-signing.key.tmp && mv -f /home/alice/infra/lab/.infra/master/run-signing.key.tmp /home/alice/infra/lab/.infra/master/run-signing.key' <119 bytes sha256:c3418a97",
    "docker run --detach --name lab-master --label infra.cluster=lab --label infra.role=master --label infra.host=m1 --label infra.spec=ecb047cfacc72c8a4bd0 --restart unless-stopped --log-driver json-file --log-opt max-size=20m --log-opt max-file=3 --network lab-net --hostname lab-master --volume /home/alice/infra/lab/proj:/project:ro --volume /home/alice/infra/lab/output:/project/output:rw --volume /home/alice/infra/lab/.infra/master:/run/infra:ro --env INFRA_CLUSTER=lab --env INFRA_ENV_FILE=/run/infra/celery.env --user 1000:1000 --workdir /project --cap-drop ALL --security-opt no-new-privileges --read-only --tmpfs /tmp:rw,nosuid,nodev,size=1g --pids-limit 4096 infra-lab-master:latest infra-idle",
    "sh -c 'umask 077 && mkdir -p /home/alice/infra/lab/.infra/flower && chmod 700 /home/alice/infra/lab/.infra/flower && rm -f /home/alice/infra/lab/.infra/flower/celery.env.tmp && cat > /home/alice/infra/lab/.infra/flower/celery.env.tmp && chmod 400 /home/alice/infra/lab/.infra/flower/celery.env.tmp && mv -f /home/alice/infra/lab/.infra/flower/celery.env.tmp /home/alice/infra/lab/.infra/flower/celery.env' <143 bytes sha256:4cc2cf94",
    "sh -c 'umask 077 && mkdir -p /home/alice/infra/lab/.infra/flower && chmod 700 /home/alice/infra/lab/.infra/flower && rm -f /home/alice/infra/lab/.infra/flower/flowerconfig.py.tmp && cat > /home/alice/infra/lab/.infra/flower/flowerconfig.py.tmp && chmod 400 /home/alice/infra/lab/.infra/flower/flowerconfig.py.tmp && mv -f /home/alice/infra/lab/.infra/flower/flowerconfig.py.tmp /home/alice/infra/lab/.infra/flower/flowerconfig.py' <179 bytes sha256:05b6486d",
    "sh -c 'umask 077 && mkdir -p /home/alice/infra/lab/.infra/flower && chmod 700 /home/alice/infra/lab/.infra/flower && rm -f /home/alice/infra/lab/.infra/flower/ca.crt.tmp && cat > /home/alice/infra/lab/.infra/flower/ca.crt.tmp && chmod 400 /home/alice/infra/lab/.infra/flower/ca.crt.tmp && mv -f /home/alice/infra/lab/.infra/flower/ca.crt.tmp /home/alice/infra/lab/.infra/flower/ca.crt' <631 bytes sha256:4567799c",
    "sh -c 'umask 077 && mkdir -p /home/alice/infra/lab/.infra/flower && chmod 700 /home/alice/infra/lab/.infra/flower && rm -f /home/alice/infra/lab/.infra/flower/server.crt.tmp && cat > /home/alice/infra/lab/.infra/flower/server.crt.tmp && chmod 400 /home/alice/infra/lab/.infra/flower/server.crt.tmp && mv -f /home/alice/infra/lab/.infra/flower/server.crt.tmp /home/alice/infra/lab/.infra/flower/server.crt' <1396 bytes sha256:d2e3b188",
    "sh -c 'umask 077 && mkdir -p /home/alice/infra/lab/.infra/flower && chmod 700 /home/alice/infra/lab/.infra/flower && rm -f /home/alice/infra/lab/.infra/flower/server.key.tmp && cat > /home/alice/infra/lab/.infra/flower/server.key.tmp && chmod 400 /home/alice/infra/lab/.infra/flower/server.key.tmp && mv -f /home/alice/infra/lab/.infra/flower/server.key.tmp /home/alice/infra/lab/.infra/flower/server.key' <241 bytes sha256:b5b95d08",
    "docker run --detach --name lab-flower --label infra.cluster=lab --label infra.role=flower --label infra.host=m1 --label infra.spec=b5c87fb3392baf4f8a57 --restart unless-stopped --log-driver json-file --log-opt max-size=20m --log-opt max-file=3 --network lab-net --hostname lab-flower --publish 127.0.0.1:5555:5555 --volume /home/alice/infra/lab/proj:/project:ro --volume /home/alice/infra/lab/.infra/flower:/run/infra:ro --env INFRA_CLUSTER=lab --env INFRA_ENV_FILE=/run/infra/celery.env --user 1000:1000 --workdir /project --cap-drop ALL --security-opt no-new-privileges --read-only --tmpfs /tmp:rw,nosuid,nodev,size=64m infra-lab-master:latest celery --app tasks flower --port=5555 --conf=/run/infra/flowerconfig.py",
    "sh -c 'umask 077 && mkdir -p /home/alice/infra/lab/.infra/worker && chmod 700 /home/alice/infra/lab/.infra/worker && rm -f /home/alice/infra/lab/.infra/worker/celery.env.tmp && cat > /home/alice/infra/lab/.infra/worker/celery.env.tmp && chmod 400 /home/alice/infra/lab/.infra/worker/celery.env.tmp && mv -f /home/alice/infra/lab/.infra/worker/celery.env.tmp /home/alice/infra/lab/.infra/worker/celery.env' <204 bytes sha256:d04429a3",
    "sh -c 'umask 077 && mkdir -p /home/alice/infra/lab/.infra/worker && chmod 700 /home/alice/infra/lab/.infra/worker && rm -f /home/alice/infra/lab/.infra/worker/ca.crt.tmp && cat > /home/alice/infra/lab/.infra/worker/ca.crt.tmp && chmod 400 /home/alice/infra/lab/.infra/worker/ca.crt.tmp && mv -f /home/alice/infra/lab/.infra/worker/ca.crt.tmp /home/alice/infra/lab/.infra/worker/ca.crt' <631 bytes sha256:4567799c",
    "sh -c 'umask 077 && mkdir -p /home/alice/infra/lab/.infra/worker && chmod 700 /home/alice/infra/lab/.infra/worker && rm -f /home/alice/infra/lab/.infra/worker/run-signing.pub.tmp && cat > /home/alice/infra/lab/.infra/worker/run-signing.pub.tmp && chmod 400 /home/alice/infra/lab/.infra/worker/run-signing.pub.tmp && mv -f /home/alice/infra/lab/.infra/worker/run-signing.pub.tmp /home/alice/infra/lab/.infra/worker/run-signing.pub' <113 bytes sha256:6e9e7a5c",
    "docker run --detach --name lab-worker-m1-1 --label infra.cluster=lab --label infra.role=worker --label infra.host=m1 --label infra.spec=cdbb9ecb13bb074c7f49 --restart unless-stopped --log-driver json-file --log-opt max-size=20m --log-opt max-file=3 --network host --volume /home/alice/infra/lab/proj:/project:ro --volume /home/alice/infra/lab/.infra/worker:/run/infra:ro --env INFRA_CLUSTER=lab --env INFRA_ENV_FILE=/run/infra/celery.env --env INFRA_CA_FILE=/run/infra/ca.crt --user 1000:1000 --workdir /project --cap-drop ALL --security-opt no-new-privileges --read-only --tmpfs /tmp:rw,nosuid,nodev,size=1g --pids-limit 4096 infra-lab-worker:latest celery --app tasks worker --include infra_runtime.tasks --hostname lab-worker-m1-1@m1 --queues celery --pool prefork --loglevel WARNING --task-events --concurrency 2",
    "docker exec lab-master python -c READINESS_PROBE tasks '[\"lab-worker-m1-1@m1\", \"lab-worker-w1-1@w1\"]' 120 180 0.5",
]


UP_FRESH_W1 = [
    *FACTS,
    listing("/home/bob"),
    claim("/home/bob", new=True),
    "sh -c '[ ! -L /home/bob/infra/lab/proj ] && cd /home/bob/infra/lab/proj && "
    "tar -x --no-same-owner --no-same-permissions --no-overwrite-dir -m -f -' <10240 bytes sha256:ec7ba8d3",
    "docker build --network host --file <tmp>/.infra/lab/build/Dockerfile.celery --target worker --tag infra-lab-worker:latest --label infra.cluster=lab --label infra.context=b3e1db0c208b6acd81bd --build-arg BASE_IMAGE=python:3.11-slim-bookworm <tmp>/.infra/lab/build",
    "docker image inspect --format '{{.Id}} {{json .Config.Labels}} {{json .RootFS.Layers}}' infra-lab-worker:latest",
    "sh -c 'umask 077 && mkdir -p /home/bob/infra/lab/.infra/worker && chmod 700 /home/bob/infra/lab/.infra/worker && rm -f /home/bob/infra/lab/.infra/worker/celery.env.tmp && cat > /home/bob/infra/lab/.infra/worker/celery.env.tmp && chmod 400 /home/bob/infra/lab/.infra/worker/celery.env.tmp && mv -f /home/bob/infra/lab/.infra/worker/celery.env.tmp /home/bob/infra/lab/.infra/worker/celery.env' <202 bytes sha256:50043b10",
    "sh -c 'umask 077 && mkdir -p /home/bob/infra/lab/.infra/worker && chmod 700 /home/bob/infra/lab/.infra/worker && rm -f /home/bob/infra/lab/.infra/worker/ca.crt.tmp && cat > /home/bob/infra/lab/.infra/worker/ca.crt.tmp && chmod 400 /home/bob/infra/lab/.infra/worker/ca.crt.tmp && mv -f /home/bob/infra/lab/.infra/worker/ca.crt.tmp /home/bob/infra/lab/.infra/worker/ca.crt' <631 bytes sha256:4567799c",
    "sh -c 'umask 077 && mkdir -p /home/bob/infra/lab/.infra/worker && chmod 700 /home/bob/infra/lab/.infra/worker && rm -f /home/bob/infra/lab/.infra/worker/run-signing.pub.tmp && cat > /home/bob/infra/lab/.infra/worker/run-signing.pub.tmp && chmod 400 /home/bob/infra/lab/.infra/worker/run-signing.pub.tmp && mv -f /home/bob/infra/lab/.infra/worker/run-signing.pub.tmp /home/bob/infra/lab/.infra/worker/run-signing.pub' <113 bytes sha256:6e9e7a5c",
    "docker run --detach --name lab-worker-w1-1 --label infra.cluster=lab --label infra.role=worker --label infra.host=w1 --label infra.spec=459e9f48fc01cdb26e6d --restart unless-stopped --log-driver json-file --log-opt max-size=20m --log-opt max-file=3 --network host --volume /home/bob/infra/lab/proj:/project:ro --volume /home/bob/infra/lab/.infra/worker:/run/infra:ro --env INFRA_CLUSTER=lab --env INFRA_ENV_FILE=/run/infra/celery.env --env INFRA_CA_FILE=/run/infra/ca.crt --user 1001:1001 --workdir /project --cap-drop ALL --security-opt no-new-privileges --read-only --tmpfs /tmp:rw,nosuid,nodev,size=1g --pids-limit 4096 infra-lab-worker:latest celery --app tasks worker --include infra_runtime.tasks --hostname lab-worker-w1-1@w1 --queues celery --pool prefork --loglevel WARNING --task-events",
]


UP_AGAIN_M1 = [
    *FACTS,
    listing("/home/alice"),
    'docker exec lab-master python -c READINESS_PROBE tasks \'["lab-worker-m1-1@m1", "lab-worker-w1-1@w1"]\' 120 180 0.5',
]


UP_AGAIN_W1 = [
    *FACTS,
    listing("/home/bob"),
]


SYNC_M1 = [
    sync_listing(),  # the home and the listing in one round trip: no probe, no engine facts
    claim("/home/alice"),  # checked again right before writing: still this cluster's folder
    "sh -c '[ ! -L /home/alice/infra/lab/proj ] && cd /home/alice/infra/lab/proj && "
    "find . -depth \\( \\( -path ./README \\) ! -type d -delete \\)'",
    "sh -c '[ ! -L /home/alice/infra/lab/proj ] && cd /home/alice/infra/lab/proj && "
    "tar -x --no-same-owner --no-same-permissions --no-overwrite-dir -m -f -' <10240 bytes sha256:0d0de3b5",
    "docker ps --all --no-trunc --filter label=infra.cluster=lab --format '{{json .}}'",  # which workers run
    'docker container inspect lab-worker-m1-1',
    'docker restart --time 10 lab-worker-m1-1',
    'docker container inspect lab-worker-m1-1',
    'docker exec lab-master python -c READINESS_PROBE tasks \'["lab-worker-m1-1@m1", "lab-worker-w1-1@w1"]\' 120 180 0.5',
]


SYNC_W1 = [
    sync_listing(),
    claim("/home/bob"),
    "sh -c '[ ! -L /home/bob/infra/lab/proj ] && cd /home/bob/infra/lab/proj && "
    "find . -depth \\( \\( -path ./README \\) ! -type d -delete \\)'",
    "sh -c '[ ! -L /home/bob/infra/lab/proj ] && cd /home/bob/infra/lab/proj && "
    "tar -x --no-same-owner --no-same-permissions --no-overwrite-dir -m -f -' <10240 bytes sha256:0d0de3b5",
    "docker ps --all --no-trunc --filter label=infra.cluster=lab --format '{{json .}}'",
    'docker container inspect lab-worker-w1-1',
    'docker restart --time 10 lab-worker-w1-1',
    'docker container inspect lab-worker-w1-1',
]


CLEAN_ALL_M1 = [
    "docker ps --all --no-trunc --filter label=infra.cluster=lab --format '{{json .}}'",
    "docker network ls --filter label=infra.cluster=lab --format '{{.Name}}'",
    "docker volume ls --filter label=infra.cluster=lab --format '{{.Name}}'",
    "docker image ls --filter 'reference=127.0.0.1:*/infra/lab-worker' --filter 'reference=127.0.0.1:*/infra/lab-master' "
    "--filter 'reference=127.0.0.1:*/infra/lab-broker' --format '{{.Repository}}:{{.Tag}}'",
    'docker rm --force lab-broker lab-flower lab-master lab-results lab-worker-m1-1',
    'docker network rm lab-net',
    'docker volume rm --force lab-broker-data',
    'docker volume rm --force lab-results-data',
    *remove("/home/alice/infra/lab/.infra", "/home/alice/infra/lab"),  # the secret files
    *remove("/home/alice/infra/lab", "/home/alice/infra/lab"),  # --files: the cluster folder, project and output
    "docker ps --all --no-trunc --filter label=infra.cluster=lab --format '{{json .}}'",
]


CLEAN_ALL_W1 = [
    "docker ps --all --no-trunc --filter label=infra.cluster=lab --format '{{json .}}'",
    "docker network ls --filter label=infra.cluster=lab --format '{{.Name}}'",
    "docker volume ls --filter label=infra.cluster=lab --format '{{.Name}}'",
    "docker image ls --filter 'reference=127.0.0.1:*/infra/lab-worker' --filter 'reference=127.0.0.1:*/infra/lab-master' "
    "--filter 'reference=127.0.0.1:*/infra/lab-broker' --format '{{.Repository}}:{{.Tag}}'",
    'docker rm --force lab-worker-w1-1',
    *remove("/home/bob/infra/lab/.infra", "/home/bob/infra/lab"),
    *remove("/home/bob/infra/lab", "/home/bob/infra/lab"),
    "docker ps --all --no-trunc --filter label=infra.cluster=lab --format '{{json .}}'",
]


def test_up_on_fresh_hosts_sends_exactly_these_commands(cluster, hosts):
    up(cluster, quiet())
    assert sent(hosts, "m1", cluster) == UP_FRESH_M1
    assert sent(hosts, "w1", cluster) == UP_FRESH_W1


def test_up_again_on_an_unchanged_cluster_only_asks(cluster, hosts):
    up(cluster, quiet())
    forget(hosts)
    up(cluster, quiet())
    assert sent(hosts, "m1", cluster) == UP_AGAIN_M1
    assert sent(hosts, "w1", cluster) == UP_AGAIN_W1


def test_up_records_in_the_manifest_everything_it_started(cluster, hosts):
    up(cluster, quiet())
    manifest = Manifest.load(cluster.manifest_path, cluster.name)
    assert sorted(manifest.hosts["m1"].containers) == ["lab-broker", "lab-flower", "lab-master", "lab-results",
                                                       "lab-worker-m1-1"]
    assert manifest.hosts["m1"].containers["lab-broker"] == {"id": "id-lab-broker", "role": "broker"}
    assert manifest.hosts["m1"].networks == ["lab-net"]
    assert manifest.hosts["m1"].volumes == ["lab-broker-data", "lab-results-data"]
    assert manifest.hosts["w1"].files == ["/home/bob/infra/lab/proj"]
    assert manifest.hosts["w1"].secret_dirs == ["/home/bob/infra/lab/.infra"]


def test_the_secret_files_sent_hold_the_secrets_and_no_command_line_does(cluster, hosts):
    up(cluster, quiet())
    everything = "\n".join(hosts.sent("m1") + hosts.sent("w1"))
    for secret in SECRETS.values():
        assert secret not in everything
    assert rabbitmq_password_hash(SECRETS.broker_password) not in everything


def test_a_dry_run_only_asks(cluster, hosts):
    up(cluster, quiet(), dry_run=True)
    assert sent(hosts, "m1", cluster) == FACTS + [UP_FRESH_M1[len(FACTS)]]
    assert sent(hosts, "w1", cluster) == FACTS + [UP_FRESH_W1[len(FACTS)]]
    assert not cluster.manifest_path.exists()


def test_scaling_a_host_down_removes_exactly_its_last_worker(cluster, hosts, tmp_path):
    bigger = parse_cluster(CLUSTER.replace("{host: w1, containers: 1}", "{host: w1, containers: 2}"),
                           filename="cluster.yaml", base_dir=tmp_path)
    up(bigger, quiet())
    forget(hosts)
    up(cluster, quiet())
    assert sent(hosts, "w1", cluster)[len(FACTS) + 1:] == ["docker rm --force lab-worker-w1-2"]


def test_sync_files_sends_the_changed_file_deletes_the_removed_one_and_restarts_the_workers(cluster, hosts):
    up(cluster, quiet())
    forget(hosts)
    (cluster.project_dir / "tasks.py").write_text("from celery import Celery\napp = Celery('changed')\n")
    os.utime(cluster.project_dir / "tasks.py", (1_700_000_100, 1_700_000_100))
    (cluster.project_dir / "README").unlink()
    result = sync_files(cluster, quiet())
    assert sent(hosts, "m1", cluster) == SYNC_M1
    assert sent(hosts, "w1", cluster) == SYNC_W1
    assert result.outcomes["w1"].sent == ["tasks.py"] and result.outcomes["w1"].deleted == ["README"]
    assert result.answering is True


def test_sync_files_without_restart_asks_no_engine_anything(cluster, hosts):
    up(cluster, quiet())
    forget(hosts)
    (cluster.project_dir / "tasks.py").write_text("from celery import Celery\napp = Celery('changed')\n")
    os.utime(cluster.project_dir / "tasks.py", (1_700_000_100, 1_700_000_100))
    (cluster.project_dir / "README").unlink()
    result = sync_files(cluster, quiet(), restart=False)
    assert sent(hosts, "w1", cluster) == SYNC_W1[:4]  # listing, claim, delete, send: not one docker command
    assert sent(hosts, "m1", cluster) == SYNC_M1[:4]
    assert result.outcomes["w1"].reason == "not restarted (--no-restart)" and result.answering is None


def test_sync_files_with_volunteers_tells_the_join_endpoint_the_files_it_sent(cluster, hosts):
    from datetime import datetime, timedelta, timezone

    from infra.plans.volunteer import served_files_json
    from infra.state.volunteers import VolunteerStore, make_volunteer, store_path

    up(cluster, quiet())
    store = VolunteerStore(store_path(cluster.state_dir))
    store.volunteers["alice"] = make_volunteer(cluster.name, "alice", "A" * 43, datetime.now(timezone.utc), timedelta(days=1)).volunteer
    store.save()
    (cluster.project_dir / ".env").write_text("API_KEY=for the cluster's own hosts only\n")
    forget(hosts)
    sync_files(cluster, quiet(), restart=False)
    listed = served_files_json(["README", "tasks.py"]).encode()
    join = "/home/alice/infra/lab/.infra/join"
    assert sent(hosts, "m1", cluster)[-1] == (
        f"sh -c 'umask 077 && mkdir -p {join} && chmod 700 {join} && rm -f {join}/project-files.json.tmp && "
        f"cat > {join}/project-files.json.tmp && chmod 400 {join}/project-files.json.tmp && "
        f"mv -f {join}/project-files.json.tmp {join}/project-files.json' "
        f"<{len(listed)} bytes sha256:{hashlib.sha256(listed).hexdigest()[:8]}")
    assert not any("project-files" in line for line in sent(hosts, "w1", cluster))


def test_sync_files_again_sends_nothing_and_restarts_nobody(cluster, hosts):
    up(cluster, quiet())
    sync_files(cluster, quiet())
    forget(hosts)
    sync_files(cluster, quiet())
    for name in ("m1", "w1"):
        assert not [line for line in hosts.sent(name) if "tar -x" in line or "restart" in line or "-delete" in line
                    or f"{MARKER_FILE}.tmp" in line]  # not even the cluster folder's check


def test_clean_removes_what_up_started_then_checks_nothing_is_left(cluster, hosts):
    up(cluster, quiet())
    forget(hosts)
    result = clean(cluster, quiet(), files=True, volumes=True)
    assert sent(hosts, "m1", cluster) == CLEAN_ALL_M1
    assert sent(hosts, "w1", cluster) == CLEAN_ALL_W1
    assert not result.failed
    assert not cluster.manifest_path.exists()
    assert not cluster.secrets_path.exists()  # the broker's data is gone: new credentials next time


def test_clean_without_options_keeps_the_project_and_the_data_volumes(cluster, hosts):
    up(cluster, quiet())
    forget(hosts)
    clean(cluster, quiet())
    removed = [line for line in sent(hosts, "m1", cluster)
               if not line.startswith(("docker ps", "docker network ls", "docker image ls"))]
    assert removed == [
        "docker rm --force lab-broker lab-flower lab-master lab-results lab-worker-m1-1",
        "docker network rm lab-net",
        *remove("/home/alice/infra/lab/.infra", "/home/alice/infra/lab"),
    ]
    manifest = Manifest.load(cluster.manifest_path, cluster.name)
    assert manifest.hosts["m1"].volumes == ["lab-broker-data", "lab-results-data"]
    assert manifest.hosts["m1"].files == ["/home/alice/infra/lab/proj"]


def test_clean_removes_the_names_a_transfer_cut_short_left_and_nothing_else(cluster, hosts):
    """A `kill -9` between a host's pull through the forwarded registry and the untag leaves the
    image also named `127.0.0.1:PORT/infra/NAME-ROLE:ID` there; `clean` removes that name (the
    engine's reference filter finds only this cluster's), not the image."""
    up(cluster, quiet())
    hosts.hosts["w1"].registry_refs = ["127.0.0.1:40123/infra/lab-worker:0123abcd"]
    forget(hosts)
    clean(cluster, quiet())
    assert "docker image rm --no-prune 127.0.0.1:40123/infra/lab-worker:0123abcd" in sent(hosts, "w1", cluster)
    assert hosts.hosts["w1"].registry_refs == []
    assert not any(line.startswith("docker image rm") for line in sent(hosts, "m1", cluster))


def test_clean_reports_a_folder_the_host_refused_as_refused_never_as_removed_and_forgets_it(cluster, hosts):
    up(cluster, quiet())
    forget(hosts)
    hosts.hosts["w1"].refusals["/home/bob/infra/lab"] = "/home/bob/infra/lab holds no marker of cluster lab"
    stream = io.StringIO()
    result = clean(cluster, Reporter(stream=stream), files=True)
    said = " ".join(stream.getvalue().split())
    assert "refused to delete /home/bob/infra/lab (/home/bob/infra/lab holds no marker of cluster lab)" in said
    assert "folder(s) /home/bob/infra/lab/.infra;" in said  # what was removed there, and only that
    assert "folder /home/bob/infra/lab" not in result.cleaned["w1"]
    assert "folder /home/alice/infra/lab" in result.cleaned["m1"]
    assert result.refused == {"w1": ["/home/bob/infra/lab (/home/bob/infra/lab holds no marker of cluster lab)"]}
    manifest = Manifest.load(cluster.manifest_path, cluster.name)
    assert "w1" not in manifest.hosts  # not the cluster's: not infra's to delete, now or later


def test_clean_files_that_refused_a_folder_exits_1_with_one_line_naming_the_host(cluster, hosts, tmp_path):
    from click.testing import CliRunner

    from infra.cli.clean import clean as clean_command

    (tmp_path / "cluster.yaml").write_text(CLUSTER)
    up(cluster, quiet())
    hosts.hosts["w1"].refusals["/home/bob/infra/lab"] = "/home/bob/infra/lab is a symbolic link"
    result = CliRunner().invoke(clean_command, ["-f", str(tmp_path / "cluster.yaml"), "--files"])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1] == (
        "error: cluster lab removed, but a folder was refused on w1 (see above): it is not the cluster's, "
        "so infra leaves it to you")
    assert "Traceback" not in result.output


def test_clean_files_with_nothing_refused_exits_0(cluster, hosts, tmp_path):
    from click.testing import CliRunner

    from infra.cli.clean import clean as clean_command

    (tmp_path / "cluster.yaml").write_text(CLUSTER)
    up(cluster, quiet())
    result = CliRunner().invoke(clean_command, ["-f", str(tmp_path / "cluster.yaml"), "--files"])
    assert result.exit_code == 0, result.output
