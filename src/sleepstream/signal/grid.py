"""Raw samples onto the uniform 50 Hz grid the counts step takes, with missing points as NaN.

Grid point ``g`` gets the linear interpolation between the samples just before and at-or-after
it, when those are at most ``max_gap`` seconds apart (a sample exactly at ``g`` is used as it
is). Inside a longer gap, before the first sample and after the last one, the point is missing.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from sleepstream.signal.counts import SAMPLE_RATE

MAX_GAP_SECONDS = 1.0
"""Longest interval between two samples bridged by interpolation, in seconds."""


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
