"""Subcommands of ``uniseg-hub``: every module here defines ``register(subparsers)`` and sets ``func`` on its parser."""
