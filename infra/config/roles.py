"""`roles`: the master host, and the groups of worker containers."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator

from .model import StrictModel
from .values import GPU_ID_PATTERN, QUEUE_PATTERN, bind_address_problem, checked, host_address_problem, quoted


class MasterRole(StrictModel):
    """The host of RabbitMQ, the Redis result backend, the Celery master container and Flower."""

    host: str = Field(description="Name of a host under `hosts`, or `local`.")
    advertise_address: str | None = Field(
        default=None,
        description="Address workers use to reach the broker; default: the address infra connects to.")

    bind_address: str | None = Field(
        default=None,
        description="IP address of the master host that the published ports listen on (e.g. its LAN "
                    "or VPN address); default: every address of the host.")
    publish_flower: bool = Field(
        default=False,
        description="Publish Flower on `bind_address` (default: every address of the master host), read-only: "
                    "its API can then apply no task and control no worker. Default false: Flower listens on the "
                    "master host's loopback only, and `infra flower` forwards it here over SSH.")

    @field_validator("advertise_address")
    @classmethod
    def _advertise_address_valid(cls, address: str | None) -> str | None:
        return checked(address, host_address_problem, "a host name or an IP address")

    @field_validator("bind_address")
    @classmethod
    def _bind_address_valid(cls, address: str | None) -> str | None:
        return checked(address, bind_address_problem, "an IP address of the master host")


class WorkerGroup(StrictModel):
    """Worker containers on one host; a host may have several groups (e.g. one per queue)."""

    host: str = Field(description="Name of a host under `hosts`, or `local`.")
    containers: int = Field(default=1, ge=0, le=64, description="Worker containers on this host.")
    concurrency: int | None = Field(
        default=None, ge=1, le=1024, description="Processes per container; default: the host's CPU count.")
    queues: tuple[str, ...] = Field(default=("celery",), description="Queues these workers consume.")
    pool: Literal["prefork", "threads", "solo"] = Field(default="prefork", description="Celery worker pool.")
    loglevel: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="WARNING",
        description="Log level of the workers; WARNING is Celery's own default. INFO adds a \"received\" and a "
                    "\"succeeded\" line per task to `infra logs`, which costs short tasks throughput.")
    events: bool = Field(
        default=True,
        description="Workers send task events (`--task-events`), which Flower's task pages and `celery events` "
                    "show; false turns them off even where the app turns them on (`infra status` still works).")
    gpus: Literal["all"] | int | tuple[int | str, ...] | None = Field(
        default=None,
        description="NVIDIA GPUs of these containers (`docker run --gpus`): all, a number, or a list of device "
                    "indexes or UUIDs; needs the NVIDIA container toolkit on the host (`infra bootstrap --nvidia`).")

    @field_validator("gpus", mode="before")
    @classmethod
    def _gpus_valid(cls, gpus: Any) -> Any:
        if gpus is None or gpus == "all":
            return gpus
        if isinstance(gpus, bool) or not isinstance(gpus, (int, tuple)):
            raise ValueError(f"must be all, a number of GPUs or a list of GPU ids, got {quoted(gpus)}")
        if isinstance(gpus, int) and gpus < 1:
            raise ValueError(f"must be at least 1 (leave the key out for no GPU), got {gpus}")
        if isinstance(gpus, tuple):
            if not gpus:
                raise ValueError("the list of GPU ids is empty (leave the key out for no GPU)")
            for device in gpus:
                valid = (isinstance(device, int) and not isinstance(device, bool) and device >= 0) or (
                    isinstance(device, str) and re.fullmatch(GPU_ID_PATTERN, device))
                if not valid:
                    raise ValueError(f"invalid GPU id {quoted(device)} (an index such as 0, or a UUID such as GPU-...)")
            if len(set(map(str, gpus))) != len(gpus):
                raise ValueError("a GPU is listed twice")
        return gpus

    @field_validator("queues")
    @classmethod
    def _queues_valid(cls, queues: tuple[str, ...]) -> tuple[str, ...]:
        return checked_queues(queues)


def checked_queues(queues: tuple[str, ...]) -> tuple[str, ...]:
    if not queues:
        raise ValueError("at least one queue is needed")
    for queue in queues:
        if not re.fullmatch(QUEUE_PATTERN, queue):  # `$` alone would let 'celery\n' through
            raise ValueError(f"invalid queue name {quoted(queue)}")
    return queues


class VolunteerRole(StrictModel):
    """What volunteers (`infra volunteer add`) are given: machines of strangers, never trusted."""

    queues: tuple[str, ...] | None = Field(
        default=None,
        description="The queues volunteers consume; default: every queue of the worker groups. A volunteer may "
                    "purge a queue it consumes (the broker's right to consume is the right to purge), so give "
                    "them queues of their own (e.g. [volunteers]) to keep the other groups' work out of reach.")

    @field_validator("queues")
    @classmethod
    def _queues_valid(cls, queues: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return None if queues is None else checked_queues(queues)


class Roles(StrictModel):
    """What runs where."""

    master: MasterRole = Field(
        description="The host running RabbitMQ, Redis (results), the Celery master container and Flower.")
    workers: tuple[WorkerGroup, ...] = Field(
        default=(), description="Groups of worker containers; at least one container in all.")
    # `| None` for the JSON Schema: an empty `volunteers:` section is valid; the model holds a VolunteerRole.
    volunteers: VolunteerRole | None = Field(
        default_factory=VolunteerRole, description="What volunteers' machines consume (`infra volunteer add`).")

    @field_validator("volunteers", mode="before")
    @classmethod
    def _empty_volunteers_section(cls, volunteers: Any) -> Any:
        # `volunteers:` with only comments under it is YAML's null: the defaults, as an empty mapping.
        return {} if volunteers is None else volunteers
