"""Score functions that also carry a learned variance (improved DDPM's ``v``, Nichol & Dhariwal 2021).

A learned-variance network predicts, besides the score (through eps), the interpolation ``v`` of its reverse-step
log-variance between ``log beta_i`` and ``log beta_tilde_i`` (eq. 15). The samplers' contract stays
``score_fn(x, t) -> score``; a :class:`LearnedVarianceScore` is such a ``score_fn`` that also offers
``score_and_v(x, t) -> (score, v)`` from one network evaluation. The grid samplers
(:func:`diffjax.samplers.ancestral`, :func:`diffjax.samplers.ddim`) ask for it with ``variance="learned"`` (their
default when it is there); x0-range transforms (:func:`diffjax.clip_denoised`, :func:`diffjax.dynamic_threshold`)
keep it.
"""
from __future__ import annotations

from typing import Callable

__all__ = ["LearnedVarianceScore", "has_learned_variance"]


class LearnedVarianceScore:
    """``score_fn(x, t)`` of a learned-variance model, built from ``fn(x, t) -> (score, v)``.

    Calling it returns the score only (so it drives every sampler); :meth:`score_and_v` returns both from the same
    evaluation. Extra positional arguments are passed through (``fn(x, t, y)`` for a conditional model).
    Hashes by identity, like a function, so it can be a static argument of ``jax.jit``.

    .. math:: \\log\\Sigma_\\theta = \\tfrac{v + 1}{2} \\log\\beta_i + \\tfrac{1 - v}{2} \\log\\tilde\\beta_i
    """

    __slots__ = ("fn", "__weakref__")

    def __init__(self, fn: Callable):
        if not callable(fn):
            raise ValueError(f"fn must be a callable fn(x, t) -> (score, v), got {fn!r}")
        self.fn = fn

    def __call__(self, x, t, *args):
        return self.fn(x, t, *args)[0]

    def score_and_v(self, x, t, *args):
        """``(score, v)``, both shaped like ``x``."""
        return self.fn(x, t, *args)

    def __repr__(self):
        return f"LearnedVarianceScore({self.fn!r})"


def has_learned_variance(score_fn) -> bool:
    """Whether ``score_fn`` offers ``score_and_v(x, t)`` (a :class:`LearnedVarianceScore` or the like)."""
    return callable(getattr(score_fn, "score_and_v", None))
