"""The join endpoint (infra/runtime/endpoint.py) served for real on loopback, and the volunteer's worker side."""

from __future__ import annotations

import contextlib
import io
import json
import ssl
import tarfile
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from infra.facts.files import scan_local
from infra.plans import volunteer as volunteer_plan
from infra.runtime import endpoint, signing
from infra.runtime import volunteer as worker_side
from infra.state.tls import load_or_create, server_names
from infra.state.volunteers import token_table_json, make_volunteer

TOKEN = "T" * 43
OTHER = "O" * 43
NOW = datetime.now(timezone.utc)
RUN_VERIFY_KEY = signing.key_pair_pem()[1]


@pytest.fixture
def served(tmp_path, capsys):
    """An endpoint on 127.0.0.1 with alice (valid), old (expired), a project and an image file."""
    config, files, project, state = (tmp_path / name for name in ("config", "files", "project", "state"))
    for folder in (config, files, state, project / "pkg", project / "output"):
        folder.mkdir(parents=True)
    identity = load_or_create(tmp_path / "tls", "lab", server_names("127.0.0.1"))
    (config / "server.crt").write_text(identity.certificate + identity.ca_certificate)
    (config / "server.key").write_text(identity.key)
    (config / "ca.crt").write_text(identity.ca_certificate)
    (config / "join.sh").write_text("#!/bin/sh\nTOKEN='@TOKEN@'\n")
    (config / "run-signing.pub").write_text(RUN_VERIFY_KEY)
    (config / "endpoint.json").write_text(json.dumps({
        "cluster": "lab", "url": "https://127.0.0.1:1", "address": "127.0.0.1", "broker_port": 5671,
        "results_port": 6379, "vhost": "lab", "app_args": ["--app", "x", "worker"], "queues": ["celery"]}))
    alice = make_volunteer("lab", "alice", TOKEN, NOW, timedelta(hours=1))
    old = make_volunteer("lab", "old", OTHER, NOW - timedelta(days=2), timedelta(days=1)).volunteer
    (config / "volunteers.json").write_text(token_table_json([alice.volunteer, old]))
    (files / "image.tar.gz").write_bytes(b"IMAGE" * 1000)
    (files / "image.env").write_text("IMAGE_ID=sha256:abc\nIMAGE_ARCH=amd64\nBASE_IMAGE=debian\n")
    (project / "pkg" / "tasks.py").write_text("X = 1\n")
    (project / "output" / "big.csv").write_text("not for volunteers\n")
    (config / "project-files.json").write_text(volunteer_plan.served_files_json(scan_local(project)))

    server = endpoint._Server(("127.0.0.1", 0), endpoint.make_handler(endpoint.Endpoint(
        str(config), str(files), str(project), str(state))))
    context = endpoint.tls_context(str(config))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client = ssl.create_default_context(cafile=str(config / "ca.crt"))
    base = f"https://127.0.0.1:{server.server_address[1]}"

    def get(path: str, headers: dict | None = None) -> tuple[int, bytes, dict]:
        request = urllib.request.Request(base + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, context=client, timeout=10) as answer:
                return answer.status, answer.read(), dict(answer.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), dict(exc.headers)

    yield {"get": get, "config": config, "project": project, "state": state, "capsys": capsys, "alice": alice}
    server.shutdown()
    server.server_close()


def log_lines(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def test_a_valid_token_gets_the_script_with_itself_written_in(served):
    status, body, _ = served["get"](f"/join/{TOKEN}")
    assert status == 200 and body.decode() == f"#!/bin/sh\nTOKEN='{TOKEN}'\n"


@pytest.mark.parametrize("path", [
    f"/join/{OTHER}",  # expired
    f"/join/{'W' * 43}",  # never issued
    "/join/short", "/join/", "/", f"/v1/{TOKEN}/secrets", f"/v1/{TOKEN}/../../etc/passwd", "/v1/project",
    f"/join/{TOKEN}/extra",
])
def test_anything_else_gets_403_and_nothing_else(served, path):
    status, body, _ = served["get"](path)
    assert (status, body) == (403, b"")


def test_every_request_is_logged_with_the_volunteers_name_and_never_a_token(served):
    served["get"](f"/join/{TOKEN}")
    served["get"](f"/v1/{TOKEN}/settings", {"X-Infra-Arch": "arm64"})
    served["get"](f"/join/{OTHER}")
    out = served["capsys"].readouterr().out
    assert TOKEN not in out and OTHER not in out
    events = [json.loads(line) for line in out.splitlines()]
    assert [(e["volunteer"], e["what"], e["status"]) for e in events] == [
        ("alice", "script", 200), ("alice", "settings", 200), (None, "script", 403)]
    assert (events[2]["reason"], events[2]["claimed"]) == ("expired", "old")
    assert events[1]["arch"] == "arm64"


def test_settings_say_which_image_the_master_serves(served):
    status, body, _ = served["get"](f"/v1/{TOKEN}/settings")
    assert status == 200
    assert body.decode() == "BASE_IMAGE=debian\nIMAGE_ARCH=amd64\nIMAGE_ID=sha256:abc\nVOLUNTEER=alice\n"
    assert served["get"](f"/v1/{TOKEN}/image")[1] == b"IMAGE" * 1000
    assert served["get"](f"/v1/{TOKEN}/context")[0] == 403  # none prepared: nothing to give


def bundle_files(served) -> dict[str, str]:
    status, body, _ = served["get"](f"/v1/{TOKEN}/bundle")
    assert status == 200
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        return {m.name: tar.extractfile(m).read().decode() for m in tar.getmembers()}


def test_the_bundle_holds_the_random_credentials_add_made_and_the_node_name_infra_gave(served):
    files = bundle_files(served)
    alice = served["alice"]
    assert sorted(files) == ["ca.crt", "celery.env", "run-signing.pub", "volunteer.json"]
    assert files["run-signing.pub"] == RUN_VERIFY_KEY and "PRIVATE KEY" not in json.dumps(files)  # checks, never signs
    assert f"volunteer-alice:{alice.broker_password}@127.0.0.1:5671/lab" in files["celery.env"]
    assert f"volunteer-alice:{alice.results_password}@127.0.0.1:6379/0" in files["celery.env"]
    settings = json.loads(files["volunteer.json"])
    assert settings["update_key"] == alice.update_key
    assert settings["node_name"] == alice.volunteer.node
    assert settings["node_name"].startswith("lab-volunteer-alice.") and settings["node_name"].endswith("@volunteer-alice")
    assert TOKEN not in json.dumps(files)


def test_the_update_key_fetches_the_project_without_its_output_folder(served):
    key = served["alice"].update_key
    status, digest, _ = served["get"]("/v1/project/digest", {"Authorization": f"Bearer {key}"})
    assert status == 200
    status, body, headers = served["get"]("/v1/project", {"Authorization": f"Bearer {key}"})
    assert status == 200 and headers["X-Infra-Digest"] == digest.decode().strip()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        assert tar.getnames() == ["pkg/tasks.py"]
    assert served["get"]("/v1/project", {"Authorization": f"Bearer {TOKEN}"})[0] == 403  # the token is not a key


def test_a_changed_project_has_a_new_digest(served):
    key = {"Authorization": f"Bearer {served['alice'].update_key}"}
    before = served["get"]("/v1/project/digest", key)[1]
    time.sleep(0.01)
    (served["project"] / "pkg" / "tasks.py").write_text("X = 2\n")
    assert served["get"]("/v1/project/digest", key)[1] != before


def test_revocation_takes_effect_at_the_next_request(served):
    assert served["get"](f"/join/{TOKEN}")[0] == 200
    (served["config"] / "volunteers.json.new").write_text(token_table_json([]))
    (served["config"] / "volunteers.json.new").replace(served["config"] / "volunteers.json")
    assert served["get"](f"/join/{TOKEN}")[0] == 403
    key = {"Authorization": f"Bearer {served['alice'].update_key}"}
    assert served["get"]("/v1/project/digest", key)[0] == 403


# --------------------------------------------------------------------------- the volunteer's side


def tar_of(entries: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in entries:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_the_worker_unpacks_the_project_into_its_volume_and_replaces_the_old_one(tmp_path):
    fixtures = Path(__file__).parent / "fixtures"
    data, digest = endpoint.project_tar(str(fixtures), frozenset(scan_local(fixtures)))
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "stale.py").write_text("")
    worker_side.unpack_project(data, digest, str(tmp_path))
    assert not (tmp_path / "project" / "stale.py").exists()
    assert (tmp_path / "project" / "plan_cluster.yaml").is_file()
    assert (tmp_path / "project.digest").read_text().strip() == digest


@pytest.mark.parametrize("info", [
    tarfile.TarInfo("../escape.py"), tarfile.TarInfo("/etc/passwd"),
])
def test_the_worker_refuses_a_project_entry_that_would_leave_its_folder(tmp_path, info):
    with pytest.raises(ValueError):
        worker_side.unpack_project(tar_of([(info, b"x")]), "d", str(tmp_path))


def test_the_worker_refuses_links_in_a_project(tmp_path):
    link = tarfile.TarInfo("link")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/shadow"
    with pytest.raises(ValueError):
        worker_side.unpack_project(tar_of([(link, b"")]), "d", str(tmp_path))


def test_a_workers_node_name_is_the_one_in_its_bundle_as_is():
    assert worker_side.node_name({"node_name": "lab-volunteer-alice.0a1b2c@volunteer-alice"}) == \
        "lab-volunteer-alice.0a1b2c@volunteer-alice"
    with pytest.raises(ValueError, match="names no node"):
        worker_side.node_name({"node_prefix": "lab-volunteer-alice"})


def test_project_tars_are_the_same_bytes_for_the_same_content(tmp_path):
    (tmp_path / "a.py").write_text("1")
    one = endpoint.project_tar(str(tmp_path), frozenset({"a.py"}))
    with contextlib.suppress(Exception):
        (tmp_path / "a.py").touch()
    assert endpoint.project_tar(str(tmp_path), frozenset({"a.py"})) == one


# --------------------------------------------------------------------------- the files volunteers get


def served_names(served) -> list[str]:
    key = {"Authorization": f"Bearer {served['alice'].update_key}"}
    status, body, _ = served["get"]("/v1/project", key)
    assert status == 200
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        return tar.getnames()


def test_the_endpoint_serves_what_sync_files_sends_and_no_env_venv_or_ignored_file(served):
    project = served["project"]
    (project / ".infraignore").write_text("secret.key\ndata/\n")
    for rel in (".env", "pkg/.env.local", ".venv/lib/site.py", "secret.key", "data/big.bin", ".git/config",
                "pkg/__pycache__/tasks.cpython-311.pyc", "pkg/helper.py"):
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text("x\n")
    synced = scan_local(project)  # what `sync-files` sends
    assert {".env", "pkg/.env.local", "pkg/helper.py"} <= set(synced)
    (served["config"] / "project-files.json").write_text(volunteer_plan.served_files_json(synced))
    names = served_names(served)
    assert names == [".infraignore", "pkg/helper.py", "pkg/tasks.py"]
    assert set(names) == set(synced) - {".env", "pkg/.env.local"}


def test_a_file_the_list_does_not_name_is_not_served_until_infra_lists_it(served):
    (served["project"] / "pkg" / "new.py").write_text("Y = 1\n")
    assert served_names(served) == ["pkg/tasks.py"]
    (served["config"] / "project-files.json").write_text(volunteer_plan.served_files_json(["pkg/tasks.py", "pkg/new.py"]))
    assert served_names(served) == ["pkg/new.py", "pkg/tasks.py"]


def test_without_a_list_of_files_the_project_is_not_served_at_all(served):
    (served["config"] / "project-files.json").unlink()
    key = {"Authorization": f"Bearer {served['alice'].update_key}"}
    assert served["get"]("/v1/project", key)[0] == 403
    assert served["get"]("/v1/project/digest", key)[0] == 403


def test_a_listed_name_that_is_a_link_is_never_followed(served, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("of this machine\n")
    (served["project"] / "pkg" / "link.py").symlink_to(outside)
    (served["config"] / "project-files.json").write_text(volunteer_plan.served_files_json(["pkg/tasks.py", "pkg/link.py"]))
    assert served_names(served) == ["pkg/tasks.py"]
