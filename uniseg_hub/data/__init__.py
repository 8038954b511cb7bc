"""Data: the :class:`Case` record, and readers for downstream data sets."""

from .case import Case

__all__ = ["Case"]
