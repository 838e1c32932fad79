"""Training of a :class:`~sleepstream.models.net.SleepNet` with PyTorch Lightning.

The network is handed in (LightningCLI builds it from the YAML); this module adds the loss
(class-weighted binary cross-entropy, optionally focal), validation metrics from torchmetrics,
an optional exponential moving average of the weights, and the optimiser.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import Tensor
from torchmetrics.classification import BinaryAUROC, BinaryCohenKappa

from sleepstream.features import FEATURE_NAMES
from sleepstream.models.datamodule import Batch
from sleepstream.models.net import SleepNet, build_net


class SleepWakeModule(L.LightningModule):
    """Sleep (1) vs wake (0) per epoch; unscored epochs (-1) carry no loss.

    Parameters
    ----------
    net
        The network; its ``feature_names`` pick columns of the full causal feature vector.
    lr, weight_decay
        AdamW settings; the learning rate warms up, then follows a cosine schedule to zero.
    wake_weight
        Loss weight of wake epochs relative to sleep (wake is ~9 % of epochs).
    focal_gamma
        0 for plain cross-entropy; > 0 down-weights easy epochs (focal loss).
    ema_decay
        If set, validation, test and prediction use an exponential moving average of the weights.
    """

    columns: Tensor

    def __init__(
        self,
        net: SleepNet,
        lr: float = 3e-3,
        weight_decay: float = 1e-3,
        wake_weight: float = 2.0,
        focal_gamma: float = 0.0,
        ema_decay: float | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        self.net = net
        self.register_buffer(
            "columns", torch.tensor([FEATURE_NAMES.index(n) for n in net.feature_names])
        )
        self.ema: SleepNet | None = None
        if ema_decay is not None:
            self.ema = copy.deepcopy(net)
            self.ema.requires_grad_(False)
        self.val_auroc = BinaryAUROC()
        self.val_kappa = BinaryCohenKappa()

    @property
    def inference_net(self) -> SleepNet:
        """The averaged weights when EMA is on, else the trained ones."""
        return self.ema if self.ema is not None else self.net

    def on_fit_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "train_features"):
            columns = self.columns.cpu().numpy()
            self.net.normalise.fit(datamodule.train_features()[:, columns])
        if self.ema is not None and self.global_step == 0:
            self.ema.load_state_dict(self.net.state_dict())

    def _inputs(self, x: Tensor) -> Tensor:
        return x[..., self.columns]

    def loss(self, logits: Tensor, y: Tensor) -> Tensor:
        scored = y >= 0
        target = y.clamp(min=0).float()
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        weight = torch.where(y == 0, self.hparams["wake_weight"], 1.0)
        gamma = self.hparams["focal_gamma"]
        if gamma > 0:
            p_true = torch.exp(-bce)
            weight = weight * (1 - p_true) ** gamma
        return (bce * weight * scored).sum() / (weight * scored).sum().clamp(min=1e-6)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        x, y = batch
        logits, _ = self.net(self._inputs(x))
        loss = self.loss(logits, y)
        self.log("train_loss", loss, prog_bar=True, batch_size=x.shape[0])
        return loss

    def on_train_batch_end(self, outputs: object, batch: Batch, batch_idx: int) -> None:
        if self.ema is None:
            return
        decay = float(self.hparams["ema_decay"])
        with torch.no_grad():
            for averaged, current in zip(
                self.ema.state_dict().values(), self.net.state_dict().values(), strict=True
            ):
                if averaged.dtype.is_floating_point:
                    averaged.mul_(decay).add_(current, alpha=1 - decay)
                else:
                    averaged.copy_(current)

    def _scored_probabilities(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        x, y = batch
        logits, _ = self.inference_net(self._inputs(x))
        scored = y >= 0
        return logits, torch.sigmoid(logits[scored]), y[scored]

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        logits, p, y = self._scored_probabilities(batch)
        self.log("val_loss", self.loss(logits, batch[1]), batch_size=batch[0].shape[0])
        self.val_auroc.update(p, y)
        self.val_kappa.update(p, y)

    def on_validation_epoch_end(self) -> None:
        self.log("val_auroc", self.val_auroc.compute(), prog_bar=True)
        self.log("val_kappa", self.val_kappa.compute(), prog_bar=True)
        self.val_auroc.reset()
        self.val_kappa.reset()

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        _, p, y = self._scored_probabilities(batch)
        self.val_auroc.update(p, y)
        self.val_kappa.update(p, y)

    def on_test_epoch_end(self) -> None:
        self.log("test_auroc", self.val_auroc.compute())
        self.log("test_kappa", self.val_kappa.compute())
        self.val_auroc.reset()
        self.val_kappa.reset()

    def predict_step(self, batch: Batch, batch_idx: int) -> Tensor:
        x, _ = batch
        logits, _ = self.inference_net(self._inputs(x))
        return torch.sigmoid(logits)

    def _lr_factor(self, step: int) -> float:
        """Linear warm-up over the first 10 % of steps, then cosine decay to zero.

        Computed from the trainer's current length, so a run resumed with more epochs
        stretches the schedule instead of running past its end.
        """
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warm = max(1, total // 10)
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        optimizer = torch.optim.AdamW(
            self.net.parameters(),
            lr=self.hparams["lr"],
            weight_decay=self.hparams["weight_decay"],
        )
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The network is not a hyperparameter (it is handed in), so say how to rebuild it.
        checkpoint["sleepstream_net"] = {
            "architecture": type(self.net).__name__,
            "init_args": self.net.init_args,
        }


def net_from_checkpoint(path: str | Path) -> SleepNet:
    """The network of a checkpoint written by training (the averaged weights when EMA was on)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # never runs code
    if "sleepstream_net" not in checkpoint:
        raise ValueError(f"{path} is not a sleepstream checkpoint (no 'sleepstream_net' entry)")
    spec = checkpoint["sleepstream_net"]
    net = build_net(spec["architecture"], spec["init_args"])
    state = checkpoint["state_dict"]
    prefix = "ema." if any(k.startswith("ema.") for k in state) else "net."
    net.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    return net.eval()
