"""Parsing and validating the text files of the sleep-accel layout.

Every problem is reported with the file and line it was found on; line numbers count every
line of the file, blank ones included. A file that is not UTF-8 text (e.g. a binary file) is
reported with the line and byte offset of its first undecodable byte. Rows are never dropped
silently: out-of-order rows are sorted and duplicate timestamps removed, each with a logged
warning that counts them. Blank lines hold no data and are skipped.

The readers of timed rows (heart rate, counts, motion, labels) take a
:class:`~sleepstream.data.times.TimeFormat`: times may be seconds (relative, as in the
sleep-accel layout, or since 1970), milliseconds or microseconds with an explicit unit, or
ISO-8601 times (see :mod:`sleepstream.data.times`). A numeric time column is read exactly as a
numeric table, so the sleep-accel files parse as they always have.
"""

from __future__ import annotations

import codecs
import itertools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from sleepstream.data.times import (
    COUNT_SPACING,
    HEART_RATE_SPACING,
    LABEL_SPACING,
    MOTION_SPACING,
    Spacing,
    TimeFormat,
    TimeUnit,
    TimeValueError,
    check_spacing,
    looks_like_iso,
    recording_span,
    seconds_from_iso,
    seconds_from_numbers,
    wall_clock_epochs,
)
from sleepstream.records import EPOCH_SECONDS, Recording, Stage

log = logging.getLogger(__name__)

MIN_BPM = 25.0
MAX_BPM = 250.0
GRID_TOLERANCE = 1e-6
DEFAULT_TIMES = TimeFormat()
"""Seconds (milliseconds and microseconds refused), or ISO-8601 times with a UTC offset."""


class DataFormatError(ValueError):
    """A data file does not have the expected format; the message names the file and line."""


@dataclass(frozen=True)
class CleanupReport:
    """What was changed while reading one file (all counts are rows)."""

    path: Path
    rows: int
    reordered: int = 0
    duplicates: int = 0


def _not_text_error(path: Path) -> DataFormatError:
    """The error for a file that is not UTF-8 text, naming its first undecodable byte.

    The file is decoded again incrementally (1 MiB at a time), so the byte offset is counted
    from the start of the file whatever chunk the first decoder failed in.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = newlines = 0
    with path.open("rb") as handle:
        for block in itertools.chain(iter(lambda: handle.read(2**20), b""), [b""]):
            pending = len(decoder.getstate()[0])
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as error:
                start = offset - pending + error.start
                line = newlines + error.object[: error.start].count(b"\n") + 1
                bad = error.object[error.start : error.start + 1].hex()
                return DataFormatError(
                    f"{path}, line {line}: not UTF-8 text: byte 0x{bad} at byte offset {start} "
                    f"({error.reason}); expected a text table (is this a binary file?)"
                )
            offset += len(block)
            newlines += block.count(b"\n")
    # Decoding failed elsewhere but not here (the file changed meanwhile): name the file only.
    return DataFormatError(f"{path}: not UTF-8 text; expected a text table")


def _scan_for_error(path: Path, sep: str | None, n_cols: int, text_times: bool = False) -> None:
    """Slow path: find and raise the first malformed line (1-based line numbers).

    ``text_times``: the first field is an ISO-8601 time, checked elsewhere, not a number.
    """
    try:
        _scan_lines(path, sep, n_cols, text_times)
    except UnicodeDecodeError:
        raise _not_text_error(path) from None


def _scan_lines(path: Path, sep: str | None, n_cols: int, text_times: bool) -> None:
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue  # blank lines hold no data
            fields = line.strip().split(sep)
            if len(fields) != n_cols:
                raise DataFormatError(
                    f"{path}, line {number}: expected {n_cols} values separated by "
                    f"{sep or 'whitespace'!r}, got {line.strip()!r}"
                )
            try:
                values = [float(f) for f in fields[1 if text_times else 0 :]]
            except ValueError:
                raise DataFormatError(
                    f"{path}, line {number}: cannot parse {line.strip()!r} as numbers"
                ) from None
            if not all(np.isfinite(values)):
                raise DataFormatError(
                    f"{path}, line {number}: non-finite value in {line.strip()!r}"
                )


def line_of_row(path: Path, row: int) -> int:
    """The 1-based line of ``path`` that holds data row ``row`` (0-based; blank lines skipped).

    Only called to report a problem, so re-reading the file costs nothing in the normal case.
    """
    seen = -1
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                seen += 1
                if seen == row:
                    return number
    return row + 1  # the file changed since it was read: the best guess left


def read_table(
    path: Path, sep: str | None, n_cols: int, time_format: TimeFormat | None = None
) -> NDArray[np.float64]:
    """Read a headerless numeric text table, shape ``(rows, n_cols)``.

    ``sep=None`` means whitespace. Raises :class:`DataFormatError` for an empty file, a file
    that is not UTF-8 text, a row with the wrong number of fields, an unparsable value, NaN or
    infinity, naming the line (counting blank lines, which are skipped).

    With ``time_format`` (a :class:`~sleepstream.data.times.TimeFormat`), the first column
    holds times as it describes them (numbers, or ISO-8601 text) and is returned in seconds
    (Unix seconds for ISO-8601 times); a time that cannot be read is named with its line.
    """
    return _read_table(path, sep, n_cols, time_format)[0]


def _read_table(
    path: Path, sep: str | None, n_cols: int, time_format: TimeFormat | None
) -> tuple[NDArray[np.float64], bool]:
    """:func:`read_table` and whether the times were ISO-8601 text."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: file not found")
    with path.open("rb") as head:
        if not head.read(4096).strip():
            raise DataFormatError(f"{path}: file is empty")
    if time_format is not None and _first_time_is_text(path, sep):
        return _read_text_times(path, sep, n_cols, time_format), True
    table = _read_numbers(path, sep, n_cols)
    if time_format is not None:
        try:
            table[:, 0] = seconds_from_numbers(table[:, 0], time_format.unit)
        except TimeValueError as error:
            raise _time_error(path, error) from None
    return table, False


def _read_csv(path: Path, sep: str | None, n_cols: int, text_times: bool) -> pd.DataFrame:
    """The headerless table in ``path`` (columns split at ``sep``, or at white space): numbers,
    or (``text_times``) text. A file pandas cannot read is scanned for the line to name
    (:func:`_scan_for_error`); every failure is a :class:`DataFormatError`."""
    options = {"dtype": str, "keep_default_na": False} if text_times else {"dtype": np.float64}
    try:
        return pd.read_csv(
            path,
            sep=r"\s+" if sep is None else sep,
            header=None,
            skip_blank_lines=True,
            engine="c",
            encoding="utf-8",
            **options,
        )
    except UnicodeDecodeError:
        raise _not_text_error(path) from None
    except (ValueError, pd.errors.ParserError):
        _scan_for_error(path, sep, n_cols, text_times=text_times)
        what = "a table of times and numbers" if text_times else "a numeric table"
        raise DataFormatError(f"{path}: cannot be parsed as {what}") from None


def _read_numbers(path: Path, sep: str | None, n_cols: int) -> NDArray[np.float64]:
    table = _read_csv(path, sep, n_cols, text_times=False).to_numpy(dtype=np.float64)
    if table.shape[1] != n_cols or not np.isfinite(table).all():
        _scan_for_error(path, sep, n_cols)
        raise DataFormatError(f"{path}: expected {n_cols} finite values per line")
    return table


def _first_time_is_text(path: Path, sep: str | None) -> bool:
    """Whether the first field of the first data line is an ISO-8601 time, not a number."""
    try:
        with path.open(encoding="utf-8") as lines:
            first = next((line for line in lines if line.strip()), "")
    except UnicodeDecodeError:
        raise _not_text_error(path) from None
    return looks_like_iso(first.strip().split(sep)[0].strip())


def _read_text_times(
    path: Path, sep: str | None, n_cols: int, time_format: TimeFormat
) -> NDArray[np.float64]:
    """A table whose first column holds ISO-8601 times, the times as Unix seconds."""
    frame = _read_csv(path, sep, n_cols, text_times=True)
    values = frame.iloc[:, 1:].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    if frame.shape[1] != n_cols or not np.isfinite(values).all():
        _scan_for_error(path, sep, n_cols, text_times=True)
        raise DataFormatError(f"{path}: expected a time and {n_cols - 1} finite values per line")
    try:
        seconds = seconds_from_iso(frame[0], time_format.zone)
    except TimeValueError as error:
        raise _time_error(path, error) from None
    return np.column_stack([seconds, values])


def _time_error(path: Path, error: TimeValueError) -> DataFormatError:
    """``error`` as a :class:`DataFormatError` naming the file and, if known, the line."""
    where = f"{path}" if error.row is None else f"{path}, line {line_of_row(path, error.row)}"
    return DataFormatError(f"{where}: {error}")


def _read_times(
    path: Path, sep: str | None, n_cols: int, time_format: TimeFormat, spacing: Spacing
) -> NDArray[np.float64]:
    """A table of timed rows, times in seconds; numeric times without a unit must also be
    spaced like ``spacing`` in seconds (relative milliseconds are refused)."""
    table, text_times = _read_table(path, sep, n_cols, time_format)
    if not text_times and time_format.unit is None:
        try:
            check_spacing(table[:, 0], spacing)
        except TimeValueError as error:
            raise _time_error(path, error) from None
    return table


def sort_by_time(
    path: Path, times: NDArray[np.float64], *values: NDArray[np.float64]
) -> tuple[CleanupReport, NDArray[np.float64], list[NDArray[np.float64]]]:
    """Sort rows by time (stable) and drop repeated timestamps, keeping the first row.

    Both repairs are logged with their counts and the first line concerned.
    """
    diffs = np.diff(times)
    reordered = int((diffs < 0).sum())
    if reordered:
        line = line_of_row(path, int(np.argmax(diffs < 0)) + 1)
        log.warning(
            "%s: %d rows out of time order (first at line %d); sorted by time",
            path,
            reordered,
            line,
        )
        order = np.argsort(times, kind="stable")
        times = times[order]
        values = tuple(v[order] for v in values)
    repeated = np.concatenate([[False], np.diff(times) == 0])
    duplicates = int(repeated.sum())
    if duplicates:
        log.warning(
            "%s: %d rows repeat the previous timestamp (first at t=%.3f s); kept the first",
            path,
            duplicates,
            times[np.argmax(repeated)],
        )
        times = times[~repeated]
        values = tuple(v[~repeated] for v in values)
    report = CleanupReport(path, len(times) + duplicates, reordered, duplicates)
    return report, times, list(values)


def _first_row(mask: NDArray[np.bool_]) -> int:
    return int(np.argmax(mask))


def read_labels(
    path: Path, time_format: TimeFormat = DEFAULT_TIMES
) -> tuple[NDArray[np.float64], NDArray[np.int8]]:
    """Epoch start times (s, on a 30 s grid) and :class:`Stage` codes from ``seconds stage`` rows."""
    table = _read_times(path, None, 2, time_format, LABEL_SPACING)
    times, stages = table[:, 0], table[:, 1]
    off_grid = np.abs(times / EPOCH_SECONDS - np.round(times / EPOCH_SECONDS)) > GRID_TOLERANCE
    if off_grid.any():
        row = _first_row(off_grid)
        raise DataFormatError(
            f"{path}, line {line_of_row(path, row)}: label time {float(times[row])!r} is not on "
            f"the {EPOCH_SECONDS:g} s epoch grid"
        )
    valid_codes = np.isin(stages, [s.value for s in Stage])
    if not valid_codes.all():
        row = _first_row(~valid_codes)
        raise DataFormatError(
            f"{path}, line {line_of_row(path, row)}: stage {float(stages[row])!r} is not one of "
            f"{[s.value for s in Stage]}"
        )
    _, times, (stages,) = sort_by_time(path, times, stages)
    return times, stages.astype(np.int8)


def read_heart_rate(
    path: Path, time_format: TimeFormat = DEFAULT_TIMES
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Heart-rate sample times (s) and beats per minute from ``seconds,bpm`` rows."""
    table = _read_times(path, ",", 2, time_format, HEART_RATE_SPACING)
    bpm = table[:, 1]
    impossible = (bpm < MIN_BPM) | (bpm > MAX_BPM)
    if impossible.any():
        row = _first_row(impossible)
        raise DataFormatError(
            f"{path}, line {line_of_row(path, row)}: heart rate {bpm[row]:g} bpm is outside the "
            f"possible range {MIN_BPM:g}-{MAX_BPM:g}"
        )
    _, times, (bpm,) = sort_by_time(path, table[:, 0], bpm)
    return times, bpm


def read_counts(
    path: Path, time_format: TimeFormat = DEFAULT_TIMES
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Activity-count times (s, start of each 15 s window) and counts from ``seconds,count``."""
    table = _read_times(path, ",", 2, time_format, COUNT_SPACING)
    negative = table[:, 1] < 0
    if negative.any():
        row = _first_row(negative)
        raise DataFormatError(
            f"{path}, line {line_of_row(path, row)}: activity count {table[row, 1]:g} is negative"
        )
    _, times, (counts,) = sort_by_time(path, table[:, 0], table[:, 1])
    return times, counts


def read_acceleration(
    path: Path, time_format: TimeFormat = DEFAULT_TIMES
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Raw acceleration times (s) and ``(n, 3)`` x, y, z in g from ``seconds x y z`` rows."""
    table = _read_times(path, None, 4, time_format, MOTION_SPACING)
    _, times, (xyz,) = sort_by_time(path, table[:, 0], table[:, 1:])
    return times, xyz


def read_user_recording(
    heart_rate: Path,
    motion: Path | None = None,
    counts: Path | None = None,
    labels: Path | None = None,
    *,
    time_unit: TimeUnit | None = None,
    timezone: str | None = None,
) -> Recording:
    """A user's own night: heart rate with raw motion (seconds x y z, g) or counts, and labels.

    Parameters
    ----------
    heart_rate, motion, counts, labels
        The files (``time,bpm``; ``time x y z``; ``time,count``; ``time stage``). Motion is
        used when both motion and counts are given.
    time_unit
        Unit of numeric times, ``"s"``, ``"ms"`` or ``"us"``; ``None``: seconds, and files
        whose times look like milliseconds or microseconds are refused.
    timezone
        IANA time zone of ISO-8601 times without a UTC offset; ``None`` refuses such times.

    Returns
    -------
    Recording
        Times in seconds: Unix seconds when the files hold times since 1970 or ISO-8601 times,
        else relative seconds. Without labels, the epochs are the 30 s wall-clock epochs
        (:func:`~sleepstream.data.times.wall_clock_epochs`) from the one holding the first
        sample to the one holding the last, all unscored.

    Raises
    ------
    DataFormatError
        A file cannot be read; the message names the file and line.
    ValueError
        Neither motion nor counts; files mixing Unix and relative times; files spanning more
        than :data:`~sleepstream.data.times.MAX_SPAN_DAYS` days.
    """
    if motion is None and counts is None:
        raise ValueError("give --motion FILE (seconds x y z, in g) or --counts FILE")
    time_format = TimeFormat(time_unit, timezone)
    hr_t, hr = read_heart_rate(heart_rate, time_format)
    spans = {str(heart_rate): hr_t}
    accel_t = accel = None
    count_t, count_v = np.zeros(0), np.zeros(0)
    if motion is not None:
        accel_t, accel = read_acceleration(motion, time_format)
        spans[str(motion)] = accel_t
    elif counts is not None:
        count_t, count_v = read_counts(counts, time_format)
        spans[str(counts)] = count_t
    if labels is not None:
        epoch_t, stages = read_labels(labels, time_format)
        spans[str(labels)] = epoch_t
    first, last = recording_span(spans)
    if labels is None:
        epoch_t = wall_clock_epochs(first, last)
        stages = np.full(len(epoch_t), Stage.UNSCORED, dtype=np.int8)
    return Recording(heart_rate.stem, epoch_t, stages, hr_t, hr, count_t, count_v, accel_t, accel)
