"""Raw recordings a user logged from a watch: CSV or Parquet tables of acceleration or heart rate.

A file holds a time column and either x, y, z acceleration or beats per minute (or both).
Everything about it is detected, and anything that cannot be decided is refused with an error
that names the file, the column and the value:

- **Columns** by name, case-insensitively (:data:`TIME_NAMES`, :data:`AXIS_NAMES`,
  :data:`BPM_NAMES`); an error lists the columns found.
- **Times**: Unix seconds, milliseconds, microseconds or nanoseconds, told apart by magnitude
  (each unit's range covers the years 2000-2100, and the ranges do not overlap), or ISO-8601
  text. ISO-8601 times with a UTC offset are exact; times without one need a time zone
  (``--timezone``), and a local time the clocks skipped or repeated is refused (both via
  :mod:`sleepstream.data.times`). Numbers in none of the ranges (relative times, or a unit of
  their own) are refused unless ``--time-unit`` names the unit, and even then they must land in
  2000-2100: a recording split into days needs dates.
- **Acceleration units**: g or m/s^2 from the median magnitude of gravity in the first block
  (about 1 or about 9.8), or as given (``--units``). A magnitude near 0 (gravity removed) or
  between the two is refused.

Files are read block by block (:func:`pyarrow.parquet.ParquetFile.iter_batches`,
:func:`pyarrow.csv.open_csv`), so a week at 50 Hz (30 M rows) needs memory for the kept arrays
only: times as float64 Unix seconds and the z axis (the only one the counts use) as float32 g.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from sleepstream.data.parse import MAX_BPM, MIN_BPM
from sleepstream.data.times import (
    PER_SECOND,
    UNIT_NAMES,
    TimeFormat,
    TimeUnit,
    TimeValueError,
    seconds_from_iso,
    utc_text,
)
from sleepstream.live.units import G

log = logging.getLogger(__name__)

AccelUnits = Literal["g", "m/s2"]
ACCEL_UNITS: tuple[AccelUnits, ...] = get_args(AccelUnits)
"""Units of acceleration files (``--units``)."""

TIME_NAMES = ("time", "timestamp", "datetime", "date_time", "ts", "t", "unix_time", "time_utc")
AXIS_NAMES = {
    axis: (axis, f"accel_{axis}", f"acc_{axis}", f"a{axis}", f"{axis}_g", f"acceleration_{axis}")
    for axis in "xyz"
}
BPM_NAMES = ("bpm", "heart_rate", "heartrate", "hr", "heart_rate_bpm", "pulse")
"""Accepted column names (compared case-insensitively, spaces read as underscores)."""

SUFFIXES = (".csv", ".parquet", ".pq")
"""File endings read as raw recordings."""

UNIX_RANGE = (946684800.0, 4102444800.0)
"""Unix seconds of 2000-01-01 and 2100-01-01 UTC: where a recording's times must fall."""
TIME_UNIT_ORDER: tuple[str, ...] = ("s", "ms", "us", "ns")

GRAVITY_RANGES: dict[AccelUnits, tuple[float, float]] = {"g": (0.7, 1.5), "m/s2": (7.0, 14.0)}
"""Median magnitudes taken as gravity in each unit; anything else is refused."""

BLOCK_ROWS = 1 << 18
CSV_BLOCK_BYTES = 32 << 20


class RawFileError(ValueError):
    """A raw recording cannot be read; the message names the file, column and value."""


@dataclass(frozen=True)
class RawOptions:
    """What the user said about their raw files (``None``: detect it).

    Examples
    --------
    >>> RawOptions(units="m/s2", time_unit="ms").units
    'm/s2'
    """

    units: AccelUnits | None = None
    time_unit: TimeUnit | None = None
    timezone: str | None = None

    def __post_init__(self) -> None:
        if self.units is not None and self.units not in ACCEL_UNITS:
            raise ValueError(f"Unknown acceleration units {self.units!r}: expected g or m/s2")
        TimeFormat(self.time_unit, self.timezone)  # checks the unit and the zone's name


@dataclass(frozen=True)
class RawColumns:
    """The columns of one file used for each quantity (original spelling)."""

    time: str
    axes: tuple[str, str, str] | None
    bpm: str | None


@dataclass
class RawFile:
    """What one raw file holds, times as Unix seconds (float64), in time order.

    ``accel_z`` is the z axis in g (float32); ``offsets`` are ``(Unix time, UTC offset in
    minutes)`` pairs seen in ISO-8601 times that carry one; ``time_format`` and ``units`` say
    what was detected.
    """

    path: Path
    columns: RawColumns
    time_format: str
    accel_times: NDArray[np.float64] | None = None
    accel_z: NDArray[np.float32] | None = None
    units: str | None = None
    hr_times: NDArray[np.float64] | None = None
    hr_bpm: NDArray[np.float64] | None = None
    offsets: list[tuple[float, float]] = field(default_factory=list)


def _key(name: str) -> str:
    return name.strip().lower().replace(" ", "_").replace("-", "_")


def detect_columns(path: Path, names: list[str]) -> RawColumns:
    """The time, axis and heart-rate columns among ``names``.

    Raises :class:`RawFileError` naming the columns found when there is no time column, or
    neither x, y, z nor a heart-rate column, or two columns match one role.

    Examples
    --------
    >>> detect_columns(Path("a.csv"), ["Timestamp", "X", "Y", "Z"])
    RawColumns(time='Timestamp', axes=('X', 'Y', 'Z'), bpm=None)
    >>> detect_columns(Path("a.csv"), ["when", "bpm"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    sleepstream.data.raw.RawFileError: a.csv: no time column ... found ['when', 'bpm']
    """

    def find(role: str, accepted: tuple[str, ...]) -> str | None:
        matches = [n for n in names if _key(n) in accepted]
        if len(matches) > 1:
            raise RawFileError(
                f"{path}: columns {matches} could all be the {role}; keep one (found {names})"
            )
        return matches[0] if matches else None

    time = find("time", TIME_NAMES)
    if time is None:
        raise RawFileError(
            f"{path}: no time column (expected one named {', '.join(TIME_NAMES[:4])}, ... "
            f"in any case); found {names}"
        )
    found_axes = [find(f"{axis} axis", AXIS_NAMES[axis]) for axis in "xyz"]
    bpm = find("heart rate", BPM_NAMES)
    present = [a for a in found_axes if a is not None]
    if 0 < len(present) < 3:
        raise RawFileError(
            f"{path}: acceleration needs x, y and z columns; found only {present} among {names}"
        )
    axes = (found_axes[0], found_axes[1], found_axes[2]) if len(present) == 3 else None
    if axes is None and bpm is None:
        raise RawFileError(
            f"{path}: neither acceleration (x, y, z) nor heart-rate (bpm, heart_rate, hr) "
            f"columns; found {names}"
        )
    return RawColumns(time, axes, bpm)  # type: ignore[arg-type]


# -- times ---------------------------------------------------------------------------------


def time_unit_of(value: float) -> str | None:
    """The unit in which ``value`` is a time since 1970 between 2000 and 2100, if any.

    Examples
    --------
    >>> time_unit_of(1.7e9), time_unit_of(1.7e12), time_unit_of(5e10), time_unit_of(3600.0)
    ('s', 'ms', None, None)
    """
    for unit in TIME_UNIT_ORDER:
        seconds = value / PER_SECOND[unit]
        if UNIX_RANGE[0] <= seconds < UNIX_RANGE[1]:
            return unit
    return None


def _when(seconds: float) -> str:
    """``seconds`` since 1970 as a UTC time, when the calendar reaches it."""
    if 0 <= seconds < 253402300799.0:  # up to the year 9999
        return utc_text(seconds)
    return f"{seconds:.3g} s since 1970"


def _numeric_unit(path: Path, column: str, value: float, given: TimeUnit | None) -> str:
    if given is not None:
        if not UNIX_RANGE[0] <= value / PER_SECOND[given] < UNIX_RANGE[1]:
            raise RawFileError(
                f"{path}, column {column!r}, row 1: time {value:.17g} in {UNIT_NAMES[given]} is "
                f"{_when(value / PER_SECOND[given])}, not between 2000 and 2100; a recording "
                "split into days needs times since 1970"
            )
        return given
    unit = time_unit_of(value)
    if unit is None:
        raise RawFileError(
            f"{path}, column {column!r}, row 1: time {value:.17g} is not Unix seconds, "
            "milliseconds, microseconds or nanoseconds between 2000 and 2100; give the unit "
            "(--time-unit s|ms|us) if it is one, or ISO-8601 times (relative times cannot be "
            "split into days)"
        )
    return unit


_OFFSET = re.compile(r"(Z|[+-]\d{2}:?\d{2})\s*$", re.IGNORECASE)


def offset_minutes(text: str) -> float | None:
    """The UTC offset (minutes) at the end of an ISO-8601 time, if it has one.

    >>> offset_minutes("2026-03-29T03:00:00+02:00"), offset_minutes("2026-03-29T01:00:00")
    (120.0, None)
    """
    match = _OFFSET.search(text)
    if match is None:
        return None
    found = match.group(1)
    if found.upper() == "Z":
        return 0.0
    digits = found[1:].replace(":", "")
    minutes = 60.0 * int(digits[:2]) + int(digits[2:])
    return -minutes if found[0] == "-" else minutes


class _TimeReader:
    """Turns the time column of successive blocks into Unix seconds, checking every block
    against the format found in the first one."""

    def __init__(self, path: Path, column: str, options: RawOptions):
        self.path, self.column, self.options = path, column, options
        self.unit: str | None = None
        self.text: bool | None = None
        self.offsets: list[tuple[float, float]] = []

    @property
    def description(self) -> str:
        if self.text:
            return "ISO-8601" + (
                " with UTC offset" if self.offsets else f" in {self.options.timezone}"
            )
        return f"Unix {UNIT_NAMES.get(self.unit or 's', 'seconds')}"

    def seconds(self, values: pd.Series, first_row: int) -> NDArray[np.float64]:
        text = not pd.api.types.is_numeric_dtype(values)
        if self.text is None:
            self.text = text
        if self.text != text:
            raise RawFileError(
                f"{self.path}, column {self.column!r}, from row {first_row + 1}: times change "
                "between numbers and text"
            )
        if isinstance(values.dtype, pd.DatetimeTZDtype):  # a Parquet timestamp with a zone
            stamps = pd.DatetimeIndex(values).tz_convert("UTC")
            return np.asarray((stamps - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(1, "s"))
        if pd.api.types.is_datetime64_dtype(values):  # naive timestamps: local times as text
            values = pd.Series(pd.DatetimeIndex(values).strftime("%Y-%m-%dT%H:%M:%S.%f"))
        empty = values.isna().to_numpy()
        _refuse_first(empty, self.path, self.column, first_row, lambda at: "empty time")
        return (
            self._from_text(values, first_row)
            if self.text
            else self._from_numbers(values, first_row)
        )

    def _from_numbers(self, values: pd.Series, first_row: int) -> NDArray[np.float64]:
        numbers = values.to_numpy(dtype=np.float64)
        if self.unit is None:
            self.unit = _numeric_unit(
                self.path, self.column, float(numbers[0]), self.options.time_unit
            )
        unit = self.unit
        seconds = numbers / PER_SECOND[unit] if unit != "s" else numbers
        outside = ~((seconds >= UNIX_RANGE[0]) & (seconds < UNIX_RANGE[1]))
        _refuse_first(
            outside,
            self.path,
            self.column,
            first_row,
            lambda at: (
                f"time {numbers[at]:.17g} is not in {UNIT_NAMES[unit]} like the file's "
                f"first time ({_when(float(seconds[at]))} if it were)"
            ),
        )
        return seconds

    def _from_text(self, values: pd.Series, first_row: int) -> NDArray[np.float64]:
        texts = values.astype(str).reset_index(drop=True)
        try:
            seconds = seconds_from_iso(texts, TimeFormat(None, self.options.timezone).zone)
        except TimeValueError as error:
            row = "" if error.row is None else f", row {first_row + error.row + 1}"
            raise RawFileError(f"{self.path}, column {self.column!r}{row}: {error}") from None
        self._note_offsets(texts, seconds)
        return seconds

    def _note_offsets(self, texts: pd.Series, seconds: NDArray[np.float64]) -> None:
        """Keep the UTC offsets of the block where they change (first and last row, and every
        row of a block whose first and last offsets differ)."""
        first, last = offset_minutes(texts.iloc[0]), offset_minutes(texts.iloc[-1])
        if first is None and last is None:
            return
        rows = range(len(texts)) if first != last else (0,)
        for row in rows:
            minutes = offset_minutes(texts.iloc[row])
            if minutes is not None and (not self.offsets or self.offsets[-1][1] != minutes):
                self.offsets.append((float(seconds[row]), minutes))


# -- blocks ----------------------------------------------------------------------------------


def _column_names(path: Path) -> list[str]:
    if path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        return list(pq.ParquetFile(path).schema_arrow.names)
    with path.open(encoding="utf-8-sig", errors="replace") as lines:
        header = next((line for line in lines if line.strip()), "")
    if not header:
        raise RawFileError(f"{path}: file is empty")
    return [name.strip().strip('"') for name in header.rstrip("\r\n").split(",")]


def _first_value(path: Path, column: str) -> str:
    """The text of ``column`` in the first data row of a CSV file ("" if none)."""
    import csv as text_csv

    with path.open(encoding="utf-8-sig", errors="replace", newline="") as lines:
        rows = text_csv.DictReader(lines)
        first = next(rows, None)
    return "" if first is None else str(first.get(column) or "")


def _blocks(path: Path, columns: list[str]) -> Iterator[pd.DataFrame]:
    """The file's ``columns`` as data frames of at most a block each; a CSV time column
    (the first of ``columns``) that is not a number stays text, so UTC offsets survive."""
    import pyarrow as pa

    if path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        # pre_buffer=False: read column chunks as the batches need them; buffering whole row
        # groups ahead tripled the memory of a week at 50 Hz.
        parquet = pq.ParquetFile(path, pre_buffer=False)
        for batch in parquet.iter_batches(batch_size=BLOCK_ROWS, columns=columns):
            yield batch.to_pandas()
        return
    from pyarrow import csv

    try:
        float(_first_value(path, columns[0]))
        types = {}
    except ValueError:
        types = {columns[0]: pa.string()}
    try:
        reader = csv.open_csv(
            path,
            read_options=csv.ReadOptions(block_size=CSV_BLOCK_BYTES, encoding="utf-8"),
            convert_options=csv.ConvertOptions(include_columns=columns, column_types=types),
        )
        for batch in reader:
            yield batch.to_pandas()
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise RawFileError(f"{path}: cannot be read as a CSV table: {error}") from None


def _text(value: object) -> str:
    """A cell for a message: text quoted, numbers as written."""
    if isinstance(value, np.generic):
        value = value.item()
    return repr(value) if isinstance(value, str) else f"{value}"


def _numbers(path: Path, frame: pd.DataFrame, column: str, first_row: int) -> NDArray[np.float64]:
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
    _refuse_first(
        ~np.isfinite(values),
        path,
        column,
        first_row,
        lambda at: f"{_text(frame[column].iloc[at])} is not a number",
    )
    return values


def _refuse_first(
    bad: NDArray[np.bool_], path: Path, column: str, first_row: int, what: Callable[[int], str]
) -> None:
    """``RawFileError`` at the first ``bad`` cell of ``column`` in a block starting at row
    ``first_row`` (0-based): the file, column and row (1-based), then ``what(at)`` for the
    cell's index ``at`` in the block."""
    if bad.any():
        at = int(np.argmax(bad))
        raise RawFileError(f"{path}, column {column!r}, row {first_row + at + 1}: {what(at)}")


def acceleration_units(
    path: Path, xyz: NDArray[np.float64], given: AccelUnits | None
) -> AccelUnits:
    """The units of ``(n, 3)`` acceleration from the median magnitude (gravity at rest).

    Examples
    --------
    >>> acceleration_units(Path("a.csv"), np.array([[0.0, 0.0, 9.81]]), None)
    'm/s2'
    >>> acceleration_units(Path("a.csv"), np.array([[0.0, 0.0, 0.02]]), None)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    sleepstream.data.raw.RawFileError: a.csv: acceleration magnitude is about 0.02: ...
    """
    median = float(np.median(np.linalg.norm(xyz, axis=1)))
    if given is not None:
        low, high = GRAVITY_RANGES[given]
        if not low <= median <= high:
            log.warning(
                "%s: acceleration magnitude is about %.3g, not gravity in %s; read as %s as told",
                path,
                median,
                given,
                given,
            )
        return given
    for units, (low, high) in GRAVITY_RANGES.items():
        if low <= median <= high:
            return units
    raise RawFileError(
        f"{path}: acceleration magnitude is about {median:.3g}: gravity is about 1 in g and "
        f"{G:.2f} in m/s^2; this is neither (gravity removed, or other units): give --units "
        "g or --units m/s2 if it is raw accelerometer data"
    )


class _Buffer:
    """A column filled block by block: preallocated when the row count is known (Parquet),
    else grown by doubling, so no list of blocks and no second whole copy is held."""

    def __init__(self, capacity: int | None, dtype: type[np.generic]):
        self.data = np.empty(capacity or 1 << 16, dtype=dtype)
        self.n = 0

    def append(self, values: NDArray[np.generic]) -> None:
        end = self.n + len(values)
        if end > len(self.data):
            grown = np.empty(max(end, 2 * len(self.data)), dtype=self.data.dtype)
            grown[: self.n] = self.data[: self.n]
            self.data = grown
        self.data[self.n : end] = values
        self.n = end

    def values(self) -> NDArray[Any]:
        return self.data[: self.n]


def _row_count(path: Path) -> int | None:
    """Rows of a Parquet file from its metadata; ``None`` for CSV (not known before reading)."""
    if path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    return None


def read_raw_file(path: Path, options: RawOptions = RawOptions()) -> RawFile:
    """Read one raw recording (CSV or Parquet) block by block; see the module docstring.

    Returns
    -------
    RawFile
        Acceleration (z in g) and/or heart rate, times as Unix seconds, sorted; duplicate
        times keep their first row (both logged).

    Raises
    ------
    RawFileError
        Unknown columns, unreadable or ambiguous times, non-numeric values, impossible heart
        rates, acceleration in unknown units; the message names file, column, row and value.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: file not found")
    if path.suffix.lower() not in SUFFIXES:
        raise RawFileError(f"{path}: expected a raw recording ending in {', '.join(SUFFIXES)}")
    columns = detect_columns(path, _column_names(path))
    wanted = [columns.time, *(columns.axes or ()), *([columns.bpm] if columns.bpm else [])]
    clock = _TimeReader(path, columns.time, options)
    rows = _row_count(path)
    times = _Buffer(rows, np.float64)
    z = _Buffer(rows if columns.axes else 0, np.float32)
    bpm = _Buffer(rows if columns.bpm else 0, np.float64)
    units: AccelUnits | None = None
    row = 0
    for frame in _blocks(path, wanted):
        if not len(frame):
            continue
        t = clock.seconds(frame[columns.time], row)
        if columns.axes is not None:
            xyz = np.column_stack([_numbers(path, frame, c, row) for c in columns.axes])
            units = units or acceleration_units(path, xyz, options.units)
            scale = 1.0 if units == "g" else 1.0 / G
            z.append((xyz[:, 2] * scale).astype(np.float32))
        if columns.bpm is not None:
            bpm.append(_bpm(path, frame, columns, row, columns.axes is not None))
        times.append(t)
        row += len(frame)
    if not row:
        raise RawFileError(f"{path}: no rows below the header")
    raw = RawFile(path, columns, clock.description, units=units, offsets=clock.offsets)
    all_times = times.values()
    if columns.axes is not None:
        raw.accel_times, (accel_z,) = _in_time_order(path, all_times, z.values())
        raw.accel_z = np.asarray(accel_z, dtype=np.float32)
    if columns.bpm is not None:
        values = bpm.values()
        keep = np.isfinite(values)
        raw.hr_times, (hr_bpm,) = _in_time_order(path, all_times[keep], values[keep])
        raw.hr_bpm = np.asarray(hr_bpm, dtype=np.float64)
    log.info(
        "%s: %d rows, times %s%s",
        path,
        row,
        clock.description,
        f", acceleration in {units}" if units else "",
    )
    return raw


def _bpm(
    path: Path, frame: pd.DataFrame, columns: RawColumns, row: int, optional: bool
) -> NDArray[np.float64]:
    """Heart rates of a block; in a file that also holds acceleration, empty cells are rows
    without a heart rate (NaN), else an error."""
    assert columns.bpm is not None
    values = pd.to_numeric(frame[columns.bpm], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values) & (frame[columns.bpm].notna().to_numpy() | (not optional))
    bad |= np.isfinite(values) & ((values < MIN_BPM) | (values > MAX_BPM))
    cells = frame[columns.bpm]
    _refuse_first(
        bad,
        path,
        columns.bpm,
        row,
        lambda at: (
            f"heart rate {_text(cells.iloc[at])} is not a number of beats per minute in "
            f"{MIN_BPM:g}-{MAX_BPM:g}"
        ),
    )
    return values


def _in_time_order(
    path: Path, times: NDArray[np.float64], *values: NDArray[np.generic]
) -> tuple[NDArray[np.float64], list[NDArray[np.generic]]]:
    """Rows sorted by time (stable) with repeated times dropped (first kept), both logged."""
    if len(times) > 1 and bool(np.any(times[1:] < times[:-1])):
        log.warning("%s: rows out of time order; sorted by time", path)
        order = np.argsort(times, kind="stable")
        times = times[order]
        values = tuple(v[order] for v in values)
    repeated = np.zeros(len(times), dtype=bool)
    repeated[1:] = times[1:] == times[:-1]
    if repeated.any():
        log.warning(
            "%s: %d rows repeat the previous time; kept the first", path, int(repeated.sum())
        )
        times = times[~repeated]
        values = tuple(v[~repeated] for v in values)
    return times, list(values)


def describe_span(raw: RawFile) -> str:
    """A one-line summary of what the file holds, for logs.

    >>> raw = RawFile(Path("hr.csv"), RawColumns("time", None, "bpm"), "Unix seconds",
    ...               hr_times=np.array([1.7e9, 1.7e9 + 3600]), hr_bpm=np.array([60.0, 55.0]))
    >>> describe_span(raw)
    'hr.csv: heart rate 2 samples from 2023-11-14T22:13:20Z for 1 h'
    """
    parts = []
    for what, t in (("acceleration", raw.accel_times), ("heart rate", raw.hr_times)):
        if t is not None and len(t):
            hours = (float(t[-1]) - float(t[0])) / 3600
            parts.append(f"{what} {len(t)} samples from {utc_text(float(t[0]))} for {hours:.3g} h")
    return f"{raw.path.name}: " + "; ".join(parts) if parts else f"{raw.path.name}: no samples"


__all__ = [
    "ACCEL_UNITS",
    "AccelUnits",
    "RawColumns",
    "RawFile",
    "RawFileError",
    "RawOptions",
    "acceleration_units",
    "describe_span",
    "detect_columns",
    "read_raw_file",
    "time_unit_of",
]
