"""DDPM (Ho et al. 2020) as a special case of the core: the VP SDE on a discrete grid plus the ancestral step.

The grid and its step are the VP SDE's chain, :class:`~diffjax.core.chains.DDPMGrid` (``vp_sde().chain()``,
re-exported here with :func:`ddpm_grid`); here are DDPM's losses written on it: ``L_simple`` as the core's DSM
loss, improved DDPM's hybrid loss and the variational bound.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.core._deprecation import renamed_keywords
from diffjax.core.chains import DDIM_SPACINGS, DDPMGrid, ddpm_grid_from_betas, ddpm_model_mean_logvar  # noqa: F401
from diffjax.core.chains import require_chain
from diffjax.core.process import bcast

__all__ = ["DDPMGrid", "ddpm_grid", "ddpm_grid_from_betas", "ancestral_step"]


@renamed_keywords(sde="process")
def ddpm_grid(process) -> DDPMGrid:
    """The DDPM discretization of a VP SDE, its chain ``process.chain()``: ``process.N`` steps with
    ``process.discrete_betas()``, step ``i`` at the time where the SDE's marginal equals the grid's ``alpha_bar_i``
    (:func:`~diffjax.core.chains.ddpm_chain`). ValueError for a process without a DDPM chain.
    """
    return require_chain(process, DDPMGrid, where="ddpm_grid")


def ancestral_step(key, x, i, score_fn, grid: DDPMGrid, *, variance: str = "beta"):
    """One step of DDPM Algorithm 2 from grid step ``i`` to ``i-1``: :meth:`DDPMGrid.ancestral_step` (see there).

    .. math:: x_{i-1} = \\frac{x_i + \\beta_i s_\\theta(x_i, t_i)}{\\sqrt{1-\\beta_i}} + \\sigma_i z

    Returns ``(x_{i-1}, mean)``.
    """
    _check_grid(grid)
    return grid.ancestral_step(key, x, i, score_fn, variance=variance)


# --- Losses: L_simple as the core's DSM loss on the grid; the variational bound of (improved) DDPM ---------------

import math  # noqa: E402

from diffjax.core._checks import check_batched, check_nonnegative  # noqa: E402
from diffjax.core.losses import (  # noqa: E402
    discretized_gaussian_log_likelihood,
    dsm_loss,
    normal_kl,
    sigma2_weighting,
)

__all__ += ["ddpm_simple_loss", "ddpm_model_mean_logvar", "ddpm_vlb_terms", "ddpm_hybrid_loss", "ddpm_vlb_bpd"]


def _check_grid(grid):
    if not isinstance(grid, DDPMGrid):
        raise ValueError(f"grid must be a DDPMGrid (see ddpm_grid), got {type(grid).__name__}")


def _mean_dims(x):
    return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def ddpm_simple_loss(key, x0, score_fn, grid: DDPMGrid, *, reduce: str = "mean"):
    """DDPM's ``L_simple`` (Ho et al. 2020, Algorithm 1) as :func:`~diffjax.core.losses.dsm_loss` on the grid.

    Uniform step ``i``, ``sigma^2`` weighting: with ``score = -eps_theta / sqrt(1 - alpha_bar_i)``,

    .. math:: \\mathbb E_{i, \\epsilon} \\| \\epsilon - \\epsilon_\\theta(\\sqrt{\\bar\\alpha_i} x_0 + \\sqrt{1-\\bar\\alpha_i}\\epsilon, i) \\|^2

    Keys: ``key_t, key_z = jax.random.split(key)``; ``i = jax.random.randint(key_t, (batch,), 0, N)``
    (passed to ``score_fn`` as ``t = grid.time(i)``), ``eps = jax.random.normal(key_z, x0.shape)``.
    """
    _check_grid(grid)
    return dsm_loss(key, x0, score_fn, grid, weighting=sigma2_weighting, t_eps=0.5 * grid.T,
                    time_sampler=grid.sample_time, reduce=reduce)


def _check_clip_denoised(clip_denoised):
    if not isinstance(clip_denoised, bool):
        raise ValueError(f"clip_denoised must be True or False, got {clip_denoised!r}")
    return clip_denoised


def _clipped_x0_mean(x_t, i, eps, grid: DDPMGrid):
    """Posterior mean ``q(x_{i-1} | x_i, x0_pred)`` at ``x0_pred = clip((x_i - sqrt(1-abar_i) eps) / sqrt(abar_i))``.

    .. math:: \\mu = \\tilde\\mu_i\\big(x_i, \\operatorname{clip}((x_i - \\sqrt{1-\\bar\\alpha_i}\\,\\epsilon)
        / \\sqrt{\\bar\\alpha_i}, -1, 1)\\big)

    improved-diffusion's ``p_mean_variance(clip_denoised=True)`` for an eps model. Without the clip this equals the
    mean of :func:`ddpm_model_mean_logvar` (same formula rearranged).
    """
    abar = grid.alpha_bars[i]
    x0_pred = (x_t - bcast(jnp.sqrt(1.0 - abar), x_t) * eps) / bcast(jnp.sqrt(abar), x_t)
    return grid.posterior(jnp.clip(x0_pred, -1.0, 1.0), x_t, i)[0]


def ddpm_vlb_terms(x0, x_t, i, eps, v, grid: DDPMGrid, *, clip_denoised: bool = False):
    """The variational-bound term ``L_i`` in bits per dimension, shape ``(batch,)`` (Ho et al. eq. 5).

    ``L_i = KL(q(x_{i-1}|x_i, x_0) || p(x_{i-1}|x_i))`` for ``i > 0`` and the decoder's
    ``-log p(x_0|x_1)`` (:func:`~diffjax.core.losses.discretized_gaussian_log_likelihood`) at ``i = 0``;
    nats averaged over the non-batch dims, divided by ``log 2``.

    Args:
      x0: data in ``[-1, 1]`` on the 8-bit lattice, ``(batch, *dims)``; x_t: its noised version at step ``i``;
      i: ``()`` or ``(batch,)`` int steps; eps, v: the model's outputs at ``(x_t, i)``, shaped like ``x0``.
      clip_denoised: take the model mean from the predicted ``x0`` clipped to ``[-1, 1]`` (:func:`_clipped_x0_mean`,
        as improved-diffusion's evaluation does) instead of :func:`ddpm_model_mean_logvar`'s unclipped mean
        (what its training loss, and :func:`ddpm_hybrid_loss`, use).
    """
    _check_clip_denoised(clip_denoised)
    i = jnp.broadcast_to(jnp.asarray(i, jnp.int32), (x0.shape[0],))
    true_mean, _ = grid.posterior(x0, x_t, i)
    true_logvar = bcast(grid.clipped_log_posterior_variance(i), x0)
    mean, logvar = ddpm_model_mean_logvar(x_t, i, eps, v, grid)
    if clip_denoised:
        mean = _clipped_x0_mean(x_t, i, eps, grid)
    kl = _mean_dims(normal_kl(true_mean, true_logvar, mean, logvar)) / math.log(2.0)
    nll = -_mean_dims(discretized_gaussian_log_likelihood(x0, means=mean, log_scales=0.5 * logvar)) / math.log(2.0)
    return jnp.where(i == 0, nll, kl)


def _check_model_out(out, x0):
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise ValueError(f"model_fn must return a pair (eps, v), got {type(out).__name__}")
    for name, a in zip(("eps", "v"), out):
        if tuple(a.shape) != tuple(x0.shape):
            raise ValueError(f"model_fn's {name} must have the shape of x0 {tuple(x0.shape)}, got {tuple(a.shape)}")
    return out


def ddpm_hybrid_loss(key, x0, model_fn, grid: DDPMGrid, *, vlb_weight: float = 1e-3, return_terms: bool = False):
    """Improved DDPM's ``L_hybrid = L_simple + lambda L_vlb`` (Nichol & Dhariwal 2021, Sec. 3.1).

    ``model_fn(x_t, t) -> (eps, v)`` (e.g. ``split_learned_sigma`` of a UNet's output), ``t = grid.time(i)``.
    ``L_vlb = sum_i L_i`` is estimated by ``N * L_i`` at the sampled step (bits/dim, :func:`ddpm_vlb_terms`),
    with a stop-gradient on the mean, so the bound trains only ``v`` and ``L_simple`` trains the mean.
    Keys and draws are those of :func:`ddpm_simple_loss`.

    Returns:
      Scalar loss (batch mean); with ``return_terms=True``, ``(loss, {"simple": (batch,), "vlb": (batch,)})``
      where ``"vlb"`` is ``L_i`` itself (not multiplied by ``N``).
    """
    _check_grid(grid)
    check_batched("x0", x0)
    check_nonnegative("vlb_weight", vlb_weight)
    if not callable(model_fn):
        raise ValueError(f"model_fn must be a callable model_fn(x_t, t) -> (eps, v), got {model_fn!r}")
    batch = x0.shape[0]
    key_t, key_z = jax.random.split(key)
    i = jax.random.randint(key_t, (batch,), 0, grid.N)
    t = grid.time(i)
    noise = jax.random.normal(key_z, x0.shape, x0.dtype)
    x_t = grid.perturb(x0, t, noise)
    eps, v = _check_model_out(model_fn(x_t, t), x0)
    simple = _mean_dims((noise - eps) ** 2)
    vlb = ddpm_vlb_terms(x0, x_t, i, jax.lax.stop_gradient(eps), v, grid)
    loss = jnp.mean(simple + vlb_weight * grid.N * vlb)
    return (loss, {"simple": simple, "vlb": vlb}) if return_terms else loss


def ddpm_vlb_bpd(key, x0, model_fn, grid: DDPMGrid, *, clip_denoised: bool = True, return_terms: bool = False):
    """The full variational bound in bits/dim, shape ``(batch,)``: ``sum_{i=0}^{N-1} L_i + L_T``.

    ``L_T = KL(q(x_N|x_0) || N(0, I))``; every ``L_i`` uses its own noise ``normal(fold_in(key, i))``; one
    ``lax.scan`` over the ``N`` steps (one model call each). ``x0`` in ``[-1, 1]`` on the 8-bit lattice.
    A fixed-variance eps model fits the same ``model_fn`` by returning ``v = 1`` (``sigma^2 = beta``) or
    ``v = -1`` (``sigma^2 = beta_tilde``) everywhere.

    ``clip_denoised=True`` (the default) is the published evaluations' bound: Ho et al.'s ``calc_bpd_loop`` and
    improved-diffusion's ``calc_bpd_loop`` / ``image_nll.py`` both clip the predicted ``x0`` to ``[-1, 1]`` before
    forming the model mean (see :func:`ddpm_vlb_terms`). ``False`` gives the bound of the unclipped model mean,
    the one the hybrid loss trains; both are valid bounds of different decoders and differ only where the
    predicted ``x0`` leaves ``[-1, 1]``.

    Returns:
      ``(batch,)`` bits/dim; with ``return_terms=True``, ``(bpd, {"terms": (N, batch), "prior": (batch,)})``.
    """
    _check_clip_denoised(clip_denoised)
    _check_grid(grid)
    check_batched("x0", x0)
    if not callable(model_fn):
        raise ValueError(f"model_fn must be a callable model_fn(x_t, t) -> (eps, v), got {model_fn!r}")
    batch = x0.shape[0]

    def body(total, i):
        t = jnp.full((batch,), grid.time(i))
        x_t = grid.perturb(x0, t, jax.random.normal(jax.random.fold_in(key, i), x0.shape, x0.dtype))
        eps, v = _check_model_out(model_fn(x_t, t), x0)
        term = ddpm_vlb_terms(x0, x_t, jnp.full((batch,), i), eps, v, grid, clip_denoised=clip_denoised)
        return total + term, term

    total, terms = jax.lax.scan(body, jnp.zeros((batch,), jnp.float32), jnp.arange(grid.N))
    abar = grid.alpha_bars[-1]
    prior = _mean_dims(normal_kl(jnp.sqrt(abar) * x0, jnp.log1p(-abar), 0.0, 0.0)) / math.log(2.0)
    bpd = total + prior
    return (bpd, {"terms": terms, "prior": prior}) if return_terms else bpd
