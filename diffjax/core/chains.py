"""The discrete chains a process offers (``process.chain()``, :class:`~diffjax.core.contracts.DiscreteChain`):
DDPM's beta chain (:class:`DDPMGrid`, on VP) and SMLD's sigma chain (:class:`SMLDChain`, on VE), each with its
reverse (ancestral) step. DDPM's and NCSN's losses and the variational bound, written in terms of these, live in
:mod:`diffjax.discrete`, which re-exports the chains.

The DDPM grid has steps ``i = 0 .. N-1`` (the paper's ``t = 1 .. N``) with the discrete
``alpha_bar_i = prod_{j<=i} (1 - beta_j)``. Step ``i`` sits at the continuous time ``t_i`` at which the process's
marginal equals ``alpha_bar_i`` (``t_i = process.t_from_log_snr(log_snr(alpha_bar_i))``, :func:`ddpm_chain`; uniform
``i/(N-1) T`` for a grid made from raw betas), and the grid's ``marginal(t)`` is ``alpha_bar`` of the step nearest
``t``. So a score function and the core's loss see the grid through the same ``marginal(t)`` interface as an SDE,
and a sampler that evaluates a model at ``t_i`` gives a discrete model exactly step ``i`` and a continuous one
exactly ``alpha_bar_i``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import jax
import jax.numpy as jnp

from diffjax.core._checks import check_choice
from diffjax.core.learned_variance import has_learned_variance
from diffjax.core.process import MarginalPath, bcast, check_process
from diffjax.core.schedules import betas_to_alpha_bars

__all__ = ["DDPMGrid", "ddpm_grid_from_betas", "ddpm_chain", "ddpm_model_mean_logvar", "SMLDChain", "DDIM_SPACINGS",
           "require_chain"]

DDIM_SPACINGS = ("leading", "trailing", "linspace")
DDPM_VARIANCES = ("beta", "posterior", "learned")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DDPMGrid(MarginalPath):
    """Discrete VP chain: ``betas`` and ``alpha_bars`` of shape ``(N,)``. A pytree (arrays are leaves).

    ``times``: the ``(N,)`` increasing continuous times of the steps (see the module docstring), or ``None`` for
    the uniform ``t_i = i/(N-1) T``.
    """

    betas: jax.Array
    alpha_bars: jax.Array
    T: float = dataclasses.field(default=1.0, metadata=dict(static=True))
    times: Optional[jax.Array] = None

    variances = DDPM_VARIANCES  # the options of ancestral_step's variance, DDPM's "beta" first
    label = "a DDPM chain (vp_sde, cosine_vp_sde)"  # for messages

    @property
    def N(self) -> int:
        return self.betas.shape[0]

    def time(self, i):
        """The continuous time of step ``i`` (int, ``()`` or any shape)."""
        if self.times is None:
            return jnp.asarray(i, jnp.float32) * (self.T / max(self.N - 1, 1))
        return self.times[jnp.asarray(i, jnp.int32)]

    def index(self, t):
        """The step whose time is nearest ``t`` (``index(time(i)) == i``), int32 shaped like ``t``."""
        if self.times is None:
            return jnp.clip(jnp.round(jnp.asarray(t) * (self.N - 1) / self.T), 0, self.N - 1).astype(jnp.int32)
        t = jnp.asarray(t, self.times.dtype)
        hi = jnp.clip(jnp.searchsorted(self.times, t), 1, max(self.N - 1, 1))
        lo = hi - 1
        nearer_lo = jnp.abs(t - self.times[lo]) <= jnp.abs(self.times[hi] - t)
        return jnp.where(nearer_lo, lo, hi).astype(jnp.int32) if self.N > 1 else jnp.zeros(t.shape, jnp.int32)

    def subsequence(self, num_steps: int, *, spacing: str = "leading"):
        """``num_steps`` increasing step indices of a strided sampler (DDIM's ``tau``), as a NumPy int array.

        diffusers' ``timestep_spacing`` (``DDIMScheduler``, ``steps_offset=0``), with ``N = self.N``, ``S =
        num_steps``:

        * "leading": ``j * (N // S)``, ``j < S`` -- the DDIM paper's "linear" selection (its CelebA / LSUN runs and
          its code's ``skip_type="uniform"``); ends at step 0, skips the top ``N - S (N // S)`` steps.
        * "trailing": ``round(N - j N / S) - 1``, ``j < S`` -- starts at step ``N-1`` (Lin et al. 2024).
        * "linspace": ``round(linspace(0, N-1, S))`` -- improved DDPM's respacing (``S`` evenly spaced real steps
          between the first and the last, rounded).

        .. math:: \\tau^{lead}_j = j \\lfloor N/S \\rfloor,\\quad \\tau^{trail}_j = \\mathrm{round}(N - jN/S) - 1,\\quad
            \\tau^{lin}_j = \\mathrm{round}(j (N-1)/(S-1))
        """
        import numpy as np

        check_choice("spacing", spacing, DDIM_SPACINGS)
        n = self.N
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not 1 <= num_steps <= n:
            raise ValueError(f"num_steps must be an integer in 1 .. N={n}, got {num_steps!r}")
        j = np.arange(num_steps)
        if spacing == "leading":
            seq = j * (n // num_steps)
        elif spacing == "trailing":
            seq = np.round(n - j * (n / num_steps)).astype(np.int64)[::-1] - 1
        else:
            seq = np.round(np.linspace(0, n - 1, num_steps)).astype(np.int64)
        return np.sort(seq).astype(np.int32)

    def marginal(self, t):
        abar = self.alpha_bars[self.index(t)]
        return jnp.sqrt(abar), jnp.sqrt(1.0 - abar)

    def sample_time(self, key, batch: int):
        """Uniform grid step (DDPM Algorithm 1, line 3), returned as its continuous time ``t_i``."""
        return self.time(jax.random.randint(key, (batch,), 0, self.N))

    def posterior_variance(self, i):
        """``beta_tilde_i = (1 - alpha_bar_{i-1}) / (1 - alpha_bar_i) beta_i`` (eq. 7); 0 at i = 0."""
        abar_prev = jnp.where(i > 0, self.alpha_bars[jnp.maximum(i - 1, 0)], 1.0)
        return (1.0 - abar_prev) / (1.0 - self.alpha_bars[i]) * self.betas[i]

    def clipped_log_posterior_variance(self, i):
        """``log beta_tilde_i``, with ``beta_tilde_1`` in place of ``beta_tilde_0 = 0`` (improved DDPM's
        ``posterior_log_variance_clipped``)."""
        var = self.posterior_variance(jnp.where(i == 0, min(1, self.N - 1), i))
        return jnp.log(jnp.where(var > 0, var, self.betas[i]))

    def posterior(self, x0, x_t, i):
        """Mean and variance of ``q(x_{i-1} | x_i, x_0)`` (Ho et al. eq. 6-7); ``i``: () or (batch,) ints."""
        i = jnp.asarray(i)
        abar = self.alpha_bars[i]
        abar_prev = jnp.where(i > 0, self.alpha_bars[jnp.maximum(i - 1, 0)], 1.0)
        beta = self.betas[i]
        coef_x0 = jnp.sqrt(abar_prev) * beta / (1.0 - abar)
        coef_xt = jnp.sqrt(1.0 - beta) * (1.0 - abar_prev) / (1.0 - abar)
        mean = bcast(coef_x0, x0) * x0 + bcast(coef_xt, x_t) * x_t
        return mean, self.posterior_variance(i)

    def ancestral_step(self, key, x, i, score_fn, *, variance: str = "beta"):
        """One step of DDPM Algorithm 2 from step ``i`` to ``i-1``, written with the score at ``t_i = time(i)``.

        With ``eps = -sqrt(1 - alpha_bar_i) * score``:

        .. math:: x_{i-1} = \\frac{x_i + \\beta_i s_\\theta(x_i, t_i)}{\\sqrt{1-\\beta_i}} + \\sigma_i z

        ``variance``: "beta" (``sigma_i^2 = beta_i``), "posterior" (``beta_tilde_i``) or "learned" (improved DDPM's
        ``Sigma_theta = exp(f log beta_i + (1-f) log beta_tilde_i)``, ``f = (v+1)/2``, :func:`ddpm_model_mean_logvar`,
        with ``v`` from ``score_fn.score_and_v``: a :class:`~diffjax.LearnedVarianceScore`, one model evaluation);
        no noise at ``i = 0``. Returns ``(x_{i-1}, mean)``.
        """
        check_choice("variance", variance, self.variances)
        if variance == "learned" and not has_learned_variance(score_fn):
            raise ValueError(f"variance='learned' needs a score_fn with a learned variance (score_fn.score_and_v, e.g. "
                             f"make_score_fn(..., learned_sigma=True)), got {score_fn!r}")
        i = jnp.asarray(i, jnp.int32)
        t = jnp.full((x.shape[0],), self.time(i))
        beta = self.betas[i]
        noise = jax.random.normal(key, x.shape, x.dtype)
        if variance == "learned":
            score, v = score_fn.score_and_v(x, t)
            eps = -bcast(jnp.sqrt(1.0 - self.alpha_bars[i]), x) * score
            mean, logvar = ddpm_model_mean_logvar(x, i, eps, v, self)
            return mean + jnp.where(i > 0, jnp.exp(0.5 * logvar), 0.0) * noise, mean
        mean = (x + beta * score_fn(x, t)) / jnp.sqrt(1.0 - beta)
        var = beta if variance == "beta" else self.posterior_variance(i)
        return mean + jnp.where(i > 0, jnp.sqrt(var), 0.0) * noise, mean


def ddpm_grid_from_betas(betas: jax.Array, *, T: float = 1.0) -> DDPMGrid:
    betas = jnp.asarray(betas, jnp.float32)
    if betas.ndim != 1 or betas.shape[0] < 1:
        raise ValueError(f"betas must be a non-empty 1-D array, got shape {betas.shape}")
    return DDPMGrid(betas, betas_to_alpha_bars(betas), T)


def ddpm_chain(process, betas: jax.Array) -> DDPMGrid:
    """The DDPM chain of ``betas`` on the time axis of ``process``: step ``i`` at the time where the process's
    marginal equals the grid's ``alpha_bar_i`` (what a VP SDE's ``chain()`` returns, with its ``discrete_betas()``).

    .. math:: t_i = \\lambda^{-1}\\big(\\log\\bar\\alpha_i - \\log(1 - \\bar\\alpha_i)\\big)

    (``lambda^{-1}`` = ``process.t_from_log_snr``). The discrete ``alpha_bar`` falls below the SDE's at the top of
    the grid, so the last times can lie slightly above ``T`` (about ``1.006 T`` for score-SDE's linear VP at
    N = 1000).
    """
    grid = ddpm_grid_from_betas(betas, T=process.T)
    log_abar = jnp.cumsum(jnp.log1p(-grid.betas))  # log alpha_bar without the rounding of 1 - alpha_bar near 1
    times = process.t_from_log_snr(log_abar - jnp.log(-jnp.expm1(log_abar)))
    return dataclasses.replace(grid, times=times.astype(jnp.float32))


def ddpm_model_mean_logvar(x_t, i, eps, v, grid: DDPMGrid):
    """Mean and log-variance of ``p(x_{i-1} | x_i)`` for a learned-variance eps model (Nichol & Dhariwal 2021).

    .. math:: \\mu = \\frac{x_i - \\beta_i \\epsilon / \\sqrt{1-\\bar\\alpha_i}}{\\sqrt{1-\\beta_i}},\\quad
        \\log\\Sigma = f \\log\\beta_i + (1-f)\\log\\tilde\\beta_i,\\ f = (v+1)/2

    Args:
      x_t: ``(batch, *dims)``; i: ``()`` or ``(batch,)`` int steps; eps, v: model outputs shaped like ``x_t``.
    """
    i = jnp.asarray(i, jnp.int32)
    beta = grid.betas[i]
    mean = (x_t - bcast(beta / jnp.sqrt(1.0 - grid.alpha_bars[i]), x_t) * eps) / bcast(jnp.sqrt(1.0 - beta), x_t)
    frac = (v + 1.0) / 2.0
    logvar = frac * bcast(jnp.log(beta), v) + (1.0 - frac) * bcast(grid.clipped_log_posterior_variance(i), v)
    return mean, logvar


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class SMLDChain:
    """SMLD's chain (score-SDE eq. 45-47): ``N`` geometric sigmas from ``sigma_min`` (step 0) to ``sigma_max``
    (step ``N - 1``) at the uniform times ``t_i = i/(N-1) T``: a VE SDE's ``chain()``. Hashable."""

    sigma_min: float
    sigma_max: float
    N: int
    T: float = 1.0

    variances = ()  # one variance only: the posterior's
    label = "SMLD's sigma chain (ve_sde)"  # for messages

    def sigmas(self) -> jax.Array:
        """Ascending: ``sigma_i`` of step ``i`` (NCSN's list reversed)."""
        return jnp.exp(jnp.linspace(math.log(self.sigma_min), math.log(self.sigma_max), self.N, dtype=jnp.float32))

    def time(self, i):
        return jnp.asarray(i, jnp.float32) * (self.T / max(self.N - 1, 1))

    def ancestral_step(self, key, x, i, score_fn, *, variance=None):
        """Reverse of SMLD's forward chain (score-SDE eq. 47), from step ``i`` to ``i-1`` (to ``sigma = 0`` at
        ``i = 0``); ``variance`` must be None (the posterior's). Returns ``(x_{i-1}, mean)``.

        .. math:: x_{i-1} = x_i + (\\sigma_i^2 - \\sigma_{i-1}^2) s_\\theta(x_i, t_i)
            + \\sqrt{\\sigma_{i-1}^2 (\\sigma_i^2 - \\sigma_{i-1}^2) / \\sigma_i^2}\\, z
        """
        if variance is not None:
            raise ValueError(f"variance must be None for SMLD's ancestral step (it has the posterior variance only), "
                             f"got {variance!r}")
        i = jnp.asarray(i, jnp.int32)
        sigmas = self.sigmas()
        sigma = sigmas[i]
        prev = jnp.where(i == 0, 0.0, sigmas[jnp.maximum(i - 1, 0)])
        t = jnp.full((x.shape[0],), self.time(i), jnp.float32)
        mean = x + (sigma**2 - prev**2) * score_fn(x, t)
        std = jnp.sqrt(prev**2 * (sigma**2 - prev**2) / sigma**2)
        return mean + std * jax.random.normal(key, x.shape, x.dtype), mean


def require_chain(process, chain_type: type, *, where: str, name: str = "process", hint: str = ""):
    """``process.chain()``, which must be a ``chain_type`` (:class:`DDPMGrid` or :class:`SMLDChain`): else a
    ``ValueError`` naming the process and the chain it has, followed by ``hint``."""
    chain = check_process(process, name=name, where=where).chain()
    if not isinstance(chain, chain_type):
        raise ValueError(f"{name} must carry {chain_type.label} for {where}, got {type(process).__name__} "
                         f"({process!r}), whose chain() is {type(chain).__name__}{hint}")
    return chain
