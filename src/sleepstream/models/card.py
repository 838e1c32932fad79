"""A saved network as data: its card (JSON) and its weights (``.npz`` of float32 arrays).

Nothing here needs torch, so the live detector's NumPy backend loads the shipped model without
it. The weights are read with ``allow_pickle=False``: a model file is never trusted to run code.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sleepstream import __version__

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
    classes: tuple[str, ...] = ("wake", "sleep")
    loso: dict[str, Any] = field(default_factory=dict)
    data_citation: str = DATA_CITATION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        values = json.loads(text)
        values["classes"] = tuple(values["classes"])
        return cls(**values)


Weights = dict[str, NDArray[np.float32]]


def shipped_folder() -> Path:
    """The folder of the models shipped inside the package."""
    return Path(str(resources.files("sleepstream") / "shipped"))


def weights_id(architecture: str, weights: Weights) -> str:
    """Identity of a network's weights (the same in every backend that runs them)."""
    digest = hashlib.blake2b(architecture.encode(), digest_size=12)
    for name, array in sorted(weights.items()):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
    return digest.hexdigest()


def read_model(folder: Path, name: str = DEFAULT_NAME) -> tuple[ModelCard, Weights]:
    """The card and weights of ``<name>.json`` and ``<name>.npz`` in ``folder``."""
    meta, weights_path = folder / f"{name}.json", folder / f"{name}.npz"
    if not meta.exists():
        raise FileNotFoundError(f"{meta} not found: no saved model named {name!r} in {folder}")
    card = ModelCard.from_json(meta.read_text())
    try:
        with np.load(weights_path, allow_pickle=False) as archive:
            weights = {k: archive[k].astype(np.float32) for k in archive.files}
    except (OSError, ValueError) as error:
        raise ValueError(f"{weights_path}: not a weights file ({error})") from None
    return card, weights
