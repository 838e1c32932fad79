"""Playing a recorded night through the live detector, as the samples would have arrived.

Samples of every stream are merged in time order and fed in one-second slices (acceleration,
counts and heart rate alike), so the detector sees what a watch would have sent; ``speed`` slows
the replay to a multiple of real time for watching it.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from rich.console import Console
from rich.live import Live
from rich.table import Table

from sleepstream.live.backends import PipelineModel
from sleepstream.live.detector import EpochResult, SleepDetector
from sleepstream.records import EPOCH_SECONDS, Recording, Stage


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
    results += detector.advance(recording.end_time)
    return results


def plot_replay(
    recording: Recording, results: list[EpochResult], threshold: float, path: Path
) -> Path:
    """PNG of p(sleep), the threshold and the events over the PSG hypnogram (when scored)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hours = np.array([r.end for r in results]) / 3600
    has_labels = recording.n_epochs > 0 and recording.scored.any()
    fig, axes = plt.subplots(
        2 if has_labels else 1, 1, figsize=(12, 5 if has_labels else 3), sharex=True, squeeze=False
    )
    ax = axes[0, 0]
    ax.plot(hours, [r.p_model for r in results], color="0.6", lw=0.8, label="model p(sleep)")
    ax.plot(hours, [r.p_sleep for r in results], color="C0", lw=1.2, label="p(sleep)")
    ax.axhline(threshold, color="C3", ls="--", lw=0.8, label=f"threshold {threshold:.2f}")
    for r in results:
        for event in r.events:
            color = "C2" if event == "fell_asleep" else "C1"
            ax.axvline(r.end / 3600, color=color, lw=1.0, alpha=0.8)
    ax.plot([], [], color="C2", label="fell asleep")
    ax.plot([], [], color="C1", label="woke up")
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("p(sleep)")
    ax.legend(loc="lower right", fontsize=8, ncol=3)
    ax.set_title(f"Subject {recording.subject_id}: live detection replayed")
    if has_labels:
        stage_axis = {
            Stage.WAKE: 4,
            Stage.REM: 3,
            Stage.N1: 2,
            Stage.N2: 1,
            Stage.N3: 0,
            Stage.N4: 0,
        }
        levels = np.array(
            [stage_axis.get(Stage(int(s)), np.nan) for s in recording.stages], dtype=float
        )
        hyp = axes[1, 0]
        hyp.step((recording.epoch_times + EPOCH_SECONDS) / 3600, levels, where="pre", color="k")
        hyp.set_yticks([0, 1, 2, 3, 4], ["N3", "N2", "N1", "REM", "Wake"])
        hyp.set_ylabel("PSG")
    axes[-1, 0].set_xlabel("hours since the start of the recording")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def load_step_model(path: str | None) -> PipelineModel:
    """A model file (``.onnx``, raw variant), a training checkpoint, or (``None``) the shipped
    model file."""
    from sleepstream.live.backends import OnnxPipeline, TorchPipeline

    if path and path.endswith(".onnx"):
        return OnnxPipeline(path)
    if path:
        return TorchPipeline.from_checkpoint(path)
    return OnnxPipeline.shipped()


def live_table(result: EpochResult, subject: str, stage: int) -> Table:
    """One epoch's result (and the PSG stage, -1 if none) as the terminal's live table."""
    table = Table(title=f"sleepstream live, subject {subject}")
    for column in ("time", "p(sleep)", "state", "events", "PSG"):
        table.add_column(column)
    table.add_row(
        f"{result.end / 3600:6.2f} h",
        f"{result.p_sleep:.2f}" + (f" (vetoed: {result.vetoed})" if result.vetoed else ""),
        "[green]asleep" if result.asleep else "[yellow]awake",
        ", ".join(result.events),
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
) -> list[EpochResult]:
    """:func:`replay` with the live state shown in the terminal and events logged."""
    labels = dict(zip(recording.epoch_times.tolist(), recording.stages.tolist(), strict=True))
    with Live(console=console, transient=transient, auto_refresh=False) as live:

        def show(result: EpochResult) -> None:
            stage = int(labels.get(result.start, -1))
            live.update(live_table(result, recording.subject_id, stage), refresh=True)
            if result.events:
                console.log(f"{result.end / 3600:.2f} h: {', '.join(result.events)}")

        return replay(recording, detector, speed=speed, on_result=show)
