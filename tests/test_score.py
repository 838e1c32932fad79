"""``sleepstream score``: days across a DST change, main sleep and naps, non-wear, outputs,
re-runs, failures among good files, the sleep-accel folder and a Health export."""

from __future__ import annotations

import base64
import json
import os
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sleepstream import cli
from sleepstream.data.user import UserRecording
from sleepstream.live.units import G
from sleepstream.records import EPOCH_SECONDS
from sleepstream.score import days
from sleepstream.score.command import DONE_MARKER, score_paths
from sleepstream.score.model import HR_ONLY_MODEL, MOTION_MODEL, EpochScores

BERLIN = "Europe/Berlin"
HOUR = 3600.0
START = 1774717200.0  # 2026-03-28T17:00:00Z = 18:00 CET; summer time starts that night
END = START + 39 * HOUR  # 2026-03-30T08:00:00Z = 10:00 CEST
ASLEEP = [  # (start, end) in UTC: two nights and a nap
    (1774735200.0, 1774753200.0 + 2 * HOUR),  # 23:00 CET 28 Mar -> 07:00 CEST 29 Mar (7 h)
    (1774785600.0, 1774785600.0 + 1.5 * HOUR),  # nap 14:00-15:30 CEST 29 Mar
    (1774818000.0, 1774818000.0 + 8 * HOUR),  # 23:00 CEST 29 Mar -> 07:00 CEST 30 Mar
]
OFF_WRIST = (1774795200.0, 1774795200.0 + 3 * HOUR)  # 16:40-19:40 CEST 29 Mar: watch on a table


def _mask(t: np.ndarray, spans: list[tuple[float, float]]) -> np.ndarray:
    out = np.zeros(len(t), dtype=bool)
    for a, b in spans:
        out |= (t >= a) & (t < b)
    return out


def _berlin_iso(t: np.ndarray) -> list[str]:
    local = pd.to_datetime(t, unit="s", utc=True).tz_convert(BERLIN)
    return [s.isoformat() for s in local]


@pytest.fixture(scope="module")
def two_days(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated recording of 39 h: acceleration at 10 Hz in m/s^2 with Unix milliseconds
    (Parquet), heart rate every 5 s with ISO-8601 times carrying Berlin's offsets (CSV)."""
    folder = tmp_path_factory.mktemp("alice")
    rng = np.random.default_rng(3)
    t = np.arange(START, END, 0.1)
    asleep, off = _mask(t, ASLEEP), _mask(t, [OFF_WRIST])
    z = -0.8 + 0.004 * rng.standard_normal(len(t))
    burst = np.repeat(rng.random(len(t) // 300 + 1) < 0.6, 300)[: len(t)]  # 30 s bouts
    moving = ~asleep & ~off & burst
    z[moving] += 0.35 * np.sin(2 * np.pi * 1.8 * t[moving]) + 0.1 * rng.standard_normal(
        moving.sum()
    )
    z[off] = -0.8 + 0.002 * rng.standard_normal(off.sum())
    x = np.sqrt(np.clip(1 - z**2, 0, None))
    accel = pd.DataFrame(
        {"timestamp": np.round(t * 1000).astype(np.int64), "x": x * G, "y": 0.0, "z": z * G}
    )
    accel.to_parquet(folder / "accel.parquet", index=False)
    ht = np.arange(START, END, 5.0)
    hr_asleep = _mask(ht, ASLEEP)
    bpm = np.where(hr_asleep, 54.0, 78.0) + rng.normal(0, 2.0, len(ht))
    keep = ~_mask(ht, [OFF_WRIST])
    pd.DataFrame({"Time": _berlin_iso(ht[keep]), "Heart Rate": bpm[keep]}).to_csv(
        folder / "heart.csv", index=False
    )
    return folder


@pytest.fixture(scope="module")
def scored(two_days: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("out")
    (outcome,) = score_paths([two_days], out, progress=False)
    assert outcome.status == "scored", outcome.error
    return outcome.folder


def test_days_run_noon_to_noon_in_local_time_across_daylight_saving(scored: Path) -> None:
    nights = pd.read_csv(scored / "nights.csv")
    assert nights["date"].tolist() == ["2026-03-28", "2026-03-29"]
    epochs = pd.read_csv(scored / "epochs.csv")
    assert epochs["local"].iloc[0] == "2026-03-28T18:00:00+01:00"
    assert epochs["local"].iloc[-1] == "2026-03-30T09:59:30+02:00"
    spring = epochs[epochs["utc"] == "2026-03-29T01:00:00Z"]
    assert spring["local"].tolist() == ["2026-03-29T03:00:00+02:00"]


def test_main_sleep_and_the_nap_are_found_where_they_were(scored: Path) -> None:
    summary = json.loads((scored / "nights.json").read_text())
    first, second = summary["nights"]
    assert summary["model"] == MOTION_MODEL
    for night, onset, awake in (
        (first, "2026-03-28T23", "2026-03-29T07"),
        (second, "2026-03-29T23", "2026-03-30T07"),
    ):
        onset_time = pd.Timestamp(night["sleep_onset"])
        assert abs(
            onset_time - pd.Timestamp(onset + ":00:00" + onset_time.strftime("%z"))
        ) <= pd.Timedelta("45min")
        end = pd.Timestamp(night["final_awakening"])
        assert abs(end - pd.Timestamp(awake + ":00:00+02:00")) <= pd.Timedelta("45min")
    assert 5.5 * 60 <= first["tst_min"] <= 7.2 * 60  # 7 h in bed: the night lost an hour
    assert 6.5 * 60 <= second["tst_min"] <= 8.2 * 60
    naps = second["nap_periods"]
    assert len(naps) >= 1
    assert any(n["onset"].startswith("2026-03-29T14") and n["sleep_min"] >= 45 for n in naps)


def test_non_wear_is_reported_and_never_sleep(scored: Path) -> None:
    epochs = pd.read_csv(scored / "epochs.csv")
    start = (pd.to_datetime(epochs["utc"]) - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(1, "s")
    off = (start >= OFF_WRIST[0]) & (start < OFF_WRIST[1])
    assert epochs.loc[off, "non_wear"].mean() > 0.95
    assert not epochs.loc[epochs["non_wear"], "asleep"].any()
    assert not epochs.loc[~off, "non_wear"].any()
    nights = pd.read_csv(scored / "nights.csv")
    assert nights["non_wear_min"].tolist()[1] >= 170


def test_outputs_and_the_html_report_with_inline_images(scored: Path) -> None:
    pngs = sorted((scored / "nights").glob("*.png"))
    assert [p.name for p in pngs] == ["2026-03-28.png", "2026-03-29.png"]
    page = (scored / "report.html").read_text()
    images = page.split('src="data:image/png;base64,')[1:]
    assert len(images) == 2
    assert base64.b64decode(images[0].split('"')[0]).startswith(b"\x89PNG")
    epochs = pd.read_csv(scored / "epochs.csv")
    expected = {"utc", "local", "p_sleep", "hr_samples", "motion_coverage", "non_wear", "asleep"}
    assert expected <= set(epochs.columns)
    assert len(epochs) == (END - START) / EPOCH_SECONDS
    assert epochs["p_sleep"].between(0, 1).all()
    assert not (scored / "agreement.csv").exists()  # no reference in raw files


# -- days, periods and non-wear without a model ----------------------------------------------


def _recording(
    hr_times: np.ndarray | None = None,
    hr_bpm: np.ndarray | None = None,
    timezone: str | None = None,
    offsets: np.ndarray | None = None,
) -> UserRecording:
    empty = np.zeros(0)
    return UserRecording(
        "r",
        "test",
        (),
        empty if hr_times is None else hr_times,
        empty if hr_bpm is None else hr_bpm,
        timezone=timezone,
        offsets=np.zeros((0, 2)) if offsets is None else offsets,
    )


@pytest.mark.parametrize(
    ("day", "hours"),
    [(date(2026, 3, 28), 23.0), (date(2026, 10, 24), 25.0), (date(2026, 6, 1), 24.0)],
)
def test_a_day_across_a_clock_change_is_23_or_25_hours(day: date, hours: float) -> None:
    recording = _recording(timezone=BERLIN)
    start, end = (
        days.noon_utc(recording, day),
        days.noon_utc(recording, date.fromordinal(day.toordinal() + 1)),
    )
    assert (end - start) / HOUR == hours
    assert pd.Timestamp(start, unit="s", tz="UTC").tz_convert(BERLIN).hour == 12


def test_days_follow_the_records_offsets_without_a_zone() -> None:
    # Pacific time, then daylight time from 2026-03-08 02:00 PST (10:00 UTC).
    offsets = np.array([[0.0, -480.0], [1772964000.0, -420.0]])
    recording = _recording(offsets=offsets)
    # From 2026-03-07 08:13 PST (before noon: the day of the 6th) to 2026-03-10 20:33 PDT.
    found = days.days_of(recording, 1772900000.0, 1773200000.0)
    names = [d.date.isoformat() for d in found]
    assert names == ["2026-03-06", "2026-03-07", "2026-03-08", "2026-03-09", "2026-03-10"]
    assert [(d.end - d.start) / HOUR for d in found] == [24.0, 23.0, 24.0, 24.0, 24.0]


def test_sleep_periods_merge_short_wake_drop_short_runs_and_stop_at_non_wear() -> None:
    n = 400
    asleep = np.zeros(n, dtype=bool)
    asleep[10:60] = True  # 25 min
    asleep[100:150] = True  # 20 min of wake before: merged
    asleep[220:240] = True  # 10 min, 35 min of wake either side: too short
    asleep[320:360] = True
    non_wear = np.zeros(n, dtype=bool)
    non_wear[365:380] = True
    asleep[385:399] = True  # 7 min after non-wear: not merged across it, too short alone
    periods = days.sleep_periods(asleep, non_wear)
    assert [(p.first, p.stop, p.sleep_min) for p in periods] == [(10, 150, 50.0), (320, 360, 20.0)]


def test_non_wear_needs_no_heart_rate_and_no_movement_for_half_an_hour() -> None:
    starts = START + EPOCH_SECONDS * np.arange(480, dtype=np.float64)  # 4 h
    hr_t = np.arange(START, starts[-1] + EPOCH_SECONDS, 5.0)
    gap_long = (hr_t >= START + HOUR) & (hr_t < START + 2.5 * HOUR)  # 90 min without heart rate
    gap_short = (hr_t >= START + 3 * HOUR) & (hr_t < START + 3 * HOUR + 1200)  # 20 min
    keep = ~gap_long & ~gap_short
    recording = _recording(hr_times=hr_t[keep], hr_bpm=np.full(keep.sum(), 55.0))
    counts = np.zeros((480, 2))
    counts[150:155] = 40.0  # a movement in the long gap: 15 min before it, 72.5 min after
    scores = EpochScores(np.full(480, 0.99), counts=counts)
    table = days.epoch_table(recording, starts, scores, threshold=0.5)
    non_wear = table["non_wear"].to_numpy()
    assert non_wear[155:300].all()
    assert not non_wear[:155].any() and not non_wear[300:].any()
    assert not table["asleep"].to_numpy()[non_wear].any()
    assert table["asleep"].to_numpy()[~non_wear].all()


# -- many files: re-runs and failures --------------------------------------------------------


def _small_heart_rate_file(path: Path) -> Path:
    t = np.arange(START, START + 6 * HOUR, 10.0)
    bpm = np.where((t > START + 2 * HOUR) & (t < START + 5 * HOUR), 52.0, 80.0)
    pd.DataFrame({"time": t, "bpm": bpm}).to_csv(path, index=False)
    return path


def test_a_bad_file_never_stops_the_others_and_finished_outputs_are_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _small_heart_rate_file(tmp_path / "good.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("time,bpm\n1774717200,60\n5000000000000000,61\n")
    out = tmp_path / "out"
    code = cli.main(["-q", "score", str(bad), str(good), "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 1
    assert "1 scored, 0 skipped (finished before), 1 failed" in printed
    assert "bad: RawFileError:" in printed and "row 2" in printed
    assert (out / "good" / "report.html").exists() and (out / "good" / DONE_MARKER).exists()
    assert not (out / "bad").exists()
    summary = json.loads((out / "good" / "nights.json").read_text())
    assert summary["model"] in (HR_ONLY_MODEL,) or summary["model"].startswith("sparse_hr")

    first = (out / "good" / "epochs.csv").stat().st_mtime_ns
    again = score_paths([good], out, progress=False)
    assert [o.status for o in again] == ["skipped"]
    assert (out / "good" / "epochs.csv").stat().st_mtime_ns == first

    os.utime(good, ns=(first + 10**9, first + 10**9))  # the input changed: scored again
    assert [o.status for o in score_paths([good], out, progress=False)] == ["scored"]
    assert [o.status for o in score_paths([good], out, progress=False, force=True)] == ["scored"]


def test_a_missing_path_and_a_folder_without_recordings_are_failures(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hi")
    outcomes = score_paths(
        [tmp_path / "nope.csv", tmp_path / "empty"], tmp_path / "out", progress=False
    )
    assert [o.status for o in outcomes] == ["failed", "failed"]
    assert "not found" in str(outcomes[0].error) and "notes.txt" in str(outcomes[1].error)


# -- real data and a Health export -----------------------------------------------------------


def test_the_sleep_accel_folder_scores_a_subject_against_psg(
    data_dir: Path, tmp_path: Path
) -> None:
    (outcome,) = score_paths([data_dir], tmp_path, subjects=["46343"], progress=False)
    assert outcome.status == "scored", outcome.error
    agreement = pd.read_csv(outcome.folder / "agreement.csv")
    assert agreement["reference"].tolist() == ["PSG"]
    # In-sample for the shipped model (it trained on every night): a floor, not a figure.
    assert agreement["kappa"].iloc[0] >= 0.6
    summary = json.loads((outcome.folder / "nights.json").read_text())
    assert "nominal" in summary["clock"]
    assert (
        abs(agreement["ours_asleep_min"].iloc[0] - agreement["reference_asleep_min"].iloc[0]) < 60
    )


def test_a_health_export_is_scored_against_apples_sleep_analysis(tmp_path: Path) -> None:
    health_fake = pytest.importorskip("sleepstream.data.health_fake")
    export = tmp_path / "export.xml"
    health_fake.write_export(export, days=2, seed=4)
    (outcome,) = score_paths([export], tmp_path / "out", progress=False)
    assert outcome.status == "scored", outcome.error
    agreement = pd.read_csv(outcome.folder / "agreement.csv")
    assert set(agreement["reference"]) == {"Apple sleep analysis"}
    assert agreement["reference_asleep_min"].gt(300).all()
    assert np.isfinite(agreement["kappa"]).all()
    summary = json.loads((outcome.folder / "nights.json").read_text())
    assert summary["source"] == "Apple Health export"
    assert summary["model"] == HR_ONLY_MODEL or summary["model"].startswith("sparse_hr")
    assert summary["clock"] == "UTC offsets of the records"


def test_counts_of_whole_blocks_equal_the_step_stepped_epoch_by_epoch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sleepstream.features import accel_epochs
    from sleepstream.score import model
    from sleepstream.signal import synthetic
    from sleepstream.step import scan

    t = synthetic.sample_times(HOUR, 50.0, start=START + 7.3, jitter=0.1)
    z = synthetic.night(t, 1).astype(np.float32)
    n = int((t[-1] - START) // EPOCH_SECONDS) + 1
    monkeypatch.setattr(model, "COUNT_BLOCK_EPOCHS", 50)  # blocks of 25 min: 2 block edges
    batched = model.accel_counts_per_epoch(t, z, START, n)
    grid = accel_epochs(t, z.astype(np.float64), START, n)
    missing, no_hr = np.full((n, 2), np.nan), np.full((n, 30), np.nan)
    stepped = scan(missing, no_hr, no_hr, grid)  # AccelCounts stepped per epoch inside
    np.testing.assert_array_equal(scan(batched, no_hr, no_hr), stepped)
    assert np.isfinite(batched[1:-1]).all()  # only the ends lack the filter's context


def test_last_days_scores_only_the_end_of_a_long_recording(tmp_path: Path) -> None:
    good = _small_heart_rate_file(tmp_path / "six_hours.csv")
    (outcome,) = score_paths([good], tmp_path / "out", last_days=0.125, progress=False)
    assert outcome.status == "scored", outcome.error
    epochs = pd.read_csv(outcome.folder / "epochs.csv")
    # Samples from 3 h before the last one (22:59:50): the first is 19:59:50, in the epoch at
    # 19:59:30.
    assert len(epochs) == 3 * 120 + 1
    assert epochs["utc"].iloc[0] == "2026-03-28T19:59:30Z"
    notes = json.loads((outcome.folder / "nights.json").read_text())["notes"]
    assert any("last 0.125 days" in n for n in notes)
    with pytest.raises(ValueError, match="--last-days must be a positive"):
        score_paths([good], tmp_path / "out", last_days=0, progress=False)
