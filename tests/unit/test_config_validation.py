"""Values of the cluster file that reach env files, labels, command renderings, Docker's API and the
hosts' shells are checked when the file is loaded, so that none can mean more than it says.

Found on an older version: `images.worker: '$(touch /tmp/x)'` ran, even under `up --dry-run`; an
image name starting with '-' became an option of `docker pull`; a newline in
`roles.master.advertise_address` added a line to the env files; host addresses took shell syntax.
Every refusal is one printable line, `key.path: message (cluster.yaml:LINE)`, exit code 2.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from infra.cli import main
from infra.config import Cluster, parse_cluster
from infra.errors import ConfigError

# A valid file setting every string the rules cover; <<key.path>> marks where a test puts its value,
# written as a YAML double-quoted scalar (JSON's escapes are YAML's), so "\n", "\0" or "\u2028" arrive
# as the characters themselves, as a user's escapes would.
TEMPLATE = """\
name: <<name>>
hosts:
  a:
    address: <<hosts.a.address>>
    user: <<hosts.a.user>>
    port: 22
    key: <<hosts.a.key>>
project:
  path: <<project.path>>
  app: <<project.app>>
  remote_path: <<project.remote_path>>
  requirements: <<project.requirements>>
roles:
  master:
    host: <<roles.master.host>>
    advertise_address: <<roles.master.advertise_address>>
    bind_address: <<roles.master.bind_address>>
  workers:
    - host: <<roles.workers[0].host>>
      containers: 1
      queues: [<<roles.workers[0].queues>>]
      pool: <<roles.workers[0].pool>>
      loglevel: <<roles.workers[0].loglevel>>
images:
  source: <<images.source>>
  base: <<images.base>>
  worker: <<images.worker>>
  master: <<images.master>>
  broker: <<images.broker>>
  wheelhouse: <<images.wheelhouse>>
docker:
  source: <<docker.source>>
state_dir: <<state_dir>>
"""

VALID = {
    "name": "lab",
    "hosts.a.address": "10.0.0.1",
    "hosts.a.user": "alice",
    "hosts.a.key": "id_test",
    "project.path": "proj",
    "project.app": "wordcount",
    "project.remote_path": "infra",
    "project.requirements": "requirements.txt",
    "roles.master.host": "a",
    "roles.master.advertise_address": "10.0.0.1",
    "roles.master.bind_address": "10.0.0.1",
    "roles.workers[0].host": "a",
    "roles.workers[0].queues": "celery",
    "roles.workers[0].pool": "prefork",
    "roles.workers[0].loglevel": "INFO",
    "images.source": "build",
    "images.base": "python:3.11-slim-bookworm",
    "images.worker": "infra-lab-worker:latest",
    "images.master": "infra-lab-master:latest",
    "images.broker": "infra-lab-broker:latest",
    "images.wheelhouse": "wheels",
    "docker.source": "distro",
    "state_dir": ".infra",
}
assert set(VALID) == {line.split("<<")[1].split(">>")[0] for line in TEMPLATE.splitlines() if "<<" in line}

# 1-based line of each key in the file.
LINES = {key: number for number, line in enumerate(TEMPLATE.splitlines(), 1) for key in VALID if f"<<{key}>>" in line}

# Names, addresses and references: nothing but their own grammar passes.
STRICT_FIELDS = [
    "name", "hosts.a.address", "hosts.a.user", "project.app", "roles.master.advertise_address",
    "roles.master.bind_address",
    "roles.workers[0].queues", "images.base", "images.worker", "images.master", "images.broker",
]
# Paths may be any printable name (they are quoted wherever they are sent), but never hold a control
# character nor start with '-'.
PATH_FIELDS = [
    "hosts.a.key", "project.path", "project.remote_path", "project.requirements", "images.wheelhouse", "state_dir",
]

HOSTILE = {
    "command-substitution": "$(touch /tmp/x)",
    "backticks": "`touch /tmp/x`",
    "semicolon": "x;touch /tmp/x",
    "and-list": "x && touch /tmp/x",
    "pipe": "x|touch /tmp/x",
    "single-quote": "x'y",
    "double-quote": 'x"y',
    "space": "x y",
    "tab": "x\ty",
    "newline": "x\ny",
    "carriage-return": "x\ry",
    "nul": "x\x00y",
    "del": "x\x7fy",
    "escape-sequence": "x\x1b[31my",
    "next-line": "x\x85y",
    "line-separator": "x\u2028y",
    "right-to-left-override": "x\u202ey",
    "leading-dash": "-oProxyCommand=touch",
    "dot-dot": "../../x",
    "cyrillic-look-alike": "c\u0435lery",  # 'е' U+0435 for 'e'
    "fullwidth-look-alike": "\uff43elery",  # 'ｃ' U+FF43 for 'c'
    "overlong": "a" * 300,
}
CONTROL_CHARACTERS = {
    "newline": "\n", "carriage-return": "\r", "nul": "\x00", "escape": "\x1b", "del": "\x7f",
    "next-line": "\x85", "line-separator": "\u2028", "right-to-left-override": "\u202e",
}


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """The folder of the cluster file: the project (with requirements.txt), the wheelhouse, the key."""
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "requirements.txt").write_text("")
    (tmp_path / "wheels").mkdir()
    (tmp_path / "id_test").write_text("not a real key\n")
    return tmp_path


def cluster_text(changes: dict[str, str] | None = None) -> str:
    """The valid file, with the values of `changes` (by key path) in place of the valid ones."""
    text = TEMPLATE
    for key, value in {**VALID, **(changes or {})}.items():
        text = text.replace(f"<<{key}>>", json.dumps(value))
    return text


def load(workdir: Path, changes: dict[str, str]) -> Cluster:
    return parse_cluster(cluster_text(changes), filename="cluster.yaml", base_dir=workdir)


def error_of(workdir: Path, changes: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        load(workdir, changes)
    message = str(caught.value)
    assert message.isprintable(), f"errors are one printable line: {message!r}"
    return message


def assert_refused_at(message: str, key: str) -> None:
    assert message.startswith(f"{key}: "), message
    assert message.endswith(f" (cluster.yaml:{LINES[key]})"), message


# --------------------------------------------------------------------------- hostile values


def test_the_valid_file_of_these_tests_loads(workdir):
    cluster = load(workdir, {})
    assert cluster.spec.images.worker == "infra-lab-worker:latest"
    assert cluster.spec.roles.master.advertise_address == "10.0.0.1"


@pytest.mark.parametrize("value", HOSTILE.values(), ids=HOSTILE.keys())
@pytest.mark.parametrize("key", STRICT_FIELDS)
def test_a_hostile_value_is_refused_naming_its_key(workdir, key, value):
    assert_refused_at(error_of(workdir, {key: value}), key)


PATH_HOSTILE = {name: f"x{character}y" for name, character in CONTROL_CHARACTERS.items()}
PATH_HOSTILE["leading-dash"] = "-oProxyCommand=touch"


@pytest.mark.parametrize("value", PATH_HOSTILE.values(), ids=PATH_HOSTILE.keys())
@pytest.mark.parametrize("key", PATH_FIELDS)
def test_a_path_with_a_control_character_or_a_leading_dash_is_refused(workdir, key, value):
    assert_refused_at(error_of(workdir, {key: value}), key)


@pytest.mark.parametrize("character", CONTROL_CHARACTERS.values(), ids=CONTROL_CHARACTERS.keys())
@pytest.mark.parametrize("key", VALID)
def test_no_string_of_the_file_may_hold_a_control_character(workdir, key, character):
    """One generic rule covers every string, whatever else checks it."""
    value = VALID[key][:1] + character + VALID[key][1:]
    assert_refused_at(error_of(workdir, {key: value}), key)


@pytest.mark.parametrize(
    "key", ["roles.master.host", "roles.workers[0].host", *PATH_FIELDS])
def test_a_control_character_is_named_by_its_code_point(workdir, key):
    message = error_of(workdir, {key: "a\nb"})
    assert message == f"{key}: 'a\\nb' contains a control character (U+000A) (cluster.yaml:{LINES[key]})"


def test_a_control_character_in_a_host_name_is_refused_at_the_name(workdir):
    text = cluster_text().replace("  a:\n", '  "a\\u2028b":\n')
    with pytest.raises(ConfigError) as caught:
        parse_cluster(text, filename="cluster.yaml", base_dir=workdir)
    assert str(caught.value) == (
        "hosts.'a\\u2028b': 'a\\u2028b' contains a control character (U+2028) (cluster.yaml:3)")


def test_a_tab_is_not_a_control_character_to_refuse(workdir):
    assert load(workdir, {"state_dir": "state\tdir"}).spec.state_dir == "state\tdir"


# --------------------------------------------------------------------------- what each rule says


REFUSALS = [
    ("images.worker", "Foo/Bar",
     "'Foo/Bar' is not a valid image reference (repository names are lowercase)"),
    ("images.worker", "$(touch /tmp/x)",
     "'$(touch /tmp/x)' is not a valid image reference (it contains '$')"),
    ("images.master", "-q", "'-q' is not a valid image reference "
     "(it starts with '-', which docker would take for an option)"),
    ("images.broker", "", "'' is not a valid image reference (it is empty)"),
    ("images.base", "pyth\u043en:3.11", "'pythоn:3.11' is not a valid image reference (it contains 'о' (U+043E))"),
    ("images.worker", "img:-1", "'img:-1' is not a valid image reference "
     "(a tag is 1 to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-')"),
    ("images.worker", "img:" + "t" * 129, "'img:" + "t" * 52 + "... is not a valid image reference "
     "(a tag is 1 to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-')"),
    ("images.worker", "img@sha256:abc", "'img@sha256:abc' is not a valid image reference "
     "(a digest is 'sha256:' and 64 lowercase hex digits)"),
    ("images.worker", "img@md5:" + "a" * 32, "'img@md5:" + "a" * 32 + "' is not a valid image reference "
     "(a digest is 'sha256:' and 64 lowercase hex digits)"),
    ("images.worker", "a" * 256, "'" + "a" * 56 + "... is not a valid image reference "
     "(names are at most 255 characters)"),
    ("images.worker", "team//img", "'team//img' is not a valid image reference "
     "(a name has no empty component: no '//', no '/' at either end)"),
    ("images.worker", "team/img-", "'team/img-' is not a valid image reference "
     "(name components such as 'img-' are lowercase letters and digits, joined by '.', '_', '__' or '-')"),
    ("images.worker", "team/a___b", "'team/a___b' is not a valid image reference "
     "(name components such as 'a___b' are lowercase letters and digits, joined by '.', '_', '__' or '-')"),
    ("images.worker", "reg_istry.io/img", "'reg_istry.io/img' is not a valid image reference "
     "(the registry 'reg_istry.io' is not a host name or IPv4 address, with an optional :port)"),
    ("images.worker", "localhost:50a0/img", "'localhost:50a0/img' is not a valid image reference "
     "(the registry port of 'localhost:50a0' is not a number)"),
    ("images.worker", "[fe80::zz]:5000/img", "'[fe80::zz]:5000/img' is not a valid image reference "
     "(the registry '[fe80::zz]:5000' is not an IPv6 address in brackets)"),
    ("images.worker", "[::1/img", "'[::1/img' is not a valid image reference "
     "(the registry '[::1' opens a '[' it does not close)"),
    ("images.worker", "img[0]", "'img[0]' is not a valid image reference "
     "(brackets only enclose an IPv6 registry address, as in '[::1]:5000/image')"),
    ("images.worker", "0123456789abcdef" * 4, "'" + ("0123456789abcdef" * 4)[:56] + "... is not a valid image "
     "reference (64 hex digits are an image id, not a name)"),
    ("hosts.a.address", "$(touch /tmp/x)",
     "'$(touch /tmp/x)' is not a host name or an IP address (it contains '$')"),
    ("hosts.a.address", "-oProxyCommand=x", "'-oProxyCommand=x' is not a host name or an IP address "
     "(it starts with '-', which ssh would take for an option)"),
    ("hosts.a.address", "pi1.local:22",
     "'pi1.local:22' is not a host name or an IP address (the SSH port goes under `port`)"),
    ("hosts.a.address", "alice@pi1.local",
     "'alice@pi1.local' is not a host name or an IP address (the user name goes under `user`)"),
    ("hosts.a.address", "[fe80::1]",
     "'[fe80::1]' is not a host name or an IP address (write an IPv6 address without brackets)"),
    ("hosts.a.address", "fe80::1::2", "'fe80::1::2' is not a host name or an IP address "
     "(it is not a valid IPv6 address)"),
    ("hosts.a.address", "fe80::1%eth0;x", "'fe80::1%eth0;x' is not a host name or an IP address "
     "(the zone after '%' is a network interface name, not 'eth0;x')"),
    ("hosts.a.address", "10.0.0.256",
     "'10.0.0.256' is not a host name or an IP address (it is not a valid IPv4 address)"),
    ("hosts.a.address", "010.0.0.1",  # octal to some resolvers, decimal to others
     "'010.0.0.1' is not a host name or an IP address (it is not a valid IPv4 address)"),
    ("hosts.a.address", "-pi1", "'-pi1' is not a host name or an IP address "
     "(it starts with '-', which ssh would take for an option)"),
    ("hosts.a.address", "pi1-.local", "'pi1-.local' is not a host name or an IP address (host names are "
     "dot-separated labels of 1 to 63 letters, digits, '-' or '_', not starting or ending with '-')"),
    ("hosts.a.address", "pi1..local", "'pi1..local' is not a host name or an IP address (host names are "
     "dot-separated labels of 1 to 63 letters, digits, '-' or '_', not starting or ending with '-')"),
    ("hosts.a.address", "a" * 64 + ".local", "'" + "a" * 56 + "... is not a host name or an IP address "
     "(host names are dot-separated labels of 1 to 63 letters, digits, '-' or '_', not starting or ending "
     "with '-')"),
    ("hosts.a.address", ("a" * 63 + ".") * 4, "'" + "a" * 56 + "... is not a host name or an IP address "
     "(host names are at most 253 characters)"),
    ("roles.master.advertise_address", "10.0.0.1\nEVIL=1",
     "'10.0.0.1\\nEVIL=1' is not a host name or an IP address (it contains '\\n')"),
    ("roles.master.advertise_address", "",
     "'' is not a host name or an IP address (it is empty)"),
    ("hosts.a.user", "root;id", "'root;id' is not a valid user name (it contains ';')"),
    ("hosts.a.user", "-lroot",
     "'-lroot' is not a valid user name (it starts with '-', which ssh would take for an option)"),
    ("hosts.a.user", "a" * 33, "'" + "a" * 33 + "' is not a valid user name (user names are at most 32 characters)"),
    ("hosts.a.user", "1alice",
     "'1alice' is not a valid user name (a user name starts with a letter or '_', and only its last "
     "character may be '$')"),
    ("hosts.a.user", "a$b",
     "'a$b' is not a valid user name (a user name starts with a letter or '_', and only its last "
     "character may be '$')"),
    ("hosts.a.user", "", "'' is not a valid user name (it is empty; leave the key out for the default)"),
    ("project.app", "wordcount;id", "'wordcount;id' is not a Python module path (a module such as "
     "'wordcount' or 'proj.tasks', or module:attribute such as 'proj.tasks:app')"),
    ("project.app", "proj..tasks", "'proj..tasks' is not a Python module path (a module such as "
     "'wordcount' or 'proj.tasks', or module:attribute such as 'proj.tasks:app')"),
    ("project.app", "proj:", "'proj:' is not a Python module path (a module such as "
     "'wordcount' or 'proj.tasks', or module:attribute such as 'proj.tasks:app')"),
    ("project.app", "a" * 201, "string should have at most 200 characters"),
    ("roles.workers[0].queues", "-Qx", "value error, invalid queue name '-Qx'"),
    ("project.remote_path", "-rf", "'-rf' is not a usable folder path "
     "(it starts with '-', which a command would take for an option; write ./-name)"),
    ("project.remote_path", "/srv:/etc", "'/srv:/etc' is not a usable folder path "
     "(it contains ':', which separates the parts of a Docker bind mount)"),
    ("project.remote_path", "srv/../..",
     "'srv/../..' is not a folder of its own (use e.g. 'infra' or '/srv/infra')"),
    ("project.path", "proj:/etc", "'proj:/etc' is not a usable folder path "
     "(it contains ':', which separates the parts of a Docker bind mount)"),
    ("project.requirements", "../../etc/passwd", "'../../etc/passwd' is not a usable file path "
     "(it names a file of the project folder: no '..')"),
    ("project.requirements", "/etc/passwd", "'/etc/passwd' is not a usable file path "
     "(it names a file of the project folder, relative to it)"),
    ("project.requirements", "~/reqs.txt", "'~/reqs.txt' is not a usable file path "
     "(it names a file of the project folder, relative to it)"),
    ("hosts.a.key", "-i", "'-i' is not a usable key file path "
     "(it starts with '-', which a command would take for an option; write ./-name)"),
    ("images.wheelhouse", "--wheels", "'--wheels' is not a usable folder path "
     "(it starts with '-', which a command would take for an option; write ./-name)"),
    ("state_dir", "-state", "'-state' is not a usable folder path "
     "(it starts with '-', which a command would take for an option; write ./-name)"),
]


def case_id(key: str, value: str) -> str:
    return f"{key}={_clipped(value)}"


def _clipped(value: str) -> str:
    shown = ascii(value)
    return shown if len(shown) <= 30 else shown[:27] + "..."


@pytest.mark.parametrize(("key", "value", "message"), REFUSALS, ids=[case_id(k, v) for k, v, _ in REFUSALS])
def test_each_refusal_says_what_is_wrong(workdir, key, value, message):
    assert error_of(workdir, {key: value}) == f"{key}: {message} (cluster.yaml:{LINES[key]})"


# --------------------------------------------------------------------------- legitimate values

DIGEST = "sha256:" + "0123456789abcdef" * 4

LEGITIMATE = [
    ("images.worker", "localhost:5000/team/img:1.0"),
    ("images.worker", f"img@{DIGEST}"),
    ("images.worker", f"registry.example.com:443/team/sub/img:v1.2.3-rc.1@{DIGEST}"),
    ("images.worker", "ghcr.io/org/img_name__x--y.z:latest"),
    ("images.worker", "[::1]:5000/img:1"),
    ("images.worker", "[fe80::1]/img"),
    ("images.worker", "10.0.0.5:5000/img"),
    ("images.worker", "Registry.Example.com/img"),  # a registry host may have capitals, a repository not
    ("images.worker", "team/img"),
    ("images.worker", "img:_underscore.Tag-1"),
    ("images.worker", "a" * 255 + ":" + "t" * 128),  # the longest name and the longest tag
    ("images.base", "python:3.11-slim-bookworm"),
    ("images.base", "debian"),
    ("images.master", "localhost/img"),
    ("images.broker", "docker.io/library/rabbitmq:3-management"),
    ("hosts.a.address", "fe80::1"),
    ("hosts.a.address", "fe80::1%eth0"),
    ("hosts.a.address", "::1"),
    ("hosts.a.address", "2001:db8::42"),
    ("hosts.a.address", "192.168.1.20"),
    ("hosts.a.address", "pi1.local"),
    ("hosts.a.address", "gpu-box"),
    ("hosts.a.address", "lab_pi"),  # an alias from ~/.ssh/config
    ("hosts.a.address", "host.example.com."),
    ("hosts.a.address", "a" * 63 + ".example"),
    ("hosts.a.address", "xn--bcher-kva.example"),  # an internationalized name, as DNS spells it
    ("roles.master.advertise_address", "fe80::1"),
    ("roles.master.advertise_address", "pi1.local"),
    ("hosts.a.user", "deploy"),
    ("hosts.a.user", "ubuntu"),
    ("hosts.a.user", "_svc"),
    ("hosts.a.user", "Admin.User-2"),
    ("hosts.a.user", "host$"),
    ("hosts.a.user", "a" * 32),
    ("project.app", "wordcount"),
    ("project.app", "proj.tasks"),
    ("project.app", "proj.tasks:app"),
    ("project.app", "_private.mod:make.app"),
    ("roles.workers[0].queues", "high.priority"),
    ("roles.workers[0].queues", "celery:beat"),
    ("project.remote_path", "~/infra"),
    ("project.remote_path", "/srv/infra"),
    ("project.remote_path", "srv/my infra"),  # spaces and quotes are names like any other, quoted where sent
    ("project.remote_path", "team's $HOME/infra"),
    ("project.remote_path", "./-infra"),
    ("project.requirements", "requirements/prod.txt"),
    ("state_dir", "~/.infra-state"),
    ("state_dir", "état"),
]


@pytest.mark.parametrize(("key", "value"), LEGITIMATE, ids=[case_id(k, v) for k, v in LEGITIMATE])
def test_a_legitimate_value_still_passes(workdir, key, value):
    (workdir / "proj" / "requirements").mkdir()
    (workdir / "proj" / "requirements" / "prod.txt").write_text("")
    load(workdir, {key: value})


def test_a_project_folder_named_like_shell_text_is_a_folder_like_any_other(workdir):
    folder = "my project; $(v2) `x` 'y'"
    (workdir / folder).mkdir()
    assert load(workdir, {"project.path": folder}).project_dir.name == folder


# --------------------------------------------------------------------------- the command line


def test_the_old_image_name_injection_is_refused_before_anything_runs(workdir, monkeypatch):
    marker = workdir / "injected"
    monkeypatch.chdir(workdir)
    (workdir / "cluster.yaml").write_text(cluster_text({"images.worker": f"$(touch {marker})"}))
    for command in (["up", "-f", "cluster.yaml", "--dry-run"], ["check", "-f", "cluster.yaml"]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 2, result.output
        assert result.stderr.count("\n") == 1
        assert result.stderr.startswith("error: images.worker: '$(touch ")
        assert result.stderr.endswith(
            f" is not a valid image reference (it contains '$') (cluster.yaml:{LINES['images.worker']})\n")
        assert result.stdout == ""
    assert not marker.exists()


def test_an_env_file_line_smuggled_into_the_advertise_address_is_refused(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    (workdir / "cluster.yaml").write_text(
        cluster_text({"roles.master.advertise_address": "10.0.0.1\nCELERY_BROKER_URL=amqp://evil//"}))
    result = CliRunner().invoke(main, ["check", "-f", "cluster.yaml"])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: roles.master.advertise_address: '10.0.0.1\\nCELERY_BROKER_URL=")


@pytest.mark.parametrize("key", ["images.worker", "hosts.a.address", "hosts.a.user", "project.app"])
def test_a_huge_value_is_refused_at_once(workdir, key):
    started = time.perf_counter()
    assert_refused_at(error_of(workdir, {key: "a-" * 100_000}), key)
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize("value", ["master.lab", "10.0.0.300", "0.0.0.0:5671", "[::1]"])
def test_a_bind_address_must_be_an_ip_address(workdir, value):
    message = error_of(workdir, {"roles.master.bind_address": value})
    assert_refused_at(message, "roles.master.bind_address")
    assert "is not an IP address" in message


@pytest.mark.parametrize("value", ["0.0.0.0", "::", "fd00::5", "192.168.1.20"])
def test_ip_addresses_of_both_families_are_bind_addresses(workdir, value):
    assert load(workdir, {"roles.master.bind_address": value}).spec.roles.master.bind_address == value
