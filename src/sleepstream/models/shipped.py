"""The model that ships inside the package: weights plus everything needed to use them.

Two files in ``sleepstream/shipped/``: ``<name>.pt`` (the network's ``state_dict``, loaded with
``weights_only=True``) and ``<name>.json`` (architecture, feature names, normalisation,
thresholds chosen by leave-one-subject-out, the LOSO figures, version, data citation). A fresh
install scores a night with :func:`load_shipped` and no training or download.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from sleepstream import __version__
from sleepstream.evaluation.loso import choose_thresholds
from sleepstream.models.net import SleepNet, build_net
from sleepstream.models.training import predict_night
from sleepstream.paths import atomic_file
from sleepstream.records import Recording

log = logging.getLogger(__name__)

DEFAULT_NAME = "sleep_wake"
DATA_CITATION = (
    "Walch O., Huang Y., Forger D., Goldstein C. Sleep stage prediction with raw acceleration "
    "and photoplethysmography heart rate data derived from a consumer wearable device. SLEEP "
    "42(12), 2019, doi:10.1093/sleep/zsz180. Data: Walch O. Motion and heart rate from a "
    "wrist-worn wearable and labeled sleep from polysomnography (version 1.0.0), PhysioNet, "
    "2019, doi:10.13026/hmhs-py35, ODC-By 1.0."
)


@dataclass
class ModelCard:
    """What is known about a saved network, stored beside its weights as JSON."""

    name: str
    architecture: str
    init_args: dict[str, Any]
    feature_names: list[str]
    thresholds: dict[str, float]
    threshold_source: str
    trained_on: list[str]
    n_parameters: int
    version: str = __version__
    epoch_seconds: float = 30.0
    classes: tuple[str, str] = ("wake", "sleep")
    loso: dict[str, Any] = field(default_factory=dict)
    data_citation: str = DATA_CITATION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        values = json.loads(text)
        values["classes"] = tuple(values["classes"])
        return cls(**values)


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


def shipped_folder() -> Path:
    return Path(str(resources.files("sleepstream") / "shipped"))


def save_model(net: SleepNet, card: ModelCard, folder: Path) -> tuple[Path, Path]:
    """Write ``<name>.pt`` and ``<name>.json`` into ``folder``, each whole or not at all.

    Both are written to temporary files first and renamed one after the other only when both
    are complete, so an interruption never leaves a partial file, nor (short of a crash between
    the two renames) new weights beside an old card.
    """
    weights, meta = folder / f"{card.name}.pt", folder / f"{card.name}.json"
    with atomic_file(weights) as weights_file, atomic_file(meta) as meta_file:
        torch.save(net.state_dict(), weights_file)
        meta_file.write((card.to_json() + "\n").encode("utf-8"))
    return weights, meta


def load_model(folder: Path, name: str = DEFAULT_NAME) -> ShippedModel:
    """Load ``<name>.pt`` and ``<name>.json`` from ``folder``."""
    meta = folder / f"{name}.json"
    if not meta.exists():
        raise FileNotFoundError(f"{meta} not found: no saved model named {name!r} in {folder}")
    card = ModelCard.from_json(meta.read_text())
    net = build_net(card.architecture, card.init_args)
    state = torch.load(folder / f"{name}.pt", map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    return ShippedModel(net.eval(), card)


def load_shipped(name: str = DEFAULT_NAME) -> ShippedModel:
    """The model shipped with this package."""
    return load_model(shipped_folder(), name)


def thresholds_from_loso(predictions: Sequence[Path]) -> dict[str, float]:
    """Thresholds chosen on pooled out-of-fold LOSO scores (``cv``'s ``predictions/.../*.npz``).

    Each file is one LOSO run (e.g. one seed); every score in them comes from a fold model that
    did not train on the night it scores. The shipped network itself trained on every night, so
    its thresholds are chosen on these scores, never on its own training scores.
    """
    if not predictions:
        raise ValueError("No predictions files to choose thresholds on")
    scores = []
    for path in predictions:
        with np.load(path, allow_pickle=False) as oof:
            scores.append((oof["labels"], oof["p_sleep"]))
    return choose_thresholds(scores)


def ship_model(
    config: Path,
    recordings: Sequence[Recording],
    loso: Path,
    metrics: dict[str, Any],
    out: Path,
    overrides: Sequence[str] = (),
) -> tuple[Path, Path]:
    """Train ``config`` on every night and save it with thresholds and figures of ``loso``.

    The thresholds are chosen on the pooled out-of-fold scores of every seed's LOSO run in the
    headline start scenario (``metrics["headline_scenario"]``); the card carries that scenario's
    seed-mean figures.
    """
    from sleepstream.models.net import count_parameters
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
    card = ModelCard(
        name=name,
        architecture=type(net).__name__,
        init_args=net.init_args,
        feature_names=net.feature_names,
        thresholds=thresholds,
        threshold_source=(
            f"pooled out-of-fold scores of the {len(files)} leave-one-subject-out runs (seeds) "
            f"in {loso}, start scenario {headline!r}: each score comes from a fold model that "
            "did not train on the night it scores; this network trained on all nights"
        ),
        trained_on=[r.subject_id for r in recordings],
        n_parameters=count_parameters(net),
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
