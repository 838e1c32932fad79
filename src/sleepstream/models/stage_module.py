"""Training of a :class:`~sleepstream.models.net.StageGRU`: wake / NREM / REM and wake / light /
deep / REM from the same causal features, with PyTorch Lightning.

The data module gives wake / light / deep / REM labels (``data.task: wake_light_deep_rem``);
wake / NREM / REM follows from them (light and deep are NREM). The loss is the sum of one
class-weighted cross-entropy per task.

Class balance
-------------
Wake (9 % of scored epochs) and deep sleep (14 %) are scarce. With ``class_weight="balanced"``
each class's weight is ``n / (k * n_c)`` over the training nights' scored epochs (``n`` epochs,
``k`` classes, ``n_c`` of class ``c``): every class weighs as much as the others in the loss, as
scikit-learn's ``class_weight="balanced"`` does for the stage baselines. ``"sqrt"`` takes the
square root of those weights (half way to no weighting); ``"none"`` weighs every epoch alike.
The weights are computed from the training nights of each fit (never the held-out night) and
kept as buffers, so a checkpoint says what it was trained with.
"""

from __future__ import annotations

from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MulticlassCohenKappa

from sleepstream.models.datamodule import Batch
from sleepstream.models.module import SleepWakeModule
from sleepstream.models.net import STAGE_OUTPUTS, StageGRU, stage_logits

CLASS_WEIGHTINGS = ("balanced", "sqrt", "none")
"""How :class:`StageModule` weighs the classes in its loss (see the module docstring)."""

FOUR_TO_THREE = torch.tensor([0, 1, 1, 2])
"""Wake / light / deep / REM class index -> wake / NREM / REM class index."""


def class_weights(labels: np.ndarray, n_classes: int, weighting: str) -> Tensor:
    """Loss weight of each class from scored ``labels`` (``>= 0``), see :data:`CLASS_WEIGHTINGS`.

    A class absent from ``labels`` gets weight 1.

    Examples
    --------
    >>> class_weights(np.array([0, 1, 1, 1, -1]), 2, "balanced").tolist()
    [2.0, 0.6666666865348816]
    >>> class_weights(np.array([0, 1, 1, 1]), 2, "none").tolist()
    [1.0, 1.0]
    """
    if weighting not in CLASS_WEIGHTINGS:
        raise ValueError(f"class_weight must be one of {CLASS_WEIGHTINGS}, got {weighting!r}")
    y = np.asarray(labels)
    counts = np.bincount(y[y >= 0].astype(np.int64), minlength=n_classes).astype(np.float64)
    weights = np.ones(n_classes)
    if weighting != "none" and counts.sum() > 0:
        present = counts > 0
        weights[present] = counts.sum() / (n_classes * counts[present])
        if weighting == "sqrt":
            weights = np.sqrt(weights)
    return torch.as_tensor(weights, dtype=torch.float32)


class StageModule(SleepWakeModule):
    """Sleep stages per epoch (both tasks of :data:`~sleepstream.models.net.STAGE_OUTPUTS`);
    unscored epochs (-1) carry no loss.

    Parameters
    ----------
    net
        A :class:`~sleepstream.models.net.StageGRU`.
    lr, weight_decay, ema_decay
        As for :class:`~sleepstream.models.module.SleepWakeModule` (AdamW, warm-up then cosine).
    class_weight
        ``"balanced"``, ``"sqrt"`` or ``"none"``: how the classes are weighed in each task's
        cross-entropy (module docstring).
    label_smoothing
        Cross-entropy label smoothing (0: none).
    """

    def __init__(
        self,
        net: StageGRU,
        lr: float = 3e-3,
        weight_decay: float = 1e-3,
        class_weight: str = "balanced",
        label_smoothing: float = 0.0,
        ema_decay: float | None = None,
    ):
        if not isinstance(net, StageGRU):
            raise TypeError(f"StageModule trains a StageGRU, got {type(net).__name__}")
        if class_weight not in CLASS_WEIGHTINGS:
            raise ValueError(
                f"class_weight must be one of {CLASS_WEIGHTINGS}, got {class_weight!r}"
            )
        super().__init__(net, lr=lr, weight_decay=weight_decay, ema_decay=ema_decay)
        self.save_hyperparameters(ignore=["net"])
        for task, n_classes in STAGE_OUTPUTS.items():
            self.register_buffer(f"weight_{task}", torch.ones(n_classes))
        self.val_kappas = torch.nn.ModuleDict(
            {task: MulticlassCohenKappa(n, ignore_index=-1) for task, n in STAGE_OUTPUTS.items()}
        )

    def _kappa(self, task: str) -> MulticlassCohenKappa:
        return cast(MulticlassCohenKappa, self.val_kappas[task])

    def on_fit_start(self) -> None:
        super().on_fit_start()
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "train_labels"):
            return
        if datamodule.label_map.name != "wake_light_deep_rem":
            raise ValueError(
                "StageModule learns from wake / light / deep / REM labels: set data.task to "
                f"wake_light_deep_rem (got {datamodule.label_map.name})"
            )
        four = datamodule.train_labels()
        three = np.where(four >= 0, FOUR_TO_THREE.numpy()[np.clip(four, 0, 3)], -1)
        weighting = self.hparams["class_weight"]
        for task, labels in (("wake_nrem_rem", three), ("wake_light_deep_rem", four)):
            weights = class_weights(labels, STAGE_OUTPUTS[task], weighting)
            getattr(self, f"weight_{task}").copy_(weights.to(self.device))

    def targets(self, y: Tensor) -> dict[str, Tensor]:
        """Labels of each task from wake / light / deep / REM ones (-1 stays -1)."""
        three = FOUR_TO_THREE.to(y.device)[y.clamp(min=0)]
        return {
            "wake_nrem_rem": torch.where(y >= 0, three, -1),
            "wake_light_deep_rem": y,
        }

    def loss(self, logits: Tensor, y: Tensor) -> Tensor:
        total = logits.new_zeros(())
        targets = self.targets(y)
        for task, part in stage_logits(logits).items():
            target = targets[task]
            if not (target >= 0).any():
                continue
            total = total + F.cross_entropy(
                part.reshape(-1, part.shape[-1]),
                target.reshape(-1),
                weight=getattr(self, f"weight_{task}"),
                ignore_index=-1,
                label_smoothing=self.hparams["label_smoothing"],
            )
        return total

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        x, y = batch
        logits, _ = self.inference_net(self._inputs(x))
        self.log("val_loss", self.loss(logits, y), batch_size=x.shape[0])
        self._update_kappa(logits, y)

    def on_validation_epoch_end(self) -> None:
        self._log_kappa("val", prog_bar=True)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        x, y = batch
        logits, _ = self.inference_net(self._inputs(x))
        self._update_kappa(logits, y)

    def on_test_epoch_end(self) -> None:
        self._log_kappa("test")

    def _update_kappa(self, logits: Tensor, y: Tensor) -> None:
        """Each task's kappa metric takes the batch's argmax classes against its targets."""
        targets = self.targets(y)
        for task, part in stage_logits(logits).items():
            self._kappa(task).update(part.argmax(-1).reshape(-1), targets[task].reshape(-1))

    def _log_kappa(self, prefix: str, prog_bar: bool = False) -> None:
        """Log each task's kappa of the epoch (``{prefix}_kappa_{task}``) and start anew."""
        for task in STAGE_OUTPUTS:
            metric = self._kappa(task)
            self.log(f"{prefix}_kappa_{task}", metric.compute(), prog_bar=prog_bar)
            metric.reset()

    def predict_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """Class probabilities ``(batch, time, 7)``: each task's softmax, side by side."""
        x, _ = batch
        logits, _ = self.inference_net(self._inputs(x))
        return torch.cat([torch.softmax(p, -1) for p in stage_logits(logits).values()], -1)
