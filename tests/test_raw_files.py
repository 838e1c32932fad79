"""Raw recordings as CSV and Parquet: columns, time formats, acceleration units, errors, blocks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sleepstream.data import raw
from sleepstream.data.raw import RawFileError, RawOptions, read_raw_file
from sleepstream.live.units import G

START = 1774738800.0  # 2026-03-28T23:00:00Z: the night Europe/Berlin goes to summer time
BERLIN = "Europe/Berlin"


def _times(n: int, step: float) -> np.ndarray:
    return START + step * np.arange(n)


def _time_column(t: np.ndarray, fmt: str) -> pd.Series:
    stamps = pd.to_datetime(t, unit="s", utc=True)
    if fmt == "s":
        return pd.Series(t)
    if fmt == "ms":
        return pd.Series(np.round(t * 1000).astype(np.int64))
    if fmt == "iso-offset":
        local = stamps.tz_convert(BERLIN)
        return pd.Series([s.isoformat() for s in local])
    if fmt == "iso-z":
        return pd.Series(stamps.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    if fmt == "iso-naive":  # local wall-clock times without an offset
        return pd.Series(stamps.tz_convert(BERLIN).strftime("%Y-%m-%d %H:%M:%S.%f"))
    raise AssertionError(fmt)


def _write(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    return path


TIME_FORMATS = ["s", "ms", "iso-offset", "iso-z", "iso-naive"]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
@pytest.mark.parametrize("fmt", TIME_FORMATS)
def test_heart_rate_in_every_time_format_reads_as_the_same_unix_times(
    tmp_path: Path, fmt: str, suffix: str
) -> None:
    # Two hours across the spring-forward change (01:59:59 CET -> 03:00:00 CEST at 01:00Z).
    t = _times(720, 10.0) + 3600.0
    bpm = 60 + 5 * np.sin(np.arange(len(t)) / 30)
    path = _write(
        pd.DataFrame({"Timestamp": _time_column(t, fmt), "BPM": bpm}), tmp_path / f"hr{suffix}"
    )
    options = RawOptions(timezone=BERLIN) if fmt == "iso-naive" else RawOptions()
    got = read_raw_file(path, options)
    assert got.accel_times is None and got.hr_times is not None and got.hr_bpm is not None
    np.testing.assert_allclose(got.hr_times, t, rtol=0, atol=1e-3)
    np.testing.assert_allclose(got.hr_bpm, bpm)
    if fmt == "iso-offset":  # the offsets change with the clocks: CET, then CEST
        assert [m for _, m in got.offsets] == [60.0, 120.0]
        change = next(s for s, m in got.offsets if m == 120.0)
        assert change == pytest.approx(1774746000.0)  # 2026-03-29T01:00:00Z


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
@pytest.mark.parametrize("units", ["g", "m/s2"])
def test_acceleration_in_g_or_metres_per_second_squared_is_detected(
    tmp_path: Path, units: str, suffix: str
) -> None:
    rng = np.random.default_rng(0)
    n = 3000
    z_g = -0.8 + 0.01 * rng.standard_normal(n)
    xyz_g = np.column_stack([np.sqrt(1 - z_g**2), 0.01 * rng.standard_normal(n), z_g])
    scale = 1.0 if units == "g" else G
    frame = pd.DataFrame(
        {
            "time": _time_column(_times(n, 0.02), "ms"),
            "Acc_X": xyz_g[:, 0] * scale,
            "ACC_Y": xyz_g[:, 1] * scale,
            "acc_z": xyz_g[:, 2] * scale,
        }
    )
    got = read_raw_file(_write(frame, tmp_path / f"accel{suffix}"))
    assert got.units == units
    assert got.accel_z is not None and got.accel_z.dtype == np.float32
    np.testing.assert_allclose(got.accel_z, z_g, atol=1e-6)
    assert got.time_format == "Unix milliseconds"


def test_units_given_override_detection(tmp_path: Path) -> None:
    frame = pd.DataFrame({"time": _times(10, 0.02), "x": 0.0, "y": 0.0, "z": 1.0})
    got = read_raw_file(_write(frame, tmp_path / "a.csv"), RawOptions(units="m/s2"))
    assert got.units == "m/s2"
    assert got.accel_z is not None
    np.testing.assert_allclose(got.accel_z, 1.0 / G, rtol=1e-6)


def test_a_file_with_both_acceleration_and_heart_rate_keeps_both(tmp_path: Path) -> None:
    t = _times(500, 0.02)
    bpm = np.full(len(t), np.nan)
    bpm[::250] = [58.0, 59.0]
    frame = pd.DataFrame({"time": t, "x": 0.6, "y": 0.0, "z": -0.8, "heart_rate": bpm})
    got = read_raw_file(_write(frame, tmp_path / "both.parquet"))
    assert got.accel_times is not None and len(got.accel_times) == 500
    assert got.hr_bpm is not None and got.hr_bpm.tolist() == [58.0, 59.0]


# -- errors that name file, column, row and value ------------------------------------------


def test_a_number_that_is_no_unix_time_unit_is_refused_naming_the_value(tmp_path: Path) -> None:
    path = _write(pd.DataFrame({"time": [5e10, 5e10 + 5], "bpm": [60, 61]}), tmp_path / "hr.csv")
    with pytest.raises(
        RawFileError,
        match=r"hr\.csv, column 'time', row 1: time 50000000000 "
        r"is not Unix seconds, milliseconds",
    ):
        read_raw_file(path)


def test_relative_seconds_are_refused_even_with_a_unit(tmp_path: Path) -> None:
    path = _write(pd.DataFrame({"t": [0.0, 5.0], "hr": [60, 61]}), tmp_path / "hr.csv")
    with pytest.raises(RawFileError, match="not Unix seconds"):
        read_raw_file(path)
    with pytest.raises(RawFileError, match="not between 2000 and 2100"):
        read_raw_file(path, RawOptions(time_unit="s"))


def test_a_time_in_another_unit_than_the_first_is_refused_with_its_row(tmp_path: Path) -> None:
    times = [START, START + 5, (START + 10) * 1000]
    path = _write(pd.DataFrame({"time": times, "bpm": [60, 61, 62]}), tmp_path / "hr.csv")
    with pytest.raises(RawFileError, match=r"row 3: time 1774738810000 is not in seconds"):
        read_raw_file(path)


def test_naive_iso_times_without_a_zone_are_refused(tmp_path: Path) -> None:
    frame = pd.DataFrame({"time": _time_column(_times(3, 5.0), "iso-naive"), "bpm": 60})
    with pytest.raises(
        RawFileError, match=r"column 'time', row 1: .* has no UTC offset.*--timezone"
    ):
        read_raw_file(_write(frame, tmp_path / "hr.csv"))


def test_a_local_time_the_clocks_skipped_is_refused(tmp_path: Path) -> None:
    frame = pd.DataFrame({"time": ["2026-03-29 01:59:00", "2026-03-29 02:30:00"], "bpm": 60})
    with pytest.raises(
        RawFileError, match=r"row 2: local time '2026-03-29 02:30:00' does not exist"
    ):
        read_raw_file(_write(frame, tmp_path / "hr.csv"), RawOptions(timezone=BERLIN))


def test_unknown_columns_are_listed(tmp_path: Path) -> None:
    path = _write(pd.DataFrame({"when": [START], "pulse_ox": [97]}), tmp_path / "x.csv")
    with pytest.raises(RawFileError, match=r"no time column .* found \['when', 'pulse_ox'\]"):
        read_raw_file(path)
    path = _write(pd.DataFrame({"time": [START], "x": [0.0], "y": [1.0]}), tmp_path / "xy.csv")
    with pytest.raises(RawFileError, match=r"needs x, y and z columns; found only \['x', 'y'\]"):
        read_raw_file(path)


def test_a_value_that_is_not_a_number_is_named_with_its_row(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text(f"time,x,y,z\n{START},0,0,1\n{START + 0.02},0,oops,1\n")
    with pytest.raises(RawFileError, match=r"column 'y', row 2: 'oops' is not a number"):
        read_raw_file(path)


def test_impossible_heart_rate_is_refused(tmp_path: Path) -> None:
    path = _write(pd.DataFrame({"time": [START, START + 5], "bpm": [60, 900]}), tmp_path / "hr.csv")
    with pytest.raises(RawFileError, match=r"row 2: heart rate 900 is not"):
        read_raw_file(path)


@pytest.mark.parametrize("magnitude", [0.02, 4.0])
def test_acceleration_that_is_neither_g_nor_metres_is_refused(
    tmp_path: Path, magnitude: float
) -> None:
    frame = pd.DataFrame({"time": _times(100, 0.02), "x": 0.0, "y": 0.0, "z": magnitude})
    with pytest.raises(RawFileError, match=f"magnitude is about {magnitude:.3g}: .*--units"):
        read_raw_file(_write(frame, tmp_path / "a.csv"))


def test_unsupported_file_type(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("time,bpm\n")
    with pytest.raises(RawFileError, match=r"expected a raw recording ending in \.csv"):
        read_raw_file(path)


# -- blocks ----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_small_blocks_give_the_same_result_and_rows_count_across_blocks(
    tmp_path: Path, suffix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 5000
    t = _times(n, 0.02)
    frame = pd.DataFrame({"time": t, "x": 0.6, "y": 0.0, "z": -0.8 + 1e-4 * np.arange(n)})
    path = _write(frame, tmp_path / f"a{suffix}")
    whole = read_raw_file(path)
    monkeypatch.setattr(raw, "BLOCK_ROWS", 700)
    monkeypatch.setattr(raw, "CSV_BLOCK_BYTES", 4096)
    blocks = read_raw_file(path)
    assert blocks.accel_times is not None and whole.accel_times is not None
    np.testing.assert_array_equal(blocks.accel_times, whole.accel_times)
    np.testing.assert_array_equal(blocks.accel_z, whole.accel_z)
    frame.loc[4321, "time"] = np.nan
    with pytest.raises(RawFileError, match="row 4322: empty time"):
        read_raw_file(_write(frame, path))


def test_rows_out_of_order_are_sorted_and_repeats_dropped(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {"time": [START + 10, START, START + 5, START + 5], "bpm": [62, 60, 61, 70]}
    )
    got = read_raw_file(_write(frame, tmp_path / "hr.csv"))
    assert got.hr_times is not None and got.hr_bpm is not None
    assert (got.hr_times - START).tolist() == [0.0, 5.0, 10.0]
    assert got.hr_bpm.tolist() == [60.0, 61.0, 62.0]
