"""Export of the pipeline: the metadata an app needs, the ONNX and Core ML files and their checks.

Parity of whole nights between torch, ONNX Runtime and the live detector is in
``test_pipeline.py``; here the files themselves: signature, metadata, dynamic batch, Core ML
programs evaluated with coremltools' reference kernels, and ``export_all``.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from sleepstream.data.folder import load_all
from sleepstream.export import export_all
from sleepstream.export.onnx import export_onnx, read_onnx_metadata
from sleepstream.export.vectors import counts_night
from sleepstream.features import FEATURE_NAMES, night_features
from sleepstream.live.backends import OnnxPipeline
from sleepstream.models.card import METADATA_KEY, ModelMetadata, metadata_for
from sleepstream.models.net import SleepGRU, SleepMLP, SleepNet
from sleepstream.records import Recording
from sleepstream.signal.synthetic import generated_night

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
    metadata = metadata_for(net, THRESHOLDS, "counts", training_subjects=list(FIT_NIGHTS))
    folder = tmp_path_factory.mktemp(f"export-{request.param}")
    return Exported(
        request.param, net, metadata, export_onnx(net, folder / "model.onnx", metadata), folder
    )


# -- ONNX ------------------------------------------------------------------------------------


def test_onnx_file_carries_the_contract(exported: Exported) -> None:
    meta = read_onnx_metadata(exported.onnx)
    assert meta == exported.metadata and meta.variant == "counts"
    assert [i["name"] for i in meta.inputs] == ["counts", "hr", "hr_offset", "state"]
    assert meta.inputs[1]["shape"] == ["batch", 30]
    layout = meta.state_layout
    assert sum(p["length"] for p in layout) == meta.state_size
    assert [p["offset"] for p in layout] == list(
        np.cumsum([0] + [p["length"] for p in layout])[:-1]
    )
    assert {p["name"]: p["initial"] for p in layout}["hr_epoch_mean"] == "nan"
    assert meta.all_feature_names == FEATURE_NAMES and meta.state_layout_version >= 1
    assert "hysteresis" in meta.rules and "context_veto" in meta.rules
    assert meta.extra["training_subjects"] == list(FIT_NIGHTS)


def test_onnx_batch_dimension_is_dynamic(exported: Exported, nights: dict[str, Recording]) -> None:
    """Three streams in one call give each stream's own answer."""
    model = OnnxPipeline(exported.onnx)
    inputs = counts_night(nights[NIGHT])
    rows = [0, 200, 500]
    batch = {k: v[rows].astype(np.float32) for k, v in inputs.items()}
    states = model.initial_state(3)
    p, new, features = model.run(batch, states)
    for i, row in enumerate(rows):
        one = {k: v[row : row + 1].astype(np.float32) for k, v in inputs.items()}
        p1, new1, features1 = model.run(one, model.initial_state(1))
        np.testing.assert_allclose(p[i], p1[0], atol=1e-6)
        np.testing.assert_array_equal(np.isnan(new[i]), np.isnan(new1[0]))
        np.testing.assert_allclose(features[i], features1[0], atol=1e-5, equal_nan=True)


def test_onnx_files_are_the_ir_and_opset_the_docs_promise(exported: Exported) -> None:
    """onnxruntime 1.18 is the first release that reads IR version 10 (1.17 refuses it) and
    reads opset 18: the exported and the shipped files must be exactly those."""
    from sleepstream.export.onnx import IR_VERSION, MIN_ONNXRUNTIME, OPSET
    from sleepstream.models.card import shipped_folder

    assert (IR_VERSION, OPSET, MIN_ONNXRUNTIME) == (10, 18, "1.18")
    for path in [exported.onnx, *shipped_folder().glob("*.onnx")]:
        model = onnx.load(str(path), load_external_data=False)
        assert model.ir_version == IR_VERSION, path
        assert {o.domain: o.version for o in model.opset_import}[""] == OPSET, path


def test_export_refuses_metadata_of_another_network(exported: Exported, tmp_path: Path) -> None:
    other = SleepGRU(feature_names="simple", hidden_size=8)
    with pytest.raises(ValueError, match="feature_names"):
        export_onnx(other, tmp_path / "x.onnx", exported.metadata)


def test_metadata_json_round_trip_and_validation(exported: Exported) -> None:
    meta = exported.metadata
    data = json.loads(meta.to_json())
    assert data["classes"] == ["wake", "sleep"] and data["epoch_seconds"] == 30
    assert "doi:10.1093/sleep/zsz180" in data["data_citation"]
    assert "10.13026/hmhs-py35" in data["data_citation"] and "ODC-By" in data["data_license"]
    assert ModelMetadata.from_json(meta.to_json()) == meta
    np.testing.assert_allclose(meta.mean, exported.net.normalise.mean.numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="Unknown sleepstream metadata keys"):
        ModelMetadata.from_dict({**data, "colour": "blue"})
    with pytest.raises(ValueError, match="means"):
        replace(meta, mean=meta.mean[:-1])
    with pytest.raises(ValueError, match="not a probability"):
        replace(meta, thresholds={"operating": 1.5})
    with pytest.raises(ValueError, match="newer than"):
        ModelMetadata.from_dict({**data, "format_version": 99})


# -- Core ML ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def coreml_files(exported: Exported) -> dict[str, str]:
    from sleepstream.export.coreml import export_coreml

    return export_coreml(exported.net, exported.folder / "SleepStream", exported.metadata)


@requires_coremltools
def test_coreml_package_has_the_pipeline_signature_and_metadata(
    exported: Exported, coreml_files: dict[str, str]
) -> None:
    import coremltools as ct

    from sleepstream.export.coreml import check_coreml

    s = exported.metadata.state_size
    report = check_coreml(coreml_files["mlpackage"], exported.metadata)
    assert report["model_type"] == "mlProgram" and report["specification_version"] >= 7
    assert report["inputs"] == {
        "counts": [1, 2],
        "hr": [1, 30],
        "hr_offset": [1, 30],
        "prev_state": [1, s],
    }
    assert report["outputs"] == {
        "p_sleep": [1],
        "new_state": [1, s],
        "features": [1, len(FEATURE_NAMES)],
    }
    spec = ct.utils.load_spec(coreml_files["mlpackage"])
    stored = dict(spec.description.metadata.userDefined)
    assert ModelMetadata.from_json(stored[METADATA_KEY]) == exported.metadata
    assert stored["precision"] == "float32"
    assert spec.description.metadata.license and spec.description.metadata.author
    assert all(f.shortDescription for f in [*spec.description.input, *spec.description.output])


@requires_coremltools
def test_coreml_program_matches_torch(
    exported: Exported, coreml_files: dict[str, str], nights: dict[str, Recording]
) -> None:
    """The saved program, evaluated op by op in Python, against the torch pipeline, with
    missing counts and heart rate in the stretch."""
    from sleepstream.export.coreml import check_coreml

    inputs = {k: v[240:265].copy() for k, v in counts_night(nights[NIGHT]).items()}
    inputs["counts"][[3, 17]] = np.nan
    inputs["hr"][5:9] = np.nan
    report = check_coreml(
        coreml_files["mlpackage"], exported.metadata, net=exported.net, inputs=inputs
    )
    assert report["mil_epochs"] == 25
    assert report["mil_max_abs_diff"] <= PARITY


@requires_coremltools
def test_coreml_parity_fails_for_a_network_with_other_weights(
    exported: Exported, coreml_files: dict[str, str], nights: dict[str, Recording]
) -> None:
    """The Linux check can fail: the saved program against a slightly different network."""
    from sleepstream.export.coreml import coreml_parity

    other = copy.deepcopy(exported.net)
    with torch.no_grad():
        for weights in other.parameters():
            weights.mul_(1.1)
    inputs = {k: v[240:250] for k, v in counts_night(nights[NIGHT]).items()}
    package, meta = coreml_files["mlpackage"], exported.metadata
    assert coreml_parity(exported.net, package, meta, inputs) <= PARITY
    assert coreml_parity(other, package, meta, inputs) > 100 * PARITY


@requires_coremltools
def test_check_coreml_notices_different_metadata(
    exported: Exported, coreml_files: dict[str, str]
) -> None:
    from sleepstream.export.coreml import check_coreml

    other = replace(exported.metadata, thresholds={"operating": 0.5})
    with pytest.raises(ValueError, match="metadata differs"):
        check_coreml(coreml_files["mlpackage"], other)


# -- everything at once ------------------------------------------------------------------------


def test_export_all_writes_and_checks_every_artefact(
    nights: dict[str, Recording], tmp_path: Path
) -> None:
    torch.manual_seed(1)
    net = SleepMLP()
    net.normalise.fit(np.concatenate([night_inputs(net, nights[s]) for s in FIT_NIGHTS]))
    night = nights[NIGHT].truncated(200)
    summary = export_all(net, THRESHOLDS, tmp_path, night, coreml=HAS_COREMLTOOLS)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"model_raw.onnx", "model_counts.onnx", "model_raw.json", "test_vectors.json"} <= names
    assert summary["onnx_counts"]["epochs"] == night.switched_on_before(3600.0).n_epochs
    assert summary["onnx_raw"]["epochs"] == len(generated_night()["hr"])
    for variant in ("raw", "counts"):
        assert summary[f"onnx_{variant}"]["max_abs_diff"] <= PARITY
        meta = ModelMetadata.from_json((tmp_path / f"model_{variant}.json").read_text())
        assert meta.thresholds == THRESHOLDS
        assert read_onnx_metadata(tmp_path / f"model_{variant}.onnx") == meta
        if HAS_COREMLTOOLS:
            assert summary[f"coreml_{variant}"]["mil_max_abs_diff"] <= PARITY
    json.dumps(summary)  # the CLI writes it as JSON
