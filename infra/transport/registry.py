"""Images sent by layers: a registry on this machine, reached by each host through its SSH connection.

With `images.source: ship` the images are built here. To send them, `infra up` starts Debian's
`docker-registry` on this machine's loopback (its storage in `STATE_DIR/NAME/registry`, kept
between runs), pushes the images into it from this machine's engine, and asks each host's engine
to pull them from `127.0.0.1:PORT`: a port the host's sshd forwards back here through infra's own
SSH connection (a remote forward, as `ssh -R`). The host's engine then fetches only the layers it
lacks, several at once, and a layer that several images share once.

Nothing listens on an address other than loopback, on either side, and layers cross the network
inside SSH only. Docker treats registries on 127.0.0.0/8 as local: plain HTTP is allowed there
without any setting of the engine. Every local user of a host can reach its forwarded port, so
each start makes a new login (`login`), which engines get with each push and pull only; the
registry deletes nothing through its API; and its configuration and `htpasswd` are removed when
it stops.

What is written and run, and which tags a prune forgets, is decided in `infra.commands.registry`.
"""

from __future__ import annotations

import base64
import ctypes
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from ..commands.registry import (
    REGISTRY_PROGRAM,
    HeldTag,
    RegistryLogin,
    config_path,
    config_text,
    garbage_collect_argv,
    gc_config_path,
    gc_config_text,
    htpasswd_line,
    htpasswd_path,
    new_login,
    serve_argv,
    tags_folder,
    tags_to_forget,
)
from ..errors import InfraError

START_TIMEOUT = 15.0  # seconds for the registry to answer after it starts
STOP_TIMEOUT = 5.0
GC_TIMEOUT = 300.0  # seconds for garbage-collect to walk the store
LOG_TAIL = 400  # characters of the registry's log quoted when it fails to start
MANIFEST_TYPES = ("application/vnd.docker.distribution.manifest.v2+json, "
                  "application/vnd.oci.image.manifest.v1+json")


class RegistryUnavailable(InfraError):
    """The registry cannot run here; the images are then sent whole."""


def _free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def _remove(*paths: Path) -> None:
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def _end_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to stop the registry when infra ends, even by `kill -9`: no registry is left behind."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class LocalRegistry:
    """Debian's `docker-registry`, serving on this machine's loopback while `up` sends images."""

    def __init__(self, storage: Path):
        self.storage = storage
        self.port = 0
        self.login: RegistryLogin | None = None  # made anew by each start
        self._process: subprocess.Popen | None = None

    def start(self) -> "LocalRegistry":
        program = shutil.which(REGISTRY_PROGRAM)
        if program is None:
            raise RegistryUnavailable(f"local: {REGISTRY_PROGRAM} is not installed (`infra bootstrap --hosts local` "
                                      f"installs it), so images are sent whole")
        self.storage.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.port = _free_loopback_port()
        self.login = new_login()
        _write_private(htpasswd_path(self.storage), htpasswd_line(self.login))
        config = config_path(self.storage)
        _write_private(config, config_text(self.storage, self.port))
        try:
            self._serve(program, config)
        except BaseException:
            self.stop()
            raise
        return self

    def _serve(self, program: str, config: Path) -> None:
        log = self.storage / "registry.log"
        with open(log, "wb") as sink:  # one run's log: what went wrong is quoted when it fails to start
            # Started from the thread that lives as long as infra: Linux signals the child when the
            # thread that forked it ends.
            self._process = subprocess.Popen(serve_argv(program, config), stdin=subprocess.DEVNULL,
                                             stdout=sink, stderr=subprocess.STDOUT, close_fds=True,
                                             preexec_fn=_end_with_parent)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._process.poll() is not None:
                said = " ".join(log.read_text(errors="replace").split())[-LOG_TAIL:]
                raise RegistryUnavailable(f"local: {REGISTRY_PROGRAM} stopped at once "
                                          f"(exit {self._process.returncode}: {said or 'no output'})")
            if self._answers():
                return
            if time.monotonic() > deadline:
                raise RegistryUnavailable(f"local: {REGISTRY_PROGRAM} did not answer on 127.0.0.1:{self.port} "
                                          f"within {START_TIMEOUT:g} s")
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            status, _ = self._get("/v2/")
        except OSError:
            return False
        return status == 200

    def _get(self, path: str, accept: str | None = None) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        login = f"{self.login.username}:{self.login.password}".encode()
        headers = {"Authorization": "Basic " + base64.b64encode(login).decode()}
        if accept:
            headers["Accept"] = accept
        try:
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def ref(self, repository: str, tag: str, port: int | None = None) -> str:
        """How an engine names the image: here, or on a host through its forwarded `port`."""
        return f"127.0.0.1:{port or self.port}/{repository}:{tag}"

    def layer_sizes(self, repository: str, tag: str) -> dict[str, int]:
        """{short layer id (as a pull reports it): compressed size} of an image in the registry."""
        status, body = self._get(f"/v2/{repository}/manifests/{tag}", accept=MANIFEST_TYPES)
        if status != 200:
            return {}
        manifest = json.loads(body)
        return {layer["digest"].partition(":")[2][:12]: int(layer.get("size", 0))
                for layer in manifest.get("layers", [])}

    def prune(self, keep: dict[str, set[str]]) -> int:
        """Forget every tag of these repositories but the ones to keep, then delete the layers no
        image uses any more (`docker-registry garbage-collect`). Only while stopped. Returns the
        number of tags forgotten; the store then holds the current images and nothing else."""
        program = shutil.which(REGISTRY_PROGRAM)
        forgotten = tags_to_forget(self._held_tags(keep), keep)
        for repository, tag in forgotten:
            shutil.rmtree(tags_folder(self.storage, repository) / tag)
        if forgotten and program is not None:
            config = gc_config_path(self.storage)
            _write_private(config, gc_config_text(self.storage))
            try:
                subprocess.run(garbage_collect_argv(program, config),
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               timeout=GC_TIMEOUT, check=True)
            finally:
                _remove(config)
        return len(forgotten)

    def _held_tags(self, repositories) -> dict[str, list[HeldTag]]:
        """The entries of these repositories' tags folders (a repository never pushed has none)."""
        held = {}
        for repository in repositories:
            folder = tags_folder(self.storage, repository)
            if folder.is_dir():
                held[repository] = [HeldTag(entry.name, entry.is_symlink()) for entry in folder.iterdir()]
        return held

    def stop(self) -> None:
        """Stop serving, and remove the login and the configuration: nothing of this run's is left."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        _remove(htpasswd_path(self.storage), config_path(self.storage))

    def __enter__(self) -> "LocalRegistry":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


