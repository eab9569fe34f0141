"""Conversions between what a network predicts (eps, x0, v, score, EDM's F) for any SDE.

With ``x_t = a x_0 + s eps`` (``(a, s) = sde.marginal(t)``) the score of the perturbation kernel is
``-eps / s``; ``v = a eps - s x_0`` (Salimans & Ho 2022), generalised to ``a^2 + s^2 != 1`` by solving the
2x2 system. All functions take ``(pred, x, t, sde)`` with ``pred, x`` of shape ``(batch, *dims)``.

The velocity ``u = a' x_0 + s' eps`` (flow matching, Lipman et al. 2023; rectified flow, Liu et al. 2023; primes are
``d/dt``, ``(a', s') = sde.marginal_derivative(t)``) is affine in the score given ``x_t``:

.. math:: u = \\frac{a'}{a} x_t + \\frac{s^2 \\lambda'}{2} \\nabla \\log p_t(x_t),\\quad \\lambda = \\log(a^2/s^2)

i.e. the probability-flow ODE's vector field ``f - g^2/2 * score`` (``g^2 = -s^2 lambda'``). Every conversion is
exact (no approximation) for any Gaussian path with ``a > 0, s > 0``; from the velocity (``score_from_velocity``,
``eps_from_velocity``, ``x0_from_velocity``) also at ``a = 0`` (rectified flow's ``t = 1``), by solving the 2x2
system ``(x_t, u) = (a x_0 + s eps, a' x_0 + s' eps)``, whose determinant ``a s' - s a' = -a s lambda' / 2`` (for
``a > 0``; ``-s a'`` at ``a = 0``) is positive where the log-SNR decreases.
The velocity from the score needs ``a > 0`` (at ``a = 0`` the score does not determine ``E[x_0 | x_t]``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.core._checks import check_positive
from diffjax.core.learned_variance import LearnedVarianceScore, has_learned_variance
from diffjax.core.sde import bcast

__all__ = [
    "score_from_eps",
    "score_from_x0",
    "score_from_v",
    "eps_from_score",
    "x0_from_score",
    "v_from_score",
    "x0_from_eps",
    "eps_from_x0",
    "velocity_from_score",
    "score_from_velocity",
    "eps_from_velocity",
    "x0_from_velocity",
    "velocity_from_eps",
    "velocity_from_x0",
    "edm_preconditioning",
    "edm_sigma",
    "score_from_edm",
    "edm_from_score",
    "edm_loss_weight",
    "clip_denoised",
    "dynamic_threshold",
]


def _promote(c, x):
    """``c`` broadcast against ``x`` in their common dtype: a float32-only process's coefficients are combined in
    ``x``'s precision, so that each conversion and its inverse are exact inverses in that precision."""
    c = bcast(c, x)
    return c.astype(jnp.result_type(c, x))


def _coeffs(x, t, sde):
    a, s = sde.marginal(t)
    return _promote(a, x), _promote(s, x)


def score_from_eps(eps, x, t, sde):
    """.. math:: s = -\\epsilon / \\sigma_t"""
    _, s = _coeffs(x, t, sde)
    return -eps / s


def score_from_x0(x0, x, t, sde):
    """.. math:: s = -(x - a_t x_0) / \\sigma_t^2"""
    a, s = _coeffs(x, t, sde)
    return -(x - a * x0) / s**2


def score_from_v(v, x, t, sde):
    a, s = _coeffs(x, t, sde)
    eps = (a * v + s * x) / (a**2 + s**2)
    return -eps / s


def eps_from_score(score, x, t, sde):
    _, s = _coeffs(x, t, sde)
    return -s * score


def x0_from_score(score, x, t, sde):
    a, s = _coeffs(x, t, sde)
    return (x + s**2 * score) / a


def v_from_score(score, x, t, sde):
    a, s = _coeffs(x, t, sde)
    eps = -s * score
    x0 = (x - s * eps) / a
    return a * eps - s * x0


def x0_from_eps(eps, x, t, sde):
    a, s = _coeffs(x, t, sde)
    return (x - s * eps) / a


def eps_from_x0(x0, x, t, sde):
    a, s = _coeffs(x, t, sde)
    return (x - a * x0) / s


def _marginal_derivative(t, sde):
    """``(da/dt, ds/dt)`` of ``sde.marginal``: the process's ``marginal_derivative`` where it has one, else forward-mode
    differentiation of ``marginal`` (elementwise in ``t``, so one JVP with unit tangents gives every derivative)."""
    if hasattr(sde, "marginal_derivative"):
        return sde.marginal_derivative(t)
    t = jnp.asarray(t, jnp.result_type(float))
    return jax.jvp(sde.marginal, (t,), (jnp.ones_like(t),))[1]


def _velocity_coeffs(x, t, sde):
    a, s = _coeffs(x, t, sde)
    da, ds = _marginal_derivative(t, sde)
    da, ds = _promote(da, x), _promote(ds, x)
    return a, s, da, ds, a * ds - s * da  # the determinant of (x, u) in terms of (x0, eps)


def velocity_from_score(score, x, t, sde):
    """Velocity (flow-matching target's conditional mean) from the score; needs ``a_t > 0``.

    .. math:: u = a' \\hat x_0 + s' \\hat\\epsilon,\\quad \\hat\\epsilon = -s\\,\\mathrm{score},\\quad
        \\hat x_0 = (x - s \\hat\\epsilon) / a
    """
    a, s, da, ds, _ = _velocity_coeffs(x, t, sde)
    eps = -s * score
    return da * (x - s * eps) / a + ds * eps


def score_from_velocity(u, x, t, sde):
    """Score from the velocity ``u = a' x_0 + s' eps`` (exact for every Gaussian path, also at ``a = 0``).

    .. math:: \\nabla \\log p_t = -\\frac{a u - a' x}{s\\,(a s' - s a')}
    """
    a, s, da, ds, det = _velocity_coeffs(x, t, sde)
    return -(a * u - da * x) / (s * det)


def eps_from_velocity(u, x, t, sde):
    """.. math:: \\epsilon = (a u - a' x) / (a s' - s a')"""
    a, _, da, _, det = _velocity_coeffs(x, t, sde)
    return (a * u - da * x) / det


def x0_from_velocity(u, x, t, sde):
    """.. math:: x_0 = (s' x - s u) / (a s' - s a')"""
    _, s, _, ds, det = _velocity_coeffs(x, t, sde)
    return (ds * x - s * u) / det


def velocity_from_eps(eps, x, t, sde):
    """.. math:: u = a' (x - s \\epsilon) / a + s' \\epsilon"""
    a, s, da, ds, _ = _velocity_coeffs(x, t, sde)
    return da * (x - s * eps) / a + ds * eps


def velocity_from_x0(x0, x, t, sde):
    """.. math:: u = a' x_0 + s' (x - a x_0) / s"""
    a, s, da, ds, _ = _velocity_coeffs(x, t, sde)
    return da * x0 + ds * (x - a * x0) / s


def edm_sigma(t, sde):
    """EDM's noise level of ``x_t / a_t``: ``sigma = s_t / a_t`` (Karras et al. 2022, Table 1)."""
    a, s = sde.marginal(t)
    return s / a


def edm_preconditioning(sigma, *, sigma_data: float = 0.5):
    """EDM preconditioning (Karras et al. 2022, Table 1): returns ``(c_skip, c_out, c_in, c_noise)``.

    .. math:: D(x) = c_{skip} x + c_{out} F(c_{in} x, c_{noise})
    """
    sigma = jnp.asarray(sigma)
    denom = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / denom
    c_out = sigma * sigma_data / jnp.sqrt(denom)
    c_in = 1.0 / jnp.sqrt(denom)
    c_noise = 0.25 * jnp.log(sigma)
    return c_skip, c_out, c_in, c_noise


def score_from_edm(raw_fn, x, t, sde, *, sigma_data: float = 0.5):
    """Score from a raw EDM network ``raw_fn(x_in, c_noise) -> F``, for any SDE.

    ``x_t = a (x_0 + sigma n)``, so the EDM denoiser acts on ``x_t / a`` with ``sigma = s / a``.
    """
    a, _ = sde.marginal(t)
    sigma = edm_sigma(t, sde)
    c_skip, c_out, c_in, c_noise = edm_preconditioning(sigma, sigma_data=sigma_data)
    x_hat = x / bcast(a, x)
    denoised = bcast(c_skip, x) * x_hat + bcast(c_out, x) * raw_fn(bcast(c_in, x) * x_hat, c_noise)
    return score_from_x0(denoised, x, t, sde)


def edm_from_score(score, x, t, sde, *, sigma_data: float = 0.5):
    """The raw EDM network output ``F`` whose preconditioned denoiser implies ``score`` (inverse of
    :func:`score_from_edm`): ``F = (x0 - c_skip x / a) / c_out`` with ``x0`` from the score.

    .. math:: F = (\\hat x_0 - c_{skip} x / a) / c_{out}
    """
    a, _ = sde.marginal(t)
    c_skip, c_out, _, _ = edm_preconditioning(edm_sigma(t, sde), sigma_data=sigma_data)
    x0 = x0_from_score(score, x, t, sde)
    return (x0 - bcast(c_skip, x) * x / bcast(a, x)) / bcast(c_out, x)


def edm_loss_weight(sigma, *, sigma_data: float = 0.5):
    """.. math:: \\lambda(\\sigma) = (\\sigma^2 + \\sigma_d^2) / (\\sigma \\sigma_d)^2"""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


# --- Keeping the implied x0 in the data range: transforms of a score function --------------------------------------


def _with_x0(score_fn, sde, transform):
    def correct(s, x, t):
        a, sig = _coeffs(x, t, sde)
        x0 = (x + sig**2 * s) / a
        # s' = (a x0' - x) / sig^2 = s + a (x0' - x0) / sig^2: exact where x0' == x0 (no cancellation)
        return s + a * (transform(x0) - x0) / sig**2

    if has_learned_variance(score_fn):  # the learned variance passes through (improved DDPM's clip_denoised)
        def score_and_v(x, t):
            s, v = score_fn.score_and_v(x, t)
            return correct(s, x, t), v

        return LearnedVarianceScore(score_and_v)

    def score(x, t):
        return correct(score_fn(x, t), x, t)

    return score


def clip_denoised(score_fn, sde, *, x_min: float = -1.0, x_max: float = 1.0):
    """``score_fn`` whose implied ``x0 = (x + s_t^2 score) / a_t`` is clipped to ``[x_min, x_max]``.

    The score of ``x_t = a_t x0' + s_t eps'`` with ``x0'`` the clipped prediction, so every sampler's update is
    the one it would make from the clipped x0: for the ancestral step this is exactly DDPM's ``clip_denoised``
    (Ho et al. 2020's sampler; the posterior mean of ``q(x_{i-1} | x_i, x0')``), for DDIM the step from x0' and
    the eps recomputed from it (GLIDE's; diffusers' ``clip_sample`` with ``use_clipped_model_output=True``; by
    default diffusers' DDIM keeps the network's eps in the direction term). ``sde`` must be the marginal the
    network was trained on (for a discrete DDPM model, its :class:`~diffjax.discrete.DDPMGrid`). For sampling only: it
    changes the model, so likelihoods must use the unclipped score. A :class:`~diffjax.LearnedVarianceScore`
    stays one, with its ``v`` unchanged.
    """
    if not x_min < x_max:
        raise ValueError(f"clip_denoised needs x_min < x_max, got x_min={x_min!r}, x_max={x_max!r}")
    return _with_x0(score_fn, sde, lambda x0: jnp.clip(x0, x_min, x_max))


def dynamic_threshold(score_fn, sde, *, percentile: float = 0.995, max_value: float = 1.0):
    """Imagen's dynamic thresholding (Saharia et al. 2022, Sec. 2.3) of the implied x0, as a score transform.

    Per example, ``c = max(max_value, quantile(|x0|, percentile))``; ``x0' = clip(x0, -c, c) * max_value / c``.
    Same contract as :func:`clip_denoised`.
    """
    if not 0.0 < percentile <= 1.0:
        raise ValueError(f"percentile must be in (0, 1], got {percentile!r}")
    max_value = check_positive("max_value", max_value)

    def transform(x0):
        flat = jnp.abs(x0.reshape(x0.shape[0], -1))
        c = jnp.maximum(jnp.quantile(flat, percentile, axis=1), max_value)
        c = bcast(c, x0)
        return jnp.clip(x0, -c, c) * (max_value / c)

    return _with_x0(score_fn, sde, transform)
