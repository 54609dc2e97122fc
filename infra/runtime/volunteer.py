"""A volunteer's worker: `python -m infra_runtime.volunteer` in the container the join line starts.

It keeps the project current and runs one Celery worker:
- at start, it fetches the project from the cluster's join endpoint (HTTPS, the cluster CA alone
  trusted, the update key of the bundle) into its volume, unless it has that version already;
  when the endpoint cannot be reached it runs the copy it has;
- every `check_every` seconds (120) it asks for the project's digest; when it changed (`infra
  sync-files` on the master), it stops the worker warmly (running tasks finish), fetches the new
  project and starts the worker again. A restart of the container does the same at once.
- when the endpoint answers 403, the volunteer was revoked: the worker is stopped and this
  process waits, doing nothing, until the volunteer removes the container (the leave line).

Settings, credentials and the project live in VOLUNTEER_STATE (a docker volume of the
volunteer's machine): volunteer.json (the node name and the update key), celery.env (the broker
and result-backend credentials, read by infra_runtime.boot), ca.crt, project/. The join line's
token was exchanged for them once; a restart of the container reads them again and needs no token.
Standard library only.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import shutil
import signal
import ssl
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request

from .endpoint import VOLUNTEER_STATE

REQUEST_TIMEOUT = 60
RETRY_SECONDS = 30


# infra_runtime.volunteer_worker in the image. __package__, not __name__: run with `python -m`, this
# module is __main__.
WORKER_MODULE = f"{__package__}.volunteer_worker"


def worker_command(settings: dict, node: str) -> list[str]:
    """The volunteer's Celery worker, as its broker user allows (`volunteer_worker`): no mingle and no
    gossip (they broadcast and read every node's events), remote control kept so `ping` answers,
    task events sent (Flower and `infra volunteer list` count them)."""
    return [sys.executable, "-m", WORKER_MODULE, *settings["app_args"], "--hostname", node,
            "--queues", ",".join(settings["queues"]), "--without-mingle", "--without-gossip",
            "--loglevel", "INFO", "--task-events"]


class Revoked(Exception):
    """The endpoint refused this volunteer's key."""


def node_name(settings: dict) -> str:
    """The whole Celery node name infra gave this worker in the bundle, used as is: the volunteer chooses
    no part of it (the broker lets its user name queues after that name's prefix alone)."""
    name = settings.get("node_name")
    if not name:
        raise ValueError("the bundle names no node: it comes from an older infra; ask for a new line")
    return name


def safe_members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """Regular files and folders with relative paths that stay inside; anything else is refused."""
    members = []
    for member in tar.getmembers():
        name = posixpath.normpath(member.name)
        if name.startswith(("/", "../")) or name == ".." or not (member.isreg() or member.isdir()):
            raise ValueError(f"refused project entry {member.name!r}")
        member.mode &= 0o755
        members.append(member)
    return members


def unpack_project(data: bytes, digest: str, state: str = VOLUNTEER_STATE) -> None:
    """Replace state/project with the tar's content, then record its digest."""
    new, current, old = (os.path.join(state, name) for name in ("project.new", "project", "project.old"))
    for path in (new, old):
        shutil.rmtree(path, ignore_errors=True)
    os.makedirs(new)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in safe_members(tar):
            target = os.path.join(new, posixpath.normpath(member.name))
            if member.isdir():
                os.makedirs(target, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with tar.extractfile(member) as source, open(target, "wb") as handle:
                shutil.copyfileobj(source, handle)
            os.chmod(target, member.mode)
    if os.path.isdir(current):
        os.rename(current, old)
    os.rename(new, current)
    shutil.rmtree(old, ignore_errors=True)
    with open(os.path.join(state, "project.digest"), "w", encoding="utf-8") as handle:
        handle.write(digest + "\n")


class Volunteer:
    def __init__(self, state: str = VOLUNTEER_STATE):
        self.state = state
        with open(os.path.join(state, "volunteer.json"), encoding="utf-8") as handle:
            self.settings = json.load(handle)
        self.context = ssl.create_default_context(cafile=os.path.join(state, "ca.crt"))
        self.worker: subprocess.Popen | None = None
        self.stopping = False

    # ---- the endpoint

    def _get(self, path: str) -> urllib.request.addinfourl:
        request = urllib.request.Request(self.settings["endpoint"].rstrip("/") + path, headers={
            "Authorization": f"Bearer {self.settings['update_key']}", "X-Infra-Arch": os.uname().machine})
        try:
            return urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT, context=self.context)
        except urllib.error.HTTPError as exc:
            if exc.code == 403:
                raise Revoked() from None
            raise

    def current_digest(self) -> str | None:
        try:
            with open(os.path.join(self.state, "project.digest"), encoding="utf-8") as handle:
                return handle.read().strip() or None
        except OSError:
            return None

    def remote_digest(self) -> str:
        with self._get("/v1/project/digest") as answer:
            return answer.read().decode().strip()

    def update_project(self) -> bool:
        """Fetch the project when the endpoint has another version; True when it changed."""
        if self.remote_digest() == self.current_digest():
            return False
        with self._get("/v1/project") as answer:
            data = answer.read()
            digest = answer.headers.get("X-Infra-Digest") or hashlib.sha256(data).hexdigest()
        if hashlib.sha256(data).hexdigest() != digest:
            raise OSError("the project arrived damaged")
        unpack_project(data, digest, self.state)
        print(f"infra-volunteer: project {digest[:12]} in place", flush=True)
        return True

    # ---- the worker

    def start_worker(self, concurrency: str | None) -> None:
        project = os.path.join(self.state, "project")
        command = worker_command(self.settings, node_name(self.settings))
        if concurrency:
            command += ["--concurrency", concurrency]
        env = {**os.environ, "PYTHONPATH": project}
        self.worker = subprocess.Popen(command, cwd=project, env=env)

    def stop_worker(self, timeout: float | None = None) -> None:
        """Warm shutdown: the worker takes no new task and ends when its running tasks are done."""
        if self.worker is not None and self.worker.poll() is None:
            self.worker.send_signal(signal.SIGTERM)
            try:
                self.worker.wait(timeout)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait()
        self.worker = None

    def wait_revoked(self) -> None:
        print("infra-volunteer: this volunteer was revoked by the cluster; nothing runs any more. "
              "Remove it with the leave line you were given.", flush=True)
        self.stop_worker(timeout=30)
        while not self.stopping:
            time.sleep(5)

    def run(self, concurrency: str | None) -> int:
        check_every = float(self.settings.get("check_every", 120))
        while not self.stopping:
            try:
                self.update_project()
                break
            except Revoked:
                self.wait_revoked()
                return 0
            except (OSError, ValueError, tarfile.TarError) as exc:
                if os.path.isdir(os.path.join(self.state, "project")):
                    print(f"infra-volunteer: the endpoint cannot be asked ({exc}); running the project I have",
                          flush=True)
                    break
                print(f"infra-volunteer: no project yet and the endpoint cannot be asked ({exc}); "
                      f"trying again in {RETRY_SECONDS} s", flush=True)
                time.sleep(RETRY_SECONDS)
        if self.stopping:
            return 0
        self.start_worker(concurrency)
        while not self.stopping:
            try:
                code = self.worker.wait(check_every)
                return code  # the worker ended by itself: the container's restart policy decides
            except subprocess.TimeoutExpired:
                pass
            try:
                if self.remote_digest() != self.current_digest():
                    print("infra-volunteer: the project changed; restarting the worker once its tasks are done",
                          flush=True)
                    self.stop_worker()
                    self.update_project()
                    self.start_worker(concurrency)
            except Revoked:
                self.wait_revoked()
                return 0
            except (OSError, ValueError, tarfile.TarError) as exc:
                print(f"infra-volunteer: project check failed ({exc}); trying again later", flush=True)
                if self.worker is None:
                    self.start_worker(concurrency)
        return 0


def main(argv: list[str]) -> int:
    concurrency = argv[0] if argv and argv[0].isdigit() else None
    volunteer = Volunteer()

    def stop(signum, _frame) -> None:
        volunteer.stopping = True
        if volunteer.worker is not None and volunteer.worker.poll() is None:
            volunteer.worker.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = volunteer.run(concurrency)
    if volunteer.worker is not None:
        volunteer.worker.wait()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
