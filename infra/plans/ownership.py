"""Whether a host's cluster folder is safe to use or remove: no one but the SSH user and root can swap it.

The folder holds the project the containers run and their secret files; whoever may rename or
replace it, or any folder above it, may make the containers run their own code. The rule, on the
owners and modes `commands.files._path_owners` reads (each folder as written and as its links
resolve, up to /):

- the cluster folder, when it exists, is a real folder (not a link) owned by the SSH user and
  writable by no group or other user;
- every folder or link above it is owned by the SSH user or root;
- a folder above it writable by a group or other users is refused, unless it is sticky (as /tmp):
  there, no one else may rename or remove what the SSH user owns, so the cluster folder below
  it, which must be the SSH user's, stays the user's. One made by `up` is checked again once made
  (`commands.files.prepare_project`);
- a path whose owner or mode cannot be read is refused.

An absent folder is no danger: `up` makes it, as the SSH user, under folders that passed.
"""

from __future__ import annotations

import stat

from ..facts.files import FolderOwners, PathOwner

GROUP_OR_OTHER_WRITE = stat.S_IWGRP | stat.S_IWOTH


def _described(entry: PathOwner) -> str:
    return f"{entry.path} (owner {entry.user or '?'}, uid {entry.uid}, mode {stat.S_IMODE(entry.mode):04o})"


def _folder_problem(entry: PathOwner, ssh_uid: int) -> str:
    if stat.S_ISLNK(entry.mode):
        return f"{_described(entry)} is a symbolic link"
    if not stat.S_ISDIR(entry.mode):
        return f"{_described(entry)} is not a folder"
    if entry.uid != ssh_uid:
        return f"{_described(entry)} is not the SSH user's (uid {ssh_uid})"
    if entry.mode & GROUP_OR_OTHER_WRITE:
        return f"{_described(entry)} is writable by other users"
    return ""


def _above_problem(entry: PathOwner, ssh_uid: int) -> str:
    if entry.uid not in (ssh_uid, 0):
        return f"{_described(entry)}, above it, is owned by neither the SSH user (uid {ssh_uid}) nor root"
    if stat.S_ISLNK(entry.mode):
        return ""  # a link's own mode means nothing; the folder holding it is checked too
    if entry.mode & GROUP_OR_OTHER_WRITE and not entry.mode & stat.S_ISVTX:
        return f"{_described(entry)}, above it, is writable by other users and not sticky"
    return ""


def folder_refusal(owners: FolderOwners | None) -> str:
    """Why the cluster folder must not be used or removed, in one line naming the path, its owner
    and its mode; "" when it is safe."""
    if owners is None or owners.ssh_uid is None or not owners.paths:
        return "the owners of the cluster folder and the folders above it could not be read: left alone"
    for entry in owners.paths:
        if entry.unknown:
            return f"{entry.path}: its owner and mode could not be read: left alone"
        if entry.uid is None:
            continue  # absent: made by the SSH user
        problem = (_above_problem if entry.above else _folder_problem)(entry, owners.ssh_uid)
        if problem:
            return f"{problem}: another user could swap the cluster folder, left alone"
    return ""


def absent_folders(owners: FolderOwners | None) -> tuple[str, ...]:
    """The cluster folder and the folders above it that are absent (to be made by `up`), outermost first."""
    if owners is None:
        return ()
    chain = [entry.path for entry in owners.paths if entry.uid is None and not entry.unknown]
    return tuple(reversed(list(dict.fromkeys(chain))))
