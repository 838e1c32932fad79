"""Checks that acceleration is what the counts need: raw accelerometer data in g.

At rest a wrist accelerometer measures gravity, about 1 g. Data whose typical magnitude is near
9.8 is in m/s^2; data whose typical magnitude is near 0 has had gravity removed (e.g. iOS
``userAcceleration``). Both would give wrong counts, so they are refused with a message saying
what to pass instead.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

G = 9.80665
MAX_G = 16.0
"""Accelerometers on watches saturate well below this; larger values are not in g."""


def check_acceleration_units(xyz: NDArray[np.float64]) -> float:
    """Raise ``ValueError`` unless ``(n, 3)`` samples look like raw acceleration in g.

    Returns the median magnitude (g).
    """
    if not np.isfinite(xyz).all():
        i = int(np.argmax(~np.isfinite(xyz).all(axis=1)))
        raise ValueError(f"acceleration sample {i} is not finite: {xyz[i].tolist()}")
    magnitude = np.linalg.norm(xyz, axis=1)
    median = float(np.median(magnitude))
    if median > 5.0:
        raise ValueError(
            f"acceleration magnitude is about {median:.2f}: that looks like m/s^2; "
            f"pass values in g (divide by {G})"
        )
    if median < 0.3:
        raise ValueError(
            f"acceleration magnitude is about {median:.3f} g, without gravity: that looks like "
            "gravity-removed user acceleration; pass raw accelerometer data in g"
        )
    if magnitude.max() > MAX_G:
        i = int(np.argmax(magnitude))
        raise ValueError(
            f"acceleration sample {i} has magnitude {magnitude[i]:.1f} g, beyond any wrist "
            f"accelerometer's range ({MAX_G:g} g)"
        )
    return median
