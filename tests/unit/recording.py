"""A recording fake of a host: shell commands and engine operations in, canned answers out.

Golden tests of the workflows give each host its facts (what the probe and the engine answer),
run the real workflow against these fakes, and compare the exact commands it sent, in order,
with the ones the test spells out — "these facts in, exactly these commands out", no network.
Every line the fake records is the command's text as `--dry-run` would show it: shell commands
as `shlex.join` of their words (plus `<N bytes` when something is fed on stdin), engine
operations as the docker command line that does the same.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import re
import shlex
import tarfile
import threading
from dataclasses import dataclass, field

from infra.commands import engine as ops
from infra.commands.celery import READINESS_PROBE
from infra.commands.files import MARKER_FILE, PROBE_MARKER
from infra.config import Host
from infra.transport.result import CommandResult


@dataclass
class FakeHost:
    """What one host answers: its identity, engine state, and files listing of the project."""

    home: str = "/home/user"
    uid: int = 1000
    gid: int = 1000
    arch: str = "x86_64"
    version: str = "24.0.7"
    containers: list[dict] = field(default_factory=list)  # the API's container-list items
    inspected: dict[str, dict] = field(default_factory=dict)  # container name -> inspect object
    images: dict[str, dict] = field(default_factory=dict)  # ref -> {"Id", "Labels"}
    registry_refs: list[str] = field(default_factory=list)  # names left by a transfer cut short
    networks: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    listings: dict[str, str] = field(default_factory=dict)  # project folder -> `sha256sum` lines
    claimed: dict[str, str] = field(default_factory=dict)  # cluster folder -> the cluster its marker names
    refusals: dict[str, str] = field(default_factory=dict)  # folder -> why `clean` finds it is not the cluster's
    built: dict[str, str] = field(default_factory=dict)  # ref -> the id a build or pull gives it


class RecordingEngine:
    def __init__(self, state: FakeHost, log: list[str], lock: threading.Lock):
        self.state = state
        self.log = log
        self.lock = lock

    def _record(self, line: str) -> None:
        with self.lock:
            self.log.append(line)

    def query(self, op):
        self._record(op.text())
        state = self.state
        if isinstance(op, ops.EngineVersion):
            return {"Version": state.version, "Arch": "amd64", "Os": "linux"}
        if isinstance(op, ops.ListContainers):
            return list(state.containers)
        if isinstance(op, ops.InspectContainers):
            return [state.inspected[name] for name in op.names if name in state.inspected]
        if isinstance(op, ops.InspectImages):
            return {ref: state.images.get(ref) for ref in op.refs}
        if isinstance(op, ops.ListImageRefs):
            return sorted(state.registry_refs)
        if isinstance(op, ops.ListNetworks):
            return sorted(state.networks)
        if isinstance(op, ops.ListVolumes):
            return sorted(state.volumes)
        raise AssertionError(f"unexpected query {op!r}")

    def apply(self, op, on_line=None):
        """Record the operation and change the fake's state as the engine would."""
        self._record(op.text())
        state = self.state
        if isinstance(op, ops.RunContainer):
            spec = op.spec
            state.containers = [c for c in state.containers if c["Names"] != [f"/{spec.name}"]]
            image = state.images.get(spec.image) or {}
            state.containers.append({"Names": [f"/{spec.name}"], "Id": f"id-{spec.name}", "State": "running",
                                     "Status": "Up 1 second", "Image": spec.image, "ImageID": image.get("Id", ""),
                                     "Labels": dict(op.labels)})
            state.inspected[spec.name] = {"Name": f"/{spec.name}", "Id": f"id-{spec.name}",
                                          "State": {"Status": "running", "StartedAt": "2026-01-01T00:00:00Z"},
                                          "Config": {"Image": spec.image, "Labels": dict(op.labels)}}
            return f"id-{spec.name}"
        if isinstance(op, ops.RemoveContainers):
            state.containers = [c for c in state.containers if c["Names"][0].lstrip("/") not in op.names]
            for name in op.names:
                state.inspected.pop(name, None)
        elif isinstance(op, ops.RestartContainer):
            state.inspected[op.name]["State"]["StartedAt"] = "2026-01-01T00:01:00Z"
        elif isinstance(op, ops.CreateNetwork):
            state.networks.append(op.name)
        elif isinstance(op, ops.RemoveNetwork):
            state.networks = [n for n in state.networks if n != op.name]
        elif isinstance(op, ops.CreateVolume):
            state.volumes.append(op.name)
        elif isinstance(op, ops.UntagImage):
            state.registry_refs = [ref for ref in state.registry_refs if ref != op.ref]
        elif isinstance(op, ops.RemoveVolume):
            state.volumes = [v for v in state.volumes if v != op.name]
        elif isinstance(op, (ops.BuildImage, ops.PullImage)):
            ref = op.tag if isinstance(op, ops.BuildImage) else op.ref
            new_id = state.built.get(ref, f"sha256:new-{ref}")
            state.images[ref] = {"Id": new_id, "Labels": dict(getattr(op, "labels", ()))}
            return new_id
        return None

    def exec(self, op, *, on_stdout=None, on_stderr=None, timeout=None, keep_output=True) -> CommandResult:
        command = op.command
        if READINESS_PROBE in command:
            # The broker takes a login and every node named answers: the workers are up.
            self._record(shlex.join(["docker", "exec", op.container, "python", "-c", "READINESS_PROBE", *command[3:]]))
            nodes = json.loads(command[4])
            lines = [{"event": "broker", "ok": True}, {"event": "answered", "nodes": nodes},
                     {"event": "done", "missing": [], "error": None}]
            for line in lines:
                if on_stdout is not None:
                    on_stdout(json.dumps(line))
            return CommandResult(0, "".join(json.dumps(line) + "\n" for line in lines), "")
        if len(command) > 2 and command[:2] == ("python", "-c"):
            self._record(shlex.join(["docker", "exec", op.container, "python", "-c", "PROBE", *command[3:]]))
            return CommandResult(0, "", "")
        self._record(op.text())
        return CommandResult(0, "", "")


def sha256_listing(files: dict[str, bytes]) -> str:
    """What `list_files` prints for these files."""
    return "".join(f"{hashlib.sha256(data).hexdigest()}  ./{rel}\n" for rel, data in sorted(files.items()))


def _parse_listing(listing: str) -> dict[str, str]:
    return {line[68:]: line[:64] for line in listing.splitlines() if len(line) > 68}


def _render_listing(files: dict[str, str]) -> str:
    return "".join(f"{digest}  ./{rel}\n" for rel, digest in sorted(files.items()))


def safe_path_owners(root: str, uid: int, home: str, exists: bool) -> str:
    """The `paths` section of a cluster folder that no other user can swap: it and the home are the
    SSH user's, the folders above the home root's, all 0755."""
    lines = [str(uid), f"f {uid} user 41ed {root}" if exists else f"f absent {root}"]
    folder = root
    while folder != "/":
        folder = posixpath.dirname(folder)
        mine = folder == home or folder.startswith(home + "/")
        lines.append(f"p {uid} user 41ed {folder}" if mine else f"p 0 root 41ed {folder}")
    return f"{PROBE_MARKER}paths\n" + "\n".join(lines) + "\n"


def project_listing(owner: str, folders: str, listing: str, paths: str = "") -> str:
    """What `list_project` prints: the cluster folder's owner, who owns it and the folders above it,
    which folders exist, the files (no link)."""
    return (f"{PROBE_MARKER}owner\n{owner}\n{paths}{PROBE_MARKER}folders\n{folders}{PROBE_MARKER}files\n{listing}"
            f"\n{PROBE_MARKER}links\n\n{PROBE_MARKER}end\n")


def _folders_of(script: str) -> list[str]:
    """The project folder, its mount point and the output folder named by `list_project` / `prepare_project`."""
    loop = script[script.index("for d in ") + len("for d in "):]
    return shlex.split(loop[:loop.index("; do")])


def merge_listing(listing: str, tar: bytes) -> str:
    """A folder's listing after the files of a tar were extracted into it."""
    files = _parse_listing(listing)
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        for member in archive.getmembers():
            if member.isfile():
                files[member.name] = hashlib.sha256(archive.extractfile(member).read()).hexdigest()
    return _render_listing(files)


class RecordingConnection:
    """Stands in for `infra.transport.connection.Connection`: records, answers from its `FakeHost`."""

    def __init__(self, host: Host, state: FakeHost, log: list[str], lock: threading.Lock):
        self.host = host
        self.state = state
        self.log = log
        self.lock = lock
        self.engine = RecordingEngine(state, log, lock)

    def run(self, command, *, stdin=None, timeout=None, check=True, on_stdout=None, on_stderr=None) -> CommandResult:
        text = command if isinstance(command, str) else shlex.join(command)
        fed = f" <{len(stdin)} bytes sha256:{hashlib.sha256(stdin).hexdigest()[:8]}" if isinstance(stdin, bytes) else ""
        with self.lock:
            self.log.append(text + fed)
        state = self.state
        script = shlex.split(text)[-1] if text.startswith("sh -c ") else ""
        if script.startswith(f"printf '{PROBE_MARKER}paths"):  # folder_owners, before a folder is removed
            root = shlex.split(script[script.index(" r=") + 3:])[0]
            paths = safe_path_owners(root, state.uid, state.home, root in state.claimed)
            return CommandResult(0, paths + f"{PROBE_MARKER}end\n", "")
        if f"{PROBE_MARKER}owner" in script:  # list_project
            project, _, _ = _folders_of(script)
            home = ""
            if script.startswith(f"printf '{PROBE_MARKER}home"):  # from_home: paths relative to the home
                project, home = posixpath.normpath(posixpath.join(state.home, project)), f"{PROBE_MARKER}home\n{state.home}\n"
            root = posixpath.dirname(project)
            owner = "ours" if root in state.claimed else "absent"
            folders = "yes\nyes\nyes\n" if root in state.claimed else "no\nno\nno\n"
            paths = safe_path_owners(root, state.uid, state.home, root in state.claimed)
            return CommandResult(0, home + project_listing(owner, folders, state.listings.get(project, ""), paths), "")
        if f"{PROBE_MARKER}home" in text:
            out = (f"{PROBE_MARKER}home\n{state.home}\n{PROBE_MARKER}uid\n{state.uid}\n{state.gid}\n"
                   f"{PROBE_MARKER}arch\n{state.arch}\n{PROBE_MARKER}end\n")
            return CommandResult(0, out, "")
        if f"{MARKER_FILE}.XXXXXX" in script:  # prepare_project: the cluster folder is claimed
            project = _folders_of(script)[0]
            state.claimed[posixpath.dirname(project)] = shlex.split(script[script.index("printf '%s\\n' "):])[2]
        if "tar -x" in script and isinstance(stdin, bytes):
            folder = shlex.split(script)[3]  # [ ! -L PROJECT ] && cd PROJECT && tar ...
            state.listings[folder] = merge_listing(state.listings.get(folder, ""), stdin)
        if "find . -depth" in script:  # delete_files: `-path ./REL` words, escaped for find
            words = shlex.split(script)
            folder = words[3]
            gone = {re.sub(r"\\(.)", r"\1", words[i + 1][2:]) for i, word in enumerate(words) if word == "-path"}
            files = {rel: digest for rel, digest in _parse_listing(state.listings.get(folder, "")).items()
                     if rel not in gone}
            state.listings[folder] = _render_listing(files)
        if "echo removed" in script:  # remove_owned_folder / remove_folder
            for folder, why in state.refusals.items():
                if f"rm -rf -- {shlex.quote(folder)} " in script:
                    return CommandResult(0, f"refused: {why}\n", "")
            return CommandResult(0, "removed\n", "")
        return CommandResult(0, "", "")

    def peer_address(self) -> str | None:
        return self.host.address

    def close(self) -> None:
        pass


class RecordingHosts:
    """The fake hosts of one test, and what each was sent: `connect` goes into `ConnectionPool`."""

    def __init__(self, **hosts: FakeHost):
        self.hosts = hosts
        self.logs: dict[str, list[str]] = {name: [] for name in hosts}
        self.lock = threading.Lock()

    def connect(self, host: Host, limits) -> RecordingConnection:
        return RecordingConnection(host, self.hosts[host.name], self.logs[host.name], self.lock)

    def sent(self, name: str) -> list[str]:
        return list(self.logs[name])
