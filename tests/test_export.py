"""Export: ONNX and Core ML files reproduce the torch model; metadata and test vectors round-trip.

The networks have random (seeded) weights and a normalisation fitted on real nights, which is
all parity needs. Exports run once per network (module-scoped fixtures): the torch exporter and
coremltools take seconds each.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from sleepstream.data.folder import load_all
from sleepstream.export import export_all
from sleepstream.export.metadata import METADATA_KEY, ModelMetadata, metadata_for
from sleepstream.export.onnx import OnnxStep, check_onnx_parity, export_onnx, read_onnx_metadata
from sleepstream.export.vectors import (
    read_test_vectors,
    recorded,
    replay_features,
    write_test_vectors,
)
from sleepstream.features import FEATURE_NAMES, night_features
from sleepstream.models.net import SleepGRU, SleepMLP, SleepNet
from sleepstream.models.training import predict_night
from sleepstream.records import Recording

try:
    import coremltools  # noqa: F401

    HAS_COREMLTOOLS = True
except ImportError:
    HAS_COREMLTOOLS = False
requires_coremltools = pytest.mark.skipif(not HAS_COREMLTOOLS, reason="coremltools not importable")

NIGHT = "46343"
FIT_NIGHTS = ("1360686", "1449548", "1455390")
THRESHOLDS = {"wasa93": 0.81, "wasa95": 0.86, "operating": 0.75}
PARITY = 1e-5


@dataclass
class Exported:
    """A network, its metadata and its ONNX file."""

    name: str
    net: SleepNet
    metadata: ModelMetadata
    onnx: Path
    folder: Path


def columns(net: SleepNet) -> list[int]:
    return [FEATURE_NAMES.index(n) for n in net.feature_names]


def night_inputs(net: SleepNet, night: Recording) -> np.ndarray:
    return np.asarray(night_features(night)[:, columns(net)])


def torch_step(net: SleepNet, x: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        logit, new_state = net.step(torch.as_tensor(x).float(), torch.as_tensor(state).float())
    return torch.sigmoid(logit).numpy(), new_state.numpy()


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Step-by-step inference on (1, F) tensors: on a busy machine, handing such tiny ops to a
    second thread costs far more than it saves (16 ms instead of 0.2 ms per step here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def nights(data_dir: Path) -> dict[str, Recording]:
    return {r.subject_id: r for r in load_all(data_dir, subjects=[NIGHT, *FIT_NIGHTS])}


@pytest.fixture(scope="module", params=["gru", "mlp"])
def exported(
    request: pytest.FixtureRequest,
    nights: dict[str, Recording],
    tmp_path_factory: pytest.TempPathFactory,
) -> Exported:
    torch.manual_seed(0)
    net: SleepNet = SleepGRU(hidden_size=16) if request.param == "gru" else SleepMLP()
    net.normalise.fit(np.concatenate([night_inputs(net, nights[s]) for s in FIT_NIGHTS]))
    net.eval()
    metadata = metadata_for(net, THRESHOLDS, training_subjects=list(FIT_NIGHTS))
    folder = tmp_path_factory.mktemp(f"export-{request.param}")
    return Exported(
        request.param, net, metadata, export_onnx(net, folder / "model.onnx", metadata), folder
    )


# -- ONNX ------------------------------------------------------------------------------------


def test_onnx_matches_torch_step_by_step_on_a_real_night(
    exported: Exported, nights: dict[str, Recording]
) -> None:
    features = night_inputs(exported.net, nights[NIGHT])
    diff = check_onnx_parity(exported.net, exported.onnx, features)
    assert diff <= PARITY


def test_onnx_whole_night_equals_predict_night(
    exported: Exported, nights: dict[str, Recording]
) -> None:
    """Stepping the ONNX model agrees with the one-pass forward used in training and scoring."""
    night = nights[NIGHT]
    model = OnnxStep(exported.onnx)
    state = model.initial_state()
    p = []
    for row in night_inputs(exported.net, night):
        p_t, state = model.step(row, state)
        p.append(float(p_t))
    np.testing.assert_allclose(p, predict_night(exported.net, night), atol=PARITY)


def test_onnx_batch_dimension_is_dynamic(exported: Exported, nights: dict[str, Recording]) -> None:
    features = night_inputs(exported.net, nights[NIGHT])
    model = OnnxStep(exported.onnx)
    rng = np.random.default_rng(0)
    for batch in (1, 3, 5):
        x = features[rng.choice(len(features), size=batch)].astype(np.float32)
        state = rng.normal(size=(batch, exported.net.state_size)).astype(np.float32)
        p, new_state = model.step(x, state)
        p_torch, state_torch = torch_step(exported.net, x, state)
        assert p.shape == (batch,) and new_state.shape == (batch, exported.net.state_size)
        np.testing.assert_allclose(p, p_torch, atol=PARITY)
        np.testing.assert_allclose(new_state, state_torch, atol=PARITY)


def test_onnx_nan_features_give_finite_probabilities(exported: Exported) -> None:
    model = OnnxStep(exported.onnx)
    n = exported.net.n_features
    x = np.full((3, n), np.nan, dtype=np.float32)
    x[1, ::2] = 1.0
    x[2] = np.asarray(exported.metadata.mean, dtype=np.float32)  # NaN must act as the mean
    p, state = model.step(x, model.initial_state(3))
    assert np.isfinite(p).all() and np.isfinite(state).all()
    np.testing.assert_allclose(p, torch_step(exported.net, x, np.zeros_like(state))[0], atol=PARITY)
    assert p[0] == pytest.approx(p[2], abs=1e-6)


def test_onnx_step_rejects_wrong_shapes(exported: Exported) -> None:
    model = OnnxStep(exported.onnx)
    with pytest.raises(ValueError, match="expected"):
        model.step(np.zeros(exported.net.n_features + 1), model.initial_state())
    with pytest.raises(ValueError, match="state of shape"):
        model.step(np.zeros(exported.net.n_features), np.zeros(exported.net.state_size + 1))


def test_onnx_file_carries_the_metadata(exported: Exported) -> None:
    assert read_onnx_metadata(exported.onnx) == exported.metadata
    assert OnnxStep(exported.onnx).metadata == exported.metadata
    import onnx

    model = onnx.load(str(exported.onnx))
    props = {p.key: p.value for p in model.metadata_props}
    assert props["feature_names"] == ",".join(exported.net.feature_names)
    assert props["state_size"] == str(exported.net.state_size)
    assert float(props["threshold_operating"]) == THRESHOLDS["operating"]
    assert [i.name for i in model.graph.input] == ["features", "state"]
    assert [o.name for o in model.graph.output] == ["p_sleep", "new_state"]
    assert not list(exported.folder.glob("*.data")), "weights must be inside the .onnx file"


def test_export_refuses_metadata_of_another_network(exported: Exported, tmp_path: Path) -> None:
    other = SleepGRU(hidden_size=8) if exported.name == "mlp" else SleepMLP()
    with pytest.raises(ValueError, match="differ"):
        export_onnx(other, tmp_path / "x.onnx", exported.metadata)


# -- metadata --------------------------------------------------------------------------------


def test_metadata_json_round_trip_and_validation(exported: Exported) -> None:
    meta = exported.metadata
    data = json.loads(meta.to_json())
    assert data["classes"] == ["wake", "sleep"] and data["epoch_seconds"] == 30
    assert "doi:10.1093/sleep/zsz180" in data["data_citation"]
    assert "10.13026/hmhs-py35" in data["data_citation"] and "ODC-By" in data["data_license"]
    assert data["extra"]["training_subjects"] == list(FIT_NIGHTS)
    assert ModelMetadata.from_json(meta.to_json()) == meta
    np.testing.assert_allclose(meta.mean, exported.net.normalise.mean.numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="Unknown sleepstream metadata keys"):
        ModelMetadata.from_dict({**data, "colour": "blue"})
    with pytest.raises(ValueError, match="means"):
        replace(meta, mean=meta.mean[:-1])
    with pytest.raises(ValueError, match="not a probability"):
        replace(meta, thresholds={"operating": 1.5})


# -- Core ML ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def coreml_files(exported: Exported) -> dict[str, str]:
    from sleepstream.export.coreml import export_coreml

    return export_coreml(exported.net, exported.folder / "SleepStream", exported.metadata)


@requires_coremltools
def test_coreml_package_has_the_step_signature_and_metadata(
    exported: Exported, coreml_files: dict[str, str]
) -> None:
    import coremltools as ct

    from sleepstream.export.coreml import check_coreml

    n, s = exported.net.n_features, exported.net.state_size
    report = check_coreml(coreml_files["mlpackage"], exported.metadata)
    assert report["model_type"] == "mlProgram" and report["specification_version"] >= 7
    assert report["inputs"] == {"features": [1, n], "prev_state": [1, s]}
    assert report["outputs"] == {"p_sleep": [1], "new_state": [1, s]}
    spec = ct.utils.load_spec(coreml_files["mlpackage"])
    stored = dict(spec.description.metadata.userDefined)
    assert ModelMetadata.from_json(stored[METADATA_KEY]) == exported.metadata
    assert stored["state_size"] == str(s) and stored["precision"] == "float32"
    assert "doi:10.1093/sleep/zsz180" in spec.description.metadata.shortDescription
    assert spec.description.metadata.license and spec.description.metadata.author
    assert all(f.shortDescription for f in [*spec.description.input, *spec.description.output])
    dtypes = {f.name: f.type.multiArrayType.dataType for f in spec.description.output}
    assert set(dtypes.values()) == {ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32}


@requires_coremltools
def test_coreml_program_matches_torch(
    exported: Exported, coreml_files: dict[str, str], nights: dict[str, Recording]
) -> None:
    """The saved program, evaluated op by op in Python, against ``net.step`` (NaN rows too)."""
    from sleepstream.export.coreml import check_coreml

    features = night_inputs(exported.net, nights[NIGHT])[240:270].copy()
    features[[3, 17]] = np.nan
    features[5, ::2] = np.nan
    report = check_coreml(
        coreml_files["mlpackage"], exported.metadata, net=exported.net, features=features
    )
    assert report["mil_epochs"] == 30
    assert report["mil_max_abs_diff"] <= PARITY


@requires_coremltools
def test_coreml_neuralnetwork_model_is_written(
    exported: Exported, coreml_files: dict[str, str]
) -> None:
    from sleepstream.export.coreml import check_coreml

    assert "mlmodel" in coreml_files, coreml_files.get("mlmodel_error")
    report = check_coreml(coreml_files["mlmodel"], exported.metadata)
    assert report["model_type"] == "neuralNetwork"
    assert list(report["outputs"]) == ["p_sleep", "new_state"]


@requires_coremltools
def test_check_coreml_notices_different_metadata(
    exported: Exported, coreml_files: dict[str, str]
) -> None:
    from sleepstream.export.coreml import check_coreml

    other = replace(exported.metadata, thresholds={"operating": 0.5})
    with pytest.raises(ValueError, match="metadata differs"):
        check_coreml(coreml_files["mlpackage"], other)


# -- test vectors ----------------------------------------------------------------------------


def test_test_vectors_replay_to_the_same_features_and_probabilities(
    exported: Exported, nights: dict[str, Recording], tmp_path: Path
) -> None:
    night = nights[NIGHT]
    start, n = 250, 20
    path = write_test_vectors(
        night,
        exported.net,
        tmp_path / "v.json",
        start,
        n,
        metadata=exported.metadata,
        sections={"counts_from_acceleration": {"note": "raw acceleration vectors go here"}},
    )
    vectors = read_test_vectors(path)
    assert vectors["counts_from_acceleration"]["note"].startswith("raw acceleration")
    assert ModelMetadata.from_dict(vectors["metadata"]) == exported.metadata
    assert [e["index"] for e in vectors["epochs"]] == list(range(start, start + n))
    hr_times = vectors["samples"]["heart_rate"]["times"]
    assert len(hr_times) < len(night.hr_times), "samples beyond the look-back are left out"

    # The extractor replayed on the recorded samples alone gives the recorded features ...
    features = recorded(vectors, "features")
    np.testing.assert_allclose(replay_features(vectors), features, rtol=0, atol=1e-12)
    np.testing.assert_allclose(features, night_features(night)[start : start + n], atol=1e-12)
    # ... and the model, from the recorded state, the recorded probabilities.
    inputs = recorded(vectors, "model_input")
    np.testing.assert_array_equal(inputs, features[:, columns(exported.net)])
    onnx_model = OnnxStep(exported.onnx)
    state = np.asarray(vectors["state_before"], dtype=np.float32)
    p_onnx = []
    for row in inputs:
        p_t, state = onnx_model.step(row, state)
        p_onnx.append(float(p_t))
    p = recorded(vectors, "p_sleep")
    np.testing.assert_allclose(p_onnx, p, atol=PARITY)
    np.testing.assert_allclose(p, predict_night(exported.net, night)[start : start + n], atol=1e-6)
    with torch.no_grad():
        normalised = exported.net.normalise(torch.as_tensor(inputs).float()).numpy()
    np.testing.assert_allclose(recorded(vectors, "normalised"), normalised, atol=1e-6)
    assert all(e["state_norm"] >= 0 for e in vectors["epochs"])


def test_test_vectors_reject_bad_stretch_and_clashing_sections(
    exported: Exported, nights: dict[str, Recording], tmp_path: Path
) -> None:
    night = nights[NIGHT]
    with pytest.raises(ValueError, match="does not fit"):
        write_test_vectors(night, exported.net, tmp_path / "v.json", night.n_epochs - 5, 10)
    with pytest.raises(ValueError, match="built-in"):
        write_test_vectors(night, exported.net, tmp_path / "v.json", 0, 5, sections={"epochs": []})


# -- everything at once ----------------------------------------------------------------------


@requires_coremltools
def test_export_all_writes_and_checks_every_artefact(
    nights: dict[str, Recording], tmp_path: Path
) -> None:
    torch.manual_seed(1)
    net = SleepMLP()
    net.normalise.fit(np.concatenate([night_inputs(net, nights[s]) for s in FIT_NIGHTS]))
    summary = export_all(net, THRESHOLDS, tmp_path, nights[NIGHT])
    names = {p.name for p in tmp_path.iterdir()}
    assert {"model.onnx", "SleepStream.mlpackage", "metadata.json", "test_vectors.json"} <= names
    assert summary["onnx"]["epochs"] == nights[NIGHT].n_epochs
    assert summary["onnx"]["max_abs_diff"] <= PARITY
    assert summary["coreml"]["mil_max_abs_diff"] <= PARITY
    meta = ModelMetadata.from_json((tmp_path / "metadata.json").read_text())
    assert meta.thresholds == THRESHOLDS and read_onnx_metadata(tmp_path / "model.onnx") == meta
    json.dumps(summary)  # the CLI writes it as JSON
