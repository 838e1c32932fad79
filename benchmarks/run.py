"""Benchmarks: print load, training, LOSO and inference figures on the real nights.

    python benchmarks/run.py                 # load + inference + one training fold (about a minute)
    python benchmarks/run.py --loso          # also the full LOSO of the model (minutes)
    python benchmarks/run.py --only load     # one section

Needs ``SLEEPSTREAM_DATA``. Figures depend on the machine; the header prints what it is.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sleepstream.cache import CACHE_ENV
from sleepstream.data.folder import load_all
from sleepstream.features import night_features
from sleepstream.models.training import NetPredictor

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "sleep_wake.yaml"


def bench_load() -> None:
    with tempfile.TemporaryDirectory() as cache:
        os.environ[CACHE_ENV] = cache
        start = time.perf_counter()
        recordings = load_all()
        cold = time.perf_counter() - start
        cached = []
        for _ in range(5):
            start = time.perf_counter()
            load_all()
            cached.append(time.perf_counter() - start)
    print(
        f"load all {len(recordings)} nights: cold {cold:.3f} s, cached {min(cached):.3f} s (best of 5)"
    )
    start = time.perf_counter()
    for r in recordings:
        night_features(r)
    elapsed = time.perf_counter() - start
    epochs = sum(r.n_epochs for r in recordings)
    print(
        f"causal features, all nights: {elapsed:.2f} s ({1e6 * elapsed / epochs:.0f} us per epoch)"
    )


def bench_inference() -> None:
    from sleepstream.export.vectors import counts_night
    from sleepstream.live.backends import OnnxPipeline, TorchPipeline
    from sleepstream.models.shipped import load_shipped

    torch.set_num_threads(1)
    inputs = counts_night(load_all()[0])
    n = len(inputs["hr"])
    rows = {**inputs, "accel": np.full((n, 1500), np.nan)}
    for backend in (TorchPipeline(load_shipped().net), OnnxPipeline.shipped()):
        state = backend.initial_state()
        times = []
        for t in range(n):
            one = {k: v[t : t + 1].astype(np.float32) for k, v in rows.items()}
            start = time.perf_counter()
            _, state, _ = backend.run(one, state)
            times.append(time.perf_counter() - start)
        print(
            f"shipped pipeline, one epoch, {type(backend).__name__} (1 thread): "
            f"median {1e6 * statistics.median(times):.0f} us, "
            f"p99 {1e6 * float(np.quantile(times, 0.99)):.0f} us"
        )


def bench_training(loso: bool) -> None:
    torch.set_num_threads(1)
    recordings = load_all()
    predictor = NetPredictor(CONFIG)
    start = time.perf_counter()
    predictor.fit(recordings[1:])
    print(f"training one fold (30 nights, 1 thread): {time.perf_counter() - start:.1f} s")
    if loso:
        from sleepstream.evaluation.loso import run_loso

        start = time.perf_counter()
        run_loso(predictor, recordings, n_jobs=2, progress=False)
        print(f"LOSO of the model, 31 folds, 2 processes: {time.perf_counter() - start:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["load", "inference", "training"])
    parser.add_argument("--loso", action="store_true", help="also time the full model LOSO")
    args = parser.parse_args()
    print(f"# {platform.platform()}, {os.cpu_count()} cores, torch {torch.__version__}")
    if args.only in (None, "load"):
        bench_load()
    if args.only in (None, "inference"):
        bench_inference()
    if args.only in (None, "training"):
        bench_training(args.loso)


if __name__ == "__main__":
    main()
