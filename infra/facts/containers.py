"""The cluster's containers on a host: one model, read from the engine's list or inspect answers.

`ListContainers` (the API's container list) is what `up`, `clean`, `sync-files` and `logs` read:
it carries names, ids, images, labels and state, and no environment. `InspectContainers` adds
start time, restart count, health and exit code, for `status` and for the workers whose start
time `sync-files` records.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from ..names import LABEL_ROLE, LABEL_SPEC


@dataclass(frozen=True)
class Container:
    name: str
    id: str
    state: str  # running, restarting, paused, exited, created, dead, removing
    image: str = ""  # the image reference it was started from
    image_id: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    health: str | None = None  # healthy, unhealthy, starting; None without a health check
    started_at: str = ""  # Docker's RFC 3339 time (inspect only)
    restarts: int | None = None  # inspect only
    exit_code: int | None = None  # of the last run, when not running (inspect only)

    @property
    def role(self) -> str:
        return self.labels.get(LABEL_ROLE, "")

    @property
    def fingerprint(self) -> str:
        return self.labels.get(LABEL_SPEC, "")

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def started(self) -> datetime | None:
        return parse_docker_time(self.started_at)


_HEALTH_IN_STATUS = re.compile(r"\((healthy|unhealthy|health: starting)\)")


def parse_container_list(items: list[dict]) -> tuple[Container, ...]:
    """The API's container list (`GET /containers/json`): health only as its status text says."""
    found = []
    for item in items or []:
        names = item.get("Names") or [""]
        health = _HEALTH_IN_STATUS.search(item.get("Status") or "")
        found.append(Container(
            name=names[0].lstrip("/"),
            id=item.get("Id", ""),
            state=item.get("State", "unknown"),
            image=item.get("Image", ""),
            image_id=item.get("ImageID", ""),
            labels=dict(item.get("Labels") or {}),
            health=health.group(1).replace("health: ", "") if health else None,
        ))
    return tuple(sorted(found, key=lambda c: c.name))


def parse_container_inspect(items: list[dict]) -> tuple[Container, ...]:
    """Container inspect objects (`GET /containers/NAME/json`)."""
    found = []
    for item in items or []:
        state = item.get("State") or {}
        config = item.get("Config") or {}
        status = state.get("Status", "unknown")
        found.append(Container(
            name=item.get("Name", "").lstrip("/"),
            id=item.get("Id", ""),
            state=status,
            image=config.get("Image", ""),
            image_id=item.get("Image", ""),
            labels=dict(config.get("Labels") or {}),
            health=(state.get("Health") or {}).get("Status") or None,
            started_at=state.get("StartedAt", "") or "",
            restarts=int(item.get("RestartCount") or 0),
            exit_code=None if status == "running" else state.get("ExitCode"),
        ))
    return tuple(sorted(found, key=lambda c: c.name))


def is_running(containers: tuple[Container, ...] | list[Container], name: str) -> bool:
    """Whether the container `name` is among `containers` and running."""
    return any(c.name == name and c.running for c in containers)


def parse_docker_time(text: str | None) -> datetime | None:
    """Docker's RFC 3339 times with nanoseconds (`2025-01-31T12:00:00.123456789Z`); None for its zero time."""
    if not text or text.startswith("0001-01-01"):
        return None
    match = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?$", text.strip())
    if not match:
        return None
    base, fraction, zone = match.groups()
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    parsed = datetime.fromisoformat(base).replace(microsecond=micro)
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        parsed -= sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
    return parsed.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class ImageInfo:
    id: str
    labels: dict[str, str] = field(default_factory=dict)
    layers: tuple[str, ...] = ()  # RootFS layer digests, base image first

    def built_on(self, base: "ImageInfo | None") -> bool:
        """Whether this image was built FROM `base` as it is now: its layers start with the base's.

        True when there is no base to compare with (a build pulls the base it lacks).
        """
        if base is None or not base.layers:
            return True
        return self.layers[:len(base.layers)] == base.layers


def parse_image_inspect(answer: dict[str, dict | None]) -> dict[str, ImageInfo | None]:
    """`InspectImages`' answer: {ref: {"Id", "Labels", "Layers"} or None} -> {ref: ImageInfo or None}."""
    return {ref: ImageInfo(item.get("Id", ""), dict(item.get("Labels") or {}), tuple(item.get("Layers") or ()))
            if item else None for ref, item in answer.items()}
