"""Raw samples onto the uniform 50 Hz grid the counts step takes, with missing points as NaN.

Grid point ``g`` gets the linear interpolation between the samples just before and at-or-after
it, when those are at most ``max_gap`` seconds apart (a sample exactly at ``g`` is used as it
is). Inside a longer gap, before the first sample and after the last one, the point is missing.

That is :func:`to_grid`, for samples at about 50 Hz (the rate of the training data). Samples at
another rate go through :func:`resample_to_grid`: onto a uniform grid at their own rate first,
then to 50 Hz with :func:`scipy.signal.resample_poly` (a polyphase filter that keeps the band the
counts use, 3-11 Hz, and removes what would alias into it), so 25 or 100 Hz give the counts of
50 Hz, which linear interpolation does not.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from sleepstream.signal.counts import SAMPLE_RATE

MAX_GAP_SECONDS = 1.0
"""Longest interval between two samples bridged by interpolation, in seconds."""
MIN_RATE_HZ, MAX_RATE_HZ = 10.0, 1000.0
"""Acceleration rates :func:`resample_to_grid` accepts (below 10 Hz the 3-11 Hz band is gone)."""
RATE_TOLERANCE = 0.02
"""Rates within this fraction of 50 Hz are taken as 50 Hz and interpolated linearly."""
RESAMPLE_PAD_SECONDS = 1.0
"""Samples needed on either side of the grid by the resampling filter, in seconds."""
UPSAMPLED_HZ = 200.0
ANTI_ALIAS_HZ = 22.5
ANTI_ALIAS_FRACTION = 0.45
"""The low-pass cut-off: this fraction of the input rate (below its Nyquist frequency, so the
images of upsampling stay out), at most :data:`ANTI_ALIAS_HZ`."""
FILTER_HALF_SECONDS = 0.5


def to_grid(
    times: NDArray[np.float64],
    values: NDArray[np.float64],
    first: float,
    n_points: int,
    max_gap: float = MAX_GAP_SECONDS,
    sample_rate: float = SAMPLE_RATE,
) -> NDArray[np.float64]:
    """Values at ``first + k / sample_rate`` for ``k < n_points``; NaN where missing.

    ``times`` must be increasing.

    >>> to_grid(np.array([0.0, 0.04, 5.0]), np.array([1.0, 2.0, 3.0]), 0.0, 4).tolist()
    [1.0, 1.5, 2.0, nan]
    """
    grid = first + np.arange(n_points) / sample_rate
    out = np.full(n_points, np.nan)
    if len(times) == 0:
        return out
    right = np.searchsorted(times, grid, side="left")
    inside = right < len(times)
    exact = inside & (times[np.minimum(right, len(times) - 1)] == grid)
    left = right - 1
    bridged = inside & (left >= 0)
    safe_left, safe_right = np.maximum(left, 0), np.minimum(right, len(times) - 1)
    bridged &= times[safe_right] - times[safe_left] <= max_gap
    usable = exact | bridged
    out[usable] = np.interp(grid[usable], times, values)
    return out


def sample_rate(times: NDArray[np.float64]) -> float | None:
    """The rate of ``times`` in Hz (one over the median interval); ``None`` for fewer than two.

    >>> round(sample_rate(np.arange(100) / 25.0), 6)
    25.0
    """
    if len(times) < 2:
        return None
    step = float(np.median(np.diff(times)))
    return 1.0 / step if step > 0 else None


def is_grid_rate(rate: float | None) -> bool:
    """Whether samples at ``rate`` go onto the grid by linear interpolation (about 50 Hz)."""
    return rate is None or abs(rate / SAMPLE_RATE - 1.0) <= RATE_TOLERANCE


def resample_to_grid(
    times: NDArray[np.float64],
    values: NDArray[np.float64],
    first: float,
    n_points: int,
    rate: float | None = None,
    max_gap: float = MAX_GAP_SECONDS,
) -> NDArray[np.float64]:
    """:func:`to_grid` for samples at any rate from 10 Hz to 1 kHz.

    Near 50 Hz (:data:`RATE_TOLERANCE`) this is :func:`to_grid`. Otherwise the samples go onto a
    uniform grid at their own rate (``rate``, default :func:`sample_rate`), starting at the
    first sample used (linear interpolation, gaps as in :func:`to_grid`);
    :func:`scipy.signal.resample_poly` takes that to at least 200 Hz through a low-pass
    filter at the lower of 0.45 times its rate and 22.5 Hz (what is above would alias into
    the 50 Hz grid); and the 50 Hz grid is interpolated linearly from there, which at 200 Hz
    keeps 99 % of an 11 Hz movement. A missing point spoils the output its filter reaches
    (up to 0.5 s either side). The grid needs samples from :data:`RESAMPLE_PAD_SECONDS` before
    ``first`` to as long after its last point.

    Examples
    --------
    A 4 Hz movement sampled at 25 Hz keeps its size on the 50 Hz grid:

    >>> t = np.arange(0.0, 10.0, 1 / 25)
    >>> grid = resample_to_grid(t, np.sin(2 * np.pi * 4 * t), 2.0, 250)
    >>> bool(np.allclose(grid, np.sin(2 * np.pi * 4 * (2.0 + np.arange(250) / 50)), atol=0.02))
    True
    """
    rate = sample_rate(times) if rate is None else rate
    if is_grid_rate(rate):
        return to_grid(times, values, first, n_points, max_gap)
    assert rate is not None
    if not MIN_RATE_HZ * (1 - RATE_TOLERANCE) <= rate <= MAX_RATE_HZ * (1 + RATE_TOLERANCE):
        raise ValueError(
            f"acceleration at {rate:.3g} Hz: rates from {MIN_RATE_HZ:g} to {MAX_RATE_HZ:g} Hz "
            "can be resampled to the 50 Hz the counts need"
        )
    from scipy import signal

    lo, hi = first - RESAMPLE_PAD_SECONDS, first + n_points / SAMPLE_RATE + RESAMPLE_PAD_SECONDS
    at = int(np.searchsorted(times, lo))
    if at >= len(times) or times[at] > hi:
        return np.full(n_points, np.nan)
    start = float(times[at])
    native = to_grid(times, values, start, math.ceil((hi - start) * rate) + 1, max_gap, rate)
    up = math.ceil(UPSAMPLED_HZ / rate)
    half = math.ceil(FILTER_HALF_SECONDS * rate * up)
    cutoff = min(ANTI_ALIAS_FRACTION * rate, ANTI_ALIAS_HZ)
    taps = signal.firwin(2 * half + 1, cutoff, window=("kaiser", 8.0), fs=rate * up)
    fine = signal.resample_poly(native, up, 1, window=taps)  # scales the taps by up
    fine_times = start + np.arange(len(fine)) / (rate * up)
    return to_grid(fine_times, fine, first, n_points, max_gap)
