"""How tightly each of infra's own containers is confined: one table, role by role.

Every role runs as the SSH user (never root unless that user is root), with no capability, no
way to gain privileges (`no-new-privileges`: no setuid binary helps), and a read-only root
filesystem: a process writes only to its volumes and to the tmpfs folders listed here. Found by
running each image so (see README, "What each container can reach"):

- broker: RabbitMQ writes its data volume, and one log file even with `log.file = false` (the
  upgrade log) in /var/log/rabbitmq; the image's entrypoint does nothing as root.
- results: redis-server writes /data (its volume) only.
- master, flower, join, worker: Python writes nothing outside /tmp (bytecode is off in the
  images) and the mounted output folder; jobs (`infra run`, sweeps) write scratch files to /tmp.

No role needs a capability: the images set an unprivileged USER, infra runs them as the SSH
user, every port they listen on is above 1024, and no entrypoint chowns or switches users.
"""

from __future__ import annotations

from dataclasses import dataclass

# tmpfs is memory: small for the services, room for a job's scratch files where jobs run.
SERVICE_TMP_SIZE = "64m"
JOB_TMP_SIZE = "1g"  # as a volunteer's worker (templates/volunteer-join.sh)
# Processes and threads of one container: a runaway job (a fork bomb) stops at this, not at the host's limit.
JOB_PIDS_LIMIT = 4096


def tmpfs(path: str, size: str) -> tuple[str, str]:
    """A tmpfs folder that holds no device node and runs no setuid program."""
    return (path, f"rw,nosuid,nodev,size={size}")


@dataclass(frozen=True)
class Hardening:
    """One role's confinement; `settings()` gives it as ContainerSpec fields."""

    tmpfs: tuple[tuple[str, str], ...]
    cap_add: tuple[str, ...] = ()  # on top of dropping every capability: none is needed so far
    read_only: bool = True
    pids_limit: int | None = None

    def settings(self) -> dict[str, object]:
        return {"cap_drop": ("ALL",), "cap_add": self.cap_add, "security_opt": ("no-new-privileges",),
                "read_only": self.read_only, "tmpfs": self.tmpfs, "pids_limit": self.pids_limit}


_SERVICE = Hardening(tmpfs=(tmpfs("/tmp", SERVICE_TMP_SIZE),))
_JOBS = Hardening(tmpfs=(tmpfs("/tmp", JOB_TMP_SIZE),), pids_limit=JOB_PIDS_LIMIT)

HARDENING: dict[str, Hardening] = {
    "broker": Hardening(tmpfs=(tmpfs("/tmp", SERVICE_TMP_SIZE), tmpfs("/var/log/rabbitmq", SERVICE_TMP_SIZE))),
    "results": _SERVICE,
    "flower": _SERVICE,
    "join": _SERVICE,
    "relay": _SERVICE,  # volunteers' follow-ups: reads the broker and Redis, writes nothing local
    "master": _JOBS,  # `infra run` and a sweep's driver run here
    "worker": _JOBS,
}


def hardening(role: str) -> dict[str, object]:
    """The ContainerSpec fields that confine a container of `role` (KeyError for a role with no entry)."""
    return HARDENING[role].settings()
