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
    assert {"uniseg_hub.models.uniseg", "uniseg_hub.hub", "uniseg_hub.models.adapters", "uniseg_hub.weights.loader"} <= set(graph)
    assert "uniseg_hub.weights.loader" in graph["uniseg_hub.models.uniseg"]  # the graph sees the real edges
    assert cycles(graph) == []


def test_weights_layer_imports_no_model_and_registry_no_torch():
    graph = import_graph()
    models = {"uniseg_hub.models.uniseg", "uniseg_hub.models.encoder", "uniseg_hub.models.decoder", "uniseg_hub.models.prompt", "uniseg_hub.models.adapters",
              "uniseg_hub.hub"}
    for name in ("uniseg_hub.weights", "uniseg_hub.weights.loader", "uniseg_hub.weights.registry"):
        assert not graph[name] & models, (name, graph[name] & models)
    registry = (PKG / "weights" / "registry.py").read_text()
    assert "import torch" not in registry


#: The layers, bottom up: a module imports only from its own layer or below (no upward import).
LAYERS = {
    "jsonconfig": 0, "config": 0, "plots": 0, "_moved": 0, "_hugepages": 0, "atomic": 0, "resources": 0,
    "weights": 1,
    "models": 2, "data": 2,
    "preprocessing": 3,
    "inference": 4,
    "training": 5, "export": 5, "interop": 5,
    "hub": 6, "timm_models": 6,
    "": 7, "cli": 7, "demo": 7, "__main__": 7,
}


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    return LAYERS[top]


def test_layout_has_no_upward_import():
    graph = import_graph()
    assert set(LAYERS) >= {m.split(".")[1] if "." in m else "" for m in graph}, "a new top-level module needs a layer"
    upward = sorted((m, d) for m, deps in graph.items() for d in deps if _layer(d) > _layer(m))
    assert upward == []


def test_no_module_over_500_lines():
    long = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > 500}
    assert long == {}


def test_moved_modules_still_import_from_their_old_path_with_a_warning():
    import importlib
    import subprocess
    import sys

    from uniseg_hub._moved import MOVED

    for old, new in MOVED.items():
        assert importlib.util.find_spec(new) is not None, new
    code = ("import warnings, importlib; warnings.filterwarnings('error', '.* moved to ', FutureWarning)\n"
            "import uniseg_hub.models.adapters as new\n"
            "try:\n    import uniseg_hub.adapters\nexcept FutureWarning as w:\n    print('warned:', w)\n"
            "warnings.simplefilter('ignore')\n"
            "from uniseg_hub.adapters import from_upstream\n"
            "import uniseg_hub.adapters as old\n"
            "print(old is new, from_upstream is new.from_upstream)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "warned: uniseg_hub.adapters moved to uniseg_hub.models.adapters" in out
    assert out.strip().endswith("True True")
