"""The samplers' shared prologue (argument checks, everything before tracing), the dtype rule and the ``sde=`` shim.

The samplers' dtype rule (every public sampler, :mod:`diffjax.samplers` and :mod:`diffjax.samplers._conditional`):
the solve runs in :func:`solve_dtype` of the input, ``promote_types(x_T.dtype, float32)`` -- float32 for bfloat16,
float16 and float32 input, float64 for float64 input. :func:`in_solve_dtype`, the one place that applies it, casts
``x_T`` to it on entry; the loop carry, the times and every coefficient stay in it, ``score_fn`` is called with ``x``
in it, and the result is cast back to ``x_T.dtype`` on exit. So half-precision input gives half-precision output of a
float32 solve: hundreds of small steps do not round away in an 8- or 11-bit mantissa, and the output equals the
float32 sampler run on ``x_T.astype(float32)``, rounded once.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect

import jax
import jax.numpy as jnp

from diffjax.core._deprecation import renamed_keywords
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
    """The public samplers that work on every process, computed: the functions of :mod:`diffjax.samplers` with a
    ``process`` and the ``return_nfe`` option every sampler has, less :data:`CHAIN_SAMPLERS`."""
    import diffjax.samplers as samplers  # at call time: the samplers import this module
    funcs = {n: getattr(samplers, n) for n in samplers.__all__}
    return tuple(n for n, f in funcs.items() if n not in CHAIN_SAMPLERS and inspect.isfunction(f)
                 and {"process", "return_nfe"} <= set(inspect.signature(f).parameters))


def solve_dtype(x) -> jnp.dtype:
    """The dtype a sampler solves in for input ``x``: ``promote_types(x.dtype, float32)`` (module docstring)."""
    return time_dtype(x)


def in_solve_dtype(fn):
    """Decorator, the samplers' one dtype wrapper: ``fn(key, x, *arrays, **options)`` runs on ``x`` and the floating
    ``arrays`` cast to :func:`solve_dtype` of ``x``; its result (an array, or a tuple whose first item is one) is cast
    back to ``x.dtype``."""

    @functools.wraps(fn)
    def wrapper(key, x, *arrays, **options):
        dtype = solve_dtype(x)
        arrays = tuple(a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a for a in arrays)
        out = fn(key, x.astype(dtype), *arrays, **options)
        if isinstance(out, tuple):
            return (out[0].astype(x.dtype),) + tuple(out[1:])
        return out.astype(x.dtype)

    return wrapper


# ``sde=`` (the parameter's name before ``process``) still works, with a DeprecationWarning, for one release
deprecated_sde_keyword = renamed_keywords(sde="process")


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def check_sde(sde, chains=None, *, sampler: str = "this sampler"):
    """``sde`` is a forward process; with ``chains`` (chain types), one whose ``chain()`` is one of them (a
    ``DDPMGrid`` for ancestral / DDIM, an ``SMLDChain`` for ancestral / annealed Langevin)."""
    check_process(sde, name="process", where=sampler)
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


@dataclasses.dataclass(frozen=True)
class Common:
    """The shared arguments of a sampler call, checked and with their defaults resolved (:func:`check_common`)."""
    num_steps: int
    t_eps: float | None  # None for the grid samplers (ancestral, DDIM): the grid fixes every time
    denoise: bool
    return_nfe: bool


def check_common(sampler: str, x_T, score_fn, process, num_steps, t_eps, *, default_steps, chains=None,
                 grid_times: bool = False, denoise: bool = False, return_nfe: bool = False,
                 x_name: str = "x_T") -> Common:
    """The one argument-check prologue of the samplers: every check that all of them share, before tracing.

    Args:
        sampler: the sampler's name, for messages.
        x_T, score_fn, process, num_steps, t_eps, denoise, return_nfe: the sampler's arguments. ``x_T`` must be a
            floating-point ``(batch, *dims)`` array; ``num_steps`` / ``t_eps`` may be Python or NumPy numbers or
            concrete 0-d arrays (a traced value raises: they fix the loop length and the grid).
        default_steps: ``num_steps`` when None (None: ``process.N``).
        chains: the discrete chains the sampler needs (None: any process).
        grid_times: the sampler evaluates the model at its grid's own times: ``t_eps`` must be None.
        x_name: the name of ``x_T`` in messages (the conditional samplers' data).

    Returns:
        :class:`Common` with ``num_steps`` and ``t_eps`` (default ``process.t_eps``; None with ``grid_times``).
    """
    if grid_times and t_eps is not None:
        raise ValueError(f"t_eps must be None for {sampler}, got {t_eps!r}: a grid sampler evaluates the model at "
                         f"each grid step's own time (the time whose marginal is that step's alpha_bar / sigma), "
                         f"so there is no last time to choose; set num_steps instead")
    check_sde(process, chains, sampler=sampler)
    default_steps = process.N if default_steps is None else default_steps
    check_batched(x_name, x_T, min_ndim=2)
    check_floating(x_name, x_T)
    if not callable(score_fn):
        raise ValueError(f"score_fn must be a callable score_fn(x, t), got {score_fn!r}")
    num_steps = check_int("num_steps", default_steps if num_steps is None else num_steps, minimum=1)
    if not grid_times:
        t_eps = check_t_eps(process.t_eps if t_eps is None else t_eps, process.T)
    return Common(num_steps, t_eps, check_bool("denoise", denoise), check_bool("return_nfe", return_nfe))


def with_steps(sde, n: int):
    """The same SDE with its discretization ``N`` set to ``n`` (the SDEs are frozen dataclasses)."""
    return sde if sde.N == n else dataclasses.replace(sde, N=n)


def floor_time(score_fn, t_eps: float):
    """``score_fn`` that is never evaluated below ``t_eps`` (discrete grids end at t = 0)."""

    def floored(x, t):
        return score_fn(x, jnp.maximum(t, t_eps))

    return floored
