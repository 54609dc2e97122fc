"""The registry that sends images by layers: its configuration, names and failures (no host needed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import bcrypt
import pytest

from infra.commands.engine import PullImage, PushImage
from infra.commands.registry import (
    HeldTag,
    RegistryLogin,
    config_text,
    gc_config_text,
    htpasswd_line,
    new_login,
    garbage_collect_argv,
    serve_argv,
    tags_folder,
    tags_to_forget,
)
from infra.transport.registry import LocalRegistry, RegistryUnavailable
from infra.workflows.ship import ShippedImage, _registry_tag


def test_the_registry_listens_on_loopback_and_keeps_its_layers_under_its_folder(tmp_path):
    config = json.loads(config_text(tmp_path, 40123))  # JSON is the YAML the registry reads
    assert config["http"]["addr"] == "127.0.0.1:40123"
    assert config["storage"]["filesystem"]["rootdirectory"] == str(tmp_path / "data")
    assert len(config["http"]["secret"]) == 32
    assert json.loads(config_text(tmp_path, 40123))["http"]["secret"] != config["http"]["secret"]


def test_the_serving_registrys_config_asks_for_its_login_and_deletes_nothing():
    storage = Path("/state/lab/registry")
    assert json.loads(config_text(storage, 40123, http_secret="f" * 32)) == {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": "/state/lab/registry/data"}, "delete": {"enabled": False}},
        "auth": {"htpasswd": {"realm": "infra", "path": "/state/lab/registry/htpasswd"}},
        "http": {"addr": "127.0.0.1:40123", "secret": "f" * 32},
    }


def test_garbage_collection_reads_a_config_of_its_own_that_serves_nothing():
    config = json.loads(gc_config_text(Path("/state/lab/registry")))
    assert config["storage"] == {"filesystem": {"rootdirectory": "/state/lab/registry/data"},
                                 "delete": {"enabled": True}}
    assert "http" not in config and "auth" not in config


def test_each_login_is_new_and_its_htpasswd_line_is_a_bcrypt_hash_of_it():
    login = new_login()
    assert login != new_login() and login.username == "infra" and len(login.password) >= 43
    user, _, hashed = htpasswd_line(login).rstrip("\n").partition(":")
    assert user == "infra" and hashed.startswith("$2b$04$")
    assert bcrypt.checkpw(login.password.encode(), hashed.encode())
    assert not bcrypt.checkpw(b"wrong", hashed.encode())
    assert login.password not in htpasswd_line(login)


def test_the_login_reaches_pulls_and_pushes_as_api_auth_never_as_text():
    login = RegistryLogin("infra", "s3cret-registry-password")
    for op in (PullImage("127.0.0.1:41000/infra/lab-worker:abc", login=login),
               PushImage("127.0.0.1:5000/infra/lab-worker:abc", login=login)):
        assert "s3cret" not in op.text() and "s3cret" not in repr(op)
        assert op.login.auth_config() == {"username": "infra", "password": "s3cret-registry-password"}
    assert "s3cret" not in repr(login)


def test_the_engine_sends_the_login_with_the_pull_and_push_requests_only():
    from infra.engine.api import _auth_config

    assert _auth_config(RegistryLogin("infra", "pw")) == {"username": "infra", "password": "pw"}
    assert _auth_config(None) is None  # other pulls: the engine's own credentials, as before


def test_a_stopped_registry_leaves_neither_its_login_nor_its_config(tmp_path):
    registry = LocalRegistry(tmp_path)
    for path in (tmp_path / "config.yml", tmp_path / "htpasswd"):
        path.write_text("x")
    (tmp_path / "data").mkdir()
    registry.stop()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_the_registry_serves_and_collects_garbage_with_its_config_file(tmp_path):
    config = tmp_path / "config.yml"
    assert serve_argv("/usr/bin/docker-registry", config) == ["/usr/bin/docker-registry", "serve", str(config)]
    assert garbage_collect_argv("/usr/bin/docker-registry", config) == [
        "/usr/bin/docker-registry", "garbage-collect", "--delete-untagged", str(config)]


def test_a_prune_forgets_the_tags_not_kept_in_the_repositories_it_is_given():
    held = {"infra/lab-worker": [HeldTag("old", False), HeldTag("current", False)],
            "infra/lab-master": [HeldTag("older", False), HeldTag("current", False)],
            "infra/other": [HeldTag("stale", False)]}
    keep = {"infra/lab-worker": {"current"}, "infra/lab-master": {"current"}}
    assert tags_to_forget(held, keep) == [("infra/lab-worker", "old"), ("infra/lab-master", "older")]


def test_a_prune_leaves_symbolic_links_and_repositories_the_store_lacks_alone():
    held = {"infra/lab-worker": [HeldTag("planted", True), HeldTag("old", False)]}
    keep = {"infra/lab-worker": set(), "infra/lab-master": {"current"}}
    assert tags_to_forget(held, keep) == [("infra/lab-worker", "old")]
    assert tags_to_forget({}, keep) == []


def test_a_prune_deletes_the_tag_folders_chosen_and_counts_them(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no docker-registry: no garbage collection
    folder = tags_folder(tmp_path, "infra/lab-worker")
    for tag in ("old", "current"):
        (folder / tag / "current").mkdir(parents=True)
    (folder / "planted").symlink_to(tmp_path)
    assert LocalRegistry(tmp_path).prune({"infra/lab-worker": {"current"}, "infra/lab-master": {"x"}}) == 1
    assert sorted(entry.name for entry in folder.iterdir()) == ["current", "planted"]


def test_images_are_named_by_their_id_in_the_registry():
    image = ShippedImage("infra-lab-worker:latest", "infra/lab-worker", "sha256:" + "ab" * 32)
    assert _registry_tag(image) == "ab" * 16


def test_refs_name_the_registry_here_or_the_port_a_host_forwards(tmp_path):
    registry = LocalRegistry(tmp_path)
    registry.port = 5000
    assert registry.ref("infra/lab-worker", "abc") == "127.0.0.1:5000/infra/lab-worker:abc"
    assert registry.ref("infra/lab-worker", "abc", port=41000) == "127.0.0.1:41000/infra/lab-worker:abc"


def test_without_docker_registry_installed_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RegistryUnavailable) as raised:
        LocalRegistry(tmp_path / "registry").start()
    assert "infra bootstrap --hosts local" in str(raised.value) and "docker-registry" in str(raised.value)
    assert "\n" not in str(raised.value)


def test_a_registry_that_stops_at_once_is_reported_with_what_it_said(tmp_path, monkeypatch):
    # A program of that name that refuses to serve: the log's words reach the one-line error.
    program = tmp_path / "bin" / "docker-registry"
    program.parent.mkdir()
    # It also says the modes of the files it was given while they existed: its config ($2) and htpasswd.
    program.write_text("#!/bin/sh\necho \"configuration error: bad storage;"
                       " modes $(stat -c %a \"$2\") $(stat -c %a \"$(dirname \"$2\")/htpasswd\")\" >&2\nexit 3\n")
    program.chmod(0o755)
    monkeypatch.setenv("PATH", f"{program.parent}:{os.environ['PATH']}")
    with pytest.raises(RegistryUnavailable) as raised:
        LocalRegistry(tmp_path / "registry").start()
    assert "exit 3" in str(raised.value) and "configuration error: bad storage" in str(raised.value)
    assert "modes 600 600" in str(raised.value)
    # A registry that never served leaves no login nor configuration behind either.
    assert sorted(p.name for p in (tmp_path / "registry").iterdir()) == ["registry.log"]
