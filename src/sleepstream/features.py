"""The causal per-epoch features: names, the step's inputs from a recording, and the batch path.

The features themselves are computed in one place, the tensor step
:class:`sleepstream.step.FeatureStep`, which the live detector and the exported model files
run one epoch at a time. :func:`extract` scans it over a recorded night (the batch path used by
training and evaluation); this module turns a :class:`~sleepstream.records.Recording` into the
step's per-epoch inputs (:func:`epoch_inputs`) and caches the results.

Conventions
-----------
- An epoch is ``[start, start + 30 s)``; a heart-rate sample at time ``t`` belongs to the epoch
  containing ``t``; an activity count belongs to the epoch containing its window *start*.
- Features that cannot be computed (no sample yet, a gap) are ``NaN``; the model's input
  normalisation maps them to the training mean, and the gap features say why.
- Memory is fixed: the longest look-back is :data:`HR_BASELINE_HOURS`, held as one mean heart
  rate per epoch.
- **No anchor.** No feature counts from the moment the stream was started: each one is a
  function of the samples in a fixed look-back window before the epoch's end (at most
  :data:`HR_BASELINE_HOURS`), and time-since features saturate at :data:`GAP_CAP_MIN`. A
  stream started earlier gives the same vectors once its look-back is filled, so a watch worn
  all day needs no "lights off" moment.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from sleepstream.cache import cache_root
from sleepstream.paths import atomic_file
from sleepstream.records import COUNT_SECONDS, EPOCH_SECONDS, Recording

log = logging.getLogger(__name__)

COUNT_WINDOWS_MIN = (1, 2, 5, 10, 30)
"""Look-back windows (minutes) for summed activity counts, the current epoch included."""
HR_WINDOWS_MIN = (5, 15)
"""Look-back windows (minutes) for heart-rate mean and spread."""
LOW_HR_WINDOW_HOURS = 6.0
"""Look-back (hours) of the recent low heart rate, ``hr_above_recent_low``."""
HR_BASELINE_HOURS = 24.0
"""Look-back (hours) of the resting baseline, ``hr_above_baseline``."""
BASELINE_QUANTILE = 0.05
"""Both lows are this quantile of the per-epoch mean heart rates in their look-back."""
MIN_BASELINE_EPOCHS = 10
"""Epochs with heart rate a low needs; fewer give NaN."""
HR_SLOTS = 30
"""Heart-rate samples one epoch's step takes (one a second); more are merged per second."""
GAP_CAP_MIN = 60.0
"""Time-since features saturate here (minutes)."""
LAST_HR_SAMPLES = 5
"""The raw last heart-rate samples and their ages are features too (the original hobby model)."""
ACTIVE_COUNT = 20.0
"""An activity count above this marks a movement for ``min_since_movement``."""

FEATURE_NAMES: tuple[str, ...] = (
    "log_count_epoch",
    *(f"log_count_{w}min" for w in COUNT_WINDOWS_MIN[1:]),
    "log_count_max_10min",
    "min_since_movement",
    "min_since_count",
    "hr_epoch",
    "hr_min_epoch",
    "hr_max_epoch",
    *(f"hr_mean_{w}min" for w in HR_WINDOWS_MIN),
    *(f"hr_std_{w}min" for w in HR_WINDOWS_MIN),
    "hr_change_5_15min",
    "hr_above_baseline",
    "hr_above_recent_low",
    "min_since_hr",
    *(f"hr_last_{k}" for k in range(1, LAST_HR_SAMPLES + 1)),
    *(f"hr_age_{k}" for k in range(1, LAST_HR_SAMPLES + 1)),
)
"""Order of the feature vector."""

SIMPLE_FEATURES: tuple[str, ...] = (
    "log_count_epoch",
    "log_count_2min",
    "log_count_5min",
    "log_count_10min",
    "hr_epoch",
    "hr_mean_5min",
    "hr_std_5min",
    "min_since_count",
    "min_since_hr",
)
"""A small subset: counts and heart rate of the current and recent epochs only."""

HOBBY_FEATURES: tuple[str, ...] = (
    "log_count_epoch",
    *(f"hr_last_{k}" for k in range(1, LAST_HR_SAMPLES + 1)),
    *(f"hr_age_{k}" for k in range(1, LAST_HR_SAMPLES + 1)),
)
"""The original hobby design's inputs: this epoch's motion and the last 5 heart-rate values."""

SEQUENCE_FEATURES: tuple[str, ...] = tuple(
    n for n in FEATURE_NAMES if not n.startswith(("hr_last_", "hr_age_"))
)
"""Default inputs of the recurrent model: every summary feature, no raw heart-rate samples."""


def _epoch_slots(
    times: NDArray[np.float64], first_start: float, n_epochs: int
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]:
    """For time-ordered samples: which are inside the grid, their epoch, their rank within the
    epoch, and their offset (s) from the epoch's start."""
    position = (times - first_start) / EPOCH_SECONDS
    inside = np.flatnonzero((position >= 0) & (position < n_epochs))
    epoch = np.floor(position[inside]).astype(np.int64)
    first_of_epoch = np.searchsorted(epoch, epoch, side="left")
    rank = np.arange(len(epoch)) - first_of_epoch
    offset = times[inside] - (first_start + epoch * EPOCH_SECONDS)
    return inside, epoch, rank, offset


def pack_heart_rate(
    offsets: NDArray[np.float64], bpm: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """One epoch's heart-rate samples as the step's ``(HR_SLOTS,)`` inputs (NaN padded).

    Samples are put in time order; an epoch with more than :data:`HR_SLOTS` samples (more than
    one a second) is reduced to the mean of each second that has samples.

    >>> hr, offset = pack_heart_rate(np.array([12.0, 3.0]), np.array([61.0, 60.0]))
    >>> hr[:3].tolist(), offset[:3].tolist()
    ([60.0, 61.0, nan], [3.0, 12.0, nan])
    """
    order = np.argsort(offsets, kind="stable")
    offsets, bpm = np.asarray(offsets)[order], np.asarray(bpm)[order]
    if len(offsets) > HR_SLOTS:
        second = np.floor(offsets).astype(np.int64)
        seconds, index, n = np.unique(second, return_index=True, return_counts=True)
        offsets = np.add.reduceat(offsets, index) / n
        bpm = np.add.reduceat(bpm, index) / n
        del seconds
    hr = np.full(HR_SLOTS, np.nan)
    at = np.full(HR_SLOTS, np.nan)
    hr[: len(bpm)], at[: len(offsets)] = bpm, offsets
    return hr, at


def pack_counts(offsets: NDArray[np.float64], counts: NDArray[np.float64]) -> NDArray[np.float64]:
    """One epoch's activity counts as the step's ``(2,)`` input (NaN: missing), by the offset
    (s after the epoch's start) of each window's start.

    A count goes to the 15 s half holding its window start; two counts fill both halves in
    time order; counts sharing a half are summed. As :func:`epoch_inputs` places them.

    >>> pack_counts(np.array([14.99, 29.98]), np.array([3.0, 4.0])).tolist()
    [3.0, 4.0]
    >>> pack_counts(np.array([20.0]), np.array([5.0])).tolist()
    [nan, 5.0]
    """
    out = np.full(2, np.nan)
    if len(counts) == 0:
        return out
    order = np.argsort(offsets, kind="stable")
    offsets, counts = np.asarray(offsets)[order], np.asarray(counts)[order]
    slots = (
        np.arange(2)
        if len(counts) == 2
        else np.clip(np.floor(offsets / COUNT_SECONDS), 0, 1).astype(np.int64)
    )
    for slot, value in zip(slots.tolist(), counts.tolist(), strict=True):
        out[slot] = value if np.isnan(out[slot]) else out[slot] + value
    return out


def epoch_inputs(
    recording: Recording, n_epochs: int | None = None
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """The step's inputs for every epoch of a night: counts ``(n, 2)``, heart rate and its
    offsets ``(n, HR_SLOTS)``; NaN where missing.

    A count goes to the epoch holding its window start, in the slot of its 15 s half; when an
    epoch holds exactly two counts they fill both slots in time order (recorded count windows
    drift by a few hundredths of a second per window against the 30 s grid). Epochs must be
    contiguous (``ValueError`` otherwise).
    """
    n = recording.n_epochs if n_epochs is None else n_epochs
    times = recording.epoch_times[:n]
    if n and np.any(np.diff(times) != EPOCH_SECONDS):
        raise ValueError(f"Subject {recording.subject_id}: epochs are not contiguous 30 s steps")
    first = float(times[0]) if n else 0.0
    counts = np.zeros((n, 2))
    present = np.zeros((n, 2), dtype=bool)
    inside, epoch, rank, offset = _epoch_slots(recording.count_times, first, n)
    values = recording.counts[inside]
    per_epoch = np.bincount(epoch, minlength=n)
    by_half = np.clip(np.floor(offset / COUNT_SECONDS), 0, 1).astype(np.int64)
    slot = np.where(per_epoch[epoch] == 2, rank, by_half)
    np.add.at(counts, (epoch, slot), values)
    present[epoch, slot] = True
    counts[~present] = np.nan
    hr = np.full((n, HR_SLOTS), np.nan)
    hr_offset = np.full((n, HR_SLOTS), np.nan)
    inside, epoch, rank, offset = _epoch_slots(recording.hr_times, first, n)
    bpm = recording.hr_bpm[inside]
    crowded = np.bincount(epoch, minlength=n)[epoch] > HR_SLOTS
    hr[epoch[~crowded], rank[~crowded]] = bpm[~crowded]
    hr_offset[epoch[~crowded], rank[~crowded]] = offset[~crowded]
    for e in np.unique(epoch[crowded]).tolist():
        mine = crowded & (epoch == e)
        hr[e], hr_offset[e] = pack_heart_rate(offset[mine], bpm[mine])
    return counts, hr, hr_offset


def extract(recording: Recording, n_epochs: int | None = None) -> NDArray[np.float64]:
    """Features of a night, shape ``(n_epochs, n_features)``: the live step
    (:class:`sleepstream.step.FeatureStep`) scanned over :func:`epoch_inputs` from a fresh state.

    Samples before the first epoch are not seen (a stream starts at its first epoch). Nights
    read from raw acceleration carry the step's own counts
    (:func:`sleepstream.step.accel_counts`).
    """
    return extract_many([recording], None if n_epochs is None else [n_epochs])[0]


def extract_many(
    recordings: Sequence[Recording], n_epochs: Sequence[int] | None = None
) -> list[NDArray[np.float64]]:
    """:func:`extract` for several nights at once (one batched scan, padded to the longest)."""
    from sleepstream import step

    lengths = [r.n_epochs for r in recordings] if n_epochs is None else list(n_epochs)
    if not recordings:
        return []
    longest = max(lengths)
    counts = np.full((len(recordings), longest, 2), np.nan)
    hr = np.full((len(recordings), longest, HR_SLOTS), np.nan)
    hr_offset = np.full_like(hr, np.nan)
    for i, (recording, n) in enumerate(zip(recordings, lengths, strict=True)):
        counts[i, :n], hr[i, :n], hr_offset[i, :n] = epoch_inputs(recording, n)
    out = step.scan(counts, hr, hr_offset)
    return [out[i, :n].astype(np.float64) for i, n in enumerate(lengths)]


def accel_epochs(
    times: NDArray[np.float64],
    z: NDArray[np.float64],
    first_start: float,
    n_epochs: int,
    delay_seconds: float | None = None,
) -> NDArray[np.float64]:
    """The raw variant's acceleration input for ``n_epochs`` epochs from ``first_start``.

    Samples go onto the 50 Hz grid (:func:`~sleepstream.signal.grid.resample_to_grid`: linear
    interpolation across gaps up to 1 s, NaN inside longer ones, and a polyphase resampling
    first for rates other than about 50 Hz); epoch ``k`` gets the grid
    from its start plus the counts filter's delay (default
    :data:`~sleepstream.step.COUNTS_DELAY_SECONDS`), ``(n_epochs, 1500)``.
    """
    from sleepstream.signal.grid import resample_to_grid
    from sleepstream.step import ACCEL_SAMPLES, COUNTS_DELAY_SECONDS

    delay = COUNTS_DELAY_SECONDS if delay_seconds is None else delay_seconds
    grid = resample_to_grid(times, z, first_start + delay, n_epochs * ACCEL_SAMPLES)
    return grid.reshape(n_epochs, ACCEL_SAMPLES)


_MEMO: OrderedDict[str, NDArray[np.float64]] = OrderedDict()
_MEMO_SIZE = 512


_CODE = hashlib.blake2b(
    b"".join(
        (Path(__file__).parent / name).read_bytes()
        for name in ("features.py", "step.py", "signal/counts.py", "signal/grid.py")
    ),
    digest_size=8,
).hexdigest()
"""Version of the feature code: cached features are recomputed whenever it changes."""


def _fingerprint(recording: Recording) -> str:
    digest = hashlib.blake2b(f"{_CODE}:{recording.subject_id}".encode(), digest_size=16)
    for array in (
        recording.epoch_times,
        recording.hr_times,
        recording.hr_bpm,
        recording.count_times,
        recording.counts,
    ):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _from_disk(key: str) -> NDArray[np.float64]:
    path = cache_root() / "features" / f"{key}.npy"
    try:
        return np.asarray(np.load(path, allow_pickle=False), dtype=np.float64)
    except (OSError, ValueError):
        pass  # not cached yet, or a partial file: recompute
    raise KeyError(key)


def _to_disk(key: str, features: NDArray[np.float64]) -> None:
    try:
        with atomic_file(cache_root() / "features" / f"{key}.npy") as f:
            np.save(f, features, allow_pickle=False)
    except OSError as error:
        log.debug("Feature cache not written (%s)", error)


def night_features(recording: Recording) -> NDArray[np.float64]:
    """:func:`extract`, cached by the night's content (read-only).

    Kept in memory, and on disk under the cache folder (``$SLEEPSTREAM_CACHE``), so training
    processes share the work; the key includes the feature code, so a change recomputes.
    """
    return nights_features([recording])[0]


def nights_features(recordings: Sequence[Recording]) -> list[NDArray[np.float64]]:
    """:func:`night_features` of several nights; those not cached are computed in one scan."""
    keys = [_fingerprint(r) for r in recordings]
    todo: dict[str, Recording] = {}
    for key, recording in zip(keys, recordings, strict=True):
        if key in _MEMO or key in todo:
            continue
        try:
            _remember(key, _from_disk(key))
        except KeyError:
            todo[key] = recording
    if todo:
        for key, features in zip(todo, extract_many(list(todo.values())), strict=True):
            _to_disk(key, features)
            _remember(key, features)
    out = []
    for key in keys:
        _MEMO.move_to_end(key)
        out.append(_MEMO[key])
    return out


def _remember(key: str, features: NDArray[np.float64]) -> None:
    features.setflags(write=False)
    _MEMO[key] = features
    while len(_MEMO) > _MEMO_SIZE:
        _MEMO.popitem(last=False)


FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "all": FEATURE_NAMES,
    "sequence": SEQUENCE_FEATURES,
    "simple": SIMPLE_FEATURES,
    "hobby": HOBBY_FEATURES,
}


def resolve_features(features: str | Sequence[str]) -> tuple[str, ...]:
    """Feature names from a set name (``"sequence"``, ``"hobby"``, ...) or an explicit list."""
    if isinstance(features, str):
        if features not in FEATURE_SETS:
            raise ValueError(
                f"Unknown feature set {features!r}; known: {sorted(FEATURE_SETS)} or a list"
            )
        return FEATURE_SETS[features]
    unknown = [n for n in features if n not in FEATURE_NAMES]
    if unknown:
        raise ValueError(f"Unknown features {unknown}; available: {list(FEATURE_NAMES)}")
    return tuple(features)


def select(features: NDArray[np.float64], names: Sequence[str]) -> NDArray[np.float64]:
    """Columns ``names`` of a feature matrix in :data:`FEATURE_NAMES` order."""
    index = [FEATURE_NAMES.index(n) for n in names]
    return features[:, index]
