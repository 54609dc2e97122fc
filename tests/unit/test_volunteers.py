"""Volunteers: tokens and what the master keeps of them, the endpoint's container, the lines and the script."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shlex
import stat
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from infra.config import Cluster, parse_cluster
from infra.errors import ConfigError
from infra.facts.celery import CeleryView
from infra.facts.host import HostFacts
from infra.plans import volunteer as volunteer_plan
from infra.plans.layout import host_layout
from infra.plans.secret_files import rabbitmq_password_hash
from infra.runtime.endpoint import token_digest, worker_env
from infra.state.build_context import assets_dir
from infra.state.tls import load_or_create, server_names
from infra.state.volunteers import (
    Volunteer,
    VolunteerStore,
    check_name,
    token_table_json,
    make_volunteer,
    new_token,
    parse_duration,
    public_key_pin,
)
from infra.workflows.volunteer import parse_endpoint_log, rows_of, volunteer_nodes

FIXTURES = Path(__file__).parent / "fixtures"
NOW = datetime(2025, 1, 31, 12, 0, tzinfo=timezone.utc)
TOKEN = "A" * 20 + "b_-" + "c" * 20


def make_cluster(tmp_path: Path, edit=lambda text: text) -> Cluster:
    (tmp_path / "wordcount").mkdir(exist_ok=True)
    return parse_cluster(edit((FIXTURES / "plan_cluster.yaml").read_text()), filename="cluster.yaml",
                         base_dir=tmp_path)


def master_facts() -> HostFacts:
    return HostFacts(home="/home/alice", uid=1000, gid=1100, arch="x86_64", docker_version="27.3.1",
                     docker_problem="", containers=(), images={}, networks=(), volumes=())


# --------------------------------------------------------------------------- tokens and the store


def test_durations_are_read_as_people_write_them():
    assert parse_duration("7d") == timedelta(days=7)
    assert parse_duration("1d12h") == timedelta(hours=36)
    assert parse_duration("90s") == timedelta(seconds=90)
    assert parse_duration("2w") == timedelta(days=14)
    for bad in ("", "7", "d7", "7 days", "0s", "400d", "-1d"):
        with pytest.raises(ConfigError):
            parse_duration(bad)


def test_volunteer_names_are_short_and_safe_everywhere_they_are_used():
    assert check_name("alice-pi4") == "alice-pi4"
    for bad in ("", "Alice", "-x", "a b", "a.b", "a" * 32, "x;rm"):
        with pytest.raises(ConfigError):
            check_name(bad)


def test_tokens_are_256_random_bits_and_the_master_keeps_only_digests():
    token = new_token()
    assert len(token) == 43 and token != new_token()
    made = make_volunteer("lab", "alice", token, NOW, timedelta(days=7))
    volunteer = made.volunteer
    assert volunteer.token_sha256 == hashlib.sha256(token.encode()).hexdigest()
    assert volunteer.results_password_sha256 == hashlib.sha256(made.results_password.encode()).hexdigest()
    assert volunteer.expires == "2025-02-07T12:00:00Z"
    assert token not in json.dumps(volunteer.__dict__)
    for secret in (made.broker_password, made.results_password):
        assert secret not in json.dumps(volunteer.__dict__)


def test_the_store_is_private_and_round_trips(tmp_path):
    store = VolunteerStore(tmp_path / "volunteers.json", port=5443)
    store.volunteers["alice"] = make_volunteer("lab", "alice", TOKEN, NOW, timedelta(hours=1)).volunteer
    store.save()
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    again = VolunteerStore.load(store.path)
    assert again.port == 5443 and again.volunteers["alice"] == store.volunteers["alice"]
    assert VolunteerStore.load(tmp_path / "missing.json").volunteers == {}


def test_the_endpoint_registry_lists_tokens_with_expiry_and_keys_and_revoked_tokens_as_revoked_only():
    alice = make_volunteer("lab", "alice", TOKEN, NOW, timedelta(days=1)).volunteer
    bob = make_volunteer("lab", "bob", TOKEN[::-1], NOW, timedelta(days=1)).volunteer
    bob.revoked = "2025-01-31T13:00:00Z"
    registry = json.loads(token_table_json([alice, bob]))
    assert registry["tokens"] == {
        alice.token_sha256: {"name": "alice", "expires": (NOW + timedelta(days=1)).timestamp(), "node": alice.node,
                             "salt": alice.salt, "sealed": alice.sealed},
        bob.token_sha256: {"name": "bob", "revoked": True}}
    assert registry["keys"] == {alice.key_sha256: {"name": "alice"}}


def test_the_pin_is_curls_sha256_of_the_certificates_public_key(tmp_path):
    identity = load_or_create(tmp_path / "tls", "lab", server_names("192.168.1.20"))
    pin = public_key_pin(identity.certificate)
    spki = x509.load_pem_x509_certificate(identity.certificate.encode()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert pin == "sha256//" + base64.b64encode(hashlib.sha256(spki).digest()).decode()
    other = load_or_create(tmp_path / "other", "lab", server_names("192.168.1.20"))
    assert public_key_pin(other.certificate) != pin


# --------------------------------------------------------------------------- what the volunteer's worker gets


def test_a_volunteers_worker_logs_in_as_itself_over_tls_to_the_published_ports():
    settings = {"cluster": "lab", "address": "192.168.1.20", "broker_port": 5671, "results_port": 6379, "vhost": "lab"}
    broker, results = "B" * 43, "R" * 43
    env = dict(line.split("=", 1) for line in worker_env(settings, "alice", broker, results).splitlines())
    assert env["CELERY_BROKER_URL"] == f"amqps://volunteer-alice:{broker}@192.168.1.20:5671/lab"
    assert env["CELERY_RESULT_BACKEND"] == (
        f"rediss://volunteer-alice:{results}@192.168.1.20:6379/0"
        "?ssl_cert_reqs=required&ssl_ca_certs=/var/lib/infra-volunteer/ca.crt")


def test_the_broker_user_has_the_clusters_vhost_only_and_is_stored_as_a_salted_hash(tmp_path):
    cluster = make_cluster(tmp_path)
    definitions = json.loads(volunteer_plan.broker_user_definitions(cluster, "volunteer-alice", "s3cret-pw"))
    assert definitions["users"] == [{"name": "volunteer-alice", "password_hash": rabbitmq_password_hash("s3cret-pw"),
                                     "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": []}]
    assert [(p["user"], p["vhost"]) for p in definitions["permissions"]] == [("volunteer-alice", "lab")]
    # its exact rights: tests/unit/test_broker_permissions.py
    assert "s3cret-pw" not in json.dumps(definitions)


# --------------------------------------------------------------------------- the endpoint's container


def test_the_endpoint_is_a_container_of_the_cluster_publishing_its_port_only(tmp_path):
    cluster = make_cluster(tmp_path)
    facts = master_facts()
    layout = host_layout(cluster, cluster.master_host, facts)
    spec = volunteer_plan.endpoint_container(cluster, layout, facts, 5443)
    assert spec.name == "lab-join" and spec.role == "join" and spec.host == "gpu-box"
    assert spec.image == cluster.image_tag("master")
    assert spec.command == ("python", "-m", "infra_runtime.endpoint")
    assert spec.ports == ((5443, 8443),)
    assert spec.user == "1000:1100"
    assert spec.network == "bridge"  # not the cluster's network: it needs no other container
    assert spec.secrets == "/home/alice/infra/lab/.infra/join"
    assert spec.volumes == (("/home/alice/infra/lab/.infra/join-files", "/srv/infra-join", "ro"),
                            (layout.project_dir, "/project", "ro"),
                            ("/home/alice/infra/lab/.infra/join-state", "/var/lib/infra-join", "rw"))
    # It writes one folder of its own (the spent tokens), inside the cluster's secret folder; all else read-only.
    assert [target for _, target, mode in spec.volumes if mode != "ro"] == ["/var/lib/infra-join"]


def test_the_endpoint_files_live_in_the_clusters_secret_folder_so_clean_removes_them(tmp_path):
    cluster = make_cluster(tmp_path)
    layout = host_layout(cluster, cluster.master_host, master_facts())
    folders = volunteer_plan.endpoint_layout(layout)
    assert folders.config_dir.startswith(layout.env_dir + "/") and folders.files_dir.startswith(layout.env_dir + "/")
    identity = load_or_create(tmp_path / "tls", "lab", server_names("192.168.1.20"))
    settings = volunteer_plan.endpoint_settings(cluster, "192.168.1.20", 5443)
    files = {f.name: f for f in volunteer_plan.endpoint_files(cluster, folders, identity, settings, "#!/bin/sh\n",
                                                              "PUBLIC KEY")}
    assert sorted(files) == ["ca.crt", "endpoint.json", "join.sh", "run-signing.pub", "server.crt", "server.key"]
    assert files["run-signing.pub"].content == "PUBLIC KEY"
    assert files["server.crt"].content == identity.certificate + identity.ca_certificate
    assert json.loads(files["endpoint.json"].content) == {
        "cluster": "lab", "url": "https://192.168.1.20:5443", "address": "192.168.1.20", "broker_port": 5671,
        "results_port": 6379, "vhost": "lab", "app_args": ["--app", "wordcount", "worker", "--include",
                                                           "infra_runtime.tasks"],
        "queues": ["celery", "heavy"], "check_every": 120}


def test_the_endpoint_fingerprint_changes_with_its_certificate_but_not_with_the_registry(tmp_path):
    cluster = make_cluster(tmp_path)
    facts = master_facts()
    layout = host_layout(cluster, cluster.master_host, facts)
    folders = volunteer_plan.endpoint_layout(layout)
    spec = volunteer_plan.endpoint_container(cluster, layout, facts, 5443)
    settings = volunteer_plan.endpoint_settings(cluster, "192.168.1.20", 5443)
    one = load_or_create(tmp_path / "a", "lab", server_names("192.168.1.20"))
    two = load_or_create(tmp_path / "b", "lab", server_names("192.168.1.20"))
    files_one = volunteer_plan.endpoint_files(cluster, folders, one, settings, "x", "k")
    assert (volunteer_plan.endpoint_fingerprint(spec, "sha256:1", files_one)
            == volunteer_plan.endpoint_fingerprint(spec, "sha256:1", list(files_one)))
    assert (volunteer_plan.endpoint_fingerprint(spec, "sha256:1", files_one)
            != volunteer_plan.endpoint_fingerprint(spec, "sha256:1", volunteer_plan.endpoint_files(cluster, folders, two, settings, "x", "k")))
    assert (volunteer_plan.endpoint_fingerprint(spec, "sha256:1", files_one)
            != volunteer_plan.endpoint_fingerprint(spec, "sha256:2", files_one))


# --------------------------------------------------------------------------- the lines and the script

PIN = "sha256//" + base64.b64encode(b"k" * 32).decode()


def test_the_join_line_pins_the_master_and_fails_loudly_when_curl_fails():
    line = volunteer_plan.join_line("https://192.168.1.20:5443", PIN, TOKEN, "--cpus 2 --memory 2g")
    assert line.startswith(f"(curl -fsS --proto =https -k --pinnedpubkey '{PIN}' "
                           f"'https://192.168.1.20:5443/join/{TOKEN}' || {{ e=$?; ")
    assert line.endswith(") | sh -s -- --cpus 2 --memory 2g")
    assert "\n" not in line


def fake_curl(tmp_path: Path, exit_code: int, message: str = "curl: (N) what curl says") -> dict:
    """PATH with a curl that prints its error line and exits with `exit_code`, as the real one fails."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "curl").write_text(f"#!/bin/sh\necho '{message}' >&2\nexit {exit_code}\n")
    (fake / "curl").chmod(0o755)
    return {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}


SHELLS = ["sh", "dash", "bash"]


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("exit_code, reason", [
    (22, "the master refused the token: it is wrong, expired or revoked"),
    (90, "the server is not the pinned master"),
    (6, "the address of the master does not resolve here"),
    (7, "the master does not take connections on its join port"),
    (28, "the master did not answer in time"),
    (35, "no TLS connection could be made with the master"),
    (60, "no TLS connection could be made with the master"),
    (56, "curl failed (exit 56, see its error above)"),
])
def test_a_failing_curl_makes_the_line_say_why_and_exit_1_in_every_shell(tmp_path, shell, exit_code, reason):
    line = volunteer_plan.join_line("https://192.168.1.20:5443", PIN, TOKEN, "--cpus 2")
    result = subprocess.run([shell, "-c", line], capture_output=True, text=True, env=fake_curl(tmp_path, exit_code))
    assert result.returncode == 1
    assert "what curl says" in result.stderr  # curl's own line stays above
    said = [text for text in result.stderr.splitlines() if text.startswith("infra-join:")]
    assert len(said) == 1 and said[0].startswith(f"infra-join: {reason}")
    others = {r for r in volunteer_plan.CURL_FAILURES.values() if reason not in r}
    assert not any(other in result.stderr for other in others)


def test_every_reason_of_the_line_is_safe_inside_single_quotes_of_any_shell():
    for reason in volunteer_plan.CURL_FAILURES.values():
        assert not set(reason) & set("'\\\"$`!")


def test_the_join_script_says_why_a_download_failed_in_the_same_words(tmp_path):
    script = render_script().replace("@TOKEN@", TOKEN).rsplit('main "$@"', 1)[0]
    for code, reason in [(22, "wrong, expired or revoked"), (90, "not the pinned master")]:
        result = subprocess.run(["sh", "-c", script + f"curl_failed {code}"], capture_output=True, text=True)
        assert result.returncode == 1 and result.stderr.startswith("infra-join: ") and reason in result.stderr


def test_the_leave_line_removes_exactly_what_the_join_line_made():
    assert volunteer_plan.leave_line("lab") == (
        "docker rm -f infra-lab-volunteer; docker volume rm infra-lab-volunteer; "
        "docker image rm infra-lab-volunteer:latest")


def render_script(cluster="lab") -> str:
    return volunteer_plan.render_join_script(volunteer_plan.load_template(assets_dir()), cluster,
                                        "https://192.168.1.20:5443", PIN)


def test_the_join_script_is_valid_sh_with_everything_but_the_token_filled_in():
    script = render_script()
    assert "@TOKEN@" in script and "@CLUSTER@" not in script and "@PIN@" not in script
    assert f"PIN='{PIN}'" in script and "ENDPOINT='https://192.168.1.20:5443'" in script
    subprocess.run(["sh", "-n"], input=script.replace("@TOKEN@", TOKEN), text=True, check=True)
    # Safety promises, spelled in the command that starts the worker.
    for promise in ("--restart unless-stopped", "--user celery", "--read-only", "--cap-drop ALL",
                    "--security-opt no-new-privileges", "--pids-limit"):
        assert promise in script
    assert "-v /" not in script and "--volume /" not in script and "--privileged" not in script
    assert script.rstrip().endswith('main "$@"')  # a truncated download runs nothing


def fake_tools(tmp_path: Path) -> Path:
    """docker and curl that only record their calls."""
    fake = tmp_path / "bin"
    fake.mkdir()
    for tool in ("docker", "curl"):
        (fake / tool).write_text(f"#!/bin/sh\necho {tool} \"$@\" >> {tmp_path}/calls\nexit 1\n")
        (fake / tool).chmod(0o755)
    return fake


@pytest.mark.parametrize("options, message", [
    (["--cpus", "two"], "--cpus 'two'"),
    (["--memory", "2 GB"], "--memory '2 GB'"),
    (["--concurrency", "0"], "--concurrency '0'"),
    (["--privileged"], "unknown option '--privileged'"),
    (["--cpus"], "--cpus needs a value"),
])
def test_the_script_refuses_bad_options_before_it_does_anything(tmp_path, options, message):
    fake = fake_tools(tmp_path)
    result = subprocess.run(["sh", "-s", "--", *options], input=render_script().replace("@TOKEN@", TOKEN),
                            capture_output=True, text=True, env={**os.environ, "PATH": f"{fake}:/usr/bin:/bin"})
    assert result.returncode == 1 and message in result.stderr
    assert not (tmp_path / "calls").exists()


def test_the_script_stops_at_once_without_a_working_docker(tmp_path):
    fake = fake_tools(tmp_path)
    result = subprocess.run(["sh", "-s", "--", "--cpus", "1.5"], input=render_script().replace("@TOKEN@", TOKEN),
                            capture_output=True, text=True, env={**os.environ, "PATH": f"{fake}:/usr/bin:/bin"})
    assert result.returncode == 1 and "docker does not answer" in result.stderr
    assert "curl" not in (tmp_path / "calls").read_text()


IMAGE_ID = "sha256:" + "ab" * 32


def image_archive(path: Path, manifest: object | bytes, extra: dict[str, bytes] | None = None) -> Path:
    """A gzipped archive as `docker save` makes it, with the manifest.json (and members) given."""
    import gzip
    import io
    import tarfile

    text = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    members = {"manifest.json": text, f"{IMAGE_ID[7:]}.json": b"{}", **(extra or {})}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(gzip.compress(buffer.getvalue()))
    return path


def join_with_image(tmp_path: Path, archive: Path) -> tuple[subprocess.CompletedProcess, str]:
    """The whole join script against a curl that serves settings and `archive`, and a docker that records."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "curl").write_text(
        "#!/bin/sh\nfor url; do :; done\ncase \"$url\" in\n"
        f"  */settings) printf 'IMAGE_ID={IMAGE_ID}\\nIMAGE_ARCH=amd64\\nVOLUNTEER=alice\\n' ;;\n"
        f"  */image) cat {archive} ;;\n  *) exit 22 ;;\nesac\n")
    (fake / "docker").write_text(
        f"#!/bin/sh\necho docker \"$@\" >> {tmp_path}/calls\ncase \"$1\" in\n"
        "  info) exit 0 ;;\n  version) echo amd64 ;;\n  image) exit 1 ;;\n"
        f"  load) cat > /dev/null; echo 'Loaded image ID: {IMAGE_ID}' ;;\n  tag) exit 0 ;;\n  *) exit 1 ;;\nesac\n")
    for tool in ("curl", "docker"):
        (fake / tool).chmod(0o755)
    result = subprocess.run(["sh", "-s"], input=render_script().replace("@TOKEN@", TOKEN), capture_output=True,
                            text=True, env={**os.environ, "PATH": f"{fake}:/usr/bin:/bin", "TMPDIR": str(tmp_path)})
    return result, (tmp_path / "calls").read_text()


@pytest.mark.parametrize("manifest, extra, refusal", [
    ([{"Config": "x.json", "RepoTags": ["ubuntu:latest"], "Layers": []}], None, "'ubuntu:latest'"),
    ([{"Config": "x.json", "RepoTags": ["infra-lab-volunteer:latest", "debian:12"], "Layers": []}], None,
     "'debian:12'"),
    ([{"Config": "x.json", "repotags": ["ubuntu:latest"], "Layers": []}], None, "'ubuntu:latest'"),  # Go: any case
    ([{"Config": "x.json", "RepoTags": None}, {"Config": "y.json", "RepoTags": ["evil:1"]}], None, "'evil:1'"),
    ([{"Config": "x.json", "RepoTags": None}],
     {"index.json": b'{"manifests": [{"annotations": {"io.containerd.image.name": "docker.io/library/nginx:1"}}]}'},
     "'docker.io/library/nginx:1'"),
    (b'[{"Config": "x.json", "Repo\\u0054ags": ["ubuntu:latest"]}]', None, "not an archive as docker save makes it"),
    ([{"Config": "x.json", "RepoTags": None}], {"./manifest.json": b"[]"}, "not an archive as docker save makes it"),
])
def test_the_script_loads_no_image_that_would_set_another_tag_than_its_own(tmp_path, manifest, extra, refusal):
    result, calls = join_with_image(tmp_path, image_archive(tmp_path / "image.tar.gz", manifest, extra))
    assert result.returncode == 1
    said = [line for line in result.stderr.splitlines() if line.startswith("infra-join:")]
    assert refusal in said[-1] and "not loaded" in said[-1]
    assert "docker load" not in calls and "docker tag" not in calls
    assert list(tmp_path.glob("infra-join.*")) == []  # the downloaded archive is gone


@pytest.mark.parametrize("tags", [None, [], ["infra-lab-volunteer:latest"]])
def test_the_script_loads_an_image_with_no_tag_or_its_own_and_tags_it_itself(tmp_path, tags):
    archive = image_archive(tmp_path / "image.tar.gz", [{"Config": "x.json", "RepoTags": tags, "Layers": []}])
    result, calls = join_with_image(tmp_path, archive)
    assert "docker load" in calls and f"docker tag {IMAGE_ID} infra-lab-volunteer:latest" in calls, result.stderr
    assert list(tmp_path.glob("infra-join.*")) == []


def test_a_value_with_a_quote_never_reaches_the_script():
    with pytest.raises(ValueError):
        volunteer_plan.render_join_script(volunteer_plan.load_template(assets_dir()), "lab", "https://x'y:5443", PIN)


# --------------------------------------------------------------------------- list


def test_the_endpoint_log_tells_when_each_volunteer_joined_was_last_seen_and_its_cpu():
    lines = [
        '2025-01-31T12:00:00.1Z {"event": "listening", "port": 8443}',
        '2025-01-31T12:00:01.1Z {"volunteer": null, "what": "script", "status": 403, "time": "2025-01-31T12:00:01Z"}',
        '2025-01-31T12:00:02.1Z {"volunteer": "alice", "what": "script", "status": 200, "time": "2025-01-31T12:00:02Z"}',
        '2025-01-31T12:00:03.1Z {"volunteer": "alice", "what": "bundle", "status": 200, "arch": "arm64", '
        '"time": "2025-01-31T12:00:03Z"}',
        '2025-01-31T12:10:00.1Z {"volunteer": "alice", "what": "project-digest", "status": 200, "arch": "aarch64", '
        '"time": "2025-01-31T12:10:00Z"}',
        'not json',
    ]
    assert parse_endpoint_log(lines) == {"alice": {"joined": "2025-01-31T12:00:03Z",
                                                   "last_seen": "2025-01-31T12:10:00Z", "arch": "aarch64"}}


def test_a_volunteers_workers_are_its_celery_nodes_and_nobody_elses(tmp_path):
    cluster = make_cluster(tmp_path)
    nodes = {"lab-volunteer-a.1a2b3c@pi", "lab-volunteer-a-b.000001@pc", "lab-worker-pi1-1@pi1"}
    assert volunteer_nodes("lab", "a", nodes) == ["lab-volunteer-a.1a2b3c@pi"]
    store = VolunteerStore(tmp_path / "v.json")
    store.volunteers["a"] = make_volunteer("lab", "a", TOKEN, NOW - timedelta(days=8), timedelta(days=7)).volunteer
    store.volunteers["a-b"] = make_volunteer("lab", "a-b", TOKEN[::-1], NOW, timedelta(days=7)).volunteer
    celery = CeleryView(active={n: 0 for n in nodes}, processed={"lab-volunteer-a.1a2b3c@pi": 41,
                                                                 "lab-volunteer-a-b.000001@pc": 2})
    rows = {r.name: r for r in rows_of(cluster, store, celery, NOW)}
    assert rows["a"].state == "token expired" and rows["a"].workers == ["lab-volunteer-a.1a2b3c@pi"]
    assert rows["a"].tasks_done == 41 and rows["a"].last_seen == "2025-01-31T12:00:00Z"
    assert rows["a-b"].state == "token valid" and rows["a-b"].tasks_done == 2
    assert rows_of(cluster, store, None, NOW)[0].tasks_done is None


def test_a_revoked_volunteer_says_so(tmp_path):
    v = Volunteer("a", "2025-01-01T00:00:00Z", "2025-12-01T00:00:00Z", "t", "k", "r", revoked="2025-01-02T00:00:00Z")
    assert v.state(NOW) == "revoked"
