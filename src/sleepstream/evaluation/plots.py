"""Figures of LOSO results: ROC curves, per-night traces, Bland-Altman plots; for sleep stages,
confusion matrices, hypnograms and Bland-Altman plots of stage minutes and REM latency.

Each function draws one PNG file with the non-interactive Agg backend, closes the figure and
returns the path written.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from numpy.typing import NDArray
from sklearn.metrics import confusion_matrix, roc_curve

from sleepstream.evaluation.metrics import (
    OPERATING,
    WASA_KEYS,
    night_threshold,
    pool,
    wasa,
)
from sleepstream.evaluation.nightly import night_values
from sleepstream.evaluation.predictions import LosoResult, NightPrediction
from sleepstream.evaluation.stage_metrics import night_keys, night_stage_values
from sleepstream.evaluation.stages import HEADLINE_RULE, RULES, StageNight, StageResult
from sleepstream.paths import atomic_file

logger = logging.getLogger(__name__)

DPI = 90


def safe_filename(name: str) -> str:
    """``name`` with every run of characters other than letters, digits, ``._-`` turned to ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "predictor"


def _save(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as PNG to ``path`` whole or not at all, and close it."""
    try:
        with atomic_file(path) as handle:
            fig.savefig(handle, dpi=DPI, format="png")
    finally:
        plt.close(fig)
    logger.info("Wrote %s", path)
    return path


def plot_roc(results: Sequence[LosoResult], path: Path) -> Path:
    """ROC curves of pooled out-of-fold p(sleep), sleep as the positive class.

    Markers show the deployable WASA operating points: every night thresholded at its own
    training-chosen threshold, decisions pooled (x = 1 - wake-correct, y = sleep-correct).
    """
    fig, ax = plt.subplots(figsize=(6.5, 6), layout="constrained")
    markers = dict(zip(WASA_KEYS, ("o", "s", "^", "D"), strict=False))
    for index, result in enumerate(results):
        color = f"C{index % 10}"
        labels, p_sleep, thresholds = pool(result.nights, "scored")
        if np.unique(labels).size < 2:
            logger.warning("ROC of %s skipped: pooled labels hold one class", result.name)
            continue
        fpr, tpr, _ = roc_curve(labels, p_sleep, pos_label=1)
        ax.plot(fpr, tpr, color=color, lw=1.5, label=result.name)
        for key in WASA_KEYS:
            point = wasa(labels, p_sleep, thresholds[key])
            ax.plot(
                1.0 - point.wake_correct,
                point.sleep_correct,
                marker=markers[key],
                color=color,
                markeredgecolor="black",
                linestyle="none",
            )
    for key in WASA_KEYS:
        ax.plot([], [], marker=markers[key], color="grey", linestyle="none",
                label=f"{key.upper()} deployable")  # fmt: skip
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, linestyle=":")
    ax.set(
        xlabel="1 - wake-correct (wake epochs called sleep)",
        ylabel="sleep-correct",
        xlim=(0, 1),
        ylim=(0, 1.01),
        title="ROC, pooled out-of-fold (LOSO)",
    )
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path)


def _plot_night(ax: Axes, night: NightPrediction, threshold: float) -> None:
    hours = (night.epoch_times - night.epoch_times[0]) / 3600.0
    unscored = ~night.scored
    psg = np.where(unscored, np.nan, night.labels.astype(np.float64))
    ax.fill_between(
        hours, 0, 1, where=unscored, step="post", color="0.85", lw=0,
        transform=ax.get_xaxis_transform(),
    )  # fmt: skip
    ax.plot(hours, night.p_sleep, color="C0", lw=0.6)
    ax.step(hours, psg, where="post", color="black", lw=0.8)
    ax.axhline(threshold, color="C3", lw=0.8, linestyle="--")
    ax.set_ylim(-0.05, 1.05)
    ax.set_yticks([0, 1], ["W", "S"])
    ax.set_title(night.subject_id, fontsize="small", pad=2)
    ax.tick_params(labelsize="x-small")


def plot_nights(result: LosoResult, path: Path, n_cols: int = 4) -> Path:
    """All nights of one predictor in a grid: PSG sleep/wake vs p(sleep).

    Black step: PSG (S = sleep, W = wake); grey: unscored; blue: p(sleep); red dashed: the
    night's operating threshold. The x axis is hours from the first epoch.
    """
    if not result.nights:
        raise ValueError(f"Predictor {result.name!r} has no nights to plot")
    n = len(result.nights)
    n_cols = max(1, min(n_cols, n))
    n_rows = math.ceil(n / n_cols)
    # Fixed margins: constrained layout would measure every tick label of 31 panels repeatedly.
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(3.6 * n_cols, 1.4 * n_rows + 0.8), squeeze=False, sharey=True
    )
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.04, top=1 - 0.5 / (1.4 * n_rows + 0.8),
                        wspace=0.08, hspace=0.6)  # fmt: skip
    for ax, night in zip(axes.flat, result.nights, strict=False):
        _plot_night(ax, night, night_threshold(night, OPERATING))
    for ax in list(axes.flat)[n:]:
        ax.set_axis_off()
    fig.suptitle(f"{result.name}: PSG (black) vs p(sleep) (blue), threshold (red); x: hours")
    return _save(fig, path)


def plot_bland_altman(results: Sequence[LosoResult], path: Path) -> Path:
    """Bland-Altman plots of TST and WASO per predictor (rows) against PSG.

    Each dot is a night (operating threshold); lines mark the bias and 95 % limits of agreement.
    """
    if not results:
        raise ValueError("No results to plot")
    metrics = (("tst_min", "TST (min)"), ("waso_min", "WASO (min)"))
    fig, axes = plt.subplots(
        len(results), len(metrics), figsize=(9, 3 * len(results) + 0.4), squeeze=False,
        layout="constrained",
    )  # fmt: skip
    for row, result in zip(axes, results, strict=True):
        nights = [night_values(n, night_threshold(n, OPERATING)) for n in result.nights]
        for ax, (key, label) in zip(row, metrics, strict=True):
            psg = np.array([v[f"psg_{key}"] for v in nights])
            pred = np.array([v[f"pred_{key}"] for v in nights])
            _bland_altman_panel(ax, psg, pred, label)
            ax.set_title(f"{result.name}: {label}", fontsize="small")
    return _save(fig, path)


def _bland_altman_panel(
    ax: Axes, psg: NDArray[np.float64], pred: NDArray[np.float64], label: str
) -> None:
    """One Bland-Altman panel: a dot per night, the bias (solid) and 95 % limits (dashed);
    nights with a NaN on either side are left out."""
    both = np.isfinite(psg) & np.isfinite(pred)
    psg, pred = psg[both], pred[both]
    difference = pred - psg
    ax.scatter((psg + pred) / 2, difference, s=12, color="C0")
    bias = float(difference.mean()) if difference.size else math.nan
    sd = float(difference.std(ddof=1)) if difference.size > 1 else math.nan
    if math.isfinite(bias):
        ax.axhline(bias, color="C3", lw=1)
    if math.isfinite(sd):
        for limit in (bias - 1.96 * sd, bias + 1.96 * sd):
            ax.axhline(limit, color="C3", lw=0.8, linestyle="--")
    ax.axhline(0, color="grey", lw=0.6, linestyle=":")
    ax.set(xlabel=f"mean of PSG and predicted {label}", ylabel="predicted - PSG")


def plot_scenarios(metrics: Mapping[str, Any], path: Path) -> Path:
    """Deployable WASA93 and AUROC per start scenario and predictor: seed mean, bootstrap bars.

    ``metrics`` is the content of ``metrics.json`` (:func:`~sleepstream.evaluation.report.
    write_report`).
    """
    scenarios = list(metrics["scenarios"])
    names = list(dict.fromkeys(p for s in scenarios for p in metrics["scenarios"][s]))
    fig, axes = plt.subplots(1, 2, figsize=(11, 5), layout="constrained")
    width = 0.8 / max(1, len(names))
    for ax, key, title in (
        (axes[0], "wasa93_deployable", "WASA93, deployable threshold"),
        (axes[1], "auroc", "AUROC"),
    ):
        for k, name in enumerate(names):
            x, y, low, high = [], [], [], []
            for i, scenario in enumerate(scenarios):
                entry = metrics["scenarios"][scenario].get(name)
                mean = entry["seed_mean"][key]["mean"] if entry else None
                if mean is None:
                    continue
                interval = entry["bootstrap"].get(key, {})
                x.append(i + (k - (len(names) - 1) / 2) * width)
                y.append(mean)
                low.append(
                    mean - (interval.get("low") if interval.get("low") is not None else mean)
                )
                high.append(
                    (interval.get("high") if interval.get("high") is not None else mean) - mean
                )
            ax.bar(x, y, width, yerr=[low, high], label=name, capsize=2)
        ax.set_xticks(range(len(scenarios)), scenarios, rotation=25, ha="right")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[1].set_ylim(0.5, 1.0)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(names), 6), fontsize=8)
    fig.suptitle("Start scenarios: seed mean, subject-bootstrap 95 % interval")
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# Sleep stages
# --------------------------------------------------------------------------------------------


def plot_confusions(
    results: Sequence[StageResult], path: Path, rules: Sequence[str] = RULES
) -> Path:
    """Row-normalised confusion matrices (each PSG class's epochs split by predicted class),
    pooled over all scored epochs: one column per predictor, one row per decision rule."""
    if not results:
        raise ValueError("No results to plot")
    classes = results[0].classes
    n = len(classes)
    width, height = 2.9 * len(results) + 1.2, 2.9 * len(rules) + 0.5
    fig, axes = plt.subplots(len(rules), len(results), figsize=(width, height), squeeze=False)
    # Fixed margins: constrained layout measures every label of every panel, many times over.
    fig.subplots_adjust(left=0.9 / width, right=1 - 1.1 / width, bottom=0.6 / height,
                        top=1 - 0.75 / height, wspace=0.45, hspace=0.6)  # fmt: skip
    image = None
    for row, rule in zip(axes, rules, strict=True):
        for ax, result in zip(row, results, strict=True):
            labels = np.concatenate([night.labels[night.scored] for night in result.nights])
            called = np.concatenate([n.decisions(rule)[n.scored] for n in result.nights])
            with np.errstate(invalid="ignore", divide="ignore"):
                matrix = confusion_matrix(labels, called, labels=range(n), normalize="true")
            image = ax.imshow(matrix, vmin=0, vmax=1, cmap="Blues")
            for (i, j), value in np.ndenumerate(matrix):
                color = "white" if value > 0.6 else "black"
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8, color=color)
            ax.set_xticks(range(n), classes, fontsize="x-small", rotation=30)
            ax.set_yticks(range(n), classes, fontsize="x-small")
            ax.set_title(f"{result.name}\n{rule}", fontsize="small")
            ax.set(xlabel="predicted", ylabel="PSG")
    if image is not None:
        bar = fig.add_axes((1 - 0.8 / width, 0.25, 0.15 / width, 0.5))
        fig.colorbar(image, cax=bar, label="fraction of the PSG class")
    first = results[0]
    fig.suptitle(f"{first.task}, {first.scenario}: confusion, rows normalised (LOSO, pooled)")
    return _save(fig, path)


def _hypnogram_levels(classes: Sequence[str]) -> NDArray[np.float64]:
    """Height of each class in a hypnogram: wake on top, then REM, then the others in order
    (NREM; or light, then deep at the bottom)."""
    order = [c for c in ("wake", "rem") if c in classes]
    order += [c for c in classes if c not in order]
    top = len(classes) - 1
    return np.array([top - order.index(c) for c in classes], dtype=np.float64)


def _plot_hypnogram(ax: Axes, night: StageNight, classes: Sequence[str], rule: str) -> None:
    hours = (night.epoch_times - night.epoch_times[0]) / 3600.0
    levels = _hypnogram_levels(classes)
    unscored = ~night.scored
    psg = np.where(unscored, np.nan, levels[np.maximum(night.labels, 0)])
    called = levels[night.decisions(rule)]
    ax.fill_between(
        hours, 0, 1, where=unscored, step="post", color="0.85", lw=0,
        transform=ax.get_xaxis_transform(),
    )  # fmt: skip
    ax.step(hours, called + 0.12, where="post", color="C3", lw=0.7)
    ax.step(hours, psg, where="post", color="black", lw=0.8)
    ax.set_ylim(-0.4, len(classes) - 0.6)
    order = np.argsort(levels)
    ax.set_yticks(levels[order], [classes[k] for k in order])
    ax.set_title(night.subject_id, fontsize="small", pad=2)
    ax.tick_params(labelsize="x-small")


def plot_hypnograms(
    result: StageResult, path: Path, rule: str = HEADLINE_RULE, n_cols: int = 4
) -> Path:
    """Every night of one stage predictor: PSG hypnogram (black) and the predicted one (red,
    drawn slightly higher), unscored epochs grey; x is hours from the first epoch."""
    if not result.nights:
        raise ValueError(f"Predictor {result.name!r} has no nights to plot")
    n = len(result.nights)
    n_cols = max(1, min(n_cols, n))
    n_rows = math.ceil(n / n_cols)
    height = 1.5 * n_rows + 1.0
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(3.6 * n_cols, height), squeeze=False, sharey=True
    )
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.04, top=1 - 0.75 / height,
                        wspace=0.08, hspace=0.6)  # fmt: skip
    for ax, night in zip(axes.flat, result.nights, strict=False):
        _plot_hypnogram(ax, night, result.classes, rule)
    for ax in list(axes.flat)[n:]:
        ax.set_axis_off()
    fig.suptitle(
        f"{result.name} ({result.task}, {result.scenario}, {rule} rule): PSG (black) vs "
        "predicted (red); x: hours"
    )
    return _save(fig, path)


def plot_stage_agreement(
    results: Sequence[StageResult], path: Path, rule: str = HEADLINE_RULE
) -> Path:
    """Bland-Altman plots against PSG, per predictor (rows), of each class's minutes per night
    and of REM latency (columns)."""
    if not results:
        raise ValueError("No results to plot")
    keys = night_keys(results[0].classes)
    width, height = 3.2 * len(keys), 2.8 * len(results) + 0.4
    fig, axes = plt.subplots(len(results), len(keys), figsize=(width, height), squeeze=False)
    fig.subplots_adjust(left=0.75 / width, right=1 - 0.3 / width, bottom=0.5 / height,
                        top=1 - 0.8 / height, wspace=0.4, hspace=0.55)  # fmt: skip
    for row, result in zip(axes, results, strict=True):
        rows = [night_stage_values(n, result.classes, rule) for n in result.nights]
        for ax, key in zip(row, keys, strict=True):
            psg = np.array([r[f"psg_{key}"] for r in rows], dtype=np.float64)
            pred = np.array([r[f"pred_{key}"] for r in rows], dtype=np.float64)
            label = key.removesuffix("_min").replace("_", " ") + " (min)"
            _bland_altman_panel(ax, psg, pred, label)
            ax.set_title(f"{result.name}: {label}", fontsize="small")
            ax.xaxis.label.set_fontsize("x-small")
    first = results[0]
    fig.suptitle(f"{first.task}, {first.scenario}, {rule} rule: predicted - PSG per night")
    return _save(fig, path)
