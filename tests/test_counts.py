"""Activity counts from raw acceleration: the published pipeline, its FIR, and the ``motion/`` path.

Expected values are derived by hand from the pipeline definition (te Lindert & Van Someren 2013,
as coded by Walch et al.: MATLAB ``histc`` bin indices, which start at 1). A 5 Hz sine of
amplitude 0.5 g sampled at 50 Hz shows, within every second, samples at 36 degree steps of phase,
so its largest absolute value is between 0.5 * sin(72 deg) = 0.4755 g and 0.5 g. Both fall in bin
floor(0.4755 * 128 / 5) + 1 = floor(12.17) + 1 = 13 = floor(0.5 * 128 / 5) + 1, so every second's
maximum is 13, each 15 s sum is 195 and the count is (195 - 18) * 3.07 = 543.39. (With bins
numbered from 0 it would be 12, 180 and 497.34.) A still wrist stays in bin 1: sum 15, count 0.

Tolerance: bin 13 needs a filtered peak of at least 12 * 5 / 128 = 0.46875 g, i.e. the zero-phase
filter's gain at 5 Hz must stay above 0.46875 / 0.4755 = 0.986; it is |H(5 Hz)|^2 = 0.99999
(checked below), so the count is exact. Linear interpolation of irregular samples can only lower
the peaks: with gaps up to 26 ms a peak drops at most to 0.5 * cos(pi * 5 Hz * 26 ms) = 0.459 g,
bin 12, so irregularly sampled counts lie between (15 * 12 - 18) * 3.07 = 497.34 and 543.39.

The FIR that replaces the forward-backward filter (:func:`fir_taps`) must keep that margin too:
its gain at 5 and 7 Hz must stay above 0.986 as well. Truncated at +-2 s it matches ``|H|^2``
within 0.0004 at every frequency (``docs/counts-agreement.md``); the test allows 0.001.
Recordings with ``motion/`` get the model file's counts (:func:`accel_counts`), as the live path.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy import signal

from sleepstream.data.folder import load_recording
from sleepstream.signal.counts import (
    FULL_SCALE_G,
    N_BINS,
    SAMPLE_RATE,
    bandpass_sos,
    counts_from_second_maxima,
    counts_offline,
    fir_taps,
    quantise,
)
from sleepstream.step import COUNTS_DELAY_SECONDS as DELAY_SECONDS
from sleepstream.step import accel_counts

if TYPE_CHECKING:
    from conftest import SyntheticNight

SINE_COUNT = (15 * 13 - 18) * 3.07  # 543.39, derived in the module docstring
LOWEST_INTERPOLATED_COUNT = (15 * 12 - 18) * 3.07  # 497.34
SHAKE_START, SHAKE_END = 120.0, 180.0  # one minute of 5 Hz shaking
MOTION_SECONDS = 300.0


def _sine(times: NDArray[np.float64], hz: float, amplitude: float = 0.5) -> NDArray[np.float64]:
    return amplitude * np.sin(2 * np.pi * hz * times)


def _regular(seconds: float) -> NDArray[np.float64]:
    return np.arange(0.0, seconds, 1.0 / SAMPLE_RATE)


def _small_jitter(seconds: float, seed: int) -> NDArray[np.float64]:
    """50 Hz timestamps each moved by up to 4 ms (still increasing)."""
    times = _regular(seconds)
    return times + np.random.default_rng(seed).uniform(-0.004, 0.004, len(times))


def _irregular(seconds: float, seed: int) -> NDArray[np.float64]:
    """Gaps drawn uniformly from 14-26 ms (about 50 Hz on average), starting at t = 0."""
    gaps = np.random.default_rng(seed).uniform(0.014, 0.026, int(seconds * SAMPLE_RATE * 1.1))
    times = np.concatenate([[0.0], np.cumsum(gaps)])
    return times[times < seconds]


def test_filter_gain_in_and_out_of_band() -> None:
    _, response = signal.sosfreqz(bandpass_sos(), worN=[0.5, 5.0, 7.0, 20.0], fs=SAMPLE_RATE)
    zero_phase_gain = np.abs(response) ** 2  # filtered forward and backward
    assert zero_phase_gain[1] > 0.986  # the margin derived in the module docstring
    assert zero_phase_gain[2] > 0.986
    assert zero_phase_gain[0] < 1e-6 and zero_phase_gain[3] < 1e-3


@pytest.mark.parametrize("half_width", [1.0, 2.0, 5.0])
def test_fir_taps_are_the_zero_phase_response(half_width: float) -> None:
    taps = fir_taps(half_width)
    m = round(half_width * SAMPLE_RATE)
    assert taps.shape == (2 * m + 1,)
    np.testing.assert_array_equal(taps, taps[::-1])  # linear phase: a delay of exactly m steps
    assert abs(taps.sum()) < 1e-12  # no gain at 0 Hz: gravity does not leak through
    # The forward-backward filter's response to an impulse, less the small constant that
    # removes the truncated response's gain at 0 Hz (0.006 / 101 taps at +-1 s).
    impulse = np.zeros(4001)
    impulse[2000] = 1.0
    zero_phase = signal.sosfiltfilt(bandpass_sos(), impulse, padtype=None)[2000 - m : 2001 + m]
    np.testing.assert_allclose(taps, zero_phase, rtol=0, atol=1e-4)
    assert np.ptp(taps - zero_phase) < 1e-12


def test_fir_gain_matches_the_zero_phase_gain() -> None:
    frequencies = np.linspace(0.0, SAMPLE_RATE / 2, 501)
    _, fir = signal.freqz(fir_taps(DELAY_SECONDS), worN=frequencies, fs=SAMPLE_RATE)
    _, iir = signal.sosfreqz(bandpass_sos(), worN=frequencies, fs=SAMPLE_RATE)
    np.testing.assert_allclose(np.abs(fir), np.abs(iir) ** 2, atol=1e-3)
    in_band = np.abs(fir[(frequencies >= 5.0) & (frequencies <= 7.0)])
    assert (in_band > 0.986).all()  # the margin derived in the module docstring


@pytest.mark.parametrize(
    ("half_width", "message"), [(0.0, "= 0.0"), (0.011, "0.011 s"), (-1.0, "= -50.0")]
)
def test_fir_taps_need_a_whole_positive_number_of_samples(half_width: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fir_taps(half_width)


def test_quantise_numbers_bins_from_one() -> None:
    magnitudes = np.array([0.0, 0.039, 0.04, 0.4755, 0.5, 4.99, 5.0, 9.0])
    assert quantise(magnitudes).tolist() == [1, 1, 2, 13, 13, 128, 128, 128]
    assert N_BINS / FULL_SCALE_G == 25.6


def test_rescale_of_window_sums() -> None:
    sums = np.array([0.0, 15.0, 18.0, 19.0, 195.0])
    expected = [0.0, 0.0, 0.0, 3.07, SINE_COUNT]
    np.testing.assert_allclose(counts_from_second_maxima(sums), expected)


def test_still_wrist_counts_zero_and_small_movement_counts() -> None:
    times = _regular(121.0)
    still = -1.0 + np.random.default_rng(0).normal(0.0, 0.005, len(times))
    _, counts = counts_offline(times, still)
    np.testing.assert_array_equal(counts, 0.0)  # bin 1 every second: sum 15 < 18
    # A 0.06 g tremor peaks in bin floor(0.057 * 25.6) + 1 = 2: sum 30, count 12 * 3.07.
    _, counts = counts_offline(times, still + _sine(times, 5.0, amplitude=0.06))
    np.testing.assert_allclose(counts, (30 - 18) * 3.07)


def test_counts_of_a_5_hz_sine() -> None:
    times = _regular(121.0)
    count_times, counts = counts_offline(times, _sine(times, 5.0) - 1.0)  # gravity is removed
    np.testing.assert_allclose(count_times, 15.0 * np.arange(8))
    np.testing.assert_allclose(counts, SINE_COUNT, rtol=1e-9)


def test_counts_of_an_out_of_band_sine_are_zero() -> None:
    times = _regular(121.0)
    _, slow = counts_offline(times, _sine(times, 0.5))
    assert len(slow) == 8
    np.testing.assert_array_equal(slow, 0.0)


@pytest.mark.parametrize(
    "make_times",
    [partial(_small_jitter, seed=1), partial(_irregular, seed=2), partial(_irregular, seed=3)],
    ids=["jittered", "irregular-2", "irregular-3"],
)
def test_counts_do_not_depend_on_timestamp_jitter(
    make_times: Callable[[float], NDArray[np.float64]],
) -> None:
    regular = _regular(121.0)
    _, expected = counts_offline(regular, _sine(regular, 5.0))
    times = make_times(121.0)
    count_times, counts = counts_offline(times, _sine(times, 5.0))
    np.testing.assert_allclose(count_times, times[0] + 15.0 * np.arange(8))
    # Interpolation can lower a second's peak by one bin at most (module docstring): the counts
    # stay within 15 * 3.07 = 46.05 (8.5 %) below the regularly sampled ones, never above.
    assert (counts >= LOWEST_INTERPOLATED_COUNT - 1e-3).all()
    assert (counts <= expected + 1e-9).all()
    np.testing.assert_allclose(counts, expected, rtol=0.085)


def test_too_short_recording_has_no_counts() -> None:
    times = _regular(14.9)
    count_times, counts = counts_offline(times, _sine(times, 5.0))
    assert len(count_times) == len(counts) == 0
    assert counts_offline(np.array([0.0]), np.array([1.0]))[1].size == 0


def test_partial_last_window_is_dropped() -> None:
    times = _regular(50.0)
    count_times, _ = counts_offline(times, _sine(times, 5.0))
    assert count_times.tolist() == [0.0, 15.0, 30.0]


# --- the motion/ path through load_recording -----------------------------------------------------


def _shaken_wrist(times: NDArray[np.float64], seed: int) -> NDArray[np.float64]:
    """z in g: gravity plus 5 mg noise at rest, 5 Hz 0.5 g shaking between 120 and 180 s."""
    rest = -1.0 + np.random.default_rng(seed).normal(0.0, 0.005, len(times))
    shaking = (times >= SHAKE_START) & (times < SHAKE_END)
    return rest + np.where(shaking, _sine(times, 5.0), 0.0)


def _assert_rest_and_shaking(count_times: NDArray[np.float64], counts: NDArray[np.float64]) -> None:
    np.testing.assert_allclose(np.diff(count_times), 15.0)
    # Windows start at the first sample, which jitter may move by a few ms.
    inside = (count_times >= SHAKE_START - 0.1) & (count_times + 15.0 <= SHAKE_END + 0.1)
    # The filter rings for a moment around the abrupt start and end: leave 15 s either side.
    far = (count_times + 15.0 <= SHAKE_START - 14.9) | (count_times >= SHAKE_END + 14.9)
    assert inside.sum() == 4 and far.sum() >= 10
    np.testing.assert_array_equal(counts[far], 0.0)
    assert (counts[inside] >= LOWEST_INTERPOLATED_COUNT - 1e-3).all()
    assert (counts[inside] <= SINE_COUNT + 1e-3).all()


@pytest.mark.parametrize(
    "make_times",
    [_regular, partial(_small_jitter, seed=4), partial(_irregular, seed=5)],
    ids=["regular", "jittered", "irregular"],
)
def test_load_recording_computes_counts_from_motion(
    night: SyntheticNight, make_times: Callable[[float], NDArray[np.float64]]
) -> None:
    night.counts = None
    times = make_times(MOTION_SECONDS)
    night.set_motion(times, _shaken_wrist(times, seed=6))
    r = load_recording(night.write(), night.subject_id)
    assert r.count_source == "motion"
    assert r.accel is None  # raw acceleration only on request
    # Windows on the 15 s grid of the first epoch; every one whose filter input (its grid
    # points and the look-ahead either side) lies within the samples has a count.
    origin = float(r.epoch_times[0])
    np.testing.assert_allclose(np.mod(r.count_times - origin, 15.0), 0.0, atol=1e-6)
    ready = r.count_times + 15.0 - 1.0 / SAMPLE_RATE + DELAY_SECONDS
    assert r.count_times[0] - DELAY_SECONDS >= times[0] - 1e-6
    assert r.count_times[0] - DELAY_SECONDS - 15.0 < times[0]
    assert ready[-1] <= times[-1] + 1e-6
    assert ready[-1] + 15.0 > times[-1]
    assert np.all(np.diff(r.count_times) == 15.0)
    _assert_rest_and_shaking(r.count_times, r.counts)


def test_motion_is_preferred_over_counts_and_kept_on_request(night: SyntheticNight) -> None:
    assert night.counts is not None  # both counts/ and motion/ exist
    times = _regular(MOTION_SECONDS)
    z = _shaken_wrist(times, seed=7)
    night.set_motion(times, z)
    r = load_recording(night.write(), night.subject_id, with_accel=True)
    assert r.count_source == "motion"
    assert r.accel_times is not None and r.accel is not None
    np.testing.assert_allclose(r.accel_times, times, atol=1e-6)
    assert r.accel.shape == (len(times), 3)
    np.testing.assert_allclose(r.accel[:, 2], z, atol=1e-6)
    expected_times, expected = accel_counts(r.accel_times, r.accel[:, 2], float(r.epoch_times[0]))
    np.testing.assert_array_equal(r.count_times, expected_times)
    np.testing.assert_array_equal(r.counts, expected)
    _assert_rest_and_shaking(r.count_times, r.counts)


@pytest.mark.parametrize(
    "kind,rate,moving",
    [
        ("rest", 50.0, 0.0),
        ("twitches", 50.0, 0.15),
        ("turning over", 50.0, 0.1),
        ("walking", 50.0, 0.99),
        ("night", 50.0, 0.1),
    ],
)
def test_the_model_files_counts_agree_with_the_published_counts(
    kind: str, rate: float, moving: float
) -> None:
    """The targets of docs/counts-agreement.md (total within 2 %, 95 % of windows within 5 %)
    on generated signals, for the counts the model file computes."""
    from sleepstream.signal import synthetic
    from sleepstream.signal.agreement import compare

    times, z = synthetic.generate(kind, 1200.0, rate, seed=21)
    offline_times, offline = counts_offline(times, z)
    count_times, counts = accel_counts(times, z, float(times[0]))
    # Windows within the filter's look-ahead of either end have no count.
    assert len(offline) - len(counts) in (1, 2)
    inside = np.isin(offline_times, count_times)
    np.testing.assert_allclose(offline_times[inside], count_times, atol=1e-6)
    published = offline[inside]
    assert (published > 0).mean() >= moving  # the signal moves, so the checks below can fail
    result = compare(published, counts)
    assert abs(result.total_error) <= 0.02
    assert result.within >= 0.95
    assert result.meets_targets


@pytest.mark.parametrize("rate", [25.0, 30.0, 100.0, 200.0])
@pytest.mark.parametrize("kind", ["night", "twitches", "walking"])
def test_counts_at_other_rates_are_those_of_50_hz(kind: str, rate: float) -> None:
    """Acceleration at another rate is resampled, not interpolated linearly: its counts total
    within 7 % of the published counts of the same movement sampled at 50 Hz (linear
    interpolation from 25 Hz gave 71-85 % of them). Single windows differ more: the sensor noise
    is drawn per sample, and a count sums per-second maxima."""
    from sleepstream.signal import synthetic
    from sleepstream.signal.agreement import compare

    times, z = synthetic.generate(kind, 1200.0, 50.0, seed=21)
    published_times, published = counts_offline(times, z)
    times, z = synthetic.generate(kind, 1200.0, rate, seed=21)
    count_times, counts = accel_counts(times, z, float(times[0]))
    inside = np.isin(published_times, count_times)
    assert published[inside].sum() > 100  # the movement shows, so the check can fail
    assert abs(compare(published[inside], counts).total_error) <= 0.07


@pytest.mark.parametrize("delay", [1.0, 2.0, 4.0])
def test_a_window_has_no_count_exactly_when_its_filter_input_misses_a_sample(
    delay: float,
) -> None:
    """The counts step's windows without a count, against the definition: window ``w``'s
    filtered samples read the grid ``x[750 w : 750 (w + 1) + history]`` (history then epoch)."""
    import torch

    from sleepstream.step import AccelCounts

    counter = AccelCounts(delay)
    width = counter.history + 1500
    rng = np.random.default_rng(int(delay))
    x = rng.normal(0.0, 0.3, (width + 300, width)).astype(np.float32)
    x[np.arange(width), np.arange(width)] = np.nan  # one missing sample, at every place
    for row, rate in zip(range(width, width + 300), np.repeat([0.0, 1e-3, 1e-2], 100), strict=True):
        x[row, rng.random(width) < rate] = np.nan  # and random gaps
    history, epoch = x[:, : counter.history], x[:, counter.history :]
    with torch.no_grad():
        counts, _ = counter(torch.from_numpy(epoch.copy()), torch.from_numpy(history.copy()))
    expected = np.stack(
        [np.isnan(x[:, w * 750 : (w + 1) * 750 + counter.history]).any(axis=1) for w in (0, 1)],
        axis=1,
    )
    assert 0 < expected.sum() < expected.size
    np.testing.assert_array_equal(np.isnan(counts.numpy()), expected)
