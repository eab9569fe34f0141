"""Argument validation that raises before any tracing. Every message names the argument, its value and what is allowed."""
from __future__ import annotations

import numbers
from typing import Any, Iterable


def check_int(name: str, value: Any, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def check_positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return float(value)


def check_nonnegative(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


def check_choice(name: str, value: Any, allowed: Iterable[str]) -> str:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def check_t_eps(t_eps: Any, T: float) -> float:
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
