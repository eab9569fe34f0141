"""NCSN (Song & Ermon 2019) as a special case of the core: the VE SDE on a geometric sigma grid plus
annealed Langevin dynamics.

Noise level ``sigma`` sits at the VE time ``t = log(sigma/sigma_min) / log(sigma_max/sigma_min)``, so a score
function ``score_fn(x, t)`` of the core drives every NCSN routine.
"""
from __future__ import annotations

import dataclasses
import math
import types

import jax
import jax.numpy as jnp

from diffjax.core._checks import check_int
from diffjax.core._deprecation import renamed_keywords
from diffjax.core.chains import SMLDChain, require_chain
from diffjax.core.process import MarginalPath
from diffjax.core.sde import VESDE

__all__ = ["NCSNGrid", "ncsn_grid", "langevin_step", "annealed_langevin_level", "ncsn_step_size", "smld_ancestral_step",
           "SMLDChain", "NCSN_SAMPLING", "NCSNV2_CIFAR10_SAMPLING"]


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class NCSNGrid(MarginalPath):
    """``num_scales`` geometric noise levels of a VE SDE, level ``0`` = ``sigma_max`` (NCSN's ordering)."""

    sde: VESDE
    num_scales: int = 10

    @property
    def T(self):
        return self.sde.T

    def sigmas(self) -> jax.Array:
        """Descending geometric sigmas ``sigma_max .. sigma_min``."""
        return jnp.exp(jnp.linspace(math.log(self.sde.sigma_max), math.log(self.sde.sigma_min), self.num_scales,
                                    dtype=jnp.float32))

    def time(self, level):
        """VE time of level ``level`` (level 0 -> T)."""
        return self.T * (1.0 - jnp.asarray(level, jnp.float32) / max(self.num_scales - 1, 1))

    def marginal(self, t):
        """The VE marginal at the grid level nearest ``t``: ``(1, sigma_level)``."""
        level = jnp.clip(jnp.round((1.0 - jnp.asarray(t) / self.T) * (self.num_scales - 1)), 0,
                         self.num_scales - 1).astype(jnp.int32)
        sigma = self.sigmas()[level]
        return jnp.ones_like(sigma), sigma

    def sample_time(self, key, batch: int):
        """Uniform noise level (NCSN's training loss), returned as its VE time."""
        return self.time(jax.random.randint(key, (batch,), 0, self.num_scales))


@renamed_keywords(sde="process")
def ncsn_grid(process: VESDE, num_scales: int = 10) -> NCSNGrid:
    """``num_scales`` geometric noise levels between the VE SDE's ``sigma_max`` and ``sigma_min``."""
    if not isinstance(process, VESDE):
        raise ValueError(f"process must be a VESDE (ve_sde) for the NCSN grid, got {type(process).__name__}")
    return NCSNGrid(process, check_int("num_scales", num_scales, minimum=1))


# Published annealed-Langevin settings, as keyword options of ``diffjax.samplers.annealed_langevin`` (whose step is
# the NCSN paper's ``x + alpha_i/2 s + sqrt(alpha_i) z``, ``alpha_i = step_lr sigma_i^2 / sigma_L^2``).
NCSN_SAMPLING = types.MappingProxyType(dict(num_steps=10, n_steps_each=100, step_lr=2e-5, denoise=False))
"""NCSN (Song & Ermon 2019, Algorithm 1 and Sec. 4.2): L = 10 levels, T = 100 steps per level, eps = 2e-5, no
final denoising; the paper's sigmas are 1 .. 0.01 (``ve_sde(sigma_min=0.01, sigma_max=1.0)``)."""

NCSNV2_CIFAR10_SAMPLING = types.MappingProxyType(dict(num_steps=232, n_steps_each=5, step_lr=2 * 6.2e-6,
                                                      denoise=True))
"""NCSNv2 on CIFAR-10 (Song & Ermon 2020, ``configs/cifar10.yml``): L = 232 levels over sigma 50 .. 0.01
(``ve_sde()``'s defaults), T = 5, the final denoising step, and eps = 6.2e-6 in NCSNv2's update
``x + alpha_i s + sqrt(2 alpha_i) z``, which is ``step_lr = 2 * 6.2e-6`` in the paper-NCSN form used here."""


def ncsn_step_size(sigma, sigma_min, *, step_lr: float = 2e-5):
    """NCSN's step-size rule (Algorithm 1): ``alpha_i = eps * sigma_i^2 / sigma_L^2``."""
    return step_lr * (sigma / sigma_min) ** 2


def langevin_step(key, x, t, score_fn, *, step_size):
    """.. math:: x \\leftarrow x + \\tfrac{\\alpha}{2} s_\\theta(x, t) + \\sqrt{\\alpha}\\, z"""
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],))
    z = jax.random.normal(key, x.shape, x.dtype)
    return x + 0.5 * step_size * score_fn(x, t) + jnp.sqrt(step_size) * z


def annealed_langevin_level(key, x, t, score_fn, *, step_size, n_steps: int):
    """``n_steps`` Langevin steps at one noise level (the inner loop of NCSN Algorithm 1), keys by ``fold_in``."""
    check_int("n_steps", n_steps, minimum=1)

    def body(j, x):
        return langevin_step(jax.random.fold_in(key, j), x, t, score_fn, step_size=step_size)

    return jax.lax.fori_loop(0, n_steps, body, x)


@renamed_keywords(sde="process")
def smld_ancestral_step(key, x, i, score_fn, process):
    """Reverse of SMLD's forward chain on the VE grid (score-SDE eq. 47), from grid step ``i`` to ``i-1``: the step
    of the process's chain, :meth:`SMLDChain.ancestral_step <diffjax.core.chains.SMLDChain.ancestral_step>`.

    Returns ``(x_{i-1}, mean)``.
    """
    return require_chain(process, SMLDChain, where="smld_ancestral_step").ancestral_step(key, x, i, score_fn)


# --- Loss: NCSN's objective is the core's DSM loss on the sigma grid ------------------------------------------------

from diffjax.core.losses import dsm_loss, sigma2_weighting  # noqa: E402

__all__ += ["ncsn_loss"]


def ncsn_loss(key, x0, score_fn, grid: NCSNGrid, *, reduce: str = "mean"):
    """NCSN's loss (Song & Ermon 2019, eq. 5-6): a uniform level ``i``, ``lambda(sigma_i) = sigma_i^2``.

    .. math:: \\mathbb E_{i, z}\\, \\sigma_i^2 \\| s_\\theta(x_0 + \\sigma_i z, \\sigma_i) + z / \\sigma_i \\|^2

    This is :func:`~diffjax.core.losses.dsm_loss` on the grid. The paper's form carries an extra ``1/2`` and sums
    over dimensions: it equals ``0.5 * ncsn_loss(..., reduce="sum")``. Keys: ``key_t, key_z = split(key)``,
    ``level = jax.random.randint(key_t, (batch,), 0, num_scales)`` (passed as ``t = grid.time(level)``),
    ``z = jax.random.normal(key_z, x0.shape)``.
    """
    if not isinstance(grid, NCSNGrid):
        raise ValueError(f"grid must be an NCSNGrid (see ncsn_grid), got {type(grid).__name__}")
    return dsm_loss(key, x0, score_fn, grid, weighting=sigma2_weighting, t_eps=0.5 * grid.T,
                    time_sampler=grid.sample_time, reduce=reduce)
