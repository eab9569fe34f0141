"""Conversions between what a network predicts (eps, x0, v, score, EDM's F) for any SDE.

With ``x_t = a x_0 + s eps`` (``(a, s) = sde.marginal(t)``) the score of the perturbation kernel is
``-eps / s``; ``v = a eps - s x_0`` (Salimans & Ho 2022), generalised to ``a^2 + s^2 != 1`` by solving the
2x2 system. All functions take ``(pred, x, t, sde)`` with ``pred, x`` of shape ``(batch, *dims)``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.core._checks import check_positive
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
    "edm_preconditioning",
    "edm_sigma",
    "score_from_edm",
    "edm_loss_weight",
    "clip_denoised",
    "dynamic_threshold",
]


def _coeffs(x, t, sde):
    a, s = sde.marginal(t)
    return bcast(a, x), bcast(s, x)


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


def edm_loss_weight(sigma, *, sigma_data: float = 0.5):
    """.. math:: \\lambda(\\sigma) = (\\sigma^2 + \\sigma_d^2) / (\\sigma \\sigma_d)^2"""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


# --- Keeping the implied x0 in the data range: transforms of a score function --------------------------------------


def _with_x0(score_fn, sde, transform):
    def score(x, t):
        s = score_fn(x, t)
        a, sig = _coeffs(x, t, sde)
        x0 = (x + sig**2 * s) / a
        # s' = (a x0' - x) / sig^2 = s + a (x0' - x0) / sig^2: exact where x0' == x0 (no cancellation)
        return s + a * (transform(x0) - x0) / sig**2

    return score


def clip_denoised(score_fn, sde, *, x_min: float = -1.0, x_max: float = 1.0):
    """``score_fn`` whose implied ``x0 = (x + s_t^2 score) / a_t`` is clipped to ``[x_min, x_max]``.

    The score of ``x_t = a_t x0' + s_t eps'`` with ``x0'`` the clipped prediction, so every sampler's update is
    the one it would make from the clipped x0: for the ancestral step this is exactly DDPM's ``clip_denoised``
    (Ho et al. 2020's sampler; the posterior mean of ``q(x_{i-1} | x_i, x0')``), for DDIM diffusers'
    ``clip_sample`` (which recomputes eps from the clipped x0). ``sde`` must be the marginal the network was
    trained on (for a discrete DDPM model, its :class:`~diffjax.discrete.DDPMGrid`). For sampling only: it
    changes the model, so likelihoods must use the unclipped score.
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
