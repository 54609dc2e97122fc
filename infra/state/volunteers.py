"""Volunteers of a cluster, as this machine keeps them: STATE_DIR/NAME/volunteers.json (0600).

A volunteer is a person who lends a machine with Docker: `infra volunteer add NAME` makes a
token, prints the one line that joins with it, and forgets the token. Kept here, per volunteer:
when it was added and until when its token joins, the sha256 of the token and of the update key
derived from it (what the join endpoint checks), the sha256 of its result-backend password (what
Redis's ACL stores), and what was last learnt of it (joined, last seen, architecture). No secret
of a volunteer is kept in clear anywhere: its passwords are derived from the token
(`infra.runtime.endpoint.derive_secret`), the master's endpoint derives them again when the token
is presented.

Pure except `VolunteerStore.load`/`save`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets as random_source
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..errors import ConfigError, StateError
from ..runtime.endpoint import derive_secret, token_digest, volunteer_user
from .credentials import write_private_file

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,30}")
DURATION_PATTERN = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
DEFAULT_EXPIRES = "7d"
MAX_EXPIRES = timedelta(days=365)


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name or ""):
        raise ConfigError(f"volunteer name {name!r}: use 1-31 of a-z, 0-9 and '-', starting with a letter or digit")
    return name


def parse_duration(text: str) -> timedelta:
    """`90s`, `30m`, `12h`, `7d`, `2w` (or several: `1d12h`); at least a second, at most a year."""
    text = (text or "").strip().lower()
    parts = DURATION_PATTERN.findall(text)
    if not text or "".join(n + u for n, u in parts) != text:
        raise ConfigError(f"--expires {text!r}: give a duration such as 30m, 12h, 7d or 2w")
    seconds = sum(int(number) * _UNITS[unit] for number, unit in parts)
    if seconds < 1 or seconds > MAX_EXPIRES.total_seconds():
        raise ConfigError(f"--expires {text!r}: between 1s and {MAX_EXPIRES.days}d")
    return timedelta(seconds=seconds)


def new_token() -> str:
    """256 random bits, URL-safe: what the volunteer's line carries."""
    return random_source.token_urlsafe(32)


def public_key_pin(certificate_pem: str) -> str:
    """curl's `--pinnedpubkey` value of a certificate: `sha256//` + base64(sha256(SubjectPublicKeyInfo))."""
    cert = x509.load_pem_x509_certificate(certificate_pem.encode())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256//" + base64.b64encode(hashlib.sha256(spki).digest()).decode()


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


@dataclass
class Volunteer:
    name: str
    added: str  # ISO UTC
    expires: str  # the token joins until then
    token_sha256: str
    key_sha256: str  # the update key's: project updates until revoked
    results_password_sha256: str  # as Redis's ACL stores it
    revoked: str | None = None
    joined: str | None = None  # first bundle served
    last_seen: str | None = None  # last request to the endpoint or answer to Celery
    arch: str | None = None

    @property
    def user(self) -> str:
        return volunteer_user(self.name)

    def expired(self, now: datetime) -> bool:
        return parse_time(self.expires) <= now

    def state(self, now: datetime) -> str:
        if self.revoked:
            return "revoked"
        return "token expired" if self.expired(now) else "token valid"


def make_volunteer(name: str, token: str, now: datetime, lifetime: timedelta) -> Volunteer:
    return Volunteer(
        name=check_name(name), added=_iso(now), expires=_iso(now + lifetime),
        token_sha256=token_digest(token), key_sha256=token_digest(derive_secret(token, "update-key")),
        results_password_sha256=hashlib.sha256(derive_secret(token, "results").encode()).hexdigest(),
    )


@dataclass
class VolunteerStore:
    path: Path
    volunteers: dict[str, Volunteer] = field(default_factory=dict)
    port: int | None = None  # the join endpoint's, once chosen

    @classmethod
    def load(cls, path: Path) -> "VolunteerStore":
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError) as exc:
            raise StateError(f"{path}: unreadable volunteers file ({exc})") from None
        known = {f.name for f in fields(Volunteer)}
        try:
            volunteers = {name: Volunteer(**{k: v for k, v in entry.items() if k in known})
                          for name, entry in raw.get("volunteers", {}).items()}
        except (TypeError, AttributeError) as exc:
            raise StateError(f"{path}: malformed volunteers file ({exc})") from None
        port = raw.get("port")
        return cls(path, volunteers, port if isinstance(port, int) else None)

    def save(self) -> None:
        data = {"version": 1, "port": self.port, "volunteers": {name: asdict(v) for name, v in sorted(self.volunteers.items())}}
        write_private_file(self.path, json.dumps(data, indent=2).encode() + b"\n")

    def active(self) -> list[Volunteer]:
        return [v for name, v in sorted(self.volunteers.items()) if not v.revoked]


def store_path(state_dir: Path) -> Path:
    return state_dir / "volunteers.json"


def token_table_json(volunteers: list[Volunteer]) -> str:
    """volunteers.json of the join endpoint: token digests (with expiry) and update-key digests → name."""
    tokens, keys = {}, {}
    for v in volunteers:
        if v.revoked:
            continue
        tokens[v.token_sha256] = {"name": v.name, "expires": parse_time(v.expires).timestamp()}
        keys[v.key_sha256] = {"name": v.name}
    return json.dumps({"tokens": tokens, "keys": keys}, indent=2, sort_keys=True) + "\n"
