"""The causal feature extractor: streaming equals batch replay, and nothing looks ahead."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from sleepstream.features import (
    FEATURE_NAMES,
    FEATURE_SETS,
    CausalFeatures,
    extract,
    night_features,
    resolve_features,
)
from sleepstream.records import EPOCH_SECONDS, Recording


def _stream(recording: Recording, n_epochs: int) -> np.ndarray:
    """Feed every sample one at a time in global time order, closing epochs as time passes."""
    events = [(t, 0, v) for t, v in zip(recording.hr_times, recording.hr_bpm, strict=True)]
    events += [(t, 1, v) for t, v in zip(recording.count_times, recording.counts, strict=True)]
    events.sort(key=lambda e: (e[0], e[1]))
    fx = CausalFeatures()
    rows = []
    epoch = 0
    for t, kind, value in events:
        while epoch < n_epochs and t >= recording.epoch_times[epoch] + EPOCH_SECONDS:
            rows.append(fx.close_epoch(float(recording.epoch_times[epoch])))
            epoch += 1
        if epoch == n_epochs:
            break
        if kind == 0:
            fx.update_heart_rate(t, value)
        else:
            fx.update_count(t, value)
    while epoch < n_epochs:
        rows.append(fx.close_epoch(float(recording.epoch_times[epoch])))
        epoch += 1
    return np.array(rows)


@pytest.mark.parametrize("subject", ["46343", "7749105"])
def test_streaming_equals_batch_on_real_night(recordings: list[Recording], subject: str) -> None:
    night = next(r for r in recordings if r.subject_id == subject)
    batch = extract(night)
    streamed = _stream(night, night.n_epochs)
    np.testing.assert_array_equal(np.isnan(batch), np.isnan(streamed))
    np.testing.assert_allclose(batch, streamed, rtol=0, atol=1e-12, equal_nan=True)


def test_every_prefix_gives_the_same_vectors(recordings: list[Recording]) -> None:
    night = next(r for r in recordings if r.subject_id == "46343")
    full = night_features(night)
    rng = np.random.default_rng(1)
    for k in sorted(rng.choice(np.arange(1, night.n_epochs), size=12, replace=False)):
        prefix = extract(night.truncated(int(k)))
        np.testing.assert_array_equal(prefix, full[:k])


def test_future_samples_do_not_change_past_vectors(recordings: list[Recording]) -> None:
    night = next(r for r in recordings if r.subject_id == "1360686")
    base = extract(night.truncated(400))
    later = night.hr_times >= night.epoch_times[400]
    altered = Recording(
        night.subject_id,
        night.epoch_times[:400],
        night.stages[:400],
        night.hr_times,
        np.where(later, 200.0, night.hr_bpm),
        night.count_times,
        np.where(night.count_times >= night.epoch_times[400], 1e4, night.counts),
    )
    np.testing.assert_array_equal(extract(altered), base)


def test_feature_values_are_sane(recordings: list[Recording]) -> None:
    night = next(r for r in recordings if r.subject_id == "46343")
    f = night_features(night)
    col = {n: f[:, i] for i, n in enumerate(FEATURE_NAMES)}
    assert f.shape == (night.n_epochs, len(FEATURE_NAMES))
    assert np.nanmin(col["hr_epoch"]) >= 25 and np.nanmax(col["hr_epoch"]) <= 250
    assert not np.any(col["log_count_30min"] < col["log_count_epoch"] - 1e-12)
    assert not any("start" in name for name in FEATURE_NAMES)
    # Heart rate above a low of the last 6 h: mostly positive, never absurd.
    above = col["hr_above_recent_low"][np.isfinite(col["hr_above_recent_low"])]
    assert np.median(above) > 0 and above.max() < 100


def test_gap_features_follow_missing_counts(recordings: list[Recording]) -> None:
    night = next(r for r in recordings if r.subject_id == "7749105")
    f = night_features(night)
    since = f[:, FEATURE_NAMES.index("min_since_count")]
    epoch_counts = f[:, FEATURE_NAMES.index("log_count_epoch")]
    late = night.epoch_times > 2 * 3600
    assert np.isnan(epoch_counts[late]).all()
    assert since[late].max() == 60.0


def test_samples_after_a_closed_epoch_are_refused() -> None:
    fx = CausalFeatures()
    fx.update_heart_rate(5.0, 60.0)
    fx.close_epoch(0.0)
    with pytest.raises(ValueError, match=r"after the epoch ending at 30\.000"):
        fx.update_heart_rate(29.0, 61.0)
    with pytest.raises(ValueError, match="not finite"):
        fx.update_heart_rate(31.0, float("nan"))
    with pytest.raises(ValueError, match=">= 0"):
        fx.update_count(31.0, -1.0)


def test_pickled_state_continues_identically(recordings: list[Recording]) -> None:
    night = next(r for r in recordings if r.subject_id == "46343")
    full = night_features(night)
    fx = CausalFeatures()
    half = night.epoch_times[200] + EPOCH_SECONDS
    hr, ct = night.hr_times < half, night.count_times < half
    for t, v in zip(night.hr_times[hr], night.hr_bpm[hr], strict=True):
        fx.update_heart_rate(t, v)
    for t, v in zip(night.count_times[ct], night.counts[ct], strict=True):
        fx.update_count(t, v)
    for i in range(201):
        row = fx.close_epoch(float(night.epoch_times[i]))
    np.testing.assert_array_equal(row, full[200])
    restored = pickle.loads(pickle.dumps(fx))
    nxt = night.epoch_times[201] + EPOCH_SECONDS
    for t, v in zip(night.hr_times, night.hr_bpm, strict=True):
        if half <= t < nxt:
            restored.update_heart_rate(t, v)
    for t, v in zip(night.count_times, night.counts, strict=True):
        if half <= t < nxt:
            restored.update_count(t, v)
    np.testing.assert_array_equal(restored.close_epoch(float(night.epoch_times[201])), full[201])


def test_feature_sets_resolve() -> None:
    for name, names in FEATURE_SETS.items():
        assert resolve_features(name) == names
    with pytest.raises(ValueError, match="Unknown feature set 'nope'"):
        resolve_features("nope")
    with pytest.raises(ValueError, match="Unknown features"):
        resolve_features(["log_count_epoch", "bogus"])


@pytest.mark.parametrize("subject", ["46343", "1360686"])
def test_no_feature_depends_on_when_the_extractor_was_switched_on(
    recordings: list[Recording], subject: str
) -> None:
    """Worn all day: switched on 30 h or 25 h before the PSG start, the extractor has the same
    24 h look-back at every PSG epoch, so every feature of the night is identical."""
    night = next(r for r in recordings if r.subject_id == subject)
    assert night.hr_times[0] < -30 * 3600
    earlier = night_features(night.switched_on_before(30 * 3600.0))[-night.n_epochs :]
    later = night_features(night.switched_on_before(25 * 3600.0))[-night.n_epochs :]
    np.testing.assert_array_equal(earlier, later)


def test_recent_low_heart_rate_matches_numpy(recordings: list[Recording]) -> None:
    """``hr_above_recent_low`` is the 5-min mean minus the 5th percentile of the last 6 h."""
    night = next(r for r in recordings if r.subject_id == "46343")
    features = night_features(night)
    k = 400
    end = night.epoch_times[k] + EPOCH_SECONDS
    t, bpm = night.hr_times, night.hr_bpm
    mean_5 = bpm[(t >= end - 300) & (t < end)].mean()
    low = np.quantile(bpm[(t >= end - 6 * 3600) & (t < end)], 0.05)
    column = FEATURE_NAMES.index("hr_above_recent_low")
    assert features[k, column] == pytest.approx(mean_5 - low, abs=1e-9)


def test_night_features_are_shared_through_the_disk_cache(
    recordings: list[Recording], private_cache
) -> None:  # type: ignore[no-untyped-def]
    """A second process (here: an emptied memory) reads the same features from the cache."""
    from sleepstream import features as module

    night = next(r for r in recordings if r.subject_id == "5383425").switched_on_before(600.0)
    first = night_features(night).copy()
    assert list((private_cache / "features").glob("*.npy"))
    module._MEMO.clear()
    again = night_features(night)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(extract(night), again)
