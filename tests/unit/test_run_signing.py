"""Signed runs: a worker runs an `infra.run_command` message only when the master signed it, for
that submission, not long ago; and a run's environment holds none of the worker's secrets.

The task itself is run in-process (Celery's eager `apply`) with a real command that would leave a
marker file: every hostile message is refused, fails the task with one line, and leaves no marker.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import sys
import time
from dataclasses import asdict

import pytest
from celery.backends.cache import CacheBackend

from infra.plans.volunteer import endpoint_files, endpoint_layout, endpoint_settings
from infra.runtime import driver as driver_module
from infra.runtime import signing, tasks
from infra.runtime.command import PASSED_NAMES, RunRequest, execute, run_environment
from infra.runtime.signing import RunRefused, new_payload, sign_message, verify_message
from infra.state.credentials import Secrets, load_or_create_secrets
from tests.unit.test_plan import IDENTITY, MASTER_ADDRESS, host_facts, make_cluster, plan_for
from tests.unit.test_sweep_runtime import FakeChannel

KEY, PUBLIC = signing.key_pair_pem()
OTHER_KEY, OTHER_PUBLIC = signing.key_pair_pem()
SUBMISSION = "sw1.r1.1"


def payload(marker: str = "/nonexistent/marker", **changes) -> dict:
    fields = {"sweep_id": "sw1", "run": "r1", "submission": SUBMISSION, "argv": ["sh", "-c", f"touch {marker}"],
              "cwd": "/", "env": {"INFRA_SWEEP": "demo"}, "timeout": None, "gpus_per_task": 0}
    return {**new_payload(fields, now=time.time()), **changes}


def signed(marker: str = "/nonexistent/marker", key: str = KEY, **changes) -> dict:
    return sign_message(payload(marker, **changes), key.encode())


def tampered(message: dict, edit) -> dict:
    """The same signature over a payload changed after signing."""
    inner = json.loads(message["payload"])
    edit(inner)
    return {**message, "payload": signing.canonical(inner)}


# --------------------------------------------------------------------------- signature and payload


def test_a_signed_message_is_accepted_and_gives_back_its_payload():
    message = signed()
    assert set(message) == {"payload", "signature"}
    got = verify_message(message, PUBLIC.encode(), submission=SUBMISSION, now=time.time())
    assert got["argv"] == ["sh", "-c", "touch /nonexistent/marker"] and got["env"] == {"INFRA_SWEEP": "demo"}
    assert got["expires"] - got["issued"] == signing.LIFETIME_SECONDS
    # The signed text is canonical: sorted keys, no spaces; the same payload gives the same text.
    assert message["payload"] == json.dumps(json.loads(message["payload"]), sort_keys=True, separators=(",", ":"))


def hostile_messages(marker: str) -> dict[str, tuple[dict, str]]:
    """Each a message a stranger could publish, and words of the reason it is refused for."""
    good = signed(marker)
    unsigned = {k: v for k, v in json.loads(good["payload"]).items()}
    old_expiry = payload(marker, issued=time.time() - 8 * 86400, expires=time.time() - 86400)
    return {
        "unsigned, as messages were before": (unsigned, "not a signed run"),
        "no signature": ({"payload": good["payload"]}, "not a signed run"),
        "signed by another key": (signed(marker, key=OTHER_KEY), "bad signature"),
        "one argv byte changed": (tampered(good, lambda p: p["argv"].__setitem__(2, p["argv"][2][:-1] + "X")),
                                  "bad signature"),
        "env changed": (tampered(good, lambda p: p["env"].update(LD_PRELOAD="/tmp/x.so")), "bad signature"),
        "cwd changed": (tampered(good, lambda p: p.update(cwd="/tmp")), "bad signature"),
        "expiry pushed back": (tampered(good, lambda p: p.update(expires=p["expires"] + 10**9)), "bad signature"),
        "expired": (sign_message(old_expiry, KEY.encode()), "expired"),
        "issued in the future": (signed(marker, issued=time.time() + 3600), "in the future"),
        "an extra field beside the signature": ({**good, "argv": ["sh", "-c", f"touch {marker}"]}, "not a signed run"),
        "an extra field inside, signed": (signed(marker, shell=True), "unknown fields"),
        "a field missing, signed": (sign_message({k: v for k, v in payload(marker).items() if k != "cwd"},
                                                 KEY.encode()), "lacks ['cwd']"),
        "argv as a string, signed": (signed(marker, argv=f"touch {marker}"), "wrong type"),
        "env values not strings, signed": (signed(marker, env={"A": 1}), "strings to strings"),
        "another task's signature": (signed(marker, task="infra.other"), "not infra.run_command"),
        "signed for another submission": (signed(marker, submission="sw1.r1.2"), "delivered as"),
        "a signature that is not base64": ({**good, "signature": "!!" + good["signature"]}, "not base64"),
        "a signature of the right size but zeros": ({**good, "signature": base64.b64encode(bytes(64)).decode()},
                                                    "bad signature"),
        "not an object": (["sh", "-c", f"touch {marker}"], "not a signed run"),
        "a field name that would forge a log line": ({"argv\nrefused: nothing": 1}, "\\n"),
    }


@pytest.mark.parametrize("case", list(hostile_messages("/m")))
def test_a_hostile_message_is_refused_with_one_line(case):
    message, reason = hostile_messages("/m")[case]
    with pytest.raises(RunRefused) as refused:
        verify_message(message, PUBLIC.encode(), submission=SUBMISSION, now=time.time())
    assert reason in str(refused.value) and "\n" not in str(refused.value)


def test_a_worker_whose_key_file_is_not_a_key_refuses_everything():
    with pytest.raises(RunRefused, match="does not parse"):
        verify_message(signed(), b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
                       submission=SUBMISSION, now=time.time())


# --------------------------------------------------------------------------- the task: refused means nothing runs


@pytest.fixture
def worker(monkeypatch, tmp_path):
    """The real task, eager, with this test's public key and a recorder instead of Redis."""
    (tmp_path / "run-signing.pub").write_text(PUBLIC)
    monkeypatch.setattr(signing, "VERIFY_KEY_PATHS", (str(tmp_path / "missing.pub"), str(tmp_path / "run-signing.pub")))
    executed: list[RunRequest] = []

    def run_for_real(request, channel, **kw):
        executed.append(request)
        return execute(request, FakeChannel(), host="h", worker="w@h", dev_dir="/nonexistent", lock_dir=str(tmp_path))

    monkeypatch.setattr(tasks, "execute", run_for_real)
    monkeypatch.setattr(tasks, "_redis", lambda: None)
    # Results in memory, whatever app an earlier test made current: a refusal is stored there.
    task = tasks.run_command._get_current_object()
    kept = task.backend
    task.backend = CacheBackend(app=task.app, backend="memory")
    yield executed
    task.backend = kept


@pytest.mark.parametrize("case", list(hostile_messages("/m")))
def test_the_worker_runs_nothing_for_a_hostile_message(worker, tmp_path, case):
    marker = tmp_path / "marker"
    message, reason = hostile_messages(str(marker))[case]
    result = tasks.run_command.apply(args=[message], task_id=SUBMISSION)
    assert result.state == "FAILURE" and isinstance(result.result, RunRefused)
    assert reason in str(result.result)
    assert worker == [] and not marker.exists()
    assert tasks.run_command.backend.get_task_meta(SUBMISSION)["status"] == "FAILURE"  # kept, though results are not


def test_the_worker_runs_a_signed_message_and_only_under_its_own_task_id(worker, tmp_path):
    marker = tmp_path / "marker"
    message = signed(str(marker))
    assert tasks.run_command.apply(args=[message], task_id="sw1.r9.1").state == "FAILURE"  # replayed elsewhere
    assert not marker.exists()
    result = tasks.run_command.apply(args=[message], task_id=SUBMISSION)
    assert result.state == "SUCCESS" and result.result["status"] == "ok"
    assert marker.exists() and [r.argv for r in worker] == [("sh", "-c", f"touch {marker}")]


def test_a_worker_without_the_public_key_refuses_and_says_how_to_get_it(worker, monkeypatch, tmp_path):
    monkeypatch.setattr(signing, "VERIFY_KEY_PATHS", (str(tmp_path / "none.pub"),))
    result = tasks.run_command.apply(args=[signed(str(tmp_path / "marker"))], task_id=SUBMISSION)
    assert result.state == "FAILURE" and "no key to check runs with" in str(result.result)
    assert "infra up" in str(result.result) and worker == []


def test_the_task_stores_a_refusal_although_it_ignores_results_and_logs_no_traceback():
    task = tasks.run_command
    assert task.ignore_result and task.store_errors_even_if_ignored and RunRefused in task.throws


# --------------------------------------------------------------------------- the driver signs


def test_the_driver_will_not_start_without_the_signing_key(tmp_path, monkeypatch, capsys):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"format": "infra.sweep-plan/1", "sweep_id": "s", "runs": [], "queue": "celery"}))
    monkeypatch.setattr(signing, "SIGNING_KEY_PATH", str(tmp_path / "run-signing.key"))
    assert driver_module.main([str(plan)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot sign its runs" in err and "run-signing.key" in err


# --------------------------------------------------------------------------- the run's environment

WORKER_ENV = {
    "PATH": "/opt/venv/bin:/usr/bin", "HOME": "/tmp", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TZ": "UTC",
    "VIRTUAL_ENV": "/opt/venv", "PYTHONPATH": "/project", "PYTHONDONTWRITEBYTECODE": "1", "HOSTNAME": "h2",
    "NVIDIA_VISIBLE_DEVICES": "all", "INFRA_CLUSTER": "lab",
    "CELERY_BROKER_URL": "amqps://worker:Wpw-secret@m:5671/lab",
    "CELERY_RESULT_BACKEND": "rediss://:Rpw-secret@m:6379/0?ssl_ca_certs=/run/infra/ca.crt",
    "INFRA_ENV_FILE": "/run/infra/celery.env", "INFRA_CA_FILE": "/run/infra/ca.crt",
    "AWS_SECRET_ACCESS_KEY": "aws-secret", "CUDA_VISIBLE_DEVICES": "0,1", "PYTHONUNBUFFERED": "0",
}
REQUEST = RunRequest("sw1", "r1", SUBMISSION, ("env",), "/", {"INFRA_SWEEP": "demo", "SEED": "7"})


def test_a_run_gets_the_allowed_part_of_the_workers_environment_the_signed_env_and_infras_values():
    assert run_environment(WORKER_ENV, REQUEST) == {
        "PATH": "/opt/venv/bin:/usr/bin", "HOME": "/tmp", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TZ": "UTC",
        "VIRTUAL_ENV": "/opt/venv", "PYTHONPATH": "/project", "PYTHONDONTWRITEBYTECODE": "1", "HOSTNAME": "h2",
        "NVIDIA_VISIBLE_DEVICES": "all", "INFRA_CLUSTER": "lab",
        "INFRA_SWEEP": "demo", "SEED": "7", "PYTHONUNBUFFERED": "1", "INFRA_RUN": "r1",
    }
    assert run_environment(WORKER_ENV, REQUEST, "2")["CUDA_VISIBLE_DEVICES"] == "2"


def test_no_allowed_name_is_a_url_a_password_or_a_path_of_secrets():
    assert not [name for name in PASSED_NAMES if name.startswith("CELERY") or "FILE" in name or "PASS" in name
                or "KEY" in name or "SECRET" in name or "TOKEN" in name or "URL" in name]


def test_a_run_that_prints_its_environment_shows_no_secret_of_its_worker(monkeypatch, tmp_path):
    for name, value in WORKER_ENV.items():
        monkeypatch.setenv(name, value)
    channel = FakeChannel()
    end = execute(RunRequest("sw1", "r1", SUBMISSION, (sys.executable, "-c", "import os; print(dict(os.environ))"),
                             str(tmp_path), {}), channel, host="h", worker="w@h", dev_dir="/nonexistent",
                  lock_dir=str(tmp_path))
    printed = "\n".join(channel.lines())
    assert end["status"] == "ok" and "'INFRA_RUN': 'r1'" in printed
    for secret in ("Wpw-secret", "Rpw-secret", "aws-secret", "/run/infra"):
        assert secret not in printed


# --------------------------------------------------------------------------- the key: made, kept, delivered


def test_the_signing_key_is_made_with_the_secrets_and_added_to_an_older_file(tmp_path):
    path = tmp_path / "secrets.json"
    old = {k: v for k, v in asdict(Secrets.generate()).items() if k != "run_signing_key"}
    path.write_text(json.dumps(old))
    os.chmod(path, 0o600)
    loaded = load_or_create_secrets(path)
    assert "BEGIN PRIVATE KEY" in loaded.run_signing_key and loaded.worker_password == old["worker_password"]
    assert load_or_create_secrets(path) == loaded and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "BEGIN PUBLIC KEY" in loaded.run_verify_key
    # The public half checks what the private half signed.
    message = sign_message(payload(), loaded.run_signing_key.encode())
    assert verify_message(message, loaded.run_verify_key.encode(), submission=SUBMISSION, now=time.time())


def test_only_the_master_role_gets_the_signing_key_and_every_worker_the_public_key(tmp_path):
    cluster = make_cluster(tmp_path)
    secrets = Secrets.generate()
    holders = []
    for host in ("gpu-box", "pi1"):
        plan = plan_for(cluster, host, host_facts(host), secrets=secrets)
        holders += [(host, f.role, f.name) for f in plan.secret_files if secrets.run_signing_key in f.content]
        workers = [f for f in plan.secret_files if f.role == "worker" and f.name == signing.VERIFY_KEY_FILE]
        assert [f.content for f in workers] == [secrets.run_verify_key]
        assert all(f.path.endswith("/.infra/worker/run-signing.pub") for f in workers)
    assert holders == [("gpu-box", "master", signing.SIGNING_KEY_FILE)]


def test_volunteers_are_handed_the_public_key_alone(tmp_path):
    cluster = make_cluster(tmp_path)
    secrets = Secrets.generate()
    layout = plan_for(cluster, "gpu-box").layout
    files = endpoint_files(cluster, endpoint_layout(layout), IDENTITY, endpoint_settings(cluster, MASTER_ADDRESS, 5443),
                           "#!/bin/sh\n", secrets.run_verify_key)
    assert {f.name: f.content for f in files}[signing.VERIFY_KEY_FILE] == secrets.run_verify_key
    body = [line for line in secrets.run_signing_key.splitlines() if not line.startswith("-----")]
    assert body and not any(line in f.content for f in files for line in body)



def test_volunteer_add_before_up_made_the_key_says_so_in_one_line(tmp_path):
    from infra.errors import StateError
    from infra.workflows.volunteer import _run_verify_key

    cluster = make_cluster(tmp_path)
    with pytest.raises(StateError, match=r"no run signing key in .*secrets.json: run `infra up` first"):
        _run_verify_key(cluster)
    load_or_create_secrets(cluster.secrets_path)
    assert "BEGIN PUBLIC KEY" in _run_verify_key(cluster)
