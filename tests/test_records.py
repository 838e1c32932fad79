"""Stage codes, label maps and the causal cut of a :class:`Recording`."""

from __future__ import annotations

import numpy as np
import pytest

from sleepstream.records import (
    LABEL_MAPS,
    SLEEP_WAKE,
    UNSCORED,
    WAKE_LIGHT_DEEP_REM,
    WAKE_NREM_REM,
    LabelMap,
    Recording,
    Stage,
)

ALL_STAGES = np.array([s.value for s in Stage])  # -1, 0, 1, 2, 3, 4, 5

# Expected class per stage, in the order of ALL_STAGES, written out by hand.
EXPECTED = {
    "sleep_wake": [-1, 0, 1, 1, 1, 1, 1],
    "wake_nrem_rem": [-1, 0, 1, 1, 1, 1, 2],
    "wake_light_deep_rem": [-1, 0, 1, 1, 2, 2, 3],
}


def test_label_maps_are_registered_by_name() -> None:
    assert LABEL_MAPS == {
        "sleep_wake": SLEEP_WAKE,
        "wake_nrem_rem": WAKE_NREM_REM,
        "wake_light_deep_rem": WAKE_LIGHT_DEEP_REM,
    }


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_label_map_on_every_stage(name: str) -> None:
    label_map = LABEL_MAPS[name]
    classes = label_map.apply(ALL_STAGES)
    assert classes.dtype == np.int8
    assert classes.tolist() == EXPECTED[name]
    # Every class index names one of the map's classes, and every class is used.
    scored = classes[classes != UNSCORED]
    assert set(scored.tolist()) == set(range(len(label_map.classes)))


@pytest.mark.parametrize("label_map", list(LABEL_MAPS.values()), ids=list(LABEL_MAPS))
def test_unscored_stays_unscored(label_map: LabelMap) -> None:
    stages = np.array([-1, 2, -1, -1, 0], dtype=np.int8)
    classes = label_map.apply(stages)
    assert UNSCORED == -1
    assert classes[[0, 2, 3]].tolist() == [-1, -1, -1]
    assert (classes[[1, 4]] >= 0).all()


@pytest.mark.parametrize("code", [7, -2, 6, 100])
@pytest.mark.parametrize("label_map", list(LABEL_MAPS.values()), ids=list(LABEL_MAPS))
def test_invalid_stage_code_raises_naming_it(label_map: LabelMap, code: int) -> None:
    with pytest.raises(ValueError, match=rf"Invalid stage code .*(?<!\d){code}(?!\d)") as error:
        label_map.apply(np.array([0, 2, code, 5]))
    assert label_map.name in str(error.value)


def test_recording_labels_use_the_map() -> None:
    r = _recording()
    assert r.labels().tolist() == SLEEP_WAKE.apply(r.stages).tolist()
    assert r.labels(WAKE_NREM_REM).tolist() == WAKE_NREM_REM.apply(r.stages).tolist()
    assert r.scored.tolist() == (r.stages != Stage.UNSCORED).tolist()


def test_recording_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="hr_times/hr_bpm lengths differ"):
        Recording("x", np.zeros(2), np.zeros(2, np.int8), np.zeros(3), np.zeros(2))


def _recording() -> Recording:
    """Ten epochs from t = 0 with heart rate before and during the night, counts and motion."""
    n = 10
    epoch_times = np.arange(0.0, 30.0 * n, 30.0)
    stages = np.array([-1, 0, 1, 2, 3, 4, 5, 2, 0, -1], dtype=np.int8)
    hr_times = np.arange(-100.0, 300.0, 7.0)
    count_times = np.arange(0.0, 300.0, 15.0) + 0.01
    accel_times = np.arange(0.0, 300.0, 0.5)
    accel = np.column_stack([accel_times, -accel_times, np.ones_like(accel_times)])
    valid = np.zeros(n, dtype=bool)
    valid[2:8] = True
    features = np.where(valid[:, None], np.arange(n * 5.0).reshape(n, 5), np.nan)
    return Recording(
        "42",
        epoch_times,
        stages,
        hr_times,
        60 + hr_times / 100,
        count_times,
        count_times * 2,
        accel_times,
        accel,
        "motion",
        valid,
        features,
    )


@pytest.mark.parametrize("n_epochs", [0, 1, 4, 10])
def test_truncated_keeps_only_samples_before_the_cut(n_epochs: int) -> None:
    r = _recording()
    cut = 30.0 * n_epochs
    t = r.truncated(n_epochs)

    assert t.n_epochs == n_epochs
    assert t.epoch_times.tolist() == r.epoch_times[:n_epochs].tolist()
    assert t.stages.tolist() == r.stages[:n_epochs].tolist()
    assert t.end_time == (cut if n_epochs else 0.0)
    for times, values, full_times, full_values in [
        (t.hr_times, t.hr_bpm, r.hr_times, r.hr_bpm),
        (t.count_times, t.counts, r.count_times, r.counts),
        (t.accel_times, t.accel, r.accel_times, r.accel),
    ]:
        assert times is not None and values is not None
        assert full_times is not None and full_values is not None
        keep = full_times < cut if n_epochs else np.zeros(len(full_times), dtype=bool)
        assert (times < cut).all()
        np.testing.assert_array_equal(times, full_times[keep])
        np.testing.assert_array_equal(values, full_values[keep])
    assert t.paper_valid is not None and t.paper_features is not None
    np.testing.assert_array_equal(t.paper_valid, r.paper_valid[:n_epochs])  # type: ignore[index]
    np.testing.assert_array_equal(t.paper_features, r.paper_features[:n_epochs])  # type: ignore[index]
    assert (t.subject_id, t.count_source) == (r.subject_id, r.count_source)


def test_truncated_keeps_heart_rate_history_before_the_night() -> None:
    r = _recording()
    t = r.truncated(1)
    assert t.hr_times[0] == -100.0
    assert t.hr_times[-1] < 30.0
    assert t.hr_times.tolist() == [x for x in r.hr_times.tolist() if x < 30.0]


def test_truncated_without_motion_or_paper_features() -> None:
    r = Recording(
        "7",
        np.arange(0.0, 120.0, 30.0),
        np.zeros(4, np.int8),
        np.array([-5.0, 10.0, 70.0]),
        np.array([60.0, 61.0, 62.0]),
    )
    t = r.truncated(2)
    assert t.accel is None and t.paper_valid is None and t.paper_features is None
    assert t.hr_times.tolist() == [-5.0, 10.0]
    assert len(t.count_times) == 0
