"""What `infra clean` removes on a host: what the manifest recorded plus what carries the cluster's label.

The manifest knows what this machine started; the labels find what a run that died before
recording it left behind. Folders are deleted only when the path is absolute, at least two
levels deep and without `..` — a damaged manifest can never make `clean` delete `/` or a home
folder — and only when they are this cluster's: on a remote host the cluster folder that holds
them must carry the marker naming the cluster (checked on the host, as the folder is deleted)
and be safe from other users (`ownership.folder_refusal`, asked just before);
on `local`, a secret folder must be inside the cluster's state dir.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

from ..commands import files as file_commands
from ..commands.engine import RemoveContainers, RemoveNetwork, RemoveVolume, UntagImage
from ..config import LOCAL
from ..state.manifest import HostRecord
from ..facts.files import parse_folder_owners
from .ownership import folder_refusal
from .steps import Record, Step, engine_step, shell_step

CLEAN_TIMEOUT = 120


@dataclass(frozen=True)
class FolderRemoval:
    """Delete one folder if the host confirms it is the cluster's; the command prints its verdict."""

    folder: str
    step: Step  # its records are the manifest entries it settles, whatever the verdict
    # Asked first on a remote host: who owns the cluster folder holding it and the folders above.
    owners_query: tuple[str, ...] | None = None

    def refusal(self, owners_answer: str) -> str:
        """Why the folder must stay, from the answer to `owners_query` ("" when it may go)."""
        return folder_refusal(parse_folder_owners(owners_answer))


@dataclass
class CleanPlan:
    host: str
    steps: list[Step] = field(default_factory=list)  # containers, networks, volumes; forgetting refused folders
    containers: list[str] = field(default_factory=list)
    folders: list[FolderRemoval] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # folders not deleted, and why (known before asking the host)

    def removed(self) -> list[str]:
        """What the engine steps remove (folders: what the host answers, see `workflows.clean.remove_folders`)."""
        return [step.description for step in self.steps if step.op is not None or step.command is not None]

    def planned(self) -> list[str]:
        """Everything the plan would remove, folders included (those the host confirms are the cluster's)."""
        return self.removed() + [removal.step.description for removal in self.folders]


def safe_to_delete(path: str) -> bool:
    parts = [p for p in path.split("/") if p]
    return path.startswith("/") and len(parts) >= 2 and ".." not in parts and "." not in parts


def _inside(path: str, folder: str) -> bool:
    return posixpath.normpath(path).startswith(posixpath.normpath(folder).rstrip("/") + "/")


def plan_clean(
    host: str, record: HostRecord | None, *, containers: list[str], networks: list[str], volumes: list[str],
    files: bool, remove_volumes: bool, cluster: str, state_dir: str, registry_refs: list[str] | None = None,
) -> CleanPlan:
    """`containers`, `networks`, `volumes`: the cluster's, found on the host by label.
    `registry_refs`: names of the cluster's images left by a transfer cut short (see
    `names.forwarded_registry_patterns`); only the names go, the images stay as `clean` leaves
    every image.

    Secret folders are always removed; with `files`, the cluster folder holding each recorded
    project copy (its parent: the project, the output folder, the secret files and the marker).
    """
    plan = CleanPlan(host)
    names = sorted(set(containers) | set(record.containers if record else ()))
    plan.containers = names
    if names:
        plan.steps.append(engine_step(f"remove {len(names)} container(s)", RemoveContainers(tuple(names)),
                                      *(Record("remove_container", name) for name in names), timeout=CLEAN_TIMEOUT))
    for network in sorted(set(networks) | set(record.networks if record else ())):
        plan.steps.append(engine_step(f"network {network}", RemoveNetwork(network), Record("remove_network", network),
                                      timeout=CLEAN_TIMEOUT))
    for ref in sorted(set(registry_refs or ())):
        plan.steps.append(engine_step(f"image name {ref}", UntagImage(ref), timeout=CLEAN_TIMEOUT))
    if remove_volumes:
        for volume in sorted(set(volumes) | set(record.volumes if record else ())):
            plan.steps.append(engine_step(f"volume {volume}", RemoveVolume(volume), Record("remove_volume", volume),
                                          timeout=CLEAN_TIMEOUT))
    if record is None:
        return plan
    for folder, (owner, entries) in _folders_to_remove(plan, record, files=files, state_dir=state_dir).items():
        command = (file_commands.remove_owned_folder(folder, owner, cluster) if owner is not None
                   else file_commands.remove_folder(folder))
        query = tuple(file_commands.folder_owners(owner)) if owner is not None else None
        plan.folders.append(FolderRemoval(folder, shell_step(f"folder {folder}", command, *entries,
                                                             timeout=CLEAN_TIMEOUT), query))
    return plan


def _folders_to_remove(plan: CleanPlan, record: HostRecord, *, files: bool,
                       state_dir: str) -> dict[str, tuple[str | None, list[Record]]]:
    """{folder to delete: (the folder whose marker must name the cluster, or None; the records it
    settles)}. A recorded folder that may not be deleted is refused in `plan`, and only forgotten."""
    host = plan.host
    targets: dict[str, tuple[str | None, list[Record]]] = {}

    def target(folder: str, owner: str | None, entry: Record) -> None:
        targets.setdefault(folder, (owner, []))[1].append(entry)

    def refuse(folder: str, why: str, entry: Record) -> None:
        plan.refused.append(f"{folder} ({why})")
        plan.steps.append(Step(f"forget {folder}", records=(entry,)))

    for folder in record.secret_dirs:
        entry = Record("remove_secret_dir", folder)
        if not safe_to_delete(folder):
            refuse(folder, "not an absolute path two levels deep", entry)
        elif host == LOCAL and not _inside(folder, state_dir):
            refuse(folder, f"not inside the state dir {state_dir}", entry)
        else:
            target(folder, None if host == LOCAL else posixpath.dirname(folder.rstrip("/")), entry)
    if files:
        for copy in record.files:
            entry = Record("remove_files", copy)
            owner = posixpath.dirname(copy.rstrip("/"))
            if host == LOCAL or not safe_to_delete(copy) or not safe_to_delete(owner):
                why = "the project is used in place here" if host == LOCAL else "not an absolute path two levels deep"
                refuse(copy, why, entry)
            else:
                target(owner, owner, entry)
    return targets
