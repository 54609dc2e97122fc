"""Where the Dockerfiles and templates shipped with infra are, installed or in a checkout."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from ..config import Cluster
from ..plans.images import DOCKERFILES
from ..runtime import IMAGE_PACKAGE


PACKAGE_DIR = Path(__file__).resolve().parent.parent  # infra/


def assets_dir() -> Path:
    packaged = PACKAGE_DIR / "_data"  # a wheel carries them here (see pyproject.toml)
    if (packaged / "Dockerfile.celery").is_file():
        return packaged
    checkout = PACKAGE_DIR.parent
    if (checkout / "Dockerfile.celery").is_file():
        return checkout
    raise FileNotFoundError("infra's Dockerfiles are missing from this installation")


def _copy_if_changed(source: Path, target: Path) -> None:
    if target.is_file():
        s, t = source.stat(), target.stat()
        if s.st_size == t.st_size and int(s.st_mtime) == int(t.st_mtime):
            return
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, target)


def _mirror(source_dir: Path | None, target_dir: Path, pattern: str = "*") -> None:
    """Make target_dir hold exactly the files of source_dir matching `pattern` (or nothing)."""
    target_dir.mkdir(parents=True, exist_ok=True)
    wanted = set()
    if source_dir is not None:
        for item in sorted(source_dir.rglob(pattern)):
            if item.is_file():
                rel = item.relative_to(source_dir)
                wanted.add(rel)
                _copy_if_changed(item, target_dir / rel)
    for item in sorted(target_dir.rglob("*"), reverse=True):
        if item.is_file() and item.relative_to(target_dir) not in wanted:
            item.unlink()


def prepare_build_context(cluster: Cluster) -> Path:
    """Assemble the build context in the state dir: Dockerfiles, templates, infra_runtime, requirements, wheels."""
    context = cluster.state_dir / "build"
    context.mkdir(parents=True, exist_ok=True)
    assets = assets_dir()
    for name in set(DOCKERFILES.values()):
        _copy_if_changed(assets / name, context / name)
    for stale in context.glob("Dockerfile.*"):  # left by an older infra: not part of this context
        if stale.name not in DOCKERFILES.values():
            stale.unlink()
    _mirror(assets / "templates", context / "templates")
    # The code the containers run (task runner, built-in app, sweep driver); sources only, so
    # that compiled files never change the context's fingerprint.
    _mirror(PACKAGE_DIR / "runtime", context / IMAGE_PACKAGE, "*.py")
    requirements = context / "requirements.txt"
    project_requirements = (
        cluster.project_dir / cluster.spec.project.requirements if cluster.spec.project.requirements else None
    )
    if project_requirements and project_requirements.is_file():
        _copy_if_changed(project_requirements, requirements)
    elif not requirements.is_file() or requirements.read_text():
        requirements.write_text("")
    _mirror(cluster.wheelhouse, context / "wheels")
    return context


def context_digest(context: Path) -> str:
    """One hash of a build context: every file's path, mode and content."""
    sha = hashlib.sha256()
    for item in sorted(context.rglob("*")):
        if item.is_file():
            sha.update(f"{item.relative_to(context).as_posix()}\0{item.stat().st_mode & 0o777:o}\0".encode())
            with item.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    sha.update(block)
            sha.update(b"\n")
    return sha.hexdigest()[:24]
