"""The join endpoint of a cluster with volunteers: `python -m infra_runtime.endpoint` on the master host.

`infra volunteer add` starts it (a container of the cluster, role `join`, in the master image),
HTTPS with the master's certificate. It serves, to valid tokens only, what a volunteer's one line
needs, and nothing to anyone else: a wrong, expired or revoked token, or any other path, gets
403 with an empty body. Every request is logged as one JSON line on stdout (`docker logs`) with
the volunteer's name, never a token.

The token is exchanged once for credentials. `infra volunteer add` draws the volunteer's broker
and result-backend passwords and its update key at random (nothing about them follows from the
token), makes the users from them, and leaves them here sealed under the token (`seal`): the
table on the master holds the token's sha256, the expiry, the node name infra assigned and the
sealed secrets, none of them usable without the token. The first bundle served to a valid
token is the exchange: the endpoint unseals the secrets, records the token as spent in its own
state file (STATE_DIR/spent.json, the one thing it writes) and from then on refuses the token.
A token that expired, was revoked or was spent gets nothing; neither does one that was never
issued. Why one is refused is logged and sent as the `X-Infra-Refused` header, never in a body.

    GET /join/TOKEN               the join script (the token written into it)
    GET /v1/TOKEN/settings        KEY=value lines the script reads (image id and architecture)
    GET /v1/TOKEN/image           the worker image (`docker save`, gzip) for the master's architecture
    GET /v1/TOKEN/context         the build context (tar.gz) for other architectures
    GET /v1/TOKEN/bundle          a tar of the worker's settings and credentials: the exchange, once
    GET /v1/project[/digest]      the project (tar) or its digest; `Authorization: Bearer KEY`;
                                  only the files project-files.json names (what sync-files sends)

The update key (in the bundle) does not expire with the token: a worker that joined fetches
project updates until the volunteer is revoked. Standard library only (the endpoint needs no
package of the image), so a secret is sealed with the standard library's HMAC-SHA256 (see `seal`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import os
import re
import signal
import ssl
import stat
import sys
import threading
import time

from . import IMAGE_PACKAGE
from .tarball import Member, pack

CONFIG_DIR = "/run/infra"  # the endpoint's folder on the master host, read-only
STATE_DIR = "/var/lib/infra-join"  # the endpoint's own state (spent tokens), the one folder it writes
SPENT_FILE = "spent.json"
SECRETS = ("broker", "results", "update-key")  # what a token is exchanged for
FILES_DIR = "/srv/infra-join"  # the worker image and the build context, read-only
CONTEXT_FILE = "context.tar.gz"  # the build context in FILES_DIR, for volunteers of other architectures
PROJECT_DIR = "/project"  # the project as synced to the master host, read-only
# In CONFIG_DIR: the project files volunteers may get, as `infra` decided them with the rules
# `sync-files` applies (`.infraignore` and its defaults). On a master on `local` /project is the
# operator's working folder, so the endpoint serves only what this list names.
SERVED_FILES = "project-files.json"
PORT = 8443
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]{32,128}")
# What a volunteer's worker never needs of the project folder.
PROJECT_SKIP = ("output", ".infra", ".infra-cluster", "__pycache__", ".git")
CHUNK = 1 << 16

# In the bundle: where the volunteer's container keeps its state (a docker volume).
VOLUNTEER_STATE = "/var/lib/infra-volunteer"
RUN_VERIFY_KEY_FILE = "run-signing.pub"  # signing.VERIFY_KEY_FILE, in the endpoint's folder and the bundle


# --------------------------------------------------------------------------- shared with infra itself


def token_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _keystream(token: str, salt: str, purpose: str) -> bytes:
    """32 bytes only the token's holder can compute, one per volunteer (`salt`) and secret (`purpose`)."""
    return hmac.new(token.encode(), f"infra-volunteer:seal:{salt}:{purpose}".encode(), hashlib.sha256).digest()


def seal(token: str, salt: str, purpose: str, secret: bytes) -> str:
    """A 32-byte random secret XOR a keystream used once (one HMAC-SHA256 block, a one-time pad):
    without the token the sealed text says nothing of the secret, without it the token says nothing."""
    if len(secret) != 32:
        raise ValueError("a sealed secret is 32 bytes")
    pad = _keystream(token, salt, purpose)
    return base64.urlsafe_b64encode(bytes(a ^ b for a, b in zip(secret, pad))).decode()


def unseal(token: str, salt: str, purpose: str, sealed: str) -> bytes:
    pad = _keystream(token, salt, purpose)
    return bytes(a ^ b for a, b in zip(base64.urlsafe_b64decode(sealed.encode()), pad))


def secret_text(secret: bytes) -> str:
    """A secret as the password (or update key) it is: URL-safe base64 without padding, 43 characters."""
    return base64.urlsafe_b64encode(secret).decode().rstrip("=")


def node_name(cluster: str, name: str, suffix: str) -> str:
    """The whole Celery node name infra gives a volunteer's worker: `CLUSTER-volunteer-NAME.SUFFIX@volunteer-NAME`.

    The prefix up to the dot is what the broker lets that volunteer's user name its queues after.
    """
    return f"{cluster}-volunteer-{name}.{suffix}@{volunteer_user(name)}"


def volunteer_user(name: str) -> str:
    """The volunteer's user name on the broker and on the result backend."""
    return f"volunteer-{name}"


def worker_env(settings: dict, name: str, broker_password: str, results_password: str) -> str:
    """celery.env of a volunteer's worker: its own users, TLS to the published ports, the CA alone trusted."""
    user = volunteer_user(name)
    host = settings["address"]
    host = f"[{host}]" if ":" in host else host
    ca = f"{VOLUNTEER_STATE}/ca.crt"
    values = {
        "INFRA_CLUSTER": settings["cluster"],
        "CELERY_BROKER_URL": (f"amqps://{user}:{broker_password}@{host}:{settings['broker_port']}"
                              f"/{settings['vhost']}"),
        "CELERY_RESULT_BACKEND": (f"rediss://{user}:{results_password}@{host}:"
                                  f"{settings['results_port']}/0?ssl_cert_reqs=required&ssl_ca_certs={ca}"),
        # Its Redis user may write results, not read them: Celery's backend that reads before it writes
        # would lose every result (`results.WriteOnlyRedisBackend`).
        "CELERY_LOADER": f"{IMAGE_PACKAGE}.results:VolunteerLoader",
    }
    return "".join(f"{key}={value}\n" for key, value in values.items())


def project_files(root: str, served: frozenset[str]) -> list[tuple[str, str]]:
    """(relative path, absolute path) of the project's regular files that `served` names, sorted;
    links are never followed, folders holding no served file never entered."""
    folders = {"/".join(rel.split("/")[:depth]) for rel in served for depth in range(1, rel.count("/") + 1)}
    found = []
    for folder, dirs, files in os.walk(root):
        rel_folder = os.path.relpath(folder, root)
        prefix = "" if rel_folder == "." else rel_folder + "/"
        dirs[:] = sorted(d for d in dirs if prefix + d in folders and not (prefix == "" and d in PROJECT_SKIP)
                         and not os.path.islink(os.path.join(folder, d)))
        for name in files:
            path, rel = os.path.join(folder, name), prefix + name
            if rel not in served or rel in PROJECT_SKIP or name.endswith(".pyc"):
                continue
            if stat.S_ISREG(os.lstat(path).st_mode):
                found.append((rel, path))
    return sorted(found)


def project_tar(root: str, served: frozenset[str]) -> tuple[bytes, str]:
    """The project as a tar (fixed owners and times: the same content gives the same bytes) and its digest."""
    data = pack(_project_member(rel, path) for rel, path in project_files(root, served))
    return data, hashlib.sha256(data).hexdigest()


def _project_member(rel: str, path: str) -> Member:
    """A project file as a volunteer gets it: executable or not, and no time (a touched file is no change)."""
    with open(path, "rb") as handle:
        data = handle.read()
    return Member(rel, data, 0o755 if os.stat(path).st_mode & 0o111 else 0o644)


def bundle_tar(files: dict[str, str]) -> bytes:
    """A volunteer's settings and credentials, readable by their owner alone, stamped with the time they were made."""
    now = int(time.time())
    return pack(Member(name, content.encode(), 0o600, now) for name, content in sorted(files.items()))


# --------------------------------------------------------------------------- who may ask


def refusal(entry: dict | None, spent: dict | None, now: float) -> str | None:
    """Why a token gets nothing (`unknown`, `revoked`, `spent`, `expired`), or None: it may still join."""
    if not entry:
        return "unknown"
    if entry.get("revoked"):
        return "revoked"
    if spent:
        return "spent"
    if float(entry.get("expires", 0)) <= now:
        return "expired"
    if not entry.get("sealed"):
        return "unknown"  # a table of an older infra, without credentials to hand out
    return None


def exchange(entry: dict, token: str) -> dict[str, str]:
    """The credentials a valid token is exchanged for: each secret unsealed, as text."""
    salt = entry["salt"]
    return {purpose: secret_text(unseal(token, salt, purpose, entry["sealed"][purpose])) for purpose in SECRETS}


class TokenTable:
    """volunteers.json (written by infra, re-read when it changes): token and key digests → volunteer."""

    def __init__(self, path: str):
        self.path = path
        self._seen: tuple | None = None
        self._data: dict = {"tokens": {}, "keys": {}}
        self._lock = threading.Lock()

    def _current(self) -> dict:
        with self._lock:
            try:
                info = os.stat(self.path)
                seen = (info.st_ino, info.st_mtime_ns, info.st_size)
                if seen != self._seen:
                    with open(self.path, encoding="utf-8") as handle:
                        self._data = json.load(handle)
                    self._seen = seen
            except (OSError, ValueError):
                self._data, self._seen = {"tokens": {}, "keys": {}}, None
            return self._data

    def entry(self, token: str) -> dict | None:
        """The table's entry of this token (name, expiry, node, sealed secrets), if it is one."""
        if not TOKEN_PATTERN.fullmatch(token or ""):
            return None
        return self._current().get("tokens", {}).get(token_digest(token))

    def by_key(self, key: str) -> str | None:
        if not TOKEN_PATTERN.fullmatch(key or ""):
            return None
        entry = self._current().get("keys", {}).get(token_digest(key))
        return entry.get("name") if entry else None


class SpentTokens:
    """STATE_DIR/spent.json: token digest → {name, at}, for every token exchanged; written by this endpoint alone.

    `spend` checks and records under one lock, and the file is replaced whole (0600), so two
    requests with one token never both get credentials, and a restarted endpoint still knows.
    """

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()

    def _read(self) -> dict | None:
        """The spent tokens; None when the file cannot be read (then no token is exchanged rather than one twice)."""
        try:
            with open(self.path, encoding="utf-8") as handle:
                spent = json.load(handle).get("spent", {})
            return spent if isinstance(spent, dict) else None
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, AttributeError):
            return None

    def get(self, digest: str) -> dict | None:
        spent = self._read()
        return {"name": None, "at": None} if spent is None else spent.get(digest)

    def spend(self, digest: str, name: str, now: float) -> bool:
        """Record the token as spent; False when it was already (or the file cannot be read or written)."""
        with self._lock:
            spent = self._read()
            if spent is None or digest in spent:
                return False
            spent[digest] = {"name": name, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))}
            temporary = f"{self.path}.tmp"
            try:
                descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                    json.dump({"spent": spent}, handle, indent=2, sort_keys=True)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temporary, self.path)
            except OSError:
                return False
            return True


class ServedFiles:
    """project-files.json (written by infra, re-read when it changes): the project files to serve.

    None while there is no readable list: then the project is not served at all, rather than
    all of /project.
    """

    def __init__(self, path: str):
        self.path = path
        self._seen: tuple | None = None
        self._files: frozenset[str] | None = None
        self._lock = threading.Lock()

    def current(self) -> frozenset[str] | None:
        with self._lock:
            try:
                info = os.stat(self.path)
                seen = (info.st_ino, info.st_mtime_ns, info.st_size)
                if seen != self._seen:
                    with open(self.path, encoding="utf-8") as handle:
                        self._files = frozenset(str(rel) for rel in json.load(handle)["files"])
                    self._seen = seen
            except (OSError, ValueError, KeyError, TypeError):
                self._files, self._seen = None, None
            return self._files


# --------------------------------------------------------------------------- the server


class Endpoint:
    def __init__(self, config_dir: str = CONFIG_DIR, files_dir: str = FILES_DIR, project_dir: str = PROJECT_DIR,
                 state_dir: str = STATE_DIR):
        self.config_dir, self.files_dir, self.project_dir = config_dir, files_dir, project_dir
        with open(os.path.join(config_dir, "endpoint.json"), encoding="utf-8") as handle:
            self.settings = json.load(handle)
        with open(os.path.join(config_dir, "join.sh"), encoding="utf-8") as handle:
            self.script = handle.read()
        with open(os.path.join(config_dir, "ca.crt"), encoding="utf-8") as handle:
            self.ca = handle.read()
        # The public key runs are checked with (a volunteer checks, it cannot sign): not a secret.
        with open(os.path.join(config_dir, RUN_VERIFY_KEY_FILE), encoding="utf-8") as handle:
            self.run_verify_key = handle.read()
        self.tokens = TokenTable(os.path.join(config_dir, "volunteers.json"))
        self.spent = SpentTokens(os.path.join(state_dir, SPENT_FILE))
        self.served = ServedFiles(os.path.join(config_dir, SERVED_FILES))
        self._project_cache: tuple | None = None
        self._project_lock = threading.Lock()

    def project(self) -> tuple[bytes, str] | None:
        """The project tar and digest, made again only when a file or the list changed (path, size, mtime);
        None without a list of the files to serve."""
        served = self.served.current()
        if served is None:
            return None
        listing = []
        for rel, path in project_files(self.project_dir, served):
            info = os.stat(path)
            listing.append((rel, info.st_size, info.st_mtime_ns, info.st_mode))
        with self._project_lock:
            if self._project_cache is None or self._project_cache[0] != listing:
                self._project_cache = (listing, *project_tar(self.project_dir, served))
            return self._project_cache[1], self._project_cache[2]

    def file_settings(self) -> dict:
        """What infra wrote beside the image: its id and architecture (KEY=value lines)."""
        values = {}
        try:
            with open(os.path.join(self.files_dir, "image.env"), encoding="utf-8") as handle:
                for line in handle:
                    key, sep, value = line.strip().partition("=")
                    if sep:
                        values[key] = value
        except OSError:
            pass
        return values

    def bundle(self, name: str, token: str, entry: dict) -> bytes:
        """The worker's settings and the credentials the token is exchanged for, with the node name infra gave it."""
        settings = self.settings
        secrets = exchange(entry, token)
        volunteer = {
            "cluster": settings["cluster"], "name": name, "endpoint": settings["url"],
            "update_key": secrets["update-key"], "app_args": settings["app_args"],
            "queues": settings["queues"], "check_every": settings.get("check_every", 120),
            "node_name": entry["node"],
        }
        return bundle_tar({"celery.env": worker_env(settings, name, secrets["broker"], secrets["results"]),
                           "ca.crt": self.ca, RUN_VERIFY_KEY_FILE: self.run_verify_key,
                           "volunteer.json": json.dumps(volunteer, indent=2) + "\n"})


def log(event: dict) -> None:
    event = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **event}
    sys.stdout.write(json.dumps(event, sort_keys=True) + "\n")
    sys.stdout.flush()


TOKEN_ROUTES = ("script", "settings", "image", "context", "bundle")  # what a valid token gets: /v1/TOKEN/WHAT


class Handler(http.server.BaseHTTPRequestHandler):
    """One request to `endpoint` (see `make_handler`): routed by its path, one method per route."""

    server_version = "infra-join"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    endpoint: Endpoint

    def log_message(self, *args) -> None:  # our own log lines instead (no token in them)
        pass

    def _header_value(self, name: str) -> str:
        value = self.headers.get(name, "")[:64]
        return value if re.fullmatch(r"[A-Za-z0-9_.-]*", value) else "?"

    def _refuse(self, what: str, reason: str = "unknown", claimed: str | None = None) -> None:
        """403 and no body; the reason in a header (for a line that can say it) and in the log, with whose
        token it was when it was one (`claimed`), so the operator sees a spent line being run again."""
        self.send_response(403)
        self.send_header("Content-Length", "0")
        self.send_header("X-Infra-Refused", reason)
        self.send_header("Connection", "close")
        self.end_headers()
        log({"volunteer": None, "what": what, "status": 403, "reason": reason, "claimed": claimed,
             "remote": self.client_address[0]})

    def _send(self, name: str, what: str, body: bytes | None = None, path: str | None = None,
              content_type: str = "application/octet-stream", headers: dict | None = None) -> None:
        size = len(body) if body is not None else os.path.getsize(path)
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(size))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if body is not None:
            self.wfile.write(body)
        else:
            with open(path, "rb") as handle:
                while chunk := handle.read(CHUNK):
                    self.wfile.write(chunk)
        log({"volunteer": name, "what": what, "status": 200, "bytes": size, "remote": self.client_address[0],
             "arch": self._header_value("X-Infra-Arch") or None})

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        try:
            self._route()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _route(self) -> None:
        parts = self.path.split("?", 1)[0].strip("/").split("/")
        if parts[:2] == ["v1", "project"] and len(parts) <= 3:
            return self._serve_project(parts[2:])
        if len(parts) == 2 and parts[0] == "join":
            token, what = parts[1], "script"
        elif len(parts) == 3 and parts[0] == "v1":
            token, what = parts[1], parts[2]
        else:
            return self._refuse("?")
        if what not in TOKEN_ROUTES:
            return self._refuse("?")
        entry = self.endpoint.tokens.entry(token)
        why = refusal(entry, entry and self.endpoint.spent.get(token_digest(token)), time.time())
        if why is not None:
            return self._refuse(what, why, entry.get("name") if entry else None)
        return getattr(self, f"_serve_{what}")(entry["name"], token)

    def _serve_project(self, rest: list[str]) -> None:
        """/v1/project and /v1/project/digest, to the update key (not the token: it does not expire)."""
        auth = self.headers.get("Authorization", "")
        name = self.endpoint.tokens.by_key(auth[7:] if auth.startswith("Bearer ") else "")
        what = "project-digest" if rest == ["digest"] else "project" if not rest else "?"
        project = self.endpoint.project() if name is not None and what != "?" else None
        if project is None:
            return self._refuse(what)
        data, digest = project
        if what == "project-digest":
            return self._send(name, what, (digest + "\n").encode(), content_type="text/plain")
        return self._send(name, what, data, content_type="application/x-tar", headers={"X-Infra-Digest": digest})

    def _serve_script(self, name: str, token: str) -> None:
        self._send(name, "script", self.endpoint.script.replace("@TOKEN@", token).encode(),
                   content_type="text/x-shellscript")

    def _serve_settings(self, name: str, token: str) -> None:
        values = {**self.endpoint.file_settings(), "VOLUNTEER": name}
        text = "".join(f"{key}={value}\n" for key, value in sorted(values.items()))
        self._send(name, "settings", text.encode(), content_type="text/plain")

    def _serve_bundle(self, name: str, token: str) -> None:
        """The exchange: recorded as spent before anything is sent, so a second request gets nothing
        even while this one is under way (a bundle lost on the way costs a new line, never a second copy)."""
        entry = self.endpoint.tokens.entry(token)
        if not entry or not self.endpoint.spent.spend(token_digest(token), name, time.time()):
            return self._refuse("bundle", "spent", name)
        self._send(name, "bundle", self.endpoint.bundle(name, token, entry), content_type="application/x-tar")

    def _serve_image(self, name: str, token: str) -> None:
        self._serve_file(name, "image", "image.tar.gz")

    def _serve_context(self, name: str, token: str) -> None:
        self._serve_file(name, "context", CONTEXT_FILE)

    def _serve_file(self, name: str, what: str, file_name: str) -> None:
        """A file infra put beside the endpoint (streamed), or 403 when there is none."""
        path = os.path.join(self.endpoint.files_dir, file_name)
        if not os.path.isfile(path):
            return self._refuse(what)
        self._send(name, what, path=path, content_type="application/gzip")


def make_handler(endpoint: Endpoint) -> type[Handler]:
    """The handler class http.server makes one object of per request, serving `endpoint`."""
    return type("EndpointHandler", (Handler,), {"endpoint": endpoint})


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def tls_context(config_dir: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(os.path.join(config_dir, "server.crt"), os.path.join(config_dir, "server.key"))
    return context


def serve(config_dir: str = CONFIG_DIR, port: int = PORT) -> None:
    endpoint = Endpoint(config_dir)
    server = _Server(("", port), make_handler(endpoint))
    context = tls_context(config_dir)

    # TLS per connection, in its thread: a client that never finishes its handshake holds up no one.
    def get_request():
        sock, address = server.socket.accept()
        sock.settimeout(30)
        return context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

    server.get_request = get_request
    log({"event": "listening", "port": port, "cluster": endpoint.settings.get("cluster")})
    server.serve_forever()


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # PID 1 ignores SIGTERM unless it asks for it
    try:
        serve()
    except KeyboardInterrupt:
        pass
