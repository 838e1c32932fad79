"""The whole live pipeline as one tensor step: one epoch's raw inputs and a fixed-size state in,
the epoch's features (and, with a network, p(sleep)) and the new state out.

This is the only implementation of the activity counts from raw acceleration and of the causal
features. Training and evaluation run it as a scan over a night (:func:`scan`, through
:func:`sleepstream.features.extract`); the live detector and the exported ONNX / Core ML files
run it one epoch at a time. Everything is float32 and batched over streams (the first axis).

Inputs of one 30 s epoch ``[start, start + 30 s)``
-------------------------------------------------
``counts``
    ``(batch, 2)``: the activity counts of the windows ``[start, start + 15)`` and
    ``[start + 15, start + 30)``, NaN where missing.
``hr``, ``hr_offset``
    ``(batch, HR_SLOTS)``: the epoch's heart-rate samples (bpm) in time order and their times
    in seconds after ``start`` (in ``[0, 30)``); unused slots are NaN in both.
``accel`` (raw variant, :class:`AccelCounts`)
    ``(batch, ACCEL_SAMPLES)``: z acceleration in g on the 50 Hz grid from ``start + D`` to
    ``start + 30 + D`` (``D`` = :data:`COUNTS_DELAY_SECONDS`), NaN where missing. The counts
    filter looks ``D`` seconds ahead, so an epoch can close ``D`` seconds after its end.

State
-----
One float32 vector per stream, laid out as :data:`FEATURE_STATE_LAYOUT` (plus the raw variant's
:data:`ACCEL_STATE_LAYOUT`, then the network's state): ring buffers of per-epoch summaries
(oldest first), time-since counters and the last heart-rate samples. It has a fixed size: the
longest look-back, the 24 h resting baseline, is a ring of 2,880 per-epoch mean heart rates.
:func:`initial_feature_state` is "nothing seen yet". No feature counts from the moment a stream
was started, so a stream started earlier gives the same features once its rings are full.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from sleepstream.features import (
    ACTIVE_COUNT,
    BASELINE_QUANTILE,
    COUNT_WINDOWS_MIN,
    FEATURE_NAMES,
    GAP_CAP_MIN,
    HR_BASELINE_HOURS,
    HR_SLOTS,
    HR_WINDOWS_MIN,
    LAST_HR_SAMPLES,
    LOW_HR_WINDOW_HOURS,
    MIN_BASELINE_EPOCHS,
)
from sleepstream.records import COUNT_SECONDS, EPOCH_SECONDS
from sleepstream.signal.counts import (
    FULL_SCALE_G,
    N_BINS,
    SAMPLE_RATE,
    SCALE,
    SUM_OFFSET,
    fir_taps,
)

log = logging.getLogger(__name__)

COUNTS_DELAY_SECONDS = 2.0
"""Look-ahead of the counts filter (``docs/counts-agreement.md`` measures the choice)."""
ACCEL_SAMPLES = int(EPOCH_SECONDS * SAMPLE_RATE)
"""Grid samples of acceleration per epoch (1,500)."""
_HALF = int(COUNTS_DELAY_SECONDS * SAMPLE_RATE)
_CAP_S = GAP_CAP_MIN * 60.0
_HR_CENTRE = 70.0  # heart-rate sums are kept around this, for float32 variances


def _epochs(minutes: float) -> int:
    return round(minutes * 60.0 / EPOCH_SECONDS)


_COUNT_RING = _epochs(max(COUNT_WINDOWS_MIN))
_MAX_RING = _epochs(10)
_HR_RING = _epochs(max(HR_WINDOWS_MIN))
_BASE_RING = _epochs(HR_BASELINE_HOURS * 60)
_LOW_RING = _epochs(LOW_HR_WINDOW_HOURS * 60)

FEATURE_STATE_LAYOUT: tuple[tuple[str, int], ...] = (
    ("count_sum", _COUNT_RING),
    ("count_n", _COUNT_RING),
    ("count_max", _MAX_RING),
    ("since_count_s", 1),
    ("since_movement_s", 1),
    ("hr_n", _HR_RING),
    ("hr_mean", _HR_RING),
    ("hr_m2", _HR_RING),
    ("hr_epoch_mean", _BASE_RING),
    ("since_hr_s", 1),
    ("hr_last", LAST_HR_SAMPLES),
    ("hr_last_age_s", LAST_HR_SAMPLES),
)
"""Name and length of each part of the feature state, in order. Rings hold one value per epoch,
oldest first: the number of heart-rate samples, their mean (0 without samples) and sum of
squared deviations from it, the epoch's count sum, number of counts and largest count; the time-since counters are seconds at the end of the
previous epoch, capped at :data:`~sleepstream.features.GAP_CAP_MIN`. Every number stays small
enough for float16: spreads are combined from per-epoch means and sums of squared deviations
(no sum of squares), and count totals are summed in thousands."""
FEATURE_STATE_SIZE = sum(n for _, n in FEATURE_STATE_LAYOUT)
ACCEL_STATE_LAYOUT: tuple[tuple[str, int], ...] = (("accel_history", 2 * _HALF),)
"""The raw variant's state: the last ``2 D`` seconds of grid acceleration (NaN: missing)."""
ACCEL_STATE_SIZE = 2 * _HALF
STATE_LAYOUT_VERSION = 2
"""Bumped whenever the meaning or layout of the state changes."""


def initial_feature_state(batch: int = 1) -> Tensor:
    """The feature state of a stream that has seen nothing."""
    parts = []
    for name, n in FEATURE_STATE_LAYOUT:
        if name in ("hr_epoch_mean", "hr_last", "hr_last_age_s"):
            fill = math.nan
        elif name == "count_max":
            fill = -1.0  # no count
        elif name.startswith("since_"):
            fill = _CAP_S
        else:
            fill = 0.0
        parts.append(torch.full((batch, n), fill, dtype=torch.float32))
    return torch.cat(parts, dim=1)


def _split(state: Tensor) -> dict[str, Tensor]:
    out, at = {}, 0
    for name, n in FEATURE_STATE_LAYOUT:
        out[name] = state[:, at : at + n]
        at += n
    return out


def _push(ring: Tensor, value: Tensor) -> Tensor:
    return torch.cat([ring[:, 1:], value.unsqueeze(1)], dim=1)


def _nan_like(x: Tensor) -> Tensor:
    return torch.full_like(x, math.nan)


def _low_quantile(values: Tensor, q: float, min_n: int) -> Tensor:
    """The ``q`` quantile (linear interpolation) of each row's finite values; NaN under ``min_n``.

    Only the smallest values are sorted (``q`` is small), so the cost is a partial sort.
    """
    length = values.shape[1]
    k = min(length, math.floor(q * (length - 1)) + 2)
    finite = ~torch.isnan(values)
    n = finite.sum(dim=1)
    big = torch.full_like(values, 1e9)
    smallest, _ = torch.topk(torch.where(finite, values, big), k, dim=1, largest=False)
    position = q * (n.to(values.dtype) - 1.0).clamp(min=0.0)
    low = position.floor()
    high = torch.minimum(low + 1.0, (n - 1).clamp(min=0).to(values.dtype))
    v_low = torch.gather(smallest, 1, low.long().unsqueeze(1)).squeeze(1)
    v_high = torch.gather(smallest, 1, high.long().unsqueeze(1)).squeeze(1)
    result = v_low + (position - low) * (v_high - v_low)
    return torch.where(n >= min_n, result, _nan_like(result))


def _since(previous: Tensor, seen: Tensor, age_if_seen: Tensor) -> Tensor:
    return torch.where(seen, age_if_seen, previous + EPOCH_SECONDS).clamp(max=_CAP_S)


class FeatureStep(nn.Module):
    """One epoch of the causal features: ``(counts, hr, hr_offset, state) -> (features, state)``.

    The feature vector is in :data:`~sleepstream.features.FEATURE_NAMES` order; NaN marks a
    feature that cannot be computed (no sample in its window).
    """

    def forward(
        self, counts: Tensor, hr: Tensor, hr_offset: Tensor, state: Tensor
    ) -> tuple[Tensor, Tensor]:
        s = _split(state)
        nan_scalar = _nan_like(counts[:, 0])

        # -- activity counts ----------------------------------------------------------------
        present = ~torch.isnan(counts)
        c = torch.where(present, counts, torch.zeros_like(counts))
        count_sum = _push(s["count_sum"], c.sum(dim=1))
        count_n = _push(s["count_n"], present.to(c.dtype).sum(dim=1))
        count_max = _push(s["count_max"], torch.where(present, counts, -torch.ones_like(c)).amax(1))
        features = []
        for minutes in COUNT_WINDOWS_MIN:
            w = _epochs(minutes) if minutes > 1 else 1
            thousands = (count_sum[:, -w:] * 1e-3).sum(dim=1)
            n = count_n[:, -w:].sum(dim=1)
            # log1p(total) = log(1000) + log(total / 1000 + 0.001), without a total over 65,504
            log_total = math.log(1e3) + torch.log(thousands + 1e-3)
            features.append(torch.where(n > 0, log_total, nan_scalar))
        recent_max = count_max.amax(dim=1)
        features.append(
            torch.where(recent_max >= 0, torch.log1p(recent_max.clamp(min=0)), nan_scalar)
        )
        # Age at the epoch's end of the newest window seen (windows start at 0 and 15 s).
        window_age = EPOCH_SECONDS - COUNT_SECONDS * torch.arange(2, dtype=c.dtype)
        moving = present & (c > ACTIVE_COUNT)
        since_movement = _since(
            s["since_movement_s"][:, 0],
            moving.any(dim=1),
            torch.where(moving, window_age, torch.full_like(c, 1e9)).amin(dim=1),
        )
        since_count = _since(
            s["since_count_s"][:, 0],
            present.any(dim=1),
            torch.where(present, window_age, torch.full_like(c, 1e9)).amin(dim=1),
        )
        features += [since_movement / 60.0, since_count / 60.0]

        # -- heart rate ---------------------------------------------------------------------
        valid = ~torch.logical_or(torch.isnan(hr), torch.isnan(hr_offset))
        n_epoch = valid.to(hr.dtype).sum(dim=1)
        centred = torch.where(valid, hr - _HR_CENTRE, torch.zeros_like(hr))
        has_hr = n_epoch > 0
        mean_c = centred.sum(dim=1) / n_epoch.clamp(min=1.0)
        deviation = torch.where(valid, centred - mean_c.unsqueeze(1), torch.zeros_like(hr))
        hr_n = _push(s["hr_n"], n_epoch)
        hr_mean = _push(s["hr_mean"], mean_c)
        hr_m2 = _push(s["hr_m2"], (deviation * deviation).sum(dim=1))
        epoch_mean = torch.where(has_hr, _HR_CENTRE + mean_c, nan_scalar)
        big = torch.full_like(hr, 1e9)
        epoch_min = torch.where(valid, hr, big).amin(dim=1)
        epoch_max = torch.where(valid, hr, -big).amax(dim=1)
        features += [
            epoch_mean,
            torch.where(has_hr, epoch_min, nan_scalar),
            torch.where(has_hr, epoch_max, nan_scalar),
        ]
        means, stds = [], []
        for minutes in HR_WINDOWS_MIN:
            w = _epochs(minutes)
            counts_w = hr_n[:, -w:]
            n = counts_w.sum(dim=1)
            weight = counts_w / n.clamp(min=1.0).unsqueeze(1)
            window_mean = (weight * hr_mean[:, -w:]).sum(dim=1)
            spread = hr_mean[:, -w:] - window_mean.unsqueeze(1)
            # Chan et al.: the window's squared deviations are the epochs' plus n_i (m_i - m)^2.
            variance = (hr_m2[:, -w:] / n.clamp(min=1.0).unsqueeze(1)).sum(dim=1) + (
                weight * spread * spread
            ).sum(dim=1)
            means.append(torch.where(n > 0, _HR_CENTRE + window_mean, nan_scalar))
            stds.append(torch.where(n >= 2, torch.sqrt(variance.clamp(min=0.0)), nan_scalar))
        features += [*means, *stds, means[0] - means[1]]
        epoch_means = _push(s["hr_epoch_mean"], epoch_mean)
        baseline = _low_quantile(epoch_means, BASELINE_QUANTILE, MIN_BASELINE_EPOCHS)
        recent_low = _low_quantile(
            epoch_means[:, -_LOW_RING:], BASELINE_QUANTILE, MIN_BASELINE_EPOCHS
        )
        features += [means[0] - baseline, means[0] - recent_low]
        age = EPOCH_SECONDS - hr_offset
        newest_age = torch.where(valid, age, torch.full_like(hr, 1e9)).amin(dim=1)
        since_hr = _since(s["since_hr_s"][:, 0], has_hr, newest_age)
        features.append(since_hr / 60.0)
        # The last samples: the previous ones, then this epoch's valid ones (they come first,
        # in time order); the newest LAST_HR_SAMPLES are at positions m .. m + 4.
        values = torch.cat([s["hr_last"], torch.where(valid, hr, _nan_like(hr))], dim=1)
        ages = torch.cat(
            [s["hr_last_age_s"] + EPOCH_SECONDS, torch.where(valid, age, _nan_like(hr))], 1
        )
        index = n_epoch.long().unsqueeze(1) + torch.arange(LAST_HR_SAMPLES).unsqueeze(0)
        last = torch.gather(values, 1, index)
        last_age = torch.gather(ages, 1, index).clamp(max=_CAP_S)
        features += list(last.flip(1).unbind(1)) + list((last_age.flip(1) / 60.0).unbind(1))

        new_state = torch.cat(
            [
                count_sum,
                count_n,
                count_max,
                since_count.unsqueeze(1),
                since_movement.unsqueeze(1),
                hr_n,
                hr_mean,
                hr_m2,
                epoch_means,
                since_hr.unsqueeze(1),
                last,
                last_age,
            ],
            dim=1,
        )
        return torch.stack(features, dim=1), new_state


class AccelCounts(nn.Module):
    """The epoch's two activity counts from raw z acceleration on the 50 Hz grid.

    The published counts (:func:`~sleepstream.signal.counts.counts_offline`) band-pass the
    signal forward and backward; here the same zero-phase response, truncated to +-``D``
    (:func:`~sleepstream.signal.counts.fir_taps`), is one convolution over the state's last
    ``2 D`` seconds and the epoch's samples. Then, as published: absolute value, 128 bins over
    0-5 g numbered from 1, the maximum of each second, the sum over 15 s, ``(sum - 18) * 3.07``
    floored at 0. A window whose filter input has a missing sample has no count (NaN).
    """

    taps: Tensor

    def __init__(self, delay_seconds: float = COUNTS_DELAY_SECONDS, window: str = "boxcar"):
        super().__init__()
        taps = fir_taps(delay_seconds, SAMPLE_RATE, window)
        self.register_buffer("taps", torch.as_tensor(taps, dtype=torch.float32).view(1, 1, -1))
        self.history = len(taps) - 1

    def forward(self, accel: Tensor, history: Tensor) -> tuple[Tensor, Tensor]:
        x = torch.cat([history, accel], dim=1)
        missing = torch.isnan(x)
        x0 = torch.where(missing, torch.zeros_like(x), x).unsqueeze(1)
        filtered = nn.functional.conv1d(x0, self.taps).squeeze(1)  # (batch, ACCEL_SAMPLES)
        levels = torch.clamp(
            torch.floor(filtered.abs() * (N_BINS / FULL_SCALE_G)) + 1.0, 1.0, float(N_BINS)
        )
        per_second = levels.reshape(-1, int(EPOCH_SECONDS), int(SAMPLE_RATE)).amax(dim=2)
        sums = per_second.reshape(-1, 2, int(COUNT_SECONDS)).sum(dim=2)
        counts = ((sums - SUM_OFFSET) * SCALE).clamp(min=0.0)
        # A window has no count when its filter input holds a missing sample: the filtered
        # samples of window w read x[w * 750 : (w + 1) * 750 + history].
        window = int(COUNT_SECONDS * SAMPLE_RATE)
        gaps = missing.to(x.dtype)
        bad = (
            torch.stack(
                [gaps[:, w * window : (w + 1) * window + self.history].amax(dim=1) for w in (0, 1)],
                dim=1,
            )
            > 0.5
        )
        counts = torch.where(bad, _nan_like(counts), counts)
        return counts, x[:, -self.history :]


def initial_accel_state(batch: int = 1) -> Tensor:
    """The raw variant's state before any acceleration: all missing."""
    return torch.full((batch, ACCEL_STATE_SIZE), math.nan, dtype=torch.float32)


SCAN_CHUNK_EPOCHS = _BASE_RING // 2
"""Epochs each stretch of a long recording gives beyond its warm-up in :func:`scan`."""


@torch.no_grad()
def scan(
    counts: NDArray[np.floating],
    hr: NDArray[np.floating],
    hr_offset: NDArray[np.floating],
    accel: NDArray[np.floating] | None = None,
) -> NDArray[np.float32]:
    """Features of whole nights: :class:`FeatureStep` (after :class:`AccelCounts` when
    ``accel`` is given) stepped over the epochs, from the initial state.

    Arrays are ``(batch, epochs, ...)`` (or without the batch axis for one night); returns
    ``(batch, epochs, features)`` (or ``(epochs, features)``). Where ``accel`` gives a count,
    it replaces the ``counts`` input of that window only when that input is NaN.

    One recording much longer than the state's memory (the 24 h heart-rate ring) is cut into
    overlapping stretches stepped side by side (:func:`_scan_stretches`): the same features as
    one step after another (``tests/test_features.py`` checks it to the bit), about three times
    faster for a week.
    """
    single = np.ndim(counts) == 2
    arrays = [np.asarray(a, dtype=np.float32) for a in (counts, hr, hr_offset)]
    if accel is not None:
        arrays.append(np.asarray(accel, dtype=np.float32))
    if single:
        arrays = [a[None] for a in arrays]
    tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
    batch = tensors[0].shape[0]
    with _OneThread():
        if single and tensors[0].shape[1] >= _BASE_RING + 3 * SCAN_CHUNK_EPOCHS:
            out = _scan_stretches(tensors, SCAN_CHUNK_EPOCHS)
        else:
            out, _, _ = _scan_steps(
                tensors, (initial_feature_state(batch), initial_accel_state(batch))
            )
    result = out.numpy()
    return result[0] if single else result


_ScanState = tuple[Tensor, Tensor]  # the feature state, the raw variant's acceleration history


def _scan_steps(
    tensors: Sequence[Tensor], state: _ScanState, keep_at: int = -1
) -> tuple[Tensor, _ScanState, _ScanState]:
    """Step every epoch of ``tensors`` (counts, hr, hr_offset[, accel], each ``(batch,
    epochs, ...)``) from ``state``. Returns the features, the state at the end, and the state
    before epoch ``keep_at`` (the initial state when it is never reached)."""
    batch, n_epochs = tensors[0].shape[:2]
    step, counter = FeatureStep(), AccelCounts()
    features, history = state
    out = torch.empty((batch, n_epochs, len(FEATURE_NAMES)), dtype=torch.float32)
    kept = state
    for i in range(n_epochs):
        if i == keep_at:
            kept = (features, history)
        c = tensors[0][:, i]
        if len(tensors) > 3:
            from_accel, history = counter(tensors[3][:, i], history)
            c = torch.where(torch.isnan(c), from_accel, c)
        out[:, i], features = step(c, tensors[1][:, i], tensors[2][:, i], features)
    return out, (features, history), kept


def _scan_stretches(tensors: Sequence[Tensor], length: int) -> Tensor:
    """One long recording (a batch of one) as overlapping stretches stepped as one batch.

    Stretch ``k`` steps the epochs from ``k * length`` to ``k * length + memory + length``
    from the initial state, ``memory`` being the longest ring (24 h). It gives the epochs after
    its first ``memory``, where its state is what one long scan would have, unless something
    older than the rings lingers (the last heart-rate samples before a day without any). That
    is checked: where the state a stretch reached there differs from the state the stretch
    before it ended with, its epochs are stepped again from the latter.
    """
    memory = _BASE_RING
    n_epochs = tensors[0].shape[1]
    span = memory + length
    starts = range(0, n_epochs - memory, length)
    padded = []
    for t in tensors:
        rows = []
        for start in starts:
            piece = t[0, start : start + span]
            missing = torch.full((span - len(piece), *piece.shape[1:]), math.nan)
            rows.append(torch.cat([piece, missing]))
        padded.append(torch.stack(rows))
    n = len(starts)
    initial = (initial_feature_state(n), initial_accel_state(n))
    stepped, ends, reached = _scan_steps(padded, initial, keep_at=memory)
    out = [stepped[0, : min(span, n_epochs)]]
    end = (ends[0][:1], ends[1][:1])
    for k in range(1, n):
        first, stop = starts[k] + memory, min(starts[k] + span, n_epochs)
        if all(_same(a[k : k + 1], b) for a, b in zip(reached, end, strict=True)):
            out.append(stepped[k, memory : memory + stop - first])
            end = (ends[0][k : k + 1], ends[1][k : k + 1])
        else:
            log.debug("Scan: stretch %d of %d stepped again from the one before", k, n)
            again, end, _ = _scan_steps([t[:, first:stop] for t in tensors], end)
            out.append(again[0])
    return torch.cat(out)[None]


def _same(a: Tensor, b: Tensor) -> bool:
    """Equal everywhere, NaN equal to NaN."""
    return bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all())


def accel_counts(
    times: NDArray[np.floating],
    z: NDArray[np.floating],
    origin: float = 0.0,
    *,
    delay_seconds: float = COUNTS_DELAY_SECONDS,
    window: str = "boxcar",
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Activity counts of a raw recording, as the live step computes them.

    Windows are ``[origin + 15 k, origin + 15 (k + 1))``; every one from the window of the
    first sample to that of the last is computed with :class:`AccelCounts` (other
    ``delay_seconds`` and ``window`` only to study the filter, ``docs/counts-agreement.md``),
    and those without a count (a missing grid point in their filter input, as within the delay
    of either end) are left out. Returns the window starts and the counts.
    """
    from sleepstream.features import accel_epochs

    t = np.asarray(times, dtype=np.float64)
    if len(t) == 0:
        return np.zeros(0), np.zeros(0)
    first = origin + EPOCH_SECONDS * math.floor((t[0] - origin) / EPOCH_SECONDS)
    n_epochs = math.floor((t[-1] - first) / EPOCH_SECONDS) + 1
    grid = accel_epochs(t, np.asarray(z, dtype=np.float64), first, n_epochs, delay_seconds)
    counter = AccelCounts(delay_seconds, window)
    history = torch.full((1, counter.history), math.nan)
    out = np.empty((n_epochs, 2), dtype=np.float64)
    with torch.no_grad(), _OneThread():
        x = torch.from_numpy(grid.astype(np.float32))
        for i in range(n_epochs):
            c, history = counter(x[i : i + 1], history)
            out[i] = c[0].double().numpy()
    starts = first + COUNT_SECONDS * np.arange(2 * n_epochs)
    flat = out.reshape(-1)
    keep = np.isfinite(flat)
    return starts[keep], flat[keep]


class _OneThread:
    """Small per-epoch tensors: threads cost more than they give (restored afterwards)."""

    def __enter__(self) -> None:
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.threads)


def layout(names: Sequence[tuple[str, int]]) -> list[dict[str, object]]:
    """A state layout as JSON-ready ``{"name", "offset", "length"}`` entries."""
    out, at = [], 0
    for name, n in names:
        out.append({"name": name, "offset": at, "length": n})
        at += n
    return out


__all__ = [
    "ACCEL_SAMPLES",
    "COUNTS_DELAY_SECONDS",
    "FEATURE_STATE_LAYOUT",
    "FEATURE_STATE_SIZE",
    "HR_SLOTS",
    "STATE_LAYOUT_VERSION",
    "AccelCounts",
    "FeatureStep",
    "accel_counts",
    "initial_accel_state",
    "initial_feature_state",
    "layout",
    "scan",
]
