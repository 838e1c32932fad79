"""The sparse heart-rate study: how much worse a Health export scores than a lab recording.

Leave-one-subject-out over the 31 nights. Each fold trains one model per recipe and seed (on the
other 30 nights, each at the recorded rate and thinned to 1, 2 and 5 min:
:class:`sleepstream.models.sparse.SparsePredictor`) and predicts the held-out night with its
heart rate at the recorded rate and thinned to 1, 2 and 5 min, in the start scenarios of
:data:`STUDY_SCENARIOS`. Thresholds are the deployable ones of :func:`loso.assemble`: chosen on
the other held-out nights' out-of-fold scores in the same cell (rate, scenario).

Every fold's scores are saved as it finishes (``folds/<recipe>_seed<k>/<subject>.npz``), so the
grid can be stopped and resumed, and :func:`write_sparse_report` reports whatever is complete:
a cell is reported over the subjects that every one of its seeds has finished.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from sleepstream.evaluation.predictions import LosoResult
from sleepstream.evaluation.scenarios import HEADLINE, PSG_START, StartScenario, scenario
from sleepstream.models.sparse import (
    HR_INTERVALS_S,
    SparsePredictor,
    interval_label,
    sparse_features,
)
from sleepstream.paths import atomic_file
from sleepstream.records import Recording

if TYPE_CHECKING:
    from sleepstream.commands import Subparsers

log = logging.getLogger(__name__)

STUDY_SCENARIOS: tuple[StartScenario, ...] = (
    PSG_START,
    HEADLINE,
    scenario("early_1h_after_30min"),
)
"""Start scenarios of the study's saved scores (the last two share one prediction)."""

REPORT_SCENARIOS: tuple[str, ...] = (PSG_START.name, HEADLINE.name)
"""Start scenarios of the report (the bootstrap is its slow part)."""

EVAL_INTERVALS_S: tuple[float | None, ...] = (None, *HR_INTERVALS_S)
"""Heart-rate rates of the held-out night: as recorded, then 1, 2 and 5 min."""

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


@dataclass(frozen=True)
class Recipe:
    """One model family of the study: ``kind`` ``"gru"`` (a LightningCLI config) or
    ``"logreg"`` (logistic regression on the same sparse features, the cheaper family)."""

    name: str
    kind: str
    with_counts: bool

    @property
    def seeded(self) -> bool:
        return self.kind == "gru"

    def predictor(self, seed: int, overrides: Sequence[str] = ()) -> SparsePredictor:
        if self.kind == "gru":
            from sleepstream.models.training import NetPredictor

            config = CONFIGS / f"{'sparse_hr_counts' if self.with_counts else 'sparse_hr'}.yaml"
            inner: Any = NetPredictor(config, overrides, name=self.name, seed=seed)
        elif self.kind == "logreg":
            from sleepstream.baselines import LogisticCausal

            inner = LogisticCausal(sparse_features(self.with_counts))
            inner.name = self.name
        else:
            raise ValueError(f"Unknown recipe kind {self.kind!r}")
        return SparsePredictor(inner, self.with_counts, name=self.name)


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("sparse_hr", "gru", False),
        Recipe("sparse_hr_counts", "gru", True),
        Recipe("logreg_sparse_hr", "logreg", False),
        Recipe("logreg_sparse_hr_counts", "logreg", True),
    )
}
"""The study's recipes by name."""


def run_order(recipes: Sequence[str], seeds: Sequence[int]) -> list[tuple[str, int]]:
    """(recipe, seed) runs, most wanted first: the cheap logistic regressions, then every seed
    of the heart-rate-only GRU (a Health export without steps), then the GRU with counts.

    >>> run_order(["sparse_hr_counts", "sparse_hr", "logreg_sparse_hr"], [0, 1])
    [('logreg_sparse_hr', 0), ('sparse_hr', 0), ('sparse_hr', 1), ('sparse_hr_counts', 0), ('sparse_hr_counts', 1)]
    """
    cheap = [(r, 0) for r in recipes if not RECIPES[r].seeded]
    gru = sorted((r for r in recipes if RECIPES[r].seeded), key=lambda r: RECIPES[r].with_counts)
    return cheap + [(r, s) for r in gru for s in seeds]


def _key(interval: float | None, scenario_name: str) -> str:
    return f"{interval_label(interval)}__{scenario_name}"


def fold_path(out: Path, recipe: str, seed: int, subject: str) -> Path:
    return out / "folds" / f"{recipe}_seed{seed}" / f"{subject}.npz"


def run_one_fold(
    predictor: SparsePredictor,
    recordings: Sequence[Recording],
    subject: str,
    scenarios: Sequence[StartScenario] = STUDY_SCENARIOS,
    intervals: Sequence[float | None] = EVAL_INTERVALS_S,
) -> dict[str, NDArray[np.float64]]:
    """Fit without ``subject``; p(sleep) of its PSG epochs per rate and scenario."""
    test = next(r for r in recordings if r.subject_id == subject)
    predictor.fit([r for r in recordings if r.subject_id != subject])
    out: dict[str, NDArray[np.float64]] = {}
    for interval in intervals:
        by_history: dict[float, NDArray[np.float64]] = {}
        for s in scenarios:
            if s.history_seconds not in by_history:
                p = predictor.predict_at(s.fed(test), interval)
                by_history[s.history_seconds] = np.asarray(p, dtype=np.float64)[-test.n_epochs :]
            out[_key(interval, s.name)] = by_history[s.history_seconds]
    return out


def run_grid(
    recordings: Sequence[Recording],
    out: Path,
    *,
    recipes: Sequence[str] = tuple(RECIPES),
    seeds: Sequence[int] = (0, 1, 2),
    folds: Sequence[str] | None = None,
    overrides: Sequence[str] = (),
    deadline: float | None = None,
) -> int:
    """Run every (recipe, seed, fold) not yet saved under ``out``, in :func:`run_order`.

    Logs one line per fold with the time it took and an estimate of the time left. Stops before
    starting a fold after ``deadline`` (a ``time.time()``). Returns the folds run.
    """
    ids = [r.subject_id for r in recordings]
    wanted = list(ids) if folds is None else list(folds)
    unknown = sorted(set(wanted) - set(ids))
    if unknown:
        raise ValueError(f"Unknown held-out subjects {unknown}; available: {ids}")
    unknown = sorted(set(recipes) - set(RECIPES))
    if unknown:
        raise ValueError(f"Unknown recipes {unknown}; known: {sorted(RECIPES)}")
    todo = [
        (recipe, seed, subject)
        for recipe, seed in run_order(recipes, seeds)
        for subject in wanted
        if not fold_path(out, recipe, seed, subject).exists()
    ]
    log.info("Sparse study: %d folds to run in %s", len(todo), out)
    done, spent = 0, {"gru": 0.0, "logreg": 0.0}
    counted = {"gru": 0, "logreg": 0}
    for recipe, seed, subject in todo:
        if deadline is not None and time.time() > deadline:
            log.warning("Deadline reached: %d of %d folds left", len(todo) - done, len(todo))
            break
        kind = RECIPES[recipe].kind
        started = time.perf_counter()
        scores = run_one_fold(RECIPES[recipe].predictor(seed, overrides), recordings, subject)
        path = fold_path(out, recipe, seed, subject)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as f:
            arrays: dict[str, Any] = dict(scores)
            np.savez(f, **arrays)
        took = time.perf_counter() - started
        done += 1
        spent[kind] += took
        counted[kind] += 1
        left = sum(
            spent[RECIPES[r].kind] / max(counted[RECIPES[r].kind], 1) for r, _, _ in todo[done:]
        )
        log.info(
            "[%d/%d] %s seed %d fold %s: %.0f s (about %.0f min left)",
            done,
            len(todo),
            recipe,
            seed,
            subject,
            took,
            left / 60,
        )
    return done


class _Named:
    def __init__(self, name: str, description: str):
        self.name = name
        self.description = description
        self.causal = True


def cell_name(recipe: str, interval: float | None) -> str:
    """Name of a cell in the report: ``sparse_hr @ 5min``."""
    return f"{recipe} @ {interval_label(interval)}"


def _run_folds(out: Path, recipe: str) -> dict[int, set[str]]:
    """Seed -> subjects with a saved fold, for one recipe."""
    found: dict[int, set[str]] = {}
    for path in sorted((out / "folds").glob(f"{recipe}_seed*")):
        seed = path.name[len(recipe) :].removeprefix("_seed")
        if seed.isdigit():
            found[int(seed)] = {f.stem for f in path.glob("*.npz")}
    return found


def collect(
    out: Path, recordings: Sequence[Recording]
) -> dict[str, dict[str, list[tuple[LosoResult, int]]]]:
    """Saved folds as LOSO results: scenario -> cell name -> [(result, seed)].

    A recipe's cells ``recipe @ rate`` hold its seeds that finished as many folds as its most
    complete seed, over those subjects. When some seed finished fewer (at least 2), the cells
    ``recipe @ rate (all seeds, n subjects)`` also hold every seed over the subjects all of
    them finished.
    """
    by_id = {r.subject_id: r for r in recordings}
    grouped: dict[str, dict[str, list[tuple[LosoResult, int]]]] = {}
    for recipe in RECIPES:
        found = {seed: subjects & set(by_id) for seed, subjects in _run_folds(out, recipe).items()}
        if not found:
            continue
        most = max(len(v) for v in found.values())
        complete = {seed: v for seed, v in found.items() if len(v) == most}
        subjects = set.intersection(*complete.values())
        _add_cells(grouped, out, recipe, complete, subjects, "", by_id)
        if len(complete) < len(found):
            common = set.intersection(*found.values())
            if len(common) >= 2:
                suffix = f" (all {len(found)} seeds, {len(common)} subjects)"
                _add_cells(grouped, out, recipe, found, common, suffix, by_id)
    return grouped


def _add_cells(
    grouped: dict[str, dict[str, list[tuple[LosoResult, int]]]],
    out: Path,
    recipe: str,
    seeds: Mapping[int, set[str]],
    subjects: set[str],
    suffix: str,
    by_id: Mapping[str, Recording],
) -> None:
    from sleepstream.evaluation.loso import assemble

    if len(subjects) < 2:
        return
    wanted = [s for s in STUDY_SCENARIOS if s.name in REPORT_SCENARIOS]
    for seed in sorted(seeds):
        run = fold_path(out, recipe, seed, "x").parent
        scores: dict[str, dict[str, dict[str, NDArray[np.float64]]]] = {}
        for subject in sorted(subjects):
            with np.load(run / f"{subject}.npz", allow_pickle=False) as f:
                for key in f.files:
                    label, scen = key.split("__")
                    scores.setdefault(label, {}).setdefault(subject, {})[scen] = f[key]
        for interval in EVAL_INTERVALS_S:
            label = interval_label(interval)
            if label not in scores:
                continue
            name = cell_name(recipe, interval) + suffix
            template = _Named(
                name,
                f"{recipe} ({RECIPES[recipe].kind}), heart rate {label}, "
                f"{'with' if RECIPES[recipe].with_counts else 'no'} counts",
            )
            results = assemble(template, by_id, scores[label], wanted)  # type: ignore[arg-type]
            for scen, result in results.items():
                grouped.setdefault(scen, {}).setdefault(name, []).append((result, seed))


FIGURES = (
    "kappa",
    "auroc",
    "wasa93_deployable",
    "wasa95_deployable",
    "accuracy",
)


def _cell_entry(runs: Sequence[tuple[LosoResult, int]], n_resamples: int) -> dict[str, Any]:
    from sleepstream.evaluation.metrics import summarize
    from sleepstream.evaluation.seeds import seed_spread, subject_bootstrap

    results = [r for r, _ in runs]
    summaries = [summarize(r) for r in results]
    tst = [s["night_level"]["tst_min"] for s in summaries]
    return {
        "seeds": [seed for _, seed in runs],
        "n_subjects": summaries[0]["n_subjects"],
        "description": results[0].description,
        "seed_mean": seed_spread([s["scored"]["pooled"] for s in summaries]),
        "bootstrap": subject_bootstrap(results, n_resamples) if n_resamples else {},
        "tst_bias_min": seed_spread([{"bias": t["bias"]} for t in tst])["bias"],
        "tst_loa_min": [
            float(np.mean([t["loa_low"] for t in tst])),
            float(np.mean([t["loa_high"] for t in tst])),
        ],
    }


def _cell(entry: Mapping[str, Any], key: str) -> str:
    from sleepstream.evaluation.report import fmt

    spread = entry["seed_mean"][key] if key in entry["seed_mean"] else entry[key]
    text = fmt(spread["mean"])
    if spread.get("n", 0) > 1:
        text += f" ± {fmt(spread['sd'])}"
    interval = entry.get("bootstrap", {}).get(key)
    if interval:
        text += f" [{fmt(interval['low'])}, {fmt(interval['high'])}]"
    return text


def summarise_grid(
    grouped: Mapping[str, Mapping[str, Sequence[tuple[LosoResult, int]]]], n_resamples: int = 300
) -> dict[str, Any]:
    """Per scenario and cell: seed mean ± SD, subject-bootstrap interval, TST bias."""
    return {
        scen: {name: _cell_entry(runs, n_resamples) for name, runs in cells.items()}
        for scen, cells in grouped.items()
    }


def scenario_markdown(cells: Mapping[str, Any], reference: Mapping[str, Any] | None) -> str:
    """One scenario's table: the lab model first, then every cell."""
    from sleepstream.evaluation.report import table

    header = [
        "Cell",
        "Seeds",
        "Subjects",
        "Kappa",
        "AUROC",
        "WASA93 deployable",
        "WASA95 deployable",
        "Accuracy",
        "TST bias (min)",
    ]
    rows = []
    if reference:
        rows.append(
            [
                "**lab model** sleep_wake (raw-motion counts + HR at full rate, reports/sleep_wake)",
                str(len(reference["seeds"])),
                str(reference.get("n_subjects", "")),
                *(_cell(reference, k) for k in FIGURES),
                _cell(reference, "tst_bias_min"),
            ]
        )
    for name, entry in cells.items():
        rows.append(
            [
                name,
                str(len(entry["seeds"])),
                str(entry["n_subjects"]),
                *(_cell(entry, k) for k in FIGURES),
                _cell(entry, "tst_bias_min"),
            ]
        )
    return table(header, rows)


def lab_reference(loso: Path, recordings: Sequence[Recording], n_resamples: int) -> dict[str, Any]:
    """The shipped lab model's entries (``sleep_wake``) from a ``cv`` predictions folder."""
    from sleepstream.evaluation.predictions import load_result

    out: dict[str, Any] = {}
    for s in STUDY_SCENARIOS:
        if s.name not in REPORT_SCENARIOS:
            continue
        files = sorted((loso / "predictions" / s.name).glob("sleep_wake_seed*.npz"))
        runs = [load_result(f) for f in files]
        if runs:
            out[s.name] = _cell_entry(
                [(r, seed if seed is not None else 0) for r, seed in runs], n_resamples
            )
    return out


def plot_grid(metrics: Mapping[str, Any], path: Path, key: str = "kappa") -> Path:
    """Seed mean (with the bootstrap interval) of ``key`` against the heart-rate interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = [s for s in metrics["scenarios"] if s != "early_1h_after_30min"]
    fig, axes = plt.subplots(1, len(scenarios), figsize=(5.5 * len(scenarios), 4), squeeze=False)
    labels = [interval_label(i) for i in EVAL_INTERVALS_S]
    for ax, scen in zip(axes[0], scenarios, strict=True):
        cells = metrics["scenarios"][scen]
        for recipe in RECIPES:
            xs, ys, lo, hi = [], [], [], []
            for x, interval in enumerate(EVAL_INTERVALS_S):
                entry = cells.get(cell_name(recipe, interval))
                if entry is None:
                    continue
                xs.append(x)
                ys.append(entry["seed_mean"][key]["mean"])
                ci = entry["bootstrap"].get(key, {})
                lo.append(ci.get("low", ys[-1]))
                hi.append(ci.get("high", ys[-1]))
            if xs:
                y = np.array(ys)
                ax.errorbar(
                    np.array(xs) + 0.04 * list(RECIPES).index(recipe),
                    y,
                    yerr=[y - np.array(lo), np.array(hi) - y],
                    marker="o",
                    capsize=3,
                    label=recipe,
                )
        ref = metrics.get("lab_reference", {}).get(scen)
        if ref:
            ax.axhline(ref["seed_mean"][key]["mean"], color="k", ls="--", label="lab model")
        ax.set_xticks(range(len(labels)), labels)
        ax.set_xlabel("heart-rate sampling (held-out night)")
        ax.set_ylabel(key)
        ax.set_title(scen)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_sparse_report(
    out: Path,
    recordings: Sequence[Recording],
    *,
    lab: Path | None = None,
    n_resamples: int = 300,
) -> Path:
    """``sparse.md``, ``sparse.json`` and ``sparse_kappa.png`` in ``out`` from its saved folds."""
    from sleepstream.evaluation.metrics import to_jsonable

    grouped = collect(out, recordings)
    if not grouped:
        raise FileNotFoundError(f"No complete folds under {out / 'folds'}: run the study first")
    metrics: dict[str, Any] = {"scenarios": summarise_grid(grouped, n_resamples)}
    if lab is not None and (lab / "predictions").exists():
        metrics["lab_reference"] = lab_reference(lab, recordings, n_resamples)
    metrics["n_resamples"] = n_resamples
    figure = plot_grid(metrics, out / "sparse_kappa.png")
    lines = [
        "# Sparse heart rate: how much worse a Health export scores than a lab recording",
        "",
        "Leave-one-subject-out; the held-out night's heart rate as recorded (`full`, about one "
        "sample per 5 s) or thinned to the first sample in each 1, 2 or 5 min window of the "
        "clock. No raw motion. `*_counts` cells also read the dataset's 15 s activity counts, "
        "a stand-in for a Health export's step counts (**steps are not counts**: the counts "
        "cells are an upper bound for steps). `sparse_hr*`: GRU (configs/sparse_hr*.yaml), "
        "seed mean ± SD over seeds; `logreg_*`: logistic regression on the same features "
        "(deterministic, one run; the cheaper family). Brackets: subject-bootstrap 95 % interval "
        f"of the seed mean ({n_resamples} resamples). Thresholds (WASA, and the kappa / accuracy "
        "operating point) are deployable: chosen on the other held-out nights' out-of-fold "
        "scores of the same cell; none is an oracle. TST bias: predicted minus PSG total sleep "
        "time at the operating threshold, mean over nights (seed mean ± SD).",
        "",
        f"![kappa by heart-rate interval]({figure.name})",
        "",
    ]
    for scen, cells in metrics["scenarios"].items():
        lines += [
            f"## {scenario(scen).title} (`{scen}`)",
            "",
            scenario_markdown(cells, metrics.get("lab_reference", {}).get(scen)),
            "",
        ]
    (out / "sparse.md").write_text("\n".join(lines))
    (out / "sparse.json").write_text(json.dumps(to_jsonable(metrics), indent=1))
    return out / "sparse.md"


def folds_done(out: Path) -> dict[str, int]:
    """Saved folds per ``<recipe>_seed<k>`` run."""
    return {
        p.name: len(list(p.glob("*.npz"))) for p in sorted((out / "folds").glob("*")) if p.is_dir()
    }


# --------------------------------------------------------------------------------------------
# ``sleepstream sparse-study``
# --------------------------------------------------------------------------------------------


def add_parser(commands: Subparsers) -> argparse.ArgumentParser:
    """``sleepstream sparse-study``: the grid (resumable), then the report."""
    p = commands.add_parser(
        "sparse-study",
        help="LOSO of heart rate thinned to 1, 2, 5 min (+- counts)",
    )
    p.add_argument("--out", default="reports/sparse", help="study folder (folds/ and report)")
    p.add_argument("--data", help="data folder (default: $SLEEPSTREAM_DATA)")
    p.add_argument(
        "--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES), help="model recipes"
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="GRU seeds (0 1 2)")
    p.add_argument("--folds", help="comma-separated held-out subjects (default: all)")
    p.add_argument("--report-only", action="store_true", help="report the saved folds only")
    p.add_argument(
        "--lab",
        default="reports/sleep_wake",
        help="`cv` folder of the lab model (sleep_wake) for the reference row",
    )
    p.add_argument("--resamples", type=int, default=300, help="subject-bootstrap resamples")
    p.add_argument(
        "--stop-after", type=float, help="start no fold after this many minutes (then report)"
    )
    p.add_argument(
        "--ship",
        action="store_true",
        help="then train both variants on every night and save them in sleepstream/shipped/",
    )
    p.add_argument(
        "overrides", nargs="*", help="LightningCLI overrides of the GRU recipes after --"
    )
    p.set_defaults(run=sparse_study)
    return p


def sparse_study(a: argparse.Namespace) -> int:
    """Run the grid's missing folds (unless ``--report-only``) and write the report."""
    from sleepstream.data.folder import load_all
    from sleepstream.paths import check_output_dir

    out = check_output_dir(a.out)
    recordings = load_all(Path(a.data) if a.data else None)
    if not a.report_only:
        deadline = None if a.stop_after is None else time.time() + 60 * a.stop_after
        run_grid(
            recordings,
            out,
            recipes=a.recipes,
            seeds=a.seeds,
            folds=a.folds.split(",") if a.folds else None,
            overrides=a.overrides,
            deadline=deadline,
        )
    for run, n in folds_done(out).items():
        print(f"{run}: {n} folds")
    lab = Path(a.lab) if a.lab else None
    print(write_sparse_report(out, recordings, lab=lab, n_resamples=a.resamples))
    if a.ship:
        from sleepstream.models.sparse import ship_sparse

        for with_counts in (False, True):
            for path in ship_sparse(with_counts, recordings, out, overrides=a.overrides):
                print(path)
    return 0
