"""``replay_to_plot``: a night through the live detector, its live view and its figure."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from sleepstream.data.parse import read_user_recording
from sleepstream.live.detector import SleepDetector
from sleepstream.live.replay import load_step_model, replay, replay_to_plot
from sleepstream.records import Recording

EVENING = 1774731600.0
"""2026-03-28 21:00 UTC."""


@pytest.fixture
def night(tmp_path: Path) -> Recording:
    """An hour of a user's heart rate (every 5 s) and counts (every 15 s) from ``EVENING``."""
    times = EVENING + np.arange(0.0, 3600.0, 5.0)
    hr, counts = tmp_path / "hr.csv", tmp_path / "counts.csv"
    hr.write_text("".join(f"{t:.0f},{60 - i % 9}\n" for i, t in enumerate(times)))
    counts.write_text("".join(f"{t:.0f},{(i % 5) * 3}\n" for i, t in enumerate(times[::3])))
    return read_user_recording(hr, counts=counts)


@pytest.mark.parametrize("threshold", ["wasa93", 0.2])
def test_replay_to_plot_is_the_replay_of_the_detector_and_its_figure(
    night: Recording, tmp_path: Path, threshold: str | float
) -> None:
    out = tmp_path / "plots" / "night.svg"
    shown = io.StringIO()
    results = replay_to_plot(
        night, out, Console(file=shown, width=100), threshold=threshold, timezone="Europe/Berlin"
    )
    detector = SleepDetector(load_step_model(None), threshold=threshold, timezone="Europe/Berlin")
    assert results == replay(night, detector)
    assert len(results) == 120 and results[0].timezone == "Europe/Berlin"
    assert "sleepstream live" in shown.getvalue()  # the live table, shown on the console
    assert out.read_text().lstrip().startswith("<?xml")
    assert [p.name for p in out.parent.iterdir()] == ["night.svg"]  # no temporary file left


def test_replay_to_plot_leaves_no_partial_figure(
    night: Recording, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sleepstream.live import replay as module

    def half_a_figure(night: Recording, results: object, threshold: float, path: Path) -> None:
        path.write_bytes(b"\x89PNG half a figure")
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "plot_replay", lambda *args, **kw: half_a_figure(*args))
    out = tmp_path / "night.png"
    out.write_bytes(b"the previous figure")
    with pytest.raises(KeyboardInterrupt):
        replay_to_plot(night, out, Console(file=io.StringIO()))
    assert out.read_bytes() == b"the previous figure"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counts.csv", "hr.csv", "night.png"]
