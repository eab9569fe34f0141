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

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from diffjax.core._checks import check_choice, check_int
from diffjax.core.process import bcast
from diffjax.samplers._common import check_bool, check_common, deprecated_sde_keyword
from diffjax.samplers._dpm_solver import _coeffs
from diffjax.samplers._driver import sample_steps
from diffjax.samplers._grids import check_time_grid, uniform_log_snr_grid
from diffjax.samplers._kernels import data_prediction

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


@dataclasses.dataclass(frozen=True)
class UniPCStep:
    """One UniPC step: one evaluation ``D(x_i, t_i)`` at UniP's prediction ``x_i``, UniC's correction of ``x_i``
    with it (after a UniP step of order ``orders[i - 1]``; none at step 0), then UniP of order ``orders[i]``.

    The state: ``x`` (UniP's prediction at ``t``), ``x_prev`` (the corrected sample at ``t_prev`` it started from),
    the data predictions ``d_k`` and half log-SNRs ``l_k`` ``k`` steps back, ``t_prev`` and the step count ``i``.
    """
    score_fn: Callable
    process: Any
    orders: tuple
    variant: str
    denoise: bool
    t_eps: float

    def init(self, x_T, t):
        zero, zeros = jnp.zeros((), t.dtype), jnp.zeros_like(x_T)
        return x_T, x_T, zeros, zeros, zeros, zero, zero, zero, t, jnp.zeros((), jnp.int32)  # t_prev: a placeholder

    def step(self, key, state, t, t_next):
        x, x_prev, d1, d2, d3, l_1, l_2, l_3, t_prev, i = state
        max_order = max(self.orders)
        predictors = [lambda op, o=o: _step(o, *op, None, self.variant) for o in range(1, max_order + 1)]
        # corrector branch 0: no correction (step 0); branch o: UniC after a UniP-o step
        correctors = [lambda op: op[0]] + [
            lambda op, o=o: _step(o, *op[1:], self.variant) for o in range(1, max_order + 1)]
        o = jnp.asarray(self.orders, jnp.int32)[i]
        o_c = jnp.asarray((0,) + self.orders[:-1], jnp.int32)[i]
        c_prev, c, c_next = (_coeffs(self.process, s) for s in (t_prev, t, t_next))
        d0 = data_prediction(x, t, self.score_fn, self.process)  # one evaluation per step, for UniC and UniP
        x = jax.lax.switch(o_c, correctors, (x, x_prev, d1, (d2, d3), (l_2, l_3), c_prev, c, d0))
        x_next = jax.lax.switch(o - 1, predictors, (x, d0, (d1, d2), (l_1, l_2), c, c_next))
        return x_next, x, d0, d1, d2, c[2], l_1, l_2, t, i + 1

    def output(self, key, state):
        return data_prediction(state[0], self.t_eps, self.score_fn, self.process) if self.denoise else state[0]

    def nfe(self, num_steps: int) -> int:
        return num_steps + self.denoise


@deprecated_sde_keyword
def unipc(key, x_T, score_fn, process, *, num_steps: int = 20, t_eps=None, order: int = 2, variant: str = "bh2",
          lower_order_final: bool = True, time_grid=uniform_log_snr_grid, denoise: bool = False,
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
        x_T: (batch, *dims) prior sample, e.g. ``process.prior_sample(key, shape)``.
        score_fn: ``score_fn(x, t)``.
        process: any forward process (VP, sub-VP, VE, cosine VP, rectified flow, EDM, ``gaussian_path``).
        num_steps: steps on ``time_grid`` (default 20), ``>= 1``, one score evaluation each.
        t_eps: last time (default ``process.t_eps``).
        order: the predictor's order, 1, 2 or 3 (UniPC-p: the corrected steps are of order ``p + 1``); the first
            steps take orders ``1, 2, ..`` while the history fills.
        variant: ``B(h)``: "bh2" (``e^{-h} - 1``, default; diffusers' default, the paper's choice for guided
            sampling) or "bh1" (``-h``; the paper's choice for unconditional sampling with very few steps).
        lower_order_final: step ``i`` of ``n`` is of order at most ``n - i`` (the last first order), as the UniPC
            reference code and diffusers at every ``num_steps`` (:func:`diffjax.samplers.dpm_solver` applies its
            rule below 15 steps only).
        time_grid: ``time_grid(process, n, t_eps) -> (n + 1,)`` decreasing times (:mod:`diffjax.samplers._grids`);
            default uniform in log-SNR.
        denoise: finish with ``D(x, t_eps)`` (one more evaluation).
        return_nfe: also return the number of score evaluations (an int32 array).

    Returns:
        (batch, *dims) samples at ``t_eps``, or ``(samples, nfe)`` if ``return_nfe``. Score evaluations:
        ``num_steps`` (+1 if ``denoise``): the corrector reuses the next step's evaluation.
    """
    c = check_common("unipc", x_T, score_fn, process, num_steps, t_eps, default_steps=20, denoise=denoise,
                     return_nfe=return_nfe)
    order = check_int("order", order)
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS} for unipc, got {order!r}")
    check_choice("variant", variant, VARIANTS)
    lower_order_final = check_bool("lower_order_final", lower_order_final)
    times = check_time_grid(time_grid, process, c.num_steps, c.t_eps)
    step = UniPCStep(score_fn, process, unipc_orders(order, c.num_steps, lower_order_final), variant, c.denoise,
                     c.t_eps)
    return sample_steps(key, x_T, times, step, return_nfe=c.return_nfe)
