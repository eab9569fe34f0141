"""Exact likelihoods through the probability-flow ODE (score-SDE Section 4.3 and Appendix D.2).

The probability-flow ODE ``dx/dt = v(x, t)`` (score-SDE eq. 13) moves the data marginal ``p_{t_eps}`` to ``p_T``
deterministically, so the instantaneous change of variables (Chen et al. 2018, "Neural ODEs", Theorem 1) gives

.. math:: \\log p_{\\epsilon}(x(\\epsilon)) = \\log p_T(x(T)) + \\int_{\\epsilon}^{T} \\nabla\\cdot v(x(t), t)\\, dt

with ``p_T`` replaced by the SDE's prior. The state ``(x, int div v)`` is integrated jointly by an adaptive
explicit Runge-Kutta solver of diffrax (Dopri5 by default, as score-SDE's RK45) entirely on device, so
:func:`log_likelihood` runs inside ``jax.jit`` (compiling once per shape) with ``score_fn`` closed over.

The divergence is either exact (``trace="exact"``: one vector-Jacobian product per input dimension, vmapped over the
standard basis -- cost ``D`` score evaluations per ODE step and memory ``D x batch x D``, so only for small ``D``,
e.g. 2-D toy data) or Hutchinson's unbiased estimate ``eps^T (dv/dx) eps`` (one VJP, with one noise draw ``eps``
per example held fixed for the whole solve, as in FFJORD and score-SDE).
"""
from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp

from diffjax.core._checks import check_batched, check_choice, check_int, check_positive, check_t_eps
from diffjax.core._deprecation import renamed_keywords
from diffjax.core._jit import jit_static
from diffjax.core._solvers import check_solver
from diffjax.core.process import batch_time, check_process
from diffjax.core.sde import probability_flow_ode

__all__ = ["log_likelihood", "bits_per_dim"]

_TRACES = ("hutchinson", "exact")
_NOISES = ("rademacher", "gaussian")


def _divergence_fn(vector_field, trace: str):
    """``f(x, t, eps) -> (v(x, t), div_x v(x, t))``, the divergence per example, shape ``(batch,)``."""

    # Reverse mode (vector-Jacobian products): eps^T J eps is the same scalar either way; user networks whose
    # layers define only a custom VJP support reverse mode alone.
    def hutchinson(x, t, eps):
        v, vjp_fn = jax.vjp(lambda y: vector_field(y, t), x)
        (eps_j,) = vjp_fn(eps)
        return v, jnp.sum((eps_j * eps).reshape(x.shape[0], -1), axis=-1)

    def exact(x, t, eps):
        del eps
        batch, d = x.shape[0], math.prod(x.shape[1:])
        basis = jnp.eye(d, dtype=x.dtype).reshape((d, 1) + x.shape[1:])
        v, vjp_fn = jax.vjp(lambda y: vector_field(y, t), x)

        def row(e):  # the same basis vector for every example: the Jacobian is block diagonal over the batch
            return vjp_fn(jnp.broadcast_to(e, x.shape))[0]

        rows = jax.vmap(row)(basis).reshape(d, batch, d)  # rows[i, b] = e_i^T J_b
        return v, jnp.einsum("ibi->b", rows)

    return exact if trace == "exact" else hutchinson


def _check_common(x, score_fn, process, *, trace, rtol, atol, t_eps, noise, max_steps, solver):
    check_batched("x", x, min_ndim=2)
    if not callable(score_fn):
        raise ValueError(f"score_fn must be a callable score_fn(x, t), got {score_fn!r}")
    check_process(process, name="process", where="log_likelihood")
    check_choice("trace", trace, _TRACES)
    check_choice("noise", noise, _NOISES)
    check_positive("rtol", rtol)
    check_positive("atol", atol)
    check_t_eps(t_eps, process.T)
    check_int("max_steps", max_steps, minimum=1)
    return check_solver(solver)


@renamed_keywords(sde="process")
def log_likelihood(key, x, score_fn, process, *, trace: str = "hutchinson", rtol: float = 1e-5, atol: float = 1e-5,
                   t_eps: float = 1e-5, noise: str = "rademacher", solver=None, max_steps: int = 4096):
    """Log-density of ``x`` under the model, through the probability-flow ODE (score-SDE Appendix D.2).

    .. math:: \\log p_{\\epsilon}(x) = \\log p_T(z_T) + \\int_{\\epsilon}^{T} \\nabla_x\\cdot
              \\big[f(x_t, t) - \\tfrac12 g(t)^2 s_\\theta(x_t, t)\\big]\\, dt

    Integrates from ``t_eps`` to ``T`` with an adaptive solver (``rtol``, ``atol``: score-SDE's 1e-5) on device.
    A solve that fails (e.g. more than ``max_steps`` steps) gives ``nan`` for the whole batch, since the batch
    is one ODE state; the step size is controlled jointly over the batch, as in score-SDE.

    Args:
      key: PRNG key for Hutchinson's noise (ignored, may be ``None``, with ``trace="exact"``).
      x: data, ``(batch, *dims)``, in the model's data space (e.g. scaled to [-1, 1]).
      score_fn: ``score_fn(x, t) -> (batch, *dims)``.
      process: forward process (``vp_sde``, ``subvp_sde``, ``ve_sde``, ``rectified_flow``, ``edm_sde``, ...) that
        defines the ODE and the prior.
      trace: ``"hutchinson"`` (unbiased, one vector-Jacobian product, reverse mode, per vector-field evaluation)
        or ``"exact"`` (``D`` VJPs per evaluation, vmapped; small ``D``).
      rtol, atol: tolerances of the adaptive step-size controller.
      t_eps: start time in ``(0, T)``; the result is the log-density of the perturbed data ``p_{t_eps}``.
      noise: Hutchinson's probe, ``"rademacher"`` (score-SDE's default, lower variance) or ``"gaussian"``.
      solver: a diffrax explicit Runge-Kutta solver object with an error estimate (``diffrax.Tsit5()``, ...);
        ``None`` means ``diffrax.Dopri5()``. The same convention as :func:`diffjax.samplers.ode_adaptive`.
      max_steps: most steps diffrax may take.

    Returns:
      ``(logp, nfe)``: ``logp`` in nats, shape ``(batch,)``; ``nfe`` the number of evaluations of the ODE's
      vector field (each one score evaluation, or ``D`` of them for the exact trace), an int32 scalar.

    Eager calls are compiled once per ``(score_fn, process, options)`` and input shape (``score_fn`` is hashed by
    identity: build it once, outside a loop over batches). Under an outer ``jax.jit`` everything is inlined, so
    a ``score_fn`` rebuilt from traced parameters inside the jitted function also compiles once.
    """
    solver, (nfe_fixed, nfe_per_step) = _check_common(
        x, score_fn, process, trace=trace, rtol=rtol, atol=atol, t_eps=t_eps, noise=noise, max_steps=max_steps,
        solver=solver)
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x must be a floating-point array, got dtype {x.dtype}")
    if trace == "hutchinson" and key is None:
        raise ValueError("key must be a PRNG key for trace='hutchinson', got None")
    static = (score_fn, process, trace, float(rtol), float(atol), float(t_eps), noise, solver, int(max_steps),
              nfe_fixed, nfe_per_step)
    return _solve(key, x, *static)


# Compiled once per (score_fn, process, options) and input shape, so eager calls over a data set do not recompile;
# inlined under an outer transformation or for an unhashable score_fn (diffjax.core._jit).
@jit_static("score_fn", "process", "trace", "rtol", "atol", "t_eps", "noise", "solver", "max_steps", "nfe_fixed",
            "nfe_per_step")
def _solve(key, x, score_fn, process, trace, rtol, atol, t_eps, noise, solver, max_steps, nfe_fixed, nfe_per_step):
    import diffrax

    if trace == "exact":
        eps = jnp.zeros((), x.dtype)
    elif noise == "gaussian":
        eps = jax.random.normal(key, x.shape, x.dtype)
    else:
        eps = jax.random.rademacher(key, x.shape, x.dtype)

    def batch_score(y, t):
        return score_fn(y, batch_time(t, y))

    div_fn = _divergence_fn(probability_flow_ode(process, batch_score), trace)

    def ode(t, state, args):
        return div_fn(state[0], t, args)

    state0 = (x, jnp.zeros((x.shape[0],), x.dtype))
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(ode), solver, t0=t_eps, t1=float(process.T), dt0=0.01 * (float(process.T) - t_eps), y0=state0,
        args=eps, stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol), max_steps=max_steps,
        saveat=diffrax.SaveAt(t1=True), throw=False)
    z, integral = sol.ys[0][-1], sol.ys[1][-1]
    logp = process.prior_logp(z) + integral
    logp = jnp.where(sol.result == diffrax.RESULTS.successful, logp, jnp.nan)
    nfe = (nfe_fixed + nfe_per_step * jnp.asarray(sol.stats["num_steps"])).astype(jnp.int32)
    return logp, nfe


def _check_range(data_range):
    try:
        lo, hi = data_range
    except (TypeError, ValueError):
        raise ValueError(f"data_range must be a pair (low, high) with low < high, got {data_range!r}") from None
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in (lo, hi)) or not lo < hi:
        raise ValueError(f"data_range must be a pair (low, high) with low < high, got {data_range!r}")
    return float(lo), float(hi)


@renamed_keywords(sde="process")
def bits_per_dim(key, x, score_fn, process, *, data_range=(-1.0, 1.0), dequantize: bool = True, **likelihood_kwargs):
    """Bits per dimension of 8-bit data under the model, with uniform dequantization (score-SDE's ``bpd``).

    The pixels ``k in {0..255}`` are dequantized to ``u = (k + U) / 256``, ``U ~ U[0, 1)^D``, and mapped affinely
    to the model's space ``y = lo + (hi - lo) u``. With ``log p_u(u) = log p_y(y) + D log(hi - lo)`` and the
    dequantization bound ``log P(k) >= E_U[log p_u(u)] - D log 256`` (Theis et al. 2016):

    .. math:: \\mathrm{bpd} = -\\frac{\\log p_y(y) + D \\log(hi - lo)}{D \\ln 2} + 8

    For the default range [-1, 1] this is score-SDE's ``-log2 p_y(y) / D + 7``. One draw of ``U`` per example
    (average over calls for the expectation). With ``dequantize=False`` the bin centres ``u = (k + 1/2) / 256``
    are used (a point estimate, not a bound).

    Args:
      key: PRNG key (dequantization noise and Hutchinson's noise).
      x: 8-bit data ``(batch, *dims)``: an integer array with values in [0, 255], or a float array already in
        the model's range, ``lo + (hi - lo) k / 255`` (score-SDE's scaler of ``k / 255``), from which ``k`` is
        recovered by rounding.
      score_fn, process: as in :func:`log_likelihood`.
      data_range: ``(lo, hi)``, the model's data range.
      dequantize: add uniform noise (True) or use bin centres (False).
      **likelihood_kwargs: passed to :func:`log_likelihood` (``trace``, ``rtol``, ``atol``, ``t_eps``, ...).

    Returns:
      ``(bpd, nfe)``: bits per dimension, shape ``(batch,)``, and the ODE's vector-field evaluations.
    """
    lo, hi = _check_range(data_range)
    check_batched("x", x, min_ndim=2)
    if not isinstance(dequantize, bool):
        raise ValueError(f"dequantize must be True or False, got {dequantize!r}")
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.integer) or x.dtype == jnp.bool_:
        k = x.astype(jnp.float32)
    elif jnp.issubdtype(x.dtype, jnp.floating):
        k = jnp.round((x.astype(jnp.float32) - lo) / (hi - lo) * 255.0)
    else:
        raise ValueError(f"x must be an integer (uint8) or floating-point array, got dtype {x.dtype}")
    k = jnp.clip(k, 0.0, 255.0)
    key_u, key_ll = (None, key) if key is None else tuple(jax.random.split(key))
    if dequantize:
        if key_u is None:
            raise ValueError("key must be a PRNG key when dequantize=True, got None")
        u = (k + jax.random.uniform(key_u, k.shape, jnp.float32)) / 256.0
    else:
        u = (k + 0.5) / 256.0
    y = lo + (hi - lo) * u
    logp, nfe = log_likelihood(key_ll, y, score_fn, process, **likelihood_kwargs)
    d = math.prod(x.shape[1:])
    bpd = -(logp + d * math.log(hi - lo)) / (d * math.log(2.0)) + 8.0
    return bpd, nfe
