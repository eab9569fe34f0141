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

    def inverse_integral(self, integral):
        """The ``t >= 0`` with ``integral(t) = integral`` (the cancellation-free root of the quadratic).

        .. math:: t = \\frac{2 I}{\\beta_{min} + \\sqrt{\\beta_{min}^2 + 2 (\\beta_{max} - \\beta_{min}) I}}
        """
        integral = jnp.asarray(integral)
        b0, db = self.beta_min, self.beta_max - self.beta_min
        return 2.0 * integral / (b0 + jnp.sqrt(b0**2 + 2.0 * db * integral))

    def discrete_betas(self, num_steps: int) -> jax.Array:
        """DDPM discretization (score-SDE): ``linspace(beta_min/N, beta_max/N, N)``.

        Raises ``ValueError`` when a beta would reach 1 (``num_steps <= beta_max``, or ``<= beta_min`` for one
        step): the chain's ``sqrt(1 - beta)`` and its alpha-bars would be NaN.
        """
        num_steps = check_int("num_steps", num_steps, minimum=1)
        top = self.beta_max if num_steps > 1 else self.beta_min
        if not top / num_steps < 1.0:
            raise ValueError(f"num_steps={num_steps} is too few for the DDPM discretization of LinearBeta("
                             f"beta_min={self.beta_min!r}, beta_max={self.beta_max!r}): its betas beta(t)/num_steps "
                             f"reach {top / num_steps:.3g} >= 1; allowed: num_steps > {top!r} (the SDE's N)")
        return jnp.linspace(self.beta_min / num_steps, self.beta_max / num_steps, num_steps, dtype=jnp.float32)


@dataclasses.dataclass(frozen=True)
class CosineBeta:
    """The cosine schedule of improved DDPM (Nichol & Dhariwal 2021): its published discrete grid, and a finite
    continuous-time curve for the SDE samplers.

    * Discrete (:meth:`discrete_betas`, used by the DDPM grid, DDPM losses, ancestral sampling and DDIM): exactly
      the published betas :func:`cosine_betas` ``(N, s)``, ``beta_t = 1 - abar_t / abar_{t-1}`` with
      ``abar_t = f(t/N)/f(0)``, clipped at 0.999 (at N = 1000 the last beta is the clipped 0.999 and
      ``abar_T = 2.4e-9``).
    * Continuous (:meth:`beta`, :meth:`integral`, the VP SDE's marginal): the same curve with ``theta`` linear from
      ``theta0 = s/(1+s) pi/2`` to a ``theta1`` just below ``pi/2``, chosen so that ``alpha_bar(1) =
      alpha_bar_end``:

    .. math:: \\bar\\alpha(t) = \\frac{\\cos^2\\theta(t)}{\\cos^2\\theta_0},\\quad
              \\theta(t) = \\theta_0 + t (\\theta_1 - \\theta_0),\\quad \\bar\\alpha(t) = \\frac{f(c t)}{f(0)},\\quad
              c = \\frac{\\theta_1 - \\theta_0}{\\pi/2 - \\theta_0}

    i.e. the published ``f(t)/f(0)`` on a time axis shrunk by ``c`` (0.99546 for the default ``alpha_bar_end``).
    The published curve reaches 0 at t = 1, where ``beta = -d log abar/dt`` is infinite; ending at a positive
    ``alpha_bar_end`` (the role the 0.999 clip plays for the grid) keeps ``beta`` finite: ``beta(1) = 439`` for
    the default 5e-5, chosen close to the linear VP SDE's ``alpha_bar(1) = 4.3e-5`` (the same prior mismatch).
    This curve is within 4.1e-3 of the published one in ``alpha_bar`` over [0, 1]. A smaller ``alpha_bar_end``
    brings it closer (3e-7: within 3.2e-4) at the price of a stiffer SDE near T (``beta(1) = 5.7e3``).
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

    def inverse_integral(self, integral):
        """The ``t`` with ``integral(t) = integral``: ``theta = arccos(cos(theta0) exp(-I/2))``, linear in ``t``.

        .. math:: t = \\frac{\\arccos(\\cos\\theta_0\\, e^{-I/2}) - \\theta_0}{\\theta_1 - \\theta_0}
        """
        theta = jnp.arccos(math.cos(self._theta0) * jnp.exp(-0.5 * jnp.asarray(integral)))
        return (theta - self._theta0) / (self._theta1 - self._theta0)

    def discrete_betas(self, num_steps: int) -> jax.Array:
        """Improved DDPM's published grid: :func:`cosine_betas` ``(num_steps, s)``, clipped at 0.999.

        It does not depend on ``alpha_bar_end``, which shapes only the continuous curve.
        """
        return cosine_betas(check_int("num_steps", num_steps, minimum=1), s=self.s, max_beta=0.999)
