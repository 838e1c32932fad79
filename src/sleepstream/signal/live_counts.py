"""Activity counts with a look-ahead of a few seconds, live and on recordings: one implementation.

:class:`StreamingCounts` computes activity counts from wrist z acceleration as it arrives, in
chunks of any size. It follows the published pipeline of :mod:`sleepstream.signal.counts` except
for the filter:

- **Filter.** The published forward-backward band-pass needs the whole recording. It is replaced
  by a linear-phase FIR with the same (zero-phase) magnitude response, truncated to
  +-``delay_seconds`` (:func:`~sleepstream.signal.counts.fir_taps`; default
  :data:`DELAY_SECONDS`). Its output at grid point ``n`` is the zero-phase output there, up to
  the truncation, and it is known ``delay_seconds`` after ``n``: the counts are causal with a
  fixed delay. ``docs/counts-agreement.md`` measures their agreement with
  :func:`~sleepstream.signal.counts.counts_offline`, and the choice of the delay.
- **Grid and windows.** Samples are resampled onto the fixed grid ``origin + n / sample_rate`` by
  linear interpolation between consecutive samples (a grid point is produced once a sample at or
  after it has arrived), and 15 s windows start at ``origin + 15 k``. A live stream and a replay
  of the same samples therefore give the same windows, whatever the chunking.

:func:`counts_fir` replays a whole recording through the class in one call. It is what training
uses on raw ``motion/`` files (:mod:`sleepstream.data.folder`), so the model is trained on
exactly the counts the live detector computes.

Delay
-----
The count of window ``[t, t + 15 s)`` is returned by the :meth:`StreamingCounts.update` call whose
samples reach ``t + 15 s - 1 / sample_rate + delay_seconds``: the window's last grid point plus
the filter's look-ahead. With the defaults that is ``t + 16.98 s``. ``count_times`` are always the
true window starts ``t``.

Missing data
------------
Two consecutive samples more than ``max_gap`` seconds apart make a *gap*. No grid point inside it
is produced, and the filter treats each side as a separate run: before the first sample of a run
it sees that sample's value held since forever, after the last sample of a run that sample's
value held for the look-ahead. So the windows that lie wholly inside a run keep their count (those
ending within ``delay_seconds`` before a gap are returned when the first sample after the gap
arrives), and every window the gap touches (the window it begins in, those inside it, the one
where the stream resumes) has **no count**: it is missing, not zero, and is simply absent from the
output. The first window of the stream is missing in the same way unless the first sample falls
on its start. Gaps up to ``max_gap`` are bridged by the linear interpolation, as in the published
pipeline.

Memory and cost
---------------
The state is the FIR's (``2 * delay_seconds * sample_rate`` partial sums of its last inputs),
the last sample, and the interpolated values not filtered yet (fewer than one window's): it does
not grow with the length of the stream. :meth:`StreamingCounts.get_state` gives it as plain
numbers and arrays for a portable snapshot. The filter runs once
per closed window on that window's values, so small chunks cost little more than large ones, and
the result does not depend on the chunking, to the last bit.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from sleepstream.records import COUNT_SECONDS
from sleepstream.signal.counts import (
    BAND_HZ,
    SAMPLE_RATE,
    counts_from_second_maxima,
    fir_taps,
    half_width_samples,
    quantise,
)
from sleepstream.state_data import array, integer, number

logger = logging.getLogger(__name__)

MAX_GAP_SECONDS = 1.0
"""Default longest interval between two samples that is bridged by interpolation, in seconds."""

DELAY_SECONDS = 2.0
"""Default look-ahead (half length) of the FIR, in seconds: chosen in ``docs/counts-agreement.md``."""

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


_WHAT = "counts state"


class StreamingCounts:
    """Activity counts of a stream of wrist z acceleration, fed in chunks of any size.

    Causal with a fixed delay: the count of window ``[t, t + 15 s)`` is returned once the stream
    reaches ``t + 15 s - 1 / sample_rate + delay_seconds`` (module docstring), never earlier.

    Parameters
    ----------
    sample_rate
        Rate of the uniform grid the samples are interpolated onto, in whole Hz (50 in the
        published pipeline). Input may come at any rate and spacing.
    delay_seconds
        Look-ahead of the linear-phase FIR, in seconds (a whole number of grid steps): the FIR
        keeps +-``delay_seconds`` of the zero-phase filter's response, and each count is that
        much later than the end of its window.
    origin
        Time, in seconds, of grid point 0 and of the start of window 0. Windows start at
        ``origin + 15 k`` for integer ``k`` (also negative).
    max_gap
        Longest interval between two consecutive samples that is interpolated over, in seconds;
        a longer one is a gap (module docstring). ``math.inf`` never resets.
    window
        Taper of the truncated response (:func:`~sleepstream.signal.counts.fir_taps`).

    Attributes
    ----------
    taps
        The FIR, ``2 * delay_seconds * sample_rate + 1`` taps.

    Examples
    --------
    >>> stream = StreamingCounts(origin=0.0)
    >>> stream.delay_seconds
    2.0
    >>> times = np.arange(0.0, 40.0, 0.02)
    >>> z = -1.0 + 0.5 * np.sin(2 * np.pi * 5.0 * times)
    >>> stream.update(times[:850], z[:850])[0].tolist()  # up to 16.98 s: window 0 is ready
    [0.0]
    >>> stream.update(times[850:], z[850:])[0].tolist()  # up to 39.98 s: window 1 (15-30 s)
    [15.0]
    """

    def __init__(
        self,
        sample_rate: float = SAMPLE_RATE,
        delay_seconds: float = DELAY_SECONDS,
        origin: float = 0.0,
        max_gap: float = MAX_GAP_SECONDS,
        window: str = "boxcar",
    ) -> None:
        if not (float(sample_rate).is_integer() and sample_rate > 2 * BAND_HZ[1]):
            raise ValueError(
                f"sample_rate must be a whole number of Hz above {2 * BAND_HZ[1]:g} "
                f"(the band-pass reaches {BAND_HZ[1]:g} Hz), got {sample_rate!r}"
            )
        if not math.isfinite(origin):
            raise ValueError(f"origin must be a finite time in seconds, got {origin!r}")
        if not max_gap > 0:
            raise ValueError(f"max_gap must be a positive number of seconds, got {max_gap!r}")
        half = half_width_samples(delay_seconds, float(sample_rate))  # checks delay_seconds
        self.sample_rate = sample_rate
        self.delay_seconds = delay_seconds
        self.origin = origin
        self.max_gap = max_gap
        self.window = window

        self._per_second = int(sample_rate)
        self._per_window = _SECONDS_PER_WINDOW * self._per_second
        self._half = half  # look-ahead in grid steps
        if window != "boxcar":
            _ = self.taps  # other tapers are built now, so a bad name fails here
        # Stream state: everything below changes with update() and nothing grows with the stream.
        self._last_time: float | None = None
        self._last_value = 0.0
        self._zi = np.zeros(2 * half)  # the FIR's delay line
        self._next_index = 0  # first grid index not produced yet
        self._run_start = 0  # first grid index after the start of the stream or the last gap
        self._pending_start = 0  # grid index of _pending[0]; its filtered value is _half earlier
        self._pending = _empty()  # interpolated values not filtered yet

    @functools.cached_property
    def taps(self) -> NDArray[np.float64]:
        """The FIR's taps (:func:`~sleepstream.signal.counts.fir_taps`), made on first use."""
        return fir_taps(self.delay_seconds, float(self.sample_rate), self.window)

    @functools.cached_property
    def _zi_at_rest(self) -> NDArray[np.float64]:
        from scipy import signal

        return np.asarray(signal.lfilter_zi(self.taps, 1.0))  # times the input level

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(sample_rate={self.sample_rate!r}, "
            f"delay_seconds={self.delay_seconds!r}, origin={self.origin!r}, "
            f"max_gap={self.max_gap!r}, window={self.window!r})"
        )

    def clone(self) -> StreamingCounts:
        """A fresh stream with the same parameters and no samples seen."""
        return type(self)(
            sample_rate=self.sample_rate,
            delay_seconds=self.delay_seconds,
            origin=self.origin,
            max_gap=self.max_gap,
            window=self.window,
        )

    @property
    def last_time(self) -> float | None:
        """Time of the newest sample accepted so far (``None`` before the first)."""
        return self._last_time

    # --- state as data ---------------------------------------------------------------------------

    def _parameters(self) -> dict[str, float | str]:
        return {
            "sample_rate": self.sample_rate,
            "delay_seconds": self.delay_seconds,
            "origin": self.origin,
            "max_gap": self.max_gap,
            "window": self.window,
        }

    def get_state(self) -> tuple[dict[str, Any], dict[str, NDArray[np.float64]]]:
        """The state as JSON-ready values and arrays, for a portable snapshot (never a pickle).

        Returns
        -------
        numbers
            The parameters (checked on restore), the last sample (``last_time`` is ``None``
            before the first) and the grid indices of the stream.
        arrays
            ``zi``: the FIR's state, ``2 * delay_seconds * sample_rate`` values; ``pending``:
            the interpolated values not filtered yet (fewer than one window's).
        """
        numbers: dict[str, Any] = {
            **self._parameters(),
            "last_time": self._last_time,
            "last_value": self._last_value,
            "next_index": self._next_index,
            "run_start": self._run_start,
            "pending_start": self._pending_start,
        }
        return numbers, {"zi": self._zi.copy(), "pending": self._pending.copy()}

    def set_state(self, numbers: object, arrays: Mapping[str, NDArray[Any]]) -> None:
        """Continue from :meth:`get_state` (after a JSON round trip of ``numbers``).

        Raises
        ------
        ValueError
            The state was taken with other parameters, or is malformed: a missing or non-finite
            value, arrays of the wrong shape, or indices that do not fit together. The stream
            is then unchanged.
        """
        if not isinstance(numbers, Mapping):
            raise ValueError(f"counts state must be a mapping, got {type(numbers).__name__}")
        mine = self._parameters()
        differing = sorted(k for k, v in mine.items() if numbers.get(k) != v)
        if differing:
            theirs = ", ".join(f"{k} = {numbers.get(k)!r} (here {mine[k]!r})" for k in differing)
            raise ValueError(f"counts state was taken with other parameters: {theirs}")
        fresh = self.clone()
        if numbers.get("last_time") is None:  # no sample seen: nothing else to restore
            self.__dict__.update(fresh.__dict__)
            return
        next_index, run_start, pending_start = (
            integer(numbers, key, what=_WHAT)
            for key in ("next_index", "run_start", "pending_start")
        )
        pending = array(arrays, "pending", np.float64, what=_WHAT)
        if not (
            run_start <= pending_start
            and pending_start + len(pending) == next_index
            and len(pending) < fresh._per_window
        ):
            raise ValueError(
                f"counts state indices do not fit together: next_index {next_index}, run_start "
                f"{run_start}, pending_start {pending_start}, {len(pending)} pending values"
            )
        fresh._zi = array(arrays, "zi", np.float64, (2 * fresh._half,), what=_WHAT)
        fresh._last_time = number(numbers, "last_time", what=_WHAT)
        fresh._last_value = number(numbers, "last_value", what=_WHAT)
        fresh._next_index, fresh._run_start = next_index, run_start
        fresh._pending_start, fresh._pending = pending_start, pending
        self.__dict__.update(fresh.__dict__)

    def update(
        self, times: ArrayLike, z: ArrayLike
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Take the next samples; return the counts of the windows that became ready.

        Parameters
        ----------
        times
            Sample times in seconds, strictly increasing and after every sample fed before.
        z
            Acceleration along the watch's z axis, in g, one value per time.

        Returns
        -------
        count_times, counts
            Start time of each window whose count became ready with this chunk (possibly none),
            in increasing order, and its count. Each count summarises ``[t, t + 15 s)`` and is
            ready once the samples reach ``t + 15 s - 1 / sample_rate + delay_seconds``, or
            when a gap after the window ends its run.

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
        """Advance run by run; at each gap (index of the first sample after it) end the run."""
        bounds = [0, *gaps.tolist(), len(known_t)]
        pieces = []
        for start, stop in itertools.pairwise(bounds):
            if start > 0:
                logger.debug(
                    "gap from t = %.3f s to %.3f s: filter restarted",
                    known_t[start - 1],
                    known_t[start],
                )
                pieces.append(self._end_run(float(known_z[start - 1])))
                self._start_run(float(known_t[start]), float(known_z[start]))
            pieces.append(self._advance(known_t[start:stop], known_z[start:stop]))
        return np.concatenate([p[0] for p in pieces]), np.concatenate([p[1] for p in pieces])

    def _start_run(self, time: float, value: float) -> None:
        """Begin a gap-free run at a sample: its value held before it, pending values dropped."""
        index = self._first_index_at_or_after(time)
        self._next_index = self._run_start = self._pending_start = index
        self._pending = _empty()
        self._zi = self._zi_at_rest * value

    def _end_run(self, value: float) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Close the windows of a run that a gap ends, its last value held for the look-ahead."""
        self._pending = np.concatenate((self._pending, np.full(self._half, value)))
        return self._close_windows()

    def _advance(
        self, known_t: NDArray[np.float64], known_z: NDArray[np.float64]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Produce the grid points up to the last known sample of one run; close ready windows."""
        last = self._last_index_at_or_before(float(known_t[-1]))
        if last >= self._next_index:
            grid = self.origin + np.arange(self._next_index, last + 1) / self.sample_rate
            self._pending = np.concatenate((self._pending, np.interp(grid, known_t, known_z)))
            self._next_index = last + 1
        return self._close_windows()

    def _close_windows(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Filter, quantise and sum every window whose filtered values can all be computed.

        The FIR's output for the input at grid index ``j`` is the filtered value at ``j - half``,
        so the pending inputs give the filtered values from ``_pending_start - half`` on, one
        per input. The filter runs window by window, whatever the chunking, so the arithmetic,
        and with it every count, is the same for any chunking.
        """
        filtered_start = self._pending_start - self._half
        first_window = filtered_start // self._per_window
        lead = filtered_start - first_window * self._per_window  # only where a run began
        n_windows = (lead + len(self._pending)) // self._per_window
        if n_windows == 0:  # the usual case for small chunks
            return _empty(), _empty()
        sums = np.empty(n_windows)
        used = 0
        for k in range(n_windows):
            size = self._per_window - (lead if k == 0 else 0)
            from scipy import signal

            filtered, self._zi = signal.lfilter(
                self.taps, 1.0, self._pending[used : used + size], zi=self._zi
            )
            used += size
            levels = quantise(np.abs(filtered))
            if size < self._per_window:  # part of a window before the run: missing anyway
                levels = np.concatenate((np.ones(self._per_window - size), levels))
            sums[k] = levels.reshape(_SECONDS_PER_WINDOW, self._per_second).max(axis=1).sum()
        self._pending = self._pending[used:].copy()
        self._pending_start += used
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


def counts_fir(
    times: ArrayLike,
    z: ArrayLike,
    *,
    origin: float | None = None,
    chunk: int | None = None,
    delay_seconds: float = DELAY_SECONDS,
    max_gap: float = MAX_GAP_SECONDS,
    sample_rate: float = SAMPLE_RATE,
    window: str = "boxcar",
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Activity counts of a recording, exactly as :class:`StreamingCounts` computes them live.

    The recording is replayed through the streaming class, so these are the counts a live
    detector would have seen; use them to train on raw acceleration. Windows whose count would
    only be ready after the last sample (those ending within ``delay_seconds`` of it) have none.

    Parameters
    ----------
    times, z
        Sample times in seconds (strictly increasing) and z acceleration in g.
    origin
        Start of window 0; by default the first sample's time, so the windows are those of
        :func:`~sleepstream.signal.counts.counts_offline`.
    chunk
        Samples per :meth:`StreamingCounts.update` call; ``None``: all at once. The result does
        not depend on it.
    delay_seconds, max_gap, sample_rate, window
        As in :class:`StreamingCounts`.

    Returns
    -------
    count_times, counts
        Start time of every window with a count (the true start, not shifted by the delay),
        and the count.
    """
    t = np.asarray(times, dtype=np.float64)
    values = np.asarray(z, dtype=np.float64)
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"chunk must be a positive number of samples or None, got {chunk!r}")
    if t.shape != values.shape:
        raise ValueError(f"times and z differ in shape: {t.shape} and {values.shape}")
    if t.size == 0:
        return _empty(), _empty()
    stream = StreamingCounts(
        sample_rate=sample_rate,
        delay_seconds=delay_seconds,
        origin=float(t[0]) if origin is None else origin,
        max_gap=max_gap,
        window=window,
    )
    step = t.size if chunk is None else chunk
    pieces = [stream.update(t[i : i + step], values[i : i + step]) for i in range(0, t.size, step)]
    return np.concatenate([p[0] for p in pieces]), np.concatenate([p[1] for p in pieces])
