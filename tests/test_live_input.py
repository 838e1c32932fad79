"""The live detector with input shaped like the real world: wall clocks, time units, daylight
saving, gaps, jumps, sampling rates, units and streams in any order (docs/robustness.md)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from numpy.typing import NDArray

from sleepstream.features import FEATURE_NAMES
from sleepstream.live.backends import OnnxPipeline
from sleepstream.live.detector import EpochResult, SleepDetector
from sleepstream.live.replay import replay
from sleepstream.records import Recording
from sleepstream.signal import synthetic

T0 = 1_767_308_400.0
"""2026-01-01 23:00 UTC."""
README = Path(__file__).parents[1] / "README.md"


@pytest.fixture(scope="module")
def model() -> OnnxPipeline:
    return OnnxPipeline.shipped()


def _night_streams(
    seconds: float, start: float = 0.0, rate: float = 50.0, seed: int = 0
) -> dict[str, tuple[NDArray[np.float64], NDArray[np.float64]]]:
    """Generated acceleration (x, y, z in g) and heart rate every 5 s."""
    t, z = synthetic.generate("night", seconds, rate, seed=seed)
    hr_t = np.arange(0.0, seconds, 5.0)
    bpm = 58 + 3 * np.sin(hr_t / 700.0)
    return {
        "acceleration": (start + t, synthetic.as_xyz(z, seed)),
        "heart_rate": (start + hr_t, bpm),
    }


def _feed_together(
    detector: SleepDetector,
    streams: dict[str, tuple[NDArray[np.float64], NDArray[np.float64]]],
    chunk: float = 10.0,
) -> list[EpochResult]:
    """Every stream ``chunk`` seconds at a time, in time order."""
    first = min(float(t[0]) for t, _ in streams.values())
    last = max(float(t[-1]) for t, _ in streams.values())
    add: dict[str, Callable[..., list[EpochResult]]] = {
        "acceleration": detector.add_acceleration,
        "heart_rate": detector.add_heart_rate,
        "counts": detector.add_counts,
    }
    results: list[EpochResult] = []
    for lo in np.arange(first, last + chunk, chunk):
        for name, (t, v) in streams.items():
            inside = (t >= lo) & (t < lo + chunk)
            results += add[name](t[inside], v[inside])
    return results


# -- time --------------------------------------------------------------------------------------
def test_unix_times_give_epochs_on_the_wall_clock(model: OnnxPipeline) -> None:
    detector = SleepDetector(model, timezone="America/New_York")
    results = detector.add_heart_rate(T0 + 7.3 + np.arange(0, 300, 5.0), np.full(60, 60.0))
    assert [r.start for r in results] == [T0 + 30 * k for k in range(len(results))]
    assert results[0].start_utc == datetime(2026, 1, 1, 23, 0, tzinfo=UTC)
    assert results[0].start_local.isoformat() == "2026-01-01T18:00:00-05:00"
    assert results[0].timezone == "America/New_York"


def test_milliseconds_and_microseconds_are_named_or_taken_with_time_unit(
    model: OnnxPipeline,
) -> None:
    times, bpm = T0 + np.arange(0, 300, 5.0), np.full(60, 60.0)
    with pytest.raises(ValueError, match=r"looks like milliseconds since 1970.*time_unit='ms'"):
        SleepDetector(model).add_heart_rate(times * 1e3, bpm)
    with pytest.raises(ValueError, match=r"looks like microseconds since 1970.*time_unit='us'"):
        SleepDetector(model).add_heart_rate(times * 1e6, bpm)
    seconds = SleepDetector(model).add_heart_rate(times, bpm)
    assert SleepDetector(model, time_unit="ms").add_heart_rate(times * 1e3, bpm) == seconds
    # Relative milliseconds: 50 Hz acceleration whose samples are 20 "seconds" apart.
    xyz = np.tile([0.0, 0.6, -0.8], (100, 1))
    with pytest.raises(ValueError, match=r"0\.05 Hz.*times in milliseconds"):
        SleepDetector(model).add_acceleration(np.arange(100) * 20.0, xyz)
    with pytest.raises(ValueError, match="time_unit must be one of"):
        SleepDetector(model, time_unit="min")
    with pytest.raises(ValueError, match="convert datetimes to Unix seconds"):
        SleepDetector(model).add_heart_rate(np.array(["2026-01-01"], dtype="datetime64[s]"), [60])


def test_negative_times_are_ordinary_times(model: OnnxPipeline) -> None:
    detector = SleepDetector(model, expect=("heart_rate",))
    results = detector.add_heart_rate(-3000 + np.arange(0, 300, 5.0), np.full(60, 60.0))
    assert [r.start for r in results][:2] == [-3000.0, -2970.0] and len(results) == 9


@pytest.mark.parametrize(
    "zone,change_utc,before,after",
    [
        ("Europe/Berlin", "2026-03-29T01:00:00", "01:59:30+01:00", "03:00:00+02:00"),
        ("Europe/Berlin", "2026-10-25T01:00:00", "02:59:30+02:00", "02:00:00+01:00"),
        ("America/New_York", "2026-03-08T07:00:00", "01:59:30-05:00", "03:00:00-04:00"),
        ("America/New_York", "2026-11-01T06:00:00", "01:59:30-04:00", "01:00:00-05:00"),
    ],
)
def test_a_night_across_daylight_saving_neither_creates_nor_drops_epochs(
    model: OnnxPipeline, zone: str, change_utc: str, before: str, after: str
) -> None:
    change = datetime.fromisoformat(change_utc).replace(tzinfo=UTC).timestamp()
    streams = _night_streams(4 * 3600.0, start=change - 2 * 3600.0)
    detector = SleepDetector(model, timezone=zone)
    results = _feed_together(detector, streams, chunk=60.0) + detector.flush(change + 2 * 3600.0)
    assert len(results) == 4 * 3600 // 30  # four hours of real time, whatever the clocks say
    assert np.all(np.diff([r.start for r in results]) == 30.0)
    assert all(r.has_data and r.state != "unknown" for r in results)
    at = next(i for i, r in enumerate(results) if r.start == change)
    assert results[at - 1].start_local.isoformat()[11:] == before
    assert results[at].start_local.isoformat()[11:] == after
    offsets = {r.start_local.utcoffset() for r in results}
    assert len(offsets) == 2 and results[0].start_local.tzinfo == ZoneInfo(zone)


# -- gaps --------------------------------------------------------------------------------------
def test_epochs_without_data_are_unknown_and_a_long_gap_starts_afresh(
    model: OnnxPipeline,
) -> None:
    hour = _night_streams(3600.0, start=T0, seed=1)
    later = _night_streams(3600.0, start=T0 + 4 * 3600.0, seed=2)  # three hours with nothing
    detector = SleepDetector(model)
    results = _feed_together(detector, hour) + _feed_together(detector, later)
    results += detector.flush()
    with_data = [r for r in results if r.has_data]
    assert len(with_data) == 2 * 120 - 1  # the last epoch waits for the filter's look-ahead
    empty = [r for r in results if not r.has_data]
    assert all(r.state == "unknown" and math.isnan(r.p_sleep) for r in empty)
    assert not any(r.asleep for r in empty)
    # 2 h of empty epochs, the first saying "unknown", then one result for the rest of the gap.
    assert [r.is_gap for r in empty] == [False] * 240 + [True]
    assert empty[0].events == ("unknown",) and all(not r.events for r in empty[1:])
    assert (empty[0].start, empty[-1].start, empty[-1].end) == (
        T0 + 3600.0,
        T0 + 3 * 3600.0,
        T0 + 4 * 3600.0,
    )
    # After the reset the detector is a fresh one: the same results as one fed only the later hour.
    fresh = SleepDetector(model)
    again = _feed_together(fresh, later) + fresh.flush()
    assert [r for r in results if r.start >= T0 + 4 * 3600.0] == again


def test_a_short_gap_keeps_the_state_and_reports_each_epoch(model: OnnxPipeline) -> None:
    detector = SleepDetector(model)
    results = _feed_together(detector, _night_streams(1800.0, start=T0))
    results += _feed_together(detector, _night_streams(1800.0, start=T0 + 3000.0, seed=3))
    results += detector.flush()
    assert np.all(np.diff([r.start for r in results]) == 30.0)  # no gap result, no reset
    unknown = [r for r in results if r.state == "unknown"]
    assert 38 <= len(unknown) <= 40 and not any(r.is_gap for r in results)


def test_every_result_says_what_it_saw(model: OnnxPipeline) -> None:
    detector = SleepDetector(model, expect=("heart_rate", "acceleration"))
    t, z = synthetic.generate("rest", 75.0, 50.0)
    results = detector.add_heart_rate(np.arange(0.0, 45.0, 5.0), np.full(9, 60.0))
    results += detector.add_acceleration(t, synthetic.as_xyz(z))
    results += detector.flush(90.0)
    assert [r.hr_samples for r in results] == [6, 3, 0]
    # The grid of epoch k covers [30 k + 2, 30 k + 32): the samples end at 75 s.
    assert [r.motion_seconds for r in results] == [30.0, 30.0, 13.0]
    counts = SleepDetector(model, expect=("counts",)).add_counts([0.0, 15.0, 30.0], [0, 4.0, 0])
    assert [r.motion_seconds for r in counts] == [30.0]


@pytest.mark.timeout(60)
def test_a_jump_to_any_time_returns_promptly(model: OnnxPipeline) -> None:
    detector = SleepDetector(model)
    assert detector.add_heart_rate([0.0], [60.0]) == []
    results = detector.add_heart_rate([1e9], [60.0])
    assert len(results) == 1 + 240 and results[0].has_data
    results = detector.advance(math.inf)
    assert [r.is_gap for r in results[:2]] == [True, False] and results[1].has_data
    assert len(results) == 2 + 240
    assert SleepDetector(model).advance(math.inf) == []
    with pytest.raises(ValueError, match="NaN"):
        detector.advance(math.nan)


# -- rates and units ---------------------------------------------------------------------------
def _count_total(model: OnnxPipeline, rate: float) -> float:
    detector = SleepDetector(model)
    results = _feed_together(detector, _night_streams(1200.0, rate=rate, seed=4))
    at = FEATURE_NAMES.index("log_count_epoch")
    logs = np.array([r.features[at] for r in results if r.features is not None])
    return float(np.nansum(np.expm1(logs)))


@pytest.mark.parametrize("rate", [25.0, 100.0, 200.0])
def test_acceleration_at_any_rate_gives_the_counts_of_50_hz(
    model: OnnxPipeline, rate: float
) -> None:
    reference = _count_total(model, 50.0)
    assert reference > 100
    assert _count_total(model, rate) == pytest.approx(reference, rel=0.1)


def test_acceleration_below_10_hz_is_refused(model: OnnxPipeline) -> None:
    streams = _night_streams(60.0, rate=5.0)
    with pytest.raises(ValueError, match=r"acceleration at about 5 Hz: the counts need at least"):
        SleepDetector(model).add_acceleration(*streams["acceleration"])
    detector = SleepDetector(model)  # in chunks too: the rate is that of the samples so far
    t, xyz = streams["acceleration"]
    with pytest.raises(ValueError, match="about 5 Hz"):
        for lo in range(0, len(t), 2):
            detector.add_acceleration(t[lo : lo + 2], xyz[lo : lo + 2])


@pytest.mark.parametrize(
    "scale,shift,message",
    [(9.80665, 0.0, r"looks like m/s\^2"), (1.0, -1.0, "gravity-removed")],
)
def test_the_unit_check_runs_on_accumulated_samples(
    model: OnnxPipeline, scale: float, shift: float, message: str
) -> None:
    t, xyz = _night_streams(10.0, rate=25.0)["acceleration"]
    xyz = xyz * scale + shift * np.array([0.0, 0.0, -0.8]) * (shift != 0)
    if shift:
        xyz = xyz - np.median(xyz, axis=0)
    detector = SleepDetector(model)
    fed = 0
    with pytest.raises(ValueError, match=rf"{message}.*the 50 samples from t=0\.000"):
        for lo in range(0, len(t), 10):  # chunks of 10 samples: 0.4 s
            detector.add_acceleration(t[lo : lo + 10], xyz[lo : lo + 10])
            fed += 10
    assert fed == 40
    good = SleepDetector(model)
    t, xyz = _night_streams(10.0, rate=25.0)["acceleration"]
    for lo in range(0, len(t), 10):
        good.add_acceleration(t[lo : lo + 10], xyz[lo : lo + 10])


# -- streams in any order ----------------------------------------------------------------------
def _recording_of(streams: dict[str, tuple[NDArray[np.float64], NDArray[np.float64]]]) -> Recording:
    hr_t, bpm = streams["heart_rate"]
    accel_t, xyz = streams["acceleration"]
    n = int(hr_t[-1] // 30) + 1
    return Recording(
        "generated", np.arange(n) * 30.0, np.full(n, -1, np.int8), hr_t, bpm,
        accel_times=accel_t, accel=xyz,
    )  # fmt: skip


def _deliver(
    detector: SleepDetector,
    streams: dict[str, tuple[NDArray[np.float64], NDArray[np.float64]]],
    rng: np.random.Generator,
    max_delay: float,
) -> list[EpochResult]:
    """Each stream cut into random chunks of 10 s on average, each delivered up to
    ``max_delay`` s late."""
    deliveries = []
    for name, (t, _) in streams.items():
        n_cuts = int((t[-1] - t[0]) / 10.0)
        cuts = np.sort(rng.choice(np.arange(1, len(t)), size=n_cuts, replace=False))
        due = -math.inf
        for part in np.split(np.arange(len(t)), cuts):
            due = max(due, float(t[part[-1]]) + rng.uniform(0, max_delay))
            deliveries.append((due, name, part))
    results: list[EpochResult] = []
    for _, name, part in sorted(deliveries, key=lambda d: d[0]):
        t, v = streams[name]
        add = detector.add_acceleration if name == "acceleration" else detector.add_heart_rate
        results += add(t[part], v[part])
    return results


def test_streams_in_any_order_give_the_results_of_replay(model: OnnxPipeline) -> None:
    streams = _night_streams(1800.0, seed=5)
    recording = _recording_of(streams)
    expected = replay(recording, SleepDetector(model))
    assert len(expected) == recording.n_epochs and expected[5].has_data

    # Chunk by chunk, each stream up to 40 s behind: within close_lag (60 s), nothing is late.
    detector = SleepDetector(model)
    got = _deliver(detector, streams, np.random.default_rng(0), 40.0)
    assert got + detector.flush(recording.end_time) == expected
    assert detector.late_samples == {}

    # Night by night: naming the streams first makes each epoch wait for both.
    detector = SleepDetector(model, expect=("heart_rate", "acceleration"), close_lag=math.inf)
    got = detector.add_heart_rate(*streams["heart_rate"])
    assert got == []
    got += detector.add_acceleration(*streams["acceleration"])
    assert got + detector.flush(recording.end_time) == expected

    # Night by night without naming them: a clear error, and nothing taken from the stream.
    detector = SleepDetector(model)
    detector.add_heart_rate(*streams["heart_rate"])
    before = detector.snapshot()
    with pytest.raises(ValueError, match=r"acceleration starts at t=0\.000 s.*expect="):
        detector.add_acceleration(*streams["acceleration"])
    assert detector.snapshot() == before


def test_streams_in_any_order_on_a_real_night(
    model: OnnxPipeline, recordings: list[Recording]
) -> None:
    night = next(r for r in recordings if r.subject_id == "46343").switched_on_before(1800.0)
    expected = replay(night, SleepDetector(model))
    streams = {
        "heart_rate": (night.hr_times, night.hr_bpm),
        "counts": (night.count_times, night.counts),
    }
    detector = SleepDetector(model, expect=("heart_rate", "counts"), close_lag=math.inf)
    got = detector.add_counts(*streams["counts"]) + detector.add_heart_rate(*streams["heart_rate"])
    assert got + detector.flush(night.end_time) == expected
    assert sum(r.state == "unknown" for r in expected) < len(expected) // 10


def test_the_readme_live_example_runs_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    text = README.read_text()
    start = text.index("## Live use")
    section = text[start : text.index("\n## ", start + 1)]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2
    namespace: dict[str, object] = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # the project's own README
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 19 and lines[0].startswith("00:00:00 ")
    assert lines[-1].startswith("00:09:00 ") and " 0.00 " in lines[-1]  # vetoed: cycling


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"timezone": "Europe/Berlln"}, "Unknown time zone 'Europe/Berlln'"),
        ({"time_unit": "min"}, "time_unit must be one of"),
        ({"expect": ("heart_rate", "steps")}, "expect names streams of"),
        ({"expect": ()}, "expect names streams of"),
        ({"close_lag": -1.0}, "close_lag must be 0 or more"),
        ({"close_lag": math.nan}, "close_lag must be 0 or more"),
        ({"reset_after": 10.0}, "reset_after must be a finite number of seconds >= 30"),
        ({"reset_after": math.inf}, "reset_after must be a finite number"),
        ({"origin": math.inf}, "origin must be a finite number"),
    ],
)
def test_bad_settings_are_refused_naming_the_parameter(
    model: OnnxPipeline, settings: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        SleepDetector(model, **settings)  # type: ignore[arg-type]


def test_epochs_closing_together_are_stepped_in_one_batched_call(model: OnnxPipeline) -> None:
    """What a service does with many watches: the same results as stepping each alone."""
    from sleepstream.live.detector import close_together

    nights = [_night_streams(1200.0, start=T0, seed=seed) for seed in range(3)]
    t, xyz = nights[2]["acceleration"]  # one watch without motion for ten minutes
    keep = (t < T0 + 300) | (t >= T0 + 900)
    nights[2]["acceleration"] = (t[keep], xyz[keep])
    alone = [SleepDetector(model) for _ in nights]
    together = [SleepDetector(model) for _ in nights]
    calls = []
    real_run = model.run

    def counting_run(inputs: dict[str, np.ndarray], state: np.ndarray):  # type: ignore[no-untyped-def]
        calls.append(len(state))
        return real_run(inputs, state)

    expected: list[list[EpochResult]] = [[] for _ in nights]
    got: list[list[EpochResult]] = [[] for _ in nights]

    def feed(detector: SleepDetector, streams: dict[str, Any], lo: float) -> list[EpochResult]:
        results = []
        for name, (times, values) in streams.items():
            inside = (times >= lo) & (times < lo + 20.0)
            add = detector.add_acceleration if name == "acceleration" else detector.add_heart_rate
            results += add(times[inside], values[inside])
        return results

    for lo in np.arange(T0, T0 + 1200.0, 20.0):
        for i, streams in enumerate(nights):
            expected[i] += feed(alone[i], streams, lo)
            together[i].hold = True
            assert feed(together[i], streams, lo) == []
        model.run = counting_run  # type: ignore[method-assign]
        for i, results in enumerate(close_together(together)):
            got[i] += results
        model.run = real_run  # type: ignore[method-assign]
    assert max(calls) == 3 and len(calls) < sum(len(r) for r in got)
    for mine, theirs in zip(got, expected, strict=True):
        assert [(r.start, r.state, r.events, r.hr_samples) for r in mine] == [
            (r.start, r.state, r.events, r.hr_samples) for r in theirs
        ]
        assert np.allclose([r.p_sleep for r in mine], [r.p_sleep for r in theirs], atol=1e-6)
    with pytest.raises(ValueError, match="share one model"):
        close_together([SleepDetector(model), SleepDetector(OnnxPipeline.shipped())])


def test_a_batch_of_several_streams_is_fed_in_time_order_all_or_nothing(
    model: OnnxPipeline,
) -> None:
    streams = _night_streams(600.0, start=T0, seed=6)
    one_by_one = SleepDetector(model)
    expected = _feed_together(one_by_one, streams, chunk=1.0) + one_by_one.flush()
    detector = SleepDetector(model)
    got = detector.add(heart_rate=streams["heart_rate"], acceleration=streams["acceleration"])
    assert got + detector.flush() == expected
    # A bad sample anywhere in the batch: the error, and the detector as it was.
    detector = SleepDetector(model)
    detector.add(heart_rate=(T0 + np.arange(0, 60, 5.0), np.full(12, 60.0)))
    before = detector.snapshot()
    t, xyz = _night_streams(600.0, start=T0 + 60, seed=7)["acceleration"]
    bad_hr = (T0 + 60 + np.arange(0, 600, 5.0), np.r_[np.full(119, 60.0), 400.0])
    with pytest.raises(ValueError, match="400 bpm"):
        detector.add(heart_rate=bad_hr, acceleration=(t, xyz))
    assert detector.snapshot() == before
    with pytest.raises(ValueError, match="m/s"):
        detector.add(acceleration=(t, xyz * 9.80665))
    assert detector.snapshot() == before
    with pytest.raises(ValueError, match="backwards"):
        detector.add(heart_rate=(T0 + np.array([100.0, 90.0]), [60.0, 61.0]))
    assert detector.snapshot() == before


def test_absurd_acceleration_values_are_refused_even_without_the_unit_check(
    model: OnnxPipeline,
) -> None:
    t = np.arange(100) * 0.02
    xyz = np.tile([0.0, 0.6, -0.8], (100, 1))
    xyz[7, 1] = 1e308
    detector = SleepDetector(model, check_units=False)
    with pytest.raises(ValueError, match=r"value 1e\+308 at index 7 .* beyond 1000"):
        detector.add_acceleration(t, xyz)
