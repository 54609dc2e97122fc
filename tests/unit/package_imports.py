"""The package's own imports, read from its source: which module imports which, anywhere in it."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "infra"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, anywhere in it (functions and `if TYPE_CHECKING:` included),
    as absolute names; `from X import y` lists both X and X.y, since y may be a module."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            if node.module:
                found.add(origin)
            # The names may be modules: `from . import options` imports infra.cli.options.
            found.update(f"{origin}.{alias.name}" for alias in node.names)
    return found


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def import_graph() -> dict[str, set[str]]:
    """Module → the package's modules it imports (names that are not modules left out)."""
    modules = package_modules()
    return {name: {imported for imported in imported_modules(path) if imported in modules and imported != name}
            for name, path in modules.items()}
