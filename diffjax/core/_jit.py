"""The library's one way to compile its pure functions: ``jax.jit`` with static arguments, or inlined.

Samplers, the likelihood and the conditional samplers take a ``score_fn``, a process and options that fix the
computation, and arrays. :func:`jit_static` compiles such a function once per value of its static arguments
(``score_fn`` by identity, processes and options by value) and per array shape, so eager calls over many batches
do not recompile. It calls the function directly instead (one more trace in the caller's computation) when

* it runs under an outer transformation (``jax.jit``, ``vmap``, ``grad``, ``shard_map``, ...): the outer trace
  inlines it anyway, and a cached inner jit would keep a ``score_fn`` that closes over the outer tracers alive
  (one cache entry per outer trace);
* a static argument is unhashable (e.g. a ``score_fn`` object with ``__eq__`` but no ``__hash__``): it cannot key
  a cache. The result is the same, only compiled anew each call.
"""
from __future__ import annotations

import functools
import inspect

import jax

try:  # whether no transformation is being traced (also false inside shard_map / pmap axis environments)
    from jax._src.core import trace_state_clean as _top_level
except ImportError:  # pragma: no cover - a JAX without it: only tracer arguments mark an outer trace
    def _top_level() -> bool:
        return True

__all__ = ["jit_static", "under_trace", "hashable"]


def under_trace(*args) -> bool:
    """Whether a transformation is being traced: an argument (any pytree leaf) is a tracer, or one is active."""
    return not _top_level() or any(isinstance(a, jax.core.Tracer) for a in jax.tree_util.tree_leaves(args))


def hashable(obj) -> bool:
    """Whether ``obj`` (e.g. a tuple of static arguments) can key a cache."""
    try:
        hash(obj)
    except TypeError:
        return False
    return True


def jit_static(*static_argnames: str):
    """Decorator: ``jax.jit(fn, static_argnames=static_argnames)``, inlined under a trace or for unhashable statics.

    Static arguments may be passed by keyword or by position. The jitted function is ``wrapper.jitted``.

    Args:
      *static_argnames: names of ``fn``'s static parameters (``score_fn``, ``sde``, options).

    Returns:
      A decorator; the decorated function has ``fn``'s signature and results.
    """

    def decorate(fn):
        jitted = jax.jit(fn, static_argnames=static_argnames)
        signature = inspect.signature(fn)
        missing = [n for n in static_argnames if n not in signature.parameters]
        if missing:
            raise ValueError(f"static_argnames must name parameters of {fn.__name__}{signature}, got {missing}")
        static = frozenset(static_argnames)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            bound = signature.bind(*args, **kwargs).arguments
            statics = tuple(bound[n] for n in static_argnames if n in bound)
            dynamic = [v for n, v in bound.items() if n not in static]
            if under_trace(dynamic) or not hashable(statics):
                return fn(*args, **kwargs)
            return jitted(*args, **kwargs)

        wrapper.jitted = jitted
        return wrapper

    return decorate
