"""Benchmark of the live detector: ingest throughput, per-epoch latency, memory over 24 h.

    python benchmarks/bench_live.py            # shipped model, 50 Hz generated wrist stream

Prints:
- ingest throughput in acceleration samples per second on one core (the shipped model file in
  ONNX Runtime, one thread), for chunks of 1 s and 30 s of samples; heart rate every 5 s is fed
  alongside;
- per-epoch latency: the time of the call that delivers the last sample of an epoch, from its
  start to the epoch's result (median, 99th percentile);
- start-up: a new process importing the detector and building the default (shipped) one;
- memory: the size of the detector's snapshot (portable arrays, no pickle) after 24 h of stream, and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import onnxruntime

from sleepstream.live.backends import OnnxPipeline, PipelineModel
from sleepstream.live.detector import SleepDetector
from sleepstream.signal import synthetic

RATE = 50.0


def run(seconds: float, chunk_seconds: float, model: PipelineModel) -> dict[str, float]:
    t = synthetic.sample_times(seconds, RATE)
    xyz = synthetic.as_xyz(synthetic.night(t))
    hr_t = np.arange(0.0, seconds, 5.0)
    hr = 60.0 + 3.0 * np.sin(hr_t / 600.0)
    detector = SleepDetector(model, close_lag=5.0)
    per_chunk = int(chunk_seconds * RATE)
    latencies: list[float] = []
    feed_time = 0.0
    hr_done = 0
    for lo in range(0, len(t), per_chunk):
        hi = min(len(t), lo + per_chunk)
        hr_hi = int(np.searchsorted(hr_t, t[hi - 1], side="right"))
        start = time.perf_counter()
        results = detector.add_heart_rate(hr_t[hr_done:hr_hi], hr[hr_done:hr_hi])
        results += detector.add_acceleration(t[lo:hi], xyz[lo:hi])
        elapsed = time.perf_counter() - start
        feed_time += elapsed
        hr_done = hr_hi
        if results:
            latencies.append(elapsed)
    return {
        "samples_per_s": len(t) / feed_time,
        "latency_median_ms": 1e3 * statistics.median(latencies),
        "latency_p99_ms": 1e3 * float(np.quantile(latencies, 0.99)),
        "state_kib": len(detector.snapshot()) / 1024,
    }


def startup_seconds(repeats: int = 3) -> float:
    """Median wall time of a fresh process that imports the detector and builds the default one."""
    code = "from sleepstream.live.detector import SleepDetector; SleepDetector()"
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hours", type=float, default=24.0, help="length of the stream")
    args = parser.parse_args()
    model = OnnxPipeline.shipped()
    print(
        f"# {platform.platform()}, {os.cpu_count()} cores, onnxruntime "
        f"{onnxruntime.__version__}, 1 thread"
    )
    print(
        f"start-up, new process to SleepDetector() ready: {startup_seconds():.2f} s (median of 3)"
    )
    run(60.0, 1.0, model)  # warm-up
    short = run(3600.0, 1.0, model)
    print(
        f"1 s chunks (50 samples): {short['samples_per_s'] / 1e6:.2f} M samples/s per core; "
        f"latency to result median {short['latency_median_ms']:.2f} ms, "
        f"p99 {short['latency_p99_ms']:.2f} ms (call that closes an epoch)"
    )
    long = run(args.hours * 3600.0, 30.0, model)
    print(
        f"30 s chunks (1500 samples), {args.hours:g} h: "
        f"{long['samples_per_s'] / 1e6:.2f} M samples/s per core; "
        f"latency median {long['latency_median_ms']:.2f} ms"
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"after {args.hours:g} h: detector state {long['state_kib']:.0f} KiB snapshot; "
        f"process peak RSS {peak:.0f} MiB (includes the generated input)"
    )


if __name__ == "__main__":
    main()
