"""HTTP to a host's Docker engine over the SSH connection infra already holds.

Every HTTP connection of the pool is one session channel of the host's existing paramiko
`Transport`, running `docker system dial-stdio`: the docker CLI on the host joins that
channel's stdin/stdout to the engine's socket, so the channel carries plain HTTP to the
Engine API. One SSH handshake per host serves every request, with infra's host-key policy,
keys and ~/.ssh/config, and no port is forwarded or opened. (The Docker SDK's own `ssh://`
support does the same over an SSH client of its own.)

Channels stay open between requests (HTTP keep-alive) in a small pool, so a query costs one
round trip; a stream that holds a channel (`logs --follow`, `exec`) makes the pool open
another rather than wait. When `dial-stdio` itself fails, its exit status and stderr say why
(Docker missing, engine stopped, no permission): that becomes an `EngineUnavailableError`.

The local engine (`local` host) is reached as the docker CLI would: `DOCKER_HOST` (and its TLS
settings) if set, else the default unix socket.
"""

from __future__ import annotations

import io
import shutil
import socket
import threading
import time
from typing import Callable

import docker
import docker.constants
import paramiko
import requests
import requests.adapters
import urllib3.connection
import urllib3.connectionpool

from ..errors import ConnectError, EngineUnavailableError
from ..facts.docker import NOT_INSTALLED, NOT_RUNNING, docker_problem
from .wire import negotiate_api_version

DIAL_COMMAND = "docker system dial-stdio"
# Requests go to this URL; the adapter mounted on its scheme sends them through the channels.
# (The same base URL the SDK uses for unix sockets, so every code path of the SDK treats our
# connections as it treats a socket's.)
MOUNT_PREFIX = "http+docker://"
BASE_URL = MOUNT_PREFIX + "localhost"
# Idle channels kept open per host; each is a `docker` process on the host. Busy ones beyond
# this are opened as needed and closed after use, up to MAX_CHANNELS at once: OpenSSH allows
# 10 sessions per connection (MaxSessions) for these and infra's own commands together. A
# request that finds all of them busy waits for one, up to CHANNEL_WAIT seconds.
POOL_SIZE = 4
MAX_CHANNELS = 8
CHANNEL_WAIT = 300.0
API_TIMEOUT = 60.0  # seconds to wait for an answer (per socket read) unless a call says otherwise
CHANNEL_OPEN_TIMEOUT = 30.0
EXIT_STATUS_WAIT = 2.0  # once a channel has ended, how long its exit status may take to arrive
STDERR_LIMIT = 64 * 1024
READ_BUFFER = 64 * 1024

SocketOpener = Callable[[float | None], "DialedChannel"]


class DialedChannel:
    """A session channel running `docker system dial-stdio`, used as the socket of one HTTP connection.

    It implements the part of the socket interface that http.client, urllib3 and the Docker
    SDK use. Its one addition: when the channel ends because `dial-stdio` failed, reading or
    writing raises `EngineUnavailableError` with the diagnosis instead of a bare end of stream.
    """

    def __init__(self, host: str, channel: paramiko.Channel, on_close: Callable[[], None] | None = None):
        self.host = host
        self.channel = channel
        self._on_close = on_close
        self._closed_here = False
        # As with a socket, close() leaves the channel open while a reader made by makefile()
        # is: http.client closes the connection's socket as soon as it has read the headers of
        # a response that ends with the connection, and reads the body through that reader.
        self._readers = 0
        self._close_requested = False
        self._lock = threading.Lock()
        # dial-stdio fails before it passes on a single byte; once the engine has answered, an
        # end of stream is a closed or lost connection, never a diagnosis to wait for.
        self._answered = False

    @classmethod
    def open(cls, host: str, transport: paramiko.Transport, timeout: float | None,
             on_close: Callable[[], None] | None = None) -> "DialedChannel":
        """A new session channel of `transport` running dial-stdio; `on_close` is called once it is closed."""
        if not transport.is_active():
            raise ConnectError(f"{host}: lost the connection to the Docker engine: the SSH connection is closed")
        try:
            channel = transport.open_session(timeout=CHANNEL_OPEN_TIMEOUT)
        except paramiko.ChannelException as exc:
            # Typically MaxSessions: too many channels open on this SSH connection at once.
            raise ConnectError(f"{host}: the SSH server refused another session for the Docker engine "
                               f"({exc.text or exc}); raise MaxSessions in its sshd_config") from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise ConnectError(f"{host}: lost the connection to the Docker engine: "
                               f"{exc or type(exc).__name__}") from None
        try:
            channel.settimeout(timeout)
            channel.exec_command(DIAL_COMMAND)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            channel.close()
            raise ConnectError(f"{host}: could not start `{DIAL_COMMAND}`: {exc or type(exc).__name__}") from None
        return cls(host, channel, on_close)

    # --------------------------------------------------------------- socket interface

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                # paramiko's own sendall loops forever once the channel has sent EOF.
                sent = self.channel.send(view[:65536].tobytes())
            except OSError:
                self._raise_if_dial_failed()
                raise
            if sent == 0:
                self._raise_if_dial_failed()
                raise BrokenPipeError(f"{self.host}: the Docker engine's channel is closed")
            view = view[sent:]

    def send(self, data: bytes) -> int:
        self.sendall(data)
        return len(data)

    def recv(self, size: int) -> bytes:
        data = self.channel.recv(size)
        if data:
            self._answered = True
        else:
            self._raise_if_dial_failed()
        return data

    def makefile(self, mode: str = "rb", buffering: int | None = None, **_ignored) -> io.BufferedReader:
        if "w" in mode:
            raise io.UnsupportedOperation("a dial-stdio channel is read through makefile() only")
        with self._lock:
            self._readers += 1
        return io.BufferedReader(_ChannelReader(self), READ_BUFFER)

    def _reader_closed(self) -> None:
        with self._lock:
            self._readers -= 1
            close_now = self._close_requested and self._readers <= 0
        if close_now:
            self._close_channel()

    def fileno(self) -> int:
        # paramiko gives a channel a pipe that is readable when data or the end arrived: urllib3
        # polls it to notice a pooled connection whose dial-stdio has ended.
        return self.channel.fileno()

    def settimeout(self, timeout: float | None) -> None:
        self.channel.settimeout(timeout)

    def gettimeout(self) -> float | None:
        return self.channel.gettimeout()

    def setsockopt(self, *args) -> None:
        pass  # TCP options belong to the SSH connection's socket, not to a channel

    def shutdown(self, how: int) -> None:
        # A reader blocked on the channel wakes up only when the channel closes; stopping a
        # stream (logs --follow, a timed-out exec) must also end dial-stdio on the host, so
        # that the engine ends the stream too. Closing the channel does both, readers or not.
        if how in (socket.SHUT_RD, socket.SHUT_RDWR):
            self._close_channel()
        else:
            self.channel.shutdown_write()

    def close(self) -> None:
        with self._lock:
            self._close_requested = True
            close_now = self._readers <= 0
        if close_now:
            self._close_channel()

    def _close_channel(self) -> None:
        with self._lock:
            first = not self._closed_here
            self._closed_here = True
        self.channel.close()
        if first and self._on_close:
            self._on_close()

    @property
    def closed(self) -> bool:
        return self.channel.closed

    # --------------------------------------------------------------- diagnosis

    def _raise_if_dial_failed(self) -> None:
        """Raise the diagnosis if the channel ended because `dial-stdio` failed (exit status > 0)."""
        if self._closed_here or self._answered:
            return
        deadline = time.monotonic() + EXIT_STATUS_WAIT
        while not self.channel.exit_status_ready() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self.channel.exit_status_ready():
            return
        status = self.channel.recv_exit_status()
        if status <= 0:  # a clean end, or killed by a signal (no status): a lost connection, not a diagnosis
            return
        raise EngineUnavailableError(self.host, docker_problem(self._stderr(), status))

    def _stderr(self) -> str:
        text = b""
        while self.channel.recv_stderr_ready() and len(text) < STDERR_LIMIT:
            chunk = self.channel.recv_stderr(4096)
            if not chunk:
                break
            text += chunk
        return text.decode(errors="replace")


class _ChannelReader(io.RawIOBase):
    """The raw stream under an HTTP response read from a DialedChannel.

    `sock`, `settimeout` and `gettimeout` are what the SDK looks for under a response when it
    lifts a stream's read timeout or cancels a stream from another thread.
    """

    def __init__(self, sock: DialedChannel):
        super().__init__()
        self.sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.sock.recv(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def recv(self, size: int) -> bytes:
        # For SDK code that reads an upgraded (hijacked) connection from under its response.
        return self.sock.recv(size)

    def fileno(self) -> int:
        return self.sock.fileno()

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    def gettimeout(self) -> float | None:
        return self.sock.gettimeout()

    def close(self) -> None:
        # Like a socket's makefile(): closing the reader leaves the channel open for the next
        # request (keep-alive), unless the connection has asked to close it meanwhile.
        if not self.closed:
            super().close()
            self.sock._reader_closed()


class _ChannelHTTPConnection(urllib3.connection.HTTPConnection):
    """An HTTP connection whose socket is a fresh dial-stdio channel."""

    def __init__(self, host: str, port: int | None = None, *, open_socket: SocketOpener, **kwargs):
        super().__init__(host, port, **kwargs)
        self._open_socket = open_socket

    def connect(self) -> None:
        self.sock = self._open_socket(self.timeout if isinstance(self.timeout, (int, float)) else None)


class _ChannelConnectionPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _ChannelHTTPConnection


class ChannelAdapter(requests.adapters.HTTPAdapter):
    """Sends every request of a session through a pool of dial-stdio channels of one SSH connection."""

    def __init__(self, host: str, transport: paramiko.Transport, *, pool_size: int = POOL_SIZE,
                 max_channels: int = MAX_CHANNELS, channel_wait: float = CHANNEL_WAIT):
        super().__init__()
        self.host = host
        self.transport = transport
        self.max_channels = max_channels
        self.channel_wait = channel_wait
        self._channels = threading.BoundedSemaphore(max_channels)
        # block=False: when every pooled channel is busy (a followed log, a long exec), open
        # another one (within max_channels) instead of waiting; it is closed after use.
        self._pool = _ChannelConnectionPool("localhost", maxsize=pool_size, block=False,
                                            open_socket=self._open_channel)

    def _open_channel(self, read_timeout: float | None) -> DialedChannel:
        if not self._channels.acquire(timeout=self.channel_wait):
            raise ConnectError(f"{self.host}: no channel to the Docker engine came free in {self.channel_wait:g} s "
                               f"(all {self.max_channels} busy: too many followed logs or long execs at once)")
        try:
            return DialedChannel.open(self.host, self.transport, read_timeout, on_close=self._channels.release)
        except BaseException:
            self._channels.release()
            raise

    def get_connection_with_tls_context(self, request, verify, proxies=None, cert=None):
        return self._pool

    def get_connection(self, url, proxies=None):  # requests before 2.32.2 call this one
        return self._pool

    def request_url(self, request, proxies):
        # Never a proxy's absolute URL: the engine is at the other end of the channel.
        return request.path_url

    def close(self) -> None:
        super().close()
        self._pool.close()


# --------------------------------------------------------------------------- clients


def _client_with_adapter(adapter: requests.adapters.HTTPAdapter, version: str, timeout: float) -> docker.APIClient:
    # A tcp:// base URL makes the SDK set up nothing of its own and contact nothing (the
    # version is given); requests then go to BASE_URL, where the adapter is mounted.
    api = docker.APIClient(base_url="tcp://localhost:2375", version=version, timeout=timeout)
    api.mount(MOUNT_PREFIX, adapter)
    api.base_url = BASE_URL
    return api


def ssh_api_client(host: str, transport: paramiko.Transport, *, pool_size: int = POOL_SIZE,
                   max_channels: int = MAX_CHANNELS, timeout: float = API_TIMEOUT) -> docker.APIClient:
    """An SDK client of the host's engine over channels of `transport`, speaking the engine's API version.

    Raises EngineUnavailableError when the engine cannot be used (with the reason), and
    ConnectError when the SSH connection fails.
    """
    adapter = ChannelAdapter(host, transport, pool_size=pool_size, max_channels=max_channels)
    try:
        server = _server_version(host, adapter, timeout)
        version = _negotiate(host, server)
        return _client_with_adapter(adapter, version, timeout)
    except BaseException:
        adapter.close()
        raise


def _server_version(host: str, adapter: ChannelAdapter, timeout: float) -> dict:
    """The engine's `/version` answer (an unversioned path: it works whatever the engine speaks)."""
    probe = requests.Session()
    probe.mount(MOUNT_PREFIX, adapter)
    try:
        response = probe.get(f"{BASE_URL}/version", timeout=timeout)
        response.raise_for_status()
        return response.json()
    except requests.exceptions.RequestException as exc:
        raise ConnectError(f"{host}: the Docker engine does not answer: {describe_transport_error(exc)}") from None
    except ValueError:
        raise EngineUnavailableError(host, "the Docker engine's /version answer is not JSON") from None
    # The probe session is not closed: closing it would close the adapter, which stays in use.


def _negotiate(host: str, server: dict) -> str:
    try:
        return negotiate_api_version(server, docker.constants.DEFAULT_DOCKER_API_VERSION,
                                     docker.constants.MINIMUM_DOCKER_API_VERSION)
    except ValueError as exc:
        raise EngineUnavailableError(host, str(exc)) from None


def local_api_client(host: str, *, pool_size: int = POOL_SIZE, timeout: float = API_TIMEOUT) -> docker.APIClient:
    """An SDK client of this machine's engine: `DOCKER_HOST` (with its TLS settings) if set, else the unix socket."""
    try:
        settings = docker.utils.kwargs_from_env()
        probe = docker.APIClient(version=docker.constants.MINIMUM_DOCKER_API_VERSION, timeout=timeout,
                                 max_pool_size=pool_size, **settings)
    except (docker.errors.DockerException, paramiko.SSHException, OSError) as exc:  # ssh:// connects at once
        raise EngineUnavailableError(host, f"cannot use DOCKER_HOST: {exc}") from None
    try:
        server = probe.version(api_version=False)
    except docker.errors.APIError as exc:
        raise EngineUnavailableError(host, f"the Docker engine answered: {exc.explanation or exc}") from None
    except requests.exceptions.RequestException as exc:
        raise EngineUnavailableError(host, _local_problem(exc)) from None
    finally:
        probe.close()
    return docker.APIClient(version=_negotiate(host, server), timeout=timeout, max_pool_size=pool_size, **settings)


def _local_problem(exc: BaseException) -> str:
    """Why the local engine's socket did not answer."""
    cause = root_cause(exc)
    if isinstance(cause, PermissionError):
        return "the user running infra may not use Docker (not in the 'docker' group)"
    if isinstance(cause, (FileNotFoundError, ConnectionRefusedError)):
        installed = shutil.which("dockerd") or shutil.which("docker")
        return NOT_RUNNING if installed else NOT_INSTALLED
    return f"the Docker engine does not answer: {describe_transport_error(exc)}"


# --------------------------------------------------------------------------- error text


def root_cause(exc: BaseException) -> BaseException:
    """The innermost error under requests' and urllib3's wrappers.

    They keep the error they wrap in `reason` (urllib3's MaxRetryError), among their args
    (requests' ConnectionError, urllib3's ProtocolError) or as `__cause__`.
    """
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        reason = getattr(exc, "reason", None)
        wrapped = [arg for arg in exc.args if isinstance(arg, BaseException)]
        if isinstance(reason, BaseException):
            inner = reason
        elif wrapped:
            inner = wrapped[-1]
        else:
            inner = exc.__cause__
        if inner is None:
            break
        exc = inner
    return exc


def describe_transport_error(exc: BaseException) -> str:
    """A few words for a failed exchange with an engine: "timed out", "connection closed", ..."""
    cause = root_cause(exc)
    if isinstance(cause, (socket.timeout, TimeoutError)) or isinstance(exc, requests.exceptions.Timeout):
        return "timed out"
    name = type(cause).__name__
    if name == "RemoteDisconnected" or isinstance(cause, (ConnectionResetError, BrokenPipeError, EOFError)):
        return "the connection closed"
    text = str(cause).strip()
    if isinstance(cause, OSError) and cause.strerror:
        text = cause.strerror
    return (text.splitlines()[0] if text else name)[:200]
