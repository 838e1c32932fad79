"""The report writes metrics.json, results.md and figures for a small synthetic LOSO result."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sleepstream.evaluation.predictions import LosoResult, NightPrediction
from sleepstream.evaluation.report import markdown_table, write_report


def _nights(p_of_labels: float, seed: int) -> list[NightPrediction]:
    """Three nights; p(sleep) mixes the label with noise in proportion ``p_of_labels``."""
    rng = np.random.default_rng(seed)
    nights = []
    for index, n in enumerate((120, 150, 90)):
        labels = np.ones(n, dtype=np.int8)
        labels[:15] = 0
        labels[n // 2 : n // 2 + 4] = 0
        labels[-8:] = 0
        labels[30:33] = -1
        mixed = p_of_labels * labels + (1 - p_of_labels) * rng.random(n)
        p = np.clip(mixed, 0, 1).astype(np.float64)
        thresholds = {"operating": 0.5, "wasa93": 0.45, "wasa95": 0.4}
        times = np.arange(n, dtype=np.float64) * 30
        nights.append(NightPrediction(f"S{index}", times, labels, p, labels >= 0, thresholds))
    return nights


@pytest.fixture
def results() -> list[LosoResult]:
    return [
        LosoResult("causal model", True, _nights(0.6, 1), "a causal toy"),
        LosoResult("offline/model", False, _nights(0.3, 2), "a non-causal toy"),
    ]


def test_write_report_writes_json_markdown_and_figures(
    results: list[LosoResult], tmp_path: Path
) -> None:
    out = tmp_path / "report"
    returned = write_report(results, out)

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == returned
    assert set(metrics) == {"causal model", "offline/model"}
    assert metrics["causal model"]["causal"] is True
    assert metrics["offline/model"]["description"] == "a non-causal toy"
    assert metrics["causal model"]["n_nights"] == 3
    assert len(metrics["causal model"]["subjects"]) == 3

    text = (out / "results.md").read_text()
    for needle in ("Causal", "WASA93 deployable", "WASA95 deployable", "oracle", "<details>"):
        assert needle in text
    assert "| causal model | yes |" in text
    assert "| offline/model | no |" in text
    prose = " ".join(text.split())
    assert "chosen on the training subjects only" in prose
    assert "chosen on the test labels" in prose

    pngs = sorted(path.name for path in out.glob("*.png"))
    assert pngs == [
        "bland_altman.png",
        "nights_causal_model.png",
        "nights_offline_model.png",
        "roc.png",
    ]
    for name in pngs:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"({name})" in text


def test_markdown_table_has_one_row_per_predictor(results: list[LosoResult]) -> None:
    lines = markdown_table(results).strip().splitlines()
    assert len(lines) == 2 + len(results)
    assert lines[0].startswith("| Predictor | Causal |")
    assert lines[2].startswith("| causal model | yes |")


def test_duplicate_names_are_rejected(results: list[LosoResult], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Duplicate predictor name 'causal model'"):
        write_report([results[0], results[0]], tmp_path)
