"""One-step kernels. Each moves ``x`` (batch, *dims) from time ``t`` to ``t_next < t`` (or one grid step down).

Stochastic kernels return ``(x_next, x_mean)``, the sample and its noise-free mean (score-SDE's ``x_mean``, which
a sampler returns after its last step: "noise removal"). Predictors share the signature
``predictor(key, x, t, t_next, score_fn, sde) -> (x, x_mean)`` and correctors
``corrector(key, x, t, score_fn, sde) -> (x, x_mean)`` (options bound with ``functools.partial``), so
:func:`diffjax.samplers.pc` takes any of them.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.core.sde import SubVPSDE, VESDE, VPSDE, bcast, forward_chain_step, probability_flow_ode
from diffjax.discrete.ddpm import DDPMGrid
from diffjax.samplers._common import batch_time

__all__ = [
    "euler_maruyama_step",
    "reverse_diffusion_step",
    "langevin_corrector_step",
    "ode_euler_step",
    "ode_heun_step",
    "ddim_step",
]


def euler_maruyama_step(key, x, t, t_next, score_fn, sde):
    """Euler-Maruyama on the reverse-time SDE (score-SDE eq. 6) with ``dt = t_next - t < 0``.

    .. math:: x' = x + [f(x,t) - g(t)^2 s_\\theta(x,t)]\\,\\Delta t + g(t)\\sqrt{|\\Delta t|}\\, z
    """
    tb = batch_time(t, x)
    dt = jnp.asarray(t_next - t, x.dtype)
    f, g = sde.coefficients(x, tb)
    g = bcast(g, x)
    x_mean = x + (f - g**2 * score_fn(x, tb)) * dt
    return x_mean + g * jnp.sqrt(-dt) * jax.random.normal(key, x.shape, x.dtype), x_mean


def reverse_diffusion_step(key, x, t, t_next, score_fn, sde):
    """Reverse diffusion predictor (score-SDE eq. 47): the forward chain's step run backwards.

    .. math:: x' = x - F + G^2 s_\\theta(x, t) + G z

    where ``(F, G)`` is the forward step from ``t_next`` to ``t`` (DDPM's for VP, SMLD's for VE, Euler-Maruyama's
    for sub-VP). On score-SDE's grid this is its ``ReverseDiffusionPredictor``.
    """
    tb = batch_time(t, x)
    F, G2 = forward_chain_step(sde, x, jnp.asarray(t, jnp.float32), jnp.asarray(t_next, jnp.float32))
    G2 = jnp.asarray(G2, x.dtype)
    x_mean = x - F + G2 * score_fn(x, tb)
    return x_mean + jnp.sqrt(G2) * jax.random.normal(key, x.shape, x.dtype), x_mean


def _per_example_norm_mean(a):
    return jnp.mean(jnp.sqrt(jnp.sum(a.reshape(a.shape[0], -1) ** 2, axis=-1)))


def langevin_corrector_step(key, x, t, score_fn, sde, *, snr: float = 0.16, n_steps: int = 1):
    """score-SDE's Langevin corrector (Algorithm 4): ``n_steps`` Langevin moves at time ``t``.

    .. math:: \\epsilon = 2\\alpha \\left(r \\frac{\\|z\\|}{\\|s_\\theta(x,t)\\|}\\right)^2,\\quad
              x' = x + \\epsilon s_\\theta(x,t) + \\sqrt{2\\epsilon}\\, z

    with ``r = snr``, norms averaged over the batch as in score-SDE, and ``alpha = 1 - beta_i`` (the DDPM
    ``alpha`` at ``t``, ``beta_i = beta(t) T / N``) for VP and sub-VP, 1 for VE.
    """
    tb = batch_time(t, x)
    if isinstance(sde, (VPSDE, SubVPSDE)):
        alpha = 1.0 - sde.schedule.beta(jnp.asarray(t, jnp.float32)) * (sde.T / sde.N)
    else:
        alpha = jnp.float32(1.0)

    def body(j, carry):
        x, _ = carry
        grad = score_fn(x, tb)
        noise = jax.random.normal(jax.random.fold_in(key, j), x.shape, x.dtype)
        ratio = snr * _per_example_norm_mean(noise) / _per_example_norm_mean(grad)
        step = (2.0 * alpha * ratio**2).astype(x.dtype)
        x_mean = x + step * grad
        return x_mean + jnp.sqrt(2.0 * step) * noise, x_mean

    return jax.lax.fori_loop(0, n_steps, body, (x, x))


def ode_euler_step(x, t, t_next, score_fn, sde):
    """Euler step of the probability-flow ODE (score-SDE eq. 13). One score evaluation."""
    vf = probability_flow_ode(sde, score_fn)
    return x + vf(x, batch_time(t, x)) * jnp.asarray(t_next - t, x.dtype)


def ode_heun_step(x, t, t_next, score_fn, sde):
    """Heun's (explicit trapezoidal, 2nd order) step of the probability-flow ODE. Two score evaluations.

    .. math:: \\tilde x = x + h v(x, t),\\quad x' = x + \\tfrac{h}{2}[v(x, t) + v(\\tilde x, t + h)]
    """
    vf = probability_flow_ode(sde, score_fn)
    h = jnp.asarray(t_next - t, x.dtype)
    d1 = vf(x, batch_time(t, x))
    d2 = vf(x + h * d1, batch_time(t_next, x))
    return x + 0.5 * h * (d1 + d2)


def ddim_step(key, x, i, i_prev, score_fn, grid: DDPMGrid, *, eta: float = 0.0):
    """DDIM update (Song, Meng & Ermon 2021, eq. 12) from grid step ``i`` to ``i_prev < i`` (``-1``: the data).

    With ``eps = -sqrt(1 - abar_i) s_theta(x, t_i)`` and ``x0 = (x - sqrt(1 - abar_i) eps) / sqrt(abar_i)``:

    .. math:: x' = \\sqrt{\\bar\\alpha'}\\, x_0 + \\sqrt{1 - \\bar\\alpha' - \\sigma^2}\\, \\epsilon + \\sigma z,\\quad
              \\sigma = \\eta \\sqrt{\\tfrac{1-\\bar\\alpha'}{1-\\bar\\alpha}\\left(1 - \\tfrac{\\bar\\alpha}{\\bar\\alpha'}\\right)}

    ``eta = 0`` is deterministic, ``eta = 1`` is DDPM's ancestral sampler on the sub-sequence.
    Returns ``(x', x0)``.
    """
    i = jnp.asarray(i, jnp.int32)
    i_prev = jnp.asarray(i_prev, jnp.int32)
    abar = grid.alpha_bars[i]
    abar_prev = jnp.where(i_prev >= 0, grid.alpha_bars[jnp.maximum(i_prev, 0)], 1.0)
    std = jnp.sqrt(1.0 - abar)
    eps = -std * score_fn(x, batch_time(grid.time(i), x))
    x0 = (x - std * eps) / jnp.sqrt(abar)
    sigma = eta * jnp.sqrt((1.0 - abar_prev) / (1.0 - abar) * (1.0 - abar / abar_prev))
    direction = jnp.sqrt(jnp.maximum(1.0 - abar_prev - sigma**2, 0.0))
    noise = jax.random.normal(key, x.shape, x.dtype)
    return jnp.sqrt(abar_prev) * x0 + direction * eps + sigma * noise, x0
