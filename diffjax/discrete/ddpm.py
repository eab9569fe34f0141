"""DDPM (Ho et al. 2020) as a special case of the core: the VP SDE on a discrete grid plus the ancestral step.

The grid has steps ``i = 0 .. N-1`` (the paper's ``t = 1 .. N``) at continuous times ``t_i = i/(N-1) * T``,
the same grid as ``VPSDE.index``. Its marginal uses the discrete ``alpha_bar_i = prod_{j<=i} (1 - beta_j)``,
so a score function and the core's loss see the grid through the same ``marginal(t)`` interface as an SDE.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from diffjax.core._checks import check_choice
from diffjax.core.schedules import betas_to_alpha_bars
from diffjax.core.sde import VPSDE, bcast

__all__ = ["DDPMGrid", "ddpm_grid", "ddpm_grid_from_betas", "ancestral_step"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DDPMGrid:
    """Discrete VP chain: ``betas`` and ``alpha_bars`` of shape ``(N,)``. A pytree (arrays are leaves)."""

    betas: jax.Array
    alpha_bars: jax.Array
    T: float = dataclasses.field(default=1.0, metadata=dict(static=True))

    @property
    def N(self) -> int:
        return self.betas.shape[0]

    def time(self, i):
        return jnp.asarray(i, jnp.float32) * (self.T / max(self.N - 1, 1))

    def index(self, t):
        return jnp.clip(jnp.round(jnp.asarray(t) * (self.N - 1) / self.T), 0, self.N - 1).astype(jnp.int32)

    def marginal(self, t):
        abar = self.alpha_bars[self.index(t)]
        return jnp.sqrt(abar), jnp.sqrt(1.0 - abar)

    def perturb(self, x0, t, noise):
        a, s = self.marginal(t)
        return bcast(a, x0) * x0 + bcast(s, x0) * noise

    def sample_time(self, key, batch: int):
        """Uniform grid step (DDPM Algorithm 1, line 3), returned as its continuous time ``t_i``."""
        return self.time(jax.random.randint(key, (batch,), 0, self.N))

    def posterior_variance(self, i):
        """``beta_tilde_i = (1 - alpha_bar_{i-1}) / (1 - alpha_bar_i) beta_i`` (eq. 7); 0 at i = 0."""
        abar_prev = jnp.where(i > 0, self.alpha_bars[jnp.maximum(i - 1, 0)], 1.0)
        return (1.0 - abar_prev) / (1.0 - self.alpha_bars[i]) * self.betas[i]

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


def ddpm_grid_from_betas(betas: jax.Array, *, T: float = 1.0) -> DDPMGrid:
    betas = jnp.asarray(betas, jnp.float32)
    if betas.ndim != 1 or betas.shape[0] < 1:
        raise ValueError(f"betas must be a non-empty 1-D array, got shape {betas.shape}")
    return DDPMGrid(betas, betas_to_alpha_bars(betas), T)


def ddpm_grid(sde: VPSDE) -> DDPMGrid:
    """The DDPM discretization of a VP SDE: ``sde.N`` steps with ``sde.discrete_betas()``."""
    if not isinstance(sde, VPSDE):
        raise ValueError(f"sde must be a VPSDE for the DDPM grid, got {type(sde).__name__}")
    return ddpm_grid_from_betas(sde.discrete_betas(), T=sde.T)


def ancestral_step(key, x, i, score_fn, grid: DDPMGrid, *, variance: str = "beta"):
    """One step of DDPM Algorithm 2 from grid step ``i`` to ``i-1``, written with the score.

    With ``eps = -sqrt(1 - alpha_bar_i) * score``:

    .. math:: x_{i-1} = \\frac{x_i + \\beta_i s_\\theta(x_i, t_i)}{\\sqrt{1-\\beta_i}} + \\sigma_i z

    ``variance``: "beta" (``sigma_i^2 = beta_i``) or "posterior" (``beta_tilde_i``); no noise at ``i = 0``.
    Returns ``(x_{i-1}, mean)``.
    """
    check_choice("variance", variance, ("beta", "posterior"))
    i = jnp.asarray(i, jnp.int32)
    t = jnp.full((x.shape[0],), grid.time(i))
    beta = grid.betas[i]
    mean = (x + beta * score_fn(x, t)) / jnp.sqrt(1.0 - beta)
    var = beta if variance == "beta" else grid.posterior_variance(i)
    noise = jax.random.normal(key, x.shape, x.dtype)
    return mean + jnp.where(i > 0, jnp.sqrt(var), 0.0) * noise, mean
