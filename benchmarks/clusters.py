"""What the testbed benchmarks' cluster files share: the sample project, and the e2e cluster's shape."""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def sample_project(folder: Path) -> Path:
    """A copy of the sample project `wordcount` in `folder` (made once), without its output."""
    project = folder / "wordcount"
    if not project.exists():
        shutil.copytree(REPO / "projects" / "wordcount", project, ignore=shutil.ignore_patterns("output", "__pycache__"))
    return project


def e2e_shape(folder: Path, testbed, name: str, images: dict, *, known_hosts: bool = True) -> dict:
    """The end-to-end tests' cluster: master on h1; workers: 2 containers on h2, 1 on h3, 1 on
    `local`. `known_hosts` False for revisions older than `ssh.known_hosts` (they accepted any
    host key)."""
    h1, h2, h3 = testbed.docker_hosts[:3]
    return {
        "name": name,
        "hosts": testbed.cluster_hosts([h1, h2, h3]),
        "project": {"path": str(sample_project(folder)), "app": "wordcount", "remote_path": f"infra-bench-{name}"},
        "roles": {"master": {"host": h1.name}, "workers": [
            {"host": h2.name, "containers": 2, "concurrency": 2},
            {"host": h3.name, "containers": 1, "concurrency": 2},
            {"host": "local", "containers": 1, "concurrency": 1},
        ]},
        "images": images,
        "ssh": {"connect_timeout": 5, **({"known_hosts": str(testbed.known_hosts_path)} if known_hosts else {})},
        "state_dir": str(folder / "state"),
    }
