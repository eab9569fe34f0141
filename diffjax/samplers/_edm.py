"""EDM's Heun sampler (Karras et al. 2022, Algorithm 2; Algorithm 1 at ``s_churn = 0``) on any process.

EDM writes its sampler for a process ``x = s(t) (x_0 + sigma(t) eps)`` (its Algorithm 1 in general form). Every
diffjax process is ``x_t = a(t) x_0 + s(t) eps``: EDM's scale is ``a(t)`` and its ``sigma`` is the
noise-to-signal ratio ``s/a``. On the scaled variable ``y = x / a = x_0 + sigma eps`` the probability-flow ODE is
EDM's eq. 3 on its own process (``a = 1``, ``s = sigma``), with the denoiser ``D(y; sigma) = y + sigma^2 a
score(a y, t)`` (``t`` the time whose ``s/a`` is ``sigma``):

.. math:: \\frac{dy}{d\\sigma} = \\frac{y - D(y; \\sigma)}{\\sigma} = -\\sigma\\, a(t)\\, s_\\theta(a(t) y, t)

So one loop on ``(y, sigma)`` is literally EDM's algorithm on :func:`~diffjax.edm_sde` (``a = 1``, ``t = sigma``)
and the same second-order method on VP, VE, rectified flow or any :func:`~diffjax.gaussian_path`.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Callable

import jax
import jax.numpy as jnp

from diffjax.core._checks import check_nonnegative
from diffjax.samplers._common import batch_time, check_common, deprecated_sde_keyword
from diffjax.samplers._driver import sample_steps
from diffjax.samplers._grids import check_time_grid, karras_grid

__all__ = ["edm_heun"]

_MAX_GAMMA = math.sqrt(2.0) - 1.0  # EDM: gamma_i <= sqrt(2) - 1, at most doubling the noise variance


@dataclasses.dataclass(frozen=True)
class EDMHeunStep:
    """One step of EDM's Algorithm 2 in ``y = x / a`` and ``sigma = s / a`` (module docstring): churn at ``t``,
    then Heun to ``t_next``. The state is ``(y, t)``; the output is EDM's last step, Euler to ``sigma = 0``
    (``denoise``), or ``x = a y`` at the last level."""
    score_fn: Callable
    process: Any
    gamma: float  # min(s_churn / N, sqrt(2) - 1)
    s_churn: float
    s_tmin: float
    s_tmax: float
    s_noise: float
    denoise: bool

    def _sigma_gamma(self, t):
        """``sigma = s/a`` at ``t`` and its churn ``gamma_i`` (``gamma`` where ``s_tmin <= sigma <= s_tmax``)."""
        a, s = self.process.marginal(t)
        sigma = s / a
        return sigma, jnp.where((sigma >= self.s_tmin) & (sigma <= self.s_tmax), self.gamma, 0.0).astype(t.dtype)

    def _slope(self, y, t, sigma):
        """``dy/dsigma = (y - D(y; sigma)) / sigma`` with the score at time ``t`` (whose ``s/a`` is ``sigma``)."""
        a = self.process.marginal(t)[0]
        return -sigma * a * self.score_fn(a * y, batch_time(t, y))

    def _churn(self, key, y, t):
        """Lines 4-6: raise the noise to ``sigma_hat = (1 + gamma_i) sigma``, at its time ``t_hat``."""
        sigma, gamma_i = self._sigma_gamma(t)
        if self.s_churn == 0.0:
            return y, t, sigma
        sigma_hat = sigma * (1.0 + gamma_i)
        t_hat = jnp.where(gamma_i > 0, self.process.t_from_log_snr(-2.0 * jnp.log(sigma_hat)), t)
        eps = self.s_noise * jax.random.normal(key, y.shape, y.dtype)
        return y + sigma * jnp.sqrt(gamma_i * (2.0 + gamma_i)) * eps, t_hat, sigma_hat  # sqrt(sig_hat^2 - sig^2)

    def init(self, x_T, t):
        return x_T / self.process.marginal(t)[0], t

    def step(self, key, state, t, t_next):
        y_hat, t_hat, sigma_hat = self._churn(key, state[0], t)
        sigma_next = self._sigma_gamma(t_next)[0]
        d = self._slope(y_hat, t_hat, sigma_hat)
        y_next = y_hat + (sigma_next - sigma_hat) * d  # Euler (line 8)
        d_next = self._slope(y_next, t_next, sigma_next)
        return y_hat + (sigma_next - sigma_hat) * (0.5 * d + 0.5 * d_next), t_next  # trapezoid (line 11)

    def output(self, key, state):
        y, t = state
        if not self.denoise:
            return self.process.marginal(t)[0] * y
        # The last step, from sigma_{N-1} to sigma_N = 0, is Euler (EDM line 9): y - sigma_hat d = D(y_hat; sigma_hat).
        y_hat, t_hat, sigma_hat = self._churn(key, y, t)
        return y_hat - sigma_hat * self._slope(y_hat, t_hat, sigma_hat)

    def nfe(self, num_steps: int) -> int:
        return 2 * num_steps + self.denoise


def _check_s_tmax(s_tmax, s_tmin):
    if isinstance(s_tmax, bool) or not isinstance(s_tmax, numbers.Real) or math.isnan(s_tmax) or s_tmax < s_tmin:
        raise ValueError(f"s_tmax must be a number >= s_tmin={s_tmin!r} (inf: no upper bound), got {s_tmax!r}")
    return float(s_tmax)


@deprecated_sde_keyword
def edm_heun(key, x_T, score_fn, process, *, num_steps: int = 18, t_eps=None, time_grid=karras_grid,
             s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0,
             denoise: bool = True, return_nfe: bool = False):
    """EDM's stochastic Heun sampler (Karras et al. 2022, Algorithm 2) on any process, in ``sigma = s/a``.

    ``N = num_steps`` noise levels ``sigma_i = s/a`` at the times ``t_0 = T > ... > t_{N-1} = t_eps`` of
    ``time_grid`` (with ``N - 1`` intervals; default :func:`karras_grid`, EDM's eq. 5 with rho = 7, so on
    ``edm_sde()`` these are EDM's ``sigma_i`` from 80 to 0.002), then ``sigma_N = 0``. Step ``i`` first adds noise
    (churn) up to ``sigma_hat = (1 + gamma_i) sigma_i``, ``gamma_i = min(s_churn / N, sqrt(2) - 1)`` where
    ``s_tmin <= sigma_i <= s_tmax`` (else 0), then takes a Heun step of ``dy/dsigma`` (module docstring) to
    ``sigma_{i+1}``; the last step, to ``sigma_N = 0``, is Euler, and lands on the denoiser ``D(y; sigma_hat)``:
    the sample of the data (``t = 0``, where ``a = 1``). ``s_churn = 0``: EDM's deterministic Algorithm 1.

    .. math:: y_{i+1} = \\hat y_i + (\\sigma_{i+1} - \\hat\\sigma_i) \\tfrac12 (d(\\hat y_i, \\hat\\sigma_i)
        + d(y^E_{i+1}, \\sigma_{i+1})),\\quad \\hat y_i = y_i + \\sqrt{\\hat\\sigma_i^2 - \\sigma_i^2}\\, S_{noise} z_i

    The sampler starts from ``y_0 = x_T / a(t_0)`` and evaluates the score at ``(a y, t)``; a churned level's time
    is ``process.t_from_log_snr(-2 log sigma_hat)`` (closed forms for VP, VE, EDM, rectified flow; for a
    :func:`~diffjax.gaussian_path`, whose inverse bisects ``[0, T]``, a ``sigma_hat`` above ``s/a`` at ``T`` maps
    to ``T``: keep ``s_tmax`` below it there).

    Args:
        key: PRNG key; step ``i``'s churn noise is ``s_noise * jax.random.normal(jax.random.fold_in(key, i),
            x_T.shape)`` (no draws when ``s_churn = 0``).
        x_T: (batch, *dims) prior sample, e.g. ``process.prior_sample(key, shape)``.
        score_fn: ``score_fn(x, t)``.
        process: any forward process.
        num_steps: EDM's ``N`` (default 18, its CIFAR-10 setting), >= 1.
        t_eps: the lowest noise level's time, EDM's ``sigma_min`` (default ``process.t_eps``: 0.002 on ``edm_sde()``).
        time_grid: the levels' times, ``time_grid(process, N - 1, t_eps)`` (any grid of :mod:`diffjax.samplers`).
        s_churn, s_tmin, s_tmax, s_noise: EDM's ``S_churn`` (total churn; 0: deterministic), ``S_tmin``,
            ``S_tmax`` (the ``sigma`` range that is churned) and ``S_noise`` (the churn noise's scale; EDM's
            ImageNet-64 setting is 80, 0.05, 50, 1.003).
        denoise: take the last step to ``sigma = 0`` (EDM; default). False: stop at ``t_eps`` after ``N - 1``
            Heun steps and return ``x = a(t_eps) y`` there (needs ``N >= 2``).
        return_nfe: also return the number of score evaluations (an int32 array).

    Returns:
        ``x_0`` (batch, *dims), or ``(x_0, nfe)`` if ``return_nfe``. Score evaluations: ``2 N - 1`` (Heun on all
        but the last step; EDM's 35 at N = 18), ``2 (N - 1)`` with ``denoise=False``.
    """
    c = check_common("edm_heun", x_T, score_fn, process, num_steps, t_eps, default_steps=18, denoise=denoise,
                     return_nfe=return_nfe)
    if c.num_steps == 1 and not c.denoise:
        raise ValueError("num_steps must be >= 2 for edm_heun with denoise=False (N - 1 Heun steps from T to t_eps), "
                         "got 1")
    # EDM's N = num_steps noise levels: the grid with N - 1 intervals down to t_eps (sigma_min); N = 1: its top only.
    # EDM's t_N = 0 (the data) is not among them: the output's last step goes there.
    levels = check_time_grid(time_grid, process, max(c.num_steps - 1, 1), c.t_eps)[:c.num_steps]
    s_churn = check_nonnegative("s_churn", s_churn)
    s_tmin = check_nonnegative("s_tmin", s_tmin)
    s_tmax = _check_s_tmax(s_tmax, s_tmin)
    s_noise = check_nonnegative("s_noise", s_noise)
    step = EDMHeunStep(score_fn, process, min(s_churn / c.num_steps, _MAX_GAMMA), s_churn, s_tmin, s_tmax, s_noise,
                       c.denoise)
    return sample_steps(key, x_T, levels, step, return_nfe=c.return_nfe)
