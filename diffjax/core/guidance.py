"""Conditional generation as transforms of a score function.

* :func:`classifier_guidance` adds ``scale * grad_x log p_t(y | x)`` of a noise-conditional classifier
  (Dhariwal & Nichol 2021; score-SDE Section 5 / Appendix I.1): ``grad log p_t(x | y) = grad log p_t(x) +
  grad log p_t(y | x)``, exact at ``scale = 1``.
* :func:`classifier_free_guidance` mixes a conditional and an unconditional (null-label) score
  (Ho & Salimans 2022): ``(1 + w) s(x, t, y) - w s(x, t, null)``.
* :func:`clip_guidance` adds ``scale * grad_x`` of a noise-aware CLIP's logit of a prompt, ``cos(f(x_t, t), g(c))
  / temperature`` (GLIDE, Nichol et al. 2022, Sec. 2.4).
* :func:`with_label` binds ``y`` so that a conditional ``score_fn(x, t, y)`` drives any sampler as
  ``score_fn(x, t)``.
* All four keep a learned variance: given a :class:`~diffjax.LearnedVarianceScore` they return one, whose ``v`` is
  the guided model's own (the conditional model's under classifier-free guidance, as in GLIDE).
* :func:`noisy_classifier_loss` trains the noise-conditional classifier of :func:`classifier_guidance` on any
  process: cross-entropy of ``logits_fn(x_t, t)`` on ``x_t = a(t) x_0 + s(t) eps``, ``t ~ U[t_eps, T)``.

Score-SDE's inpainting and colorization, which sample with the replacement method rather than transform a score,
are samplers: :func:`diffjax.samplers.inpaint` and :func:`diffjax.samplers.colorize` (also ``dj.inpaint``,
``dj.colorize``).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from diffjax.core._checks import check_nonnegative, check_positive
from diffjax.core.learned_variance import as_score_fn, score_and_v
from diffjax.core.weighting import uniform_time

__all__ = ["classifier_guidance", "clip_guidance", "classifier_free_guidance", "with_label",
           "noisy_classifier_loss", "noisy_classifier_accuracy"]

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


def _check_callable(name, fn, signature):
    if not callable(fn):
        raise ValueError(f"{name} must be a callable {signature}, got {fn!r}")


def classifier_guidance(score_fn: ScoreFn, classifier_logp_fn, *, scale: float = 1.0):
    """Classifier-guided score ``score_fn(x, t, y)``.

    .. math:: s(x, t, y) = s_\\theta(x, t) + \\lambda \\nabla_x \\log \\mathrm{softmax}(c_\\phi(x, t))_y

    Args:
      score_fn: unconditional ``score_fn(x, t)`` (a :class:`~diffjax.LearnedVarianceScore`: ``v`` is kept).
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

    def log_p_y(x, t, y):
        labels = jnp.broadcast_to(jnp.asarray(y, jnp.int32), (x.shape[0],))
        logp = jax.nn.log_softmax(classifier_logp_fn(x, t), axis=-1)
        return jnp.sum(jnp.take_along_axis(logp, labels[:, None], axis=-1))

    return _gradient_guided(score_fn, log_p_y, scale)


def _gradient_guided(score_fn, log_term, scale: float):
    """``guided(x, t, c) = score_fn(x, t) + scale * grad_x log_term(x, t, c)`` (``log_term``: a batch sum, so its
    gradient is each example's own); ``scale = 0`` is ``score_fn`` exactly, with no gradient taken."""

    def guided(x, t, c):
        s, v = score_and_v(score_fn, x, t)
        if not scale:
            return s, v
        return s + scale * jax.grad(log_term)(x, t, c).astype(x.dtype), v

    return as_score_fn(guided, like=score_fn)


def _unit(v):
    v = jnp.asarray(v, jnp.float32)
    return v / jnp.sqrt(jnp.sum(v * v, axis=-1, keepdims=True) + 1e-12)


def clip_guidance(score_fn: ScoreFn, image_embed_fn, *, scale: float = 1.0, logit_scale: float = 1.0):
    """CLIP-guided score ``score_fn(x, t, text_emb)`` (GLIDE, Nichol et al. 2022, Sec. 2.4): the gradient of a
    noise-aware CLIP's logit of the prompt takes the place of classifier guidance's ``grad log p_t(y | x)``
    (Dhariwal & Nichol 2021).

    .. math:: s(x, t, c) = s_\\theta(x, t) + \\lambda \\nabla_x \\tau \\cos(f(x, t), g(c))

    with ``f`` the image tower on ``x_t`` (fed the noise labels it was trained with) and ``g(c)`` the prompt's
    text embedding, fixed during sampling. ``tau = 1 / temperature`` (CLIP's learned logit scale) makes
    ``tau cos`` the logit CLIP's InfoNCE loss was trained on, so ``lambda`` is in the units of classifier guidance's
    scale whatever the temperature. The logit of the prompt alone, not its log-softmax against alternatives: a
    free-form prompt has no set of alternatives, and GLIDE guides with the similarity ``f(x_t) . g(c)`` itself;
    against a set of prompts ``C`` the log-softmax would add ``-grad log sum_{c' in C} exp(tau cos(f, g(c')))``.

    Args:
      score_fn: unconditional ``score_fn(x, t)`` (a :class:`~diffjax.LearnedVarianceScore`: ``v`` is kept).
      image_embed_fn: ``(x, t) -> (batch, d)`` image embeddings of ``x_t`` (normalised to unit length here).
        Examples must not interact (no batch statistics), since the gradient is taken of the batch sum.
      scale: guidance scale ``lambda >= 0``; 0 is ``score_fn`` exactly.
      logit_scale: ``tau > 0``, the multiplier of the cosine similarity.

    Returns:
      ``guided(x, t, text_emb)`` with text embeddings ``(d,)`` or ``(batch, d)`` (normalised here).
    """
    _check_callable("score_fn", score_fn, "score_fn(x, t)")
    _check_callable("image_embed_fn", image_embed_fn, "image_embed_fn(x, t) -> (batch, d)")
    scale = check_nonnegative("scale", scale)
    logit_scale = check_positive("logit_scale", logit_scale)

    def logit(x, t, text_emb):
        img = _unit(image_embed_fn(x, t))
        if jnp.ndim(text_emb) not in (1, 2) or jnp.shape(text_emb)[-1] != img.shape[-1]:
            raise ValueError(f"text_emb must be shaped (d,) or (batch, d) with d={img.shape[-1]} (the image "
                             f"embedding's width), got shape {jnp.shape(text_emb)}")
        return logit_scale * jnp.sum(img * jnp.broadcast_to(_unit(text_emb), img.shape))

    return _gradient_guided(score_fn, logit, scale)


def classifier_free_guidance(cond_score_fn, *, guidance_scale: float, null_label):
    """Classifier-free guided score ``score_fn(x, t, y)`` (Ho & Salimans 2022, eq. 6 in score form).

    .. math:: s(x, t, y) = (1 + w)\\, s_\\theta(x, t, y) - w\\, s_\\theta(x, t, \\varnothing)

    Args:
      cond_score_fn: ``cond_score_fn(x, t, y)``, trained with label dropout to ``null_label`` (a
        :class:`~diffjax.LearnedVarianceScore`: ``v`` of the conditional evaluation is kept).
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
        s, v = score_and_v(cond_score_fn, x, t, y)
        return (1.0 + w) * s - w * cond_score_fn(x, t, null), v

    return as_score_fn(guided, like=cond_score_fn)


def with_label(score_fn, y):
    """Bind the condition: ``score_fn(x, t, y) -> score_fn(x, t)`` for the samplers (``y``: ``()`` or ``(batch,)``;
    a :class:`~diffjax.LearnedVarianceScore` stays one)."""
    _check_callable("score_fn", score_fn, "score_fn(x, t, y)")

    def bound(x, t):
        return score_and_v(score_fn, x, t, y)

    return as_score_fn(bound, like=score_fn)


def _check_labels(x0, y):
    if jnp.ndim(y) != 1 or jnp.shape(y)[0] != x0.shape[0]:
        raise ValueError(f"y must be integer labels shaped (batch,) = ({x0.shape[0]},), got shape {jnp.shape(y)}")


def noisy_classifier_loss(key, x0, y, logits_fn, process, *, t_eps: float | None = None):
    """Cross-entropy of a noise-conditional classifier on perturbed data (the classifier of
    :func:`classifier_guidance`; Dhariwal & Nichol 2021), on any process: ``t ~ U[t_eps, T)``,
    ``x_t = process.perturb(x0, t, eps)``.

    .. math:: L = \\mathbb E_{t, \\epsilon}[-\\log \\mathrm{softmax}(c_\\phi(a_t x_0 + s_t \\epsilon, t))_y]

    Args:
      key: PRNG key (split once: time, noise).
      x0: data ``(batch, *dims)``.
      y: integer labels ``(batch,)``.
      logits_fn: ``logits_fn(x_t, t) -> (batch, classes)``, ``t`` of shape ``(batch,)``.
      process: the forward process (only ``marginal`` / ``perturb``, ``T`` and ``t_eps`` are used).
      t_eps: smallest time; ``None``: the process's ``t_eps``.

    Returns:
      ``(loss, aux)``: the mean cross-entropy (scalar) and ``{"accuracy": mean top-1 accuracy}``.
    """
    _check_callable("logits_fn", logits_fn, "logits_fn(x, t) -> logits")
    _check_labels(x0, y)
    k_t, k_eps = jax.random.split(key)
    t = uniform_time(k_t, x0.shape[0], process, t_eps=t_eps)
    x_t = process.perturb(x0, t, jax.random.normal(k_eps, x0.shape, x0.dtype))
    logits = logits_fn(x_t, t)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    labels = jnp.asarray(y, jnp.int32)
    loss = -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))
    return loss, {"accuracy": jnp.mean(jnp.argmax(logits, axis=-1) == labels)}


def noisy_classifier_accuracy(key, x0, y, logits_fn, process, t):
    """Top-1 accuracy of ``logits_fn`` on ``x_t = process.perturb(x0, t, eps)`` at the given times.

    .. math:: \\mathrm{acc}(t) = \\tfrac1B \\sum_i [\\arg\\max_k c_\\phi(a_t x_{0,i} + s_t \\epsilon_i, t)_k = y_i]

    Args:
      key: PRNG key of the noise.
      x0: data ``(batch, *dims)``.
      y: integer labels ``(batch,)``.
      logits_fn: ``logits_fn(x_t, t) -> (batch, classes)``.
      process: the forward process.
      t: times ``()`` or ``(batch,)``.

    Returns:
      ``(batch,)`` booleans: whether each example is classified correctly.
    """
    _check_callable("logits_fn", logits_fn, "logits_fn(x, t) -> logits")
    _check_labels(x0, y)
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x0.shape[0],))
    x_t = process.perturb(x0, t, jax.random.normal(key, x0.shape, x0.dtype))
    return jnp.argmax(logits_fn(x_t, t), axis=-1) == jnp.asarray(y, jnp.int32)
