"""The live detector: sensor samples in, one result per closed 30 s epoch out.

:class:`SleepDetector` takes acceleration chunks, heart-rate samples, ready-made activity counts
and motion-activity context, in any mix and chunk size, and returns an :class:`EpochResult` for
every epoch that has closed. For each epoch it collects exactly the inputs of the model file
(:mod:`sleepstream.pipeline`: the acceleration grid, the two counts, the heart-rate samples)
and runs the file's step, which holds the counts filter, the features and the network, so the
numbers are those of training and evaluation. Then it applies the context veto and the
hysteresis of :class:`~sleepstream.events.OnsetTracker`, the rules the file's metadata names.

Timing rules
------------
- Epochs are ``[origin + 30 k, origin + 30 (k + 1))``. The first reported epoch is the one
  containing the first sample. There is no start time to give: no feature counts from the
  moment the detector was switched on (each looks back a fixed window), so a watch worn all day
  is simply fed all day, and a detector switched on in the morning agrees with one switched on
  at bedtime once their look-back windows hold the same samples.
- The sensor clock is the newest sample time of any stream. An epoch closes once the clock
  reaches its end plus ``close_lag`` seconds: a lag lets slower streams (heart rate is often
  delivered seconds late) still count.
- A sample older than the end of the last closed epoch is *late*: it is not merged into a closed
  epoch but counted per stream (:attr:`SleepDetector.late_samples`) and reported in the next
  results.
- Counts made from raw acceleration come from a linear-phase filter that looks 2 s ahead
  (:data:`~sleepstream.step.COUNTS_DELAY_SECONDS`): while acceleration flows, an epoch closes
  that much later. Acceleration goes onto the 50 Hz grid by linear interpolation across gaps of
  up to 1 s (:func:`~sleepstream.signal.grid.to_grid`); a count whose filter input has a missing
  grid point is missing.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from sleepstream.events import OnsetTracker
from sleepstream.features import pack_counts, pack_heart_rate
from sleepstream.live import state
from sleepstream.live.backends import PipelineModel
from sleepstream.live.context import ACTIVITIES, CONFIDENCES, ContextVeto, MotionContext
from sleepstream.live.units import check_acceleration_units
from sleepstream.records import EPOCH_SECONDS
from sleepstream.signal.grid import to_grid
from sleepstream.state_data import array, finite_or_none, integer, number, time_or_never

COUNTS_DELAY_SECONDS = 2.0
"""The counts filter's look-ahead (:data:`sleepstream.step.COUNTS_DELAY_SECONDS`)."""
ACCEL_SAMPLES = 1500

log = logging.getLogger(__name__)

_WHAT = "snapshot"
Stream = Literal["acceleration", "heart_rate", "counts", "context"]
MIN_BPM, MAX_BPM = 25.0, 250.0


@dataclass(frozen=True)
class EpochResult:
    """What the detector says about one closed epoch.

    Attributes
    ----------
    start, end
        The epoch, in sensor seconds.
    p_sleep
        Probability of sleep after the context rule (0 when vetoed).
    p_model
        The network's probability before the context rule.
    asleep
        The tracker's state after this epoch.
    events
        ``"fell_asleep"`` / ``"woke_up"`` completed at this epoch.
    vetoed
        The context rule's reason when it vetoed sleep, else ``None``.
    late_samples
        Samples that arrived for already-closed epochs since the previous result, per stream.
    features
        The epoch's causal features (:data:`~sleepstream.features.FEATURE_NAMES` order), as
        the model file computed them; not compared between results.
    """

    start: float
    end: float
    p_sleep: float
    p_model: float
    asleep: bool
    events: tuple[str, ...] = ()
    vetoed: str | None = None
    late_samples: dict[str, int] = field(default_factory=dict)
    features: NDArray[np.float32] | None = field(default=None, compare=False, repr=False)


@dataclass(order=True)
class _Event:
    time: float
    order: int
    stream: Stream = field(compare=False)
    value: object = field(compare=False)


class SleepDetector:
    """Streaming sleep/wake detection; see the module docstring for the timing rules.

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
        Anchor of the 30 s epoch grid (and of the 15 s count windows).
    close_lag
        Seconds the clock must pass an epoch's end before the epoch closes.
    check_units
        Check that acceleration looks like raw accelerometer data in g.
    """

    def __init__(
        self,
        model: PipelineModel | None = None,
        threshold: float | str = "wasa93",
        fall_asleep_epochs: int = 3,
        wake_up_epochs: int = 2,
        veto: ContextVeto | None = None,
        origin: float = 0.0,
        close_lag: float = 0.0,
        check_units: bool = True,
    ):
        if model is None:
            from sleepstream.live.backends import OnnxPipeline

            model = OnnxPipeline.shipped()
        self.model = model
        self.threshold = _resolve_threshold(model, threshold)
        self.fall_asleep_epochs = fall_asleep_epochs
        self.wake_up_epochs = wake_up_epochs
        self.veto = veto if veto is not None else ContextVeto()
        self.origin = origin
        self.close_lag = close_lag
        self.check_units = check_units
        self._reset()

    def _reset(self) -> None:
        self._accel_t = np.zeros(0)
        self._accel_z = np.zeros(0)
        self._accel_last: float | None = None
        self._tracker = OnsetTracker(self.fall_asleep_epochs, self.wake_up_epochs)
        self._state = self.model.initial_state()
        self._queue: list[_Event] = []
        self._order = 0
        self._clock = -math.inf
        self._next_start: float | None = None
        self._closed_until = -math.inf
        self._context: list[MotionContext] = []
        self._units_checked = not self.check_units
        self.late_samples: dict[str, int] = {}
        self._late_since_result: dict[str, int] = {}

    # -- input ---------------------------------------------------------------------------------
    def add_heart_rate(self, times: ArrayLike, bpm: ArrayLike) -> list[EpochResult]:
        """Heart-rate samples (s, beats per minute); 25-250 bpm, else ``ValueError``."""
        if np.size(times) == 0 and np.size(bpm) == 0:
            return []
        t, v = _pair(times, bpm, "heart rate")
        bad = (v < MIN_BPM) | (v > MAX_BPM)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"heart rate {v[i]:g} bpm at t={t[i]:.3f} s is outside {MIN_BPM:g}-{MAX_BPM:g}"
            )
        return self._ingest("heart_rate", t, v.tolist())

    def add_counts(self, times: ArrayLike, counts: ArrayLike) -> list[EpochResult]:
        """Ready-made activity counts, each for the 15 s window starting at its time."""
        t, v = _pair(times, counts, "activity count")
        if (v < 0).any():
            i = int(np.argmax(v < 0))
            raise ValueError(f"activity count {v[i]:g} at t={t[i]:.3f} s is negative")
        return self._ingest("counts", t, v.tolist())

    def add_context(self, context: MotionContext | Sequence[MotionContext]) -> list[EpochResult]:
        """Motion-activity context (as iOS CMMotionActivity reports it)."""
        items = [context] if isinstance(context, MotionContext) else list(context)
        t = np.array([c.time for c in items], dtype=np.float64)
        return self._ingest("context", t, items)

    def add_acceleration(self, times: ArrayLike, xyz: ArrayLike) -> list[EpochResult]:
        """Raw accelerometer samples: times (s) and ``(n, 3)`` x, y, z in g (or ``(n,)`` z)."""
        t = np.asarray(times, dtype=np.float64)
        a = np.asarray(xyz, dtype=np.float64)
        if a.ndim == 2 and a.shape[1] == 3:
            if not self._units_checked and len(a) >= 50:
                check_acceleration_units(a)
                self._units_checked = True
            z = a[:, 2]
        elif a.ndim == 1:
            z = a
        else:
            raise ValueError(f"acceleration must have shape (n, 3) or (n,), got {a.shape}")
        if len(t) != len(z):
            raise ValueError(f"acceleration: {len(t)} times but {len(z)} samples")
        if len(t) == 0:
            return []
        if not (np.isfinite(t).all() and np.isfinite(z).all()):
            raise ValueError("acceleration: non-finite time or value")
        if len(t) > 1 and (np.diff(t) <= 0).any():
            raise ValueError("acceleration: times must be strictly increasing")
        last = self._accel_last
        if last is not None and t[0] <= last:
            late = int(np.sum(t <= last))
            self._count_late("acceleration", late)
            t, z = t[late:], z[late:]
            if len(t) == 0:
                return []
        self._accel_t = np.concatenate([self._accel_t, t])
        self._accel_z = np.concatenate([self._accel_z, z])
        self._accel_last = float(t[-1])
        return self._advance(float(t[-1]))

    def advance(self, now: float) -> list[EpochResult]:
        """Move the sensor clock to ``now`` (e.g. a timer while no samples arrive)."""
        return self._advance(float(now))

    # -- core ----------------------------------------------------------------------------------
    def _count_late(self, stream: str, n: int) -> None:
        if n:
            self.late_samples[stream] = self.late_samples.get(stream, 0) + n
            self._late_since_result[stream] = self._late_since_result.get(stream, 0) + n
            log.debug("%d late %s samples", n, stream)

    def _push(self, stream: Stream, times: NDArray[np.float64], values: Sequence[object]) -> None:
        late = times < self._closed_until
        self._count_late(stream, int(late.sum()))
        for t, value, is_late in zip(times.tolist(), values, late.tolist(), strict=True):
            if not is_late:
                heapq.heappush(self._queue, _Event(t, self._order, stream, value))
                self._order += 1

    def _ingest(
        self, stream: Stream, times: NDArray[np.float64], values: Sequence[object]
    ) -> list[EpochResult]:
        if len(times) == 0:
            return []
        self._push(stream, times, values)
        return self._advance(float(times.max()))

    def _advance(self, now: float) -> list[EpochResult]:
        self._clock = max(self._clock, now)
        if self._closed_until == -math.inf:
            # Until an epoch closes, the first epoch is the one of the earliest sample so far.
            first = self._earliest()
            if first is None:
                return []
            k = math.floor((first - self.origin) / EPOCH_SECONDS)
            self._next_start = self.origin + k * EPOCH_SECONDS
        assert self._next_start is not None
        results = []
        # Counts made from raw acceleration need the filter's look-ahead after the epoch's end.
        counts_delay = COUNTS_DELAY_SECONDS if self._accel_last is not None else 0.0
        while self._next_start + EPOCH_SECONDS + self.close_lag + counts_delay <= self._clock:
            results.append(self._close(self._next_start))
            self._next_start += EPOCH_SECONDS
        return results

    def _earliest(self) -> float | None:
        times = [e.time for e in self._queue[:1]]
        if len(self._accel_t):
            times.append(float(self._accel_t[0]))
        return min(times) if times else None

    def _inputs(self, start: float, end: float) -> dict[str, NDArray[np.float32]]:
        """The model file's inputs for the epoch ``[start, end)`` (pops its queued samples)."""
        hr_t, hr_v, count_t, count_v = [], [], [], []
        while self._queue and self._queue[0].time < end:
            event = heapq.heappop(self._queue)
            if event.stream == "heart_rate":
                hr_t.append(event.time - start)
                hr_v.append(float(event.value))  # type: ignore[arg-type]
            elif event.stream == "counts":
                count_t.append(event.time - start)
                count_v.append(float(event.value))  # type: ignore[arg-type]
            elif isinstance(event.value, MotionContext):
                self._context.append(event.value)
        hr, hr_offset = pack_heart_rate(np.array(hr_t), np.array(hr_v))
        counts = pack_counts(np.array(count_t), np.array(count_v))
        accel = np.full(ACCEL_SAMPLES, np.nan)
        if len(self._accel_t):
            first = start + COUNTS_DELAY_SECONDS
            accel = to_grid(self._accel_t, self._accel_z, first, ACCEL_SAMPLES)
            # Keep the last sample before the next epoch's grid: it may bridge into it.
            keep = max(0, int(np.searchsorted(self._accel_t, first + EPOCH_SECONDS)) - 1)
            self._accel_t, self._accel_z = self._accel_t[keep:], self._accel_z[keep:]
        rows = {"accel": accel, "counts": counts, "hr": hr, "hr_offset": hr_offset}
        return {k: v.astype(np.float32)[None] for k, v in rows.items()}

    def _close(self, start: float) -> EpochResult:
        end = start + EPOCH_SECONDS
        inputs = self._inputs(start, end)
        self._closed_until = end
        p, self._state, features = self.model.run(inputs, self._state)
        p_model = float(p[0])
        reason = self.veto.reason(self._context, start, end)
        self._context = self.veto.keep(self._context, end)
        p_sleep = 0.0 if reason else p_model
        event = self._tracker.update(p_sleep >= self.threshold)
        late, self._late_since_result = self._late_since_result, {}
        return EpochResult(
            start,
            end,
            p_sleep,
            p_model,
            self._tracker.asleep,
            (event,) if event else (),
            reason,
            late,
            features[0],
        )

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
            "close_lag": self.close_lag,
            "check_units": self.check_units,
        }

    def snapshot(self) -> bytes:
        """Everything needed to continue this stream later, as portable data (no weights).

        The bytes are named arrays with a versioned JSON header (:mod:`sleepstream.live.state`),
        never a pickle: restoring them cannot run code.
        """
        queue = sorted(self._queue)
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
        }
        arrays: dict[str, NDArray[Any]] = {
            "state": np.asarray(self._state, dtype=np.float32),
            "accel_times": self._accel_t,
            "accel_z": self._accel_z,
            "queue_time": np.array([e.time for e in queue], dtype=np.float64),
            "queue_order": np.array([e.order for e in queue], dtype=np.int64),
            "queue_stream": np.array([_STREAMS.index(e.stream) for e in queue], dtype=np.int8),
            "queue_value": np.array([_event_value(e) for e in queue], dtype=np.float64),
            "context": _context_array(self._context),
            "queue_context": _context_array(_queued_contexts(queue)),
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
        self.__dict__.update(fresh.__dict__)

    def _load(self, header: dict[str, Any], arrays: dict[str, NDArray[Any]]) -> None:
        self._state = _checked_state(
            array(arrays, "state", np.float32, (None, None), finite=False, what=_WHAT),
            self.model,
            np.shape(self._state),
        )
        self._accel_t = array(arrays, "accel_times", np.float64, what=_WHAT)
        self._accel_z = array(arrays, "accel_z", np.float64, (len(self._accel_t),), what=_WHAT)
        if len(self._accel_t) > 1 and np.any(np.diff(self._accel_t) <= 0):
            raise ValueError("snapshot acceleration times are not increasing")
        last = header.get("accel_last")
        self._accel_last = None if last is None else number(header, "accel_last", what=_WHAT)
        times = array(arrays, "queue_time", np.float64, what=_WHAT)
        orders = array(arrays, "queue_order", np.int64, what=_WHAT)
        streams = array(arrays, "queue_stream", np.int8, what=_WHAT)
        values = array(arrays, "queue_value", np.float64, finite=False, what=_WHAT)
        if not len(times) == len(orders) == len(streams) == len(values):
            raise ValueError("snapshot queue arrays differ in length")
        if np.any((streams < 0) | (streams >= len(_STREAMS))):
            raise ValueError("snapshot queue names an unknown stream")
        self._context = _contexts(array(arrays, "context", np.float64, (None, 3), what=_WHAT))
        queued = _contexts(array(arrays, "queue_context", np.float64, (None, 3), what=_WHAT))
        queued_iter = iter(queued)
        self._queue = []
        for t, order, stream, value in zip(
            times.tolist(), orders.tolist(), streams.tolist(), values.tolist(), strict=True
        ):
            name = _STREAMS[stream]
            item: object = next(queued_iter, None) if name == "context" else value
            if item is None or (name != "context" and not math.isfinite(value)):
                raise ValueError("snapshot queue holds a malformed entry")
            self._queue.append(_Event(t, order, name, item))
        heapq.heapify(self._queue)
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


def _resolve_threshold(model: PipelineModel, threshold: float | str) -> float:
    if isinstance(threshold, str):
        thresholds = getattr(model, "thresholds", {})
        if threshold not in thresholds:
            raise ValueError(
                f"Threshold {threshold!r} is not among the model's {sorted(thresholds)}; "
                "give a number instead"
            )
        return float(thresholds[threshold])
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    return float(threshold)


def _pair(
    times: ArrayLike, values: ArrayLike, what: str
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    t = np.atleast_1d(np.asarray(times, dtype=np.float64))
    v = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if t.shape != v.shape or t.ndim != 1:
        raise ValueError(f"{what}: times {t.shape} and values {v.shape} must be equal 1-D shapes")
    bad = ~(np.isfinite(t) & np.isfinite(v))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"{what}: non-finite time or value at index {i} (t={t[i]!r}, value={v[i]!r})"
        )
    if len(t) > 1 and (np.diff(t) < 0).any():
        i = int(np.argmax(np.diff(t) < 0)) + 1
        raise ValueError(
            f"{what}: time goes backwards at index {i} ({t[i - 1]:.3f} -> {t[i]:.3f} s)"
        )
    return t, v


_STREAMS: tuple[Stream, ...] = ("acceleration", "heart_rate", "counts", "context")


def model_id(model: PipelineModel) -> str:
    """The model's identity for snapshots (its weights' hash where the backend knows it)."""
    return str(getattr(model, "model_id", None) or type(model).__name__)


def _event_value(event: _Event) -> float:
    return math.nan if isinstance(event.value, MotionContext) else float(event.value)  # type: ignore[arg-type]


def _queued_contexts(queue: Sequence[_Event]) -> list[MotionContext]:
    return [e.value for e in queue if isinstance(e.value, MotionContext)]


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


__all__ = ["EpochResult", "SleepDetector"]
