"""Time columns of a user's files: seconds (relative or since 1970), milliseconds and
microseconds, ISO-8601 times with and without offsets, nights across daylight-saving changes,
and the epochs and clock times ``replay`` builds from them. All files are generated here."""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from numpy.typing import NDArray
from rich.console import Console

from sleepstream.data.parse import (
    DataFormatError,
    read_acceleration,
    read_counts,
    read_heart_rate,
    read_labels,
    read_user_recording,
)
from sleepstream.data.times import MAX_SPAN_DAYS, TimeFormat
from sleepstream.live.detector import EpochResult
from sleepstream.live.replay import TimeAxis, live_table, replay_figure, time_text
from sleepstream.records import Recording

START = 1774731600.0
"""2026-03-28 21:00 UTC, 22:00 in Berlin: the evening before the spring change."""


def write(path: Path, rows: Sequence[str]) -> Path:
    path.write_text("".join(f"{row}\n" for row in rows))
    return path


def heart_rate_rows(times: NDArray[np.float64], fmt: str = "{:.3f}") -> list[str]:
    return [f"{fmt.format(t)},{60 + i % 7}" for i, t in enumerate(times)]


def count_rows(times: NDArray[np.float64], fmt: str = "{:.3f}") -> list[str]:
    return [f"{fmt.format(t)},{i % 4 * 10}" for i, t in enumerate(times)]


def iso(t: float, zone: ZoneInfo) -> str:
    """``t`` as the local ISO-8601 time in ``zone``, with its UTC offset."""
    return datetime.fromtimestamp(t, tz=zone).isoformat()


def hour_of_files(
    folder: Path, start: float = START, hours: float = 1.0
) -> tuple[Path, Path, NDArray[np.float64]]:
    """Heart rate every 5 s and counts every 15 s in Unix seconds; the heart-rate times."""
    hr_t = np.arange(start, start + hours * 3600, 5.0)
    hr = write(folder / "hr.csv", heart_rate_rows(hr_t))
    counts = write(folder / "counts.csv", count_rows(np.arange(start, start + hours * 3600, 15.0)))
    return hr, counts, hr_t


# -- seconds, relative and since 1970 ----------------------------------------------------------


def test_unix_seconds_give_epochs_from_the_first_sample(tmp_path: Path) -> None:
    hr, counts, hr_t = hour_of_files(tmp_path, START + 7.5)
    night = read_user_recording(hr, counts=counts)
    np.testing.assert_array_equal(night.hr_times, hr_t)
    assert night.epoch_times[0] == START  # the 30 s wall-clock boundary before the first sample
    assert night.n_epochs == 121  # 1 h from 7.5 s past a boundary: 120 epochs and a started one
    np.testing.assert_array_equal(np.diff(night.epoch_times), 30.0)
    assert (night.stages == -1).all()


def test_all_negative_relative_times_get_their_epochs(tmp_path: Path) -> None:
    hr_t = np.arange(-7200.0, -60.0, 5.0)
    hr = write(tmp_path / "hr.csv", heart_rate_rows(hr_t))
    counts = write(tmp_path / "counts.csv", count_rows(np.arange(-7200.0, -60.0, 15.0)))
    night = read_user_recording(hr, counts=counts)
    assert night.epoch_times[0] == -7200.0 and night.epoch_times[-1] == -90.0
    assert night.n_epochs == 238 and night.end_time == -60.0


def test_relative_times_keep_their_values(tmp_path: Path) -> None:
    """Relative seconds (the sleep-accel layout) are read unchanged, history before 0 included."""
    hr_t = np.arange(-300.0, 600.0, 5.0) + 0.123
    hr = write(tmp_path / "hr.csv", heart_rate_rows(hr_t))
    counts = write(tmp_path / "counts.csv", count_rows(np.arange(0.0, 600.0, 15.0)))
    night = read_user_recording(hr, counts=counts)
    np.testing.assert_array_equal(night.hr_times, np.round(hr_t, 3))
    assert night.epoch_times[0] == -300.0 and night.epoch_times[-1] == 570.0


# -- milliseconds and microseconds -------------------------------------------------------------


@pytest.mark.parametrize(
    ("unit", "scale", "looks_like"), [("ms", 1e3, "milliseconds"), ("us", 1e6, "microseconds")]
)
def test_times_since_1970_in_ms_or_us_are_refused_naming_file_line_and_unit(
    tmp_path: Path, unit: str, scale: float, looks_like: str
) -> None:
    hr_t = np.arange(START, START + 600, 5.0) * scale
    hr = write(tmp_path / "hr.csv", ["", *heart_rate_rows(hr_t, "{:.0f}")])
    counts = write(tmp_path / "counts.csv", count_rows(np.arange(START, START + 600, 15.0)))
    expected = (
        f"{hr}, line 2: time {hr_t[0]:.0f} looks like {looks_like} since 1970 "
        f"(2026-03-28T21:00:00Z if so), not seconds: give the unit (--time-unit {unit})"
    )
    with pytest.raises(DataFormatError, match=re.escape(expected)):
        read_user_recording(hr, counts=counts)


def test_nanoseconds_since_1970_are_refused(tmp_path: Path) -> None:
    hr = write(tmp_path / "hr.csv", [f"{START * 1e9:.0f},60"])
    with pytest.raises(DataFormatError, match="looks like nanoseconds since 1970"):
        read_heart_rate(hr)


@pytest.mark.parametrize(("unit", "scale"), [("s", 1.0), ("ms", 1e3), ("us", 1e6)])
def test_an_explicit_time_unit_reads_ms_and_us(tmp_path: Path, unit: str, scale: float) -> None:
    hr_t = np.arange(START, START + 600, 5.0)
    count_t = np.arange(START, START + 600, 15.0)
    hr = write(tmp_path / "hr.csv", heart_rate_rows(hr_t * scale, "{:.0f}"))
    counts = write(tmp_path / "counts.csv", count_rows(count_t * scale, "{:.0f}"))
    night = read_user_recording(hr, counts=counts, time_unit=unit)  # type: ignore[arg-type]
    np.testing.assert_array_equal(night.hr_times, hr_t)
    np.testing.assert_array_equal(night.count_times, count_t)
    assert night.n_epochs == 20


def test_relative_milliseconds_are_caught_by_the_spacing(tmp_path: Path) -> None:
    """Relative times have no tell-tale size; 50 Hz motion 20 apart, heart rate 5000 apart and
    counts 15000 apart cannot be seconds."""
    motion_t = np.arange(0.0, 60_000.0, 20.0)
    motion = write(tmp_path / "motion.txt", [f"{t:.0f} 0.01 -0.02 -1.0" for t in motion_t])
    hr = write(tmp_path / "hr.csv", heart_rate_rows(np.arange(0.0, 600_000.0, 5000.0), "{:.0f}"))
    counts = write(tmp_path / "counts.csv", count_rows(np.arange(0.0, 6e5, 15000.0), "{:.0f}"))
    with pytest.raises(DataFormatError) as error:
        read_acceleration(motion)
    assert str(error.value) == (
        f"{motion}: motion samples are a median 20 apart: in seconds that is not "
        "0.005-0.1 s (10-200 Hz); the times look like milliseconds: give the unit "
        "(--time-unit ms), or --time-unit s if they are seconds"
    )
    with pytest.raises(
        DataFormatError, match=f"{re.escape(str(hr))}: heart-rate samples .* look like milliseconds"
    ):
        read_heart_rate(hr)
    with pytest.raises(DataFormatError, match=r"activity counts .* look like milliseconds"):
        read_counts(counts)
    night = read_user_recording(hr, motion=motion, time_unit="ms")
    assert night.accel_times is not None
    np.testing.assert_allclose(np.diff(night.accel_times), 0.02)
    assert night.epoch_times[0] == 0.0 and night.end_time == 600.0


def test_relative_microsecond_motion_is_named(tmp_path: Path) -> None:
    motion = write(
        tmp_path / "motion.txt", [f"{t:.0f} 0 0 -1" for t in np.arange(0.0, 2e7, 20_000.0)]
    )
    with pytest.raises(DataFormatError, match="look like microseconds"):
        read_acceleration(motion)


def test_labels_in_milliseconds_are_refused(tmp_path: Path) -> None:
    labels = write(tmp_path / "labels.txt", [f"{30_000 * i} 2" for i in range(20)])
    with pytest.raises(DataFormatError, match=r"label epochs .* look like milliseconds"):
        read_labels(labels)
    times, _ = read_labels(labels, TimeFormat(unit="ms"))
    np.testing.assert_array_equal(times, 30.0 * np.arange(20))


# -- ISO-8601 ----------------------------------------------------------------------------------


def test_iso_times_with_offsets_are_unix_seconds(tmp_path: Path) -> None:
    hr = write(
        tmp_path / "hr.csv",
        [
            "2026-03-29T01:59:30+01:00,60",
            "2026-03-29T00:59:35Z,61",
            "2026-03-29 01:59:40 +0100,62",  # Apple Health's export
            "2026-03-29T02:59:45.5+0200,63",
            "2026-03-29T03:00:00+02:00,64",
        ],
    )
    times, bpm = read_heart_rate(hr)
    np.testing.assert_array_equal(times, 1774745970.0 + np.array([0.0, 5.0, 10.0, 15.5, 30.0]))
    np.testing.assert_array_equal(bpm, [60, 61, 62, 63, 64])


def test_iso_motion_and_labels(tmp_path: Path) -> None:
    berlin = ZoneInfo("Europe/Berlin")
    motion_t = START + np.arange(0, 3000) * 0.02
    motion = write(tmp_path / "motion.txt", [f"{iso(t, berlin)} 0 0 -1" for t in motion_t])
    labels = write(tmp_path / "labels.txt", [f"{iso(START + 30 * i, berlin)} 2" for i in range(3)])
    times, xyz = read_acceleration(motion)
    np.testing.assert_allclose(times, motion_t, rtol=0, atol=1e-6)
    assert xyz.shape == (3000, 3)
    epochs, stages = read_labels(labels)
    np.testing.assert_array_equal(epochs, START + 30.0 * np.arange(3))
    assert stages.tolist() == [2, 2, 2]


def test_iso_times_without_offset_are_refused_naming_file_and_line(tmp_path: Path) -> None:
    hr = write(
        tmp_path / "hr.csv",
        ["2026-03-29T01:59:30+01:00,60", "", "2026-03-29T01:59:35,61", "2026-03-29T01:59:40,62"],
    )
    expected = f"{hr}, line 3: time '2026-03-29T01:59:35' has no UTC offset: give times with one"
    with pytest.raises(DataFormatError, match=re.escape(expected)) as error:
        read_heart_rate(hr)
    assert "--timezone" in str(error.value)


def test_iso_times_without_offset_are_local_times_of_the_named_zone(tmp_path: Path) -> None:
    hr = write(tmp_path / "hr.csv", ["2026-03-29T01:59:30,60", "2026-03-29T03:00:00,61"])
    times, _ = read_heart_rate(hr, TimeFormat(timezone="Europe/Berlin"))
    np.testing.assert_array_equal(times, [1774745970.0, 1774746000.0])
    times, _ = read_heart_rate(hr, TimeFormat(timezone="America/New_York"))
    np.testing.assert_array_equal(times, [1774763970.0, 1774767600.0])


@pytest.mark.parametrize(
    ("local", "fragment"),
    [
        ("2026-03-29T02:30:00", "does not exist in Europe/Berlin: the clocks skipped it"),
        ("2026-10-25T02:30:00", "happened twice in Europe/Berlin (the clocks went back)"),
    ],
)
def test_local_times_the_clock_skipped_or_repeated_are_refused(
    tmp_path: Path, local: str, fragment: str
) -> None:
    day = local[:10]
    hr = write(tmp_path / "hr.csv", [f"{day}T01:00:00,60", f"{local},61", f"{day}T04:00:00,62"])
    with pytest.raises(DataFormatError, match=re.escape(f"{hr}, line 2: local time '{local}' ")):
        read_heart_rate(hr, TimeFormat(timezone="Europe/Berlin"))
    with pytest.raises(DataFormatError, match=re.escape(fragment)):
        read_heart_rate(hr, TimeFormat(timezone="Europe/Berlin"))


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ("garbage,61", "cannot read time 'garbage': expected an ISO-8601 time"),
        ("1774745975,61", "cannot read time '1774745975': expected an ISO-8601 time"),
        ("2026-03-29T01:59:35+01:00,6O", "cannot parse '2026-03-29T01:59:35+01:00,6O' as numbers"),
        ("2026-03-29T01:59:35+01:00,nan", "non-finite value"),
        ("2026-03-29T01:59:35+01:00", "expected 2 values separated by ','"),
        ("2026-03-29T01:59:35+01:00,300", "heart rate 300 bpm is outside"),
    ],
)
def test_bad_rows_of_iso_files_name_file_and_line(tmp_path: Path, bad: str, fragment: str) -> None:
    rows = [f"2026-03-29T01:{m:02d}:00+01:00,60" for m in range(10)]
    rows[4] = bad
    hr = write(tmp_path / "hr.csv", ["", *rows])
    with pytest.raises(DataFormatError) as error:
        read_heart_rate(hr)
    assert str(error.value).startswith(f"{hr}, line 6: "), str(error.value)
    assert fragment in str(error.value)


def test_unknown_time_zones_and_units_are_refused() -> None:
    with pytest.raises(ValueError, match=r"Unknown time zone 'Europe/Berln'.*Europe/Berlin"):
        TimeFormat(timezone="Europe/Berln")
    with pytest.raises(ValueError, match=re.escape("Unknown time zone '../etc/passwd'")):
        TimeFormat(timezone="../etc/passwd")
    with pytest.raises(ValueError, match="Unknown time unit 'sec'"):
        TimeFormat(unit="sec")  # type: ignore[arg-type]


# -- a recording's clock -----------------------------------------------------------------------


def test_files_mixing_unix_and_relative_times_are_refused(tmp_path: Path) -> None:
    hr, _, _ = hour_of_files(tmp_path)
    counts = write(tmp_path / "relative.csv", count_rows(np.arange(0.0, 600.0, 15.0)))
    with pytest.raises(ValueError, match=re.escape(f"{hr} has times since 1970")) as error:
        read_user_recording(hr, counts=counts)
    assert f"but {counts} has relative times (from 0 s)" in str(error.value)


def test_a_recording_longer_than_the_limit_is_refused(tmp_path: Path) -> None:
    minutes = np.arange(0.0, 600.0, 5.0)
    days_apart = np.concatenate([START + minutes, START + 15 * 86400.0 + minutes])
    hr = write(tmp_path / "hr.csv", heart_rate_rows(days_apart))
    counts = write(tmp_path / "counts.csv", count_rows(START + np.arange(0.0, 600.0, 15.0)))
    expected = f"The files span 15 days ({hr} from 2026-03-28T21:00:00Z, {hr} to "
    with pytest.raises(ValueError, match=re.escape(expected)) as error:
        read_user_recording(hr, counts=counts)
    assert f"at most {MAX_SPAN_DAYS} days are read at once" in str(error.value)
    # one stray time a year off (a typo) is the same: nothing is built for 366 days
    stray = np.concatenate([START + minutes, [START + 366 * 86400.0]])
    hr = write(tmp_path / "hr.csv", heart_rate_rows(stray))
    with pytest.raises(ValueError, match=re.escape("The files span 366 days")):
        read_user_recording(hr, counts=counts)


# -- daylight saving ---------------------------------------------------------------------------

# zone, the evening before a change, real hours from 23:00 to 06:00 local, and the hourly clock
# ticks of that night (the change skips or repeats an hour)
DST_NIGHTS = {
    "berlin_spring_forward": (
        "Europe/Berlin",
        (2026, 3, 28),
        6,
        ["23:00", "00:00\n29 Mar", "01:00", "03:00", "04:00", "05:00", "06:00"],
    ),
    "berlin_fall_back": (
        "Europe/Berlin",
        (2026, 10, 24),
        8,
        ["23:00", "00:00\n25 Oct", "01:00", "02:00", "02:00", "03:00", "04:00", "05:00", "06:00"],
    ),
    "new_york_spring_forward": (
        "America/New_York",
        (2026, 3, 7),
        6,
        ["23:00", "00:00\n08 Mar", "01:00", "03:00", "04:00", "05:00", "06:00"],
    ),
    "new_york_fall_back": (
        "America/New_York",
        (2026, 10, 31),
        8,
        ["23:00", "00:00\n01 Nov", "01:00", "01:00", "02:00", "03:00", "04:00", "05:00", "06:00"],
    ),
}


def dst_night(
    folder: Path, name: str, date: tuple[int, int, int]
) -> tuple[Recording, ZoneInfo, float, float]:
    """Heart rate and counts from 23:00 to 06:00 local time, written as ISO-8601 times with
    the offset in force at each sample; the recording and the night's Unix start and end."""
    zone = ZoneInfo(name)
    evening = datetime(*date, 23, 0, tzinfo=zone)
    start = evening.timestamp()
    end = (evening + timedelta(hours=7)).timestamp()  # wall-clock arithmetic: 06:00 local
    hr_t, count_t = np.arange(start, end, 5.0), np.arange(start, end, 15.0)
    hr = write(folder / "hr.csv", [f"{iso(t, zone)},{60 + i % 7}" for i, t in enumerate(hr_t)])
    counts = write(
        folder / "counts.csv", [f"{iso(t, zone)},{i % 4}" for i, t in enumerate(count_t)]
    )
    return read_user_recording(hr, counts=counts), zone, start, end


@pytest.mark.parametrize(("zone", "date", "hours", "ticks"), DST_NIGHTS.values(), ids=DST_NIGHTS)
def test_a_night_across_daylight_saving_neither_gains_nor_loses_epochs(
    tmp_path: Path, zone: str, date: tuple[int, int, int], hours: int, ticks: list[str]
) -> None:
    night, _, start, end = dst_night(tmp_path, zone, date)
    assert end - start == hours * 3600  # 23:00 to 06:00 local is 6 h or 8 h of real time
    np.testing.assert_array_equal(night.hr_times, np.arange(start, end, 5.0))
    np.testing.assert_array_equal(np.diff(night.count_times), 15.0)
    assert night.n_epochs == (end - start) / 30
    np.testing.assert_array_equal(night.epoch_times, np.arange(start, end, 30.0))


def results_of(night: Recording) -> list[EpochResult]:
    """One result per epoch, as the detector gives them (values do not matter here)."""
    return [
        EpochResult(start=float(t), end=float(t) + 30, p_sleep=0.9, p_model=0.9, state="asleep")
        for t in night.epoch_times
    ]


@pytest.mark.parametrize(("zone", "date", "hours", "ticks"), DST_NIGHTS.values(), ids=DST_NIGHTS)
def test_plot_ticks_show_the_local_clock_across_daylight_saving(
    tmp_path: Path, zone: str, date: tuple[int, int, int], hours: int, ticks: list[str]
) -> None:
    night, _, _, _ = dst_night(tmp_path, zone, date)
    fig = replay_figure(night, results_of(night), 0.7, zone)
    axis = fig.axes[-1]
    assert [label.get_text() for label in axis.get_xticklabels()] == ticks
    np.testing.assert_allclose(axis.get_xticks(), np.arange(hours + 1))  # hourly in real time
    assert axis.get_xlabel() == f"local time ({zone})"


def table_text(result: EpochResult, zone: str) -> str:
    console = Console(file=io.StringIO(), width=100)
    console.print(live_table(result, "user", -1, zone))
    return console.file.getvalue()  # type: ignore[attr-defined, no-any-return]


def test_table_times_across_the_spring_change_in_berlin(tmp_path: Path) -> None:
    night, zone, _, _ = dst_night(tmp_path, "Europe/Berlin", (2026, 3, 28))
    texts = [time_text(r.end, zone) for r in results_of(night)]
    at = texts.index("01:59 CET", texts.index("01:59 CET") + 1)  # the epoch ending 01:59:30
    assert texts[at + 1] == "03:00 CEST"
    assert not any(t.startswith("02:") for t in texts)
    assert "01:59 CET" in table_text(results_of(night)[at], "Europe/Berlin")


@pytest.mark.parametrize(
    ("zone", "date", "summer", "winter"),
    [
        ("Europe/Berlin", (2026, 10, 24), "02:30 CEST", "02:30 CET"),
        ("America/New_York", (2026, 10, 31), "01:30 EDT", "01:30 EST"),
    ],
)
def test_the_repeated_hour_appears_twice_in_the_table(
    tmp_path: Path, zone: str, date: tuple[int, int, int], summer: str, winter: str
) -> None:
    night, zone_info, _, _ = dst_night(tmp_path, zone, date)
    texts = [time_text(r.end, zone_info) for r in results_of(night)]
    clock = [t[:5] for t in texts]
    assert clock.count(summer[:5]) == 4  # two epochs end in that minute, in each pass
    assert texts.index(winter) - texts.index(summer) == 120  # an hour of epochs apart
    assert summer in table_text(results_of(night)[texts.index(summer)], zone)


def test_relative_times_show_hours_since_the_start(tmp_path: Path) -> None:
    hr = write(tmp_path / "hr.csv", heart_rate_rows(np.arange(0.0, 7200.0, 5.0)))
    counts = write(tmp_path / "counts.csv", count_rows(np.arange(0.0, 7200.0, 15.0)))
    night = read_user_recording(hr, counts=counts)
    results = results_of(night)
    assert "  1.50 h" in table_text(results[179], "Europe/Berlin")
    axis = replay_figure(night, results, 0.7, "Europe/Berlin").axes[-1]
    assert axis.get_xlabel() == "hours since the start of the recording"
    assert TimeAxis.for_times(0.0, ZoneInfo("UTC")).zone is None


def test_epochs_without_data_are_gaps_in_the_plot(tmp_path: Path) -> None:
    hr, counts, _ = hour_of_files(tmp_path)
    night = read_user_recording(hr, counts=counts)
    results = results_of(night)
    results[10] = EpochResult(results[10].start, results[10].end, np.nan, np.nan, "unknown")
    del results[50:60]  # epochs the detector did not report
    fig = replay_figure(night, results, 0.7, "UTC")
    line = next(ln for ln in fig.axes[0].get_lines() if ln.get_label() == "p(sleep)")
    y = np.asarray(line.get_ydata(), dtype=float)
    assert np.isnan(y).sum() == 2  # the NaN epoch and one break before the missing ones
    assert "-" in table_text(results[10], "UTC") and "nan" not in table_text(results[10], "UTC")
