"""The structure drawn from the imports: no circle between modules or between packages, no
arrow running back up the floors, and no source file too long to hold in one's head.

Floors, from the ground up (a module may import its own floor and the floors below):
base (errors, paths, config, runtime, files, mirror) → algorithms (optim, svm, convex, models,
data) → report → experiments → cli.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "attnopt"
FLOORS = {
    "attnopt": 0, "errors": 0, "paths": 0, "config": 0, "runtime": 0, "files": 0, "mirror": 0, "native": 0,
    "optim": 1, "svm": 1, "convex": 1, "models": 1, "data": 1,
    "report": 2,
    "experiments": 3,
    "cli": 4, "__main__": 4, "docs_tables": 4,
}
MAX_LINES = 600


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PKG.rglob("*.py")}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _graph() -> dict[str, set[str]]:
    """Module → the attnopt modules it imports (anywhere in the file, lazy imports included)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" for a in node.names]
            for t in targets:
                if t.startswith("attnopt"):
                    dep = _resolve(t, modules)
                    if dep and dep != mod and dep != "attnopt":
                        graph[mod].add(dep)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def _room(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_no_import_cycle_between_modules():
    assert _cycles(_graph()) == []


def test_no_import_cycle_between_packages_and_no_arrow_up():
    graph = _graph()
    rooms: dict[str, set[str]] = {}
    up = []
    for mod, deps in graph.items():
        for dep in deps:
            a, b = _room(mod), _room(dep)
            assert a in FLOORS and b in FLOORS, f"{mod} or {dep} is on no floor: add it to FLOORS"
            if a != b:
                rooms.setdefault(a, set()).add(b)
                if FLOORS[b] > FLOORS[a]:
                    up.append(f"{mod} -> {dep}")
    assert up == []
    assert _cycles(rooms) == []


def test_source_files_are_short():
    long = {str(p.relative_to(SRC)): n for p in PKG.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}
