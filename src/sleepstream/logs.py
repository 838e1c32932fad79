"""Logging of the ``sleepstream`` command: messages on stderr, the converters' chatter off.

stdout is kept for results (tables, JSON, the paths written), so that they can be piped; logs,
progress and the live view go to stderr (:data:`console`). The libraries of the ONNX and Core ML
export log every pass of a conversion at INFO (thousands of lines for one ``sleepstream
export``) and draw a progress bar for each pass: without ``--verbose`` only their warnings and
errors are shown, and their progress bars are off (:func:`converter_progress`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

console = Console(stderr=True)
"""Logs, progress bars and the live replay view of the command; results go to stdout."""

CONVERTER_LOGGERS = ("coremltools", "onnx", "onnx_ir", "onnxscript", "torch.onnx")
"""Loggers of the export libraries, at WARNING unless ``--verbose``."""


def setup_logging(console: Console = console, verbose: bool = False) -> None:
    """Log to ``console`` (meant to be on stderr): INFO and up, DEBUG with ``verbose``.

    Without ``verbose`` the :data:`CONVERTER_LOGGERS` show warnings and errors only. Lightning's
    messages go through its own handler (on stderr), once.

    Examples
    --------
    >>> import io
    >>> setup_logging(Console(file=io.StringIO()))
    >>> logging.getLogger("coremltools").isEnabledFor(logging.INFO)
    False
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )
    for name in CONVERTER_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.WARNING)
    # The lightning package gives its logger a handler of its own (on stderr) when imported;
    # passed on to ours as well, each of its messages would show twice.
    logging.getLogger("lightning").propagate = False


@contextmanager
def converter_progress(verbose: bool = False) -> Iterator[None]:
    """Within the block, tqdm progress bars (one per pass of coremltools) are off unless
    ``verbose``.

    tqdm reads ``TQDM_DISABLE`` once, when it is first imported, so the converters must be
    imported inside the block. The variable is set only while the block runs: afterwards the
    environment is as it was, and processes started later do not inherit it.

    Examples
    --------
    >>> before = os.environ.get("TQDM_DISABLE")
    >>> with converter_progress():
    ...     os.environ["TQDM_DISABLE"]
    '1'
    >>> os.environ.get("TQDM_DISABLE") == before
    True
    """
    before = os.environ.get("TQDM_DISABLE")
    if not verbose:
        os.environ["TQDM_DISABLE"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = before


def byte_progress(enabled: bool) -> Progress:
    """A progress bar on stderr of bytes read or downloaded (size, speed, time left); drawn only
    when ``enabled``."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )
