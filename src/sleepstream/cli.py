"""The ``sleepstream`` command: arguments in, one library call per subcommand.

``sleepstream --help`` lists the subcommands, ``sleepstream COMMAND --help`` their options.
Results (tables, JSON, the paths written) go to stdout; logs, progress and the live view to
stderr. Every output path (``--out``, ``--docs``, ``--dest``) is checked before any work starts
(:mod:`sleepstream.paths`), and every file is written whole or not at all.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from sleepstream.logs import setup_logging
from sleepstream.paths import check_output_dir, check_output_file, write_atomic

log = logging.getLogger("sleepstream")
console = Console(stderr=True)
"""Logs, progress bars and the live replay view; results are printed to stdout."""

LIGHTNING_COMMANDS = {
    "fit": "train a model (LightningCLI: fit -c CONFIG)",
    "validate": "validation loss, AUROC and kappa (LightningCLI)",
    "test": "AUROC and kappa on --data.held_out (LightningCLI)",
    "predict": "p(sleep) per epoch of held-out nights (LightningCLI)",
}
"""The subcommands main() hands to LightningCLI, with their line in ``sleepstream --help``."""
DEFAULT_DB = "sleepstream.sqlite3"
FIGURE_SUFFIXES = (".png", ".pdf", ".svg")
"""File endings ``replay --out`` accepts (matplotlib picks the format from it)."""


def _optional_path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _data_fetch(a: argparse.Namespace) -> int:
    from sleepstream.data.download import default_data_dir, fetch

    dest = check_output_dir(a.dest or default_data_dir(), "--dest folder")
    include = [f"{name.rstrip('/')}/" for name in a.only] if a.only else None
    done = fetch(dest, a.base_url, include=include, progress=not a.quiet)
    print(
        f"{dest}: {len(done.downloaded)} files downloaded ({done.bytes / 1e6:.1f} MB), "
        f"{len(done.skipped)} already present and verified"
    )
    return 0


def _data_check(a: argparse.Namespace) -> int:
    from rich.markup import escape

    from sleepstream.data.check import check_folder, check_table
    from sleepstream.data.folder import data_folder

    result, out = check_folder(data_folder(a.folder)), Console()
    out.print(check_table(result))
    for problem in result.problems:
        out.print(f"[red]{escape(problem)}", highlight=False, soft_wrap=True)
    return 0 if result.ok else 1


def _outputs(a: argparse.Namespace) -> tuple[Path, Path | None]:
    """``--out`` and ``--docs`` (with its ``figures/``), checked before any work."""
    out = check_output_dir(a.out)
    from sleepstream.evaluation.report import check_docs_path

    return out, check_docs_path(a.docs) if a.docs else None


def _write_report(out: Path, docs: Path | None) -> int:
    from sleepstream.evaluation.report import report_predictions

    report_predictions(out, docs)
    print(f"Report in {out}")
    return 0


def _write_stage_report(out: Path, docs: Path | None) -> int:
    from sleepstream.evaluation.stage_report import report_stage_predictions

    report_stage_predictions(out, docs)
    print(f"Stage report in {out}")
    return 0


def _report(a: argparse.Namespace) -> int:
    out, docs = _outputs(a)
    from sleepstream.evaluation.stages import PREDICTIONS_FOLDER

    if not (out / PREDICTIONS_FOLDER).is_dir():
        return _write_report(out, docs)
    if (out / "predictions").is_dir():
        if docs:
            raise ValueError(f"--docs takes one report; {out} holds sleep/wake and stage ones")
        _write_report(out, None)
    return _write_stage_report(out, docs)


def _baselines(a: argparse.Namespace) -> int:
    out, docs = _outputs(a)
    stages = [task for task in dict.fromkeys(a.task) if task != "sleep_wake"]
    if docs and stages and "sleep_wake" in a.task:
        raise ValueError("--docs takes one report: run sleep_wake and the stage tasks apart")
    from sleepstream.data.folder import load_all
    from sleepstream.evaluation.cv import run_baselines
    from sleepstream.evaluation.predictions import save_predictions
    from sleepstream.evaluation.scenarios import SCENARIOS, scenario
    from sleepstream.evaluation.stages import (
        label_maps,
        run_stage_baselines,
        save_stage_predictions,
    )

    label_maps(stages)  # names checked before any work
    scenarios = [scenario(name) for name in a.scenarios] if a.scenarios else SCENARIOS
    folds = a.folds.split(",") if a.folds else None
    start, progress = time.perf_counter(), not a.quiet
    recordings = load_all(a.data)
    if "sleep_wake" in a.task:
        results = run_baselines(recordings, folds=folds, scenarios=scenarios, progress=progress)
        save_predictions(results, out)
        _write_report(out, docs)
    if stages:
        staged = run_stage_baselines(
            recordings, stages, folds=folds, scenarios=scenarios, progress=progress
        )
        save_stage_predictions(staged, out)
        _write_stage_report(out, docs)
    log.info("%d nights in %.0f s", len(recordings), time.perf_counter() - start)
    return 0


def _cv(a: argparse.Namespace) -> int:
    out, docs = _outputs(a)
    from sleepstream.data.folder import load_all
    from sleepstream.evaluation.cv import run_cv
    from sleepstream.evaluation.predictions import save_predictions

    start = time.perf_counter()
    results = run_cv(
        [a.config, *(a.compare or [])],
        load_all(a.data),
        a.seeds,
        overrides=a.overrides,
        folds=a.folds.split(",") if a.folds else None,
        n_jobs=a.jobs,
        baselines=not a.no_baselines,
        progress=not a.quiet,
    )
    saved = save_predictions(results, out)
    print(f"Predictions in {saved} ({time.perf_counter() - start:.0f} s)")
    return _write_report(out, docs)


def _ship(a: argparse.Namespace) -> int:
    out = check_output_dir(a.out)
    from sleepstream.data.folder import load_all
    from sleepstream.models.shipped import read_loso_metrics, ship_model

    config, loso = Path(a.config), Path(a.loso)
    metrics = read_loso_metrics(loso, config)  # before the nights load: fail fast
    weights, meta = ship_model(config, load_all(a.data), loso, metrics, out, a.overrides)
    print(f"Saved {weights} and {meta}")
    return 0


def _replay(a: argparse.Namespace) -> int:
    from sleepstream.data.times import TimeFormat

    TimeFormat(a.time_unit, a.timezone)  # both checked before any work
    if a.subject and a.time_unit:
        raise ValueError("--time-unit is for --heart-rate files; the data folder's are seconds")
    name = a.subject or Path(a.heart_rate).stem
    out = check_output_file(a.out or f"replay_{name}.png", "--out file", FIGURE_SUFFIXES)
    from sleepstream.data.folder import data_folder, load_recording
    from sleepstream.data.parse import read_user_recording
    from sleepstream.live.replay import replay_to_plot

    if a.subject:
        night = load_recording(data_folder(a.data), a.subject, with_accel=True)
        recording = night.switched_on_before(a.history * 3600.0)
    else:
        files = [_optional_path(f) for f in (a.motion, a.counts, a.labels)]
        recording = read_user_recording(
            Path(a.heart_rate), *files, time_unit=a.time_unit, timezone=a.timezone
        )
    threshold = "wasa93" if a.threshold is None else a.threshold
    results = replay_to_plot(
        recording,
        out,
        console,
        model=a.model,
        threshold=threshold,
        speed=a.speed,
        transient=a.quiet,
        timezone=a.timezone or "UTC",
    )
    events = sum(len(r.events) for r in results)
    print(f"{len(results)} epochs, {events} events; plot in {out}")
    return 0


def _export(a: argparse.Namespace) -> int:
    out = check_output_dir(a.out)
    from sleepstream.data.folder import data_folder, load_recording
    from sleepstream.export import export_all
    from sleepstream.models.shipped import net_and_thresholds

    net, thresholds = net_and_thresholds(_optional_path(a.ckpt), _optional_path(a.thresholds))
    recording = load_recording(data_folder(a.data), a.subject) if a.subject else None
    summary = export_all(net, thresholds, out, recording, precision=a.precision, metadata_extra={})
    text = json.dumps(summary, indent=2)
    write_atomic(out / "export_summary.json", text + "\n")
    print(text)
    return 0


def _serve(a: argparse.Namespace) -> int:
    from sleepstream.serve.app import run
    from sleepstream.serve.limits import RateLimits

    if a.db is not None and a.redis is not None:
        raise ValueError("serve: --db and --redis name two stores; give one")
    rates = RateLimits(a.rate, a.burst, a.register_rate, a.register_burst)
    return run(a.host, a.port, a.db or DEFAULT_DB, a.redis, rates)


def _simulate(a: argparse.Namespace) -> int:
    from sleepstream.serve.simulate import run

    return run(a.url, a.subject, a.speed, a.start, a.batch_seconds, a.hours, a.timezone, a.data)


DATA_HELP = "data folder (default: $SLEEPSTREAM_DATA)"
DOCS_HELP = "also copy the markdown table here"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sleepstream", description="Real-time sleep detection from Apple Watch sensors."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in LIGHTNING_COMMANDS.items():  # main() hands these to LightningCLI
        commands.add_parser(name, help=text)

    data = commands.add_parser("data", help="download or inspect the sleep-accel data")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    p = data_commands.add_parser("fetch", help="download the PhysioNet record, verified")
    p.add_argument("--dest", help="target folder (default: $SLEEPSTREAM_DATA or user cache)")
    p.add_argument("--base-url", help="mirror of the PhysioNet record (with SHA256SUMS.txt)")
    p.add_argument(
        "--only", nargs="+", metavar="FOLDER", help="only these folders, e.g. labels heart_rate"
    )
    p.set_defaults(run=_data_fetch)
    p = data_commands.add_parser("check", help="per subject: files, time spans and gaps")
    p.add_argument("folder", nargs="?", help=DATA_HELP)
    p.set_defaults(run=_data_check)

    p = commands.add_parser("baselines", help="leave-one-subject-out report of baselines")
    p.add_argument("--out", default="reports/baselines", help="report folder")
    p.add_argument("--data", help=DATA_HELP)
    p.add_argument("--docs", help=DOCS_HELP)
    p.add_argument(
        "--task",
        nargs="+",
        default=["sleep_wake"],
        help="sleep_wake (default; results.md) and/or the stages wake_nrem_rem, "
        "wake_light_deep_rem (stages.md)",
    )
    p.add_argument("--folds", help="comma-separated held-out subjects (default: all)")
    p.add_argument("--scenarios", nargs="+", help="start scenarios (default: all)")
    p.set_defaults(run=_baselines)

    p = commands.add_parser("cv", help="leave-one-subject-out of a model config")
    p.add_argument("-c", "--config", required=True, help="LightningCLI YAML")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--compare", nargs="+", metavar="CONFIG", help="more configs in the table")
    p.add_argument("--folds", help="comma-separated held-out subjects (default: all)")
    p.add_argument("--jobs", type=int, default=2, help="folds trained in parallel")
    p.add_argument("--data", help=DATA_HELP)
    p.add_argument("--docs", help=DOCS_HELP)
    p.add_argument("--no-baselines", action="store_true", help="leave the baselines out")
    p.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="one LOSO per seed (default 0 1 2)"
    )
    p.add_argument(
        "overrides",
        nargs="*",
        help="LightningCLI overrides after --, e.g. -- --trainer.max_epochs 5",
    )
    p.set_defaults(run=_cv)

    p = commands.add_parser("report", help="rebuild a cv report from its saved predictions")
    p.add_argument(
        "--out",
        required=True,
        help="report folder of `cv` or `baselines` (predictions/, stage_predictions/ or both)",
    )
    p.add_argument("--docs", help=DOCS_HELP)
    p.set_defaults(run=_report)

    p = commands.add_parser("ship", help="train on all nights and save the shipped model")
    p.add_argument("-c", "--config", required=True, help="LightningCLI YAML")
    p.add_argument("--loso", required=True, help="report folder of `cv` with this config")
    p.add_argument("--out", default="src/sleepstream/shipped", help="where to save it")
    p.add_argument("--data", help=DATA_HELP)
    p.add_argument("overrides", nargs="*", help="LightningCLI overrides after --")
    p.set_defaults(run=_ship)

    p = commands.add_parser("replay", help="play a night through the live detector")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--subject", help="a subject of the data folder")
    source.add_argument(
        "--heart-rate", help="a user's heart-rate file (time,bpm; time: see --time-unit)"
    )
    p.add_argument("--motion", help="with --heart-rate: raw acceleration (time x y z, g)")
    p.add_argument("--counts", help="with --heart-rate: activity counts (time,count)")
    p.add_argument("--labels", help="with --heart-rate: PSG labels (time stage)")
    p.add_argument(
        "--time-unit",
        metavar="UNIT",
        help="unit of numeric times in the files: s, ms or us (default: seconds, relative or "
        "since 1970; files that look like ms or us are refused). ISO-8601 times with a UTC "
        "offset (2026-03-29T01:59:30+01:00) are read as they are",
    )
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
        help="with --subject: hours of the watch's data before the PSG start to feed (default 1)",
    )
    p.add_argument("--speed", type=float, default=0.0, help="x real time; 0 = at once")
    p.add_argument("--model", help="a checkpoint (.ckpt) or ONNX model (default: shipped)")
    p.add_argument("--threshold", type=float, help="p(sleep) threshold (default: WASA93)")
    p.add_argument("--out", help="PNG, PDF or SVG path (default: replay_<subject>.png)")
    p.add_argument("--data", help=DATA_HELP)
    p.set_defaults(run=_replay)

    p = commands.add_parser("export", help="ONNX and Core ML of the one-epoch step, checked")
    p.add_argument("--ckpt", help="a training checkpoint (default: the shipped model)")
    p.add_argument(
        "--thresholds", help="with --ckpt: a `cv` predictions .npz to choose thresholds on"
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--subject", default="46343", help="real night for parity and test vectors")
    p.add_argument("--precision", choices=["float32", "float16"], default="float32")
    p.add_argument("--data", help=DATA_HELP)
    p.set_defaults(run=_export)

    _add_serve(commands)
    p = commands.add_parser("simulate", help="replay a night into a server, print its events")
    p.add_argument("--subject", required=True, help="subject ID of the night to replay")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the server's base URL")
    p.add_argument("--speed", type=float, default=60.0, help="times real time (60)")
    p.add_argument("--start", type=float, help="Unix time of the night's start (default now)")
    p.add_argument("--batch-seconds", type=float, default=30.0, help="seconds per batch (30)")
    p.add_argument("--hours", type=float, help="replay only the night's first hours")
    p.add_argument("--timezone", default="UTC", help="IANA zone of the printed times (UTC)")
    p.add_argument("--data", help=DATA_HELP)
    p.set_defaults(run=_simulate)
    return parser


def _add_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``serve``: the options of the service."""
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
    setup_logging(console, args.verbose)
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
