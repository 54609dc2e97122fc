"""`infra run`: a script of the project in the master container, its output streamed here, its files fetched back."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import posixpath
import re
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .. import confined
from ..commands.celery import PID_MARKER, signal_job
from ..commands.celery import run_job as job_op
from ..commands.engine import Exec
from ..commands.files import fetch_output, list_output, list_project
from ..config import Cluster
from ..errors import ConfigError, InfraError
from ..facts.files import (
    OUTPUT_FOLDER,
    LocalFile,
    ignore_rules,
    no_ignores,
    parse_project_listing,
    parse_sha256_list,
    scan_local,
)
from ..facts.sections import last_line
from ..names import container_name
from ..plans.layout import HostLayout, host_layout
from ..plans.sync import plan_sync
from ..transport.connection import Connection
from ..transport.pool import ConnectionPool
from .gather import read_host_facts

_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def job_words(script: str, args: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """Also accept the job written as a command: `python -m MODULE ...`, `python FILE.py ...`, `-m MODULE`."""
    words = (script, *args)
    if words[0] in ("python", "python3"):
        words = words[1:]
    if len(words) >= 2 and words[0] == "-m":
        words = words[1:]
    if not words:
        raise ConfigError("run: name a script (FILE.py) or a module to run")
    return words[0], tuple(words[1:])


def script_command(script: str, project_dir: Path) -> list[str]:
    """What follows `python` for SCRIPT: a file of the project (`*.py`) or a module (`-m NAME`)."""
    if script.endswith(".py"):
        path = Path(script)
        if path.is_absolute():
            try:
                path = path.resolve().relative_to(project_dir.resolve())
            except ValueError:
                raise ConfigError(f"run: {script} is not inside the project folder {project_dir}") from None
        rel = posixpath.normpath(path.as_posix())
        if rel.startswith("../") or rel == ".." or rel.startswith("/"):
            raise ConfigError(f"run: {script} is not inside the project folder {project_dir}")
        if not (project_dir / rel).is_file():
            raise ConfigError(f"run: no file {rel} in the project folder {project_dir}")
        return [rel]
    if not _MODULE.match(script):
        raise ConfigError(f"run: {script!r} is neither a .py file of the project nor a module name (package.module)")
    return ["-m", script]


def _wait_until_gone(conn: Connection, cluster_name: str, pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not conn.engine.exec(signal_job(cluster_name, pid, "0"), timeout=30).ok:
            return True
        time.sleep(0.3)
    return False


def plan_fetch(remote: dict[str, str], local: dict[str, LocalFile]) -> list[str]:
    """Output files of the master host that are new here or differ from the local copy."""
    wanted = []
    for rel, digest in sorted(remote.items()):
        if not confined.is_inside(rel):
            continue  # never write outside the output folder
        if rel not in local or local[rel].digest != digest:
            wanted.append(rel)
    return wanted


@dataclass
class Fetched:
    files: list[str] = field(default_factory=list)
    bytes: int = 0
    refused: list[str] = field(default_factory=list)  # "PATH (why)": not written here

    def add(self, other: "Fetched") -> None:
        self.files += other.files
        self.bytes += other.bytes
        self.refused += other.refused


def unpack_files(data: bytes, target: Path, wanted: dict[str, str]) -> Fetched:
    """Write the wanted regular files of a tar.gz under `target`, each only if its content is the one listed.

    `wanted`: {relative path: sha256 from the listing}. Files get mode 0644, or 0755 when the
    host's file was executable. Nothing is written through a link here: `target` itself, a
    folder on the way or the file's own name being a link refuses that file (`confined`).
    """
    fetched = Fetched()
    root = confined.open_folder(target, create=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member in tar:
                rel = member.name[2:] if member.name.startswith("./") else member.name
                if rel not in wanted or not member.isfile():
                    continue
                content = tar.extractfile(member).read()
                if hashlib.sha256(content).hexdigest() != wanted[rel]:
                    fetched.refused.append(f"{rel} (not the content listed: changed while it was fetched)")
                    continue
                try:
                    confined.write_file(root, rel, content, 0o755 if member.mode & 0o111 else 0o644)
                except (OSError, confined.ConfinementError) as exc:
                    fetched.refused.append(f"{rel} ({getattr(exc, 'strerror', None) or exc})")
                    continue
                fetched.files.append(rel)
                fetched.bytes += len(content)
    finally:
        os.close(root)
    return fetched


@dataclass
class RunResult:
    exit_code: int
    fetched: list[str] = field(default_factory=list)
    fetched_bytes: int = 0
    output_dir: Path | None = None
    in_place: bool = False
    refused: list[str] = field(default_factory=list)  # output files not fetched, and why


def fetch_outputs(conn: Connection, cluster_name: str, local_dir: Path) -> Fetched:
    """Copy the master's new or changed output files into `local_dir`.

    Listed and read inside the master container (`commands.files.list_output`): only what the
    job could see is reachable, never a file of the host. The listing is filtered like any
    other (no link, nothing outside the folder); each file is checked against its listed digest.
    """
    if local_dir.is_symlink():
        return Fetched(refused=[f"{local_dir} (a symbolic link here: nothing is written through it)"])
    listing = conn.engine.exec(list_output(cluster_name), timeout=300)
    if not listing.ok:
        raise InfraError(f"{conn.host.name}: listing the output folder failed: {last_line(listing.stderr)}")
    remote = parse_sha256_list(listing.stdout)
    local = scan_local(local_dir, no_ignores()) if local_dir.is_dir() else {}
    fetched = Fetched()
    for op in fetch_output(cluster_name, plan_fetch(remote, local)):
        answer = conn.engine.exec(op, timeout=600)
        if not answer.ok:
            raise InfraError(f"{conn.host.name}: fetching output files failed: {last_line(answer.stderr)}")
        names = json.loads(op.command[-1])
        fetched.add(unpack_files(base64.b64decode(answer.stdout), local_dir, {rel: remote[rel] for rel in names}))
    return fetched


# Ctrl-C: the signals sent to a job in turn, each with the seconds it gets to end.
JOB_STOP_SIGNALS: tuple[tuple[str, float], ...] = (("INT", 10.0), ("TERM", 5.0), ("KILL", 5.0))


def master_ready(conn: Connection, cluster: Cluster, note: Callable[[str], None]) -> HostLayout:
    """The master host's layout once its master container runs; warns when its project is stale."""
    master = cluster.master_host
    facts = read_host_facts(conn, cluster)
    name = container_name(cluster.name, "master")
    container = facts.container(name)
    if container is None or not container.running:
        state = container.state if container else "missing"
        raise InfraError(f"{master.name}: the master container {name} is {state}: run `infra up`")
    layout = host_layout(cluster, master, facts)
    if not master.is_local:
        rules = ignore_rules(cluster.project_dir)
        listing = conn.run(list_project(layout.root, layout.project_dir, layout.output_dir, cluster.name), timeout=300)
        try:
            stale = plan_sync(layout, cluster.name, cluster.project_dir, scan_local(cluster.project_dir, rules),
                              parse_project_listing(listing.stdout, rules), rules)
        except InfraError as exc:  # not this cluster's folder: `sync-files` and `up` refuse it too
            note(f"warning: {master.name}: {exc}")
            return layout
        if stale.files_changed:
            note(f"warning: the project on {master.name} differs from the local folder "
                 f"({len(stale.upload)} file(s) to send, {len(stale.delete)} to delete): "
                 f"run `infra sync-files` to use your latest code")
    return layout


def exec_job(
    conn: Connection, cluster: Cluster, op: Exec, *,
    out: Callable[[str], None], err: Callable[[str], None], note: Callable[[str], None],
    stop_signals: tuple[tuple[str, float], ...] = JOB_STOP_SIGNALS, what: str = "the job", keep_output: bool = True,
) -> int:
    """Run a job (an `Exec` made by `commands.celery.run_job` or alike) in the master container.

    Its output is streamed to `out`/`err` as it comes (and held for nothing else unless
    `keep_output`). Ctrl-C sends it `stop_signals` in turn
    (`docker exec` forwards none, and the exec stream may be gone already) until it is gone,
    and returns 130; otherwise its exit code.
    """
    pid: list[int] = []

    def on_stderr(line: str) -> None:
        if not pid and line.startswith(PID_MARKER) and line[len(PID_MARKER):].strip().isdigit():
            pid.append(int(line[len(PID_MARKER):]))
            return
        err(line)

    box: dict = {}

    def execute() -> None:
        try:
            box["result"] = conn.engine.exec(op, on_stdout=out, on_stderr=on_stderr, keep_output=keep_output)
        except BaseException as exc:  # handed to the main thread
            box["error"] = exc

    worker = threading.Thread(target=execute, daemon=True)
    worker.start()
    interrupted = False
    try:
        while worker.is_alive():
            worker.join(0.2)
    except KeyboardInterrupt:
        interrupted = True
        note(f"interrupted: stopping {what} in the master container")
        for signal, grace in stop_signals:
            if not pid:
                break
            conn.engine.exec(signal_job(cluster.name, pid[0], signal), timeout=30)
            if _wait_until_gone(conn, cluster.name, pid[0], grace):
                break
        worker.join(5)
    if "error" in box and not interrupted:
        raise box["error"]
    return 130 if interrupted else box["result"].exit_code


def run_job(
    cluster: Cluster, script: str, args: tuple[str, ...], *,
    out: Callable[[str], None], err: Callable[[str], None], note: Callable[[str], None],
) -> RunResult:
    """Run SCRIPT in the master container, streaming its output; then fetch its output files."""
    script, args = job_words(script, args)
    python_args = script_command(script, cluster.project_dir)
    master = cluster.master_host
    local_output = cluster.project_dir / OUTPUT_FOLDER
    with ConnectionPool.for_cluster(cluster) as pool:
        conn = pool.get(master)
        master_ready(conn, cluster, note)
        code = exec_job(conn, cluster, job_op(cluster.name, python_args, args), out=out, err=err, note=note)
        result = RunResult(code, output_dir=local_output)
        if master.is_local:
            result.in_place = True
            return result
        fetched = fetch_outputs(conn, cluster.name, local_output)
        result.fetched, result.fetched_bytes, result.refused = fetched.files, fetched.bytes, fetched.refused
        return result
