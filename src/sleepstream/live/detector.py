"""The live detector: sensor samples in, one result per closed 30 s epoch out.

:class:`SleepDetector` takes acceleration chunks, heart-rate samples, ready-made activity counts
and motion-activity context, in any mix and chunk size, and returns an :class:`EpochResult` for
every epoch that has closed. For each epoch it collects exactly the inputs of the model file
(:mod:`sleepstream.pipeline`: the acceleration grid, the two counts, the heart-rate samples)
and runs the file's step, which holds the counts filter, the features and the network, so the
numbers are those of training and evaluation. Then it applies the context veto and the
hysteresis of :class:`~sleepstream.events.OnsetTracker`, the rules the file's metadata names.
``docs/robustness.md`` lists every bad input and what it gets.

Time
----
- Times are Unix seconds (float64), or any other seconds (a recording's own clock, negative
  times included). Times beyond 1e11 s (the year 5138) are refused with a message naming the
  unit they look like (milliseconds, microseconds); ``time_unit="ms"`` or ``"us"`` takes them.
- Epochs are ``[origin + 30 k, origin + 30 (k + 1))``: with ``origin = 0`` and Unix times they
  start on the wall clock's :00 and :30 seconds, in every time zone. Results carry the IANA
  ``timezone`` for their local times (:attr:`EpochResult.start_local`); a daylight-saving change
  moves the local clock, never the epochs.
- There is no start time to give: the first reported epoch is the one containing the first
  sample, and no feature counts from the moment the detector was switched on (each looks back a
  fixed window), so a watch worn all day is simply fed all day.

When an epoch closes
--------------------
- Each stream *covers* time up to its newest sample (counts: to the end of the newest count's
  15 s window; acceleration: its newest sample less the counts filter's look-ahead of 2 s,
  and 1 s more when it is resampled). An epoch closes once every stream it waits for covers
  its end: the streams named in ``expect``, or else heart rate and motion (acceleration or
  counts, whichever comes). Streams may therefore arrive in any order and chunk size.
- A stream that falls silent does not hold the others: an epoch also closes once the newest
  sample of any stream (or :meth:`SleepDetector.advance`) is ``close_lag`` seconds past its
  end. :meth:`SleepDetector.flush` closes every epoch up to a time at once (the streams ended).
- A sample for an epoch that has already closed is *late*: it is not merged but counted per
  stream (:attr:`SleepDetector.late_samples`, and in the next result). A stream whose first
  samples arrive more than ``close_lag`` (at least 30 s) after their epochs closed is refused
  with a ``ValueError`` instead: it was fed after the others, which needs ``expect``.

Gaps
----
- Every result says what it saw: :attr:`EpochResult.hr_samples` and
  :attr:`EpochResult.motion_seconds`. An epoch with neither has ``p_sleep`` NaN and the state
  ``"unknown"`` (never asleep); the first of a run reports the event ``"unknown"``; the tracker
  keeps its state across it.
- After ``reset_after`` seconds (2 h) without data the stream starts afresh: the model state and
  the tracker go back to their initial values and no more empty epochs are reported. The next
  data reopens the grid at its epoch, preceded by one result covering the rest of the gap
  (:attr:`EpochResult.is_gap`). A jump to any later time therefore costs at most
  ``reset_after / 30`` epochs.

Acceleration
------------
- Raw acceleration in g at 10 Hz to 1 kHz goes onto the 50 Hz grid the counts need: linear
  interpolation near 50 Hz, band-limited resampling otherwise
  (:func:`~sleepstream.signal.grid.resample_to_grid`); the rate is the median interval of the
  last 64 samples. Below 10 Hz, or above 1 kHz, it is refused; below 24 Hz part of the 3-11 Hz
  band the counts use is gone, and a warning says so.
- The unit check (g, gravity present; :func:`~sleepstream.live.units.check_acceleration_units`)
  runs once the first 50 samples of ``(n, 3)`` data have arrived, whatever the chunk sizes;
  until then they are held back.

p(sleep) from the device
------------------------
- A device that runs the model file itself sends its per-epoch p(sleep) instead of samples
  (:meth:`SleepDetector.add_p_sleep`), each for an epoch start on the grid above. The value is
  the epoch's :attr:`EpochResult.p_model`; the context veto, the threshold, the tracker and the
  gap rules then apply as they do after the model. An epoch closes as soon as its value comes,
  and epochs left out between two values are epochs without data. NaN is not a value: a device
  with no data for an epoch leaves it out.
- A detector takes samples or p(sleep), never both: the first it is given decides.
"""

from __future__ import annotations

import copy
import heapq
import itertools
import json
import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

import numpy as np
from numpy.typing import ArrayLike, NDArray

from sleepstream.data.times import (
    PER_SECOND,
    SINCE_1970_FROM,
    TIME_UNITS,
    UNIT_NAMES,
    since_1970_unit,
    time_zone,
)
from sleepstream.events import OnsetTracker
from sleepstream.features import pack_counts, pack_heart_rate
from sleepstream.live import state
from sleepstream.live.backends import PipelineModel
from sleepstream.live.context import ACTIVITIES, CONFIDENCES, ContextVeto, MotionContext
from sleepstream.live.units import check_acceleration_units
from sleepstream.records import COUNT_SECONDS, EPOCH_SECONDS
from sleepstream.signal.counts import SAMPLE_RATE
from sleepstream.signal.grid import (
    MAX_RATE_HZ,
    MIN_RATE_HZ,
    RATE_TOLERANCE,
    RESAMPLE_PAD_SECONDS,
    is_grid_rate,
    resample_to_grid,
    sample_rate,
)
from sleepstream.state_data import array, finite_or_none, integer, number, time_or_never

COUNTS_DELAY_SECONDS = 2.0
"""The counts filter's look-ahead (:data:`sleepstream.step.COUNTS_DELAY_SECONDS`)."""
ACCEL_SAMPLES = 1500
CLOSE_LAG_SECONDS = 60.0
"""Default ``close_lag``: how long the detector waits for a stream that has fallen behind."""
RESET_AFTER_SECONDS = 7200.0
"""Default ``reset_after``: seconds without any data after which the stream starts afresh."""
MAX_SECONDS, MIN_SECONDS = SINCE_1970_FROM["ms"], -1e10
"""Accepted times, in seconds (the years 1653 to 5138)."""
UNIT_CHECK_SAMPLES = 50
MAX_ACCELERATION = 1000.0
"""Acceleration values beyond this are refused whatever the unit (and ``check_units``)."""
FULL_BAND_HZ = 24.0
"""Acceleration below this rate cannot carry the counts' 3-11 Hz band (a warning says so)."""
RATE_INTERVALS = 64
"""Sample intervals the acceleration rate is the median of (the rate needs at least 8)."""
MIN_BPM, MAX_BPM = 25.0, 250.0
SLICE_SECONDS = 10.0
"""Time slices in which :meth:`SleepDetector.add` feeds several streams together."""
GRID_TOLERANCE_SECONDS = 1e-3
"""How far a p(sleep) time may be from its epoch's start (rounding in the device's clock)."""

log = logging.getLogger(__name__)

_WHAT = "snapshot"
Stream = Literal["acceleration", "heart_rate", "counts", "context", "p_sleep"]
State = Literal["asleep", "awake", "unknown"]
DATA_STREAMS: tuple[Stream, ...] = ("heart_rate", "acceleration", "counts")
"""The streams whose samples are data (context is not): they decide whether an epoch saw any."""
P_SLEEP: Stream = "p_sleep"
"""The stream of a device that sends its per-epoch p(sleep) instead of samples."""


@dataclass(frozen=True, eq=False)
class EpochResult:
    """What the detector says about one closed epoch (or, :attr:`is_gap`, one long gap).

    Attributes
    ----------
    start, end
        The epoch, in the detector's seconds (Unix seconds for wall-clock use).
    p_sleep
        Probability of sleep after the context rule (0 when vetoed); NaN without data.
    p_model
        The network's probability before the context rule; NaN without data. For a device
        that runs the model itself, the p(sleep) it sent (:attr:`p_from_device`).
    state
        ``"asleep"`` / ``"awake"``: the tracker's state after this epoch; ``"unknown"`` when
        the epoch saw no data.
    events
        ``"fell_asleep"`` / ``"woke_up"`` completed at this epoch; ``"unknown"`` at the first
        epoch without data after epochs with data.
    vetoed
        The context rule's reason when it vetoed sleep, else ``None``.
    late_samples
        Samples that arrived for already-closed epochs since the previous result, per stream.
    hr_samples
        Heart-rate samples inside the epoch (0 when its p(sleep) was sent).
    motion_seconds
        Seconds of motion the epoch saw: points of its acceleration grid (50 per second), or
        15 s per activity count (0 when its p(sleep) was sent).
    timezone
        IANA name of the time zone of :attr:`start_local` and :attr:`end_local`.
    features
        The epoch's causal features (:data:`~sleepstream.features.FEATURE_NAMES` order), as
        the model file computed them; not compared between results. ``None`` when the
        model did not run here (:attr:`p_from_device`).
    p_from_device
        The epoch's p(sleep) was sent by a device that runs the model itself
        (:meth:`SleepDetector.add_p_sleep`); the samples behind it are not known here.
    p_stages
        The live stage probabilities of the epoch, per task (``"wake_nrem_rem"``: wake, NREM,
        REM; ``"wake_light_deep_rem"``: wake, light, deep, REM), from a model file with stage
        outputs (``p_stage3`` / ``p_stage4``); NaN without data. ``None`` when the model has no
        stage outputs or did not run here. :meth:`stage` names the most probable class.

    Results compare equal when every attribute but ``features`` does, NaN equal to NaN.
    """

    start: float
    end: float
    p_sleep: float
    p_model: float
    state: State
    events: tuple[str, ...] = ()
    vetoed: str | None = None
    late_samples: dict[str, int] = field(default_factory=dict)
    hr_samples: int = 0
    motion_seconds: float = 0.0
    timezone: str = "UTC"
    features: NDArray[np.float32] | None = field(default=None, repr=False)
    p_from_device: bool = False
    p_stages: dict[str, tuple[float, ...]] | None = None

    @property
    def asleep(self) -> bool:
        """Whether the state is ``"asleep"``."""
        return self.state == "asleep"

    def stage(self, task: str = "wake_light_deep_rem") -> str | None:
        """The most probable class of ``task`` (``"wake"``, ``"light"``, ``"deep"``, ``"rem"``
        or ``"nrem"``); ``None`` without stage probabilities or data.

        Examples
        --------
        >>> r = EpochResult(0.0, 30.0, 0.9, 0.9, "asleep",
        ...                 p_stages={"wake_nrem_rem": (0.1, 0.3, 0.6)})
        >>> r.stage("wake_nrem_rem")
        'rem'
        """
        if self.p_stages is None or task not in self.p_stages:
            return None
        p = np.asarray(self.p_stages[task], dtype=np.float64)
        if not np.isfinite(p).all():
            return None
        return STAGE_CLASSES[task][int(np.argmax(p))]

    @property
    def has_data(self) -> bool:
        """Whether the epoch saw any heart rate or motion, or was given its p(sleep)."""
        return self.hr_samples > 0 or self.motion_seconds > 0 or self.p_from_device

    @property
    def is_gap(self) -> bool:
        """Whether this result stands for a gap longer than one epoch (see the module doc)."""
        return self.end - self.start > EPOCH_SECONDS

    @property
    def start_utc(self) -> datetime:
        """:attr:`start` as an aware UTC datetime (for Unix times)."""
        return datetime.fromtimestamp(self.start, UTC)

    @property
    def end_utc(self) -> datetime:
        """:attr:`end` as an aware UTC datetime (for Unix times)."""
        return datetime.fromtimestamp(self.end, UTC)

    @property
    def start_local(self) -> datetime:
        """:attr:`start` as an aware datetime in :attr:`timezone`."""
        return datetime.fromtimestamp(self.start, ZoneInfo(self.timezone))

    @property
    def end_local(self) -> datetime:
        """:attr:`end` as an aware datetime in :attr:`timezone`."""
        return datetime.fromtimestamp(self.end, ZoneInfo(self.timezone))

    def _compared(self) -> tuple[object, ...]:
        values = (self.start, self.end, self.p_sleep, self.p_model, self.state, self.events)
        rest = (self.vetoed, self.late_samples, self.hr_samples, self.motion_seconds)
        stages = (
            None
            if self.p_stages is None
            else {
                task: tuple(None if math.isnan(v) else v for v in p)
                for task, p in self.p_stages.items()
            }
        )
        return tuple(
            None if isinstance(v, float) and math.isnan(v) else v
            for v in (*values, *rest, self.timezone, self.p_from_device, stages)
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EpochResult):
            return NotImplemented
        return self._compared() == other._compared()

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class _Epoch:
    """An epoch whose inputs are taken, waiting for its step (or, ``inputs`` ``None``, an
    epoch of a device that sends p(sleep), which never goes through the model)."""

    start: float
    inputs: dict[str, NDArray[np.float32]] | None
    hr_samples: int
    motion_seconds: float
    p_given: float | None = None


@dataclass(order=True)
class _Event:
    time: float
    order: int
    stream: Stream = field(compare=False)
    value: object = field(compare=False)


class SleepDetector:
    """Streaming sleep/wake detection; see the module docstring for the timing and gap rules.

    Parameters
    ----------
    model
        A :class:`~sleepstream.live.backends.PipelineModel` (the model file in ONNX Runtime,
        or a network in torch); ``None`` loads the shipped model file.
    threshold
        p(sleep) at or above which an epoch counts as sleep for the tracker: a number, or a
        threshold name of the shipped model's card (``"wasa93"``, ``"wasa95"``, ``"operating"``).
    fall_asleep_epochs, wake_up_epochs
        Hysteresis of the "fell asleep" / "woke up" events.
    veto
        The motion-context rule (:class:`~sleepstream.live.context.ContextVeto`).
    origin
        Anchor of the 30 s epoch grid (and of the 15 s count windows), in seconds.
    close_lag
        Seconds the newest sample of any stream must pass an epoch's end before the epoch
        closes without a stream that has fallen behind (``math.inf``: wait for every stream).
    check_units
        Check that ``(n, 3)`` acceleration looks like raw accelerometer data in g.
    time_unit
        Unit of every time given: ``"s"``, ``"ms"`` or ``"us"``; results are in seconds.
    timezone
        IANA time zone of the results' local times (``"Europe/Berlin"``).
    expect
        The streams every epoch waits for (``"heart_rate"``, ``"acceleration"``,
        ``"counts"``); ``None`` waits for heart rate and motion (acceleration or counts). A
        device with one stream names it (``("heart_rate",)``), else each epoch waits
        ``close_lag`` for the other. Naming the streams also lets whole streams be fed one
        after the other (with ``close_lag=math.inf``, then :meth:`flush`).
    reset_after
        Seconds without any data after which the stream starts afresh.

    Examples
    --------
    >>> detector = SleepDetector(timezone="Europe/Berlin", expect=("heart_rate",))
    >>> t0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC
    >>> results = detector.add_heart_rate(t0 + np.arange(0, 120, 5.0), np.full(24, 55.0))
    >>> [(r.start_local.strftime("%H:%M:%S"), r.hr_samples, r.motion_seconds) for r in results]
    [('01:00:00', 6, 0.0), ('01:00:30', 6, 0.0), ('01:01:00', 6, 0.0)]
    >>> detector.flush(t0 + 120)[0].hr_samples
    6
    """

    def __init__(
        self,
        model: PipelineModel | None = None,
        threshold: float | str = "wasa93",
        fall_asleep_epochs: int = 3,
        wake_up_epochs: int = 2,
        veto: ContextVeto | None = None,
        origin: float = 0.0,
        close_lag: float = CLOSE_LAG_SECONDS,
        check_units: bool = True,
        time_unit: str = "s",
        timezone: str = "UTC",
        expect: Sequence[str] | None = None,
        reset_after: float = RESET_AFTER_SECONDS,
    ):
        if model is None:
            from sleepstream.live.backends import OnnxPipeline

            model = OnnxPipeline.shipped()
        self.model = model
        self._stage_tasks = stage_tasks(model)
        self.threshold = _resolve_threshold(model, threshold)
        self.fall_asleep_epochs = fall_asleep_epochs
        self.wake_up_epochs = wake_up_epochs
        self.veto = veto if veto is not None else ContextVeto()
        if not math.isfinite(origin):
            raise ValueError(f"origin must be a finite number of seconds, got {origin!r}")
        self.origin = float(origin)
        if math.isnan(close_lag) or close_lag < 0:
            raise ValueError(
                f"close_lag must be 0 or more seconds (or math.inf), got {close_lag!r}"
            )
        self.close_lag = float(close_lag)
        self.check_units = check_units
        if time_unit not in TIME_UNITS:
            raise ValueError(f"time_unit must be one of {sorted(TIME_UNITS)}, got {time_unit!r}")
        self.time_unit = time_unit
        self.timezone = time_zone(timezone).key
        if expect is not None:
            unknown = sorted(set(expect) - set(DATA_STREAMS))
            if unknown or not expect:
                raise ValueError(
                    f"expect names streams of {list(DATA_STREAMS)}, got {list(expect)!r}"
                )
        self.expect: tuple[Stream, ...] | None = (
            None if expect is None else tuple(s for s in DATA_STREAMS if s in expect)
        )
        if not (math.isfinite(reset_after) and reset_after >= EPOCH_SECONDS):
            raise ValueError(
                f"reset_after must be a finite number of seconds >= {EPOCH_SECONDS:g}, "
                f"got {reset_after!r}"
            )
        self.reset_after = float(reset_after)
        self.hold = False
        """While true, samples are taken but no epoch closes (:func:`close_together` does)."""
        self._reset()

    def _reset(self) -> None:
        self._accel_t = np.zeros(0)
        self._accel_z = np.zeros(0)
        self._accel_last: float | None = None
        self._intervals = np.zeros(0)
        self._pending_t = np.zeros(0)
        self._pending_xyz = np.zeros((0, 3))
        self._tracker = OnsetTracker(self.fall_asleep_epochs, self.wake_up_epochs)
        self._state = self.model.initial_state()
        self._queue: list[_Event] = []
        self._p_queue: deque[tuple[float, float]] = deque()
        self._context_queue: list[_Event] = []
        self._order = 0
        self._clock = -math.inf
        self._newest: dict[Stream, float] = {}
        self._next_start: float | None = None
        self._closed_until = -math.inf
        self._empty_run = 0
        self._known = False
        self._context: list[MotionContext] = []
        self._units_checked = not self.check_units
        self._rate_warned = False
        self.late_samples: dict[str, int] = {}
        self._late_since_result: dict[str, int] = {}

    # -- input ---------------------------------------------------------------------------------
    def add_heart_rate(self, times: ArrayLike, bpm: ArrayLike) -> list[EpochResult]:
        """Heart-rate samples: times and beats per minute (25-250, else ``ValueError``)."""
        if np.size(times) == 0 and np.size(bpm) == 0:
            return []
        self._check_one_kind("heart_rate")
        t, v = self._pair(times, bpm, "heart rate")
        bad = (v < MIN_BPM) | (v > MAX_BPM)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"heart rate {v[i]:g} bpm at t={t[i]:.3f} s is outside {MIN_BPM:g}-{MAX_BPM:g}"
            )
        return self._ingest("heart_rate", t, v.tolist())

    def add_counts(self, times: ArrayLike, counts: ArrayLike) -> list[EpochResult]:
        """Ready-made activity counts (e.g. from an ActiGraph or a published dataset).

        Each count summarises the 15 s window starting at its time; an epoch takes the counts
        whose windows start inside it (two, on the grid of ``origin``). Counts stand in for
        raw acceleration: feed one or the other.
        """
        if np.size(times) == 0 and np.size(counts) == 0:
            return []
        self._check_one_kind("counts")
        t, v = self._pair(times, counts, "activity count")
        if (v < 0).any():
            i = int(np.argmax(v < 0))
            raise ValueError(f"activity count {v[i]:g} at t={t[i]:.3f} s is negative")
        return self._ingest("counts", t, v.tolist())

    def add_context(self, context: MotionContext | Sequence[MotionContext]) -> list[EpochResult]:
        """Motion-activity context (as iOS CMMotionActivity reports it).

        A report holds until the next one and vetoes sleep in the epochs it covers (``veto``).
        It is not data: it neither closes epochs nor makes an epoch known. Reports for closed
        epochs are late.
        """
        items = [context] if isinstance(context, MotionContext) else list(context)
        if not items:
            return []
        t = self._times([c.time for c in items], "context")
        items = [replace(c, time=float(s)) for c, s in zip(items, t.tolist(), strict=True)]
        late = t < self._closed_until
        self._count_late("context", int(late.sum()))
        for c, is_late in zip(items, late.tolist(), strict=True):
            if not is_late:
                heapq.heappush(self._context_queue, _Event(c.time, self._order, "context", c))
                self._order += 1
        return []

    def add_acceleration(self, times: ArrayLike, xyz: ArrayLike) -> list[EpochResult]:
        """Raw accelerometer samples: times and ``(n, 3)`` x, y, z in g (or ``(n,)`` z).

        Any rate from 10 Hz to 1 kHz (see the module docstring); times strictly increasing
        within a chunk. Samples not after the newest one already given are late.
        """
        a = np.asarray(xyz, dtype=np.float64)
        if not (a.ndim == 2 and a.shape[1] == 3) and a.ndim != 1:
            raise ValueError(f"acceleration must have shape (n, 3) or (n,), got {a.shape}")
        if np.size(times) == 0 and len(a) == 0:
            return []
        self._check_one_kind("acceleration")
        t = self._times(times, "acceleration")
        if len(t) != len(a):
            raise ValueError(f"acceleration: {len(t)} times but {len(a)} samples")
        if not np.isfinite(a).all():
            i = int(np.argmax(~np.isfinite(a.reshape(len(a), -1)).all(axis=1)))
            raise ValueError(f"acceleration: non-finite value at index {i} (t={t[i]:.3f} s)")
        if len(a) and np.abs(a).max() > MAX_ACCELERATION:
            i = int(np.argmax(np.abs(a.reshape(len(a), -1)).max(axis=1)))
            raise ValueError(
                f"acceleration: value {np.abs(a[i]).max():.3g} at index {i} (t={t[i]:.3f} s) is "
                f"beyond {MAX_ACCELERATION:g}, in g or m/s^2 alike"
            )
        _check_increasing("acceleration", t, t, "be strictly increasing")
        self._check_new_stream("acceleration", t)
        newest = self._pending_t[-1] if len(self._pending_t) else self._accel_last
        late = 0 if newest is None else int(np.searchsorted(t, newest, side="right"))
        late = max(late, int(np.searchsorted(t, self._closed_until)))
        t, a = t[late:], a[late:]
        intervals = np.diff(np.concatenate(([newest], t)) if newest is not None else t)
        intervals = np.concatenate((self._intervals, intervals))[-RATE_INTERVALS:]
        _check_rate(intervals)
        if len(intervals) >= 8 and not self._rate_warned:
            rate = 1.0 / float(np.median(intervals))
            if rate < FULL_BAND_HZ:
                log.warning(
                    "acceleration at about %.3g Hz: the counts use 3-11 Hz, which needs %g Hz; "
                    "they will be lower than at 50 Hz",
                    rate,
                    FULL_BAND_HZ,
                )
            self._rate_warned = True
        pending = a.ndim == 2 and not self._units_checked
        if pending:
            held_t = np.concatenate((self._pending_t, t))
            held = np.concatenate((self._pending_xyz, a))
            if len(held) < UNIT_CHECK_SAMPLES:
                self._pending_t, self._pending_xyz, self._intervals = held_t, held, intervals
                self._count_late("acceleration", late)
                self._seen_stream("acceleration")
                return []
            try:
                check_acceleration_units(held)
            except ValueError as error:
                self._pending_t, self._pending_xyz = np.zeros(0), np.zeros((0, 3))
                raise ValueError(
                    f"{error} (the {len(held)} samples from t={held_t[0]:.3f} to "
                    f"{held_t[-1]:.3f} s were not used)"
                ) from None
            self._units_checked = True
            self._pending_t, self._pending_xyz = np.zeros(0), np.zeros((0, 3))
            t, a = held_t, held
        self._intervals = intervals
        self._count_late("acceleration", late)
        if len(t) == 0:
            return []
        z = a[:, 2] if a.ndim == 2 else a
        self._accel_t = np.concatenate([self._accel_t, t])
        self._accel_z = np.concatenate([self._accel_z, z])
        self._accel_last = float(t[-1])
        self._seen_stream("acceleration", float(t[-1]))
        return self._advance(float(t[-1]))

    def add_p_sleep(self, times: ArrayLike, p: ArrayLike) -> list[EpochResult]:
        """Per-epoch p(sleep) from a device that runs the model file itself, instead of samples.

        Each time is the start of a 30 s epoch on the detector's grid (``origin + 30 k``, in
        ``time_unit``, within :data:`GRID_TOLERANCE_SECONDS`), later than every epoch given or
        closed before; each ``p`` is the model's probability of sleep for that epoch, in
        [0, 1]. The value becomes the epoch's ``p_model`` without going through the model here;
        the context veto (:meth:`add_context`, sent before the epochs it covers), the threshold,
        the tracker and the gap rules apply as after the model. An epoch closes at once (under
        :attr:`hold`, in :func:`close_together`); epochs left out between two values close as
        epochs without data (``"unknown"``), and from ``reset_after`` on the stream starts
        afresh. A device without data for an epoch leaves it out: NaN is refused. The results
        have ``hr_samples`` and ``motion_seconds`` 0 and :attr:`EpochResult.p_from_device` set.
        ``expect`` does not apply.

        Raises ``ValueError`` naming the index and the value, with nothing taken, for a time
        off the grid, times that do not increase, an epoch already given or closed, a ``p``
        that is not a finite number in [0, 1], and for a detector that has taken samples (a
        device sends either its samples or its p(sleep)).

        Examples
        --------
        >>> detector = SleepDetector(threshold=0.5, fall_asleep_epochs=2)
        >>> t0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC
        >>> starts = t0 + 30.0 * np.array([0, 1, 2, 4])  # the epoch at 00:01:30 is left out
        >>> for r in detector.add_p_sleep(starts, [0.2, 0.9, 0.95, 0.97]):
        ...     print(r.start_local.strftime("%H:%M:%S"), r.p_model, r.state, r.events)
        00:00:00 0.2 awake ()
        00:00:30 0.9 awake ()
        00:01:00 0.95 asleep ('fell_asleep',)
        00:01:30 nan unknown ('unknown',)
        00:02:00 0.97 asleep ()
        """
        if np.size(times) == 0 and np.size(p) == 0:
            return []
        self._check_one_kind(P_SLEEP)
        t = self._times(times, P_SLEEP)
        v = np.atleast_1d(np.asarray(p, dtype=np.float64))
        if t.shape != v.shape:
            raise ValueError(
                f"p_sleep: times {t.shape} and values {v.shape} must be equal 1-D shapes"
            )
        bad = ~(np.isfinite(v) & (v >= 0) & (v <= 1))
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"p_sleep: p {v[i]:g} at index {i} (t={t[i]:.3f} s) is not a number in [0, 1]"
            )
        starts = self._epoch_starts(t)
        self._p_queue.extend(zip(starts.tolist(), v.tolist(), strict=True))
        self._seen_stream(P_SLEEP, float(starts[-1]))
        return self._advance(float(starts[-1]) + EPOCH_SECONDS)

    def add(
        self,
        *,
        heart_rate: tuple[ArrayLike, ArrayLike] | None = None,
        acceleration: tuple[ArrayLike, ArrayLike] | None = None,
        counts: tuple[ArrayLike, ArrayLike] | None = None,
        context: Sequence[MotionContext] = (),
        p_sleep: tuple[ArrayLike, ArrayLike] | None = None,
    ) -> list[EpochResult]:
        """Samples of several streams at once (a device's batch), each a ``(times, values)``.

        The streams are fed together in time order, in slices of :data:`SLICE_SECONDS`, as the
        watch would have sent them, so a batch spanning minutes gives the results of its samples
        fed as they came (fed stream after stream, the first would close epochs without the
        others). A device that runs the model itself sends ``p_sleep`` instead
        (:meth:`add_p_sleep`), after the batch's ``context``; a batch with both samples and
        ``p_sleep`` is refused. All or nothing: on ``ValueError`` the detector is left as it was.

        Examples
        --------
        >>> detector = SleepDetector()
        >>> t = np.arange(0.0, 120.0, 0.02)
        >>> xyz = np.column_stack([np.zeros_like(t), np.full_like(t, 0.6), np.full_like(t, -0.8)])
        >>> hr = (np.arange(0.0, 120.0, 5.0), np.full(24, 58.0))
        >>> [r.start for r in detector.add(heart_rate=hr, acceleration=(t, xyz))]
        [0.0, 30.0, 60.0]
        """
        sent = [
            name
            for name, pair in (
                ("heart_rate", heart_rate),
                ("acceleration", acceleration),
                ("counts", counts),
            )
            if pair is not None and np.size(pair[0])
        ]
        if sent and p_sleep is not None and np.size(p_sleep[0]):
            raise ValueError(
                f"a batch holds samples or p_sleep, not both: this one holds p_sleep and "
                f"{', '.join(sent)}"
            )
        before = self._checkpoint()
        try:
            results = self.add_context(list(context))
            if p_sleep is not None:
                results += self.add_p_sleep(*p_sleep)
            streams = [
                (add, np.asarray(pair[0], dtype=np.float64), pair)
                for add, pair in (
                    (self.add_heart_rate, heart_rate),
                    (self.add_acceleration, acceleration),
                    (self.add_counts, counts),
                )
                if pair is not None and np.size(pair[0])
            ]
            for add, times, (_, values) in streams:
                if not (np.isfinite(times).all() and (np.diff(times) >= 0).all()):
                    add(times, values)  # raises, naming the stream, the index and the time
            if streams:
                slots = np.unique(
                    np.floor(np.concatenate([t for _, t, _ in streams]) / SLICE_SECONDS)
                )
                for lo, hi in itertools.pairwise(
                    [-math.inf, *(slots[1:] * SLICE_SECONDS), math.inf]
                ):
                    for add, times, (_, values) in streams:
                        i, j = np.searchsorted(times, [lo, hi])
                        if j > i:
                            results += add(times[i:j], np.asarray(values)[i:j])
        except ValueError:
            self.__dict__.clear()
            self.__dict__.update(before)
            raise
        return results

    def _checkpoint(self) -> dict[str, Any]:
        """A copy of everything a call may change, to go back to (the model is shared, not
        copied); a tenth of the time of a :meth:`snapshot`."""
        return copy.deepcopy(self.__dict__, {id(self.model): self.model})

    def advance(self, now: float) -> list[EpochResult]:
        """Move the clock to ``now`` (a timer while no samples arrive, in the detector's unit).

        Epochs close that every awaited stream covers, or that ended ``close_lag`` before
        ``now``; ``advance(math.inf)`` closes everything (the epochs without data up to
        ``reset_after``, then nothing more).
        """
        now = float(now) / PER_SECOND[self.time_unit]
        if math.isnan(now):
            raise ValueError("advance: now is NaN")
        return self._advance(now)

    def flush(self, until: float | None = None) -> list[EpochResult]:
        """Close every epoch that ends by ``until`` as if every stream had reached it.

        ``until`` defaults to the newest sample of any stream. Use it when the streams end (a
        recording fed to the end) or after feeding whole streams one after the other; samples
        for the closed epochs that arrive later are late.
        """
        if until is None:
            covered = [self._covered(s, raw=True) for s in self._newest]
            limit = max(covered, default=-math.inf)
        else:
            limit = float(until) / PER_SECOND[self.time_unit]
            if math.isnan(limit):
                raise ValueError("flush: until is NaN")
        return self._advance(None, lambda end: end <= limit)

    # -- checks --------------------------------------------------------------------------------
    def _times(self, times: ArrayLike, what: str) -> NDArray[np.float64]:
        raw = np.atleast_1d(np.asarray(times))
        if raw.dtype.kind not in "fiub" or raw.ndim != 1:
            raise ValueError(
                f"{what}: times must be a 1-D array of numbers (seconds), got "
                f"{raw.dtype} of shape {raw.shape}; convert datetimes to Unix seconds"
            )
        t = raw.astype(np.float64) / PER_SECOND[self.time_unit]
        if not np.isfinite(t).all():
            i = int(np.argmax(~np.isfinite(t)))
            raise ValueError(f"{what}: non-finite time at index {i} ({raw[i]!r})")
        beyond = (t >= MAX_SECONDS) | (t < MIN_SECONDS)
        if beyond.any():
            raise ValueError(_unit_message(what, raw.astype(np.float64), self.time_unit))
        return t

    def _pair(
        self, times: ArrayLike, values: ArrayLike, what: str
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        t = self._times(times, what)
        v = np.atleast_1d(np.asarray(values, dtype=np.float64))
        if t.shape != v.shape:
            raise ValueError(
                f"{what}: times {t.shape} and values {v.shape} must be equal 1-D shapes"
            )
        if not np.isfinite(v).all():
            i = int(np.argmax(~np.isfinite(v)))
            raise ValueError(f"{what}: non-finite value at index {i} (t={t[i]:.3f} s)")
        if len(t) > 1 and (np.diff(t) < 0).any():
            i = int(np.argmax(np.diff(t) < 0)) + 1
            raise ValueError(
                f"{what}: time goes backwards at index {i} ({t[i - 1]:.3f} -> {t[i]:.3f} s)"
            )
        return t, v

    def _check_one_kind(self, stream: Stream) -> None:
        """Refuse samples after p(sleep) and p(sleep) after samples: a device sends one kind."""
        if stream == P_SLEEP:
            taken = [s.replace("_", " ") for s in DATA_STREAMS if s in self._newest]
            if taken:
                raise ValueError(
                    f"p_sleep: this detector has taken samples ({', '.join(taken)}); a device "
                    "sends either its samples or its p(sleep), not both"
                )
        elif P_SLEEP in self._newest:
            raise ValueError(
                f"{stream.replace('_', ' ')}: this detector has taken p(sleep) values; a device "
                "sends either its samples or its p(sleep), not both"
            )

    def _epoch_starts(self, times: NDArray[np.float64]) -> NDArray[np.float64]:
        """The epoch starts that ``times`` of p(sleep) name; ``ValueError`` for times off the
        grid, not increasing, or at epochs already given or closed."""
        k = np.round((times - self.origin) / EPOCH_SECONDS)
        starts = self.origin + k * EPOCH_SECONDS
        off = np.abs(times - starts) > GRID_TOLERANCE_SECONDS
        if off.any():
            i = int(np.argmax(off))
            raise ValueError(
                f"p_sleep: time {times[i]:.3f} s at index {i} is not the start of a 30 s epoch "
                f"(origin + 30 k with origin={self.origin:g}; the nearest is {starts[i]:.3f} s)"
            )
        _check_increasing("p_sleep", starts, times, "increase, epoch by epoch")
        # Starts are 30 s apart: half an epoch separates "the same" from "the next".
        half = EPOCH_SECONDS / 2
        if starts[0] < self._closed_until - half:
            raise ValueError(
                f"p_sleep: the epoch at t={times[0]:.3f} s (index 0) has already closed (the "
                f"epochs up to {self._closed_until:.3f} s have)"
            )
        given = self._newest.get(P_SLEEP, -math.inf)
        if starts[0] < given + half:
            raise ValueError(
                f"p_sleep: the epoch at t={times[0]:.3f} s (index 0) is not after the newest "
                f"epoch already given ({given:.3f} s)"
            )
        return starts

    def _check_new_stream(self, stream: Stream, times: NDArray[np.float64]) -> None:
        """Refuse a stream that starts long after epochs covering it have closed."""
        if stream in self._newest or not len(times) or self._closed_until == -math.inf:
            return
        bound = max(self.close_lag, EPOCH_SECONDS)
        if times[0] < self._closed_until - bound:
            seen = ", ".join(s.replace("_", " ") for s in self._newest)
            streams = tuple(dict.fromkeys([*self._newest, stream]))
            raise ValueError(
                f"{stream.replace('_', ' ')} starts at t={times[0]:.3f} s, but the epochs up to "
                f"{self._closed_until:.3f} s have closed on {seen} alone: feed the streams "
                f"together in time order (within close_lag={self.close_lag:g} s of each "
                f"other), or name them all first: SleepDetector(expect={streams!r}, "
                "close_lag=math.inf), and flush() at the end"
            )

    # -- core ----------------------------------------------------------------------------------
    def _count_late(self, stream: str, n: int) -> None:
        if n:
            self.late_samples[stream] = self.late_samples.get(stream, 0) + n
            self._late_since_result[stream] = self._late_since_result.get(stream, 0) + n
            log.debug("%d late %s samples", n, stream)

    def _seen_stream(self, stream: Stream, newest: float = -math.inf) -> None:
        self._newest[stream] = max(self._newest.get(stream, -math.inf), newest)

    def _ingest(
        self, stream: Stream, times: NDArray[np.float64], values: Sequence[object]
    ) -> list[EpochResult]:
        self._check_new_stream(stream, times)
        late = times < self._closed_until
        self._count_late(stream, int(late.sum()))
        for t, value, is_late in zip(times.tolist(), values, late.tolist(), strict=True):
            if not is_late:
                heapq.heappush(self._queue, _Event(t, self._order, stream, value))
                self._order += 1
        self._seen_stream(stream, float(times.max()))
        return self._advance(float(times.max()))

    def _latest_rate(self) -> float | None:
        """The acceleration rate of the latest samples (median of the last intervals)."""
        return 1.0 / float(np.median(self._intervals)) if len(self._intervals) else None

    def _accel_delay(self) -> float:
        rate = self._latest_rate()
        return COUNTS_DELAY_SECONDS + (0.0 if is_grid_rate(rate) else RESAMPLE_PAD_SECONDS)

    def _window_rate(self, times: NDArray[np.float64]) -> float | None:
        """The rate of an epoch's samples; that of the latest samples when they are too few
        (or a gap makes their median interval meaningless)."""
        rate = sample_rate(times)
        if rate is not None and rate >= MIN_RATE_HZ * (1 - RATE_TOLERANCE):
            return rate
        return self._latest_rate()

    def _covered(self, stream: Stream, raw: bool = False) -> float:
        """The time up to which ``stream`` has delivered everything (``raw``: newest sample)."""
        newest = self._newest.get(stream, -math.inf)
        if stream == "counts":
            return newest + COUNT_SECONDS
        if stream == P_SLEEP:
            return newest + EPOCH_SECONDS
        if stream == "acceleration":
            if self._accel_last is None:
                return -math.inf
            return self._accel_last - (0.0 if raw else self._accel_delay())
        return newest

    def _due(self, end: float) -> bool:
        delay = self._accel_delay() if "acceleration" in self._newest else 0.0
        if self._clock >= end + delay + self.close_lag:
            return True
        if P_SLEEP in self._newest:  # ends are on the grid: the margin absorbs rounding
            return end < self._covered(P_SLEEP) + EPOCH_SECONDS / 2
        if self.expect is not None:
            return all(self._covered(s) >= end for s in self.expect)
        motion = max(self._covered("acceleration"), self._covered("counts"))
        return self._covered("heart_rate") >= end and motion >= end

    def _advance(
        self, now: float | None, due: Callable[[float], bool] | None = None
    ) -> list[EpochResult]:
        if now is not None:
            self._clock = max(self._clock, now)
        if self.hold and due is None:
            return []
        results: list[EpochResult] = []
        while (step := self._next_epoch(due)) is not None:
            epoch, gap = step
            results += [*gap, self._step(epoch)]
        return results

    def _step(self, epoch: _Epoch) -> EpochResult:
        """The result of ``epoch``: through the model, unless it has no inputs (p(sleep))."""
        if epoch.inputs is None:
            return self._finish(epoch, math.nan if epoch.p_given is None else epoch.p_given)
        if not self._stage_tasks:
            p, self._state, features = self.model.run(epoch.inputs, self._state)
            return self._finish(epoch, float(p[0]), features[0])
        out = self.model.run_all(epoch.inputs, self._state)  # type: ignore[attr-defined]
        self._state = out["new_state"]
        stages = {task: out[name][0] for name, task in self._stage_tasks.items()}
        return self._finish(epoch, float(out["p_sleep"][0]), out["features"][0], stages)

    def _next_epoch(
        self, due: Callable[[float], bool] | None = None
    ) -> tuple[_Epoch, list[EpochResult]] | None:
        """The next epoch if it is due, its inputs taken (and a gap result before it)."""
        start = self._next_start if self._next_start is not None else self._anchor()
        if start is None or not (due or self._due)(start + EPOCH_SECONDS):
            return None
        gap = []
        if self._next_start is None and -math.inf < self._closed_until < start:
            gap.append(self._gap(self._closed_until, start))
        end = start + EPOCH_SECONDS
        if P_SLEEP in self._newest:
            epoch = self._given_epoch(start, end)
        else:
            epoch = _Epoch(start, *self._inputs(start, end))
        self._closed_until = self._next_start = end
        return epoch, gap

    def _given_epoch(self, start: float, end: float) -> _Epoch:
        """The epoch ``[start, end)`` of a device that sends p(sleep), with its value if sent."""
        p = None
        if self._p_queue and self._p_queue[0][0] < start + EPOCH_SECONDS / 2:
            p = self._p_queue.popleft()[1]
        self._take_context(end)
        return _Epoch(start, None, 0, 0.0, p)

    def _anchor(self) -> float | None:
        """Start of the epoch of the earliest data not yet used (after the start or a gap)."""
        if self._p_queue:
            return self._p_queue[0][0]
        times = [self._queue[0].time] if self._queue else []
        at = int(np.searchsorted(self._accel_t, self._closed_until))
        if at < len(self._accel_t):
            times.append(float(self._accel_t[at]))
        if not times:
            return None
        k = math.floor((min(times) - self.origin) / EPOCH_SECONDS)
        return self.origin + k * EPOCH_SECONDS

    def _inputs(
        self, start: float, end: float
    ) -> tuple[dict[str, NDArray[np.float32]], int, float]:
        """The model file's inputs for ``[start, end)`` (popping its samples), the number of
        heart-rate samples and the seconds of motion in it."""
        hr_t, hr_v, count_t, count_v = [], [], [], []
        while self._queue and self._queue[0].time < end:
            event = heapq.heappop(self._queue)
            if event.stream == "heart_rate":
                hr_t.append(event.time - start)
                hr_v.append(float(event.value))  # type: ignore[arg-type]
            else:
                count_t.append(event.time - start)
                count_v.append(float(event.value))  # type: ignore[arg-type]
        self._take_context(end)
        hr, hr_offset = pack_heart_rate(np.array(hr_t), np.array(hr_v))
        counts = pack_counts(np.array(count_t), np.array(count_v))
        accel = np.full(ACCEL_SAMPLES, np.nan)
        if len(self._accel_t):
            first = start + COUNTS_DELAY_SECONDS
            reach = RESAMPLE_PAD_SECONDS + 1.0
            lo = max(0, int(np.searchsorted(self._accel_t, first - reach)) - 1)
            hi = int(np.searchsorted(self._accel_t, first + EPOCH_SECONDS + reach)) + 1
            window_t = self._accel_t[lo:hi]
            accel = resample_to_grid(
                window_t, self._accel_z[lo:hi], first, ACCEL_SAMPLES, self._window_rate(window_t)
            )
            # Keep what the next epoch's grid may still need.
            keep = max(0, int(np.searchsorted(self._accel_t, first + EPOCH_SECONDS - reach)) - 1)
            self._accel_t, self._accel_z = self._accel_t[keep:], self._accel_z[keep:]
        motion = np.count_nonzero(np.isfinite(accel)) / SAMPLE_RATE + COUNT_SECONDS * len(count_v)
        rows = {"accel": accel, "counts": counts, "hr": hr, "hr_offset": hr_offset}
        inputs = {k: v.astype(np.float32)[None] for k, v in rows.items()}
        return inputs, len(hr_v), min(float(motion), EPOCH_SECONDS)

    def _take_context(self, end: float) -> None:
        """Move the context reports that start before ``end`` to those in force."""
        while self._context_queue and self._context_queue[0].time < end:
            self._context.append(heapq.heappop(self._context_queue).value)  # type: ignore[arg-type]

    def _finish(
        self,
        epoch: _Epoch,
        p: float,
        features: NDArray[np.float32] | None = None,
        stages: dict[str, NDArray[np.float32]] | None = None,
    ) -> EpochResult:
        """The result of an epoch whose step gave ``p`` and ``stages`` (or that came with
        ``p``); the context rule and the tracker."""
        p_stages = (
            None
            if stages is None
            else {task: tuple(float(v) for v in values) for task, values in stages.items()}
        )
        start, end = epoch.start, epoch.start + EPOCH_SECONDS
        hr_samples, motion_seconds = epoch.hr_samples, epoch.motion_seconds
        given = epoch.p_given is not None
        late, self._late_since_result = self._late_since_result, {}
        reason = self.veto.reason(self._context, start, end)
        self._context = self.veto.keep(self._context, end)
        events: tuple[str, ...] = ()
        if not given and hr_samples == 0 and motion_seconds == 0:
            p_sleep = p_model = math.nan
            if p_stages is not None:
                p_stages = {task: (math.nan,) * len(v) for task, v in p_stages.items()}
            status: State = "unknown"
            events, reason = ("unknown",) if self._known else (), None
            self._known = False
            self._empty_run += 1
            if self._empty_run * EPOCH_SECONDS >= self.reset_after:
                self._start_afresh()
        else:
            self._known, self._empty_run = True, 0
            p_model = p
            p_sleep = 0.0 if reason else p_model
            event = self._tracker.update(p_sleep >= self.threshold)
            events = (event,) if event else ()
            status = "asleep" if self._tracker.asleep else "awake"
        return EpochResult(
            start,
            end,
            p_sleep,
            p_model,
            status,
            events,
            reason,
            late,
            hr_samples,
            motion_seconds,
            self.timezone,
            features,
            given,
            p_stages,
        )

    def _gap(self, start: float, end: float) -> EpochResult:
        """The one result for the rest of a gap after the stream started afresh."""
        late, self._late_since_result = self._late_since_result, {}
        return EpochResult(
            start, end, math.nan, math.nan, "unknown", late_samples=late, timezone=self.timezone
        )

    def _start_afresh(self) -> None:
        """After ``reset_after`` without data: initial model state and tracker, grid reopened."""
        log.info(
            "no data for %g s up to t=%.3f: starting afresh", self.reset_after, self._closed_until
        )
        self._state = self.model.initial_state()
        self._tracker = self._tracker.clone()
        self._next_start = None
        self._empty_run = 0
        self._context = []

    # -- persistence ---------------------------------------------------------------------------
    def _settings(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "fall_asleep_epochs": self.fall_asleep_epochs,
            "wake_up_epochs": self.wake_up_epochs,
            "veto": {
                "activities": list(self.veto.activities),
                "min_confidence": self.veto.min_confidence,
            },
            "origin": self.origin,
            "close_lag": finite_or_none(self.close_lag),
            "check_units": self.check_units,
            "time_unit": self.time_unit,
            "timezone": self.timezone,
            "expect": None if self.expect is None else list(self.expect),
            "reset_after": self.reset_after,
        }

    def snapshot(self) -> bytes:
        """Everything needed to continue this stream later, as portable data (no weights).

        The bytes are named arrays with a versioned JSON header (:mod:`sleepstream.live.state`),
        never a pickle: restoring them cannot run code.
        """
        queue, contexts = sorted(self._queue), sorted(self._context_queue)
        header = {
            "model_id": model_id(self.model),
            "settings": self._settings(),
            "clock": finite_or_none(self._clock),
            "next_start": self._next_start,
            "closed_until": finite_or_none(self._closed_until),
            "order": self._order,
            "units_checked": self._units_checked,
            "late_samples": self.late_samples,
            "late_since_result": self._late_since_result,
            "tracker": self._tracker.get_state(),
            "accel_last": self._accel_last,
            "newest": {k: finite_or_none(v) for k, v in self._newest.items()},
            "empty_run": self._empty_run,
            "known": self._known,
        }
        arrays: dict[str, NDArray[Any]] = {
            "state": np.asarray(self._state, dtype=np.float32),
            "accel_times": self._accel_t,
            "accel_z": self._accel_z,
            "accel_intervals": self._intervals,
            "pending_times": self._pending_t,
            "pending_xyz": self._pending_xyz,
            "queue_time": np.array([e.time for e in queue], dtype=np.float64),
            "queue_order": np.array([e.order for e in queue], dtype=np.int64),
            "queue_counts": np.array([e.stream == "counts" for e in queue], dtype=np.bool_),
            "queue_value": np.array([float(e.value) for e in queue], dtype=np.float64),  # type: ignore[arg-type]
            "context": _context_array(self._context),
            "queue_context": _context_array([e.value for e in contexts]),  # type: ignore[misc]
            "queue_context_order": np.array([e.order for e in contexts], dtype=np.int64),
            # p(sleep) values not yet closed (under hold); older snapshots lack the two arrays.
            "p_times": np.array([t for t, _ in self._p_queue], dtype=np.float64),
            "p_values": np.array([v for _, v in self._p_queue], dtype=np.float64),
        }
        return state.pack(header, arrays)

    def restore(self, snapshot: bytes) -> None:
        """Continue from a :meth:`snapshot` taken with the same model and settings.

        Raises ``ValueError``, leaving the detector unchanged, when the bytes are not a snapshot
        of this format and version, were taken with another model or other settings (they are
        never silently replaced), or hold malformed or non-finite values.
        """
        header, arrays = state.unpack(snapshot)
        if header.get("model_id") != model_id(self.model):
            raise ValueError(
                f"snapshot was taken with model {header.get('model_id')!r}, this detector runs "
                f"{model_id(self.model)!r}"
            )
        theirs, mine = header.get("settings"), json.loads(json.dumps(self._settings()))
        if theirs != mine:
            differing = sorted(
                k for k in mine if not isinstance(theirs, dict) or theirs.get(k) != mine[k]
            )
            raise ValueError(
                f"snapshot was taken with other detector settings ({', '.join(differing)}); "
                "create the detector with the same settings to restore it"
            )
        fresh = self.clone()
        fresh._load(header, arrays)
        fresh.hold = self.hold
        self.__dict__.update(fresh.__dict__)

    def _load(self, header: dict[str, Any], arrays: dict[str, NDArray[Any]]) -> None:
        self._state = _checked_state(
            array(arrays, "state", np.float32, (None, None), finite=False, what=_WHAT),
            self.model,
            np.shape(self._state),
        )
        self._accel_t = _increasing(array(arrays, "accel_times", np.float64, what=_WHAT))
        self._accel_z = array(arrays, "accel_z", np.float64, (len(self._accel_t),), what=_WHAT)
        self._intervals = array(arrays, "accel_intervals", np.float64, what=_WHAT)
        if len(self._intervals) > RATE_INTERVALS or (self._intervals <= 0).any():
            raise ValueError("snapshot acceleration intervals are malformed")
        self._pending_t = _increasing(array(arrays, "pending_times", np.float64, what=_WHAT))
        self._pending_xyz = array(
            arrays, "pending_xyz", np.float64, (len(self._pending_t), 3), what=_WHAT
        )
        last = header.get("accel_last")
        self._accel_last = None if last is None else number(header, "accel_last", what=_WHAT)
        times = array(arrays, "queue_time", np.float64, what=_WHAT)
        orders = array(arrays, "queue_order", np.int64, (len(times),), what=_WHAT)
        is_counts = array(arrays, "queue_counts", np.bool_, (len(times),), what=_WHAT)
        values = array(arrays, "queue_value", np.float64, (len(times),), what=_WHAT)
        self._queue = [
            _Event(t, order, "counts" if counts else "heart_rate", value)
            for t, order, counts, value in zip(
                times.tolist(), orders.tolist(), is_counts.tolist(), values.tolist(), strict=True
            )
        ]
        heapq.heapify(self._queue)
        self._context = _contexts(array(arrays, "context", np.float64, (None, 3), what=_WHAT))
        queued = _contexts(array(arrays, "queue_context", np.float64, (None, 3), what=_WHAT))
        context_orders = array(arrays, "queue_context_order", np.int64, (len(queued),), what=_WHAT)
        self._context_queue = [
            _Event(c.time, order, "context", c)
            for c, order in zip(queued, context_orders.tolist(), strict=True)
        ]
        heapq.heapify(self._context_queue)
        self._order = integer(header, "order", what=_WHAT)
        self._clock = time_or_never(header, "clock", what=_WHAT)
        self._next_start = (
            None if header.get("next_start") is None else number(header, "next_start", what=_WHAT)
        )
        self._closed_until = time_or_never(header, "closed_until", what=_WHAT)
        self._units_checked = bool(header.get("units_checked"))
        self.late_samples = _counts_dict(header.get("late_samples"))
        self._late_since_result = _counts_dict(header.get("late_since_result"))
        self._tracker.set_state(header.get("tracker") or {})
        newest = header.get("newest")
        streams = (*DATA_STREAMS, P_SLEEP)
        if (
            not isinstance(newest, dict)
            or not set(newest) <= set(streams)
            or (P_SLEEP in newest and len(newest) > 1)
        ):
            raise ValueError(f"snapshot stream times {newest!r:.80} are malformed")
        self._newest = {s: time_or_never(newest, s, what=_WHAT) for s in streams if s in newest}
        self._p_queue = _p_queue(arrays, P_SLEEP in newest, self._closed_until)
        self._empty_run = integer(header, "empty_run", what=_WHAT)
        if not 0 <= self._empty_run * EPOCH_SECONDS < self.reset_after:
            raise ValueError(f"snapshot empty_run {self._empty_run} is out of range")
        self._known = bool(header.get("known"))

    def clone(self) -> SleepDetector:
        """A fresh detector with the same parameters and model, no samples seen."""
        return SleepDetector(
            self.model,
            self.threshold,
            self.fall_asleep_epochs,
            self.wake_up_epochs,
            self.veto,
            self.origin,
            self.close_lag,
            self.check_units,
            self.time_unit,
            self.timezone,
            self.expect,
            self.reset_after,
        )


def _checked_state(
    values: NDArray[np.float32], model: PipelineModel, shape: tuple[int, ...]
) -> NDArray[np.float32]:
    """The snapshot's state if it fits the model: its shape, no infinities, and NaN only in
    the parts whose layout allows it (missing values); ``ValueError`` otherwise."""
    if values.shape != shape:
        raise ValueError(f"snapshot state has shape {values.shape}, this model needs {shape}")
    if np.isinf(values).any():
        raise ValueError("snapshot state holds an infinite value")
    for part in model.metadata.get("state_layout", ()):
        at, n = int(part["offset"]), int(part["length"])
        if part["initial"] != "nan" and np.isnan(values[:, at : at + n]).any():
            raise ValueError(f"snapshot state part {part['name']!r} holds NaN")
    return values


STAGE_CLASSES = {
    "wake_nrem_rem": ("wake", "nrem", "rem"),
    "wake_light_deep_rem": ("wake", "light", "deep", "rem"),
}
"""Class names of the stage tasks, in the order of their probabilities
(:data:`sleepstream.records.LABEL_MAPS`; repeated here so the detector needs no torch)."""


def stage_tasks(model: PipelineModel) -> dict[str, str]:
    """The stage outputs of ``model`` and their tasks (``{"p_stage3": "wake_nrem_rem", ...}``,
    from the model's metadata ``stages``); empty for a sleep/wake model."""
    outputs = getattr(model, "stage_outputs", ())
    about = model.metadata.get("stages", {}).get("outputs", {})
    missing = [name for name in outputs if name not in about]
    if missing:
        raise ValueError(f"model: stage outputs {missing} not described in its metadata")
    return {name: str(about[name]["task"]) for name in outputs}


def _resolve_threshold(model: PipelineModel, threshold: float | str) -> float:
    if isinstance(threshold, str):
        thresholds = model.thresholds
        if threshold not in thresholds:
            raise ValueError(
                f"Threshold {threshold!r} is not among the model's {sorted(thresholds)}; "
                "give a number instead"
            )
        return float(thresholds[threshold])
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    return float(threshold)


def close_together(detectors: Sequence[SleepDetector]) -> list[list[EpochResult]]:
    """Close the due epochs of several detectors, stepping their model once per round.

    A service with many streams sets :attr:`SleepDetector.hold` on each, feeds them their
    samples, and then calls this: the epochs that are due across the detectors go through one
    batched call of the model (its inputs stacked along the batch axis) instead of one call
    each, with the results of stepping them one by one. Epochs whose p(sleep) a device sent
    (:meth:`SleepDetector.add_p_sleep`) close in the same rounds without the model. The
    detectors must share one model object. Returns each detector's results, in its order.

    Examples
    --------
    >>> model = SleepDetector().model
    >>> pair = [SleepDetector(model, expect=("heart_rate",)) for _ in range(2)]
    >>> for d, bpm in zip(pair, (55.0, 80.0)):
    ...     d.hold = True
    ...     d.add_heart_rate(np.arange(0, 100, 5.0), np.full(20, bpm))
    []
    []
    >>> [len(r) for r in close_together(pair)]
    [3, 3]
    """
    if not detectors:
        return []
    model = detectors[0].model
    if any(d.model is not model for d in detectors):
        raise ValueError("close_together: the detectors must share one model object")
    results: list[list[EpochResult]] = [[] for _ in detectors]
    while True:
        round_ = [(i, step) for i, d in enumerate(detectors) if (step := d._next_epoch())]
        if not round_:
            return results
        stepped = [(i, e, gap, e.inputs) for i, (e, gap) in round_ if e.inputs is not None]
        for i, (epoch, gap) in round_:
            if epoch.inputs is None:  # its p(sleep) came from the device
                results[i] += [*gap, detectors[i]._step(epoch)]
        if not stepped:
            continue
        names = stepped[0][3]
        inputs = {k: np.concatenate([rows[k] for *_, rows in stepped]) for k in names}
        states = np.concatenate([detectors[i]._state for i, *_ in stepped])
        tasks = detectors[0]._stage_tasks
        if tasks:
            out = model.run_all(inputs, states)  # type: ignore[attr-defined]
            p, new_states, features = out["p_sleep"], out["new_state"], out["features"]
        else:
            p, new_states, features = model.run(inputs, states)
        for row, (i, epoch, gap, _) in enumerate(stepped):
            detector = detectors[i]
            detector._state = new_states[row : row + 1].copy()
            stages = {task: out[name][row] for name, task in tasks.items()} if tasks else None
            results[i] += [*gap, detector._finish(epoch, float(p[row]), features[row], stages)]


def _p_queue(
    arrays: dict[str, NDArray[Any]], takes_p: bool, closed_until: float
) -> deque[tuple[float, float]]:
    """The snapshot's p(sleep) values not yet closed (none in one of version 2 without them)."""
    if "p_times" not in arrays and "p_values" not in arrays:
        return deque()
    times = array(arrays, "p_times", np.float64, what=_WHAT)
    values = array(arrays, "p_values", np.float64, (len(times),), what=_WHAT)
    if len(times) and not takes_p:
        raise ValueError("snapshot holds p(sleep) values for a detector that takes samples")
    closed = len(times) > 0 and times[0] < closed_until - EPOCH_SECONDS / 2
    if closed or (np.diff(times) <= 0).any() or ((values < 0) | (values > 1)).any():
        raise ValueError("snapshot p(sleep) values are malformed")
    return deque(zip(times.tolist(), values.tolist(), strict=True))


def _check_increasing(
    stream: str, values: NDArray[np.float64], times: NDArray[np.float64], must: str
) -> None:
    """``ValueError`` unless ``values`` increase, naming ``stream``, what its times ``must`` do,
    and the first index (with its ``times``) that does not."""
    not_up = np.diff(values) <= 0
    if not_up.any():
        i = int(np.argmax(not_up)) + 1
        raise ValueError(
            f"{stream}: times must {must}, at index {i} ({times[i - 1]:.3f} -> {times[i]:.3f} s)"
        )


def _increasing(times: NDArray[np.float64]) -> NDArray[np.float64]:
    if len(times) > 1 and np.any(np.diff(times) <= 0):
        raise ValueError("snapshot acceleration times are not increasing")
    return times


def _unit_message(what: str, values: NDArray[np.float64], unit: str) -> str:
    """Why times are refused: beyond the accepted range, with the unit they look like."""
    found = since_1970_unit(values) if unit == "s" else None
    if found is not None:
        row, guess = found
        how = f"; or create the detector with time_unit={guess!r}" if guess in TIME_UNITS else ""
        return (
            f"{what}: time {values[row]:.6g} is not in seconds: it looks like "
            f"{UNIT_NAMES[guess]} since 1970. Pass Unix seconds (divide by "
            f"{PER_SECOND[guess]:g}){how}"
        )
    row = int(np.argmax((values >= MAX_SECONDS) | (values < MIN_SECONDS)))
    return (
        f"{what}: time {values[row]:.6g} {unit} is outside the years 1653-5138 the detector accepts"
    )


def _check_rate(intervals: NDArray[np.float64]) -> None:
    """Refuse acceleration whose median interval is not that of 10 Hz to 1 kHz."""
    if len(intervals) < 8:
        return
    step = float(np.median(intervals))
    rate = 1.0 / step
    if rate < MIN_RATE_HZ * (1 - RATE_TOLERANCE):
        hint = (
            " (intervals of a second or more: are the times in milliseconds?)" if step >= 1 else ""
        )
        raise ValueError(
            f"acceleration at about {rate:.3g} Hz: the counts need at least {MIN_RATE_HZ:g} Hz"
            f"{hint}"
        )
    if rate > MAX_RATE_HZ * (1 + RATE_TOLERANCE):
        raise ValueError(
            f"acceleration at about {rate:.4g} Hz: above the {MAX_RATE_HZ:g} Hz the detector "
            "resamples (are the times in seconds?)"
        )


def model_id(model: PipelineModel) -> str:
    """The model's identity for snapshots (its weights' hash where the backend knows it)."""
    return str(getattr(model, "model_id", None) or type(model).__name__)


def _context_array(contexts: Sequence[MotionContext]) -> NDArray[np.float64]:
    rows = [
        (c.time, ACTIVITIES.index(c.activity), CONFIDENCES.index(c.confidence)) for c in contexts
    ]
    return np.array(rows, dtype=np.float64).reshape(-1, 3)


def _contexts(rows: NDArray[np.float64]) -> list[MotionContext]:
    out = []
    for t, activity, confidence in rows.tolist():
        if not (0 <= activity < len(ACTIVITIES) and 0 <= confidence < len(CONFIDENCES)):
            raise ValueError("snapshot context names an unknown activity or confidence")
        out.append(MotionContext(t, ACTIVITIES[int(activity)], CONFIDENCES[int(confidence)]))
    return out


def _counts_dict(value: object) -> dict[str, int]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
        for k, v in value.items()
    ):
        raise ValueError(f"snapshot late-sample counts {value!r:.80} are malformed")
    return dict(value)


__all__ = ["EpochResult", "SleepDetector", "close_together"]
