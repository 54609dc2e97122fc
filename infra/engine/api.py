"""A host's Docker engine: infra's engine operations (`infra.commands.engine`) carried out as Docker SDK calls.

`Engine.query` answers the read-only operations, `Engine.apply` makes changes, `save`/`load`
stream images, `exec` runs a process in a container and `logs` reads a container's log.
Every failure becomes one of infra's errors, in one line:

- the engine refused or failed an operation (no such container, name in use, a build step
  failed): `RemoteCommandError`, naming the equivalent docker command;
- the engine cannot be used at all (Docker missing, engine stopped, no permission):
  `EngineUnavailableError`, raised by the transport, with the reason;
- the connection to the engine broke or stalled: `ConnectError`.

This module and `transport.py` are the only ones that import the Docker SDK.
"""

from __future__ import annotations

import fnmatch
import os
import threading
import time
import urllib.parse
from contextlib import contextmanager, suppress
from typing import Any, Callable, Iterable, Iterator

import docker
import docker.errors
import paramiko
import requests
import urllib3.exceptions
from docker.types import CancellableStream
from docker.utils.json_stream import json_stream

from ..commands.engine import (
    BuildImage,
    CreateNetwork,
    CreateVolume,
    EngineOp,
    EngineVersion,
    Exec,
    InspectContainers,
    InspectImages,
    ListContainers,
    ListImageRefs,
    ListNetworks,
    ListVolumes,
    LoadImages,
    Logs,
    PullImage,
    PushImage,
    RemoveContainers,
    RemoveNetwork,
    RemoveVolume,
    RestartContainer,
    RunContainer,
    SaveImages,
    StartContainer,
    TagImage,
    UntagImage,
)
from ..errors import ConnectError, InfraError, RemoteCommandError
from ..names import LABEL_CLUSTER, cluster_label
from ..transport.result import CommandResult, LineBuffer
from .transport import (
    API_TIMEOUT,
    describe_transport_error,
    local_api_client,
    ssh_api_client,
)
from .wire import STDERR, STDOUT, Progress, create_arguments, iter_frames, logs_params

LineCallback = Callable[[str], None]

# Longest silence tolerated in a build's, pull's or image transfer's stream (seconds), unless the
# engine is given another (the cluster file's timeouts.image): a build step may compute quietly.
LONG_TIMEOUT = 3600.0
SAVE_CHUNK_SIZE = 1 << 20
# After an exec's output ends, how long the engine may take to record its exit code.
EXEC_EXIT_WAIT = 5.0
TIMEOUT_EXIT_CODE = 124  # as timeout(1), and as infra's runner reports a command that timed out
MAX_COMMAND_TEXT = 160


class Engine:
    """One host's Docker engine, over the host's SSH connection or this machine's socket."""

    def __init__(self, host: str, api: docker.APIClient, *, timeout: float = API_TIMEOUT,
                 long_timeout: float = LONG_TIMEOUT):
        self.host = host
        self._api = api
        self.timeout = timeout  # for an answer to one call (a frozen engine is reported after it)
        self.long_timeout = long_timeout  # for silence in a build's, pull's or transfer's stream

    @classmethod
    def over_ssh(cls, host: str, transport: paramiko.Transport, *, timeout: float = API_TIMEOUT,
                 long_timeout: float = LONG_TIMEOUT, **options: Any) -> "Engine":
        """The engine of a host reached through `transport` (one channel per pooled HTTP connection)."""
        return cls(host, ssh_api_client(host, transport, timeout=timeout, **options), timeout=timeout,
                   long_timeout=long_timeout)

    @classmethod
    def local(cls, host: str = "local", *, timeout: float = API_TIMEOUT, long_timeout: float = LONG_TIMEOUT,
              **options: Any) -> "Engine":
        """This machine's engine: `DOCKER_HOST` if set, else the default unix socket."""
        return cls(host, local_api_client(host, timeout=timeout, **options), timeout=timeout,
                   long_timeout=long_timeout)

    @property
    def api_version(self) -> str:
        """The Engine API version negotiated with the engine (e.g. "1.41" for Docker 20.10)."""
        return self._api.api_version

    def close(self) -> None:
        """Close the pooled connections (streams still open end with their own responses)."""
        self._api.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Engine {self.host} API {self.api_version}>"

    # ------------------------------------------------------------------ queries

    def query(self, op: EngineOp) -> Any:
        """The answer to a read-only operation (see each operation's docstring for its shape)."""
        handler = _QUERIES.get(type(op))
        if handler is None:
            raise TypeError(f"{type(op).__name__} is not an engine query")
        with self._errors(op):
            return handler(self, op)

    def _version(self, op: EngineVersion) -> dict:
        return self._api.version()

    def _list_containers(self, op: ListContainers) -> list[dict]:
        return self._api.containers(all=True, filters={"label": cluster_label(op.cluster)})

    def _inspect_containers(self, op: InspectContainers) -> list[dict]:
        found = []
        for name in op.names:
            try:
                found.append(self._api.inspect_container(name))
            except docker.errors.NotFound:
                continue  # removed meanwhile, or never there: absent from the answer
        return found

    def _inspect_images(self, op: InspectImages) -> dict[str, dict | None]:
        answer: dict[str, dict | None] = {}
        for ref in op.refs:
            try:
                image = self._api.inspect_image(ref)
            except docker.errors.NotFound:
                answer[ref] = None
                continue
            answer[ref] = {"Id": image.get("Id", ""), "Labels": dict((image.get("Config") or {}).get("Labels") or {}),
                           "Layers": list((image.get("RootFS") or {}).get("Layers") or [])}
        return answer

    def _list_image_refs(self, op: ListImageRefs) -> list[str]:
        # Several reference filters: an image matching any of them (the engine's rule). The
        # engine lists only the matching names of such an image; its other names are left out
        # here too, whatever the engine's version, since the caller removes what it gets.
        images = self._api.images(filters={"reference": list(op.patterns)}) if op.patterns else []
        return sorted({tag for image in images for tag in image.get("RepoTags") or ()
                       if any(fnmatch.fnmatchcase(tag.rpartition(":")[0], pattern) for pattern in op.patterns)})

    def _list_networks(self, op: ListNetworks) -> list[str]:
        return sorted(network["Name"] for network in self._api.networks(filters={"label": cluster_label(op.cluster)}))

    def _list_volumes(self, op: ListVolumes) -> list[str]:
        listed = self._api.volumes(filters={"label": cluster_label(op.cluster)})
        return sorted(volume["Name"] for volume in (listed.get("Volumes") or []))

    # ------------------------------------------------------------------ changes

    def apply(self, op: EngineOp, on_line: LineCallback | None = None) -> str | None:
        """Carry out a change; returns the id of what it made (container, image, network), else None.

        `on_line` receives progress lines: a build's log, a pull's status changes, warnings.
        """
        handler = _CHANGES.get(type(op))
        if handler is None:
            raise TypeError(f"{type(op).__name__} is not an engine change")
        with self._errors(op):
            return handler(self, op, on_line)

    def _run_container(self, op: RunContainer, on_line: LineCallback | None) -> str:
        arguments = create_arguments(op)
        created = self._api.create_container_from_config(arguments["config"], name=arguments["name"])
        for warning in created.get("Warnings") or []:
            if on_line:
                on_line(f"warning: {warning}")
        container_id = created["Id"]
        try:
            self._api.start(container_id)
        except BaseException:
            # `docker run` would leave the created container behind, and the next attempt would
            # find its name taken; remove it so that a retry starts clean.
            with suppress(Exception):
                self._api.remove_container(container_id, force=True)
            raise
        return container_id

    def _remove_containers(self, op: RemoveContainers, on_line: LineCallback | None) -> None:
        for name in op.names:
            try:
                self._api.remove_container(name, force=True)
            except docker.errors.NotFound:
                continue
            except docker.errors.APIError as exc:
                if exc.status_code == 409 and "already in progress" in str(exc.explanation or ""):
                    continue  # another removal of it is under way: it is going
                raise

    def _start_container(self, op: StartContainer, on_line: LineCallback | None) -> None:
        self._api.start(op.name)

    def _restart_container(self, op: RestartContainer, on_line: LineCallback | None) -> None:
        self._api.restart(op.name, timeout=op.timeout)

    def _create_network(self, op: CreateNetwork, on_line: LineCallback | None) -> str:
        # check_duplicate: engines before API 1.44 otherwise make a second network of the same name.
        created = self._api.create_network(op.name, labels={LABEL_CLUSTER: op.cluster}, check_duplicate=True)
        return created["Id"]

    def _remove_network(self, op: RemoveNetwork, on_line: LineCallback | None) -> None:
        with suppress(docker.errors.NotFound):
            self._api.remove_network(op.name)

    def _create_volume(self, op: CreateVolume, on_line: LineCallback | None) -> str:
        return self._api.create_volume(op.name, labels={LABEL_CLUSTER: op.cluster})["Name"]

    def _remove_volume(self, op: RemoveVolume, on_line: LineCallback | None) -> None:
        with suppress(docker.errors.NotFound):
            self._api.remove_volume(op.name, force=True)

    def _build_image(self, op: BuildImage, on_line: LineCallback | None) -> str:
        if not os.path.isdir(op.context_dir):
            raise InfraError(f"{self.host}: the build context {op.context_dir} is not a folder")
        progress = Progress(on_line)
        # The SDK tars the folder (honouring its .dockerignore) into a temporary file and
        # streams that to the engine.
        messages = self._api.build(
            path=op.context_dir, dockerfile=op.dockerfile, target=op.target, tag=op.tag, rm=True, forcerm=True,
            network_mode="host", buildargs=dict(op.build_args), labels=dict(op.labels) or None,
            decode=True, timeout=self.long_timeout,
        )
        for message in messages:
            progress.feed(message)
        progress.close()
        if progress.error:
            raise RemoteCommandError(self.host, _shortened(op.text()), 1, progress.failure())
        return progress.image_id or self._api.inspect_image(op.tag)["Id"]

    def _pull_image(self, op: PullImage, on_line: LineCallback | None) -> str:
        progress = Progress(on_line)
        for message in self._api.pull(op.ref, stream=True, decode=True, auth_config=_auth_config(op.login)):
            progress.feed(message)
        progress.close()
        if progress.error:
            raise RemoteCommandError(self.host, _shortened(op.text()), 1, progress.failure())
        return self._api.inspect_image(op.ref)["Id"]

    def _push_image(self, op: PushImage, on_line: LineCallback | None) -> None:
        repository, _, tag = op.ref.rpartition(":")
        progress = Progress(on_line)
        for message in self._api.push(repository, tag=tag, stream=True, decode=True,
                                      auth_config=_auth_config(op.login)):
            progress.feed(message)
        progress.close()
        if progress.error:
            raise RemoteCommandError(self.host, _shortened(op.text()), 1, progress.failure())

    def _tag_image(self, op: TagImage, on_line: LineCallback | None) -> None:
        repository, _, tag = op.ref.rpartition(":")
        self._api.tag(op.source, repository, tag=tag)

    def _untag_image(self, op: UntagImage, on_line: LineCallback | None) -> None:
        try:
            self._api.remove_image(op.ref, noprune=True)
        except docker.errors.NotFound:
            pass

    # ------------------------------------------------------------------ image transfer

    def save(self, op: SaveImages) -> Iterator[bytes]:
        """The images as one tar stream, in chunks, read as they are consumed (nothing held in memory).

        The request starts at the first chunk asked for; its errors are raised from there.
        """
        with self._errors(op):
            response = self._request("GET", "/images/get", params={"names": list(op.refs)}, stream=True,
                                     timeout=self.long_timeout)
        try:
            with self._errors(op):
                yield from response.iter_content(SAVE_CHUNK_SIZE)
        finally:
            response.close()

    def load(self, op: LoadImages, chunks: Iterable[bytes]) -> list[str]:
        """Load images from a tar stream, sent as it is read (chunked upload); returns what the engine loaded.

        An error raised while producing `chunks` (the source engine failing) propagates as it is.
        """
        loaded: list[str] = []

        def note(line: str) -> None:
            if line.startswith("Loaded image"):
                loaded.append(line.partition(": ")[2].strip())

        progress = Progress(note)
        with self._errors(op):
            response = self._request("POST", "/images/load", params={"quiet": 1}, data=iter(chunks),
                                     headers={"Content-Type": "application/x-tar"}, stream=True,
                                     timeout=self.long_timeout)
            try:
                for message in json_stream(response.iter_content(chunk_size=None)):
                    progress.feed(message)
            finally:
                response.close()
        progress.close()
        if progress.error:
            raise RemoteCommandError(self.host, op.text(), 1, progress.failure())
        return loaded

    # ------------------------------------------------------------------ processes and logs

    def exec(self, op: Exec, *, on_stdout: LineCallback | None = None, on_stderr: LineCallback | None = None,
             timeout: float | None = None, keep_output: bool = True) -> CommandResult:
        """Run a process in a running container: its exit code and output (stdout and stderr apart).

        Lines go to the callbacks as they arrive (from a reader thread); with `keep_output`
        False they go there only, and the result's output is empty: a stream that may run for
        days (a sweep's) is not held in memory. After `timeout`
        seconds the stream is cut and exit code 124 returned; the engine has no way to signal
        an exec'd process, so a process that ignores its closed output keeps running.
        A missing or stopped container is a RemoteCommandError; a non-zero exit code is not.
        """
        started = time.monotonic()
        with self._errors(op):
            exec_id = self._api.exec_create(op.container, list(op.command), stdout=True, stderr=True,
                                            workdir=op.workdir)["Id"]
            # Started without "Upgrade: tcp": the engine then answers "200 OK" and streams the
            # output until the process ends, as a plain response body. (On an upgraded
            # connection, output that arrives with the headers can be buffered out of reach.)
            response = self._request("POST", f"/exec/{exec_id}/start", json={"Detach": False, "Tty": False},
                                     stream=True, timeout=(self.timeout, None))
        output = {STDOUT: bytearray(), STDERR: bytearray()}
        lines = {STDOUT: LineBuffer(on_stdout), STDERR: LineBuffer(on_stderr)}
        failures: list[BaseException] = []

        def pump() -> None:
            try:
                for stream, data in iter_frames(response.raw.read):
                    if stream in output:
                        if keep_output:
                            output[stream].extend(data)
                        lines[stream].feed(data)
            except BaseException as exc:  # handed to the calling thread
                failures.append(exc)

        reader = threading.Thread(target=pump, name=f"exec on {self.host}", daemon=True)
        reader.start()
        reader.join(None if timeout is None else max(0.0, timeout - (time.monotonic() - started)))
        timed_out = reader.is_alive()
        if timed_out:
            _cut(response)
            reader.join(5)
        if not reader.is_alive():  # (a reader that would not stop is left to end with its channel)
            response.close()
            for buffer in lines.values():
                buffer.close()
        stdout, stderr = (output[s].decode(errors="replace") for s in (STDOUT, STDERR))
        if timed_out:
            separator = "\n" if stderr and not stderr.endswith("\n") else ""
            return CommandResult(TIMEOUT_EXIT_CODE, stdout, f"{stderr}{separator}timed out after {timeout:g} s")
        if failures:
            with self._errors(op):
                raise failures[0]
        return CommandResult(self._exec_exit_code(op, exec_id), stdout, stderr)

    def _exec_exit_code(self, op: Exec, exec_id: str) -> int:
        # The output ends when the process does; the engine records the exit code a moment later.
        deadline = time.monotonic() + EXEC_EXIT_WAIT
        while True:
            with self._errors(op):
                state = self._api.exec_inspect(exec_id)
            if not state.get("Running") and state.get("ExitCode") is not None:
                return int(state["ExitCode"])
            if time.monotonic() > deadline:
                return -1  # unknown, as for a command that gave no exit status
            time.sleep(0.05)

    def logs(self, op: Logs, on_line: LineCallback, stop: threading.Event | None = None) -> None:
        """Each log line, as text with Docker's timestamp first, to `on_line` (from the calling thread).

        With `follow`, returns when the container ends or when `stop` is set; then the stream
        is closed, which ends it on the engine's side too.
        """
        with self._errors(op):
            tty = bool((self._api.inspect_container(op.container).get("Config") or {}).get("Tty"))
            response = self._request("GET", f"/containers/{urllib.parse.quote(op.container, safe='')}/logs",
                                     params=logs_params(op), stream=True,
                                     timeout=(self.timeout, None if op.follow else self.timeout))
        finished = threading.Event()
        if stop is not None:
            def cut_when_stopped() -> None:
                while not finished.is_set():
                    if stop.wait(0.1):
                        _cut(response)
                        return

            threading.Thread(target=cut_when_stopped, name=f"logs on {self.host}", daemon=True).start()
        buffers = {STDOUT: LineBuffer(on_line), STDERR: LineBuffer(on_line)}
        try:
            if tty:  # a TTY's output is one raw stream
                for chunk in response.iter_content(chunk_size=None):
                    buffers[STDOUT].feed(chunk)
            else:
                for stream, data in iter_frames(response.raw.read):
                    if stream in buffers:
                        buffers[stream].feed(data)
        except Exception:
            if stop is not None and stop.is_set():
                return  # the stream was cut on purpose
            with self._errors(op):
                raise
        finally:
            finished.set()
            response.close()
            for buffer in buffers.values():
                buffer.close()

    # ------------------------------------------------------------------ plumbing

    def _request(self, method: str, path: str, *, timeout: Any = None, **kwargs: Any) -> requests.Response:
        """An Engine API request the SDK has no method for (or none that streams as needed here).

        Goes through the client's own session (so through the host's channels); an error
        status raises the SDK's own APIError/NotFound, as its methods do.
        """
        url = f"{self._api.base_url}/v{self._api.api_version}{path}"
        response = self._api.request(method, url, timeout=self.timeout if timeout is None else timeout, **kwargs)
        if response.status_code >= 400:
            try:
                response.raise_for_status()
            except requests.exceptions.HTTPError as exc:
                docker.errors.create_api_error_from_http_exception(exc)  # raises
        return response

    @contextmanager
    def _errors(self, op: EngineOp) -> Iterator[None]:
        """Turn whatever the SDK, requests or the channel raise into one of infra's one-line errors."""
        try:
            yield
        except InfraError:
            raise
        except docker.errors.APIError as exc:
            raise RemoteCommandError(self.host, _shortened(op.text()), 1, api_message(exc)) from None
        except docker.errors.DockerException as exc:
            raise RemoteCommandError(self.host, _shortened(op.text()), 1, _one_line(str(exc))) from None
        except OSError as exc:
            if exc.filename:  # a local file (the build context): not the connection's fault
                raise InfraError(f"{self.host}: `{_shortened(op.text())}`: "
                                 f"{exc.strerror or exc}: {exc.filename}") from None
            raise self._lost(exc) from None
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError,
                paramiko.SSHException, EOFError) as exc:
            raise self._lost(exc) from None

    def _lost(self, exc: BaseException) -> ConnectError:
        return ConnectError(f"{self.host}: lost the connection to the Docker engine: {describe_transport_error(exc)}")


_QUERIES: dict[type, Callable[[Engine, Any], Any]] = {
    EngineVersion: Engine._version,
    ListContainers: Engine._list_containers,
    InspectContainers: Engine._inspect_containers,
    InspectImages: Engine._inspect_images,
    ListImageRefs: Engine._list_image_refs,
    ListNetworks: Engine._list_networks,
    ListVolumes: Engine._list_volumes,
}

_CHANGES: dict[type, Callable[[Engine, Any, LineCallback | None], Any]] = {
    RunContainer: Engine._run_container,
    RemoveContainers: Engine._remove_containers,
    StartContainer: Engine._start_container,
    RestartContainer: Engine._restart_container,
    CreateNetwork: Engine._create_network,
    RemoveNetwork: Engine._remove_network,
    CreateVolume: Engine._create_volume,
    RemoveVolume: Engine._remove_volume,
    BuildImage: Engine._build_image,
    PullImage: Engine._pull_image,
    PushImage: Engine._push_image,
    TagImage: Engine._tag_image,
    UntagImage: Engine._untag_image,
}


def _auth_config(login) -> dict[str, str] | None:
    """A registry login as the SDK sends it (the X-Registry-Auth header); None: the engine's own."""
    return login.auth_config() if login is not None else None


def api_message(exc: docker.errors.APIError) -> str:
    """The engine's own explanation of a refused request ("No such container: x"), in one line."""
    if exc.explanation:
        return _one_line(str(exc.explanation))
    response = exc.response
    if response is not None:
        return f"HTTP {response.status_code} {response.reason or ''}".strip()
    return _one_line(str(exc))


def _cut(response: requests.Response) -> None:
    """Stop a streaming response from another thread: its reader wakes up, the engine's side ends.

    A dial-stdio channel closes on shutdown (ending dial-stdio on the host); a unix socket
    wakes its reader and is closed with the response.
    """
    try:
        response.raw.shutdown()  # urllib3 2.3+
    except AttributeError:
        with suppress(Exception):
            CancellableStream(iter(()), response).close()  # the SDK's own way to find the socket
    except Exception:
        pass  # already finished: nothing to stop


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _shortened(text: str) -> str:
    return text if len(text) <= MAX_COMMAND_TEXT else text[: MAX_COMMAND_TEXT - 3] + "..."
