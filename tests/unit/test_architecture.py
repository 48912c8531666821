"""The package's layering (ARCHITECTURE.md): what may import what, and no import cycles.

Read from the source with ``ast`` (every import, including those inside functions and under
TYPE_CHECKING), so a lazy import cannot hide an arrow pointing the wrong way.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "facesearch"

#: the parts, lowest first; a part may import its own modules, the base, and the parts it lists
BASE = {"errors", "distance", "names", "files", "images", "datasets", "metrics", "losses", "settings", "tuning"}
MAY_IMPORT = {
    "model": set(),
    "store": set(),
    "index": set(),
    "detect": set(),
    "gallery": {"model", "store", "index", "detect"},
    "training": {"model"},  # no FAISS, no SQL: a GPU machine trains without them
    "evaluation": {"model", "gallery", "store", "index", "detect", "training"},
    "serve": {"model", "store", "index", "detect", "gallery"},  # the HTTP service over FaceSearch
    "cli": {"model", "store", "index", "detect", "gallery", "training", "evaluation", "serve"},
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in found if m == "facesearch" or m.startswith("facesearch.")}


def _part(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def test_every_part_is_known():
    parts = {_part(m) for m in MODULES} - {None, "__main__"}
    assert parts <= BASE | set(MAY_IMPORT), parts - BASE - set(MAY_IMPORT)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_lower_part_imports_a_higher_one(module):
    mine = _part(module)
    if mine in (None, "__main__"):
        return  # the package root only re-exports (lazily); ``python -m facesearch`` runs the CLI
    allowed = BASE | {mine} | MAY_IMPORT.get(mine, set())
    if mine in BASE:
        allowed = BASE
    wrong = sorted(m for m in _imports(MODULES[module])
                   if (p := _part(m)) is not None and p in BASE | set(MAY_IMPORT) and p not in allowed)
    assert not wrong, f"{module} ({mine}) imports {wrong}"


def test_no_import_cycles_at_module_level():
    graph = {}
    for name, path in MODULES.items():
        graph[name] = {m for m in _imports(path, top_level_only=True) if m in MODULES and m != name}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            # importing a submodule runs its package's __init__ first; a package importing its own
            # submodules is how re-exports work, not a cycle
            if m.startswith(n + "."):
                continue
            if state.get(m) == 1:
                cycle = stack[stack.index(m):] + [m]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
