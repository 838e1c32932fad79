"""The subcommands of ``sleepstream``: one module per command group.

Each module has ``add_parser(commands)``: it adds its subcommand(s) to the ``argparse``
subparsers ``commands`` and sets ``run`` on each (``parser.set_defaults(run=...)``), a function
of the parsed arguments that returns the exit code. A ``run`` function checks the arguments and
output paths, makes one library call, and prints its result to stdout; the work itself lives in
the library modules. A new subcommand is one line in :data:`sleepstream.cli.COMMANDS`: the name
of a module with ``add_parser``.

Heavy libraries (torch, Lightning, the converters) are imported inside the ``run`` functions, so
``sleepstream --help`` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TypeAlias

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""What ``add_parser`` receives: ``parser.add_subparsers(...)`` of the ``sleepstream`` parser."""

DATA_HELP = "data folder (default: $SLEEPSTREAM_DATA)"
DOCS_HELP = "also copy the markdown table here"


def optional_path(value: str | None) -> Path | None:
    """``Path(value)``, or None for a missing or empty argument."""
    return Path(value) if value else None


def folds_arg(value: str | None) -> list[str] | None:
    """``--folds 1,2,3`` as a list of subjects (None: all)."""
    return value.split(",") if value else None
