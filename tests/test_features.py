"""The causal feature step: one epoch at a time equals the batch scan, nothing looks ahead, and
every feature matches an independent oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sleepstream.features import (
    FEATURE_NAMES,
    FEATURE_SETS,
    epoch_inputs,
    extract,
    extract_many,
    night_features,
    pack_heart_rate,
    resolve_features,
)
from sleepstream.records import COUNT_SECONDS, EPOCH_SECONDS, Recording
from sleepstream.step import (
    FEATURE_STATE_LAYOUT,
    FEATURE_STATE_SIZE,
    FeatureStep,
    initial_feature_state,
    scan,
)


@pytest.mark.parametrize("subject", ["46343", "7749105"])
def test_one_epoch_at_a_time_equals_the_batched_scan(
    recordings: list[Recording], subject: str
) -> None:
    """The live path (one epoch, one stream per call) gives the batch path's bits, and a night
    scanned with others gives the same bits as scanned alone."""
    night = next(r for r in recordings if r.subject_id == subject).truncated(300)
    other = next(r for r in recordings if r.subject_id == "1360686")
    together = extract_many([other, night])[1]
    counts, hr, offset = epoch_inputs(night)
    fx, state = FeatureStep(), initial_feature_state(1)
    rows = []
    with torch.no_grad():
        for i in range(night.n_epochs):
            row, state = fx(
                *(torch.tensor(a[i : i + 1], dtype=torch.float32) for a in (counts, hr, offset)),
                state,
            )
            rows.append(row[0].double().numpy())
    np.testing.assert_array_equal(np.array(rows), together)
    np.testing.assert_array_equal(extract(night), together)


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


def test_state_has_the_documented_fixed_size() -> None:
    state = initial_feature_state(3)
    assert state.shape == (3, FEATURE_STATE_SIZE)
    assert sum(n for _, n in FEATURE_STATE_LAYOUT) == FEATURE_STATE_SIZE
    assert dict(FEATURE_STATE_LAYOUT)["hr_epoch_mean"] == 2880  # 24 h of epochs


def test_crowded_epochs_are_merged_per_second() -> None:
    offsets = np.linspace(0.0, 29.9, 90)  # three samples a second
    hr, at = pack_heart_rate(offsets, 60.0 + offsets)
    assert np.isfinite(hr).sum() == 30
    np.testing.assert_allclose(hr - at, 60.0)


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
    """``hr_above_recent_low`` is the 5-min mean minus the 5th percentile of the per-epoch mean
    heart rates of the last 6 h."""
    night = next(r for r in recordings if r.subject_id == "46343").switched_on_before(8 * 3600.0)
    features = night_features(night)
    k = night.n_epochs - 400
    end = night.epoch_times[k] + EPOCH_SECONDS
    t, bpm = night.hr_times, night.hr_bpm
    mean_5 = bpm[(t >= end - 300) & (t < end)].mean()
    epoch = np.floor((t - night.epoch_times[0]) / EPOCH_SECONDS)
    last_6h = (t >= end - 6 * 3600) & (t < end)
    means = [bpm[last_6h & (epoch == e)].mean() for e in np.unique(epoch[last_6h])]
    column = FEATURE_NAMES.index("hr_above_recent_low")
    assert features[k, column] == pytest.approx(mean_5 - np.quantile(means, 0.05), abs=1e-3)


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


def _count_slots(night: Recording) -> np.ndarray:
    """Start of the 15 s half-epoch each count is placed in: the half holding its window start,
    or, in an epoch with exactly two counts, first and second half in time order."""
    first = night.epoch_times[0]
    epoch = np.floor((night.count_times - first) / EPOCH_SECONDS)
    offset = night.count_times - first - epoch * EPOCH_SECONDS
    half = np.minimum(np.floor(offset / COUNT_SECONDS), 1)
    for e in np.unique(epoch):
        mine = np.flatnonzero(epoch == e)
        if mine.size == 2:
            half[mine] = [0, 1]
    return first + epoch * EPOCH_SECONDS + half * COUNT_SECONDS


def _oracle(night: Recording, k: int) -> dict[str, float]:
    """Epoch ``k``'s features as the module docstrings and :data:`FEATURE_NAMES` describe them.

    The epoch is ``[start, end)`` with ``end = start + 30 s``; a look-back of m minutes is
    ``[end - m min, end)``; counts are placed by their window start; the stream starts at the
    first epoch (nothing before it is seen); the lows are quantiles of per-epoch means.
    """
    first = float(night.epoch_times[0])
    start = float(night.epoch_times[k])
    end = start + EPOCH_SECONDS
    seen = night.hr_times >= first
    t, bpm = night.hr_times[seen], night.hr_bpm[seen]
    seen_counts = night.count_times >= first
    ct, counts = _count_slots(night)[seen_counts], night.counts[seen_counts]
    nan = np.nan

    def log_count(low: float) -> float:
        window = counts[_window(ct, low, end)]
        return float(np.log1p(window.sum())) if window.size else nan

    def hr(minutes: float) -> np.ndarray:
        return bpm[_window(t, end - minutes * 60.0, end)]

    def low(hours: float) -> float:
        inside = _window(t, end - hours * 3600.0, end)
        epoch = np.floor((t[inside] - first) / EPOCH_SECONDS)
        means = [bpm[inside][epoch == e].mean() for e in np.unique(epoch)]
        return float(np.quantile(means, 0.05)) if len(means) >= 10 else nan

    epoch = bpm[_window(t, start, end)]
    recent_10 = counts[_window(ct, end - 600.0, end)]
    mean_5, mean_15 = (float(hr(m).mean()) if hr(m).size else nan for m in (5, 15))
    last = np.arange(np.searchsorted(t, end) - 1, -1, -1)[:5]  # newest first
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
        "hr_above_baseline": mean_5 - low(24),
        "hr_above_recent_low": mean_5 - low(6),
        "min_since_hr": _minutes_since(t, end),
    }
    padding = [nan] * (5 - last.size)
    for j, value in enumerate([*bpm[last].tolist(), *padding], start=1):
        values[f"hr_last_{j}"] = value
    for j, age in enumerate([*np.minimum((end - t[last]) / 60, 60.0).tolist(), *padding], start=1):
        values[f"hr_age_{j}"] = age
    return values


ORACLE_TOLERANCE = {"hr_std_5min": 2e-3, "hr_std_15min": 2e-3}
"""The step computes in float32; spreads come from sums of squares (absolute, bpm)."""


def _assert_matches_oracle(features: np.ndarray, night: Recording, every: int = 1) -> None:
    """Every ``every``-th epoch, and each of the last 300, against the oracle."""
    epochs = sorted(
        {*range(0, night.n_epochs, every), *range(max(0, night.n_epochs - 300), night.n_epochs)}
    )
    expected = np.array([list(_oracle(night, k).values()) for k in epochs])
    assert list(_oracle(night, 0)) == list(FEATURE_NAMES)
    for column, name in enumerate(FEATURE_NAMES):
        np.testing.assert_allclose(
            features[epochs, column], expected[:, column], rtol=2e-6,
            atol=ORACLE_TOLERANCE.get(name, 2e-4), equal_nan=True, err_msg=name,
        )  # fmt: skip


ORACLE_NIGHTS = ("46343", "7749105", "1066528", "781756")
"""A typical night with six days of heart rate before it; one whose counts stop after 67 min;
one with heart-rate gaps of up to 14 min; one whose heart rate starts only 4 h before the night."""


@pytest.mark.parametrize("subject", ORACLE_NIGHTS)
def test_every_feature_matches_an_independent_oracle_on_a_real_night(
    recordings: list[Recording], subject: str
) -> None:
    night = next(r for r in recordings if r.subject_id == subject).switched_on_before(26 * 3600.0)
    _assert_matches_oracle(night_features(night), night, every=4)


def test_oracle_nights_cover_gaps_and_partly_filled_windows(recordings: list[Recording]) -> None:
    """The oracle nights reach the branches the oracle checks, so its agreement means something."""
    by_id = {r.subject_id: r for r in recordings}
    column = {name: i for i, name in enumerate(FEATURE_NAMES)}
    typical, no_counts, hr_gaps, short_history = (
        night_features(by_id[s].switched_on_before(26 * 3600.0)) for s in ORACLE_NIGHTS
    )
    assert by_id["46343"].hr_times[0] < -5 * 86_400 < -86_400 < by_id["781756"].hr_times[0]
    moved = typical[:, column["min_since_movement"]] < 60
    assert 0 < moved.sum() < moved.size
    assert np.isnan(no_counts[:, column["log_count_epoch"]]).sum() > 500
    assert np.isnan(hr_gaps[:, column["hr_epoch"]]).sum() > 50
    assert np.isnan(hr_gaps[:, column["hr_std_5min"]]).sum() > 50
    assert hr_gaps[:, column["min_since_hr"]].max() > 10
    n = by_id["781756"].n_epochs
    assert np.isfinite(short_history[-n:, column["hr_above_baseline"]]).all()


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
    recording = recording.switched_on_before(90_000.0)
    features = extract(recording)
    _assert_matches_oracle(features, recording, every=7)
    features = features[-n_epochs:]
    # The gaps are where they were put: 20 epochs without heart rate, counts last at 2385 s.
    assert np.isnan(features[:, FEATURE_NAMES.index("hr_epoch")]).sum() == 20
    since_count = features[:, FEATURE_NAMES.index("min_since_count")]
    assert since_count.max() == pytest.approx((5400 - 2385) / 60)


def _days_before(night: Recording) -> Recording:
    """The night with every epoch from its first heart-rate sample (days before the PSG)."""
    first = night.epoch_times[0] - EPOCH_SECONDS * np.ceil(
        (night.epoch_times[0] - night.hr_times[0]) / EPOCH_SECONDS
    )
    times = np.arange(first, night.epoch_times[-1] + 1.0, EPOCH_SECONDS)
    return Recording(
        night.subject_id,
        times,
        np.full(len(times), -1, dtype=np.int8),
        night.hr_times,
        night.hr_bpm,
        night.count_times,
        night.counts,
    )


def test_a_long_recording_scanned_in_stretches_gives_the_same_bits(
    recordings: list[Recording], caplog: pytest.LogCaptureFixture
) -> None:
    """A recording of several days is scanned as overlapping stretches side by side: the same
    features as one epoch after another, also where heart rate stops for more than a day (the
    last samples before the gap outlive the rings, so those stretches are stepped again)."""
    night = next(r for r in recordings if r.subject_id == "46343")
    days = _days_before(night)
    counts, hr, offset = epoch_inputs(days)
    gap = slice(2000, 2000 + 3200)  # 26.7 h without heart rate, after some
    hr[gap], offset[gap] = np.nan, np.nan
    assert len(counts) > 3 * 2880, len(counts)
    with caplog.at_level("DEBUG", logger="sleepstream.step"):
        stretched = scan(counts, hr, offset)
    assert "stepped again" in caplog.text
    one_by_one = scan(counts[None], hr[None], offset[None])[0]  # a batch is stepped as a whole
    np.testing.assert_array_equal(stretched, one_by_one)
