"""Clients of a deployed cluster from the test process, as a user on another machine would connect.

Celery over AMQPS and TLS Redis, Flower over HTTPS, each trusting the cluster's own CA alone
(STATE_DIR/NAME/tls/ca.crt) and logging in as the workers' broker user, never the administrator, and
as the result backend's `master` user (the job client's role), never its administrator.
"""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import requests


def secrets_in(state: Path) -> dict:
    return json.loads((state / "secrets.json").read_text())


def ca_file(state: Path) -> Path:
    return state / "tls" / "ca.crt"


def celery_client(state: Path, address: str, cluster: str, *, broker_port: int = 5671, results_port: int = 6379):
    """A Celery app sending to the cluster at `address`; JSON only, like the sample project."""
    from celery import Celery

    secrets = secrets_in(state)
    ca = str(ca_file(state))
    host = f"[{address}]" if ":" in address else address
    app = Celery(
        broker=f"amqps://{secrets['worker_user']}:{secrets['worker_password']}@{host}:{broker_port}/{cluster}",
        backend=(f"rediss://master:{secrets['results_master_password']}@{host}:{results_port}/0"
                 f"?ssl_cert_reqs=required&ssl_ca_certs={ca}"),
    )
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                    broker_use_ssl={"ca_certs": ca, "cert_reqs": ssl.CERT_REQUIRED, "server_hostname": None},
                    broker_connection_retry_on_startup=True)
    return app


def flower_get(state: Path, address: str, path: str, *, port: int = 5555, auth=None, **params) -> requests.Response:
    """GET a Flower page over HTTPS, trusting the cluster CA only; `auth=True` logs in as the admin."""
    if auth is True:
        secrets = secrets_in(state)
        auth = (secrets["flower_user"], secrets["flower_password"])
    host = f"[{address}]" if ":" in address else address
    return requests.get(f"https://{host}:{port}{path}", auth=auth, params=params or None,
                        verify=str(ca_file(state)), timeout=20)


def default_sigint() -> None:
    """`preexec_fn` of an infra started to be sent Ctrl-C: SIGINT acts even when this test run
    was started in the background, whose commands a shell starts with SIGINT ignored (and a
    Python started ignoring it never raises KeyboardInterrupt)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
