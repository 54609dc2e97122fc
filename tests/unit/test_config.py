"""The cluster file: every error is one line naming the key path and the line of the file."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from infra.cli import main
from infra.config import Cluster, cluster_json_schema, load_cluster, loader, parse_cluster
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
    text = BASE.replace("  path: proj\n", "")
    # The key is not in the file: the line is that of its parent.
    assert error_of(workdir, text) == "project.path: required key is missing (cluster.yaml:9)"


def test_a_project_without_an_app_runs_the_built_in_one(workdir):
    cluster = parse_cluster(BASE.replace("  app: wordcount\n", ""), base_dir=workdir)
    assert cluster.spec.project.app is None
    assert cluster.celery_app == "infra_runtime.app"
    assert parse_cluster(BASE, base_dir=workdir).celery_app == "wordcount"


@pytest.mark.parametrize("gpus, expected", [
    ("all", "all"), ("2", 2), ("[0, 3]", (0, 3)), ("[GPU-3a7f0c1e, 1]", ("GPU-3a7f0c1e", 1)),
])
def test_worker_gpus_are_all_a_count_or_a_list_of_ids(workdir, gpus, expected):
    text = BASE.replace("      containers: 2\n", f"      containers: 2\n      gpus: {gpus}\n", 1)
    assert parse_cluster(text, base_dir=workdir).spec.roles.workers[0].gpus == expected


@pytest.mark.parametrize("gpus, message", [
    ("0", "must be at least 1 (leave the key out for no GPU), got 0"),
    ("some", "must be all, a number of GPUs or a list of GPU ids, got 'some'"),
    ("1.5", "must be all, a number of GPUs or a list of GPU ids, got 1.5"),
    ("true", "must be all, a number of GPUs or a list of GPU ids, got True"),
    ("[]", "the list of GPU ids is empty (leave the key out for no GPU)"),
    ("[-1]", "invalid GPU id -1 (an index such as 0, or a UUID such as GPU-...)"),
    ("['a b']", "invalid GPU id 'a b' (an index such as 0, or a UUID such as GPU-...)"),
    ("[1, 1]", "a GPU is listed twice"),
])
def test_bad_worker_gpus_are_named_with_their_line(workdir, gpus, message):
    text = BASE.replace("      containers: 2\n", f"      containers: 2\n      gpus: {gpus}\n", 1)
    assert error_of(workdir, text) == f"roles.workers[0].gpus: value error, {message} (cluster.yaml:18)"


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


# --------------------------------------------------------------------------- hostile or broken input


def billion_laughs(levels: int = 9) -> str:
    """A few hundred bytes that YAML expands to 10**levels strings."""
    lines = ["name: lab", 'laugh0: &laugh0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for n in range(1, levels):
        lines.append(f"laugh{n}: &laugh{n} [" + ", ".join([f"*laugh{n - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


def test_the_alias_bomb_is_refused_in_well_under_a_second(workdir):
    text = billion_laughs()
    assert len(text) < 1000
    started = time.perf_counter()
    message = error_of(workdir, text)
    assert time.perf_counter() - started < 0.5
    assert message == (
        "cluster.yaml:2: anchors and aliases (&name, *name) are not allowed in a cluster file (found &laugh0)")


def test_an_alias_that_contains_itself_is_a_config_error_not_a_recursion_error(workdir):
    assert error_of(workdir, BASE + "loop: &a [*a]\n") == (
        "cluster.yaml:20: anchors and aliases (&name, *name) are not allowed in a cluster file (found &a)")


def test_a_merge_key_from_an_anchor_is_refused_at_the_alias(workdir):
    text = BASE.replace("    - host: b\n", "    - <<: *two\n      host: b\n").replace(
        "    - host: a\n      containers: 2\n", "    - &two\n      host: a\n      containers: 2\n")
    assert error_of(workdir, text) == (
        f"cluster.yaml:{line_of(text, '&two')}: anchors and aliases (&name, *name) are not allowed "
        "in a cluster file (found &two)")


def test_an_undefined_alias_is_refused_like_any_alias(workdir):
    text = BASE.replace("host: a\n  workers", "host: *master\n  workers")
    assert error_of(workdir, text) == (
        "cluster.yaml:14: anchors and aliases (&name, *name) are not allowed in a cluster file (found *master)")


@pytest.mark.parametrize(
    "nested",
    ["[" * 1000 + "]" * 1000, "{a: " * 1000 + "1" + "}" * 1000, "[" * 100_000],
    ids=["flow-lists", "flow-mappings", "unclosed"],
)
def test_nesting_1000_deep_is_refused_quickly(workdir, nested):
    started = time.perf_counter()
    assert error_of(workdir, BASE + "deep: " + nested + "\n") == (
        "cluster.yaml:20: nesting deeper than 64 levels is not allowed in a cluster file")
    assert time.perf_counter() - started < 2


def test_deep_block_nesting_is_refused_at_the_line_that_goes_too_deep(workdir):
    text = BASE + "deep:\n" + "".join(" " * level + f"k{level}:\n" for level in range(1, 200))
    # The top-level mapping is level 1, the one holding k1 level 2: the one holding k64 is level 65.
    assert error_of(workdir, text) == (
        f"cluster.yaml:{line_of(text, ' k64:')}: nesting deeper than 64 levels is not allowed in a cluster file")


def test_nesting_up_to_the_limit_is_only_an_unknown_key(workdir):
    nested = "[" * 63 + "]" * 63  # 63 levels inside the top-level mapping: 64 in all
    assert error_of(workdir, BASE + "deep: " + nested + "\n") == "deep: unknown key (cluster.yaml:20)"


def test_more_values_than_the_limit_are_refused(workdir, monkeypatch):
    # The real limit (100,000) takes seconds of pure-Python parsing to reach; the rule is the same.
    monkeypatch.setattr(loader, "MAX_NODES", 50)
    text = BASE + "many: [" + ", ".join(["1"] * 40) + "]\n"
    assert error_of(workdir, text) == "cluster.yaml:20: more than 50 values are not allowed in a cluster file"


def test_a_file_over_the_size_limit_is_refused_without_parsing(workdir):
    text = BASE + "# " + "x" * loader.MAX_FILE_BYTES + "\n"
    started = time.perf_counter()
    assert error_of(workdir, text) == (
        "cluster.yaml: files over 1,000,000 bytes are not allowed as cluster files (is this the right file?)")
    assert time.perf_counter() - started < 0.5


def test_bytes_that_are_not_utf8_give_the_line(workdir):
    (workdir / "cluster.yaml").write_bytes(BASE.replace("user: alice", "user: al\xefce").encode("latin-1"))
    with pytest.raises(ConfigError) as caught:
        load_cluster("cluster.yaml")
    assert str(caught.value) == "cluster.yaml:5: not UTF-8 text (byte 0xef); save the file as UTF-8"


def test_a_utf16_file_is_not_utf8_text(workdir):
    (workdir / "cluster.yaml").write_bytes(BASE.encode("utf-16"))
    with pytest.raises(ConfigError) as caught:
        load_cluster("cluster.yaml")
    assert str(caught.value) == "cluster.yaml:1: not UTF-8 text (byte 0xff); save the file as UTF-8"


def test_a_utf8_byte_order_mark_is_accepted(workdir):
    (workdir / "cluster.yaml").write_bytes(b"\xef\xbb\xbf" + BASE.encode())
    assert load_cluster("cluster.yaml").name == "lab"


@pytest.mark.parametrize(("character", "code"), [("\x00", "0000"), ("\x1b", "001b"), ("\x7f", "007f")])
def test_a_control_character_gives_the_line(workdir, character, code):
    text = BASE.replace("user: alice", f"user: ali{character}ce")
    assert error_of(workdir, text) == f"cluster.yaml:5: invalid YAML: character #x{code} is not allowed in YAML text"


def test_a_scalar_file_is_not_a_mapping(workdir):
    assert error_of(workdir, "just some text\n") == (
        "(top level): the cluster file must be a mapping of keys (name, hosts, project, roles, ...) (cluster.yaml:1)")


def test_two_documents_are_invalid_yaml(workdir):
    assert error_of(workdir, BASE + "---\nname: other\n") == (
        "cluster.yaml:20: invalid YAML: expected a single document in the stream, but found another document")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2024-13-45", "cannot read '2024-13-45' as !!timestamp: month must be in 1..12"),
        ("!!int many", "cannot read 'many' as !!int: invalid literal for int() with base 10: 'many'"),
        ("!!bool maybe", "cannot read 'maybe' as !!bool"),
        ("!!timestamp soon", "cannot read 'soon' as !!timestamp: 'NoneType' object has no attribute 'groupdict'"),
        ("!!python/object:os.system x",
         "could not determine a constructor for the tag 'tag:yaml.org,2002:python/object:os.system'"),
    ],
    ids=["impossible-date", "int-tag", "bool-tag", "timestamp-tag", "python-tag"],
)
def test_a_value_yaml_cannot_read_gives_the_line(workdir, value, message):
    text = BASE.replace("containers: 1", f"containers: {value}")
    assert error_of(workdir, text) == f"cluster.yaml:19: invalid YAML: {message}"


def test_an_integer_too_large_to_print_is_named_by_its_type(workdir):
    text = BASE.replace("name: lab", "name: " + ":".join(["59"] * 3000))  # base 60: thousands of digits
    assert error_of(workdir, text) == (
        "name: input should be a valid string, got <int too large to show> (cluster.yaml:1)")


def test_a_key_holding_a_newline_stays_on_one_line(workdir):
    assert error_of(workdir, BASE + '"bo\\ngus": 1\n') == "'bo\\ngus': unknown key (cluster.yaml:20)"


def test_a_long_value_is_clipped_in_the_message(workdir):
    text = BASE.replace("containers: 1", "containers: " + "x" * 5000)
    message = error_of(workdir, text)
    assert len(message) < 200
    assert message.startswith("roles.workers[1].containers: input should be a valid integer, got 'xxx")


@pytest.mark.parametrize(
    ("replace", "by", "message"),
    [
        ("path: proj", 'path: "~x\\0"', "project.path: '~x\\x00' contains a control character (U+0000) (cluster.yaml:10)"),
        ("path: proj", "path: " + "p" * 5000,
         "project.path: no such folder '" + "p" * 56 + "... (cluster.yaml:10)"),
        ("    user: alice\n", '    user: alice\n    key: "id\\0"\n',
         "hosts.a.key: 'id\\x00' contains a control character (U+0000) (cluster.yaml:6)"),
        ("  app: wordcount\n", '  app: wordcount\nstate_dir: "st\\0te"\n',
         "state_dir: 'st\\x00te' contains a control character (U+0000) (cluster.yaml:12)"),
    ],
    ids=["nul-in-project-path", "project-path-too-long-for-the-os", "nul-in-key-file", "nul-in-state-dir"],
)
def test_a_path_the_os_cannot_use_is_a_config_error(workdir, replace, by, message):
    assert error_of(workdir, BASE.replace(replace, by)) == message


def test_a_queue_name_with_a_trailing_newline_is_refused(workdir):
    text = BASE + '      queues: ["celery\\n"]\n'
    assert error_of(workdir, text) == (
        "roles.workers[1].queues: value error, invalid queue name 'celery\\n' (cluster.yaml:20)")


def test_loading_the_example_file_takes_milliseconds():
    load_cluster(REPO / "config.example.yaml")  # imports warmed up
    started = time.perf_counter()
    for _ in range(20):
        load_cluster(REPO / "config.example.yaml")
    assert (time.perf_counter() - started) / 20 < 0.05


# --------------------------------------------------------------------------- JSON Schema


SHIPPED_SCHEMA = REPO / "docs" / "cluster.schema.json"


def test_the_shipped_json_schema_is_the_one_the_models_generate():
    shipped = json.loads(SHIPPED_SCHEMA.read_text())
    assert shipped == cluster_json_schema(), "regenerate it: infra schema -o docs/cluster.schema.json"


def test_the_json_schema_is_a_valid_draft_2020_12_schema():
    schema = cluster_json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] and schema["title"] == "infra cluster file"
    jsonschema.Draft202012Validator.check_schema(schema)


def test_the_example_file_validates_against_the_json_schema():
    example = yaml.safe_load((REPO / "config.example.yaml").read_text())
    jsonschema.Draft202012Validator(cluster_json_schema()).validate(example)


def test_every_key_of_the_json_schema_has_a_description():
    schema = cluster_json_schema()
    objects = {"(top level)": schema, **schema["$defs"]}
    missing = [f"{name}.{key}" for name, obj in objects.items()
               for key, prop in obj["properties"].items() if not prop.get("description")]
    assert not missing
    assert all(definition.get("description") for definition in schema["$defs"].values())


@pytest.mark.parametrize(
    ("change", "expected_error"),
    [
        ({"bogus": 1}, "Additional properties are not allowed"),
        ({"hosts": {"local": {"address": "x"}}}, "should not be valid"),
        ({"ports": {"flower": 70000}}, "is greater than the maximum"),
        ({"roles": {"master": {"host": "gpu-box"}, "workers": [{"host": "a", "pool": "gevent"}]}}, "is not one of"),
    ],
    ids=["unknown-key", "host-named-local", "port-range", "pool"],
)
def test_the_json_schema_refuses_what_the_models_refuse(change, expected_error):
    example = yaml.safe_load((REPO / "config.example.yaml").read_text())
    errors = list(jsonschema.Draft202012Validator(cluster_json_schema()).iter_errors({**example, **change}))
    assert errors and expected_error in errors[0].message


def test_the_example_file_points_editors_at_the_shipped_schema():
    first_line = (REPO / "config.example.yaml").read_text().splitlines()[0]
    assert first_line == "# yaml-language-server: $schema=docs/cluster.schema.json"
    assert (REPO / first_line.split("$schema=")[1]).is_file()


# --------------------------------------------------------------------------- infra check, infra schema


def test_check_prints_one_line_for_a_valid_file(workdir):
    (workdir / "cluster.yaml").write_text(BASE)
    result = CliRunner().invoke(main, ["check", "-f", "cluster.yaml"])
    assert result.exit_code == 0
    assert result.stdout == "cluster.yaml: cluster lab is valid (2 hosts, 3 worker containers)\n"
    assert result.stderr == ""


def test_check_counts_one_host_and_one_container_in_the_singular(workdir):
    text = ("name: solo\nproject: {path: proj, app: wordcount}\n"
            "roles: {master: {host: local}, workers: [{host: local}]}\n")
    (workdir / "cluster.yaml").write_text(text)
    result = CliRunner().invoke(main, ["check", "-f", "cluster.yaml"])
    assert result.stdout == "cluster.yaml: cluster solo is valid (1 host, 1 worker container)\n"


def test_check_prints_one_error_line_and_exits_2(workdir):
    (workdir / "cluster.yaml").write_text(billion_laughs())
    result = CliRunner().invoke(main, ["check", "-f", "cluster.yaml"])
    assert result.exit_code == 2
    assert result.stderr == (
        "error: cluster.yaml:2: anchors and aliases (&name, *name) are not allowed in a cluster file "
        "(found &laugh0)\n")
    assert result.stdout == ""


def test_check_contacts_no_host(workdir, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("infra check opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    result = CliRunner().invoke(main, ["check", "-f", str(REPO / "config.example.yaml")])
    assert result.exit_code == 0, result.output
    assert result.stdout.endswith("config.example.yaml: cluster lab is valid (3 hosts, 4 worker containers)\n")


def test_schema_prints_the_json_schema():
    result = CliRunner().invoke(main, ["schema"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == cluster_json_schema()


def test_schema_writes_the_shipped_file_byte_for_byte(tmp_path):
    result = CliRunner().invoke(main, ["schema", "-o", str(tmp_path / "cluster.schema.json")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cluster.schema.json").read_text() == SHIPPED_SCHEMA.read_text()


# --------------------------------------------------------------------------- the state dir is never inside the project


@pytest.mark.parametrize("state_dir", ["proj", "proj/.infra", "./proj/sub/../state", "'{tmp}/proj/x'"])
def test_a_state_dir_inside_the_project_is_refused_its_secrets_would_travel_with_it(workdir, state_dir):
    text = BASE + f"state_dir: {state_dir.replace('{tmp}', str(workdir))}\n"
    message = error_of(workdir, text)
    assert message.startswith("state_dir: ") and "is inside the project folder" in message
    assert message.endswith(f"(cluster.yaml:{line_of(text, 'state_dir')})")


def test_the_default_state_dir_of_a_cluster_file_in_the_project_folder_is_refused(workdir):
    text = BASE.replace("path: proj", "path: .")
    message = error_of(workdir, text)
    assert message.startswith("state_dir: '.infra' is inside the project folder")


def test_a_state_dir_that_is_the_project_itself_is_refused(workdir):
    # STATE_DIR/NAME: the parent folder with the cluster named like the project folder.
    (workdir / "lab").mkdir()
    assert "is inside the project folder" in error_of(workdir, BASE.replace("path: proj", "path: lab") + "state_dir: .\n")


@pytest.mark.parametrize("state_dir", [".infra", "../state", "proj-state", "projx"])
def test_a_state_dir_beside_the_project_is_fine(workdir, state_dir):
    assert load_text(workdir, BASE + f"state_dir: {state_dir}\n").state_dir.name == "lab"


def test_a_state_dir_reaching_the_project_through_a_link_is_refused(workdir):
    os.symlink(workdir / "proj", workdir / "link")
    assert "is inside the project folder" in error_of(workdir, BASE + "state_dir: link/.infra\n")
