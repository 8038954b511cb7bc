"""The ``uniseg-hub`` command line. Each subcommand lives in a module of this package that defines
``register(subparsers)`` and sets ``func`` on its parser; this file only discovers and dispatches them."""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
import traceback
from typing import Sequence

from .. import __version__

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="uniseg-hub",
        description="UniSeg (MICCAI 2023) as a pretrained backbone hub: convert weights, inspect checkpoints, "
        "segment scans, fine-tune and benchmark.",
    )
    parser.add_argument("--version", action="version", version=f"uniseg-hub {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``uniseg-hub``; every error becomes one line ``uniseg-hub <command>: error: ...`` on stderr and exit code
    1 (``-v``: the traceback too); Ctrl-C exits with 130. argparse's own usage errors exit with 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"uniseg-hub {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 (the one place that turns any error into a message for people)
        if args.verbose:
            traceback.print_exc()
        print(f"uniseg-hub {args.command}: error: {error_message(e)}", file=sys.stderr)
        return 1


def error_message(e: BaseException) -> str:
    """One line for a person: the message of our own errors (ValueError, TypeError ...), the errno text and path
    of OS errors, and the exception type for anything else (an unexpected error, with a hint to ``-v``)."""
    if isinstance(e, OSError) and e.strerror:
        where = f": {e.filename}" if e.filename else ""
        text = f"{e.strerror}{where}"
    elif isinstance(e, KeyError):
        text = str(e.args[0]) if e.args else "missing key"
    else:
        text = str(e) or type(e).__name__
    if not isinstance(e, (ValueError, TypeError, KeyError, OSError, RuntimeError)):
        text = f"{type(e).__name__}: {text} (unexpected; rerun with -v for the traceback and report it)"
    return " ".join(text.split())  # one line
