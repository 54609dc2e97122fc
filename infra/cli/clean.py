"""`infra clean`: remove everything `infra up` started."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import InfraError
from .options import cluster_file_option, handle_errors, load_cluster_file, wait_option


@click.command()
@cluster_file_option
@click.option("--files", is_flag=True,
              help="Also delete the cluster's folder on the hosts (project copy and job output), where it holds "
                   "the cluster's marker (or is empty: an `up` cut short before writing it). A folder refused "
                   "(no marker, a link) is named and the exit code is 1.")
@click.option("--volumes", is_flag=True, help="Also delete the broker's and result backend's data volumes.")
@wait_option
@handle_errors
def clean(cluster_file: Path, files: bool, volumes: bool, wait: bool) -> None:
    """Remove everything `infra up` started, on all hosts at once.

    Revokes every volunteer, then removes the containers recorded in the manifest and any
    container still carrying the cluster's label, the cluster's network and the folders of
    secret files. Project files and data volumes stay unless asked. A host that cannot be reached is reported,
    the others are cleaned, the exit code is 1 and the manifest keeps what is left there. A folder
    `--files` refused to delete is reported too, with exit code 1.

    \b
    Example:
      infra clean -f cluster.yaml
      infra clean -f cluster.yaml --files --volumes
    """
    from ..ui.reporter import Reporter
    from ..workflows.clean import clean as run_clean

    cluster = load_cluster_file(cluster_file)
    reporter = Reporter()
    result = run_clean(cluster, reporter, files=files, volumes=volumes, wait=wait)
    if result.failed:
        names = ", ".join(sorted(result.failed))
        raise InfraError(f"could not clean {names}; the manifest keeps what is left there — run `infra clean` again")
    if result.refused:
        names = ", ".join(sorted(result.refused))
        raise InfraError(f"cluster {cluster.name} removed, but a folder was refused on {names} (see above): "
                         f"it is not the cluster's, so infra leaves it to you")
    reporter.info(f"cluster {cluster.name} removed from {len(result.cleaned)} host(s)")
