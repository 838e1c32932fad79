"""Epoch-level metrics, thresholds, night-level metrics and real-time events on hand-made cases."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from sleepstream.baselines import ColeKripke, LogisticPaperNonCausal
from sleepstream.evaluation.metrics import (
    EPOCH_METRICS,
    epoch_metrics,
    expected_calibration_error,
    summarize,
    threshold_for_sleep_correct,
    threshold_max_kappa,
    wasa,
)
from sleepstream.evaluation.nightly import (
    OnsetTracker,
    agreement,
    event_metrics,
    night_summary,
    tracker_events,
)
from sleepstream.evaluation.predictions import LosoResult, NightPrediction
from sleepstream.records import SLEEP_WAKE, Recording

# Ten scored epochs and one unscored (last), called sleep at threshold 0.5:
#   labels  1   1   1   1   1   1   1   0   0   0   -1
#   p      .9  .8  .7  .6  .4  .9  .3  .2  .6  .1   .0
#   call    S   S   S   S   W   S   W   W   S   W   (dropped)
# TP = 5, FN = 2, FP = 1, TN = 2.
# sleep-correct = 5/7, wake-correct = 2/3, accuracy = 7/10, balanced accuracy = (5/7 + 2/3) / 2.
# kappa: p_o = 0.7, p_e = 0.7 * 0.6 + 0.3 * 0.4 = 0.54, kappa = 0.16 / 0.46 = 8/23.
# wake F1 = 2 * 2 / (2 * 2 + 1 + 2) = 4/7.
# Brier = (.01 + .04 + .09 + .16 + .36 + .01 + .49 + .04 + .36 + .01) / 10 = 0.157.
# AUROC: of 21 sleep-wake pairs, sleep scores higher in 18 and tie in 1 -> 18.5 / 21.
LABELS = np.array([1, 1, 1, 1, 1, 1, 1, 0, 0, 0, -1], dtype=np.int8)
P = np.array([0.9, 0.8, 0.7, 0.6, 0.4, 0.9, 0.3, 0.2, 0.6, 0.1, 0.0])


def test_epoch_metrics_match_hand_computation() -> None:
    m = epoch_metrics(LABELS, P, 0.5)
    assert list(m) == list(EPOCH_METRICS)
    assert m["sleep_correct"] == pytest.approx(5 / 7)
    assert m["wake_correct"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["balanced_accuracy"] == pytest.approx((5 / 7 + 2 / 3) / 2)
    assert m["kappa"] == pytest.approx(8 / 23)
    assert m["wake_f1"] == pytest.approx(4 / 7)
    assert m["brier"] == pytest.approx(0.157)
    assert m["auroc"] == pytest.approx(18.5 / 21)


def test_per_epoch_threshold_equals_scalar_when_constant() -> None:
    assert epoch_metrics(LABELS, P, np.full(P.size, 0.5)) == epoch_metrics(LABELS, P, 0.5)


def test_wasa_reports_wake_correct_and_achieved_sleep_correct() -> None:
    point = wasa(LABELS, P, 0.5)
    assert point.wake_correct == pytest.approx(2 / 3)
    assert point.sleep_correct == pytest.approx(5 / 7)
    assert point.threshold == 0.5


def test_always_sleep_has_kappa_zero_and_no_wake_correct() -> None:
    ones = np.ones(P.size)
    m = epoch_metrics(LABELS, ones, 0.5)
    assert m["kappa"] == 0.0
    assert m["wake_correct"] == 0.0
    assert m["sleep_correct"] == 1.0
    assert m["balanced_accuracy"] == 0.5
    assert m["auroc"] == 0.5
    assert m["wake_f1"] == 0.0
    assert m["accuracy"] == pytest.approx(0.7)
    assert threshold_for_sleep_correct(LABELS, ones, 0.93) == 1.0


def test_one_class_gives_nan_for_class_dependent_metrics() -> None:
    m = epoch_metrics(np.ones(4, dtype=np.int8), np.array([0.9, 0.8, 0.2, 0.7]), 0.5)
    assert math.isnan(m["auroc"]) and math.isnan(m["kappa"]) and math.isnan(m["wake_correct"])
    assert m["sleep_correct"] == 0.75
    assert m["wake_f1"] == 0.0  # one epoch wrongly called wake, none rightly


def test_invalid_input_names_the_bad_value() -> None:
    with pytest.raises(ValueError, match="Invalid label 2"):
        epoch_metrics(np.array([1, 2]), np.array([0.1, 0.2]), 0.5)
    with pytest.raises(ValueError, match="equal length"):
        epoch_metrics(np.array([1, 0]), np.array([0.1]), 0.5)
    with pytest.raises(ValueError, match="No scored epochs"):
        epoch_metrics(np.array([-1, -1]), np.array([0.1, 0.2]), 0.5)
    with pytest.raises(ValueError, match="No sleep epochs"):
        threshold_for_sleep_correct(np.array([0, 0, -1]), np.array([0.1, 0.2, 0.9]), 0.9)
    with pytest.raises(ValueError, match=r"got 1\.5"):
        threshold_for_sleep_correct(LABELS, P, 1.5)
    with pytest.raises(ValueError, match="both classes"):
        threshold_max_kappa(np.ones(3), np.array([0.1, 0.2, 0.3]))


@pytest.mark.parametrize(
    ("target", "expected", "achieved"),
    [(0.2, 0.9, 0.2), (0.5, 0.5, 0.8), (0.8, 0.5, 0.8), (0.81, 0.1, 1.0), (1.0, 0.1, 1.0)],
)
def test_threshold_for_sleep_correct_with_ties(
    target: float, expected: float, achieved: float
) -> None:
    # Sleep scores .9 .5 .5 .5 .1: any threshold in (.5, .9] calls only one of five sleep epochs.
    labels = np.array([1, 1, 1, 1, 1, 0, 0, -1], dtype=np.int8)
    p = np.array([0.9, 0.5, 0.5, 0.5, 0.1, 0.95, 0.0, 1.0])
    threshold = threshold_for_sleep_correct(labels, p, target)
    assert threshold == expected
    assert wasa(labels, p, threshold).sleep_correct == pytest.approx(achieved)
    assert wasa(labels, p, threshold).sleep_correct >= target


def test_threshold_for_sleep_correct_is_largest_reaching_target() -> None:
    rng = np.random.default_rng(3)
    labels = (rng.random(3000) < 0.9).astype(np.int8)
    p = np.round(rng.beta(5, 2, size=3000), 2)  # rounding makes many ties
    sleep_scores = np.unique(p[labels == 1])
    for target in (0.93, 0.95, 0.5, 0.999):
        threshold = threshold_for_sleep_correct(labels, p, target)
        assert wasa(labels, p, threshold).sleep_correct >= target
        higher = sleep_scores[sleep_scores > threshold]
        if higher.size:
            assert wasa(labels, p, higher[0]).sleep_correct < target


def test_threshold_for_sleep_correct_is_exact_at_round_fractions() -> None:
    # 0.93 * 100 is 93.00000000000001 in floating point; 93 of 100 must still be enough.
    labels = np.ones(100, dtype=np.int8)
    p = np.linspace(0.01, 1.0, 100)
    threshold = threshold_for_sleep_correct(labels, p, 0.93)
    assert threshold == pytest.approx(0.08)
    assert wasa(labels, p, threshold).sleep_correct == 0.93


def test_threshold_max_kappa_matches_brute_force() -> None:
    rng = np.random.default_rng(7)
    labels = (rng.random(2000) < 0.9).astype(np.int8)
    p = np.clip(0.6 + 0.2 * labels + rng.normal(0, 0.2, 2000), 0, 1).round(2)
    threshold = threshold_max_kappa(labels, p)
    kappas = {t: cohen_kappa_score(labels, (p >= t).astype(int)) for t in np.unique(p)}
    best = max(kappas.values())
    assert kappas[threshold] == pytest.approx(best, abs=1e-12)
    assert threshold == max(t for t, k in kappas.items() if k >= best - 1e-12)


def test_threshold_max_kappa_separable() -> None:
    labels = np.array([0, 0, 1, 1, 1, -1])
    p = np.array([0.1, 0.3, 0.6, 0.7, 0.9, 0.0])
    assert threshold_max_kappa(labels, p) == 0.6
    assert epoch_metrics(labels, p, 0.6)["kappa"] == 1.0


def test_ece_zero_when_perfectly_calibrated() -> None:
    # p = 0.2 on five epochs of which one is sleep, p = 0.8 on five of which four are sleep.
    labels = np.array([1, 0, 0, 0, 0, 1, 1, 1, 1, 0])
    p = np.array([0.2] * 5 + [0.8] * 5)
    assert expected_calibration_error(labels, p) == pytest.approx(0.0)


def test_ece_by_hand() -> None:
    # Bin [0.9, 1]: p = .95 .95 .95 1.0 (1.0 falls in the last bin), sleep fraction 3/4;
    # |0.75 - 0.9625| = 0.2125, weight 4/6. Bin [0, 0.1): p = .05 .05, no sleep; |0 - .05| = .05,
    # weight 2/6. ECE = (4 * 0.2125 + 2 * 0.05) / 6.
    labels = np.array([1, 1, 1, 0, 0, 0])
    p = np.array([0.95, 0.95, 0.95, 1.0, 0.05, 0.05])
    assert expected_calibration_error(labels, p) == pytest.approx((4 * 0.2125 + 0.1) / 6)
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(labels, p, n_bins=0)


# ---------------------------------------------------------------------------------------------
# Night level and events
# ---------------------------------------------------------------------------------------------


def test_night_summary_by_hand() -> None:
    w, s = False, True
    summary = night_summary([w, w, s, s, w, s, s, s])
    assert summary == {"tst_min": 2.5, "se_pct": 62.5, "waso_min": 0.5, "sol_min": 1.0}


def test_night_summary_without_sleep() -> None:
    summary = night_summary(np.zeros(6, dtype=bool))
    assert summary["tst_min"] == 0.0 and summary["waso_min"] == 0.0
    assert math.isnan(summary["sol_min"])
    with pytest.raises(ValueError, match="non-empty"):
        night_summary(np.array([], dtype=bool))


def test_agreement_known_numbers() -> None:
    # differences 1, 0, 2 (and a NaN pair left out): bias 1, SD 1.
    result = agreement([10.0, 20.0, 30.0, np.nan], [11.0, 20.0, 32.0, 5.0])
    assert result["bias"] == pytest.approx(1.0)
    assert result["sd"] == pytest.approx(1.0)
    assert result["loa_low"] == pytest.approx(-0.96)
    assert result["loa_high"] == pytest.approx(2.96)
    assert result["n"] == 3


def test_onset_tracker_by_hand() -> None:
    tracker = OnsetTracker(fall_asleep_epochs=3, wake_up_epochs=2)
    decisions = [1, 1, 0, 1, 1, 1, 0, 1, 0, 0, 0]
    events = [tracker.update(bool(d)) for d in decisions]
    # starts awake; the run of two sleeps is broken; the third of 1,1,1 fires; a single wake is
    # absorbed; the second of 0,0 fires; the third wake changes nothing.
    assert events == [
        None,
        None,
        None,
        None,
        None,
        "fell_asleep",
        None,
        None,
        None,
        "woke_up",
        None,
    ]
    assert tracker.asleep is False
    assert tracker_events(decisions, OnsetTracker(3, 2)) == [(5, "fell_asleep"), (9, "woke_up")]


def test_onset_tracker_clone_and_pickle_keep_state_apart() -> None:
    tracker = OnsetTracker(2, 1)
    tracker.update(True)
    restored = pickle.loads(pickle.dumps(tracker))
    assert restored.update(True) == "fell_asleep"
    fresh = tracker.clone()
    assert (fresh.fall_asleep_epochs, fresh.wake_up_epochs, fresh.asleep) == (2, 1, False)
    assert fresh.update(True) is None
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            OnsetTracker(fall_asleep_epochs=bad)  # type: ignore[arg-type]


def test_event_metrics_by_hand() -> None:
    # PSG:      W W W S S S S S S W W W  (onset epoch 3, final wake run from epoch 9)
    # decision: S W W W S S S S W S W W
    # tracker(3, 2): fell_asleep at epoch 6, woke_up at epoch 11.
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0])
    decisions = np.array([1, 0, 0, 0, 1, 1, 1, 1, 0, 1, 0, 0], dtype=bool)
    times = np.arange(12) * 30.0
    m = event_metrics(labels, decisions, times, OnsetTracker(3, 2))
    assert m["onset_delay_min"] == pytest.approx((6 * 30 + 30 - 3 * 30) / 60)  # 2.0
    assert m["wakeup_delay_min"] == pytest.approx((11 * 30 + 30 - 9 * 30) / 60)  # 1.5
    assert m["false_onset_events"] == 0
    assert m["false_wake_events"] == 0
    assert m["missed_onset"] == 0


def test_event_metrics_false_events_and_no_final_awakening() -> None:
    # PSG:      W W W W S S S S
    # decision: S S S S S S W W -> fell_asleep at 2 (before PSG onset: false),
    #                               woke_up at 7 (PSG sleep: false).
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    decisions = np.array([1, 1, 1, 1, 1, 1, 0, 0], dtype=bool)
    m = event_metrics(labels, decisions, np.arange(8) * 30.0)
    assert m["onset_delay_min"] == pytest.approx(-0.5)
    assert m["false_onset_events"] == 1
    assert m["false_wake_events"] == 1
    assert math.isnan(m["wakeup_delay_min"])


def test_event_metrics_uses_real_times_across_gaps() -> None:
    labels = np.array([0, 1, 1, 1])
    times = np.array([0.0, 600.0, 630.0, 660.0])  # ten minutes of unscored epochs removed
    m = event_metrics(labels, np.array([0, 1, 1, 1], dtype=bool), times)
    assert m["onset_delay_min"] == pytest.approx((660 + 30 - 600) / 60)
    with pytest.raises(ValueError, match="increasing"):
        event_metrics(labels, labels.astype(bool), times[::-1])


# ---------------------------------------------------------------------------------------------
# summarize
# ---------------------------------------------------------------------------------------------


def _night(subject: str, seed: int, thresholds: dict[str, float]) -> NightPrediction:
    rng = np.random.default_rng(seed)
    n = 200
    labels = np.ones(n, dtype=np.int8)
    labels[:20] = 0
    labels[-10:] = 0
    labels[rng.random(n) < 0.05] = 0
    labels[[50, 51]] = -1
    noisy = 0.65 + 0.25 * (labels == 1) - 0.3 * (labels == 0) + rng.normal(0, 0.2, n)
    p = np.clip(noisy, 0, 1).astype(np.float64)
    valid = (labels >= 0) & (rng.random(n) > 0.2)
    times = np.arange(n, dtype=np.float64) * 30
    return NightPrediction(subject, times, labels, p, valid, thresholds)


def test_summarize_pools_each_night_at_its_own_threshold() -> None:
    nights = [
        _night("A", 1, {"operating": 0.5, "wasa93": 0.6, "wasa95": 0.4}),
        _night("B", 2, {"operating": 0.7, "wasa93": 0.55, "wasa95": 0.45}),
    ]
    summary = summarize(LosoResult("toy", True, nights, "toy predictor"))
    json.dumps(summary, allow_nan=False)
    pooled = summary["scored"]["pooled"]

    labels = np.concatenate([n.labels[n.scored] for n in nights])
    called = np.concatenate([n.p_sleep[n.scored] >= n.thresholds["operating"] for n in nights])
    assert pooled["sleep_correct"] == pytest.approx(called[labels == 1].mean())
    assert pooled["wake_correct"] == pytest.approx((~called[labels == 0]).mean())
    called93 = np.concatenate([n.p_sleep[n.scored] >= n.thresholds["wasa93"] for n in nights])
    assert pooled["wasa93_deployable"] == pytest.approx((~called93[labels == 0]).mean())
    assert pooled["wasa93_oracle_sleep_correct"] >= 0.93
    assert pooled["wasa95_oracle_sleep_correct"] >= 0.95

    assert summary["scored"]["n_epochs"] == 2 * 198
    assert summary["valid"]["n_epochs"] == sum(int((n.valid & n.scored).sum()) for n in nights)
    assert [row["subject_id"] for row in summary["subjects"]] == ["A", "B"]
    kappa = summary["scored"]["subjects"]["kappa"]
    per_subject = [row["kappa"] for row in summary["subjects"]]
    assert kappa["mean"] == pytest.approx(np.mean(per_subject))
    assert kappa["sd"] == pytest.approx(np.std(per_subject, ddof=1))
    assert summary["night_level"]["tst_min"]["n"] == 2
    assert set(summary["real_time"]) >= {"onset_delay_min", "false_onset_events", "missed_onsets"}


def test_summarize_turns_nan_into_none_and_names_missing_threshold() -> None:
    night = _night("C", 3, {"operating": 0.5, "wasa93": 0.5, "wasa95": 0.5})
    all_sleep = NightPrediction(
        "D", night.epoch_times, np.ones(200, dtype=np.int8), night.p_sleep, night.valid,
        night.thresholds,
    )  # fmt: skip
    summary = summarize(LosoResult("toy", False, [night, all_sleep]))
    row_d = summary["subjects"][1]
    assert row_d["auroc"] is None and row_d["wake_correct"] is None
    assert summary["scored"]["subjects"]["auroc"]["n"] == 1
    with pytest.raises(ValueError, match="'wasa95'"):
        summarize(LosoResult("bad", True, [_night("E", 4, {"operating": 0.5, "wasa93": 0.5})]))


# ---------------------------------------------------------------------------------------------
# Library implementations against the hand-written ones they replaced (kept here as oracles)
# ---------------------------------------------------------------------------------------------


def _oracle_ece(labels: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float:
    """The former numpy ECE: bin ``floor(n_bins * p)``, p = 1 in the last bin."""
    keep = labels >= 0
    y, p = labels[keep], p[keep]
    bins = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    sum_p = np.bincount(bins, weights=p, minlength=n_bins)
    sum_y = np.bincount(bins, weights=(y == 1).astype(np.float64), minlength=n_bins)
    return float(np.abs(sum_y - sum_p).sum() / y.size)


def _oracle_threshold(labels: np.ndarray, p: np.ndarray, target: float) -> float:
    """The former threshold search: the k-th largest sleep score, k / n >= target minimal."""
    sleep_scores = np.sort(p[labels == 1])[::-1]
    n = sleep_scores.size
    k = min(max(math.ceil(target * n), 1), n)
    while k > 1 and (k - 1) / n >= target:
        k -= 1
    while k < n and k / n < target:
        k += 1
    return float(sleep_scores[k - 1])


def _oracle_correct(labels: np.ndarray, called_sleep: np.ndarray) -> tuple[float, float]:
    """The former sleep- and wake-correct: means of boolean masks, NaN for an absent class."""
    sleep, wake = labels == 1, labels == 0
    sleep_correct = float(called_sleep[sleep].mean()) if sleep.any() else math.nan
    wake_correct = float((~called_sleep[wake]).mean()) if wake.any() else math.nan
    return sleep_correct, wake_correct


@pytest.fixture(scope="module")
def real_predictions(recordings: list[Recording]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(labels, p_sleep) of every real night from two baselines fitted on all nights.

    Cole-Kripke gives p = 1 exactly wherever the activity window is still (about 18 000 epochs),
    the logistic regression continuous probabilities and a prior outside the paper's epochs.
    """
    out = []
    for model in (ColeKripke(causal=True), LogisticPaperNonCausal()):
        model.fit(recordings)
        out += [(r.labels(SLEEP_WAKE), model.predict(r)) for r in recordings]
    assert sum(int(np.sum(p == 1.0)) for _, p in out) > 1000
    return out


def _generated() -> list[tuple[np.ndarray, np.ndarray]]:
    """Small and large cases: ties, p of exactly 0 and 1, one class only, unscored epochs."""
    rng = np.random.default_rng(11)
    cases = []
    for n, rounding in ((7, 1), (60, 2), (3000, 2), (5000, None)):
        labels = (rng.random(n) < 0.85).astype(np.int8)
        labels[rng.random(n) < 0.05] = -1
        p = np.clip(rng.beta(4, 1.5, n) + 0.1 * (labels == 1), 0, 1)
        if rounding is not None:
            p = np.round(p, rounding)
        p[p == 0.3] = 0.31  # see test_ece_float_0_3_lies_in_the_bin_below_3_tenths
        cases.append((labels, p))
    cases.append((np.ones(50, dtype=np.int8), np.linspace(0.0, 1.0, 50)))
    cases.append((np.array([1, 0, 0, 0, -1], dtype=np.int8), np.array([1.0, 1.0, 0.0, 0.95, 0.5])))
    return cases


def test_ece_equals_former_implementation_on_real_nights(
    real_predictions: list[tuple[np.ndarray, np.ndarray]],
) -> None:
    for labels, p in real_predictions:
        assert expected_calibration_error(labels, p) == pytest.approx(
            _oracle_ece(labels, p), rel=0, abs=1e-12
        )
    pooled_labels = np.concatenate([labels for labels, _ in real_predictions])
    pooled_p = np.concatenate([p for _, p in real_predictions])
    assert expected_calibration_error(pooled_labels, pooled_p) == pytest.approx(
        _oracle_ece(pooled_labels, pooled_p), rel=0, abs=1e-12
    )


@pytest.mark.parametrize("n_bins", [1, 5, 10])
def test_ece_equals_former_implementation_on_generated_data(n_bins: int) -> None:
    for labels, p in _generated():
        assert expected_calibration_error(labels, p, n_bins) == pytest.approx(
            _oracle_ece(labels, p, n_bins), rel=0, abs=1e-12
        )


def test_ece_counts_p_of_one_in_the_last_bin() -> None:
    # torchmetrics alone would give p = 1 a bin of its own: (|1 - .9| + |0 - 1|) / 2 = 0.55.
    # In the last bin [0.9, 1] together: |0.5 - 0.95| = 0.45.
    assert expected_calibration_error([1, 0], [0.9, 1.0]) == pytest.approx(0.45, abs=1e-15)


@pytest.mark.parametrize(
    ("same_bin", "p_pair", "expected"),
    [
        (True, (0.3, 0.25), 0.225),  # |0.5 - 0.275|
        (False, (np.nextafter(0.3, 1.0), 0.25), (0.7 + 0.25) / 2),
        (True, (np.nextafter(0.9, 0.0), 0.85), 0.375),  # |0.5 - 0.875|
        (False, (0.9, 0.85), (0.1 + 0.85) / 2),
    ],
)
def test_ece_float_0_3_lies_in_the_bin_below_3_tenths(
    same_bin: bool, p_pair: tuple[float, float], expected: float
) -> None:
    """Bins are ``[i/10, (i+1)/10)`` compared in floating point: the float 0.3 is just below
    3/10 and shares the bin of 0.25, as 0.8999999999999999 shares that of 0.85. The former
    ``floor(10 * p)`` rounded both up a bin. No other float within 2000 ulps of a bin edge is
    binned differently (enumerated when torchmetrics replaced it), so other inputs agree."""
    labels = np.array([1, 0])
    p = np.array(p_pair)
    assert expected_calibration_error(labels, p) == pytest.approx(expected, abs=1e-12)
    assert (_oracle_ece(labels, p) == pytest.approx(expected, abs=1e-12)) is not same_bin


TARGETS = (0.01, 0.5, 0.9, 0.93, 0.95, 0.999, 1.0)


def test_threshold_for_sleep_correct_equals_former_search_on_real_nights(
    real_predictions: list[tuple[np.ndarray, np.ndarray]],
) -> None:
    for labels, p in real_predictions:
        scored = labels >= 0
        for target in TARGETS:
            expected = _oracle_threshold(labels[scored], p[scored], target)
            assert threshold_for_sleep_correct(labels, p, target) == expected


def test_threshold_for_sleep_correct_equals_former_search_on_generated_data() -> None:
    for labels, p in _generated():
        scored = labels >= 0
        for target in (*TARGETS, 0.333, 0.6):
            expected = _oracle_threshold(labels[scored], p[scored], target)
            assert threshold_for_sleep_correct(labels, p, target) == expected
    # n = 100: 0.93 * 100 is 93.00000000000001, yet 93 epochs must suffice.
    assert threshold_for_sleep_correct(np.ones(100), np.arange(100.0), 0.93) == 7.0


def test_sleep_and_wake_correct_equal_former_fractions(
    real_predictions: list[tuple[np.ndarray, np.ndarray]],
) -> None:
    cases = [*real_predictions, *_generated(), (np.zeros(4, np.int8), np.full(4, 0.2))]
    for labels, p in cases:
        scored = labels >= 0
        for threshold in (0.0, 0.2, 0.5, 0.93, 1.0):
            expected = _oracle_correct(labels[scored], p[scored] >= threshold)
            metrics = epoch_metrics(labels, p, threshold)
            point = wasa(labels, p, threshold)
            for got in (
                (metrics["sleep_correct"], metrics["wake_correct"]),
                (point.sleep_correct, point.wake_correct),
            ):
                np.testing.assert_array_equal(got, expected)  # exact, NaN where NaN
