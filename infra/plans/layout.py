"""Where a cluster lives on a host: its folder (claimed by a marker file), the project, the secrets."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from ..commands import files as file_commands
from ..config import Cluster, Host
from ..facts.files import OUTPUT_FOLDER
from ..facts.host import HostFacts


@dataclass(frozen=True)
class HostLayout:
    """Absolute paths of what infra puts on one host.

    On a remote host everything lives in the cluster's own folder, `REMOTE_PATH/NAME` (`root`),
    which holds a marker file naming the cluster: two clusters, or two projects of the same
    folder name, never share a folder, and `sync-files` / `clean --files` touch only a folder
    whose marker names their cluster. On `local` the project is used in place.
    """

    root: str  # the cluster's folder on the host, REMOTE_PATH/NAME (the state dir on `local`)
    project_dir: str  # the project, bind-mounted read-only at /project
    env_dir: str  # 0700 folder of the secret files
    output_dir: str  # where jobs write, bind-mounted read-write at /project/output

    def env_file(self, name: str) -> str:
        return posixpath.join(self.env_dir, f"{name}.env")

    @property
    def marker(self) -> str:
        """The file naming the cluster that owns `root` (remote hosts)."""
        return posixpath.join(self.root, file_commands.MARKER_FILE)


# The cluster folder's own entries: a project folder named like one of them goes to `project` instead.
_CLUSTER_FOLDER_ENTRIES = (OUTPUT_FOLDER, ".infra", file_commands.MARKER_FILE)


def host_layout(cluster: Cluster, host: Host, facts: HostFacts) -> HostLayout:
    if host.is_local:
        # The project is used where it is, its output folder too; secret files live in the state dir.
        state = str(cluster.state_dir)
        return HostLayout(root=state, project_dir=str(cluster.project_dir), env_dir=posixpath.join(state, "env"),
                          output_dir=str(cluster.project_dir / OUTPUT_FOLDER))
    remote = cluster.spec.project.remote_path.rstrip("/")
    if remote.startswith("~/"):
        remote = remote[2:]
    base = remote if remote.startswith("/") else posixpath.join(facts.home, remote)
    root = posixpath.join(base, cluster.name)
    name = cluster.project_dir.name
    return HostLayout(
        root=root,
        project_dir=posixpath.join(root, "project" if name in _CLUSTER_FOLDER_ENTRIES else name),
        env_dir=posixpath.join(root, ".infra"),
        output_dir=posixpath.join(root, OUTPUT_FOLDER),
    )
