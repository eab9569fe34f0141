"""Noise schedules as pure functions: discrete betas / alpha-bars, continuous beta(t), sigmas, log-SNR.

Discrete schedules return arrays indexed by step ``i = 0 .. N-1`` (the paper's ``t = 1 .. N``).
Continuous schedules are small frozen dataclasses with ``beta(t)`` and ``integral(t) = int_0^t beta(s) ds``,
so that the VP marginal is ``alpha_bar(t) = exp(-integral(t))``.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from diffjax.core._checks import check_int, check_positive

__all__ = [
    "linear_betas",
    "cosine_alpha_bars",
    "cosine_betas",
    "betas_to_alpha_bars",
    "alpha_bars_to_betas",
    "geometric_sigmas",
    "log_snr_from_alpha_bar",
    "alpha_bar_from_log_snr",
    "LinearBeta",
    "CosineBeta",
]


def linear_betas(num_steps: int = 1000, *, beta_start: float = 1e-4, beta_end: float = 0.02) -> jax.Array:
    """DDPM's linear schedule (Ho et al. 2020): ``linspace(beta_start, beta_end, num_steps)``."""
    check_int("num_steps", num_steps, minimum=1)
    check_positive("beta_start", beta_start)
    check_positive("beta_end", beta_end)
    return jnp.linspace(beta_start, beta_end, num_steps, dtype=jnp.float32)


def cosine_alpha_bars(num_steps: int = 1000, *, s: float = 0.008) -> jax.Array:
    """Improved-DDPM cosine schedule (Nichol & Dhariwal 2021, eq. 17), for steps ``t = 1 .. N``.

    .. math:: \\bar\\alpha_t = f(t)/f(0),\\quad f(t) = \\cos^2\\big(\\tfrac{t/N + s}{1 + s}\\,\\tfrac{\\pi}{2}\\big)
    """
    check_int("num_steps", num_steps, minimum=1)
    check_positive("s", s)
    t = jnp.arange(num_steps + 1, dtype=jnp.float64 if jax.config.jax_enable_x64 else jnp.float32) / num_steps
    f = jnp.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return (f[1:] / f[0]).astype(jnp.float32)


def alpha_bars_to_betas(alpha_bars: jax.Array, *, max_beta: float | None = None) -> jax.Array:
    """``beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}`` with ``alpha_bar_0 = 1``, optionally clipped at ``max_beta``."""
    prev = jnp.concatenate([jnp.ones((1,), alpha_bars.dtype), alpha_bars[:-1]])
    betas = 1.0 - alpha_bars / prev
    if max_beta is not None:
        if not 0.0 < max_beta < 1.0:
            raise ValueError(f"max_beta must lie in (0, 1), got {max_beta!r}")
        betas = jnp.minimum(betas, max_beta)
    return betas


def cosine_betas(num_steps: int = 1000, *, s: float = 0.008, max_beta: float = 0.999) -> jax.Array:
    """Betas of the cosine schedule, clipped at ``max_beta`` (0.999 in improved DDPM)."""
    return alpha_bars_to_betas(cosine_alpha_bars(num_steps, s=s), max_beta=max_beta)


def betas_to_alpha_bars(betas: jax.Array) -> jax.Array:
    """.. math:: \\bar\\alpha_t = \\prod_{s \\le t} (1 - \\beta_s)"""
    return jnp.exp(jnp.cumsum(jnp.log1p(-betas)))


def geometric_sigmas(num_scales: int = 10, *, sigma_min: float = 0.01, sigma_max: float = 1.0) -> jax.Array:
    """NCSN's geometric noise levels, **descending** from ``sigma_max`` to ``sigma_min`` (Song & Ermon 2019)."""
    check_int("num_scales", num_scales, minimum=1)
    check_positive("sigma_min", sigma_min)
    check_positive("sigma_max", sigma_max)
    return jnp.exp(jnp.linspace(math.log(sigma_max), math.log(sigma_min), num_scales)).astype(jnp.float32)


def log_snr_from_alpha_bar(alpha_bar: jax.Array) -> jax.Array:
    """.. math:: \\lambda = \\log\\frac{\\bar\\alpha}{1-\\bar\\alpha}"""
    return jnp.log(alpha_bar) - jnp.log1p(-alpha_bar)


def alpha_bar_from_log_snr(log_snr: jax.Array) -> jax.Array:
    """Inverse of :func:`log_snr_from_alpha_bar`: ``sigmoid(log_snr)``."""
    return jax.nn.sigmoid(log_snr)


@dataclasses.dataclass(frozen=True)
class LinearBeta:
    """Continuous linear schedule of score-SDE: ``beta(t) = beta_min + t (beta_max - beta_min)``, t in [0, 1]."""

    beta_min: float = 0.1
    beta_max: float = 20.0

    def __post_init__(self):
        check_positive("beta_min", self.beta_min)
        check_positive("beta_max", self.beta_max)
        if self.beta_max < self.beta_min:
            raise ValueError(f"beta_max must be >= beta_min={self.beta_min!r}, got {self.beta_max!r}")

    def beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def integral(self, t):
        return self.beta_min * t + 0.5 * t**2 * (self.beta_max - self.beta_min)

    def discrete_betas(self, num_steps: int) -> jax.Array:
        """DDPM discretization (score-SDE): ``linspace(beta_min/N, beta_max/N, N)``."""
        return jnp.linspace(self.beta_min / num_steps, self.beta_max / num_steps, num_steps, dtype=jnp.float32)


@dataclasses.dataclass(frozen=True)
class CosineBeta:
    """Continuous cosine schedule: ``alpha_bar(t) = cos^2(theta(t)) / cos^2(theta(0))``, theta linear in t.

    ``theta(0) = s/(1+s) * pi/2`` as in improved DDPM; ``theta(1)`` is chosen so that
    ``alpha_bar(1) = alpha_bar_end`` (improved DDPM's curve reaches exactly 0 at t=1, where beta is infinite;
    ending at a small positive alpha-bar keeps the SDE finite, like the 0.999 beta clip does for the discrete one).
    """

    s: float = 0.008
    alpha_bar_end: float = 5e-5

    def __post_init__(self):
        check_positive("s", self.s)
        if not 0.0 < self.alpha_bar_end < 1.0:
            raise ValueError(f"alpha_bar_end must lie in (0, 1), got {self.alpha_bar_end!r}")

    @property
    def _theta0(self) -> float:
        return self.s / (1 + self.s) * math.pi / 2

    @property
    def _theta1(self) -> float:
        return math.acos(math.sqrt(self.alpha_bar_end) * math.cos(self._theta0))

    def _theta(self, t):
        return self._theta0 + t * (self._theta1 - self._theta0)

    def beta(self, t):
        return 2.0 * jnp.tan(self._theta(t)) * (self._theta1 - self._theta0)

    def integral(self, t):
        return -2.0 * (jnp.log(jnp.cos(self._theta(t))) - math.log(math.cos(self._theta0)))

    def discrete_betas(self, num_steps: int) -> jax.Array:
        """Betas of the grid ``t_i = (i+1)/N`` from the exact alpha-bars, clipped at 0.999."""
        t = jnp.arange(1, num_steps + 1, dtype=jnp.float32) / num_steps
        return alpha_bars_to_betas(jnp.exp(-self.integral(t)), max_beta=0.999)
