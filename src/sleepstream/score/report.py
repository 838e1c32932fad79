"""One HTML page over all nights of a recording: the summary table and every night's figure,
the images inline (base64 PNG), so the page is one file that can be mailed or archived."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from sleepstream.data.user import UserRecording

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; }
th { background: #f3f3f3; }
img { max-width: 100%; margin: 0.5em 0 1.5em 0; }
.note { color: #555; font-size: 0.9em; }
"""


def _cell(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "&ndash;"
    if isinstance(value, float):
        return f"{value:.1f}"
    return html.escape(str(value))


def table_html(frame: pd.DataFrame) -> str:
    """``frame`` as an HTML table, numbers to one decimal, missing values as a dash.

    >>> table_html(pd.DataFrame({"tst_min": [401.25, float("nan")]}))
    '<table><tr><th>tst_min</th></tr><tr><td>401.2</td></tr><tr><td>&ndash;</td></tr></table>'
    """
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>"
        for row in frame.itertuples(index=False)
    )
    return f"<table><tr>{head}</tr>{rows}</table>"


def image_html(png: Path, alt: str) -> str:
    """An ``<img>`` carrying the PNG itself (a data URI)."""
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def report_html(
    recording: UserRecording,
    model: str,
    summary: pd.DataFrame,
    agreement: pd.DataFrame | None,
    figures: Sequence[tuple[str, Path]],
) -> str:
    """The page: what was scored and how, the nights table, agreement, one figure per night."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>sleepstream: {html.escape(recording.name)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Sleep of {html.escape(recording.name)}</h1>",
        f"<p>Source: {html.escape(recording.source)}; model: <b>{html.escape(model)}</b>; "
        f"days from noon to noon, {html.escape(recording.clock_name)}.</p>",
    ]
    parts += [f"<p class='note'>{html.escape(note)}</p>" for note in recording.notes]
    parts += ["<h2>Nights</h2>", table_html(summary)]
    if agreement is not None:
        parts += ["<h2>Agreement with the reference</h2>", table_html(agreement)]
    parts.append("<h2>Each night</h2>")
    for title, png in figures:
        parts += [f"<h3>{html.escape(title)}</h3>", image_html(png, title)]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
