"""``sleepstream replay``: a night of the data folder or a user's files through the detector."""

from __future__ import annotations

import argparse
from pathlib import Path

from sleepstream.commands import DATA_HELP, Subparsers, add_night_source, user_recording
from sleepstream.paths import check_output_file

FIGURE_SUFFIXES = (".png", ".pdf", ".svg")
"""File endings ``replay --out`` accepts (matplotlib picks the format from it)."""


def add_parser(commands: Subparsers) -> argparse.ArgumentParser:
    p = commands.add_parser("replay", help="play a night through the live detector")
    add_night_source(p)
    p.add_argument(
        "--timezone",
        metavar="ZONE",
        help="IANA time zone (e.g. Europe/Berlin) for the clock times shown, and of ISO-8601 "
        "times without an offset in the files (default: show UTC; such times refused)",
    )
    p.add_argument(
        "--history",
        type=float,
        default=1.0,
        metavar="HOURS",
        help="with --subject: hours of the watch's data before the PSG start to feed (default 1)",
    )
    p.add_argument("--speed", type=float, default=0.0, help="x real time; 0 = at once")
    p.add_argument("--model", help="a checkpoint (.ckpt) or ONNX model (default: shipped)")
    p.add_argument("--threshold", type=float, help="p(sleep) threshold (default: WASA93)")
    p.add_argument("--out", help="PNG, PDF or SVG path (default: replay_<subject>.png)")
    p.add_argument("--data", help=DATA_HELP)
    p.set_defaults(run=replay)
    return p


def replay(a: argparse.Namespace) -> int:
    from sleepstream.data.times import TimeFormat

    TimeFormat(a.time_unit, a.timezone)  # both checked before any work
    if a.subject and a.time_unit:
        raise ValueError("--time-unit is for --heart-rate files; the data folder's are seconds")
    name = a.subject or Path(a.heart_rate).stem
    out = check_output_file(a.out or f"replay_{name}.png", "--out file", FIGURE_SUFFIXES)
    from sleepstream.data.folder import data_folder, load_recording
    from sleepstream.live.replay import replay_to_plot
    from sleepstream.logs import console

    if a.subject:
        night = load_recording(data_folder(a.data), a.subject, with_accel=True)
        recording = night.switched_on_before(a.history * 3600.0)
    else:
        recording = user_recording(a)
    results = replay_to_plot(
        recording,
        out,
        console,
        model=a.model,
        threshold="wasa93" if a.threshold is None else a.threshold,
        speed=a.speed,
        transient=a.quiet,
        timezone=a.timezone or "UTC",
    )
    events = sum(len(r.events) for r in results)
    print(f"{len(results)} epochs, {events} events; plot in {out}")
    return 0
