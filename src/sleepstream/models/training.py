"""LightningCLI for the sleep/wake model, and the trained network as a LOSO predictor."""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from lightning.pytorch.cli import LightningCLI
from numpy.typing import NDArray

from sleepstream.models.datamodule import SleepDataModule
from sleepstream.models.module import SleepWakeModule
from sleepstream.models.net import SleepNet, predict_night
from sleepstream.records import Recording

log = logging.getLogger(__name__)


class SleepCLI(LightningCLI):
    """LightningCLI with stdout kept for results.

    While ``fit``, ``validate``, ``test`` or ``predict`` runs, what Lightning writes to stdout
    (the model summary, the progress bars, the metrics table) goes to stderr; ``validate`` and
    ``test`` then print their metrics to stdout as one JSON object. ``--help`` and
    ``--print_config`` write to stdout as usual. If the command fails, the caller restores
    ``sys.stdout`` (:func:`build_cli` does).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._stdout = sys.stdout
        super().__init__(*args, **kwargs)

    def before_fit(self) -> None:
        sys.stdout = sys.stderr

    before_validate = before_test = before_predict = before_fit

    def after_fit(self) -> None:
        sys.stdout = self._stdout

    after_predict = after_fit

    def after_validate(self) -> None:
        sys.stdout = self._stdout
        if self.trainer.is_global_zero:
            metrics = {k: float(v) for k, v in sorted(self.trainer.callback_metrics.items())}
            print(json.dumps(metrics, indent=2))

    after_test = after_validate


def build_cli(args: Sequence[str], run: bool = True) -> LightningCLI:
    """The LightningCLI of ``sleepstream fit|validate|test|predict`` (``run=False``: no command).

    Sets ``PYTORCH_ENABLE_MPS_FALLBACK`` so operators missing on Apple Silicon fall back to
    the CPU instead of failing. While it runs, ``sys.argv`` is the program followed by ``args``:
    Lightning's DDP launcher starts the other processes from ``sys.argv``, so ``sleepstream fit
    ... --trainer.devices 2 --trainer.strategy ddp`` starts them as ``sleepstream fit ...``
    too.
    """
    os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")
    # The arguments come from ``args`` only; without a command, none are left for a launcher.
    argv, sys.argv, stdout = sys.argv, [sys.argv[0], *(args if run else [])], sys.stdout
    try:
        with warnings.catch_warnings():
            # Lightning warns when sys.argv holds arguments too: here they are the same ones.
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
            return SleepCLI(
                SleepWakeModule,
                SleepDataModule,
                subclass_mode_model=_names_model_class(args),
                args=list(args),
                run=run,
                seed_everything_default=0,
                save_config_kwargs={"overwrite": True},
                parser_kwargs={"prog": "sleepstream"} if run else {},
            )
    finally:
        sys.argv, sys.stdout = argv, stdout


def _names_model_class(args: Sequence[str]) -> bool:
    """Whether the config files among ``args`` (``-c``/``--config``) name the Lightning module's
    class (``model: {class_path: ...}``, e.g. the stage module), so LightningCLI must accept
    any :class:`SleepWakeModule` subclass; configs of the sleep/wake module leave it out."""
    paths = [
        value
        for flag, value in zip(args, [*args[1:], ""], strict=True)
        if flag in ("-c", "--config")
    ]
    paths += [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
    if any(a.startswith("--model.class_path") for a in args):
        return True
    for path in paths:
        try:
            config = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError):
            continue  # LightningCLI reports it, with the file's name
        model = config.get("model") if isinstance(config, dict) else None
        if isinstance(model, dict) and "class_path" in model:
            return True
    return False


def train(
    config: str | Path,
    recordings: Sequence[Recording],
    overrides: Sequence[str] = (),
    *,
    quiet: bool = True,
) -> tuple[SleepWakeModule, SleepDataModule]:
    """Train the config's model on ``recordings`` (its inner validation split drawn from them).

    The weights after the last epoch are kept: the number of epochs is part of the recipe, so
    leave-one-subject-out folds and the shipped model are trained the same way.
    """
    quiet_args = [
        "--trainer.logger",
        "false",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
    ]
    if quiet:
        # One line per fold about seeds, GPUs and tips drowns the progress of a LOSO run.
        for name in ("lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)
    with (
        tempfile.TemporaryDirectory(prefix="sleepstream-train-") as root,
        warnings.catch_warnings(),
    ):
        # Lightning 2.6 calls a pytree API that torch 2.13 deprecates; nothing to act on here.
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)`")
        cli = build_cli(
            [
                "-c",
                str(config),
                *overrides,
                "--trainer.default_root_dir",
                root,
                *(quiet_args if quiet else []),
            ],
            run=False,
        )
        module, datamodule = cli.model, cli.datamodule
        if not isinstance(module, SleepWakeModule) or not isinstance(datamodule, SleepDataModule):
            raise TypeError(f"{config}: model must be a SleepWakeModule, data a SleepDataModule")
        datamodule.held_out = None
        datamodule.use_recordings(recordings)
        if not datamodule.val_subjects:
            cli.trainer.limit_val_batches = 0  # no validation nights: skip the loop, not warn
        cli.trainer.fit(module, datamodule=datamodule)
    return module, datamodule


class NetPredictor:
    """A LightningCLI config as a LOSO predictor: ``fit`` trains one model on the given nights.

    The weights after the last training epoch are kept (the number of epochs is part of the
    recipe). The LOSO driver chooses the thresholds on other folds' out-of-fold scores.

    Parameters
    ----------
    config
        LightningCLI YAML (as for ``sleepstream fit -c``).
    overrides
        Further LightningCLI arguments, e.g. ``["--trainer.max_epochs", "5"]``.
    name
        Name in the report.
    seed
        If given, overrides the config's ``seed_everything`` and ``data.seed``.
    """

    causal = True

    def __init__(
        self,
        config: str | Path,
        overrides: Sequence[str] = (),
        name: str = "",
        seed: int | None = None,
    ):
        self.config = str(config)
        self.overrides = list(overrides)
        if seed is not None:
            self.overrides += ["--seed_everything", str(seed), "--data.seed", str(seed)]
        self.seed = seed
        self.name = name or Path(self.config).stem
        self.description = f"Network trained by LightningCLI from {Path(self.config).name}"
        self.net: SleepNet | None = None

    def feature_nights(self, recordings: Sequence[Recording]) -> list[Recording]:
        """Every training sequence a fold of this recipe may use (before the fold's split)."""
        cli = build_cli(["-c", self.config, *self.overrides], run=False)
        datamodule = cli.datamodule
        if not isinstance(datamodule, SleepDataModule):
            raise TypeError(f"{self.config}: data must be a SleepDataModule")
        datamodule.held_out = None
        datamodule.val_subjects = 0
        datamodule.use_recordings(recordings)
        datamodule.setup("fit")
        return [r for variants in datamodule.train_sequences() for r in variants]

    def fit(self, recordings: Sequence[Recording]) -> None:
        module, _ = train(self.config, recordings, self.overrides)
        self.net = module.inference_net.cpu().eval()

    def predict(self, recording: Recording) -> NDArray[np.float64]:
        if self.net is None:
            raise RuntimeError("NetPredictor.predict called before fit")
        return predict_night(self.net, recording)
