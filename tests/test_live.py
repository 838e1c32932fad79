"""The live detector: parity with the batch path on real nights, persistence, timing, bad input."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from sleepstream.features import FEATURE_NAMES, night_features
from sleepstream.live.backends import TorchPipeline
from sleepstream.live.context import ContextVeto, MotionContext
from sleepstream.live.detector import EpochResult, SleepDetector
from sleepstream.models.net import SleepGRU
from sleepstream.models.training import predict_night
from sleepstream.records import Recording


@pytest.fixture(scope="module")
def step_model(recordings: list[Recording]) -> TorchPipeline:
    torch.manual_seed(0)
    net = SleepGRU(hidden_size=16)
    columns = [FEATURE_NAMES.index(n) for n in net.feature_names]
    net.normalise.fit(np.concatenate([night_features(r)[:, columns] for r in recordings[:6]]))
    return TorchPipeline(net.eval(), {"wasa93": 0.6})


def _night(recordings: list[Recording], subject: str) -> Recording:
    return next(r for r in recordings if r.subject_id == subject)


def _events(night: Recording, history: float = 3600.0) -> list[tuple[float, int, float]]:
    """Heart rate (0) and counts (1) in time order, from ``history`` s before the PSG start."""
    night = night.switched_on_before(history)
    events = [(t, 0, v) for t, v in zip(night.hr_times, night.hr_bpm, strict=True)]
    events += [(t, 1, v) for t, v in zip(night.count_times, night.counts, strict=True)]
    return sorted(events, key=lambda e: (e[0], e[1]))


def replay(
    detector: SleepDetector,
    events: list[tuple[float, int, float]],
    rng: np.random.Generator | None = None,
) -> list[EpochResult]:
    """Feed events in time order, in runs of one stream cut into random chunk sizes."""
    results: list[EpochResult] = []
    i = 0
    while i < len(events):
        size = 1 if rng is None else int(rng.integers(1, 200))
        j = i
        while j < len(events) and j - i < size and events[j][1] == events[i][1]:
            j += 1
        times = [e[0] for e in events[i:j]]
        values = [e[2] for e in events[i:j]]
        add = detector.add_heart_rate if events[i][1] == 0 else detector.add_counts
        results += add(times, values)
        i = j
    return results


@pytest.mark.parametrize(
    "subject,chunked", [("46343", False), ("7749105", True), ("1360686", True)]
)
def test_replay_matches_batch_predictions(
    recordings: list[Recording], step_model: TorchPipeline, subject: str, chunked: bool
) -> None:
    night = _night(recordings, subject)
    detector = SleepDetector(step_model)
    rng = np.random.default_rng(3) if chunked else None
    results = replay(detector, _events(night), rng)
    results += detector.flush(night.end_time)
    # The detector reports from the epoch of its first sample, an hour before the PSG start.
    fed = night.started_at(results[0].start)
    assert fed.epoch_times[0] < night.epoch_times[0] - 3000
    batch = predict_night(step_model.step.net, fed)
    results = results[: fed.n_epochs]  # heart rate may go on after the PSG
    assert [r.start for r in results] == fed.epoch_times.tolist()
    # Epochs without any sample are unknown; the others are the batch path's numbers.
    hr_per_epoch = np.histogram(fed.hr_times, np.append(fed.epoch_times, fed.end_time))[0]
    counts_per_epoch = np.histogram(fed.count_times, np.append(fed.epoch_times, fed.end_time))[0]
    assert [r.hr_samples for r in results] == hr_per_epoch.tolist()
    empty = (hr_per_epoch == 0) & (counts_per_epoch == 0)
    assert [r.state == "unknown" for r in results] == empty.tolist()
    live = np.array([r.p_model for r in results])
    assert np.isnan(live[empty]).all() and np.isnan([r.p_sleep for r in results])[empty].all()
    assert np.max(np.abs(live[~empty] - batch[~empty])) <= 1e-6


def test_snapshot_and_restore_continue_identically(
    recordings: list[Recording], step_model: TorchPipeline
) -> None:
    night = _night(recordings, "46343")
    events = _events(night)
    reference = SleepDetector(step_model)
    expected = replay(reference, events) + reference.flush(night.end_time)
    half = next(i for i, e in enumerate(events) if e[0] > 8000)
    first = SleepDetector(step_model)
    before = replay(first, events[:half])
    blob = first.snapshot()
    assert b"gru.weight" not in blob
    second = SleepDetector(step_model)
    second.restore(blob)
    after = replay(second, events[half:]) + second.flush(night.end_time)
    assert before + after == expected


def test_late_samples_are_counted_not_merged(
    recordings: list[Recording], step_model: TorchPipeline
) -> None:
    night = _night(recordings, "46343")
    events = [e for e in _events(night) if e[0] < 3000]
    plain = SleepDetector(step_model)
    expected = replay(plain, events)
    detector = SleepDetector(step_model)
    cut = next(i for i, e in enumerate(events) if e[0] > 1500)
    results = replay(detector, events[:cut])
    assert detector.add_heart_rate([100.0, 200.0], [60.0, 61.0]) == []
    results += replay(detector, events[cut:])
    assert detector.late_samples == {"heart_rate": 2}
    assert [r.p_model for r in results] == [r.p_model for r in expected]
    flagged = [r for r in results if r.late_samples]
    assert len(flagged) == 1 and flagged[0].late_samples == {"heart_rate": 2}


def _feed_hours(detector: SleepDetector, hours: range, rng: np.random.Generator) -> None:
    """Heart rate every 10 s and counts every 15 s, a minute of each stream at a time."""
    for minute in range(hours.start * 60, hours.stop * 60):
        t0 = minute * 60.0
        detector.add_heart_rate(t0 + np.arange(0, 60, 10.0), 60 + rng.normal(0, 2, 6))
        detector.add_counts(t0 + np.arange(0, 60, 15.0), rng.exponential(5, 4))


def test_memory_stays_bounded_over_a_day(step_model: TorchPipeline) -> None:
    detector = SleepDetector(step_model)
    rng = np.random.default_rng(0)
    _feed_hours(detector, range(25), rng)
    after_a_day = len(detector.snapshot())
    _feed_hours(detector, range(25, 30), rng)
    assert len(detector.snapshot()) < 1.1 * after_a_day


def test_context_vetoes_sleep(recordings: list[Recording], step_model: TorchPipeline) -> None:
    night = _night(recordings, "46343")
    detector = SleepDetector(step_model, veto=ContextVeto(min_confidence="medium"))
    events = [e for e in _events(night) if e[0] < 600]
    results = replay(detector, [e for e in events if e[0] < -10])
    results += detector.add_context(MotionContext(-10.0, "stationary"))
    results += replay(detector, [e for e in events if -10 <= e[0] < 95])
    results += detector.add_context(MotionContext(95.0, "cycling", "high"))
    results += replay(detector, [e for e in events if 95 <= e[0] < 200])
    results += detector.add_context(MotionContext(200.0, "walking", "low"))
    results += replay(detector, [e for e in events if e[0] >= 200])
    assert detector.late_samples == {}
    by_start = {r.start: r for r in results}
    assert by_start[60.0].vetoed is None
    assert by_start[90.0].vetoed == "cycling (high)" and by_start[90.0].p_sleep == 0.0
    assert by_start[180.0].vetoed == "cycling (high)"
    assert by_start[210.0].vetoed is None and by_start[210.0].p_sleep == by_start[210.0].p_model
    with pytest.raises(ValueError, match="Unknown activity 'flying'"):
        MotionContext(0.0, "flying")


def test_acceleration_stream_feeds_counts(step_model: TorchPipeline) -> None:
    # Chunks of 20 s from two streams: each epoch waits until both have passed its end.
    detector = SleepDetector(step_model)
    rng = np.random.default_rng(1)
    t = np.arange(0, 600, 0.02)
    xyz = np.column_stack([np.zeros_like(t), np.zeros_like(t), -np.ones_like(t)])
    xyz += rng.normal(0, 0.003, xyz.shape)
    moving = (t > 300) & (t < 330)
    xyz[moving, 2] += 0.4 * np.sin(2 * np.pi * 4 * t[moving])
    hr_t = np.arange(0, 600, 5.0)
    results = []
    for lo in range(0, len(t), 997):
        chunk = slice(lo, lo + 997)
        in_chunk = (hr_t >= t[chunk][0]) & (hr_t <= t[chunk][-1])
        results += detector.add_heart_rate(hr_t[in_chunk], np.full(in_chunk.sum(), 62.0))
        results += detector.add_acceleration(t[chunk], xyz[chunk])
    assert detector.late_samples == {}
    # Acceleration up to 600 s covers the epochs up to 570-600 s but for the filter's 2 s.
    assert len(results) == 19 and results[-1].end == 570.0
    # The model file's features of each epoch: the movement shows in the counts, rest does not.
    log_counts = np.array([r.features[FEATURE_NAMES.index("log_count_epoch")] for r in results])
    assert np.nanmax(log_counts) > np.log1p(100) and np.nanmedian(log_counts) == 0


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda d: d.add_heart_rate([1.0, 2.0], [60.0, float("nan")]), "non-finite"),
        (lambda d: d.add_heart_rate([5.0, 2.0], [60.0, 61.0]), "backwards"),
        (lambda d: d.add_heart_rate([1.0], [300.0]), "outside 25-250"),
        (lambda d: d.add_counts([1.0], [-3.0]), "negative"),
        (
            lambda d: d.add_acceleration(np.arange(100) * 0.02, np.tile([0, 0, -9.81], (100, 1))),
            "m/s",
        ),
        (lambda d: d.add_acceleration(np.arange(100) * 0.02, np.zeros((100, 3)) + 0.01), "gravity"),
        (lambda d: d.add_acceleration(np.arange(100) * 0.02, np.ones((100, 2))), "shape"),
    ],
)
def test_bad_input_is_refused_with_a_reason(step_model: TorchPipeline, call, message: str) -> None:  # type: ignore[no-untyped-def]
    detector = SleepDetector(step_model)
    with pytest.raises(ValueError, match=message):
        call(detector)


def test_detector_runs_an_exported_onnx_model(
    recordings: list[Recording], step_model: TorchPipeline, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    from sleepstream.export.onnx import export_onnx
    from sleepstream.live.backends import OnnxPipeline
    from sleepstream.models.card import metadata_for

    net = step_model.step.net
    path = export_onnx(net, tmp_path / "m.onnx", metadata_for(net, {"wasa93": 0.6}, "raw"))
    night = _night(recordings, "46343")
    events = [e for e in _events(night) if e[0] < 4000]
    expected = replay(SleepDetector(step_model), events)
    got = replay(SleepDetector(OnnxPipeline(path)), events)
    assert len(got) == len(expected) > 100
    assert max(abs(a.p_model - b.p_model) for a, b in zip(got, expected, strict=True)) <= 1e-5


def _feed_minutes(detector: SleepDetector, minutes: range) -> list[EpochResult]:
    """A generated stream, heart rate and acceleration a minute at a time."""
    from sleepstream.signal.synthetic import as_xyz, generate

    t, z = generate("night", 600.0, 50.0, seed=2)
    results = []
    for minute in minutes:
        lo, hi = minute * 60.0, (minute + 1) * 60.0
        hr_t = np.arange(lo, hi, 5.0)
        results += detector.add_heart_rate(hr_t, 60 + np.zeros(len(hr_t)))
        inside = (t >= lo) & (t < hi)
        results += detector.add_acceleration(t[inside], as_xyz(z[inside]))
    return results


def _mid_stream_detector(step_model: TorchPipeline) -> tuple[SleepDetector, list[EpochResult]]:
    """A detector part-way through a generated stream with every kind of input."""
    detector = SleepDetector(step_model, close_lag=10.0)
    results = detector.add_context(MotionContext(100.0, "cycling", "high"))
    results += _feed_minutes(detector, range(5))
    results += detector.add_context(MotionContext(400.0, "stationary", "high"))
    return detector, results


def _rest_of_stream(detector: SleepDetector) -> list[EpochResult]:
    return _feed_minutes(detector, range(5, 10)) + detector.flush(700.0)


def test_snapshot_is_data_and_restores_every_kind_of_input(step_model: TorchPipeline) -> None:
    import io

    detector, before = _mid_stream_detector(step_model)
    assert any(r.vetoed for r in before)  # the context rule is part of what is carried
    blob = detector.snapshot()
    with np.load(io.BytesIO(blob), allow_pickle=False) as archive:  # plain arrays, no pickle
        assert "header" in archive.files and "state" in archive.files
    expected = _rest_of_stream(detector)
    restored = SleepDetector(step_model, close_lag=10.0)
    restored.restore(blob)
    assert _rest_of_stream(restored) == expected
    assert any(r.vetoed for r in expected) or any(
        r.vetoed for r in _mid_stream_detector(step_model)[1]
    )


class _Exploit:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (print, ("this must never run",))


@pytest.mark.parametrize(
    "blob,message",
    [
        (pickle.dumps(_Exploit()), "not a sleepstream detector snapshot"),
        (b"", "not a sleepstream detector snapshot"),
        (b"PK\x03\x04broken", "not a sleepstream detector snapshot"),
    ],
)
def test_restore_refuses_what_is_not_a_snapshot(
    step_model: TorchPipeline, blob: bytes, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    detector = SleepDetector(step_model)
    with pytest.raises(ValueError, match=message):
        detector.restore(blob)
    assert "must never run" not in capsys.readouterr().out


def test_restore_refuses_other_settings_models_and_bad_values(step_model: TorchPipeline) -> None:
    import io
    import json

    from sleepstream.live import state

    detector, _ = _mid_stream_detector(step_model)
    blob = detector.snapshot()
    with pytest.raises(ValueError, match=r"other detector settings .*close_lag"):
        SleepDetector(step_model, close_lag=0.0).restore(blob)
    other = TorchPipeline(SleepGRU(hidden_size=16), {"wasa93": 0.6})
    with pytest.raises(ValueError, match="taken with model"):
        SleepDetector(other, close_lag=10.0).restore(blob)

    header, arrays = state.unpack(blob)
    arrays["state"] = np.full_like(arrays["state"], np.nan)
    with pytest.raises(ValueError, match=r"state part 'count_sum' holds NaN"):
        SleepDetector(step_model, close_lag=10.0).restore(state.pack(header, arrays))
    header, arrays = state.unpack(blob)
    arrays["state"] = arrays["state"][:, :-1]
    with pytest.raises(ValueError, match=r"snapshot state has shape"):
        SleepDetector(step_model, close_lag=10.0).restore(state.pack(header, arrays))
    header, arrays = state.unpack(blob)
    arrays["state"][0, 5] = np.inf
    with pytest.raises(ValueError, match=r"infinite"):
        SleepDetector(step_model, close_lag=10.0).restore(state.pack(header, arrays))
    header, arrays = state.unpack(blob)
    bumped = {**header, "version": 99}
    buffer = io.BytesIO()
    np.savez(buffer, header=np.array(json.dumps(bumped)), **arrays)
    target = SleepDetector(step_model, close_lag=10.0)
    with pytest.raises(ValueError, match="version 99 is not supported"):
        target.restore(buffer.getvalue())
    assert target.snapshot() == SleepDetector(step_model, close_lag=10.0).snapshot()  # unchanged


def test_the_live_detector_imports_no_training_or_evaluation_code() -> None:
    """An app process that only runs the detector pays for neither torch nor Lightning (nor
    scipy.signal until acceleration arrives); its start-up time is measured by
    benchmarks/bench_live.py, not here."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from sleepstream.live.detector import SleepDetector\n"
        "SleepDetector()\n"
        "heavy = ('torch', 'lightning', 'sklearn', 'sleepstream.evaluation', 'scipy.signal')\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
