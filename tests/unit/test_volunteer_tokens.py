"""A join token is exchanged once for random credentials; nothing follows from the token alone.
The node name is infra's; `status` tells the cluster's workers from volunteers and strangers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import os
import stat
import tarfile
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from infra.config import parse_cluster
from infra.facts.celery import CeleryView
from infra.facts.status import mark_workers, parse_node_users, worker_kind
from infra.runtime import endpoint
from infra.runtime.endpoint import SECRETS, exchange, refusal, seal, secret_text, unseal
from infra.state.volunteers import (
    VolunteerStore,
    expired_unused,
    learn_exchanges,
    make_volunteer,
    token_table_json,
)
from infra.ui.reporter import Reporter
from infra.ui.status import render_table, to_json
from infra.workflows import volunteer as volunteer_workflow
from tests.unit.recording import FakeHost
from tests.unit.test_status import NODES, cluster, healthy_status  # noqa: F401 (cluster: the fixture)
from tests.unit.test_volunteers_endpoint import served  # noqa: F401 (the fixture)
from tests.unit.test_volunteers_golden import CLUSTER, MasterHost, master_facts

NOW = datetime(2025, 1, 31, 12, 0, tzinfo=timezone.utc)
TOKEN = "A" * 20 + "b_-" + "c" * 20
LATER = NOW.timestamp() + 60


def old_derived_secret(token: str, purpose: str) -> str:
    """How infra derived a volunteer's passwords from its token before: what a leaked line gave away."""
    mac = hmac.new(token.encode(), f"infra-volunteer:{purpose}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def table_entry(volunteer) -> dict:
    return json.loads(token_table_json([volunteer]))["tokens"][volunteer.token_sha256]


# --------------------------------------------------------------------------- the exchange's decisions


def test_a_fresh_token_is_exchanged_for_exactly_the_credentials_add_made():
    made = make_volunteer("lab", "alice", TOKEN, NOW, timedelta(hours=1))
    entry = table_entry(made.volunteer)
    assert refusal(entry, None, LATER) is None
    assert exchange(entry, TOKEN) == {"broker": made.broker_password, "results": made.results_password,
                                      "update-key": made.update_key}


@pytest.mark.parametrize("case, reason", [
    ("spent", "spent"), ("expired", "expired"), ("revoked", "revoked"), ("unknown", "unknown"),
    ("revoked and spent", "revoked"), ("spent and expired", "spent"), ("no sealed secrets", "unknown"),
])
def test_a_token_that_is_spent_expired_revoked_or_unknown_gets_nothing_and_says_why(case, reason):
    volunteer = make_volunteer("lab", "alice", TOKEN, NOW, timedelta(hours=1)).volunteer
    entry, spent, now = table_entry(volunteer), None, LATER
    if "spent" in case:
        spent = {"name": "alice", "at": "2025-01-31T12:01:00Z"}
    if "expired" in case:
        now = NOW.timestamp() + 3601
    if "revoked" in case:
        volunteer.revoked = "2025-01-31T12:30:00Z"
        entry = table_entry(volunteer)
    if case == "unknown":
        entry = None
    if case == "no sealed secrets":
        entry.pop("sealed")
    assert refusal(entry, spent, now) == reason


def test_a_token_that_joined_or_expired_leaves_no_sealed_secret_in_the_table():
    volunteer = make_volunteer("lab", "alice", TOKEN, NOW, timedelta(hours=1)).volunteer
    volunteer.joined = "2025-01-31T12:01:00Z"
    assert set(table_entry(volunteer)) == {"name", "expires"}
    volunteer.revoked = "2025-01-31T13:00:00Z"
    assert table_entry(volunteer) == {"name": "alice", "revoked": True}


# --------------------------------------------------------------------------- nothing follows from the token


def test_the_stored_table_and_the_store_hold_no_credential_in_clear(tmp_path):
    made = make_volunteer("lab", "alice", TOKEN, NOW, timedelta(hours=1))
    store = VolunteerStore(tmp_path / "volunteers.json")
    store.volunteers["alice"] = made.volunteer
    store.save()
    stored = store.path.read_text() + token_table_json([made.volunteer])
    for secret in (made.broker_password, made.results_password, made.update_key, TOKEN):
        raw = base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4))
        for spelling in (secret, base64.urlsafe_b64encode(raw).decode(), base64.b64encode(raw).decode(), raw.hex()):
            assert spelling not in stored


def test_two_adds_with_the_same_token_bytes_give_different_passwords():
    one = make_volunteer("lab", "alice", TOKEN, NOW, timedelta(hours=1))
    two = make_volunteer("lab", "alice", TOKEN, NOW, timedelta(hours=1))
    for purpose in ("broker_password", "results_password", "update_key"):
        assert getattr(one, purpose) != getattr(two, purpose)
    assert one.volunteer.sealed != two.volunteer.sealed and one.volunteer.salt != two.volunteer.salt


def test_no_credential_is_what_the_token_derived_before():
    made = make_volunteer("lab", "alice", TOKEN, NOW, timedelta(hours=1))
    derived = {old_derived_secret(TOKEN, purpose) for purpose in ("broker", "results", "update-key")}
    assert derived.isdisjoint({made.broker_password, made.results_password, made.update_key})


def test_a_sealed_secret_opens_with_its_token_salt_and_purpose_only():
    secret = os.urandom(32)
    sealed = seal(TOKEN, "salt", "broker", secret)
    assert unseal(TOKEN, "salt", "broker", sealed) == secret
    assert unseal(TOKEN[::-1], "salt", "broker", sealed) != secret
    assert unseal(TOKEN, "other", "broker", sealed) != secret
    assert unseal(TOKEN, "salt", "results", sealed) != secret
    assert len(secret_text(secret)) == 43 and endpoint.TOKEN_PATTERN.fullmatch(secret_text(secret))
    with pytest.raises(ValueError):
        seal(TOKEN, "salt", "broker", b"short")


# --------------------------------------------------------------------------- the endpoint, served


def test_the_bundle_is_served_once_then_every_token_route_is_refused_as_spent(served):  # noqa: F811
    token = "T" * 43
    assert served["get"](f"/v1/{token}/bundle")[0] == 200
    for path in (f"/v1/{token}/bundle", f"/join/{token}", f"/v1/{token}/settings", f"/v1/{token}/image"):
        status, body, headers = served["get"](path)
        assert (status, body, headers["X-Infra-Refused"]) == (403, b"", "spent"), path
    spent_file = served["state"] / "spent.json"
    assert stat.S_IMODE(os.stat(spent_file).st_mode) == 0o600
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert json.loads(spent_file.read_text())["spent"][digest]["name"] == "alice"
    assert token not in spent_file.read_text()
    # The update key it was given keeps working: a joined worker needs no token any more.
    key = {"Authorization": f"Bearer {served['alice'].update_key}"}
    assert served["get"]("/v1/project/digest", key)[0] == 200


def test_many_requests_at_once_with_one_token_get_one_bundle(served):  # noqa: F811
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: served["get"](f"/v1/{'T' * 43}/bundle")[0], range(8)))
    assert sorted(statuses) == [200] + [403] * 7


def test_a_new_endpoint_on_the_same_state_still_refuses_a_spent_token(tmp_path):
    state = tmp_path / "spent.json"
    first = endpoint.SpentTokens(str(state))
    assert first.spend("d" * 64, "alice", LATER) and not first.spend("d" * 64, "alice", LATER)
    assert endpoint.SpentTokens(str(state)).get("d" * 64)["name"] == "alice"
    assert not endpoint.SpentTokens(str(state)).spend("d" * 64, "alice", LATER)


def test_an_unreadable_spent_file_exchanges_no_token_rather_than_one_twice(tmp_path):
    state = tmp_path / "spent.json"
    state.write_text("{not json")
    spent = endpoint.SpentTokens(str(state))
    assert not spent.spend("d" * 64, "alice", LATER)
    assert refusal({"name": "alice", "expires": LATER + 60, "sealed": {}}, spent.get("d" * 64), LATER) == "spent"


def test_the_refusal_log_names_whose_token_was_run_again_never_the_token(served):  # noqa: F811
    token = "T" * 43
    served["get"](f"/v1/{token}/bundle")
    served["capsys"].readouterr()
    served["get"](f"/join/{token}")
    out = served["capsys"].readouterr().out
    event = json.loads(out.splitlines()[-1])
    assert (event["volunteer"], event["status"], event["reason"], event["claimed"]) == (None, 403, "spent", "alice")
    assert token not in out


# --------------------------------------------------------------------------- what infra learns and removes


def test_infra_learns_who_joined_from_the_spent_file_and_forgets_their_sealed_secrets(tmp_path):
    store = VolunteerStore(tmp_path / "v.json")
    for name, token in (("alice", TOKEN), ("bob", TOKEN[::-1])):
        store.volunteers[name] = make_volunteer("lab", name, token, NOW, timedelta(hours=1)).volunteer
    spent = json.dumps({"spent": {store.volunteers["alice"].token_sha256: {"name": "alice", "at": "2025-01-31T12:05:00Z"}}})
    assert learn_exchanges(store, spent) == ["alice"]
    assert store.volunteers["alice"].joined == "2025-01-31T12:05:00Z" and store.volunteers["alice"].sealed is None
    assert store.volunteers["bob"].joined is None and store.volunteers["bob"].sealed
    assert store.volunteers["alice"].state(NOW) == "joined"
    assert learn_exchanges(store, spent) == [] and learn_exchanges(store, "") == [] and learn_exchanges(store, "{x") == []


def test_the_users_of_a_token_that_expired_unused_are_to_go_after_a_grace_for_clocks():
    store = VolunteerStore(None)
    for name, hours in (("unused", 1), ("joined", 1), ("fresh", 48)):
        store.volunteers[name] = make_volunteer("lab", name, TOKEN, NOW, timedelta(hours=hours)).volunteer
    store.volunteers["joined"].joined = "2025-01-31T12:05:00Z"
    grace = timedelta(minutes=5)
    assert expired_unused(store, NOW + timedelta(hours=1, minutes=4), grace) == []
    assert expired_unused(store, NOW + timedelta(hours=2), grace) == ["unused"]
    store.volunteers["unused"].revoked, store.volunteers["unused"].revoked_because = "x", "token expired unused"
    assert expired_unused(store, NOW + timedelta(hours=2), grace) == []
    assert store.volunteers["unused"].state(NOW) == "revoked: token expired unused"


# --------------------------------------------------------------------------- the node name


def test_infra_gives_each_volunteer_a_whole_node_name_under_its_own_prefix():
    names = {make_volunteer("lab", "alice", TOKEN, NOW, timedelta(hours=1)).volunteer.node for _ in range(20)}
    assert len(names) > 1  # a random suffix
    for node in names:
        prefix, _, rest = node.partition(".")
        suffix, _, host = rest.partition("@")
        assert prefix == "lab-volunteer-alice" and len(suffix) == 6 and host == "volunteer-alice"
    bob = make_volunteer("lab", "alice-b", TOKEN, NOW, timedelta(hours=1)).volunteer.node
    assert not bob.startswith("lab-volunteer-alice.")  # another volunteer's prefix is never a prefix of alice's


def test_the_bundles_celery_env_carries_the_exchanged_passwords_and_no_token(served):  # noqa: F811
    status, body, _ = served["get"](f"/v1/{'T' * 43}/bundle")
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        env = tar.extractfile("celery.env").read().decode()
    alice = served["alice"]
    assert alice.broker_password in env and alice.results_password in env
    assert old_derived_secret("T" * 43, "broker") not in env and "T" * 43 not in env



# --------------------------------------------------------------------------- status: who a worker is


NODE_USERS = (Path(__file__).parent / "fixtures" / "rabbitmqctl_node_users.txt").read_text()
ALICE_NODE = "livem-volunteer-alice.0a1b2c@volunteer-alice"
VOLUNTEERS = {"livem-volunteer-alice.": "alice"}


def test_the_broker_tells_which_user_holds_each_nodes_pidbox_queue():
    assert parse_node_users(NODE_USERS) == {
        "livem-worker-h2-1@h2": ["worker"], "livem-worker-h3-1@h3": ["volunteer-mallory"],
        ALICE_NODE: ["volunteer-alice"], "livem-volunteer-alice.ffffff@volunteer-alice": ["volunteer-mallory"]}
    with pytest.raises(ValueError):
        parse_node_users("Error: unable to perform an operation on node 'rabbit@broker'")


@pytest.mark.parametrize("node, expected, users, kind", [
    ("livem-worker-h2-1@h2", True, ["worker"], ("cluster", None)),
    ("livem-worker-h2-1@h2", True, None, ("cluster", None)),  # the broker not asked: the file's name stands
    ("livem-worker-h3-1@h3", True, ["volunteer-mallory"], ("stranger", None)),  # a volunteer under a trusted name
    (ALICE_NODE, False, ["volunteer-alice"], ("volunteer", "alice")),
    (ALICE_NODE, False, None, ("volunteer", "alice")),
    ("livem-volunteer-alice.ffffff@volunteer-alice", False, ["volunteer-mallory"], ("stranger", None)),
    ("livem-worker-h2-9@h2", False, ["worker"], ("stranger", None)),  # not in the file, not a volunteer's
    ("livem-volunteer-bob.000000@volunteer-bob", False, None, ("stranger", None)),  # no such volunteer (any more)
    # Answered a ping, yet nobody holds its pidbox queue: another node wrote its name in a reply.
    ("livem-worker-h2-1@h2", True, [], ("stranger", None)),
    (ALICE_NODE, False, [], ("stranger", None)),
])
def test_a_worker_is_the_clusters_a_volunteers_or_a_strangers(node, expected, users, kind):
    assert worker_kind(node, expected, VOLUNTEERS, users) == kind


def test_status_shows_a_forged_trusted_name_as_a_stranger_and_counts_it_nowhere(cluster, tmp_path):  # noqa: F811
    online = [*NODES, ALICE_NODE, "livem-worker-h2-9@h2"]
    status = healthy_status(cluster, tmp_path, celery=CeleryView(active={n: 0 for n in online},
                                                                 processed={n: 1 for n in online}))
    assert status.ok
    # local-1 answered the ping, but nobody consumes its pidbox queue: another node replied in its name.
    users = {**parse_node_users(NODE_USERS), "livem-worker-h2-2@h2": ["worker"], "livem-worker-h2-9@h2": ["worker"]}
    mark_workers(status, VOLUNTEERS, users)
    kinds = {w.name: (w.kind, w.volunteer) for w in status.workers}
    assert kinds["livem-worker-h2-1@h2"] == kinds["livem-worker-h2-2@h2"] == ("cluster", None)
    assert kinds["livem-worker-h3-1@h3"] == kinds["livem-worker-local-1@local"] == ("stranger", None)
    assert kinds[ALICE_NODE] == ("volunteer", "alice")
    assert kinds["livem-worker-h2-9@h2"] == ("stranger", None)
    assert status.problems == [
        "worker livem-worker-h3-1@h3: a stranger answers under this name of the cluster file "
        "(it logs in to the broker as volunteer-mallory)",
        "worker livem-worker-local-1@local: a stranger answers under this name of the cluster file "
        "(nobody holds this worker's control queue: another node answers in its name)"]
    assert status.exit_code == 3
    text = render_table(status)
    assert text.splitlines()[0].endswith("2/4 workers online")  # the forged ones are not counted
    row = next(line for line in text.splitlines() if line.strip().startswith("livem-worker-h3-1@h3"))
    assert row.split()[-1] == "STRANGER"
    row = next(line for line in text.splitlines() if line.strip().startswith(ALICE_NODE))
    assert row.split()[-2:] == ["volunteer", "alice"]
    shown = {w["name"]: w for w in to_json(status)["workers"]}
    assert shown["livem-worker-h3-1@h3"]["kind"] == "stranger"
    assert shown["livem-worker-h3-1@h3"]["broker_users"] == ["volunteer-mallory"]
    assert shown[ALICE_NODE]["kind"] == "volunteer" and shown[ALICE_NODE]["volunteer"] == "alice"


# --------------------------------------------------------------------------- golden: settling the tokens on the master


def test_settling_learns_who_joined_and_removes_only_the_users_of_a_token_that_expired_unused(tmp_path):
    """Facts in (the store, the endpoint's spent.json on the master) → exactly these commands out."""
    (tmp_path / "proj").mkdir()
    lab = parse_cluster(CLUSTER, filename="cluster.yaml", base_dir=tmp_path)
    now = datetime.now(timezone.utc)
    store = VolunteerStore(tmp_path / "volunteers.json")
    for name, added, lifetime in (("alice", now - timedelta(hours=2), timedelta(hours=1)),   # expired, but joined
                                  ("bob", now - timedelta(hours=2), timedelta(hours=1)),     # expired unused
                                  ("carol", now - timedelta(minutes=61), timedelta(hours=1)),  # expired < 5 min ago
                                  ("dave", now, timedelta(hours=1))):                        # valid
        store.volunteers[name] = make_volunteer("lab", name, TOKEN + name[0], added, lifetime).volunteer
    master = MasterHost(lab, FakeHost())
    spent_file = "/home/alice/infra/lab/.infra/join-state/spent.json"
    master.files[spent_file] = json.dumps({"spent": {store.volunteers["alice"].token_sha256: {
        "name": "alice", "at": "2025-01-31T12:05:00Z"}}}).encode()
    said = io.StringIO()
    gone = volunteer_workflow.settle_tokens(lab, master, master_facts(), store, Reporter(stream=said))
    assert gone == ["bob"]
    assert master.log[0] == f"sh -c 'cat {spent_file} 2>/dev/null || true' [600 s]"
    assert master.log[1].startswith("sh -c 'umask 077 && mkdir -p /home/alice/infra/lab/.infra/join ")  # the table
    assert master.log[2:5] == [
        "docker exec lab-broker rabbitmqctl delete_user volunteer-bob",
        "docker exec lab-broker rabbitmqctl close_all_user_connections volunteer-bob 'revoked by the cluster'",
        "docker exec lab-results python -c PROBE /run/infra/admin.url " + master.log[4].split("admin.url ", 1)[1]]
    want, drop = master.log[4].split("admin.url ", 1)[1].rsplit(" ", 1)
    assert json.loads(drop.strip("'")) == ["volunteer-bob"]
    # as the Redis administrator, each volunteer still allowed gets its user set again, and
    # the user of the token that expired unused is among none of them
    users = json.loads(want.strip("'"))
    assert sorted(users) == ["volunteer-alice", "volunteer-carol", "volunteer-dave"]
    assert all(rules[0] == "on" and "-@all" in rules for rules in users.values())
    assert len(master.log) == 5
    table = json.loads(master.files["/home/alice/infra/lab/.infra/join/volunteers.json"])["tokens"]
    by_name = {entry["name"]: entry for entry in table.values()}
    assert by_name["bob"] == {"name": "bob", "revoked": True}
    assert "sealed" not in by_name["alice"] and by_name["carol"]["sealed"] and by_name["dave"]["sealed"]
    assert store.volunteers["alice"].state(now) == "joined" and store.volunteers["alice"].sealed is None
    assert store.volunteers["bob"].state(now) == "revoked: token expired unused"
    assert "volunteer(s) bob expired unused" in said.getvalue()
