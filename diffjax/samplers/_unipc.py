"""UniPC (Zhao et al. 2023, arXiv 2302.04867) on the process protocol: one implementation for every process.

As DPM-Solver++ (:mod:`diffjax.samplers._dpm_solver`), UniPC integrates the probability-flow ODE in the half
log-SNR ``l = log(a/s)`` with the data prediction ``D(x, t) = (x + s^2 score) / a``, exactly in its linear part:

.. math:: x_{t'} = \\frac{s_{t'}}{s_t} x_t - a_{t'} (e^{-h} - 1) D_0 - a_{t'} B(h) \\sum_k \\rho_k
    \\frac{D_k - D_0}{r_k}

(``h = l_{t'} - l_t``, ``r_k = (l_{t_k} - l_t) / h``). The predictor UniP takes the ``D_k`` at past times; the
corrector UniC redoes the step once the next evaluation ``D(x_{t'}, t')`` is known, with that evaluation as one
more point (``r = 1``), raising the order by one at no extra cost: the evaluation is the next step's. The weights
``rho`` solve ``R rho = b``, ``R_{ik} = r_k^{i-1}``, ``b_i = i! h phi_{i+1}(-h) / B(h)`` (``phi`` the
exponential-integrator functions), with ``B(h) = -h`` ("bh1") or ``e^{-h} - 1`` ("bh2").
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from diffjax.core._checks import check_choice, check_int
from diffjax.core._jit import jit_static as _jit
from diffjax.core.process import bcast
from diffjax.samplers._common import check_common, from_solve_dtype, time_dtype, to_solve_dtype
from diffjax.samplers._dpm_solver import _check_bool, _coeffs, _data_prediction
from diffjax.samplers._grids import check_time_grid, uniform_log_snr

__all__ = ["unipc"]

VARIANTS = ("bh1", "bh2")
ORDERS = (1, 2, 3)


def unipc_orders(order: int, num_steps: int, lower_order_final: bool) -> tuple:
    """The predictor order of each step: warm-up ``min(order, i + 1)``; with ``lower_order_final`` also at most
    ``num_steps - i`` (the last step first order, the one before at most second; the UniPC reference code's and
    diffusers' ``UniPCMultistepScheduler`` rule, at every ``num_steps``)."""
    return tuple(min(order, i + 1, num_steps - i) if lower_order_final else min(order, i + 1)
                 for i in range(num_steps))


def _phi(z, j: int):
    """``phi_j(z) = sum_m z^m / (m + j)!`` (``phi_1 = (e^z - 1) / z``): a series near 0, the recursion
    ``phi_{j+1} = (phi_j - 1/j!) / z`` elsewhere (it cancels catastrophically for small ``z`` in float32)."""
    small = jnp.abs(z) < 1.0
    zs = jnp.where(small, 1.0, z)
    rec = jnp.expm1(zs) / zs
    for i in range(1, j):
        rec = (rec - 1.0 / math.factorial(i)) / zs
    series = sum(z**m / float(math.factorial(m + j)) for m in range(12))
    return jnp.where(small, series, rec)


def _b(h, n: int, variant: str):
    """``B(h)`` and ``b_i = i! (-h) phi_{i+1}(-h) / B(h)``, ``i = 1 .. n`` (diffusers' ``h_phi_k`` recursion)."""
    hh = -h
    big_b = hh if variant == "bh1" else jnp.expm1(hh)
    return big_b, [math.factorial(i) * hh * _phi(hh, i + 1) / big_b for i in range(1, n + 1)]


def _weights(rks, bs):
    """``rho`` solving ``sum_k r_k^(i-1) rho_k = b_i``, ``i = 1 .. len(rks)``."""
    if len(rks) == 1:
        return [bs[0]]
    R = jnp.stack([jnp.stack([jnp.asarray(r) ** i for r in rks]) for i in range(len(rks))])
    rho = jnp.linalg.solve(R, jnp.stack(bs))
    return [rho[k] for k in range(len(rks))]


def _step(o, x, m0, older, l_older, c, c_next, model_next, variant):
    """One UniPC update from ``c = (a, s, l)`` to ``c_next`` with the data prediction ``m0`` at ``c``, the
    ``o - 1`` previous ones ``older`` at half log-SNRs ``l_older``, and (corrector) ``model_next`` at ``c_next``.

    Predictor UniP-``o`` (``model_next`` None): ``rho`` from the ``o - 1`` past points (``o = 2``: ``rho = 1/2``).
    Corrector UniC-``o`` (order ``o + 1``): the past points and the new one at ``r = 1`` (``o = 1``:
    ``rho = 1/2``), diffusers' and the reference code's simplifications included.
    """
    a, s, l0 = c
    a_n, s_n, l_n = c_next
    h = l_n - l0
    out = bcast(s_n / s, x) * x - bcast(a_n * jnp.expm1(-h), x) * m0
    rks = [(l_k - l0) / h for l_k in l_older[:o - 1]]
    diffs = [(d - m0) / bcast(r, x) for d, r in zip(older[:o - 1], rks)]
    if model_next is not None:
        rks, diffs = rks + [1.0], diffs + [model_next - m0]
    if not diffs:
        return out
    big_b, bs = _b(h, o, variant)
    if len(diffs) == 1 and (o == 2 or model_next is not None):  # UniP-2 and UniC-1: rho = 1/2
        rho = [0.5]
    else:
        rho = _weights(rks, bs[:len(rks)])
    return out - bcast(a_n * big_b, x) * sum(bcast(w, x) * d for w, d in zip(rho, diffs))


@_jit("score_fn", "sde", "num_steps", "t_eps", "orders", "variant", "time_grid", "denoise")
def _unipc(key, x_T, *, score_fn, sde, num_steps, t_eps, orders, variant, time_grid, denoise):
    del key
    x_in, x_T = x_T, to_solve_dtype(x_T)
    D = _data_prediction(score_fn, sde)
    times = time_grid(sde, num_steps, t_eps).astype(time_dtype(x_T))
    max_order = max(orders)
    predictors = [lambda op, o=o: _step(o, *op, None, variant) for o in range(1, max_order + 1)]
    # corrector branch 0: no correction (step 0); branch o: UniC after a UniP-o step
    correctors = [lambda op: op[0]] + [
        lambda op, o=o: _step(o, *op[1:], variant) for o in range(1, max_order + 1)]

    def body(carry, inputs):
        # x: UniP's prediction at t; x_prev: the (corrected) sample at t_prev it started from; d_k, l_k: the data
        # predictions and half log-SNRs k steps back
        x, x_prev, d1, d2, d3, l_1, l_2, l_3 = carry
        o, o_c, t_prev, t, t_next = inputs
        c_prev, c, c_next = _coeffs(sde, t_prev), _coeffs(sde, t), _coeffs(sde, t_next)
        d0 = D(x, t)  # one evaluation per step, shared by UniC (for the step into t) and UniP (out of t)
        x = jax.lax.switch(o_c, correctors, (x, x_prev, d1, (d2, d3), (l_2, l_3), c_prev, c, d0))
        x_next = jax.lax.switch(o - 1, predictors, (x, d0, (d1, d2), (l_1, l_2), c, c_next))
        return (x_next, x, d0, d1, d2, c[2], l_1, l_2), None

    zero, zeros = jnp.zeros((), times.dtype), jnp.zeros_like(x_T)
    init = (x_T, x_T, zeros, zeros, zeros, zero, zero, zero)
    xs = (jnp.asarray(orders, jnp.int32), jnp.asarray((0,) + orders[:-1], jnp.int32),
          jnp.concatenate([times[:1], times[:-2]]), times[:-1], times[1:])  # step 0's t_prev: a placeholder
    (x, *_), _ = jax.lax.scan(body, init, xs)
    return from_solve_dtype(D(x, t_eps) if denoise else x, x_in)


def unipc(key, x_T, score_fn, sde, *, num_steps: int = 20, t_eps=None, order: int = 2, variant: str = "bh2",
          lower_order_final: bool = True, time_grid=uniform_log_snr, denoise: bool = False,
          return_nfe: bool = False):
    """UniPC (Zhao et al. 2023), multistep, data prediction: the UniP predictor of order ``order`` and the UniC
    corrector after every step but the last, in the half log-SNR ``l = log(a/s)`` of any process.

    .. math:: x_{t'} = \\frac{s_{t'}}{s_t} x_t - a_{t'} (e^{-h} - 1) D_0 - a_{t'} B(h) \\sum_k \\rho_k
        \\frac{D_k - D_0}{r_k}

    Step ``i`` evaluates ``D(x_i, t_i)`` once at UniP's prediction ``x_i``; UniC then replaces ``x_i`` by the
    step from ``t_{i-1}`` redone with that evaluation (its order is one more than the predictor's), and UniP steps on
    from the corrected ``x_i``. The history keeps the evaluation at the uncorrected ``x_i`` (as the reference code
    and diffusers' ``UniPCMultistepScheduler``). UniP-2 with "bh2" is DPM-Solver++(2M); order 1 without the
    corrector is DDIM (``eta = 0``).

    Args:
        key: PRNG key (unused: the sampler is deterministic; kept for the common signature).
        x_T: (batch, *dims) prior sample, e.g. ``sde.prior_sample(key, shape)``.
        score_fn: ``score_fn(x, t)``.
        sde: any forward process (VP, sub-VP, VE, cosine VP, rectified flow, EDM, ``gaussian_path``).
        num_steps: steps on ``time_grid`` (default 20), ``>= 1``, one score evaluation each.
        t_eps: last time (default ``sde.t_eps``).
        order: the predictor's order, 1, 2 or 3 (UniPC-p: the corrected steps are of order ``p + 1``); the first
            steps take orders ``1, 2, ..`` while the history fills.
        variant: ``B(h)``: "bh2" (``e^{-h} - 1``, default; diffusers' default, the paper's choice for guided
            sampling) or "bh1" (``-h``; the paper's choice for unconditional sampling with very few steps).
        lower_order_final: step ``i`` of ``n`` is of order at most ``n - i`` (the last first order), as the UniPC
            reference code and diffusers at every ``num_steps`` (:func:`diffjax.samplers.dpm_solver` applies its
            rule below 15 steps only).
        time_grid: ``time_grid(sde, n, t_eps) -> (n + 1,)`` decreasing times (:mod:`diffjax.samplers._grids`);
            default uniform in log-SNR.
        denoise: finish with ``D(x, t_eps)`` (one more evaluation).
        return_nfe: also return the number of score evaluations (an int32 array).

    Returns:
        (batch, *dims) samples at ``t_eps``, or ``(samples, nfe)`` if ``return_nfe``. Score evaluations:
        ``num_steps`` (+1 if ``denoise``): the corrector reuses the next step's evaluation.
    """
    num_steps, t_eps = check_common(x_T, score_fn, sde, num_steps, t_eps, default_steps=20, sampler="unipc")
    order = check_int("order", order)
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS} for unipc, got {order!r}")
    check_choice("variant", variant, VARIANTS)
    lower_order_final = _check_bool("lower_order_final", lower_order_final)
    denoise, return_nfe = _check_bool("denoise", denoise), _check_bool("return_nfe", return_nfe)
    check_time_grid(time_grid, sde, num_steps, t_eps)
    x = _unipc(key, x_T, score_fn=score_fn, sde=sde, num_steps=num_steps, t_eps=t_eps,
               orders=unipc_orders(order, num_steps, lower_order_final), variant=variant, time_grid=time_grid,
               denoise=denoise)
    return (x, jnp.int32(num_steps + denoise)) if return_nfe else x
