"""The whole model of one epoch, from the watch's samples to p(sleep): what the model files hold.

:class:`PipelineStep` chains the counts from raw acceleration (raw variant only,
:class:`~sleepstream.step.AccelCounts`), the causal features
(:class:`~sleepstream.step.FeatureStep`), the network's own step (its input normalisation
included) and a sigmoid. Its state is one float32 vector per stream: the counts filter's
history (raw variant), the feature state, then the network's state (:func:`state_layout`).

==========  ==========================  ===================================================
input       shape                       meaning
==========  ==========================  ===================================================
accel       (batch, 1500)               raw variant only: z acceleration (g) on the 50 Hz
                                        grid from ``start + 2 s`` to ``start + 32 s``, NaN
                                        where missing
counts      (batch, 2)                  the epoch's two 15 s activity counts, NaN where
                                        missing (raw variant: used where not NaN, else the
                                        counts from ``accel``)
hr          (batch, 30)                 the epoch's heart-rate samples (bpm), time order,
                                        NaN padded
hr_offset   (batch, 30)                 their times in seconds after the epoch's start
state       (batch, state_size)         the previous epoch's ``new_state``
                                        (:func:`initial_state` for a new stream)
==========  ==========================  ===================================================

Outputs: ``p_sleep (batch,)``, ``new_state (batch, state_size)`` and ``features (batch, 29)``
(every causal feature, for debugging; the network reads its own subset). A step built with a
stage network (``stages``, a :class:`~sleepstream.models.net.StageGRU`) has two more:
``p_stage3 (batch, 3)`` (wake, NREM, REM) and ``p_stage4 (batch, 4)`` (wake, light, deep,
REM), each row summing to 1 (:data:`STAGE_OUTPUT_NAMES`); its state ends with the stage
network's. The sleep/wake part is the same graph either way, so p(sleep) does not change.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from sleepstream.features import FEATURE_NAMES, HR_SLOTS
from sleepstream.models.net import SleepNet, StageGRU, stage_probabilities
from sleepstream.step import (
    ACCEL_SAMPLES,
    ACCEL_STATE_LAYOUT,
    ACCEL_STATE_SIZE,
    FEATURE_STATE_LAYOUT,
    FEATURE_STATE_SIZE,
    AccelCounts,
    FeatureStep,
    initial_accel_state,
    initial_feature_state,
    layout,
)

VARIANTS = ("raw", "counts")
"""``raw``: acceleration in (counts computed inside); ``counts``: ready-made counts in."""

STAGE_OUTPUT_NAMES = {"wake_nrem_rem": "p_stage3", "wake_light_deep_rem": "p_stage4"}
"""The step's output of each stage task (names of :data:`~sleepstream.records.LABEL_MAPS`)."""

PROBABILITY_OUTPUTS = ("p_sleep", *STAGE_OUTPUT_NAMES.values())
"""The outputs the parity checks compare (those present in a file)."""


class PipelineStep(nn.Module):
    """One epoch of the whole pipeline; see the module docstring for inputs and outputs."""

    def __init__(self, net: SleepNet, variant: str = "raw", stages: StageGRU | None = None):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        self.variant = variant
        self.net = copy.deepcopy(net).cpu().float().eval()
        self.features = FeatureStep()
        self.counter = AccelCounts() if variant == "raw" else None
        self.register_buffer(
            "columns",
            torch.tensor([FEATURE_NAMES.index(n) for n in net.feature_names], dtype=torch.long),
            persistent=False,
        )
        self.stages = copy.deepcopy(stages).cpu().float().eval() if stages is not None else None
        if self.stages is not None:
            self.register_buffer(
                "stage_columns",
                torch.tensor(
                    [FEATURE_NAMES.index(n) for n in self.stages.feature_names], dtype=torch.long
                ),
                persistent=False,
            )
        self.accel_size = ACCEL_STATE_SIZE if variant == "raw" else 0
        self.stage_state_size = self.stages.state_size if self.stages is not None else 0
        self.state_size = (
            self.accel_size + FEATURE_STATE_SIZE + self.net.state_size + self.stage_state_size
        )

    input_names = property(
        lambda self: (
            ("accel", "counts", "hr", "hr_offset", "state")
            if self.variant == "raw"
            else ("counts", "hr", "hr_offset", "state")
        )
    )

    @property
    def output_names(self) -> tuple[str, ...]:
        stages = tuple(STAGE_OUTPUT_NAMES.values()) if self.stages is not None else ()
        return ("p_sleep", "new_state", "features", *stages)

    def initial_state(self, batch: int = 1) -> Tensor:
        parts = [initial_feature_state(batch), self.net.initial_state(batch).float()]
        if self.stages is not None:
            parts.append(self.stages.initial_state(batch).float())
        if self.variant == "raw":
            parts.insert(0, initial_accel_state(batch))
        return torch.cat(parts, dim=1)

    def example_inputs(self, batch: int = 2) -> tuple[Tensor, ...]:
        """Inputs of the right shapes (a new stream, nothing measured)."""
        nan = float("nan")
        inputs = [
            torch.full((batch, 2), nan),
            torch.full((batch, HR_SLOTS), nan),
            torch.full((batch, HR_SLOTS), nan),
            self.initial_state(batch),
        ]
        if self.variant == "raw":
            inputs.insert(0, torch.full((batch, ACCEL_SAMPLES), nan))
        return tuple(inputs)

    def run(
        self, accel: Tensor | None, counts: Tensor, hr: Tensor, hr_offset: Tensor, state: Tensor
    ) -> tuple[Tensor, ...]:
        """The step; ``accel`` is used by the raw variant only. Returns the outputs of
        :attr:`output_names`, in order."""
        at = self.accel_size
        feature_state = state[:, at : at + FEATURE_STATE_SIZE]
        net_at = at + FEATURE_STATE_SIZE
        net_state = state[:, net_at : net_at + self.net.state_size]
        parts = []
        if self.counter is not None and accel is not None:
            from_accel, history = self.counter(accel, state[:, :at])
            counts = torch.where(torch.isnan(counts), from_accel, counts)
            parts.append(history)
        features, feature_state = self.features(counts, hr, hr_offset, feature_state)
        logit, net_state = self.net.step(features.index_select(1, self.columns), net_state)
        parts += [feature_state, net_state + 0.0]
        if self.stages is None:
            return torch.sigmoid(logit), torch.cat(parts, dim=1), features
        stage_state = state[:, net_at + self.net.state_size :]
        stage_logits, stage_state = self.stages.step(
            features.index_select(1, self.stage_columns), stage_state
        )
        parts.append(stage_state + 0.0)
        p_stages = stage_probabilities(stage_logits)
        return (
            torch.sigmoid(logit),
            torch.cat(parts, dim=1),
            features,
            *(p_stages[task] for task in STAGE_OUTPUT_NAMES),
        )


class RawPipeline(PipelineStep):
    """:class:`PipelineStep` taking raw acceleration (the export signature of ``raw``)."""

    def __init__(self, net: SleepNet, stages: StageGRU | None = None):
        super().__init__(net, "raw", stages)

    def forward(
        self, accel: Tensor, counts: Tensor, hr: Tensor, hr_offset: Tensor, state: Tensor
    ) -> tuple[Tensor, ...]:
        return self.run(accel, counts, hr, hr_offset, state)


class CountsPipeline(PipelineStep):
    """:class:`PipelineStep` taking ready-made counts (the export signature of ``counts``)."""

    def __init__(self, net: SleepNet, stages: StageGRU | None = None):
        super().__init__(net, "counts", stages)

    def forward(
        self, counts: Tensor, hr: Tensor, hr_offset: Tensor, state: Tensor
    ) -> tuple[Tensor, ...]:
        return self.run(None, counts, hr, hr_offset, state)


def pipeline_step(
    net: SleepNet, variant: str = "raw", stages: StageGRU | None = None
) -> PipelineStep:
    """The exportable step of ``net`` in ``variant`` (``"raw"`` or ``"counts"``), eval mode;
    with the stage network ``stages``, its outputs too (:data:`STAGE_OUTPUT_NAMES`)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    step = RawPipeline(net, stages) if variant == "raw" else CountsPipeline(net, stages)
    return step.eval()


def inference_step(
    net: SleepNet, variant: str = "raw", stages: StageGRU | None = None
) -> PipelineStep:
    """:func:`pipeline_step` of float32 CPU copies of ``net`` and ``stages``: exporting or
    scanning never changes the caller's networks."""
    copied = None if stages is None else copy.deepcopy(stages).cpu().float().eval()
    return pipeline_step(copy.deepcopy(net).cpu().float().eval(), variant, copied)


def state_layout(step: PipelineStep) -> list[dict[str, object]]:
    """``{"name", "offset", "length"}`` of every part of the state vector, in order."""
    parts = list(ACCEL_STATE_LAYOUT) if step.variant == "raw" else []
    parts += [*FEATURE_STATE_LAYOUT, ("network", step.net.state_size)]
    if step.stages is not None:
        parts.append(("stage_network", step.stages.state_size))
    return layout(parts)


Run = Callable[[dict[str, NDArray[np.float32]], NDArray[np.float32]], Mapping[str, Any]]
"""One epoch of a pipeline: ``(inputs with batch 1, state) -> outputs by name``."""


def scan(
    run: Run,
    state: NDArray[np.float32],
    inputs: Mapping[str, NDArray[np.floating]],
    names: Sequence[str],
) -> dict[str, NDArray[np.float32]]:
    """``run`` stepped over one stream's ``(epochs, ...)`` inputs from ``state``, one epoch per
    call: per output in ``names`` its rows ``(T, ...)``, and the state after each epoch
    ``(T, S)`` under ``"state"``. The one loop that replays a night through a pipeline, in
    torch (:func:`scan_torch`), onnxruntime or Core ML."""
    out: dict[str, list[NDArray[np.float32]]] = {n: [] for n in (*names, "state")}
    for t in range(len(inputs["hr"])):
        result = run({k: np.asarray(v[t : t + 1], np.float32) for k, v in inputs.items()}, state)
        state = np.asarray(result["new_state"], np.float32).reshape(1, -1)
        out["state"].append(state[0])
        for name in names:
            out[name].append(np.asarray(result[name], np.float32)[0])
    return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}


def scan_torch(
    net: SleepNet,
    variant: str,
    inputs: Mapping[str, NDArray[np.floating]],
    stages: StageGRU | None = None,
) -> dict[str, NDArray[np.float32]]:
    """The :func:`inference_step` of ``net`` (and ``stages``) over one stream's inputs (:func:`scan`): ``p_sleep (T,)``,
    ``features (T, 29)``, ``state (T, S)``; with ``stages``, ``p_stage3 (T, 3)`` and
    ``p_stage4 (T, 4)``. ``inputs``: ``counts (T, 2)``, ``hr`` and ``hr_offset (T, 30)``, and
    ``accel (T, 1500)`` for the raw variant."""
    step = inference_step(net, variant, stages)

    def run(feed: dict[str, NDArray[np.float32]], state: NDArray[np.float32]) -> dict[str, Any]:
        args = [torch.from_numpy(feed[n]) for n in step.input_names[:-1]]
        with torch.no_grad():
            outputs = step(*args, torch.from_numpy(state))
        return {n: o.numpy() for n, o in zip(step.output_names, outputs, strict=True)}

    names = [n for n in step.output_names if n != "new_state"]
    return scan(run, step.initial_state(1).numpy(), inputs, names)


def max_abs_diff(
    got: Mapping[str, NDArray[np.floating]], reference: Mapping[str, NDArray[np.floating]]
) -> float:
    """Max |got - reference| over the probabilities (:data:`PROBABILITY_OUTPUTS`) in ``got``;
    infinite where exactly one of the two is NaN."""
    diffs = [0.0]
    for name in (n for n in PROBABILITY_OUTPUTS if n in got):
        a, b = np.asarray(got[name], np.float64), np.asarray(reference[name], np.float64)
        diff = np.where(np.isnan(a) & np.isnan(b), 0.0, np.nan_to_num(np.abs(a - b), nan=np.inf))
        diffs.append(float(np.max(diff, initial=0.0)))
    return max(diffs)


__all__ = [
    "PROBABILITY_OUTPUTS",
    "STAGE_OUTPUT_NAMES",
    "VARIANTS",
    "CountsPipeline",
    "PipelineStep",
    "RawPipeline",
    "inference_step",
    "max_abs_diff",
    "pipeline_step",
    "scan",
    "scan_torch",
    "state_layout",
]
