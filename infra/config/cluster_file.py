"""The cluster file as a whole, its top-level keys, and the JSON Schema generated from it."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from .hosts import HostConfig
from .model import StrictModel
from .project import ProjectConfig
from .roles import Roles
from .settings import DockerSettings, Images, Ports, SshSettings, Timeouts
from .values import HOST_NAME_PATTERN, LOCAL, NAME_PATTERN, checked, path_problem


class ClusterFile(StrictModel):
    """An infra cluster file: the hosts, and which Celery role each runs."""

    name: str = Field(
        pattern=NAME_PATTERN,
        description="Cluster name (lowercase letters, digits, '-'); containers, networks, volumes and "
                    "labels carry it, so several clusters can share hosts.")
    hosts: dict[str, HostConfig] = Field(
        default_factory=dict,
        description="Machines reachable over SSH, by name; `local` (the machine running infra) needs no entry.",
        # The names are checked after validation (for a located message); editors learn them here.
        json_schema_extra={"propertyNames": {"pattern": HOST_NAME_PATTERN, "not": {"const": LOCAL}}},
    )
    project: ProjectConfig = Field(
        description="The task project: a folder with a Celery app, or scripts run by `infra sweep`.")
    roles: Roles = Field(description="The master host and the groups of worker containers.")
    ports: Ports = Field(
        default=Ports(), description="Ports published on the master host: broker, result backend, Flower.")
    images: Images = Field(
        default=Images(),
        description="How the Docker images are made: built on each host, shipped from here, or pulled.")
    docker: DockerSettings = Field(
        default=DockerSettings(), description="How `infra bootstrap` installs Docker where it is missing.")
    ssh: SshSettings = Field(default=SshSettings(), description="SSH connection settings.")
    timeouts: Timeouts = Field(
        default=Timeouts(), description="How long `infra up` waits for the cluster to be ready.")
    state_dir: str = Field(
        default=".infra",
        description="Folder of the manifest and the secrets (STATE_DIR/NAME/), relative to the cluster file.")
    tls: bool = Field(
        default=True,
        description="Encrypt every link that leaves the master host with the cluster's own CA: AMQPS to the "
                    "broker, TLS to Redis, HTTPS to Flower. `false` publishes plain AMQP, Redis and HTTP: "
                    "only on a network you trust entirely.")

    @model_validator(mode="after")
    def _default_broker_port(self) -> ClusterFile:
        # The broker's default port follows `tls` (IANA's amqps and amqp ports), as the seeds used.
        if self.ports.broker is None:
            ports = self.ports.model_copy(update={"broker": 5671 if self.tls else 5672})
            object.__setattr__(self, "ports", ports)
        return self

    @field_validator("state_dir")
    @classmethod
    def _state_dir_valid(cls, state_dir: str) -> str:
        return checked(state_dir, path_problem, "a usable folder path")


JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
CLUSTER_SCHEMA_ID = "urn:infra-celery:cluster-file"


def cluster_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the cluster file, for editors and other tools.

    Generated from the models that validate the file, so the two cannot drift apart. What needs the
    whole file or the disk (known host names, distinct ports, existing folders) is checked by
    `load_cluster` only.
    """
    generated = ClusterFile.model_json_schema()
    generated.pop("title", None)
    return {"$schema": JSON_SCHEMA_DIALECT, "$id": CLUSTER_SCHEMA_ID, "title": "infra cluster file", **generated}
