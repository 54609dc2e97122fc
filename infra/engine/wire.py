"""Pure translations between engine operations and the Docker Engine API's wire format.

No I/O and no `docker` import: what a `RunContainer` becomes as a create request, which API
version to speak, how a multiplexed output stream splits into frames, what a build's JSON
progress means. `infra.engine.api` sends and receives; this module decides.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator

from ..commands.engine import LOG_DRIVER, LOG_OPTIONS
from ..transport.result import LineCallback

if TYPE_CHECKING:
    from ..commands.engine import ContainerSpec, Logs, RunContainer


# Streams of a multiplexed (non-TTY) attach, exec or logs answer: an 8-byte header per frame,
# [stream, 0, 0, 0, size as big-endian uint32], then `size` bytes of output.
STDIN, STDOUT, STDERR = 0, 1, 2
FRAME_HEADER = struct.Struct(">BxxxL")


# --------------------------------------------------------------------------- API version


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def negotiate_api_version(server: dict, newest_known: str, oldest_usable: str) -> str:
    """The API version to speak with an engine, from its `/version` answer.

    The engine's own version, capped at the newest this SDK knows (as the docker CLI does);
    ValueError, in a user's words, when the two have no version in common.
    """
    spoken = str(server.get("ApiVersion") or "")
    if not spoken:
        raise ValueError("the Docker engine did not say which API version it speaks")
    chosen = min(spoken, newest_known, key=_version_key)
    engine_oldest = str(server.get("MinAPIVersion") or oldest_usable)
    if _version_key(chosen) < _version_key(oldest_usable):
        raise ValueError(f"the Docker engine is too old (API {spoken}; at least {oldest_usable} is needed)")
    if _version_key(chosen) < _version_key(engine_oldest):
        raise ValueError(f"the Docker engine is too new for this Docker SDK "
                         f"(it accepts API {engine_oldest} and later; the SDK speaks up to {newest_known})")
    return chosen


# --------------------------------------------------------------------------- containers


def restart_policy(restart: str) -> dict:
    """`--restart` text (`no`, `always`, `unless-stopped`, `on-failure[:N]`) as the API's RestartPolicy."""
    name, _, retries = restart.partition(":")
    return {"Name": name, "MaximumRetryCount": int(retries) if retries else 0}


def device_requests(gpus: str) -> list[dict]:
    """`--gpus` text (`all`, `2`, `device=0,1`) as the API's HostConfig.DeviceRequests, as the docker CLI sends it."""
    request: dict = {"Driver": "", "Capabilities": [["gpu"]]}
    if gpus.startswith("device="):
        request["DeviceIDs"] = [device for device in gpus[len("device="):].split(",") if device]
    else:
        request["Count"] = -1 if gpus == "all" else int(gpus)
    return [request]


def create_arguments(op: RunContainer) -> dict:
    """The `POST /containers/create` request that makes the container `op.argv()` describes.

    Returns {"name": ..., "config": ...}: the keyword arguments of the SDK's
    `APIClient.create_container_from_config`. Settings `argv()` leaves out are left out here
    too, so the engine applies the same defaults as `docker run` would.
    """
    spec = op.spec
    exposed: dict[str, dict] = {}
    bindings: dict[str, list[dict]] = {}
    for host_port, container_port in spec.ports:
        key = f"{container_port}/tcp"
        exposed[key] = {}
        bindings.setdefault(key, []).append({"HostIp": spec.bind_address or "", "HostPort": str(host_port)})
    host_config: dict = {
        "RestartPolicy": restart_policy(spec.restart),
        "LogConfig": {"Type": LOG_DRIVER, "Config": dict(LOG_OPTIONS)},
        "NetworkMode": spec.network,
    }
    if bindings:
        host_config["PortBindings"] = bindings
    if op.mounts():
        host_config["Binds"] = [f"{source}:{target}:{mode}" for source, target, mode in op.mounts()]
    if spec.gpus:
        host_config["DeviceRequests"] = device_requests(spec.gpus)
    host_config.update(confinement(spec))
    config: dict = {
        "Image": spec.image,
        "Labels": dict(op.labels),
        "Env": [f"{key}={value}" for key, value in op.spec.environment],
        "HostConfig": host_config,
    }
    if spec.command:
        config["Cmd"] = list(spec.command)
    if exposed:
        config["ExposedPorts"] = exposed
    if spec.hostname:
        config["Hostname"] = spec.hostname
    if spec.user:
        config["User"] = spec.user
    if spec.workdir:
        config["WorkingDir"] = spec.workdir
    if spec.network_alias:
        # An alias belongs to the container's endpoint on its (user-defined) network.
        config["NetworkingConfig"] = {"EndpointsConfig": {spec.network: {"Aliases": [spec.network_alias]}}}
    return {"name": spec.name, "config": config}


def confinement(spec: ContainerSpec) -> dict:
    """The HostConfig keys of a spec's confinement (those `docker run` sets for the same words), unset ones left out."""
    settings: dict = {}
    if spec.cap_drop:
        settings["CapDrop"] = list(spec.cap_drop)
    if spec.cap_add:
        settings["CapAdd"] = list(spec.cap_add)
    if spec.security_opt:
        settings["SecurityOpt"] = list(spec.security_opt)
    if spec.read_only:
        settings["ReadonlyRootfs"] = True
    if spec.tmpfs:
        settings["Tmpfs"] = dict(spec.tmpfs)
    if spec.pids_limit is not None:
        settings["PidsLimit"] = spec.pids_limit
    return settings


def logs_params(op: Logs) -> dict:
    """Query parameters of `GET /containers/NAME/logs` for a `Logs` operation."""
    params: dict = {"stdout": 1, "stderr": 1, "timestamps": 1, "follow": 1 if op.follow else 0, "tail": op.tail}
    if op.since is not None:
        # Seconds with a fraction, as `argv()` shows it; the engine reads the fraction as such.
        params["since"] = f"{op.since:.3f}".rstrip("0").rstrip(".")
    return params


# --------------------------------------------------------------------------- output streams


def read_exactly(read: Callable[[int], bytes], size: int) -> bytes:
    """`size` bytes from a reader that may return fewer per call; fewer only at the end of the stream."""
    chunks, missing = [], size
    while missing:
        chunk = read(missing)
        if not chunk:
            break
        chunks.append(chunk)
        missing -= len(chunk)
    return b"".join(chunks)


def iter_frames(read: Callable[[int], bytes]) -> Iterator[tuple[int, bytes]]:
    """(stream, data) frames of a multiplexed output stream, until it ends (a cut-off frame ends it too)."""
    while True:
        header = read_exactly(read, FRAME_HEADER.size)
        if len(header) < FRAME_HEADER.size:
            return
        stream, size = FRAME_HEADER.unpack(header)
        data = read_exactly(read, size)
        if data:
            yield stream, data
        if len(data) < size:
            return


@dataclass
class Progress:
    """What the JSON messages of a build, pull or load say, read one message at a time.

    Lines go to `on_line` as they complete; the last few are kept for an error message.
    """

    on_line: LineCallback | None = None
    keep: int = 3  # lines kept for failure()
    image_id: str | None = field(default=None, init=False)  # a build's result
    error: str | None = field(default=None, init=False)
    recent: deque = field(default_factory=deque, init=False)
    _partial: str = field(default="", init=False, repr=False)  # a "stream" text not ended by a newline yet

    def feed(self, message: dict) -> None:
        if message.get("error") or message.get("errorDetail"):
            text = message.get("error") or (message.get("errorDetail") or {}).get("message") or "failed"
            self.error = " ".join(str(text).split())
            self._line(self.error)
        if "stream" in message:
            self._partial += str(message["stream"])
            *lines, self._partial = self._partial.split("\n")
            for line in lines:
                self._line(line)
        if "status" in message and not (message.get("progressDetail") or {}).get("current"):
            # Status changes only; the many "Downloading 12 MB/40 MB" updates are left out.
            status = str(message["status"])
            self._line(f"{message['id']}: {status}" if message.get("id") else status)
        aux = message.get("aux")
        if isinstance(aux, dict) and aux.get("ID"):
            self.image_id = str(aux["ID"])

    def close(self) -> None:
        if self._partial:
            self._line(self._partial)
            self._partial = ""

    def failure(self) -> str:
        """The last lines (the error last) as one line, for a one-line error message."""
        return " | ".join(self.recent) or (self.error or "failed")

    def _line(self, line: str) -> None:
        line = line.rstrip()
        if not line:
            return
        self.recent.append(line)
        while len(self.recent) > self.keep:
            self.recent.popleft()
        if self.on_line:
            self.on_line(line)
