"""Generated 2-D toy distributions (infinite data: a batch is a pure function of a key)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.core._checks import check_int
from diffjax.core.mixture import ring_mixture

__all__ = ["TOY_DATASETS", "ring8", "swiss_roll", "checkerboard", "two_moons", "toy_sample"]


def ring8(key, n: int) -> jax.Array:
    """8 Gaussians with means on a circle of radius 4 and std 0.35 (:func:`~diffjax.core.mixture.ring_mixture`)."""
    return ring_mixture(8, radius=4.0, std=0.35).sample(key, n)


def swiss_roll(key, n: int, *, noise: float = 0.25) -> jax.Array:
    """sklearn-style swiss roll in 2-D, scaled by 1/2 (roughly in ``[-4, 4]^2``)."""
    k1, k2 = jax.random.split(key)
    r = 1.5 * jnp.pi * (1.0 + 2.0 * jax.random.uniform(k1, (n,)))
    x = jnp.stack([r * jnp.cos(r), r * jnp.sin(r)], axis=-1) / 2.0
    return x + noise * jax.random.normal(k2, (n, 2))


def checkerboard(key, n: int) -> jax.Array:
    """Uniform on the 8 black squares of a 4x4 checkerboard over ``[-4, 4]^2``."""
    k1, k2, k3 = jax.random.split(key, 3)
    x1 = jax.random.uniform(k1, (n,), minval=-4.0, maxval=4.0)
    # row cell k in {-2, 0} or {-1, 1}: the parity of the row cell matches that of the column cell
    k = 2 * jax.random.randint(k3, (n,), 0, 2) - 2 + (jnp.floor(x1 / 2.0) % 2)
    x2 = jax.random.uniform(k2, (n,), minval=0.0, maxval=2.0) + 2.0 * k
    return jnp.stack([x1, x2], axis=-1)


def two_moons(key, n: int, *, noise: float = 0.1) -> jax.Array:
    """Two interleaved half circles (sklearn's ``make_moons``), scaled by 2 and centred."""
    k1, k2, k3 = jax.random.split(key, 3)
    theta = jnp.pi * jax.random.uniform(k1, (n,))
    upper = jax.random.bernoulli(k2, 0.5, (n,))
    x = jnp.where(upper[:, None], jnp.stack([jnp.cos(theta), jnp.sin(theta)], -1),
                  jnp.stack([1.0 - jnp.cos(theta), 0.5 - jnp.sin(theta)], -1))
    x = 2.0 * (x - jnp.array([0.5, 0.25]))
    return x + noise * jax.random.normal(k3, (n, 2))


TOY_DATASETS = {"ring8": ring8, "swiss_roll": swiss_roll, "checkerboard": checkerboard, "two_moons": two_moons}


def toy_sample(name: str, key, n: int) -> jax.Array:
    """``n`` points ``(n, 2)`` from the toy distribution ``name`` (one of :data:`TOY_DATASETS`)."""
    if name not in TOY_DATASETS:
        raise ValueError(f"toy dataset name must be one of {sorted(TOY_DATASETS)}, got {name!r}")
    check_int("n", n, minimum=1)
    return TOY_DATASETS[name](key, n)
