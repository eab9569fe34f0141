"""Consistency models (Song et al. 2023) and improved consistency training (iCT, Song & Dhariwal 2024) on the process
protocol: one implementation for every Gaussian path ``x_t = a(t) x_0 + s(t) eps``.

A consistency function maps any point of a probability-flow ODE trajectory to the trajectory's point at ``t_eps``.
Every process is EDM's ``y = x / a = x_0 + sigma n`` with ``sigma = s / a`` (its noise-to-signal ratio) scaled by
``a``, and the probability-flow ODE commutes with that scaling, so the paper's parameterization (in ``sigma``)
carries over to any process by working in ``y`` and scaling the result by ``a(t_eps)``:

.. math:: f(x, t) = c_{skip}(\\sigma) \\frac{a_\\epsilon}{a_t} x + c_{out}(\\sigma)\\, a_\\epsilon\\,
    F\\big(c_{in}(\\sigma) x / a_t,\\ c_{noise}(\\sigma)\\big)

with ``c_skip = sd^2 / ((sigma - sigma_min)^2 + sd^2)``, ``c_out = sd (sigma - sigma_min) / sqrt(sigma^2 + sd^2)``
(``sd = sigma_data``), EDM's ``c_in``, ``c_noise``; at ``t_eps`` (``sigma = sigma_min``) ``c_skip = 1``,
``c_out = 0`` exactly, so ``f(x, t_eps) = x`` bit for bit.

Losses take plain callables (``f(x, t)``, ``score_fn(x, t)``; ``t`` of shape ``(batch,)``) and are parameter-free
math: no flax or optax here. Metrics: pseudo-Huber (iCT) and squared L2; LPIPS needs pretrained weights that are not
available offline, so it is not provided (a user may pass any ``metric(x, y) -> (batch,)``).
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax.scipy.special import erf

from diffjax.core._checks import (check_batched, check_finite, check_floating, check_int, check_positive,
                                  check_t_eps)
from diffjax.core.process import bcast, check_process
from diffjax.samplers._grids import check_time_grid, karras_grid
from diffjax.samplers._kernels import ode_heun_step

__all__ = [
    "consistency_fn",
    "pseudo_huber",
    "squared_l2",
    "unit_weight",
    "ict_weight",
    "ict_num_scales",
    "cd_loss",
    "ct_loss",
    "consistency_sample",
]


def _batch_t(t, x):
    return jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],))


def _check_callable(name, fn, what):
    if not callable(fn):
        raise ValueError(f"{name} must be {what}, got {fn!r}")


def _resolve_t_eps(process, t_eps, where):
    check_process(process, name="process", where=where)
    return check_t_eps(process.t_eps if t_eps is None else t_eps, float(process.T))


def _sigma_at(process, t: float) -> float:
    """``s/a`` at a Python time, as a Python float (concrete even under a caller's jit)."""
    with jax.ensure_compile_time_eval():
        a, s = process.marginal(jnp.float32(t))
        return float(s / a)


def _a_at(process, t: float) -> float:
    with jax.ensure_compile_time_eval():
        return float(process.marginal(jnp.float32(t))[0])


# ------------------------------------------------------------------------------------------------ the function


def consistency_fn(raw_fn: Callable, process, *, sigma_data: float = 0.5, t_eps: float | None = None):
    """The consistency model ``f(x, t)`` of a raw network, parameterized so that ``f(x, t_eps) = x`` exactly
    (Song et al. 2023, Appendix C, with EDM's ``c_in``/``c_noise``), for any process (module docstring).

    .. math:: f(x, t) = c_{skip}(\\sigma_t) \\frac{a_\\epsilon}{a_t} x + c_{out}(\\sigma_t)\\, a_\\epsilon\\,
        F(c_{in}(\\sigma_t)\\, x / a_t,\\ c_{noise}(\\sigma_t))

    Args:
        raw_fn: ``raw_fn(x_in, c_noise) -> F`` shaped like ``x_in`` (``x_in``: ``(batch, *dims)``, ``c_noise =
            log(sigma) / 4``: ``(batch,)``), like the raw network of :func:`diffjax.score_from_edm`.
        process: any forward process.
        sigma_data: the data's standard deviation (EDM's 0.5 for images in [-1, 1]).
        t_eps: the boundary time (default ``process.t_eps``); samplers and losses must use the same one.

    Returns:
        ``f(x, t) -> (batch, *dims)`` with ``t`` of shape ``()`` or ``(batch,)``; for ``t <= t_eps`` it returns
        ``x`` (``c_skip = 1``, ``c_out = 0``).
    """
    _check_callable("raw_fn", raw_fn, "a callable raw_fn(x_in, c_noise) -> F")
    t_eps = _resolve_t_eps(process, t_eps, "consistency_fn")
    sd = check_positive("sigma_data", sigma_data)
    sigma_min, a_eps = _sigma_at(process, t_eps), _a_at(process, t_eps)

    def f(x, t):
        tb = _batch_t(t, x)
        a, s = process.marginal(tb)
        sigma = s / a
        at_min = tb <= t_eps
        d = jnp.where(at_min, 0.0, sigma - sigma_min)  # exactly 0 at the boundary (not sigma(t_eps) - float(...))
        c_skip = sd**2 / (d**2 + sd**2)
        c_out = sd * d / jnp.sqrt(sigma**2 + sd**2)
        c_in = 1.0 / jnp.sqrt(sigma**2 + sd**2)
        ratio = jnp.where(at_min, 1.0, a_eps / a)
        out = raw_fn(bcast(c_in / a, x).astype(x.dtype) * x, 0.25 * jnp.log(sigma))
        if out.shape != x.shape:
            raise ValueError(f"raw_fn must return an array shaped like x_in {x.shape}, got {out.shape}")
        return bcast(c_skip * ratio, x).astype(x.dtype) * x + bcast(c_out * a_eps, x).astype(x.dtype) * out

    return f


# ------------------------------------------------------------------------------------------ metrics, weights


def pseudo_huber(x, y, *, c: float | None = None):
    """iCT's pseudo-Huber metric per example (LPIPS, the papers' other metric, needs pretrained weights that are not
    available offline: use this or :func:`squared_l2`).

    .. math:: d(x, y) = \\sqrt{\\|x - y\\|_2^2 + c^2} - c,\\quad c = 0.00054 \\sqrt{d}

    Args:
        x, y: ``(batch, *dims)``.
        c: the constant (default ``0.00054 sqrt(d)``, ``d`` the number of non-batch elements).

    Returns:
        ``(batch,)``.
    """
    d = math.prod(x.shape[1:])
    c = 0.00054 * math.sqrt(d) if c is None else check_positive("c", c)
    sq = jnp.sum((x - y) ** 2, axis=tuple(range(1, x.ndim)))
    return jnp.sqrt(sq + c**2) - c


def squared_l2(x, y):
    """The squared L2 metric per example (the consistency-model paper's L2).

    .. math:: d(x, y) = \\|x - y\\|_2^2
    """
    return jnp.sum((x - y) ** 2, axis=tuple(range(1, x.ndim)))


def unit_weight(sigma, sigma_next):
    """``lambda = 1`` (the consistency-model paper's weighting).

    .. math:: \\lambda(\\sigma_n) = 1
    """
    return jnp.ones_like(sigma)


def ict_weight(sigma, sigma_next):
    """iCT's weighting of adjacent noise levels.

    .. math:: \\lambda(\\sigma_n) = 1 / (\\sigma_{n+1} - \\sigma_n)
    """
    return 1.0 / (sigma_next - sigma)


def ict_num_scales(step, *, total_steps: int, s0: int = 10, s1: int = 1280):
    """iCT's exponential discretization curriculum (Song & Dhariwal 2024, eq. 5): the number of noise levels at
    training step ``k`` of ``K``.

    .. math:: N(k) = \\min\\big(s_0\\, 2^{\\lfloor k / K' \\rfloor},\\ s_1\\big) + 1,\\quad
        K' = \\Big\\lfloor \\frac{K}{\\log_2 \\lfloor s_1 / s_0 \\rfloor + 1} \\Big\\rfloor

    Args:
        step: the training step ``k`` (a Python int or an integer array, traced allowed).
        total_steps: ``K``.
        s0, s1: initial and final number of intervals (10, 1280).

    Returns:
        ``N(k)`` (int32 array).
    """
    total_steps = check_int("total_steps", total_steps, minimum=1)
    s0 = check_int("s0", s0, minimum=1)
    s1 = check_int("s1", s1, minimum=1)
    if s1 < s0:
        raise ValueError(f"s1 must be >= s0={s0}, got {s1!r}")
    k_prime = max(int(math.floor(total_steps / (math.log2(s1 // s0) + 1))), 1)
    k = jnp.asarray(step, jnp.int32)
    doublings = jnp.minimum(k // k_prime, 30)  # 2^31 would overflow int32; s1 caps it long before
    return jnp.minimum(s0 * 2 ** doublings, s1).astype(jnp.int32) + 1


# ------------------------------------------------------------------------------------------------------ losses


def _per_example_step(ode_step, score_fn, process):
    """``ode_step`` on per-example times: each example moves from its own ``t`` to its own ``t_next``."""

    def one(xi, ti, tni):
        return ode_step(xi[None], ti, tni, score_fn, process)[0]

    return jax.vmap(one)


def _check_loss_args(x0, fns, metric, weighting):
    check_batched("x0", x0, min_ndim=2)
    check_floating("x0", x0)
    for name, fn in fns:
        _check_callable(name, fn, f"a callable {name}(x, t)")
    _check_callable("metric", metric, "a callable metric(x, y) -> (batch,), e.g. pseudo_huber or squared_l2")
    _check_callable("weighting", weighting, "a callable weighting(sigma, sigma_next), e.g. unit_weight, ict_weight")


def _consistency_term(x_next, t_next, x_cur, t_cur, sigma, sigma_next, student_fn, target_fn, metric, weighting):
    pred = student_fn(x_next, t_next)
    target = jax.lax.stop_gradient(target_fn(x_cur, t_cur))
    dist = metric(pred, target)
    if dist.shape != (x_next.shape[0],):
        raise ValueError(f"metric must return one distance per example, shape ({x_next.shape[0]},), got "
                         f"{dist.shape}")
    return jnp.mean(weighting(sigma, sigma_next) * dist)


def cd_loss(key, x0, student_fn: Callable, target_fn: Callable, teacher_score_fn: Callable, process, *,
            num_scales: int = 18, ode_step: Callable = ode_heun_step, metric: Callable = squared_l2,
            weighting: Callable = unit_weight, t_eps: float | None = None, time_grid=karras_grid):
    """Consistency distillation (Song et al. 2023, Algorithm 2), averaged over the batch.

    On the ``num_scales`` times ``t_eps = t_1 < ... < t_N = T`` of ``time_grid`` (default EDM's rho-grid of the
    process's ``sigma = s/a``), each example draws ``n`` uniformly in ``1..N-1``; ``x_{n+1} = a x_0 + s z`` at
    ``t_{n+1}``, one teacher step of the probability-flow ODE gives ``x_n``, and

    .. math:: \\mathcal L = \\mathbb E\\, \\lambda(\\sigma_n)\\, d\\big(f_\\theta(x_{n+1}, t_{n+1}),\\
        \\mathrm{sg}(f_{\\theta^-}(\\hat x_n, t_n))\\big)

    Key usage: ``key_n, key_z = jax.random.split(key)``; ``n = jax.random.randint(key_n, (batch,), 0, N - 1)``
    (0-based: the step ``t_grid[n + 1] -> t_grid[n]`` on the increasing grid), ``z = jax.random.normal(key_z, ...)``.

    Args:
        key: PRNG key.
        x0: ``(batch, *dims)`` data.
        student_fn: the consistency model ``f_theta(x, t)`` (e.g. :func:`consistency_fn` of the network).
        target_fn: ``f_theta^-``, evaluated under ``stop_gradient``: Song et al. 2023's CD uses an EMA of the
            student's parameters (rate ``mu = 0.95``, their Table 3); ``student_fn`` itself is iCT's choice (Song &
            Dhariwal 2024, for consistency training) and the default of diffjax's configs
            (``distill.target_ema = 0``).
        teacher_score_fn: the teacher's ``score_fn(x, t)``.
        process: any forward process.
        num_scales: ``N >= 2``, the number of grid times.
        ode_step: one probability-flow ODE step ``ode_step(x, t, t_next, score_fn, process)`` from
            :mod:`diffjax.samplers` (default :func:`~diffjax.samplers.ode_heun_step`, the paper's; or
            :func:`~diffjax.samplers.ode_euler_step`).
        metric: ``d(x, y) -> (batch,)``: :func:`squared_l2` (default) or :func:`pseudo_huber` (no LPIPS offline).
        weighting: ``lambda(sigma_n, sigma_{n+1})``: :func:`unit_weight` (default) or :func:`ict_weight`.
        t_eps: the boundary time (default ``process.t_eps``; the same as the consistency function's).
        time_grid: grid function from :mod:`diffjax.samplers` (default :func:`~diffjax.samplers.karras_grid`).

    Returns:
        Scalar loss.
    """
    t_eps = _resolve_t_eps(process, t_eps, "cd_loss")
    _check_loss_args(x0, (("student_fn", student_fn), ("target_fn", target_fn),
                          ("teacher_score_fn", teacher_score_fn), ("ode_step", ode_step)), metric, weighting)
    n_scales = check_int("num_scales", num_scales, minimum=2)
    times = jnp.asarray(check_time_grid(time_grid, process, n_scales - 1, t_eps)[::-1].copy(), jnp.float32)
    key_n, key_z = jax.random.split(key)
    n = jax.random.randint(key_n, (x0.shape[0],), 0, n_scales - 1)
    t_cur, t_next = times[n], times[n + 1]
    z = jax.random.normal(key_z, x0.shape, x0.dtype)
    x_next = process.perturb(x0, t_next, z).astype(x0.dtype)
    x_cur = jax.lax.stop_gradient(_per_example_step(ode_step, teacher_score_fn, process)(x_next, t_next, t_cur))
    (a, s), (a_n, s_n) = process.marginal(t_cur), process.marginal(t_next)
    return _consistency_term(x_next, t_next, x_cur, t_cur, s / a, s_n / a_n, student_fn, target_fn, metric,
                             weighting)


def ct_loss(key, x0, student_fn: Callable, process, *, step, total_steps: int, s0: int = 10, s1: int = 1280,
            rho: float = 7.0, p_mean: float = -1.1, p_std: float = 2.0, metric: Callable = pseudo_huber,
            weighting: Callable = ict_weight, target_fn: Callable | None = None, t_eps: float | None = None):
    """Consistency training (Song et al. 2023, Algorithm 3) with iCT's improvements (Song & Dhariwal 2024),
    averaged over the batch.

    At training step ``k`` the ``N = N(k)`` noise levels (:func:`ict_num_scales`) are Karras' rho-grid of the
    process's ``sigma = s/a`` between ``sigma(t_eps)`` and ``sigma(T)`` (times ``t = lambda^{-1}(-2 log sigma)``,
    ends exact); the index ``i`` of the pair ``(sigma_i, sigma_{i+1})`` is drawn with iCT's discretised
    log-normal ``p(i) ~ erf((log sigma_{i+1} - P_mean)/(sqrt 2 P_std)) - erf((log sigma_i - P_mean)/(sqrt 2 P_std))``;
    both points share one noise ``z``; no EMA teacher (``target_fn = student_fn`` under ``stop_gradient``).

    .. math:: \\mathcal L = \\mathbb E\\, \\frac{1}{\\sigma_{i+1} - \\sigma_i}\\,
        d\\big(f_\\theta(a_{i+1} x_0 + s_{i+1} z,\\ t_{i+1}),\\ \\mathrm{sg}(f_\\theta(a_i x_0 + s_i z,\\ t_i))\\big)

    Key usage: ``key_i, key_z = jax.random.split(key)``; ``i`` by inverse CDF, ``u = jax.random.uniform(key_i,
    (batch,)) * C_{N-1}``, ``i = searchsorted(C, u, side="right")`` with ``C`` the cumulative sums of the unnormalised
    ``p``; ``z = jax.random.normal(key_z, x0.shape, x0.dtype)``.

    Args:
        key: PRNG key.
        x0: ``(batch, *dims)`` data.
        student_fn: the consistency model ``f_theta(x, t)`` (e.g. :func:`consistency_fn` of the network).
        process: any forward process.
        step: the training step ``k`` (int or int array; traced allowed: the grid has a static size ``s1 + 1``).
        total_steps: ``K``, the training length of the curriculum.
        s0, s1: the curriculum's initial and final numbers of intervals (10, 1280).
        rho: the grid's rho (7).
        p_mean, p_std: the log-normal of the noise levels (-1.1, 2.0).
        metric: ``d(x, y) -> (batch,)``: :func:`pseudo_huber` (default) or :func:`squared_l2` (no LPIPS offline).
        weighting: ``lambda(sigma_i, sigma_{i+1})``: :func:`ict_weight` (default) or :func:`unit_weight`.
        target_fn: ``f_theta^-`` (default ``student_fn``: iCT); evaluated under ``stop_gradient``.
        t_eps: the boundary time (default ``process.t_eps``; the same as the consistency function's).

    Returns:
        Scalar loss.
    """
    t_eps = _resolve_t_eps(process, t_eps, "ct_loss")
    target_fn = student_fn if target_fn is None else target_fn
    _check_loss_args(x0, (("student_fn", student_fn), ("target_fn", target_fn)), metric, weighting)
    rho = check_positive("rho", rho)
    p_mean, p_std = check_finite("p_mean", p_mean), check_positive("p_std", p_std)
    num = ict_num_scales(step, total_steps=total_steps, s0=s0, s1=s1)
    size = int(s1) + 1
    sigma_min, sigma_max = _sigma_at(process, t_eps), _sigma_at(process, float(process.T))
    if not sigma_min < sigma_max:
        raise ValueError(f"process must have s/a increasing from t_eps to T for ct_loss, got sigma(t_eps)="
                         f"{sigma_min!r} and sigma(T)={sigma_max!r}")
    idx = jnp.arange(size, dtype=jnp.int32)
    frac = idx.astype(jnp.float32) / (num - 1).astype(jnp.float32)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    sigmas = jnp.where(idx < num, (lo + jnp.minimum(frac, 1.0) * (hi - lo)) ** rho, sigma_max)  # increasing
    times = process.t_from_log_snr(-2.0 * jnp.log(sigmas)).astype(jnp.float32)
    times = jnp.where(idx == 0, t_eps, jnp.where(idx >= num - 1, float(process.T), times))
    cdf = erf((jnp.log(sigmas) - p_mean) / (math.sqrt(2.0) * p_std))
    mass = cdf[1:] - cdf[:-1]
    cum = jnp.cumsum(jnp.where(idx[:-1] < num - 1, jnp.maximum(mass, 0.0), 0.0))
    key_i, key_z = jax.random.split(key)
    u = jax.random.uniform(key_i, (x0.shape[0],), jnp.float32) * cum[-1]  # inverse CDF: O(batch log s1) per step
    i = jnp.clip(jnp.searchsorted(cum, u, side="right", method="compare_all"), 0, num - 2)
    z = jax.random.normal(key_z, x0.shape, x0.dtype)
    t_cur, t_next = times[i], times[i + 1]
    x_cur = process.perturb(x0, t_cur, z).astype(x0.dtype)
    x_next = process.perturb(x0, t_next, z).astype(x0.dtype)
    return _consistency_term(x_next, t_next, x_cur, t_cur, sigmas[i], sigmas[i + 1], student_fn, target_fn, metric,
                             weighting)


# ----------------------------------------------------------------------------------------------------- sampler


def consistency_sample(key, x_T, f: Callable, process, *, steps=None, t_eps: float | None = None):
    """Consistency-model sampling (Song et al. 2023, Algorithm 1): one step ``f(x_T, T)``, or multistep: denoise,
    re-noise to the next time of ``steps``, denoise, ...

    ``f`` returns the trajectory's point at ``t_eps``, ``x_eps = a_eps (x_0 + sigma_min n)``; re-noising it to
    ``tau`` (noise-to-signal ratio ``sigma_tau = s/a``) is the paper's ``x + sqrt(tau^2 - eps^2) z`` in ``y = x/a``:

    .. math:: x_\\tau = \\frac{a_\\tau}{a_\\epsilon} x + a_\\tau \\sqrt{\\sigma_\\tau^2 - \\sigma_{min}^2}\\, z

    Args:
        key: PRNG key (step ``k >= 1`` re-noises with ``jax.random.fold_in(key, k)``).
        x_T: ``(batch, *dims)`` sample of the prior at ``steps[0]`` (e.g. ``process.prior_sample``).
        f: the consistency model ``f(x, t)`` (e.g. :func:`consistency_fn`), with boundary time ``t_eps``.
        process: any forward process.
        steps: strictly decreasing times in ``(t_eps, T]``, the first the time of ``x_T`` (default
            ``(process.T,)``: one step).
        t_eps: the boundary time of ``f`` (default ``process.t_eps``).

    Returns:
        ``(batch, *dims)`` samples (at ``t_eps``).
    """
    t_eps = _resolve_t_eps(process, t_eps, "consistency_sample")
    _check_callable("f", f, "a callable consistency model f(x, t)")
    check_batched("x_T", x_T, min_ndim=2)
    check_floating("x_T", x_T)
    T = float(process.T)
    raw_steps = (T,) if steps is None else steps
    try:
        steps = tuple(float(check_finite("steps", s)) for s in raw_steps)
    except TypeError:
        raise ValueError(f"steps must be a sequence of times, got {raw_steps!r}") from None
    if not steps or any(not t_eps < s <= T for s in steps) or any(b >= a for a, b in zip(steps, steps[1:])):
        raise ValueError(f"steps must be a non-empty, strictly decreasing sequence of times in (t_eps={t_eps}, "
                         f"T={T}], got {raw_steps!r}")
    sigma_min, a_eps = _sigma_at(process, t_eps), _a_at(process, t_eps)
    x = f(x_T, jnp.float32(steps[0]))
    if len(steps) == 1:
        return x

    def body(x, inputs):
        k, tau = inputs
        a, s = process.marginal(tau)
        z = jax.random.normal(jax.random.fold_in(key, k), x.shape, x.dtype)
        scale = a * jnp.sqrt(jnp.maximum((s / a) ** 2 - sigma_min**2, 0.0))
        x_tau = (a / a_eps).astype(x.dtype) * x + scale.astype(x.dtype) * z
        return f(x_tau, tau), None

    ks = jnp.arange(1, len(steps), dtype=jnp.int32)
    x, _ = jax.lax.scan(body, x, (ks, jnp.asarray(steps[1:], jnp.float32)))
    return x
