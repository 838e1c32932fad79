"""Activity counts from raw wrist acceleration (te Lindert & Van Someren 2013, as in Walch 2019).

The published pipeline: interpolate the z axis onto a uniform 50 Hz grid; 5th-order Butterworth
band-pass 3-11 Hz applied forward and backward (zero phase); absolute value; quantise into 128
equal bins over 0-5 g (the bin index, from 1, is the value); maximum per second; sum of the
per-second maxima over each 15 s window; ``count = max(0, (sum - 18) * 3.07)``.

:func:`counts_offline` is that pipeline. Its forward-backward filter looks into the future, so it
is the non-causal reference only: for comparison, never for live use nor for training.

:func:`fir_taps` designs the filter that replaces it everywhere else: a linear-phase FIR with the
zero-phase magnitude response, truncated to a look-ahead of a few seconds. It runs inside the
model file's step (:class:`~sleepstream.step.AccelCounts`), live and (through
:func:`~sleepstream.step.accel_counts`) on recorded raw acceleration, so training and live use
see the same counts. ``docs/counts-agreement.md`` measures how close they are to the
published ones.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

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
    from scipy import signal

    return np.asarray(
        signal.butter(FILTER_ORDER, BAND_HZ, btype="bandpass", fs=sample_rate, output="sos")
    )


def half_width_samples(half_width_seconds: float, sample_rate: float = SAMPLE_RATE) -> int:
    """``half_width_seconds`` in grid steps; ``ValueError`` unless a whole positive number."""
    half = half_width_seconds * sample_rate
    if not (half > 0 and float(half).is_integer()):
        raise ValueError(
            f"half_width_seconds * sample_rate must be a whole positive number of samples, got "
            f"{half_width_seconds!r} s * {sample_rate!r} Hz = {half!r}"
        )
    return int(half)


def fir_taps(
    half_width_seconds: float, sample_rate: float = SAMPLE_RATE, window: str = "boxcar"
) -> NDArray[np.float64]:
    """Taps of the linear-phase FIR that approximates the zero-phase (forward-backward) band-pass.

    Filtering forward and backward with the Butterworth band-pass of :func:`bandpass_sos` is a
    convolution with the autocorrelation of its impulse response: a symmetric, zero-phase
    response with gain ``|H|^2``. It decays fast (the part beyond +-1 s has 0.6 % of its
    root-mean-square, beyond +-2 s 0.015 %), so truncated to +-``half_width_seconds`` it is a
    causal FIR whose output is the zero-phase output delayed by exactly ``half_width_seconds``.

    Parameters
    ----------
    half_width_seconds
        Half the length of the response kept, in seconds: the FIR's delay. Times
        ``sample_rate`` it must be a whole positive number ``M``; the FIR has ``2 M + 1`` taps.
    sample_rate
        Sampling rate of the filtered signal, in Hz.
    window
        Taper applied to the truncated response (any name :func:`scipy.signal.get_window`
        accepts). The default ``"boxcar"`` keeps the response as it is: it is already near zero
        at the cut, and a taper such as ``"hann"`` lowers the gain inside the band instead
        (``docs/counts-agreement.md``).

    Returns
    -------
    taps
        ``2 M + 1`` symmetric taps with zero gain at 0 Hz (to rounding): the truncated
        response's small sum is removed (in proportion to the window), so gravity on the z
        axis, up to 1 g, does not leak into the filtered signal.

    Examples
    --------
    >>> taps = fir_taps(2.0)
    >>> len(taps), bool(np.allclose(taps, taps[::-1])), abs(float(taps.sum())) < 1e-15
    (201, True, True)
    """
    from scipy import signal

    m = half_width_samples(half_width_seconds, sample_rate)
    # The Butterworth impulse response has decayed far below double precision after 20 s.
    length = m + int(20 * sample_rate)
    impulse = np.zeros(length)
    impulse[0] = 1.0
    forward = signal.sosfilt(bandpass_sos(sample_rate), impulse)
    zero_phase = np.correlate(forward, forward, mode="full")  # lag 0 at index length - 1
    taper = np.asarray(signal.get_window(window, 2 * m + 1, fftbins=False), dtype=np.float64)
    taps = zero_phase[length - 1 - m : length + m] * taper
    taps -= taper * (taps.sum() / taper.sum())
    return np.asarray((taps + taps[::-1]) / 2, dtype=np.float64)


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
    from scipy import signal

    filtered = signal.sosfiltfilt(bandpass_sos(), uniform)
    levels = quantise(np.abs(filtered))
    per_window = int(SAMPLE_RATE * COUNT_SECONDS)
    n_windows = len(levels) // per_window
    seconds = levels[: n_windows * per_window].reshape(-1, int(SAMPLE_RATE)).max(axis=1)
    sums = seconds.reshape(n_windows, int(COUNT_SECONDS)).sum(axis=1)
    return times[0] + COUNT_SECONDS * np.arange(n_windows), counts_from_second_maxima(sums)
