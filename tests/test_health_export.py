"""The Health export reader on generated exports (sleepstream.data.health_fake).

The generator knows, by construction, which records a correct reader keeps; the reader's three
tables are compared with that ground truth, and cut files with the full read.
"""

from __future__ import annotations

import logging
import zipfile
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sleepstream.data.health import (
    HEART_RATE_DUPLICATE_SECONDS,
    SLEEP_STAGES,
    HealthExport,
    HealthExportError,
    TruncatedExportError,
    _parse_dates,
    read_health_export,
)
from sleepstream.data.health_fake import (
    CUFF,
    OLD_WATCH,
    PHONE,
    STRAP,
    WATCH,
    ExportTruth,
    cut_file,
    write_export,
    zip_export,
)
from sleepstream.data.parse import DataFormatError

DAYS = 7  # Los Angeles with its spring-forward night, then Berlin


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ExportTruth]:
    path = tmp_path_factory.mktemp("health") / "export.xml"
    return path, write_export(path, days=DAYS, seed=7)


@pytest.fixture(scope="module")
def export(written: tuple[Path, ExportTruth]) -> HealthExport:
    return read_health_export(written[0])


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ExportTruth, HealthExport]:
    """One day (about 1 MB), for the cut-anywhere tests."""
    path = tmp_path_factory.mktemp("health-small") / "export.xml"
    truth = write_export(path, days=1, seed=11)
    return path, truth, read_health_export(path)


def _kept(truth: ExportTruth, kind: str) -> pd.DataFrame:
    rows = truth.records[(truth.records["kind"] == kind) & truth.records["kept"]]
    return rows.reset_index(drop=True)


# -- what real exports do to parsers -----------------------------------------------------------


def test_generated_export_breaks_a_plain_parser_as_ios_16_exports_do(
    written: tuple[Path, ExportTruth], export: HealthExport
) -> None:
    path, truth = written
    with pytest.raises(ElementTree.ParseError, match="syntax error"):
        ElementTree.parse(path)
    data = path.read_bytes()
    assert b"<!DOCTYPE HealthData [" in data and b"\x0b" in data
    assert truth.controls > 0
    assert len(export.heart_rate) > 1000  # read whole, past the DTD and the control characters


def test_control_characters_inside_kept_records_do_not_lose_them(tmp_path: Path) -> None:
    # The first record written carries a control character in its sourceVersion.
    path = tmp_path / "export.xml"
    truth = write_export(path, days=1, seed=2)
    first = truth.records.sort_values("line").iloc[0]
    line = path.read_bytes().split(b"\n")[first["line"] - 1]
    assert b"\x0b" in line
    export = read_health_export(path)
    assert (export.heart_rate["time"] == first["start"]).any()


# -- the three tables against the ground truth -------------------------------------------------


def test_heart_rate_is_the_watch_without_duplicates(
    written: tuple[Path, ExportTruth], export: HealthExport
) -> None:
    expected = _kept(written[1], "heart_rate").sort_values(["start", "source"], kind="stable")
    hr = export.heart_rate
    assert hr.columns.tolist() == ["time", "bpm", "source", "utc_offset_min"]
    assert str(hr["time"].dtype) == "datetime64[ns, UTC]" and hr["bpm"].dtype == np.float64
    assert hr["utc_offset_min"].dtype == np.int16
    assert hr["time"].is_monotonic_increasing
    assert hr["time"].tolist() == expected["start"].tolist()
    assert hr["bpm"].tolist() == expected["value"].tolist()
    assert hr["utc_offset_min"].tolist() == expected["utc_offset_min"].tolist()
    assert set(hr["source"]) == {WATCH}
    records = written[1].records
    assert (records["source"] == OLD_WATCH).any() and (records["source"] == STRAP).any()


def test_sources_table_ranks_and_marks_the_sources_used(
    written: tuple[Path, ExportTruth], export: HealthExport
) -> None:
    truth = written[1].records
    sources = export.sources
    assert sources.columns.tolist() == ["kind", "source", "device", "records", "used"]
    hr = sources[sources["kind"] == "heart_rate"].set_index("source")
    assert hr.index[0] == WATCH and hr.loc[WATCH, "device"] == "Apple Watch (Watch6,2)"
    assert hr["used"].to_dict() == {WATCH: True, OLD_WATCH: False, CUFF: False, STRAP: False}
    written_counts = truth[truth["kind"] == "heart_rate"].groupby("source").size()
    assert hr["records"].to_dict() == written_counts.to_dict()
    steps = sources[sources["kind"] == "steps"]
    assert steps["source"].tolist() == [WATCH, PHONE] and steps["used"].all()


def test_records_inside_correlations_are_not_counted_twice(
    written: tuple[Path, ExportTruth], export: HealthExport
) -> None:
    path, _ = written
    data = path.read_bytes()
    cuff_hr = data.count(f'type="HKQuantityTypeIdentifierHeartRate" sourceName="{CUFF}"'.encode())
    assert cuff_hr == 2 * DAYS  # each pulse inside its Correlation and again top-level
    assert data.count(b"<Correlation ") == DAYS
    sources = export.sources.set_index(["kind", "source"])
    assert sources.loc[("heart_rate", CUFF), "records"] == DAYS


def test_chosen_heart_rate_sources_rank_in_the_order_given(
    written: tuple[Path, ExportTruth], export: HealthExport
) -> None:
    path, truth = written
    strap_only = read_health_export(path, heart_rate_sources=[STRAP])
    strap_written = truth.records[truth.records["source"] == STRAP]
    assert set(strap_only.heart_rate["source"]) == {STRAP}
    assert len(strap_only.heart_rate) == len(strap_written)

    both = read_health_export(path, heart_rate_sources=[STRAP, WATCH]).heart_rate
    strap_ns = both.loc[both["source"] == STRAP, "time"].to_numpy(dtype=np.int64)
    watch = export.heart_rate  # the watch alone, duplicates already dropped
    watch_ns = watch["time"].to_numpy(dtype=np.int64)
    nearest = np.abs(watch_ns[:, None] - strap_ns[None, :]).min(axis=1)
    beside_strap = nearest < HEART_RATE_DUPLICATE_SECONDS * 1e9
    assert beside_strap.any() and not beside_strap.all()
    kept_watch = both.loc[both["source"] == WATCH, "time"]
    assert kept_watch.tolist() == watch["time"][~beside_strap].tolist()
    assert len(strap_ns) == len(strap_written) and both["time"].is_monotonic_increasing
    sources = strap_only.sources
    used = sources[sources["kind"] == "heart_rate"].set_index("source")["used"]
    assert used[STRAP] and not used[WATCH]


def test_an_unknown_heart_rate_source_is_named_with_the_ones_there(
    written: tuple[Path, ExportTruth],
) -> None:
    with pytest.raises(ValueError, match=r"no heart-rate records from 'Garmin'.*Polar Flow"):
        read_health_export(written[0], heart_rate_sources=["Garmin"])


def test_steps_prefer_the_watch_over_the_overlapping_iphone(
    written: tuple[Path, ExportTruth], export: HealthExport
) -> None:
    expected = _kept(written[1], "steps").sort_values(["start", "end"], kind="stable")
    steps = export.steps
    assert steps.columns.tolist() == ["start", "end", "steps", "source", "utc_offset_min"]
    assert steps["start"].tolist() == expected["start"].tolist()
    assert steps["end"].tolist() == expected["end"].tolist()
    assert steps["steps"].tolist() == expected["value"].tolist()
    assert steps["source"].tolist() == expected["source"].tolist()
    phone, watch = steps[steps["source"] == PHONE], steps[steps["source"] == WATCH]
    assert len(phone) and len(watch)
    for _, row in phone.iterrows():  # iPhone steps kept only where the watch has none
        assert not ((watch["start"] < row["end"]) & (watch["end"] > row["start"])).any()


def test_sleep_stages_from_every_source(
    written: tuple[Path, ExportTruth], export: HealthExport
) -> None:
    expected = _kept(written[1], "sleep").sort_values(["start", "end", "source"], kind="stable")
    sleep = export.sleep
    assert sleep.columns.tolist() == ["start", "end", "stage", "source", "utc_offset_min"]
    assert sleep["stage"].tolist() == expected["value"].tolist()
    assert sleep["start"].tolist() == expected["start"].tolist()
    assert set(sleep["stage"]) == set(SLEEP_STAGES)
    data = written[0].read_bytes()
    assert b'"HKCategoryValueSleepAnalysisAsleep"' in data  # before iOS 16
    assert b'"HKCategoryValueSleepAnalysisAsleepUnspecified"' in data


# -- times -------------------------------------------------------------------------------------


def test_utc_offsets_follow_daylight_saving_and_travel(export: HealthExport) -> None:
    offsets = set(export.heart_rate["utc_offset_min"])
    assert {-480, -420, 60} <= offsets  # Los Angeles winter and summer time, Berlin
    # The spring-forward night: in bed 23:00 -0800 to 07:00 -0700 lasts 7 h, not 8.
    in_bed = export.sleep[export.sleep["stage"] == "in_bed"]
    night = in_bed[in_bed["start"] == pd.Timestamp("2024-03-10 07:00", tz="UTC")]
    assert len(night) == 1
    assert (night["end"] - night["start"]).iloc[0] == pd.Timedelta(hours=7)
    assert night["utc_offset_min"].iloc[0] == -480
    local = export.heart_rate["time"] + pd.to_timedelta(
        export.heart_rate["utc_offset_min"].astype(np.int64), unit="min"
    )
    # Local clock times of the night of the change skip 02:00-03:00 and nothing else moves.
    change = local[
        (local >= pd.Timestamp("2024-03-10", tz="UTC"))
        & (local < pd.Timestamp("2024-03-10 06:00", tz="UTC"))
    ]
    assert len(change) and not (change.dt.hour == 2).any()


@settings(max_examples=200, deadline=None)
@given(
    when=st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2099, 12, 31)),
    offset=st.integers(-14 * 60, 14 * 60),
)
def test_dates_are_read_exactly(when: datetime, offset: int) -> None:
    when = when.replace(microsecond=0)
    zone = timezone(timedelta(minutes=offset))
    text = when.replace(tzinfo=zone).strftime("%Y-%m-%d %H:%M:%S %z")
    ns, minutes, ok = _parse_dates([text])
    assert ok.tolist() == [True]
    assert int(ns[0]) == int(when.replace(tzinfo=zone).timestamp()) * 10**9
    assert int(minutes[0]) == offset


def test_other_date_forms_and_bad_dates() -> None:
    ns, minutes, ok = _parse_dates(
        ["2024-03-10T01:59:00-08:00", "2024-13-01 00:00:00 +0000", "", None, "2024-03-10 01:59:00"]
    )
    assert ok.tolist() == [True, False, False, False, False]  # no offset: not an instant
    assert int(ns[0]) == int(datetime(2024, 3, 10, 9, 59, tzinfo=UTC).timestamp()) * 10**9
    assert int(minutes[0]) == -480


# -- odd content -------------------------------------------------------------------------------

_HEAD = '<?xml version="1.0" encoding="UTF-8"?>\n<HealthData locale="en_US">\n'
_HR = (
    ' <Record type="HKQuantityTypeIdentifierHeartRate" sourceName="W" device="name:Apple Watch"'
    ' unit="{unit}" startDate="{start}" endDate="{start}" value="{value}"/>\n'
)


def test_unreadable_records_are_skipped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    body = (
        _HR.format(unit="count/min", start="2024-01-01 00:00:00 +0100", value="60")
        + _HR.format(unit="count/min", start="yesterday", value="61")
        + _HR.format(unit="count/min", start="2024-01-01 00:01:00 +0100", value="n/a")
        + _HR.format(unit="count/s", start="2024-01-01 00:02:00 +0100", value="1")
        + _HR.format(unit="kPa", start="2024-01-01 00:03:00 +0100", value="1")
        + ' <Record type="HKCategoryTypeIdentifierSleepAnalysis" sourceName="W" startDate="2024-01-01'
        ' 00:00:00 +0100" endDate="2024-01-01 01:00:00 +0100" value="HKCategoryValueSleepAnalysisNapping"/>\n'
        + ' <Correlation type="HKCorrelationTypeIdentifierFood" sourceName="W" startDate="x" endDate="x">\n'
        + _HR.format(unit="count/min", start="2024-01-01 00:04:00 +0100", value="99")
        + "  <Correlation><Record/></Correlation>\n </Correlation>\n"
        + ' <Workout workoutActivityType="HKWorkoutActivityTypeWalking"><MetadataEntry key="k" value="v"/></Workout>\n'
        + ' <ActivitySummary dateComponents="2024-01-01"/>\n'
        + _HR.format(unit="count/min", start="2024-01-01 00:05:00 +0100", value="62")
        + ' <Record value="63" unit="count/min" startDate="2024-01-01 00:06:00 +0100"'
        ' endDate="2024-01-01 00:06:00 +0100" sourceName="W" type="HKQuantityTypeIdentifierHeartRate"/>\n'
    )
    path = tmp_path / "export.xml"
    path.write_text(_HEAD + body + "</HealthData>\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="sleepstream.data.health"):
        export = read_health_export(path)
    # 1 count/s = 60 bpm; attributes in another order are read too
    assert export.heart_rate["bpm"].tolist() == [60.0, 60.0, 62.0, 63.0]
    assert export.sleep.empty
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "3 heart-rate records skipped" in messages and "line 4" in messages
    assert "1 sleep records skipped" in messages


def test_not_an_export(tmp_path: Path) -> None:
    other = tmp_path / "other.xml"
    other.write_text('<?xml version="1.0"?>\n<gpx><trk/></gpx>\n')
    with pytest.raises(DataFormatError, match=r"other\.xml, line 2: the XML root is <gpx>"):
        read_health_export(other)
    empty = tmp_path / "empty.xml"
    empty.write_bytes(b"")
    with pytest.raises(TruncatedExportError, match="the file is empty"):
        read_health_export(empty)
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as packed:
        packed.writestr("a.jpg", b"\xff\xd8")
    with pytest.raises(DataFormatError, match=r"zip without export\.xml"):
        read_health_export(archive)
    with pytest.raises(FileNotFoundError, match=r"missing\.zip"):
        read_health_export(tmp_path / "missing.zip")


def test_broken_xml_in_the_middle_names_the_line_and_keeps_what_came_before(
    small: tuple[Path, ExportTruth, HealthExport], tmp_path: Path
) -> None:
    path, truth, full = small
    lines = path.read_bytes().split(b"\n")
    at = int(truth.records["line"].median())
    lines[at - 1] = b" <Record type=<<broken"
    broken = tmp_path / "export.xml"
    broken.write_bytes(b"\n".join(lines))
    with pytest.raises(
        HealthExportError, match=rf"export\.xml, line {at}, column \d+: broken XML"
    ) as caught:
        read_health_export(broken)
    assert not isinstance(caught.value, TruncatedExportError)
    assert caught.value.line == at
    partial = caught.value.partial.heart_rate
    assert 0 < len(partial) < len(full.heart_rate)


# -- zip and cut files -------------------------------------------------------------------------


def test_zip_reads_like_the_xml(
    written: tuple[Path, ExportTruth], export: HealthExport, tmp_path: Path
) -> None:
    archive = zip_export(written[0], tmp_path / "export.zip")
    packed = read_health_export(archive, progress=True)
    assert packed.path == archive
    for name in ("heart_rate", "steps", "sleep", "sources"):
        pd.testing.assert_frame_equal(getattr(packed, name), getattr(export, name))


def _rows(frame: pd.DataFrame) -> set[tuple[object, ...]]:
    return set(frame.itertuples(index=False, name=None))


def _check_cut(full: HealthExport, truth: ExportTruth, data: bytes, cut: int, path: Path) -> None:
    """A cut file reads whole or raises TruncatedExportError whose partial is a prefix."""
    try:
        export = read_health_export(path)
    except TruncatedExportError as error:
        assert str(path) in str(error) and "cut short after byte" in str(error)
        assert error.position <= cut
        partial = error.partial
        cut_line = data[:cut].count(b"\n") + 1
        complete = truth.records[truth.records["line"] < cut_line]
        for name, kind, when in (
            ("heart_rate", "heart_rate", "time"),
            ("steps", "steps", "start"),
            ("sleep", "sleep", "start"),
        ):
            got, whole = getattr(partial, name), getattr(full, name)
            assert _rows(got) <= _rows(whole), name
            before = complete[(complete["kind"] == kind) & complete["kept"]]["start"]
            assert set(before) <= set(got[when]), name
        return
    assert cut >= len(data.rstrip())  # only the final newline may be missing
    for name in ("heart_rate", "steps", "sleep"):
        pd.testing.assert_frame_equal(getattr(export, name), getattr(full, name))


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(fraction=st.floats(0.0, 1.0))
def test_any_cut_of_a_file_reads_whole_or_keeps_a_prefix(
    small: tuple[Path, ExportTruth, HealthExport], tmp_path: Path, fraction: float
) -> None:
    path, truth, full = small
    data = path.read_bytes()
    cut = int(fraction * len(data))
    _check_cut(full, truth, data, cut, cut_file(path, cut, tmp_path / "export.xml"))


@pytest.mark.parametrize("where", ["doctype", "middle", "last_tag", "whole"])
def test_cut_at_the_edges(
    small: tuple[Path, ExportTruth, HealthExport], tmp_path: Path, where: str
) -> None:
    path, truth, full = small
    data = path.read_bytes()
    cut = {"doctype": 900, "middle": len(data) // 2, "last_tag": len(data) - 5, "whole": len(data)}[
        where
    ]
    _check_cut(full, truth, data, cut, cut_file(path, cut, tmp_path / "export.xml"))


@pytest.mark.parametrize("fraction", [0.0005, 0.3, 0.7, 0.95])
def test_a_cut_zip_keeps_what_was_read(
    small: tuple[Path, ExportTruth, HealthExport], tmp_path: Path, fraction: float
) -> None:
    path, _, full = small
    archive = zip_export(path, tmp_path / "export.zip")
    cut = cut_file(archive, int(fraction * archive.stat().st_size), tmp_path / "cut.zip")
    with pytest.raises(
        TruncatedExportError, match=r"cut\.zip \(member apple_health_export/export\.xml\)"
    ) as caught:
        read_health_export(cut)
    partial = caught.value.partial
    assert _rows(partial.heart_rate) <= _rows(full.heart_rate)
    assert _rows(partial.steps) <= _rows(full.steps) and _rows(partial.sleep) <= _rows(full.sleep)
    read, whole = (len(e.heart_rate) + len(e.steps) + len(e.sleep) for e in (partial, full))
    assert read <= whole and (read > 0 or fraction < 0.01)


def test_a_zip_cut_in_the_middle_of_a_week(
    written: tuple[Path, ExportTruth], export: HealthExport, tmp_path: Path
) -> None:
    archive = zip_export(written[0], tmp_path / "export.zip")
    cut = cut_file(archive, archive.stat().st_size // 2, tmp_path / "cut.zip")
    with pytest.raises(TruncatedExportError, match="the zip ends inside its entry") as caught:
        read_health_export(cut)
    partial = caught.value.partial
    assert 0 < len(partial.heart_rate) < len(export.heart_rate)
    assert _rows(partial.heart_rate) <= _rows(export.heart_rate)
    assert caught.value.position > 0
