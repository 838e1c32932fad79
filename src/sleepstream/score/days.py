"""From scored epochs to days: non-wear, sleep periods, the main sleep and naps, night figures.

The rules (also in ``docs/score.md``):

- **Days** run from noon to noon in local time (the recording's IANA zone, DST included, or the
  UTC offsets its records carried); a day is named by the date of its first noon, so the night
  of Saturday to Sunday is Saturday's. A day across a daylight-saving change is 23 or 25 hours.
- **Non-wear**: a stretch of at least :data:`NON_WEAR_MINUTES` in which no epoch has a
  heart-rate sample, a movement (an activity count above 0) or a step. (A recording with no
  heart rate at all: a stretch with no motion data at all.) Non-wear is never sleep, and is
  reported per epoch and per day.
- **Sleep epochs**: p(sleep) at or above the model's threshold, outside non-wear.
- **Sleep periods**: runs of sleep epochs joined across wake of at most
  :data:`MERGE_WAKE_MINUTES` (never across non-wear); a period counts when it holds at least
  :data:`MIN_PERIOD_SLEEP_MINUTES` of sleep. A period belongs to the day its onset falls in.
- **Main sleep**: the day's period with the most sleep; the day's other periods are **naps**.
- **Bed time**: the start of the in-bed record Apple's sleep analysis has around the onset,
  if any; else the start of the still stretch (no activity count above
  :data:`~sleepstream.features.ACTIVE_COUNT`, no step, no non-wear) ending at the onset, at most
  :data:`BED_LOOKBACK_MINUTES` long; without motion data, the onset itself.
- **Night figures** (:func:`~sleepstream.evaluation.nightly.night_summary` from bed time to the
  final awakening, the end of the main period's last sleep epoch): TST, SE, WASO, SOL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from sleepstream.data.user import APPLE_ASLEEP, UserRecording
from sleepstream.evaluation.nightly import night_summary
from sleepstream.features import ACTIVE_COUNT
from sleepstream.records import EPOCH_SECONDS
from sleepstream.score.model import EpochScores

NON_WEAR_MINUTES = 30.0
MERGE_WAKE_MINUTES = 30.0
MIN_PERIOD_SLEEP_MINUTES = 15.0
BED_LOOKBACK_MINUTES = 60.0
EPOCH_MIN = EPOCH_SECONDS / 60.0


# -- per epoch -------------------------------------------------------------------------------


def _per_epoch_count(times: NDArray[np.float64], starts: NDArray[np.float64]) -> NDArray[np.int64]:
    """How many of ``times`` fall in each epoch starting at ``starts`` (contiguous)."""
    index = np.floor((times - starts[0]) / EPOCH_SECONDS).astype(np.int64)
    inside = (index >= 0) & (index < len(starts))
    return np.bincount(index[inside], minlength=len(starts))


def _steps_per_epoch(recording: UserRecording, starts: NDArray[np.float64]) -> NDArray[np.float64]:
    """Steps spread evenly over each record's interval, summed per epoch."""
    out = np.zeros(len(starts))
    if not len(recording.steps):
        return out
    edges = np.append(starts, starts[-1] + EPOCH_SECONDS)
    for begin, end, n in zip(
        recording.step_starts, recording.step_ends, recording.steps, strict=True
    ):
        length = max(float(end - begin), 1.0)
        lo = max(int(np.searchsorted(edges, begin, side="right")) - 1, 0)
        hi = min(int(np.searchsorted(edges, end, side="left")), len(starts))
        for e in range(lo, hi):
            overlap = min(edges[e + 1], end) - max(edges[e], begin)
            if overlap > 0:
                out[e] += n * overlap / length
    return out


def epoch_table(
    recording: UserRecording, starts: NDArray[np.float64], scores: EpochScores, threshold: float
) -> pd.DataFrame:
    """One row per epoch: times, p(sleep), stage probabilities, data coverage, non-wear, sleep.

    Columns: ``start_utc`` (Unix s), ``utc``, ``local`` (ISO-8601 text), ``utc_offset_min``,
    ``p_sleep``, one ``p_<stage>`` per stage the model gives, ``hr_samples``,
    ``motion_coverage`` (fraction of the epoch with motion data; NaN without a motion stream),
    ``count`` (the epoch's activity count, NaN where missing), ``steps``, ``non_wear``,
    ``asleep``.
    """
    offsets = recording.utc_offset_seconds(starts)
    hr_samples = _per_epoch_count(recording.hr_times, starts)
    count = scores.counts.sum(axis=1) if scores.counts is not None else np.full(len(starts), np.nan)
    if scores.counts is not None and (recording.has_accel or len(recording.count_times)):
        motion = np.isfinite(scores.counts).mean(axis=1)
    else:
        motion = np.full(len(starts), np.nan)
    steps = _steps_per_epoch(recording, starts)
    non_wear = non_wear_epochs(recording, hr_samples, count, steps, motion)
    p = scores.p_sleep
    asleep = np.isfinite(p) & (p >= threshold) & ~non_wear
    utc = pd.to_datetime(starts, unit="s", utc=True)
    local = (utc.tz_localize(None) + pd.to_timedelta(offsets, unit="s")).strftime(
        "%Y-%m-%dT%H:%M:%S"
    )
    sign = np.where(offsets < 0, "-", "+")
    hours, minutes = np.abs(offsets) // 3600, (np.abs(offsets) % 3600) // 60
    suffix = [f"{s}{int(h):02d}:{int(m):02d}" for s, h, m in zip(sign, hours, minutes, strict=True)]
    table = pd.DataFrame(
        {
            "start_utc": starts,
            "utc": utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "local": [f"{t}{s}" for t, s in zip(local, suffix, strict=True)],
            "utc_offset_min": offsets / 60.0,
            "p_sleep": p,
            **{f"p_{name}": values for name, values in scores.stages.items()},
            "hr_samples": hr_samples,
            "motion_coverage": motion,
            "count": count,
            "steps": steps,
            "non_wear": non_wear,
            "asleep": asleep,
        }
    )
    return table


def non_wear_epochs(
    recording: UserRecording,
    hr_samples: NDArray[np.int64],
    count: NDArray[np.float64],
    steps: NDArray[np.float64],
    motion: NDArray[np.float64],
) -> NDArray[np.bool_]:
    """Epochs in stretches of at least :data:`NON_WEAR_MINUTES` without a sign of wear (see the
    module docstring)."""
    if len(recording.hr_times):
        quiet = (hr_samples == 0) & ~(np.nan_to_num(count) > 0) & ~(steps > 0)
    else:
        quiet = ~(np.nan_to_num(motion) > 0) & ~(steps > 0)
    return long_runs(quiet, math.ceil(NON_WEAR_MINUTES / EPOCH_MIN))


def runs(mask: NDArray[np.bool_]) -> list[tuple[int, int]]:
    """``(start, stop)`` of each run of True.

    >>> runs(np.array([0, 1, 1, 0, 1], dtype=bool))
    [(1, 3), (4, 5)]
    """
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def long_runs(mask: NDArray[np.bool_], min_length: int) -> NDArray[np.bool_]:
    """``mask`` keeping only runs of at least ``min_length``.

    >>> long_runs(np.array([1, 0, 1, 1, 1], dtype=bool), 2).tolist()
    [False, False, True, True, True]
    """
    out = np.zeros(len(mask), dtype=bool)
    for a, b in runs(mask):
        if b - a >= min_length:
            out[a:b] = True
    return out


# -- days and periods ------------------------------------------------------------------------


@dataclass(frozen=True)
class Day:
    """Local noon to local noon: ``start`` and ``end`` in Unix seconds, named by ``date``."""

    date: date
    start: float
    end: float


def noon_utc(recording: UserRecording, day: date) -> float:
    """Unix time of local noon on ``day`` (the offset in force at noon, found by iterating)."""
    naive = (datetime(day.year, day.month, day.day, 12) - datetime(1970, 1, 1)).total_seconds()
    guess = naive
    for _ in range(3):
        offset = float(recording.utc_offset_seconds(np.array([guess]))[0])
        guess = naive - offset
    return guess


def days_of(recording: UserRecording, first: float, last: float) -> list[Day]:
    """The noon-to-noon days from the one holding ``first`` to the one holding ``last``."""
    offset = float(recording.utc_offset_seconds(np.array([first]))[0])
    local = datetime(1970, 1, 1) + timedelta(seconds=first + offset)
    day = (local - timedelta(hours=12)).date()
    out = []
    while True:
        start, end = noon_utc(recording, day), noon_utc(recording, day + timedelta(days=1))
        if start > last:
            break
        out.append(Day(day, start, end))
        day += timedelta(days=1)
    return out


@dataclass(frozen=True)
class Period:
    """A sleep period: epochs ``[first, stop)`` of the table (first and last are sleep)."""

    first: int
    stop: int
    sleep_epochs: int

    @property
    def sleep_min(self) -> float:
        return self.sleep_epochs * EPOCH_MIN


def sleep_periods(asleep: NDArray[np.bool_], non_wear: NDArray[np.bool_]) -> list[Period]:
    """Runs of sleep joined across short wake (not across non-wear), long enough to count.

    >>> sleep = np.zeros(200, dtype=bool); sleep[10:50] = True; sleep[60:100] = True
    >>> [(p.first, p.stop) for p in sleep_periods(sleep, np.zeros(200, dtype=bool))]
    [(10, 100)]
    """
    max_gap = math.floor(MERGE_WAKE_MINUTES / EPOCH_MIN)
    merged: list[list[int]] = []
    for a, b in runs(asleep):
        if merged:
            gap_from = merged[-1][1]
            if a - gap_from <= max_gap and not non_wear[gap_from:a].any():
                merged[-1][1] = b
                continue
        merged.append([a, b])
    out = []
    for a, b in merged:
        n_sleep = int(asleep[a:b].sum())
        if n_sleep * EPOCH_MIN >= MIN_PERIOD_SLEEP_MINUTES:
            out.append(Period(a, b, n_sleep))
    return out


# -- nights ----------------------------------------------------------------------------------


@dataclass
class Night:
    """One day's main sleep, naps and figures; ``None`` times when the day has no sleep."""

    day: Day
    main: Period | None
    naps: list[Period]
    figures: dict[str, Any] = field(default_factory=dict)


def _apple_epochs(
    recording: UserRecording, starts: NDArray[np.float64]
) -> tuple[NDArray[np.int8], NDArray[np.bool_]]:
    """Apple's sleep analysis per epoch (1 asleep, 0 awake or in bed only, -1 no record) and
    the epochs inside an in-bed record."""
    ref = np.full(len(starts), -1, dtype=np.int8)
    in_bed = np.zeros(len(starts), dtype=bool)
    if recording.apple_sleep is None or not len(recording.apple_sleep):
        return ref, in_bed
    mid = starts + EPOCH_SECONDS / 2
    table = recording.apple_sleep
    for asleep_pass in (False, True):  # asleep records win over awake ones they overlap
        for start, end, stage in table[["start", "end", "stage"]].itertuples(index=False):
            if (stage in APPLE_ASLEEP) != asleep_pass:
                continue
            lo, hi = np.searchsorted(mid, start), np.searchsorted(mid, end)
            ref[lo:hi] = 1 if asleep_pass else np.maximum(ref[lo:hi], 0)
            if stage == "in_bed":
                in_bed[lo:hi] = True
    return ref, in_bed


def psg_epochs(recording: UserRecording, starts: NDArray[np.float64]) -> NDArray[np.int8]:
    """PSG sleep (1) / wake (0) / none (-1) on the scoring grid."""
    ref = np.full(len(starts), -1, dtype=np.int8)
    if not len(recording.psg_epochs):
        return ref
    index = np.round((recording.psg_epochs - starts[0]) / EPOCH_SECONDS).astype(np.int64)
    inside = (index >= 0) & (index < len(starts))
    ref[index[inside]] = recording.psg_sleep[inside]
    return ref


def kappa(ours: NDArray[np.bool_], reference: NDArray[np.int8]) -> float:
    """Cohen's kappa of sleep/wake on the epochs the reference covers (NaN when it covers none,
    or when both sides hold one class only)."""
    from sklearn.metrics import cohen_kappa_score

    covered = reference >= 0
    a, b = ours[covered].astype(np.int8), reference[covered]
    if not covered.any() or len(np.union1d(a, b)) < 2:
        return math.nan
    return float(cohen_kappa_score(a, b))


def _bed_time(
    table: pd.DataFrame, main: Period, in_bed: NDArray[np.bool_], has_motion: bool
) -> int:
    """Epoch index of the bed time (module docstring)."""
    onset = main.first
    if in_bed[max(onset - 1, 0) : onset + 1].any():
        at = onset
        while at > 0 and in_bed[at - 1]:
            at -= 1
        return at
    if not has_motion:
        return onset
    still = (
        ~(table["count"].to_numpy() > ACTIVE_COUNT)
        & np.isfinite(table["count"].to_numpy())
        & ~(table["steps"].to_numpy() > 0)
        & ~table["non_wear"].to_numpy()
    )
    limit = max(onset - math.floor(BED_LOOKBACK_MINUTES / EPOCH_MIN), 0)
    at = onset
    while at > limit and still[at - 1]:
        at -= 1
    return at


def nights(recording: UserRecording, table: pd.DataFrame) -> list[Night]:
    """Every day of the recording with its main sleep, naps and figures (module docstring)."""
    starts = table["start_utc"].to_numpy()
    asleep = table["asleep"].to_numpy()
    non_wear = table["non_wear"].to_numpy()
    periods = sleep_periods(asleep, non_wear)
    apple, in_bed = _apple_epochs(recording, starts)
    psg = psg_epochs(recording, starts)
    out = []
    for day in days_of(recording, float(starts[0]), float(starts[-1]) + EPOCH_SECONDS):
        mine = [p for p in periods if day.start <= starts[p.first] < day.end]
        mine.sort(key=lambda p: p.sleep_epochs, reverse=True)
        main = mine[0] if mine else None
        naps = sorted(mine[1:], key=lambda p: p.first)
        night = Night(day, main, naps)
        in_day = (starts >= day.start) & (starts < day.end)
        night.figures = _figures(recording, table, night, in_day, in_bed, apple, psg)
        out.append(night)
    return out


def _iso(table: pd.DataFrame, index: int | None, column: str = "local") -> str | None:
    return None if index is None else str(table[column].iloc[index])


def _figures(
    recording: UserRecording,
    table: pd.DataFrame,
    night: Night,
    in_day: NDArray[np.bool_],
    in_bed: NDArray[np.bool_],
    apple: NDArray[np.int8],
    psg: NDArray[np.int8],
) -> dict[str, Any]:
    asleep = table["asleep"].to_numpy()
    figures: dict[str, Any] = {
        "date": night.day.date.isoformat(),
        "bed_time": None,
        "sleep_onset": None,
        "final_awakening": None,
        "tst_min": math.nan,
        "se_pct": math.nan,
        "waso_min": math.nan,
        "sol_min": math.nan,
    }
    main = night.main
    if main is not None:
        bed = _bed_time(table, main, in_bed, recording.has_motion or len(recording.steps) > 0)
        final = main.stop  # the epoch after the last sleep epoch
        figures.update(night_summary(asleep[bed:final]))
        figures["bed_time"] = _iso(table, bed)
        figures["sleep_onset"] = _iso(table, main.first)
        end = table["start_utc"].iloc[final - 1] + EPOCH_SECONDS
        offset = table["utc_offset_min"].iloc[final - 1]
        figures["final_awakening"] = _local_text(float(end), float(offset))
        for column in table.columns:
            if column.startswith("p_") and column != "p_sleep":
                stage = table[column].to_numpy()[bed:final]
                figures[f"{column[2:]}_min"] = float(np.nansum(stage)) * EPOCH_MIN
    figures["naps"] = len(night.naps)
    figures["nap_sleep_min"] = sum(p.sleep_min for p in night.naps)
    figures["sleep_in_day_min"] = float(asleep[in_day].sum()) * EPOCH_MIN
    figures["non_wear_min"] = float(table["non_wear"].to_numpy()[in_day].sum()) * EPOCH_MIN
    figures["hr_coverage_pct"] = (
        100.0 * float((table["hr_samples"].to_numpy()[in_day] > 0).mean())
        if in_day.any()
        else math.nan
    )
    motion = table["motion_coverage"].to_numpy()[in_day]
    figures["motion_coverage_pct"] = (
        100.0 * float(np.mean(motion)) if len(motion) and np.isfinite(motion).all() else math.nan
    )
    for name, ref in (("apple", apple), ("psg", psg)):
        day_ref = np.where(in_day, ref, -1).astype(np.int8)
        if (day_ref >= 0).any():
            covered = day_ref >= 0
            figures[f"{name}_kappa"] = kappa(asleep, day_ref)
            figures[f"{name}_asleep_min"] = float((day_ref == 1).sum()) * EPOCH_MIN
            figures[f"ours_asleep_min_vs_{name}"] = float(asleep[covered].sum()) * EPOCH_MIN
            figures[f"{name}_epochs"] = int(covered.sum())
    return figures


def _local_text(t: float, offset_min: float) -> str:
    stamp = datetime(1970, 1, 1) + timedelta(seconds=t + 60 * offset_min)
    sign = "-" if offset_min < 0 else "+"
    h, m = divmod(int(abs(offset_min)), 60)
    return f"{stamp:%Y-%m-%dT%H:%M:%S}{sign}{h:02d}:{m:02d}"
