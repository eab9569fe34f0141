"""The one sampler loop: a step object scanned over a time grid.

A sampler is two things: *where* it steps (a grid of ``n + 1`` times, checked and computed before tracing) and
*what* one step does (a :class:`SamplerStep`). :func:`run_steps` is the loop every fixed-step sampler shares -- one
``lax.scan`` over the ``n`` intervals ``(t_k, t_{k+1})`` with the key ``fold_in(key, k)`` -- and :func:`sample_steps`
is that loop compiled once per step object, grid and shape (:func:`diffjax.core._jit.jit_static`), in the solve dtype
(:func:`~diffjax.samplers._common.in_solve_dtype`). The public samplers build a step and a grid and call it; a new
sampler is a new step object (the pattern of optax's ``chain`` and hackable_diffusion's ``DiffusionSampler``).

Step objects are frozen dataclasses: hashable by value (``score_fn`` by identity), so they are the jit's static
argument, and a second call with an equal step compiles nothing.
"""
from __future__ import annotations

from typing import Any, Optional, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.core._jit import jit_static
from diffjax.samplers._common import in_solve_dtype

__all__ = ["SamplerStep", "run_steps", "sample_steps"]

State = Any


class SamplerStep(Protocol):
    """What one step of a sampler does; :func:`run_steps` scans it over a time grid.

    ``t`` runs over the grid's times from the top down: continuous times for the samplers that integrate in t, grid
    indices for the samplers that walk a discrete chain (ancestral, DDIM, annealed Langevin's noise levels).
    """

    def init(self, x_T: jax.Array, t: jax.Array) -> State:
        """The state at the grid's first time ``t`` from the prior sample ``x_T`` (batch, *dims)."""

    def step(self, key: jax.Array, state: State, t: jax.Array, t_next: jax.Array) -> State:
        """One step from ``t`` to ``t_next`` (the step's own key; history of a multistep method lives in ``state``)."""

    def output(self, key: jax.Array, state: State) -> jax.Array:
        """The sample from the last state (e.g. its noise-free mean, or one more denoising step); ``key`` is the
        key of step ``n``, for a final stochastic move."""

    def nfe(self, num_steps: int) -> Optional[int]:
        """Score evaluations of ``num_steps`` steps and the output (None: unknown, e.g. a user's kernel)."""


def run_steps(key, x_T, times, step: SamplerStep, *, key_ids=None):
    """Scan ``step`` over the ``n`` intervals of ``times`` (``(n + 1,)``, from the top down) starting at ``x_T``.

    .. math:: s_0 = \\mathrm{init}(x_T, t_0),\\quad s_{k+1} = \\mathrm{step}(\\kappa_k, s_k, t_k, t_{k+1}),\\quad
        x = \\mathrm{output}(\\kappa_n, s_n),\\quad \\kappa_k = \\mathrm{fold\\_in}(key, \\mathrm{id}_k)

    Args:
        key: PRNG key (None for a deterministic step: its steps get None).
        x_T: (batch, *dims) start of the chain (in the dtype of the solve).
        times: ``(n + 1,)`` times or grid indices; ``n = 0`` gives ``output(init(x_T))``.
        step: a :class:`SamplerStep`.
        key_ids: ``(n,)`` integers folded into ``key`` for each step (default ``0 .. n - 1``); ``n`` for the output.

    Returns:
        ``step.output(...)``: (batch, *dims).
    """
    n = times.shape[0] - 1
    ids = jnp.arange(n) if key_ids is None else key_ids

    def fold(i):  # a deterministic sampler may be given key=None
        return None if key is None else jax.random.fold_in(key, i)

    def body(state, inputs):
        i, t, t_next = inputs
        return step.step(fold(i), state, t, t_next), None

    state, _ = jax.lax.scan(body, step.init(x_T, times[0]), (ids, times[:-1], times[1:]))
    return step.output(fold(n), state)


@jit_static("step", "times", "key_ids")
@in_solve_dtype
def _sample(key, x_T, *, step, times, key_ids):
    # The grid is a compile-time constant, as the static arguments it was computed from (a grid, a process, a step
    # count): XLA folds what depends on the times alone.
    times = np.asarray(times)
    times = jnp.asarray(times, x_T.dtype if np.issubdtype(times.dtype, np.floating) else jnp.int32)
    return run_steps(key, x_T, times, step, key_ids=None if key_ids is None else jnp.asarray(key_ids, jnp.int32))


def sample_steps(key, x_T, times, step: SamplerStep, *, key_ids=None, return_nfe: bool = False):
    """:func:`run_steps`, jitted per ``step`` and grid (inlined under an outer trace), in the samplers' dtype rule:
    ``x_T`` and floating ``times`` are cast to ``promote_types(x_T.dtype, float32)`` and the result back to
    ``x_T.dtype``.

    Args:
        key, x_T, step, key_ids: as in :func:`run_steps` (``key_ids`` concrete).
        times: ``(n + 1,)`` concrete times or grid indices (NumPy, a list, or a concrete JAX array), e.g. a grid of
            :mod:`diffjax.samplers._grids`; they key the compile cache with ``step``.
        return_nfe: also return ``step.nfe(n)``.

    Returns:
        (batch, *dims) samples, or ``(samples, nfe)`` with ``return_nfe`` (an int32 0-d array).
    """
    times = tuple(np.asarray(times).tolist())
    key_ids = None if key_ids is None else tuple(np.asarray(key_ids).tolist())
    x = _sample(key, x_T, step=step, times=times, key_ids=key_ids)
    if not return_nfe:
        return x
    return x, jnp.asarray(step.nfe(len(times) - 1), jnp.int32)
