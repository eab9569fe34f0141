"""Conditional generation as transforms of a score function.

* :func:`classifier_guidance` adds ``scale * grad_x log p_t(y | x)`` of a noise-conditional classifier
  (Dhariwal & Nichol 2021; score-SDE Section 5 / Appendix I.1): ``grad log p_t(x | y) = grad log p_t(x) +
  grad log p_t(y | x)``, exact at ``scale = 1``.
* :func:`classifier_free_guidance` mixes a conditional and an unconditional (null-label) score
  (Ho & Salimans 2022): ``(1 + w) s(x, t, y) - w s(x, t, null)``.
* :func:`with_label` binds ``y`` so that a conditional ``score_fn(x, t, y)`` drives any sampler as
  ``score_fn(x, t)``.

Score-SDE's inpainting and colorization, which sample with the replacement method rather than transform a score,
are samplers: :func:`diffjax.samplers.inpaint` and :func:`diffjax.samplers.colorize` (also ``dj.inpaint``,
``dj.colorize``).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from diffjax.core._checks import check_nonnegative

__all__ = ["classifier_guidance", "classifier_free_guidance", "with_label"]

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


def _check_callable(name, fn, signature):
    if not callable(fn):
        raise ValueError(f"{name} must be a callable {signature}, got {fn!r}")


def classifier_guidance(score_fn: ScoreFn, classifier_logp_fn, *, scale: float = 1.0):
    """Classifier-guided score ``score_fn(x, t, y)``.

    .. math:: s(x, t, y) = s_\\theta(x, t) + \\lambda \\nabla_x \\log \\mathrm{softmax}(c_\\phi(x, t))_y

    Args:
      score_fn: unconditional ``score_fn(x, t)``.
      classifier_logp_fn: noise-conditional classifier ``(x, t) -> logits (batch, classes)`` (unnormalized
        log-probabilities; they are log-softmaxed). Examples must not interact (no batch statistics), since the
        gradient is taken of the batch sum.
      scale: guidance scale ``lambda >= 0``; 1 gives the exact conditional score for an exact classifier.

    Returns:
      ``guided(x, t, y)`` with integer labels ``y`` of shape ``()`` or ``(batch,)``.
    """
    _check_callable("score_fn", score_fn, "score_fn(x, t)")
    _check_callable("classifier_logp_fn", classifier_logp_fn, "classifier_logp_fn(x, t) -> logits")
    scale = check_nonnegative("scale", scale)

    def guided(x, t, y):
        labels = jnp.broadcast_to(jnp.asarray(y, jnp.int32), (x.shape[0],))

        def log_p_y(x):
            logp = jax.nn.log_softmax(classifier_logp_fn(x, t), axis=-1)
            return jnp.sum(jnp.take_along_axis(logp, labels[:, None], axis=-1))

        return score_fn(x, t) + scale * jax.grad(log_p_y)(x).astype(x.dtype)

    return guided


def classifier_free_guidance(cond_score_fn, *, guidance_scale: float, null_label):
    """Classifier-free guided score ``score_fn(x, t, y)`` (Ho & Salimans 2022, eq. 6 in score form).

    .. math:: s(x, t, y) = (1 + w)\\, s_\\theta(x, t, y) - w\\, s_\\theta(x, t, \\varnothing)

    Args:
      cond_score_fn: ``cond_score_fn(x, t, y)``, trained with label dropout to ``null_label``.
      guidance_scale: ``w >= 0``; 0 is the plain conditional score.
      null_label: the label that means "unconditional" (e.g. ``num_classes``), broadcast like ``y``.

    Returns:
      ``guided(x, t, y)``.
    """
    _check_callable("cond_score_fn", cond_score_fn, "cond_score_fn(x, t, y)")
    w = check_nonnegative("guidance_scale", guidance_scale)
    if null_label is None:
        raise ValueError("null_label must be a label (e.g. the number of classes), got None")

    def guided(x, t, y):
        y = jnp.asarray(y)
        null = jnp.broadcast_to(jnp.asarray(null_label, y.dtype), y.shape)
        return (1.0 + w) * cond_score_fn(x, t, y) - w * cond_score_fn(x, t, null)

    return guided


def with_label(score_fn, y):
    """Bind the condition: ``score_fn(x, t, y) -> score_fn(x, t)`` for the samplers (``y``: ``()`` or ``(batch,)``)."""
    _check_callable("score_fn", score_fn, "score_fn(x, t, y)")

    def bound(x, t):
        return score_fn(x, t, y)

    return bound
