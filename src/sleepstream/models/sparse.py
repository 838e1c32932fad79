"""Sleep/wake from sparse heart rate (a Health export): thinning, the model variant, scoring.

An Apple Health export has no raw acceleration, and during sleep its heart rate comes every few
minutes, not every ~5 s as in the training nights. This module holds what that needs:

- :func:`thin_heart_rate` turns the dataset's heart rate into a sparse one, deterministically
  and causally: the **first sample in each window of a fixed clock grid** (windows ``[k T,
  (k + 1) T)`` of the recording's time axis, ``T`` = 60, 120 or 300 s), kept at its own time.
  Whether a sample survives depends only on the samples before it in its window, so thinning a
  night cut at any time equals cutting the thinned night; and the grid is tied to the clock,
  not to the moment a detector was switched on. Like the Health app, the kept samples come at
  irregular times about ``T`` apart, one reading each (no averaging).
- :data:`SPARSE_HR_FEATURES` / :data:`SPARSE_COUNT_FEATURES`: the causal features of
  :mod:`sleepstream.features` that still mean something with a sample every 5 min. Dropped:
  ``hr_epoch``, ``hr_min_epoch``, ``hr_max_epoch`` (NaN in 9 epochs of 10 at 5 min) and
  ``hr_std_5min`` (one sample or none in the window). Kept: the 5 and 15 min means, the 15 min
  spread, the 5-vs-15 min change, the two lows, the time since the last sample, and the last
  five samples with their ages (at 5 min they reach 25 min back, the most useful inputs).
- :class:`SparsePredictor`: any LOSO predictor trained on nights thinned to every interval of
  ``training_intervals`` (full rate, 1, 2 and 5 min: one model for any sampling rate, as a
  Health export's rate varies) and predicting a night thinned to ``eval_interval``.
- The shipped variants ``sparse_hr`` (heart rate only) and ``sparse_hr_counts`` (heart rate and
  activity counts), :func:`load_sparse_model` and :func:`predict_sparse` for the ``score``
  command.

**Counts are not steps.** The counts variant was trained on the dataset's 15 s activity counts
(from the raw z acceleration, te Lindert and Van Someren 2013). A Health export has step counts
instead, which are zero or absent for most of a night and blind to the small movements counts
see. Feeding steps to the counts model is a stand-in whose error has not been measured here; the
LOSO figures of the counts variant are an upper bound for what steps give.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from numpy.typing import ArrayLike, NDArray

from sleepstream.features import FEATURE_NAMES, LAST_HR_SAMPLES, extract
from sleepstream.models.card import ModelCard, read_model, shipped_folder, write_model
from sleepstream.records import EPOCH_SECONDS, Recording, Stage

if TYPE_CHECKING:
    from sleepstream.models.net import SleepNet

log = logging.getLogger(__name__)

HR_INTERVALS_S: tuple[float, ...] = (60.0, 120.0, 300.0)
"""The sparse heart-rate intervals measured: one sample per 1, 2 and 5 minutes."""

TRAINING_INTERVALS_S: tuple[float | None, ...] = (None, *HR_INTERVALS_S)
"""Every training night is used at each of these rates (``None``: the recorded rate)."""

SPARSE_HR_FEATURES: tuple[str, ...] = (
    "hr_mean_5min",
    "hr_mean_15min",
    "hr_std_15min",
    "hr_change_5_15min",
    "hr_above_baseline",
    "hr_above_recent_low",
    "min_since_hr",
    *(f"hr_last_{k}" for k in range(1, LAST_HR_SAMPLES + 1)),
    *(f"hr_age_{k}" for k in range(1, LAST_HR_SAMPLES + 1)),
)
"""Causal heart-rate features that survive a sample every 5 min (see the module docstring)."""

SPARSE_COUNT_FEATURES: tuple[str, ...] = (
    "log_count_epoch",
    "log_count_2min",
    "log_count_5min",
    "log_count_10min",
    "log_count_30min",
    "log_count_max_10min",
    "min_since_movement",
    "min_since_count",
    *SPARSE_HR_FEATURES,
)
"""The heart-rate features plus the activity-count features (no raw motion needed)."""

MODEL_NAMES = {False: "sparse_hr", True: "sparse_hr_counts"}
"""Shipped model name by ``with_counts``."""


def sparse_features(with_counts: bool) -> tuple[str, ...]:
    """The inputs of the sparse variant with or without activity counts.

    >>> sparse_features(False)[:2]
    ('hr_mean_5min', 'hr_mean_15min')
    >>> len(sparse_features(True)) - len(sparse_features(False))
    8
    """
    return SPARSE_COUNT_FEATURES if with_counts else SPARSE_HR_FEATURES


def interval_label(interval_s: float | None) -> str:
    """``None -> "full"``, ``300.0 -> "5min"``.

    >>> interval_label(None), interval_label(60.0), interval_label(90.0)
    ('full', '1min', '90s')
    """
    if interval_s is None:
        return "full"
    if interval_s % 60 == 0:
        return f"{int(interval_s // 60)}min"
    return f"{interval_s:g}s"


def thin_heart_rate(
    times: ArrayLike, bpm: ArrayLike, interval_s: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The first sample in each ``interval_s`` window of the clock, at its own time.

    Windows are ``[k * interval_s, (k + 1) * interval_s)`` on the times' own axis. Samples with
    a non-finite time or bpm are dropped first; times need not be sorted (a stable sort is
    applied). Causal: a sample is kept or not from the samples before it only.

    >>> t, b = thin_heart_rate([0.0, 5.0, 61.0, 65.0, 130.0], [60, 61, 62, 63, 64], 60.0)
    >>> t.tolist(), b.tolist()
    ([0.0, 61.0, 130.0], [60.0, 62.0, 64.0])
    """
    if not interval_s > 0:
        raise ValueError(f"interval_s must be positive, got {interval_s!r}")
    t = np.asarray(times, dtype=np.float64)
    b = np.asarray(bpm, dtype=np.float64)
    if t.shape != b.shape or t.ndim != 1:
        raise ValueError(f"times and bpm must be 1-D of equal length, got {t.shape} and {b.shape}")
    keep = np.isfinite(t) & np.isfinite(b)
    t, b = t[keep], b[keep]
    order = np.argsort(t, kind="stable")
    t, b = t[order], b[order]
    window = np.floor(t / interval_s)
    _, first = np.unique(window, return_index=True)
    return t[first], b[first]


def thinned(recording: Recording, interval_s: float | None, with_counts: bool) -> Recording:
    """The night with its heart rate thinned (``None``: as recorded) and, unless
    ``with_counts``, no activity counts and no raw acceleration."""
    changes: dict[str, Any] = {}
    if interval_s is not None:
        changes["hr_times"], changes["hr_bpm"] = thin_heart_rate(
            recording.hr_times, recording.hr_bpm, interval_s
        )
    if not with_counts:
        changes.update(count_times=np.empty(0), counts=np.empty(0), accel_times=None, accel=None)
    return dataclasses.replace(recording, **changes) if changes else recording


class _Inner(Protocol):
    name: str

    def fit(self, recordings: Sequence[Recording]) -> None: ...

    def predict(self, recording: Recording) -> NDArray[np.float64]: ...


class SparsePredictor:
    """A LOSO predictor on thinned heart rate (and counts if ``with_counts``).

    ``fit`` trains a copy of ``inner`` on every training night at every rate of
    ``training_intervals``; ``predict`` thins the night it is given to ``eval_interval``
    (which :meth:`predict_at` overrides) before ``inner`` sees it. The night is thinned after
    the start scenario has cut it, which changes at most the first window's sample.

    Parameters
    ----------
    inner
        The predictor to train (a :class:`~sleepstream.models.training.NetPredictor` of
        ``configs/sparse_hr*.yaml``, or a baseline); it must use only sparse features.
    with_counts
        Keep the activity counts; otherwise they are removed from every night.
    training_intervals, eval_interval
        Heart-rate intervals (s; ``None`` = as recorded) of the training copies and of the
        night predicted.
    """

    causal = True

    def __init__(
        self,
        inner: _Inner,
        with_counts: bool,
        training_intervals: Sequence[float | None] = TRAINING_INTERVALS_S,
        eval_interval: float | None = 300.0,
        name: str = "",
    ):
        self.inner = inner
        self.with_counts = with_counts
        self.training_intervals = list(training_intervals)
        self.eval_interval = eval_interval
        self.name = name or inner.name
        self.description = (
            f"{getattr(inner, 'description', inner.name)}; heart rate thinned to "
            f"{interval_label(eval_interval)}, {'with' if with_counts else 'no'} counts"
        )

    def training_nights(self, recordings: Sequence[Recording]) -> list[Recording]:
        """Each night at each training rate."""
        return [
            thinned(r, interval, self.with_counts)
            for interval in self.training_intervals
            for r in recordings
        ]

    def feature_nights(self, recordings: Sequence[Recording]) -> list[Recording]:
        """Every night sequence a fold of the inner recipe may train on (to warm the cache)."""
        nights = self.training_nights(recordings)
        sequences = getattr(self.inner, "feature_nights", None)
        return list(sequences(nights)) if sequences is not None else nights

    def fit(self, recordings: Sequence[Recording]) -> None:
        from sleepstream import features

        # features.nights_features raises KeyError when one call holds keys already in its
        # in-memory cache (at old positions) and enough new ones to evict them; a fold's
        # several hundred sequences after another fold's do. Start from an empty memo (the
        # disk cache keeps everything), then scan the missing features in one batch (the inner
        # recipe reads them night by night, which would scan them one by one).
        features._MEMO.clear()
        features.nights_features(self.feature_nights(recordings))
        self.inner = copy.deepcopy(self.inner)
        self.inner.fit(self.training_nights(recordings))

    def predict_at(self, recording: Recording, interval_s: float | None) -> NDArray[np.float64]:
        """p(sleep) per epoch of ``recording`` with its heart rate thinned to ``interval_s``."""
        return self.inner.predict(thinned(recording, interval_s, self.with_counts))

    def predict(self, recording: Recording) -> NDArray[np.float64]:
        return self.predict_at(recording, self.eval_interval)


# --------------------------------------------------------------------------------------------
# The shipped variants
# --------------------------------------------------------------------------------------------


@dataclass
class SparseModel:
    """A shipped sparse variant: the network, its card, and whether it reads counts."""

    net: SleepNet
    card: ModelCard
    with_counts: bool

    @property
    def name(self) -> str:
        return self.card.name

    def is_asleep(
        self, p_sleep: NDArray[np.float64], target: str = "operating"
    ) -> NDArray[np.bool_]:
        """Sleep decisions at one of the card's thresholds (``operating``: maximum kappa)."""
        if target not in self.card.thresholds:
            raise ValueError(
                f"No threshold {target!r}; the card has {sorted(self.card.thresholds)}"
            )
        return p_sleep >= self.card.thresholds[target]


def load_sparse_model(with_counts: bool, folder: Path | None = None) -> SparseModel:
    """The shipped sparse variant: ``sparse_hr_counts`` if ``with_counts`` else ``sparse_hr``.

    Weights are read from ``.npz`` with ``allow_pickle=False`` and the card from ``.json``.

    >>> model = load_sparse_model(with_counts=False)
    >>> model.name, model.with_counts
    ('sparse_hr', False)
    """
    import torch

    from sleepstream.models.net import build_net

    name = MODEL_NAMES[bool(with_counts)]
    card, weights = read_model(folder or shipped_folder(), name)
    net = build_net(card.architecture, card.init_args)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    expected = set(sparse_features(bool(with_counts)))
    if not set(net.feature_names) <= expected:
        raise ValueError(
            f"{name}: the network reads {sorted(set(net.feature_names) - expected)}, "
            "which sparse data cannot give"
        )
    return SparseModel(net.eval(), card, bool(with_counts))


def _series(name: str, times: ArrayLike, values: ArrayLike) -> tuple[NDArray[np.float64], ...]:
    t = np.asarray(times, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if t.ndim != 1 or t.shape != v.shape:
        raise ValueError(
            f"{name}: times and values must be 1-D of equal length, got {t.shape} and {v.shape}"
        )
    bad = np.flatnonzero(~np.isfinite(t) | ~np.isfinite(v))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{name}: sample {i} is not finite (time {t[i]!r}, value {v[i]!r})")
    order = np.argsort(t, kind="stable")
    return t[order], v[order]


def predict_sparse(
    model: SparseModel,
    hr_times_s: ArrayLike,
    bpm: ArrayLike,
    count_times_s: ArrayLike | None,
    counts: ArrayLike | None,
    epoch_starts_s: ArrayLike,
) -> NDArray[np.float64]:
    """p(sleep) for each 30 s epoch starting at ``epoch_starts_s``, from sparse heart rate.

    Parameters
    ----------
    model
        From :func:`load_sparse_model`.
    hr_times_s, bpm
        Heart-rate samples (any rate; seconds on the same clock as the epochs, e.g. Unix time).
    count_times_s, counts
        Activity per 15 s window starting at each time (``None`` for a model without counts).
        A window with no entry is *missing*, not zero: pass ``0`` for worn time without
        movement (e.g. for every 15 s of a night without a step record). Steps are not the
        counts the model learned from (see the module docstring).
    epoch_starts_s
        Contiguous 30 s epochs, increasing. The features look back up to 24 h from each epoch,
        but only within these epochs: start them hours before bedtime (e.g. at noon) so the
        resting-heart-rate baseline is filled. Samples before the first epoch are ignored.

    Returns
    -------
    numpy.ndarray
        p(sleep) per epoch, float64, causal (an epoch's value depends on samples up to its end).

    Examples
    --------
    >>> model = load_sparse_model(with_counts=False)
    >>> epochs = np.arange(0.0, 4 * 3600.0, 30.0)
    >>> hr_t = np.arange(0.0, 4 * 3600.0, 300.0)
    >>> p = predict_sparse(model, hr_t, 60 + 0 * hr_t, None, None, epochs)
    >>> p.shape, bool(((p >= 0) & (p <= 1)).all())
    ((480,), True)
    """
    import torch

    epochs = np.asarray(epoch_starts_s, dtype=np.float64)
    if epochs.ndim != 1 or epochs.size == 0:
        raise ValueError(f"epoch_starts_s must be a non-empty 1-D array, got shape {epochs.shape}")
    steps = np.diff(epochs)
    if steps.size and not np.allclose(steps, EPOCH_SECONDS):
        i = int(np.flatnonzero(~np.isclose(steps, EPOCH_SECONDS))[0])
        raise ValueError(
            f"epoch_starts_s must be contiguous {EPOCH_SECONDS:g} s steps: epoch {i + 1} starts "
            f"{steps[i]:g} s after epoch {i}"
        )
    epochs = epochs[0] + EPOCH_SECONDS * np.arange(epochs.size)
    hr_t, hr_v = _series("heart rate", hr_times_s, bpm)
    if model.with_counts:
        if count_times_s is None or counts is None:
            raise ValueError(
                f"{model.name} reads activity counts: pass count_times_s and counts, or use "
                "load_sparse_model(with_counts=False)"
            )
        ct, cv = _series("counts", count_times_s, counts)
    else:
        ct, cv = np.empty(0), np.empty(0)
    night = Recording(
        subject_id=model.name,
        epoch_times=epochs,
        stages=np.full(epochs.size, Stage.UNSCORED, dtype=np.int8),
        hr_times=hr_t,
        hr_bpm=hr_v,
        count_times=ct,
        counts=cv,
    )
    columns = [FEATURE_NAMES.index(n) for n in model.net.feature_names]
    x = torch.as_tensor(extract(night)[:, columns], dtype=torch.float32)
    with torch.no_grad():
        logits, _ = model.net.eval()(x.unsqueeze(0))
    return torch.sigmoid(logits[0]).double().numpy()


def ship_sparse(
    with_counts: bool,
    recordings: Sequence[Recording],
    study: Path,
    out: Path | None = None,
    overrides: Sequence[str] = (),
    onnx: bool = True,
) -> list[Path]:
    """Train the sparse variant on every night (at every rate) and save it with its card.

    Thresholds are chosen on the pooled out-of-fold scores of the LOSO study in ``study``
    (``sleepstream sparse-study``): every seed, the headline start scenario, the held-out
    nights thinned to 1, 2 and 5 min pooled (a Health export's rate varies). The card's
    ``loso`` holds the study's figures of this variant. Writes ``<name>.npz``, ``<name>.json``
    and (``onnx``) ``<name>.onnx``, the ``counts`` pipeline of :mod:`sleepstream.export`, whose
    inputs are the heart-rate samples and counts of each epoch (all-NaN counts for the variant
    without counts). Returns the paths written.
    """
    import json

    from sleepstream.evaluation.loso import choose_thresholds
    from sleepstream.evaluation.scenarios import HEADLINE
    from sleepstream.evaluation.sparse import RECIPES, cell_name, collect
    from sleepstream.models.shipped import write_model_file

    name = MODEL_NAMES[bool(with_counts)]
    recipe = RECIPES[name]
    grouped = collect(study, recordings)
    headline = grouped.get(HEADLINE.name, {})
    pairs = []
    for interval in HR_INTERVALS_S:
        for result, _seed in headline.get(cell_name(name, interval), []):
            pairs += [(n.labels, n.p_sleep) for n in result.nights]
    if not pairs:
        raise FileNotFoundError(f"No LOSO folds of {name} in {study}: run sleepstream sparse-study")
    thresholds = choose_thresholds(pairs)
    metrics_path = study / "sparse.json"
    figures = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    loso = {
        scen: {
            cell: {k: v["seed_mean"].get(k) for k in ("kappa", "auroc", "wasa93_deployable")}
            | {"seeds": v["seeds"], "n_subjects": v["n_subjects"]}
            for cell, v in cells.items()
            if cell.startswith(f"{name} @")
        }
        for scen, cells in figures.get("scenarios", {}).items()
    }
    predictor = recipe.predictor(0, overrides)
    predictor.fit(recordings)
    from sleepstream.models.net import SleepNet

    net = getattr(predictor.inner, "net", None)
    if not isinstance(net, SleepNet):
        raise TypeError(f"{name}: the recipe did not train a network")
    net = net.cpu().eval()
    card = ModelCard.of(
        net,
        name,
        thresholds,
        (
            f"pooled out-of-fold scores of the leave-one-subject-out study in {study.name} "
            f"(every seed; start scenario {HEADLINE.name!r}; held-out heart rate thinned to 1, "
            "2 and 5 min): each score from a fold model that did not train on the night it "
            "scores; this network trained on all nights at the recorded rate and at 1, 2, 5 min"
        ),
        [r.subject_id for r in recordings],
        loso=loso,
    )
    folder = out or shipped_folder()
    written = list(write_model(folder, card, net))
    if onnx:
        written.append(write_model_file(net, card, folder / f"{name}.onnx", variant="counts"))
    return written
