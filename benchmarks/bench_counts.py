"""Benchmark of the activity counts from raw acceleration (the model file's counts step).

    python benchmarks/bench_counts.py               # throughput, one thread
    python benchmarks/bench_counts.py --agreement   # also rewrite the tables of
                                                    # docs/counts-agreement.md

Throughput is CPU time of this process (not wall time, so a busy machine still measures one
core), best of 3, on three hours of a generated 50 Hz night
(:func:`sleepstream.signal.synthetic.night`): the counts step alone, one epoch (1,500 grid
samples) per call, in torch and in the raw-variant ONNX file's runtime is measured by
``bench_streams.py``. The agreement tables come from :mod:`sleepstream.signal.agreement`; they
are seeded and do not depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from sleepstream.signal import synthetic
from sleepstream.signal.agreement import write_tables
from sleepstream.step import COUNTS_DELAY_SECONDS, accel_counts

DOC = Path(__file__).resolve().parent.parent / "docs" / "counts-agreement.md"


def best_rate(run: Callable[[], None], samples: int) -> float:
    """Samples per second of CPU time, best of 3 runs."""
    best = 0.0
    for _ in range(3):
        start = time.process_time()
        run()
        best = max(best, samples / (time.process_time() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agreement", action="store_true", help=f"also rewrite {DOC.name}")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        f"# {platform.platform()}, {os.cpu_count()} cores, numpy {np.__version__}, "
        f"torch {torch.__version__}, 1 thread, delay {COUNTS_DELAY_SECONDS:g} s"
    )
    times = synthetic.sample_times(3 * 3600.0)
    z = synthetic.night(times, seed=0)
    rate = best_rate(lambda: accel_counts(times, z), len(times))
    print(
        f"accel_counts on 3 h (grid interpolation + the step's counts, one epoch per call): "
        f"{rate / 1e6:.2f} M samples/s ({rate / 50:,.0f}x real time)"
    )
    if args.agreement:
        write_tables(DOC)
        print(f"wrote the tables of {DOC}")


if __name__ == "__main__":
    main()
