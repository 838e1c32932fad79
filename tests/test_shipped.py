"""The model shipped inside the package: it loads without training and scores a real night."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from sleepstream.cli import main
from sleepstream.models.net import count_parameters
from sleepstream.models.shipped import (
    load_shipped,
    net_and_thresholds,
    read_loso_metrics,
    shipped_folder,
    thresholds_from_loso,
)
from sleepstream.records import SLEEP_WAKE, Recording


def test_shipped_files_are_in_the_package() -> None:
    names = {p.name for p in shipped_folder().iterdir()}
    assert {"sleep_wake.npz", "sleep_wake.json", "sleep_wake.onnx"} <= names


def test_shipped_model_file_is_the_shipped_network() -> None:
    """The model file the detector runs carries the card's thresholds and provenance, and
    computes what the shipped network computes."""
    from sleepstream.export.onnx import check_onnx_parity, read_onnx_metadata
    from sleepstream.signal.synthetic import generated_night

    model = load_shipped()
    path = shipped_folder() / "sleep_wake.onnx"
    meta = read_onnx_metadata(path)
    assert meta.thresholds == model.card.thresholds and meta.variant == "raw"
    assert meta.extra["trained_on_subjects"] == model.card.trained_on
    assert meta.extra["loso"] == model.card.loso
    assert check_onnx_parity(model.net, path, generated_night()) <= 1e-5


def test_shipped_model_loads_and_scores_a_night(recordings: list[Recording]) -> None:
    model = load_shipped()
    card = model.card
    assert set(card.thresholds) == {"wasa93", "wasa95", "operating"}
    assert card.thresholds["wasa95"] <= card.thresholds["wasa93"]
    assert card.feature_names == model.net.feature_names
    assert card.n_parameters == count_parameters(model.net) < 100_000
    assert len(card.trained_on) == 31 and "Walch" in card.data_citation
    assert card.loso["scenario"] == "early_1h" and len(card.loso["seeds"]) >= 3
    assert card.loso["seed_mean"]["auroc"]["mean"] > 0.8
    night = next(r for r in recordings if r.subject_id == "46343")
    p = model.predict(night)
    assert p.shape == (night.n_epochs,) and np.all((p >= 0) & (p <= 1))
    labels = night.labels(SLEEP_WAKE)
    scored = labels >= 0
    assert roc_auc_score(labels[scored], p[scored]) > 0.8
    asleep = model.is_asleep(p)
    assert asleep[scored].mean() > 0.5


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    first, second = a.state_dict(), b.state_dict()
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_net_and_thresholds_of_the_shipped_model_or_a_checkpoint(tmp_path: Path) -> None:
    """What ``export`` exports: the shipped network with its card's thresholds, or a training
    checkpoint's with thresholds chosen on a ``cv`` predictions file (none without one)."""
    from sleepstream.evaluation.predictions import LosoResult, NightPrediction, save_result

    shipped = load_shipped()
    net, thresholds = net_and_thresholds()
    assert thresholds == shipped.card.thresholds and _same_weights(net, shipped.net)

    checkpoint = tmp_path / "last.ckpt"
    spec = {"architecture": type(net).__name__, "init_args": net.init_args}
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    torch.save({"sleepstream_net": spec, "state_dict": state}, checkpoint)
    rng = np.random.default_rng(0)
    labels = (rng.random(400) < 0.8).astype(np.int8)
    p_sleep = np.clip(0.6 * labels + 0.4 * rng.random(400), 0, 1)
    night = NightPrediction("1", 30.0 * np.arange(400), labels, p_sleep, np.ones(400, bool))
    predictions = save_result(LosoResult("m", True, [night]), tmp_path / "m_seed0.npz", 0)

    net, thresholds = net_and_thresholds(checkpoint, predictions)
    assert _same_weights(net, shipped.net)
    assert thresholds == thresholds_from_loso([predictions])
    assert set(thresholds) == {"operating", "wasa93", "wasa95"}
    assert net_and_thresholds(checkpoint)[1] == {}


def test_read_loso_metrics_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as error:
        read_loso_metrics(tmp_path, Path("configs/m.yaml"))
    expected = f"{tmp_path / 'metrics.json'} not found: run `sleepstream cv -c configs/m.yaml"
    assert str(error.value).startswith(expected)
    (tmp_path / "metrics.json").write_text('{"headline_scenario": "early_1h"}')
    assert read_loso_metrics(tmp_path, Path("m.yaml")) == {"headline_scenario": "early_1h"}


def test_replay_command_writes_the_plot(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "replay.png"
    assert main(["-q", "replay", "--subject", "46343", "--out", str(out)]) == 0
    assert out.stat().st_size > 10_000


def test_replay_of_a_users_files(tmp_path: Path, data_dir: Path) -> None:
    hr = data_dir / "heart_rate" / "46343_heartrate.txt"
    counts = data_dir / "counts" / "46343_counts.txt"
    out = tmp_path / "user.png"
    assert (
        main(["-q", "replay", "--heart-rate", str(hr), "--counts", str(counts), "--out", str(out)])
        == 0
    )
    assert out.exists()


@pytest.mark.slow
def test_export_command_exports_the_shipped_model(tmp_path: Path, data_dir: Path) -> None:
    assert main(["-q", "export", "--out", str(tmp_path), "--subject", "46343"]) == 0
    summary = json.loads((tmp_path / "export_summary.json").read_text())
    assert summary["onnx_raw"]["max_abs_diff"] <= 1e-5
    assert summary["onnx_counts"]["max_abs_diff"] <= 1e-5
    vectors = json.loads((tmp_path / "test_vectors.json").read_text())
    assert [n["variant"] for n in vectors["nights"]] == ["counts", "counts", "raw"]
    assert (tmp_path / "model_raw.onnx").exists()
    assert (tmp_path / "SleepStream_raw.mlpackage").exists()
