"""What `infra clean` removes on a host: what the manifest recorded plus what carries the cluster's label.

The manifest knows what this machine started; the labels find what a run that died before
recording it left behind. Folders are deleted only when the path is absolute and at least two
levels deep — a damaged manifest can never make `clean` delete `/` or a home folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..commands import files as file_commands
from ..commands.engine import RemoveContainers, RemoveNetwork, RemoveVolume
from ..manifest import HostRecord
from .steps import Record, Step, engine_step, shell_step

CLEAN_TIMEOUT = 120


@dataclass
class CleanPlan:
    host: str
    steps: list[Step] = field(default_factory=list)
    containers: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # folders not deleted, and why

    def removed(self) -> list[str]:
        return [step.description for step in self.steps if step.op is not None or step.command is not None]


def safe_to_delete(path: str) -> bool:
    parts = [p for p in path.split("/") if p]
    return path.startswith("/") and len(parts) >= 2 and ".." not in parts


def plan_clean(
    host: str, record: HostRecord | None, *, containers: list[str], networks: list[str], volumes: list[str],
    files: bool, remove_volumes: bool,
) -> CleanPlan:
    """`containers`, `networks`, `volumes`: the cluster's, found on the host by label."""
    plan = CleanPlan(host)
    names = sorted(set(containers) | set(record.containers if record else ()))
    plan.containers = names
    if names:
        plan.steps.append(engine_step(f"remove {len(names)} container(s)", RemoveContainers(tuple(names)),
                                      *(Record("remove_container", name) for name in names), timeout=CLEAN_TIMEOUT))
    for network in sorted(set(networks) | set(record.networks if record else ())):
        plan.steps.append(engine_step(f"network {network}", RemoveNetwork(network), Record("remove_network", network),
                                      timeout=CLEAN_TIMEOUT))
    if remove_volumes:
        for volume in sorted(set(volumes) | set(record.volumes if record else ())):
            plan.steps.append(engine_step(f"volume {volume}", RemoveVolume(volume), Record("remove_volume", volume),
                                          timeout=CLEAN_TIMEOUT))
    folders = [(folder, "remove_secret_dir") for folder in (record.secret_dirs if record else ())]
    if files and record:
        folders += [(folder, "remove_files") for folder in record.files]
    for folder, kind in folders:
        if safe_to_delete(folder):
            plan.steps.append(shell_step(f"files {folder}", file_commands.remove_tree(folder), Record(kind, folder),
                                         timeout=CLEAN_TIMEOUT))
        else:
            plan.refused.append(f"{folder} (not an absolute path two levels deep)")
            plan.steps.append(Step(f"forget {folder}", records=(Record(kind, folder),)))
    return plan
