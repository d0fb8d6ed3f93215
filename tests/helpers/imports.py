"""The project's import graph as its source says it, every import counted: top-level, inside functions and under
``TYPE_CHECKING``. Used by the import-rule tests; import-linter checks the same rules in ``make lint``."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def module_name(path: Path, root: Path = REPO) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_path(name: str, root: Path = REPO) -> Path | None:
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_names(path: Path) -> set[str]:
    """Every module name an import statement of ``path`` names, wherever the statement sits, resolved to the
    longest prefix that is a module (``from pipelines.core.lake import Lake`` -> ``pipelines.core.lake``)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path).rpartition(".")[0] if path.name != "__init__.py" else module_name(path)
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


@cache
def first_party_graph(packages: tuple[str, ...] = ("pipelines", "services", "benchmarks")) -> dict[str, set[str]]:
    """module -> the first-party modules it imports (only names that are modules of the repository)."""
    graph: dict[str, set[str]] = {}
    for package in packages:
        for path in sorted((REPO / package).rglob("*.py")):
            graph[module_name(path)] = {name for name in imported_names(path)
                                       if name.split(".")[0] in packages and module_path(name) is not None}
    return graph


def closure(start: Iterable[str], graph: dict[str, set[str]]) -> set[str]:
    """``start`` and every module reachable from it, with the packages (``__init__``) that contain them."""
    seen: set[str] = set()
    todo = list(start)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(graph.get(name, ()))
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
    return seen
