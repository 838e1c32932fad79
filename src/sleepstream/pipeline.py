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
(every causal feature, for debugging; the network reads its own subset).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from sleepstream.features import FEATURE_NAMES, HR_SLOTS
from sleepstream.models.net import SleepNet
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


class PipelineStep(nn.Module):
    """One epoch of the whole pipeline; see the module docstring for inputs and outputs."""

    def __init__(self, net: SleepNet, variant: str = "raw"):
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
        self.accel_size = ACCEL_STATE_SIZE if variant == "raw" else 0
        self.state_size = self.accel_size + FEATURE_STATE_SIZE + self.net.state_size

    input_names = property(
        lambda self: (
            ("accel", "counts", "hr", "hr_offset", "state")
            if self.variant == "raw"
            else ("counts", "hr", "hr_offset", "state")
        )
    )
    output_names = ("p_sleep", "new_state", "features")

    def initial_state(self, batch: int = 1) -> Tensor:
        parts = [initial_feature_state(batch), self.net.initial_state(batch).float()]
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
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The step; ``accel`` is used by the raw variant only."""
        at = self.accel_size
        feature_state = state[:, at : at + FEATURE_STATE_SIZE]
        net_state = state[:, at + FEATURE_STATE_SIZE :]
        parts = []
        if self.counter is not None and accel is not None:
            from_accel, history = self.counter(accel, state[:, :at])
            counts = torch.where(torch.isnan(counts), from_accel, counts)
            parts.append(history)
        features, feature_state = self.features(counts, hr, hr_offset, feature_state)
        logit, net_state = self.net.step(features.index_select(1, self.columns), net_state)
        parts += [feature_state, net_state + 0.0]
        return torch.sigmoid(logit), torch.cat(parts, dim=1), features


class RawPipeline(PipelineStep):
    """:class:`PipelineStep` taking raw acceleration (the export signature of ``raw``)."""

    def __init__(self, net: SleepNet):
        super().__init__(net, "raw")

    def forward(
        self, accel: Tensor, counts: Tensor, hr: Tensor, hr_offset: Tensor, state: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        return self.run(accel, counts, hr, hr_offset, state)


class CountsPipeline(PipelineStep):
    """:class:`PipelineStep` taking ready-made counts (the export signature of ``counts``)."""

    def __init__(self, net: SleepNet):
        super().__init__(net, "counts")

    def forward(
        self, counts: Tensor, hr: Tensor, hr_offset: Tensor, state: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        return self.run(None, counts, hr, hr_offset, state)


def pipeline_step(net: SleepNet, variant: str = "raw") -> PipelineStep:
    """The exportable step of ``net`` in ``variant`` (``"raw"`` or ``"counts"``), eval mode."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    return (RawPipeline(net) if variant == "raw" else CountsPipeline(net)).eval()


def state_layout(step: PipelineStep) -> list[dict[str, object]]:
    """``{"name", "offset", "length"}`` of every part of the state vector, in order."""
    parts = list(ACCEL_STATE_LAYOUT) if step.variant == "raw" else []
    parts += [*FEATURE_STATE_LAYOUT, ("network", step.net.state_size)]
    return layout(parts)


__all__ = [
    "VARIANTS",
    "CountsPipeline",
    "PipelineStep",
    "RawPipeline",
    "pipeline_step",
    "state_layout",
]
