"""Argument validation that raises before any tracing. Every message names the argument, its value and what is allowed.

Numbers may be Python or NumPy scalars, or concrete 0-d JAX / NumPy arrays (converted with ``.item()``); a traced
value (e.g. a ``jit`` argument) raises: hyperparameters are static. Real-valued checks reject NaN and +-inf.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Iterable

import jax
import jax.numpy as jnp


def _scalar(name: str, value: Any) -> Any:
    """A concrete 0-d array as its Python scalar; a traced value raises ``ValueError``; anything else unchanged."""
    if isinstance(value, jax.core.Tracer):
        raise ValueError(f"{name} must be a static Python number, got a traced value {value!r}; pass a Python "
                         f"int / float (under jax.jit: a static argument, or a value closed over, not an argument)")
    if not isinstance(value, (bool, numbers.Number)) and getattr(value, "shape", None) == () \
            and hasattr(value, "item"):
        return value.item()
    return value


def check_int(name: str, value: Any, *, minimum: int | None = None) -> int:
    value = _scalar(name, value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def _check_real(name: str, value: Any, what: str) -> float:
    value = _scalar(name, value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number {what}, got {value!r}")
    return float(value)


def check_finite(name: str, value: Any) -> float:
    """A finite real number (not NaN, not +-inf)."""
    return _check_real(name, value, "(not NaN or inf)")


def check_positive(name: str, value: Any) -> float:
    value = _check_real(name, value, "> 0")
    if not value > 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return value


def check_nonnegative(name: str, value: Any) -> float:
    value = _check_real(name, value, ">= 0")
    if not value >= 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


def check_choice(name: str, value: Any, allowed: Iterable[str]) -> str:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def check_t_eps(t_eps: Any, T: float) -> float:
    t_eps = _scalar("t_eps", t_eps)
    if isinstance(t_eps, bool) or not isinstance(t_eps, numbers.Real) or not 0.0 < t_eps < T:
        raise ValueError(f"t_eps must lie in the open interval (0, T={T}), got {t_eps!r}")
    return float(t_eps)


def check_batched(name: str, x: Any, *, min_ndim: int = 2) -> None:
    ndim = getattr(x, "ndim", None)
    if ndim is None or ndim < min_ndim:
        shape = getattr(x, "shape", None)
        raise ValueError(f"{name} must be an array shaped (batch, *dims) with ndim >= {min_ndim}, got shape {shape!r}")


def check_same_shape(name_a: str, a: Any, name_b: str, b: Any) -> None:
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def check_floating(name: str, x: Any) -> None:
    """``x`` has a floating-point dtype (samplers and losses add Gaussian noise to it)."""
    dtype = getattr(x, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"{name} must be a floating-point array (e.g. float32), got dtype {dtype}; "
                         f"cast it first, e.g. x.astype(jnp.float32)")
