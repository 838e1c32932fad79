"""Time columns of the files a user brings: which clock, which unit, which time zone.

Times in sleepstream are float seconds, either relative (the sleep-accel layout: t = 0 at the
PSG start, negative before it) or since 1970-01-01 UTC (Unix time, float64). The time column
of a user's file may hold

- seconds, relative or since 1970 (times from :data:`UNIX_FROM` on are read as Unix time);
- milliseconds or microseconds, relative or since 1970, only with an explicit unit: without
  one, a column whose values (since 1970) or spacing (relative) look like one of those is
  refused with an error that names the unit it looks like;
- ISO-8601 times with a UTC offset (``2026-03-29T01:59:30+01:00``, ``...Z``,
  ``2026-03-29 01:59:30 +0100``), read as Unix time, so a night across a daylight-saving change
  stays contiguous. Times without an offset are read only with a named IANA time zone, as local
  times in it; a local time the clocks skipped (spring forward) or went through twice (fall
  back) is refused, since it cannot be placed without guessing.

The functions here know nothing of files: they raise :class:`TimeValueError` carrying the row
at fault, and :mod:`sleepstream.data.parse` turns it into an error naming the file and line.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import numpy as np
from numpy.typing import NDArray

from sleepstream.records import EPOCH_SECONDS

if TYPE_CHECKING:  # pandas is imported where ISO text is read: the live detector needs none
    import pandas as pd

TimeUnit = Literal["s", "ms", "us"]
TIME_UNITS: tuple[TimeUnit, ...] = get_args(TimeUnit)
"""The units a numeric time column may be given in (``--time-unit``)."""

PER_SECOND = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}
"""How many of each unit make one second."""

UNIT_NAMES = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}

UNIX_FROM = 1e8
"""Seconds at or after this (1973-03-03 UTC) are Unix time; smaller ones are relative."""

SINCE_1970_FROM = {"ns": 1e17, "us": 1e14, "ms": 1e11}
"""Magnitudes that seconds since 1970 do not reach before the year 5138, by the unit they
look like (milliseconds since 1970 are about 1.7e12 today, microseconds 1.7e15)."""

MAX_SPAN_DAYS = 14
"""The longest recording a user's files may span: bounds the epochs ``replay`` builds."""

_UTC_OFFSET = re.compile(
    r"[T ]\d{2}(?::?\d{2}){0,2}(?:[.,]\d+)?\s*(?:Z|[+-]\d{2}(?::?\d{2})?)$", re.IGNORECASE
)
"""The end of an ISO-8601 date-time that carries a UTC offset (``...01:59:30+01:00``, ``Z``)."""

_ISO_EXAMPLE = "2026-03-29T01:59:30+01:00"


class TimeValueError(ValueError):
    """A time column cannot be read; ``row`` is the 0-based data row at fault (``None``: the
    column as a whole)."""

    def __init__(self, row: int | None, message: str):
        super().__init__(message)
        self.row = row


def time_zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``; ``ValueError`` naming it (and a close match) if unknown.

    Examples
    --------
    >>> time_zone("Europe/Berlin")
    zoneinfo.ZoneInfo(key='Europe/Berlin')
    >>> time_zone("Europe/Berln")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: Unknown time zone 'Europe/Berln': ...; did you mean Europe/Berlin?
    """
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):  # ValueError: not a zone key ("", "/etc/x")
        close = difflib.get_close_matches(name, sorted(available_timezones()), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ValueError(
            f"Unknown time zone {name!r}: expected an IANA name such as Europe/Berlin, "
            f"America/New_York or UTC{hint}"
        ) from None


@dataclass(frozen=True)
class TimeFormat:
    """How to read the time column of a user's file (see the module docstring).

    Attributes
    ----------
    unit
        Unit of numeric times (``"s"``, ``"ms"``, ``"us"``). ``None``: seconds, and a column
        that looks like milliseconds or microseconds is refused. ISO-8601 times ignore it.
    timezone
        IANA time zone of ISO-8601 times without a UTC offset. ``None``: such times are refused.
    """

    unit: TimeUnit | None = None
    timezone: str | None = None

    def __post_init__(self) -> None:
        if self.unit is not None and self.unit not in TIME_UNITS:
            raise ValueError(f"Unknown time unit {self.unit!r}: expected one of {TIME_UNITS}")
        if self.timezone is not None:
            time_zone(self.timezone)

    @property
    def zone(self) -> ZoneInfo | None:
        """The time zone of times without an offset, if one was named."""
        return None if self.timezone is None else time_zone(self.timezone)


def is_unix_time(t: float) -> bool:
    """Whether ``t`` (seconds) is a Unix time rather than a time relative to a recording."""
    return t >= UNIX_FROM


def utc_text(t: float) -> str:
    """``t`` for a message: ISO-8601 UTC for a Unix time, seconds for a relative one.

    Examples
    --------
    >>> utc_text(1774745970.0), utc_text(-300.0)
    ('2026-03-29T00:59:30Z', '-300 s')
    """
    if not is_unix_time(t) or not math.isfinite(t):
        return f"{t:g} s"
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- numeric times -----------------------------------------------------------------------------


def since_1970_unit(values: NDArray[np.float64]) -> tuple[int, str] | None:
    """The first time too large for seconds since 1970 and the unit it looks like, if any.

    >>> since_1970_unit(np.array([0.0, 1.7e9, 1.7e12]))
    (2, 'ms')
    """
    magnitude = np.abs(values)
    for guess, floor in SINCE_1970_FROM.items():
        too_large = magnitude >= floor
        if too_large.any():
            return int(np.argmax(too_large)), guess
    return None


def seconds_from_numbers(values: NDArray[np.float64], unit: TimeUnit | None) -> NDArray[np.float64]:
    """Numeric times in seconds: divided by the size of ``unit``, or (no unit) checked.

    Without a unit the times are taken as seconds and returned unchanged, unless one is too
    large to be seconds since 1970 (:data:`SINCE_1970_FROM`): then :class:`TimeValueError`
    names the first such row and the unit it looks like.

    Examples
    --------
    >>> seconds_from_numbers(np.array([1774745970000.0]), "ms")
    array([1.77474597e+09])
    >>> seconds_from_numbers(np.array([1774745970000.0]), None)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    sleepstream.data.times.TimeValueError: time 1774745970000 looks like milliseconds since ...
    """
    if unit is not None:
        return values if unit == "s" else values / PER_SECOND[unit]
    found = since_1970_unit(values)
    if found is not None:
        row, guess = found
        value = float(values[row])
        advice = (
            f"give the unit (--time-unit {guess}) or convert the times to seconds"
            if guess in TIME_UNITS
            else "convert the times to seconds"
        )
        raise TimeValueError(
            row,
            f"time {value:.17g} looks like {UNIT_NAMES[guess]} since 1970 "
            f"({utc_text(value / PER_SECOND[guess])} if so), not seconds: {advice}",
        )
    return values


@dataclass(frozen=True)
class Spacing:
    """How far apart the samples of one stream are, in seconds.

    A relative time column in milliseconds has no tell-tale magnitude, but its samples are a
    thousand times too far apart: a median interval at or above ``limit`` is refused.
    """

    what: str
    expected: str
    typical: float
    limit: float


MOTION_SPACING = Spacing("motion samples", "0.005-0.1 s (10-200 Hz)", 0.02, 1.0)
HEART_RATE_SPACING = Spacing("heart-rate samples", "seconds to minutes", 5.0, 1000.0)
COUNT_SPACING = Spacing("activity counts", "15 s", 15.0, 1000.0)
LABEL_SPACING = Spacing("label epochs", "30 s", 30.0, 1000.0)


def check_spacing(times: NDArray[np.float64], spacing: Spacing) -> None:
    """Raise :class:`TimeValueError` when the samples are too far apart to be in seconds.

    The message names the unit (milliseconds or microseconds) that brings the median
    interval closest to the stream's typical one.

    Examples
    --------
    >>> check_spacing(np.arange(0.0, 1000.0, 20.0), MOTION_SPACING)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    sleepstream.data.times.TimeValueError: motion samples are a median 20 apart: ... milliseconds...
    """
    steps = np.diff(np.sort(times))
    steps = steps[steps > 0]
    if not len(steps):
        return
    median = float(np.median(steps))
    if median < spacing.limit:
        return
    guess = min(("ms", "us"), key=lambda u: abs(math.log(median / PER_SECOND[u] / spacing.typical)))
    raise TimeValueError(
        None,
        f"{spacing.what} are a median {median:g} apart: in seconds that is not "
        f"{spacing.expected}; the times look like {UNIT_NAMES[guess]}: give the unit "
        f"(--time-unit {guess}), or --time-unit s if they are seconds",
    )


# -- ISO-8601 times ----------------------------------------------------------------------------


def looks_like_iso(text: str) -> bool:
    """Whether ``text`` (one time field) is an ISO-8601 date or date-time, not a number."""
    import pandas as pd

    try:
        float(text)
    except ValueError:
        return not pd.isna(pd.to_datetime(text, format="ISO8601", errors="coerce"))
    return False


def seconds_from_iso(texts: pd.Series, zone: ZoneInfo | None) -> NDArray[np.float64]:
    """ISO-8601 times as Unix seconds (float64).

    Times with a UTC offset are exact instants. Times without one are local times in
    ``zone``; without a zone, or when the local time does not exist or is ambiguous there
    (a daylight-saving change), :class:`TimeValueError` names the row.

    Examples
    --------
    >>> import pandas as pd
    >>> seconds_from_iso(pd.Series(["2026-03-29T01:59:30+01:00", "2026-03-29T03:00:00+02:00"]),
    ...                  None).tolist()
    [1774745970.0, 1774746000.0]
    """

    texts = texts.astype(str).str.strip()
    aware = texts.str.contains(_UTC_OFFSET).to_numpy(dtype=bool)
    seconds = np.empty(len(texts), dtype=np.float64)
    if aware.any():
        seconds[aware] = _unix_seconds(_parsed(texts[aware], utc=True))
    if not aware.all():
        local = _parsed(texts[~aware], utc=False)
        if zone is None and local.tz is None:
            row = int(np.flatnonzero(~aware)[0])
            raise TimeValueError(
                row,
                f"time {texts.iloc[row]!r} has no UTC offset: give times with one (e.g. "
                f"{_ISO_EXAMPLE} or ...Z), or name the time zone they are local to "
                "(--timezone Europe/Berlin)",
            )
        seconds[~aware] = _unix_seconds(_localized(local, zone, texts[~aware]))
    return seconds


def _parsed(texts: pd.Series, *, utc: bool) -> pd.DatetimeIndex:
    """``texts`` parsed by pandas' ISO-8601 reader; the first unreadable one is named."""
    import pandas as pd

    try:
        parsed = pd.to_datetime(texts, format="ISO8601", utc=utc, errors="coerce")
    except (ValueError, TypeError):  # e.g. mixed offsets the pattern above did not recognise
        raise TimeValueError(
            int(texts.index[0]),
            f"cannot read times like {texts.iloc[0]!r}: expected ISO-8601 times such as "
            f"{_ISO_EXAMPLE}",
        ) from None
    bad = parsed.isna().to_numpy()
    if bad.any():
        at = int(np.argmax(bad))
        raise TimeValueError(
            int(texts.index[at]),
            f"cannot read time {texts.iloc[at]!r}: expected an ISO-8601 time such as "
            f"{_ISO_EXAMPLE}, like the file's first time",
        )
    return pd.DatetimeIndex(parsed)


def _localized(
    local: pd.DatetimeIndex, zone: ZoneInfo | None, texts: pd.Series
) -> pd.DatetimeIndex:
    """Local times placed in ``zone``; a skipped or repeated local time is refused."""
    if local.tz is not None or zone is None:  # an offset pandas knows, the pattern does not
        return local
    n = len(local)
    summer = local.tz_localize(zone, ambiguous=np.ones(n, dtype=bool), nonexistent="NaT")
    winter = local.tz_localize(zone, ambiguous=np.zeros(n, dtype=bool), nonexistent="NaT")
    refused = (
        (
            summer.isna(),
            f"does not exist in {zone.key}: the clocks skipped it (daylight saving); give times "
            "with a UTC offset",
        ),
        (
            summer != winter,
            f"happened twice in {zone.key} (the clocks went back); give times with a UTC offset "
            "to say which",
        ),
    )
    for refuse, why in refused:
        bad = np.asarray(refuse)
        if bad.any():
            at = int(np.argmax(bad))
            raise TimeValueError(int(texts.index[at]), f"local time {texts.iloc[at]!r} {why}")
    return summer


def _unix_seconds(index: pd.DatetimeIndex) -> NDArray[np.float64]:
    """Seconds since 1970 of tz-aware times, whatever pandas' resolution (ns, us, s)."""
    import pandas as pd

    since = index.tz_convert("UTC") - pd.Timestamp(0, tz="UTC")
    return np.asarray(since / pd.Timedelta(1, "s"), dtype=np.float64)


# -- a recording's clock -----------------------------------------------------------------------


def recording_span(times: Mapping[str, NDArray[np.float64]]) -> tuple[float, float]:
    """First and last time over the files of one recording (file name: its sorted times).

    Raises ``ValueError`` when some files have Unix times and others relative ones, or when
    together they span more than :data:`MAX_SPAN_DAYS` (which also catches one file that
    mixes the two).

    Examples
    --------
    >>> recording_span({"hr.csv": np.array([-300.0, 25000.0]), "counts.csv": np.array([0.0])})
    (-300.0, 25000.0)
    """
    firsts = {name: float(t[0]) for name, t in times.items() if len(t)}
    lasts = {name: float(t[-1]) for name, t in times.items() if len(t)}
    unix = {name: is_unix_time(t) for name, t in firsts.items()}
    if len(set(unix.values())) > 1:
        absolute = next(name for name, u in unix.items() if u)
        relative = next(name for name, u in unix.items() if not u)
        raise ValueError(
            f"{absolute} has times since 1970 (from {utc_text(firsts[absolute])}) but "
            f"{relative} has relative times (from {utc_text(firsts[relative])}): give every "
            "file the same kind of time"
        )
    begins, ends = min(firsts, key=firsts.__getitem__), max(lasts, key=lasts.__getitem__)
    first, last = firsts[begins], lasts[ends]
    days = (last - first) / 86400
    if days > MAX_SPAN_DAYS:
        raise ValueError(
            f"The files span {days:.3g} days ({begins} from {utc_text(first)}, {ends} to "
            f"{utc_text(last)}); at most {MAX_SPAN_DAYS} days are read at once: cut the "
            "recording, or check the times"
        )
    return first, last


def wall_clock_epochs(first: float, last: float) -> NDArray[np.float64]:
    """Starts of the 30 s epochs from the one holding ``first`` to the one holding ``last``.

    Epochs start at whole multiples of 30 s: of Unix time (so on the wall clock's :00 and :30
    seconds) or of relative time, the grid the live detector uses.

    Examples
    --------
    >>> wall_clock_epochs(1774745985.0, 1774746031.0).tolist()
    [1774745970.0, 1774746000.0, 1774746030.0]
    >>> wall_clock_epochs(-75.0, -31.0).tolist()
    [-90.0, -60.0]
    """
    k_first = math.floor(first / EPOCH_SECONDS)
    k_last = math.floor(last / EPOCH_SECONDS)
    return EPOCH_SECONDS * np.arange(k_first, k_last + 1, dtype=np.float64)
