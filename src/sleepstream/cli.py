"""The ``sleepstream`` command.

::

    sleepstream data fetch [--dest DIR] [--base-url URL]  download and verify the PhysioNet record
    sleepstream data check [DIR]                          per subject: files, time spans, gaps
    sleepstream baselines --out DIR [--docs FILE]         LOSO report of the baselines
    sleepstream fit|validate|test|predict -c CONFIG       LightningCLI (training and checks)
    sleepstream cv -c CONFIG --out DIR [--seeds 0 1 2]    LOSO of a model beside the baselines
    sleepstream report --out DIR                          rebuild a cv report from its predictions
    sleepstream ship -c CONFIG --loso DIR                 train on all nights, save with LOSO card
    sleepstream replay --subject ID [--history H]         a night through the live detector
    sleepstream replay --heart-rate F --motion F|--counts F [--labels F] [--timezone ZONE]
                       [--time-unit s|ms|us]              a user's own files through it
    sleepstream export [--ckpt PATH] --out DIR            ONNX + Core ML of the one-epoch step
    sleepstream serve [--host H] [--port N] [--db FILE | --redis URL]   the API for many watches
    sleepstream simulate --subject ID [--url URL] [--speed N]   a night into a server, its events

Every output path (``--out``, ``--docs``, ``--dest``) is checked before any work starts
(:mod:`sleepstream.paths`), and every file is written whole or not at all.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from sleepstream.paths import atomic_path, check_output_dir, check_output_file, write_atomic

log = logging.getLogger("sleepstream")
console = Console(stderr=True)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )


PATH_ARGS = ("motion", "counts", "labels")
"""The optional input files of ``replay --heart-rate``."""

FIGURE_SUFFIXES = (".png", ".pdf", ".svg")
"""File endings ``replay --out`` accepts (matplotlib picks the format from it)."""


def _check_docs(docs: str | None) -> None:
    """``--docs FILE`` is written along with ``figures/`` beside it: check both."""
    if docs:
        path = check_output_file(docs, "--docs file")
        check_output_dir(path.parent / "figures", "--docs figures folder")


def _data_fetch(args: argparse.Namespace) -> int:
    from sleepstream.data.download import default_data_dir, fetch

    dest = check_output_dir(args.dest if args.dest else default_data_dir(), "--dest folder")
    include = [f"{name.rstrip('/')}/" for name in args.only] if args.only else None
    summary = fetch(dest, args.base_url, include=include, progress=not args.quiet)
    console.print(
        f"{dest}: {len(summary.downloaded)} files downloaded ({summary.bytes / 1e6:.1f} MB), "
        f"{len(summary.skipped)} already present and verified"
    )
    return 0


def _data_check(args: argparse.Namespace) -> int:
    from sleepstream.data.check import check_folder, check_table
    from sleepstream.data.folder import data_folder

    folder = data_folder(args.folder)
    result = check_folder(folder)
    out = Console()
    out.print(check_table(result))
    for problem in result.problems:
        out.print(f"[red]{escape(problem)}", highlight=False, soft_wrap=True)
    return 0 if result.ok else 1


def _baselines(args: argparse.Namespace) -> int:
    out = check_output_dir(args.out)
    _check_docs(args.docs)

    from sleepstream.data.folder import load_all
    from sleepstream.evaluation.cv import run_baselines, save_predictions

    start = time.perf_counter()
    recordings = load_all(args.data)
    save_predictions(run_baselines(recordings, progress=not args.quiet), out)
    log.info("%d nights in %.0f s", len(recordings), time.perf_counter() - start)
    return _write_report(out, args.docs)


def _cv(args: argparse.Namespace) -> int:
    out = check_output_dir(args.out)
    _check_docs(args.docs)

    import torch

    from sleepstream.data.folder import load_all
    from sleepstream.evaluation.cv import run_baselines, run_models, save_predictions

    start = time.perf_counter()
    torch.set_num_threads(1 if args.jobs > 1 else torch.get_num_threads())
    recordings = load_all(args.data)
    folds = args.folds.split(",") if args.folds else None
    configs = [args.config, *(args.compare or [])]
    results = run_models(
        configs,
        recordings,
        args.seeds,
        overrides=args.overrides,
        folds=folds,
        n_jobs=args.jobs,
        progress=not args.quiet,
    )
    if not args.no_baselines:
        results += run_baselines(recordings, folds=folds, progress=not args.quiet)
    save_predictions(results, out)
    console.print(f"Predictions in {out / 'predictions'} ({time.perf_counter() - start:.0f} s)")
    return _write_report(out, args.docs)


def _write_report(out: Path, docs: str | None) -> int:
    from sleepstream.evaluation.cv import load_predictions
    from sleepstream.evaluation.report import update_docs, write_report

    write_report(load_predictions(out), out)
    if docs:
        update_docs(out / "results.md", Path(docs))
    console.print(f"Report in {out}")
    return 0


def _report(args: argparse.Namespace) -> int:
    out = check_output_dir(args.out)
    _check_docs(args.docs)
    return _write_report(out, args.docs)


def _ship(args: argparse.Namespace) -> int:
    out = check_output_dir(args.out)

    import json

    from sleepstream.data.folder import load_all
    from sleepstream.models.shipped import ship_model

    loso = Path(args.loso)
    metrics_path = loso / "metrics.json"
    if not metrics_path.exists():
        raise FileNotFoundError(
            f"{metrics_path} not found: run `sleepstream cv -c {args.config} --out {loso}` first"
        )
    metrics = json.loads(metrics_path.read_text())
    weights, meta = ship_model(
        Path(args.config), load_all(args.data), loso, metrics, out, args.overrides
    )
    console.print(f"Saved {weights} and {meta}")
    return 0


def _replay(args: argparse.Namespace) -> int:
    from sleepstream.data.times import TimeFormat, time_zone

    TimeFormat(args.time_unit, args.timezone)  # both checked before any work
    zone = time_zone(args.timezone or "UTC")
    if args.subject and args.time_unit:
        raise ValueError("--time-unit is for --heart-rate files; the data folder's are seconds")
    name = args.subject or Path(args.heart_rate).stem
    out = check_output_file(args.out or f"replay_{name}.png", "--out file", FIGURE_SUFFIXES)

    from sleepstream.data.folder import data_folder, load_recording
    from sleepstream.data.parse import read_user_recording
    from sleepstream.live.detector import SleepDetector
    from sleepstream.live.replay import load_step_model, plot_replay, replay_live

    if args.subject:
        night = load_recording(data_folder(args.data), args.subject, with_accel=True)
        recording = night.switched_on_before(args.history * 3600.0)
    else:
        optional = {k: Path(getattr(args, k)) if getattr(args, k) else None for k in PATH_ARGS}
        recording = read_user_recording(
            Path(args.heart_rate),
            optional["motion"],
            optional["counts"],
            optional["labels"],
            time_unit=args.time_unit,
            timezone=args.timezone,
        )
    threshold = args.threshold if args.threshold is not None else "wasa93"
    detector = SleepDetector(load_step_model(args.model), threshold=threshold, timezone=zone.key)
    results = replay_live(
        recording, detector, console, speed=args.speed, transient=args.quiet, timezone=zone
    )
    with atomic_path(out) as partial:
        plot_replay(recording, results, detector.threshold, partial, timezone=zone)
    events = sum(len(r.events) for r in results)
    console.print(f"{len(results)} epochs, {events} events; plot in {out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    out = check_output_dir(args.out)

    import json

    from sleepstream.data.folder import data_folder, load_recording
    from sleepstream.export import export_all
    from sleepstream.models.module import net_from_checkpoint
    from sleepstream.models.shipped import load_shipped, thresholds_from_loso

    if args.ckpt:
        net = net_from_checkpoint(args.ckpt)
        thresholds = thresholds_from_loso([Path(args.thresholds)]) if args.thresholds else {}
    else:
        shipped = load_shipped()
        net, thresholds = shipped.net, shipped.card.thresholds
    recording = load_recording(data_folder(args.data), args.subject) if args.subject else None
    summary = export_all(
        net,
        thresholds,
        out,
        recording,
        precision=args.precision,
        metadata_extra={},
    )
    write_atomic(out / "export_summary.json", json.dumps(summary, indent=2) + "\n")
    console.print_json(json.dumps(summary))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from sleepstream.serve.app import run
    from sleepstream.serve.limits import RateLimits

    if args.db is not None and args.redis is not None:
        raise ValueError("serve: --db and --redis name two stores; give one")
    rates = RateLimits(args.rate, args.burst, args.register_rate, args.register_burst)
    return run(args.host, args.port, args.db or DEFAULT_DB, args.redis, rates)


def _simulate(args: argparse.Namespace) -> int:
    from sleepstream.serve.simulate import run

    a = args
    return run(a.url, a.subject, a.speed, a.start, a.batch_seconds, a.hours, a.timezone, a.data)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sleepstream", description="Real-time sleep detection from Apple Watch sensors."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    commands = parser.add_subparsers(dest="command", required=True)

    for name in LIGHTNING_COMMANDS:  # dispatched to LightningCLI by main(); listed for --help
        commands.add_parser(name, help=f"LightningCLI {name} (sleepstream {name} -c CONFIG)")
    data = commands.add_parser("data", help="download or inspect the sleep-accel data")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    fetch = data_commands.add_parser("fetch", help="download the PhysioNet record, verified")
    fetch.add_argument("--dest", help="target folder (default: $SLEEPSTREAM_DATA or user cache)")
    fetch.add_argument("--base-url", help="mirror of the PhysioNet record (with SHA256SUMS.txt)")
    fetch.add_argument(
        "--only", nargs="+", metavar="FOLDER", help="only these folders, e.g. labels heart_rate"
    )
    fetch.set_defaults(run=_data_fetch)
    check = data_commands.add_parser("check", help="per subject: files, time spans and gaps")
    check.add_argument("folder", nargs="?", help="data folder (default: $SLEEPSTREAM_DATA)")
    check.set_defaults(run=_data_check)

    baselines = commands.add_parser("baselines", help="leave-one-subject-out report of baselines")
    baselines.add_argument("--out", default="reports/baselines", help="report folder")
    baselines.add_argument("--data", help="data folder (default: $SLEEPSTREAM_DATA)")
    baselines.add_argument("--docs", help="also copy the markdown table here")
    baselines.set_defaults(run=_baselines)

    cv = commands.add_parser("cv", help="leave-one-subject-out of a model config")
    cv.add_argument("-c", "--config", required=True, help="LightningCLI YAML")
    cv.add_argument("--out", required=True, help="report folder")
    cv.add_argument("--compare", nargs="+", metavar="CONFIG", help="more configs in the table")
    cv.add_argument("--folds", help="comma-separated held-out subjects (default: all)")
    cv.add_argument("--jobs", type=int, default=2, help="folds trained in parallel")
    cv.add_argument("--data", help="data folder (default: $SLEEPSTREAM_DATA)")
    cv.add_argument("--docs", help="also copy the markdown table here")
    cv.add_argument("--no-baselines", action="store_true", help="leave the baselines out")
    cv.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="one LOSO per seed (default 0 1 2)"
    )
    cv.add_argument(
        "overrides",
        nargs="*",
        help="LightningCLI overrides after --, e.g. -- --trainer.max_epochs 5",
    )
    cv.set_defaults(run=_cv)

    report = commands.add_parser("report", help="rebuild a cv report from its saved predictions")
    report.add_argument("--out", required=True, help="report folder of `cv` (with predictions/)")
    report.add_argument("--docs", help="also copy the markdown table here")
    report.set_defaults(run=_report)

    ship = commands.add_parser("ship", help="train on all nights and save the shipped model")
    ship.add_argument("-c", "--config", required=True, help="LightningCLI YAML")
    ship.add_argument("--loso", required=True, help="report folder of `cv` with this config")
    ship.add_argument("--out", default="src/sleepstream/shipped", help="where to save it")
    ship.add_argument("--data", help="data folder (default: $SLEEPSTREAM_DATA)")
    ship.add_argument("overrides", nargs="*", help="LightningCLI overrides after --")
    ship.set_defaults(run=_ship)

    rep = commands.add_parser("replay", help="play a night through the live detector")
    source = rep.add_mutually_exclusive_group(required=True)
    source.add_argument("--subject", help="a subject of the data folder")
    source.add_argument(
        "--heart-rate", help="a user's heart-rate file (time,bpm; time: see --time-unit)"
    )
    rep.add_argument("--motion", help="with --heart-rate: raw acceleration (time x y z, g)")
    rep.add_argument("--counts", help="with --heart-rate: activity counts (time,count)")
    rep.add_argument("--labels", help="with --heart-rate: PSG labels (time stage)")
    rep.add_argument(
        "--time-unit",
        metavar="UNIT",
        help="unit of numeric times in the files: s, ms or us (default: seconds, relative or "
        "since 1970; files that look like ms or us are refused). ISO-8601 times with a UTC "
        "offset (2026-03-29T01:59:30+01:00) are read as they are",
    )
    rep.add_argument(
        "--timezone",
        metavar="ZONE",
        help="IANA time zone (e.g. Europe/Berlin) for the clock times shown, and of ISO-8601 "
        "times without an offset in the files (default: show UTC; such times refused)",
    )
    rep.add_argument(
        "--history",
        type=float,
        default=1.0,
        help="with --subject: hours of the watch's data before the PSG start to feed (default 1)",
    )
    rep.add_argument("--speed", type=float, default=0.0, help="x real time; 0 = at once")
    rep.add_argument("--model", help="a checkpoint (.ckpt) or ONNX model (default: shipped)")
    rep.add_argument("--threshold", type=float, help="p(sleep) threshold (default: WASA93)")
    rep.add_argument("--out", help="PNG, PDF or SVG path (default: replay_<subject>.png)")
    rep.add_argument("--data", help="data folder (default: $SLEEPSTREAM_DATA)")
    rep.set_defaults(run=_replay)

    exp = commands.add_parser("export", help="ONNX and Core ML of the one-epoch step, checked")
    exp.add_argument("--ckpt", help="a training checkpoint (default: the shipped model)")
    exp.add_argument(
        "--thresholds", help="with --ckpt: a `cv` predictions .npz to choose thresholds on"
    )
    exp.add_argument("--out", required=True, help="output folder")
    exp.add_argument("--subject", default="46343", help="real night for parity and test vectors")
    exp.add_argument("--precision", choices=["float32", "float16"], default="float32")
    exp.add_argument("--data", help="data folder (default: $SLEEPSTREAM_DATA)")
    exp.set_defaults(run=_export)

    serve = commands.add_parser("serve", help="the API for many watches (docs at /docs)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--db", help=f"SQLite store, made if new (default {DEFAULT_DB})")
    serve.add_argument(
        "--redis", metavar="URL", help="store in this Redis, shared with other serve processes"
    )
    serve.add_argument(
        "--rate",
        type=float,
        default=300.0,
        help="requests a minute per token (default 300; 0: none)",
    )
    serve.add_argument("--burst", type=int, default=100, help="requests at once per token (100)")
    serve.add_argument(
        "--register-rate",
        type=float,
        default=30.0,
        help="registrations a minute per client address (default 30; 0: none)",
    )
    serve.add_argument(
        "--register-burst", type=int, default=30, help="registrations at once per address (30)"
    )
    serve.set_defaults(run=_serve)
    sim = commands.add_parser("simulate", help="replay a night into a server, print its events")
    sim.add_argument("--subject", required=True, help="subject ID of the night to replay")
    sim.add_argument("--url", default="http://127.0.0.1:8000", help="the server's base URL")
    sim.add_argument("--speed", type=float, default=60.0, help="times real time (60)")
    sim.add_argument("--start", type=float, help="Unix time of the night's start (default now)")
    sim.add_argument("--batch-seconds", type=float, default=30.0, help="seconds per batch (30)")
    sim.add_argument("--hours", type=float, help="replay only the night's first hours")
    sim.add_argument("--timezone", default="UTC", help="IANA zone of the printed times (UTC)")
    sim.add_argument("--data", help="data folder (default: $SLEEPSTREAM_DATA)")
    sim.set_defaults(run=_simulate)
    return parser


LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
DEFAULT_DB = "sleepstream.sqlite3"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sleepstream`` command.

    Exit codes: 0 done, 1 bad input or a failed check, 2 a file or folder that cannot be read or
    written, 3 any other error (one line; the traceback with ``--verbose``), 130 interrupted
    (Ctrl-C).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LIGHTNING_COMMANDS:
        from sleepstream.models.training import build_cli

        build_cli(argv)
        return 0
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        log.error("Interrupted")
        return 130
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        log.error("%s", _one_line(error))
        return 1
    except OSError as error:
        log.error("%s", _one_line(error))
        return 2
    except Exception as error:  # a library's own error type, or a bug: one line, unless -v
        if args.verbose:
            raise
        log.error(
            "%s: %s (run with --verbose for the traceback)", type(error).__name__, _one_line(error)
        )
        return 3


def _one_line(error: BaseException) -> str:
    """The message of ``error`` on one line (its type name when it has no message)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return "; ".join(lines) or type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
