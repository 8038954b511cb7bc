"""The package's own import graph (read with ``ast``, imports inside functions included) has no cycle, and the
weights loader never imports a model (the model classes reach it as arguments, timm's builder pattern)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "uniseg_hub"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """``{module: uniseg_hub modules it imports}``; ``from pkg import name`` counts as ``pkg.name`` when that is a module."""
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules]
                deps.update(subs if subs else [target] if target in modules else [])
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in modules)
        deps.discard(name)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    graph = import_graph()
    assert {"uniseg_hub.model", "uniseg_hub.hub", "uniseg_hub.adapters", "uniseg_hub.weights.loader"} <= set(graph)
    assert "uniseg_hub.weights.loader" in graph["uniseg_hub.model"]  # the graph sees the real edges
    assert cycles(graph) == []


def test_weights_layer_imports_no_model_and_registry_no_torch():
    graph = import_graph()
    models = {"uniseg_hub.model", "uniseg_hub.encoder", "uniseg_hub.decoder", "uniseg_hub.prompt", "uniseg_hub.adapters",
              "uniseg_hub.hub"}
    for name in ("uniseg_hub.weights", "uniseg_hub.weights.loader", "uniseg_hub.weights.registry"):
        assert not graph[name] & models, (name, graph[name] & models)
    registry = (PKG / "weights" / "registry.py").read_text()
    assert "import torch" not in registry
