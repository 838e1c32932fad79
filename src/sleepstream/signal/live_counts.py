"""Causal activity counts from a live stream of wrist acceleration.

:class:`StreamingCounts` computes the counts of :mod:`sleepstream.signal.counts` from samples as
they arrive, using nothing after the newest sample. It differs from the published pipeline
(:func:`~sleepstream.signal.counts.counts_offline`) in two places only:

- **Filter.** The same 3-11 Hz Butterworth band-pass runs ``passes`` times *forward* (``sosfilt``
  with carried state) instead of forward and backward. Two forward passes have exactly the
  magnitude response of the zero-phase filter, so steady movement gives the same counts; the phase
  differs: the output lags the input (by 0.2-0.4 s between 8 and 4 Hz), so part of a movement
  that ends near a window boundary is counted in the next window. ``docs/counts-agreement.md``
  measures the difference.
- **Grid and windows.** Samples are resampled onto the fixed grid ``origin + n / sample_rate`` by
  linear interpolation between consecutive samples (a grid point is produced once a sample at or
  after it has arrived), and 15 s windows start at ``origin + 15 k``. A live stream and a replay
  of the same samples therefore give the same windows, whatever the chunking.

Missing data
------------
Two consecutive samples more than ``max_gap`` seconds apart make a *gap*: no grid point inside it
is produced, the filter restarts at rest on the first sample after it, and every window the gap
touches (the window it begins in, those inside it, the one where the stream resumes) has **no
count**: it is missing, not zero, and is simply absent from the output. The first window of the
stream is missing in the same way unless the first sample falls on its start. Gaps up to
``max_gap`` are bridged by the linear interpolation, as in the published pipeline.

Latency and memory
------------------
The count of window ``[t, t + 15 s)`` is returned by the :meth:`StreamingCounts.update` call whose
samples reach the window's last grid point, ``t + 15 s - 1 / sample_rate``. The state is the
filter's, the last sample, and the interpolated values of the pending window (at most
``15 * sample_rate`` numbers): it does not grow with the length of the stream. The filter runs
once per closed window on the whole pending window, so small chunks cost little more than large
ones.
"""

from __future__ import annotations

import itertools
import logging
import math

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import signal

from sleepstream.records import COUNT_SECONDS
from sleepstream.signal.counts import (
    BAND_HZ,
    SAMPLE_RATE,
    bandpass_sos,
    counts_from_second_maxima,
    quantise,
)

logger = logging.getLogger(__name__)

MAX_GAP_SECONDS = 1.0
"""Default longest interval between two samples that is bridged by interpolation, in seconds."""

PASSES = 2
"""Default number of forward passes of the band-pass: two match the offline magnitude response."""

_SECONDS_PER_WINDOW = int(COUNT_SECONDS)


class LateSampleError(ValueError):
    """A sample whose time is not after the sample before it, in its chunk or an earlier one.

    Raised by :meth:`StreamingCounts.update` before any state changes: the whole chunk is
    rejected, so a caller can count the late samples, drop them (``times > stream.last_time``
    and increasing) and feed the rest again.

    Attributes
    ----------
    time
        Time of the offending sample, in seconds.
    previous
        Time of the sample before it, in seconds.
    index
        Position of the offending sample in its chunk.
    """

    def __init__(self, time: float, previous: float, index: int) -> None:
        super().__init__(
            f"sample {index} of the chunk, at t = {time!r} s, is not after the sample before it "
            f"at t = {previous!r} s: times must increase strictly"
        )
        self.time = time
        self.previous = previous
        self.index = index

    def __reduce__(self) -> tuple[type[LateSampleError], tuple[float, float, int]]:
        return type(self), (self.time, self.previous, self.index)


def _empty() -> NDArray[np.float64]:
    return np.zeros(0)


class StreamingCounts:
    """Causal activity counts of a stream of wrist z acceleration, fed in chunks of any size.

    Parameters
    ----------
    sample_rate
        Rate of the uniform grid the samples are interpolated onto, in whole Hz (50 in the
        published pipeline). Input may come at any rate and spacing.
    passes
        Number of forward passes of the band-pass; 2 matches the magnitude response of the
        published forward-backward filter.
    origin
        Time, in seconds, of grid point 0 and of the start of window 0. Windows start at
        ``origin + 15 k`` for integer ``k`` (also negative).
    max_gap
        Longest interval between two consecutive samples that is interpolated over, in seconds;
        a longer one is a gap (module docstring). ``math.inf`` never resets.

    Examples
    --------
    >>> stream = StreamingCounts(origin=0.0)
    >>> times = np.arange(0.0, 40.0, 0.02)
    >>> z = -1.0 + 0.5 * np.sin(2 * np.pi * 5.0 * times)
    >>> count_times, counts = stream.update(times[:1000], z[:1000])  # 0-20 s: window 0 closes
    >>> count_times.tolist()
    [0.0]
    >>> stream.update(times[1000:], z[1000:])[0].tolist()  # 20-40 s: window 1 (15-30 s) closes
    [15.0]
    """

    def __init__(
        self,
        sample_rate: float = SAMPLE_RATE,
        passes: int = PASSES,
        origin: float = 0.0,
        max_gap: float = MAX_GAP_SECONDS,
    ) -> None:
        if not (float(sample_rate).is_integer() and sample_rate > 2 * BAND_HZ[1]):
            raise ValueError(
                f"sample_rate must be a whole number of Hz above {2 * BAND_HZ[1]:g} "
                f"(the band-pass reaches {BAND_HZ[1]:g} Hz), got {sample_rate!r}"
            )
        if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
            raise ValueError(f"passes must be a positive integer, got {passes!r}")
        if not math.isfinite(origin):
            raise ValueError(f"origin must be a finite time in seconds, got {origin!r}")
        if not max_gap > 0:
            raise ValueError(f"max_gap must be a positive number of seconds, got {max_gap!r}")
        self.sample_rate = sample_rate
        self.passes = passes
        self.origin = origin
        self.max_gap = max_gap

        self._per_second = int(sample_rate)
        self._per_window = _SECONDS_PER_WINDOW * self._per_second
        self._sos = np.tile(bandpass_sos(float(sample_rate)), (passes, 1))
        self._zi_at_rest = signal.sosfilt_zi(self._sos)  # times the input level: steady state
        # Stream state: everything below changes with update() and nothing grows with the stream.
        self._last_time: float | None = None
        self._last_value = 0.0
        self._zi = np.zeros_like(self._zi_at_rest)
        self._next_index = 0  # first grid index not produced yet
        self._run_start = 0  # first grid index after the start of the stream or the last gap
        self._pending_start = 0  # grid index of _pending[0]
        self._pending = _empty()  # interpolated values of the window not closed yet

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(sample_rate={self.sample_rate!r}, passes={self.passes!r}, "
            f"origin={self.origin!r}, max_gap={self.max_gap!r})"
        )

    def clone(self) -> StreamingCounts:
        """A fresh stream with the same parameters and no samples seen."""
        return type(self)(
            sample_rate=self.sample_rate,
            passes=self.passes,
            origin=self.origin,
            max_gap=self.max_gap,
        )

    @property
    def last_time(self) -> float | None:
        """Time of the newest sample accepted so far (``None`` before the first)."""
        return self._last_time

    def update(
        self, times: ArrayLike, z: ArrayLike
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Take the next samples; return the counts of the windows they close.

        Parameters
        ----------
        times
            Sample times in seconds, strictly increasing and after every sample fed before.
        z
            Acceleration along the watch's z axis, in g, one value per time.

        Returns
        -------
        count_times, counts
            Start time of each window that closed with this chunk and has a count (possibly
            none), in increasing order, and its count. Each count summarises
            ``[t, t + 15 s)``.

        Raises
        ------
        LateSampleError
            A time is not after the one before it (in this chunk or the last one fed).
        ValueError
            Lengths differ, the arrays are not 1-D, or a time or value is NaN or infinite.

        On any error the whole chunk is rejected and the state is unchanged.
        """
        t, values = self._checked(times, z)
        if t.size == 0:
            return _empty(), _empty()
        previous = self._last_time
        first_chunk = previous is None
        if previous is None:
            known_t, known_z = t, values
        else:  # the last sample seen brackets the grid points before this chunk's first
            known_t = np.concatenate(([previous], t))
            known_z = np.concatenate(([self._last_value], values))
        steps = known_t[1:] - known_t[:-1]
        if steps.size and steps.min() <= 0:
            i = int(np.flatnonzero(steps <= 0)[0]) + 1
            index = i if first_chunk else i - 1  # position in this chunk
            raise LateSampleError(float(known_t[i]), float(known_t[i - 1]), index)
        if first_chunk:
            self._start_run(float(t[0]), float(values[0]))
        if steps.size and steps.max() > self.max_gap:
            gaps = np.flatnonzero(steps > self.max_gap) + 1
            result = self._advance_over_gaps(known_t, known_z, gaps)
        else:
            result = self._advance(known_t, known_z)
        self._last_time = float(t[-1])
        self._last_value = float(values[-1])
        return result

    # --- steps of update() ---------------------------------------------------------------------

    @staticmethod
    def _checked(times: ArrayLike, z: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """The chunk as float arrays, after checking shapes and finiteness."""
        t = np.asarray(times, dtype=np.float64)
        values = np.asarray(z, dtype=np.float64)
        if t.ndim != 1 or values.ndim != 1:
            raise ValueError(
                f"times and z must be 1-D arrays, got shapes {t.shape} and {values.shape}"
            )
        if t.shape != values.shape:
            raise ValueError(f"times and z differ in length: {t.size} and {values.size}")
        if not np.isfinite(t).all():
            i = int(np.flatnonzero(~np.isfinite(t))[0])
            raise ValueError(f"time {float(t[i])!r} of sample {i} of the chunk is not finite")
        if not np.isfinite(values).all():
            i = int(np.flatnonzero(~np.isfinite(values))[0])
            raise ValueError(
                f"z = {float(values[i])!r} g at t = {float(t[i])!r} s (sample {i} of the chunk) is not finite"
            )
        return t, values

    def _advance_over_gaps(
        self, known_t: NDArray[np.float64], known_z: NDArray[np.float64], gaps: NDArray[np.intp]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Advance run by run; each gap (index of the first sample after it) restarts the filter."""
        bounds = [0, *gaps.tolist(), len(known_t)]
        pieces = []
        for start, stop in itertools.pairwise(bounds):
            if start > 0:
                logger.debug(
                    "gap from t = %.3f s to %.3f s: filter restarted",
                    known_t[start - 1],
                    known_t[start],
                )
                self._start_run(float(known_t[start]), float(known_z[start]))
            pieces.append(self._advance(known_t[start:stop], known_z[start:stop]))
        return np.concatenate([p[0] for p in pieces]), np.concatenate([p[1] for p in pieces])

    def _start_run(self, time: float, value: float) -> None:
        """Begin a gap-free run at a sample: filter at rest on its value, pending window dropped."""
        index = self._first_index_at_or_after(time)
        self._next_index = self._run_start = self._pending_start = index
        self._pending = _empty()
        self._zi = self._zi_at_rest * value

    def _advance(
        self, known_t: NDArray[np.float64], known_z: NDArray[np.float64]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Produce the grid points up to the last known sample of one run; close full windows."""
        last = self._last_index_at_or_before(float(known_t[-1]))
        if last >= self._next_index:
            grid = self.origin + np.arange(self._next_index, last + 1) / self.sample_rate
            self._pending = np.concatenate((self._pending, np.interp(grid, known_t, known_z)))
            self._next_index = last + 1
        return self._close_windows()

    def _close_windows(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Filter, quantise and sum the pending values of every window that is now complete."""
        first_window = self._pending_start // self._per_window
        lead = self._pending_start - first_window * self._per_window  # run began mid-window
        n_windows = (lead + len(self._pending)) // self._per_window
        if n_windows == 0:  # the usual case for small chunks
            return _empty(), _empty()
        n_values = n_windows * self._per_window - lead
        filtered, self._zi = signal.sosfilt(self._sos, self._pending[:n_values], zi=self._zi)
        levels = np.concatenate((np.zeros(lead), quantise(np.abs(filtered))))
        seconds = levels.reshape(n_windows, _SECONDS_PER_WINDOW, self._per_second).max(axis=2)
        sums = seconds.sum(axis=1)
        self._pending = self._pending[n_values:].copy()
        self._pending_start += n_values
        windows = first_window + np.arange(n_windows)
        full = windows * self._per_window >= self._run_start
        count_times = np.asarray(self.origin + COUNT_SECONDS * windows[full], dtype=np.float64)
        return count_times, counts_from_second_maxima(sums[full])

    # --- the grid --------------------------------------------------------------------------------

    def _grid_time(self, index: int) -> float:
        return self.origin + index / self.sample_rate

    def _first_index_at_or_after(self, time: float) -> int:
        index = math.ceil((time - self.origin) * self.sample_rate)
        while self._grid_time(index - 1) >= time:
            index -= 1
        while self._grid_time(index) < time:
            index += 1
        return index

    def _last_index_at_or_before(self, time: float) -> int:
        index = math.floor((time - self.origin) * self.sample_rate)
        while self._grid_time(index + 1) <= time:
            index += 1
        while self._grid_time(index) > time:
            index -= 1
        return index


def counts_streaming(
    times: ArrayLike,
    z: ArrayLike,
    chunk: int = 1500,
    *,
    passes: int = PASSES,
    origin: float | None = None,
    max_gap: float = MAX_GAP_SECONDS,
    sample_rate: float = SAMPLE_RATE,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Causal counts of a recording, replayed through :class:`StreamingCounts` in chunks.

    Parameters
    ----------
    times, z
        Sample times in seconds (strictly increasing) and z acceleration in g.
    chunk
        Samples per :meth:`StreamingCounts.update` call; the result does not depend on it.
    origin
        Start of window 0; by default the first sample's time, so the windows are those of
        :func:`~sleepstream.signal.counts.counts_offline`.
    passes, max_gap, sample_rate
        As in :class:`StreamingCounts`.

    Returns
    -------
    count_times, counts
        Start time of every window with a count, and the count.
    """
    t = np.asarray(times, dtype=np.float64)
    values = np.asarray(z, dtype=np.float64)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive number of samples, got {chunk!r}")
    if t.shape != values.shape:
        raise ValueError(f"times and z differ in shape: {t.shape} and {values.shape}")
    if t.size == 0:
        return _empty(), _empty()
    stream = StreamingCounts(
        sample_rate=sample_rate,
        passes=passes,
        origin=float(t[0]) if origin is None else origin,
        max_gap=max_gap,
    )
    pieces = [
        stream.update(t[i : i + chunk], values[i : i + chunk]) for i in range(0, t.size, chunk)
    ]
    return np.concatenate([p[0] for p in pieces]), np.concatenate([p[1] for p in pieces])
