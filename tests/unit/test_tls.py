"""The cluster CA and the master's certificate (infra/state/tls.py)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import stat

import pytest
from cryptography import x509

from infra.state import tls


def load(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def names_of(pem: str) -> set[str]:
    san = load(pem).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(n) for n in san.get_values_for_type(x509.DNSName)} | {
        str(n) for n in san.get_values_for_type(x509.IPAddress)}


def test_the_first_call_makes_a_ca_and_a_master_certificate_all_files_0600(tmp_path):
    identity = tls.load_or_create(tmp_path / "tls", "lab", tls.server_names("192.168.1.20", "master.lab"))
    files = sorted(p.name for p in (tmp_path / "tls").iterdir())
    assert files == ["ca.crt", "ca.key", "server.crt", "server.key"]
    assert all(stat.S_IMODE((tmp_path / "tls" / f).stat().st_mode) == 0o600 for f in files)
    ca, server = load(identity.ca_certificate), load(identity.certificate)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    server.verify_directly_issued_by(ca)
    assert names_of(identity.certificate) == {"192.168.1.20", "master.lab", "localhost", "127.0.0.1", "::1",
                                              "broker", "results", "flower"}


def test_a_tls_client_trusting_the_ca_accepts_the_certificate_for_its_names(tmp_path):
    identity = tls.load_or_create(tmp_path, "lab", tls.server_names("10.1.2.3"))
    (tmp_path / "chain.pem").write_text(identity.certificate + identity.ca_certificate)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "chain.pem", tmp_path / "server.key")  # the key is usable
    client = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    assert client.verify_mode == ssl.CERT_REQUIRED
    assert ipaddress.ip_address("10.1.2.3") in load(identity.certificate).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.IPAddress)


def test_a_second_call_with_the_same_or_fewer_names_changes_nothing(tmp_path):
    first = tls.load_or_create(tmp_path, "lab", tls.server_names("10.1.2.3", "m.lab"))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert tls.load_or_create(tmp_path, "lab", tls.server_names("10.1.2.3")) == first
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_new_name_widens_the_certificate_under_the_same_ca(tmp_path):
    first = tls.load_or_create(tmp_path, "lab", tls.server_names("10.1.2.3"))
    second = tls.load_or_create(tmp_path, "lab", tls.server_names("10.9.9.9"))
    assert second.ca_certificate == first.ca_certificate
    assert second.certificate != first.certificate
    assert {"10.1.2.3", "10.9.9.9"} <= names_of(second.certificate)


def test_a_certificate_near_its_end_is_issued_again(tmp_path, monkeypatch):
    first = tls.load_or_create(tmp_path, "lab", tls.server_names("10.1.2.3"))
    later = dt.datetime.now(dt.timezone.utc) + tls.SERVER_LIFETIME - dt.timedelta(days=10)
    monkeypatch.setattr(tls, "_now", lambda: later)
    assert tls.load_or_create(tmp_path, "lab", tls.server_names("10.1.2.3")).certificate != first.certificate


def test_a_key_that_does_not_match_its_certificate_is_replaced(tmp_path):
    tls.load_or_create(tmp_path, "lab", tls.server_names("10.1.2.3"))
    (tmp_path / "server.key").write_bytes((tmp_path / "ca.key").read_bytes())  # e.g. an interrupted write
    identity = tls.load_or_create(tmp_path, "lab", tls.server_names("10.1.2.3"))
    assert identity.key != (tmp_path / "ca.key").read_text()


def test_a_dry_run_writes_nothing(tmp_path):
    identity = tls.load_or_create(tmp_path / "tls", "lab", tls.server_names("10.1.2.3"), save=False)
    assert not (tmp_path / "tls").exists()
    assert identity.ca_certificate.startswith("-----BEGIN CERTIFICATE-----")


def test_an_unreadable_ca_is_one_clear_error(tmp_path):
    (tmp_path / "ca.crt").write_text("not a certificate")
    (tmp_path / "ca.key").write_text("not a key")
    with pytest.raises(tls.StateError, match="remove the folder"):
        tls.load_or_create(tmp_path, "lab", ["10.1.2.3"])


def test_the_ca_fingerprint_is_the_sha256_of_its_der_bytes(tmp_path):
    import hashlib

    identity = tls.load_or_create(tmp_path, "lab", ["10.1.2.3"], save=False)
    der = ssl.PEM_cert_to_DER_cert(identity.ca_certificate)
    assert tls.ca_fingerprint(identity.ca_certificate) == "sha256:" + hashlib.sha256(der).hexdigest()


def test_server_names_are_normalised_and_deduplicated():
    assert tls.server_names("FD00::0005", "Master.LAB", None, "fd00::5")[:2] == ["fd00::5", "master.lab"]
