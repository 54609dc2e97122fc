#!/usr/bin/env python3
"""Fan-out benchmark: infra's SSH fan-out against N parallel OpenSSH clients, on cheap loopback hosts.

It PRINTS figures; it is not a test and asserts nothing about timing. See benchmarks/README.md.

What it does (root and Debian's openssh-server needed; installed with apt-get when missing):
  * starts "hosts" that are only sshd: several `sshd -D -f CONFIG` processes, each listening on up
    to 15 loopback addresses 127.0.1.N (one sshd refuses more than 16 listen sockets), port 2222,
    a temporary ed25519 host key, a temporary client key in a temporary authorized_keys for root;
    the hosts' commands see a PATH without docker and SHLVL=1 (so bash skips root's ~/.bashrc);
  * for every N of --hosts and --repeat times (the order of the three steps rotates):
      1. infra's own fan-out: `ConnectionPool.open(hosts)` then `true` (--commands times, one
         after another) on every host through `run_concurrently`: wall time of each step,
         per-host medians, CPU of this process, threads;
      2. the facts probe: infra's real `gather_facts` (facts_script + parse_host_facts) on the
         same open connections; docker is absent, so it measures the SSH round trip, the remote
         shell script and the parse;
      3. the baseline: N OpenSSH clients at once (`ssh -o BatchMode=yes ... true`), once with
         OpenSSH's default key exchange and once with curve25519 (what paramiko negotiates here);
      4. the peak RSS of this process (getrusage) after each N;
  * prints one JSON line per N, then rich tables;
  * stops every sshd it started (listeners and their per-connection children) and removes every
    temporary file, also on Ctrl-C, SIGTERM or failure; all waits are bounded. If this process is
    killed outright, the kernel stops the listeners (PR_SET_PDEATHSIG) and the next run removes
    the temp dir left behind.

Traffic goes only to 127.0.1.0/24 on this machine.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a checkout without installing

from infra.config import Host  # noqa: E402
from infra.errors import InfraError  # noqa: E402
from infra.transport import pool as transport_pool  # noqa: E402
from infra.transport.result import Limits  # noqa: E402
from infra.workflows.gather import gather_facts  # noqa: E402

ADDRESS_PREFIX = "127.0.1."
MAX_HOSTS = 254
PER_SSHD = 15  # one sshd refuses more than 16 listen sockets
CLUSTER = "fanout-bench"
# What the hosts' commands may find on PATH (the facts probe needs sh, id and uname; no docker).
HOST_TOOLS = ("sh", "bash", "id", "uname", "true", "cat", "env", "mkdir", "mv", "chmod", "rm", "printf", "sleep",
              "timeout")  # infra bounds every remote command with timeout(1)


def log(message: str) -> None:
    print(f"[fanout] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the cheap hosts


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the benchmark dies, even by SIGKILL."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _become_subreaper() -> None:
    """Orphaned sshd session processes are re-parented to us (not to PID 1), so we reap them."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER
    except Exception:
        pass


def _reap_orphans() -> None:
    """Collect exited adopted processes; only called once no Popen child of ours is running."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _ppid_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read().decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def _descendants(pids: list[int]) -> set[int]:
    children = _ppid_map()
    found: set[int] = set()
    todo = list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is as good as gone
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def _answers(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=0.5):
            return True
    except OSError:
        return False


def remove_stale_workdirs() -> None:
    """Temp dirs of earlier runs that were killed outright (SIGKILL leaves no chance to clean up)."""
    for folder in Path(tempfile.gettempdir()).glob("infra-fanout-*"):
        try:
            owner = int((folder / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        if not _alive(owner):
            log(f"removing {folder}, left by an earlier run (pid {owner}) that was killed")
            shutil.rmtree(folder, ignore_errors=True)


def find_sshd() -> str:
    found = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)
    if found:
        return found
    if not shutil.which("apt-get"):
        raise SystemExit("sshd is missing and apt-get is not available: install OpenSSH's server first")
    log("sshd is missing: installing Debian's openssh-server with apt-get (apt-get update && apt-get install -y openssh-server)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, timeout=300)
    subprocess.run(["apt-get", "install", "-y", "-qq", "openssh-server"], env=env, check=True, timeout=600)
    if not os.path.exists("/usr/sbin/sshd"):
        raise SystemExit("apt-get install openssh-server did not provide /usr/sbin/sshd")
    return "/usr/sbin/sshd"


class Fleet:
    """N loopback SSH hosts served by ceil(N/15) sshd processes; stop() is idempotent and bounded."""

    def __init__(self, count: int, port: int, workdir: Path):
        self.count = count
        self.port = port
        self.dir = workdir
        self.procs: list[subprocess.Popen] = []
        self.addresses = [f"{ADDRESS_PREFIX}{i}" for i in range(1, count + 1)]
        self.client_key = self.dir / "client_key"
        self.made_privsep_dir = False
        self.stopped_pids = 0
        self.all_pids: set[int] = set()  # every sshd process stop() signalled
        self._lock = threading.Lock()

    def start(self, sshd: str) -> None:
        taken = [a for a in self.addresses if _answers(a, self.port)]
        if taken:
            raise RuntimeError(f"something already listens on {taken[0]}:{self.port} "
                               f"({len(taken)} address(es)); choose another --port")
        keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", ""]
        subprocess.run([*keygen, "-C", "fanout-bench-host", "-f", str(self.dir / "host_key")], check=True, timeout=30)
        subprocess.run([*keygen, "-C", "fanout-bench-client", "-f", str(self.client_key)], check=True, timeout=30)
        authorized = self.dir / "authorized_keys"
        authorized.write_text((self.dir / "client_key.pub").read_text())
        authorized.chmod(0o600)
        bindir = self.dir / "bin"
        bindir.mkdir()
        for tool in HOST_TOOLS:
            found = shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin")
            if found:
                (bindir / tool).symlink_to(found)
        if not os.path.isdir("/run/sshd"):  # sshd's privilege-separation directory
            os.makedirs("/run/sshd", mode=0o755)
            self.made_privsep_dir = True
        for index in range(0, self.count, PER_SSHD):
            group = self.addresses[index:index + PER_SSHD]
            n = index // PER_SSHD
            config = self.dir / f"sshd-{n}.conf"
            config.write_text("\n".join([
                f"Port {self.port}",
                *(f"ListenAddress {address}" for address in group),
                f"HostKey {self.dir / 'host_key'}",
                f"PidFile {self.dir / f'sshd-{n}.pid'}",
                f"AuthorizedKeysFile {authorized}",
                "AllowUsers root",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "GSSAPIAuthentication no",
                "UsePAM no",
                "UseDNS no",
                "StrictModes no",  # the key file lives under /tmp, which is world-writable
                "MaxStartups 300",  # the default 10:30:100 throttles concurrent handshakes
                "PrintMotd no",
                "PrintLastLog no",
                "X11Forwarding no",
                "LogLevel ERROR",
                # docker is absent on these hosts: PATH holds only a folder of links to a few tools
                # (this machine's docker CLI would otherwise run, and would cost more than SSH);
                # DOCKER_HOST names a socket that does not exist should a docker be found anyway.
                # SHLVL=1: Debian's bash sources ~/.bashrc when started by sshd unless SHLVL >= 2,
                # and this machine's root .bashrc runs `pyenv init` (~100 processes, ~100 ms) per command.
                f"SetEnv PATH={bindir} DOCKER_HOST=unix://{self.dir}/no-docker.sock SHLVL=1",
                "",
            ]))
            stderr = open(self.dir / f"sshd-{n}.log", "wb")
            try:
                self.procs.append(subprocess.Popen(
                    [sshd, "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True,
                    preexec_fn=_die_with_parent,
                ))
            finally:
                stderr.close()
        self._wait_listening(timeout=20)

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = list(self.addresses)
        while pending:
            for n, proc in enumerate(self.procs):
                if proc.poll() is not None:
                    text = (self.dir / f"sshd-{n}.log").read_text(errors="replace").strip()
                    raise RuntimeError(f"sshd #{n} exited with {proc.returncode}: {text[-500:]}")
            still = []
            for address in pending:
                try:
                    with socket.create_connection((address, self.port), timeout=1) as sock:
                        sock.settimeout(2)
                        if not sock.recv(64).startswith(b"SSH-"):
                            still.append(address)
                except OSError:
                    still.append(address)
            pending = still
            if pending:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"sshd does not answer on {len(pending)} address(es), e.g. {pending[0]}:{self.port}")
                time.sleep(0.2)

    def hosts(self, n: int) -> list[Host]:
        return [Host(name=f"h{i + 1:03d}", address=address, user="root", port=self.port, key=str(self.client_key))
                for i, address in enumerate(self.addresses[:n])]

    def _our_sshd_pids(self) -> set[int]:
        """Listeners, their session processes, and session processes orphaned to us (subreaper)."""
        pids = {p.pid for p in self.procs if p.poll() is None}
        pids |= _descendants([p.pid for p in self.procs])
        for pid in _descendants([os.getpid()]):
            try:
                with open(f"/proc/{pid}/comm") as fh:
                    if fh.read().strip() == "sshd":
                        pids.add(pid)
            except OSError:
                pass
        return pids

    def signal_all(self, sig: int = signal.SIGTERM) -> None:
        """Fast, no waiting (used from the signal handler)."""
        pids = self._our_sshd_pids()
        self.all_pids |= pids
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            pids = self._our_sshd_pids()
            self.all_pids |= pids
            self.stopped_pids = len(self.all_pids)
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGTERM)
                except OSError:
                    pass
            deadline = time.monotonic() + timeout
            for proc in self.procs:
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    try:
                        proc.wait(timeout=2)
                    except subprocess.TimeoutExpired:
                        log(f"sshd {proc.pid} did not exit after SIGKILL")
            while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
                _reap_orphans()
                time.sleep(0.05)
            for pid in pids:
                if _alive(pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
            deadline = time.monotonic() + 2
            while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
                _reap_orphans()
                time.sleep(0.05)
            _reap_orphans()
            self.procs = []
            if self.made_privsep_dir:
                try:
                    os.rmdir("/run/sshd")
                except OSError:
                    pass
                self.made_privsep_dir = False


# --------------------------------------------------------------------------- measurements


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


@dataclass
class OpenSSHRun:
    wall: float = 0.0
    per_host: list[float] = field(default_factory=list)
    failed: int = 0
    cpu: float = 0.0  # the clients' CPU (reaped children) plus this process's spawning


@dataclass
class Sample:
    """One repeat at one N."""

    openssh: OpenSSHRun = field(default_factory=OpenSSHRun)
    openssh_x25519: OpenSSHRun = field(default_factory=OpenSSHRun)
    infra_open: float = 0.0
    infra_cmds: float = 0.0
    infra_connect_per_host: list[float] = field(default_factory=list)
    infra_cmd_per_host: list[float] = field(default_factory=list)  # median command time on each host
    infra_failed: int = 0
    infra_cpu: float = 0.0
    facts_wall: float = 0.0
    facts_per_host: list[float] = field(default_factory=list)
    facts_failed: int = 0
    threads_peak: int = 0
    first_error: str = ""

    @property
    def infra_wall(self) -> float:
        return self.infra_open + self.infra_cmds

    def note(self, error: str) -> None:
        if error and not self.first_error:
            self.first_error = error[:300]


def openssh_fanout(hosts: list[Host], key: Path, timeout: float, extra: list[str], sample: Sample,
                   out: OpenSSHRun) -> None:
    """N `ssh ... true` at once; per-host time is spawn to exit of each client."""
    base = [
        "ssh", "-i", str(key), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "GlobalKnownHostsFile=/dev/null", "-o", "ControlMaster=no", "-o", "ControlPath=none",
        "-o", f"ConnectTimeout={int(timeout)}", "-o", "LogLevel=ERROR", *extra,
    ]
    procs: list[tuple[subprocess.Popen, float]] = []
    ends: dict[int, float] = {}

    def waiter(index: int, proc: subprocess.Popen) -> None:
        try:
            proc.wait(timeout=timeout + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        ends[index] = time.perf_counter()

    cpu0 = cpu_seconds(resource.RUSAGE_SELF) + cpu_seconds(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    waiters = []
    try:
        for index, host in enumerate(hosts):
            proc = subprocess.Popen([*base, "-p", str(host.port), f"{host.user}@{host.address}", "true"],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            procs.append((proc, time.perf_counter()))
            thread = threading.Thread(target=waiter, args=(index, proc), daemon=True)
            thread.start()
            waiters.append(thread)
        for thread in waiters:
            thread.join(timeout=timeout + 40)
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
    out.wall = time.perf_counter() - start
    out.cpu = cpu_seconds(resource.RUSAGE_SELF) + cpu_seconds(resource.RUSAGE_CHILDREN) - cpu0
    for index, (proc, began) in enumerate(procs):
        if index in ends:
            out.per_host.append(ends[index] - began)
        err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
        if proc.returncode != 0:
            out.failed += 1
            sample.note(f"ssh {hosts[index].address}: exit {proc.returncode}: {err}")


class _ThreadPeak:
    """Samples threading.active_count() in the background (what the fan-out costs in threads)."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, threading.active_count())
            self._stop.wait(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=1)


def infra_fanout(hosts: list[Host], connect_timeout: float, command_timeout: float, commands: int,
                 sample: Sample) -> None:
    """ConnectionPool.open + `true` on every host via run_concurrently, then infra's gather_facts."""
    connect_times: dict[str, float] = {}
    real_connect = transport_pool.connect

    def timed_connect(host, limits):  # ConnectionPool.open looks `connect` up in infra.transport.pool
        began = time.perf_counter()
        try:
            return real_connect(host, limits)
        finally:
            connect_times[host.name] = time.perf_counter() - began

    transport_pool.connect = timed_connect
    pool = transport_pool.ConnectionPool(Limits(connect=connect_timeout, command=command_timeout))
    try:
        with _ThreadPeak() as threads:
            cpu0 = cpu_seconds(resource.RUSAGE_SELF)
            began = time.perf_counter()
            opened = pool.open(hosts)
            sample.infra_open = time.perf_counter() - began
            transport_pool.connect = real_connect
            sample.infra_connect_per_host = [connect_times[h.name] for h in hosts if h.name in opened.succeeded]
            sample.infra_failed = len(opened.failed)
            if opened.failed:
                sample.note(str(next(iter(opened.failed.values()))))
            reachable = [h for h in hosts if h.name in opened.succeeded]

            cmd_times: dict[str, float] = {}

            def run_true(host: Host):
                times = []
                for _ in range(commands):
                    t0 = time.perf_counter()
                    pool[host.name].run("true", timeout=command_timeout)
                    times.append(time.perf_counter() - t0)
                cmd_times[host.name] = statistics.median(times)

            began = time.perf_counter()
            ran = transport_pool.run_concurrently(reachable, run_true, key=lambda h: h.name)
            sample.infra_cmds = time.perf_counter() - began
            sample.infra_cpu = cpu_seconds(resource.RUSAGE_SELF) - cpu0
            sample.infra_cmd_per_host = list(cmd_times.values())
            sample.infra_failed += len(ran.failed)
            if ran.failed:
                sample.note(str(next(iter(ran.failed.values()))))

            # The facts probe, with infra's own gather_facts; it reads only `name` and `image_tag`.
            probe_times: dict[str, float] = {}
            for name, conn in pool.connections.items():
                def timed_run(*args, _run=conn.run, _name=name, **kwargs):
                    t0 = time.perf_counter()
                    try:
                        return _run(*args, **kwargs)
                    finally:
                        probe_times[_name] = time.perf_counter() - t0
                conn.run = timed_run  # instance attribute: shadows the method for this benchmark only
            cluster = SimpleNamespace(name=CLUSTER, image_tag=lambda role: f"infra-{CLUSTER}-{role}:latest")
            began = time.perf_counter()
            try:
                gathered = gather_facts(pool, cluster, reachable)
                gathered.raise_if_failed("reading host state")
                facts = gathered.succeeded
                # On these hosts every probe must parse to "Docker is not installed".
                odd = [n for n, f in facts.items() if f.docker_version is not None or not f.home]
                sample.facts_failed = len(odd)
                if odd:
                    sample.note(f"facts of {odd[0]}: {facts[odd[0]]}")
            except InfraError as exc:
                sample.facts_failed = len(getattr(exc, "failures", None) or reachable)
                sample.note(f"facts: {exc}")
            sample.facts_wall = time.perf_counter() - began
            sample.facts_per_host = list(probe_times.values())
        sample.threads_peak = threads.peak
    finally:
        transport_pool.connect = real_connect
        pool.close()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# --------------------------------------------------------------------------- report


def summarize(n: int, commands: int, samples: list[Sample], rss: float) -> dict:
    def med(get) -> float | None:
        value = median([get(s) for s in samples])
        return None if value is None else round(value, 4)

    def med_of_medians(get) -> float | None:
        value = median([m for m in (median(get(s)) for s in samples) if m is not None])
        return None if value is None else round(value, 4)

    openssh = med(lambda s: s.openssh.wall)
    infra = med(lambda s: s.infra_wall)
    return {
        "hosts": n,
        "repeat": len(samples),
        "commands_per_host": commands,
        "openssh_wall_s": openssh,
        "openssh_per_host_median_s": med_of_medians(lambda s: s.openssh.per_host),
        "openssh_cpu_s": med(lambda s: s.openssh.cpu),
        "openssh_x25519_wall_s": med(lambda s: s.openssh_x25519.wall),
        "openssh_x25519_cpu_s": med(lambda s: s.openssh_x25519.cpu),
        "infra_open_s": med(lambda s: s.infra_open),
        "infra_commands_s": med(lambda s: s.infra_cmds),
        "infra_wall_s": infra,
        "infra_vs_openssh": round(infra / openssh, 3) if infra and openssh else None,
        "infra_connect_per_host_median_s": med_of_medians(lambda s: s.infra_connect_per_host),
        "infra_command_per_host_median_s": med_of_medians(lambda s: s.infra_cmd_per_host),
        "infra_cpu_s": med(lambda s: s.infra_cpu),
        "facts_wall_s": med(lambda s: s.facts_wall),
        "facts_per_host_median_s": med_of_medians(lambda s: s.facts_per_host),
        "threads_peak": max(s.threads_peak for s in samples),
        "loadavg_1m": round(os.getloadavg()[0], 2),  # other work on the machine skews every figure
        "peak_rss_mib": round(rss, 1),
        "failures": {
            "openssh": sum(s.openssh.failed + s.openssh_x25519.failed for s in samples),
            "infra": sum(s.infra_failed for s in samples),
            "facts": sum(s.facts_failed for s in samples),
        },
        "runs": {
            "openssh_wall_s": [round(s.openssh.wall, 3) for s in samples],
            "infra_wall_s": [round(s.infra_wall, 3) for s in samples],
            "facts_wall_s": [round(s.facts_wall, 3) for s in samples],
        },
        "first_error": next((s.first_error for s in samples if s.first_error), ""),
    }


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_tables(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console() if sys.stdout.isatty() else Console(width=160)
    commands = rows[0]["commands_per_host"] if rows else 1
    fan = Table(title=f"Connect + `true` on every host ({commands} command(s) per host for infra); "
                      "seconds, medians over repeats")
    for title in ("hosts", "OpenSSH ×N", "ssh p50/host", "ssh CPU", "OpenSSH x25519", "infra open",
                  "infra cmds", "infra total", "infra/OpenSSH", "connect p50/host", "cmd p50/host", "infra CPU"):
        fan.add_column(title, justify="right")
    for row in rows:
        fan.add_row(
            str(row["hosts"]), fmt(row["openssh_wall_s"]), fmt(row["openssh_per_host_median_s"]),
            fmt(row["openssh_cpu_s"]), fmt(row["openssh_x25519_wall_s"]), fmt(row["infra_open_s"]),
            fmt(row["infra_commands_s"]), fmt(row["infra_wall_s"]),
            (fmt(row["infra_vs_openssh"]) + "x") if row["infra_vs_openssh"] else "-",
            fmt(row["infra_connect_per_host_median_s"], 3), fmt(row["infra_command_per_host_median_s"], 3),
            fmt(row["infra_cpu_s"]),
        )
    console.print(fan)
    other = Table(title="Facts probe (infra's gather_facts) and the benchmark process")
    for title in ("hosts", "facts wall", "facts p50/host", "threads peak", "peak RSS MiB",
                  "failed: OpenSSH", "infra", "facts"):
        other.add_column(title, justify="right")
    for row in rows:
        fails = row["failures"]
        other.add_row(str(row["hosts"]), fmt(row["facts_wall_s"]), fmt(row["facts_per_host_median_s"], 3),
                      str(row["threads_peak"]), fmt(row["peak_rss_mib"], 1),
                      str(fails["openssh"]), str(fails["infra"]), str(fails["facts"]))
    console.print(other)
    errors = [f"N={row['hosts']}: {row['first_error']}" for row in rows if row["first_error"]]
    for line in errors:
        console.print(f"first error at {line}", markup=False)


# --------------------------------------------------------------------------- main


def describe_setup() -> str:
    import fabric
    import paramiko

    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True, timeout=10).stderr.strip()
    return (f"{time.strftime('%Y-%m-%d %H:%M %Z')}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; "
            f"{ssh}; paramiko {paramiko.__version__}, fabric {fabric.__version__}, Python {sys.version.split()[0]}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", default="1,10,50,100", help="comma-separated host counts (default 1,10,50,100)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per host count (default 1)")
    parser.add_argument("--commands", type=int, default=1,
                        help="`true` commands run one after another on each open connection (default 1)")
    parser.add_argument("--port", type=int, default=2222, help="sshd port on every 127.0.1.x address (default 2222)")
    parser.add_argument("--connect-timeout", type=float, default=10.0,
                        help="infra's connect timeout and OpenSSH's ConnectTimeout (default 10, as in infra)")
    parser.add_argument("--command-timeout", type=float, default=60.0, help="bound on each remote command (default 60)")
    parser.add_argument("--pause", type=float, default=1.0, help="seconds of rest between measurements (default 1)")
    args = parser.parse_args(argv)
    try:
        args.counts = [int(x) for x in args.hosts.split(",") if x.strip()]
    except ValueError:
        parser.error("--hosts takes integers separated by commas, e.g. 1,10,50")
    if not args.counts or min(args.counts) < 1 or max(args.counts) > MAX_HOSTS:
        parser.error(f"--hosts: each count must be between 1 and {MAX_HOSTS}")
    if args.repeat < 1 or args.commands < 1:
        parser.error("--repeat and --commands must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        log("needs root: sshd must run as root to log in as root with the temporary key")
        return 2
    if not shutil.which("ssh") or not shutil.which("ssh-keygen"):
        log("needs OpenSSH's client (ssh, ssh-keygen): apt-get install -y openssh-client")
        return 2
    sshd = find_sshd()
    _become_subreaper()

    remove_stale_workdirs()
    workdir = Path(tempfile.mkdtemp(prefix="infra-fanout-"))
    workdir.chmod(0o700)
    (workdir / "owner.pid").write_text(str(os.getpid()))
    fleet = Fleet(max(args.counts), args.port, workdir)
    cleaning = threading.Event()

    def on_signal(signum, _frame):
        if cleaning.is_set():
            return  # cleanup is already under way and bounded: let it finish
        log(f"got signal {signum}: stopping the hosts")
        fleet.signal_all()  # so that connections in flight fail at once
        raise KeyboardInterrupt

    old_int = signal.signal(signal.SIGINT, on_signal)
    old_term = signal.signal(signal.SIGTERM, on_signal)
    rows: list[dict] = []
    x25519 = ["-o", "KexAlgorithms=curve25519-sha256,curve25519-sha256@libssh.org"]
    try:
        log(f"starting {fleet.count} host(s) on {ADDRESS_PREFIX}1-{fleet.count}:{args.port} "
            f"({-(-fleet.count // PER_SSHD)} sshd process(es)), temp dir {workdir}")
        fleet.start(sshd)
        log(describe_setup())
        # Warm-up (not measured): fabric/paramiko are imported on first use; page cache for ssh.
        warm = Sample()
        infra_fanout(fleet.hosts(1), args.connect_timeout, args.command_timeout, 1, warm)
        openssh_fanout(fleet.hosts(1), fleet.client_key, args.connect_timeout, [], warm, warm.openssh)
        if warm.infra_failed or warm.openssh.failed or warm.facts_failed:
            raise RuntimeError(f"warm-up against {fleet.addresses[0]} failed: {warm.first_error}")
        for n in args.counts:
            hosts = fleet.hosts(n)
            samples = []
            for r in range(args.repeat):
                sample = Sample()
                steps = [
                    lambda: openssh_fanout(hosts, fleet.client_key, args.connect_timeout, [], sample, sample.openssh),
                    lambda: openssh_fanout(hosts, fleet.client_key, args.connect_timeout, x25519, sample,
                                           sample.openssh_x25519),
                    lambda: infra_fanout(hosts, args.connect_timeout, args.command_timeout, args.commands, sample),
                ]
                shift = r % len(steps)  # rotate the order so no side always runs on a warmer machine
                for step in steps[shift:] + steps[:shift]:
                    time.sleep(args.pause)
                    step()
                log(f"N={n} run {r + 1}/{args.repeat}: OpenSSH {sample.openssh.wall:.2f} s "
                    f"(x25519 {sample.openssh_x25519.wall:.2f} s), infra {sample.infra_wall:.2f} s "
                    f"(open {sample.infra_open:.2f} + commands {sample.infra_cmds:.2f}), facts {sample.facts_wall:.2f} s")
                samples.append(sample)
            row = summarize(n, args.commands, samples, peak_rss_mib())
            rows.append(row)
            print(json.dumps(row, separators=(",", ":")), flush=True)
        print_tables(rows)
        return 0
    except KeyboardInterrupt:
        log("interrupted")
        if rows:
            print_tables(rows)
        return 130
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        log(f"failed: {exc}")
        return 1
    finally:
        cleaning.set()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            fleet.stop()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old_term)
        left = [pid for pid in fleet.all_pids if _alive(pid)]
        log(f"cleaned up: {fleet.stopped_pids} sshd process(es) stopped"
            + (f", {len(left)} STILL RUNNING: {left}" if left else "")
            + (", temp dir removed" if not workdir.exists() else f", TEMP DIR LEFT: {workdir}"))


if __name__ == "__main__":
    sys.exit(main())
