"""Imports point one way: neither the modules of server/ and unmask_kernels/ nor their
packages (server.api, server.engine, ...; unmask_kernels as one) import in a circle. Every
import counts, also those inside functions (lazy) and under TYPE_CHECKING; the root
`server/__init__.py` is a facade re-exporting the public API and is left out as a source."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("server", "unmask_kernels")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str) -> set[str]:
    """Every module of ours this file imports (a `from pkg import name` counts as pkg.name when
    that is a module, else pkg)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m.split(".")[0] in PACKAGES}


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        if name == "server":
            continue
        deps = {m for m in _imports(path, name) if m in files and m != name}
        graph[name] = deps - {"server"}
    return graph


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[0] if parts[0] == "unmask_kernels" else ".".join(parts[:2])


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as e:
        return list(e.args[1])
    return None


def test_modules_import_without_cycles() -> None:
    graph = _graph()
    assert len(graph) > 50  # the walk found the code
    assert _cycle(graph) is None, f"module import cycle: {' -> '.join(_cycle(graph) or [])}"


def test_packages_import_without_cycles() -> None:
    packages: dict[str, set[str]] = {}
    for mod, deps in _graph().items():
        mine = _package(mod)
        packages.setdefault(mine, set()).update(_package(d) for d in deps if _package(d) != mine)
    assert {"server.api", "server.engine", "server.model", "server.runner"} <= set(packages)
    cycle = _cycle(packages)
    assert cycle is None, f"package import cycle: {' -> '.join(cycle or [])}"


@pytest.mark.parametrize("graph", [{"a": {"b"}, "b": {"a"}}, {"a": {"b"}, "b": {"c"},
                                                              "c": {"a"}}])
def test_a_cycle_is_found(graph: dict[str, set[str]]) -> None:
    assert _cycle(graph) is not None


def test_nothing_unpickles() -> None:
    """No module of ours imports a pickle-family deserializer: the rank group exchanges int64
    tensors and JSON. (The API ↔ engine process pipes are `multiprocessing` one-way OS pipes
    between a parent and the child it spawned, not sockets.)"""
    banned = {"pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve"}
    found = []
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                found += [f"{path.relative_to(ROOT)}: {n}" for n in names
                          if n.split(".")[0] in banned]
    assert found == []
    process = (ROOT / "server/engine/process.py").read_text()
    assert process.count("Pipe(duplex=False)") == 2 and "Listener" not in process
