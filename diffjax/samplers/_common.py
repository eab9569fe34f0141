"""Shared validation and helpers of the samplers (everything here runs before tracing; time grids: _grids.py).

The samplers' dtype rule (every public sampler, :mod:`diffjax.samplers` and :mod:`diffjax.samplers._conditional`):
the solve runs in :func:`solve_dtype` of the input, ``promote_types(x_T.dtype, float32)`` -- float32 for bfloat16,
float16 and float32 input, float64 for float64 input. ``x_T`` is cast to it on entry (:func:`to_solve_dtype`), the
loop carry, the times and every coefficient stay in it, ``score_fn`` is called with ``x`` in it, and the result is
cast back to ``x_T.dtype`` on exit (:func:`from_solve_dtype`). So half-precision input gives half-precision output
of a float32 solve: hundreds of small steps do not round away in an 8- or 11-bit mantissa, and the output equals the
float32 sampler run on ``x_T.astype(float32)``, rounded once.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from diffjax.core._checks import check_batched, check_floating, check_int, check_t_eps
from diffjax.core.chains import DDPMGrid, SMLDChain
from diffjax.core.process import batch_time, check_process, time_dtype  # noqa: F401 (re-exported)

# The discrete chains a process may offer (the types of its ``chain()``), and the processes that offer them, for
# messages.
CHAIN_PROCESSES = {DDPMGrid: "VPSDE", SMLDChain: "VESDE"}
# The public samplers that need a discrete chain (they pass ``chains=`` to check_common); every other one works on
# every process (:func:`any_process_samplers`).
CHAIN_SAMPLERS = ("ancestral", "annealed_langevin", "ddim")


def any_process_samplers() -> tuple:
    """The public samplers that work on every process, computed: the functions of :mod:`diffjax.samplers` with the
    ``return_nfe`` option every sampler has, less :data:`CHAIN_SAMPLERS`."""
    import inspect

    import diffjax.samplers as samplers  # at call time: the samplers import this module
    funcs = {n: getattr(samplers, n) for n in samplers.__all__}
    return tuple(n for n, f in funcs.items() if n not in CHAIN_SAMPLERS and inspect.isfunction(f)
                 and "return_nfe" in inspect.signature(f).parameters)


def solve_dtype(x) -> jnp.dtype:
    """The dtype a sampler solves in for input ``x``: ``promote_types(x.dtype, float32)`` (module docstring)."""
    return time_dtype(x)


def to_solve_dtype(x_T):
    """``x_T`` cast to :func:`solve_dtype` (a no-op for float32 / float64): a sampler's first line."""
    return x_T.astype(solve_dtype(x_T))


def from_solve_dtype(x, like):
    """``x`` cast back to the input's dtype ``like.dtype``: a sampler's last line."""
    return x.astype(like.dtype)


def default_t_eps(sde) -> float:
    """The process's own default smallest time ``sde.t_eps`` (score-SDE's: 1e-5 for VE, 1e-3 for VP and sub-VP)."""
    return sde.t_eps


def check_sde(sde, chains=None, *, sampler: str = "this sampler"):
    """``sde`` is a forward process; with ``chains`` (chain types), one whose ``chain()`` is one of them (a
    ``DDPMGrid`` for ancestral / DDIM, an ``SMLDChain`` for ancestral / annealed Langevin)."""
    check_process(sde, where=sampler)
    if chains is None:
        return
    with jax.ensure_compile_time_eval():  # concrete even inside a caller's jit
        chain = sde.chain()
    if not isinstance(chain, chains):
        names = tuple(CHAIN_PROCESSES[c] for c in chains)
        raise ValueError(f"sde must be one of {names} for {sampler}: it needs a discrete chain "
                         f"{tuple(c.__name__ for c in chains)} (sde.chain()), got {type(sde).__name__} ({sde!r}) "
                         f"whose chain() is {type(chain).__name__}; the samplers for every process are "
                         f"{', '.join(any_process_samplers())}")


def check_common(x_T, score_fn, sde, num_steps, t_eps, *, default_steps, chains=None, sampler: str):
    """Validate the shared arguments; returns ``(num_steps, t_eps)`` with defaults resolved.

    ``chains``: the discrete chains the sampler needs (None: any process); ``default_steps=None``: ``sde.N``.
    ``x_T`` must be a floating-point ``(batch, *dims)`` array; ``num_steps`` / ``t_eps`` may be Python or NumPy
    numbers or concrete 0-d arrays (a traced value raises: they fix the loop length and the grid).
    """
    check_sde(sde, chains, sampler=sampler)
    default_steps = sde.N if default_steps is None else default_steps
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

