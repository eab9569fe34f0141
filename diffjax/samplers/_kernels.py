"""One-step kernels. Each moves ``x`` (batch, *dims) from time ``t`` to ``t_next < t`` (or one grid step down).

Stochastic kernels return ``(x_next, x_mean)``, the sample and its noise-free mean (score-SDE's ``x_mean``, which
a sampler returns after its last step: "noise removal"). Predictors share the signature
``predictor(key, x, t, t_next, score_fn, process) -> (x, x_mean)`` and correctors
``corrector(key, x, t, score_fn, process) -> (x, x_mean)`` (options bound with ``functools.partial``), so
:func:`diffjax.samplers.pc` takes any of them.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from diffjax.core._checks import check_choice
from diffjax.core.learned_variance import has_learned_variance
from diffjax.core.sde import bcast, probability_flow_ode
from diffjax.discrete.ddpm import DDPMGrid
from diffjax.samplers._common import batch_time, deprecated_sde_keyword

__all__ = [
    "euler_maruyama_step",
    "reverse_diffusion_step",
    "langevin_corrector_step",
    "ode_euler_step",
    "ode_heun_step",
    "ddim_step",
    "LangevinCorrector",
]


def data_prediction(x, t, score_fn, process):
    """The posterior mean of the data (Tweedie), ``D(x, t) = (x + s^2 score(x, t)) / a``, at a scalar time ``t``.

    .. math:: D(x, t) = \\frac{x + s(t)^2 s_\\theta(x, t)}{a(t)} = \\mathbb E[x_0 \\mid x_t = x]
    """
    tb = batch_time(t, x)
    a, s = process.marginal(tb)
    return (x + bcast(s**2, x) * score_fn(x, tb)) / bcast(a, x)


@deprecated_sde_keyword
def euler_maruyama_step(key, x, t, t_next, score_fn, process):
    """Euler-Maruyama on the reverse-time SDE (score-SDE eq. 6) with ``dt = t_next - t < 0``.

    .. math:: x' = x + [f(x,t) - g(t)^2 s_\\theta(x,t)]\\,\\Delta t + g(t)\\sqrt{|\\Delta t|}\\, z
    """
    tb = batch_time(t, x)
    dt = jnp.asarray(t_next - t, x.dtype)
    f, g = process.coefficients(x, tb)
    g = bcast(g, x)
    x_mean = x + (f - g**2 * score_fn(x, tb)) * dt
    return x_mean + g * jnp.sqrt(-dt) * jax.random.normal(key, x.shape, x.dtype), x_mean


@deprecated_sde_keyword
def reverse_diffusion_step(key, x, t, t_next, score_fn, process):
    """Reverse diffusion predictor (score-SDE eq. 47): the forward chain's step run backwards.

    .. math:: x' = x - F + G^2 s_\\theta(x, t) + G z

    where ``(F, G)`` is the process's forward chain step from ``t_next`` to ``t``, the exact Gaussian transition
    (DDPM's for VP, SMLD's for VE). On score-SDE's grid this is its ``ReverseDiffusionPredictor`` (for sub-VP,
    whose score-SDE predictor uses the Euler-Maruyama step, it is the exact transition instead).
    """
    tb = batch_time(t, x)
    F, G2 = process.forward_chain_step(x, jnp.asarray(t, tb.dtype), jnp.asarray(t_next, tb.dtype))
    G2 = jnp.asarray(G2, x.dtype)
    x_mean = x - F + G2 * score_fn(x, tb)
    return x_mean + jnp.sqrt(G2) * jax.random.normal(key, x.shape, x.dtype), x_mean


def _per_example_norm_mean(a):
    return jnp.mean(jnp.sqrt(jnp.sum(a.reshape(a.shape[0], -1) ** 2, axis=-1)))


@deprecated_sde_keyword
def langevin_corrector_step(key, x, t, score_fn, process, *, snr: float = 0.16, n_steps: int = 1):
    """score-SDE's Langevin corrector (Algorithm 4): ``n_steps`` Langevin moves at time ``t``.

    .. math:: \\epsilon = 2\\alpha \\left(r \\frac{\\|z\\|}{\\|s_\\theta(x,t)\\|}\\right)^2,\\quad
              x' = x + \\epsilon s_\\theta(x,t) + \\sqrt{2\\epsilon}\\, z

    with ``r = snr``, norms averaged over the batch as in score-SDE, and ``alpha = process.langevin_alpha(t, T / N)``:
    the forward chain's ``alpha`` over one step of the ``process.N``-step grid (DDPM's ``1 - beta_i`` for VP and sub-VP,
    which score-SDE writes as ``1 - beta(t) T / N``; 1 for VE), in ``(0, 1]`` for any ``N``.
    """
    tb = batch_time(t, x)
    alpha = process.langevin_alpha(t, process.T / process.N)

    def body(j, carry):
        x, _ = carry
        grad = score_fn(x, tb)
        noise = jax.random.normal(jax.random.fold_in(key, j), x.shape, x.dtype)
        ratio = snr * _per_example_norm_mean(noise) / _per_example_norm_mean(grad)
        step = (2.0 * alpha * ratio**2).astype(x.dtype)
        x_mean = x + step * grad
        return x_mean + jnp.sqrt(2.0 * step) * noise, x_mean

    return jax.lax.fori_loop(0, n_steps, body, (x, x))


@dataclasses.dataclass(frozen=True)
class LangevinCorrector:
    """:func:`langevin_corrector_step` with ``snr`` and ``n_steps`` bound: a corrector kernel that hashes and
    compares by value (a jit static argument that does not retrace), e.g. ``pc(..., corrector=LangevinCorrector(
    snr=0.16, n_steps=1))``. ``n_steps`` score evaluations per call."""
    snr: float = 0.16
    n_steps: int = 1

    def __call__(self, key, x, t, score_fn, process):
        return langevin_corrector_step(key, x, t, score_fn, process, snr=self.snr, n_steps=self.n_steps)


@deprecated_sde_keyword
def ode_euler_step(x, t, t_next, score_fn, process):
    """Euler step of the probability-flow ODE (score-SDE eq. 13). One score evaluation."""
    vf = probability_flow_ode(process, score_fn)
    return x + vf(x, batch_time(t, x)) * jnp.asarray(t_next - t, x.dtype)


@deprecated_sde_keyword
def ode_heun_step(x, t, t_next, score_fn, process):
    """Heun's (explicit trapezoidal, 2nd order) step of the probability-flow ODE. Two score evaluations.

    .. math:: \\tilde x = x + h v(x, t),\\quad x' = x + \\tfrac{h}{2}[v(x, t) + v(\\tilde x, t + h)]
    """
    vf = probability_flow_ode(process, score_fn)
    h = jnp.asarray(t_next - t, x.dtype)
    d1 = vf(x, batch_time(t, x))
    d2 = vf(x + h * d1, batch_time(t_next, x))
    return x + 0.5 * h * (d1 + d2)


DDIM_VARIANCES = ("posterior", "beta", "learned")


def ddim_step(key, x, i, i_prev, score_fn, grid: DDPMGrid, *, eta: float = 0.0, variance: str = "posterior",
              clip_x0: bool = False):
    """DDIM update (Song, Meng & Ermon 2021, eq. 12) from grid step ``i`` to ``i_prev < i`` (``-1``: the data).

    The model is evaluated at step ``i``'s own time ``grid.time(i)``. With ``eps = -sqrt(1 - abar_i) s_theta`` and
    ``x0 = (x - sqrt(1 - abar_i) eps) / sqrt(abar_i)``:

    .. math:: x' = \\sqrt{\\bar\\alpha'}\\, x_0 + \\sqrt{1 - \\bar\\alpha' - \\sigma_\\eta^2}\\, \\epsilon
              + \\eta\\, s z,\\quad \\sigma_\\eta^2 = \\eta^2 \\tilde\\beta,\\quad
              \\beta = 1 - \\bar\\alpha / \\bar\\alpha',\\quad
              \\tilde\\beta = \\tfrac{1-\\bar\\alpha'}{1-\\bar\\alpha} \\beta

    The noise scale ``s^2`` is, by ``variance``: "posterior" ``tilde beta`` (DDIM's own ``sigma_eta``), "beta"
    ``beta``, or "learned" improved DDPM's ``Sigma_theta = exp(f log beta + (1-f) log tilde beta)``,
    ``f = (v+1)/2``, on the strided step (``v`` from ``score_fn.score_and_v``). ``eta = 0`` is deterministic;
    ``eta = 1`` is the ancestral step of the strided chain with that variance (DDPM for "posterior", improved
    DDPM's respaced sampler for "learned"). No noise on the last step (``i_prev = -1``).
    Returns ``(x', x0)``.
    """
    check_choice("variance", variance, DDIM_VARIANCES)
    if variance == "learned" and not has_learned_variance(score_fn):
        raise ValueError(f"variance='learned' needs a score_fn with a learned variance (score_fn.score_and_v, e.g. "
                         f"make_score_fn(..., learned_sigma=True)), got {score_fn!r}")
    i = jnp.asarray(i, jnp.int32)
    i_prev = jnp.asarray(i_prev, jnp.int32)
    abar = grid.alpha_bars[i]
    abar_prev = jnp.where(i_prev >= 0, grid.alpha_bars[jnp.maximum(i_prev, 0)], 1.0)
    std = jnp.sqrt(1.0 - abar)
    t = batch_time(grid.time(i), x)
    if variance == "learned":
        score, v = score_fn.score_and_v(x, t)
    else:
        score = score_fn(x, t)
    eps = -std * score
    x0 = (x - std * eps) / jnp.sqrt(abar)
    if clip_x0:
        x0 = jnp.clip(x0, -1.0, 1.0)
    beta = 1.0 - abar / abar_prev
    beta_tilde = (1.0 - abar_prev) / (1.0 - abar) * beta
    sigma = eta * jnp.sqrt(beta_tilde)
    direction = jnp.sqrt(jnp.maximum(1.0 - abar_prev - sigma**2, 0.0))
    if variance == "posterior":
        scale = sigma
    elif variance == "beta":
        scale = eta * jnp.sqrt(beta)
    else:
        # beta_tilde = 0 on the last step (no noise there): log beta in its place keeps the log finite
        log_bt = jnp.log(jnp.where(beta_tilde > 0, beta_tilde, beta))
        frac = (v + 1.0) / 2.0
        scale = eta * jnp.exp(0.5 * (frac * jnp.log(beta) + (1.0 - frac) * log_bt))
    scale = jnp.where(i_prev >= 0, scale, 0.0)
    noise = jax.random.normal(key, x.shape, x.dtype)
    return jnp.sqrt(abar_prev) * x0 + direction * eps + scale * noise, x0
