"""Property-based fuzzing of the live detector's API (hypothesis).

Random chunking, gaps, NaN, out-of-order and duplicate times and huge jumps: the detector never
hangs (each example is bounded in time), raises nothing but ``ValueError``, takes nothing from a
call that raised (its snapshot is unchanged), and its results do not depend on the chunking.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sleepstream.live.backends import OnnxPipeline
from sleepstream.live.detector import EpochResult, SleepDetector

MODEL = OnnxPipeline.shipped()
FUZZ = settings(
    max_examples=60,
    deadline=None,  # bounded by the test timeout instead: one example steps up to 480 epochs
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

times = st.floats(min_value=-1e4, max_value=1e5)
huge = st.sampled_from([1e9, 1.7e9, 1.7e12, -1e12, math.inf, -math.inf, math.nan])
values = st.one_of(st.floats(min_value=-10, max_value=300), st.sampled_from([math.nan, math.inf]))


@st.composite
def calls(draw: st.DrawFn) -> tuple[str, Any]:
    """One API call with arbitrary (often bad) arguments."""
    kind = draw(st.sampled_from(["hr", "counts", "accel", "advance", "flush", "context"]))
    n = draw(st.integers(0, 40))
    t = draw(st.lists(st.one_of(times, huge), min_size=n, max_size=n))
    if draw(st.booleans()):
        t = sorted(x for x in t if not math.isnan(x)) + [x for x in t if math.isnan(x)]
    if kind == "accel":
        rate = draw(st.sampled_from([5.0, 25.0, 50.0, 100.0]))
        start = draw(st.one_of(times, huge))
        k = draw(st.integers(0, 120))
        xyz = (
            np.tile([0.0, 0.6, -0.8], (k, 1)) + draw(st.floats(-2, 2)) * (np.arange(k) % 2)[:, None]
        )
        if k and draw(st.booleans()):
            xyz[draw(st.integers(0, k - 1)), 2] = math.nan
        return kind, (start + np.arange(k) / rate, xyz)
    if kind in ("advance", "flush"):
        return kind, draw(st.one_of(times, huge))
    v = draw(st.lists(values, min_size=n, max_size=draw(st.sampled_from([n, n + 1]))))
    return kind, (t, v)


def _call(detector: SleepDetector, kind: str, args: Any) -> list[EpochResult]:
    from sleepstream.live.context import MotionContext

    if kind == "hr":
        return detector.add_heart_rate(*args)
    if kind == "counts":
        return detector.add_counts(*args)
    if kind == "accel":
        return detector.add_acceleration(*args)
    if kind == "advance":
        return detector.advance(args)
    if kind == "flush":
        return detector.flush(None if math.isnan(args) else args)
    t, _ = args
    return detector.add_context([MotionContext(float(x), "walking", "high") for x in t[:3]])


@pytest.mark.timeout(300)
@FUZZ
@given(st.lists(calls(), max_size=12))
def test_any_call_is_a_result_or_a_value_error_that_changes_nothing(
    sequence: list[tuple[str, Any]],
) -> None:
    detector = SleepDetector(MODEL)
    for kind, args in sequence:
        before = detector.snapshot()
        try:
            results = _call(detector, kind, args)
        except ValueError:
            assert detector.snapshot() == before, f"{kind} raised but changed the detector"
            continue
        assert len(results) <= 100_000
        for r in results:
            assert r.state in ("asleep", "awake", "unknown")
            assert (r.state == "unknown") == (not r.has_data)
            assert math.isnan(r.p_sleep) == (r.state == "unknown")
            assert r.is_gap or r.end - r.start == 30.0
    restored = SleepDetector(MODEL)
    restored.restore(detector.snapshot())
    assert restored.snapshot() == detector.snapshot()


@st.composite
def recordings(draw: st.DrawFn) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Valid streams with random gaps and jumps: heart rate and acceleration (or counts)."""
    segments = draw(
        st.lists(st.tuples(st.floats(1, 400), st.floats(0, 9000)), min_size=1, max_size=4)
    )
    hr_t, accel_t = [], []
    start = draw(st.floats(-1e5, 1.8e9))
    for length, gap in segments:
        hr_t.append(start + np.arange(0.0, length, draw(st.sampled_from([1.0, 5.0, 13.0]))))
        accel_t.append(start + np.arange(0.0, length, 1 / 50.0))
        start += length + gap
    hr = np.concatenate(hr_t)
    accel = np.concatenate(accel_t)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    xyz = np.tile([0.0, 0.6, -0.8], (len(accel), 1)) + rng.normal(0, 0.05, (len(accel), 3))
    streams: dict[str, tuple[np.ndarray, np.ndarray]] = {
        "heart_rate": (hr, 60 + rng.normal(0, 3, len(hr))),
    }
    if draw(st.booleans()):
        streams["acceleration"] = (accel, xyz)
    else:
        counts_t = np.unique(np.floor(accel / 15.0) * 15.0)
        streams["counts"] = (counts_t, rng.exponential(10, len(counts_t)))
    return streams


def _feed(detector: SleepDetector, streams: dict[str, Any], cuts: list[float]) -> list[EpochResult]:
    """Streams interleaved, cut at the times ``cuts`` (each stream at the same times)."""
    add = {
        "heart_rate": detector.add_heart_rate,
        "acceleration": detector.add_acceleration,
        "counts": detector.add_counts,
    }
    results: list[EpochResult] = []
    edges = [-math.inf, *sorted(cuts), math.inf]
    for lo, hi in itertools.pairwise(edges):
        for name, (t, v) in streams.items():
            inside = (t >= lo) & (t < hi)
            results += add[name](t[inside], v[inside])
    return results + detector.flush()


@pytest.mark.timeout(300)
@FUZZ
@given(recordings(), st.data())
def test_results_do_not_depend_on_the_chunking(
    streams: dict[str, Any], data: st.DataObject
) -> None:
    first = min(float(t[0]) for t, _ in streams.values())
    last = max(float(t[-1]) for t, _ in streams.values())
    offsets = st.floats(0, max(last - first, 1.0))

    def cuts() -> list[float]:
        # Cut points at most 30 s apart around the data keep every stream within close_lag.
        chosen = data.draw(st.lists(offsets, max_size=30))
        regular = np.arange(first, last, data.draw(st.sampled_from([7.0, 20.0, 30.0])))
        return [first + c for c in chosen] + regular.tolist()

    one = _feed(SleepDetector(MODEL), streams, cuts())
    other = _feed(SleepDetector(MODEL), streams, cuts())
    assert one == other
    assert all(r.has_data != (r.state == "unknown") for r in one)
