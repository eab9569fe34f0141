"""Denoising score matching in continuous time, and the Gaussian pieces of DDPM's variational bound.

One loss trains every model of diffjax (Song et al. 2021, eq. 7):

.. math:: \\mathcal L = \\mathbb E_{t, x_0, z}\\, \\lambda(t)\\, \\| s_\\theta(x_t, t) + z/\\sigma_t \\|^2,
    \\quad x_t = a_t x_0 + \\sigma_t z

where ``(a_t, sigma_t) = process.marginal(t)``. DDPM's ``L_simple`` and NCSN's loss are this loss on a discrete
grid with ``lambda = sigma^2`` (see ``diffjax.discrete``); ``lambda = g^2`` is the likelihood weighting.

Key usage (so that a hand-written loss can draw the same numbers): ``dsm_loss`` splits its key once,
``key_t, key_z = jax.random.split(key)``; the times come from ``key_t`` (``time_sampler(key_t, batch)``, or
``jax.random.uniform(key_t, (batch,), minval=t_eps, maxval=T)``, or the importance sampler), the noise is
``jax.random.normal(key_z, x0.shape, x0.dtype)``.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from diffjax.core._checks import check_batched, check_choice, check_floating, check_int, check_t_eps
from diffjax.core._deprecation import renamed_keywords
from diffjax.core.process import bcast, check_marginal, check_process

__all__ = [
    "dsm_loss",
    "sigma2_weighting",
    "likelihood_weighting",
    "importance_sample_time",
    "flow_matching_loss",
    "normal_kl",
    "discretized_gaussian_log_likelihood",
]


@renamed_keywords(sde="process")
def sigma2_weighting(process, t):
    """``lambda(t) = sigma_t^2``: the DSM loss becomes ``E ||sigma_t s + z||^2`` ("simple" eps loss, NCSN)."""
    return process.marginal(t)[1] ** 2


@renamed_keywords(sde="process")
def likelihood_weighting(process, t):
    """``lambda(t) = g(t)^2`` (Song et al. 2021, "Maximum likelihood training of score-based diffusion
    models"): the loss integrated over ``t`` bounds the negative log-likelihood."""
    return process.diffusion(t) ** 2


def _reduce(x, reduce):
    axes = tuple(range(1, x.ndim))
    return jnp.mean(x, axis=axes) if reduce == "mean" else jnp.sum(x, axis=axes)


@renamed_keywords(sde="process")
def importance_sample_time(key, batch: int, process, *, t_eps: float = 1e-5):
    """Sample ``t`` on ``[t_eps, T]`` with density ``p(t) = h(t)/Z``, ``h = g^2/sigma_t^2``; returns ``(t, p(t))``.

    With likelihood weighting, ``lambda(t) / p(t) \\propto sigma_t^2``, which removes the ``1/t`` blow-up of the
    weighted loss near ``t = 0`` (Song et al. 2021, likelihood training, Sec. 5). Inverse-CDF sampling:

    ``process.importance_time_icdf(u, t_eps) -> (t, p(t))`` does it: a closed form on VP (``h = beta/(1 - e^{-I})``,
    antiderivative ``log(e^{I(t)} - 1)``) and VE (``h`` constant: ``t`` uniform); elsewhere (sub-VP, rectified flow,
    ...) the CDF tabulated on a grid uniform in ``log t``
    (:meth:`~diffjax.core.process.GaussianPath.importance_time_icdf`), whose ``p(t)`` is the exact density of that
    piecewise sampler, so the reweighting stays unbiased.
    """
    check_int("batch", batch, minimum=1)
    check_process(process, name="process", where="importance sampling (it needs diffusion(t))")
    t_eps = check_t_eps(t_eps, float(process.T))
    u = jax.random.uniform(key, (batch,), jnp.float32)
    return process.importance_time_icdf(u, t_eps)


def _noised(key, x0, process, *, t_eps, time_sampler, reduce, importance_sampling=False):
    """The draws shared by the losses (module docstring): ``(t, correction, z, (a, s), x_t)``, where
    ``correction`` reweights importance-sampled times to the uniform-``t`` objective (1 otherwise)."""
    T = float(process.T)
    t_eps = check_t_eps(t_eps, T)
    check_choice("reduce", reduce, ("mean", "sum"))
    check_batched("x0", x0)
    check_floating("x0", x0)
    batch = x0.shape[0]
    key_t, key_z = jax.random.split(key)
    correction = 1.0
    if time_sampler is not None:
        t = jnp.asarray(time_sampler(key_t, batch))
    elif importance_sampling:
        t, density = importance_sample_time(key_t, batch, process, t_eps=t_eps)
        correction = 1.0 / ((T - t_eps) * density)
    else:
        t = jax.random.uniform(key_t, (batch,), jnp.float32, minval=t_eps, maxval=T)
    z = jax.random.normal(key_z, x0.shape, x0.dtype)
    a, s = process.marginal(t)
    return t, correction, z, (a, s), bcast(a, x0) * x0 + bcast(s, x0) * z


def _shaped_like(name, out, x0):
    if jnp.shape(out) != x0.shape:  # static shapes: checked while tracing, before anything runs
        raise ValueError(f"{name}(x, t) must return an array shaped like x0 {tuple(x0.shape)}, got shape "
                         f"{tuple(jnp.shape(out))}")
    return out


@renamed_keywords(sde="process")
def dsm_loss(key, x0, score_fn, process, *, weighting: Callable = sigma2_weighting, t_eps: float = 1e-5,
             time_sampler: Callable | None = None, importance_sampling: bool = False, reduce: str = "mean"):
    """Denoising score-matching loss, averaged over the batch (Song et al. 2021, eq. 7).

    .. math:: \\mathcal L = \\mathbb E_{t,z}\\, \\lambda(t)\\, \\| s_\\theta(x_t, t) + z/\\sigma_t \\|^2

    Computed as ``lambda/sigma^2 * ||sigma s + z||^2`` (finite at small ``sigma``).

    Args:
      key: PRNG key, split once into ``(key_t, key_z)`` (module docstring).
      x0: data, ``(batch, *dims)``.
      score_fn: ``score_fn(x, t) -> array like x``, ``t`` of shape ``(batch,)``.
      process: a :class:`~diffjax.Marginal` (``marginal(t)`` and ``T``: a process, a ``DDPMGrid``, an ``NCSNGrid``);
        likelihood weighting and importance sampling need a :class:`~diffjax.Process` (``diffusion(t)``).
      weighting: ``lambda(process, t) -> (batch,)``, e.g. :func:`sigma2_weighting`, :func:`likelihood_weighting`.
      t_eps: smallest time of the uniform (or importance) sampler, in ``(0, T)``.
      time_sampler: ``time_sampler(key, batch) -> t`` replacing the uniform sampler (e.g. ``grid.sample_time``, or
        ``functools.partial(logit_normal_time, process=process)``, :mod:`diffjax.core.weighting`). The loss is then
        ``E_{t ~ time_sampler}``: a different objective from the uniform one, by design (no reweighting).
      importance_sampling: sample ``t`` with density ``\\propto g^2/sigma^2`` and reweight by
        ``1/((T - t_eps) p(t))`` so the estimate is unbiased for the same uniform-``t`` objective (useful with
        :func:`likelihood_weighting`, where it cancels the weight's singularity).
      reduce: ``"mean"`` or ``"sum"`` of the squared error over the non-batch dims.

    Returns:
      Scalar loss.
    """
    if not callable(weighting):
        raise ValueError(f"weighting must be a callable (process, t) -> lambda, got {weighting!r}")
    if not callable(score_fn):
        raise ValueError(f"score_fn must be a callable score_fn(x, t), got {score_fn!r}")
    if time_sampler is not None and not callable(time_sampler):
        raise ValueError(f"time_sampler must be None or a callable (key, batch) -> t, got {time_sampler!r}")
    if not isinstance(importance_sampling, bool):
        raise ValueError(f"importance_sampling must be True or False, got {importance_sampling!r}")
    if importance_sampling and time_sampler is not None:
        raise ValueError(f"importance_sampling=True cannot be combined with time_sampler={time_sampler!r}")
    check_marginal(process, where="dsm_loss")
    if importance_sampling or weighting is likelihood_weighting:
        check_process(process, name="process", where="dsm_loss with importance sampling or likelihood weighting "
                                                      "(it needs diffusion(t))")
    t, correction, z, (_, std), x_t = _noised(key, x0, process, t_eps=t_eps, time_sampler=time_sampler,
                                              importance_sampling=importance_sampling, reduce=reduce)
    score = _shaped_like("score_fn", score_fn(x_t, t), x0)
    err = _reduce((bcast(std, x0) * score + z) ** 2, reduce)
    lam = weighting(process, t) / std**2
    return jnp.mean(lam * correction * err)


@renamed_keywords(sde="process")
def flow_matching_loss(key, x0, velocity_fn, process, *, t_eps: float = 1e-5, time_sampler: Callable | None = None,
                       reduce: str = "mean"):
    """Conditional flow-matching loss (Lipman et al. 2023, eq. 9; rectified flow, Liu et al. 2023, eq. 1), any process.

    .. math:: \\mathcal L = \\mathbb E_{t,z}\\, \\| u_\\theta(x_t, t) - (a_t' x_0 + \\sigma_t' z) \\|^2

    For rectified flow (``a = 1 - t, s = t``) the target is ``z - x_0``. It equals :func:`dsm_loss` with
    :func:`~diffjax.flow_matching_weighting` for ``score_fn = score_from_velocity(velocity_fn(x, t), x, t, process)``
    on the same key (same draws, see the module docstring), up to float rounding.

    Args:
      key: PRNG key, split once into ``(key_t, key_z)`` as in :func:`dsm_loss`.
      x0: data, ``(batch, *dims)``.
      velocity_fn: ``velocity_fn(x, t) -> array like x``, ``t`` of shape ``(batch,)``.
      process: a :class:`~diffjax.Marginal` (``marginal(t)``, ``marginal_derivative(t)``, ``T``): a process or a grid.
      t_eps: smallest time of the uniform sampler, in ``(0, T)``.
      time_sampler: ``time_sampler(key, batch) -> t`` replacing the uniform sampler (e.g. SD3's logit-normal,
        ``functools.partial(logit_normal_time, process=process)``).
      reduce: ``"mean"`` or ``"sum"`` of the squared error over the non-batch dims.

    Returns:
      Scalar loss.
    """
    if not callable(velocity_fn):
        raise ValueError(f"velocity_fn must be a callable velocity_fn(x, t), got {velocity_fn!r}")
    if time_sampler is not None and not callable(time_sampler):
        raise ValueError(f"time_sampler must be None or a callable (key, batch) -> t, got {time_sampler!r}")
    check_marginal(process, where="flow_matching_loss")
    t, _, z, _, x_t = _noised(key, x0, process, t_eps=t_eps, time_sampler=time_sampler, reduce=reduce)
    da, ds = process.marginal_derivative(t)
    target = bcast(da, x0) * x0 + bcast(ds, x0) * z
    u = _shaped_like("velocity_fn", velocity_fn(x_t, t), x0)
    return jnp.mean(_reduce((u - target) ** 2, reduce))


def normal_kl(mean1, logvar1, mean2, logvar2):
    """Elementwise ``KL(N(mean1, e^{logvar1}) || N(mean2, e^{logvar2}))`` in nats (arguments broadcast).

    .. math:: \\tfrac12\\big(-1 + \\ell_2 - \\ell_1 + e^{\\ell_1 - \\ell_2} + (\\mu_1 - \\mu_2)^2 e^{-\\ell_2}\\big)
    """
    mean1, logvar1, mean2, logvar2 = map(jnp.asarray, (mean1, logvar1, mean2, logvar2))
    return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * jnp.exp(-logvar2))


def _log_normal_mass(lo, hi):
    """``log(Phi(hi) - Phi(lo))`` for ``lo < hi``, stable in both tails and for narrow intervals."""
    flip = lo + hi > 0  # work in the lower tail, where log_ndtr is accurate
    lo, hi = jnp.where(flip, -hi, lo), jnp.where(flip, -lo, hi)
    mid, width = 0.5 * (lo + hi), hi - lo
    # narrow interval: midpoint rule with its second-order term, relative error O((width * mid)^4 / 1920)
    narrow = width * (jnp.abs(mid) + 1.0) < 0.1
    m, w = jnp.where(narrow, mid, 0.0), jnp.where(narrow, width, 0.01)  # keep the unused branch finite (grads)
    approx = (-0.5 * m**2 - 0.5 * math.log(2 * math.pi) + jnp.log(jnp.maximum(w, 1e-30))
              + jnp.log1p((m**2 - 1.0) * w**2 / 24.0))
    log_lo, log_hi = jax.scipy.special.log_ndtr(jnp.stack([lo, hi]))  # one log_ndtr: half the compile time
    d = jnp.where(narrow, -1.0, log_lo - log_hi)
    exact = log_hi + jnp.log(-jnp.expm1(d))
    return jnp.where(narrow, approx, exact)


def discretized_gaussian_log_likelihood(x, *, means, log_scales):
    """Log-probability (nats, elementwise) of 8-bit data under DDPM's discretized Gaussian decoder ``L_0``.

    ``x`` is scaled to ``[-1, 1]`` with bins of width ``2/255`` centred on the 256 values; the two edge bins
    extend to ``-inf`` and ``+inf`` (Ho et al. 2020, eq. 13), so the probabilities of the 256 values sum to 1.

    .. math:: p(x) = \\int_{\\delta_-(x)}^{\\delta_+(x)} \\mathcal N(y; \\mu, e^{2\\log s})\\,dy

    Args:
      x: data in ``[-1, 1]`` on the 8-bit lattice; any shape.
      means, log_scales: decoder mean and log standard deviation, broadcastable against ``x``.
    """
    x, means, log_scales = map(jnp.asarray, (x, means, log_scales))
    x, means, log_scales = jnp.broadcast_arrays(x, means, log_scales)
    inv_s = jnp.exp(-log_scales)
    lo = (x - means - 1.0 / 255.0) * inv_s
    hi = (x - means + 1.0 / 255.0) * inv_s
    # edge bins reach to -inf / +inf: any bound beyond |other bound| + 40 carries a relative mass below e^-800
    lo = jnp.where(x < -0.999, -(jnp.abs(hi) + 40.0), lo)
    hi = jnp.where(x > 0.999, jnp.abs(lo) + 40.0, hi)
    return _log_normal_mass(lo, hi)
