"""The ``sleepstream`` command: arguments in, one library call per subcommand.

``sleepstream --help`` lists the subcommands, ``sleepstream COMMAND --help`` their options.
Each subcommand lives in a module of :mod:`sleepstream.commands` (or of the package it
belongs to) with an ``add_parser(commands)`` function; :data:`COMMANDS` names those modules.
Results (tables, JSON, the paths written) go to stdout; logs, progress and the live view to
stderr. Every output path (``--out``, ``--docs``, ``--dest``) is checked before any work starts
(:mod:`sleepstream.paths`), and every file is written whole or not at all.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from sleepstream.commands import lightning
from sleepstream.logs import setup_logging

log = logging.getLogger("sleepstream")

COMMANDS = (
    "sleepstream.commands.lightning",  # fit, validate, test, predict
    "sleepstream.commands.data",  # data fetch, data check
    "sleepstream.commands.evaluate",  # baselines, cv, report
    "sleepstream.commands.models",  # ship, export
    "sleepstream.commands.replay",
    "sleepstream.score.command",  # score
    "sleepstream.commands.serve",  # serve, simulate
    "sleepstream.evaluation.sparse",  # sparse-study
    "sleepstream.review",  # review
    "sleepstream.evaluation.stage_nets",  # stages
)
"""Modules whose ``add_parser(commands)`` adds subcommands, in the order of ``--help``.

A new subcommand is one line here: a module with ``add_parser`` that adds its parser to
``commands`` and sets ``run`` (``parser.set_defaults(run=...)``), a function of the parsed
arguments returning the exit code (see :mod:`sleepstream.commands`).
"""

GLOBAL_FLAGS = {"-v": "verbose", "--verbose": "verbose", "-q": "quiet", "--quiet": "quiet"}
"""Options of ``sleepstream`` itself, given before the subcommand."""


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand in :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="sleepstream", description="Real-time sleep detection from Apple Watch sensors."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(name).add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sleepstream`` command.

    Exit codes: 0 done, 1 bad input or a failed check, 2 a file or folder that cannot be read or
    written, 3 any other error (one line; the traceback with ``--verbose``), 130 interrupted
    (Ctrl-C). ``fit``, ``validate``, ``test`` and ``predict`` go to LightningCLI with their
    arguments unparsed (:mod:`sleepstream.commands.lightning`).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    flags = {GLOBAL_FLAGS[arg] for arg in _leading_flags(argv)}
    command = argv[len(_leading_flags(argv)) :]
    if command and command[0] in lightning.COMMANDS:
        setup_logging(verbose="verbose" in flags)
        return lightning.run(command, quiet="quiet" in flags)
    args = build_parser().parse_args(argv)
    setup_logging(verbose=args.verbose)
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        log.error("Interrupted")
        return 130
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        log.error("%s", _one_line(error))
        return 1
    except OSError as error:
        log.error("%s", _one_line(error))
        return 2
    except Exception as error:  # a library's own error type, or a bug: one line, unless -v
        if args.verbose:
            raise
        log.error(
            "%s: %s (run with --verbose for the traceback)", type(error).__name__, _one_line(error)
        )
        return 3


def _leading_flags(argv: Sequence[str]) -> list[str]:
    """The :data:`GLOBAL_FLAGS` at the start of ``argv``, before the subcommand."""
    flags: list[str] = []
    for arg in argv:
        if arg not in GLOBAL_FLAGS:
            break
        flags.append(arg)
    return flags


def _one_line(error: BaseException) -> str:
    """The message of ``error`` on one line (its type name when it has no message)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return "; ".join(lines) or type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
