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


# ---------------------------------------------------------------------------------------------
# Every feature against an independent numpy oracle on real nights
# ---------------------------------------------------------------------------------------------


def _window(times: np.ndarray, low: float, high: float) -> slice:
    """Indices of the sorted ``times`` in ``[low, high)``."""
    return slice(*np.searchsorted(times, [low, high], side="left"))


def _minutes_since(times: np.ndarray, end: float) -> float:
    """Minutes from the last of ``times`` before ``end`` to ``end``, capped at 60 (never: 60)."""
    before = times[times < end]
    return min((end - before[-1]) / 60.0, 60.0) if before.size else 60.0


def _oracle(night: Recording, k: int) -> dict[str, float]:
    """Epoch ``k``'s features as the module docstring and :data:`FEATURE_NAMES` describe them.

    The epoch is ``[start, end)`` with ``end = start + 30 s``; a look-back of m minutes is
    ``[end - m min, end)``; counts are placed by their window start.
    """
    start = float(night.epoch_times[k])
    end = start + EPOCH_SECONDS
    t, bpm = night.hr_times, night.hr_bpm
    ct, counts = night.count_times, night.counts
    nan = np.nan

    def log_count(low: float) -> float:
        window = counts[_window(ct, low, end)]
        return float(np.log1p(window.sum())) if window.size else nan

    def hr(minutes: float) -> np.ndarray:
        return bpm[_window(t, end - minutes * 60.0, end)]

    epoch = bpm[_window(t, start, end)]
    recent_10 = counts[_window(ct, end - 600.0, end)]
    mean_5, mean_15 = (float(hr(m).mean()) if hr(m).size else nan for m in (5, 15))
    day, six_hours = hr(24 * 60), hr(6 * 60)
    held = np.searchsorted(t, [end - 86_400.0, end], side="left")
    last = np.arange(held[1] - 1, max(held[0], held[1] - 5) - 1, -1)  # newest first
    values = {
        "log_count_epoch": log_count(start),
        "log_count_2min": log_count(end - 120.0),
        "log_count_5min": log_count(end - 300.0),
        "log_count_10min": log_count(end - 600.0),
        "log_count_30min": log_count(end - 1800.0),
        "log_count_max_10min": float(np.log1p(recent_10.max())) if recent_10.size else nan,
        "min_since_movement": _minutes_since(ct[counts > 20.0], end),
        "min_since_count": _minutes_since(ct, end),
        "hr_epoch": float(epoch.mean()) if epoch.size else nan,
        "hr_min_epoch": float(epoch.min()) if epoch.size else nan,
        "hr_max_epoch": float(epoch.max()) if epoch.size else nan,
        "hr_mean_5min": mean_5,
        "hr_mean_15min": mean_15,
        "hr_std_5min": float(np.std(hr(5))) if hr(5).size >= 2 else nan,
        "hr_std_15min": float(np.std(hr(15))) if hr(15).size >= 2 else nan,
        "hr_change_5_15min": mean_5 - mean_15,
        "hr_above_baseline": mean_5 - np.quantile(day, 0.05) if day.size >= 10 else nan,
        "hr_above_recent_low": (
            mean_5 - np.quantile(six_hours, 0.05) if six_hours.size >= 10 else nan
        ),
        "min_since_hr": _minutes_since(t, end),
    }
    padding = [nan] * (5 - last.size)
    for j, value in enumerate([*bpm[last].tolist(), *padding], start=1):
        values[f"hr_last_{j}"] = value
    for j, age in enumerate([*np.minimum((end - t[last]) / 60, 60.0).tolist(), *padding], start=1):
        values[f"hr_age_{j}"] = age
    return values


ORACLE_NIGHTS = ("46343", "7749105", "1066528", "781756")
"""A typical night with six days of heart rate before it; one whose counts stop after 67 min;
one with heart-rate gaps of up to 14 min; one whose heart rate starts only 4 h before the night."""


@pytest.mark.parametrize("subject", ORACLE_NIGHTS)
def test_every_feature_matches_an_independent_oracle_on_a_real_night(
    recordings: list[Recording], subject: str
) -> None:
    night = next(r for r in recordings if r.subject_id == subject)
    features = night_features(night)
    expected = np.array([list(_oracle(night, k).values()) for k in range(night.n_epochs)])
    assert list(_oracle(night, 0)) == list(FEATURE_NAMES)
    for column, name in enumerate(FEATURE_NAMES):
        np.testing.assert_allclose(
            features[:, column], expected[:, column], rtol=0, atol=1e-9, equal_nan=True,
            err_msg=name,
        )  # fmt: skip


def test_oracle_nights_cover_gaps_and_partly_filled_windows(recordings: list[Recording]) -> None:
    """The oracle nights reach the branches the oracle checks, so its agreement means something."""
    by_id = {r.subject_id: r for r in recordings}
    column = {name: i for i, name in enumerate(FEATURE_NAMES)}
    typical, no_counts, hr_gaps, short_history = (night_features(by_id[s]) for s in ORACLE_NIGHTS)
    assert by_id["46343"].hr_times[0] < -5 * 86_400 < -86_400 < by_id["781756"].hr_times[0]
    moved = typical[:, column["min_since_movement"]] < 60
    assert 0 < moved.sum() < moved.size
    assert np.isnan(no_counts[:, column["log_count_epoch"]]).sum() > 500
    assert np.isnan(hr_gaps[:, column["hr_epoch"]]).sum() > 50
    assert np.isnan(hr_gaps[:, column["hr_std_5min"]]).sum() > 50
    assert hr_gaps[:, column["min_since_hr"]].max() > 10
    assert np.isfinite(short_history[:, column["hr_above_baseline"]]).all()


def test_window_edges_and_thresholds_match_the_oracle_on_generated_samples() -> None:
    """Samples exactly on epoch and window edges, counts of exactly the movement threshold.

    Real timestamps almost never fall on an edge, so this night checks the half-open windows:
    a sample at ``end`` belongs to the next epoch, one at ``end - m min`` is inside the window,
    one exactly 24 h before ``end`` is in the baseline, and a count of 20 is not a movement.
    """
    n_epochs = 200
    epoch_times = np.arange(n_epochs) * EPOCH_SECONDS
    history = np.arange(-90_000.0, 0.0, 60.0)  # a day and more: the 24 h cut is exercised
    night = np.arange(0.0, n_epochs * EPOCH_SECONDS, 5.0)  # every epoch edge has a sample
    night = night[(night < 3600) | (night >= 4200)]  # a 10-minute heart-rate gap
    hr_times = np.concatenate([history, night])
    hr_bpm = 55 + (np.arange(hr_times.size) * 7) % 31
    count_times = np.arange(0.0, n_epochs * EPOCH_SECONDS, 15.0)
    count_times = count_times[(count_times < 2400) | (count_times >= 5400)]  # 50 min gap
    counts = np.array([0.0, 20.0, 21.0, 3.0, 20.0, 0.0, 0.0])[np.arange(count_times.size) % 7]
    recording = Recording(
        "edges", epoch_times, np.full(n_epochs, 2, dtype=np.int8),
        hr_times, hr_bpm.astype(np.float64), count_times, counts,
    )  # fmt: skip
    features = extract(recording)
    expected = np.array([list(_oracle(recording, k).values()) for k in range(n_epochs)])
    for column, name in enumerate(FEATURE_NAMES):
        np.testing.assert_allclose(
            features[:, column], expected[:, column], rtol=0, atol=1e-9, equal_nan=True,
            err_msg=name,
        )  # fmt: skip
    # The gaps are where they were put: 20 epochs without heart rate, counts last at 2385 s.
    assert np.isnan(features[:, FEATURE_NAMES.index("hr_epoch")]).sum() == 20
    since_count = features[:, FEATURE_NAMES.index("min_since_count")]
    assert since_count.max() == pytest.approx((5400 - 2385) / 60)
