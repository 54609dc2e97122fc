"""`project`: the task project copied to the hosts."""

from __future__ import annotations

from pydantic import Field, field_validator

from .model import StrictModel
from .values import APP_PATTERN, checked, mounted_path_problem, project_file_problem


class ProjectConfig(StrictModel):
    """The task project, copied to every host that runs a role: a Celery app, or scripts for `infra sweep`."""

    path: str = Field(
        min_length=1, description="The project folder, relative to the cluster file or absolute.")
    app: str | None = Field(
        default=None, min_length=1, pattern=APP_PATTERN, max_length=200,
        description="What `celery --app` gets: a module, or module:attribute. Leave it out for a project "
                    "without Celery code (a script for `infra sweep`): workers then run infra's built-in app.")
    remote_path: str = Field(
        default="infra", min_length=1,
        description="Where the cluster's folder goes on each host (REMOTE_PATH/NAME, holding the project, its "
                    "output folder and secret files): relative to the SSH user's home, or absolute.")
    requirements: str | None = Field(
        default="requirements.txt",
        description="File of the project folder listing packages installed into the images (optional).")

    @field_validator("path", "remote_path")
    @classmethod
    def _mounted_path_valid(cls, path: str) -> str:
        return checked(path, mounted_path_problem, "a usable folder path")

    @field_validator("requirements")
    @classmethod
    def _requirements_valid(cls, requirements: str | None) -> str | None:
        return checked(requirements, project_file_problem, "a usable file path")
