"""The engine layer's pure parts, and its error handling against fakes (no engine, no SSH).

The real thing, over SSH on testbed hosts, is tests/e2e/test_engine.py.
"""

from __future__ import annotations

import http.client
import io
import struct

import docker.errors
import pytest
import requests
import urllib3.exceptions

from infra.commands.engine import (
    ContainerSpec,
    Exec,
    InspectContainers,
    InspectImages,
    ListContainers,
    ListImageRefs,
    LoadImages,
    Logs,
    RemoveContainers,
    RemoveNetwork,
    RunContainer,
    SaveImages,
    cluster_labels,
)
from infra.engine.api import Engine
from infra.engine.transport import (
    DIAL_COMMAND,
    ChannelAdapter,
    DialedChannel,
    describe_transport_error,
    root_cause,
)
from infra.engine.wire import (
    Progress,
    create_arguments,
    iter_frames,
    logs_params,
    negotiate_api_version,
    restart_policy,
)
from infra.errors import (
    ConnectError,
    EngineUnavailableError,
    InfraError,
    RemoteCommandError,
)
from infra.facts.docker import (
    NO_PERMISSION,
    NOT_INSTALLED,
    NOT_RUNNING,
    docker_problem,
)
from infra.transport.result import LineBuffer
from infra.workflows.ship import ship_images

# --------------------------------------------------------------------------- diagnosis

# What `docker system dial-stdio` printed on a Debian 12 testbed host (docker.io 20.10).
DIAL_NO_PERMISSION = ("failed to open the raw stream connection: dial unix /var/run/docker.sock: "
                      "connect: permission denied")
DIAL_DAEMON_STOPPED = ("failed to open the raw stream connection: dial unix /var/run/docker.sock: "
                       "connect: no such file or directory")
DIAL_NOT_INSTALLED = "bash: line 1: docker: command not found"


def test_dial_stdio_failures_are_told_apart():
    assert docker_problem(DIAL_NO_PERMISSION, 1) == NO_PERMISSION
    assert docker_problem(DIAL_DAEMON_STOPPED, 1) == NOT_RUNNING  # a missing socket, not a missing docker
    assert docker_problem(DIAL_NOT_INSTALLED, 127) == NOT_INSTALLED
    assert docker_problem("sh: 1: docker: not found", 127) == NOT_INSTALLED


def test_exit_status_127_alone_means_docker_is_missing():
    assert docker_problem("", 127) == NOT_INSTALLED


def test_cli_wordings_of_a_stopped_engine():
    assert docker_problem("Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
                          "Is the docker daemon running?") == NOT_RUNNING
    assert docker_problem("failed to connect to the docker API at unix:///var/run/docker.sock; check if the "
                          "path is correct and if the daemon is running: dial unix /var/run/docker.sock: "
                          "connect: no such file or directory") == NOT_RUNNING
    assert docker_problem("error during connect: dial tcp 10.0.0.5:2375: connect: connection refused") == NOT_RUNNING


def test_an_unknown_failure_is_reported_by_its_last_line():
    assert docker_problem("Error response from daemon: client version 1.52 is too new\n") == (
        "Error response from daemon: client version 1.52 is too new")
    assert docker_problem("  \n") == "Docker does not answer"


# --------------------------------------------------------------------------- API version


def test_the_engines_api_version_is_spoken_up_to_what_the_sdk_knows():
    assert negotiate_api_version({"ApiVersion": "1.41", "MinAPIVersion": "1.12"}, "1.45", "1.24") == "1.41"
    assert negotiate_api_version({"ApiVersion": "1.47", "MinAPIVersion": "1.24"}, "1.45", "1.24") == "1.45"
    assert negotiate_api_version({"ApiVersion": "1.9"}, "1.45", "1.9") == "1.9"  # numeric, not text, order


def test_an_engine_without_a_common_api_version_is_refused_in_words():
    with pytest.raises(ValueError, match=r"too old \(API 1.23; at least 1.24"):
        negotiate_api_version({"ApiVersion": "1.23"}, "1.45", "1.24")
    with pytest.raises(ValueError, match=r"too new .* API 1.46 and later; the SDK speaks up to 1.45"):
        negotiate_api_version({"ApiVersion": "1.52", "MinAPIVersion": "1.46"}, "1.45", "1.24")
    with pytest.raises(ValueError, match="did not say"):
        negotiate_api_version({}, "1.45", "1.24")


# --------------------------------------------------------------------------- container creation


def full_run() -> RunContainer:
    spec = ContainerSpec(
        name="lab-broker", role="broker", host="gpu-box", image="infra-broker:1",
        command=("rabbitmq-server",), environment=(("INFRA_CLUSTER", "lab"), ("TEXT", "a=b c")),
        secrets="/home/u/infra/lab/.infra/broker",
        ports=((5672, 5672), (15672, 15672), (8080, 15672)), bind_address="10.0.0.5",
        volumes=(("lab-broker-data", "/var/lib/rabbitmq", "rw"), ("/home/u/conf", "/etc/conf", "ro")),
        network="lab-net", network_alias="broker", hostname="lab-broker", user="1000:1000",
        workdir="/srv", restart="unless-stopped",
    )
    return RunContainer(spec, cluster_labels("lab", role="broker", host="gpu-box", spec="f00d"))


def test_create_arguments_carry_every_setting_of_the_rendered_command():
    assert create_arguments(full_run()) == {
        "name": "lab-broker",
        "config": {
            "Image": "infra-broker:1",
            "Cmd": ["rabbitmq-server"],
            "Labels": {"infra.cluster": "lab", "infra.role": "broker", "infra.host": "gpu-box", "infra.spec": "f00d"},
            "Env": ["INFRA_CLUSTER=lab", "TEXT=a=b c"],
            "ExposedPorts": {"5672/tcp": {}, "15672/tcp": {}},
            "Hostname": "lab-broker",
            "User": "1000:1000",
            "WorkingDir": "/srv",
            "HostConfig": {
                "RestartPolicy": {"Name": "unless-stopped", "MaximumRetryCount": 0},
                "LogConfig": {"Type": "json-file", "Config": {"max-size": "20m", "max-file": "3"}},
                "NetworkMode": "lab-net",
                "PortBindings": {
                    "5672/tcp": [{"HostIp": "10.0.0.5", "HostPort": "5672"}],
                    "15672/tcp": [{"HostIp": "10.0.0.5", "HostPort": "15672"},
                                  {"HostIp": "10.0.0.5", "HostPort": "8080"}],
                },
                "Binds": ["lab-broker-data:/var/lib/rabbitmq:rw", "/home/u/conf:/etc/conf:ro",
                          "/home/u/infra/lab/.infra/broker:/run/infra:ro"],
            },
            "NetworkingConfig": {"EndpointsConfig": {"lab-net": {"Aliases": ["broker"]}}},
        },
    }


def test_create_arguments_of_a_plain_host_network_worker_leave_defaults_to_the_engine():
    spec = ContainerSpec(name="lab-worker-pi1-1", role="worker", host="pi1", image="infra-worker:1")
    assert create_arguments(RunContainer(spec, cluster_labels("lab", role="worker"))) == {
        "name": "lab-worker-pi1-1",
        "config": {
            "Image": "infra-worker:1",
            "Labels": {"infra.cluster": "lab", "infra.role": "worker"},
            "Env": [],
            "HostConfig": {
                "RestartPolicy": {"Name": "unless-stopped", "MaximumRetryCount": 0},
                "LogConfig": {"Type": "json-file", "Config": {"max-size": "20m", "max-file": "3"}},
                "NetworkMode": "host",
            },
        },
    }


def test_the_rendering_shows_the_secrets_folder_mounted_read_only_and_the_bound_address():
    text = full_run().text()
    assert "--volume /home/u/infra/lab/.infra/broker:/run/infra:ro" in text
    assert "--publish 10.0.0.5:5672:5672" in text
    assert "--env 'TEXT=a=b c'" in text


def test_an_ipv6_bind_address_is_published_in_brackets():
    spec = ContainerSpec(name="x", role="broker", host="h", image="i", ports=((5671, 5671),), bind_address="fd00::5")
    assert "--publish '[fd00::5]:5671:5671'" in RunContainer(spec, ()).text()
    assert create_arguments(RunContainer(spec, ()))["config"]["HostConfig"]["PortBindings"] == {
        "5671/tcp": [{"HostIp": "fd00::5", "HostPort": "5671"}]}


def test_restart_policies():
    assert restart_policy("no") == {"Name": "no", "MaximumRetryCount": 0}
    assert restart_policy("always") == {"Name": "always", "MaximumRetryCount": 0}
    assert restart_policy("on-failure:5") == {"Name": "on-failure", "MaximumRetryCount": 5}


def test_logs_parameters():
    assert logs_params(Logs("c")) == {"stdout": 1, "stderr": 1, "timestamps": 1, "follow": 0, "tail": "all"}
    params = logs_params(Logs("c", tail="100", since=1700000000.25, follow=True))
    assert params == {"stdout": 1, "stderr": 1, "timestamps": 1, "follow": 1, "tail": "100", "since": "1700000000.25"}
    assert logs_params(Logs("c", since=1700000000.0))["since"] == "1700000000"


# --------------------------------------------------------------------------- output streams


def frame(stream: int, data: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(data)) + data


def test_frames_are_read_whatever_the_reads_return():
    raw = frame(1, b"out\n") + frame(2, b"err\n") + frame(1, b"") + frame(1, b"x" * 70000)
    whole = io.BytesIO(raw)
    assert list(iter_frames(whole.read)) == [(1, b"out\n"), (2, b"err\n"), (1, b"x" * 70000)]
    trickle = io.BytesIO(raw)
    assert list(iter_frames(lambda n: trickle.read(min(n, 3)))) == list(iter_frames(io.BytesIO(raw).read))


def test_a_cut_off_stream_ends_the_frames():
    raw = frame(1, b"complete\n") + frame(2, b"partial output")[:-4]
    assert list(iter_frames(io.BytesIO(raw).read)) == [(1, b"complete\n"), (2, b"partial ou")]
    assert list(iter_frames(io.BytesIO(frame(1, b"a") + b"\x01\x00").read)) == [(1, b"a")]


def test_line_buffer_joins_chunks_into_lines():
    lines: list[str] = []
    buffer = LineBuffer(lines.append)
    for chunk in (b"one\ntw", b"o\n", b"thr", b"ee"):
        buffer.feed(chunk)
    assert lines == ["one", "two"]
    buffer.close()
    assert lines == ["one", "two", "three"]


def test_build_progress_streams_lines_and_finds_the_image_id():
    lines: list[str] = []
    progress = Progress(lines.append)
    for message in (
        {"stream": "Step 1/2 : FROM base\n"}, {"stream": " ---> 1234\nStep 2/2 : RUN "}, {"stream": "true\n"},
        {"aux": {"ID": "sha256:abcd"}}, {"stream": "Successfully built abcd\n"},
    ):
        progress.feed(message)
    progress.close()
    assert lines == ["Step 1/2 : FROM base", " ---> 1234", "Step 2/2 : RUN true", "Successfully built abcd"]
    assert progress.image_id == "sha256:abcd" and progress.error is None


def test_a_failed_build_is_told_by_its_last_three_lines_in_one():
    progress = Progress()
    for message in (
        {"stream": "Step 2/2 : RUN make\n"}, {"stream": " ---> Running in 5e1f\n"}, {"stream": "make: *** no rule\n"},
        {"errorDetail": {"code": 2, "message": "The command '/bin/sh -c make' returned a non-zero code: 2"},
         "error": "The command '/bin/sh -c make' returned a non-zero code: 2"},
    ):
        progress.feed(message)
    assert progress.failure() == (" ---> Running in 5e1f | make: *** no rule | "
                                  "The command '/bin/sh -c make' returned a non-zero code: 2")


def test_pull_progress_keeps_status_changes_only():
    lines: list[str] = []
    progress = Progress(lines.append)
    for message in (
        {"status": "Pulling from library/redis", "id": "7"},
        {"status": "Downloading", "progressDetail": {"current": 100, "total": 900}, "id": "a1"},
        {"status": "Pull complete", "progressDetail": {}, "id": "a1"},
        {"status": "Status: Downloaded newer image for redis:7"},
    ):
        progress.feed(message)
    assert lines == ["7: Pulling from library/redis", "a1: Pull complete", "Status: Downloaded newer image for redis:7"]


# --------------------------------------------------------------------------- the dial-stdio channel


class FakeChannel:
    """The parts of a paramiko Channel that DialedChannel uses, with a scripted remote side."""

    def __init__(self, data: bytes = b"", exit_status: int | None = None, stderr: bytes = b""):
        self.data = io.BytesIO(data)
        self.exit_status = exit_status
        self.stderr = io.BytesIO(stderr)
        self.closed = False
        self.timeout = None

    def recv(self, size: int) -> bytes:
        return b"" if self.closed else self.data.read(size)

    def send(self, data: bytes) -> int:
        if self.closed:
            raise OSError("Socket is closed")
        return len(data) if self.exit_status is None else 0

    def exit_status_ready(self) -> bool:
        return self.exit_status is not None

    def recv_exit_status(self) -> int:
        return self.exit_status

    def recv_stderr_ready(self) -> bool:
        return self.stderr.tell() < len(self.stderr.getvalue())

    def recv_stderr(self, size: int) -> bytes:
        return self.stderr.read(size)

    def settimeout(self, timeout):
        self.timeout = timeout

    def exec_command(self, command: str) -> None:
        self.command = command

    def gettimeout(self):
        return self.timeout

    def close(self) -> None:
        self.closed = True


def test_a_failed_dial_raises_its_diagnosis_on_read():
    sock = DialedChannel("h1", FakeChannel(exit_status=1, stderr=DIAL_DAEMON_STOPPED.encode() + b"\n"))
    with pytest.raises(EngineUnavailableError) as caught:
        sock.recv(100)
    assert caught.value.problem == NOT_RUNNING
    assert str(caught.value) == "h1: the Docker engine is not running"


def test_a_failed_dial_raises_its_diagnosis_on_write():
    sock = DialedChannel("h1", FakeChannel(exit_status=127, stderr=DIAL_NOT_INSTALLED.encode()))
    with pytest.raises(EngineUnavailableError, match="h1: Docker is not installed"):
        sock.sendall(b"GET /version HTTP/1.1\r\n\r\n")


def test_the_end_of_an_answered_connection_is_no_diagnosis():
    sock = DialedChannel("h1", FakeChannel(data=b"HTTP/1.1 200 OK\r\n", exit_status=1, stderr=b"broken pipe"))
    assert sock.recv(100) == b"HTTP/1.1 200 OK\r\n"
    assert sock.recv(100) == b""  # a closed connection, for the HTTP layer to report


def test_a_clean_exit_is_no_diagnosis():
    assert DialedChannel("h1", FakeChannel(exit_status=0)).recv(100) == b""


def test_the_channel_stays_open_while_a_response_reads_from_it():
    channel = FakeChannel(data=b"body")
    sock = DialedChannel("h1", channel)
    reader = sock.makefile("rb")
    sock.close()  # what http.client does once it has the headers of a last response
    assert not channel.closed
    assert reader.read() == b"body"
    reader.close()
    assert channel.closed


def test_shutting_a_stream_down_closes_the_channel_at_once():
    channel = FakeChannel(data=b"more")
    sock = DialedChannel("h1", channel)
    sock.makefile("rb")
    sock.shutdown(0)
    assert channel.closed


class FakeTransport:
    def __init__(self):
        self.opened: list[FakeChannel] = []

    def is_active(self) -> bool:
        return True

    def open_session(self, timeout=None) -> FakeChannel:
        self.opened.append(FakeChannel())
        return self.opened[-1]


def test_channels_beyond_the_limit_wait_for_one_to_close():
    transport = FakeTransport()
    adapter = ChannelAdapter("h1", transport, max_channels=2, channel_wait=0.2)
    first = adapter._open_channel(30.0)
    adapter._open_channel(None)
    assert [channel.command for channel in transport.opened] == [DIAL_COMMAND, DIAL_COMMAND]
    assert transport.opened[0].timeout == 30.0
    with pytest.raises(ConnectError, match=r"^h1: no channel to the Docker engine came free in 0.2 s \(all 2 busy"):
        adapter._open_channel(None)
    first.close()
    first.close()  # once only: a second close frees no second place
    adapter._open_channel(None)
    with pytest.raises(ConnectError):
        adapter._open_channel(None)
    assert len(transport.opened) == 3


def test_a_local_engine_that_does_not_answer_is_diagnosed(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/docker.sock")
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/bin/{name}")
    with pytest.raises(EngineUnavailableError, match=f"^local: {NOT_RUNNING}$"):
        Engine.local()
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(EngineUnavailableError, match=f"^local: {NOT_INSTALLED}$"):
        Engine.local()


def test_transport_errors_are_described_by_their_innermost_cause():
    lost = requests.exceptions.ConnectionError(urllib3.exceptions.ProtocolError(
        "Connection aborted.", http.client.RemoteDisconnected("Remote end closed connection without response")))
    assert isinstance(root_cause(lost), http.client.RemoteDisconnected)
    assert describe_transport_error(lost) == "the connection closed"
    assert describe_transport_error(requests.exceptions.ReadTimeout("read timed out")) == "timed out"
    assert describe_transport_error(requests.exceptions.ConnectionError(
        urllib3.exceptions.ProtocolError("aborted", ConnectionRefusedError(111, "Connection refused")))) == (
        "Connection refused")


# --------------------------------------------------------------------------- errors and transfers (fake SDK client)


def api_error(status: int, message: str) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = status
    response._content = ('{"message": "%s"}' % message).encode()
    try:
        response.raise_for_status()
    except requests.exceptions.HTTPError as exc:
        try:
            docker.errors.create_api_error_from_http_exception(exc)
        except docker.errors.APIError as api_exc:
            return api_exc
    raise AssertionError("no error made")


class FakeAPI:
    """Stands in for docker.APIClient: each method raises or answers as the test sets it."""

    api_version = "1.41"
    base_url = "http+docker://localhost"

    def __init__(self, **answers):
        self.answers = answers
        self.calls: list[tuple] = []

    def __getattr__(self, name):
        def call(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            answer = self.answers[name]
            if isinstance(answer, BaseException):
                raise answer
            return answer(*args, **kwargs) if callable(answer) else answer
        return call


def test_an_engine_refusal_is_a_one_line_remote_command_error():
    engine = Engine("h1", FakeAPI(exec_create=api_error(404, "No such container: nope")))
    with pytest.raises(RemoteCommandError) as caught:
        engine.exec(Exec("nope", ("true",)))
    assert str(caught.value) == "h1: `docker exec nope true` failed (exit 1): No such container: nope"


def test_a_broken_connection_is_a_connect_error():
    lost = requests.exceptions.ConnectionError(urllib3.exceptions.ProtocolError(
        "Connection aborted.", http.client.RemoteDisconnected("Remote end closed connection without response")))
    engine = Engine("h1", FakeAPI(containers=lost))
    with pytest.raises(ConnectError, match="^h1: lost the connection to the Docker engine: the connection closed$"):
        engine.query(ListContainers("lab"))


def test_engine_unavailable_passes_through_untouched():
    unavailable = EngineUnavailableError("h1", NOT_RUNNING)
    engine = Engine("h1", FakeAPI(containers=unavailable))
    with pytest.raises(EngineUnavailableError) as caught:
        engine.query(ListContainers("lab"))
    assert caught.value is unavailable


def test_missing_things_are_absent_or_none_in_answers_and_fine_to_remove():
    def inspect_container(name):
        if name == "gone":
            raise api_error(404, "No such container: gone")
        return {"Name": f"/{name}"}

    def inspect_image(ref):
        if ref == "missing:1":
            raise api_error(404, "No such image: missing:1")
        return {"Id": "sha256:1", "Config": {"Labels": None}}

    api = FakeAPI(inspect_container=inspect_container, inspect_image=inspect_image,
                  remove_container=api_error(404, "No such container: x"),
                  remove_network=api_error(404, "network lab-net not found"))
    engine = Engine("h1", api)
    assert engine.query(InspectContainers(("a", "gone", "b"))) == [{"Name": "/a"}, {"Name": "/b"}]
    assert engine.query(InspectImages(("base:1", "missing:1"))) == {
        "base:1": {"Id": "sha256:1", "Labels": {}, "Layers": []}, "missing:1": None}
    assert engine.apply(RemoveContainers(("x", "y"))) is None
    assert engine.apply(RemoveNetwork("lab-net")) is None


def test_a_container_that_cannot_start_is_not_left_behind():
    spec = ContainerSpec(name="lab-flower", role="flower", host="h1", image="flower:1", ports=((5555, 5555),))
    api = FakeAPI(create_container_from_config={"Id": "c0ffee", "Warnings": []},
                  start=api_error(500, "driver failed programming external connectivity: port is already allocated"),
                  remove_container=None)
    with pytest.raises(RemoteCommandError, match="port is already allocated$"):
        Engine("h1", api).apply(RunContainer(spec, cluster_labels("lab")))
    assert ("remove_container", ("c0ffee",), {"force": True}) in api.calls


def test_queries_and_changes_are_not_mixed_up():
    engine = Engine("h1", FakeAPI())
    with pytest.raises(TypeError):
        engine.query(RemoveNetwork("x"))
    with pytest.raises(TypeError):
        engine.apply(ListContainers("x"))


class FakeTransferEngine:
    def __init__(self, chunks=()):
        self.chunks = chunks
        self.received = bytearray()

    def save(self, op: SaveImages):
        assert op.refs == ("a:1", "b:1")
        yield from self.chunks

    def load(self, op: LoadImages, chunks):
        for chunk in chunks:  # consumed lazily, as the upload reads it
            self.received.extend(chunk)
        return ["a:1", "b:1"]


def test_shipping_streams_the_source_into_the_target_and_counts_bytes():
    source = FakeTransferEngine([b"x" * 1000, b"y" * 24])
    target = FakeTransferEngine()
    assert ship_images(source, target, ["a:1", "b:1"]) == 1024
    assert bytes(target.received) == b"x" * 1000 + b"y" * 24


def test_a_failing_source_fails_the_shipping_with_its_own_error():
    class FailingSource(FakeTransferEngine):
        def save(self, op):
            yield b"x"
            raise RemoteCommandError("local", "docker save a:1 b:1", 1, "No such image: b:1")

    with pytest.raises(RemoteCommandError, match="^local: `docker save a:1 b:1` failed"):
        ship_images(FailingSource(), FakeTransferEngine(), ["a:1", "b:1"])


def test_engine_unavailable_is_an_infra_error_with_its_problem():
    err = EngineUnavailableError("pi1", NO_PERMISSION)
    assert isinstance(err, InfraError)
    assert (err.host, err.problem, str(err)) == ("pi1", NO_PERMISSION, f"pi1: {NO_PERMISSION}")


class ImagesAPI:
    """The one call `ListImageRefs` makes, answering as an engine that lists every name of a matching image."""

    def __init__(self, images: list[dict]):
        self.images_answer, self.asked = images, []

    def images(self, filters=None):
        self.asked.append(filters)
        return self.images_answer


def test_listing_image_names_keeps_only_the_names_that_match_whatever_the_engine_lists():
    api = ImagesAPI([{"RepoTags": ["127.0.0.1:40123/infra/lab-worker:0123abcd", "infra-lab-worker:latest"]},
                     {"RepoTags": ["127.0.0.1:5000/infra/lab-master:ff", "<none>:<none>"]}])
    patterns = ("127.0.0.1:*/infra/lab-worker", "127.0.0.1:*/infra/lab-master")
    names = Engine("h", api).query(ListImageRefs(patterns))
    assert names == ["127.0.0.1:40123/infra/lab-worker:0123abcd", "127.0.0.1:5000/infra/lab-master:ff"]
    assert api.asked == [{"reference": list(patterns)}]
