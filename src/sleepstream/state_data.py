"""Checks for state that comes back as data: JSON numbers and named arrays from a snapshot.

The live detector gives its state (the model file's state tensor, pending samples, the event
tracker) as plain numbers and arrays and takes it back through these checks, so a malformed or
crafted state is refused with a message naming the bad entry, never trusted.

Examples
--------
>>> number({"clock": 12.5}, "clock")
12.5
>>> array({"zi": np.zeros(3)}, "zi", np.float64, (3,)).shape
(3,)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray


def finite_or_none(value: float) -> float | None:
    """JSON has no infinities or NaN: ``None`` stands for "never" / "not yet"."""
    return float(value) if math.isfinite(value) else None


def number(numbers: Mapping[str, Any], key: str, *, what: str = "state") -> float:
    """A finite number; ``ValueError`` naming ``key`` otherwise."""
    value = numbers.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what} {key!r} is {value!r}, expected a finite number")
    return float(value)


def time_or_never(numbers: Mapping[str, Any], key: str, *, what: str = "state") -> float:
    """A finite time, or ``-inf`` ("never") where the state holds ``None``."""
    return -math.inf if numbers.get(key) is None else number(numbers, key, what=what)


def integer(numbers: Mapping[str, Any], key: str, *, what: str = "state") -> int:
    """An integer (not a bool); ``ValueError`` otherwise."""
    value = numbers.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} {key!r} is {value!r}, expected an integer")
    return value


def array(
    arrays: Mapping[str, NDArray[Any]],
    name: str,
    dtype: type[np.generic],
    shape: tuple[int | None, ...] = (None,),
    *,
    finite: bool = True,
    what: str = "state",
) -> NDArray[Any]:
    """Entry ``name`` as ``dtype``, checked for kind, shape (``None``: any length), finiteness.

    Integer arrays are accepted where floats are expected.
    """
    if name not in arrays:
        raise ValueError(f"{what} has no {name!r} array")
    value = np.asarray(arrays[name])
    kinds = "fi" if np.dtype(dtype).kind == "f" else np.dtype(dtype).kind
    fits = value.ndim == len(shape) and all(
        want is None or got == want for got, want in zip(value.shape, shape, strict=False)
    )
    if value.dtype.kind not in kinds or not fits:
        expected = ",".join("any" if n is None else str(n) for n in shape)
        raise ValueError(
            f"{what} array {name!r} is {value.dtype}{list(value.shape)}, "
            f"expected {np.dtype(dtype)}[{expected}]"
        )
    if finite and value.dtype.kind == "f" and not np.all(np.isfinite(value)):
        raise ValueError(f"{what} array {name!r} holds non-finite values")
    return value.astype(dtype, copy=True)
