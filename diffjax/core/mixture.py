"""Gaussian-mixture data, whose perturbed marginal at every t is known in closed form.

For data ``sum_k w_k N(mu_k, diag(std_k^2))`` and ``x_t = a x_0 + s eps`` the marginal is
``sum_k w_k N(a mu_k, diag(a^2 std_k^2 + s^2))``: its score and log-density are exact, which is how samplers and
likelihoods are checked against ground truth without training anything.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from diffjax.core._checks import check_int, check_positive
from diffjax.core._deprecation import renamed_keywords

__all__ = ["GaussianMixture", "gaussian_mixture", "ring_mixture", "mixture_score_fn", "mixture_log_prob"]


class GaussianMixture(NamedTuple):
    """Weights ``(K,)``, means ``(K, *dims)``, per-coordinate stds ``(K, *dims)``. A pytree."""

    weights: jax.Array
    means: jax.Array
    stds: jax.Array

    @property
    def event_shape(self):
        return self.means.shape[1:]

    def sample(self, key, n: int) -> jax.Array:
        k1, k2 = jax.random.split(key)
        comp = jax.random.categorical(k1, jnp.log(self.weights), shape=(n,))
        noise = jax.random.normal(k2, (n,) + self.event_shape, self.means.dtype)
        return self.means[comp] + self.stds[comp] * noise

    def log_prob(self, x, mean_coeff=1.0, std=0.0):
        """Log-density of the perturbed mixture at ``x`` (batch, *dims); ``mean_coeff, std``: () or (batch,)."""
        return mixture_log_prob(self, x, mean_coeff, std)


def gaussian_mixture(weights, means, stds) -> GaussianMixture:
    weights = jnp.asarray(weights, jnp.float32)
    means = jnp.asarray(means, jnp.float32)
    stds = jnp.broadcast_to(jnp.asarray(stds, jnp.float32).reshape(
        jnp.shape(stds) + (1,) * (means.ndim - jnp.ndim(stds))), means.shape)
    if weights.ndim != 1 or weights.shape[0] != means.shape[0]:
        raise ValueError(f"weights must have shape ({means.shape[0]},) to match means, got {weights.shape}")
    return GaussianMixture(weights / jnp.sum(weights), means, stds)


def ring_mixture(num_modes: int = 8, *, radius: float = 4.0, std: float = 0.35) -> GaussianMixture:
    """The 2-D ring: ``num_modes`` equal Gaussians with means on a circle."""
    check_int("num_modes", num_modes, minimum=1)
    check_positive("radius", radius)
    check_positive("std", std)
    angles = 2 * math.pi * jnp.arange(num_modes) / num_modes
    means = radius * jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=1)
    return gaussian_mixture(jnp.ones(num_modes), means, std)


def _component_stats(mix: GaussianMixture, x, mean_coeff, std):
    batch = x.shape[0]
    a = jnp.broadcast_to(jnp.asarray(mean_coeff, x.dtype), (batch,))
    s = jnp.broadcast_to(jnp.asarray(std, x.dtype), (batch,))
    flat_x = x.reshape(batch, 1, -1)
    mu = a[:, None, None] * mix.means.reshape(1, mix.means.shape[0], -1)
    var = (a[:, None, None] * mix.stds.reshape(1, mix.stds.shape[0], -1)) ** 2 + (s**2)[:, None, None]
    diff = flat_x - mu
    log_comp = jnp.log(mix.weights)[None] - 0.5 * jnp.sum(diff**2 / var + jnp.log(2 * math.pi * var), axis=-1)
    return diff, var, log_comp


def mixture_log_prob(mix: GaussianMixture, x, mean_coeff=1.0, std=0.0):
    _, _, log_comp = _component_stats(mix, x, mean_coeff, std)
    return jax.nn.logsumexp(log_comp, axis=-1)


@renamed_keywords(sde="process")
def mixture_score_fn(mix: GaussianMixture, process):
    """Exact score ``grad_x log p_t(x)`` of the mixture perturbed by any forward process ``process`` (only its
    ``marginal(t) -> (a, s)`` is used; finite also where ``a = 0``): a ``score_fn(x, t)``."""

    def score_fn(x, t):
        mean_coeff, std = process.marginal(t)
        diff, var, log_comp = _component_stats(mix, x, mean_coeff, std)
        resp = jax.nn.softmax(log_comp, axis=-1)
        return jnp.sum(resp[..., None] * (-diff / var), axis=1).reshape(x.shape)

    return score_fn
