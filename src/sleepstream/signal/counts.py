"""Activity counts from raw wrist acceleration (te Lindert & Van Someren 2013, as in Walch 2019).

The published pipeline: interpolate the z axis onto a uniform 50 Hz grid; 5th-order Butterworth
band-pass 3-11 Hz applied forward and backward (zero phase); absolute value; quantise into 128
equal bins over 0-5 g (the bin index, from 1, is the value); maximum per second; sum of the
per-second maxima over each 15 s window; ``count = max(0, (sum - 18) * 3.07)``.

:func:`counts_offline` is that pipeline. Its forward-backward filter looks into the future, so it
is for reading recorded nights only, never for live use.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import signal

from sleepstream.records import COUNT_SECONDS

SAMPLE_RATE = 50.0
"""Hz: the uniform grid raw acceleration is interpolated onto."""
BAND_HZ = (3.0, 11.0)
FILTER_ORDER = 5
N_BINS = 128
FULL_SCALE_G = 5.0
SUM_OFFSET = 18.0
SCALE = 3.07


def bandpass_sos(sample_rate: float = SAMPLE_RATE) -> NDArray[np.float64]:
    """Second-order sections of the 3-11 Hz, 5th-order Butterworth band-pass."""
    return np.asarray(
        signal.butter(FILTER_ORDER, BAND_HZ, btype="bandpass", fs=sample_rate, output="sos")
    )


def quantise(magnitude: NDArray[np.float64]) -> NDArray[np.float64]:
    """Bin index of each absolute filtered value: 128 equal bins over 0-5 g, numbered 1 to 128.

    Numbered from 1 as in the published code (MATLAB ``histc``, ``np.digitize``), so a still
    wrist sums to 15 per window, which the offset of 18 removes. Values of 5 g or more are
    clipped to bin 128.
    """
    return np.clip(np.floor(magnitude * (N_BINS / FULL_SCALE_G)) + 1, 1, N_BINS)


def counts_from_second_maxima(window_sums: NDArray[np.float64]) -> NDArray[np.float64]:
    """The final rescaling of the summed per-second maxima of one 15 s window."""
    return np.maximum(0.0, (window_sums - SUM_OFFSET) * SCALE)


def counts_offline(
    times: NDArray[np.float64], z: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Activity counts of a whole recording with the published zero-phase pipeline (non-causal).

    Parameters
    ----------
    times
        Increasing sample times in seconds (any rate, irregular spacing allowed).
    z
        Acceleration along the watch's z axis, in g.

    Returns
    -------
    count_times, counts
        Start time of each full 15 s window (from the first sample on) and its count.
    """
    if len(times) < 2 or times[-1] - times[0] < COUNT_SECONDS:
        return np.zeros(0), np.zeros(0)
    grid = np.arange(times[0], times[-1], 1.0 / SAMPLE_RATE)
    uniform = np.interp(grid, times, z)
    filtered = signal.sosfiltfilt(bandpass_sos(), uniform)
    levels = quantise(np.abs(filtered))
    per_window = int(SAMPLE_RATE * COUNT_SECONDS)
    n_windows = len(levels) // per_window
    seconds = levels[: n_windows * per_window].reshape(-1, int(SAMPLE_RATE)).max(axis=1)
    sums = seconds.reshape(n_windows, int(COUNT_SECONDS)).sum(axis=1)
    return times[0] + COUNT_SECONDS * np.arange(n_windows), counts_from_second_maxima(sums)
