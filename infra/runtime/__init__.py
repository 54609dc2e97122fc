"""Code that runs inside the cluster's containers: the built-in task runner, its Celery app, the sweep driver.

The worker image carries this folder as the top-level package `infra_runtime` (see
`infra.state.build_context.prepare_build_context` and Dockerfile.celery); the master image inherits it. So its
modules import only the standard library, Celery and redis-py (and `study`, Optuna), and each other relatively: the
same files are `infra.runtime.*` here (unit tests, the protocol the CLI reads) and
`infra_runtime.*` in the images.

- `app`: the built-in Celery app, which workers run when the cluster file names no `project.app`;
- `command`: one command line run for `infra.run_command`, its output batched to Redis;
- `endpoint`: the join endpoint volunteers fetch their worker from; `volunteer`: the volunteer's worker side;
- `results`: a volunteer's result backend, which writes results and never reads them;
- `tarball`: the one tar builder (fixed owners, so the same content gives the same bytes), used on both sides;
- `tasks`: the `infra.run_command` task (one command line, its output streamed back through
  Redis), registered on the built-in app and, with `celery worker --include`, on a project's own;
- `driver`: `infra sweep`'s side in the master container: sends the runs, relays their events;
- `study`: the sweep's Optuna study (searches, early stopping), imported by the driver only when
  its plan has one: Optuna is in the master image alone;
- `arguments`, `metrics`: a run's command words and id, its metrics and intermediate reports,
  spelled and read the same way by the CLI and the driver;
- `protocol`: the Redis keys and event shapes the three share with `infra.workflows.sweep`;
- `gpu`: which devices each concurrent run of a GPU worker gets;
- `startup`: a worker connects to the broker as soon as the broker takes logins;
- `volunteer_worker`: a volunteer's Celery worker within its broker rights; `relay`: the trusted
  side of its tasks' follow-ups.

Importing this package imports nothing heavy: the CLI reads the names below without Celery.
"""

IMAGE_PACKAGE = "infra_runtime"  # the name the images give this folder
BUILTIN_APP = f"{IMAGE_PACKAGE}.app"  # what `celery --app` gets when the project has no app
TASKS_MODULE = f"{IMAGE_PACKAGE}.tasks"  # what `celery worker --include` gets for a project's own app
DRIVER_MODULE = f"{IMAGE_PACKAGE}.driver"  # `python -m` this in the master container
ENDPOINT_MODULE = f"{IMAGE_PACKAGE}.endpoint"  # the volunteers' join endpoint, `python -m` in its container
RELAY_MODULE = f"{IMAGE_PACKAGE}.relay"  # volunteers' follow-ups (chains, chords), `python -m` in NAME-relay
