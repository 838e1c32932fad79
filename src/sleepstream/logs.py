"""Logging of the ``sleepstream`` command: messages on stderr, the converters' chatter off.

stdout is kept for results (tables, JSON, the paths written), so that they can be piped; logs,
progress and the live view go to stderr. The libraries of the ONNX and Core ML export log every
pass of a conversion at INFO (thousands of lines for one ``sleepstream export``) and draw a
progress bar for each pass: without ``--verbose`` only their warnings and errors are shown.
"""

from __future__ import annotations

import logging
import os

from rich.console import Console
from rich.logging import RichHandler

CONVERTER_LOGGERS = ("coremltools", "onnx", "onnx_ir", "onnxscript", "torch.onnx")
"""Loggers of the export libraries, at WARNING unless ``--verbose``."""


def setup_logging(console: Console, verbose: bool = False) -> None:
    """Log to ``console`` (meant to be on stderr): INFO and up, DEBUG with ``verbose``.

    Without ``verbose`` the :data:`CONVERTER_LOGGERS` show warnings and errors only, and tqdm
    progress bars (coremltools' passes) are off in this process and the ones it starts; tqdm
    reads ``TQDM_DISABLE`` when it is first imported, so this runs before any export.
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )
    for name in CONVERTER_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.WARNING)
    if not verbose:
        os.environ.setdefault("TQDM_DISABLE", "1")
