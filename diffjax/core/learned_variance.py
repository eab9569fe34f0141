"""Score functions that also carry a learned variance (improved DDPM's ``v``, Nichol & Dhariwal 2021).

A learned-variance network predicts, besides the score (through eps), the interpolation ``v`` of its reverse-step
log-variance between ``log beta_i`` and ``log beta_tilde_i`` (eq. 15). The samplers' contract stays
``score_fn(x, t) -> score``; a :class:`LearnedVarianceScore` is such a ``score_fn`` that also offers
``score_and_v(x, t) -> (score, v)`` from one network evaluation. The grid samplers
(:func:`diffjax.samplers.ancestral`, :func:`diffjax.samplers.ddim`) ask for it with ``variance="learned"`` (their
default when it is there); x0-range transforms (:func:`diffjax.clip_denoised`, :func:`diffjax.dynamic_threshold`)
and the guidance transforms (:func:`diffjax.classifier_guidance`, :func:`diffjax.classifier_free_guidance`,
:func:`diffjax.with_label`) keep it. A transform of the score is written once for both kinds of ``score_fn``: it reads
``(score, v)`` with :func:`score_and_v` and returns :func:`as_score_fn` of its result, ``v`` passed through.
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


def score_and_v(score_fn, x, t, *args):
    """``(score, v)`` of any ``score_fn`` from one evaluation; ``v`` is ``None`` without a learned variance."""
    if has_learned_variance(score_fn):
        return score_fn.score_and_v(x, t, *args)
    return score_fn(x, t, *args), None


def as_score_fn(fn: Callable, *, like) -> Callable:
    """The score function of ``fn(x, t, ...) -> (score, v)``, of the kind of ``like``: a
    :class:`LearnedVarianceScore` (``v`` kept) when ``like`` has a learned variance, else ``fn``'s score alone."""
    if has_learned_variance(like):
        return LearnedVarianceScore(fn)

    def score(*args):
        return fn(*args)[0]

    return score
