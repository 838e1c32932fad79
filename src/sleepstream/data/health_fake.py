"""Realistic Health app exports, generated: for the tests and benchmarks of the export reader.

:func:`write_export` writes an ``export.xml`` the way iOS 16+ does, streamed to disk a day at a
time (a 1 GB file in well under a minute), with what makes real exports hard to read:

- the internal DTD with the unterminated ``ATTLIST`` declarations of HealthKit Export Version 12
  (iOS 16), on which every XML parser stops, and a repeated ``ATTLIST``;
- ``ExportDate``, ``Me``, records of many types with ``MetadataEntry`` children, heart-rate
  variability records with ``HeartRateVariabilityMetadataList``, ``Workout`` elements with
  events, statistics and a route, blood-pressure ``Correlation`` elements whose ``Record``
  children are also written top-level;
- an Apple Watch, an older name of the same watch, an iPhone, a chest strap app and a
  blood-pressure cuff app as sources; heart-rate samples repeated by the watch itself and by its
  older name; iPhone step records overlapping the watch's, and iPhone-only steps while the watch
  charges;
- a daylight-saving night (America/Los_Angeles, 2024-03-10) and travel through time zones
  (Los Angeles, Berlin, Tokyo), each date written with the offset of its place and season;
- stray control characters (``\\x0b``) in attribute values, some in records the reader keeps.

It returns the ground truth of the records of the three kinds the reader keeps, each with
whether a correct reader keeps it under the default ranking (known by construction, not by
re-running the reader's rules). :func:`zip_export` packs a file as the Health app does and
:func:`cut_file` truncates one.

Examples
--------
>>> import tempfile
>>> from pathlib import Path
>>> with tempfile.TemporaryDirectory() as folder:
...     truth = write_export(Path(folder) / "export.xml", days=2, seed=3)
...     head = (Path(folder) / "export.xml").read_bytes()[:80]
>>> sorted(set(truth.records["kind"]))
['heart_rate', 'sleep', 'steps']
>>> head.split(b"\\n")[:2]
[b'<?xml version="1.0" encoding="UTF-8"?>', b'<!DOCTYPE HealthData [']
"""

from __future__ import annotations

import itertools
import zipfile
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
from numpy.typing import NDArray

__all__ = ["ExportTruth", "cut_file", "write_export", "zip_export"]

OWNER = "Jane"
WATCH = f"{OWNER}\u2019s Apple Watch"  # the typographic apostrophe, as iOS writes it
OLD_WATCH = "Apple Watch"  # the same watch under the name it had before a re-pairing
PHONE = f"{OWNER}\u2019s iPhone"
STRAP = "Polar Flow"
CUFF = "Health Mate"

_WATCH_DEVICE = (
    "&lt;&lt;HKDevice: 0x2813c6e90&gt;, name:Apple Watch, manufacturer:Apple Inc., "
    "model:Watch, hardware:Watch6,2, software:10.3&gt;"
)
_PHONE_DEVICE = (
    "&lt;&lt;HKDevice: 0x2813c7a20&gt;, name:iPhone, manufacturer:Apple Inc., model:iPhone, "
    "hardware:iPhone15,2, software:17.3&gt;"
)
_STRAP_DEVICE = (
    "&lt;&lt;HKDevice: 0x2813c4b10&gt;, name:Polar H10, manufacturer:Polar Electro Oy, "
    "model:H10, hardware:1.0, software:3.0.56&gt;"
)
_CUFF_DEVICE = (
    "&lt;&lt;HKDevice: 0x2813c5d40&gt;, name:BPM Connect, manufacturer:Withings, "
    "model:BPM Connect, hardware:1, software:1.2&gt;"
)


@dataclass(frozen=True)
class _Source:
    """What writes a record: the app's name, its version, and its device (``None``: no
    ``device`` attribute)."""

    name: str
    version: str
    device: str | None


_FROM_WATCH = _Source(WATCH, "10.3", _WATCH_DEVICE)
_FROM_OLD_WATCH = _Source(OLD_WATCH, "10.2", _WATCH_DEVICE)
_FROM_PHONE = _Source(PHONE, "17.3", _PHONE_DEVICE)
_FROM_PHONE_APP = _Source(PHONE, "17.3", None)  # the in-bed interval names no device
_FROM_STRAP = _Source(STRAP, "6.9.0", _STRAP_DEVICE)
_FROM_CUFF = _Source(CUFF, "6.3.1", _CUFF_DEVICE)

ITINERARY = (("America/Los_Angeles", 5), ("Europe/Berlin", 4), ("Asia/Tokyo", 3))
"""Where the owner is, in turn (zone, days); it repeats for longer exports."""

FIRST_DAY = date(2024, 3, 8)
"""The first day: the night from the 9th to the 10th is Los Angeles' spring-forward night."""

CONTROL_EVERY = 3000
"""About one attribute value in this many carries a stray ``\\x0b``."""

_DTD = (resources.files("sleepstream.data") / "health_export.dtd").read_text(encoding="utf-8")
"""The internal DTD of HealthKit Export Version 12, as iOS 16 writes it: the unterminated ATTLIST
of VisionPrescription and the first one of RightEye, and the second ATTLIST of RightEye, stand for
the declarations iOS 16 gets wrong (parsers fail on line 156)."""


@dataclass(frozen=True)
class ExportTruth:
    """What :func:`write_export` wrote.

    Attributes
    ----------
    records
        One row per top-level record of the kinds the reader keeps (none for the copies inside
        correlations): ``kind`` (``heart_rate``, ``steps``, ``sleep``), ``source``, ``start``,
        ``end`` (UTC, ``datetime64[ns, UTC]``), ``value`` (bpm, steps, or a sleep stage name),
        ``utc_offset_min`` (of ``startDate``), ``kept`` (whether a correct reader keeps it with
        the default source ranking), ``line`` (1-based line of the record's start tag).
        Empty when ``truth=False``.
    size
        Bytes written.
    days
        Days generated.
    controls
        Stray control characters written.
    """

    records: pd.DataFrame
    size: int
    days: int
    controls: int


class _Writer:
    """Writes records as text, counting bytes and lines, keeping the truth if asked."""

    def __init__(self, handle: IO[bytes], rng: np.random.Generator, truth: bool) -> None:
        self.handle = handle
        self.rng = rng
        self.truth = truth
        self.size = 0
        self.lines = 1
        self.controls = 0
        self.rows: list[tuple[Any, ...]] = []
        self.parts: list[str] = []
        self.part_lines = 0

    def text(self, text: str) -> None:
        self.parts.append(text)

    def flush(self) -> None:
        data = "".join(self.parts).encode("utf-8")
        self.handle.write(data)
        self.size += len(data)
        self.lines += data.count(b"\n")
        self.parts = []

    def current_line(self) -> int:
        """The line the next text starts on (the held text flushed first, to count it)."""
        self.flush()
        return self.lines

    def maybe_control(self, text: str) -> str:
        """``text``, now and then (and the first time) with a stray control character."""
        if not self.controls or self.rng.random() < 1 / CONTROL_EVERY:
            self.controls += 1
            return text + "\x0b"
        return text


def _dates(utc: NDArray[np.int64], zone: ZoneInfo) -> list[str]:
    """Health-style dates (``2024-03-10 01:59:00 -0800``) of Unix seconds, local to ``zone``."""
    if not len(utc):
        return []
    hours = utc // 3600
    unique = np.unique(hours)
    offsets = np.array([_utc_offset(int(h) * 3600, zone) for h in unique.tolist()], dtype=np.int64)
    offset = offsets[np.searchsorted(unique, hours)]
    local = np.datetime_as_string((utc + offset).astype("datetime64[s]"), unit="s")
    marks = {
        o: f"{'-' if o < 0 else '+'}{abs(o) // 3600:02d}{abs(o) % 3600 // 60:02d}"
        for o in offsets.tolist()
    }
    return [
        f"{s[:10]} {s[11:]} {marks[o]}"
        for s, o in zip(local.tolist(), offset.tolist(), strict=True)
    ]


def _utc_offset(t: int, zone: ZoneInfo) -> int:
    """Seconds ``zone`` is ahead of UTC at Unix time ``t``."""
    shift = datetime.fromtimestamp(t, UTC).astimezone(zone).utcoffset()
    return 0 if shift is None else int(shift.total_seconds())


def _offset_minutes(text: str) -> int:
    sign = -1 if text[20] == "-" else 1
    return sign * (int(text[21:23]) * 60 + int(text[23:25]))


@dataclass(frozen=True)
class _Day:
    """One day's plan in local time: the night after it, a workout, walks, the watch off."""

    index: int
    zone: ZoneInfo
    day: date

    def at(self, hour: float, day_offset: int = 0) -> int:
        """Unix seconds of local ``hour`` on this day (+ ``day_offset`` days)."""
        local = datetime.combine(self.day + timedelta(days=day_offset), datetime.min.time())
        local += timedelta(hours=hour)
        return int(local.replace(tzinfo=self.zone).timestamp())


def write_export(
    path: str | Path,
    *,
    days: int = 3,
    target_bytes: int | None = None,
    seed: int = 0,
    truth: bool = True,
) -> ExportTruth:
    """Write a realistic ``export.xml`` (see the module docstring) and return what it holds.

    Parameters
    ----------
    path
        The file to write.
    days
        Days of data, from :data:`FIRST_DAY`; ignored when ``target_bytes`` is given.
    target_bytes
        Write whole days until the file is at least this large (about 1 MB a day).
    seed
        Seed of everything random.
    truth
        Keep the ground truth of the records read by the reader (off for big files).
    """
    path = Path(path)
    rng = np.random.default_rng(seed)
    with path.open("wb", buffering=2**22) as handle:
        out = _Writer(handle, rng, truth)
        export_day = FIRST_DAY + timedelta(days=max(days, 1) + 1)
        out.text('<?xml version="1.0" encoding="UTF-8"?>\n')
        out.text(_DTD)
        out.text('<HealthData locale="en_US">\n')
        out.text(f' <ExportDate value="{export_day:%Y-%m-%d} 09:12:44 -0700"/>\n')
        out.text(
            ' <Me HKCharacteristicTypeIdentifierDateOfBirth="1988-05-14" '
            'HKCharacteristicTypeIdentifierBiologicalSex="HKBiologicalSexFemale" '
            'HKCharacteristicTypeIdentifierBloodType="HKBloodTypeNotSet" '
            'HKCharacteristicTypeIdentifierFitzpatrickSkinType="HKFitzpatrickSkinTypeNotSet" '
            'HKCharacteristicTypeIdentifierCardioFitnessMedicationsUse="None"/>\n'
        )
        written = 0
        while (written < days) if target_bytes is None else (out.size < target_bytes):
            _write_day(out, _plan(written), np.random.default_rng([seed, written]))
            out.flush()
            written += 1
        out.text("</HealthData>\n")
        out.flush()
    columns = ["kind", "source", "start", "end", "value", "utc_offset_min", "kept", "line"]
    records = pd.DataFrame(out.rows, columns=columns)
    for name in ("start", "end"):
        records[name] = pd.to_datetime(records[name], unit="s", utc=True).astype(
            "datetime64[ns, UTC]"
        )
    return ExportTruth(records, out.size, written, out.controls)


def _plan(index: int) -> _Day:
    cycle = sum(n for _, n in ITINERARY)
    within = index % cycle
    for zone, n in ITINERARY:
        if within < n:
            return _Day(index, ZoneInfo(zone), FIRST_DAY + timedelta(days=index))
        within -= n
    raise AssertionError("unreachable")


def _write_day(out: _Writer, day: _Day, rng: np.random.Generator) -> None:
    """A day's records, grouped by type as the Health app groups them."""
    sleep_onset, wake = day.at(23.3), day.at(6.8, 1)
    workout = (day.at(18.0), day.at(19.0)) if day.index % 2 == 0 else None
    # Until the next day's 07:30, which comes sooner after a flight east.
    span = (day.at(7.5), min(day.at(7.5, 1), _plan(day.index + 1).at(7.5)))
    _heart_rate(out, day, rng, span, (sleep_onset, wake), workout)
    _steps(out, day, rng)
    _sleep(out, day, rng, sleep_onset, wake)
    _bulk(out, day, rng)
    if workout is not None:
        _workout(out, day, rng, *workout)
    _blood_pressure(out, day, rng)


def _record(
    out: _Writer,
    type_: str,
    source: _Source,
    unit: str | None,
    start: str,
    end: str,
    value: str,
    children: str = "",
) -> None:
    device_attr = f' device="{source.device}"' if source.device else ""
    unit_attr = f' unit="{unit}"' if unit else ""
    version = out.maybe_control(source.version)
    head = (
        f' <Record type="{type_}" sourceName="{source.name}" sourceVersion="{version}"'
        f'{device_attr}{unit_attr} creationDate="{end}" startDate="{start}" endDate="{end}" value="{value}"'
    )
    out.text(f"{head}>\n{children} </Record>\n" if children else f"{head}/>\n")


def _quantity(
    out: _Writer,
    name: str,
    source: _Source,
    unit: str,
    start: str,
    end: str,
    value: str,
    children: str = "",
) -> None:
    """A ``HKQuantityTypeIdentifier{name}`` record."""
    _record(out, f"HKQuantityTypeIdentifier{name}", source, unit, start, end, value, children)


def _truth(
    out: _Writer,
    kind: str,
    source: str,
    start: int,
    end: int,
    value: object,
    start_text: str,
    kept: bool,
) -> None:
    if out.truth:
        out.rows.append(
            (kind, source, start, end, value, _offset_minutes(start_text), kept, out.current_line())
        )


def _metadata(key: str, value: str) -> str:
    return f'  <MetadataEntry key="{key}" value="{value}"/>\n'


def _heart_rate(
    out: _Writer,
    day: _Day,
    rng: np.random.Generator,
    span: tuple[int, int],
    night: tuple[int, int],
    workout: tuple[int, int] | None,
) -> None:
    """The watch's samples from 07:30 to 07:30 the next day: every few minutes, every 5 s in a
    workout; repeats by the watch itself and by its older name; the strap in the workout."""
    begin, stop = span
    gaps = rng.uniform(240, 480, size=int((stop - begin) / 200))
    times = (begin + np.cumsum(gaps)).astype(np.int64)
    times = times[times < stop]
    asleep = (times >= night[0]) & (times < night[1])
    extra = [times]
    if workout is not None:
        extra.append(np.arange(workout[0], workout[1], 5, dtype=np.int64))
        times = times[(times < workout[0]) | (times >= workout[1])]
        extra[0] = times
    times = np.sort(np.concatenate(extra))
    asleep = (times >= night[0]) & (times < night[1])
    exercising = (
        np.zeros(len(times), dtype=bool)
        if workout is None
        else (times >= workout[0]) & (times < workout[1])
    )
    bpm = np.where(asleep, 55 + rng.normal(0, 4, len(times)), 70 + rng.normal(0, 8, len(times)))
    bpm = np.round(np.where(exercising, 140 + rng.normal(0, 12, len(times)), bpm))
    texts = _dates(times, day.zone)
    context = np.where(exercising, "2", np.where(asleep, "0", "1"))
    repeat = rng.random(len(times)) < 0.02
    renamed = rng.random(len(times)) < 0.1
    for t, text, value, motion, again, old in zip(
        times.tolist(),
        texts,
        bpm.tolist(),
        context.tolist(),
        repeat.tolist(),
        renamed.tolist(),
        strict=True,
    ):
        children = _metadata("HKMetadataKeyHeartRateMotionContext", motion)
        sources = [_FROM_WATCH] * (2 if again else 1) + ([_FROM_OLD_WATCH] if old else [])
        for copy, source in enumerate(sources):
            _heart_rate_record(out, source, t, value, text, copy == 0, children)
    if workout is not None:
        strap = np.arange(workout[0] + 2, workout[1], 5, dtype=np.int64)
        for t, text in zip(strap.tolist(), _dates(strap, day.zone), strict=True):
            value = float(round(140 + rng.normal(0, 12)))
            _heart_rate_record(out, _FROM_STRAP, t, value, text, False)


def _heart_rate_record(
    out: _Writer, source: _Source, t: int, bpm: float, text: str, kept: bool, children: str = ""
) -> None:
    _truth(out, "heart_rate", source.name, t, t, bpm, text, kept)
    _quantity(out, "HeartRate", source, "count/min", text, text, f"{bpm:g}", children)


def _steps(out: _Writer, day: _Day, rng: np.random.Generator) -> None:
    """Walks: the watch writes each as records of a few minutes, the iPhone as records with other
    boundaries over the same time (dropped); 07:00-07:45 the watch charges (iPhone only, kept)."""
    watch_rows: list[tuple[int, int, float, bool]] = []
    phone_rows: list[tuple[int, int, float, bool]] = []
    for hour in (8.5, 12.2, 15.0, 17.4, 20.1):
        begin = day.at(hour + rng.uniform(0, 0.3))
        edges = begin + np.cumsum(np.concatenate([[0], rng.integers(120, 600, size=4)]))
        for a, b in zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True):
            watch_rows.append((a, b, float(rng.integers(80, 900)), True))
        cut = int(rng.integers(edges[0] + 30, edges[-1] - 30))
        phone_rows.append((int(edges[0]) + 20, cut, float(rng.integers(50, 800)), False))
        phone_rows.append((cut, int(edges[-1]) + 40, float(rng.integers(50, 800)), False))
    charging = day.at(7.0)
    for k in range(3):
        phone_rows.append(
            (charging + 900 * k, charging + 900 * k + 600, float(rng.integers(20, 400)), True)
        )
    repeated = watch_rows[int(rng.integers(len(watch_rows)))]
    rows = [(_FROM_WATCH, r) for r in watch_rows] + [(_FROM_WATCH, (*repeated[:3], False))]
    rows += [(_FROM_PHONE, r) for r in phone_rows]
    starts = _dates(np.array([r[1][0] for r in rows], dtype=np.int64), day.zone)
    ends = _dates(np.array([r[1][1] for r in rows], dtype=np.int64), day.zone)
    for (source, (a, b, value, kept)), start, end in zip(rows, starts, ends, strict=True):
        _truth(out, "steps", source.name, a, b, value, start, kept)
        _quantity(out, "StepCount", source, "count", start, end, f"{value:g}")


_CYCLE = (("core", 25, 40), ("deep", 15, 35), ("core", 15, 30), ("rem", 15, 30), ("awake", 1, 5))
_STAGE_VALUES = {
    "in_bed": "HKCategoryValueSleepAnalysisInBed",
    "awake": "HKCategoryValueSleepAnalysisAwake",
    "core": "HKCategoryValueSleepAnalysisAsleepCore",
    "deep": "HKCategoryValueSleepAnalysisAsleepDeep",
    "rem": "HKCategoryValueSleepAnalysisAsleepREM",
}


def _sleep(out: _Writer, day: _Day, rng: np.random.Generator, onset: int, wake: int) -> None:
    """The iPhone's in-bed interval (written twice: the repeat is dropped), the watch's stages
    from onset to waking, and on odd days the older "Asleep" value from the watch's old name
    ("Asleep" or "AsleepUnspecified")."""
    segments: list[tuple[int, int, str]] = []
    t = onset
    while t < wake:
        for stage, low, high in _CYCLE:
            length = int(rng.uniform(low, high) * 60)
            segments.append((t, min(t + length, wake), stage))
            t += length
            if t >= wake:
                break
    bed = (day.at(23.0), day.at(7.0, 1))
    rows: list[tuple[_Source, int, int, str, bool]] = [
        (_FROM_PHONE_APP, bed[0], bed[1], "in_bed", True),
        (_FROM_PHONE_APP, bed[0], bed[1], "in_bed", False),
    ]
    rows += [(_FROM_WATCH, a, b, s, True) for a, b, s in segments]
    if day.index % 2:
        rows.append((_FROM_OLD_WATCH, onset, wake, "unspecified", True))
    old_value = "Asleep" if day.index % 4 == 1 else "AsleepUnspecified"  # before / since iOS 16
    for source, a, b, stage, kept in rows:
        start, end = _dates(np.array([a, b], dtype=np.int64), day.zone)
        value = _STAGE_VALUES.get(stage, f"HKCategoryValueSleepAnalysis{old_value}")
        _truth(out, "sleep", source.name, a, b, stage, start, kept)
        children = _metadata("HKTimeZone", day.zone.key)
        _record(
            out, "HKCategoryTypeIdentifierSleepAnalysis", source, None, start, end, value, children
        )


def _bulk(out: _Writer, day: _Day, rng: np.random.Generator) -> None:
    """The records not read, in the amounts a watch writes them (most of a real export)."""
    begin = day.at(7.0)
    minutes = begin + 60 * np.arange(0, 16 * 60, 1, dtype=np.int64) + rng.integers(0, 20, 16 * 60)
    texts = _dates(minutes, day.zone)
    for start, end in itertools.pairwise(texts):
        energy = f"{rng.uniform(0.05, 3):.3f}"
        _quantity(out, "ActiveEnergyBurned", _FROM_WATCH, "kcal", start, end, energy)
    quarters = day.at(0.0) + 900 * np.arange(96, dtype=np.int64)
    texts = _dates(quarters, day.zone)
    for start, end in itertools.pairwise(texts):
        energy = f"{rng.uniform(14, 18):.3f}"
        _quantity(out, "BasalEnergyBurned", _FROM_WATCH, "kcal", start, end, energy)
        distance = f"{rng.uniform(0, 0.4):.5f}"
        _quantity(out, "DistanceWalkingRunning", _FROM_PHONE, "km", start, end, distance)
    for hour in (2.0, 9.5, 14.0, 21.0):
        t = day.at(hour)
        start, end = _dates(np.array([t, t + 60], dtype=np.int64), day.zone)
        beats = "".join(
            f'    <InstantaneousBeatsPerMinute bpm="{int(60 + rng.normal(0, 5))}" time="{h}:{m:02d}:{s:05.2f} AM"/>\n'
            for h, m, s in ((1, 2, 3.5), (1, 2, 4.4), (1, 2, 5.3))
        )
        children = (
            f"  <HeartRateVariabilityMetadataList>\n{beats}  </HeartRateVariabilityMetadataList>\n"
        )
        sdnn = f"{rng.uniform(20, 80):.4f}"
        _quantity(out, "HeartRateVariabilitySDNN", _FROM_WATCH, "ms", start, end, sdnn, children)
    for hour in np.arange(0.0, 6.5, 0.5):
        start, end = _dates(np.array([day.at(float(hour), 1)] * 2, dtype=np.int64), day.zone)
        rate = f"{rng.uniform(12, 17):.1f}"
        _quantity(out, "RespiratoryRate", _FROM_WATCH, "count/min", start, end, rate)
        saturation = f"{rng.uniform(0.94, 0.99):.2f}"
        pressure = _metadata("HKMetadataKeyBarometricPressure", out.maybe_control("101.3 kPa"))
        _quantity(out, "OxygenSaturation", _FROM_WATCH, "%", start, end, saturation, pressure)


def _workout(out: _Writer, day: _Day, rng: np.random.Generator, begin: int, end: int) -> None:
    start, stop = _dates(np.array([begin, end], dtype=np.int64), day.zone)
    children = (
        _metadata("HKIndoorWorkout", "0")
        + _metadata("HKTimeZone", day.zone.key)
        + _metadata("HKAverageMETs", "9.8 kcal/hr·kg")
        + f'  <WorkoutEvent type="HKWorkoutEventTypeSegment" date="{start}" duration="30" durationUnit="min"/>\n'
        + f'  <WorkoutStatistics type="HKQuantityTypeIdentifierActiveEnergyBurned" startDate="{start}" endDate="{stop}" sum="{rng.uniform(400, 700):.2f}" unit="kcal"/>\n'
        + f'  <WorkoutStatistics type="HKQuantityTypeIdentifierHeartRate" startDate="{start}" endDate="{stop}" average="140" minimum="98" maximum="171" unit="count/min"/>\n'
        + f'  <WorkoutRoute sourceName="{WATCH}" sourceVersion="10.3" creationDate="{stop}" startDate="{start}" endDate="{stop}">\n'
        + _metadata("HKMetadataKeySyncVersion", "2")
        + f'   <FileReference path="/workout-routes/route_{day.day:%Y-%m-%d}_6.12pm.gpx"/>\n'
        + "  </WorkoutRoute>\n"
    )
    out.text(
        f' <Workout workoutActivityType="HKWorkoutActivityTypeRunning" duration="60" durationUnit="min" '
        f'sourceName="{WATCH}" sourceVersion="10.3" device="{_WATCH_DEVICE}" creationDate="{stop}" '
        f'startDate="{start}" endDate="{stop}">\n{children} </Workout>\n'
    )


def _blood_pressure(out: _Writer, day: _Day, rng: np.random.Generator) -> None:
    """A cuff's morning reading: a Correlation of systolic, diastolic and the pulse, each also
    written top-level (so a reader counting nested records counts them twice)."""
    t = day.at(7.2)
    text = _dates(np.array([t], dtype=np.int64), day.zone)[0]
    pulse = float(round(64 + rng.normal(0, 4)))
    inner = [
        ("HKQuantityTypeIdentifierBloodPressureSystolic", "mmHg", f"{int(rng.normal(118, 6))}"),
        ("HKQuantityTypeIdentifierBloodPressureDiastolic", "mmHg", f"{int(rng.normal(76, 5))}"),
        ("HKQuantityTypeIdentifierHeartRate", "count/min", f"{pulse:g}"),
    ]
    out.text(
        f' <Correlation type="HKCorrelationTypeIdentifierBloodPressure" sourceName="{CUFF}" '
        f'sourceVersion="6.3.1" device="{_CUFF_DEVICE}" creationDate="{text}" startDate="{text}" endDate="{text}">\n'
        + _metadata("HKWasUserEntered", "0")
    )
    for type_, unit, value in inner:
        _record(out, type_, _FROM_CUFF, unit, text, text, value)
    out.text(" </Correlation>\n")
    for type_, unit, value in inner:
        if type_ == "HKQuantityTypeIdentifierHeartRate":
            _truth(out, "heart_rate", CUFF, t, t, pulse, text, False)
        _record(out, type_, _FROM_CUFF, unit, text, text, value)


def zip_export(xml: str | Path, archive: str | Path) -> Path:
    """Pack ``xml`` as the Health app's ``export.zip``: ``apple_health_export/export.xml``, after
    an ``export_cda.xml`` and a workout route (so the reader must find the right member)."""
    archive = Path(archive)
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as packed:
        packed.writestr(
            "apple_health_export/export_cda.xml", '<?xml version="1.0"?>\n<ClinicalDocument/>\n'
        )
        packed.writestr(
            "apple_health_export/workout-routes/route_2024-03-08_6.12pm.gpx", "<gpx/>\n" * 2000
        )
        packed.write(xml, "apple_health_export/export.xml")
    return archive


def cut_file(source: str | Path, n_bytes: int, dest: str | Path) -> Path:
    """Copy the first ``n_bytes`` of ``source`` to ``dest`` (an interrupted copy or download)."""
    dest = Path(dest)
    with Path(source).open("rb") as whole, dest.open("wb") as cut:
        left = n_bytes
        while left > 0 and (chunk := whole.read(min(left, 2**22))):
            cut.write(chunk)
            left -= len(chunk)
    return dest
