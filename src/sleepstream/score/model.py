"""Which model scores a recording, and scoring every 30 s epoch with it (the batch path).

:func:`choose_model` is the one place that decides; the outputs and the log name its choice:

- raw motion (acceleration or activity counts) with heart rate: the shipped sleep/wake model;
- heart rate only (a Health export, or heart-rate files alone), or heart rate sparser than one
  sample a minute (:func:`sparse_heart_rate`): the sparse-heart-rate model of
  :mod:`sleepstream.models.sparse` (``sparse_hr``, or ``sparse_hr_counts`` with motion) when it
  and its weights are installed; otherwise the shipped model, in its heart-rate-only mode
  (every motion input missing: it tolerates that, but was not trained for it) when there is no
  motion. The sparse model is the only other one; a new model joins in :func:`choose_model`.

The shipped model's batch path is the live step, unchanged: the raw variant's counts
(:class:`~sleepstream.step.AccelCounts`, applied to every epoch of a block in one call with each
epoch's own filter history, which is what stepping it epoch by epoch computes), the causal
features scanned from a fresh state (:func:`sleepstream.step.scan`), and the network over the
whole sequence. Nothing looks past an epoch's end.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from numpy.typing import NDArray

from sleepstream.data.user import UserRecording
from sleepstream.records import COUNT_SECONDS, EPOCH_SECONDS, Recording, Stage

log = logging.getLogger(__name__)

COUNT_BLOCK_EPOCHS = 720
"""Epochs whose acceleration is put on the grid and counted at once (6 h: 1.08 M grid points;
the grid's index arrays and the filter's intermediates stay near 100 MB)."""


@dataclass(frozen=True)
class EpochScores:
    """p(sleep) per epoch, stage probabilities (stage name -> values) when the model has them
    (none yet: the dict is empty), and the two 15 s activity counts per epoch the model saw
    (``(n, 2)``, NaN where missing; ``None`` for a model without motion input)."""

    p_sleep: NDArray[np.float64]
    stages: dict[str, NDArray[np.float64]] = field(default_factory=dict)
    counts: NDArray[np.float64] | None = None


class Scorer(Protocol):
    """A model that scores every 30 s epoch of a recording.

    ``name`` says which model and mode (for outputs and the log), ``version`` identifies its
    weights (finished outputs are redone when it changes), ``threshold`` is the p(sleep) at or
    above which an epoch is called sleep.
    """

    name: str
    version: str
    threshold: float

    def score(self, recording: UserRecording, epoch_starts: NDArray[np.float64]) -> EpochScores:
        """Scores of the epochs starting at ``epoch_starts`` (contiguous 30 s steps)."""
        ...


class ShippedScorer:
    """The shipped sleep/wake model (:func:`~sleepstream.models.shipped.load_shipped`) at its
    WASA93 threshold (chosen leave-one-subject-out on the training nights)."""

    def __init__(self, name: str, threshold_name: str = "wasa93"):
        from sleepstream.models.card import shipped_folder
        from sleepstream.models.shipped import load_shipped

        self.model = load_shipped()
        card = self.model.card
        self.name = name
        self.threshold = float(card.thresholds[threshold_name])
        weights = (shipped_folder() / f"{card.name}.npz").read_bytes()
        self.version = (
            f"{card.name} {card.version} {hashlib.blake2b(weights, digest_size=6).hexdigest()}"
        )

    def score(self, recording: UserRecording, epoch_starts: NDArray[np.float64]) -> EpochScores:
        from sleepstream.features import FEATURE_NAMES, epoch_inputs
        from sleepstream.step import scan

        n = len(epoch_starts)
        night = Recording(
            recording.name,
            epoch_starts,
            np.full(n, Stage.UNSCORED, dtype=np.int8),
            recording.hr_times,
            recording.hr_bpm,
            recording.count_times,
            recording.counts,
        )
        counts, hr, hr_offset = epoch_inputs(night)
        if recording.has_accel:
            assert recording.accel_times is not None and recording.accel_z is not None
            from_accel = accel_counts_per_epoch(
                recording.accel_times, recording.accel_z, float(epoch_starts[0]), n
            )
            counts = np.where(np.isnan(counts), from_accel, counts)
        features = scan(counts, hr, hr_offset)
        net = self.model.net
        columns = [FEATURE_NAMES.index(c) for c in net.feature_names]
        x = torch.as_tensor(features[:, columns], dtype=torch.float32)
        with torch.no_grad():
            logits, _ = net.eval()(x.unsqueeze(0))
        return EpochScores(torch.sigmoid(logits[0]).double().numpy(), counts=counts)


@torch.no_grad()
def accel_counts_per_epoch(
    times: NDArray[np.float64], z: NDArray[np.floating], first: float, n_epochs: int
) -> NDArray[np.float64]:
    """The raw variant's two counts of every epoch, ``(n_epochs, 2)``, NaN where missing.

    The same as stepping :class:`~sleepstream.step.AccelCounts` from its initial state over
    :func:`~sleepstream.features.accel_epochs` (the step's history is the grid just before each
    epoch, so every epoch of a block goes in one call), with the grid built a block of
    :data:`COUNT_BLOCK_EPOCHS` at a time to bound memory.
    """
    from sleepstream.features import accel_epochs
    from sleepstream.step import ACCEL_SAMPLES, AccelCounts

    counter = AccelCounts()
    history = torch.full((counter.history,), math.nan)
    out = np.full((n_epochs, 2), np.nan)
    for begin in range(0, n_epochs, COUNT_BLOCK_EPOCHS):
        m = min(COUNT_BLOCK_EPOCHS, n_epochs - begin)
        start = first + begin * EPOCH_SECONDS
        lo = int(np.searchsorted(times, start - 2.0))
        hi = int(np.searchsorted(times, start + (m + 1) * EPOCH_SECONDS + 2.0))
        block: NDArray[np.float64] = np.asarray(z[lo:hi], dtype=np.float64)
        grid = accel_epochs(times[lo:hi], block, start, m)
        flat = torch.from_numpy(grid.astype(np.float32)).reshape(-1)
        padded = torch.cat([history, flat])
        histories = padded.unfold(0, counter.history, ACCEL_SAMPLES)[:m]
        counts, _ = counter(flat.reshape(m, ACCEL_SAMPLES), histories)
        out[begin : begin + m] = counts.double().numpy()
        history = padded[-counter.history :].clone()
    return out


MOTION_MODEL = "sleep_wake (shipped): motion (acceleration or activity counts) + heart rate"
HR_ONLY_MODEL = "sleep_wake (shipped), heart-rate-only mode: no motion, counts missing"
SPARSE_HR_SECONDS = 60.0
"""Heart rate whose median interval exceeds this is sparse (a Health export's, every few
minutes, against about 5 s in the training nights)."""


def sparse_heart_rate(recording: UserRecording) -> bool:
    """Whether the heart rate comes less often than every :data:`SPARSE_HR_SECONDS` (median).

    >>> from sleepstream.data.user import UserRecording
    >>> t = np.arange(0.0, 3600.0, 300.0)
    >>> sparse_heart_rate(UserRecording("r", "test", (), t, 60 + 0 * t))
    True
    """
    if len(recording.hr_times) < 2:
        return True
    return float(np.median(np.diff(recording.hr_times))) > SPARSE_HR_SECONDS


def choose_model(recording: UserRecording) -> tuple[str, Scorer]:
    """The model for the data ``recording`` holds, and its name (see the module docstring).

    Examples
    --------
    >>> from sleepstream.data.user import UserRecording
    >>> t = np.arange(0.0, 600.0, 5.0)
    >>> r = UserRecording("r", "test", (), t, 60 + 0 * t, count_times=t, counts=0 * t)
    >>> choose_model(r)[0]
    'sleep_wake (shipped): motion (acceleration or activity counts) + heart rate'
    """
    scorer: Scorer | None = None
    if recording.has_motion and not sparse_heart_rate(recording):
        scorer = ShippedScorer(MOTION_MODEL)
    else:
        scorer = _sparse_scorer(recording)
    if scorer is None and recording.has_motion:
        log.warning(
            "%s: sparse heart rate and no sparse-heart-rate model installed: the shipped model "
            "scores it, with heart-rate features it was not trained on",
            recording.name,
        )
        scorer = ShippedScorer(MOTION_MODEL + " (sparse heart rate)")
    elif scorer is None:
        log.warning(
            "%s: heart rate without motion and no sparse-heart-rate model installed: the "
            "shipped model scores it with every motion input missing",
            recording.name,
        )
        scorer = ShippedScorer(HR_ONLY_MODEL)
    log.info("%s: scored with %s", recording.name, scorer.name)
    return scorer.name, scorer


class SparseScorer:
    """A sparse-heart-rate variant of :mod:`sleepstream.models.sparse` (``sparse_hr``, or
    ``sparse_hr_counts`` when the recording has motion), at its card's operating threshold."""

    def __init__(self, model: Any, predict: Any, counts_from_motion: bool):
        self.model, self.predict = model, predict
        card = model.card
        self.name = f"{card.name} (shipped): sparse heart rate" + (
            " + motion" if model.with_counts else " only"
        )
        self.version = f"{card.name} {card.version}"
        self.threshold = float(card.thresholds.get("operating", card.thresholds.get("wasa93", 0.5)))
        self.counts_from_motion = counts_from_motion

    def score(self, recording: UserRecording, epoch_starts: NDArray[np.float64]) -> EpochScores:
        counts = None
        count_times: NDArray[np.float64] | None = None
        count_values: NDArray[np.float64] | None = None
        if self.model.with_counts:
            if recording.has_accel:
                assert recording.accel_times is not None and recording.accel_z is not None
                counts = accel_counts_per_epoch(
                    recording.accel_times,
                    recording.accel_z,
                    float(epoch_starts[0]),
                    len(epoch_starts),
                )
                windows = epoch_starts[:, None] + np.array([0.0, COUNT_SECONDS])
                keep = np.isfinite(counts)
                count_times, count_values = windows[keep], counts[keep]
            else:
                count_times, count_values = recording.count_times, recording.counts
        p = self.predict(
            self.model,
            recording.hr_times,
            recording.hr_bpm,
            count_times,
            count_values,
            epoch_starts,
        )
        return EpochScores(np.asarray(p, dtype=np.float64), counts=counts)


def _sparse_scorer(recording: UserRecording) -> Scorer | None:
    """The sparse-heart-rate model for ``recording``, if :mod:`sleepstream.models.sparse` and
    its shipped weights are installed (``load_sparse_model``, ``predict_sparse``)."""
    try:
        from sleepstream.models import sparse
    except ImportError:
        return None
    load = getattr(sparse, "load_sparse_model", None)
    predict = getattr(sparse, "predict_sparse", None)
    if load is None or predict is None:
        return None
    try:
        model = load(with_counts=recording.has_motion)
    except FileNotFoundError as error:
        log.info("sparse-heart-rate model not installed (%s)", error)
        return None
    return SparseScorer(model, predict, recording.has_motion)
