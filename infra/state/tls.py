"""The cluster's own certificate authority, and the master's certificate it signs.

`infra up` makes a CA per cluster the first time it runs (an ECDSA P-256 key, ten years) and
keeps it beside the secrets, in STATE_DIR/NAME/tls/, every file 0600. Its key never leaves this
machine. The master's certificate (broker, result backend and Flower share it) names every
address a client may use to reach the master; it is issued again when that set grows or when
less than 30 days of it are left, and is otherwise kept, so a no-op `up` changes nothing.

Clients trust the cluster CA alone (never the system's CAs): only this CA's key can make a
certificate they accept, so a man in the middle with a certificate from any public CA fails.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import StateError
from .credentials import write_private_file

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

CA_LIFETIME = dt.timedelta(days=3650)
SERVER_LIFETIME = dt.timedelta(days=825)
RENEW_BEFORE = dt.timedelta(days=30)
# Names the master's certificate always carries: the services' names on the cluster's network
# and loopback, where workers on the master host itself connect.
ALWAYS_NAMES = ("localhost", "127.0.0.1", "::1", "broker", "results", "flower")


def _load_cryptography() -> None:
    """Import cryptography's X.509 modules on first use, not with this module: the plans import
    `ServerIdentity`, and commands that never touch certificates (`sync-files`) need not pay for them."""
    global x509, InvalidSignature, hashes, serialization, ec, ExtendedKeyUsageOID, NameOID
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class ServerIdentity:
    """What the master's services present: a certificate chain and its key, as PEM text."""

    certificate: str
    key: str
    ca_certificate: str


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def ca_fingerprint(ca_pem: str) -> str:
    """`sha256:HEX` of the CA certificate's DER bytes: what a client pins."""
    _load_cryptography()
    cert = x509.load_pem_x509_certificate(ca_pem.encode())
    return "sha256:" + hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _subject_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _new_ca(cluster: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "infra"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"infra cluster {cluster} CA")])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _new_server(cluster: str, names: list[str], ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
                ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "infra"),
                                 x509.NameAttribute(NameOID.COMMON_NAME, f"infra cluster {cluster} master")]))
        .issuer_name(ca.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + SERVER_LIFETIME)
        .add_extension(x509.SubjectAlternativeName([_subject_name(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _read_pair(cert_path: Path, key_path: Path):
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        raise StateError(f"{cert_path.parent}: unreadable certificate or key ({exc}); "
                         "remove the folder to make new ones") from None
    return cert, key


def _names_of(cert: x509.Certificate) -> set[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(n) for n in san.get_values_for_type(x509.DNSName)} | {
        str(n) for n in san.get_values_for_type(x509.IPAddress)}


def _normal(name: str) -> str:
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name.lower()


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def server_names(*addresses: str | None) -> list[str]:
    """The names the master's certificate carries: those given (deduplicated) and ALWAYS_NAMES."""
    names: list[str] = []
    for name in (*addresses, *ALWAYS_NAMES):
        if name and _normal(name) not in names:
            names.append(_normal(name))
    return names


def load_or_create(tls_dir: Path, cluster: str, names: list[str], *, save: bool = True) -> ServerIdentity:
    """The cluster CA (made on first use) and a master certificate valid for every name in `names`.

    Callers hold the cluster lock, so no two runs write these files at once. With `save=False`
    (a dry run) what is missing is made in memory only.
    """
    _load_cryptography()
    ca_pair = _read_pair(tls_dir / "ca.crt", tls_dir / "ca.key")
    if ca_pair is None:
        ca, ca_key = _new_ca(cluster)
        if save:
            # The key first: a certificate without its key would be unusable.
            write_private_file(tls_dir / "ca.key", _key_pem(ca_key))
            write_private_file(tls_dir / "ca.crt", _cert_pem(ca))
    else:
        ca, ca_key = ca_pair
    if save:
        for path in tls_dir.iterdir():
            if path.is_file() and path.stat().st_mode & 0o077:
                os.chmod(path, 0o600)

    wanted = {_normal(n) for n in names}
    server = _read_pair(tls_dir / "server.crt", tls_dir / "server.key")
    if server is not None:
        cert, key = server
        fresh = (cert.not_valid_after_utc - _now() > RENEW_BEFORE and _signed_by(cert, ca)
                 and cert.public_key().public_numbers() == key.public_key().public_numbers())
        if fresh and wanted <= _names_of(cert):
            return ServerIdentity(_cert_pem(cert).decode(), _key_pem(key).decode(), _cert_pem(ca).decode())
        # Keep the names it had: a certificate is only ever widened, so hosts that still use an
        # older address keep working until the next change.
        if fresh:
            names = [*names, *sorted(_names_of(cert) - wanted)]
    cert, key = _new_server(cluster, names, ca, ca_key)
    if save:
        write_private_file(tls_dir / "server.key", _key_pem(key))
        write_private_file(tls_dir / "server.crt", _cert_pem(cert))
    return ServerIdentity(_cert_pem(cert).decode(), _key_pem(key).decode(), _cert_pem(ca).decode())
