"""The sections with a default for every key: `ports`, `images`, `docker`, `ssh`, `timeouts`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from .model import StrictModel
from .values import checked, image_reference_problem, path_problem


class Ports(StrictModel):
    """Ports published on the master host."""

    broker: int | None = Field(
        default=None, ge=1, le=65535,
        description="RabbitMQ; workers connect here. Default 5671 (AMQPS) with TLS, 5672 (AMQP) with `tls: false`.")
    results: int = Field(
        default=6379, ge=1, le=65535, description="Redis result backend; workers store results here.")
    flower: int = Field(default=5555, ge=1, le=65535, description="Flower web UI and API (password protected).")


class Images(StrictModel):
    """How the Docker images are made and reach the hosts."""

    source: Literal["build", "ship", "pull"] = Field(
        default="build",
        description="build: each host builds its own (right CPU architecture everywhere); "
                    "ship: built here and sent over SSH to hosts that lack it, by layers (only the layers a "
                    "host lacks travel); "
                    "pull: from a registry (worker, master and broker must then be set).")
    base: str = Field(
        default="python:3.11-slim-bookworm", min_length=1,
        description="Base image of the builds (any Debian or Ubuntu image).")
    wheelhouse: str | None = Field(
        default=None,
        description="Folder of wheels installed without PyPI (air-gapped hosts), relative to the cluster file.")
    worker: str | None = Field(default=None, description="Worker image name; default: infra-NAME-worker:latest.")
    master: str | None = Field(default=None, description="Master image name; default: infra-NAME-master:latest.")
    broker: str | None = Field(default=None, description="Broker image name; default: infra-NAME-broker:latest.")

    @field_validator("base", "worker", "master", "broker")
    @classmethod
    def _image_reference_valid(cls, reference: str | None) -> str | None:
        return checked(reference, image_reference_problem, "a valid image reference")

    @field_validator("wheelhouse")
    @classmethod
    def _wheelhouse_valid(cls, wheelhouse: str | None) -> str | None:
        return checked(wheelhouse, path_problem, "a usable folder path")


class DockerSettings(StrictModel):
    """Where `infra bootstrap` installs the Docker engine from."""

    source: Literal["distro", "official"] = Field(
        default="distro",
        description="distro: the distribution's own package (docker.io); "
                    "official: Docker's apt repository (docker-ce).")


class SshSettings(StrictModel):
    """How infra connects to hosts."""

    connect_timeout: float = Field(
        default=10.0, gt=0, le=300, description="Seconds to connect and authenticate to a host.")
    host_keys: Literal["strict", "accept-new"] | None = Field(
        default=None,
        description="Host keys are always checked and a changed key is always refused. An unknown key: "
                    "`strict` refuses it, `accept-new` learns it on first use. Default: ~/.ssh/config's "
                    "StrictHostKeyChecking for the host (yes: strict), else accept-new.")
    known_hosts: str | None = Field(
        default=None,
        description="The known hosts file where host keys are checked and learned (relative to this file). "
                    "Default: ~/.ssh/config's UserKnownHostsFile, else ~/.ssh/known_hosts.")


class Timeouts(StrictModel):
    """How long infra waits."""

    broker: float = Field(default=120.0, gt=0, description="Seconds to wait for the broker to accept logins.")
    workers: float = Field(default=180.0, gt=0, description="Seconds to wait for every worker to answer a ping.")
    command: float = Field(
        default=120.0, gt=0, le=3600,
        description="Seconds one command on a host or one call to its Docker engine may take; a host that "
                    "does not answer within it is reported and the others go on.")
    image: float = Field(
        default=3600.0, gt=0, le=86400,
        description="Seconds an image build, pull or transfer may stay silent before it counts as stalled.")
