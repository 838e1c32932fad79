"""Benchmarks of the streaming activity counts: ingest throughput and agreement with the offline ones.

    python benchmarks/bench_counts.py               # throughput, one thread, per chunk size
    python benchmarks/bench_counts.py --agreement   # also rewrite docs/counts-agreement.{md,png}

The agreement study compares :class:`~sleepstream.signal.live_counts.StreamingCounts` (causal,
``passes`` forward passes of the band-pass) with the published zero-phase pipeline
(:func:`~sleepstream.signal.counts.counts_offline`) on generated wrist-like z signals at 50 Hz.
Everything is seeded, so the document is reproducible; throughput depends on the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import scipy
from numpy.typing import NDArray
from scipy import signal
from threadpoolctl import threadpool_limits

from sleepstream.records import COUNT_SECONDS, EPOCH_SECONDS
from sleepstream.signal.counts import SAMPLE_RATE, bandpass_sos, counts_offline
from sleepstream.signal.live_counts import StreamingCounts, counts_streaming

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "counts-agreement.md"
FIGURE = ROOT / "docs" / "counts-agreement.png"
CHUNK_SIZES = (1, 50, 1500, 90000)
SEEDS = (1, 2, 3)

Array = NDArray[np.float64]


# --- generated wrist signals (z axis, g, 50 Hz) ------------------------------------------------


def _rest(times: Array, rng: np.random.Generator, level: float = -0.8) -> Array:
    """Still wrist: gravity, a 0.25 Hz breathing sway of 3 mg and 5 mg sensor noise."""
    sway = 0.003 * np.sin(2 * np.pi * 0.25 * times + rng.uniform(0, 2 * np.pi))
    return level + sway + rng.normal(0.0, 0.005, len(times))


def _event_starts(seconds: float, mean_interval: float, rng: np.random.Generator) -> Array:
    """Poisson event times at least 2 s apart and 5 s from either end."""
    gaps = 2.0 + rng.exponential(mean_interval - 2.0, int(3 * seconds / mean_interval) + 10)
    starts = 5.0 + np.cumsum(gaps)
    return starts[starts < seconds - 10.0]


def _add_twitches(times: Array, z: Array, rng: np.random.Generator, every: float) -> None:
    """Isolated twitches: 0.1-0.3 s Hann-windowed 4-10 Hz bursts of 0.05-0.4 g, random phase."""
    for start in _event_starts(times[-1], every, rng):
        duration = rng.uniform(0.1, 0.3)
        inside = (times >= start) & (times < start + duration)
        phase = (times[inside] - start) / duration
        carrier = 2 * np.pi * rng.uniform(4.0, 10.0) * (times[inside] - start)
        burst = np.sin(carrier + rng.uniform(0, 2 * np.pi))
        z[inside] += rng.uniform(0.05, 0.4) * np.sin(np.pi * phase) ** 2 * burst


def _add_turns(times: Array, z: Array, rng: np.random.Generator, every: float) -> None:
    """Turning over: 1-3 s of 1-8 Hz movement of 0.15-0.4 g while gravity shifts on z."""
    movement_sos = signal.butter(4, (1.0, 8.0), btype="bandpass", fs=SAMPLE_RATE, output="sos")
    level = float(np.median(z[: int(SAMPLE_RATE)]))
    for start in _event_starts(times[-1], every, rng):
        duration = rng.uniform(1.0, 3.0)
        new_level = rng.uniform(-1.0, 1.0)
        progress = np.clip((times - start) / duration, 0.0, 1.0)
        z += (new_level - level) * (1 - np.cos(np.pi * progress)) / 2  # smooth gravity shift
        level = new_level
        inside = (times >= start) & (times < start + duration)
        noise = signal.sosfiltfilt(movement_sos, rng.normal(0.0, 1.0, inside.sum() + 200))[100:-100]
        noise *= rng.uniform(0.15, 0.4) / np.abs(noise).max()
        z[inside] += noise * signal.windows.tukey(inside.sum(), 0.3)


def _walking(times: Array, rng: np.random.Generator) -> Array:
    """Walking: ~1.8 Hz steps (cadence wandering by a few %) with harmonics, about 0.3 g peak."""
    cadence = 1.8 * (1 + 0.03 * np.sin(2 * np.pi * times / rng.uniform(20, 60)))
    phase = 2 * np.pi * np.cumsum(cadence) / SAMPLE_RATE
    harmonics = sum(
        weight * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
        for k, weight in ((1, 1.0), (2, 0.5), (3, 0.3), (4, 0.2))
    )
    return -0.7 + 0.3 * harmonics / 2.0 + rng.normal(0.0, 0.02, len(times))


def rest_signal(seconds: float, seed: int) -> Array:
    rng = np.random.default_rng(seed)
    return _rest(_times(seconds), rng)


def twitch_signal(seconds: float, seed: int) -> Array:
    rng = np.random.default_rng(seed)
    times = _times(seconds)
    z = _rest(times, rng)
    _add_twitches(times, z, rng, every=30.0)
    return z


def turn_signal(seconds: float, seed: int) -> Array:
    rng = np.random.default_rng(seed)
    times = _times(seconds)
    z = _rest(times, rng)
    _add_turns(times, z, rng, every=120.0)
    return z


def walk_signal(seconds: float, seed: int) -> Array:
    return _walking(_times(seconds), np.random.default_rng(seed))


def night_signal(seconds: float, seed: int) -> Array:
    """Rest with a twitch about every 40 s and a turn about every 4 minutes."""
    rng = np.random.default_rng(seed)
    times = _times(seconds)
    z = _rest(times, rng)
    _add_twitches(times, z, rng, every=40.0)
    _add_turns(times, z, rng, every=240.0)
    return z


def _times(seconds: float) -> Array:
    return np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE


@dataclass(frozen=True)
class SignalKind:
    name: str
    description: str
    minutes: float
    make: Callable[[float, int], Array]


KINDS = (
    SignalKind("rest", "still wrist: 0.25 Hz sway of 3 mg, 5 mg noise", 30, rest_signal),
    SignalKind(
        "twitches",
        "rest plus a 0.1-0.3 s, 4-10 Hz, 0.05-0.4 g burst about every 30 s",
        60,
        twitch_signal,
    ),
    SignalKind(
        "turning over",
        "rest plus 1-3 s of 0.15-0.4 g movement with a gravity shift about every 2 min",
        60,
        turn_signal,
    ),
    SignalKind(
        "walking", "1.8 Hz steps with 3 harmonics, about 0.3 g, 20 mg noise", 20, walk_signal
    ),
    SignalKind(
        "night mix",
        "rest with a twitch about every 40 s and a turn about every 4 min",
        60,
        night_signal,
    ),
)


# --- agreement ---------------------------------------------------------------------------------


def paired_counts(z: Array, passes: int) -> tuple[Array, Array, Array]:
    """Window start times, offline counts and streaming counts of the windows both have."""
    times = _times(len(z) / SAMPLE_RATE)
    offline_times, offline = counts_offline(times, z)
    live_times, live = counts_streaming(times, z, chunk=1500, passes=passes)
    n = min(len(offline), len(live))
    if not np.array_equal(offline_times[:n], live_times[:n]):
        raise RuntimeError("offline and streaming windows do not line up")
    return offline_times[:n], offline[:n], live[:n]


def agreement_row(kind: SignalKind, passes: int) -> dict[str, float]:
    """Per-window and per-epoch agreement of one signal kind, pooled over the seeds."""
    offline_parts, live_parts, epoch_offline, epoch_live = [], [], [], []
    for seed in SEEDS:
        _, offline, live = paired_counts(kind.make(60.0 * kind.minutes, seed), passes)
        offline_parts.append(offline)
        live_parts.append(live)
        per_epoch = int(EPOCH_SECONDS / COUNT_SECONDS)
        n_epochs = len(offline) // per_epoch
        epoch_offline.append(offline[: n_epochs * per_epoch].reshape(n_epochs, -1).sum(axis=1))
        epoch_live.append(live[: n_epochs * per_epoch].reshape(n_epochs, -1).sum(axis=1))
    offline, live = np.concatenate(offline_parts), np.concatenate(live_parts)
    e_off, e_live = np.concatenate(epoch_offline), np.concatenate(epoch_live)
    active = e_off > 0
    relative = np.abs(e_live[active] - e_off[active]) / e_off[active]
    varies = offline.std() > 0 and live.std() > 0
    return {
        "windows": float(len(offline)),
        "mean_offline": float(offline.mean()),
        "mean_live": float(live.mean()),
        "mad": float(np.abs(live - offline).mean()),
        "corr": float(np.corrcoef(offline, live)[0, 1]) if varies else float("nan"),
        "both_zero": float(((offline == 0) & (live == 0)).mean()),
        "both_nonzero": float(((offline > 0) & (live > 0)).mean()),
        "only_offline": float(((offline > 0) & (live == 0)).mean()),
        "only_live": float(((offline == 0) & (live > 0)).mean()),
        "active_epochs": float(active.sum()),
        "epoch_rel_median": float(np.median(relative)) if active.any() else float("nan"),
        "epoch_rel_p95": float(np.quantile(relative, 0.95)) if active.any() else float("nan"),
        "total_rel": float((e_live.sum() - e_off.sum()) / e_off.sum()) if active.any() else 0.0,
    }


def group_delay_ms(passes: int, hz: tuple[float, ...]) -> list[float]:
    """Group delay of ``passes`` forward passes of the band-pass at the given frequencies."""
    b, a = signal.sos2tf(bandpass_sos())
    _, delay = signal.group_delay((b, a), w=list(hz), fs=SAMPLE_RATE)
    return [1000.0 * passes * d / SAMPLE_RATE for d in delay]


def boundary_effect(offsets: tuple[float, ...]) -> list[tuple[float, float, float, float, float]]:
    """Counts of the two windows around a boundary when one twitch ends ``offset`` s before it.

    The twitch: 0.2 s of 6 Hz at 0.3 g (Hann-windowed) on a still wrist without noise.
    Returns (offset, offline before, offline after, streaming before, streaming after).
    """
    times = _times(120.0)
    boundary = 60.0
    rows = []
    for offset in offsets:
        z = np.full(len(times), -0.8)
        start = boundary - offset - 0.2
        inside = (times >= start) & (times < start + 0.2)
        phase = (times[inside] - start) / 0.2
        z[inside] += (
            0.3 * np.sin(np.pi * phase) ** 2 * np.sin(2 * np.pi * 6.0 * (times[inside] - start))
        )
        count_times, offline, live = paired_counts(z, passes=2)
        k = int(np.flatnonzero(count_times == boundary)[0])
        rows.append((offset, offline[k - 1], offline[k], live[k - 1], live[k]))
    return rows


def _fmt(value: float, digits: int = 2) -> str:
    return "n/a" if np.isnan(value) else f"{value:.{digits}f}"


Results = dict[str, dict[int, dict[str, float]]]


def agreement_results() -> Results:
    """Agreement rows per signal kind and number of passes."""
    return {kind.name: {passes: agreement_row(kind, passes) for passes in (2, 1)} for kind in KINDS}


def agreement_tables(results: Results) -> list[str]:
    lines = []
    for kind in KINDS:
        lines += [
            f"### {kind.name}",
            "",
            f"{kind.description}; {len(SEEDS)} signals of {kind.minutes:g} min.",
            "",
            "| passes | windows | mean count offline / streaming | mean abs. diff | correlation "
            "| both zero | both nonzero | only offline | only streaming | 30 s epochs with counts "
            "| epoch rel. diff median / p95 | total rel. diff |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for passes, r in results[kind.name].items():
            lines.append(
                f"| {passes}{' (default)' if passes == 2 else ''} | {r['windows']:.0f} "
                f"| {r['mean_offline']:.1f} / {r['mean_live']:.1f} | {r['mad']:.2f} "
                f"| {_fmt(r['corr'], 3)} | {r['both_zero']:.3f} | {r['both_nonzero']:.3f} "
                f"| {r['only_offline']:.3f} | {r['only_live']:.3f} | {r['active_epochs']:.0f} "
                f"| {_fmt(100 * r['epoch_rel_median'], 0)} % / {_fmt(100 * r['epoch_rel_p95'], 0)} % "
                f"| {100 * r['total_rel']:+.1f} % |"
            )
        lines.append("")
    return lines


def meaning(results: Results) -> list[str]:
    """The paragraphs on what the differences mean, with the figures of this run."""
    twitch, turn = results["twitches"][2], results["turning over"][2]
    walk, night = results["walking"][2], results["night mix"][2]
    changed = night["only_offline"] + night["only_live"]
    moving = [kind.name for kind in KINDS if kind.name != "rest"]
    closer_one = [name for name in moving if results[name][1]["mad"] < results[name][2]["mad"]]

    def span(passes: int) -> str:
        totals = [100 * results[name][passes]["total_rel"] for name in moving]
        return f"{min(totals):+.0f} to {max(totals):+.0f} %"

    one_totals, two_totals = span(1), span(2)
    return [
        "Where the signal is still or a steady in-band oscillation, the two pipelines give the "
        "same counts (rest: all zero in both; a pure 3.5-9 Hz sine: identical, checked in "
        "`tests/test_live_counts.py`). They differ on transients and on waveforms made of "
        "several harmonics, because a causal filter cannot keep the phase: it spreads a short "
        "burst over time, which mostly lowers its peak, and it delays harmonics by different "
        "amounts, which changes the height of their sum. So streaming counts of isolated twitches are lower "
        f"({100 * twitch['total_rel']:+.0f} % in total; mean absolute difference "
        f"{twitch['mad']:.2f} per window, about a third of one quantisation step of 3.07), "
        f"turning over agrees closely (correlation {turn['corr']:.2f}, "
        f"{100 * turn['total_rel']:+.0f} % in total) and walking keeps its level "
        f"({100 * walk['total_rel']:+.0f} %) but varies by about "
        f"{100 * walk['epoch_rel_median']:.0f} % per epoch (its correlation is meaningless: "
        "the offline counts of steady walking hardly vary). On the generated night, "
        f"{100 * changed:.1f} % of windows are zero in one pipeline and not in the other: small "
        "twitches whose few counts sit at the quantisation threshold (a window needs a sum of "
        "per-second bins above 18). One pass has half the delay and distorts the phase less: "
        "its per-window difference is the smaller one on "
        f"{', '.join(closer_one) or 'no signal type'}. But it passes more at the band edges, "
        f"so it counts more than the offline pipeline on every moving signal ({one_totals} in "
        f"total), while two passes, with the offline magnitude response, err both ways "
        f"({two_totals}). Neither is uniformly closer; the default is two passes.",
        "",
        "For the model: the authors' `counts/` files, which the model is trained on when the "
        "raw `motion/` files are absent, come from the offline pipeline, while a live detector "
        "sees streaming counts. In those files 96 % of the 15 s windows are zero and the median "
        "of the others is 34, so most of what the model reads is rest (identical in both) or "
        "clear movement (close in both). The shift is one-sided for light activity: the low "
        "counts of twitches during sleep come out somewhat lower and now and then move to the "
        "next 15 s window (0.2 s of group delay, see the boundary table above). Features that sum counts "
        "over minutes are barely affected; a rule that reacts to single low counts can move. "
        "When `motion/` is available, train on "
        "`counts_streaming` output so training and live use the same pipeline; when only "
        "`counts/` is, evaluate the trained model on streaming counts of generated or recorded "
        "raw motion before trusting its low-activity behaviour. If the phase difference ever "
        "matters more, a linear-phase FIR with the zero-phase magnitude response (the "
        "forward-backward impulse response, truncated) keeps waveform shapes at the cost of "
        "about one second of extra latency.",
    ]


def boundary_table() -> list[str]:
    lines = [
        "| twitch ends before the boundary | offline: window before / after "
        "| streaming: window before / after |",
        "|---|---|---|",
    ]
    for offset, off_before, off_after, live_before, live_after in boundary_effect(
        (1.0, 0.5, 0.3, 0.2, 0.1, 0.05, 0.0, -0.1)
    ):
        lines.append(
            f"| {offset:+.2f} s | {off_before:.1f} / {off_after:.1f} "
            f"| {live_before:.1f} / {live_after:.1f} |"
        )
    return lines


def plot_stretch(path: Path) -> None:
    """z and both count series over 10 minutes of the night mix with twitches and turns."""
    z = night_signal(3600.0, seed=SEEDS[0])
    count_times, offline, live = paired_counts(z, passes=2)
    start, stop = 1200.0, 1800.0
    times = _times(len(z) / SAMPLE_RATE)
    shown = (times >= start) & (times < stop)
    windows = (count_times >= start) & (count_times < stop)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 5.5), sharex=True)
    top.plot(times[shown] / 60, z[shown], lw=0.5, color="0.3")
    top.set_ylabel("z (g)")
    top.set_title("Generated night: rest, twitches, turning over (50 Hz)")
    for series, label, style in (
        (offline, "offline (forward-backward, published)", {"color": "C0", "lw": 2.0}),
        (live, "streaming (2 forward passes, causal)", {"color": "C3", "lw": 1.0, "ls": "--"}),
    ):
        edges = np.append(count_times[windows], count_times[windows][-1] + COUNT_SECONDS)
        bottom.stairs(series[windows], edges / 60, label=label, **style)
    bottom.set_ylabel("count per 15 s")
    bottom.set_xlabel("time (min)")
    bottom.legend(loc="upper center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_agreement(doc: Path, figure: Path) -> None:
    results = agreement_results()
    hz = (4.0, 6.0, 8.0)
    one, two = group_delay_ms(1, hz), group_delay_ms(2, hz)
    delays = ", ".join(f"{d2:.0f} ms at {f:g} Hz" for f, d2 in zip(hz, two, strict=True))
    single = ", ".join(f"{d1:.0f} ms" for d1 in one)
    text = [
        "# Streaming activity counts against the published offline counts",
        "",
        "`sleepstream.signal.live_counts.StreamingCounts` computes activity counts causally: the "
        "3-11 Hz Butterworth band-pass runs forward twice instead of forward and backward. The "
        "magnitude response is the same; the phase is not: the output lags the input by "
        f"{delays} (one pass: {single}). This page measures what that does to the counts, window "
        "by window, on generated wrist signals (the sleep-accel folder has no raw acceleration, "
        "so the authors' own counts cannot be recomputed here). Windows are the same 15 s "
        "windows in both pipelines (origin at the first sample, regular 50 Hz samples).",
        "",
        "Regenerate this page and the figure with:",
        "",
        "```bash",
        "python benchmarks/bench_counts.py --agreement",
        "```",
        "",
        "Columns: fraction of 15 s windows where both pipelines give zero, both give a count, or "
        "only one does; *epoch rel. diff* is |streaming - offline| / offline of the sum over a "
        "30 s epoch (two windows), over the epochs where the offline sum is above zero; *total "
        "rel. diff* is the signed difference of the sums over all windows. One pass (`passes=1`) "
        "is shown for comparison: its gain is the square root of the zero-phase gain.",
        "",
        "## Per signal type",
        "",
        *agreement_tables(results),
        "## A twitch at a window boundary",
        "",
        "One 0.2 s, 6 Hz, 0.3 g twitch on a still, noiseless wrist, ending at a given time before "
        "the boundary between two windows (negative: after it). The zero-phase filter spreads "
        "the burst a little both ways; the causal one shifts it later, so a twitch that ends "
        "just before a boundary moves partly or wholly into the next window.",
        "",
        *boundary_table(),
        "",
        "![offline and streaming counts](counts-agreement.png)",
        "",
        "## Live behaviour",
        "",
        "The count of the window [t, t + 15 s) is returned as soon as a sample at or after its "
        "last grid point (t + 14.98 s) arrives: the causal filter needs no look-ahead. Input at "
        "10-100 Hz, with jitter, is interpolated onto the 50 Hz grid as offline. A gap longer "
        "than `max_gap` (1 s by default) restarts the filter, and every window the gap touches "
        "has no count: it is missing (absent from the output), not zero.",
        "",
        "## What it means for the model",
        "",
        *meaning(results),
        "",
    ]
    doc.write_text("\n".join(text))
    plot_stretch(figure)


# --- throughput --------------------------------------------------------------------------------


def bench_throughput() -> None:
    seconds = 3 * 3600.0
    times = _times(seconds)
    z = night_signal(seconds, seed=0)
    # CPU time of this process, not wall time: on a shared machine it still measures one core.
    print("ingest throughput, 1 thread, 50 Hz input, per second of CPU time (best of 3):")
    for chunk in CHUNK_SIZES:
        n = min(len(times), 30_000 if chunk == 1 else 500_000 if chunk < 1500 else len(times))
        best = 0.0
        for _ in range(3):
            stream = StreamingCounts(origin=0.0)
            start = time.process_time()
            for i in range(0, n, chunk):
                stream.update(times[i : i + chunk], z[i : i + chunk])
            best = max(best, n / (time.process_time() - start))
        print(
            f"  chunk {chunk:>6}: {best / 1e6:6.2f} M samples/s "
            f"({1e6 * chunk / best:8.1f} us per chunk, {best / SAMPLE_RATE:,.0f}x real time)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--agreement", action="store_true", help="also rewrite docs/counts-agreement.md and .png"
    )
    args = parser.parse_args()
    print(
        f"# {platform.platform()}, {os.cpu_count()} cores, numpy {np.__version__}, "
        f"scipy {scipy.__version__}"
    )
    with threadpool_limits(limits=1):
        bench_throughput()
        if args.agreement:
            write_agreement(DOC, FIGURE)
            print(f"wrote {DOC.relative_to(ROOT)} and {FIGURE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
