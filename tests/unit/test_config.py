"""The cluster file: every error is one line naming the key path and the line of the file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from infra.cli import main
from infra.config import Cluster, load_cluster
from infra.errors import ConfigError, InfraError

REPO = Path(__file__).resolve().parents[2]

# A valid cluster file; the tests below change one thing each. Line numbers:
#  1 name   2 hosts   3 a   4 address   5 user   6 b   7 address   8 port
#  9 project   10 path   11 app   12 roles   13 master   14 host   15 workers
#  16 - host: a   17 containers   18 - host: b   19 containers
BASE = """\
name: lab
hosts:
  a:
    address: 10.0.0.1
    user: alice
  b:
    address: 10.0.0.2
    port: 2222
project:
  path: proj
  app: wordcount
roles:
  master:
    host: a
  workers:
    - host: a
      containers: 2
    - host: b
      containers: 1
"""


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A folder holding the project folder `proj`; the cluster file is `cluster.yaml` in it."""
    (tmp_path / "proj").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def load_text(workdir: Path, text: str) -> Cluster:
    (workdir / "cluster.yaml").write_text(text)
    return load_cluster("cluster.yaml")


def error_of(workdir: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_text(workdir, text)
    message = str(caught.value)
    assert "\n" not in message, "errors are one line"
    return message


def line_of(text: str, snippet: str) -> int:
    """1-based line of the only line of `text` containing `snippet` (checked independently of infra)."""
    found = [n for n, line in enumerate(text.splitlines(), 1) if snippet in line]
    assert len(found) == 1, found
    return found[0]


# --------------------------------------------------------------------------- valid files


def test_the_example_file_validates():
    cluster = load_cluster(REPO / "config.example.yaml")
    assert cluster.name == "lab"
    assert cluster.master_host.name == "gpu-box"
    assert cluster.worker_hosts() == ["gpu-box", "pi1", "local"]
    assert cluster.project_dir == (REPO / "projects" / "wordcount").resolve()
    assert cluster.state_dir == (REPO / ".infra" / "lab").resolve()


def test_the_base_file_of_these_tests_validates(workdir):
    cluster = load_text(workdir, BASE)
    assert set(cluster.hosts) == {"a", "b", "local"}
    assert cluster.hosts["b"].port == 2222
    assert cluster.hosts["a"].describe() == "alice@10.0.0.1"
    assert cluster.hosts["b"].describe() == "10.0.0.2:2222"
    assert cluster.hosts["local"].is_local
    assert cluster.used_hosts() == ["a", "b"]
    assert cluster.image_tag("worker") == "infra-lab-worker:latest"
    assert cluster.spec.roles.workers[1].queues == ("celery",)
    assert cluster.manifest_path == workdir.resolve() / ".infra" / "lab" / "manifest.json"
    assert cluster.secrets_path == workdir.resolve() / ".infra" / "lab" / "secrets.json"


def test_local_needs_no_entry_to_run_workers(workdir):
    cluster = load_text(workdir, BASE + "    - host: local\n")
    assert cluster.worker_hosts() == ["a", "b", "local"]


def test_an_existing_key_file_is_resolved_against_the_cluster_file(workdir):
    (workdir / "id_test").write_text("key")
    cluster = load_text(workdir, BASE.replace("    user: alice\n", "    user: alice\n    key: id_test\n"))
    assert cluster.hosts["a"].key == str(workdir / "id_test")


def test_every_config_error_is_a_config_error_with_exit_code_2(workdir):
    with pytest.raises(ConfigError) as caught:
        load_text(workdir, BASE + "bogus: 1\n")
    assert isinstance(caught.value, InfraError)
    assert caught.value.exit_code == 2


# --------------------------------------------------------------------------- unknown keys


def test_unknown_top_level_key(workdir):
    assert error_of(workdir, BASE + "bogus: 1\n") == "bogus: unknown key (cluster.yaml:20)"


def test_unknown_nested_key_names_the_list_index(workdir):
    text = BASE + "      contaners: 3\n"
    assert error_of(workdir, text) == "roles.workers[1].contaners: unknown key (cluster.yaml:20)"


def test_unknown_key_of_a_host(workdir):
    text = BASE.replace("    user: alice\n", "    user: alice\n    usr: bob\n")
    assert error_of(workdir, text) == "hosts.a.usr: unknown key (cluster.yaml:6)"


# --------------------------------------------------------------------------- types and ranges


def test_port_given_as_a_string(workdir):
    text = BASE.replace("port: 2222", "port: '2222'")
    assert error_of(workdir, text) == "hosts.b.port: input should be a valid integer, got '2222' (cluster.yaml:8)"


def test_containers_given_as_a_string(workdir):
    text = BASE.replace("containers: 1", "containers: many")
    assert error_of(workdir, text) == (
        "roles.workers[1].containers: input should be a valid integer, got 'many' (cluster.yaml:19)")


def test_port_out_of_range(workdir):
    text = BASE.replace("port: 2222", "port: 70000")
    assert error_of(workdir, text) == (
        "hosts.b.port: input should be less than or equal to 65535 (cluster.yaml:8)")


def test_negative_containers(workdir):
    text = BASE.replace("containers: 2", "containers: -1")
    assert error_of(workdir, text) == (
        "roles.workers[0].containers: input should be greater than or equal to 0 (cluster.yaml:17)")


def test_unknown_pool_is_refused_with_the_value_given(workdir):
    text = BASE + "      pool: gevent\n"
    assert error_of(workdir, text) == (
        "roles.workers[1].pool: input should be 'prefork', 'threads' or 'solo', got 'gevent' (cluster.yaml:20)")


def test_missing_required_key(workdir):
    text = BASE.replace("  app: wordcount\n", "")
    # The key is not in the file: the line is that of its parent.
    assert error_of(workdir, text) == "project.app: required key is missing (cluster.yaml:9)"


def test_bad_cluster_name(workdir):
    text = BASE.replace("name: lab", "name: My_Lab")
    assert error_of(workdir, text) == (
        "name: must be lowercase letters, digits and '-', at most 40 characters, e.g. 'lab' (cluster.yaml:1)")


# --------------------------------------------------------------------------- hosts


def test_unknown_master_host(workdir):
    text = BASE.replace("  master:\n    host: a", "  master:\n    host: zz")
    assert error_of(workdir, text) == "roles.master.host: unknown host 'zz' (hosts: a, b, local) (cluster.yaml:14)"


def test_unknown_worker_host(workdir):
    text = """\
name: lab
hosts:
  a: {address: 10.0.0.1}
  b: {address: 10.0.0.2}
project:
  path: proj
  app: wordcount
roles:
  master: {host: a}
  workers:
    - host: a
    - host: b
      containers: 2
    - host: c
"""
    message = error_of(workdir, text)
    assert message == "roles.workers[2].host: unknown host 'c' (hosts: a, b, local) (cluster.yaml:14)"
    assert message.endswith(f"(cluster.yaml:{line_of(text, '- host: c')})")


def test_declaring_a_host_named_local(workdir):
    text = BASE.replace("  b:\n", "  local:\n    address: 127.0.0.1\n  b:\n")
    assert error_of(workdir, text) == (
        "hosts.local: 'local' is the machine running infra and needs no entry (cluster.yaml:6)")


def test_missing_key_file(workdir):
    text = BASE.replace("    user: alice\n", "    user: alice\n    key: ~/.ssh/nonexistent_key_for_tests\n")
    assert error_of(workdir, text) == (
        "hosts.a.key: no such key file '~/.ssh/nonexistent_key_for_tests' (cluster.yaml:6)")


# --------------------------------------------------------------------------- ports


def test_two_services_on_the_same_port(workdir):
    text = BASE + "ports:\n  broker: 5672\n  flower: 5672\n"
    assert error_of(workdir, text) == "ports.flower: port 5672 is also used by ports.broker (cluster.yaml:22)"


def test_a_port_equal_to_the_ssh_port_of_the_master_host(workdir):
    # Master `a` has no port set: SSH is on 22.
    text = BASE + "ports:\n  flower: 22\n"
    assert error_of(workdir, text) == "ports.flower: port 22 is the SSH port of master host 'a' (cluster.yaml:21)"


def test_a_port_equal_to_an_explicit_ssh_port_of_the_master_host(workdir):
    text = BASE.replace("    host: a\n  workers", "    host: b\n  workers") + "ports:\n  broker: 2222\n"
    assert error_of(workdir, text) == "ports.broker: port 2222 is the SSH port of master host 'b' (cluster.yaml:21)"


def test_the_ssh_port_of_a_worker_host_may_be_published_on_the_master(workdir):
    cluster = load_text(workdir, BASE + "ports:\n  flower: 2222\n")
    assert cluster.spec.ports.flower == 2222


# --------------------------------------------------------------------------- YAML itself


def test_duplicate_key(workdir):
    text = BASE.replace("  b:\n", "  a:\n")
    assert error_of(workdir, text) == "hosts.a: duplicate key (also at line 3) (cluster.yaml:6)"


def test_duplicate_key_in_a_list_item(workdir):
    text = BASE + "      containers: 4\n"
    assert error_of(workdir, text) == (
        "roles.workers[1].containers: duplicate key (also at line 19) (cluster.yaml:20)")


def test_invalid_yaml_syntax_gives_the_line(workdir):
    text = BASE.replace("  app: wordcount", "  app: wordcount: celery")
    assert error_of(workdir, text) == "cluster.yaml:11: invalid YAML: mapping values are not allowed here"


def test_a_tab_in_indentation_gives_the_line(workdir):
    text = BASE.replace("    user: alice", "\tuser: alice")
    assert error_of(workdir, text) == (
        "cluster.yaml:5: invalid YAML: found character '\\t' that cannot start any token")


def test_a_complex_key_is_invalid_yaml_not_a_crash(workdir):
    assert error_of(workdir, "? [a, b]\n: 1\n") == "cluster.yaml:1: invalid YAML: found unhashable key"


def test_empty_file(workdir):
    assert error_of(workdir, "") == "cluster.yaml: the file is empty (start from config.example.yaml)"
    assert error_of(workdir, "# nothing yet\n") == "cluster.yaml: the file is empty (start from config.example.yaml)"


def test_a_file_that_is_not_a_mapping(workdir):
    assert error_of(workdir, "- a\n- b\n") == (
        "(top level): the cluster file must be a mapping of keys (name, hosts, project, roles, ...) (cluster.yaml:1)")


def test_missing_file(workdir):
    with pytest.raises(ConfigError) as caught:
        load_cluster("nowhere.yaml")
    assert str(caught.value) == "nowhere.yaml: no such file (write one from config.example.yaml)"


# --------------------------------------------------------------------------- project, images, workers


def test_project_folder_missing(workdir):
    text = BASE.replace("path: proj", "path: projects/gone")
    assert error_of(workdir, text) == "project.path: no such folder 'projects/gone' (cluster.yaml:10)"


@pytest.mark.parametrize("remote", ["/", "'~'", "'~/'", "'.'", "'$HOME'", "../up"])
def test_remote_path_that_is_not_a_folder_of_its_own(workdir, remote):
    text = BASE.replace("  app: wordcount\n", f"  app: wordcount\n  remote_path: {remote}\n")
    shown = remote.strip("'")
    assert error_of(workdir, text) == (
        f"project.remote_path: '{shown}' is not a folder of its own (use e.g. 'infra' or '/srv/infra') "
        "(cluster.yaml:12)")


@pytest.mark.parametrize("remote", ["infra", "~/infra", "/srv/infra"])
def test_remote_path_of_its_own_is_accepted(workdir, remote):
    text = BASE.replace("  app: wordcount\n", f"  app: wordcount\n  remote_path: {remote}\n")
    assert load_text(workdir, text).spec.project.remote_path == remote


def test_pull_without_image_names(workdir):
    text = BASE + "images:\n  source: pull\n  worker: registry.example/w:1\n"
    assert error_of(workdir, text) == (
        "images: images.master must name a registry image when source is 'pull' (cluster.yaml:20)")


def test_pull_with_all_image_names_is_accepted(workdir):
    text = BASE + "images:\n  source: pull\n  worker: r/w:1\n  master: r/m:1\n  broker: r/b:1\n"
    cluster = load_text(workdir, text)
    assert cluster.image_tag("master") == "r/m:1"


def test_no_worker_containers(workdir):
    text = BASE.replace("containers: 2", "containers: 0").replace("containers: 1", "containers: 0")
    assert error_of(workdir, text) == "roles.workers: at least one worker container is needed (cluster.yaml:15)"


def test_no_workers_key_at_all(workdir):
    text = BASE[: BASE.index("  workers:")]
    assert error_of(workdir, text) == "roles.workers: at least one worker container is needed (cluster.yaml:12)"


def test_missing_wheelhouse_folder(workdir):
    text = BASE + "images:\n  wheelhouse: wheels/\n"
    assert error_of(workdir, text) == "images.wheelhouse: no such folder 'wheels/' (cluster.yaml:21)"


# --------------------------------------------------------------------------- the command line


def test_cli_prints_one_error_line_and_exits_2(workdir):
    (workdir / "bad.yaml").write_text(BASE + "bogus: 1\n")
    result = CliRunner().invoke(main, ["up", "-f", "bad.yaml"])
    assert result.exit_code == 2
    assert result.stderr == "error: bogus: unknown key (bad.yaml:20)\n"
    assert result.stdout == ""
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (BASE + "bogus: 1\n", "error: bogus: unknown key (bad.yaml:20)"),
        (BASE.replace("port: 2222", "port: 70000"),
         "error: hosts.b.port: input should be less than or equal to 65535 (bad.yaml:8)"),
        ("", "error: bad.yaml: the file is empty (start from config.example.yaml)"),
        (None, "error: bad.yaml: no such file (write one from config.example.yaml)"),
    ],
    ids=["unknown-key", "out-of-range", "empty", "missing"],
)
def test_cli_py_up_with_a_bad_file_prints_one_line_and_exits_2(tmp_path, text, message):
    (tmp_path / "proj").mkdir()
    if text is not None:
        (tmp_path / "bad.yaml").write_text(text)
    proc = subprocess.run(
        [sys.executable, str(REPO / "cli.py"), "up", "-f", "bad.yaml"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [message]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stdout == ""
