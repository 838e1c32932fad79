"""Training through LightningCLI, LOSO folds of the model, and the command line around them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from sleepstream.baselines import LogisticCausal
from sleepstream.cli import main
from sleepstream.evaluation.loso import run_loso
from sleepstream.evaluation.predictions import LosoResult
from sleepstream.models.training import NetPredictor
from sleepstream.records import Recording

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "sleep_wake.yaml"
FOLDS = ["1360686", "46343", "8258170", "9961348"]


def _pooled_auroc(result: LosoResult) -> float:
    labels = np.concatenate([n.labels for n in result.nights])
    p = np.concatenate([n.p_sleep for n in result.nights])
    return float(roc_auc_score(labels[labels >= 0], p[labels >= 0]))


@pytest.fixture(scope="module")
def model_folds(recordings: list[Recording]) -> dict[str, LosoResult]:
    """The shipped recipe on four real held-out nights, in every start scenario (2 processes)."""
    return run_loso(NetPredictor(CONFIG), recordings, folds=FOLDS, n_jobs=2, progress=False)


@pytest.mark.slow
def test_model_beats_causal_logistic_regression_on_real_folds(
    recordings: list[Recording], model_folds: dict[str, LosoResult]
) -> None:
    """Regression floor: on four real held-out nights the GRU ranks epochs better than logistic
    regression on causal features (pooled out-of-fold AUROC), with the shipped recipe, in the
    headline scenario (switched on 1 h before the PSG start)."""
    baseline = run_loso(LogisticCausal(), recordings, folds=FOLDS, progress=False)
    model_auroc = _pooled_auroc(model_folds["early_1h"])
    baseline_auroc = _pooled_auroc(baseline["early_1h"])
    assert model_auroc > baseline_auroc, (model_auroc, baseline_auroc)
    assert model_auroc > 0.85
    for night in model_folds["early_1h"].nights:
        assert set(night.thresholds) == {"wasa93", "wasa95", "operating"}


@pytest.mark.slow
def test_early_start_costs_little_on_real_folds(model_folds: dict[str, LosoResult]) -> None:
    """The detector needs no lights-off anchor: switched on 1 h or 2 h before the PSG start, or
    fed the whole day before, its pooled AUROC on the same four nights stays within 0.02 of the
    start at the PSG start (the issue's bound) and above 0.85 (the whole-day target)."""
    at_start = _pooled_auroc(model_folds["psg_start"])
    for name in ("early_1h", "early_2h", "whole_day"):
        early = _pooled_auroc(model_folds[name])
        assert early > at_start - 0.02, (name, early, at_start)
        assert early > 0.85, (name, early)


@pytest.mark.slow
def test_training_is_repeatable(recordings: list[Recording]) -> None:
    overrides = ["--trainer.max_epochs", "2"]
    first, second = NetPredictor(CONFIG, overrides), NetPredictor(CONFIG, overrides)
    first.fit(recordings[:8])
    second.fit(recordings[:8])
    np.testing.assert_array_equal(first.predict(recordings[9]), second.predict(recordings[9]))


@pytest.mark.slow
def test_fit_command_writes_a_checkpoint_and_resumes(tmp_path: Path, data_dir: Path) -> None:
    common = [
        "-c",
        str(CONFIG),
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.logger",
        "false",
        "--trainer.enable_progress_bar",
        "false",
        "--data.held_out",
        "46343",
    ]
    assert main(["fit", *common, "--trainer.max_epochs", "1"]) == 0
    checkpoints = sorted(tmp_path.rglob("last.ckpt"))
    assert checkpoints, "fit wrote no checkpoint"
    assert (
        main(["fit", *common, "--trainer.max_epochs", "2", "--ckpt_path", str(checkpoints[0])]) == 0
    )
    assert main(["test", *common, "--ckpt_path", str(checkpoints[0])]) == 0


@pytest.mark.slow
def test_cv_command_writes_the_report(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "report"
    code = main(
        [
            "-q",
            "cv",
            "-c",
            str(CONFIG),
            "--out",
            str(out),
            "--folds",
            "46343,759667",
            "--jobs",
            "1",
            "--no-baselines",
            "--seeds",
            "0",
            "1",
            "--",
            "--trainer.max_epochs",
            "1",
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["headline_scenario"] == "early_1h"
    for scenario in ("psg_start", "early_1h", "whole_day"):
        entry = metrics["scenarios"][scenario]["sleep_wake"]
        assert entry["seeds"] == [0, 1]
        assert [run["n_nights"] for run in entry["runs"]] == [2, 2]
    assert (out / "results.md").read_text().count("sleep_wake") >= 1
    saved = out / "predictions" / "early_1h" / "sleep_wake_seed1.npz"
    with np.load(saved, allow_pickle=False) as oof:
        assert set(oof["subject_id"]) == {"46343", "759667"}
        assert np.isfinite(oof["threshold_wasa93"]).all()
    # The report is rebuilt from the saved predictions alone.
    (out / "results.md").unlink()
    assert main(["-q", "report", "--out", str(out)]) == 0
    assert (out / "results.md").exists()
