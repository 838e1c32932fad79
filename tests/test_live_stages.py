"""The live detector with stage outputs: stage probabilities per epoch equal the stage
network's batch path, p(sleep) unchanged, snapshots, batched closing, and none without them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sleepstream.features import FEATURE_NAMES, night_features
from sleepstream.live.backends import TorchPipeline
from sleepstream.live.detector import EpochResult, SleepDetector, close_together, stage_tasks
from sleepstream.models.net import SleepGRU, StageGRU, predict_night_stages
from sleepstream.records import Recording


def _night(recordings: list[Recording], subject: str) -> Recording:
    return next(r for r in recordings if r.subject_id == subject)


def _events(night: Recording, history: float = 3600.0) -> list[tuple[float, int, float]]:
    """Heart rate (0) and counts (1) in time order, from ``history`` s before the PSG start."""
    night = night.switched_on_before(history)
    events = [(t, 0, v) for t, v in zip(night.hr_times, night.hr_bpm, strict=True)]
    events += [(t, 1, v) for t, v in zip(night.count_times, night.counts, strict=True)]
    return sorted(events, key=lambda e: (e[0], e[1]))


def replay(detector: SleepDetector, events: list[tuple[float, int, float]]) -> list[EpochResult]:
    """Feed events in time order, a run of one stream at a time."""
    results: list[EpochResult] = []
    i = 0
    while i < len(events):
        j = i
        while j < len(events) and events[j][1] == events[i][1]:
            j += 1
        add = detector.add_heart_rate if events[i][1] == 0 else detector.add_counts
        results += add([e[0] for e in events[i:j]], [e[2] for e in events[i:j]])
        i = j
    return results


def _fitted(net: SleepGRU | StageGRU, recordings: list[Recording]) -> None:
    columns = [FEATURE_NAMES.index(n) for n in net.feature_names]
    net.normalise.fit(np.concatenate([night_features(r)[:, columns] for r in recordings[:4]]))
    net.eval()


@pytest.fixture(scope="module")
def models(recordings: list[Recording]) -> tuple[TorchPipeline, TorchPipeline, StageGRU]:
    """The same sleep/wake network alone and with a stage network."""
    torch.manual_seed(0)
    net, stages = SleepGRU(hidden_size=16), StageGRU(hidden_size=8)
    _fitted(net, recordings)
    _fitted(stages, recordings)
    alone = TorchPipeline(net, {"wasa93": 0.6})
    return alone, TorchPipeline(net, {"wasa93": 0.6}, stages), stages


def test_detector_gives_stage_probabilities_of_the_batch_path(
    recordings: list[Recording], models: tuple[TorchPipeline, TorchPipeline, StageGRU]
) -> None:
    alone, staged, stages = models
    assert stage_tasks(staged) == {"p_stage3": "wake_nrem_rem", "p_stage4": "wake_light_deep_rem"}
    night = _night(recordings, "46343")
    events = [e for e in _events(night) if e[0] < night.epoch_times[0] + 3 * 3600]
    with_stages = replay(SleepDetector(staged), events)
    without = replay(SleepDetector(alone), events)
    assert [r.p_model for r in with_stages] == [r.p_model for r in without]
    assert all(r.p_stages is None and r.stage() is None for r in without)
    fed = night.started_at(with_stages[0].start).truncated(len(with_stages))
    batch = predict_night_stages(stages, fed)
    known = np.array([r.state != "unknown" for r in with_stages])
    assert known.sum() > 300
    for task, expected in batch.items():
        live = np.array([r.p_stages[task] for r in with_stages if r.p_stages is not None])
        assert live.shape == expected.shape
        assert np.isnan(live[~known]).all()
        assert np.max(np.abs(live[known] - expected[known])) <= 1e-5
    classes = {r.stage("wake_nrem_rem") for r in with_stages if r.state != "unknown"}
    assert classes <= {"wake", "nrem", "rem"}
    assert {r.stage() for r in with_stages if r.state == "unknown"} == {None}


def test_snapshot_and_batched_closing_keep_stage_probabilities(
    recordings: list[Recording], models: tuple[TorchPipeline, TorchPipeline, StageGRU]
) -> None:
    _, staged, _ = models
    night = _night(recordings, "1360686")
    events = [e for e in _events(night) if e[0] < night.epoch_times[0] + 3600]
    reference = replay(SleepDetector(staged), events)
    half = len(events) // 2
    first = SleepDetector(staged)
    before = replay(first, events[:half])
    second = SleepDetector(staged)
    second.restore(first.snapshot())
    assert before + replay(second, events[half:]) == reference
    # Two detectors closed together give each one's own stage probabilities.
    pair = [SleepDetector(staged) for _ in range(2)]
    for detector in pair:
        detector.hold = True
        replay(detector, events)
    together = close_together(pair)
    for results in together:
        assert [r.start for r in results] == [r.start for r in reference]
        assert [r.state for r in results] == [r.state for r in reference]
        # One batched call of the step: equal to stepping alone within float32 rounding.
        for got, want in zip(results, reference, strict=True):
            for task, p in (want.p_stages or {}).items():
                assert got.p_stages is not None
                np.testing.assert_allclose(got.p_stages[task], p, atol=1e-6)


def test_replay_shows_the_live_hypnogram(
    recordings: list[Recording],
    models: tuple[TorchPipeline, TorchPipeline, StageGRU],
    tmp_path: Path,
) -> None:
    """``replay`` with a stage model: a live-stage column in the terminal table and a live
    hypnogram row (beside the PSG one) in the figure; neither without stage outputs."""
    from sleepstream.live.replay import live_stages, live_table, plot_replay, replay_figure
    from sleepstream.live.replay import replay as replay_night

    alone, staged, _ = models
    night = _night(recordings, "46343").truncated(240)
    results = replay_night(night, SleepDetector(staged))
    plain = replay_night(night, SleepDetector(alone))
    levels = live_stages(results)
    assert np.isfinite(levels).sum() > 200 and set(levels[np.isfinite(levels)]) <= {0, 1, 2, 3}
    assert np.isnan(live_stages(plain)).all()
    known = next(r for r in results if r.state != "unknown")
    table = live_table(known, "46343", 2)
    assert [c.header for c in table.columns][-2:] == ["live stage", "PSG"]
    assert "live stage" not in [c.header for c in live_table(plain[-1], "46343", 2).columns]
    figure = replay_figure(night, results, 0.6)
    assert [ax.get_ylabel() for ax in figure.axes] == ["p(sleep)", "live stage", "PSG"]
    assert [ax.get_ylabel() for ax in replay_figure(night, plain, 0.6).axes] == ["p(sleep)", "PSG"]
    assert plot_replay(night, results, 0.6, tmp_path / "replay.png").stat().st_size > 10_000
