"""``sleepstream fit|validate|test|predict``: the model's LightningCLI.

These four take LightningCLI's own arguments (``sleepstream fit --help`` lists the model's and
the data's parameters), so :func:`sleepstream.cli.main` hands their arguments to
:func:`run` without parsing them; :func:`add_parser` only lists them in ``sleepstream --help``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from sleepstream.commands import Subparsers

COMMANDS = {
    "fit": "train a model (LightningCLI: fit -c CONFIG)",
    "validate": "validation loss, AUROC and kappa (LightningCLI)",
    "test": "AUROC and kappa on --data.held_out (LightningCLI)",
    "predict": "p(sleep) per epoch of held-out nights (LightningCLI)",
}
"""The subcommands handed to LightningCLI, with their line in ``sleepstream --help``."""


def add_parser(commands: Subparsers) -> argparse.ArgumentParser:
    for name, text in COMMANDS.items():
        p = commands.add_parser(name, help=text)
    return p


def run(argv: Sequence[str], quiet: bool = False) -> int:
    """Run ``argv`` (``fit -c CONFIG ...``) through LightningCLI; 0 when it returns.

    ``quiet`` (``sleepstream -q fit ...``) turns Lightning's progress bar off. Lightning's DDP
    launcher starts the other processes of ``--trainer.strategy ddp`` as ``sleepstream`` with
    the same ``argv``; :func:`~sleepstream.models.training.build_cli` sets ``sys.argv`` to it
    while the command runs.
    """
    from sleepstream.models.training import build_cli

    quiet_args = ["--trainer.enable_progress_bar", "false"] if quiet else []
    build_cli([*argv, *quiet_args] if "--help" not in argv and "-h" not in argv else list(argv))
    return 0
