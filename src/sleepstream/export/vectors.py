"""Test vectors: a stretch of a real night that an app's port must reproduce exactly.

A port of the feature extractor (Swift on the watch) replays the recorded samples and must
produce the recorded feature vectors; feeding those to the exported model must give the
recorded p(sleep). The file is JSON (NaN written as ``null``)::

    format          "sleepstream-test-vectors/1"
    subject_id      night the samples come from
    replay          how to replay (rules below, in words)
    epoch_seconds   30
    night_epochs    start time (s) of every epoch from night start to the stretch end
    samples         heart_rate {times, bpm}, counts {times, values, window_seconds, source}
    stretch         start_epoch, n_epochs
    epochs          per stretch epoch: index, start, features (all FEATURE_NAMES), model_input
                    (the model's inputs in order), normalised, p_sleep, state_norm
    state_before    model state entering the stretch (so a model-only test can start there)
    feature_names   FEATURE_NAMES, the order of each epoch's ``features``
    tolerance       suggested absolute tolerances for a port
    metadata        the model's ModelMetadata
    counts_from_acceleration
                    reserved for raw acceleration -> activity count vectors, which another
                    module adds through ``write_test_vectors(..., sections=...)``

Replay rules: start a fresh extractor; for every epoch of ``night_epochs`` in order, feed
every sample (heart rate and counts, each series in time order) whose time is before the
epoch's end, then close the epoch; run the model from a zero state on every closed epoch. The
extractor's state depends on the whole past, so the replay starts at the beginning of the
night. Samples older than the extractor's longest look-back before the first epoch's end
(:attr:`CausalFeatures.hr_baseline_seconds`, one day) cannot change any output and are left
out.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from sleepstream.export.metadata import ModelMetadata, metadata_for
from sleepstream.export.onnx import inference_copy
from sleepstream.features import FEATURE_NAMES, GAP_CAP_MIN, CausalFeatures, extract
from sleepstream.models.net import SleepNet
from sleepstream.records import COUNT_SECONDS, EPOCH_SECONDS, Recording

FORMAT = "sleepstream-test-vectors/1"
RESERVED_SECTIONS = ("counts_from_acceleration",)
"""Top-level keys kept free for sections that other modules add through ``sections``."""

TOLERANCE = {"features": 1e-6, "normalised": 1e-5, "p_sleep": 1e-5}

REPLAY_RULES = (
    "Start a fresh extractor. For each epoch start in night_epochs, in order: feed every "
    "heart-rate sample and every activity count whose time is before start + epoch_seconds "
    "(each series in time order; a count is placed by the start of its 15 s window), then "
    "close the epoch. Run the model from a zero state on every closed epoch. Compare the "
    "epochs listed under 'epochs' with the recorded values; null means NaN."
)


def _nan_to_none(values: NDArray[np.floating]) -> list[float | None]:
    return [
        None if not math.isfinite(v) else float(v) for v in np.asarray(values, dtype=np.float64)
    ]


def _none_to_nan(values: list[float | None]) -> NDArray[np.float64]:
    return np.array([math.nan if v is None else v for v in values], dtype=np.float64)


def _model_outputs(
    net: SleepNet, inputs: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Normalised inputs, p(sleep) and the state after each epoch ``(T, S)``, by ``net.step``."""
    x = torch.as_tensor(inputs, dtype=torch.float32)
    state = net.initial_state(1)
    p = np.empty(len(inputs), dtype=np.float64)
    states = np.empty((len(inputs), net.state_size), dtype=np.float64)
    with torch.no_grad():
        normalised = net.normalise(x).double().numpy()
        for t in range(len(x)):
            logit, state = net.step(x[t : t + 1], state)
            p[t] = torch.sigmoid(logit).item()
            states[t] = state[0].double().numpy()
    return normalised, p, states


def _samples(recording: Recording, oldest: float, end: float) -> dict[str, Any]:
    """The heart-rate samples and counts with ``oldest <= time < end``."""
    hr = (recording.hr_times >= oldest) & (recording.hr_times < end)
    counts = (recording.count_times >= oldest) & (recording.count_times < end)
    return {
        "heart_rate": {
            "times": recording.hr_times[hr].tolist(),
            "bpm": recording.hr_bpm[hr].tolist(),
        },
        "counts": {
            "times": recording.count_times[counts].tolist(),
            "values": recording.counts[counts].tolist(),
            "window_seconds": COUNT_SECONDS,
            "source": recording.count_source,
        },
        "dropped_before": oldest,
    }


def write_test_vectors(
    recording: Recording,
    net: SleepNet,
    path: str | Path,
    start_epoch: int = 0,
    n_epochs: int = 20,
    *,
    metadata: ModelMetadata | None = None,
    sections: Mapping[str, Any] | None = None,
) -> Path:
    """Write test vectors for epochs ``start_epoch .. start_epoch + n_epochs - 1`` of a night.

    ``sections`` adds top-level JSON sections, e.g. ``{"counts_from_acceleration": ...}`` (raw
    acceleration and the counts computed from it, see :data:`RESERVED_SECTIONS`); they may not
    replace the built-in keys. Returns ``path``.
    """
    stop = start_epoch + n_epochs
    if start_epoch < 0 or n_epochs < 1 or stop > recording.n_epochs:
        raise ValueError(
            f"Stretch of {n_epochs} epochs from epoch {start_epoch} does not fit night "
            f"{recording.subject_id} of {recording.n_epochs} epochs"
        )
    net = inference_copy(net)
    meta = metadata if metadata is not None else metadata_for(net, {})
    meta.check_matches(net)
    extractor = CausalFeatures()
    features = extract(recording, extractor, n_epochs=stop)
    columns = [FEATURE_NAMES.index(n) for n in net.feature_names]
    normalised, p, states = _model_outputs(net, features[:, columns])
    epochs = [
        {
            "index": i,
            "start": float(recording.epoch_times[i]),
            "features": _nan_to_none(features[i]),
            "model_input": _nan_to_none(features[i, columns]),
            "normalised": _nan_to_none(normalised[i]),
            "p_sleep": float(p[i]),
            "state_norm": float(np.linalg.norm(states[i])),
        }
        for i in range(start_epoch, stop)
    ]
    first_end = float(recording.epoch_times[0]) + EPOCH_SECONDS
    # Older samples are dropped at the first epoch's close or only move capped gap features.
    oldest = first_end - max(extractor.hr_baseline_seconds, GAP_CAP_MIN * 60.0)
    stretch_end = float(recording.epoch_times[stop - 1]) + EPOCH_SECONDS
    vectors: dict[str, Any] = {
        "format": FORMAT,
        "subject_id": recording.subject_id,
        "replay": REPLAY_RULES,
        "epoch_seconds": EPOCH_SECONDS,
        "night_epochs": [float(t) for t in recording.epoch_times[:stop]],
        "samples": _samples(recording, oldest, stretch_end),
        "stretch": {"start_epoch": start_epoch, "n_epochs": n_epochs},
        "epochs": epochs,
        "state_before": states[start_epoch - 1].tolist() if start_epoch else [0.0] * net.state_size,
        "feature_names": list(FEATURE_NAMES),
        "tolerance": TOLERANCE,
        "metadata": meta.to_dict(),
    }
    for key, section in (sections or {}).items():
        if key in vectors:
            raise ValueError(f"Test-vector section {key!r} would replace a built-in section")
        vectors[key] = section
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(vectors, allow_nan=False))
    return path


def read_test_vectors(path: str | Path) -> dict[str, Any]:
    """Load a test-vector file; raises ``ValueError`` when it is not one."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path}: not a sleepstream test-vector file (format {FORMAT!r})")
    return data


def replay_features(vectors: Mapping[str, Any]) -> NDArray[np.float64]:
    """Reference replay of the recorded samples: features of the stretch's epochs.

    Follows the replay rules literally with :class:`CausalFeatures`, the way a port would;
    shape ``(n_epochs, len(FEATURE_NAMES))``.
    """
    samples = vectors["samples"]
    hr_t, hr_v = samples["heart_rate"]["times"], samples["heart_rate"]["bpm"]
    ct_t, ct_v = samples["counts"]["times"], samples["counts"]["values"]
    extractor = CausalFeatures()
    step = float(vectors["epoch_seconds"])
    i_hr = i_ct = 0
    out: dict[int, NDArray[np.float64]] = {}
    wanted = {int(e["index"]) for e in vectors["epochs"]}
    for index, start in enumerate(vectors["night_epochs"]):
        end = start + step
        while i_hr < len(hr_t) and hr_t[i_hr] < end:
            extractor.update_heart_rate(hr_t[i_hr], hr_v[i_hr])
            i_hr += 1
        while i_ct < len(ct_t) and ct_t[i_ct] < end:
            extractor.update_count(ct_t[i_ct], ct_v[i_ct])
            i_ct += 1
        vector = extractor.close_epoch(float(start))
        if index in wanted:
            out[index] = vector
    return np.array([out[int(e["index"])] for e in vectors["epochs"]])


def recorded(vectors: Mapping[str, Any], key: str) -> NDArray[np.float64]:
    """One per-epoch entry of the stretch as an array (``null`` -> NaN), e.g. ``"features"``."""
    rows = [e[key] for e in vectors["epochs"]]
    if isinstance(rows[0], list):
        return np.array([_none_to_nan(r) for r in rows])
    return np.array(rows, dtype=np.float64)


def counts_vectors(seconds: float = 120.0, seed: int = 0) -> dict[str, Any]:
    """Test vectors for the live activity counts: generated wrist z acceleration in, counts out.

    The public nights have no raw acceleration, so the input is generated: rest with breathing
    sway and sensor noise, a twitch, and turning over. An app's port of
    :class:`~sleepstream.signal.live_counts.StreamingCounts` must reproduce ``counts`` from
    ``times`` and ``z`` (the linear-phase FIR of the 3-11 Hz band-pass, 50 Hz grid from t = 0).
    """
    from sleepstream.signal.live_counts import StreamingCounts

    rng = np.random.default_rng(seed)
    times = np.round(
        np.arange(0.0, seconds, 0.02) + rng.uniform(-0.002, 0.002, int(seconds * 50)), 6
    )
    times[0] = 0.0
    z = -0.98 + 0.01 * np.sin(2 * np.pi * 0.25 * times) + rng.normal(0, 0.004, len(times))
    twitch = (times > 40.0) & (times < 40.3)
    z[twitch] += 0.3 * np.sin(2 * np.pi * 6 * times[twitch])
    turning = (times > 75.0) & (times < 77.5)
    z[turning] += (
        0.5 * np.sin(2 * np.pi * 3.5 * times[turning]) + 0.4 * (times[turning] - 75.0) / 2.5
    )
    z[times >= 77.5] += 0.4
    stream = StreamingCounts(origin=0.0)
    count_times, counts = stream.update(times, z)
    return {
        "description": "raw z acceleration (g) -> StreamingCounts(origin=0) (linear-phase FIR, 2 s delay) -> counts",
        "times": times.tolist(),
        "z": z.tolist(),
        "count_times": count_times.tolist(),
        "counts": counts.tolist(),
    }
