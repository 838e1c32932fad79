"""The LOSO driver: every start scenario, thresholds chosen on the other held-out nights only."""

from __future__ import annotations

import numpy as np
import pytest

from sleepstream.baselines import LogisticCausal
from sleepstream.evaluation.loso import choose_thresholds, run_loso
from sleepstream.evaluation.scenarios import SCENARIO_NAMES, SCENARIOS, scenario
from sleepstream.records import SLEEP_WAKE, Recording

FOLDS = ["46343", "1360686", "8258170", "9961348"]


@pytest.fixture(scope="module")
def results(recordings: list[Recording]):  # type: ignore[no-untyped-def]
    return run_loso(LogisticCausal(), recordings, folds=FOLDS, progress=False)


def test_every_scenario_scores_the_same_psg_epochs(results, recordings: list[Recording]) -> None:  # type: ignore[no-untyped-def]
    assert list(results) == list(SCENARIO_NAMES)
    by_id = {r.subject_id: r for r in recordings}
    for name, result in results.items():
        assert result.scenario == name and [n.subject_id for n in result.nights] == FOLDS
        for night in result.nights:
            np.testing.assert_array_equal(night.epoch_times, by_id[night.subject_id].epoch_times)
    # Fed an hour of heart rate first, the causal features (and so p) differ early in the night.
    early = results["early_1h"].nights[0].p_sleep
    at_start = results["psg_start"].nights[0].p_sleep
    assert not np.allclose(early[:20], at_start[:20])


def test_thresholds_come_from_the_other_held_out_nights(results) -> None:  # type: ignore[no-untyped-def]
    for result in results.values():
        for night in result.nights:
            others = [(n.labels, n.p_sleep) for n in result.nights if n is not night]
            assert night.thresholds == choose_thresholds(others)


def test_skipped_first_half_hour_is_unscored(results, recordings: list[Recording]) -> None:  # type: ignore[no-untyped-def]
    skipped = results["early_1h_after_30min"].nights[0]
    full = results["early_1h"].nights[0]
    np.testing.assert_array_equal(skipped.p_sleep, full.p_sleep)
    assert (skipped.labels[:60] == -1).all()
    np.testing.assert_array_equal(skipped.labels[60:], full.labels[60:])


def test_scenarios_feed_history_but_never_before_the_first_sample(
    recordings: list[Recording],
) -> None:
    night = next(r for r in recordings if r.subject_id == "781756")  # heart rate from -4 h only
    fed = scenario("whole_day").fed(night)
    assert fed.epoch_times[0] <= fed.hr_times[0] < fed.epoch_times[0] + 30
    assert fed.epoch_times[0] > -5 * 3600
    np.testing.assert_array_equal(fed.stages[-night.n_epochs :], night.stages)
    assert (fed.labels(SLEEP_WAKE)[: -night.n_epochs] == -1).all()
    two_hours = scenario("early_2h").fed(night)
    assert two_hours.epoch_times[0] == night.epoch_times[0] - 7200
    assert two_hours.count_times[0] >= 0  # the dataset has no motion before the PSG start
    assert len(SCENARIOS) == len(SCENARIO_NAMES)


def test_one_fold_cannot_choose_deployable_thresholds(recordings: list[Recording]) -> None:
    with pytest.raises(ValueError, match="at least 2 folds"):
        run_loso(LogisticCausal(), recordings, folds=FOLDS[:1], progress=False)


def test_unknown_scenario_is_named() -> None:
    with pytest.raises(ValueError, match="Unknown start scenario 'noon'"):
        scenario("noon")


def test_progress_is_shown_on_stderr(
    recordings: list[Recording], capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")  # a terminal, where rich draws the bar
    nights = recordings[:3]
    folds = [r.subject_id for r in nights[:2]]
    run_loso(LogisticCausal(), nights, folds=folds, scenarios=SCENARIOS[:1], progress=True)
    shown = capfd.readouterr()
    assert shown.out == "" and "LOSO logreg_causal" in shown.err
