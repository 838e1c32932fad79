"""Benchmark of ``sleepstream score`` on a generated week: 50 Hz raw acceleration + heart rate.

    python benchmarks/bench_score.py                # generate into a temporary folder, score
    python benchmarks/bench_score.py --days 1       # a shorter recording
    python benchmarks/bench_score.py --keep DIR     # keep the generated files and outputs in DIR

The week is written as files first (``accel.parquet``: Unix milliseconds and x, y, z in g as
float32, 30.24 M rows; ``heart_rate.csv``: ISO-8601 times with a UTC offset, one every 5 s), by
:mod:`sleepstream.signal.synthetic` hour by hour (:func:`~sleepstream.signal.synthetic.night`
from 23:00 to 07:00, :func:`~sleepstream.signal.synthetic.walking` or
:func:`~sleepstream.signal.synthetic.rest` by the hour in the day). Scoring then runs in a fresh
process on one thread (``torch.set_num_threads(1)``), so its peak resident memory is its own:
each step's CPU time (``time.process_time``, which other work on a busy machine does not inflate
the way it inflates wall time) and wall time are printed, then the total and the peak resident
memory (``ru_maxrss``).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd

START = 1774044000.0  # 2026-03-20T22:00:00Z, 23:00 in Berlin (CET)
ZONE = "Europe/Berlin"
RATE = 50.0
T = TypeVar("T")


def _hour_kind(hour: int, rng: np.random.Generator) -> str:
    if hour >= 23 or hour < 7:
        return "night"
    return "walking" if rng.random() < 0.3 else "rest"


def generate(folder: Path, days: float) -> tuple[Path, Path]:
    """Write ``accel.parquet`` and ``heart_rate.csv`` of ``days`` days from :data:`START`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sleepstream.signal import synthetic

    rng = np.random.default_rng(0)
    accel_path, hr_path = folder / "accel.parquet", folder / "heart_rate.csv"
    schema = pa.schema(
        [("time", pa.int64()), ("x", pa.float32()), ("y", pa.float32()), ("z", pa.float32())]
    )
    hours = round(days * 24)
    hr_t, hr_v = [], []
    with pq.ParquetWriter(accel_path, schema) as writer:
        for h in range(hours):
            start = START + 3600.0 * h
            clock_hour = (23 + h) % 24  # local hour in CET
            kind = _hour_kind(clock_hour, rng)
            t = synthetic.sample_times(3600.0, RATE, start=start)
            z = synthetic.SIGNALS[kind](t - start, h)
            xyz = synthetic.as_xyz(z, h).astype(np.float32)
            table = pa.table(
                {
                    "time": np.round(t * 1000).astype(np.int64),
                    "x": xyz[:, 0],
                    "y": xyz[:, 1],
                    "z": xyz[:, 2],
                },
                schema=schema,
            )
            writer.write_table(table)
            ht = np.arange(start, start + 3600.0, 5.0)
            base = 55.0 if kind == "night" else (95.0 if kind == "walking" else 72.0)
            hr_t.append(ht)
            hr_v.append(base + rng.normal(0, 2.5, len(ht)))
    times = pd.to_datetime(np.concatenate(hr_t), unit="s", utc=True).tz_convert(ZONE)
    pd.DataFrame(
        {"time": times.strftime("%Y-%m-%dT%H:%M:%S%z"), "bpm": np.concatenate(hr_v)}
    ).to_csv(hr_path, index=False)
    return accel_path, hr_path


def peak_mib() -> float:
    """Peak resident memory of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(name: str, step: Callable[[], T], rows: list[tuple[str, float, float, float]]) -> T:
    """Run ``step``; keep its CPU and wall seconds and the peak memory after it under ``name``."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = step()
    rows.append((name, time.process_time() - cpu, time.perf_counter() - wall, peak_mib()))
    return result


def score(folder: Path, out: Path) -> None:
    """Score the generated files step by step (the steps of ``score_recording``), one thread."""
    import torch

    torch.set_num_threads(1)
    from sleepstream.data.raw import RawOptions
    from sleepstream.data.user import epoch_grid, from_raw_files
    from sleepstream.features import FEATURE_NAMES, epoch_inputs
    from sleepstream.records import Recording, Stage
    from sleepstream.score import days
    from sleepstream.score.command import score_recording
    from sleepstream.score.model import ShippedScorer, accel_counts_per_epoch, choose_model
    from sleepstream.step import scan

    rows: list[tuple[str, float, float, float]] = []
    print(f"# peak memory after imports: {peak_mib():.0f} MiB")
    files = sorted(folder.glob("*.parquet")) + sorted(folder.glob("*.csv"))
    recording = timed(
        "read files (Parquet + CSV)", lambda: from_raw_files(files, RawOptions()), rows
    )
    accel_times, accel_z = recording.accel_times, recording.accel_z
    assert accel_times is not None and accel_z is not None
    starts = epoch_grid(*recording.span)
    n = len(starts)
    name, scorer = timed("load the model", lambda: choose_model(recording), rows)
    assert isinstance(scorer, ShippedScorer)
    counts = timed(
        "counts: 50 Hz grid + AccelCounts",
        lambda: accel_counts_per_epoch(accel_times, accel_z, float(starts[0]), n),
        rows,
    )
    night = Recording(
        "bench",
        starts,
        np.full(n, Stage.UNSCORED, dtype=np.int8),
        recording.hr_times,
        recording.hr_bpm,
    )
    _, hr, hr_offset = timed("heart rate per epoch", lambda: epoch_inputs(night), rows)
    features = timed(
        "feature scan (FeatureStep per epoch)", lambda: scan(counts, hr, hr_offset), rows
    )
    net = scorer.model.net
    columns = [FEATURE_NAMES.index(c) for c in net.feature_names]

    def network() -> np.ndarray:
        with torch.no_grad():
            logits, _ = net(torch.as_tensor(features[:, columns], dtype=torch.float32).unsqueeze(0))
        return torch.sigmoid(logits[0]).double().numpy()

    p = timed("network (GRU over the sequence)", network, rows)
    from sleepstream.score.model import EpochScores

    table = timed(
        "epoch table, non-wear",
        lambda: days.epoch_table(
            recording, starts, EpochScores(p, counts=counts), scorer.threshold
        ),
        rows,
    )
    timed("days, main sleep, naps, figures", lambda: days.nights(recording, table), rows)
    steps_cpu = sum(r[1] for r in rows)
    steps_wall = sum(r[2] for r in rows)
    print(f"# {n} epochs, {len(accel_times) / 1e6:.2f} M acceleration samples, model: {name}")
    for label, cpu, wall, peak in rows:
        print(f"{label:40s} {cpu:7.2f} s CPU {wall:7.2f} s wall   peak so far {peak:5.0f} MiB")
    print(
        f"{'score (the steps above, to the figures)':40s} {steps_cpu:7.2f} s CPU {steps_wall:7.2f} s wall"
    )
    cpu, wall = time.process_time(), time.perf_counter()
    _, n_days = score_recording(recording, out / "bench")
    print(
        f"{'score_recording again, with all outputs':40s} {time.process_time() - cpu:7.2f} s CPU "
        f"{time.perf_counter() - wall:7.2f} s wall ({n_days} days: CSV, JSON, PNG, HTML)"
    )
    print(f"peak resident memory of the scoring process: {peak_mib():.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=float, default=7.0, help="days to generate (default 7)")
    parser.add_argument("--keep", help="folder for the generated files and outputs (kept)")
    parser.add_argument("--score-only", help=argparse.SUPPRESS)  # the scoring subprocess
    args = parser.parse_args()
    if args.score_only:
        folder = Path(args.score_only)
        score(folder / "input", folder / "out")
        return
    import torch

    print(f"# {platform.platform()}, {os.cpu_count()} cores, torch {torch.__version__}, one thread")
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.keep) if args.keep else Path(scratch)
        (folder / "input").mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        accel, hr = generate(folder / "input", args.days)
        print(
            f"generated {args.days:g} days in {time.perf_counter() - started:.0f} s: {accel.name} "
            f"{accel.stat().st_size / 2**20:.0f} MiB, {hr.name} {hr.stat().st_size / 2**20:.1f} MiB"
        )
        subprocess.run([sys.executable, __file__, "--score-only", str(folder)], check=True)


if __name__ == "__main__":
    main()
