"""The model file is the pipeline: torch, ONNX Runtime and the live detector give the same
p(sleep) on whole real nights (counts variant) and generated nights (raw variant), and the test
vectors replay unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sleepstream.export.onnx import check_onnx_parity, export_onnx
from sleepstream.export.vectors import (
    checksum,
    counts_night,
    night_arrays,
    read_test_vectors,
    write_test_vectors,
)
from sleepstream.features import FEATURE_NAMES, accel_epochs, extract
from sleepstream.live.backends import OnnxPipeline
from sleepstream.live.detector import SleepDetector
from sleepstream.models.card import metadata_for
from sleepstream.models.net import SleepNet
from sleepstream.models.shipped import load_shipped
from sleepstream.pipeline import scan_torch
from sleepstream.records import Recording
from sleepstream.signal import synthetic
from sleepstream.signal.synthetic import GENERATED_SEGMENTS, generated_night

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def net() -> SleepNet:
    return load_shipped().net


@pytest.fixture(scope="module")
def files(net: SleepNet, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("model")
    return {
        variant: export_onnx(
            net, folder / f"{variant}.onnx", metadata_for(net, {"wasa93": 0.7}, variant)
        )
        for variant in ("raw", "counts")
    }


def test_counts_variant_agrees_with_torch_on_a_whole_real_night(
    net: SleepNet, files: dict[str, Path], recordings: list[Recording]
) -> None:
    night = next(r for r in recordings if r.subject_id == "7749105").switched_on_before(3600.0)
    inputs = counts_night(night)
    assert check_onnx_parity(net, files["counts"], inputs) <= TOLERANCE
    # The step's features are the batch path's: training saw what the file computes.
    features = scan_torch(net, "counts", inputs)["features"]
    np.testing.assert_allclose(features, extract(night), rtol=1e-6, atol=1e-6)


def test_raw_variant_agrees_with_torch_on_a_generated_night(
    net: SleepNet, files: dict[str, Path]
) -> None:
    inputs = generated_night(seed=3)
    assert check_onnx_parity(net, files["raw"], inputs) <= TOLERANCE


def _generated_samples() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two hours of 50 Hz acceleration with a 20-minute gap, heart rate every 5 s with its own
    gap."""
    times, z = synthetic.generate("night", 7200.0, 50.0, seed=5)
    keep = (times < 3000) | (times >= 4200)
    hr_t = np.arange(0.0, 7200.0, 5.0)
    hr_t = hr_t[(hr_t < 1800) | (hr_t >= 2400)]
    hr = 58 + 3 * np.sin(hr_t / 600.0)
    return times[keep], z[keep], hr_t, hr


def test_detector_runs_the_model_file_exactly(net: SleepNet, files: dict[str, Path]) -> None:
    """Raw samples through the detector equal the file's step on the same epochs in torch."""
    times, z, hr_t, hr = _generated_samples()
    # Heart rate runs up to 20 s ahead of acceleration here: a 30 s lag lets it catch up.
    detector = SleepDetector(OnnxPipeline(files["raw"]), threshold=0.7, close_lag=30.0)
    results, fed = [], 0
    for lo in range(0, len(times), 1000):  # 20 s chunks, heart rate up to their end alongside
        chunk = slice(lo, lo + 1000)
        upto = int(np.searchsorted(hr_t, times[chunk][-1], side="right"))
        results += detector.add_heart_rate(hr_t[fed:upto], hr[fed:upto])
        results += detector.add_acceleration(times[chunk], synthetic.as_xyz(z[chunk]))
        fed = upto
    results += detector.advance(7200.0 + 30.0 + 2.0)
    n = len(results)
    assert n == 240 and results[0].start == 0.0
    grid = accel_epochs(times, z, 0.0, n)
    rec = Recording("generated", np.arange(n) * 30.0, np.zeros(n, np.int8), hr_t, hr)
    inputs = {**counts_night(rec), "accel": grid}
    expected = scan_torch(net, "raw", inputs)
    live = np.array([r.p_model for r in results])
    assert np.max(np.abs(live - expected["p_sleep"])) <= TOLERANCE
    counts = expected["features"][:, FEATURE_NAMES.index("log_count_epoch")]
    gap = (np.arange(n) * 30.0 >= 3000) & (np.arange(n) * 30.0 < 4200)
    assert np.isnan(counts[gap]).all() and np.isfinite(counts[~gap][1:-2]).all()


def test_test_vectors_replay_unchanged_in_onnx_runtime(
    net: SleepNet, files: dict[str, Path], recordings: list[Recording], tmp_path: Path
) -> None:
    night = next(r for r in recordings if r.subject_id == "46343").truncated(300)
    path = write_test_vectors(
        net, tmp_path / "v.json", [night], model_files={"raw": "raw", "counts": "counts"}
    )
    document = read_test_vectors(path)
    kinds = [n["source"] for n in document["nights"]]
    assert len(kinds) == 3 and "hour of every stream removed" in kinds[1]
    assert all(what in kinds[2] for what, _ in GENERATED_SEGMENTS)
    for entry in document["nights"]:
        model = OnnxPipeline(files[entry["model_file"]])
        inputs = night_arrays(entry)
        state = model.initial_state()
        nan_seen = False
        for t, epoch in enumerate(entry["epochs"]):
            p, state, features = model.run({k: v[t : t + 1] for k, v in inputs.items()}, state)
            assert abs(float(p[0]) - epoch["p_sleep"]) <= document["tolerance"]["p_sleep_float32"]
            want = np.array([np.nan if v is None else v for v in epoch["features"]])
            scale = np.nansum(np.abs(want)) + 1e-4
            assert np.nanmax(np.abs(features[0] - want), initial=0.0) <= 1e-5 * scale
            got = checksum(state[0])
            assert got["nan"] == epoch["state"]["nan"]
            assert (
                abs(got["sum"] - epoch["state"]["sum"]) <= 1e-5 * epoch["state"]["abs_sum"] + 1e-4
            )
            nan_seen |= any(v is None for v in epoch["hr"])
        assert nan_seen
    # The hour-long gap has no heart rate and no counts in any of its 120 epochs.
    gap = document["nights"][1]["epochs"]
    empty = [all(v is None for v in e["hr"] + e["counts"]) for e in gap]
    assert max(len(run) for run in "".join("x" if e else "." for e in empty).split(".")) >= 120
