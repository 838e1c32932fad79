"""A batch into a device's detector; its results as stored records.

A batch may span minutes: :meth:`~sleepstream.live.detector.SleepDetector.add` feeds its
streams together in time order (fed stream after stream, heart rate would close epochs without
the batch's acceleration), all or nothing. A device that runs the model itself sends its
per-epoch p(sleep) instead (:meth:`~sleepstream.live.detector.SleepDetector.add_p_sleep`).
"""

from __future__ import annotations

import math

from sleepstream.live.context import MotionContext
from sleepstream.live.detector import EpochResult, SleepDetector
from sleepstream.serve.schema import Batch
from sleepstream.serve.store import EpochRecord


def feed(detector: SleepDetector, batch: Batch) -> list[EpochResult]:
    """Feed ``batch`` to ``detector``; the detector's ``ValueError`` for bad samples or
    p(sleep) values, and for a batch with both, after which the detector is as it was."""
    hr, acc, counts, p = batch.heart_rate, batch.acceleration, batch.counts, batch.p_sleep
    return detector.add(
        heart_rate=None if hr is None else (hr.times, hr.bpm),
        acceleration=None if acc is None else (acc.times, acc.xyz),
        counts=None if counts is None else (counts.times, counts.counts),
        context=[MotionContext(c.time, c.activity, c.confidence) for c in batch.context or ()],
        p_sleep=None if p is None else (p.times, p.p),
    )


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
