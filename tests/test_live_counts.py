"""Streaming activity counts: chunking, state, input checks and agreement with the offline counts.

The streaming path must not depend on how the stream is cut into chunks (every prefix gives the
counts of the whole), must survive pickling, and must keep a bounded state. Against the published
zero-phase pipeline it agrees exactly on rest and on steady in-band sines (two forward passes have
the zero-phase magnitude response, and a sine's per-second peak does not depend on its phase). On
movement with transients it differs by the causal filter's phase (``docs/counts-agreement.md``).

Agreement tolerance, for the generated signal of :func:`_wrist` (a twitch about every 20 s, a turn
every 100 s), measured on 20 seeds of 20 min: mean absolute difference 2.1-3.4 per 15 s window
(mean count 7-10), 5-15 % of windows zero in one pipeline only, correlation 0.94-0.99, total of
the streaming counts -4 % to +23 % of the offline total. The test asserts, for one 30 min signal:
mean absolute difference below 4.5, below 20 % zero in one only, correlation above 0.9, totals
within 30 %. A window shifted by one, or a wrong filter, fails all of these.
"""

from __future__ import annotations

import itertools
import pickle
from collections.abc import Callable

import numpy as np
import pytest
from numpy.typing import NDArray

from sleepstream.signal.counts import SAMPLE_RATE, counts_offline
from sleepstream.signal.live_counts import (
    LateSampleError,
    StreamingCounts,
    counts_streaming,
)

Array = NDArray[np.float64]
SINE_COUNT = (15 * 13 - 18) * 3.07  # a 0.5 g in-band sine: bin 13 every second (test_counts.py)


def _times(seconds: float, rate: float = SAMPLE_RATE, start: float = 0.0) -> Array:
    return start + np.arange(int(seconds * rate)) / rate


def _jittered(seconds: float, seed: int, rate: float = SAMPLE_RATE) -> Array:
    """Timestamps at ``rate`` each moved by up to a fifth of a step (still increasing)."""
    times = _times(seconds, rate)
    return times + np.random.default_rng(seed).uniform(-0.2, 0.2, len(times)) / rate


def _wrist(times: Array, seed: int) -> Array:
    """Rest (gravity, 0.25 Hz sway, 5 mg noise), a twitch about every 20 s, a turn every 100 s.

    Twitches: 0.1-0.3 s Hann-windowed 6 Hz bursts of 0.1-0.4 g at a random phase. Turns: 2 s of
    4 Hz movement of 0.15-0.3 g while gravity on z shifts by 0.8 g.
    """
    rng = np.random.default_rng(seed)
    z = -0.8 + 0.003 * np.sin(2 * np.pi * 0.25 * times) + rng.normal(0.0, 0.005, len(times))
    starts = np.arange(7.0, times[-1] - 15.0, 20.0)
    for start in starts + rng.uniform(0.0, 10.0, len(starts)):
        duration = rng.uniform(0.1, 0.3)
        inside = (times >= start) & (times < start + duration)
        envelope = np.sin(np.pi * (times[inside] - start) / duration) ** 2
        carrier = np.sin(2 * np.pi * 6.0 * times[inside] + rng.uniform(0, 2 * np.pi))
        z[inside] += rng.uniform(0.1, 0.4) * envelope * carrier
    for k, start in enumerate(np.arange(100.0, times[-1] - 5.0, 100.0)):
        turning = (times >= start) & (times < start + 2.0)
        z[turning] += rng.uniform(0.15, 0.3) * np.sin(2 * np.pi * 4.0 * times[turning])
        z += (-0.8 if k % 2 else 0.8) * np.clip(times - start, 0.0, 2.0) / 2.0
    return z


def _sine(times: Array, hz: float, amplitude: float = 0.5) -> Array:
    return -1.0 + amplitude * np.sin(2 * np.pi * hz * times)


def _feed(stream: StreamingCounts, times: Array, z: Array, sizes: list[int]) -> tuple[Array, Array]:
    """Feed consecutive chunks of the given sizes; return all counts."""
    bounds = np.cumsum([0, *sizes])
    assert bounds[-1] == len(times)  # the test's own bookkeeping, not user input
    pieces = [stream.update(times[a:b], z[a:b]) for a, b in itertools.pairwise(bounds)]
    return np.concatenate([p[0] for p in pieces]), np.concatenate([p[1] for p in pieces])


def _sizes(total: int, chunk: int) -> list[int]:
    return [min(chunk, total - i) for i in range(0, total, chunk)]


# --- chunking, pickling, clone ---------------------------------------------------------------


@pytest.fixture(scope="module")
def wrist() -> tuple[Array, Array]:
    """Three minutes of jittered 50 Hz wrist signal with a 3 s gap at 130 s."""
    times = _jittered(180.5, seed=1) - 0.005  # the first sample before 0 s: window 0 is full
    times = times[(times < 130.0) | (times > 133.0)]
    return times, _wrist(times, seed=2)


@pytest.mark.parametrize("chunk", [1, 7, 50, 1000, "random"])
def test_counts_do_not_depend_on_chunk_size(wrist: tuple[Array, Array], chunk: int | str) -> None:
    times, z = wrist
    expected_times, expected = StreamingCounts(origin=0.0).update(times, z)
    assert len(expected) == 11  # 12 windows, one of them cut by the gap
    if chunk == "random":
        sizes = np.random.default_rng(3).integers(1, 400, len(times)).tolist()
        sizes = sizes[: np.searchsorted(np.cumsum(sizes), len(times)) + 1]
        sizes[-1] = len(times) - sum(sizes[:-1])
    else:
        sizes = _sizes(len(times), int(chunk))
    count_times, counts = _feed(StreamingCounts(origin=0.0), times, z, sizes)
    np.testing.assert_array_equal(count_times, expected_times)
    np.testing.assert_allclose(counts, expected, rtol=0, atol=1e-9)


def test_every_prefix_gives_the_counts_so_far(wrist: tuple[Array, Array]) -> None:
    """Causality: cutting the stream anywhere leaves the counts before the cut unchanged."""
    times, z = wrist
    all_times, all_counts = counts_streaming(times, z, origin=0.0)
    for cut in np.random.default_rng(4).integers(1, len(times), 20):
        prefix_times, prefix = counts_streaming(times[:cut], z[:cut], origin=0.0)
        n = len(prefix)
        np.testing.assert_array_equal(prefix_times, all_times[:n])
        np.testing.assert_array_equal(prefix, all_counts[:n])
        if n < len(all_times):  # the next window had not closed: its last grid point is later
            assert all_times[n] + 15.0 - 1.0 / SAMPLE_RATE > times[cut - 1]


def test_pickled_stream_continues_identically(wrist: tuple[Array, Array]) -> None:
    times, z = wrist
    stream = StreamingCounts(origin=0.0)
    cut = 4321  # mid-window, mid-second
    stream.update(times[:cut], z[:cut])
    restored = pickle.loads(pickle.dumps(stream))
    expected = stream.update(times[cut:], z[cut:])
    count_times, counts = restored.update(times[cut:], z[cut:])
    np.testing.assert_array_equal(count_times, expected[0])
    np.testing.assert_array_equal(counts, expected[1])
    assert len(counts) > 3


def test_clone_is_fresh_with_the_same_parameters(wrist: tuple[Array, Array]) -> None:
    times, z = wrist
    stream = StreamingCounts(sample_rate=50, passes=1, origin=2.5, max_gap=0.5)
    first = stream.update(times[:3000], z[:3000])
    clone = stream.clone()
    assert (
        repr(clone)
        == repr(stream)
        == ("StreamingCounts(sample_rate=50, passes=1, origin=2.5, max_gap=0.5)")
    )
    assert clone.last_time is None and stream.last_time == times[2999]
    again = clone.update(times[:3000], z[:3000])
    np.testing.assert_array_equal(again[0], first[0])
    np.testing.assert_array_equal(again[1], first[1])


def test_state_does_not_grow_with_the_stream() -> None:
    rng = np.random.default_rng(5)
    chunk = 90_000  # 30 min at 50 Hz
    stream = StreamingCounts(origin=0.0)
    sizes = {}
    for k in range(20):  # 10 h
        times = _times(1800.0, start=1800.0 * k) + 7.3  # ends mid-window: values pending
        stream.update(times, -1.0 + rng.normal(0.0, 0.05, chunk))
        if k + 1 in (2, 20):
            sizes[k + 1] = len(pickle.dumps(stream))
    assert abs(sizes[20] - sizes[2]) <= 16
    assert sizes[20] < 16_000  # parameters, filter state and at most one window of values


# --- rates, jitter, gaps, windows --------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "hz"), [(10.0, 3.5), (25.0, 5.0), (50.0, 5.0), (100.0, 7.0)], ids=str
)
@pytest.mark.parametrize("jitter", [False, True], ids=["regular", "jittered"])
def test_any_input_rate_and_jitter(rate: float, hz: float, jitter: bool) -> None:
    times = _jittered(241.0, seed=6, rate=rate) if jitter else _times(241.0, rate)
    shaking = (times >= 90.0) & (times < 150.0)
    z = np.where(shaking, _sine(times, hz), -1.0) + np.random.default_rng(7).normal(
        0.0, 0.003, len(times)
    )
    count_times, counts = counts_streaming(times, z, chunk=37)
    offline_times, offline = counts_offline(times, z)
    n = len(offline)
    np.testing.assert_array_equal(count_times[:n], offline_times)
    assert len(counts) in (n, n + 1)
    # Windows start at the first sample, which jitter may move by a few ms.
    inside = (count_times >= 90.0 - 0.1) & (count_times + 15.0 <= 150.0 + 0.1)
    far = (count_times + 15.0 <= 75.0 + 0.1) | (count_times >= 165.0 - 0.1)
    assert inside.sum() == 4 and far.sum() == 10
    np.testing.assert_array_equal(counts[far], 0.0)
    assert (counts[inside] > 300.0).all()  # far above rest; coarse input lowers the peaks
    # Same samples, same interpolation: steady shaking agrees with the offline counts within one
    # bin per second (15 * 3.07), whatever the rate and spacing.
    np.testing.assert_allclose(counts[:n][inside[:n]], offline[inside[:n]], atol=15 * 3.07 + 1e-9)


@pytest.mark.parametrize("hz", [3.5, 5.0, 7.0, 9.0])
def test_steady_sine_counts_equal_the_offline_counts(hz: float) -> None:
    times = _times(120.0)
    count_times, counts = counts_streaming(times, _sine(times, hz), chunk=50)
    offline_times, offline = counts_offline(times, _sine(times, hz))
    # The offline grid stops one step before the last sample, so it can miss the last window.
    assert (len(offline), len(counts)) == (7, 8)
    np.testing.assert_array_equal(count_times[:7], offline_times)
    np.testing.assert_allclose(counts[1:], SINE_COUNT, rtol=1e-12)  # first: the filter starts
    np.testing.assert_allclose(offline[1:], SINE_COUNT, rtol=1e-12)


def test_a_still_wrist_counts_zero() -> None:
    times = _jittered(301.0, seed=8)
    noise = np.random.default_rng(9).normal(0.0, 0.005, len(times))
    z = -0.8 + 0.003 * np.sin(2 * np.pi * 0.25 * times) + noise  # breathing sway, sensor noise
    _, counts = counts_streaming(times, z)
    assert len(counts) == 20
    np.testing.assert_array_equal(counts, 0.0)


def test_a_gap_restarts_the_stream_and_its_windows_are_missing(wrist: tuple[Array, Array]) -> None:
    times, z = wrist  # 0-180 s, no samples in (130, 133)
    count_times, counts = counts_streaming(times, z, chunk=64, origin=0.0)
    # 12 windows, minus the one the gap begins in (120-135 s): the stream resumes inside it.
    assert count_times.tolist() == [15.0 * k for k in range(12) if k != 8]
    before = times < 130.0
    expected_before = counts_streaming(times[before], z[before], origin=0.0)
    expected_after = counts_streaming(times[~before], z[~before], origin=0.0)
    np.testing.assert_array_equal(counts, np.concatenate([expected_before[1], expected_after[1]]))


def test_gap_longer_than_a_window_leaves_windows_missing_not_zero() -> None:
    times = _times(300.0)
    keep = (times < 40.0) | (times >= 100.0)
    times = times[keep]
    z = _sine(times, 5.0)
    count_times, counts = counts_streaming(times, z, origin=0.0)
    assert count_times.tolist() == [0.0, 15.0, *np.arange(105.0, 300.0, 15.0).tolist()]
    np.testing.assert_allclose(counts[2:], SINE_COUNT, rtol=1e-12)


def test_short_gaps_are_interpolated() -> None:
    times = _times(120.0)
    times = times[(times < 50.0) | (times > 50.5)]  # 0.52 s without samples, max_gap 1 s
    still = np.full(len(times), -1.0)
    count_times, counts = counts_streaming(times, still)
    assert count_times.tolist() == [15.0 * k for k in range(8)]  # no window missing
    np.testing.assert_array_equal(counts, 0.0)  # a straight line through the gap: no counts
    with_reset, _ = counts_streaming(times, still, max_gap=0.1)
    assert with_reset.tolist() == [15.0 * k for k in range(8) if k != 3]


def test_windows_follow_the_origin_grid() -> None:
    times = _times(100.0, start=-22.3)
    count_times, _ = StreamingCounts(origin=0.0).update(times, _sine(times, 5.0))
    # -30 to -15 s starts before the first sample: missing; the last full window ends at 75 s.
    assert count_times.tolist() == [-15.0, 0.0, 15.0, 30.0, 45.0, 60.0]


def test_a_window_closes_with_its_last_grid_point() -> None:
    times = _times(30.0)
    stream = StreamingCounts(origin=0.0)
    assert stream.update(times[:749], _sine(times[:749], 5.0))[0].size == 0  # up to 14.96 s
    count_times, _ = stream.update(times[749:750], _sine(times[749:750], 5.0))  # 14.98 s
    assert count_times.tolist() == [0.0]


# --- agreement with the offline counts --------------------------------------------------------


def test_agreement_with_offline_counts_on_a_wrist_like_signal() -> None:
    times = _times(1800.0)
    z = _wrist(times, seed=11)
    offline_times, offline = counts_offline(times, z)
    count_times, counts = counts_streaming(times, z, chunk=1500)
    n = len(offline)
    np.testing.assert_array_equal(count_times[:n], offline_times)
    live = counts[:n]
    assert (offline > 0).mean() > 0.3  # the signal moves, so the checks below can fail
    # Tolerances: module docstring.
    assert np.abs(live - offline).mean() < 4.5
    assert np.mean((live > 0) != (offline > 0)) < 0.2
    assert np.corrcoef(live, offline)[0, 1] > 0.9
    assert abs(live.sum() - offline.sum()) < 0.3 * offline.sum()
    shifted = np.corrcoef(live[1:], offline[:-1])[0, 1]
    assert shifted < 0.5  # what a window misplaced by one would score


# --- bad input ---------------------------------------------------------------------------------


def _stream_with_history() -> StreamingCounts:
    stream = StreamingCounts(origin=0.0)
    stream.update(_times(10.0), np.full(500, -1.0))
    return stream


@pytest.mark.parametrize(
    ("times", "z", "message"),
    [
        ([10.0, 10.02, np.nan], [-1.0, -1.0, -1.0], "time nan of sample 2"),
        ([10.0, np.inf], [-1.0, -1.0], "time inf of sample 1"),
        ([10.0, 10.02], [-1.0, np.nan], r"z = nan g at t = 10.02 s \(sample 1"),
        ([10.0, 10.02], [-1.0], "differ in length: 2 and 1"),
        ([[10.0, 10.02]], [[-1.0, -1.0]], "must be 1-D"),
    ],
)
def test_bad_values_raise_value_error(
    times: list[float] | list[list[float]], z: list[float] | list[list[float]], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        _stream_with_history().update(times, z)


@pytest.mark.parametrize(
    ("times", "index", "time", "previous"),
    [
        ([10.0, 10.04, 10.03], 2, 10.03, 10.04),  # backwards within the chunk
        ([10.0, 10.0], 1, 10.0, 10.0),  # duplicate
        ([9.5, 10.0], 0, 9.5, 9.98),  # before the last sample of the previous chunk
        ([9.98], 0, 9.98, 9.98),  # the last sample again
    ],
)
def test_late_samples_raise_late_sample_error(
    times: list[float], index: int, time: float, previous: float
) -> None:
    stream = _stream_with_history()
    with pytest.raises(LateSampleError, match=f"t = {time} s, is not after") as info:
        stream.update(times, [-1.0] * len(times))
    assert isinstance(info.value, ValueError)
    assert (info.value.index, info.value.time, info.value.previous) == (index, time, previous)
    copy = pickle.loads(pickle.dumps(info.value))
    assert (copy.index, str(copy)) == (index, str(info.value))


def test_a_rejected_chunk_leaves_the_state_unchanged(wrist: tuple[Array, Array]) -> None:
    times, z = wrist
    stream = StreamingCounts(origin=0.0)
    first, _ = stream.update(times[:2000], z[:2000])
    before = pickle.dumps(stream)
    bad = times[2000:2100].copy()
    bad[50] = bad[10]
    with pytest.raises(LateSampleError):
        stream.update(bad, z[2000:2100])
    with pytest.raises(ValueError, match="not finite"):
        stream.update(times[2000:2100], np.where(np.arange(100) == 99, np.nan, z[2000:2100]))
    assert pickle.dumps(stream) == before
    rest = stream.update(times[2000:], z[2000:])
    np.testing.assert_array_equal(rest[1], counts_streaming(times, z, origin=0.0)[1][len(first) :])


def test_first_chunk_late_sample_leaves_the_stream_unstarted() -> None:
    stream = StreamingCounts()
    with pytest.raises(LateSampleError):
        stream.update([1.0, 0.5], [-1.0, -1.0])
    assert stream.last_time is None
    assert stream.update([], [])[0].size == 0


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: StreamingCounts(sample_rate=20.0), "above 22"),
        (lambda: StreamingCounts(sample_rate=50.5), "whole number of Hz"),
        (lambda: StreamingCounts(passes=0), "passes must be a positive integer, got 0"),
        (lambda: StreamingCounts(passes=1.5), "got 1.5"),  # type: ignore[arg-type]
        (lambda: StreamingCounts(origin=float("nan")), "origin must be a finite"),
        (lambda: StreamingCounts(max_gap=0.0), "max_gap must be a positive"),
        (lambda: counts_streaming([0.0], [1.0], chunk=0), "chunk must be a positive"),
        (lambda: counts_streaming([0.0, 1.0], [1.0], chunk=5), "differ in shape"),
    ],
)
def test_bad_parameters(make: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_empty_input() -> None:
    count_times, counts = counts_streaming([], [])
    assert count_times.size == counts.size == 0
