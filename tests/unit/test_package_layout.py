"""The package's shape: no import circle, a small root, short functions, a self-contained runtime."""

from __future__ import annotations

import ast

from tests.unit.package_imports import PACKAGE, import_graph, imported_modules, module_name, package_modules

MAX_ROOT_MODULES = 4  # besides __init__ and __main__: the shared modules every layer may use
MAX_FUNCTION_LINES = 60


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(graph[module]):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return circles


def test_the_circle_finder_finds_a_circle_through_three_modules():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_circles(graph) == [["a", "b", "c"]]


def test_no_module_of_the_package_imports_itself_back_through_others():
    # Lazy imports inside functions and `if TYPE_CHECKING:` imports count: each is a type or a
    # function on the wrong side of a layer.
    assert import_circles(import_graph()) == []


def test_the_package_root_holds_only_the_shared_modules():
    root = sorted(path.name for path in PACKAGE.glob("*.py") if path.name not in ("__init__.py", "__main__.py"))
    assert len(root) <= MAX_ROOT_MODULES, f"modules at infra/'s root: {root}"


def function_lengths(path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(), str(path))
    return [(f"{module_name(path)}:{node.lineno} {node.name}", node.end_lineno - node.lineno + 1)
            for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_no_function_is_longer_than_sixty_lines():
    long = [(where, lines) for path in package_modules().values() for where, lines in function_lengths(path)
            if lines > MAX_FUNCTION_LINES]
    assert long == [], f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_the_runtime_imports_nothing_of_infra_outside_itself():
    # The images carry infra/runtime alone, as the top-level package infra_runtime.
    outside = {
        module_name(path): sorted(imported for imported in imported_modules(path)
                                  if imported.split(".")[0] == "infra" and not imported.startswith("infra.runtime"))
        for path in sorted((PACKAGE / "runtime").glob("*.py"))
    }
    assert {module: found for module, found in outside.items() if found} == {}
