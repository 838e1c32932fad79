"""One person's recording as ``sleepstream score`` sees it, whatever file it came from.

:class:`UserRecording` holds UTC times (float Unix seconds) and, as far as the source has them:
heart rate, raw z acceleration (g) or ready-made activity counts, step counts, Apple's sleep
analysis, PSG labels, and what is known of the local clock (an IANA zone, or the UTC offsets
the records carried). Three sources make one:

- raw CSV / Parquet files (:mod:`sleepstream.data.raw`): one file, or a folder of them (an
  acceleration file and a heart-rate file of the same person);
- an Apple Health export (``export.zip`` or ``export.xml``, :mod:`sleepstream.data.health`);
- one subject of the sleep-accel folder layout (:mod:`sleepstream.data.folder`). Its times are
  relative to the PSG start, so they are placed on a nominal clock (the PSG start at
  :data:`NOMINAL_PSG_START`, 2000-01-01 23:00 UTC) and every output says the clock is nominal.

:func:`sources` turns a path given on the command line into the recordings it holds (one per
sleep-accel subject), and :func:`load_source` reads one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from sleepstream.data.raw import SUFFIXES, RawFile, RawOptions, describe_span, read_raw_file
from sleepstream.records import SLEEP_WAKE, empty_stream

log = logging.getLogger(__name__)

NOMINAL_PSG_START = 946767600.0
"""Where a sleep-accel night's t = 0 (the PSG start) is placed: 2000-01-01 23:00 UTC."""
SLEEP_ACCEL_HISTORY_SECONDS = 3600.0
"""Data of a sleep-accel subject kept before the PSG start (the evaluation's headline: 1 h)."""
HEALTH_SUFFIXES = (".zip", ".xml")

APPLE_ASLEEP = ("core", "deep", "rem", "unspecified")
"""Apple sleep-analysis stages that mean asleep (``awake`` and ``in_bed`` do not)."""

_TIMED_STREAMS = (
    ("hr_times", "hr_bpm"),
    ("count_times", "counts"),
    ("step_starts", "step_ends", "steps"),
    ("psg_epochs", "psg_sleep"),
)
"""The :class:`UserRecording` streams as (times field, the value fields sampled at them)."""


@dataclass(frozen=True, eq=False)
class UserRecording:
    """A recording to score: every time in Unix seconds (UTC), every stream time-ordered.

    Attributes
    ----------
    name, source
        What to call it in outputs, and what it was read from (``"raw files"``, ...).
    inputs
        The files it was read from (their size and modification time mark finished outputs).
    hr_times, hr_bpm
        Heart-rate samples.
    accel_times, accel_z
        Raw z acceleration in g (float32), or ``None``.
    count_times, counts
        Ready-made 15 s activity counts (the sleep-accel layout's, which are the model file's own
        counts of its raw motion), used when there is no raw acceleration.
    step_starts, step_ends, steps
        Step counts over intervals (Health exports).
    apple_sleep
        Apple's sleep analysis: ``start``, ``end`` (Unix s), ``stage`` (``in_bed``, ``awake``,
        ``core``, ``deep``, ``rem``, ``unspecified``), or ``None``.
    psg_epochs, psg_sleep
        PSG sleep (1) / wake (0) / unscored (-1) per 30 s epoch (sleep-accel), or empty.
    timezone
        IANA zone of the local clock, or ``None``.
    offsets
        ``(n, 2)`` change points ``(Unix time, UTC offset in minutes)`` carried by the records,
        used when ``timezone`` is ``None``.
    nominal_clock
        True when the times are relative ones placed on a nominal date (sleep-accel).
    notes
        What a reader of the outputs should know (e.g. the clock is nominal).
    """

    name: str
    source: str
    inputs: tuple[Path, ...]
    hr_times: NDArray[np.float64]
    hr_bpm: NDArray[np.float64]
    accel_times: NDArray[np.float64] | None = None
    accel_z: NDArray[np.float32] | None = None
    count_times: NDArray[np.float64] = field(default_factory=empty_stream)
    counts: NDArray[np.float64] = field(default_factory=empty_stream)
    step_starts: NDArray[np.float64] = field(default_factory=empty_stream)
    step_ends: NDArray[np.float64] = field(default_factory=empty_stream)
    steps: NDArray[np.float64] = field(default_factory=empty_stream)
    apple_sleep: pd.DataFrame | None = None
    psg_epochs: NDArray[np.float64] = field(default_factory=empty_stream)
    psg_sleep: NDArray[np.int8] = field(default_factory=lambda: np.zeros(0, dtype=np.int8))
    timezone: str | None = None
    offsets: NDArray[np.float64] = field(default_factory=lambda: np.zeros((0, 2)))
    nominal_clock: bool = False
    notes: tuple[str, ...] = ()

    @property
    def has_accel(self) -> bool:
        return (
            self.accel_times is not None and self.accel_z is not None and len(self.accel_times) > 0
        )

    @property
    def has_motion(self) -> bool:
        """Raw acceleration or activity counts: what the shipped model's motion features need."""
        return self.has_accel or len(self.count_times) > 0

    @property
    def span(self) -> tuple[float, float]:
        """First and last sample time over every sensor stream."""
        streams = [self.hr_times, self.count_times, self.step_starts]
        if self.accel_times is not None:
            streams.append(self.accel_times)
        firsts = [float(s[0]) for s in streams if len(s)]
        lasts = [float(s[-1]) for s in streams if len(s)]
        if not firsts:
            raise ValueError(f"{self.name}: no heart rate, motion or steps to score")
        return min(firsts), max(lasts)

    def last_days(self, days: float) -> UserRecording:
        """The recording cut to its last ``days`` days (samples from ``last - days`` on).

        >>> t = np.arange(0.0, 10 * 86400.0, 3600.0)
        >>> r = UserRecording("r", "test", (), t, 60 + 0 * t).last_days(2)
        >>> r.span[1] - r.span[0] == 2 * 86400.0, len(r.notes)
        (True, 1)
        """
        from dataclasses import replace

        first = self.span[1] - days * 86400.0
        changes: dict[str, Any] = {}
        for times_name, *value_names in _TIMED_STREAMS:
            keep = getattr(self, times_name) >= first
            for name in (times_name, *value_names):
                changes[name] = getattr(self, name)[keep]
        if self.accel_times is not None and self.accel_z is not None:
            at = int(np.searchsorted(self.accel_times, first))
            changes["accel_times"], changes["accel_z"] = self.accel_times[at:], self.accel_z[at:]
        if self.apple_sleep is not None:
            apple = self.apple_sleep
            changes["apple_sleep"] = apple[apple["end"] > first].reset_index(drop=True)
        notes = (*self.notes, f"only the last {days:g} days scored (--last-days)")
        return replace(self, **changes, notes=notes)

    def utc_offset_seconds(self, times: NDArray[np.float64]) -> NDArray[np.float64]:
        """The local clock's offset from UTC (s) at each time: from :attr:`timezone` (DST
        included), else from the records' offsets (each holds until the next), else 0 (UTC).

        Examples
        --------
        >>> r = UserRecording("r", "test", (), empty_stream(), empty_stream(), timezone="Europe/Berlin")
        >>> r.utc_offset_seconds(np.array([1774745970.0, 1774746000.0])).tolist()
        [3600.0, 7200.0]
        """
        t = np.asarray(times, dtype=np.float64)
        if self.timezone is not None:
            stamps = pd.to_datetime(t, unit="s", utc=True).tz_convert(self.timezone)
            naive = stamps.tz_localize(None)
            local = (naive - pd.Timestamp(0)) / pd.Timedelta(1, "s")
            return np.asarray(local, dtype=np.float64) - t
        if len(self.offsets):
            at = np.searchsorted(self.offsets[:, 0], t, side="right") - 1
            return 60.0 * self.offsets[np.maximum(at, 0), 1]
        return np.zeros(len(t))

    @property
    def clock_name(self) -> str:
        """How local times are told, for outputs."""
        if self.nominal_clock:
            return "nominal clock (relative times; PSG start placed at 23:00 UTC)"
        if self.timezone is not None:
            return self.timezone
        if len(self.offsets):
            return "UTC offsets of the records"
        return "UTC (no time zone known)"


# -- raw files -------------------------------------------------------------------------------


def from_raw_files(
    paths: Sequence[Path], options: RawOptions, name: str | None = None
) -> UserRecording:
    """One recording from raw files (acceleration and/or heart rate, any split over files).

    Raises ``ValueError`` when two files both hold acceleration, or nothing holds heart rate
    or acceleration.
    """
    files = [read_raw_file(Path(p), options) for p in paths]
    for raw in files:
        log.info("%s", describe_span(raw))
    accel = [f for f in files if f.accel_times is not None]
    if len(accel) > 1:
        raise ValueError(
            f"{accel[0].path} and {accel[1].path} both hold acceleration: give one recording's "
            "files per folder"
        )
    hr = [f for f in files if f.hr_times is not None and len(f.hr_times)]
    hr_times, hr_bpm = _merged_heart_rate(hr)
    offsets = sorted(o for f in files for o in f.offsets)
    notes = [
        f"{f.path.name}: times {f.time_format}"
        + (f", acceleration in {f.units}" if f.units else "")
        for f in files
    ]
    if not hr:
        notes.append("no heart rate: motion only")
    return UserRecording(
        name=name or (files[0].path.parent.name if len(files) > 1 else files[0].path.stem),
        source="raw files",
        inputs=tuple(f.path for f in files),
        hr_times=hr_times,
        hr_bpm=hr_bpm,
        accel_times=accel[0].accel_times if accel else None,
        accel_z=accel[0].accel_z if accel else None,
        timezone=options.timezone,
        offsets=np.asarray(offsets, dtype=np.float64).reshape(-1, 2),
        notes=tuple(notes),
    )


def _merged_heart_rate(files: Sequence[RawFile]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    if not files:
        return empty_stream(), empty_stream()
    times = np.concatenate([f.hr_times for f in files if f.hr_times is not None])
    bpm = np.concatenate([f.hr_bpm for f in files if f.hr_bpm is not None])
    order = np.argsort(times, kind="stable")
    times, bpm = times[order], bpm[order]
    keep = np.ones(len(times), dtype=bool)
    keep[1:] = times[1:] != times[:-1]
    return times[keep], bpm[keep]


# -- Apple Health ----------------------------------------------------------------------------


def _unix(column: pd.Series) -> NDArray[np.float64]:
    stamps = pd.DatetimeIndex(pd.to_datetime(column, utc=True))
    return np.asarray((stamps - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(1, "s"), dtype=np.float64)


def _offset_changes(
    times: NDArray[np.float64], minutes: NDArray[np.float64]
) -> NDArray[np.float64]:
    """``(time, offset)`` where the offset differs from the one before (time order)."""
    if not len(times):
        return np.zeros((0, 2))
    order = np.argsort(times, kind="stable")
    times, minutes = times[order], minutes[order]
    change = np.ones(len(times), dtype=bool)
    change[1:] = minutes[1:] != minutes[:-1]
    return np.column_stack([times[change], minutes[change]])


def from_health_export(path: Path, timezone: str | None = None) -> UserRecording:
    """One recording from an Apple Health export (zip or xml): the watch's heart rate, steps,
    Apple's sleep analysis and the records' UTC offsets (:mod:`sleepstream.data.health`)."""
    try:
        from sleepstream.data.health import read_health_export
    except ImportError:
        raise RuntimeError(
            f"{path}: reading Apple Health exports needs sleepstream.data.health, which this "
            "installation does not have yet"
        ) from None
    export = read_health_export(path)
    hr = export.heart_rate.sort_values("time", kind="stable")
    hr_times = _unix(hr["time"])
    steps = export.steps.sort_values("start", kind="stable")
    sleep = export.sleep
    apple = None
    if len(sleep):
        apple = pd.DataFrame(
            {
                "start": _unix(sleep["start"]),
                "end": _unix(sleep["end"]),
                "stage": sleep["stage"].astype(str),
            }
        ).sort_values("start", kind="stable", ignore_index=True)
    offsets = _offset_changes(hr_times, hr["utc_offset_min"].to_numpy(dtype=np.float64))
    return UserRecording(
        name=Path(path).stem,
        source="Apple Health export",
        inputs=(Path(path),),
        hr_times=hr_times,
        hr_bpm=hr["bpm"].to_numpy(dtype=np.float64),
        step_starts=_unix(steps["start"]),
        step_ends=_unix(steps["end"]),
        steps=steps["steps"].to_numpy(dtype=np.float64),
        apple_sleep=apple,
        timezone=timezone,
        offsets=offsets,
        notes=("heart rate from the Health export: sparse, no raw motion",),
    )


# -- the sleep-accel layout ------------------------------------------------------------------


def from_sleep_accel(folder: Path, subject: str) -> UserRecording:
    """One subject of a sleep-accel folder, from 1 h before the PSG start, on the nominal clock.

    Motion is the folder's counts (computed from its raw motion by the model file's own counts
    step when ``motion/`` is present, :mod:`sleepstream.data.folder`), so nothing is parsed twice.
    """
    from sleepstream.data.folder import load_recording, subject_files

    night = load_recording(folder, subject).switched_on_before(SLEEP_ACCEL_HISTORY_SECONDS)
    shift = NOMINAL_PSG_START
    labels = night.labels(SLEEP_WAKE)
    return UserRecording(
        name=f"sleep-accel_{subject}",
        source="sleep-accel folder",
        inputs=tuple(sorted(subject_files(folder, subject).values())),
        hr_times=night.hr_times + shift,
        hr_bpm=night.hr_bpm,
        count_times=night.count_times + shift,
        counts=night.counts,
        psg_epochs=night.epoch_times + shift,
        psg_sleep=labels.astype(np.int8),
        timezone="UTC",
        nominal_clock=True,
        notes=(
            "sleep-accel times are relative to the PSG start: clock times are nominal "
            "(PSG start placed at 2000-01-01 23:00 UTC)",
            f"motion: the folder's activity counts ({night.count_source})",
        ),
    )


# -- what a path holds -----------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """One recording to score: its name, kind (``raw``, ``health``, ``sleep-accel``) and
    files (for sleep-accel: the folder and the subject)."""

    name: str
    kind: str
    paths: tuple[Path, ...]
    subject: str | None = None


def sources(path: Path, subjects: Sequence[str] = ()) -> list[Source]:
    """The recordings ``path`` holds: a sleep-accel folder (every subject, or ``subjects``),
    a Health export, a folder of raw files (one recording), or one raw file.

    Raises ``FileNotFoundError`` for a missing path, ``ValueError`` for a file or folder that is
    none of these, naming what it holds.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found")
    if path.is_dir() and (path / "labels").is_dir():
        from sleepstream.data.folder import subject_ids

        known = subject_ids(path)
        missing = [s for s in subjects if s not in known]
        if missing:
            raise ValueError(f"{path}: no subject {missing}; the folder has {known}")
        return [Source(f"sleep-accel_{s}", "sleep-accel", (path,), s) for s in (subjects or known)]
    if path.is_file() and path.suffix.lower() in HEALTH_SUFFIXES:
        return [Source(path.stem, "health", (path,))]
    if path.is_file() and path.suffix.lower() in SUFFIXES:
        return [Source(path.stem, "raw", (path,))]
    if path.is_dir():
        raw = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
        if raw:
            return [Source(path.name, "raw", tuple(raw))]
        found = sorted(p.name for p in path.iterdir())[:10]
        raise ValueError(
            f"{path}: a folder without raw recordings ({', '.join(SUFFIXES)}) or a sleep-accel "
            f"layout (labels/); found {found}"
        )
    raise ValueError(
        f"{path}: not a raw recording ({', '.join(SUFFIXES)}), a Health export (.zip, .xml), or "
        "a folder of either"
    )


def load_source(source: Source, options: RawOptions) -> UserRecording:
    """Read the recording ``source`` names."""
    if source.kind == "sleep-accel":
        assert source.subject is not None
        return from_sleep_accel(source.paths[0], source.subject)
    if source.kind == "health":
        return from_health_export(source.paths[0], options.timezone)
    return from_raw_files(source.paths, options, source.name)


def epoch_grid(first: float, last: float) -> NDArray[np.float64]:
    """Starts of the 30 s wall-clock epochs from the one holding ``first`` to the one holding
    ``last`` (whole multiples of 30 s of Unix time).

    >>> epoch_grid(95.0, 130.0).tolist()
    [90.0, 120.0]
    """
    from sleepstream.data.times import wall_clock_epochs

    return wall_clock_epochs(first, last)


__all__ = [
    "APPLE_ASLEEP",
    "NOMINAL_PSG_START",
    "Source",
    "UserRecording",
    "epoch_grid",
    "from_health_export",
    "from_raw_files",
    "from_sleep_accel",
    "load_source",
    "sources",
]
