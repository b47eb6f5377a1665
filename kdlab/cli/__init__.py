"""The ``kdlab`` command (``kdlab.cli.main``). Each subcommand's module imports what it needs when it runs, so
``kdlab --help`` stays fast (no torch, no MLflow)."""

from kdlab.cli.main import build_parser, main

__all__ = ["main", "build_parser"]
