"""Flower: on the master host's loopback unless the cluster file publishes it, and then read-only."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.commands.engine import RunContainer
from infra.config import parse_cluster
from infra.errors import ConfigError
from infra.plans.addresses import flower_url, forwarded_flower_url
from tests.unit.test_plan import FIXTURES, make_cluster, specs_by_name

PUBLISHED = "    host: gpu-box\n    publish_flower: true\n  workers:"
MASTER = "    host: gpu-box\n  workers:"


def flower_of(cluster):
    return specs_by_name(cluster, "gpu-box")["lab-flower"]


def test_flower_is_published_on_the_master_loopback_alone_by_default(tmp_path):
    cluster = make_cluster(tmp_path)
    assert cluster.spec.roles.master.publish_flower is False
    flower = flower_of(cluster)
    assert flower.bind_address == "127.0.0.1"
    assert "--publish 127.0.0.1:5555:5555" in RunContainer(flower, ()).text()
    assert "--read_only=True" not in flower.command  # only this host reaches it: the operator's full Flower


def test_a_bind_address_moves_the_other_ports_but_not_an_unpublished_flower(tmp_path):
    cluster = make_cluster(tmp_path, lambda t: t.replace(MASTER, "    host: gpu-box\n    bind_address: 10.8.0.1\n"
                                                                 "  workers:"))
    assert flower_of(cluster).bind_address == "127.0.0.1"
    assert specs_by_name(cluster, "gpu-box")["lab-broker"].bind_address == "10.8.0.1"


def test_flower_published_on_purpose_listens_where_the_other_ports_do_and_is_read_only(tmp_path):
    everywhere = flower_of(make_cluster(tmp_path, lambda t: t.replace(MASTER, PUBLISHED)))
    assert everywhere.bind_address is None
    assert "--publish 5555:5555" in RunContainer(everywhere, ()).text()
    assert everywhere.command[-1] == "--read_only=True"  # on the command line: an old Flower refuses it, not ignores it

    on_vpn = flower_of(make_cluster(tmp_path, lambda t: t.replace(
        MASTER, "    host: gpu-box\n    bind_address: 10.8.0.1\n    publish_flower: true\n  workers:")))
    assert on_vpn.bind_address == "10.8.0.1" and "--read_only=True" in on_vpn.command


def test_publishing_flower_replaces_the_flower_container_and_nothing_else(tmp_path):
    loopback = specs_by_name_of(make_cluster(tmp_path))
    published = specs_by_name_of(make_cluster(tmp_path, lambda t: t.replace(MASTER, PUBLISHED)))
    assert [name for name in loopback if loopback[name] != published[name]] == ["lab-flower"]


def specs_by_name_of(cluster):
    return specs_by_name(cluster, "gpu-box")


def test_flower_url_names_the_master_loopback_unless_published_and_a_forward_port_when_given(tmp_path):
    cluster = make_cluster(tmp_path)
    assert flower_url(cluster, "192.168.1.20") == "https://127.0.0.1:5555"
    assert forwarded_flower_url(cluster, 40111) == "https://127.0.0.1:40111"
    published = make_cluster(tmp_path, lambda t: t.replace(MASTER, PUBLISHED))
    assert flower_url(published, "192.168.1.20") == "https://192.168.1.20:5555"
    plain = make_cluster(tmp_path, lambda t: t.replace("ports:\n  broker: 5671\n", "tls: false\nports:\n"))
    assert forwarded_flower_url(plain, 40111) == "http://127.0.0.1:40111"


@pytest.mark.parametrize("value, problem", [
    ("'true'", "Input should be a valid boolean"),
    ("1", "Input should be a valid boolean"),
    ("10.0.0.1", "Input should be a valid boolean"),
])
def test_a_publish_flower_that_is_not_true_or_false_is_one_line_naming_key_and_line(tmp_path, value, problem):
    (tmp_path / "wordcount").mkdir()
    text = (FIXTURES / "plan_cluster.yaml").read_text().replace(MASTER, f"    host: gpu-box\n"
                                                                        f"    publish_flower: {value}\n  workers:")
    line = next(n for n, row in enumerate(text.splitlines(), 1) if "publish_flower" in row)
    with pytest.raises(ConfigError) as caught:
        parse_cluster(text, filename="cluster.yaml", base_dir=tmp_path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("roles.master.publish_flower: ") and message.endswith(f"(cluster.yaml:{line})")
    assert problem.lower() in message.lower() or "true or false" in message


def test_the_example_file_documents_publish_flower_with_its_default():
    example = (Path(__file__).resolve().parents[2] / "config.example.yaml").read_text()
    assert "    publish_flower: false" in example


def test_status_says_where_flower_is_and_how_to_reach_it_when_not_published(tmp_path):
    import json as json_module

    from infra.ui.status import render_json, render_table
    from tests.unit.test_status import cluster as status_cluster_fixture
    from tests.unit.test_status import healthy_status

    cluster = status_cluster_fixture.__wrapped__(tmp_path)
    loopback = healthy_status(cluster, tmp_path, flower_url="https://127.0.0.1:5555", flower_published=False)
    assert "flower: https://127.0.0.1:5555 on the master host only (`infra flower` opens it here)" in (
        render_table(loopback))
    assert json_module.loads(render_json(loopback))["flower_published"] is False
    published = healthy_status(cluster, tmp_path, flower_url="https://10.0.0.1:5555")
    assert "flower: https://10.0.0.1:5555\n" in render_table(published)
    assert json_module.loads(render_json(published))["flower_published"] is True
