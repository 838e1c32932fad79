"""The model that ships inside the package: weights plus everything needed to use them.

Two files in ``sleepstream/shipped/``: ``<name>.npz`` (the network's ``state_dict`` as float32
arrays, read with ``allow_pickle=False``) and ``<name>.json`` (architecture, feature names, normalisation,
thresholds chosen by leave-one-subject-out, the LOSO figures, version, data citation). A fresh
install scores a night with :func:`load_shipped` and no training or download.

The live stage network ships the same way (``stages.npz``, ``stages.json``: :func:`load_stages`,
:func:`ship_stage_model`), and ``sleep_wake_stages.onnx`` is the shipped sleep/wake network and
the stage network in one exported step: p(sleep) as in ``sleep_wake.onnx`` plus ``p_stage3`` and
``p_stage4``, with the stages' decision weights in its metadata.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from sleepstream.models.card import (
    DEFAULT_NAME,
    ModelCard,
    metadata_for,
    read_model,
    shipped_folder,
    write_model,
)
from sleepstream.models.net import (
    SleepNet,
    StageGRU,
    build_net,
    predict_night,
    predict_night_stages,
)
from sleepstream.records import Recording

log = logging.getLogger(__name__)


@dataclass
class ShippedModel:
    """A network with its card; ``predict`` gives p(sleep) per epoch of a night."""

    net: SleepNet
    card: ModelCard

    def predict(self, recording: Recording) -> NDArray[np.float64]:
        return predict_night(self.net, recording)

    def is_asleep(self, p_sleep: NDArray[np.float64], target: str = "wasa93") -> NDArray[np.bool_]:
        """Sleep decisions at one of the card's thresholds."""
        if target not in self.card.thresholds:
            raise ValueError(
                f"No threshold {target!r}; the card has {sorted(self.card.thresholds)}"
            )
        return p_sleep >= self.card.thresholds[target]


def save_model(net: SleepNet, card: ModelCard, folder: Path) -> tuple[Path, Path]:
    """Write ``<name>.npz``, ``<name>.json`` (:func:`~sleepstream.models.card.write_model`) and
    the model file ``<name>.onnx`` (the whole pipeline, raw variant, card inside) into
    ``folder``, each whole or not at all."""
    weights, meta = write_model(folder, card, net)
    write_model_file(net, card, folder / f"{card.name}.onnx")
    return weights, meta


def provenance(card: ModelCard) -> dict[str, Any]:
    """Where a model came from, for the metadata inside its file."""
    import subprocess

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "model_name": card.name,
        "trained_on_subjects": card.trained_on,
        "training_data": "Walch et al. 2019 sleep-accel (PhysioNet), PSG-labelled nights",
        "commit": commit,
        "threshold_source": card.threshold_source,
        "loso": card.loso,
    }


def write_model_file(
    net: SleepNet,
    card: ModelCard,
    path: Path,
    variant: str = "raw",
    stages: StageGRU | None = None,
    stages_about: dict[str, Any] | None = None,
) -> Path:
    """The pipeline of ``net`` as one ONNX file, with the card's thresholds and provenance;
    with the stage network ``stages``, its outputs and ``stages_about`` in the metadata."""
    from sleepstream.export.onnx import export_onnx

    meta = metadata_for(net, card.thresholds, variant, stages, stages_about, **provenance(card))
    return export_onnx(net, path, meta, stages)


def load_model(folder: Path, name: str = DEFAULT_NAME) -> ShippedModel:
    """Load ``<name>.npz`` and ``<name>.json`` from ``folder`` as a torch network."""
    card, weights = read_model(folder, name)
    net = build_net(card.architecture, card.init_args)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    return ShippedModel(net.eval(), card)


def load_shipped(name: str = DEFAULT_NAME) -> ShippedModel:
    """The model shipped with this package."""
    return load_model(shipped_folder(), name)


def net_and_thresholds(
    checkpoint: Path | None = None, predictions: Path | None = None
) -> tuple[SleepNet, dict[str, float]]:
    """A training checkpoint's network, with thresholds chosen on a ``cv`` predictions file
    (:func:`thresholds_from_loso`; none without one), or the shipped network and its card's
    thresholds."""
    if checkpoint is None:
        shipped = load_shipped()
        return shipped.net, shipped.card.thresholds
    from sleepstream.models.module import net_from_checkpoint

    net = net_from_checkpoint(checkpoint)
    return net, thresholds_from_loso([predictions]) if predictions is not None else {}


def thresholds_from_loso(predictions: Sequence[Path]) -> dict[str, float]:
    """Thresholds chosen on pooled out-of-fold LOSO scores (``cv``'s ``predictions/.../*.npz``).

    Each file is one LOSO run (e.g. one seed); every score in them comes from a fold model that
    did not train on the night it scores. The shipped network itself trained on every night, so
    its thresholds are chosen on these scores, never on its own training scores.
    """
    from sleepstream.evaluation.loso import choose_thresholds

    if not predictions:
        raise ValueError("No predictions files to choose thresholds on")
    scores = []
    for path in predictions:
        with np.load(path, allow_pickle=False) as oof:
            scores.append((oof["labels"], oof["p_sleep"]))
    return choose_thresholds(scores)


def read_loso_metrics(loso: Path, config: Path) -> dict[str, Any]:
    """The ``metrics.json`` of the ``cv`` report folder ``loso`` (of ``config``'s model)."""
    path = loso / "metrics.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: run `sleepstream cv -c {config} --out {loso}` first"
        )
    metrics: dict[str, Any] = json.loads(path.read_text())
    return metrics


def ship_model(
    config: Path,
    recordings: Sequence[Recording],
    loso: Path,
    metrics: dict[str, Any],
    out: Path,
    overrides: Sequence[str] = (),
) -> tuple[Path, Path]:
    """Train ``config`` on every night and save it with thresholds and figures of ``loso``.

    ``loso`` is the report folder of ``sleepstream cv`` with this config, ``metrics`` its
    ``metrics.json`` (:func:`read_loso_metrics`). The thresholds are chosen on the pooled
    out-of-fold scores of every seed's LOSO run in the headline start scenario
    (``metrics["headline_scenario"]``); the card carries that scenario's seed-mean figures.
    Returns the paths of the weights and the card.
    """
    from sleepstream.models.training import train

    name = config.stem
    headline = metrics["headline_scenario"]
    entry = metrics["scenarios"][headline].get(name)
    files = sorted((loso / "predictions" / headline).glob(f"{name}_seed*.npz"))
    if entry is None or not files:
        raise FileNotFoundError(
            f"No LOSO predictions of {name!r} in {loso}: run `sleepstream cv -c {config} "
            f"--out {loso}` first"
        )
    thresholds = thresholds_from_loso(files)
    module, _ = train(
        config,
        recordings,
        ["--data.val_subjects", "0", "--trainer.limit_val_batches", "0", *overrides],
    )
    net = module.inference_net.cpu().eval()
    card = ModelCard.of(
        net,
        name,
        thresholds,
        (
            f"pooled out-of-fold scores of the {len(files)} leave-one-subject-out runs (seeds) "
            f"in {loso}, start scenario {headline!r}: each score comes from a fold model that "
            "did not train on the night it scores; this network trained on all nights"
        ),
        [r.subject_id for r in recordings],
        loso={
            "scenario": headline,
            "seeds": entry["seeds"],
            "seed_mean": entry["seed_mean"],
            "bootstrap": entry["bootstrap"],
            "scenarios": {
                scenario: {
                    key: by_name[name]["seed_mean"][key]
                    for key in ("wasa93_deployable", "wasa95_deployable", "auroc", "kappa")
                }
                for scenario, by_name in metrics["scenarios"].items()
                if name in by_name
            },
        },
    )
    return save_model(net, card, out)


STAGE_NAME = "stages"
"""The shipped live stage network (``stages.npz``, ``stages.json``)."""

WITH_STAGES_NAME = "sleep_wake_stages"
"""The shipped model file with stage outputs (``sleep_wake_stages.onnx``)."""


@dataclass
class ShippedStages:
    """The live stage network with its card; ``predict`` gives class probabilities per task."""

    net: StageGRU
    card: ModelCard

    def predict(self, recording: Recording) -> dict[str, NDArray[np.float64]]:
        """``{"wake_nrem_rem": (epochs, 3), "wake_light_deep_rem": (epochs, 4)}``, causal."""
        return predict_night_stages(self.net, recording)

    def decide(self, proba: NDArray[np.float64], task: str) -> NDArray[np.int8]:
        """Class per epoch: the most probable after the card's decision weights of ``task``."""
        from sleepstream.evaluation.stages import decide

        return decide(proba, self.card.loso["decision_weights"][task])


def load_stages(folder: Path | None = None) -> ShippedStages:
    """The shipped live stage network (or the one saved in ``folder``)."""
    card, weights = read_model(folder or shipped_folder(), STAGE_NAME)
    net = build_net(card.architecture, card.init_args)
    if not isinstance(net, StageGRU):
        raise ValueError(f"{STAGE_NAME}.json: architecture {card.architecture} is not StageGRU")
    net.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    return ShippedStages(net.eval(), card)


def stage_decision_weights(
    loso: Path, name: str, scenario: str
) -> tuple[dict[str, list[float]], int]:
    """Per stage task, the class weights of the tuned rule chosen on the pooled out-of-fold
    probabilities of every seed of ``name`` in ``loso`` (a stage report folder), ``scenario``;
    and the number of seeds. No night's weights come from a model that trained on it."""
    from sleepstream.evaluation.stages import STAGE_TASKS, choose_class_weights, load_stage_result

    weights, seeds = {}, 0
    for task in STAGE_TASKS:
        files = sorted((loso / "stage_predictions" / task / scenario).glob(f"{name}_seed*.npz"))
        if not files:
            raise FileNotFoundError(
                f"No stage predictions of {name!r} in {loso} ({task}, {scenario}): run "
                f"`sleepstream stages -c CONFIG --out {loso}` first"
            )
        results = [load_stage_result(f)[0] for f in files]
        labels = np.concatenate([n.labels for r in results for n in r.nights])
        proba = np.concatenate([n.proba for r in results for n in r.nights])
        weights[task] = [float(w) for w in choose_class_weights(labels, proba)]
        seeds = len(files)
    return weights, seeds


def ship_stage_model(
    config: Path,
    recordings: Sequence[Recording],
    loso: Path,
    out: Path,
    *,
    name: str = "stage_gru",
    scenario: str = "early_1h",
    figures: dict[str, Any] | None = None,
    overrides: Sequence[str] = (),
) -> tuple[Path, Path, Path]:
    """Train the stage ``config`` on every night; save ``stages.npz``, ``stages.json`` and
    ``sleep_wake_stages.onnx`` (the shipped sleep/wake network with this one) in ``out``.

    The decision weights come from the stage LOSO run ``name`` in ``loso``
    (:func:`stage_decision_weights`, ``scenario``); ``figures`` (its LOSO figures) go into the
    card. Returns the three paths.
    """
    from sleepstream.models.training import train

    weights, seeds = stage_decision_weights(loso, name, scenario)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread is faster than two competing on a shared machine
    try:
        module, _ = train(
            config,
            recordings,
            ["--data.val_subjects", "0", "--trainer.limit_val_batches", "0", *overrides],
        )
    finally:
        torch.set_num_threads(before)
    stages = module.inference_net.cpu().eval()
    if not isinstance(stages, StageGRU):
        raise TypeError(f"{config}: the network must be a StageGRU")
    source = (
        f"class weights maximising kappa on the pooled out-of-fold probabilities of the {seeds} "
        f"leave-one-subject-out runs (seeds) of {name!r} in {loso}, start scenario "
        f"{scenario!r}; this network trained on all nights"
    )
    card = ModelCard.of(
        stages,
        STAGE_NAME,
        {},
        source,
        [r.subject_id for r in recordings],
        classes=("wake", "light", "deep", "rem"),
        loso={
            "name": name,
            "scenario": scenario,
            "seeds": seeds,
            "decision_weights": weights,
            "tasks": {
                "wake_nrem_rem": ["wake", "nrem", "rem"],
                "wake_light_deep_rem": ["wake", "light", "deep", "rem"],
            },
            "figures": figures or {},
        },
    )
    npz, meta = write_model(out, card, stages)
    sleep = load_model(out) if (out / f"{DEFAULT_NAME}.json").exists() else load_shipped()
    about = {"decision_weights": weights, "decision_weights_source": source, "loso": card.loso}
    onnx = write_model_file(
        sleep.net, sleep.card, out / f"{WITH_STAGES_NAME}.onnx", stages=stages, stages_about=about
    )
    return npz, meta, onnx
