"""A real multi-host testbed on one machine.

Every host is a container on a docker network of the testbed's own, with its own
IP address and its own SSH server; "docker" hosts also run their own Docker
engine (Docker-in-Docker), "fresh" hosts have no Docker (for `infra bootstrap`),
"unsupported" hosts are fresh hosts whose /etc/os-release names an OS that
bootstrap does not support.  See /work/shared/TESTBED.md for the facts this
relies on (no --privileged, cgroup mount, no registry).

    with Testbed.start(hosts=3) as tb:
        h1 = tb.docker_hosts[0]
        print(h1.name, h1.address, h1.user, h1.port, h1.key_path)
        tb.exec(h1, "docker ps -q")
        tb.stop(h1); tb.start(h1)

Only the docker CLI (subprocess) and paramiko are used.  Images are built once
and kept, tagged with a hash of everything they are built from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
BASE_IMAGE = os.environ.get("INFRA_BASE_IMAGE", "infra-base:bookworm")

LABEL = "infra.testbed"  # value: the testbed's prefix
LABEL_ID = "infra.testbed.id"  # value: one Testbed instance
LABEL_KIND = "infra.testbed.kind"
# value: "<pid namespace>:<pid>" of the process that made it, or "keep" (CLI `up`);
# objects whose owner process is gone are removed by the next Testbed.start.
LABEL_OWNER = "infra.testbed.owner"

DOCKER = "docker"
FRESH = "fresh"
UNSUPPORTED = "unsupported"

# Flags that make a container a usable Docker host here: --privileged fails on
# this kernel, these work (TESTBED.md).  Fresh hosts get them too, so that the
# engine that bootstrap installs there can run containers.
HOST_RUN_FLAGS = [
    "--init",
    "--cap-add", "ALL",
    "--cap-drop", "SYS_RESOURCE",
    "--security-opt", "seccomp=unconfined",
    "--security-opt", "apparmor=unconfined",
    "--security-opt", "systempaths=unconfined",
    "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
]

# Nested engines put their containers' cgroups below this parent (one per host)
# in the machine's hierarchy, so close() can remove what a killed host left there.
CGROUP_ROOT = "infra-testbed"

# Subnets tried for the testbed network: away from docker's default pools
# (172.17-29.x, 192.168.x) so nested engines and the machine's engine keep theirs.
SUBNET_CANDIDATES = [f"172.30.{n}.0/24" for n in range(1, 255)] + [
    f"10.213.{n}.0/24" for n in range(1, 255)
]


class TestbedError(RuntimeError):
    """The testbed could not be set up, or an operation on it failed."""

    __test__ = False  # not a pytest test class


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    kind: str
    dockerfile: str
    files: tuple[str, ...]  # other files of tests/testbed/ the image is built from

    @property
    def repository(self) -> str:
        return f"infra-testbed-{self.kind}"


IMAGE_SPECS = {
    DOCKER: ImageSpec(DOCKER, "Dockerfile.host", ("host-entrypoint.sh", "engine-config.sh", "sshd-testbed.conf")),
    FRESH: ImageSpec(FRESH, "Dockerfile.fresh", ("fresh-entrypoint.sh", "engine-config.sh", "sshd-testbed.conf")),
    UNSUPPORTED: ImageSpec(UNSUPPORTED, "Dockerfile.unsupported", ()),
}


@dataclasses.dataclass(frozen=True)
class Host:
    """One testbed machine, as a cluster file would name it."""

    name: str  # short name, unique in the testbed: h1, fresh1, unsupported1
    kind: str  # "docker", "fresh" or "unsupported"
    container: str  # docker container name: <prefix>-<name>
    address: str  # IPv4 address on the testbed network
    user: str  # "root" on docker hosts, "deploy" (passwordless sudo) on fresh ones
    port: int
    key_path: Path  # private key (OpenSSH format) accepted by root and deploy
    volume: str  # docker volume holding the host's /var/lib/docker

    @property
    def ip(self) -> str:
        return self.address

    @property
    def key(self) -> str:
        return str(self.key_path)

    def as_user(self, user: str) -> "Host":
        """The same host reached as another user (fresh hosts: "root" or "deploy")."""
        return dataclasses.replace(self, user=user)

    def cluster_entry(self) -> dict:
        """This host as an entry of a cluster file's `hosts:` section."""
        return {"address": self.address, "user": self.user, "port": self.port, "key": str(self.key_path)}

    def connect(self, user: str | None = None, timeout: float = 10):
        """A Fabric Connection to this host (closed by the caller)."""
        import fabric

        return fabric.Connection(
            host=self.address,
            user=user or self.user,
            port=self.port,
            connect_timeout=timeout,
            connect_kwargs={"key_filename": str(self.key_path), "look_for_keys": False, "allow_agent": False},
        )


# --------------------------------------------------------------------------- docker CLI


def _docker(*args: str, check: bool = True, timeout: float = 120, input: bytes | None = None) -> subprocess.CompletedProcess:
    cmd = ["docker", *args]
    try:
        proc = subprocess.run(cmd, input=input, capture_output=True, timeout=timeout)
    except FileNotFoundError as exc:
        raise TestbedError("the docker CLI is not installed (run scripts/run-tests.sh once)") from exc
    except subprocess.TimeoutExpired as exc:
        raise TestbedError(f"timed out after {timeout:.0f}s: {' '.join(cmd)}") from exc
    if check and proc.returncode != 0:
        raise TestbedError(
            f"`{' '.join(cmd)}` failed (exit {proc.returncode}): {proc.stderr.decode(errors='replace').strip()}"
        )
    return proc


def _out(*args: str, **kw) -> str:
    return _docker(*args, **kw).stdout.decode(errors="replace").strip()


def _check_engine() -> None:
    proc = _docker("info", "--format", "{{.ServerVersion}}", check=False, timeout=30)
    if proc.returncode != 0:
        raise TestbedError(
            "the local Docker engine does not answer (`docker info` failed: "
            f"{proc.stderr.decode(errors='replace').strip()}); run scripts/run-tests.sh once, "
            "or start it: dockerd >/var/log/dockerd.log 2>&1 &"
        )


# --------------------------------------------------------------------------- images


def _image_id(ref: str) -> str | None:
    proc = _docker("image", "inspect", "--format", "{{.Id}}", ref, check=False, timeout=30)
    return proc.stdout.decode().strip() if proc.returncode == 0 else None


def ensure_base_image(base_image: str = BASE_IMAGE) -> str:
    """The base image's id; builds it with scripts/make-base-image.sh when missing."""
    image_id = _image_id(base_image)
    if image_id:
        return image_id
    script = REPO / "scripts" / "make-base-image.sh"
    if not script.exists():
        raise TestbedError(f"base image {base_image} is missing and {script} does not exist")
    proc = subprocess.run(["bash", str(script), base_image], capture_output=True, timeout=900)
    image_id = _image_id(base_image)
    if proc.returncode != 0 or not image_id:
        raise TestbedError(
            f"could not build the base image {base_image} with {script}:\n"
            + (proc.stdout + proc.stderr).decode(errors="replace")[-3000:]
        )
    return image_id


def _image_tag(spec: ImageSpec, parent: str) -> str:
    digest = hashlib.sha256()
    digest.update(parent.encode())
    for name in (spec.dockerfile, *spec.files):
        digest.update(b"\0" + name.encode() + b"\0" + (HERE / name).read_bytes())
    return f"{spec.repository}:{digest.hexdigest()[:16]}"


def ensure_image(kind: str, base_image: str = BASE_IMAGE) -> str:
    """The tag of the image for a host kind; builds it unless an identical build exists."""
    spec = IMAGE_SPECS[kind]
    if kind == UNSUPPORTED:
        parent = ensure_image(FRESH, base_image)
        build_args = ["--build-arg", f"FRESH_IMAGE={parent}"]
    else:
        parent = ensure_base_image(base_image)
        build_args = ["--build-arg", f"BASE_IMAGE={base_image}"]
    tag = _image_tag(spec, parent)
    if _image_id(tag):
        return tag
    proc = _docker(
        "build", "--network", "host", "-f", str(HERE / spec.dockerfile), *build_args,
        "--label", f"{LABEL_KIND}={kind}", "-t", tag, str(HERE),
        check=False, timeout=900,
    )
    if proc.returncode != 0:
        raise TestbedError(
            f"building the {kind} host image ({spec.dockerfile}) failed:\n"
            + (proc.stdout + proc.stderr).decode(errors="replace")[-4000:]
        )
    # Untag builds from older Dockerfiles (kept while a container still uses them).
    for old in _out("images", spec.repository, "--format", "{{.Repository}}:{{.Tag}}", timeout=30).split():
        if old != tag:
            _docker("rmi", old, check=False, timeout=120)
    return tag


# --------------------------------------------------------------------------- helpers


def _machine_nameservers() -> list[str]:
    """The machine's own DNS resolvers, for the nested engines (never public defaults)."""
    servers = []
    try:
        for line in Path("/etc/resolv.conf").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                addr = ipaddress.ip_address(parts[1])
                if not addr.is_loopback and addr.version == 4:
                    servers.append(parts[1])
    except (OSError, ValueError):
        pass
    return servers


def _make_key_pair(directory: Path) -> tuple[Path, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    path = directory / "id_ed25519"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private)
    public_line = public.decode() + " infra-testbed"
    (directory / "id_ed25519.pub").write_text(public_line + "\n")
    return path, public_line


def _ssh_run(host: Host, command: str, timeout: float = 15) -> tuple[int, str]:
    """Run one command over SSH with paramiko: (exit status, stdout+stderr)."""
    import paramiko

    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    try:
        client.connect(
            host.address, port=host.port, username=host.user, key_filename=str(host.key_path),
            timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
            allow_agent=False, look_for_keys=False,
        )
        _, stdout, stderr = client.exec_command(command, timeout=timeout)
        out = stdout.read() + stderr.read()
        return stdout.channel.recv_exit_status(), out.decode(errors="replace").strip()
    finally:
        client.close()


# --------------------------------------------------------------------------- the testbed


class _ClassOrInstanceMethod:
    """`Testbed.start(...)` starts a testbed; `tb.start(host)` boots a stopped host."""

    def __init__(self, on_class: str, on_instance: str):
        self.on_class, self.on_instance = on_class, on_instance

    def __get__(self, obj, cls):
        if obj is None:
            return getattr(cls, self.on_class)
        return getattr(obj, self.on_instance)


class Testbed:
    """Containers that are real SSH (+ Docker) machines; see the module docstring."""

    __test__ = False  # not a pytest test class

    def __init__(self, prefix: str, workdir: Path, own_workdir: bool, keep: bool = False):
        self.prefix = prefix
        self.id = uuid.uuid4().hex[:12]
        self.owner = "keep" if keep else _owner_id()
        self.workdir = workdir
        self._own_workdir = own_workdir
        self.key_path: Path | None = None
        self.public_key = ""
        self.network: str | None = None
        self.subnet: str | None = None
        self.gateway: str | None = None
        self.hosts: list[Host] = []
        self._containers: list[str] = []
        self._volumes: list[str] = []
        self._closed = False
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- start

    @classmethod
    def up(
        cls,
        hosts: int = 3,
        fresh: int = 0,
        unsupported: int = 0,
        prefix: str = "infra-tb",
        timeout: float = 180.0,
        workdir: str | os.PathLike | None = None,
        base_image: str = BASE_IMAGE,
        keep: bool = False,
    ) -> "Testbed":
        """Start `hosts` Docker hosts, `fresh` and `unsupported` fresh machines.

        Also reachable as `Testbed.start(...)` (on the class; on an instance
        `start(host)` boots a stopped host).

        Returns once every sshd accepts the testbed key and every Docker host's
        engine answers `docker info` over SSH; raises TestbedError (with the
        hosts' logs) otherwise, after removing whatever it had made.  Leftovers
        of an earlier testbed with the same prefix, and of testbeds whose process
        died without closing them, are removed first.  `keep=True` (the CLI's `up`)
        exempts this testbed from that: only close() or remove_leftovers() remove it.
        """
        if min(hosts, fresh, unsupported) < 0 or hosts + fresh + unsupported == 0:
            raise ValueError("a testbed needs at least one host")
        if hosts > 89 or fresh > 49 or unsupported > 99:  # address ranges .11-.99, .101-.149, .151-.250
            raise ValueError("at most 89 Docker hosts, 49 fresh and 99 unsupported hosts")
        _check_engine()
        remove_orphans()
        remove_leftovers(prefix)
        images = {}
        if hosts:
            images[DOCKER] = ensure_image(DOCKER, base_image)
        if fresh:
            images[FRESH] = ensure_image(FRESH, base_image)
        if unsupported:
            images[UNSUPPORTED] = ensure_image(UNSUPPORTED, base_image)

        if workdir is None:
            wd, own = Path(tempfile.mkdtemp(prefix=f"{prefix}-")), True
        else:
            wd, own = Path(workdir).resolve(), False
            wd.mkdir(parents=True, exist_ok=True)
        tb = cls(prefix, wd, own, keep=keep)
        try:
            tb._start(hosts, fresh, unsupported, images, timeout)
        except BaseException:
            tb.close()
            raise
        return tb

    def _start(self, hosts: int, fresh: int, unsupported: int, images: dict, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self.key_path, self.public_key = _make_key_pair(self.workdir)
        self._create_network()
        net = ipaddress.ip_network(self.subnet)
        plan = (
            [(DOCKER, f"h{i}", "root", 10 + i) for i in range(1, hosts + 1)]
            + [(FRESH, f"fresh{i}", "deploy", 100 + i) for i in range(1, fresh + 1)]
            + [(UNSUPPORTED, f"unsupported{i}", "deploy", 150 + i) for i in range(1, unsupported + 1)]
        )
        dns = " ".join(_machine_nameservers())
        self.hosts = [
            Host(
                name=name, kind=kind, container=f"{self.prefix}-{name}",
                address=str(net.network_address + offset), user=user, port=22,
                key_path=self.key_path, volume=f"{self.prefix}-{name}-var-lib-docker",
            )
            for kind, name, user, offset in plan
        ]
        # Recorded before creation, so close() also removes half-made ones.
        self._containers = [h.container for h in self.hosts]
        self._volumes = [h.volume for h in self.hosts]
        with ThreadPoolExecutor(max_workers=min(8, len(self.hosts))) as pool:
            for future in [pool.submit(self._run_host, h, images[h.kind], dns) for h in self.hosts]:
                future.result()
        self._wait_ready(self.hosts, deadline)
        self._write_client_files()

    def _labels(self, kind: str = "") -> list[str]:
        labels = [
            "--label", f"{LABEL}={self.prefix}", "--label", f"{LABEL_ID}={self.id}",
            "--label", f"{LABEL_OWNER}={self.owner}",
        ]
        if kind:
            labels += ["--label", f"{LABEL_KIND}={kind}"]
        return labels

    def _create_network(self) -> None:
        name = f"{self.prefix}-net"
        used = _used_subnets()
        for candidate in SUBNET_CANDIDATES:
            cand = ipaddress.ip_network(candidate)
            if any(cand.overlaps(u) for u in used):
                continue
            gateway = str(cand.network_address + 1)
            proc = _docker(
                "network", "create", "--driver", "bridge", "--subnet", candidate, "--gateway", gateway,
                *self._labels(), name, check=False, timeout=60,
            )
            if proc.returncode == 0:
                self.network, self.subnet, self.gateway = name, candidate, gateway
                return
            err = proc.stderr.decode(errors="replace")
            if "overlap" not in err.lower():
                raise TestbedError(f"could not create the testbed network {name}: {err.strip()}")
        raise TestbedError("no free subnet for the testbed network (tried 172.30.x.0/24, 10.213.x.0/24)")

    def _run_host(self, host: Host, image: str, dns: str) -> None:
        _docker("volume", "create", *self._labels(host.kind), host.volume, timeout=60)
        _docker(
            "run", "-d", "--name", host.container, "--hostname", host.name,
            "--network", self.network, "--ip", host.address,
            *HOST_RUN_FLAGS,
            "-v", f"{host.volume}:/var/lib/docker",
            "--stop-timeout", "30",
            "-e", f"SSH_AUTHORIZED_KEY={self.public_key}",
            "-e", f"TESTBED_DNS={dns}",
            "-e", f"TESTBED_CGROUP_PARENT=/{CGROUP_ROOT}/{host.container}",
            *self._labels(host.kind),
            image,
            timeout=120,
        )

    def _ready_command(self, host: Host) -> str:
        if host.kind == DOCKER:
            return "docker info --format '{{.ServerVersion}}'"
        return "sudo -n true" if host.user != "root" else "true"

    def _wait_ready(self, hosts: Sequence[Host], deadline: float) -> None:
        """Poll every host (in parallel) until it is ready or the deadline passes."""

        def wait_one(host: Host) -> str | None:
            delay, last = 0.1, "not tried"
            while True:
                state = _out("inspect", "--format", "{{.State.Status}}", host.container, check=False, timeout=30)
                if state != "running":
                    return f"container is {state or 'missing'}"
                try:
                    status, out = _ssh_run(host, self._ready_command(host), timeout=5)
                    if status == 0:
                        return None
                    last = f"exit {status}: {out[-500:]}"
                except Exception as exc:  # connection refused, auth not yet possible, ...
                    last = f"{type(exc).__name__}: {exc}"
                if time.monotonic() + delay > deadline:
                    return f"not ready in time; last attempt: {last}"
                time.sleep(delay)
                delay = min(delay * 1.5, 1.0)

        with ThreadPoolExecutor(max_workers=max(1, len(hosts))) as pool:
            results = list(pool.map(wait_one, hosts))
        failures = [(h, why) for h, why in zip(hosts, results) if why]
        if failures:
            parts = [f"{len(failures)} testbed host(s) did not come up:"]
            for host, why in failures:
                parts.append(f"--- {host.container} ({host.kind}, {host.address}): {why}\n{self.diagnostics(host)}")
            raise TestbedError("\n".join(parts))

    def _write_client_files(self) -> None:
        """ssh_config, known_hosts and hosts.json in the workdir, for people and tools."""
        known = []
        for host in self.hosts:
            keys = self.exec(host, "cat /etc/ssh/ssh_host_*_key.pub")
            known += [f"{host.address} {' '.join(line.split()[:2])}" for line in keys.splitlines() if line.strip()]
        (self.workdir / "known_hosts").write_text("\n".join(known) + "\n")
        lines = []
        for host in self.hosts:
            lines += [
                f"Host {host.name} {host.container}",
                f"    HostName {host.address}",
                f"    User {host.user}",
                f"    Port {host.port}",
                f"    IdentityFile {host.key_path}",
                "    IdentitiesOnly yes",
                f"    UserKnownHostsFile {self.known_hosts_path}",
                "    StrictHostKeyChecking yes",
                "",
            ]
        self.ssh_config_path.write_text("\n".join(lines))
        (self.workdir / "hosts.json").write_text(json.dumps(self.describe(), indent=2) + "\n")

    # ---------------------------------------------------------------- queries

    @property
    def ssh_config_path(self) -> Path:
        return self.workdir / "ssh_config"

    @property
    def known_hosts_path(self) -> Path:
        return self.workdir / "known_hosts"

    @property
    def docker_hosts(self) -> list[Host]:
        return [h for h in self.hosts if h.kind == DOCKER]

    @property
    def fresh_hosts(self) -> list[Host]:
        return [h for h in self.hosts if h.kind == FRESH]

    @property
    def unsupported_hosts(self) -> list[Host]:
        return [h for h in self.hosts if h.kind == UNSUPPORTED]

    def host(self, name: str | Host) -> Host:
        """A host by short name ("h1"), container name or Host."""
        if isinstance(name, Host):
            name = name.name
        for host in self.hosts:
            if name in (host.name, host.container, host.address):
                return host
        raise KeyError(f"no testbed host {name!r} (have: {', '.join(h.name for h in self.hosts)})")

    __getitem__ = host

    def cluster_hosts(self, hosts: Iterable[Host | str] | None = None, user: str | None = None) -> dict:
        """{name: {address, user, port, key}} for a cluster file's `hosts:` section."""
        chosen = [self.host(h) for h in hosts] if hosts is not None else self.hosts
        return {h.name: (h.as_user(user) if user else h).cluster_entry() for h in chosen}

    def cluster_hosts_yaml(self, hosts: Iterable[Host | str] | None = None, user: str | None = None) -> str:
        """The same as YAML text: `hosts:` and one entry per host."""
        lines = ["hosts:"]
        for name, entry in self.cluster_hosts(hosts, user).items():
            lines.append(f"  {name}:")
            lines += [f"    {k}: {json.dumps(v)}" for k, v in entry.items()]
        return "\n".join(lines) + "\n"

    def describe(self) -> dict:
        return {
            "prefix": self.prefix,
            "network": self.network,
            "subnet": self.subnet,
            "gateway": self.gateway,
            "key": str(self.key_path),
            "ssh_config": str(self.ssh_config_path),
            "known_hosts": str(self.known_hosts_path),
            "hosts": [
                {"name": h.name, "kind": h.kind, "container": h.container, **h.cluster_entry()} for h in self.hosts
            ],
        }

    def state(self, host: Host | str) -> str:
        """Docker's view of the host: running, paused, exited, ..."""
        return _out("inspect", "--format", "{{.State.Status}}", self.host(host).container, check=False, timeout=30)

    def diagnostics(self, host: Host | str) -> str:
        """The host container's state and logs, and its dockerd log (for failure messages)."""
        host = self.host(host) if not isinstance(host, Host) else host
        state = _out("inspect", "--format", "{{json .State}}", host.container, check=False, timeout=30)
        logs = _docker("logs", "--tail", "40", host.container, check=False, timeout=30)
        text = f"state: {state}\nlogs:\n{(logs.stdout + logs.stderr).decode(errors='replace')}"
        if host.kind == DOCKER or "running" in state:
            dlog = _docker("exec", host.container, "tail", "-n", "30", "/var/log/dockerd.log", check=False, timeout=30)
            if dlog.returncode == 0:
                text += f"dockerd.log:\n{dlog.stdout.decode(errors='replace')}"
        return text

    # ---------------------------------------------------------------- acting on hosts

    def exec_result(
        self, host: Host | str, cmd: str | Sequence[str], input: bytes | str | None = None,
        user: str | None = None, timeout: float = 120,
    ) -> subprocess.CompletedProcess:
        """`docker exec` on the host (a string runs under sh -c); never raises on exit status."""
        host = self.host(host)
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        opts = ["-i"] if input is not None else []
        if user:
            opts += ["-u", user]
        data = input.encode() if isinstance(input, str) else input
        return _docker("exec", *opts, host.container, *argv, check=False, timeout=timeout, input=data)

    def exec(self, host: Host | str, cmd: str | Sequence[str], input: bytes | str | None = None,
             user: str | None = None, timeout: float = 120) -> str:
        """Run a command on the host (docker exec) and return its stdout; raises on failure."""
        proc = self.exec_result(host, cmd, input=input, user=user, timeout=timeout)
        if proc.returncode != 0:
            raise TestbedError(
                f"on {self.host(host).name}: `{cmd}` exited {proc.returncode}: "
                f"{(proc.stderr or proc.stdout).decode(errors='replace').strip()[-2000:]}"
            )
        return proc.stdout.decode(errors="replace").strip()

    def ssh(self, host: Host | str, command: str, user: str | None = None, timeout: float = 60) -> tuple[int, str]:
        """Run a command over SSH (paramiko): (exit status, stdout+stderr)."""
        host = self.host(host)
        return _ssh_run(host.as_user(user) if user else host, command, timeout=timeout)

    def connect(self, host: Host | str, user: str | None = None):
        """A Fabric Connection to the host."""
        return self.host(host).connect(user=user)

    def load_image(self, host: Host | str, image: str, timeout: float = 600) -> None:
        """Copy a local image into the host's engine (docker save | docker exec -i docker load)."""
        host = self.host(host)
        save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
        try:
            load = subprocess.run(
                ["docker", "exec", "-i", host.container, "docker", "load"],
                stdin=save.stdout, capture_output=True, timeout=timeout,
            )
        finally:
            save.stdout.close()
            save_rc = save.wait(timeout=timeout)
        if save_rc != 0 or load.returncode != 0:
            raise TestbedError(
                f"loading {image} into {host.name} failed: {load.stderr.decode(errors='replace').strip()}"
            )

    def stop(self, host: Host | str, timeout: int = 30) -> None:
        """Shut the host down (SIGTERM: dockerd stops its containers; SIGKILL after `timeout`)."""
        _docker("stop", "-t", str(timeout), self.host(host).container, timeout=timeout + 60)

    def kill(self, host: Host | str) -> None:
        """Lose the host at once (SIGKILL, like pulling the plug)."""
        _docker("kill", self.host(host).container, timeout=60)

    def start_host(self, host: Host | str, timeout: float = 120) -> None:
        """Boot a stopped host again: same address, sshd and (docker hosts) dockerd up."""
        host = self.host(host)
        _docker("start", host.container, timeout=60)
        self._wait_ready([host], time.monotonic() + timeout)
        addr = _out(
            "inspect", "--format", "{{(index .NetworkSettings.Networks \"" + self.network + "\").IPAddress}}",
            host.container, timeout=30,
        )
        if addr != host.address:
            raise TestbedError(f"{host.name} came back at {addr}, not {host.address}")

    def restart(self, host: Host | str, timeout: float = 120) -> None:
        self.stop(host)
        self.start_host(host, timeout=timeout)

    def pause(self, host: Host | str) -> None:
        """Freeze every process of the host (a hung machine: TCP connects, nothing answers)."""
        _docker("pause", self.host(host).container, timeout=60)

    def unpause(self, host: Host | str) -> None:
        _docker("unpause", self.host(host).container, timeout=60)

    def disconnect(self, host: Host | str) -> None:
        """Cut the host off the testbed network (a partition); it keeps running."""
        _docker("network", "disconnect", self.network, self.host(host).container, timeout=60)

    def reconnect(self, host: Host | str) -> None:
        """Undo disconnect(): back on the network at the same address."""
        host = self.host(host)
        _docker("network", "connect", "--ip", host.address, self.network, host.container, timeout=60)

    def heal(self, timeout: float = 120) -> list[str]:
        """Undo every fault: unpause, reconnect and start hosts as needed; wait until ready.

        Returns what it did, e.g. ["h2: started"]; used between tests sharing a testbed.
        """
        done, to_wait = [], []
        for host in self.hosts:
            info = json.loads(_out("inspect", "--format", "{{json .}}", host.container, timeout=30))
            status = info["State"]["Status"]
            if status == "paused":
                self.unpause(host)
                done.append(f"{host.name}: unpaused")
            if self.network not in (info["NetworkSettings"].get("Networks") or {}):
                self.reconnect(host)
                done.append(f"{host.name}: reconnected")
            if status in ("exited", "created", "dead"):
                _docker("start", host.container, timeout=60)
                done.append(f"{host.name}: started")
                to_wait.append(host)
        if to_wait:
            self._wait_ready(to_wait, time.monotonic() + timeout)
        return done

    # ---------------------------------------------------------------- teardown

    def close(self) -> None:
        """Remove every container, volume and the network this testbed made (idempotent).

        Built images are kept.  Raises TestbedError if something could not be removed.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        errors = []
        for container in self._containers:
            proc = _docker("rm", "-f", "-v", container, check=False, timeout=120)
            if proc.returncode != 0 and b"No such container" not in proc.stderr:
                errors.append(proc.stderr.decode(errors="replace").strip())
        for volume in self._volumes:
            proc = _docker("volume", "rm", "-f", volume, check=False, timeout=120)
            if proc.returncode != 0:
                errors.append(proc.stderr.decode(errors="replace").strip())
        if self.network:
            proc = _docker("network", "rm", self.network, check=False, timeout=60)
            if proc.returncode != 0 and b"No such network" not in proc.stderr:
                errors.append(proc.stderr.decode(errors="replace").strip())
        for container in self._containers:
            _remove_cgroups(container)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if errors:
            raise TestbedError("testbed cleanup left things behind:\n" + "\n".join(errors))

    start = _ClassOrInstanceMethod("up", "start_host")

    def __enter__(self) -> "Testbed":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Testbed {self.prefix} {', '.join(f'{h.name}={h.address}' for h in self.hosts)}>"


# --------------------------------------------------------------------------- module-level cleanup


def _used_subnets() -> list:
    ids = _out("network", "ls", "-q", timeout=30).split()
    if not ids:
        return []
    nets = json.loads(_out("network", "inspect", *ids, timeout=30))
    used = []
    for net in nets:
        for cfg in (net.get("IPAM") or {}).get("Config") or []:
            try:
                used.append(ipaddress.ip_network(cfg.get("Subnet", ""), strict=False))
            except ValueError:
                pass
    return used


def _remove_cgroups(container: str) -> None:
    """rmdir the (empty) cgroups a nested engine left in the machine's hierarchy."""
    root = Path("/sys/fs/cgroup")
    for controller in root.glob("*"):
        top = controller / CGROUP_ROOT / container
        if not top.is_dir():
            continue
        for path in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            try:
                path.rmdir()
            except OSError:
                pass
        try:
            top.rmdir()
            (controller / CGROUP_ROOT).rmdir()  # only succeeds when no other testbed uses it
        except OSError:
            pass


def _owner_id(pid: int | None = None) -> str:
    try:
        namespace = os.readlink("/proc/self/ns/pid").strip("pid:[]")
    except OSError:
        namespace = "?"
    return f"{namespace}:{pid or os.getpid()}"


def _owner_alive(owner: str) -> bool:
    """False only for an owner process known to be gone (same pid namespace, no such pid)."""
    namespace, _, pid = owner.partition(":")
    if owner == "keep" or not pid.isdigit() or namespace != _owner_id().partition(":")[0]:
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _remove_labelled(label_filter: str, keep=lambda owner: False) -> list[str]:
    """Remove containers, then volumes, then networks matching a label filter,
    except those whose owner label `keep(owner)` says to keep."""
    owner = '{{.Label "%s"}}' % LABEL_OWNER
    listing = {
        "container": ("ps", "-a", "--format", "{{.Names}}\t" + owner),
        "volume": ("volume", "ls", "--format", "{{.Name}}\t" + owner),
        "network": ("network", "ls", "--format", "{{.Name}}\t" + owner),
    }
    found = {}
    for kind, cmd in listing.items():
        rows = _out(*cmd, "--filter", f"label={label_filter}", timeout=30)
        found[kind] = [n for n, _, o in (r.partition("\t") for r in rows.splitlines()) if n and not keep(o)]
    if found["container"]:
        _docker("rm", "-f", "-v", *found["container"], timeout=300)
    for volume in found["volume"]:
        _docker("volume", "rm", "-f", volume, timeout=120)
    for network in found["network"]:
        _docker("network", "rm", network, timeout=60)
    for name in found["container"]:
        _remove_cgroups(name)
    return found["container"] + found["volume"] + found["network"]


def remove_leftovers(prefix: str) -> list[str]:
    """Remove containers, volumes and networks of the testbed(s) with this prefix."""
    return _remove_labelled(f"{LABEL}={prefix}")


def remove_orphans() -> list[str]:
    """Remove testbed objects whose owner process has died (a crashed or killed test run)."""
    return _remove_labelled(LABEL_OWNER, keep=_owner_alive)
