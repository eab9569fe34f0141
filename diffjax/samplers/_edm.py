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

import math
import numbers

import jax
import jax.numpy as jnp

from diffjax.core._checks import check_nonnegative
from diffjax.samplers._common import batch_time, check_common, from_solve_dtype, time_dtype, to_solve_dtype
from diffjax.samplers._grids import check_time_grid, karras
from diffjax.samplers._samplers import _check_bool, _jit

__all__ = ["edm_heun"]

_MAX_GAMMA = math.sqrt(2.0) - 1.0  # EDM: gamma_i <= sqrt(2) - 1, at most doubling the noise variance


def _levels(time_grid, sde, num_steps, t_eps):
    """EDM's ``N = num_steps`` noise levels ``t_0 .. t_{N-1}``: ``time_grid`` with ``N - 1`` intervals down to
    ``t_eps`` (``sigma_min``); EDM's ``t_N = 0`` (the data) is not among them. ``N = 1``: the grid's top only."""
    if num_steps == 1:
        return time_grid(sde, 1, t_eps)[:1]
    return time_grid(sde, num_steps - 1, t_eps)


@_jit("score_fn", "sde", "num_steps", "t_eps", "time_grid", "s_churn", "s_tmin", "s_tmax", "s_noise", "denoise")
def _edm_heun(key, x_T, *, score_fn, sde, num_steps, t_eps, time_grid, s_churn, s_tmin, s_tmax, s_noise, denoise):
    x_in, x_T = x_T, to_solve_dtype(x_T)
    times = _levels(time_grid, sde, num_steps, t_eps).astype(time_dtype(x_T))
    a_levels, s_levels = sde.marginal(times)
    sigmas = s_levels / a_levels
    gamma = min(s_churn / num_steps, _MAX_GAMMA)
    gammas = jnp.where((sigmas >= s_tmin) & (sigmas <= s_tmax), gamma, 0.0).astype(times.dtype)

    def slope(y, t, sigma):
        """``dy/dsigma = (y - D(y; sigma)) / sigma`` with the score at time ``t`` (whose ``s/a`` is ``sigma``)."""
        tb = batch_time(t, y)
        a = sde.marginal(t)[0]
        return -sigma * a * score_fn(a * y, tb)

    def churn(i, y, t, sigma, gamma_i):
        """Lines 4-6: raise the noise to ``sigma_hat = (1 + gamma_i) sigma``, at its time ``t_hat``."""
        if s_churn == 0.0:
            return y, t, sigma
        sigma_hat = sigma * (1.0 + gamma_i)
        t_hat = jnp.where(gamma_i > 0, sde.t_from_log_snr(-2.0 * jnp.log(sigma_hat)), t)
        eps = s_noise * jax.random.normal(jax.random.fold_in(key, i), y.shape, y.dtype)
        return y + sigma * jnp.sqrt(gamma_i * (2.0 + gamma_i)) * eps, t_hat, sigma_hat  # sqrt(sig_hat^2 - sig^2)

    def heun(y, inputs):
        i, t, t_next, sigma, sigma_next, gamma_i = inputs
        y_hat, t_hat, sigma_hat = churn(i, y, t, sigma, gamma_i)
        d = slope(y_hat, t_hat, sigma_hat)
        y_next = y_hat + (sigma_next - sigma_hat) * d  # Euler (line 8)
        d_next = slope(y_next, t_next, sigma_next)
        return y_hat + (sigma_next - sigma_hat) * (0.5 * d + 0.5 * d_next), None  # trapezoid (line 11)

    y = x_T / a_levels[0]
    last = num_steps - 1
    if last:
        y, _ = jax.lax.scan(heun, y, (jnp.arange(last), times[:-1], times[1:], sigmas[:-1], sigmas[1:], gammas[:-1]))
    if not denoise:
        return from_solve_dtype(a_levels[last] * y, x_in)
    # The last step, from sigma_{N-1} to sigma_N = 0, is Euler (EDM line 9): y - sigma_hat d = D(y_hat; sigma_hat).
    y_hat, t_hat, sigma_hat = churn(last, y, times[last], sigmas[last], gammas[last])
    return from_solve_dtype(y_hat - sigma_hat * slope(y_hat, t_hat, sigma_hat), x_in)


def _check_s_tmax(s_tmax, s_tmin):
    if isinstance(s_tmax, bool) or not isinstance(s_tmax, numbers.Real) or math.isnan(s_tmax) or s_tmax < s_tmin:
        raise ValueError(f"s_tmax must be a number >= s_tmin={s_tmin!r} (inf: no upper bound), got {s_tmax!r}")
    return float(s_tmax)


def edm_heun(key, x_T, score_fn, sde, *, num_steps: int = 18, t_eps=None, time_grid=karras, s_churn: float = 0.0,
             s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0, denoise: bool = True,
             return_nfe: bool = False):
    """EDM's stochastic Heun sampler (Karras et al. 2022, Algorithm 2) on any process, in ``sigma = s/a``.

    ``N = num_steps`` noise levels ``sigma_i = s/a`` at the times ``t_0 = T > ... > t_{N-1} = t_eps`` of
    ``time_grid`` (with ``N - 1`` intervals; default :func:`karras`, EDM's eq. 5 with rho = 7, so on
    ``edm_sde()`` these are EDM's ``sigma_i`` from 80 to 0.002), then ``sigma_N = 0``. Step ``i`` first adds noise
    (churn) up to ``sigma_hat = (1 + gamma_i) sigma_i``, ``gamma_i = min(s_churn / N, sqrt(2) - 1)`` where
    ``s_tmin <= sigma_i <= s_tmax`` (else 0), then takes a Heun step of ``dy/dsigma`` (module docstring) to
    ``sigma_{i+1}``; the last step, to ``sigma_N = 0``, is Euler, and lands on the denoiser ``D(y; sigma_hat)``:
    the sample of the data (``t = 0``, where ``a = 1``). ``s_churn = 0``: EDM's deterministic Algorithm 1.

    .. math:: y_{i+1} = \\hat y_i + (\\sigma_{i+1} - \\hat\\sigma_i) \\tfrac12 (d(\\hat y_i, \\hat\\sigma_i)
        + d(y^E_{i+1}, \\sigma_{i+1})),\\quad \\hat y_i = y_i + \\sqrt{\\hat\\sigma_i^2 - \\sigma_i^2}\\, S_{noise} z_i

    The sampler starts from ``y_0 = x_T / a(t_0)`` and evaluates the score at ``(a y, t)``; a churned level's time
    is ``sde.t_from_log_snr(-2 log sigma_hat)`` (closed forms for VP, VE, EDM, rectified flow; for a
    :func:`~diffjax.gaussian_path`, whose inverse bisects ``[0, T]``, a ``sigma_hat`` above ``s/a`` at ``T`` maps
    to ``T``: keep ``s_tmax`` below it there).

    Args:
        key: PRNG key; step ``i``'s churn noise is ``s_noise * jax.random.normal(jax.random.fold_in(key, i),
            x_T.shape)`` (no draws when ``s_churn = 0``).
        x_T: (batch, *dims) prior sample, e.g. ``sde.prior_sample(key, shape)``.
        score_fn: ``score_fn(x, t)``.
        sde: any forward process.
        num_steps: EDM's ``N`` (default 18, its CIFAR-10 setting), >= 1.
        t_eps: the lowest noise level's time, EDM's ``sigma_min`` (default ``sde.t_eps``: 0.002 on ``edm_sde()``).
        time_grid: the levels' times, ``time_grid(sde, N - 1, t_eps)`` (any grid of :mod:`diffjax.samplers`).
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
    num_steps, t_eps = check_common(x_T, score_fn, sde, num_steps, t_eps, default_steps=18, sampler="edm_heun")
    denoise = _check_bool("denoise", denoise)
    if num_steps == 1 and not denoise:
        raise ValueError("num_steps must be >= 2 for edm_heun with denoise=False (N - 1 Heun steps from T to t_eps), "
                         "got 1")
    check_time_grid(time_grid, sde, max(num_steps - 1, 1), t_eps)
    s_churn = check_nonnegative("s_churn", s_churn)
    s_tmin = check_nonnegative("s_tmin", s_tmin)
    s_tmax = _check_s_tmax(s_tmax, s_tmin)
    s_noise = check_nonnegative("s_noise", s_noise)
    return_nfe = _check_bool("return_nfe", return_nfe)
    x = _edm_heun(key, x_T, score_fn=score_fn, sde=sde, num_steps=num_steps, t_eps=t_eps, time_grid=time_grid,
                  s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise, denoise=denoise)
    if return_nfe:
        return x, jnp.asarray(2 * num_steps - 1 if denoise else 2 * (num_steps - 1), jnp.int32)
    return x
