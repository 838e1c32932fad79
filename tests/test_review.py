"""The review models: the network's padding and files, the shipped model on a real night, the
``sleepstream review`` command (data folder and a user's files), and regression floors of the
LOSO figures on three real folds (slow)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sleepstream.cli import main
from sleepstream.evaluation.metrics import summarize
from sleepstream.evaluation.stages import confusion_counts, kappa_from_confusion
from sleepstream.models.review import (
    N_COLUMNS,
    TASKS,
    ReviewNet,
    ReviewPredictor,
    TrainConfig,
    class_weights,
    load_review,
    predict_review,
    save_review,
)
from sleepstream.records import WAKE_NREM_REM, Recording
from sleepstream.review import load_shipped_review, review_night

SUBJECT = "46343"
FOLDS = ["46343", "8258170", "1360686"]


def _night(recordings: list[Recording], subject: str) -> Recording:
    return next(r for r in recordings if r.subject_id == subject)


def test_a_night_scores_the_same_alone_and_padded_in_a_batch() -> None:
    torch.manual_seed(0)
    net = ReviewNet(5, channels=8, dilations=(1, 2, 4)).eval()
    short, long = torch.randn(1, 37, 5), torch.randn(1, 61, 5)
    batch = torch.full((2, 61, 5), float("nan"))
    batch[0, :37], batch[1] = short[0], long[0]
    mask = torch.zeros(2, 61, dtype=torch.bool)
    mask[0, :37], mask[1] = True, True
    with torch.no_grad():
        alone = net(short)
        padded = net(batch, mask)
    for name in alone:
        torch.testing.assert_close(padded[name][0, :37], alone[name][0], atol=1e-5, rtol=1e-5)


def test_balanced_class_weights_make_every_class_weigh_the_same() -> None:
    labels = np.array([0] * 10 + [1] * 70 + [2] * 20 + [-1] * 5)
    weights = class_weights(labels, 3)
    totals = weights * np.bincount(labels[labels >= 0], minlength=3)
    np.testing.assert_allclose(totals, totals[0])
    assert class_weights(np.array([1, 1, -1]), 3).tolist() == [0.0, 1.0, 0.0]


def test_saved_network_round_trips_without_pickle(tmp_path: Path) -> None:
    config = TrainConfig(channels=8, dilations=(1, 2), steps=1)
    net = ReviewNet(len(config.features), 8, (1, 2)).eval()
    weights, meta = save_review(net, config, tmp_path / "m", {"thresholds": {"operating": 0.5}})
    loaded = load_review(tmp_path / "m")
    x = np.random.default_rng(0).normal(size=(40, len(config.features)))
    for name, p in predict_review(net, x).items():
        np.testing.assert_allclose(predict_review(loaded.net, x)[name], p, atol=1e-6)
    assert loaded.config == config and loaded.meta["thresholds"] == {"operating": 0.5}
    document = json.loads(meta.read_text())
    document["version"] = 99
    meta.write_text(json.dumps(document))
    with pytest.raises(ValueError, match="not a sleepstream review model"):
        load_review(weights)


def test_predictor_gives_every_head_side_by_side(recordings: list[Recording]) -> None:
    predictor = ReviewPredictor(TrainConfig(channels=8, dilations=(1, 2), steps=2, batch=4))
    predictor.fit(recordings[:6])
    night = _night(recordings, SUBJECT)
    p = predictor.predict(night)
    assert p.shape == (night.n_epochs, N_COLUMNS)
    np.testing.assert_allclose(p.sum(axis=1), len(TASKS), atol=1e-9)


def test_shipped_model_scores_a_real_night(recordings: list[Recording]) -> None:
    model = load_shipped_review()
    assert model.meta["trained_on"] and set(model.meta["thresholds"]) >= {"wasa95", "operating"}
    night = _night(recordings, SUBJECT)
    review = review_night(night, model)
    table = review.table
    assert len(table) == night.n_epochs
    assert table["p_sleep"].between(0, 1).all()
    for short, task in (("3", TASKS[1]), ("4", TASKS[2])):
        total = sum(table[f"p{short}_{c}"] for c in task.classes)
        np.testing.assert_allclose(total, 1.0, atol=1e-6)
    # The shipped model trained on this night: it must at least follow its PSG closely.
    psg, predicted = review.summary["psg"], review.summary["predicted_on_scored"]
    assert abs(predicted["tst_min"] - psg["tst_min"]) < 60
    labels = night.labels(WAKE_NREM_REM)
    order = {c: k for k, c in enumerate(WAKE_NREM_REM.classes)}
    called = np.array([order[c] for c in table["stage3"]])
    assert kappa_from_confusion(confusion_counts(labels, called, 3)) > 0.4


def _write_user_files(night: Recording, folder: Path) -> list[str]:
    """The night as a user's files: heart rate and counts inside the PSG span, and labels."""
    end = night.end_time
    hr = (night.hr_times >= night.epoch_times[0]) & (night.hr_times < end)
    with open(folder / "hr.csv", "w", newline="") as f:
        csv.writer(f).writerows(zip(night.hr_times[hr], night.hr_bpm[hr], strict=True))
    with open(folder / "counts.csv", "w", newline="") as f:
        csv.writer(f).writerows(zip(night.count_times, night.counts, strict=True))
    (folder / "labels.txt").write_text(
        "".join(f"{t:g} {s}\n" for t, s in zip(night.epoch_times, night.stages, strict=True))
    )
    return [
        "--heart-rate", str(folder / "hr.csv"), "--counts", str(folder / "counts.csv"),
        "--labels", str(folder / "labels.txt"),
    ]  # fmt: skip


def test_review_command_on_a_subject_and_on_the_same_night_as_user_files(
    data_dir: Path, recordings: list[Recording], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "subject"
    assert main(["review", "--subject", SUBJECT, "--data", str(data_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "tst_min" in printed and "rem_latency_min" in printed
    table = np.genfromtxt(out / f"review_{SUBJECT}_epochs.csv", delimiter=",", names=True,
                          dtype=None, encoding="utf-8")  # fmt: skip
    summary = json.loads((out / f"review_{SUBJECT}_summary.json").read_text())
    assert (out / f"review_{SUBJECT}_hypnogram.png").stat().st_size > 10_000
    assert {"tst_min", "se_pct", "waso_min", "sol_min", "rem_min", "deep_min"} <= set(
        summary["predicted"]
    )
    files = tmp_path / "files"
    files.mkdir()
    argv = _write_user_files(_night(recordings, SUBJECT), files)
    assert main(["review", *argv, "--out", str(files)]) == 0
    user = np.genfromtxt(files / "review_hr_epochs.csv", delimiter=",", names=True, dtype=None,
                         encoding="utf-8")  # fmt: skip
    np.testing.assert_allclose(user["time"], table["time"])
    np.testing.assert_allclose(user["p_sleep"], table["p_sleep"], atol=2e-4)


def test_review_command_names_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "hr.csv").write_text("0,60\n30,61\n")
    assert main(["review", "--heart-rate", str(tmp_path / "hr.csv"), "--out", str(tmp_path)]) == 1


# ----------------------------------------------------------------------------------------------
# Regression floors on three real folds (the LOSO run's settings, one seed)
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def three_folds(recordings: list[Recording], tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from sleepstream.baselines import LogisticCausalStages
    from sleepstream.evaluation.review_eval import SCENARIOS, read_config, run_review_loso
    from sleepstream.evaluation.stages import run_stage_loso

    out = tmp_path_factory.mktemp("review")
    sleep_wake, stages = run_review_loso(
        recordings, [0], out, config=read_config(), folds=FOLDS, progress=False
    )
    baseline = run_stage_loso(
        LogisticCausalStages(WAKE_NREM_REM), recordings, folds=FOLDS, scenarios=SCENARIOS,
        progress=False,
    )  # fmt: skip
    return sleep_wake, stages, baseline


def _pooled_kappa(result, rule: str = "tuned") -> float:  # type: ignore[no-untyped-def]
    n = len(result.classes)
    counts = sum(
        confusion_counts(night.labels, night.decisions(rule), n) for night in result.nights
    )
    return kappa_from_confusion(counts)


@pytest.mark.slow
def test_review_on_real_folds_stays_above_its_floors(three_folds) -> None:  # type: ignore[no-untyped-def]
    sleep_wake, stages, baseline = three_folds
    by_task = {result.task: result for result, _ in stages}
    three = _pooled_kappa(by_task["wake_nrem_rem"])
    four = _pooled_kappa(by_task["wake_light_deep_rem"])
    ((result, _),) = sleep_wake
    pooled = summarize(result)["scored"]["pooled"]
    base = _pooled_kappa(baseline["psg_start"])
    # Floors set below what these folds measured (see docs/review.md), above the baseline.
    assert three >= REVIEW_FLOORS["kappa3"] and three > base
    assert four >= REVIEW_FLOORS["kappa4"]
    assert pooled["wasa95_deployable"] >= REVIEW_FLOORS["wasa95"]
    assert pooled["auroc"] >= REVIEW_FLOORS["auroc"]


REVIEW_FLOORS = {"kappa3": 0.50, "kappa4": 0.35, "wasa95": 0.45, "auroc": 0.88}
"""Below the three folds' figures in the 31-fold LOSO run (seed 0, thresholds and class weights
re-chosen on the other two folds): kappa 0.630 (three classes) and 0.485 (four, tuned rule),
WASA95 0.633 deployable, AUROC 0.942."""
