"""What the runner, the sweep driver and `infra sweep` say to each other.

Runner → driver: events pushed as JSON onto one Redis list per sweep (`events_key`); the
cluster's result backend is that Redis, so nothing new has to be reachable. Driver → runner:
two flags, `cancel_key` (Ctrl-C: stop and skip everything) and `alive_key` (refreshed while
the driver runs; when it expires, the runs of a driver that died are stopped), and one per
submission, `stop_key` (early stopping: the pruner gave up on that run, which ends as `pruned`). `done_key` holds
the ids of the submissions that reached an end, so a message delivered twice (its worker lost
right after the run ended) never runs twice.

Driver → `infra sweep`: every event it relays is one stdout line, `EVENT_MARKER` + JSON;
anything else it prints is a note for people.

Events (all carry "event"; runner events also "run", the combination's id, and "submission",
the Celery task id of that attempt):
- start: host, worker, gpus (CUDA_VISIBLE_DEVICES or ""), redelivered (true when the broker
  delivers the run again because the worker that had it was lost)
- lines: lines (a batch of output lines, stdout and stderr merged, in order)
- end: status (ok | failed | timeout | cancelled | pruned), exit_code, seconds, host, artifacts
  (what the run left in `$INFRA_RUN_DIR`, packed and sent in chunks: `artifacts.announcement`)
Driver-only events: submitted (count), retry (run, attempt), warning (text),
cancelling (queued, running), finished (interrupted: bool), trial (an Optuna search's new
trial: run, index, params as [name, value] pairs, argv), pruning (run, step: the pruner's
decision, before the run is stopped), artifacts (run, path of the archive in the
output folder or none, sha256, files, bytes, warning: the final attempt's files), study (an Optuna search's state: done, to_run, best).
"""

from __future__ import annotations

import json
import secrets

TASK_NAME = "infra.run_command"
PLAN_FORMAT = "infra.sweep-plan/1"  # the file `infra sweep` writes for the driver
EVENT_MARKER = "@infra-sweep "

KEY_PREFIX = "infra:sweep:"
ALIVE_SECONDS = 60  # the driver refreshes its flag far more often than this
KEYS_EXPIRE_SECONDS = 7 * 24 * 3600  # a sweep's leftovers in Redis go away on their own
ARTIFACT_EXPIRE_SECONDS = 24 * 3600  # chunks the driver never took (it died): memory, not to be kept a week

# Statuses of a finished run, as the CSV shows them.
OK, FAILED, TIMEOUT, CANCELLED, PRUNED = "ok", "failed", "timeout", "cancelled", "pruned"
TIMEOUT_EXIT_CODE = 124  # as timeout(1)
COMMAND_NOT_FOUND_EXIT_CODE = 127  # as a shell says
COMMAND_NOT_EXECUTABLE_EXIT_CODE = 126


def events_key(sweep_id: str) -> str:
    return f"{KEY_PREFIX}{sweep_id}:events"


def cancel_key(sweep_id: str) -> str:
    return f"{KEY_PREFIX}{sweep_id}:cancel"


def alive_key(sweep_id: str) -> str:
    return f"{KEY_PREFIX}{sweep_id}:alive"


def stop_key(sweep_id: str, submission: str) -> str:
    """Set by the driver when early stopping gives up on one run; read by that run's worker only."""
    return f"{KEY_PREFIX}{sweep_id}:stop:{submission}"


def artifact_chunk_key(sweep_id: str, submission: str, number: int) -> str:
    """One chunk of a run's artifacts archive (`artifacts`): written by that run's worker, read by the driver only."""
    return f"{KEY_PREFIX}{sweep_id}:artifact:{submission}:{number}"


def done_key(sweep_id: str) -> str:
    return f"{KEY_PREFIX}{sweep_id}:done"


def new_nonce() -> str:
    return secrets.token_hex(8)


def submission_id(sweep_id: str, run: str, attempt: int, nonce: str) -> str:
    """The Celery task id of one attempt of one combination: readable in Flower, unique per sweep.

    The nonce makes it unguessable. A volunteer may append to a sweep's events and add to its done
    set (its runs report there), so an id it could work out from a run it was given (the sweep id,
    the run ids, attempt 1) would let it end other hosts' runs with forged results, or mark them
    done so their delivery is skipped. The driver heeds only the events and marks of ids it sent.
    """
    return f"{sweep_id}.{run}.{attempt}.{nonce}"


def encode(event: dict) -> str:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)


def event_line(event: dict) -> str:
    """The stdout line the driver prints for an event."""
    return EVENT_MARKER + encode(event)


def parse_event_line(line: str) -> dict | None:
    """The event of a driver's stdout line; None for a line that is not one (a note)."""
    if not line.startswith(EVENT_MARKER):
        return None
    try:
        event = json.loads(line[len(EVENT_MARKER):])
    except ValueError:
        return None
    return event if isinstance(event, dict) and isinstance(event.get("event"), str) else None
