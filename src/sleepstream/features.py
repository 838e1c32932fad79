"""The causal per-epoch feature extractor: one implementation for live use and for replay.

:class:`CausalFeatures` is fed heart-rate samples and activity counts in time order and, when an
epoch closes, returns that epoch's feature vector. It only ever reads samples that arrived
before the epoch's end, so nothing after the end of epoch *t* can change the vector of epoch *t*.
:func:`extract` replays a recorded night through the same object (the batch path).

Conventions
-----------
- An epoch is ``[start, start + 30 s)``; a heart-rate sample at time ``t`` belongs to the epoch
  containing ``t``; an activity count belongs to the epoch containing its window *start*.
- Features that cannot be computed (no sample yet, a gap) are ``NaN``; the model's input
  normalisation maps them to the training mean, and the gap features say why.
- All memory is bounded by the longest look-back (:attr:`CausalFeatures.hr_baseline_seconds`).
- **No anchor.** No feature counts from the moment the extractor was started: each one is a
  function of the samples in a fixed look-back window before the epoch's end (at most
  :attr:`CausalFeatures.hr_baseline_seconds`), and time-since features saturate at
  :data:`GAP_CAP_MIN`. An extractor started earlier gives the same vectors once its look-back is
  filled, so a watch worn all day needs no "lights off" moment.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sleepstream import state_data
from sleepstream.cache import cache_root
from sleepstream.paths import atomic_file
from sleepstream.records import EPOCH_SECONDS, Recording

log = logging.getLogger(__name__)

_WHAT = "feature state"

COUNT_WINDOWS_MIN = (1, 2, 5, 10, 30)
"""Look-back windows (minutes) for summed activity counts, the current epoch included."""
HR_WINDOWS_MIN = (5, 15)
"""Look-back windows (minutes) for heart-rate mean and spread."""
LOW_HR_WINDOW_HOURS = 6.0
"""Look-back (hours) of the recent low heart rate, ``hr_above_recent_low``."""
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


class _Series:
    """Time-ordered samples in growable numpy arrays; old samples are dropped from the front."""

    def __init__(self) -> None:
        self.times = np.empty(256, dtype=np.float64)
        self.values = np.empty(256, dtype=np.float64)
        self.head = 0
        self.size = 0

    def append(self, t: float, value: float) -> None:
        if self.size == len(self.times):
            live = self.size - self.head
            capacity = max(256, 2 * live)
            for name in ("times", "values"):
                old = getattr(self, name)
                new = np.empty(capacity, dtype=np.float64)
                new[:live] = old[self.head : self.size]
                setattr(self, name, new)
            self.head, self.size = 0, live
        self.times[self.size] = t
        self.values[self.size] = value
        self.size += 1

    def drop_before(self, t: float) -> NDArray[np.float64]:
        """Forget the samples before ``t``; return their values."""
        n = int(np.searchsorted(self.times[self.head : self.size], t, side="left"))
        dropped = self.values[self.head : self.head + n]
        self.head += n
        return dropped

    def view(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        return self.times[self.head : self.size], self.values[self.head : self.size]


class CausalFeatures:
    """Streaming feature extractor: samples in (time order), one feature vector per closed epoch.

    Parameters
    ----------
    hr_baseline_seconds
        Look-back of the resting heart-rate baseline (default one day): the 5th percentile of
        the heart rate over this window, prior days included when the stream has them.
    baseline_quantile
        The quantile used for the resting baseline.

    Examples
    --------
    >>> fx = CausalFeatures()
    >>> fx.update_heart_rate(10.0, 60.0)
    >>> fx.update_count(0.0, 5.0)
    >>> vector = fx.close_epoch(0.0)
    >>> len(vector) == len(FEATURE_NAMES)
    True
    """

    names = FEATURE_NAMES

    def __init__(self, hr_baseline_seconds: float = 86_400.0, baseline_quantile: float = 0.05):
        self.hr_baseline_seconds = hr_baseline_seconds
        self.baseline_quantile = baseline_quantile
        self._hr = _Series()
        self._hr_sorted: list[float] = []  # the same heart rates, sorted, for the baseline
        self._counts = _Series()
        self._last_hr_time = -math.inf
        self._last_count_time = -math.inf
        self._last_movement_time = -math.inf
        self._closed_until = -math.inf

    def clone(self) -> CausalFeatures:
        """A fresh extractor with the same parameters and no state."""
        return CausalFeatures(self.hr_baseline_seconds, self.baseline_quantile)

    # -- state as data ---------------------------------------------------------------------
    _TIMES = ("last_hr_time", "last_count_time", "last_movement_time", "closed_until")
    _SERIES = (("hr_times", "hr_bpm"), ("count_times", "counts"))

    def get_state(self) -> tuple[dict[str, float | None], dict[str, NDArray[np.float64]]]:
        """The state as JSON-ready times (``None``: never) and arrays, for a portable snapshot."""
        numbers = {key: state_data.finite_or_none(getattr(self, f"_{key}")) for key in self._TIMES}
        (hr_t, hr_v), (ct_t, ct_v) = self._hr.view(), self._counts.view()
        arrays = {"hr_times": hr_t, "hr_bpm": hr_v, "count_times": ct_t, "counts": ct_v}
        return numbers, {k: v.copy() for k, v in arrays.items()}

    def set_state(self, numbers: object, arrays: Mapping[str, NDArray[Any]]) -> None:
        """Continue from :meth:`get_state`; ``ValueError`` (nothing changed) if malformed."""
        if not isinstance(numbers, Mapping):
            raise ValueError(f"feature state must be a mapping, got {type(numbers).__name__}")
        fresh = self.clone()
        for key in self._TIMES:
            setattr(fresh, f"_{key}", state_data.time_or_never(numbers, key, what=_WHAT))
        for (times, values), series in zip(self._SERIES, (fresh._hr, fresh._counts), strict=True):
            t = state_data.array(arrays, times, np.float64, what=_WHAT)
            v = state_data.array(arrays, values, np.float64, (len(t),), what=_WHAT)
            if np.any(np.diff(t) < 0):
                raise ValueError(f"feature state {times!r} is not in time order")
            for ti, vi in zip(t.tolist(), v.tolist(), strict=True):
                series.append(ti, vi)
        fresh._hr_sorted = sorted(fresh._hr.view()[1].tolist())
        self.__dict__.update(fresh.__dict__)

    # -- input -------------------------------------------------------------------------------
    def _check_time(self, t: float, what: str) -> None:
        if not math.isfinite(t):
            raise ValueError(f"{what} time {t!r} is not finite")
        if t < self._closed_until:
            raise ValueError(
                f"{what} at t={t:.3f} s arrived after the epoch ending at "
                f"{self._closed_until:.3f} s was closed"
            )

    def update_heart_rate(self, t: float, bpm: float) -> None:
        """Add one heart-rate sample (s, beats per minute)."""
        self._check_time(t, "heart-rate sample")
        if not math.isfinite(bpm):
            raise ValueError(f"heart rate {bpm!r} at t={t:.3f} s is not finite")
        self._hr.append(t, bpm)
        bisect.insort(self._hr_sorted, bpm)
        self._last_hr_time = max(self._last_hr_time, t)

    def update_count(self, t: float, count: float) -> None:
        """Add one activity count whose 15 s window starts at ``t``."""
        self._check_time(t, "activity count")
        if not math.isfinite(count) or count < 0:
            raise ValueError(f"activity count {count!r} at t={t:.3f} s must be finite and >= 0")
        self._counts.append(t, count)
        self._last_count_time = max(self._last_count_time, t)
        if count > ACTIVE_COUNT:
            self._last_movement_time = max(self._last_movement_time, t)

    # -- output ------------------------------------------------------------------------------
    def close_epoch(self, start: float) -> NDArray[np.float64]:
        """Close the epoch ``[start, start + 30 s)`` and return its feature vector.

        Every sample given so far with a time before ``start + 30`` counts; later calls may only
        add samples at or after that end.
        """
        end = start + EPOCH_SECONDS
        self._closed_until = end
        self._forget(end)
        counts = self._count_features(start, end)
        hr = self._hr_features(start, end)
        return np.array([*counts, *hr], dtype=np.float64)

    def _forget(self, end: float) -> None:
        for bpm in self._hr.drop_before(end - self.hr_baseline_seconds).tolist():
            del self._hr_sorted[bisect.bisect_left(self._hr_sorted, bpm)]
        self._counts.drop_before(end - max(COUNT_WINDOWS_MIN) * 60.0)

    def _since(self, last: float, end: float) -> float:
        return min((end - last) / 60.0, GAP_CAP_MIN)

    def _count_features(self, start: float, end: float) -> list[float]:
        times, values = self._counts.view()
        out: list[float] = []
        for minutes in COUNT_WINDOWS_MIN:
            window_start = end - minutes * 60.0 if minutes > 1 else start
            inside = (times >= window_start) & (times < end)
            out.append(math.log1p(values[inside].sum()) if inside.any() else math.nan)
        recent = (times >= end - 600.0) & (times < end)
        out.append(math.log1p(values[recent].max()) if recent.any() else math.nan)
        out.append(self._since(self._last_movement_time, end))
        out.append(self._since(self._last_count_time, end))
        return out

    def _baseline(self) -> float:
        """The ``baseline_quantile`` of the heart rates held (linear interpolation)."""
        values = self._hr_sorted
        position = self.baseline_quantile * (len(values) - 1)
        low = int(position)
        high = min(low + 1, len(values) - 1)
        return values[low] + (position - low) * (values[high] - values[low])

    def _hr_features(self, start: float, end: float) -> list[float]:
        times, bpm = self._hr.view()
        epoch = bpm[(times >= start) & (times < end)]
        nan = math.nan
        out = [
            float(epoch.mean()) if len(epoch) else nan,
            float(epoch.min()) if len(epoch) else nan,
            float(epoch.max()) if len(epoch) else nan,
        ]
        means, stds = [], []
        for minutes in HR_WINDOWS_MIN:
            window = bpm[times >= end - minutes * 60.0]
            means.append(float(window.mean()) if len(window) else nan)
            stds.append(float(window.std()) if len(window) >= 2 else nan)
        out += [*means, *stds, means[0] - means[1]]
        current = means[0]
        baseline = self._baseline() if len(bpm) >= 10 else nan
        out.append(current - baseline)
        recent = bpm[times >= end - LOW_HR_WINDOW_HOURS * 3600.0]
        low = float(np.quantile(recent, self.baseline_quantile)) if len(recent) >= 10 else nan
        out.append(current - low)
        out.append(self._since(self._last_hr_time, end))
        last = bpm[-LAST_HR_SAMPLES:][::-1]
        ages = [self._since(t, end) for t in times[-LAST_HR_SAMPLES:][::-1]]
        padding = [nan] * (LAST_HR_SAMPLES - len(last))
        out += [*last.tolist(), *padding, *ages, *padding]
        return out


def extract(
    recording: Recording,
    extractor: CausalFeatures | None = None,
    n_epochs: int | None = None,
) -> NDArray[np.float64]:
    """Replay a night through :class:`CausalFeatures`: shape ``(n_epochs, n_features)``.

    Samples are fed in time order, each before the first epoch end after it; the vector of each
    epoch is taken when that epoch closes, exactly as in live use.
    """
    fx = extractor.clone() if extractor is not None else CausalFeatures()
    n = recording.n_epochs if n_epochs is None else n_epochs
    ends = recording.epoch_times[:n] + EPOCH_SECONDS
    hr_cut = np.searchsorted(recording.hr_times, ends, side="left")
    count_cut = np.searchsorted(recording.count_times, ends, side="left")
    out = np.empty((n, len(FEATURE_NAMES)), dtype=np.float64)
    hr_done = count_done = 0
    hr_t, hr_v = recording.hr_times.tolist(), recording.hr_bpm.tolist()
    ct_t, ct_v = recording.count_times.tolist(), recording.counts.tolist()
    for i in range(n):
        for j in range(hr_done, int(hr_cut[i])):
            fx.update_heart_rate(hr_t[j], hr_v[j])
        for j in range(count_done, int(count_cut[i])):
            fx.update_count(ct_t[j], ct_v[j])
        hr_done, count_done = int(hr_cut[i]), int(count_cut[i])
        out[i] = fx.close_epoch(float(recording.epoch_times[i]))
    return out


_MEMO: OrderedDict[str, NDArray[np.float64]] = OrderedDict()
_MEMO_SIZE = 512


_CODE = hashlib.blake2b(Path(__file__).read_bytes(), digest_size=8).hexdigest()
"""Version of this module's code: cached features are recomputed whenever it changes."""


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
    """:func:`extract` with default parameters, cached by the night's content (read-only).

    Kept in memory, and on disk under the cache folder (``$SLEEPSTREAM_CACHE``), so training
    processes share the work; the key includes this module's code, so a change recomputes.
    """
    key = _fingerprint(recording)
    if key not in _MEMO:
        try:
            features = _from_disk(key)
        except KeyError:
            features = extract(recording)
            _to_disk(key, features)
        features.setflags(write=False)
        _MEMO[key] = features
        while len(_MEMO) > _MEMO_SIZE:
            _MEMO.popitem(last=False)
    _MEMO.move_to_end(key)
    return _MEMO[key]


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
