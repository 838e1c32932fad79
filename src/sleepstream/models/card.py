"""The description of a trained network, in one place: its card and its exported metadata.

:class:`ModelCard` is stored beside a saved network's weights (``<name>.json`` next to
``<name>.npz`` of float32 arrays): architecture, constructor arguments, inputs, thresholds and
where they came from, the LOSO figures. :class:`ModelMetadata` is what an exported pipeline
file carries so an app can use it without this package (inside every ONNX and Core ML file as
JSON under the key ``"sleepstream"``, and beside them as ``model_<variant>.json``): the inputs in
order, the normalisation, the state layout, the thresholds, the rules an app applies after the
model. Both take the facts they share (classes, epoch length, version, data citation, threshold
checks) from this module; :func:`metadata_for` builds the metadata of a network's pipeline.

Nothing here imports torch at module level, so the live detector's NumPy backend loads the
shipped model without it. The weights are read with ``allow_pickle=False``: a model file is
never trusted to run code.

Examples
--------
>>> from sleepstream.models.net import SleepMLP
>>> meta = metadata_for(SleepMLP(), {"operating": 0.5})
>>> ModelMetadata.from_json(meta.to_json()) == meta
True
>>> meta.classes
('wake', 'sleep')
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from sleepstream import __version__
from sleepstream.paths import atomic_file
from sleepstream.records import EPOCH_SECONDS, SLEEP_WAKE

if TYPE_CHECKING:
    from sleepstream.models.net import SleepNet, StageGRU
    from sleepstream.pipeline import PipelineStep

DEFAULT_NAME = "sleep_wake"
DATA_CITATION = (
    "Walch O., Huang Y., Forger D., Goldstein C. Sleep stage prediction with raw acceleration "
    "and photoplethysmography heart rate data derived from a consumer wearable device. SLEEP "
    "42(12), 2019, doi:10.1093/sleep/zsz180. Data: Walch O. Motion and heart rate from a "
    "wrist-worn wearable and labeled sleep from polysomnography (version 1.0.0), PhysioNet, "
    "2019, doi:10.13026/hmhs-py35, ODC-By 1.0."
)
DATA_LICENSE = "ODC-By 1.0 (Open Data Commons Attribution License v1.0)"
MODEL_LICENSE = "MIT (code); trained on data licensed ODC-By 1.0 (attribution required)"


def check_thresholds(thresholds: Mapping[str, float]) -> None:
    """Raise ``ValueError`` naming a threshold that is not a probability in [0, 1]."""
    for name, value in thresholds.items():
        if not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
            raise ValueError(f"Threshold {name!r} = {value!r} is not a probability in [0, 1]")


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
    epoch_seconds: float = EPOCH_SECONDS
    classes: tuple[str, ...] = SLEEP_WAKE.classes
    loso: dict[str, Any] = field(default_factory=dict)
    data_citation: str = DATA_CITATION

    def __post_init__(self) -> None:
        check_thresholds(self.thresholds)

    @classmethod
    def of(
        cls,
        net: SleepNet,
        name: str,
        thresholds: Mapping[str, float],
        threshold_source: str,
        trained_on: Sequence[str],
        **more: Any,
    ) -> ModelCard:
        """The card of the trained network ``net``; ``more`` sets the other fields (``loso``)."""
        from sleepstream.models.net import count_parameters

        return cls(
            name=name,
            architecture=type(net).__name__,
            init_args=net.init_args,
            feature_names=list(net.feature_names),
            thresholds=dict(thresholds),
            threshold_source=threshold_source,
            trained_on=list(trained_on),
            n_parameters=count_parameters(net),
            **more,
        )

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


def write_model(folder: Path, card: ModelCard, net: SleepNet | StageGRU) -> tuple[Path, Path]:
    """Write ``<card.name>.npz`` (the ``state_dict`` as float32) and ``<card.name>.json`` into
    ``folder``, the inverse of :func:`read_model`.

    Both are written to temporary files and renamed one after the other only when both are
    complete, so an interruption never leaves a partial file, nor (short of a crash between the
    two renames) new weights beside an old card.
    """
    weights, meta = folder / f"{card.name}.npz", folder / f"{card.name}.json"
    arrays = {k: v.detach().cpu().float().numpy() for k, v in net.state_dict().items()}
    with atomic_file(weights) as weights_file, atomic_file(meta) as meta_file:
        np.savez(weights_file, **arrays)
        meta_file.write((card.to_json() + "\n").encode("utf-8"))
    return weights, meta


METADATA_KEY = "sleepstream"
"""Key under which the JSON metadata is stored inside exported model files."""

FORMAT_VERSION = 2
"""Version of this metadata layout; bumped when a field changes meaning."""

INPUT_NOTE = (
    "One call per closed 30 s epoch [start, start + 30 s), see 'inputs'. accel (raw variant): "
    "z acceleration in g on the 50 Hz grid from start + counts_delay_seconds, NaN where "
    "missing. counts: the epoch's two 15 s activity counts, NaN where missing. hr / hr_offset: "
    "the epoch's heart-rate samples (bpm) in time order and their seconds after start, NaN "
    "padded. state: the previous call's new_state; a new stream starts from the state built "
    "from 'state_layout' (each part filled with its 'initial' value)."
)
OUTPUT_NOTE = (
    "p_sleep: probability that the epoch is sleep (class 'sleep'); call it wake when "
    "p_sleep < threshold, then apply 'rules' (context veto, hysteresis). new_state: pass it "
    "with the next epoch and persist it across app suspensions. features: the epoch's causal "
    "features in the order of all_feature_names (for debugging)."
)
STAGE_NOTE = (
    " p_stage3 / p_stage4 (files with a stage network, see 'stages'): the probabilities of "
    "wake / NREM / REM and of wake / light / deep / REM for the epoch, each row summing to 1; "
    "the most probable class (after the class weights in 'stages', if any) is the live "
    "hypnogram. They come from a separate network on the same features and its own part of "
    "the state, so p_sleep is the same with or without them."
)
IO_DESCRIPTIONS = {
    "accel": "z acceleration (g) on the 50 Hz grid from start + counts_delay_seconds, 1,500 "
    "samples; NaN where missing.",
    "counts": "The epoch's two 15 s activity counts; NaN where missing (raw variant: then the "
    "counts from accel).",
    "hr": "The epoch's heart-rate samples (bpm) in time order; unused slots NaN.",
    "hr_offset": "Times of the hr samples in seconds after the epoch's start; unused slots NaN.",
    "state": "new_state of the previous epoch; for a new stream, the state built from the "
    "'state_layout' metadata entry.",
    "p_sleep": "Probability that the epoch is sleep; wake when below the chosen threshold.",
    "new_state": "State to pass as the state input with the next epoch.",
    "features": "The epoch's causal features in 'all_feature_names' order (for debugging).",
    "p_stage3": "Probabilities of wake, NREM and REM for the epoch (sum 1).",
    "p_stage4": "Probabilities of wake, light (N1, N2), deep (N3) and REM sleep (sum 1).",
}
"""What each input and output of a model file holds, in a line (Xcode shows them); the
state input is ``state`` in ONNX, ``prev_state`` in Core ML."""

RULES = {
    "threshold": "asleep_epoch = p_sleep >= thresholds[name] (default name: wasa93)",
    "context_veto": (
        "if the motion context reported during the epoch (CMMotionActivity) is cycling, "
        "running, automotive or walking with confidence medium or high, p_sleep = 0"
    ),
    "hysteresis": (
        "fell_asleep after fall_asleep_epochs consecutive asleep epochs while awake; woke_up "
        "after wake_up_epochs consecutive awake epochs while asleep"
    ),
    "fall_asleep_epochs": 3,
    "wake_up_epochs": 2,
}
"""What an app applies after the model (the live detector's defaults)."""


@dataclass(frozen=True)
class ModelMetadata:
    """Everything an app needs to feed an exported sleepstream model and read its output.

    Attributes
    ----------
    feature_names
        Model inputs, in order (a subset of :data:`sleepstream.features.FEATURE_NAMES`).
    mean, std
        The normalisation inside the model, per input: ``(x - mean) / std``, NaN -> 0.
        Informational: the exported graph already applies it.
    state_size
        Length of the recurrent state vector (1 for memoryless models, a dummy).
    thresholds
        Decision thresholds on p(sleep), e.g. ``{"wasa93": .., "wasa95": .., "operating": ..}``:
        an epoch is called wake when ``p_sleep < threshold``.
    architecture
        Network class name, e.g. ``"SleepGRU"``; ``architecture_params`` gives its sizes.
    stages
        Empty for a sleep/wake file. A file with stage outputs describes them here:
        ``outputs`` (output name -> ``task`` and ``classes``), the stage network's
        ``architecture``, ``architecture_params``, ``feature_names``, ``mean``, ``std`` and
        ``state_size`` (the last part of the state, ``stage_network`` in ``state_layout``).
        Left out of the JSON when empty, so sleep/wake files read as before.
    """

    feature_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    state_size: int
    thresholds: dict[str, float]
    architecture: str
    architecture_params: dict[str, Any] = field(default_factory=dict)
    classes: tuple[str, ...] = SLEEP_WAKE.classes
    epoch_seconds: float = EPOCH_SECONDS
    version: str = __version__
    input_note: str = INPUT_NOTE
    output_note: str = OUTPUT_NOTE
    data_citation: str = DATA_CITATION
    data_license: str = DATA_LICENSE
    model_license: str = MODEL_LICENSE
    extra: dict[str, Any] = field(default_factory=dict)
    variant: str = "features"
    inputs: tuple[dict[str, Any], ...] = ()
    state_layout: tuple[dict[str, Any], ...] = ()
    state_layout_version: int = 0
    all_feature_names: tuple[str, ...] = ()
    counts_delay_seconds: float = 0.0
    rules: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    stages: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from sleepstream.features import resolve_features

        resolve_features(self.feature_names)  # raises naming unknown features
        n = len(self.feature_names)
        if len(self.mean) != n or len(self.std) != n:
            raise ValueError(
                f"Metadata has {n} feature names but {len(self.mean)} means and "
                f"{len(self.std)} standard deviations"
            )
        if self.state_size < 1:
            raise ValueError(f"state_size must be >= 1, got {self.state_size}")
        check_thresholds(self.thresholds)
        if any(not math.isfinite(v) for v in (*self.mean, *self.std)):
            raise ValueError("Normalisation mean/std must be finite")

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dictionary (tuples become lists)."""
        out = asdict(self)
        for key in ("feature_names", "mean", "std", "classes", "all_feature_names"):
            out[key] = list(out[key])
        out["inputs"], out["state_layout"] = list(out["inputs"]), list(out["state_layout"])
        if not out["stages"]:
            del out["stages"]
        return out

    def to_json(self, indent: int | None = 2) -> str:
        """The metadata as JSON text (strict JSON: no NaN)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelMetadata:
        """Inverse of :meth:`to_dict`; raises ``ValueError`` naming unknown or missing keys."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown sleepstream metadata keys {unknown}; known: {sorted(known)}")
        required = {"feature_names", "mean", "std", "state_size", "thresholds", "architecture"}
        missing = sorted(required - set(data))
        if missing:
            raise ValueError(f"sleepstream metadata lacks required keys {missing}")
        if data.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            raise ValueError(
                f"sleepstream metadata format_version {data['format_version']} is newer than "
                f"this reader ({FORMAT_VERSION}); upgrade sleepstream"
            )
        values = dict(data)
        for key in ("inputs", "state_layout"):
            if key in values:
                values[key] = tuple(dict(v) for v in values[key])
        for key in ("feature_names", "classes", "all_feature_names"):
            if key in values:
                values[key] = tuple(str(v) for v in values[key])
        for key in ("mean", "std"):
            values[key] = tuple(float(v) for v in values[key])
        values["thresholds"] = {str(k): float(v) for k, v in values["thresholds"].items()}
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> ModelMetadata:
        """Parse :meth:`to_json` output."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"sleepstream metadata is not valid JSON: {err}") from err
        if not isinstance(data, dict):
            raise ValueError(
                f"sleepstream metadata must be a JSON object, got {type(data).__name__}"
            )
        return cls.from_dict(data)

    def flat(self) -> dict[str, str]:
        """A few top-level string entries for tools that show model properties (Xcode, Netron).

        The JSON under :data:`METADATA_KEY` is the authoritative copy.
        """
        out = {
            "sleepstream_version": self.version,
            "architecture": self.architecture,
            "feature_names": ",".join(self.feature_names),
            "n_features": str(self.n_features),
            "state_size": str(self.state_size),
            "classes": ",".join(self.classes),
            "epoch_seconds": f"{self.epoch_seconds:g}",
        }
        for name, value in self.thresholds.items():
            out[f"threshold_{name}"] = repr(float(value))
        return out

    def outputs(self) -> dict[str, list[int | str]]:
        """Every output of the model file, in order, with its shape (``"batch"`` first)."""
        shapes: dict[str, list[int | str]] = {
            "p_sleep": ["batch"],
            "new_state": ["batch", self.state_size],
            "features": ["batch", len(self.all_feature_names)],
        }
        for name, about in self.stages.get("outputs", {}).items():
            shapes[name] = ["batch", len(about["classes"])]
        return shapes

    def summary(self) -> str:
        """What the model file is, in a paragraph (ONNX's doc string, Core ML's description)."""
        return (
            f"sleepstream {self.architecture} pipeline ({self.variant} variant): p(sleep) for one "
            "30 s epoch of Apple Watch samples, with a recurrent state. Training data: "
            f"{self.data_citation} License {self.data_license}."
        )

    def check_matches(self, net: SleepNet, stages: StageGRU | None = None) -> None:
        """Raise ``ValueError`` when ``net``'s inputs or state size, or the stage network's
        presence and inputs, differ from this metadata."""
        if bool(self.stages) != (stages is not None):
            raise ValueError(
                "Metadata and networks disagree about stage outputs: metadata "
                f"{'has' if self.stages else 'has none'}, stage network "
                f"{'given' if stages is not None else 'not given'}"
            )
        if stages is not None and list(self.stages["feature_names"]) != stages.feature_names:
            raise ValueError(
                f"Metadata stage feature_names {self.stages['feature_names']} differ from the "
                f"stage network's {stages.feature_names}"
            )
        if tuple(net.feature_names) != self.feature_names:
            raise ValueError(
                f"Metadata feature_names {list(self.feature_names)} differ from the network's "
                f"{list(net.feature_names)}"
            )
        if self.variant == "features" and net.state_size != self.state_size:
            raise ValueError(
                f"Metadata state_size {self.state_size} differs from the network's {net.state_size}"
            )


def _architecture_params(net: SleepNet | StageGRU) -> dict[str, Any]:
    from sleepstream.models.net import count_parameters

    params: dict[str, Any] = {"parameters": count_parameters(net)}
    for name in ("hidden_size", "num_layers"):
        value = getattr(net, name, None)
        if isinstance(value, int):
            params[name] = value
    return params


def stage_metadata(stages: StageGRU, **about: Any) -> dict[str, Any]:
    """The ``stages`` entry of :class:`ModelMetadata` for the stage network ``stages``;
    ``about`` (JSON-serialisable: class weights, LOSO figures, ...) is added as it is."""
    from sleepstream.pipeline import STAGE_OUTPUT_NAMES
    from sleepstream.records import LABEL_MAPS

    json.dumps(about, allow_nan=False)
    return {
        "outputs": {
            output: {"task": task, "classes": list(LABEL_MAPS[task].classes)}
            for task, output in STAGE_OUTPUT_NAMES.items()
        },
        "architecture": type(stages).__name__,
        "architecture_params": _architecture_params(stages),
        "feature_names": list(stages.feature_names),
        "mean": [float(v) for v in stages.normalise.mean.detach().cpu().tolist()],
        "std": [float(v) for v in stages.normalise.std.detach().cpu().tolist()],
        "state_size": int(stages.state_size),
        **about,
    }


def metadata_for(
    net: SleepNet,
    thresholds: Mapping[str, float],
    variant: str = "raw",
    stages: StageGRU | None = None,
    stages_about: Mapping[str, Any] | None = None,
    **extra: Any,
) -> ModelMetadata:
    """The metadata of a trained network's pipeline file (``variant`` ``"raw"`` or ``"counts"``):
    its inputs, state layout, normalisation, thresholds and the rules an app applies; with the
    stage network ``stages``, its outputs (:func:`stage_metadata`, ``stages_about`` added).

    ``extra`` (JSON-serialisable: training subjects, config name, ...) is kept under ``extra``.
    """
    params = _architecture_params(net)
    json.dumps(extra, allow_nan=False)  # fail here, not when a file is written
    from sleepstream.features import FEATURE_NAMES
    from sleepstream.pipeline import pipeline_step
    from sleepstream.step import COUNTS_DELAY_SECONDS, STATE_LAYOUT_VERSION

    step = pipeline_step(net, variant, stages)
    return ModelMetadata(
        feature_names=tuple(net.feature_names),
        mean=tuple(float(v) for v in net.normalise.mean.detach().cpu().tolist()),
        std=tuple(float(v) for v in net.normalise.std.detach().cpu().tolist()),
        state_size=int(step.state_size),
        thresholds={str(k): float(v) for k, v in thresholds.items()},
        architecture=type(net).__name__,
        architecture_params=params,
        extra=dict(extra),
        variant=variant,
        inputs=tuple(_inputs(step)),
        state_layout=tuple(state_layout_with_initial(step)),
        state_layout_version=STATE_LAYOUT_VERSION,
        all_feature_names=FEATURE_NAMES,
        counts_delay_seconds=COUNTS_DELAY_SECONDS if variant == "raw" else 0.0,
        rules=dict(RULES),
        output_note=OUTPUT_NOTE + (STAGE_NOTE if stages is not None else ""),
        stages=stage_metadata(stages, **dict(stages_about or {})) if stages is not None else {},
    )


def _inputs(step: PipelineStep) -> list[dict[str, Any]]:
    shapes = {
        name: list(x.shape[1:])
        for name, x in zip(step.input_names, step.example_inputs(), strict=True)
    }
    return [
        {"name": n, "shape": ["batch", *shapes[n]], "dtype": "float32"} for n in step.input_names
    ]


def state_layout_with_initial(step: PipelineStep) -> list[dict[str, Any]]:
    """The state layout, each part with its initial value (``"nan"`` for missing)."""
    from sleepstream.pipeline import state_layout

    initial = step.initial_state(1)[0]
    out = []
    for part in state_layout(step):
        at, n = int(str(part["offset"])), int(str(part["length"]))
        values = initial[at : at + n].numpy()
        if np.isnan(values).all():
            out.append({**part, "initial": "nan"})
            continue
        if not (values == values[0]).all():
            raise ValueError(f"state part {part['name']} has no single initial value")
        out.append({**part, "initial": float(values[0])})
    return out
