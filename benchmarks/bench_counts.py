"""Benchmark of the activity counts: ingest throughput of the FIR counts, live and in batch.

    python benchmarks/bench_counts.py               # throughput, one thread
    python benchmarks/bench_counts.py --agreement   # also rewrite the tables of
                                                    # docs/counts-agreement.md

Throughput is CPU time of this process (not wall time, so a busy machine still measures one
core), best of 3, on three hours of a generated 50 Hz night
(:func:`sleepstream.signal.synthetic.night`). The agreement tables come from
:mod:`sleepstream.signal.agreement`; they are seeded and do not depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy
from threadpoolctl import threadpool_limits

from sleepstream.signal import synthetic
from sleepstream.signal.agreement import write_tables
from sleepstream.signal.counts import SAMPLE_RATE
from sleepstream.signal.live_counts import StreamingCounts, counts_fir

DOC = Path(__file__).resolve().parent.parent / "docs" / "counts-agreement.md"
CHUNK_SECONDS = (1.0, 30.0)


def best_rate(run: Callable[[], None], samples: int) -> float:
    """Samples per second of CPU time, best of 3 runs."""
    best = 0.0
    for _ in range(3):
        start = time.process_time()
        run()
        best = max(best, samples / (time.process_time() - start))
    return best


def feed(times: np.ndarray, z: np.ndarray, chunk: int) -> None:
    stream = StreamingCounts(origin=0.0)
    for i in range(0, len(times), chunk):
        stream.update(times[i : i + chunk], z[i : i + chunk])


def feed_batch(times: np.ndarray, z: np.ndarray) -> None:
    counts_fir(times, z)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agreement", action="store_true", help=f"also rewrite {DOC.name}")
    args = parser.parse_args()
    print(
        f"# {platform.platform()}, {os.cpu_count()} cores, numpy {np.__version__}, "
        f"scipy {scipy.__version__}, 1 thread, delay {StreamingCounts().delay_seconds:g} s"
    )
    times = synthetic.sample_times(3 * 3600.0)
    z = synthetic.night(times, seed=0)
    with threadpool_limits(limits=1):
        for seconds in CHUNK_SECONDS:
            chunk = int(seconds * SAMPLE_RATE)
            rate = best_rate(lambda chunk=chunk: feed(times, z, chunk), len(times))
            print(
                f"live, {seconds:g} s chunks ({chunk} samples): {rate / 1e6:.2f} M samples/s "
                f"({rate / SAMPLE_RATE:,.0f}x real time)"
            )
        rate = best_rate(lambda: feed_batch(times, z), len(times))
        print(f"batch, counts_fir on 3 h at once: {rate / 1e6:.2f} M samples/s")
        if args.agreement:
            write_tables(DOC)
            print(f"wrote the tables of {DOC}")


if __name__ == "__main__":
    main()
