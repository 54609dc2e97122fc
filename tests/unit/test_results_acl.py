"""The result backend's users by role: the exact ACL rules, the URLs that name them, no default user,
and a volunteer that may write its tasks' results and sweep events and read nothing else.

The rules were found by running real Celery workers (a trusted one and one with a volunteer's
settings) against the results image's Redis 7.0 and reading `ACL LOG`; tests/e2e/test_volunteer_results.py
checks them on the testbed.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import asdict

from celery import Celery

from infra.commands import volunteer as volunteer_commands
from infra.plans import volunteer as volunteer_plan
from infra.plans.secret_files import celery_urls, results_admin_url, results_config, results_users
from infra.runtime.endpoint import worker_env
from infra.runtime.results import VolunteerLoader, WriteOnlyRedisBackend
from infra.state.credentials import Secrets, load_or_create_secrets
from tests.unit.test_plan import make_cluster

SECRETS = Secrets(broker_user="infra", broker_password="Brk-pw_0123456789abcdef", results_password="Adm-pw_0123456789abcdef",
                  flower_user="admin", flower_password="Flw-pw_0123456789", worker_user="worker",
                  worker_password="Wrk-pw_0123456789abcdef", results_master_password="RsM-pw_0123456789abcdef",
                  results_worker_password="RsW-pw_0123456789abcdef", results_flower_password="RsF-pw_0123456789abcdef")
CLUSTER_KEYS = ["resetkeys", "~celery-task-meta-*", "~celery-taskset-meta-*", "~chord-unlock-*", "~infra:sweep:*",
                "resetchannels", "&celery-task-meta-*"]
DATA = ["-@all", "+@read", "+@write", "+@keyspace", "+@connection", "+@transaction", "+@pubsub", "+@scripting",
        "-@admin", "-@dangerous", "-function"]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- the rules, pinned


def test_a_volunteer_writes_its_results_and_sweep_events_and_reads_nothing_else():
    assert volunteer_plan.results_acl_rules("ab" * 32) == [
        "on", "#" + "ab" * 32,
        "%W~celery-task-meta-*", "&celery-task-meta-*",
        "-@all", "+hello", "+auth", "+ping", "+select", "+client|setname",
        "+set", "+setex", "+multi", "+exec", "+discard", "+publish",
        "(%W~infra:sweep:*:events +rpush +expire)",
        "(%R~infra:sweep:*:cancel %R~infra:sweep:*:alive %R~infra:sweep:*:stop:* +mget)",
        "(~infra:sweep:*:done +sismember +sadd +expire)",
        "(%W~infra:sweep:*:artifact:* +set)",
    ]


def test_a_volunteer_has_no_read_no_listing_no_delete_no_subscribe_no_script_and_no_administration():
    rules = volunteer_plan.results_acl_rules("ab" * 32)
    words = " ".join(rules).replace("(", " ").replace(")", " ").split()
    granted = {w[1:] for w in words if w.startswith("+")}
    assert not granted & {"get", "scan", "keys", "del", "unlink", "subscribe", "psubscribe", "eval",
                          "evalsha", "acl", "config", "flushall", "flushdb", "debug", "shutdown", "lrange", "smembers"}
    assert not any(w.startswith("+@") for w in words)  # commands one by one, no category
    # Keys: the results write-only; only the sweep's flags readable, its events write-only.
    assert [w for w in words if "~" in w] == ["%W~celery-task-meta-*", "%W~infra:sweep:*:events",
                                              "%R~infra:sweep:*:cancel", "%R~infra:sweep:*:alive",
                                              "%R~infra:sweep:*:stop:*", "~infra:sweep:*:done",
                                              "%W~infra:sweep:*:artifact:*"]


def test_a_volunteer_writes_its_runs_file_chunks_with_set_alone_and_can_read_none():
    from infra.runtime import protocol

    rules = volunteer_plan.results_acl_rules("ab" * 32)
    selector = next(rule for rule in rules if "artifact" in rule)
    assert selector == "(%W~infra:sweep:*:artifact:* +set)"
    # The worker's chunk keys match the write-only pattern, and hold the unguessable submission id.
    assert protocol.artifact_chunk_key("abc", "abc.run.1.n0nce", 3) == "infra:sweep:abc:artifact:abc.run.1.n0nce:3"
    assert [rule for rule in rules if "artifact" in rule] == [selector]
    assert [word for word in selector.strip("()").split() if word.startswith("+")] == ["+set"]


def test_a_volunteer_reads_the_stop_flags_of_early_stopping_in_the_one_mget_it_makes_and_cannot_set_them():
    from infra.runtime import protocol

    rules = volunteer_plan.results_acl_rules("ab" * 32)
    selector = next(rule for rule in rules if "stop" in rule)
    assert selector == "(%R~infra:sweep:*:cancel %R~infra:sweep:*:alive %R~infra:sweep:*:stop:* +mget)"
    # The key the driver sets matches the read-only pattern; nothing grants a write command on it.
    assert protocol.stop_key("abc", "abc.run.1") == "infra:sweep:abc:stop:abc.run.1"
    # No other rule names the flag, and the selector that does grants MGET alone.
    assert [rule for rule in rules if "stop" in rule] == [selector]
    assert [word for word in selector.strip("()").split() if word.startswith("+")] == ["+mget"]


def test_the_trusted_roles_have_the_clusters_keys_with_data_commands_and_flower_reads_only():
    users = results_users(SECRETS)
    assert list(users) == ["admin", "master", "worker", "flower"]
    assert users["admin"] == ("Adm-pw_0123456789abcdef", ["allkeys", "allchannels", "+@all"])
    assert users["master"] == ("RsM-pw_0123456789abcdef", CLUSTER_KEYS + DATA)
    assert users["worker"] == ("RsW-pw_0123456789abcdef", CLUSTER_KEYS + DATA)
    assert users["flower"] == ("RsF-pw_0123456789abcdef", [
        "resetkeys", "%R~celery-task-meta-*", "resetchannels", "&celery-task-meta-*",
        "-@all", "+@connection", "+@read", "+subscribe", "+unsubscribe", "-@admin", "-@dangerous"])


def test_redis_conf_turns_default_off_and_holds_each_role_as_a_password_hash(tmp_path):
    conf = results_config(make_cluster(tmp_path), SECRETS)
    user_lines = [line for line in conf.splitlines() if line.startswith("user ")]
    assert user_lines == [
        "user default off resetpass resetkeys resetchannels -@all",
        f"user admin on #{sha('Adm-pw_0123456789abcdef')} allkeys allchannels +@all",
        f"user master on #{sha('RsM-pw_0123456789abcdef')} " + " ".join(CLUSTER_KEYS + DATA),
        f"user worker on #{sha('RsW-pw_0123456789abcdef')} " + " ".join(CLUSTER_KEYS + DATA),
        f"user flower on #{sha('RsF-pw_0123456789abcdef')} resetkeys %R~celery-task-meta-* resetchannels "
        "&celery-task-meta-* -@all +@connection +@read +subscribe +unsubscribe -@admin -@dangerous",
    ]
    assert "requirepass" not in conf
    assert not any(password in conf for password in SECRETS.values())


def test_redis_conf_lets_a_client_collecting_a_large_group_keep_its_pub_sub_link(tmp_path):
    # Redis's default pub/sub limit (32 MB, or 8 MB for 60 s) cut the client of a 40,000-task group
    # while it was still sending: benchmarks/large_job.py. No soft limit; the hard one bounds memory.
    conf = results_config(make_cluster(tmp_path), SECRETS)
    limits = [line for line in conf.splitlines() if line.startswith("client-output-buffer-limit")]
    assert limits == ["client-output-buffer-limit pubsub 256mb 0 0"]


# --------------------------------------------------------------------------- the URLs name their user


def test_each_role_logs_in_to_redis_with_its_own_user_and_password(tmp_path):
    cluster = make_cluster(tmp_path)
    for role, password in (("master", "RsM"), ("flower", "RsF"), ("worker", "RsW")):
        internal = celery_urls(cluster, SECRETS, "", internal=True, role=role)["CELERY_RESULT_BACKEND"]
        assert internal == f"redis://{role}:{password}-pw_0123456789abcdef@results:6379/0"
    published = celery_urls(cluster, SECRETS, "192.168.1.20", internal=False)["CELERY_RESULT_BACKEND"]
    assert published.startswith("rediss://worker:RsW-pw_0123456789abcdef@192.168.1.20:6379/0?ssl_cert_reqs=required")
    assert results_admin_url(SECRETS) == "redis://admin:Adm-pw_0123456789abcdef@127.0.0.1:6379/0\n"


def test_infra_sets_volunteers_users_from_the_results_container_with_no_password_on_its_command_line():
    rules = volunteer_plan.results_acl_rules(sha("vol-pw"))
    op = volunteer_commands.results_users("lab", "/run/infra/admin.url", {"volunteer-alice": rules}, ["volunteer-bob"])
    assert op.container == "lab-results"
    assert op.command[:2] == ("python", "-c") and op.command[3:] == (
        "/run/infra/admin.url", json.dumps({"volunteer-alice": rules}), '["volunteer-bob"]')
    line = shlex.join(op.argv())
    assert "vol-pw" not in line and sha("vol-pw") in line
    assert not any(password in line for password in SECRETS.values())


def test_a_volunteers_worker_uses_the_write_only_backend_through_its_loader():
    settings = {"cluster": "lab", "address": "192.168.1.20", "broker_port": 5671, "results_port": 6379, "vhost": "lab"}
    env = dict(line.split("=", 1) for line in worker_env(settings, "alice", "broker-pw", "results-pw").splitlines())
    assert env["CELERY_LOADER"] == "infra_runtime.results:VolunteerLoader"
    assert env["CELERY_RESULT_BACKEND"].startswith("rediss://volunteer-alice:results-pw@")
    app = Celery(backend="rediss://volunteer-alice:pw@192.168.1.20:6379/0?ssl_cert_reqs=required",
                 loader=VolunteerLoader)
    assert isinstance(app.backend, WriteOnlyRedisBackend)
    assert not isinstance(Celery(backend="redis://worker:pw@h:6379/0").backend, WriteOnlyRedisBackend)


class RecordingRedis:
    """Just what Celery's Redis backend calls to store a result, recorded."""

    def __init__(self):
        self.calls: list[str] = []

    def get(self, key):
        self.calls.append("get")
        return None

    def pipeline(self, *args, **kwargs):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __getattr__(self, name):  # setex, set, publish, execute
        return lambda *args, **kwargs: self.calls.append(name)


def test_the_write_only_backend_stores_a_result_without_reading_any_key():
    app = Celery(backend="redis://volunteer-alice:pw@h:6379/0", loader=VolunteerLoader)
    app.conf.result_expires = 3600
    backend = app.backend
    backend.__dict__["client"] = client = RecordingRedis()
    backend.store_result("0b0e7a2e-8c41-4f1e-9d7a-1f4b2c9e0d11", {"words": 2}, "SUCCESS")
    assert client.calls == ["setex", "publish", "execute"]
    # Celery's own backend reads first: the read a volunteer's user is refused.
    plain = Celery(backend="redis://worker:pw@h:6379/0").backend
    plain.__dict__["client"] = recorded = RecordingRedis()
    plain.store_result("0b0e7a2e-8c41-4f1e-9d7a-1f4b2c9e0d11", {"words": 2}, "SUCCESS")
    assert recorded.calls[0] == "get"


# --------------------------------------------------------------------------- older secrets files


def test_a_secrets_file_from_before_redis_users_by_role_gets_their_passwords_and_keeps_the_rest(tmp_path):
    path = tmp_path / "secrets.json"
    old = {key: value for key, value in asdict(SECRETS).items() if not key.startswith("results_") or
           key == "results_password"}
    path.write_text(json.dumps(old))
    path.chmod(0o600)
    loaded = load_or_create_secrets(path)
    assert loaded.results_password == "Adm-pw_0123456789abcdef" and loaded.worker_password == SECRETS.worker_password
    new = [loaded.results_master_password, loaded.results_worker_password, loaded.results_flower_password]
    assert len(set(new)) == 3 and all(len(p) >= 24 for p in new)
    assert load_or_create_secrets(path) == loaded  # written once, kept
