"""Command-line plumbing that is not covered with the commands themselves."""

from __future__ import annotations

from pathlib import Path

import pytest

from sleepstream.cli import main
from sleepstream.evaluation.report import DOCS_MARKER, update_docs


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


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for command in ("fit", "validate", "test", "predict", "cv", "report", "ship", "replay"):
        assert command in text


def test_report_without_predictions_says_what_to_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert main(["report", "--out", str(tmp_path)]) == 1
    assert "run `sleepstream cv" in caplog.text
