"""Import paths of modules that moved into the layered layout: ``import uniseg_hub.adapters`` still works,
gives the module at its new path (the same module object) and a ``FutureWarning`` naming that path."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

#: old module → new module (the one declaration of what moved).
MOVED = {
    "uniseg_hub.adapters": "uniseg_hub.models.adapters",
    "uniseg_hub.model": "uniseg_hub.models.uniseg",
    "uniseg_hub.encoder": "uniseg_hub.models.encoder",
    "uniseg_hub.decoder": "uniseg_hub.models.decoder",
    "uniseg_hub.prompt": "uniseg_hub.models.prompt",
    "uniseg_hub.layers": "uniseg_hub.models.layers",
    "uniseg_hub.perf": "uniseg_hub.models.perf",
    "uniseg_hub.report": "uniseg_hub.weights.report",
    "uniseg_hub.formats": "uniseg_hub.weights",
    "uniseg_hub.formats.nnunet_v1": "uniseg_hub.weights.nnunet_v1",
    "uniseg_hub.formats.safetensors_dir": "uniseg_hub.weights.safetensors_dir",
    "uniseg_hub.commands": "uniseg_hub.cli",
    "uniseg_hub.commands.benchmark": "uniseg_hub.cli.benchmark",
    "uniseg_hub.commands.convert": "uniseg_hub.cli.convert",
    "uniseg_hub.commands.export": "uniseg_hub.cli.export",
    "uniseg_hub.commands.finetune": "uniseg_hub.cli.finetune",
    "uniseg_hub.commands.info": "uniseg_hub.cli.info",
    "uniseg_hub.commands.predict": "uniseg_hub.cli.predict",
    "uniseg_hub.demo_data": "uniseg_hub.demo.data",
    "uniseg_hub.demo_figures": "uniseg_hub.demo.figures",
    "uniseg_hub.preview": "uniseg_hub.plots.preview",
    "uniseg_hub.plotting": "uniseg_hub.plots.style",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec):  # noqa: ANN001 (importlib protocol)
        warnings.warn(f"{spec.name} moved to {self.target}; import it from there", FutureWarning, stacklevel=2)
        return importlib.import_module(self.target)

    def exec_module(self, module) -> None:  # noqa: ANN001 (the target module is already executed)
        pass


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds the old names of :data:`MOVED` (and nothing else) and loads them as their new module."""

    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001 (importlib protocol)
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, _Alias(MOVED[fullname]))


def install() -> None:
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())  # before the path finder, which would load a moved module twice
