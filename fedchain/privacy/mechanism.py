"""Client-level differential privacy: clip a client's update, then add Gaussian noise.

The update Δ (all tensors together, as one vector) is scaled to L2 norm at most ``clip`` and
noise N(0, (noise_multiplier · clip)²) is added to every coordinate: the Gaussian mechanism on a
value of norm at most ``clip`` whatever the client's data, so of L2 sensitivity ``2 clip`` (two
datasets may give opposite updates; :mod:`fedchain.privacy.accountant` accounts for it so).
The client does this before it hashes and signs, so the commitment, the coordinator's archive,
the scores and the aggregate all see only the privatised update.

The noise must be unpredictable to everyone but the client: :func:`privatise_update` seeds its
generator from the operating system (``secrets``), never from the run's seed, which the
coordinator knows and could use to subtract the noise. :func:`privatise_update_with` takes the
generator, for tests. A privatised run is therefore not bit-reproducible from its seed.

Each coordinate's noise is drawn as Opacus's ``secure_mode`` draws it (:func:`draw_noise`): the
sum of four float64 Gaussians halved, so the low-order bits of one floating-point sample do not
give away the value it was added to (Holohan & Braghin 2021, Haney et al. 2022: the
floating-point attack on Gaussian noise; fedchain.privacy.dpsgd has Opacus do the same).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping

import numpy as np

from fedchain.errors import ConfigError

__all__ = [
    "clip_update",
    "compute_norm",
    "draw_noise",
    "privatise_update",
    "privatise_update_with",
]

Arrays = dict[str, np.ndarray]
_SHRINK = 1 - 2**-20
"""Scaling in float32 rounds; clipping aims this much below ``clip`` so the result never
exceeds it (the sensitivity the accountant assumes)."""


def compute_norm(update: Mapping[str, np.ndarray]) -> float:
    """The L2 norm of all tensors of ``update`` together, summed in float64."""
    return math.sqrt(sum(float(np.square(a, dtype=np.float64).sum()) for a in update.values()))


def clip_update(update: Mapping[str, np.ndarray], clip: float) -> Arrays:
    """``update`` scaled to L2 norm at most ``clip`` (unchanged if already within it)."""
    if not (math.isfinite(clip) and clip > 0):
        raise ConfigError(f"the clipping norm must be a finite number > 0, got {clip}")
    norm = compute_norm(update)
    if not math.isfinite(norm):
        raise ConfigError("cannot clip an update with NaN or infinite values")
    if norm <= clip * _SHRINK:
        return {name: np.array(a, copy=True) for name, a in update.items()}
    scale = clip * _SHRINK / norm
    return {
        name: (a * np.asarray(scale, dtype=a.dtype)).astype(a.dtype) for name, a in update.items()
    }


def draw_noise(generator: np.random.Generator, std: float, shape: tuple[int, ...]) -> np.ndarray:
    """N(0, std²) of ``shape`` in float64, as (g1 + g2 + g3 + g4) / 2 with each gi ~ N(0, std²):
    Opacus's ``secure_mode`` construction (2n draws, n = 2) against the floating-point attack."""
    total = generator.normal(0.0, std, shape)
    for _ in range(3):
        total += generator.normal(0.0, std, shape)
    return np.asarray(total / 2)


def privatise_update_with(
    update: Mapping[str, np.ndarray],
    *,
    clip: float,
    noise_multiplier: float,
    generator: np.random.Generator,
) -> Arrays:
    """:func:`clip_update`, then Gaussian noise of standard deviation ``noise_multiplier *
    clip`` on every coordinate, drawn from ``generator`` by :func:`draw_noise`; dtypes and shapes
    kept."""
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ConfigError(
            f"the noise multiplier must be a finite number > 0, got {noise_multiplier}"
        )
    std = noise_multiplier * clip
    clipped = clip_update(update, clip)
    return {
        name: np.ascontiguousarray(a + draw_noise(generator, std, a.shape).astype(a.dtype))
        for name, a in clipped.items()
    }


def privatise_update(
    update: Mapping[str, np.ndarray], *, clip: float, noise_multiplier: float
) -> Arrays:
    """:func:`privatise_update_with` a generator seeded with 256 bits from the operating
    system."""
    generator = np.random.default_rng(secrets.randbits(256))
    return privatise_update_with(
        update, clip=clip, noise_multiplier=noise_multiplier, generator=generator
    )
