"""Module surgery: the one helper that swaps submodules in place (used by :mod:`uniseg_hub.models.perf` and
:mod:`uniseg_hub.export`)."""

from __future__ import annotations

from typing import Callable

from torch import nn

__all__ = ["replace_modules"]


def replace_modules(model: nn.Module, match: Callable[[nn.Module], bool], make: Callable[[nn.Module], nn.Module]) -> int:
    """Replace, in place, every submodule ``m`` of ``model`` with ``match(m)`` by ``make(m)``; return how many.

    Works for named attributes and for the integer-named children of ``nn.Sequential`` / ``nn.ModuleList``. The
    children are listed before anything is replaced, so a replacement is never visited again (a new module that
    also matches is not replaced twice). ``model`` itself is never replaced.
    """
    todo = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children() if match(child)]
    for parent, name, child in todo:
        setattr(parent, name, make(child))
    return len(todo)
