"""Heart-rate features against pandas' time-window statistics, on a real night (public API only).

``tests/test_features.py`` checks every feature against windows cut by hand with NumPy; here
the windows come from another library: ``pandas`` time-based rolling windows (``closed="left"``:
``[end - m min, end)``, the look-back the features document) and ``groupby`` for the per-epoch
means behind the 24 h baseline.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sleepstream.features import (
    BASELINE_QUANTILE,
    FEATURE_NAMES,
    HR_BASELINE_HOURS,
    MIN_BASELINE_EPOCHS,
    night_features,
)
from sleepstream.records import EPOCH_SECONDS, Recording

SUBJECT = "46343"
"""A typical night, with six days of heart rate before it."""
SWITCHED_ON_S = 26 * 3600.0
"""The stream starts 26 h before the PSG start, so the 24 h baseline is full during the night."""


@pytest.fixture(scope="module")
def night(recordings: list[Recording]) -> Recording:
    return next(r for r in recordings if r.subject_id == SUBJECT).switched_on_before(SWITCHED_ON_S)


def _seen_heart_rate(night: Recording) -> pd.Series:
    """The heart rate the stream saw (from its first epoch on), indexed by time."""
    seen = night.hr_times >= night.epoch_times[0]
    return pd.Series(night.hr_bpm[seen], index=pd.to_datetime(night.hr_times[seen], unit="s"))


def _at_epoch_ends(series: pd.Series, night: Recording) -> pd.Series:
    """``series`` with a NaN row at each epoch's end, where rolling windows are read."""
    ends = pd.to_datetime(night.epoch_times + EPOCH_SECONDS, unit="s")
    marks = pd.Series(np.nan, index=ends)
    return pd.concat([series, marks]).sort_index(kind="stable")


def _read_at_ends(rolled: pd.Series, night: Recording) -> np.ndarray:
    ends = pd.to_datetime(night.epoch_times + EPOCH_SECONDS, unit="s")
    by_time = rolled[~rolled.index.duplicated(keep="last")]
    return by_time.reindex(ends).to_numpy()


@pytest.mark.parametrize("minutes", [5, 15])
def test_heart_rate_means_equal_pandas_rolling_means(night: Recording, minutes: int) -> None:
    """``hr_mean_{m}min`` is the mean of the samples in ``[end - m min, end)`` (NaN: none)."""
    features = night_features(night)[:, FEATURE_NAMES.index(f"hr_mean_{minutes}min")]
    marked = _at_epoch_ends(_seen_heart_rate(night), night)
    expected = _read_at_ends(marked.rolling(f"{minutes * 60}s", closed="left").mean(), night)
    np.testing.assert_allclose(features, expected, rtol=2e-6, atol=2e-4, equal_nan=True)
    night_part = slice(int(SWITCHED_ON_S // EPOCH_SECONDS), None)  # from the PSG start
    assert np.isfinite(expected[night_part]).mean() > 0.9  # the check is not over NaNs
    assert np.isfinite(expected).sum() > 1000


def test_heart_rate_above_baseline_equals_a_pandas_quantile(night: Recording) -> None:
    """``hr_above_baseline`` is ``hr_mean_5min`` minus the 5 % quantile of the per-epoch mean
    heart rates of the last 24 h (at least 10 epochs with heart rate; NaN otherwise)."""
    features = night_features(night)
    above = features[:, FEATURE_NAMES.index("hr_above_baseline")]
    mean_5 = features[:, FEATURE_NAMES.index("hr_mean_5min")]
    hr = _seen_heart_rate(night)
    first = pd.Timestamp(night.epoch_times[0], unit="s")
    epoch_start = first + pd.to_timedelta(
        ((hr.index - first).total_seconds() // EPOCH_SECONDS) * EPOCH_SECONDS, unit="s"
    )
    per_epoch = hr.groupby(epoch_start).mean()
    # Each epoch's mean stands at its start: inside [end - 24 h, end) exactly when the epoch is.
    marked = _at_epoch_ends(per_epoch, night)
    window = marked.rolling(f"{int(HR_BASELINE_HOURS * 3600)}s", closed="left")
    baseline = _read_at_ends(
        window.quantile(BASELINE_QUANTILE).where(window.count() >= MIN_BASELINE_EPOCHS), night
    )
    np.testing.assert_allclose(above, mean_5 - baseline, rtol=2e-6, atol=1e-3, equal_nan=True)
    night_part = slice(int(SWITCHED_ON_S // EPOCH_SECONDS), None)  # from the PSG start
    assert np.isfinite(baseline[night_part]).all()  # the whole night has a baseline to check
    assert (baseline[night_part] < np.nanmean(mean_5[night_part])).all()  # and it is a low
