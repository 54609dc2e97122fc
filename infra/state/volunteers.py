"""Volunteers of a cluster, as this machine keeps them: STATE_DIR/NAME/volunteers.json (0600).

A volunteer is a person who lends a machine with Docker: `infra volunteer add NAME` makes a
token, draws the volunteer's broker and result-backend passwords and update key at random,
prints the one line that joins with the token, and forgets the token and the passwords. Kept
here, per volunteer: when it was added and until when its token joins, the sha256 of the token
and of the update key (what the join endpoint checks), the sha256 of its result-backend password
(what Redis's ACL stores), the node name infra gives its worker, its secrets sealed under the
token (`infra.runtime.endpoint.seal`: what the endpoint hands out at the one exchange, useless
without the token; dropped once it joined or its token expired), and what was last learnt of it
(joined, last seen, architecture). No secret of a volunteer is kept in clear anywhere, and none
follows from the token alone.

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
from ..runtime.endpoint import SECRETS, node_name, seal, secret_text, token_digest, volunteer_user
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
    revoked_because: str | None = None  # None: by `revoke` or `clean`
    joined: str | None = None  # the token was exchanged (the endpoint's spent file, or its log)
    last_seen: str | None = None  # last request to the endpoint or answer to Celery
    arch: str | None = None
    node: str | None = None  # the whole Celery node name infra gave its worker
    salt: str = ""  # of the sealed secrets
    sealed: dict[str, str] | None = None  # purpose -> secret sealed under the token, until it joined or expired

    @property
    def user(self) -> str:
        return volunteer_user(self.name)

    def expired(self, now: datetime) -> bool:
        return parse_time(self.expires) <= now

    def state(self, now: datetime) -> str:
        if self.revoked:
            return "revoked" if not self.revoked_because else f"revoked: {self.revoked_because}"
        if self.joined:
            return "joined"
        return "token expired" if self.expired(now) else "token valid"

    def expired_unused(self, now: datetime, grace: timedelta) -> bool:
        """Its token expired (for longer than `grace`, the clocks of here and the master may differ) and never joined."""
        return not self.revoked and not self.joined and parse_time(self.expires) + grace <= now


@dataclass(frozen=True)
class NewVolunteer:
    """What `add` keeps (`volunteer`) and the clear secrets it makes the users from, then forgets."""

    volunteer: Volunteer
    broker_password: str
    results_password: str
    update_key: str


def make_volunteer(cluster: str, name: str, token: str, now: datetime, lifetime: timedelta) -> NewVolunteer:
    """A volunteer with random secrets (nothing about them follows from the token) and its node name."""
    secrets = {purpose: random_source.token_bytes(32) for purpose in SECRETS}
    salt = random_source.token_hex(8)
    text = {purpose: secret_text(secret) for purpose, secret in secrets.items()}
    volunteer = Volunteer(
        name=check_name(name), added=_iso(now), expires=_iso(now + lifetime),
        token_sha256=token_digest(token), key_sha256=token_digest(text["update-key"]),
        results_password_sha256=hashlib.sha256(text["results"].encode()).hexdigest(),
        node=node_name(cluster, name, random_source.token_hex(3)), salt=salt,
        sealed={purpose: seal(token, salt, purpose, secret) for purpose, secret in secrets.items()},
    )
    return NewVolunteer(volunteer, text["broker"], text["results"], text["update-key"])


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


def learn_exchanges(store: "VolunteerStore", spent_json: str) -> list[str]:
    """Mark joined the volunteers whose token the endpoint's spent.json lists, and forget their sealed
    secrets (nothing is left to hand out); the names newly learnt. Unreadable text teaches nothing."""
    try:
        spent = json.loads(spent_json).get("spent", {}) if spent_json.strip() else {}
    except (ValueError, AttributeError):
        return []
    learnt = []
    for v in store.volunteers.values():
        entry = spent.get(v.token_sha256) if isinstance(spent, dict) else None
        if isinstance(entry, dict):
            if not v.joined:
                v.joined = entry.get("at") or "?"
                learnt.append(v.name)
            v.sealed = None
    return learnt


def expired_unused(store: "VolunteerStore", now: datetime, grace: timedelta) -> list[str]:
    """The active volunteers whose token expired without ever being exchanged: their users are to go."""
    return [v.name for v in store.active() if v.expired_unused(now, grace)]


def token_table_json(volunteers) -> str:
    """volunteers.json of the join endpoint: token digests → volunteer, and update-key digests → name.

    A revoked volunteer's token stays, marked so (the endpoint says why it refuses it); the sealed
    secrets and the node name go with a token that may still be exchanged only.
    """
    tokens, keys = {}, {}
    for v in volunteers:
        if v.revoked:
            tokens[v.token_sha256] = {"name": v.name, "revoked": True}
            continue
        entry = {"name": v.name, "expires": parse_time(v.expires).timestamp()}
        if v.sealed and not v.joined:
            entry.update(node=v.node, salt=v.salt, sealed=dict(v.sealed))
        tokens[v.token_sha256] = entry
        keys[v.key_sha256] = {"name": v.name}
    return json.dumps({"tokens": tokens, "keys": keys}, indent=2, sort_keys=True) + "\n"
