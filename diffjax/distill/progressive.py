"""Progressive distillation (Salimans & Ho 2022, Algorithm 2) on the process protocol: one student DDIM step does
the work of two teacher DDIM steps, for any Gaussian path ``x_t = a(t) x_0 + s(t) eps``.

The deterministic DDIM step from ``t`` to ``t'`` with a data prediction ``x0`` is, for every process,

.. math:: x_{t'} = a_{t'} \\hat x_0 + \\frac{s_{t'}}{s_t} (x_t - a_t \\hat x_0)

(DPM-Solver++ of order 1: :func:`diffjax.samplers.dpm_solver` with ``order=1``). Solving one such step for the
``x0`` that lands where two teacher steps ``t -> t_mid -> t'`` land gives the student's target (the paper's
``x~ = (z'' - (sigma''/sigma) z_t) / (alpha'' - (sigma''/sigma) alpha)``, with ``alpha, sigma`` -> ``a, s``).

Networks enter as plain callables ``x0_fn(x, t) -> x0`` (``x``: ``(batch, *dims)``, ``t``: ``(batch,)``); no flax or
optax here: a training step elsewhere wraps :func:`pd_loss`.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from diffjax.core._checks import check_batched, check_floating, check_int, check_t_eps
from diffjax.core.parameterizations import score_from_x0
from diffjax.core.process import bcast, check_process
from diffjax.samplers._dpm_solver import dpm_solver
from diffjax.samplers._grids import check_time_grid, process_default

__all__ = ["ddim_x0_step", "pd_target", "pd_loss", "truncated_snr_weight", "pd_sample"]


def _batch_t(t, x):
    return jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],))


def _check_callable(name, fn, what="a callable fn(x, t)"):
    if not callable(fn):
        raise ValueError(f"{name} must be {what}, got {fn!r}")


def ddim_x0_step(x, t, t_next, x0, process):
    """One deterministic DDIM step from ``t`` to ``t_next`` with the data prediction ``x0`` (any process).

    .. math:: x_{t'} = a_{t'} \\hat x_0 + \\frac{s_{t'}}{s_t} (x_t - a_t \\hat x_0)

    Args:
        x: ``(batch, *dims)`` state at ``t``.
        t, t_next: times, ``()`` or ``(batch,)``.
        x0: ``(batch, *dims)`` data prediction at ``(x, t)``.
        process: any forward process.

    Returns:
        ``(batch, *dims)`` state at ``t_next``.
    """
    a, s = process.marginal(_batch_t(t, x))
    a_n, s_n = process.marginal(_batch_t(t_next, x))
    a, s, a_n, s_n = (bcast(c, x).astype(x.dtype) for c in (a, s, a_n, s_n))
    return a_n * x0 + (s_n / s) * (x - a * x0)


def pd_target(x_t, t, t_mid, t_next, teacher_x0_fn: Callable, process):
    """The student's data target of progressive distillation: the ``x0`` whose single DDIM step ``t -> t_next``
    lands exactly where two teacher DDIM steps ``t -> t_mid -> t_next`` land (Salimans & Ho 2022, Algorithm 2).

    .. math:: \\tilde x = \\frac{z'' - (s_{t''}/s_t)\\, z_t}{a_{t''} - (s_{t''}/s_t)\\, a_t}

    Args:
        x_t: ``(batch, *dims)`` noised data at ``t``.
        t, t_mid, t_next: times with ``t > t_mid > t_next``, ``()`` or ``(batch,)``.
        teacher_x0_fn: ``teacher_x0_fn(x, t) -> x0`` (``t`` of shape ``(batch,)``), the teacher's data prediction
            (from a score: ``lambda x, t: dj.x0_from_score(score_fn(x, t), x, t, process)``).
        process: any forward process (``a > 0`` at ``t``; the denominator ``a'' - (s''/s) a`` is ``> 0`` whenever
            the log-SNR increases from ``t`` to ``t_next``).

    Returns:
        ``(batch, *dims)`` target; it is constant in the student, so a loss takes it under ``stop_gradient``.
    """
    _check_callable("teacher_x0_fn", teacher_x0_fn, "a callable teacher_x0_fn(x, t) -> x0")
    check_process(process, name="process", where="pd_target")
    tb, tm, tn = (_batch_t(u, x_t) for u in (t, t_mid, t_next))
    z_mid = ddim_x0_step(x_t, tb, tm, teacher_x0_fn(x_t, tb), process)
    z_next = ddim_x0_step(z_mid, tm, tn, teacher_x0_fn(z_mid, tm), process)
    a, s = process.marginal(tb)
    a_n, s_n = process.marginal(tn)
    a, s, a_n, s_n = (bcast(c, x_t).astype(x_t.dtype) for c in (a, s, a_n, s_n))
    ratio = s_n / s
    return (z_next - ratio * x_t) / (a_n - ratio * a)


def truncated_snr_weight(process, t):
    """Salimans & Ho's "truncated SNR" weighting of the x0 error, ``max(SNR, 1)`` with ``SNR = a^2 / s^2``; for
    VP paths (``a^2 + s^2 = 1``) the x0 loss weighted so equals the v-prediction loss up to the ``SNR < 1`` side.

    .. math:: w(t) = \\max\\big(a_t^2 / s_t^2,\\ 1\\big)
    """
    return jnp.maximum(jnp.exp(process.log_snr(t)), 1.0)


def _student_grid(process, num_student_steps, t_eps, time_grid):
    """The teacher's ``2 N``-step grid (float32, decreasing); the student's grid is its even points."""
    return jnp.asarray(check_time_grid(time_grid, process, 2 * num_student_steps, t_eps), jnp.float32)


def pd_loss(key, x0, student_fn: Callable, teacher_x0_fn: Callable, process, *, num_student_steps: int,
            t_eps: float | None = None, time_grid=process_default, weighting: Callable = truncated_snr_weight):
    """Progressive-distillation loss (Salimans & Ho 2022, Algorithm 2), averaged over the batch.

    The times lie on the teacher's ``2 N``-step grid ``time_grid(process, 2 N, t_eps)`` (``N =
    num_student_steps``); each example draws a student step ``i`` uniformly in ``0..N-1`` and uses ``t = t_{2i}``,
    ``t_mid = t_{2i+1}``, ``t_next = t_{2i+2}`` (for the uniform, log-SNR, Karras and quadratic grids the even
    points are the same grid with ``N`` steps, so the distilled student samples with :func:`pd_sample` and ``N``
    steps). ``z = a_t x0 + s_t eps``; the student's data prediction regresses the stop-gradient target of
    :func:`pd_target` with weight ``w(t)`` (default :func:`truncated_snr_weight`, the paper's choice).

    .. math:: \\mathcal L = \\mathbb E_{i, \\epsilon}\\, w(t)\\, \\| \\hat x_\\eta(z_t, t) - \\tilde x \\|^2

    Key usage: ``key_i, key_z = jax.random.split(key)``; ``i = jax.random.randint(key_i, (batch,), 0, N)``,
    ``eps = jax.random.normal(key_z, x0.shape, x0.dtype)``.

    Args:
        key: PRNG key.
        x0: ``(batch, *dims)`` data.
        student_fn: ``student_fn(x, t) -> x0`` (the student's data prediction; ``t`` of shape ``(batch,)``).
        teacher_x0_fn: ``teacher_x0_fn(x, t) -> x0``, the teacher's data prediction (``2 N``-step sampler).
        process: any forward process.
        num_student_steps: ``N >= 1``, the student's number of DDIM steps.
        t_eps: last time of the grid (default ``process.t_eps``).
        time_grid: grid function ``time_grid(process, n, t_eps)`` from :mod:`diffjax.samplers` (default
            :func:`~diffjax.samplers.process_default`: uniform in t, the paper's; EDM's rho-grid on EDM's process).
        weighting: ``w(process, t) -> (batch,)`` (default :func:`truncated_snr_weight`).

    Returns:
        Scalar loss (mean over the batch of ``w`` times the mean squared error over the non-batch dims).
    """
    check_process(process, name="process", where="pd_loss")
    check_batched("x0", x0, min_ndim=2)
    check_floating("x0", x0)
    _check_callable("student_fn", student_fn, "a callable student_fn(x, t) -> x0")
    _check_callable("teacher_x0_fn", teacher_x0_fn, "a callable teacher_x0_fn(x, t) -> x0")
    _check_callable("weighting", weighting, "a callable weighting(process, t) -> (batch,)")
    n = check_int("num_student_steps", num_student_steps, minimum=1)
    t_eps = check_t_eps(process.t_eps if t_eps is None else t_eps, process.T)
    grid = _student_grid(process, n, t_eps, time_grid)
    key_i, key_z = jax.random.split(key)
    i = jax.random.randint(key_i, (x0.shape[0],), 0, n)
    t, t_mid, t_next = grid[2 * i], grid[2 * i + 1], grid[2 * i + 2]
    eps = jax.random.normal(key_z, x0.shape, x0.dtype)
    z = process.perturb(x0, t, eps).astype(x0.dtype)
    target = jax.lax.stop_gradient(pd_target(z, t, t_mid, t_next, teacher_x0_fn, process))
    pred = student_fn(z, t)
    if pred.shape != x0.shape:
        raise ValueError(f"student_fn must return an array shaped like x (batch, *dims) = {x0.shape}, got {pred.shape}")
    err = jnp.mean((pred - target) ** 2, axis=tuple(range(1, x0.ndim)))
    return jnp.mean(weighting(process, t) * err)


def pd_sample(key, x_T, student_fn: Callable, process, *, num_steps: int, t_eps: float | None = None,
              time_grid=process_default):
    """Sample a distilled student with ``num_steps`` deterministic DDIM steps on ``time_grid`` (what the student
    was distilled for: ``num_steps = num_student_steps`` of :func:`pd_loss`, the same ``time_grid`` and ``t_eps``).

    .. math:: x_{t_{k+1}} = a_{t_{k+1}} \\hat x_0 + \\frac{s_{t_{k+1}}}{s_{t_k}} (x_{t_k} - a_{t_k} \\hat x_0)

    It is :func:`diffjax.samplers.dpm_solver` of order 1 (DDIM on any process) with the score of ``student_fn``'s
    data prediction; ``key`` is unused (deterministic), kept for the samplers' signature.

    Args:
        key: PRNG key (unused).
        x_T: ``(batch, *dims)`` prior sample at ``process.T``.
        student_fn: ``student_fn(x, t) -> x0``.
        process: any forward process.
        num_steps: number of DDIM steps (network evaluations).
        t_eps: last time (default ``process.t_eps``).
        time_grid: grid function (default :func:`~diffjax.samplers.process_default`).

    Returns:
        ``(batch, *dims)`` samples at ``t_eps``.
    """
    _check_callable("student_fn", student_fn, "a callable student_fn(x, t) -> x0")
    check_process(process, name="process", where="pd_sample")

    def score_fn(x, t):
        return score_from_x0(student_fn(x, t), x, t, process)

    return dpm_solver(key, x_T, score_fn, process, num_steps=num_steps, t_eps=t_eps, order=1,
                      method="multistep", time_grid=time_grid)
