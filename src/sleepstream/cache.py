"""Where sleepstream keeps what it can recompute: ``$SLEEPSTREAM_CACHE`` or ``~/.cache/sleepstream``."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "SLEEPSTREAM_CACHE"


def cache_root() -> Path:
    """The cache folder (not created here)."""
    env = os.environ.get(CACHE_ENV)
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "sleepstream"
    return base.expanduser()
