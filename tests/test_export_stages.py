"""The exported step with the live stage network: extra outputs ``p_stage3`` / ``p_stage4``,
the state extended by the stage network's, p(sleep) unchanged, parity of ONNX and Core ML with
torch, metadata and test vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sleepstream.data.folder import load_all
from sleepstream.export import export_all
from sleepstream.export.onnx import check_onnx_parity, export_onnx, read_onnx_metadata
from sleepstream.export.vectors import counts_night, night_arrays, read_test_vectors
from sleepstream.features import FEATURE_NAMES, night_features
from sleepstream.live.backends import OnnxPipeline
from sleepstream.models.card import ModelMetadata, metadata_for
from sleepstream.models.net import SleepGRU, SleepNet, StageGRU
from sleepstream.pipeline import STAGE_OUTPUT_NAMES, pipeline_step, scan_torch, state_layout
from sleepstream.records import Recording

try:
    import coremltools  # noqa: F401

    HAS_COREMLTOOLS = True
except ImportError:
    HAS_COREMLTOOLS = False
requires_coremltools = pytest.mark.skipif(not HAS_COREMLTOOLS, reason="coremltools not importable")

NIGHT = "46343"
FIT_NIGHTS = ("1360686", "1449548")
THRESHOLDS = {"wasa93": 0.81, "wasa95": 0.86, "operating": 0.75}
PARITY = 1e-5


def _fitted(net: SleepNet, nights: dict[str, Recording]) -> SleepNet:
    columns = [FEATURE_NAMES.index(n) for n in net.feature_names]
    net.normalise.fit(np.concatenate([night_features(nights[s])[:, columns] for s in FIT_NIGHTS]))
    return net.eval()


@pytest.fixture(scope="module")
def nights(data_dir: Path) -> dict[str, Recording]:
    return {r.subject_id: r for r in load_all(data_dir, subjects=[NIGHT, *FIT_NIGHTS])}


@pytest.fixture(scope="module")
def nets(nights: dict[str, Recording]) -> tuple[SleepGRU, StageGRU]:
    torch.manual_seed(0)
    sleep = _fitted(SleepGRU(hidden_size=16), nights)
    stages = _fitted(StageGRU(hidden_size=8), nights)
    assert isinstance(sleep, SleepGRU) and isinstance(stages, StageGRU)
    return sleep, stages


@pytest.fixture(scope="module")
def stretch(nights: dict[str, Recording]) -> dict[str, np.ndarray]:
    """Counts-variant inputs of 60 epochs of a real night, with missing counts and heart rate."""
    inputs = {k: v[200:260].copy() for k, v in counts_night(nights[NIGHT]).items()}
    inputs["counts"][[3, 17]] = np.nan
    inputs["hr"][5:9] = np.nan
    return inputs


@pytest.fixture(scope="module")
def onnx_file(nets: tuple[SleepGRU, StageGRU], tmp_path_factory: pytest.TempPathFactory) -> Path:
    sleep, stages = nets
    meta = metadata_for(sleep, THRESHOLDS, "counts", stages, {"class_weights": {}})
    return export_onnx(sleep, tmp_path_factory.mktemp("stages") / "model.onnx", meta, stages)


def test_stage_outputs_leave_p_sleep_unchanged(
    nets: tuple[SleepGRU, StageGRU], stretch: dict[str, np.ndarray]
) -> None:
    """The sleep/wake part of the step is the same graph: p(sleep), the features and the
    sleep/wake state are identical with and without the stage network."""
    sleep, stages = nets
    alone = scan_torch(sleep, "counts", stretch)
    both = scan_torch(sleep, "counts", stretch, stages)
    np.testing.assert_array_equal(both["p_sleep"], alone["p_sleep"])
    np.testing.assert_array_equal(both["features"], alone["features"])
    n = alone["state"].shape[1]
    np.testing.assert_array_equal(both["state"][:, :n], alone["state"])
    assert both["state"].shape[1] == n + stages.state_size
    for name, k in (("p_stage3", 3), ("p_stage4", 4)):
        assert both[name].shape == (60, k)
        np.testing.assert_allclose(both[name].sum(axis=1), 1.0, atol=1e-5)
    step = pipeline_step(sleep, "raw", stages)
    assert step.output_names == ("p_sleep", "new_state", "features", "p_stage3", "p_stage4")
    assert state_layout(step)[-1] == {
        "name": "stage_network",
        "offset": step.state_size - stages.state_size,
        "length": stages.state_size,
    }


def test_stage_outputs_follow_the_stage_network_scan(
    nets: tuple[SleepGRU, StageGRU], nights: dict[str, Recording]
) -> None:
    """Stepped in the pipeline from raw counts, the stage probabilities equal the stage
    network's own scan over the night's cached features (the training and LOSO path)."""
    from sleepstream.models.net import predict_night_stages

    sleep, stages = nets
    night = nights[NIGHT].truncated(120)
    stepped = scan_torch(sleep, "counts", counts_night(night), stages)
    scanned = predict_night_stages(stages, night)
    for task, name in STAGE_OUTPUT_NAMES.items():
        np.testing.assert_allclose(stepped[name], scanned[task], atol=1e-5)


def test_onnx_file_has_stage_outputs_and_matches_torch(
    nets: tuple[SleepGRU, StageGRU], onnx_file: Path, stretch: dict[str, np.ndarray]
) -> None:
    sleep, stages = nets
    model = OnnxPipeline(onnx_file)
    assert model.output_names == ("p_sleep", "new_state", "features", "p_stage3", "p_stage4")
    assert model.stage_outputs == ("p_stage3", "p_stage4")
    assert check_onnx_parity(sleep, onnx_file, stretch, stages) <= PARITY
    meta = read_onnx_metadata(onnx_file)
    assert meta.stages["outputs"]["p_stage4"]["classes"] == ["wake", "light", "deep", "rem"]
    assert meta.stages["state_size"] == stages.state_size
    assert meta.state_layout[-1]["name"] == "stage_network"
    assert ModelMetadata.from_json(meta.to_json()) == meta
    # Three streams in one call give each stream's own stage probabilities.
    rows = [0, 20, 40]
    batch = {k: v[rows].astype(np.float32) for k, v in stretch.items()}
    out = model.run_all(batch, model.initial_state(3))
    for i, row in enumerate(rows):
        one = {k: v[row : row + 1].astype(np.float32) for k, v in stretch.items()}
        single = model.run_all(one, model.initial_state(1))
        np.testing.assert_allclose(out["p_stage4"][i], single["p_stage4"][0], atol=1e-6)


def test_parity_check_refuses_mismatched_stage_networks(
    nets: tuple[SleepGRU, StageGRU], onnx_file: Path, stretch: dict[str, np.ndarray]
) -> None:
    sleep, stages = nets
    with pytest.raises(ValueError, match="stage outputs"):
        check_onnx_parity(sleep, onnx_file, stretch)
    meta = metadata_for(sleep, THRESHOLDS, "counts")
    with pytest.raises(ValueError, match="stage outputs"):
        export_onnx(sleep, onnx_file.parent / "other.onnx", meta, stages)
    assert "stages" not in meta.to_dict()  # a sleep/wake file reads as before


@requires_coremltools
def test_coreml_program_has_stage_outputs_and_matches_torch(
    nets: tuple[SleepGRU, StageGRU], stretch: dict[str, np.ndarray], tmp_path: Path
) -> None:
    from sleepstream.export.coreml import check_coreml, export_coreml

    sleep, stages = nets
    meta = metadata_for(sleep, THRESHOLDS, "counts", stages)
    written = export_coreml(sleep, tmp_path / "SleepStream", meta, stages=stages)
    short = {k: v[:20] for k, v in stretch.items()}
    report = check_coreml(written["mlpackage"], meta, net=sleep, inputs=short, stages=stages)
    assert report["outputs"]["p_stage3"] == [1, 3]
    assert report["outputs"]["p_stage4"] == [1, 4]
    assert report["outputs"]["new_state"] == [1, meta.state_size]
    assert report["mil_max_abs_diff"] <= PARITY


@pytest.mark.slow
def test_export_all_writes_stage_test_vectors(
    nets: tuple[SleepGRU, StageGRU], nights: dict[str, Recording], tmp_path: Path
) -> None:
    """Every artefact carries the stage outputs, and the test vectors' expected stage
    probabilities are what the ONNX file answers."""
    sleep, stages = nets
    night = nights[NIGHT].truncated(60)
    summary = export_all(sleep, THRESHOLDS, tmp_path, night, coreml=False, stages=stages)
    for variant in ("raw", "counts"):
        assert summary[f"onnx_{variant}"]["max_abs_diff"] <= PARITY
    vectors = read_test_vectors(tmp_path / "test_vectors.json")
    first = vectors["nights"][0]
    model = OnnxPipeline(tmp_path / first["model_file"])
    inputs = night_arrays(first)
    state = model.initial_state()
    for t, epoch in enumerate(first["epochs"]):
        out = model.run_all({k: v[t : t + 1] for k, v in inputs.items()}, state)
        state = out["new_state"]
        np.testing.assert_allclose(out["p_stage3"][0], epoch["p_stage3"], atol=PARITY)
        np.testing.assert_allclose(out["p_stage4"][0], epoch["p_stage4"], atol=PARITY)
