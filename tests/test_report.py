"""The report writes metrics.json, results.md and figures for a small synthetic LOSO result."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sleepstream.evaluation.predictions import (
    LosoResult,
    NightPrediction,
    load_predictions,
    save_predictions,
)
from sleepstream.evaluation.report import (
    DOCS_MARKER,
    check_docs_path,
    markdown_table,
    report_predictions,
    write_report,
)
from sleepstream.paths import OutputPathError


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


def test_saved_predictions_load_back_in_scenario_order_with_their_seeds(
    results: list[LosoResult], tmp_path: Path
) -> None:
    seeded = _seeded(results)
    with pytest.raises(ValueError, match="Predictor name 'offline/model': a file name cannot"):
        save_predictions(seeded, tmp_path)
    seeded = [(replace(r, name=r.name.replace("/", "_")), seed) for r, seed in seeded]
    folder = save_predictions(seeded[::-1], tmp_path)  # saved in any order
    assert folder == tmp_path / "predictions"
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*.npz")) == [
        "early_1h/causal model_seed0.npz",
        "early_1h/causal model_seed1.npz",
        "early_1h/offline_model.npz",
        "psg_start/causal model_seed0.npz",
        "psg_start/causal model_seed1.npz",
        "psg_start/offline_model.npz",
    ]
    loaded = load_predictions(tmp_path)
    assert [(r.scenario, r.name, seed) for r, seed in loaded] == [
        ("psg_start", "causal model", 0),
        ("psg_start", "causal model", 1),
        ("psg_start", "offline_model", None),
        ("early_1h", "causal model", 0),
        ("early_1h", "causal model", 1),
        ("early_1h", "offline_model", None),
    ]
    saved = {(r.scenario, r.name, seed): r for r, seed in seeded}
    for result, seed in loaded:
        original = saved[(result.scenario, result.name, seed)]
        for night, before in zip(result.nights, original.nights, strict=True):
            np.testing.assert_array_equal(night.p_sleep, before.p_sleep)
            assert night.thresholds == before.thresholds


def test_load_predictions_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="run `sleepstream cv --out"):
        load_predictions(tmp_path)
    (tmp_path / "predictions" / "unknown_scenario").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="holds no predictions of scenarios"):
        load_predictions(tmp_path)


def test_report_predictions_rebuilds_the_report_and_the_docs(
    results: list[LosoResult], tmp_path: Path
) -> None:
    out = tmp_path / "report"
    save_predictions([(r, seed) for r, seed in _seeded(results) if "/" not in r.name], out)
    docs = tmp_path / "docs" / "results.md"
    docs.parent.mkdir()
    docs.write_text(f"an earlier report\n{DOCS_MARKER}\nkept by hand\n")
    metrics = report_predictions(out, check_docs_path(docs), n_resamples=20)
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert metrics["scenarios"]["early_1h"]["causal model"]["seeds"] == [0, 1]
    text = docs.read_text()
    report = (out / "results.md").read_text().replace("](roc.png)", "](figures/roc.png)")
    assert text.startswith(report.split("](scenarios.png)")[0])  # links point to figures/
    assert text.endswith("kept by hand\n") and "an earlier report" not in text
    assert (docs.parent / "figures" / "roc.png").exists()


def test_docs_path_is_checked_with_its_figures_folder(tmp_path: Path) -> None:
    assert check_docs_path(tmp_path / "new" / "results.md") == tmp_path / "new" / "results.md"
    (tmp_path / "figures").write_text("a file where the figures go")
    with pytest.raises(OutputPathError, match=r"--docs figures folder .*figures is a file"):
        check_docs_path(tmp_path / "results.md")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figures"]  # nothing created
