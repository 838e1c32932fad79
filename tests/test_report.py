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


def _seeded(results: list[LosoResult]) -> list[tuple[LosoResult, int | None]]:
    """The causal model over two seeds and two scenarios, the other once per scenario."""
    out: list[tuple[LosoResult, int | None]] = []
    for scenario in ("psg_start", "early_1h"):
        for seed in (0, 1):
            nights = _nights(0.6, 10 * seed + len(scenario))
            out.append((LosoResult("causal model", True, nights, "a causal toy", scenario), seed))
        other = results[1]
        out.append((LosoResult(other.name, False, other.nights, other.description, scenario), None))
    return out


def test_write_report_writes_json_markdown_and_figures(
    results: list[LosoResult], tmp_path: Path
) -> None:
    out = tmp_path / "report"
    returned = write_report(_seeded(results), out, n_resamples=50)

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == returned
    assert metrics["headline_scenario"] == "early_1h"
    assert list(metrics["scenarios"]) == ["psg_start", "early_1h"]
    model = metrics["scenarios"]["early_1h"]["causal model"]
    assert model["causal"] is True and model["seeds"] == [0, 1]
    assert len(model["runs"]) == 2 and model["runs"][0]["n_nights"] == 3
    # The seed mean is the mean of the two runs' pooled figures.
    aurocs = [run["scored"]["pooled"]["auroc"] for run in model["runs"]]
    assert model["seed_mean"]["auroc"]["mean"] == pytest.approx(np.mean(aurocs))
    assert model["seed_mean"]["auroc"]["sd"] == pytest.approx(np.std(aurocs, ddof=1))
    interval = model["bootstrap"]["auroc"]
    assert interval["low"] <= interval["high"]
    offline = metrics["scenarios"]["psg_start"]["offline/model"]
    assert offline["description"] == "a non-causal toy"
    assert offline["seed_mean"]["auroc"]["sd"] == 0.0

    text = (out / "results.md").read_text()
    for needle in ("Causal", "WASA93 deployable", "WASA95 deployable", "oracle", "<details>"):
        assert needle in text
    assert "| causal model | yes | 2 |" in text
    assert "| offline/model | no | 1 |" in text
    prose = " ".join(text.split())
    assert "chosen without the test night" in prose
    assert "chosen on the test labels" in prose
    assert "switched on 1 h before the PSG start" in prose

    pngs = sorted(path.name for path in out.glob("*.png"))
    assert pngs == [
        "bland_altman.png",
        "nights_causal_model.png",
        "nights_offline_model.png",
        "roc.png",
        "scenarios.png",
    ]
    for name in pngs:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"({name})" in text


def test_markdown_table_has_one_row_per_predictor(results: list[LosoResult]) -> None:
    lines = markdown_table(results).strip().splitlines()
    assert len(lines) == 2 + len(results)
    assert lines[0].startswith("| Predictor | Causal |")
    assert lines[2].startswith("| causal model | yes |")


def test_duplicate_runs_are_rejected(results: list[LosoResult], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Duplicate predictor name 'causal model'"):
        write_report([(results[0], 0), (results[0], 0)], tmp_path)
