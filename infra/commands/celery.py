"""What infra runs inside the cluster's containers: Celery probes, queue listings, jobs, signals.

Each builder returns an `Exec` operation. The probes are small Python programs run with
`python -c` in the master container, which has the project, Celery and the cluster's URLs;
they print JSON lines (the readiness probe one per event, the others one) that parsers in
`infra.facts.celery` read.
"""

from __future__ import annotations

import json

from ..names import container_name
from ..runtime import DRIVER_MODULE
from .engine import Exec

CONTAINER_PROJECT = "/project"
CONTAINER_OUTPUT = "/project/output"  # the output folder, mounted read-write over the read-only project
PID_MARKER = "__infra_run_pid__="

# `python -c READINESS_PROBE APP NODES_JSON BROKER_TIMEOUT WORKERS_TIMEOUT REPLY_TIMEOUT`: the
# whole wait of `up` (and of `sync-files` after restarts) in one process, so Celery and the app are
# imported once, while the broker still boots. It tries a login with the cluster's broker URL every
# quarter second until one succeeds, then pings the nodes that have not answered yet (each round
# returns as soon as all of them did) until none is left. One JSON line per event:
#   {"event": "broker", "ok": true}            or  {"event": "broker", "ok": false, "error": ...} (then it ends)
#   {"event": "answered", "nodes": [...]}      workers that answered a ping (they consume their queues)
#   {"event": "done", "missing": [...], "error": ...}
# Each deadline counts from the start of its phase, as two waits in a row would.
READINESS_PROBE = r"""
import json, os, sys, time
def say(**event):
    print(json.dumps(event), flush=True)
def why(exc):
    return f"{type(exc).__name__}: {exc}".splitlines()[0]
app_name, nodes = sys.argv[1], json.loads(sys.argv[2])
broker_timeout, workers_timeout, reply_timeout = (float(arg) for arg in sys.argv[3:6])
deadline = time.monotonic() + broker_timeout
error = None
try:
    from celery.app.utils import find_app
    app = find_app(app_name)
    app.conf.broker_connection_max_retries = 1
except Exception as exc:
    app, error = None, why(exc)
from kombu import Connection
while True:
    try:
        with Connection(os.environ["CELERY_BROKER_URL"], connect_timeout=3) as connection:
            connection.connect()
        break
    except Exception as exc:
        said = why(exc)
    if time.monotonic() > deadline:
        say(event="broker", ok=False, error=said)
        sys.exit(0)
    time.sleep(0.25)
say(event="broker", ok=True)
missing = set(nodes)
deadline = time.monotonic() + workers_timeout
while missing and app is not None:
    try:
        replies = app.control.inspect(timeout=reply_timeout, limit=len(missing), destination=sorted(missing)).ping()
        error = None
    except Exception as exc:
        replies, error = {}, why(exc)
        time.sleep(0.25)
    answered = sorted(missing & set(replies or {}))
    if answered:
        missing -= set(answered)
        say(event="answered", nodes=answered)
    if missing and time.monotonic() > deadline:
        break
say(event="done", missing=sorted(missing), error=error)
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


def readiness_probe(cluster: str, app: str, nodes: list[str], broker_timeout: float, workers_timeout: float,
                    reply_timeout: float) -> Exec:
    """The wait for the broker's first login, then for every one of `nodes` to answer a ping."""
    return _in_master(cluster, "python", "-c", READINESS_PROBE, app, json.dumps(nodes), f"{broker_timeout:g}",
                      f"{workers_timeout:g}", f"{reply_timeout:g}")


def celery_probe(cluster: str, app: str, expected: list[str], reply_timeout: float) -> Exec:
    return _in_master(cluster, "python", "-c", CELERY_PROBE, app, json.dumps(expected), f"{reply_timeout:g}")


def list_queues(cluster: str) -> Exec:
    """The queues of the cluster's vhost (named after the cluster: see `plans.secret_files.broker_vhost`)."""
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
