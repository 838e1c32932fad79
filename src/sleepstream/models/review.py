"""Review models: sleep/wake and sleep stages from the whole recorded night (non-causal).

After waking up a person wants the best account of the night, and that account may look at
the whole night: what came after an epoch as much as what came before. :class:`ReviewNet` is a
small dilated temporal-convolution network run forwards and backwards in time over the night's
per-epoch causal features (:func:`sleepstream.features.night_features`, the same inputs as the
live model), with three heads trained together:

- ``sleep_wake``: wake / sleep;
- ``wake_nrem_rem``: wake / NREM / REM;
- ``wake_light_deep_rem``: wake / light (N1, N2) / deep (N3) / REM.

A convolution stack (kernel 3, dilations 1, 2, 4, ... 64: about 4 h of context on each side)
rather than a bidirectional GRU: the whole batch of nights is one tensor operation per layer,
so a fold trains in seconds on one CPU core, where a GRU steps through 1,000 epochs one by one.

Class balance: each head's cross-entropy weighs class *k* by ``n / (K n_k)`` over the scored
epochs of the training nights (scikit-learn's ``compute_class_weight("balanced")``), so every
class weighs as much as the others; unscored epochs carry no loss.

The network holds its own input normalisation (mean and SD of the training nights, NaN mapped
to the mean, as :class:`sleepstream.models.net.Normalise`). Weights are saved as portable
``.npz`` + ``.json`` (:func:`save_review`, :func:`load_review`), never pickles.

Examples
--------
>>> net = ReviewNet(n_features=4, channels=8, dilations=(1, 2))
>>> out = net(torch.zeros(2, 50, 4))
>>> {task: tuple(v.shape) for task, v in out.items()}  # doctest: +NORMALIZE_WHITESPACE
{'sleep_wake': (2, 50, 2), 'wake_nrem_rem': (2, 50, 3), 'wake_light_deep_rem': (2, 50, 4)}
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from sklearn.utils.class_weight import compute_class_weight
from torch import Tensor, nn

from sleepstream.evaluation.scenarios import PSG_START
from sleepstream.features import SEQUENCE_FEATURES, night_features, nights_features, select
from sleepstream.models.net import Normalise
from sleepstream.paths import atomic_file, write_atomic
from sleepstream.records import (
    EPOCH_SECONDS,
    SLEEP_WAKE,
    WAKE_LIGHT_DEEP_REM,
    WAKE_NREM_REM,
    LabelMap,
    Recording,
)

log = logging.getLogger(__name__)

TASKS: tuple[LabelMap, ...] = (SLEEP_WAKE, WAKE_NREM_REM, WAKE_LIGHT_DEEP_REM)
"""The heads of a review network, in output order."""

FORMAT_VERSION = 1
"""Version of the saved ``.npz`` + ``.json`` pair."""


class _Block(nn.Module):
    """Residual block: non-causal dilated convolution (kernel 3), GELU, dropout."""

    def __init__(self, channels: int, dilation: int, dropout: float):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, 3, padding=dilation, dilation=dilation)
        self.mix = nn.Conv1d(channels, channels, 1)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: Tensor, mask: Tensor) -> Tensor:
        z = self.mix(nn.functional.gelu(self.conv(h)))
        return (h + self.drop(z)) * mask


class ReviewNet(nn.Module):
    """A small U-Net of dilated temporal convolutions over a whole night, one head per task.

    The epochs are embedded (1x1 convolution), refined by full-resolution blocks, averaged in
    groups of ``pool`` epochs, passed through dilated blocks at that coarse resolution (the
    long context: ``pool * sum(dilations)`` epochs on each side), repeated back to every epoch,
    added to the full-resolution path and refined once more before the heads.

    Parameters
    ----------
    n_features
        Inputs per epoch (raw features; normalised inside).
    channels
        Width of every layer.
    dilations
        One residual block per dilation at the coarse resolution.
    dropout
        Dropout inside the blocks and on the input.
    elapsed
        Add the hours since the first epoch of the night as an input (the review sees the
        whole night, so where an epoch lies in it is known).
    pool
        Epochs per step of the coarse path.

    ``forward(x: (batch, time, n_features), mask: (batch, time) | None)`` returns, per task
    name, logits ``(batch, time, n_classes)``; positions outside ``mask`` are treated as
    outside the night (zero, as the padding beyond a night's ends).
    """

    normalise: Normalise

    def __init__(
        self,
        n_features: int,
        channels: int = 32,
        dilations: Sequence[int] = (1, 2, 4, 8, 16, 32),
        dropout: float = 0.2,
        elapsed: bool = True,
        pool: int = 4,
    ):
        super().__init__()
        self.init_args: dict[str, Any] = {
            "n_features": n_features,
            "channels": channels,
            "dilations": list(dilations),
            "dropout": dropout,
            "elapsed": elapsed,
            "pool": pool,
        }
        self.elapsed = elapsed
        self.pool = pool
        self.normalise = Normalise(n_features)
        self.inp = nn.Conv1d(n_features + int(elapsed), channels, 1)
        self.in_drop = nn.Dropout(dropout)
        self.fine = nn.ModuleList(_Block(channels, d, dropout) for d in (1, 2))
        self.coarse = nn.ModuleList(_Block(channels, d, dropout) for d in dilations)
        self.out = _Block(channels, 1, dropout)
        self.heads = nn.ModuleDict({t.name: nn.Conv1d(channels, len(t.classes), 1) for t in TASKS})

    def forward(self, x: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        batch, n_time, _ = x.shape
        z = self.normalise(x)
        if self.elapsed:
            hours = torch.arange(n_time, dtype=z.dtype) * (EPOCH_SECONDS / 3600.0)
            z = torch.cat([z, (hours / 4.0 - 1.0).expand(batch, n_time)[..., None]], dim=-1)
        m = torch.ones(batch, 1, n_time) if mask is None else mask[:, None, :].to(z.dtype)
        h = self.in_drop(nn.functional.gelu(self.inp(z.transpose(1, 2)))) * m
        for block in self.fine:
            h = block(h, m)
        extra = -n_time % self.pool
        hp, mp = nn.functional.pad(h, (0, extra)), nn.functional.pad(m, (0, extra))
        total = nn.functional.avg_pool1d(mp, self.pool)
        c = nn.functional.avg_pool1d(hp, self.pool) / total.clamp_min(1.0 / self.pool)
        mc = (total > 0).to(z.dtype)
        c = c * mc
        for block in self.coarse:
            c = block(c, mc)
        up = c.repeat_interleave(self.pool, dim=2)[:, :, :n_time]
        h = self.out((h + up) * m, m)
        return {name: head(h).transpose(1, 2) for name, head in self.heads.items()}


@dataclass
class TrainConfig:
    """How a :class:`ReviewNet` is trained (every field is saved with the weights).

    ``steps`` full-batch AdamW steps over all training nights (no inner validation: a fixed
    budget, chosen on two folds before the LOSO run); ``crop`` > 0 trains each step on one
    random stretch of at least that fraction of every night (a whole night otherwise);
    ``batch`` > 0 draws that many training nights per step (all of them otherwise).
    """

    features: tuple[str, ...] = SEQUENCE_FEATURES
    channels: int = 32
    dilations: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    pool: int = 4
    dropout: float = 0.2
    elapsed: bool = True
    steps: int = 400
    lr: float = 3e-3
    weight_decay: float = 1e-2
    crop: float = 0.0
    batch: int = 0
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown review training settings {unknown}; known: {sorted(known)}")
        fields: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in values.items()
        }
        return cls(**fields)


def night_inputs(recording: Recording, features: Sequence[str]) -> NDArray[np.float64]:
    """The review inputs of a night: its causal features from its first epoch, ``(n, F)``."""
    return select(night_features(PSG_START.fed(recording)), features)


def _padded(
    arrays: Sequence[NDArray[Any]], fill: float, width: int | None = None
) -> NDArray[np.float64]:
    longest = max(len(a) for a in arrays)
    shape = (len(arrays), longest) if width is None else (len(arrays), longest, width)
    out = np.full(shape, fill, dtype=np.float64)
    for i, a in enumerate(arrays):
        out[i, : len(a)] = a
    return out


def class_weights(labels: NDArray[np.integer], n_classes: int) -> NDArray[np.float64]:
    """Balanced class weights ``n / (K n_k)`` of the scored labels (absent classes: 0).

    >>> class_weights(np.array([0, 1, 1, 1, -1]), 2).round(3).tolist()
    [2.0, 0.667]
    """
    y = labels[labels >= 0]
    present = np.unique(y)
    weights = np.zeros(n_classes)
    weights[present] = compute_class_weight("balanced", classes=present, y=y)
    return weights


def train_review(recordings: Sequence[Recording], config: TrainConfig | None = None) -> ReviewNet:
    """A :class:`ReviewNet` trained on ``recordings`` (scored epochs of every task), with
    ``config`` (default: :class:`TrainConfig`'s defaults)."""
    config = config or TrainConfig()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    nights = nights_features([PSG_START.fed(r) for r in recordings])
    inputs = [select(f, config.features) for f in nights]
    net = ReviewNet(
        len(config.features),
        config.channels,
        config.dilations,
        config.dropout,
        config.elapsed,
        config.pool,
    )
    net.normalise.fit(np.concatenate(inputs))
    x_all = torch.as_tensor(_padded(inputs, np.nan, len(config.features)), dtype=torch.float32)
    lengths = np.array([len(a) for a in inputs])
    targets, losses = {}, {}
    for task in TASKS:
        labels = [r.labels(task).astype(np.int64) for r in recordings]
        targets[task.name] = torch.as_tensor(_padded(labels, -1), dtype=torch.long)
        weight = class_weights(np.concatenate(labels), len(task.classes))
        losses[task.name] = nn.CrossEntropyLoss(
            weight=torch.as_tensor(weight, dtype=torch.float32), ignore_index=-1
        )
    optimiser = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, config.lr, total_steps=config.steps)
    started = time.perf_counter()
    net.train()
    for _ in range(config.steps):
        if 0 < config.batch < len(lengths):
            pick = np.sort(rng.choice(len(lengths), config.batch, replace=False))
            width = int(lengths[pick].max())
            x, y, mask = _batch(
                x_all[pick, :width],
                {k: v[pick, :width] for k, v in targets.items()},
                lengths[pick],
                config.crop,
                rng,
            )
        else:
            x, y, mask = _batch(x_all, targets, lengths, config.crop, rng)
        out = net(x, mask)
        loss = sum(
            (
                losses[name](out[name].reshape(-1, out[name].shape[-1]), y[name].reshape(-1))
                for name in out
            ),
            torch.zeros(()),
        )
        optimiser.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()
        schedule.step()
    net.eval()
    log.debug("Review net: %d steps in %.1f s", config.steps, time.perf_counter() - started)
    return net


def _batch(
    x: Tensor,
    targets: Mapping[str, Tensor],
    lengths: NDArray[np.int64],
    crop: float,
    rng: np.random.Generator,
) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    """Every night whole, or (``crop`` > 0) one random stretch of each, left-aligned."""
    n_time = x.shape[1]
    if crop <= 0:
        mask = torch.as_tensor(np.arange(n_time)[None, :] < lengths[:, None])
        return x, dict(targets), mask
    xs, ys, keep = torch.full_like(x, float("nan")), {}, np.zeros((len(lengths), n_time), bool)
    starts, sizes = [], []
    for n in lengths.tolist():
        size = int(rng.integers(max(1, int(crop * n)), n + 1))
        starts.append(int(rng.integers(0, n - size + 1)))
        sizes.append(size)
    for name, y in targets.items():
        ys[name] = torch.full_like(y, -1)
    for i, (start, size) in enumerate(zip(starts, sizes, strict=True)):
        xs[i, :size] = x[i, start : start + size]
        for name, y in targets.items():
            ys[name][i, :size] = y[i, start : start + size]
        keep[i, :size] = True
    return xs, ys, torch.as_tensor(keep)


def predict_review(net: ReviewNet, inputs: NDArray[np.float64]) -> dict[str, NDArray[np.float64]]:
    """Class probabilities of one night's inputs ``(n, F)`` per task: ``(n, n_classes)``."""
    with torch.no_grad():
        out = net(torch.as_tensor(inputs[None], dtype=torch.float32))
    return {name: torch.softmax(logits[0].double(), dim=-1).numpy() for name, logits in out.items()}


# --------------------------------------------------------------------------------------------
# A predictor for the LOSO driver
# --------------------------------------------------------------------------------------------

COLUMNS: dict[str, slice] = {}
"""Columns of :meth:`ReviewPredictor.predict` per task (all heads side by side)."""
_start = 0
for _task in TASKS:
    COLUMNS[_task.name] = slice(_start, _start + len(_task.classes))
    _start += len(_task.classes)
N_COLUMNS = _start


@dataclass
class ReviewPredictor:
    """The LOSO driver's view of a review network: ``fit`` trains one, ``predict`` gives every
    head's probabilities side by side, ``(n_epochs, N_COLUMNS)`` in :data:`COLUMNS` order
    (:mod:`sleepstream.evaluation.review_eval` splits them per task). Non-causal."""

    config: TrainConfig = field(default_factory=TrainConfig)
    name: str = "review"
    causal: bool = False
    description: str = (
        "Review network: dilated temporal convolutions over the whole night (both directions) "
        "on the causal features, three heads, balanced classes"
    )
    net: ReviewNet | None = None

    def feature_nights(self, recordings: Sequence[Recording]) -> list[Recording]:
        """The nights its folds read features of (computed once before the folds start)."""
        return [PSG_START.fed(r) for r in recordings]

    def fit(self, recordings: Sequence[Recording]) -> None:
        self.net = train_review(recordings, self.config)

    def predict(self, recording: Recording) -> NDArray[np.float64]:
        if self.net is None:
            raise RuntimeError("ReviewPredictor.predict before fit")
        by_task = predict_review(self.net, night_inputs(recording, self.config.features))
        return np.concatenate([by_task[t.name] for t in TASKS], axis=1)


# --------------------------------------------------------------------------------------------
# Portable files
# --------------------------------------------------------------------------------------------


def save_review(
    net: ReviewNet, config: TrainConfig, path: Path, extra: Mapping[str, Any] | None = None
) -> tuple[Path, Path]:
    """Write ``<path>.npz`` (the state dict as float32 arrays) and ``<path>.json`` (the network's
    arguments, the training settings and ``extra``, e.g. operating points and the model card)."""
    path = Path(path)
    weights, meta = path.with_suffix(".npz"), path.with_suffix(".json")
    arrays = {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}
    with atomic_file(weights) as handle:
        np.savez_compressed(handle, **arrays)  # type: ignore[arg-type]
    document = {
        "format": "sleepstream-review",
        "version": FORMAT_VERSION,
        "net": net.init_args,
        "train": config.as_dict(),
        "tasks": {t.name: list(t.classes) for t in TASKS},
        **(extra or {}),
    }
    write_atomic(meta, json.dumps(document, indent=1) + "\n")
    return weights, meta


@dataclass(frozen=True)
class LoadedReview:
    """A saved review network with its settings and metadata."""

    net: ReviewNet
    config: TrainConfig
    meta: dict[str, Any]


def load_review(path: Path) -> LoadedReview:
    """Read a pair written by :func:`save_review` (``path`` with or without a suffix).

    Only arrays and JSON are read (``allow_pickle=False``); a mismatch between the arrays and
    the described network raises ``ValueError`` naming the file.
    """
    path = Path(path)
    weights, meta_path = path.with_suffix(".npz"), path.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != "sleepstream-review" or meta.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{meta_path}: not a sleepstream review model of version {FORMAT_VERSION} "
            f"(format {meta.get('format')!r}, version {meta.get('version')!r})"
        )
    config = TrainConfig.from_dict(meta["train"])
    net = ReviewNet(**meta["net"])
    with np.load(weights, allow_pickle=False) as data:
        state = {k: torch.from_numpy(data[k]) for k in data.files}
    try:
        net.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(
            f"{weights}: weights do not fit the network of {meta_path}: {error}"
        ) from None
    net.eval()
    return LoadedReview(net, config, meta)
