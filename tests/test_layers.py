"""The import rule of DESIGN.md "Layers": no module imports a layer above its own, and no cycle.

Imports inside functions count too (they are real edges at run time); `TYPE_CHECKING` blocks are
left out, since annotations are never imported when the code runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "casstore"

# layer of each top-level name under casstore/ (DESIGN.md's table)
LAYERS = {
    "errors": 0, "settings": 0, "_testing": 0,
    "format": 1, "chunker": 1, "remotes": 1, "fsio": 1,
    "repo": 2,
    "snapshot": 3, "read": 3, "restore": 3, "sync": 3,
    "gc": 4, "service": 5, "client": 6, "compat": 7, "fsspec_fs": 7,
    "api": 8, "cli": 8, "__init__": 9, "__main__": 9,
}


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(("casstore", *path.relative_to(PACKAGE).with_suffix("").parts))
        found[name.removesuffix(".__init__")] = path
    return found


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1]] if len(parts) > 1 else LAYERS["__init__"]


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for n in ast.walk(node))
    return skipped


def imports_of(path: Path, known: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text())
    skipped = _type_checking_nodes(tree)
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("casstore"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in known else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("casstore"))
    return {m for m in found if m in known}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(path, known) - {name} for name, path in known.items()}


def test_every_folder_has_a_layer():
    assert {name.split(".")[1] for name in modules() if "." in name} <= set(LAYERS)


def test_no_module_imports_a_layer_above_its_own():
    upward = [f"{m} ({layer(m)}) -> {t} ({layer(t)})" for m, targets in graph().items() for t in targets
              if layer(t) > layer(m) and m != "casstore"]
    assert upward == []


def test_no_import_cycle():
    edges = graph()
    state: dict[str, int] = {}          # 1: on the current path, 2: done
    for start in edges:
        if start in state:
            continue
        stack = [(start, iter(sorted(edges[start])))]
        state[start] = 1
        while stack:                     # iterative depth-first search
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
            elif state.get(child) == 1:
                path = [n for n, _ in stack]
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(child):] + [child]))
            elif child not in state:
                state[child] = 1
                stack.append((child, iter(sorted(edges[child]))))
