"""DPM-Solver++ (Lu et al. 2022, arXiv 2211.01095) on the process protocol: one implementation for every process.

Every process is a Gaussian path ``x_t = a(t) x_0 + s(t) eps``; in the half log-SNR ``l = log(a/s)``
(``process.log_snr(t) / 2``) its probability-flow ODE has the exact solution

.. math:: x_t = \\frac{s_t}{s_u} x_u + s_t \\int_{l_u}^{l_t} e^{l} D(x_l, l)\\, dl

with the data prediction ``D(x, t) = (x + s^2 score(x, t)) / a``. DPM-Solver++ Taylor-expands ``D`` in ``l``
(multistep: from past evaluations; singlestep: from evaluations inside the step), so the same steps serve VP,
sub-VP, VE, cosine VP, EDM and rectified flow through ``process.marginal`` and ``process.log_snr`` alone.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from diffjax.core._checks import check_choice, check_int
from diffjax.core.process import bcast
from diffjax.samplers._common import check_bool, check_common, deprecated_sde_keyword
from diffjax.samplers._driver import sample_steps
from diffjax.samplers._grids import check_time_grid, uniform_log_snr_grid
from diffjax.samplers._kernels import data_prediction

__all__ = ["dpm_solver"]

METHODS = ("multistep", "singlestep")
ORDERS = (1, 2, 3)
LOWER_ORDER_FINAL_BELOW = 15  # diffusers' lower_order_final: lower orders at the end when num_steps < 15


def _coeffs(process, t):
    """``(a, s, l)`` at time ``t`` (a scalar), ``l = log(a/s)`` the half log-SNR."""
    a, s = process.marginal(t)
    return a, s, 0.5 * process.log_snr(t)


def multistep_orders(order: int, num_steps: int, lower_order_final: bool) -> tuple:
    """The order of each multistep step: warm-up ``min(order, i + 1)``; with ``lower_order_final`` and fewer than 15
    steps (diffusers' rule) the last step is first order and the one before it at most second order."""
    orders = [min(order, i + 1) for i in range(num_steps)]
    if lower_order_final and num_steps < LOWER_ORDER_FINAL_BELOW:
        orders[-1] = 1
        if num_steps >= 2:
            orders[-2] = min(orders[-2], 2)
    return tuple(orders)


def singlestep_orders(order: int, nfe: int) -> tuple:
    """The paper's adaptive-order split of ``nfe`` evaluations into singlestep steps (DPM-Solver-fast, Lu et al.
    2022a, sec. 3.4): order 3: ``[3] * (K // 3 - 1) + [2, 1]`` if ``3 | K``, else ``[3] * (K // 3) + [K % 3]``;
    order 2: ``[2] * (K // 2) (+ [1] if K is odd)``; order 1: ``[1] * K``. The orders sum to ``nfe``."""
    k, r = divmod(nfe, order)
    if order == 3 and r == 0:
        return (3,) * (k - 1) + (2, 1)
    return (order,) * k + ((r,) if r else ())


# --------------------------------------------------------------------------------------------------- multistep


def _multistep_update(o, x, d0, d1, d2, l_1, l_2, c, c_next, key, sde_variant):
    """One DPM-Solver++ multistep step of order ``o`` (a Python int) from ``c = (a, s, l)`` to ``c_next``.

    ``d0, d1, d2``: the data predictions at the current and the two previous times (half log-SNR ``l, l_1, l_2``).
    """
    a, s, l0 = c
    a_n, s_n, l_n = c_next
    h = l_n - l0
    if sde_variant:  # DPM-Solver++(2M) SDE: the ODE's e^{-h} becomes e^{-2h}, plus fresh noise
        decay = jnp.exp(-h)
        phi = -jnp.expm1(-2.0 * h)
        lin = (s_n / s) * decay
        noise = s_n * jnp.sqrt(phi) * jax.random.normal(key, x.shape, x.dtype)
    else:
        phi = -jnp.expm1(-h)  # 1 - e^{-h}
        lin = s_n / s
        noise = 0.0
    out = bcast(lin, x) * x + bcast(a_n * phi, x) * d0 + noise
    if o == 1:
        return out
    r0 = (l0 - l_1) / h
    dd1_0 = (d0 - d1) / bcast(r0, x)  # ~ h dD/dl
    if o == 2 or sde_variant:
        return out + bcast(0.5 * a_n * phi, x) * dd1_0
    r1 = (l_1 - l_2) / h
    dd1_1 = (d1 - d2) / bcast(r1, x)
    dd1 = dd1_0 + bcast(r0 / (r0 + r1), x) * (dd1_0 - dd1_1)  # ~ h dD/dl
    dd2 = (dd1_0 - dd1_1) / bcast(r0 + r1, x)  # ~ h^2/2 d2D/dl2
    phi1 = 1.0 + jnp.expm1(-h) / h  # (h - 1 + e^{-h}) / h
    phi2 = 1.0 - 2.0 * (jnp.expm1(-h) + h) / h**2  # (h^2/2 - h + 1 - e^{-h}) / (h^2/2)
    return out + bcast(a_n * phi1, x) * dd1 + bcast(a_n * phi2, x) * dd2


@dataclasses.dataclass(frozen=True)
class MultistepStep:
    """One DPM-Solver++ multistep step of order ``orders[i]``; the state carries the last two data predictions and
    half log-SNRs, and the step count ``i``. ``denoise``: ``D(x, t_eps)`` after the last step."""
    score_fn: Callable
    process: Any
    orders: tuple
    sde_variant: bool
    denoise: bool
    t_eps: float

    def init(self, x_T, t):
        zero = jnp.zeros((), t.dtype)
        return x_T, jnp.zeros_like(x_T), jnp.zeros_like(x_T), zero, zero, jnp.zeros((), jnp.int32)

    def step(self, key, state, t, t_next):
        x, d1, d2, l_1, l_2, i = state
        c, c_next = _coeffs(self.process, t), _coeffs(self.process, t_next)
        d0 = data_prediction(x, t, self.score_fn, self.process)
        k = key if self.sde_variant else None  # deterministic samplers ignore key
        max_order = max(self.orders)
        branches = [lambda op, o=o_: _multistep_update(o, *op, self.sde_variant) for o_ in range(1, max_order + 1)]
        operands = (x, d0, d1, d2, l_1, l_2, c, c_next, k)
        x_next = jax.lax.switch(jnp.asarray(self.orders, jnp.int32)[i] - 1, branches, operands) if max_order > 1 \
            else branches[0](operands)
        return x_next, d0, d1, c[2], l_1, i + 1

    def output(self, key, state):
        return data_prediction(state[0], self.t_eps, self.score_fn, self.process) if self.denoise else state[0]

    def nfe(self, num_steps: int) -> int:
        return num_steps + self.denoise


# -------------------------------------------------------------------------------------------------- singlestep


def _singlestep_update(o, x, t, t_next, D, process):
    """One DPM-Solver++ singlestep step of order ``o`` (``o`` evaluations; intermediate points at ``r = 1/2`` for
    order 2 and ``1/3, 2/3`` for order 3 of the step in half log-SNR)."""
    a, s, l0 = _coeffs(process, t)
    a_n, s_n, l_n = _coeffs(process, t_next)
    h = l_n - l0
    d0 = D(x, t)

    def to(r):  # the time at fraction r of the step in l, with its coefficients and the first-order move there
        t_r = process.t_from_log_snr(2.0 * (l0 + r * h))
        a_r, s_r, _ = _coeffs(process, t_r)
        return t_r, a_r, bcast(s_r / s, x) * x - bcast(a_r * jnp.expm1(-r * h), x) * d0

    out = bcast(s_n / s, x) * x - bcast(a_n * jnp.expm1(-h), x) * d0
    if o == 1:
        return out
    if o == 2:
        r1 = 0.5
        t1, _, u1 = to(r1)
        return out - bcast(a_n * jnp.expm1(-h) / (2.0 * r1), x) * (D(u1, t1) - d0)
    r1, r2 = 1.0 / 3.0, 2.0 / 3.0
    t1, _, u1 = to(r1)
    t2, a2, u2 = to(r2)
    u2 = u2 + bcast(a2 * (jnp.expm1(-r2 * h) / (r2 * h) + 1.0) * (r2 / r1), x) * (D(u1, t1) - d0)
    return out + bcast(a_n * (jnp.expm1(-h) / h + 1.0) / r2, x) * (D(u2, t2) - d0)


@dataclasses.dataclass(frozen=True)
class SinglestepStep:
    """One DPM-Solver++ singlestep step of order ``orders[i]`` (``orders[i]`` evaluations); the state is ``(x, i)``.
    ``denoise``: ``D(x, t_eps)`` after the last step."""
    score_fn: Callable
    process: Any
    orders: tuple
    denoise: bool
    t_eps: float

    def init(self, x_T, t):
        return x_T, jnp.zeros((), jnp.int32)

    def step(self, key, state, t, t_next):
        x, i = state
        D = lambda y, t: data_prediction(y, t, self.score_fn, self.process)  # noqa: E731
        max_order = max(self.orders)
        branches = [lambda op, o=o_: _singlestep_update(o, *op, D, self.process) for o_ in range(1, max_order + 1)]
        if max_order == 1:
            return branches[0]((x, t, t_next)), i + 1
        return jax.lax.switch(jnp.asarray(self.orders, jnp.int32)[i] - 1, branches, (x, t, t_next)), i + 1

    def output(self, key, state):
        return data_prediction(state[0], self.t_eps, self.score_fn, self.process) if self.denoise else state[0]

    def nfe(self, num_steps: int) -> int:
        return sum(self.orders) + self.denoise


@deprecated_sde_keyword
def dpm_solver(key, x_T, score_fn, process, *, num_steps: int = 20, t_eps=None, order: int = 2,
               method: str = "multistep", sde_variant: bool = False, lower_order_final: bool = True,
               time_grid=uniform_log_snr_grid, denoise: bool = False, return_nfe: bool = False):
    """DPM-Solver++ (Lu et al. 2022): the probability-flow ODE solved exactly in its linear part, with a Taylor
    expansion of the data prediction ``D = (x + s^2 score) / a`` in the half log-SNR ``l = log(a/s)``.

    .. math:: x_{t'} = \\frac{s_{t'}}{s_t} x_t + a_{t'} (1 - e^{-h}) D(x_t, t) + \\ldots,\\quad h = l_{t'} - l_t

    Order 1 is DDIM (``eta = 0``) on the same grid. ``method="multistep"``: DPM-Solver++(2M) / (3M), one evaluation
    per step, reusing the last ``order - 1`` evaluations (first steps of lower order while the history fills). 3M
    weights its second difference by the Taylor coefficient (local error O(h^4)); diffusers' and the reference
    code's 3M use half of it (local error O(h^3)), so 3M differs from theirs; 2M equals diffusers'
    ``DPMSolverMultistepScheduler`` (experiments/parity/dpm_solver_vs_diffusers.py).
    ``method="singlestep"``: DPM-Solver++(2S) / (3S), steps of ``o`` evaluations (intermediate points at ``1/2`` or
    ``1/3, 2/3`` of the step in ``l``). ``sde_variant=True``: DPM-Solver++(2M) SDE (diffusers' "sde-dpmsolver++"),
    the same expansion on the reverse SDE: ``e^{-h} -> e^{-2h}`` and noise ``s_{t'} sqrt(1 - e^{-2h}) z``.

    Args:
        key: PRNG key (used by ``sde_variant`` only).
        x_T: (batch, *dims) prior sample, e.g. ``process.prior_sample(key, shape)``.
        score_fn: ``score_fn(x, t)``.
        process: any forward process (VP, sub-VP, VE, cosine VP, rectified flow, EDM, ``gaussian_path``).
        num_steps: the number of network evaluations ``K`` (default 20), ``>= order``. Multistep: ``K`` steps on
            ``time_grid``. Singlestep: the paper's adaptive-order split of ``K`` evaluations (DPM-Solver-fast):
            order 3 takes ``K // 3 + 1`` steps of orders ``3, ..., 3, 2, 1`` if ``3 | K``, else ``K // 3`` steps of
            order 3 and one of order ``K % 3``; order 2 takes ``K // 2`` steps of order 2 (and one of order 1 if
            ``K`` is odd); the steps lie on ``time_grid`` with that many intervals.
        t_eps: last time (default ``process.t_eps``).
        order: 1, 2 or 3 (at most 2 with ``sde_variant``).
        method: "multistep" or "singlestep".
        sde_variant: DPM-Solver++(2M) SDE (multistep only); stochastic, uses ``key``.
        lower_order_final: multistep with ``num_steps < 15``: the last step is first order and the one before it
            at most second order (diffusers' rule; it steadies few-step sampling). Singlestep ignores it (its split
            already ends in lower orders).
        time_grid: ``time_grid(process, n, t_eps) -> (n + 1,)`` decreasing times (:mod:`diffjax.samplers._grids`);
            default uniform in log-SNR, the paper's choice.
        denoise: finish with ``D(x, t_eps)`` (one more evaluation).
        return_nfe: also return the number of score evaluations (an int32 array).

    Returns:
        (batch, *dims) samples at ``t_eps`` (or ``(samples, nfe)``). Score evaluations: ``num_steps`` (+1 if
        ``denoise``), for every method and order.
    """
    c = check_common("dpm_solver", x_T, score_fn, process, num_steps, t_eps, default_steps=20, denoise=denoise,
                     return_nfe=return_nfe)
    num_steps = c.num_steps
    order = check_int("order", order)
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS} for dpm_solver, got {order!r}")
    check_choice("method", method, METHODS)
    sde_variant = check_bool("sde_variant", sde_variant)
    lower_order_final = check_bool("lower_order_final", lower_order_final)
    if num_steps < order:
        raise ValueError(f"num_steps must be >= order={order} for dpm_solver, got {num_steps!r}")
    if sde_variant and (method != "multistep" or order > 2):
        raise ValueError(f"sde_variant=True is DPM-Solver++(2M) SDE: it needs method='multistep' and order 1 or 2, "
                         f"got method={method!r}, order={order!r}")
    if method == "multistep":
        step = MultistepStep(score_fn, process, multistep_orders(order, num_steps, lower_order_final), sde_variant,
                             c.denoise, c.t_eps)
    else:
        step = SinglestepStep(score_fn, process, singlestep_orders(order, num_steps), c.denoise, c.t_eps)
    times = check_time_grid(time_grid, process, len(step.orders), c.t_eps)
    return sample_steps(key, x_T, times, step, return_nfe=c.return_nfe)
