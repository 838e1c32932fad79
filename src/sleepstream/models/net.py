"""Plain ``nn.Module`` sleep/wake and sleep-stage networks with a streaming ``step``.

Every network takes raw feature vectors (in the order of its ``feature_names``) and carries its
own input normalisation as buffers: ``(x - mean) / std``, with NaN (a feature that could not be
computed) mapped to 0, the training mean. So an exported network needs nothing but the
extractor's output.

Shapes: ``forward(x: (batch, time, features), state) -> (logits: (batch, time), state)`` and
``step(x: (batch, features), state) -> (logits: (batch,), state)``; repeated ``step`` equals
``forward``. The state is a tensor, ``(batch, state_size)``; memoryless networks have
``state_size == 1`` and pass it through unchanged so every network exports with the same
signature. The stage network (:class:`StageGRU`) has one logit per class of each stage task
instead: ``(batch, time, 7)`` and ``(batch, 7)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from sleepstream.features import FEATURE_NAMES, night_features, resolve_features
from sleepstream.records import Recording


class Normalise(nn.Module):
    """``(x - mean) / std`` with NaN mapped to 0; statistics set from training data only."""

    mean: Tensor
    std: Tensor

    def __init__(self, n_features: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))

    def fit(self, features: NDArray[np.float64]) -> None:
        """Set mean and standard deviation from a ``(rows, features)`` training matrix."""
        mean = np.nanmean(features, axis=0)
        std = np.nanstd(features, axis=0)
        mean = np.where(np.isfinite(mean), mean, 0.0)
        std = np.where(np.isfinite(std) & (std > 1e-6), std, 1.0)
        self.mean.copy_(torch.as_tensor(mean, dtype=self.mean.dtype))
        self.std.copy_(torch.as_tensor(std, dtype=self.std.dtype))

    def forward(self, x: Tensor) -> Tensor:
        z = (x - self.mean) / self.std
        return torch.where(torch.isnan(z), torch.zeros_like(z), z)


class SleepNet(nn.Module):
    """Base of the networks: named inputs, normalisation, and the streaming interface."""

    state_size: int
    init_args: dict[str, object]
    """The constructor arguments, so a saved network can be rebuilt (:func:`build_net`)."""

    def __init__(self, feature_names: str | Sequence[str]):
        super().__init__()
        self.feature_names = list(resolve_features(feature_names))
        self.normalise = Normalise(len(self.feature_names))

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def initial_state(self, batch: int = 1) -> Tensor:
        """The state before the first epoch of a night."""
        return torch.zeros(batch, self.state_size, dtype=self.normalise.mean.dtype)

    def step(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """One epoch: ``x (batch, features)`` -> ``(logit (batch,), new state)``."""
        logits, state = self.forward(x.unsqueeze(1), state)
        return logits[:, 0], state

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class _RecurrentNet(SleepNet):
    """The body both recurrent networks share: an input layer, a GRU, and a linear head of
    ``n_outputs`` logits per epoch; the state is ``(batch, num_layers * hidden_size)``."""

    def __init__(
        self,
        feature_names: str | Sequence[str],
        hidden_size: int,
        num_layers: int,
        dropout: float,
        n_outputs: int,
    ):
        super().__init__(feature_names)
        self.init_args = {
            "feature_names": self.feature_names,
            "hidden_size": hidden_size,
            "num_layers": num_layers,
            "dropout": dropout,
        }
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.state_size = hidden_size * num_layers
        self.embed = nn.Sequential(nn.Linear(self.n_features, hidden_size), nn.GELU())
        self.dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(hidden_size, hidden_size, num_layers=num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, n_outputs)

    def _head_logits(self, x: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor]:
        """``(batch, time, n_outputs)`` logits of ``x (batch, time, features)``, and the state."""
        batch = x.shape[0]
        if state is None:
            state = self.initial_state(batch).to(x.device)
        h = state.reshape(-1, self.num_layers, self.hidden_size).transpose(0, 1).contiguous()
        out, h = self.gru(self.dropout(self.embed(self.normalise(x))), h)
        return self.head(out), h.transpose(0, 1).reshape(-1, self.state_size)


class SleepGRU(_RecurrentNet):
    """Causal recurrent network: an input layer, a GRU, and a linear read-out of p(sleep).

    Parameters
    ----------
    feature_names
        Inputs: a feature set name of :data:`sleepstream.features.FEATURE_SETS` or a list.
    hidden_size
        GRU width; the state is ``(batch, num_layers * hidden_size)``.
    num_layers
        Stacked GRU layers.
    dropout
        Dropout on the GRU input during training.
    """

    def __init__(
        self,
        feature_names: str | Sequence[str] = "sequence",
        hidden_size: int = 48,
        num_layers: int = 1,
        dropout: float = 0.1,
    ):
        super().__init__(feature_names, hidden_size, num_layers, dropout, n_outputs=1)

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        logits, state = self._head_logits(x, state)
        return logits.squeeze(-1), state


class SleepMLP(SleepNet):
    """Memoryless network on one epoch's features (the original hobby design).

    The state is a dummy of size 1, returned unchanged.
    """

    state_size = 1

    def __init__(
        self,
        feature_names: str | Sequence[str] = "hobby",
        hidden_size: int = 32,
        dropout: float = 0.1,
    ):
        super().__init__(feature_names)
        self.init_args = {
            "feature_names": self.feature_names,
            "hidden_size": hidden_size,
            "dropout": dropout,
        }
        self.mlp = nn.Sequential(
            nn.Linear(self.n_features, hidden_size),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_size, hidden_size),
            nn.GELU(),
            nn.Linear(hidden_size, 1),
        )

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if state is None:
            state = self.initial_state(x.shape[0]).to(x.device)
        return self.mlp(self.normalise(x)).squeeze(-1), state


STAGE_OUTPUTS: dict[str, int] = {"wake_nrem_rem": 3, "wake_light_deep_rem": 4}
"""The stage tasks a :class:`StageGRU` predicts (names of :data:`~sleepstream.records.LABEL_MAPS`)
and their number of classes, in the order of its logit columns."""


class StageGRU(_RecurrentNet):
    """Causal recurrent stage network: the :class:`SleepGRU` body with one softmax head per task.

    Reads the same causal features as the sleep/wake network and steps the same way; its logits
    are ``(batch, time, 7)``: wake / NREM / REM (columns 0-2), then wake / light / deep / REM
    (columns 3-6), :data:`STAGE_OUTPUTS` order. :func:`stage_probabilities` turns them into one
    probability row per task. Both heads share the GRU, so one network answers both tasks and the
    exported step carries both.

    Parameters
    ----------
    feature_names, hidden_size, num_layers, dropout
        As for :class:`SleepGRU`.

    Examples
    --------
    >>> net = StageGRU(hidden_size=8)
    >>> logits, state = net.step(torch.zeros(2, net.n_features), net.initial_state(2))
    >>> logits.shape, state.shape
    (torch.Size([2, 7]), torch.Size([2, 8]))
    >>> {task: tuple(p.shape) for task, p in stage_probabilities(logits).items()}
    {'wake_nrem_rem': (2, 3), 'wake_light_deep_rem': (2, 4)}
    """

    tasks = STAGE_OUTPUTS

    def __init__(
        self,
        feature_names: str | Sequence[str] = "sequence",
        hidden_size: int = 32,
        num_layers: int = 1,
        dropout: float = 0.1,
    ):
        super().__init__(
            feature_names, hidden_size, num_layers, dropout, n_outputs=sum(STAGE_OUTPUTS.values())
        )

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._head_logits(x, state)


def stage_logits(logits: Tensor) -> dict[str, Tensor]:
    """The logit columns of each task of a :class:`StageGRU` output (last axis split)."""
    parts = torch.split(logits, list(STAGE_OUTPUTS.values()), dim=-1)
    return dict(zip(STAGE_OUTPUTS, parts, strict=True))


def stage_probabilities(logits: Tensor) -> dict[str, Tensor]:
    """Class probabilities per task (softmax over each task's columns) of :class:`StageGRU`
    logits."""
    return {task: torch.softmax(part, dim=-1) for task, part in stage_logits(logits).items()}


NETS: dict[str, type[SleepNet]] = {
    "SleepGRU": SleepGRU,
    "SleepMLP": SleepMLP,
    "StageGRU": StageGRU,
}


def build_net(architecture: str, init_args: dict[str, Any]) -> SleepNet:
    """Rebuild a network from its class name (``"SleepGRU"``) and ``init_args``."""
    name = architecture.rsplit(".", 1)[-1]
    if name not in NETS:
        raise ValueError(f"Unknown architecture {architecture!r}; known: {sorted(NETS)}")
    return NETS[name](**init_args)


def count_parameters(net: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def _night_logits(net: SleepNet, recording: Recording) -> Tensor:
    columns = [FEATURE_NAMES.index(n) for n in net.feature_names]
    x = torch.as_tensor(night_features(recording)[:, columns], dtype=torch.float32)
    net.eval()
    with torch.no_grad():
        logits, _ = net(x.unsqueeze(0))
    return logits[0]


def predict_night(net: SleepNet, recording: Recording) -> NDArray[np.float64]:
    """p(sleep) per epoch of a night: the causal features replayed through ``net`` in one pass."""
    return torch.sigmoid(_night_logits(net, recording)).double().numpy()


def predict_night_stages(net: StageGRU, recording: Recording) -> dict[str, NDArray[np.float64]]:
    """Class probabilities ``(epochs, classes)`` per task of a night, replayed through the stage
    network ``net`` in one pass (causal, as the live step)."""
    probabilities = stage_probabilities(_night_logits(net, recording))
    return {task: p.double().numpy() for task, p in probabilities.items()}
