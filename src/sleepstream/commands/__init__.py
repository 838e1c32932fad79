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
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from sleepstream.records import Recording

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""What ``add_parser`` receives: ``parser.add_subparsers(...)`` of the ``sleepstream`` parser."""

DATA_HELP = "data folder (default: $SLEEPSTREAM_DATA)"
DOCS_HELP = "also copy the markdown table here"


def optional_path(value: str | None) -> Path | None:
    """``Path(value)``, or None for a missing or empty argument.

    >>> optional_path("night.csv"), optional_path("")
    (PosixPath('night.csv'), None)
    """
    return Path(value) if value else None


def folds_arg(value: str | None) -> list[str] | None:
    """``--folds 1,2,3`` as a list of subjects (None: all).

    >>> folds_arg("46343,1360686"), folds_arg(None)
    (['46343', '1360686'], None)
    """
    return value.split(",") if value else None


def add_night_source(p: argparse.ArgumentParser) -> None:
    """The night a command reads: ``--subject`` of the data folder, or a user's files
    (``--heart-rate`` with ``--motion``, ``--counts``, ``--labels``; their times read as
    ``--time-unit`` says, and as the command's own ``--timezone`` says: each command adds that
    option with what it does there). :func:`user_recording` reads the files."""
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--subject", help="a subject of the data folder")
    source.add_argument(
        "--heart-rate", help="a user's heart-rate file (time,bpm; time: see --time-unit)"
    )
    p.add_argument("--motion", help="with --heart-rate: raw acceleration (time x y z, g)")
    p.add_argument("--counts", help="with --heart-rate: activity counts (time,count)")
    p.add_argument("--labels", help="with --heart-rate: PSG labels (time stage)")
    p.add_argument(
        "--time-unit",
        metavar="UNIT",
        help="unit of numeric times in the files: s, ms or us (default: seconds, relative or "
        "since 1970; files that look like ms or us are refused). ISO-8601 times with a UTC "
        "offset (2026-03-29T01:59:30+01:00) are read as they are",
    )


def user_recording(a: argparse.Namespace) -> Recording:
    """The night in the files of :func:`add_night_source` (``--heart-rate`` ...), read by
    :func:`~sleepstream.data.parse.read_user_recording` (errors name the file and line)."""
    from sleepstream.data.parse import read_user_recording

    files = [optional_path(f) for f in (a.motion, a.counts, a.labels)]
    return read_user_recording(
        Path(a.heart_rate), *files, time_unit=a.time_unit, timezone=a.timezone
    )
