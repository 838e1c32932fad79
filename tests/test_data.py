"""Reading the sleep-accel folder: the real nights, every kind of bad input, repairs, the cache,
the per-subject check and the ``sleepstream data check`` command."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from numpy.typing import NDArray
from rich.console import Console

from sleepstream import cli
from sleepstream.data import folder as data_folder_module
from sleepstream.data import parse
from sleepstream.data.check import check_folder, check_table
from sleepstream.data.folder import (
    cache_folder,
    data_folder,
    load_all,
    load_recording,
    subject_ids,
)
from sleepstream.data.parse import DataFormatError
from sleepstream.records import PAPER_FEATURE_NAMES, Recording, Stage

if TYPE_CHECKING:
    from conftest import SyntheticNight

N_SUBJECTS = 31


# --- the real nights -------------------------------------------------------------------------


def _by_id(recordings: list[Recording]) -> dict[str, Recording]:
    return {r.subject_id: r for r in recordings}


def test_all_subjects_load(data_dir: Path, recordings: list[Recording]) -> None:
    label_files = sorted(p.name.split("_")[0] for p in (data_dir / "labels").iterdir())
    assert len(recordings) == N_SUBJECTS
    assert sorted(r.subject_id for r in recordings) == label_files
    for r in recordings:
        assert r.count_source == "counts"
        assert r.n_epochs > 0 and len(r.hr_times) > 0 and len(r.counts) > 0
        np.testing.assert_array_equal(r.epoch_times, 30.0 * np.arange(r.n_epochs))
        assert (np.diff(r.hr_times) > 0).all(), r.subject_id
        assert (np.diff(r.count_times) > 0).all(), r.subject_id
        assert ((r.hr_bpm >= 25) & (r.hr_bpm <= 250)).all()
        assert (r.counts >= 0).all()
        assert 3.4 <= r.end_time / 3600 <= 8.25


def test_known_trap_short_counts_7749105(recordings: list[Recording]) -> None:
    r = _by_id(recordings)["7749105"]
    assert r.count_times[-1] / 3600 == pytest.approx(1.1, abs=0.05)
    assert r.end_time / 3600 == pytest.approx(8.0, abs=0.1)


def test_known_trap_late_counts_1360686(recordings: list[Recording]) -> None:
    r = _by_id(recordings)["1360686"]
    assert r.count_times[0] == pytest.approx(1255, abs=1)


def test_known_trap_heart_rate_history_781756(recordings: list[Recording]) -> None:
    assert _by_id(recordings)["781756"].hr_times[0] / 3600 == pytest.approx(-4, abs=0.1)


def test_known_trap_stage_totals(recordings: list[Recording]) -> None:
    stages = np.concatenate([r.stages for r in recordings])
    assert int((stages == Stage.UNSCORED).sum()) == 438
    assert int((stages == Stage.N4).sum()) == 356
    scored = stages[stages != Stage.UNSCORED]
    assert float((scored == Stage.WAKE).mean()) == pytest.approx(0.09, abs=0.005)


def test_paper_valid_epochs_align_on_every_subject(
    data_dir: Path, recordings: list[Recording]
) -> None:
    with_features = {p.name.split("_")[0] for p in (data_dir / "walch_features").iterdir()}
    assert len(with_features) == N_SUBJECTS
    for r in recordings:
        assert r.paper_valid is not None and r.paper_features is not None, r.subject_id
        paper_labels = np.loadtxt(data_dir / "walch_features" / f"{r.subject_id}_psg_labels.out")
        assert int(r.paper_valid.sum()) == len(paper_labels), r.subject_id
        # The paper merges N4 into N3 in some files; compare with both merged.
        mine = np.where(r.stages == Stage.N4, Stage.N3, r.stages)[r.paper_valid]
        np.testing.assert_array_equal(mine, np.where(paper_labels == 4, 3, paper_labels))
        assert (r.stages[r.paper_valid] != Stage.UNSCORED).all()
        assert r.paper_features.shape == (r.n_epochs, len(PAPER_FEATURE_NAMES))
        finite = np.isfinite(r.paper_features)
        assert (finite.all(axis=1) == r.paper_valid).all()
        assert (~finite[~r.paper_valid]).all()
        # time_feature: hours since the first valid epoch.
        hours = r.paper_features[r.paper_valid, PAPER_FEATURE_NAMES.index("time")]
        first = r.epoch_times[r.paper_valid][0]
        np.testing.assert_allclose(hours, (r.epoch_times[r.paper_valid] - first) / 3600, atol=1e-5)


def test_data_folder_from_environment(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SLEEPSTREAM_DATA", str(data_dir))
    assert data_folder() == data_dir
    monkeypatch.delenv("SLEEPSTREAM_DATA")
    with pytest.raises(FileNotFoundError, match="SLEEPSTREAM_DATA"):
        data_folder()
    with pytest.raises(FileNotFoundError, match="no labels/"):
        data_folder(tmp_path)


def test_subject_ids_sorted_numerically(data_dir: Path) -> None:
    ids = subject_ids(data_dir)
    assert ids == sorted(ids, key=int)


# --- bad input: every error names the file and the line ----------------------------------------


def _expect_error(night: SyntheticNight, kind: str, line: int | None) -> str:
    """Load the written night, expect a DataFormatError naming the file (and line)."""
    folder = night.write()
    with pytest.raises(DataFormatError) as error:
        load_recording(folder, night.subject_id)
    message = str(error.value)
    assert str(night.path(kind)) in message, message
    if line is not None:
        assert f"{night.path(kind)}, line {line}:" in message, message
    return message


# (file kind, 0-based row to replace, replacement, fragment expected in the message)
BAD_ROWS = {
    "labels_unparsable": ("labels", 4, "120 two", "cannot parse"),
    "heart_rate_unparsable": ("heart_rate", 10, "-250.000,6O", "cannot parse"),
    "counts_unparsable": ("counts", 3, "45.000,1.2.3", "cannot parse"),
    "labels_nan": ("labels", 6, "180 nan", "non-finite"),
    "heart_rate_nan": ("heart_rate", 7, "-265.000,NaN", "non-finite"),
    "heart_rate_inf": ("heart_rate", 7, "-265.000,inf", "non-finite"),
    "counts_nan": ("counts", 2, "30.000,nan", "non-finite"),
    "heart_rate_empty_value": ("heart_rate", 7, "-265.000,", "cannot parse"),
    "labels_three_columns": ("labels", 5, "150 2 1", "expected 2 values"),
    "labels_one_column": ("labels", 5, "150", "expected 2 values"),
    "heart_rate_three_columns": ("heart_rate", 12, "-240.000,61,1", "expected 2 values"),
    "heart_rate_one_column": ("heart_rate", 12, "-240.000", "expected 2 values"),
    "heart_rate_semicolon": ("heart_rate", 12, "-240.000;61", "expected 2 values"),
    "counts_three_columns_first_row": ("counts", 0, "0.000,0,0", "expected 2 values"),
    "labels_off_grid": ("labels", 8, "245 2", "label time 245.0 is not on the 30 s epoch grid"),
    "labels_half_second_off_grid": ("labels", 3, "90.5 2", "label time 90.5 is not on"),
    "labels_stage_6": ("labels", 9, "270 6", "stage 6.0 is not one of"),
    "labels_stage_minus_2": ("labels", 9, "270 -2", "stage -2.0 is not one of"),
    "labels_stage_fraction": ("labels", 9, "270 2.5", "stage 2.5 is not one of"),
    "heart_rate_below_25": ("heart_rate", 20, "-200.000,24.9", "24.9 bpm is outside"),
    "heart_rate_above_250": ("heart_rate", 21, "-195.000,251", "251 bpm is outside"),
    "counts_negative": ("counts", 6, "90.000,-0.5", "-0.5 is negative"),
}


@pytest.mark.parametrize(("kind", "row", "bad", "fragment"), BAD_ROWS.values(), ids=BAD_ROWS)
def test_bad_row_names_file_and_line(
    night: SyntheticNight, kind: str, row: int, bad: str, fragment: str
) -> None:
    lines = getattr(night, kind)
    lines[row] = bad
    message = _expect_error(night, kind, line=row + 1)
    assert fragment in message


def test_bad_motion_row_names_file_and_line(night: SyntheticNight) -> None:
    times = np.arange(0.0, 60.0, 0.02)
    night.set_motion(times, np.zeros_like(times))
    assert night.motion is not None
    night.motion[1234] = "24.680000 0.01 -0.02"
    message = _expect_error(night, "motion", line=1235)
    assert "expected 4 values" in message


@pytest.mark.parametrize(("kind", "row", "bad", "fragment"), BAD_ROWS.values(), ids=BAD_ROWS)
def test_blank_lines_before_a_bad_row_keep_its_line_number(
    night: SyntheticNight, kind: str, row: int, bad: str, fragment: str
) -> None:
    # Lines count blank lines too: three blank lines before the bad row move it down three.
    lines = getattr(night, kind)
    lines[row] = bad
    lines[row:row] = ["", "   "]
    lines.insert(0, "")
    message = _expect_error(night, kind, line=row + 4)
    assert fragment in message


def test_out_of_order_warning_counts_blank_lines(
    night: SyntheticNight, caplog: pytest.LogCaptureFixture
) -> None:
    assert night.heart_rate is not None
    night.heart_rate[9], night.heart_rate[10] = night.heart_rate[10], night.heart_rate[9]
    night.heart_rate[5:5] = ["", ""]
    with caplog.at_level(logging.WARNING, logger="sleepstream.data.parse"):
        load_recording(night.write(), night.subject_id, use_cache=False)
    (message,) = _parse_warnings(caplog)
    assert "1 rows out of time order (first at line 13)" in message


@pytest.mark.parametrize("kind", ["labels", "heart_rate", "counts"])
def test_undecodable_file_names_file_line_and_byte_offset(night: SyntheticNight, kind: str) -> None:
    folder = night.write()
    path = night.path(kind)
    text = path.read_bytes()
    lines = text.split(b"\n")
    before = b"\n".join(lines[:3]) + b"\n" + lines[3][:2]  # two bytes into line 4
    path.write_bytes(before + b"\xff\xfe" + text[len(before) :])
    with pytest.raises(DataFormatError) as error:
        load_recording(folder, night.subject_id, use_cache=False)
    expected = f"{path}, line 4: not UTF-8 text: byte 0xff at byte offset {len(before)} "
    assert str(error.value).startswith(expected), str(error.value)


def test_binary_file_names_the_first_byte(night: SyntheticNight) -> None:
    folder = night.write()
    path = night.path("heart_rate")
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(
        DataFormatError,
        match=re.escape(f"{path}, line 1: not UTF-8 text: byte 0x89 at byte offset 0"),
    ):
        load_recording(folder, night.subject_id, use_cache=False)


def test_undecodable_byte_offset_counts_from_the_start_of_a_large_file(tmp_path: Path) -> None:
    # Decoding goes 1 MiB at a time: the offset must not be relative to the failing chunk,
    # also when a valid two-byte character straddles the chunk boundary.
    rows = b"30 1\n" * (2**20 // 5)
    filler = b" " * (2**20 - 1 - len(rows))
    head = rows + filler + "\u00e9".encode() + b"\n60 1\n90 "
    path = tmp_path / "labels.txt"
    path.write_bytes(head + b"\xc3\x28 1\n")
    line = head.count(b"\n") + 1
    expected = f"{path}, line {line}: not UTF-8 text: byte 0xc3 at byte offset {len(head)} "
    with pytest.raises(DataFormatError) as error:
        parse.read_table(path, None, 2)
    assert str(error.value).startswith(expected), str(error.value)


def test_blank_lines_hold_no_data_and_are_skipped(night: SyntheticNight) -> None:
    assert night.counts is not None
    expected = load_recording(night.write(), night.subject_id, use_cache=False).counts
    night.counts.insert(5, "")
    night.counts.append("")
    r = load_recording(night.write(), night.subject_id, use_cache=False)
    np.testing.assert_array_equal(r.counts, expected)


@pytest.mark.parametrize("bpm", ["25", "250"])
def test_heart_rate_limits_are_inclusive(night: SyntheticNight, bpm: str) -> None:
    assert night.heart_rate is not None
    night.heart_rate[3] = f"-285.000,{bpm}"
    r = load_recording(night.write(), night.subject_id)
    assert r.hr_bpm[3] == float(bpm)


@pytest.mark.parametrize("kind", ["labels", "heart_rate", "counts"])
@pytest.mark.parametrize("content", [[], ["   ", ""]], ids=["empty", "blank"])
def test_empty_file_names_the_file(night: SyntheticNight, kind: str, content: list[str]) -> None:
    # An empty file has no line to name; the message names the file and says it is empty.
    setattr(night, kind, content)
    message = _expect_error(night, kind, line=None)
    assert message == f"{night.path(kind)}: file is empty"


def test_labels_without_heart_rate(night: SyntheticNight) -> None:
    night.heart_rate = None
    folder = night.write()
    with pytest.raises(DataFormatError) as error:
        load_recording(folder, night.subject_id)
    message = str(error.value)
    # No line to name: the message names the label file and the heart-rate file it looked for.
    assert str(night.path("labels")) in message
    assert f"heart_rate/{night.subject_id}_heartrate.txt" in message
    assert f"Subject {night.subject_id}" in message


def test_labels_without_counts_or_motion(night: SyntheticNight) -> None:
    night.counts = None
    folder = night.write()
    expected = "neither motion/1001_acceleration.txt nor counts/1001_counts.txt"
    with pytest.raises(DataFormatError, match=re.escape(expected)):
        load_recording(folder, night.subject_id)


def test_missing_label_file(night: SyntheticNight) -> None:
    folder = night.write()
    with pytest.raises(FileNotFoundError, match=re.escape("labels/999_labeled_sleep.txt")):
        load_recording(folder, "999")


def test_good_synthetic_night_reads_back(night: SyntheticNight) -> None:
    r = load_recording(night.write(), night.subject_id)
    assert r.n_epochs == 20
    np.testing.assert_array_equal(r.epoch_times, 30.0 * np.arange(20))
    assert r.stages.tolist() == [int(line.split()[1]) for line in night.labels or []]
    assert r.hr_times[0] == -300.0 and r.hr_times[-1] == 595.0
    np.testing.assert_array_equal(r.count_times, 15.0 * np.arange(40))
    assert r.counts[:5].tolist() == [0.0, 10.0, 20.0, 30.0, 0.0]
    assert r.count_source == "counts"
    assert r.paper_valid is None and r.paper_features is None


# --- repairs: sorted or de-duplicated, with a warning that counts them -------------------------


def _parse_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "sleepstream.data.parse" and r.levelno == logging.WARNING
    ]


def _values(lines: list[str], sep: str | None) -> NDArray[np.float64]:
    return np.array([[float(v) for v in line.split(sep)] for line in lines])


def test_out_of_order_heart_rate_is_sorted_with_warning(
    night: SyntheticNight, caplog: pytest.LogCaptureFixture
) -> None:
    assert night.heart_rate is not None
    night.heart_rate[9], night.heart_rate[10] = night.heart_rate[10], night.heart_rate[9]
    night.heart_rate[30], night.heart_rate[31] = night.heart_rate[31], night.heart_rate[30]
    expected = _values(sorted(night.heart_rate, key=lambda s: float(s.split(",")[0])), ",")
    with caplog.at_level(logging.WARNING, logger="sleepstream.data.parse"):
        r = load_recording(night.write(), night.subject_id, use_cache=False)
    np.testing.assert_array_equal(r.hr_times, expected[:, 0])
    np.testing.assert_array_equal(r.hr_bpm, expected[:, 1])
    (message,) = _parse_warnings(caplog)
    assert str(night.path("heart_rate")) in message
    assert "2 rows out of time order (first at line 11)" in message


def test_out_of_order_labels_are_sorted_with_warning(
    night: SyntheticNight, caplog: pytest.LogCaptureFixture
) -> None:
    assert night.labels is not None
    original = list(night.labels)
    night.labels[3], night.labels[4] = night.labels[4], night.labels[3]
    with caplog.at_level(logging.WARNING, logger="sleepstream.data.parse"):
        r = load_recording(night.write(), night.subject_id, use_cache=False)
    np.testing.assert_array_equal(r.epoch_times, 30.0 * np.arange(20))
    assert r.stages.tolist() == _values(original, None)[:, 1].tolist()
    (message,) = _parse_warnings(caplog)
    assert f"{night.path('labels')}: 1 rows out of time order (first at line 5)" in message


def test_duplicate_heart_rate_times_keep_first_with_warning(
    night: SyntheticNight, caplog: pytest.LogCaptureFixture
) -> None:
    assert night.heart_rate is not None
    expected = _values(night.heart_rate, ",")
    night.heart_rate.insert(7, "-270.000,99")  # repeats t = -270 (row 6) with another value
    night.heart_rate.insert(22, "-200.000,98")  # after t = -200, now at index 21
    night.heart_rate.insert(23, "-200.000,97")
    with caplog.at_level(logging.WARNING, logger="sleepstream.data.parse"):
        r = load_recording(night.write(), night.subject_id, use_cache=False)
    np.testing.assert_array_equal(r.hr_times, expected[:, 0])
    np.testing.assert_array_equal(r.hr_bpm, expected[:, 1])
    assert 99 not in r.hr_bpm and 98 not in r.hr_bpm and 97 not in r.hr_bpm
    (message,) = _parse_warnings(caplog)
    assert f"{night.path('heart_rate')}: 3 rows repeat the previous timestamp" in message
    assert "first at t=-270.000 s" in message


def test_out_of_order_duplicate_counts_keep_first_in_file_order(
    night: SyntheticNight, caplog: pytest.LogCaptureFixture
) -> None:
    assert night.counts is not None
    expected = _values(night.counts, ",")
    night.counts.insert(4, "15.000,777")  # after t = 45: out of order and a repeat of t = 15
    with caplog.at_level(logging.WARNING, logger="sleepstream.data.parse"):
        r = load_recording(night.write(), night.subject_id, use_cache=False)
    np.testing.assert_array_equal(r.count_times, expected[:, 0])
    np.testing.assert_array_equal(r.counts, expected[:, 1])
    messages = _parse_warnings(caplog)
    assert len(messages) == 2
    assert "1 rows out of time order (first at line 5)" in messages[0]
    assert "1 rows repeat the previous timestamp (first at t=15.000 s)" in messages[1]


def test_clean_files_log_no_warning(
    night: SyntheticNight, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="sleepstream.data.parse"):
        load_recording(night.write(), night.subject_id, use_cache=False)
    assert _parse_warnings(caplog) == []


# --- cache --------------------------------------------------------------------------------------


def _assert_same(a: Recording, b: Recording) -> None:
    for name in ("epoch_times", "stages", "hr_times", "hr_bpm", "count_times", "counts"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)
    assert (a.subject_id, a.count_source) == (b.subject_id, b.count_source)


def test_second_load_comes_from_cache_and_edits_invalidate_it(
    night: SyntheticNight, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SLEEPSTREAM_CACHE", str(tmp_path / "cache"))
    assert cache_folder() == tmp_path / "cache" / "parsed"
    folder = night.write()
    calls: list[str] = []
    parse_recording = data_folder_module._parse_recording

    def counting_parser(subject_id: str, files: dict[str, Path]) -> dict[str, NDArray[np.generic]]:
        calls.append(subject_id)
        return parse_recording(subject_id, files)

    monkeypatch.setattr(data_folder_module, "_parse_recording", counting_parser)
    first = load_recording(folder, night.subject_id)
    assert calls == [night.subject_id]
    stored = list(cache_folder().glob(f"{night.subject_id}-*.npz"))
    assert len(stored) == 1

    def must_not_parse(subject_id: str, files: dict[str, Path]) -> None:
        raise AssertionError(f"parsed {subject_id} again instead of reading the cache")

    monkeypatch.setattr(data_folder_module, "_parse_recording", must_not_parse)
    second = load_recording(folder, night.subject_id)
    _assert_same(first, second)

    # Same size, different content: the cache key must change.
    assert night.heart_rate is not None
    last_time, last_bpm = night.heart_rate[-1].split(",")
    new_bpm = float(last_bpm) + 10
    night.heart_rate[-1] = f"{last_time},{new_bpm:g}"
    night.write()
    with pytest.raises(AssertionError, match="parsed 1001 again"):
        load_recording(folder, night.subject_id)
    monkeypatch.setattr(data_folder_module, "_parse_recording", counting_parser)
    third = load_recording(folder, night.subject_id)
    assert calls == [night.subject_id] * 2
    assert third.hr_bpm[-1] == new_bpm and first.hr_bpm[-1] == float(last_bpm)
    np.testing.assert_array_equal(third.hr_bpm[:-1], first.hr_bpm[:-1])
    assert len(list(cache_folder().glob(f"{night.subject_id}-*.npz"))) == 2


def test_use_cache_false_writes_nothing(
    night: SyntheticNight, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SLEEPSTREAM_CACHE", str(tmp_path / "cache"))
    load_recording(night.write(), night.subject_id, use_cache=False)
    assert not (tmp_path / "cache").exists()


def test_cached_real_nights_equal_parsed(data_dir: Path, recordings: list[Recording]) -> None:
    subjects = ["7749105", "1360686"]
    fresh = load_all(data_dir, subjects, use_cache=False)
    cached = load_all(data_dir, subjects)
    by_id = _by_id(recordings)
    for a, b in zip(fresh, cached, strict=True):
        _assert_same(a, b)
        _assert_same(a, by_id[a.subject_id])
        assert b.paper_valid is not None and a.paper_valid is not None
        np.testing.assert_array_equal(a.paper_valid, b.paper_valid)
        np.testing.assert_array_equal(a.paper_features, b.paper_features)


# --- data check and the command ----------------------------------------------------------------


def _two_good_one_broken(make_night: Callable[..., SyntheticNight]) -> Path:
    make_night("1001").write()
    make_night("1002", counts=None).write()  # broken: no counts and no motion
    bad_hr = make_night("1003")
    assert bad_hr.heart_rate is not None
    bad_hr.heart_rate[4] = "-280.000,300"
    return bad_hr.write()


def test_check_folder_summarises_each_subject(
    make_night: Callable[..., SyntheticNight],
) -> None:
    folder = make_night("1001").write()
    make_night("20", labels=[f"{30 * i} {i % 2}" for i in range(10)]).write()
    rows = check_folder(folder).subjects
    assert [r.subject_id for r in rows] == ["20", "1001"]
    short, full = rows
    assert not short.error and not full.error
    assert full.night_hours == pytest.approx(600 / 3600)
    assert full.scored_epochs == 18  # two -1 in the 20 cycled epochs
    assert full.wake_fraction == pytest.approx(4 / 18)
    assert full.hr_history_hours == pytest.approx(300 / 3600)
    assert full.hr_night_coverage == pytest.approx(1.0)
    assert full.hr_longest_gap_min == pytest.approx(5 / 60)
    assert full.hr_gaps == 0
    assert full.counts_source == "counts"
    assert full.counts_span_hours == pytest.approx((0.0, 585 / 3600))
    assert full.counts_night_coverage == pytest.approx(1.0)
    assert "labels" in full.present and "counts" in full.present
    assert short.scored_epochs == 10 and short.wake_fraction == pytest.approx(0.5)


def test_check_folder_reports_broken_subjects(
    make_night: Callable[..., SyntheticNight],
) -> None:
    folder = _two_good_one_broken(make_night)
    rows = {r.subject_id: r for r in check_folder(folder).subjects}
    assert set(rows) == {"1001", "1002", "1003"}
    assert rows["1001"].error == ""
    assert "neither motion/1002_acceleration.txt nor counts/1002_counts.txt" in rows["1002"].error
    assert "1003_heartrate.txt, line 5: heart rate 300 bpm" in rows["1003"].error
    assert np.isnan(rows["1003"].night_hours)


def test_cli_data_check_good_folder(make_night: Callable[..., SyntheticNight]) -> None:
    folder = make_night("1001").write()
    make_night("1002").write()
    assert cli.main(["data", "check", str(folder)]) == 0


def test_cli_data_check_broken_folder(make_night: Callable[..., SyntheticNight]) -> None:
    folder = _two_good_one_broken(make_night)
    assert cli.main(["data", "check", str(folder)]) != 0


def test_cli_data_check_not_a_data_folder(tmp_path: Path) -> None:
    assert cli.main(["data", "check", str(tmp_path)]) != 0


# --- nothing disappears silently: orphans, stray files, missing modalities --------------------


def _folder_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "sleepstream.data.folder" and r.levelno == logging.WARNING
    ]


def test_orphan_subjects_fail_the_check_and_load_all_names_them(
    make_night: Callable[..., SyntheticNight], caplog: pytest.LogCaptureFixture
) -> None:
    folder = make_night("1001").write()
    make_night("1002", labels=None).write()  # heart rate and counts, no labels
    (folder / "walch_features").mkdir()
    (folder / "walch_features" / "1003_hr_feature.out").write_text("60\n")
    with caplog.at_level(logging.WARNING, logger="sleepstream.data.folder"):
        loaded = load_all(folder, use_cache=False)
    assert [r.subject_id for r in loaded] == ["1001"]
    (message,) = _folder_warnings(caplog)
    assert "subjects 1002, 1003 have data files but no labels/<id>_labeled_sleep.txt" in message

    result = check_folder(folder)
    rows = {r.subject_id: r for r in result.subjects}
    assert list(rows) == ["1001", "1002", "1003"]
    assert rows["1001"].error == "" and rows["1001"].missing == ()
    assert rows["1002"].missing == ("labels",)
    assert rows["1002"].present == ("counts", "heart_rate")
    assert "no label file labels/1002_labeled_sleep.txt" in rows["1002"].error
    assert rows["1003"].missing == ("labels", "heart rate", "motion or counts")
    assert not result.ok and len(result.problems) == 2
    assert cli.main(["data", "check", str(folder)]) == 1


STRAYS = {
    "backup": ("heart_rate/1001_heartrate.txt.bak", "matches no file name of heart_rate/"),
    "other_format": ("counts/1001_counts.csv", "expected <id>_counts.txt"),
    "bad_feature": ("walch_features/1001_hr.out", "matches no file name of walch_features/"),
    "underscore_in_id": ("labels/10_01_labeled_sleep.txt", "matches no file name of labels/"),
    "download": ("labels/1002_labeled_sleep.txt.part", "interrupted download"),
    "folder": ("motion/old", "a folder inside motion/"),
}


@pytest.mark.parametrize(("name", "reason"), STRAYS.values(), ids=STRAYS)
def test_stray_files_fail_the_check_and_load_all_names_them(
    night: SyntheticNight, name: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    folder = night.write()
    stray = folder / name
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.mkdir() if name == "motion/old" else stray.write_text("0 0\n")
    result = check_folder(folder)
    assert [r.subject_id for r in result.subjects] == ["1001"]
    assert not result.ok
    (problem,) = result.problems
    assert problem.startswith(f"{stray}: ") and reason in problem, problem
    with caplog.at_level(logging.WARNING, logger="sleepstream.data.folder"):
        assert [r.subject_id for r in load_all(folder, use_cache=False)] == ["1001"]
    (message,) = _folder_warnings(caplog)
    assert f"1 files match no name of the sleep-accel layout and are ignored: {name}" in message
    assert cli.main(["data", "check", str(folder)]) == 1


def test_hidden_files_are_not_strays(
    night: SyntheticNight, caplog: pytest.LogCaptureFixture
) -> None:
    folder = night.write()
    (folder / "labels" / ".DS_Store").write_bytes(b"\x00\x01")
    assert check_folder(folder).ok
    with caplog.at_level(logging.WARNING, logger="sleepstream.data.folder"):
        load_all(folder, use_cache=False)
    assert _folder_warnings(caplog) == []


def test_every_missing_modality_is_named(make_night: Callable[..., SyntheticNight]) -> None:
    folder = make_night("1001", heart_rate=None, counts=None).write()
    (row,) = check_folder(folder).subjects
    assert row.missing == ("heart rate", "motion or counts")
    assert "no heart-rate file heart_rate/1001_heartrate.txt and neither " in row.error
    assert "neither motion/1001_acceleration.txt nor counts/1001_counts.txt" in row.error
    assert cli.main(["data", "check", str(folder)]) == 1


def test_cli_data_check_prints_every_problem_on_one_line(
    make_night: Callable[..., SyntheticNight], capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _two_good_one_broken(make_night)
    make_night("1004", labels=None).write()
    assert cli.main(["data", "check", str(folder)]) == 1
    lines = capsys.readouterr().out.splitlines()
    for subject, fragment in [
        ("1002", "neither motion/1002_acceleration.txt nor counts/1002_counts.txt"),
        ("1003", "1003_heartrate.txt, line 5: heart rate 300 bpm"),
        ("1004", "no label file labels/1004_labeled_sleep.txt"),
    ]:
        assert any(line.startswith(f"{subject}: ") and fragment in line for line in lines)


def _render(result: object, width: int = 80) -> str:
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(result)
    return console.export_text()


def test_check_table_of_the_real_folder_fits_80_columns(data_dir: Path) -> None:
    result = check_folder(data_dir)
    assert result.ok, result.problems
    text = _render(check_table(result))
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "\u2026" not in text  # no cell cut short with an ellipsis
    for row in result.subjects:
        (line,) = [line for line in lines if line.startswith(f"{row.subject_id} ")]
        assert f" {row.night_hours:.2f} " in line and f" {row.scored_epochs} " in line, line


def test_check_table_with_failures_fits_80_columns(
    make_night: Callable[..., SyntheticNight],
) -> None:
    folder = _two_good_one_broken(make_night)
    make_night("1004", labels=None).write()
    text = _render(check_table(check_folder(folder)))
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "\u2026" not in text
    assert "4 subjects, 3 failing, 0 stray files" in " ".join(text.split())
    assert re.search(r"^1004 +-H-C- +error", text, re.MULTILINE), text
