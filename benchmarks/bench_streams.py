"""Benchmark: many streams stepped at once, as a service would step every watch each epoch.

    python benchmarks/bench_streams.py               # N = 1, 100, 10000, one core

For N streams, one epoch of the whole pipeline (the shipped model file, raw variant: counts
filter, features and network) is stepped for all of them in one batched call, from states
primed with an hour of data, in ONNX Runtime and in torch (one thread each). Each stream's
epoch has 1,500 acceleration samples and 6 heart-rate samples.

Prints the seconds per step and the streams stepped per second. The target: 10,000 streams
stepped in under 1 s.

Then the whole detector, as the service runs it: N detectors sharing the shipped model file
each get one epoch of samples (50 Hz acceleration, heart rate every 5 s) and close it, one by
one or all through :func:`~sleepstream.live.detector.close_together` (one batched step).
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import onnxruntime
import torch

from sleepstream.live.backends import OnnxPipeline, PipelineModel, TorchPipeline
from sleepstream.live.detector import SleepDetector, close_together
from sleepstream.models.shipped import load_shipped


def _inputs(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    hr = np.full((n, 30), np.nan, dtype=np.float32)
    offsets = np.full((n, 30), np.nan, dtype=np.float32)
    hr[:, :6] = 60 + rng.normal(0, 3, (n, 6))
    offsets[:, :6] = np.arange(6) * 5.0
    return {
        "accel": (-0.8 + rng.normal(0, 0.01, (n, 1500))).astype(np.float32),
        "counts": np.full((n, 2), np.nan, dtype=np.float32),
        "hr": hr,
        "hr_offset": offsets,
    }


def bench(model: PipelineModel, n: int, repeats: int, prime: int = 120) -> float:
    """Median seconds of one step for ``n`` streams (after ``prime`` epochs of data)."""
    rng = np.random.default_rng(0)
    inputs = _inputs(n, rng)
    state = model.initial_state(n)
    for _ in range(min(prime, 5) if n > 1000 else prime):
        _, state, _ = model.run(inputs, state)
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        _, state, _ = model.run(inputs, state)
        times.append(time.perf_counter() - begin)
    return float(np.median(times))


def bench_detectors(model: OnnxPipeline, n: int, epochs: int = 4) -> tuple[float, float]:
    """Median seconds to feed and close one epoch of ``n`` detectors: one by one, together."""
    t = np.arange(0.0, 30.0 * (epochs + 1), 0.02)
    xyz = np.column_stack([np.zeros_like(t), np.full_like(t, 0.6), np.full_like(t, -0.8)])
    xyz += np.random.default_rng(0).normal(0, 0.01, xyz.shape)
    hr_t = np.arange(0.0, 30.0 * (epochs + 1), 5.0)
    out = []
    for batched in (False, True):
        detectors = [SleepDetector(model) for _ in range(n)]
        times = []
        for k in range(epochs + 1):
            a = (t >= 30 * k) & (t < 30 * (k + 1))
            h = (hr_t >= 30 * k) & (hr_t < 30 * (k + 1))
            begin = time.perf_counter()
            for d in detectors:
                d.hold = batched
                d.add_acceleration(t[a], xyz[a])
                d.add_heart_rate(hr_t[h], np.full(int(h.sum()), 60.0))
            if batched:
                close_together(detectors)
            if k:  # the first chunk closes nothing (the counts filter looks 2 s ahead)
                times.append(time.perf_counter() - begin)
        out.append(float(np.median(times)))
    return out[0], out[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 100, 10_000])
    parser.add_argument("--repeats", type=int, default=5, help="epochs stepped per size")
    parser.add_argument("--detectors", type=int, nargs="+", default=[1, 100, 1000])
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        f"# {platform.platform()}, onnxruntime {onnxruntime.__version__}, "
        f"torch {torch.__version__}, one thread"
    )
    models = {"onnxruntime": OnnxPipeline.shipped(), "torch": TorchPipeline(load_shipped().net)}
    print("streams  runtime       s/step   streams/s")
    for n in args.sizes:
        for name, model in models.items():
            seconds = bench(model, n, args.repeats)
            print(f"{n:7d}  {name:11s}  {seconds:8.4f}  {n / seconds:10,.0f}")
    print("\ndetectors  one by one s/epoch  close_together s/epoch")
    shared = models["onnxruntime"]
    assert isinstance(shared, OnnxPipeline)
    for n in args.detectors:
        alone, together = bench_detectors(shared, n)
        print(f"{n:9d}  {alone:19.4f}  {together:22.4f}")


if __name__ == "__main__":
    main()
