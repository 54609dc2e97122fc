"""What infra runs inside the cluster's containers: Celery probes, queue listings, jobs, signals.

Each builder returns an `Exec` operation. The probes are small Python programs run with
`python -c` in the master container, which has the project, Celery and the cluster's URLs;
each prints one JSON line that a parser in `infra.facts.celery` reads.
"""

from __future__ import annotations

import json

from ..names import container_name
from ..runtime import DRIVER_MODULE
from .engine import Exec

CONTAINER_PROJECT = "/project"
CONTAINER_OUTPUT = "/project/output"  # the output folder, mounted read-write over the read-only project
PID_MARKER = "__infra_run_pid__="

# Exits 0 once the broker accepts a login with the cluster's credentials.
BROKER_CHECK = (
    "import os, sys\n"
    "from kombu import Connection\n"
    "try:\n"
    "    Connection(os.environ['CELERY_BROKER_URL'], connect_timeout=3).ensure_connection(max_retries=1)\n"
    "except Exception as exc:\n"
    "    sys.exit(f'{type(exc).__name__}: {exc}')\n"
)

# `python -c PING_PROBE APP NODES_JSON TIMEOUT`: a ping of those nodes that returns as soon as
# all of them answered (`celery inspect ping` always waits its whole timeout).
PING_PROBE = r"""
import json, sys
from celery.app.utils import find_app
app = find_app(sys.argv[1])
nodes = json.loads(sys.argv[2])
app.conf.broker_connection_max_retries = 1
replies = app.control.inspect(timeout=float(sys.argv[3]), limit=len(nodes), destination=nodes).ping()
print(json.dumps(replies or {}))
"""

# `python -c CELERY_PROBE APP EXPECTED_JSON TIMEOUT`: `active` then `stats`, each returning as
# soon as every expected worker answered. Prints one JSON line.
CELERY_PROBE = r"""
import json, sys
out = {"active": None, "stats": None, "error": None}
try:
    from celery.app.utils import find_app
    app = find_app(sys.argv[1])
    expected = set(json.loads(sys.argv[2]))
    timeout = float(sys.argv[3])
    app.conf.broker_connection_timeout = timeout
    app.conf.broker_connection_max_retries = 1
    active = app.control.inspect(timeout=timeout, limit=len(expected) or None).active() or {}
    if expected - set(active) and len(active) >= len(expected):
        active = app.control.inspect(timeout=timeout).active() or {}  # others answered first
    stats = app.control.inspect(timeout=timeout, limit=len(active)).stats() or {} if active else {}
    out["active"], out["stats"] = active, stats
except Exception as exc:
    out["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
print(json.dumps(out, default=str))
"""


def _in_master(cluster: str, *command: str, workdir: str | None = None) -> Exec:
    return Exec(container_name(cluster, "master"), tuple(command), workdir)


def broker_check(cluster: str) -> Exec:
    return _in_master(cluster, "python", "-c", BROKER_CHECK)


def ping_workers(cluster: str, app: str, nodes: list[str], reply_timeout: float) -> Exec:
    return _in_master(cluster, "python", "-c", PING_PROBE, app, json.dumps(nodes), f"{reply_timeout:g}")


def celery_probe(cluster: str, app: str, expected: list[str], reply_timeout: float) -> Exec:
    return _in_master(cluster, "python", "-c", CELERY_PROBE, app, json.dumps(expected), f"{reply_timeout:g}")


def list_queues(cluster: str) -> Exec:
    """The queues of the cluster's vhost (named after the cluster: see `plans.up.broker_vhost`)."""
    return Exec(container_name(cluster, "broker"), (
        "rabbitmqctl", "list_queues", "--quiet", "--vhost", cluster, "--formatter", "json",
        "name", "messages", "messages_ready", "messages_unacknowledged", "consumers"))


# `sh -c WRAPPER NAME ARGV...`: tells the job's pid on stderr (for Ctrl-C), then becomes the job.
_PID_WRAPPER = f'echo "{PID_MARKER}$$" >&2; exec "$@"'


def run_job(cluster: str, python_args: list[str], args: list[str] | tuple[str, ...]) -> Exec:
    """A job in the master container; a tiny shell first tells the job's pid (for Ctrl-C)."""
    return _in_master(cluster, "sh", "-c", _PID_WRAPPER, "infra-run", "python", *python_args, *args,
                      workdir=CONTAINER_PROJECT)


def sweep_driver(cluster: str, plan_path: str) -> Exec:
    """The driver of a sweep in the master container (`python -m infra_runtime.driver PLAN`), pid told first."""
    return _in_master(cluster, "sh", "-c", _PID_WRAPPER, "infra-sweep", "python", "-m", DRIVER_MODULE, plan_path,
                      workdir=CONTAINER_PROJECT)


def signal_job(cluster: str, pid: int, signal: str) -> Exec:
    """Send a signal to a job (signal "0" asks whether it still runs)."""
    return _in_master(cluster, "kill", f"-{signal}", str(pid))
