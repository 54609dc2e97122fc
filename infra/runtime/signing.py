"""Signed runs: a worker runs an `infra.run_command` message only if the cluster's master signed it.

Anyone who may publish on the broker (a volunteer does) could otherwise make every worker run
any command. So the sweep driver, on the master host, signs each message with the cluster's
Ed25519 key (`SIGNING_KEY_FILE`, in the master's secret folder alone), and every worker,
volunteers included, checks it with the public half (`VERIFY_KEY_FILE`) before anything runs.
Volunteers can check what they run but never sign: a shared HMAC key would have let them.

The message is `{"payload": TEXT, "signature": BASE64}`. TEXT is the canonical JSON (sorted keys,
no spaces) of every field that decides what runs; the worker checks the signature over TEXT's
own bytes, then reads TEXT and nothing else, so no field outside the signature can matter.

Replays: a payload names its submission (the Celery task id it was sent under) and is refused
under any other id; a second delivery of that id after its run ended is skipped (`done_key`);
and it expires `LIFETIME_SECONDS` after it was issued (the longest a run may wait on the broker
and a sweep's keys live in Redis), so a captured message cannot be sent again forever.

Standard library and `cryptography` (imported when a key is used).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from . import protocol
from .endpoint import RUN_VERIFY_KEY_FILE, VOLUNTEER_STATE

SIGNING_KEY_FILE = "run-signing.key"  # PEM, PKCS#8: the master's secret folder only
VERIFY_KEY_FILE = RUN_VERIFY_KEY_FILE  # PEM: every worker's secret folder, a volunteer's state, the endpoint's
SECRETS_FOLDER = "/run/infra"  # where a container of the cluster sees its role's secret folder
VERIFY_KEY_PATHS = (f"{SECRETS_FOLDER}/{VERIFY_KEY_FILE}", f"{VOLUNTEER_STATE}/{VERIFY_KEY_FILE}")
SIGNING_KEY_PATH = f"{SECRETS_FOLDER}/{SIGNING_KEY_FILE}"

FORMAT = "infra.run/1"
DOMAIN = b"infra.run_command signature\n"  # a signature made for anything else never fits a run
LIFETIME_SECONDS = protocol.KEYS_EXPIRE_SECONDS
CLOCK_SKEW_SECONDS = 300  # a worker's clock may be this far behind the master's

# Every field of a payload and the types it may have: no more, no fewer.
FIELDS: dict[str, tuple[type, ...]] = {
    "format": (str,), "task": (str,), "sweep_id": (str,), "run": (str,), "submission": (str,),
    "argv": (list,), "cwd": (str,), "env": (dict,), "timeout": (int, float, type(None)),
    "gpus_per_task": (int,), "artifact_limit": (int,), "issued": (int, float), "expires": (int, float),
}
# Fields a payload may leave out (its worker takes the default): a message of a driver that
# predates them still runs.
OPTIONAL_FIELDS = frozenset({"artifact_limit"})


class RunRefused(Exception):
    """A message this worker will not run; the text is the one-line reason."""


def canonical(payload: dict[str, Any]) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def new_payload(fields: dict[str, Any], *, now: float) -> dict[str, Any]:
    """A run's payload as the driver signs it: its fields, the format, the task, issue and expiry."""
    return {**fields, "format": FORMAT, "task": protocol.TASK_NAME, "issued": round(now, 3),
            "expires": round(now + LIFETIME_SECONDS, 3)}


def sign_message(payload: dict[str, Any], private_key_pem: bytes) -> dict[str, str]:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    text = canonical(payload)
    key = load_pem_private_key(private_key_pem, password=None)
    return {"payload": text, "signature": base64.b64encode(key.sign(DOMAIN + text.encode())).decode()}


def _checked_signature(message: Any, public_key_pem: bytes) -> str:
    """The signed text of a message whose signature the key accepts."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    if not isinstance(message, dict) or set(message) != {"payload", "signature"}:
        # repr, cut short: the names are the sender's, and the reason must stay one line.
        fields = (", ".join(sorted(repr(name)[:40] for name in message)[:12]) if isinstance(message, dict)
                  else type(message).__name__)
        raise RunRefused(f"not a signed run (expected payload and signature, got: {fields or 'nothing'})")
    text, signature = message["payload"], message["signature"]
    if not isinstance(text, str) or not isinstance(signature, str):
        raise RunRefused("not a signed run (payload and signature must be text)")
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        raise RunRefused("the signature is not base64") from None
    key = load_pem_public_key(public_key_pem)
    if not isinstance(key, Ed25519PublicKey):
        raise RunRefused("this worker's run key is not an Ed25519 key")
    try:
        key.verify(raw, DOMAIN + text.encode())
    except InvalidSignature:
        raise RunRefused("bad signature: not signed by this cluster's master, or changed since") from None
    return text


def _checked_fields(payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise RunRefused("the signed payload is not an object")
    extra, missing = sorted(set(payload) - set(FIELDS)), sorted(set(FIELDS) - set(payload) - OPTIONAL_FIELDS)
    if extra or missing:
        raise RunRefused(f"the signed payload has unknown fields {extra} or lacks {missing}")
    for name, types in FIELDS.items():
        if name not in payload:
            continue  # an optional one
        if not isinstance(payload[name], types) or isinstance(payload[name], bool):
            raise RunRefused(f"the signed payload's {name} has the wrong type")
    if payload["format"] != FORMAT or payload["task"] != protocol.TASK_NAME:
        raise RunRefused(f"signed for {payload['task']} in format {payload['format']}, not {protocol.TASK_NAME}")
    if payload.get("artifact_limit", 0) < 0:
        raise RunRefused("the signed artifact_limit is negative")
    argv, env = payload["argv"], payload["env"]
    if not argv or not all(isinstance(word, str) for word in argv):
        raise RunRefused("the signed argv must be a non-empty list of strings")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise RunRefused("the signed env must map strings to strings")
    return payload


def verify_message(message: Any, public_key_pem: bytes, *, submission: str, now: float) -> dict[str, Any]:
    """The payload of a message signed by the master for this very submission and not expired; else RunRefused."""
    try:
        payload = _checked_fields(json.loads(_checked_signature(message, public_key_pem)))
    except ValueError:  # a key file or payload that does not parse
        raise RunRefused("the signed payload or this worker's run key does not parse") from None
    if payload["submission"] != submission:
        raise RunRefused(f"signed for submission {payload['submission']!r}, delivered as {submission!r}")
    if now >= payload["expires"]:
        raise RunRefused(f"expired {now - payload['expires']:.0f} s ago (a run is valid for {LIFETIME_SECONDS} s)")
    if payload["issued"] > now + CLOCK_SKEW_SECONDS:
        raise RunRefused("issued in the future: this worker's clock is behind the master's")
    return payload


def read_key(paths: tuple[str, ...], what: str) -> bytes:
    """The first of `paths` that exists (a worker of the cluster, or a volunteer's)."""
    for path in paths:
        try:
            with open(path, "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise RunRefused(f"cannot read {what} {path}: {exc.strerror}") from None
    raise RunRefused(f"this container has no {what} ({' or '.join(paths)}): run `infra up` (volunteers: join again)")


def load_verify_key() -> bytes:
    return read_key(VERIFY_KEY_PATHS, "key to check runs with")


def load_signing_key() -> bytes:
    return read_key((SIGNING_KEY_PATH,), "key to sign runs with")


def key_pair_pem() -> tuple[str, str]:
    """A new Ed25519 key pair as PEM text: (private PKCS#8, public SubjectPublicKeyInfo)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from cryptography.hazmat.primitives import serialization

    private = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    return private, public_pem_of(private)


def public_pem_of(private_key_pem: str) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(private_key_pem.encode(), password=None)
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()
