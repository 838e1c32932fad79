"""A batch into a device's detector, in time order; its results as stored records.

A batch may span minutes, and the detector closes an epoch without a stream once another
stream is ``close_lag`` (60 s) past it. Feeding a long batch stream after stream would
therefore close epochs on heart rate alone and make that batch's acceleration late. The
streams are instead fed together, slice by slice of :data:`SLICE_SECONDS`, as a watch would
have sent them; the detector's results do not depend on the chunking, so they are those of
the samples fed one by one.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike, NDArray

from sleepstream.live.context import MotionContext
from sleepstream.live.detector import EpochResult, SleepDetector
from sleepstream.serve.schema import Batch
from sleepstream.serve.store import EpochRecord

SLICE_SECONDS = 10.0
"""Length of the time slices a batch is fed in (well under the detector's ``close_lag``)."""

Adder = Callable[[ArrayLike, ArrayLike], list[EpochResult]]
_Stream = tuple[NDArray[np.float64], NDArray[np.float64], Adder]


def feed(detector: SleepDetector, batch: Batch) -> list[EpochResult]:
    """Feed ``batch`` to ``detector``: context reports first (they are not data and close no
    epoch), then heart rate, acceleration and counts slice by slice in time order.

    Raises the detector's ``ValueError`` for bad samples (after feeding part of the batch: the
    caller drops the detector), or one naming a stream whose times go backwards.
    """
    results: list[EpochResult] = []
    if batch.context:
        reports = [MotionContext(c.time, c.activity, c.confidence) for c in batch.context]
        results += detector.add_context(reports)
    streams: list[_Stream] = []
    if batch.heart_rate is not None:
        hr = batch.heart_rate
        streams.append(_stream("heart rate", hr.times, hr.bpm, detector.add_heart_rate))
    if batch.acceleration is not None:
        acc = batch.acceleration
        streams.append(_stream("acceleration", acc.times, acc.xyz, detector.add_acceleration))
    if batch.counts is not None:
        counts = batch.counts
        streams.append(_stream("activity count", counts.times, counts.counts, detector.add_counts))
    streams = [s for s in streams if len(s[0])]
    if not streams:
        return results
    for lo, hi in _slices(np.concatenate([times for times, _, _ in streams])):
        for times, values, add in streams:
            i, j = np.searchsorted(times, [lo, hi])
            if j > i:
                results += add(times[i:j], values[i:j])
    return results


def _stream(what: str, times: list[float], values: ArrayLike, add: Adder) -> _Stream:
    """A stream's times and values as arrays; ``ValueError`` if its times go backwards."""
    t = np.asarray(times, dtype=np.float64)
    back = np.diff(t) < 0
    if back.any():
        i = int(np.argmax(back)) + 1
        raise ValueError(
            f"{what}: time goes backwards at index {i} ({t[i - 1]:.3f} -> {t[i]:.3f} s)"
        )
    return t, np.asarray(values, dtype=np.float64), add


def _slices(times: NDArray[np.float64]) -> list[tuple[float, float]]:
    """Consecutive ``[lo, hi)`` that hold every time once, one per occupied slice of
    :data:`SLICE_SECONDS` (so a batch spanning years costs no more than its samples)."""
    edges = (np.unique(np.floor(times / SLICE_SECONDS)) * SLICE_SECONDS).tolist()
    bounds = [-math.inf, *edges[1:], math.inf]
    return list(itertools.pairwise(bounds))


def record(result: EpochResult, seq: int) -> EpochRecord:
    """``result`` as stored and sent, closed by batch ``seq``."""
    return EpochRecord(
        start=result.start,
        end=result.end,
        start_local=result.start_local.isoformat(),
        end_local=result.end_local.isoformat(),
        p_sleep=None if math.isnan(result.p_sleep) else result.p_sleep,
        p_model=None if math.isnan(result.p_model) else result.p_model,
        state=result.state,
        events=tuple(result.events),
        vetoed=result.vetoed,
        late_samples=dict(result.late_samples),
        hr_samples=result.hr_samples,
        motion_seconds=result.motion_seconds,
        seq=seq,
    )
