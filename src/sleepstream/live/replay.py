"""Playing a recorded night through the live detector, as the samples would have arrived.

Samples of every stream are merged in time order and fed in one-second slices (acceleration,
counts and heart rate alike), so the detector sees what a watch would have sent; ``speed`` slows
the replay to a multiple of real time for watching it.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import numpy as np
from numpy.typing import NDArray
from rich.console import Console
from rich.live import Live
from rich.table import Table

from sleepstream.data.times import is_unix_time, time_zone
from sleepstream.live.backends import PipelineModel
from sleepstream.live.detector import EpochResult, SleepDetector
from sleepstream.paths import atomic_path
from sleepstream.records import EPOCH_SECONDS, Recording, Stage

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class Slice:
    """The samples of every stream in ``[start, start + length)``."""

    start: float
    hr: tuple[NDArray[np.float64], NDArray[np.float64]]
    counts: tuple[NDArray[np.float64], NDArray[np.float64]]
    accel: tuple[NDArray[np.float64], NDArray[np.float64]] | None


def slices(recording: Recording, length: float = EPOCH_SECONDS) -> Iterator[Slice]:
    """The night cut into time slices; raw acceleration replaces counts when present."""
    use_accel = recording.accel_times is not None and recording.accel is not None
    streams = [recording.hr_times] + (
        [recording.accel_times] if use_accel else [recording.count_times]
    )
    first = min(float(s[0]) for s in streams if s is not None and len(s))
    last = max(float(s[-1]) for s in streams if s is not None and len(s))
    edges = np.arange(np.floor(first / length) * length, last + length, length)

    def cut(times: NDArray[np.float64], lo: float, hi: float) -> slice:
        return slice(int(np.searchsorted(times, lo)), int(np.searchsorted(times, hi)))

    for lo, hi in itertools.pairwise(edges):
        h = cut(recording.hr_times, lo, hi)
        accel = None
        if use_accel and recording.accel_times is not None and recording.accel is not None:
            a = cut(recording.accel_times, lo, hi)
            accel = (recording.accel_times[a], recording.accel[a])
            counts = (np.zeros(0), np.zeros(0))
        else:
            c = cut(recording.count_times, lo, hi)
            counts = (recording.count_times[c], recording.counts[c])
        yield Slice(float(lo), (recording.hr_times[h], recording.hr_bpm[h]), counts, accel)


def replay(
    recording: Recording,
    detector: SleepDetector,
    *,
    speed: float = 0.0,
    on_result: Callable[[EpochResult], None] | None = None,
) -> list[EpochResult]:
    """Feed the night to ``detector`` slice by slice; ``speed`` > 0 sleeps to that multiple of
    real time. Returns every epoch result (also passed to ``on_result`` as it comes)."""
    results: list[EpochResult] = []
    started = time.monotonic()
    origin: float | None = None
    for piece in slices(recording):
        new = detector.add_heart_rate(*piece.hr)
        if piece.accel is not None:
            new += detector.add_acceleration(*piece.accel)
        else:
            new += detector.add_counts(*piece.counts)
        for result in new:
            if on_result is not None:
                on_result(result)
        results += new
        if speed > 0:
            origin = piece.start if origin is None else origin
            wait = (piece.start - origin) / speed - (time.monotonic() - started)
            if wait > 0:
                time.sleep(wait)
    results += detector.flush(recording.end_time)
    return results


def time_text(t: float, zone: ZoneInfo) -> str:
    """A result's time for the terminal: local ``HH:MM`` and the zone's abbreviation for Unix
    times (so the repeated hour of a daylight-saving change reads ``02:30 CEST``, then
    ``02:30 CET``), hours for relative ones.

    Examples
    --------
    >>> berlin = ZoneInfo("Europe/Berlin")
    >>> time_text(1774745970.0, berlin), time_text(1774746000.0, berlin), time_text(5400.0, berlin)
    ('01:59 CET', '03:00 CEST', '  1.50 h')
    """
    if not is_unix_time(t):
        return f"{t / 3600:6.2f} h"
    return datetime.fromtimestamp(t, tz=zone).strftime("%H:%M %Z")


@dataclass(frozen=True)
class TimeAxis:
    """The x axis of the replay plot: hours since ``origin``, ticks in the zone's clock time for
    Unix times, else labelled as hours since the start of the recording."""

    origin: float
    zone: ZoneInfo | None

    @classmethod
    def for_times(cls, first: float, zone: ZoneInfo) -> TimeAxis:
        """Clock time in ``zone`` when ``first`` is a Unix time, else hours of relative time."""
        return cls(first, zone) if is_unix_time(first) else cls(0.0, None)

    def x(self, t: NDArray[np.float64] | float) -> NDArray[np.float64]:
        """Positions of times ``t`` (s) on the axis (hours)."""
        return (np.asarray(t, dtype=np.float64) - self.origin) / 3600

    @property
    def label(self) -> str:
        """What the axis shows, for its label."""
        if self.zone is None:
            return "hours since the start of the recording"
        return f"local time ({self.zone.key})"

    def ticks(self, start: float, end: float, max_ticks: int = 12) -> tuple[list[float], list[str]]:
        """Ticks at whole local hours from ``start`` to ``end`` (s) and their ``HH:MM`` labels
        (with the date at midnight); empty for relative times (matplotlib's own ticks then).

        Ticks are equally spaced in real time, so across a daylight-saving change the labels
        jump (``01:00``, ``03:00``) or repeat (``02:00``, ``02:00``) as the clock did.
        """
        if self.zone is None or not end > start:
            return [], []
        span_hours = (end - start) / 3600
        hours = next((h for h in (1, 2, 3, 6, 12) if span_hours / h <= max_ticks), None)
        step = 3600.0 * (hours or 24 * math.ceil(span_hours / 24 / max_ticks))
        offset = datetime.fromtimestamp(start, tz=self.zone).utcoffset()
        shift = offset.total_seconds() if offset is not None else 0.0
        first = math.ceil((start + shift) / step) * step - shift
        positions, labels = [], []
        for t in np.arange(first, end + 1e-6, step):
            local = datetime.fromtimestamp(float(t), tz=self.zone)
            midnight = local.hour == 0 and local.minute == 0
            positions.append(float(self.x(float(t))))
            labels.append(f"{local:%H:%M}" + (f"\n{local:%d %b}" if midnight else ""))
        return positions, labels


def _with_gaps(
    results: Sequence[EpochResult], value: Callable[[EpochResult], float]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Epoch ends and values, with a NaN wherever epochs are missing, so lines break there."""
    times: list[float] = []
    values: list[float] = []
    previous_end: float | None = None
    for r in results:
        if previous_end is not None and r.start > previous_end:
            times.append(r.start)
            values.append(math.nan)
        times.append(r.end)
        values.append(value(r))
        previous_end = r.end
    return np.asarray(times, dtype=np.float64), np.asarray(values, dtype=np.float64)


def _no_data(r: EpochResult) -> bool:
    return getattr(r, "state", None) == "unknown" or not math.isfinite(r.p_sleep)


def no_data_spans(results: Sequence[EpochResult]) -> list[tuple[float, float]]:
    """Stretches (s) without an answer: epochs without data (state "unknown" or p(sleep) NaN)
    and epochs missing between results, merged where they touch."""
    spans: list[tuple[float, float]] = []

    def add(start: float, end: float) -> None:
        if spans and start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(end, spans[-1][1]))
        else:
            spans.append((start, end))

    previous_end: float | None = None
    for r in results:
        if previous_end is not None and r.start > previous_end:
            add(previous_end, r.start)
        if _no_data(r):
            add(r.start, r.end)
        previous_end = r.end
    return spans


LIVE_STAGE_TASK = "wake_light_deep_rem"
"""The stage task of the live hypnogram (replay's table and figure)."""

LIVE_STAGE_LEVELS = {"deep": 0, "light": 1, "rem": 2, "wake": 3}
"""Height of each class in the live hypnogram row (deep sleep at the bottom)."""


def live_stages(
    results: Sequence[EpochResult], weights: Sequence[float] | None = None
) -> NDArray[np.float64]:
    """The live hypnogram: per result, the index in ``("wake", "light", "deep", "rem")`` of the
    most probable class after multiplying each probability by ``weights`` (the model's decision
    weights; plain argmax without them); NaN without stage probabilities or data.

    Examples
    --------
    >>> r = EpochResult(0.0, 30.0, 0.9, 0.9, "asleep",
    ...                 p_stages={"wake_light_deep_rem": (0.1, 0.5, 0.3, 0.1)})
    >>> live_stages([r]).tolist(), live_stages([r], [1.0, 1.0, 2.0, 1.0]).tolist()
    ([1.0], [2.0])
    """
    out = np.full(len(results), np.nan)
    w = None if weights is None else np.asarray(weights, dtype=np.float64)
    for i, r in enumerate(results):
        if r.p_stages is None or LIVE_STAGE_TASK not in r.p_stages:
            continue
        p = np.asarray(r.p_stages[LIVE_STAGE_TASK], dtype=np.float64)
        if np.isfinite(p).all():
            out[i] = float(np.argmax(p if w is None else p * w))
    return out


def stage_weights(model: PipelineModel) -> list[float] | None:
    """The decision weights of :data:`LIVE_STAGE_TASK` a model file carries (metadata
    ``stages.decision_weights``), or None."""
    weights = model.metadata.get("stages", {}).get("decision_weights", {}).get(LIVE_STAGE_TASK)
    return None if weights is None else [float(w) for w in weights]


def replay_figure(
    recording: Recording,
    results: Sequence[EpochResult],
    threshold: float,
    timezone: str | ZoneInfo = "UTC",
    weights: Sequence[float] | None = None,
) -> Figure:
    """The figure of :func:`plot_replay`: p(sleep), the threshold and the events, the live
    hypnogram (when the model gives stage probabilities; :func:`live_stages` with ``weights``)
    and the PSG hypnogram (when scored), against local clock time in ``timezone`` for Unix
    times."""
    from matplotlib.figure import Figure

    zone = timezone if isinstance(timezone, ZoneInfo) else time_zone(timezone)
    start, end = _span(recording, results)
    axis = TimeAxis.for_times(start, zone)
    has_labels = recording.n_epochs > 0 and bool(recording.scored.any())
    staged = live_stages(results, weights)
    has_stages = bool(np.isfinite(staged).any())
    rows = 1 + has_labels + has_stages
    fig = Figure(figsize=(12, 3 + 2 * (rows - 1)))
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)
    ax = axes[0, 0]
    t, p_model = _with_gaps(results, lambda r: r.p_model)
    _, p_sleep = _with_gaps(results, lambda r: r.p_sleep)
    ax.plot(axis.x(t), p_model, color="0.6", lw=0.8, label="model p(sleep)")
    ax.plot(axis.x(t), p_sleep, color="C0", lw=1.2, label="p(sleep)")
    for n, (gap_start, gap_end) in enumerate(no_data_spans(results)):
        shade = "no data" if n == 0 else None
        ax.axvspan(*axis.x(np.array([gap_start, gap_end])), color="0.9", lw=0, label=shade)
    ax.axhline(threshold, color="C3", ls="--", lw=0.8, label=f"threshold {threshold:.2f}")
    event_colors = {"fell_asleep": "C2", "woke_up": "C1"}  # "unknown": shaded as no data
    for r in results:
        for event in r.events:
            if event in event_colors:
                ax.axvline(float(axis.x(r.end)), color=event_colors[event], lw=1.0, alpha=0.8)
    ax.plot([], [], color="C2", label="fell asleep")
    ax.plot([], [], color="C1", label="woke up")
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("p(sleep)")
    ax.legend(loc="lower right", fontsize=8, ncol=3)
    title = f"Subject {recording.subject_id}: live detection replayed"
    if axis.zone is not None:
        title += f" from {datetime.fromtimestamp(start, tz=axis.zone):%Y-%m-%d %H:%M %Z}"
    ax.set_title(title)
    if has_stages:
        _live_hypnogram(axes[1, 0], results, staged, recording if has_labels else None, axis)
    if has_labels:
        _hypnogram(axes[-1, 0], recording, axis)
    positions, labels = axis.ticks(start, end)
    if positions:
        axes[-1, 0].set_xticks(positions, labels)
    axes[-1, 0].set_xlabel(axis.label)
    fig.tight_layout()
    return fig


def _span(recording: Recording, results: Sequence[EpochResult]) -> tuple[float, float]:
    """Start and end (s) of what the plot shows: the results and the recording's epochs."""
    starts = [r.start for r in results[:1]] + [float(t) for t in recording.epoch_times[:1]]
    ends = [r.end for r in results[-1:]] + [recording.end_time] * bool(recording.n_epochs)
    return min(starts, default=0.0), max(ends, default=0.0)


def _hypnogram(hyp: Axes, recording: Recording, axis: TimeAxis) -> None:
    stage_axis = {Stage.WAKE: 4, Stage.REM: 3, Stage.N1: 2, Stage.N2: 1, Stage.N3: 0, Stage.N4: 0}
    levels = np.array(
        [stage_axis.get(Stage(int(s)), np.nan) for s in recording.stages], dtype=float
    )
    hyp.step(axis.x(recording.epoch_times + EPOCH_SECONDS), levels, where="pre", color="k")
    hyp.set_yticks([0, 1, 2, 3, 4], ["N3", "N2", "N1", "REM", "Wake"])
    hyp.set_ylabel("PSG")


def _live_hypnogram(
    ax: Axes,
    results: Sequence[EpochResult],
    staged: NDArray[np.float64],
    recording: Recording | None,
    axis: TimeAxis,
) -> None:
    """The live stages as a step line, with the PSG's four classes behind it in grey."""
    names = ("wake", "light", "deep", "rem")
    levels = np.array([np.nan if np.isnan(k) else LIVE_STAGE_LEVELS[names[int(k)]] for k in staged])
    ends = np.array([r.end for r in results])
    if recording is not None:
        from sleepstream.records import WAKE_LIGHT_DEEP_REM

        psg = recording.labels(WAKE_LIGHT_DEEP_REM).astype(float)
        psg_levels = np.array(
            [np.nan if k < 0 else LIVE_STAGE_LEVELS[names[int(k)]] for k in psg], dtype=float
        )
        ax.step(
            axis.x(recording.epoch_times + EPOCH_SECONDS),
            psg_levels,
            where="pre",
            color="0.7",
            lw=2.5,
            label="PSG",
        )
    ax.step(axis.x(ends), levels, where="pre", color="C4", lw=1.0, label="live")
    ax.set_yticks(list(LIVE_STAGE_LEVELS.values()), ["Deep", "Light", "REM", "Wake"])
    ax.set_ylim(-0.5, 3.5)
    ax.set_ylabel("live stage")
    ax.legend(loc="lower right", fontsize=8, ncol=2)


def plot_replay(
    recording: Recording,
    results: Sequence[EpochResult],
    threshold: float,
    path: Path,
    timezone: str | ZoneInfo = "UTC",
    weights: Sequence[float] | None = None,
) -> Path:
    """PNG (or PDF, SVG) of :func:`replay_figure` at ``path``; returns ``path``.

    Epochs without data and missing epochs are gaps in the lines, shaded grey.
    """
    fig = replay_figure(recording, results, threshold, timezone, weights)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


SHIPPED_WITH_STAGES = "sleep_wake_stages"
"""The shipped model file with the live stage outputs (the sleep/wake network and the stage
network in one step); replay uses it when it is there."""


def load_step_model(path: str | None) -> PipelineModel:
    """A model file (``.onnx``, raw variant), a training checkpoint, or (``None``) the shipped
    model file with stage outputs (the sleep/wake one when the package has none)."""
    from sleepstream.live.backends import OnnxPipeline, TorchPipeline, shipped_path

    if path and path.endswith(".onnx"):
        return OnnxPipeline(path)
    if path:
        return TorchPipeline.from_checkpoint(path)
    if shipped_path(SHIPPED_WITH_STAGES).exists():
        return OnnxPipeline.shipped(SHIPPED_WITH_STAGES)
    return OnnxPipeline.shipped()


def live_table(
    result: EpochResult,
    subject: str,
    stage: int,
    timezone: str | ZoneInfo = "UTC",
    weights: Sequence[float] | None = None,
) -> Table:
    """One epoch's result (and the PSG stage, -1 if none) as the terminal's live table; its
    time is the end of the epoch (:func:`time_text`). A model with stage outputs adds the live
    stage (:func:`live_stages` with ``weights``) and its probability."""
    zone = timezone if isinstance(timezone, ZoneInfo) else time_zone(timezone)
    table = Table(title=f"sleepstream live, subject {subject}")
    with_stage = result.p_stages is not None
    columns = ("time", "p(sleep)", "state", "events") + (("live stage",) if with_stage else ())
    for column in (*columns, "PSG"):
        table.add_column(column)
    live_stage: tuple[str, ...] = ()
    if with_stage and result.p_stages is not None:
        k = live_stages([result], weights)[0]
        p = result.p_stages[LIVE_STAGE_TASK]
        names = ("wake", "light", "deep", "REM")
        live_stage = ("-" if np.isnan(k) else f"{names[int(k)]} ({p[int(k)]:.2f})",)
    if _no_data(result):
        p_text, state = "-", "[dim]unknown (no data)"
    else:
        p_text = f"{result.p_sleep:.2f}"
        state = "[green]asleep" if result.asleep else "[yellow]awake"
    table.add_row(
        time_text(result.end, zone),
        p_text + (f" (vetoed: {result.vetoed})" if result.vetoed else ""),
        state,
        ", ".join(result.events),
        *live_stage,
        {-1: "-", 0: "wake", 5: "REM"}.get(stage, f"N{min(stage, 3)}"),
    )
    return table


def replay_live(
    recording: Recording,
    detector: SleepDetector,
    console: Console,
    *,
    speed: float = 0.0,
    transient: bool = False,
    timezone: str | ZoneInfo = "UTC",
) -> list[EpochResult]:
    """:func:`replay` with the live state (and live stage) shown in the terminal and events
    logged; Unix times are shown as clock times in ``timezone``."""
    zone = timezone if isinstance(timezone, ZoneInfo) else time_zone(timezone)
    labels = dict(zip(recording.epoch_times.tolist(), recording.stages.tolist(), strict=True))
    weights = stage_weights(detector.model)
    with Live(console=console, transient=transient, auto_refresh=False) as live:

        def show(result: EpochResult) -> None:
            stage = int(labels.get(result.start, -1))
            table = live_table(result, recording.subject_id, stage, zone, weights)
            live.update(table, refresh=True)
            if result.events:
                console.log(f"{time_text(result.end, zone).strip()}: {', '.join(result.events)}")

        return replay(recording, detector, speed=speed, on_result=show)


def replay_to_plot(
    recording: Recording,
    out: Path,
    console: Console,
    *,
    model: str | None = None,
    threshold: float | str = "wasa93",
    speed: float = 0.0,
    transient: bool = False,
    timezone: str | ZoneInfo = "UTC",
) -> list[EpochResult]:
    """:func:`replay_live` of ``recording`` through a :class:`~sleepstream.live.detector.
    SleepDetector` of ``model`` (:func:`load_step_model`) at ``threshold`` (a p(sleep) or the
    name of one of the model's thresholds), then :func:`plot_replay` to ``out``, written whole
    or not at all. Returns the detector's results."""
    zone = timezone if isinstance(timezone, ZoneInfo) else time_zone(timezone)
    detector = SleepDetector(load_step_model(model), threshold=threshold, timezone=zone.key)
    results = replay_live(
        recording, detector, console, speed=speed, transient=transient, timezone=zone
    )
    with atomic_path(out) as partial:
        plot_replay(
            recording,
            results,
            detector.threshold,
            partial,
            timezone=zone,
            weights=stage_weights(detector.model),
        )
    return results
