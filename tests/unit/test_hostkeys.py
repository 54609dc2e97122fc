"""Host keys as OpenSSH checks them: fingerprints, file names, the rule from ~/.ssh/config, learning."""

from __future__ import annotations

import base64
import hashlib

import paramiko
import pytest

from infra.transport import hostkeys
from infra.transport.hostkeys import ACCEPT_NEW, STRICT, UnknownHostKeyError

KEY = paramiko.Ed25519Key(data=base64.b64decode(
    "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"))


def test_a_fingerprint_reads_as_ssh_keygen_prints_it():
    expected = base64.b64encode(hashlib.sha256(KEY.asbytes()).digest()).decode().rstrip("=")
    assert hostkeys.fingerprint(KEY) == f"SHA256:{expected}"
    assert "=" not in hostkeys.fingerprint(KEY)


@pytest.mark.parametrize(("value", "rule"), [
    ("yes", STRICT), ("ask", STRICT), ("accept-new", ACCEPT_NEW), ("no", ACCEPT_NEW), ("off", ACCEPT_NEW),
    ("Yes", STRICT), (None, None)])
def test_strict_host_key_checking_of_the_ssh_config_becomes_infras_rule(value, rule):
    assert hostkeys.policy_from_ssh_config(value) == rule


def test_accept_new_learns_a_key_into_the_known_hosts_file_readable_by_its_owner_only(tmp_path):
    known = tmp_path / "ssh" / "known_hosts"
    client = paramiko.SSHClient()
    rule = hostkeys.trust(client, ACCEPT_NEW, [known], hash_names=False)
    rule.missing_host_key(client, "[10.0.0.5]:2222", KEY)
    assert known.read_text() == f"[10.0.0.5]:2222 ssh-ed25519 {KEY.get_base64()}\n"
    assert known.stat().st_mode & 0o777 == 0o600 and known.parent.stat().st_mode & 0o777 == 0o700
    assert rule.learned == [("[10.0.0.5]:2222", KEY)]
    again = paramiko.SSHClient()
    hostkeys.trust(again, STRICT, [known], hash_names=False)
    assert again.get_host_keys().lookup("[10.0.0.5]:2222")["ssh-ed25519"] == KEY


def test_a_learned_name_is_hashed_when_the_ssh_config_hashes_known_hosts(tmp_path):
    known = tmp_path / "known_hosts"
    client = paramiko.SSHClient()
    hostkeys.trust(client, ACCEPT_NEW, [known], hash_names=True).missing_host_key(client, "10.0.0.5", KEY)
    name = known.read_text().split()[0]
    assert name.startswith("|1|") and "10.0.0.5" not in known.read_text()
    keys = paramiko.HostKeys(str(known))
    assert keys.lookup("10.0.0.5")["ssh-ed25519"] == KEY


def test_strict_refuses_an_unknown_key_and_learns_nothing(tmp_path):
    known = tmp_path / "known_hosts"
    client = paramiko.SSHClient()
    rule = hostkeys.trust(client, STRICT, [known], hash_names=False)
    with pytest.raises(UnknownHostKeyError):
        rule.missing_host_key(client, "10.0.0.5", KEY)
    assert not known.exists() and rule.learned == []


def test_refusals_are_one_line_naming_the_host_the_fingerprint_and_the_fix(tmp_path):
    other = paramiko.ECDSAKey.generate()
    changed = hostkeys.explain("h3", paramiko.BadHostKeyException("10.0.0.5", other, KEY), tmp_path / "known_hosts")
    assert changed.startswith("h3: the host key of 10.0.0.5 has CHANGED (now ")
    assert hostkeys.fingerprint(other) in changed and hostkeys.fingerprint(KEY) in changed
    assert f"ssh-keygen -R '10.0.0.5' -f {tmp_path / 'known_hosts'}" in changed and "\n" not in changed
    unknown = hostkeys.explain("h3", UnknownHostKeyError("10.0.0.5", KEY), tmp_path / "known_hosts")
    assert unknown.startswith("h3: unknown host key of 10.0.0.5 (ssh-ed25519 SHA256:") and "strict" in unknown
    assert hostkeys.explain("h3", OSError("refused"), tmp_path / "known_hosts") is None
