"""Shared validation and time grids of the samplers (everything here runs before tracing)."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from diffjax.core._checks import check_batched, check_floating, check_int, check_t_eps
from diffjax.core.sde import SubVPSDE, VESDE, VPSDE

SDE_TYPES = (VPSDE, SubVPSDE, VESDE)


def default_t_eps(sde) -> float:
    """score-SDE's sampling ``eps``: 1e-5 for VE, 1e-3 for VP and sub-VP."""
    return 1e-5 if isinstance(sde, VESDE) else 1e-3


def check_sde(sde, allowed=SDE_TYPES, *, sampler: str = "this sampler"):
    if not isinstance(sde, allowed):
        names = tuple(c.__name__ for c in allowed)
        raise ValueError(f"sde must be one of {names} for {sampler}, got {type(sde).__name__} ({sde!r})")


def check_common(x_T, score_fn, sde, num_steps, t_eps, *, default_steps, allowed=SDE_TYPES, sampler: str):
    """Validate the shared arguments; returns ``(num_steps, t_eps)`` with defaults resolved.

    ``x_T`` must be a floating-point ``(batch, *dims)`` array; ``num_steps`` / ``t_eps`` may be Python or NumPy
    numbers or concrete 0-d arrays (a traced value raises: they fix the loop length and the grid).
    """
    check_sde(sde, allowed, sampler=sampler)
    check_batched("x_T", x_T, min_ndim=2)
    check_floating("x_T", x_T)
    if not callable(score_fn):
        raise ValueError(f"score_fn must be a callable score_fn(x, t), got {score_fn!r}")
    num_steps = check_int("num_steps", default_steps if num_steps is None else num_steps, minimum=1)
    t_eps = check_t_eps(default_t_eps(sde) if t_eps is None else t_eps, sde.T)
    return num_steps, t_eps


def with_steps(sde, n: int):
    """The same SDE with its discretization ``N`` set to ``n`` (the SDEs are frozen dataclasses)."""
    return sde if sde.N == n else dataclasses.replace(sde, N=n)


def floor_time(score_fn, t_eps: float):
    """``score_fn`` that is never evaluated below ``t_eps`` (discrete grids end at t = 0)."""

    def floored(x, t):
        return score_fn(x, jnp.maximum(t, t_eps))

    return floored


def time_grid(sde, num_steps: int, t_eps: float) -> jax.Array:
    """``num_steps + 1`` times from ``T`` down to ``t_eps``, uniform in t."""
    return jnp.linspace(sde.T, t_eps, num_steps + 1, dtype=jnp.float32)


def batch_time(t, x):
    return jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],))
