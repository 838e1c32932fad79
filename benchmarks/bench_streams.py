"""Benchmark: many streams stepped at once, as a service would step every watch each epoch.

    python benchmarks/bench_streams.py               # N = 1, 100, 10000, one core

For N streams, one epoch is stepped for all of them, and the time is split into:
- **features**: :class:`~sleepstream.features.CausalFeatures` closing the epoch for each stream
  (Python, one stream at a time; each stream holds 30 min of heart rate every 5 s and counts);
- **network**: the shipped network's ``step`` on the whole batch at once (torch, one thread).

Prints the seconds per epoch step and the streams stepped per second for each part and in all.
The target (10,000 streams stepped in under 1 s) is for the whole step.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from sleepstream.features import FEATURE_NAMES, CausalFeatures
from sleepstream.models.shipped import load_shipped
from sleepstream.records import EPOCH_SECONDS


def _primed_extractor(rng: np.random.Generator, hours: float = 0.5) -> CausalFeatures:
    fx = CausalFeatures()
    for t in np.arange(0.0, hours * 3600.0, 5.0):
        fx.update_heart_rate(float(t), float(60 + rng.normal(0, 3)))
    for t in np.arange(0.0, hours * 3600.0, 15.0):
        fx.update_count(float(t), float(rng.exponential(5)))
    return fx


def bench(n: int, repeats: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    net = load_shipped().net
    columns = [FEATURE_NAMES.index(name) for name in net.feature_names]
    extractors = [_primed_extractor(rng) for _ in range(n)]
    state = net.initial_state(n)
    start_epoch = 1800.0
    feature_times, net_times = [], []
    for k in range(repeats):
        epoch = start_epoch + k * EPOCH_SECONDS
        begin = time.perf_counter()
        rows = np.empty((n, len(FEATURE_NAMES)))
        for i, fx in enumerate(extractors):
            fx.update_heart_rate(epoch + 10.0, 60.0)
            fx.update_count(epoch, 3.0)
            rows[i] = fx.close_epoch(epoch)
        middle = time.perf_counter()
        x = torch.as_tensor(rows[:, columns], dtype=torch.float32)
        with torch.no_grad():
            _, state = net.step(x, state)
        end = time.perf_counter()
        feature_times.append(middle - begin)
        net_times.append(end - middle)
    features, network = float(np.median(feature_times)), float(np.median(net_times))
    return {"features_s": features, "network_s": network, "total_s": features + network}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 100, 10_000])
    parser.add_argument("--repeats", type=int, default=5, help="epochs stepped per size")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"# {platform.platform()}, torch {torch.__version__}, one thread")
    print("streams  features s/step  network s/step  total s/step  streams/s (total)")
    for n in args.sizes:
        r = bench(n, args.repeats)
        print(
            f"{n:7d}  {r['features_s']:15.4f}  {r['network_s']:14.5f}  {r['total_s']:12.4f}"
            f"  {n / r['total_s']:17,.0f}"
        )


if __name__ == "__main__":
    main()
