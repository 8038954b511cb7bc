"""The load report: what every weight load did to every key.

No anchor library has this: ``load_state_dict`` tells missing/unexpected keys, but not which tensors were
*adapted* (a prompt channel dropped, a head re-initialised for a new class count, a stem adapted to new input
channels) or which were left at random initialisation. Every loader and adapter in uniseg_hub returns one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import nn

__all__ = ["LoadReport", "LoadError", "load_with_report"]


class LoadError(ValueError):
    """Weights do not fit the model (unexpected or shape-mismatched keys) and the caller did not opt in."""


@dataclass
class LoadReport:
    """What a load did.

    Attributes:
        source: where the weights came from (path, hub id, ...).
        matched: model keys loaded unchanged from the checkpoint.
        adapted: model key → what was done to the checkpoint tensor to make it fit.
        dropped: checkpoint keys deliberately not used (e.g. the prompt when building a backbone).
        unexpected: checkpoint keys with no place in the model (an error unless allowed).
        mismatched: model key → ``(checkpoint shape, model shape)`` (an error unless allowed).
        random_init: model keys left at their random initialisation.
        frozen: parameters an adapter froze (``requires_grad=False``, norm statistics fixed).
    """

    source: str = ""
    matched: list[str] = field(default_factory=list)
    adapted: dict[str, str] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    random_init: list[str] = field(default_factory=list)
    frozen: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No unexpected and no shape-mismatched keys."""
        return not self.unexpected and not self.mismatched

    def summary(self) -> str:
        parts = [
            f"{len(self.matched)} matched",
            f"{len(self.adapted)} adapted",
            f"{len(self.dropped)} dropped",
            f"{len(self.random_init)} left at random init",
        ]
        if self.frozen:
            parts.append(f"{len(self.frozen)} frozen")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected")
        if self.mismatched:
            parts.append(f"{len(self.mismatched)} shape-mismatched")
        return f"load report ({self.source or 'state dict'}): " + ", ".join(parts)

    def details(self) -> str:
        lines = [self.summary()]
        for key, how in self.adapted.items():
            lines.append(f"  adapted      {key}: {how}")
        lines += [f"  dropped      {k}" for k in self.dropped]
        lines += [f"  random init  {k}" for k in self.random_init]
        lines += [f"  frozen       {k}" for k in self.frozen]
        lines += [f"  unexpected   {k}" for k in self.unexpected]
        lines += [f"  mismatched   {k}: checkpoint {a} vs model {b}" for k, (a, b) in self.mismatched.items()]
        return "\n".join(lines)

    __str__ = details

    def to_dict(self) -> dict:
        """JSON-friendly form (for logs and ``uniseg-hub info --json``)."""
        return dict(source=self.source, matched=list(self.matched), adapted=dict(self.adapted), dropped=list(self.dropped),
                    unexpected=list(self.unexpected), random_init=list(self.random_init),
                    mismatched={k: [list(a), list(b)] for k, (a, b) in self.mismatched.items()})

    def log(self, logger: logging.Logger, level: int = logging.INFO) -> None:
        logger.log(level, "%s", self.details())

    def raise_for_errors(self, missing_is_error: bool = False) -> None:
        """Raise :class:`LoadError` naming every unexpected and mismatched key (and, if asked, missing ones)."""
        if self.ok and not (missing_is_error and self.random_init):
            return
        msg = ["the weights do not fit the model:"]
        if self.unexpected:
            msg.append(f"{len(self.unexpected)} checkpoint key(s) have no place in the model: {self.unexpected[:8]}"
                       + (" ..." if len(self.unexpected) > 8 else ""))
        if self.mismatched:
            items = [f"{k} checkpoint {a} vs model {b}" for k, (a, b) in list(self.mismatched.items())[:8]]
            msg.append(f"{len(self.mismatched)} shape mismatch(es): " + "; ".join(items))
        if missing_is_error and self.random_init:
            msg.append(f"{len(self.random_init)} model key(s) would stay at random init: {self.random_init[:8]}")
        msg.append("Pass strict=False to load what fits and keep the rest at random init (see the load report).")
        raise LoadError(" ".join(msg))


def load_with_report(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    strict: bool = True,
    source: str = "",
    adapted: Mapping[str, str] | None = None,
    dropped: list[str] | None = None,
    assign: bool = False,
) -> LoadReport:
    """Load ``state_dict`` (already in ``model``'s key names) into ``model`` and report what happened.

    With ``strict=True`` (the default) unexpected keys, shape mismatches and model keys missing from the
    checkpoint raise :class:`LoadError` *before* any tensor is copied; with ``strict=False`` whatever fits is
    loaded and the rest is listed in the report. ``adapted``/``dropped`` are recorded as given (the caller
    already transformed those tensors / removed those keys). ``assign=True`` makes the checkpoint tensors the
    model's parameters instead of copying into them (``nn.Module.load_state_dict(assign=True)``); use it for a
    model built on the ``meta`` device, whose every key the state dict must then provide.
    """
    own = model.state_dict()
    report = LoadReport(source=source, adapted=dict(adapted or {}), dropped=list(dropped or []))
    loadable = {}
    for key, value in state_dict.items():
        if key not in own:
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(own[key].shape):
            report.mismatched[key] = (tuple(value.shape), tuple(own[key].shape))
        else:
            loadable[key] = value
            if key not in report.adapted:
                report.matched.append(key)
    report.random_init = [k for k in own if k not in loadable]
    if strict:
        report.raise_for_errors(missing_is_error=True)
    if assign and report.random_init:
        raise LoadError(f"assign=True needs a tensor for every model key; missing: {report.random_init[:8]}")
    model.load_state_dict(loadable, strict=False, assign=assign)
    return report
