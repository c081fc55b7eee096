"""The layout's dependency rule (docs/architecture.md), read from the source, so a wrong import fails CI.

`node` and `protocol` are also names of unrelated PyPI distributions: ours must win.
"""

from __future__ import annotations

import ast
from pathlib import Path

import bench
import node
import protocol
import swarmtrain

ROOT = Path(__file__).resolve().parents[1]

# Which rooms each room may import (its own modules always). A room is a package under node/
# (node.config, node.train, ...), a top-level module of node (node.errors, node.cli), or one of
# the top-level packages protocol and bench.
WIRE = {"node.config", "node.errors", "protocol"}  # what every room but protocol and config may use
PEER = WIRE | {"node.train", "node.outer", "node.round", "node.scatter", "node.p2p", "node.watch", "node"}
ALLOWED: dict[str, set[str]] = {
    "protocol": set(),
    "node": set(),  # node/__init__.py: the version only
    "node.errors": set(),
    "node.config": {"node.errors"},
    "node.train": WIRE,
    "node.outer": WIRE | {"node.train"},
    "node.round": WIRE,
    "node.scatter": WIRE | {"node.outer"},  # v3's exchange reduces with the run's aggregator
    "node.p2p": WIRE | {"node.round", "node"},
    "node.watch": WIRE,
    "node.peer": PEER,
    "node.commands": PEER | {"node.peer"},
    "node.cli": {"node.commands", "node.peer", "node.watch", "node.config", "node.errors", "node"},
    # the public API (`import swarmtrain`): a facade over the node; nothing of ours imports it back
    "swarmtrain": PEER | {"node.peer", "node.commands", "protocol"},
}
# The one place the runtime may reach the benchmarks: `swarmtrain bench ...` imports them inside
# the function that runs the command, never at module import.
LAZY_BENCH_IMPORTERS = {"node.cli"}
RUNTIME = ("node", "protocol", "swarmtrain")
OURS = ("node", "protocol", "bench", "swarmtrain")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _room(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "node":
        return parts[0]
    if len(parts) == 1:
        return "node"
    return ".".join(parts[:2])


def _modules() -> dict[str, Path]:
    found = {}
    for top in OURS:
        for path in (ROOT / top).rglob("*.py"):
            found[_module_name(path)] = path
    return found


def _imports(path: Path, module: str) -> list[tuple[str, bool]]:
    """(imported module, at module level) for each import of ours in `path`."""
    tree = ast.parse(path.read_text())
    top_level = {id(n) for n in tree.body}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for n in ast.walk(tree):
        names: list[str] = []
        if isinstance(n, ast.Import):
            names = [a.name for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - n.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in n.names]
        for name in names:
            if name.split(".")[0] in OURS:
                out.append((name, id(n) in top_level))
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module that `name` (a module, or a name inside one) is."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def test_packages_come_from_this_repository():
    assert Path(node.__file__).resolve().parent == ROOT / "node"
    assert Path(protocol.__file__).resolve().parent == ROOT / "protocol"
    assert Path(bench.__file__).resolve().parent == ROOT / "bench"
    assert Path(swarmtrain.__file__).resolve().parent == ROOT / "swarmtrain"


def test_every_import_follows_the_dependency_rule():
    modules = _modules()
    wrong = []
    for module, path in modules.items():
        room = _room(module)
        if room == "bench":
            continue  # the benchmarks may use anything
        allowed = ALLOWED.get(room)
        assert allowed is not None, f"{module}: room {room} is not in the dependency rule; add it here and in docs"
        for name, at_top in _imports(path, module):
            target = _resolve(name, modules)
            if target is None or _room(target) == room:
                continue
            if _room(target) == "bench" and room in LAZY_BENCH_IMPORTERS and not at_top:
                continue
            if _room(target) not in allowed:
                wrong.append(
                    f"{module} imports {target} ({room} may import only {sorted(allowed) or 'nothing of ours'})"
                )
    assert not wrong, "\n".join(sorted(set(wrong)))


def test_no_import_cycles():
    """No two modules import each other, directly or around a loop (function-level imports count)."""
    modules = _modules()
    graph = {m: set() for m in modules}
    for module, path in modules.items():
        for name, _ in _imports(path, module):
            target = _resolve(name, modules)
            if target and target != module and not module.startswith(target + "."):
                graph[module].add(target)
    # Tarjan's strongly connected components: any component of two or more is a cycle.
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_runtime_modules_stay_small():
    """Small files: a runtime module over ~350 lines, or a package of more than ~10 modules, has
    more than one job; split it at its seams."""
    long = []
    for top in RUNTIME:
        for path in (ROOT / top).rglob("*.py"):
            lines = len(path.read_text().splitlines())
            if lines > 360:
                long.append(f"{path.relative_to(ROOT)}: {lines} lines")
        for package in [ROOT / top, *(p for p in (ROOT / top).rglob("*") if (p / "__init__.py").exists())]:
            count = len([p for p in package.glob("*.py") if p.name != "__init__.py"])
            if count > 11:
                long.append(f"{package.relative_to(ROOT)}: {count} modules")
    assert not long, long
