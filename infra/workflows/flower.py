"""`infra flower`: Flower of the master host, opened here through infra's SSH connection.

Flower listens on the master's loopback (unless `roles.master.publish_flower`), where nobody on
the network reaches it. This forwards a port of this machine's loopback to it (as `ssh -L`),
says the URL and the login's user (the password stays in the secrets file), opens the browser,
and holds the forward until Ctrl-C.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..commands.engine import ListContainers
from ..config import Cluster
from ..errors import ConnectError, InfraError, StateError
from ..facts.containers import parse_container_list
from ..names import container_name
from ..plans.addresses import flower_address_on_master, forwarded_flower_url
from ..state.credentials import load_secrets
from ..transport.connection import Connection
from ..transport.pool import ConnectionPool

POLL = 0.5  # seconds between two looks at whether the SSH connection still stands


@dataclass(frozen=True)
class FlowerAccess:
    """What people are told: never the password, only where it is."""

    url: str
    user: str
    secrets_path: Path
    ca_path: Path | None  # the cluster CA that Flower's certificate is issued by; None with `tls: false`
    ca_fingerprint: str | None = None

    def lines(self) -> list[str]:
        lines = [f"flower:   {self.url} (Ctrl-C ends the forward)",
                 f"login:    user {self.user}, password: flower_password in {self.secrets_path} (mode 0600)"]
        if self.ca_path is not None:
            lines.append(f"TLS:      issued by the cluster CA {self.ca_path} ({self.ca_fingerprint}); a browser "
                         f"that does not trust it warns once")
        else:
            lines.append("TLS:      off (tls: false): plain HTTP, on this machine's loopback only")
        return lines


def flower_access(cluster: Cluster, local_port: int) -> FlowerAccess:
    """The URL here and the login's user; StateError when the cluster was never started from here."""
    secrets = load_secrets(cluster.secrets_path)
    if secrets is None:
        raise StateError(f"{cluster.secrets_path}: no secrets: the cluster has not been started from here "
                         f"(run `infra up`)")
    ca_path = ca_fingerprint = None
    if cluster.spec.tls:
        from ..state.tls import ca_fingerprint as fingerprint_of

        ca_path = cluster.tls_dir / "ca.crt"
        ca_fingerprint = fingerprint_of(ca_path.read_text()) if ca_path.is_file() else "missing: run `infra up`"
    return FlowerAccess(forwarded_flower_url(cluster, local_port), secrets.flower_user, cluster.secrets_path,
                        ca_path, ca_fingerprint)


def check_flower_runs(cluster: Cluster, conn: Connection) -> None:
    """InfraError (one line) unless the Flower container runs on the master host."""
    name = container_name(cluster.name, "flower")
    found = {c.name: c for c in parse_container_list(conn.engine.query(ListContainers(cluster.name)))}
    if name not in found:
        raise InfraError(f"{conn.host.name}: Flower is not running (no container {name}): run `infra up`")
    if found[name].state != "running":
        raise InfraError(f"{conn.host.name}: Flower is not running ({name} is {found[name].state}): run `infra up`")


def open_forward(cluster: Cluster, conn: Connection, port: int):
    """The local forward to Flower, checked: the master host reaches Flower's port through it."""
    target = (flower_address_on_master(cluster), cluster.spec.ports.flower)
    try:
        forward = conn.forward_local_port(target, port)
    except OSError as exc:
        raise InfraError(f"local: cannot listen on 127.0.0.1:{port} ({exc.strerror or exc}): choose another "
                         f"--port") from None
    try:
        forward.check()
    except Exception as exc:  # the host's sshd refused the channel: nothing listens there, or forwarding is off
        forward.close()
        raise InfraError(f"{conn.host.name}: Flower does not answer on {target[0]}:{target[1]} of the host "
                         f"({' '.join(str(exc).split()) or type(exc).__name__})") from None
    return forward


def hold_until_interrupted(conn: Connection, forward) -> None:
    """Until Ctrl-C (a normal end: returns) or until the SSH connection to the master is lost."""
    try:
        while forward.alive:
            time.sleep(POLL)
    except KeyboardInterrupt:
        return
    finally:
        forward.close()
    raise ConnectError(f"{conn.host.name}: lost the SSH connection; Flower is no longer forwarded")


def serve_flower(cluster: Cluster, *, port: int, say: Callable[[str], None],
                 open_browser: Callable[[str], object] | None) -> None:
    """The whole command: check, forward, tell, open the browser, hold until Ctrl-C."""
    master = cluster.master_host
    with ConnectionPool.for_cluster(cluster) as pool:
        conn = pool.get(master)
        check_flower_runs(cluster, conn)
        if master.is_local:  # this machine's loopback already holds it: nothing to forward
            access = flower_access(cluster, cluster.spec.ports.flower)
            _tell(access, say, open_browser)
            return
        forward = open_forward(cluster, conn, port)
        try:
            access = flower_access(cluster, forward.port)
        except BaseException:
            forward.close()
            raise
        _tell(access, say, open_browser)
        hold_until_interrupted(conn, forward)


def _tell(access: FlowerAccess, say: Callable[[str], None], open_browser: Callable[[str], object] | None) -> None:
    for line in access.lines():
        say(line)
    if open_browser is not None:
        open_browser(access.url)
