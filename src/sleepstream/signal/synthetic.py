"""Generated wrist acceleration for tests, benchmarks and the counts agreement study.

The public nights carry no raw acceleration that every test can rely on, so the counts are
checked on generated signals of the kinds a watch sees in bed and around it:

- :func:`rest`: a still wrist (gravity, breathing sway, sensor noise);
- :func:`twitches`: rest with short isolated twitches;
- :func:`turning_over`: rest with a few seconds of movement while gravity moves on the z axis;
- :func:`walking`: steps at about 1.8 Hz with harmonics;
- :func:`night`: rest with twitches and turns, a mix of the above.

Each takes the sample times (any rate, jittered or with gaps) and a seed, and returns the z
acceleration in g; :func:`generate` also makes the times, and :func:`as_xyz` adds x and y so
the three axes measure about 1 g at rest; :func:`generated_night` is a whole night of the model
file's inputs, heart rate included. The movement is defined in continuous time and drawn
from its own random stream, so the same seed and time span give the same movement at every
sampling rate; only the sensor noise is drawn per sample.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]

REST_LEVEL_G = -0.8
"""z acceleration of the still wrist in :func:`rest`, in g (the watch tilted off horizontal)."""
NOISE_G = 0.005
"""Standard deviation of the sensor noise at rest, in g."""


def sample_times(
    seconds: float, rate: float = 50.0, *, jitter: float = 0.0, seed: int = 0, start: float = 0.0
) -> Array:
    """Sample times ``start + k / rate`` for ``0 <= k < seconds * rate``, optionally jittered.

    Parameters
    ----------
    seconds
        Length of the recording, in seconds.
    rate
        Sampling rate, in Hz.
    jitter
        Largest shift of each time, as a fraction of the step ``1 / rate``; below 0.5 the
        times stay strictly increasing.
    seed
        Seed of the jitter.
    start
        Time of the first (unjittered) sample, in seconds.

    Returns
    -------
    times
        Strictly increasing times in seconds.
    """
    if not rate > 0:
        raise ValueError(f"rate must be a positive number of Hz, got {rate!r}")
    if not 0.0 <= jitter < 0.5:
        raise ValueError(
            f"jitter must be in [0, 0.5) steps to keep times increasing, got {jitter!r}"
        )
    times = start + np.arange(round(seconds * rate)) / rate
    if jitter:
        times += np.random.default_rng(seed).uniform(-jitter, jitter, len(times)) / rate
    return times


def _streams(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent generators for the movement (rate-independent) and the per-sample noise."""
    movement, noise = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(movement), np.random.default_rng(noise)


def _span(times: Array) -> tuple[float, float]:
    if len(times) < 2:
        raise ValueError(f"need at least two sample times to generate a signal, got {len(times)}")
    return float(times[0]), float(times[-1])


def _still(times: Array, movement: np.random.Generator, noise: np.random.Generator) -> Array:
    """Gravity, a 3 mg breathing sway at 0.25 Hz, and sensor noise."""
    sway = 0.003 * np.sin(2 * np.pi * 0.25 * times + movement.uniform(0, 2 * np.pi))
    return REST_LEVEL_G + sway + noise.normal(0.0, NOISE_G, len(times))


def _event_starts(times: Array, every: float, rng: np.random.Generator) -> Array:
    """Event times about ``every`` seconds apart (at least 2 s), 5 s from the start, 10 s from the end."""
    first, last = _span(times)
    n_draws = int(3 * (last - first) / every) + 10
    starts = first + 5.0 + np.cumsum(2.0 + rng.exponential(every - 2.0, n_draws))
    return starts[starts < last - 10.0]


def _add_twitches(times: Array, z: Array, rng: np.random.Generator, every: float) -> None:
    """Isolated twitches: 0.1-0.3 s Hann-windowed 4-10 Hz bursts of 0.05-0.4 g, random phase."""
    for start in _event_starts(times, every, rng):
        duration, hz, phase, amplitude = (
            rng.uniform(0.1, 0.3),
            rng.uniform(4.0, 10.0),
            rng.uniform(0, 2 * np.pi),
            rng.uniform(0.05, 0.4),
        )
        inside = (times >= start) & (times < start + duration)
        since = times[inside] - start
        envelope = np.sin(np.pi * since / duration) ** 2
        z[inside] += amplitude * envelope * np.sin(2 * np.pi * hz * since + phase)


def _taper(progress: Array, ramp: float = 0.2) -> Array:
    """0 to 1 and back: raised-cosine ramps over the first and last ``ramp`` of ``progress``."""
    edge = np.minimum(progress, 1.0 - progress) / ramp
    return np.asarray((1 - np.cos(np.pi * np.clip(edge, 0.0, 1.0))) / 2, dtype=np.float64)


def _waves(since: Array, hz: Array, weights: Array, phases: Array) -> Array:
    """A weighted sum of sines at the given times."""
    return np.asarray(np.sin(2 * np.pi * np.outer(since, hz) + phases) @ weights, dtype=np.float64)


def _add_turns(times: Array, z: Array, rng: np.random.Generator, every: float) -> None:
    """Turning over: 1-3 s of 1-8 Hz movement of 0.2-0.6 g while gravity on z moves smoothly."""
    level = REST_LEVEL_G
    for start in _event_starts(times, every, rng):
        duration = rng.uniform(1.0, 3.0)
        new_level = rng.uniform(-1.0, 1.0)
        hz = rng.uniform(1.0, 8.0, 6)
        weights = rng.uniform(0.5, 1.0, 6)
        phases = rng.uniform(0, 2 * np.pi, 6)
        amplitude = rng.uniform(0.2, 0.6)
        progress = np.clip((times - start) / duration, 0.0, 1.0)
        z += (new_level - level) * (1 - np.cos(np.pi * progress)) / 2
        level = new_level
        # Scaled by the peak on a fine grid, not on the samples: the same movement at any rate.
        peak = np.abs(_waves(np.linspace(0.0, duration, 2000), hz, weights, phases)).max()
        inside = (times >= start) & (times < start + duration)
        since = times[inside] - start
        movement = _waves(since, hz, weights, phases) / peak
        z[inside] += amplitude * _taper(since / duration) * movement


def rest(times: Array, seed: int = 0) -> Array:
    """A still wrist: -0.8 g of gravity, a 3 mg breathing sway at 0.25 Hz, 5 mg sensor noise.

    Parameters
    ----------
    times
        Sample times in seconds, increasing (any rate, jitter or gaps).
    seed
        Seed of the signal.

    Returns
    -------
    z
        Acceleration along the watch's z axis, in g.
    """
    _span(times)
    movement, noise = _streams(seed)
    return _still(times, movement, noise)


def twitches(times: Array, seed: int = 0, *, every: float = 30.0) -> Array:
    """Rest with a twitch about every ``every`` seconds (Poisson, at least 2 s apart).

    A twitch is a 0.1-0.3 s Hann-windowed burst of 4-10 Hz and 0.05-0.4 g at a random phase: the
    short transients where a causal filter's phase matters most. Parameters and result as in
    :func:`rest`.
    """
    movement, noise = _streams(seed)
    z = _still(times, movement, noise)
    _add_twitches(times, z, movement, every)
    return z


def turning_over(times: Array, seed: int = 0, *, every: float = 120.0) -> Array:
    """Rest with a turn about every ``every`` seconds.

    A turn is 1-3 s of 1-8 Hz movement peaking at 0.2-0.6 g (six sines, tapered at both ends)
    while gravity on z moves smoothly to a new level between -1 and 1 g. Parameters and result as in :func:`rest`.
    """
    movement, noise = _streams(seed)
    z = _still(times, movement, noise)
    _add_turns(times, z, movement, every)
    return z


def walking(times: Array, seed: int = 0) -> Array:
    """Walking: steps at about 1.8 Hz with three harmonics, about 0.3 g peak, 20 mg noise.

    The cadence wanders by 3 % over 20-60 s. Steady movement at every count window: the counts
    are large and hardly vary. Parameters and result as in :func:`rest`.
    """
    _span(times)
    movement, noise = _streams(seed)
    period = movement.uniform(20.0, 60.0)
    # Integral of the cadence 1.8 Hz * (1 + 0.03 sin(2 pi t / period)).
    cycles = 1.8 * (times + 0.03 * period / (2 * np.pi) * (1 - np.cos(2 * np.pi * times / period)))
    steps = sum(
        weight * np.sin(k * 2 * np.pi * cycles + movement.uniform(0, 2 * np.pi))
        for k, weight in ((1, 1.0), (2, 0.5), (3, 0.3), (4, 0.2))
    )
    return -0.7 + 0.15 * steps + noise.normal(0.0, 0.02, len(times))


def night(
    times: Array, seed: int = 0, *, twitch_every: float = 40.0, turn_every: float = 240.0
) -> Array:
    """A night in bed: rest with twitches (:func:`twitches`) and turns (:func:`turning_over`).

    Parameters
    ----------
    times, seed
        As in :func:`rest`.
    twitch_every, turn_every
        Mean interval between twitches and between turns, in seconds.

    Returns
    -------
    z
        Acceleration along the watch's z axis, in g.
    """
    movement, noise = _streams(seed)
    z = _still(times, movement, noise)
    _add_twitches(times, z, movement, twitch_every)
    _add_turns(times, z, movement, turn_every)
    return z


SIGNALS: Mapping[str, Callable[[Array, int], Array]] = {
    "rest": rest,
    "twitches": twitches,
    "turning over": turning_over,
    "walking": walking,
    "night": night,
}
"""The signal kinds by name, each ``(times, seed) -> z`` with its default parameters."""


def generate(kind: str, seconds: float, rate: float = 50.0, seed: int = 0) -> tuple[Array, Array]:
    """Times and z acceleration of one generated signal.

    Parameters
    ----------
    kind
        A key of :data:`SIGNALS`: ``"rest"``, ``"twitches"``, ``"turning over"``, ``"walking"``
        or ``"night"``.
    seconds
        Length, in seconds.
    rate
        Sampling rate, in Hz (regular samples from t = 0).
    seed
        Seed of the signal.

    Returns
    -------
    times, z
        Sample times in seconds and z acceleration in g.

    Examples
    --------
    >>> times, z = generate("twitches", 60.0, rate=25.0, seed=1)
    >>> len(times), float(times[1])
    (1500, 0.04)
    """
    if kind not in SIGNALS:
        raise ValueError(f"unknown signal kind {kind!r}; expected one of {sorted(SIGNALS)}")
    times = sample_times(seconds, rate)
    return times, SIGNALS[kind](times, seed)


def as_xyz(z: Array, seed: int = 0) -> Array:
    """Three axes from a z signal: x carries the rest of gravity, y is noise; ``(n, 3)`` in g.

    At rest the magnitude is about 1 g, as raw accelerometer data must be
    (:func:`~sleepstream.live.units.check_acceleration_units`).
    """
    rng = np.random.default_rng(seed)
    x = np.sqrt(1.0 - np.clip(z, -1.0, 1.0) ** 2)
    xyz = np.column_stack((x, np.zeros_like(z), z))
    xyz[:, :2] += rng.normal(0.0, NOISE_G, (len(z), 2))
    return xyz


GENERATED_SEGMENTS: tuple[tuple[str, int], ...] = (
    ("walking", 30),
    ("asleep", 40),
    ("asleep, no heart rate", 10),
    ("asleep, no motion", 10),
    ("gap: nothing for an hour", 120),
    ("asleep, acceleration with missing samples", 30),
    ("turning over, awake", 10),
)
"""The generated raw night, in order: what each stretch holds and its length in epochs."""


def generated_night(seed: int = 0) -> dict[str, NDArray[np.float64]]:
    """A night of the pipeline's inputs per epoch (``accel (T, 1500)``, ``counts (T, 2)``, all
    NaN, ``hr`` and ``hr_offset (T, 30)``), made of :data:`GENERATED_SEGMENTS`: the raw variant's
    night in the test vectors."""
    from sleepstream.features import HR_SLOTS
    from sleepstream.records import EPOCH_SECONDS
    from sleepstream.step import ACCEL_SAMPLES, COUNTS_DELAY_SECONDS

    rng = np.random.default_rng(seed)
    n = sum(length for _, length in GENERATED_SEGMENTS)
    accel = np.full((n, ACCEL_SAMPLES), np.nan)
    counts = np.full((n, 2), np.nan)
    hr = np.full((n, HR_SLOTS), np.nan)
    hr_offset = np.full((n, HR_SLOTS), np.nan)
    at = 0
    for what, length in GENERATED_SEGMENTS:
        epochs = slice(at, at + length)
        at += length
        if what.startswith("gap"):
            continue
        kind = "walking" if what == "walking" else "turning over" if "turning" in what else "night"
        times = COUNTS_DELAY_SECONDS + np.arange(length * ACCEL_SAMPLES) / 50.0
        z = SIGNALS[kind](times, seed + at)
        if "missing samples" in what:
            for start in rng.integers(0, len(z) - 200, size=length // 3):
                z[start : start + rng.integers(5, 200)] = np.nan
        if "no motion" not in what:
            accel[epochs] = z.reshape(length, ACCEL_SAMPLES)
        if "no heart rate" not in what:
            level = 90.0 if kind != "night" else 57.0
            k = 5
            offsets = np.sort(rng.uniform(0, EPOCH_SECONDS, (length, k)), axis=1)
            hr[epochs, :k] = level + rng.normal(0, 2, (length, k))
            hr_offset[epochs, :k] = offsets
    return {"accel": accel, "counts": counts, "hr": hr, "hr_offset": hr_offset}
