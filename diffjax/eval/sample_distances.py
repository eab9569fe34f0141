"""Two-sample distances between point clouds: energy distance and RBF-kernel MMD.

Both take ``x`` of shape ``(n, *dims)`` and ``y`` of shape ``(m, *dims)`` (extra dims are flattened), are pure
jax and jitted, and compute pairwise distances exactly (no ``|a|^2 + |b|^2 - 2ab`` cancellation) in row blocks
so memory stays ``O(block * m * d)``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.core._checks import check_positive

__all__ = ["energy_distance", "mmd_rbf"]

_BLOCK = 128
_MEDIAN_POINTS = 512


def _flatten(name, a):
    a = jnp.asarray(a)
    if a.ndim < 2 or a.shape[0] < 2:
        raise ValueError(f"{name} must be an array shaped (n, *dims) with n >= 2, got shape {a.shape!r}")
    return a.reshape(a.shape[0], -1).astype(jnp.promote_types(a.dtype, jnp.float32))


def _row_sums(a, b, fn):
    """``sum_j fn(|a_i - b_j|^2)`` for every row ``i`` of ``a``, computed in row blocks."""

    def one(ai):
        return jnp.sum(fn(jnp.sum((ai[None, :] - b) ** 2, axis=-1)))

    return jax.lax.map(one, a, batch_size=_BLOCK)


def _u_stat_within(a, fn, diag):
    """Mean of ``fn(|a_i - a_j|^2)`` over ``i != j`` (``diag = fn(0)`` removed)."""
    n = a.shape[0]
    return (jnp.sum(_row_sums(a, a, fn)) - n * diag) / (n * (n - 1))


@jax.jit
def _energy(x, y):
    dist = lambda d2: jnp.sqrt(jnp.maximum(d2, 0.0))  # noqa: E731
    xy = jnp.mean(_row_sums(x, y, dist)) / y.shape[0]
    return 2.0 * xy - _u_stat_within(x, dist, 0.0) - _u_stat_within(y, dist, 0.0)


def energy_distance(x: jax.Array, y: jax.Array) -> jax.Array:
    """Energy distance between the samples ``x`` (n, *dims) and ``y`` (m, *dims), as a U-statistic.

    .. math:: \\mathcal{E}(X, Y) = 2\\,\\mathbb{E}|X - Y| - \\mathbb{E}|X - X'| - \\mathbb{E}|Y - Y'|

    The cross term averages all ``n m`` pairs and the within-sample terms average the ``i != j`` pairs only, so the
    estimate is unbiased for the population energy distance (it is 0 in expectation when both samples come
    from the same distribution, and may then be slightly negative).

    Returns:
        Scalar float32.
    """
    x, y = _flatten("x", x), _flatten("y", y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same event size, got {x.shape[1]} and {y.shape[1]}")
    return _energy(x, y)


@jax.jit
def _median_bandwidth(x, y):
    z = jnp.concatenate([x[:_MEDIAN_POINTS // 2], y[:_MEDIAN_POINTS // 2]])
    d2 = jnp.sum((z[:, None, :] - z[None, :, :]) ** 2, axis=-1)
    iu = jnp.triu_indices(z.shape[0], k=1)
    return jnp.sqrt(jnp.median(d2[iu]))


@jax.jit
def _mmd(x, y, bandwidth):
    k = lambda d2: jnp.exp(-d2 / (2.0 * bandwidth**2))  # noqa: E731
    xy = jnp.mean(_row_sums(x, y, k)) / y.shape[0]
    return _u_stat_within(x, k, 1.0) + _u_stat_within(y, k, 1.0) - 2.0 * xy


def mmd_rbf(x: jax.Array, y: jax.Array, *, bandwidth: float | None = None) -> jax.Array:
    """Unbiased squared MMD with the Gaussian kernel ``k(a, b) = exp(-|a - b|^2 / (2 h^2))``.

    .. math:: \\mathrm{MMD}^2_u = \\overline{k(x_i, x_j)}_{i\\ne j} + \\overline{k(y_i, y_j)}_{i\\ne j}
              - 2\\,\\overline{k(x_i, y_j)}

    Args:
        x: (n, *dims) samples.
        y: (m, *dims) samples.
        bandwidth: ``h``; ``None`` takes the median heuristic, the median pairwise distance of the pooled
            samples (computed on the first 256 points of each, so it costs O(1) in n).

    Returns:
        Scalar float32 (an unbiased estimate: may be slightly negative when ``x`` and ``y`` agree).
    """
    x, y = _flatten("x", x), _flatten("y", y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same event size, got {x.shape[1]} and {y.shape[1]}")
    if bandwidth is None:
        h = _median_bandwidth(x, y)
    else:
        h = jnp.asarray(check_positive("bandwidth", bandwidth), x.dtype)
    return _mmd(x, y, h)
