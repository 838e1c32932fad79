"""Command-line plumbing that is not covered with the commands themselves: output paths checked
before any work, one-line errors and exit codes, and files written whole or not at all."""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pytest
from rich.console import Console
from rich.progress import Progress

from sleepstream import paths
from sleepstream.cli import main
from sleepstream.evaluation.report import DOCS_MARKER, update_docs
from sleepstream.paths import atomic_file, check_output_dir, check_output_file, write_atomic


def test_update_docs_keeps_the_hand_written_part_and_copies_figures(tmp_path: Path) -> None:
    report = tmp_path / "report"
    report.mkdir()
    (report / "roc.png").write_bytes(b"png")
    (report / "results.md").write_text("# Results\n\n![roc](roc.png)\n")
    docs = tmp_path / "docs" / "results.md"
    docs.parent.mkdir()
    docs.write_text(f"old report\n\n{DOCS_MARKER}\n\nnotes by hand\n")
    update_docs(report / "results.md", docs)
    text = docs.read_text()
    assert "old report" not in text and "notes by hand" in text
    assert "![roc](figures/roc.png)" in text
    assert (docs.parent / "figures" / "roc.png").read_bytes() == b"png"


def test_missing_data_folder_is_a_clear_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert main(["data", "check", str(tmp_path)]) == 1
    assert "is not a sleep-accel data folder" in caplog.text


COMMANDS = ["fit", "validate", "test", "predict", "data", "baselines", "cv", "report", "ship"]
COMMANDS += ["export", "replay", "serve", "simulate"]


def test_help_lists_every_command_with_a_description(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # argparse sizes its help from the terminal; fixed at 80 columns whatever ran before.
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setattr(shutil, "get_terminal_size", lambda *_: os.terminal_size((80, 24)))
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    listed = re.findall(r"^ {4}([\w-]+) +(\S.*)$", text, flags=re.MULTILINE)
    names = [name for name, _ in listed]
    assert [name for name in names if name in COMMANDS] == COMMANDS  # and any added since
    assert all(len(description) > 10 for _, description in listed), listed
    commands = text.split("positional arguments:")[1].split("options:")[0]
    assert not re.search(r"^ {8,}\S", commands, flags=re.MULTILINE), "a description wraps"


def test_lightning_commands_show_the_models_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    """``fit --help`` is LightningCLI's, with the text of ``SleepWakeModule``'s docstring."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--model.wake_weight WAKE_WEIGHT Loss weight of wake epochs relative to sleep" in text


def test_report_without_predictions_says_what_to_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert main(["report", "--out", str(tmp_path)]) == 1
    assert "run `sleepstream cv" in caplog.text


# --- output paths are checked before any work --------------------------------------------------


def _no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every command fail loudly if it reaches data loading, training or reporting."""

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the command started working before checking its output path")

    from sleepstream.data import folder
    from sleepstream.evaluation import cv, report

    monkeypatch.setattr(folder, "load_all", forbidden)
    monkeypatch.setattr(folder, "load_recording", forbidden)
    monkeypatch.setattr(report, "load_predictions", forbidden)
    monkeypatch.setattr(cv, "run_baselines", forbidden)


def _one_error(caplog: pytest.LogCaptureFixture) -> str:
    """The single error logged by ``main``: one line, no traceback."""
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    message = errors[0].getMessage()
    assert "\n" not in message and errors[0].exc_info is None
    return message


# argv, the path the message must name, and what it must say; {file} is an existing file,
# {dir} an existing folder holding a file named "figures".
BAD_OUTPUTS = {
    "cv_out_is_file": (["cv", "-c", "m.yaml", "--out", "{file}"], "{file}", "is a file"),
    "baselines_out_is_file": (["baselines", "--out", "{file}"], "{file}", "is a file"),
    "report_out_is_file": (["report", "--out", "{file}"], "{file}", "is a file"),
    "ship_out_is_file": (
        ["ship", "-c", "m.yaml", "--loso", "{dir}", "--out", "{file}"],
        "{file}",
        "is a file",
    ),
    "export_out_is_file": (["export", "--out", "{file}"], "{file}", "is a file"),
    "fetch_dest_is_file": (["data", "fetch", "--dest", "{file}"], "{file}", "is a file"),
    "replay_out_is_folder": (
        ["replay", "--subject", "46343", "--out", "{dir}"],
        "{dir}",
        "is a folder: a file name is needed here",
    ),
    "replay_out_not_a_figure": (
        ["replay", "--subject", "46343", "--out", "{dir}/night.txt"],
        "{dir}/night.txt",
        "expected a name ending in .png or .pdf or .svg",
    ),
    "docs_is_folder": (
        ["report", "--out", "{dir}", "--docs", "{dir}"],
        "{dir}",
        "is a folder: a file name is needed here",
    ),
    "docs_figures_is_file": (
        ["baselines", "--out", "{dir}/new", "--docs", "{dir}/docs.md"],
        "{dir}/figures",
        "is a file: a folder is needed here",
    ),
    "cv_out_under_a_file": (
        ["cv", "-c", "m.yaml", "--out", "{file}/report"],
        "{file}/report",
        "cannot be created: {file} is a file, not a folder",
    ),
    "replay_out_under_a_file": (
        ["replay", "--subject", "46343", "--out", "{file}/night.png"],
        "{file}/night.png",
        "cannot be created: {file} is a file, not a folder",
    ),
    "docs_under_a_file": (
        ["cv", "-c", "m.yaml", "--out", "{dir}/r", "--docs", "{file}/results.md"],
        "{file}/results.md",
        "cannot be created: {file} is a file, not a folder",
    ),
}


@pytest.mark.parametrize(("argv", "named", "fragment"), BAD_OUTPUTS.values(), ids=BAD_OUTPUTS)
def test_bad_output_path_fails_at_once_in_one_line(
    argv: list[str],
    named: str,
    fragment: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _no_work(monkeypatch)
    paths = {"file": tmp_path / "taken", "dir": tmp_path / "folder"}
    paths["file"].write_text("not a folder\n")
    paths["dir"].mkdir()
    (paths["dir"] / "figures").write_text("a file where the figures folder goes\n")
    assert main([arg.format(**paths) for arg in argv]) == 2
    message = _one_error(caplog)
    assert re.search(re.escape(named.format(**paths)) + "[ :]", message), message
    assert fragment.format(**paths) in message, message
    assert _files(tmp_path) == ["folder/figures", "taken"]  # nothing created


def test_output_path_message_names_what_is_wrong(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _no_work(monkeypatch)
    a_file = tmp_path / "results"
    a_file.write_text("x")
    assert main(["report", "--out", str(a_file)]) == 2
    assert _one_error(caplog) == f"Output folder {a_file} is a file: a folder is needed here"


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="root writes into read-only folders; "
    "test_folder_that_refuses_new_files_fails_at_once simulates one",
)
def test_unwritable_output_folder_fails_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _no_work(monkeypatch)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(["report", "--out", str(locked)]) == 2
        assert f"Output folder {locked} is not writable" in _one_error(caplog)
        assert main(["baselines", "--out", str(locked / "new" / "report")]) == 2
        assert main(["replay", "--subject", "1", "--out", str(locked / "night.png")]) == 2
    finally:
        locked.chmod(0o700)


def test_folder_that_refuses_new_files_fails_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Runs as root too: the folder's refusal is simulated where the check tries it.
    _no_work(monkeypatch)

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(paths.tempfile, "NamedTemporaryFile", refuse)
    assert main(["cv", "-c", "m.yaml", "--out", str(tmp_path / "new" / "report")]) == 2
    expected = (
        f"Output folder {tmp_path / 'new' / 'report'} is not writable: cannot create a file in "
        f"{tmp_path} (Permission denied)"
    )
    assert _one_error(caplog) == expected


def test_checked_paths_accept_new_and_existing_outputs(tmp_path: Path) -> None:
    (tmp_path / "old.png").write_bytes(b"png")
    assert check_output_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert check_output_dir(tmp_path) == tmp_path
    assert check_output_file(tmp_path / "old.png", suffixes=(".png",)) == tmp_path / "old.png"
    assert check_output_file(tmp_path / "new" / "x.PNG", suffixes=(".png",))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.png"]  # nothing left behind


# --- errors inside a command: one line; Ctrl-C: 130 ---------------------------------------------


def _inside_progress(error: BaseException) -> Callable[[Path], None]:
    """A stand-in for ``load_predictions`` that raises ``error`` inside a rich progress bar."""

    def load_predictions(out: Path) -> None:
        with Progress(console=Console(file=io.StringIO())) as bar:
            task = bar.add_task("working", total=2)
            bar.advance(task)
            raise error

    return load_predictions


@pytest.mark.parametrize(
    ("error", "code", "expected"),
    [
        (KeyboardInterrupt(), 130, "Interrupted"),
        (PermissionError(13, "Permission denied", "/no/access.npz"), 2, "/no/access.npz"),
        (OSError(28, "No space left on device"), 2, "No space left on device"),
        (FileNotFoundError("predictions/ not found"), 1, "predictions/ not found"),
        (ValueError("first line\n  second line\n"), 1, "first line; second line"),
    ],
    ids=["ctrl_c", "permission", "disk_full", "not_found", "multi_line"],
)
def test_errors_raised_inside_a_progress_bar_are_one_line(
    error: BaseException,
    code: int,
    expected: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from sleepstream.evaluation import report

    monkeypatch.setattr(report, "load_predictions", _inside_progress(error))
    assert main(["report", "--out", str(tmp_path)]) == code
    assert expected in _one_error(caplog)
    assert "Traceback" not in capsys.readouterr().err


def test_any_other_error_is_one_line_with_exit_code_3(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A library's own exception type (here a damaged model file's) is neither a traceback nor
    silent; ``--verbose`` shows the traceback."""
    import zipfile

    from sleepstream.evaluation import report

    monkeypatch.setattr(report, "load_predictions", _inside_progress(zipfile.BadZipFile("bad CRC")))
    assert main(["report", "--out", str(tmp_path)]) == 3
    assert _one_error(caplog) == "BadZipFile: bad CRC (run with --verbose for the traceback)"
    assert "Traceback" not in capsys.readouterr().err
    with pytest.raises(zipfile.BadZipFile):
        main(["--verbose", "report", "--out", str(tmp_path)])


def test_binary_input_file_is_one_line_naming_the_byte(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    heart_rate = tmp_path / "night_heartrate.txt"
    heart_rate.write_bytes(b"0,60\n5,61\n\x00\x9c\xffbinary")
    counts = tmp_path / "counts.txt"
    counts.write_text("0,1\n15,2\n")
    argv = ["replay", "--heart-rate", str(heart_rate), "--counts", str(counts)]
    assert main([*argv, "--out", str(tmp_path / "night.png")]) == 1
    message = _one_error(caplog)
    assert message.startswith(f"{heart_rate}, line 3: not UTF-8 text: byte 0x9c at byte offset 11")


# --- times in a user's files ----------------------------------------------------------------

EVENING = 1774731600.0
"""2026-03-28 21:00 UTC."""


def _user_files(folder: Path, times: np.ndarray, fmt: str = "{:.3f}") -> list[str]:
    """``--heart-rate`` (every 5 s) and ``--counts`` (every 15 s) arguments over ``times``,
    which hold every 5 s; times written with ``fmt``."""
    hr, counts = folder / "hr.csv", folder / "counts.csv"
    hr.write_text("".join(f"{fmt.format(t)},{60 + i % 7}\n" for i, t in enumerate(times)))
    counts.write_text("".join(f"{fmt.format(t)},{i % 4}\n" for i, t in enumerate(times[::3])))
    return ["replay", "--heart-rate", str(hr), "--counts", str(counts)]


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--timezone", "Europe/Berln"], "Unknown time zone 'Europe/Berln'"),
        (["--timezone", "../../etc/passwd"], "Unknown time zone '../../etc/passwd'"),
        (["--time-unit", "sec"], "Unknown time unit 'sec'"),
        (["--subject", "46343", "--time-unit", "ms"], "--time-unit is for --heart-rate files"),
    ],
)
def test_replay_checks_time_zone_and_unit_before_any_work(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    option: list[str],
    message: str,
) -> None:
    _no_work(monkeypatch)
    missing = str(tmp_path / "missing.csv")  # reading it would fail differently
    files = [] if "--subject" in option else ["--heart-rate", missing, "--counts", missing]
    argv = ["replay", *files, *option, "--out", str(tmp_path / "night.png")]
    assert main(argv) == 1
    assert _one_error(caplog).startswith(message)


def test_results_go_to_stdout_and_logs_to_stderr(tmp_path: Path) -> None:
    """The command as a user runs it: stdout holds the result line alone, stderr the live
    view, and an error is one log line on stderr with nothing on stdout."""
    import subprocess
    import sys

    argv = _user_files(tmp_path, EVENING + np.arange(0.0, 1800.0, 5.0))
    out = tmp_path / "night.png"
    command = [sys.executable, "-m", "sleepstream.cli", *argv, "--out", str(out)]
    env = {**os.environ, "COLUMNS": "120"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(rf"60 epochs, \d+ events; plot in {re.escape(str(out))}\n", done.stdout)
    assert "sleepstream live" in done.stderr and "plot in" not in done.stderr

    failed = subprocess.run(
        [*command[:-1], str(tmp_path / "night.txt")], capture_output=True, text=True, env=env
    )
    assert failed.returncode == 2 and failed.stdout == ""
    message = " ".join(failed.stderr.split())  # the log wraps long paths onto lines of their own
    assert "ERROR" in message and "expected a name ending in .png" in message


def test_report_prints_where_it_wrote(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sleepstream.evaluation.predictions import LosoResult, NightPrediction, save_predictions

    labels = np.array([0, 0, 1, 1, 1, 1, 0, 1] * 4, np.int8)
    thresholds = {"operating": 0.5, "wasa93": 0.5, "wasa95": 0.5}
    times, valid = 30.0 * np.arange(32), np.ones(32, bool)
    p_sleep = [np.clip(labels * 0.7 + 0.1 * k, 0, 1) for k in range(3)]
    nights = [
        NightPrediction(f"S{k}", times, labels, p, valid, thresholds) for k, p in enumerate(p_sleep)
    ]
    save_predictions([(LosoResult("model", True, nights), None)], tmp_path)
    assert main(["report", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out == f"Report in {tmp_path}\n"
    assert (tmp_path / "metrics.json").exists()


def test_ship_without_a_cv_report_says_what_to_run_before_loading_nights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _no_work(monkeypatch)
    argv = ["ship", "-c", "m.yaml", "--loso", str(tmp_path), "--out", str(tmp_path / "model")]
    assert main(argv) == 1
    expected = f"{tmp_path / 'metrics.json'} not found: run `sleepstream cv -c m.yaml --out"
    assert _one_error(caplog).startswith(expected)


def test_the_converters_info_logs_are_off_unless_verbose(monkeypatch: pytest.MonkeyPatch) -> None:
    from sleepstream.logs import CONVERTER_LOGGERS, setup_logging

    for name in CONVERTER_LOGGERS:
        monkeypatch.setattr(logging.getLogger(name), "level", logging.NOTSET)
    quiet = Console(file=io.StringIO())
    setup_logging(quiet)
    for name in ("coremltools", "onnxscript.optimizer._constant_folding", "torch.onnx._internal"):
        logger = logging.getLogger(name)
        assert not logger.isEnabledFor(logging.INFO) and logger.isEnabledFor(logging.WARNING)
    setup_logging(quiet, verbose=True)  # the converters log at the root logger's level again
    assert all(logging.getLogger(name).level == logging.NOTSET for name in CONVERTER_LOGGERS)


@pytest.mark.parametrize("before", [None, "0"])
def test_converter_progress_bars_are_off_only_inside_the_block(
    monkeypatch: pytest.MonkeyPatch, before: str | None
) -> None:
    """``TQDM_DISABLE`` is set while the converters run, then the environment is as it was
    (a user's process and the processes it starts later do not inherit it)."""
    from sleepstream.logs import converter_progress

    monkeypatch.setattr(os, "environ", dict(os.environ))
    os.environ.pop("TQDM_DISABLE", None)
    if before is not None:
        os.environ["TQDM_DISABLE"] = before
    with converter_progress():
        assert os.environ["TQDM_DISABLE"] == "1"
    assert os.environ.get("TQDM_DISABLE") == before
    with pytest.raises(KeyError), converter_progress():
        raise KeyError("a failed export")
    assert os.environ.get("TQDM_DISABLE") == before
    with converter_progress(verbose=True):
        assert os.environ.get("TQDM_DISABLE") == before


def test_commands_leave_tqdm_disable_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert main(["report", "--out", str(tmp_path)]) == 1
    assert "TQDM_DISABLE" not in os.environ


@pytest.mark.parametrize("flag", ["-v", "--verbose", "-q"])
def test_global_flags_come_before_a_lightning_command(
    flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([flag, "fit", "--help"])
    assert exit_info.value.code == 0
    assert "--trainer.max_epochs" in capsys.readouterr().out


def test_every_command_module_adds_a_parser_that_runs_something() -> None:
    """Each module of ``cli.COMMANDS`` adds subcommands; each (but LightningCLI's) has ``run``."""
    import argparse

    from sleepstream import cli
    from sleepstream.commands import lightning

    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        if name in lightning.COMMANDS:
            continue
        nested = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
        leaves = list(nested[0].choices.values()) if nested else [sub]
        assert all(callable(leaf.get_default("run")) for leaf in leaves), name


def test_lightning_commands_keep_stdout_for_their_metrics(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """``fit`` writes nothing to stdout (its model summary and progress bar go to stderr);
    ``test`` writes its metrics there as JSON, and nothing else."""
    import json
    import sys

    import torch
    from lightning.pytorch.demos.boring_classes import BoringDataModule, BoringModel

    from sleepstream.models.training import SleepCLI

    class Logged(BoringModel):
        def test_step(self, batch: torch.Tensor, batch_idx: int) -> None:
            self.log("test_loss", self.step(batch))

    def run(*args: str) -> pytest.CaptureResult[str]:
        common = ["--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false"]
        stdout = sys.stdout
        try:
            SleepCLI(Logged, BoringDataModule, args=[*args, *common], save_config_callback=None)
            assert sys.stdout is stdout
        finally:
            sys.stdout = stdout
        return capfd.readouterr()

    fit = run("fit", "--trainer.max_epochs", "1")
    assert fit.out == "" and "Trainable params" in fit.err and "Epoch 0" in fit.err
    test = run("test")
    assert list(json.loads(test.out)) == ["test_loss"]
    assert "Test metric" in test.err


def test_replay_of_unix_seconds_builds_epochs_from_the_first_sample(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _user_files(tmp_path, EVENING + np.arange(0.0, 3600.0, 5.0))
    out = tmp_path / "night.png"
    assert main(["-q", *argv, "--timezone", "Europe/Berlin", "--out", str(out)]) == 0
    assert "120 epochs" in capsys.readouterr().out
    assert out.stat().st_size > 10_000


def test_replay_refuses_milliseconds_in_one_line_unless_told(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _user_files(tmp_path, 1000 * (EVENING + np.arange(0.0, 600.0, 5.0)), "{:.0f}")
    out = ["--out", str(tmp_path / "night.png")]
    assert main(["-q", *argv, *out]) == 1
    message = _one_error(caplog)
    assert message.startswith(f"{argv[2]}, line 1: time 1774731600000 looks like milliseconds")
    assert "--time-unit ms" in message
    assert main(["-q", *argv, "--time-unit", "ms", *out]) == 0
    assert "20 epochs" in capsys.readouterr().out


def test_replay_of_a_night_across_the_fall_back_change(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ISO-8601 times with offsets, 23:00 to 06:00 in Berlin on the night the clocks go back:
    8 hours of real time, so 960 epochs (the clock times shown: ``test_times.py``)."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    berlin = ZoneInfo("Europe/Berlin")
    start = datetime(2026, 10, 24, 23, 0, tzinfo=berlin).timestamp()
    times = start + np.arange(0.0, 8 * 3600, 5.0)
    argv = _user_files(tmp_path, times)
    for name in ("hr.csv", "counts.csv"):
        path = tmp_path / name
        rows = [line.split(",") for line in path.read_text().splitlines()]
        local = [datetime.fromtimestamp(float(t), berlin).isoformat() for t, _ in rows]
        path.write_text("".join(f"{t},{v}\n" for t, (_, v) in zip(local, rows, strict=True)))
    assert "2026-10-25T02:30:00+02:00" in (tmp_path / "hr.csv").read_text()
    assert "2026-10-25T02:30:00+01:00" in (tmp_path / "hr.csv").read_text()
    out = tmp_path / "night.png"
    assert main(["-q", *argv, "--timezone", "Europe/Berlin", "--out", str(out)]) == 0
    assert "960 epochs" in capsys.readouterr().out


# --- files are written whole or not at all -----------------------------------------------------


def _half_then_interrupt(file: str | Path | BinaryIO) -> None:
    """What an interrupted writer does: half a file to a name or an open file, then Ctrl-C."""
    if isinstance(file, str | Path):
        with open(file, "wb") as handle:
            handle.write(b"half a file")
    else:
        file.write(b"half a file")
    raise KeyboardInterrupt


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_atomic_file_interrupted_leaves_the_old_file_or_none(tmp_path: Path) -> None:
    target = tmp_path / "out" / "metrics.json"
    with pytest.raises(KeyboardInterrupt), atomic_file(target) as handle:
        handle.write(b'{"half": ')
        raise KeyboardInterrupt
    assert _files(tmp_path) == []
    write_atomic(target, '{"complete": true}\n')
    with pytest.raises(KeyboardInterrupt), atomic_file(target) as handle:
        handle.write(b'{"half": ')
        raise KeyboardInterrupt
    assert target.read_text() == '{"complete": true}\n'
    assert _files(tmp_path) == ["out/metrics.json"]


def test_atomic_file_names_the_target_of_a_nameless_os_error(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    disk_full = OSError(28, "No space left on device")
    expected = re.escape(f"No space left on device: '{target}'")
    with pytest.raises(OSError, match=expected), atomic_file(target):
        raise disk_full
    assert _files(tmp_path) == []


def test_atomic_files_keep_the_usual_permissions(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        write_atomic(tmp_path / "a.txt", "x")
    finally:
        os.umask(umask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644


def test_interrupted_save_result_leaves_no_partial_npz(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sleepstream.evaluation.predictions import LosoResult, NightPrediction, save_result

    night = NightPrediction(
        "1", np.zeros(3), np.ones(3, np.int8), np.full(3, 0.7), np.ones(3, bool), {}
    )
    monkeypatch.setattr(np, "savez_compressed", lambda file, **arrays: _half_then_interrupt(file))
    with pytest.raises(KeyboardInterrupt):
        save_result(LosoResult("model", True, [night]), tmp_path / "predictions" / "m.npz")
    assert _files(tmp_path) == []


def test_interrupted_figure_leaves_no_partial_png(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from matplotlib.figure import Figure

    from sleepstream.evaluation.plots import _save

    monkeypatch.setattr(Figure, "savefig", lambda self, file, **kw: _half_then_interrupt(file))
    with pytest.raises(KeyboardInterrupt):
        _save(Figure(), tmp_path / "roc.png")
    assert _files(tmp_path) == []


def test_interrupted_save_model_leaves_no_partial_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from sleepstream.models import shipped

    card = shipped.ModelCard("m", "SleepNet", {}, [], {}, "", [], 0)
    monkeypatch.setattr(np, "savez", lambda file, **arrays: _half_then_interrupt(file))
    with pytest.raises(KeyboardInterrupt):
        shipped.save_model(torch.nn.Linear(1, 1), card, tmp_path)  # type: ignore[arg-type]
    assert _files(tmp_path) == []


def test_interrupted_docs_update_keeps_the_old_docs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = tmp_path / "report"
    report.mkdir()
    (report / "roc.png").write_bytes(b"png")
    (report / "results.md").write_text("# Results\n\n![roc](roc.png)\n")
    docs = tmp_path / "docs" / "results.md"
    docs.parent.mkdir()
    docs.write_text("old report\n")

    def interrupted_copy(source: BinaryIO, target: BinaryIO) -> None:
        target.write(source.read(1))
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "copyfileobj", interrupted_copy)
    with pytest.raises(KeyboardInterrupt):
        update_docs(report / "results.md", docs)
    assert docs.read_text() == "old report\n"
    assert _files(docs.parent) == ["results.md"]


def test_interrupted_report_leaves_metrics_and_results_together_or_not_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sleepstream.evaluation import report
    from sleepstream.evaluation.predictions import LosoResult, NightPrediction

    labels = np.array([0, 0, 1, 1, 1, 1, 0, 1], np.int8)
    thresholds = {"operating": 0.5, "wasa93": 0.5, "wasa95": 0.5}
    times, valid = 30.0 * np.arange(8), np.ones(8, bool)
    p_sleep = [np.clip(labels * 0.6 + 0.1 * k, 0, 1) for k in range(3)]
    nights = [
        NightPrediction(f"S{k}", times, labels, p, valid, thresholds) for k, p in enumerate(p_sleep)
    ]

    def interrupted_plot(*args: object, **kwargs: object) -> Path:
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "plot_nights", interrupted_plot)
    out = tmp_path / "report"
    with pytest.raises(KeyboardInterrupt):
        report.write_report([(LosoResult("model", True, nights), None)], out, n_resamples=5)
    written = _files(out)
    assert "metrics.json" not in written and "results.md" not in written
    assert all(name.endswith(".png") and not name.startswith(".") for name in written)


def test_atomic_directory_interrupted_leaves_the_old_package_or_none(tmp_path: Path) -> None:
    package = tmp_path / "SleepStream_raw.mlpackage"

    def half_a_package(folder: Path) -> None:
        folder.mkdir()
        (folder / "Manifest.json").write_text("{")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), paths.atomic_directory(package) as partial:
        half_a_package(partial)
    assert _files(tmp_path) == [] and list(tmp_path.iterdir()) == []
    with paths.atomic_directory(package) as partial:
        partial.mkdir()
        (partial / "Manifest.json").write_text("{}")
    with pytest.raises(KeyboardInterrupt), paths.atomic_directory(package) as partial:
        half_a_package(partial)
    assert (package / "Manifest.json").read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == [package.name]


def test_interrupted_export_leaves_complete_files_or_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while the exporter writes the first ONNX file: the metadata written before it is
    complete and the ONNX file absent (the exporter writes to a temporary file)."""
    import torch

    from sleepstream.export import export_all
    from sleepstream.models.card import ModelMetadata
    from sleepstream.models.net import SleepMLP

    def interrupted_export(model: object, args: object, f: str, **kwargs: object) -> None:
        _half_then_interrupt(f)

    monkeypatch.setattr(torch.onnx, "export", interrupted_export)
    with pytest.raises(KeyboardInterrupt):
        export_all(SleepMLP(), {"wasa93": 0.8}, tmp_path / "export", coreml=False)
    assert _files(tmp_path) == ["export/model_raw.json"]
    ModelMetadata.from_json((tmp_path / "export" / "model_raw.json").read_text())
