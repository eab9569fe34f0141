"""Conversions between what a network predicts (eps, x0, v, score, EDM's F) for any SDE.

With ``x_t = a x_0 + s eps`` (``(a, s) = process.marginal(t)``) the score of the perturbation kernel is
``-eps / s``; ``v = a eps - s x_0`` (Salimans & Ho 2022), generalised to ``a^2 + s^2 != 1`` by solving the
2x2 system. All functions take ``(pred, x, t, process)`` with ``pred, x`` of shape ``(batch, *dims)``.

The velocity ``u = a' x_0 + s' eps`` (flow matching, Lipman et al. 2023; rectified flow, Liu et al. 2023; primes are
``d/dt``, ``(a', s') = process.marginal_derivative(t)``) is affine in the score given ``x_t``:

.. math:: u = \\frac{a'}{a} x_t + \\frac{s^2 \\lambda'}{2} \\nabla \\log p_t(x_t),\\quad \\lambda = \\log(a^2/s^2)

i.e. the probability-flow ODE's vector field ``f - g^2/2 * score`` (``g^2 = -s^2 lambda'``). Every conversion is
exact (no approximation) for any Gaussian path with ``a > 0, s > 0``; from the velocity (``score_from_velocity``,
``eps_from_velocity``, ``x0_from_velocity``) also at ``a = 0`` (rectified flow's ``t = 1``), by solving the 2x2
system ``(x_t, u) = (a x_0 + s eps, a' x_0 + s' eps)``, whose determinant ``a s' - s a' = -a s lambda' / 2`` (for
``a > 0``; ``-s a'`` at ``a = 0``) is positive where the log-SNR decreases.
The velocity from the score needs ``a > 0`` (at ``a = 0`` the score does not determine ``E[x_0 | x_t]``).
"""
from __future__ import annotations

import jax.numpy as jnp

from diffjax.core._checks import check_positive
from diffjax.core._deprecation import renamed_keywords
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


def _coeffs(x, t, process):
    a, s = process.marginal(t)
    return _promote(a, x), _promote(s, x)


@renamed_keywords(sde="process")
def score_from_eps(eps, x, t, process):
    """.. math:: s = -\\epsilon / \\sigma_t"""
    _, s = _coeffs(x, t, process)
    return -eps / s


@renamed_keywords(sde="process")
def score_from_x0(x0, x, t, process):
    """.. math:: s = -(x - a_t x_0) / \\sigma_t^2"""
    a, s = _coeffs(x, t, process)
    return -(x - a * x0) / s**2


@renamed_keywords(sde="process")
def score_from_v(v, x, t, process):
    a, s = _coeffs(x, t, process)
    eps = (a * v + s * x) / (a**2 + s**2)
    return -eps / s


@renamed_keywords(sde="process")
def eps_from_score(score, x, t, process):
    _, s = _coeffs(x, t, process)
    return -s * score


@renamed_keywords(sde="process")
def x0_from_score(score, x, t, process):
    a, s = _coeffs(x, t, process)
    return (x + s**2 * score) / a


@renamed_keywords(sde="process")
def v_from_score(score, x, t, process):
    a, s = _coeffs(x, t, process)
    eps = -s * score
    x0 = (x - s * eps) / a
    return a * eps - s * x0


@renamed_keywords(sde="process")
def x0_from_eps(eps, x, t, process):
    a, s = _coeffs(x, t, process)
    return (x - s * eps) / a


@renamed_keywords(sde="process")
def eps_from_x0(x0, x, t, process):
    a, s = _coeffs(x, t, process)
    return (x - a * x0) / s


def _velocity_coeffs(x, t, process):
    a, s = _coeffs(x, t, process)
    da, ds = process.marginal_derivative(t)
    da, ds = _promote(da, x), _promote(ds, x)
    return a, s, da, ds, a * ds - s * da  # the determinant of (x, u) in terms of (x0, eps)


@renamed_keywords(sde="process")
def velocity_from_score(score, x, t, process):
    """Velocity (flow-matching target's conditional mean) from the score; needs ``a_t > 0``.

    .. math:: u = a' \\hat x_0 + s' \\hat\\epsilon,\\quad \\hat\\epsilon = -s\\,\\mathrm{score},\\quad
        \\hat x_0 = (x - s \\hat\\epsilon) / a
    """
    a, s, da, ds, _ = _velocity_coeffs(x, t, process)
    eps = -s * score
    return da * (x - s * eps) / a + ds * eps


@renamed_keywords(sde="process")
def score_from_velocity(u, x, t, process):
    """Score from the velocity ``u = a' x_0 + s' eps`` (exact for every Gaussian path, also at ``a = 0``).

    .. math:: \\nabla \\log p_t = -\\frac{a u - a' x}{s\\,(a s' - s a')}
    """
    a, s, da, ds, det = _velocity_coeffs(x, t, process)
    return -(a * u - da * x) / (s * det)


@renamed_keywords(sde="process")
def eps_from_velocity(u, x, t, process):
    """.. math:: \\epsilon = (a u - a' x) / (a s' - s a')"""
    a, _, da, _, det = _velocity_coeffs(x, t, process)
    return (a * u - da * x) / det


@renamed_keywords(sde="process")
def x0_from_velocity(u, x, t, process):
    """.. math:: x_0 = (s' x - s u) / (a s' - s a')"""
    _, s, _, ds, det = _velocity_coeffs(x, t, process)
    return (ds * x - s * u) / det


@renamed_keywords(sde="process")
def velocity_from_eps(eps, x, t, process):
    """.. math:: u = a' (x - s \\epsilon) / a + s' \\epsilon"""
    a, s, da, ds, _ = _velocity_coeffs(x, t, process)
    return da * (x - s * eps) / a + ds * eps


@renamed_keywords(sde="process")
def velocity_from_x0(x0, x, t, process):
    """.. math:: u = a' x_0 + s' (x - a x_0) / s"""
    a, s, da, ds, _ = _velocity_coeffs(x, t, process)
    return da * x0 + ds * (x - a * x0) / s


@renamed_keywords(sde="process")
def edm_sigma(t, process):
    """EDM's noise level of ``x_t / a_t``: ``sigma = s_t / a_t`` (Karras et al. 2022, Table 1)."""
    a, s = process.marginal(t)
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


@renamed_keywords(sde="process")
def score_from_edm(raw_fn, x, t, process, *, sigma_data: float = 0.5):
    """Score from a raw EDM network ``raw_fn(x_in, c_noise) -> F``, for any SDE.

    ``x_t = a (x_0 + sigma n)``, so the EDM denoiser acts on ``x_t / a`` with ``sigma = s / a``.
    """
    a, _ = process.marginal(t)
    sigma = edm_sigma(t, process)
    c_skip, c_out, c_in, c_noise = edm_preconditioning(sigma, sigma_data=sigma_data)
    x_hat = x / bcast(a, x)
    denoised = bcast(c_skip, x) * x_hat + bcast(c_out, x) * raw_fn(bcast(c_in, x) * x_hat, c_noise)
    return score_from_x0(denoised, x, t, process)


@renamed_keywords(sde="process")
def edm_from_score(score, x, t, process, *, sigma_data: float = 0.5):
    """The raw EDM network output ``F`` whose preconditioned denoiser implies ``score`` (inverse of
    :func:`score_from_edm`): ``F = (x0 - c_skip x / a) / c_out`` with ``x0`` from the score.

    .. math:: F = (\\hat x_0 - c_{skip} x / a) / c_{out}
    """
    a, _ = process.marginal(t)
    c_skip, c_out, _, _ = edm_preconditioning(edm_sigma(t, process), sigma_data=sigma_data)
    x0 = x0_from_score(score, x, t, process)
    return (x0 - bcast(c_skip, x) * x / bcast(a, x)) / bcast(c_out, x)


def edm_loss_weight(sigma, *, sigma_data: float = 0.5):
    """.. math:: \\lambda(\\sigma) = (\\sigma^2 + \\sigma_d^2) / (\\sigma \\sigma_d)^2"""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


# --- Keeping the implied x0 in the data range: transforms of a score function --------------------------------------


def _with_x0(score_fn, process, transform):
    def correct(s, x, t):
        a, sig = _coeffs(x, t, process)
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


@renamed_keywords(sde="process")
def clip_denoised(score_fn, process, *, x_min: float = -1.0, x_max: float = 1.0):
    """``score_fn`` whose implied ``x0 = (x + s_t^2 score) / a_t`` is clipped to ``[x_min, x_max]``.

    The score of ``x_t = a_t x0' + s_t eps'`` with ``x0'`` the clipped prediction, so every sampler's update is
    the one it would make from the clipped x0: for the ancestral step this is exactly DDPM's ``clip_denoised``
    (Ho et al. 2020's sampler; the posterior mean of ``q(x_{i-1} | x_i, x0')``), for DDIM the step from x0' and
    the eps recomputed from it (GLIDE's; diffusers' ``clip_sample`` with ``use_clipped_model_output=True``; by
    default diffusers' DDIM keeps the network's eps in the direction term). ``process`` must be the marginal the
    network was trained on (for a discrete DDPM model, its :class:`~diffjax.discrete.DDPMGrid`). For sampling only: it
    changes the model, so likelihoods must use the unclipped score. A :class:`~diffjax.LearnedVarianceScore`
    stays one, with its ``v`` unchanged.
    """
    if not x_min < x_max:
        raise ValueError(f"clip_denoised needs x_min < x_max, got x_min={x_min!r}, x_max={x_max!r}")
    return _with_x0(score_fn, process, lambda x0: jnp.clip(x0, x_min, x_max))


@renamed_keywords(sde="process")
def dynamic_threshold(score_fn, process, *, percentile: float = 0.995, max_value: float = 1.0):
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

    return _with_x0(score_fn, process, transform)
