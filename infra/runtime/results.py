"""A volunteer's result backend: Celery's Redis backend that stores results and never reads them.

A volunteer's Redis user may write a result key (`%W~celery-task-meta-*`) but not read one, so
that it cannot fetch the results of tasks it did not run. Celery's Redis backend reads a task's
state before each write (not to overwrite a success by a late duplicate); that read would be
refused, and the result lost. `WriteOnlyRedisBackend` skips it.

A volunteer's celery.env sets `CELERY_LOADER` to `VolunteerLoader` (`endpoint.worker_env`), which
maps the `redis://` and `rediss://` schemes to that backend, so the project's own Celery app, which
takes CELERY_RESULT_BACKEND as it is, uses it without a change; the URL stays a plain Redis URL.
"""

from __future__ import annotations

from celery import states
from celery.backends.redis import RedisBackend
from celery.loaders.app import AppLoader

class WriteOnlyRedisBackend(RedisBackend):
    """Writes results and publishes them; any read of a task's state answers PENDING without asking."""

    def _get_task_meta_for(self, task_id):
        # The one read a worker makes (before storing a state); Redis would refuse it to a volunteer.
        # A late duplicate may then overwrite a success: the volunteer's own result of the same task.
        return {"status": states.PENDING, "result": None}


class VolunteerLoader(AppLoader):
    """Celery's default loader, but for the result backend of `redis://` and `rediss://` URLs."""

    override_backends = {scheme: f"{__name__}:WriteOnlyRedisBackend" for scheme in ("redis", "rediss")}
