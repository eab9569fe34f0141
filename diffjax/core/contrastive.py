"""Contrastive image-text learning: CLIP's symmetric InfoNCE loss and top-k retrieval (Radford et al. 2021)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.core._checks import check_int

__all__ = ["clip_loss", "retrieval_top_k"]


def _check_pair(image_emb, text_emb, positives):
    if image_emb.ndim != 2 or text_emb.ndim != 2 or image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(f"image_emb and text_emb must be shaped (n, d) and (m, d) with the same d, got "
                         f"{image_emb.shape} and {text_emb.shape}")
    if positives is not None and positives.shape != (image_emb.shape[0], text_emb.shape[0]):
        raise ValueError(f"positives must be shaped (n, m) = {(image_emb.shape[0], text_emb.shape[0])}, got "
                         f"{positives.shape}")


def _soft_cross_entropy(logits, targets):
    """Mean over rows of ``-sum_j q_ij log softmax(logits)_ij``, ``q`` the row-normalised ``targets``."""
    q = targets / jnp.sum(targets, axis=-1, keepdims=True)
    return -jnp.mean(jnp.sum(q * jax.nn.log_softmax(logits, axis=-1), axis=-1))


def clip_loss(image_emb, text_emb, logit_scale, *, positives=None):
    """CLIP's symmetric InfoNCE: cross-entropy of the image -> text and the text -> image softmax over the scaled
    similarities, averaged.

    .. math:: L = \\tfrac12 [\\mathrm{CE}(\\tau S, Q) + \\mathrm{CE}(\\tau S^\\top, Q^\\top)], \\;
              S_{ij} = \\langle u_i, v_j \\rangle

    Args:
      image_emb: image embeddings ``(n, d)`` (CLIP normalises them to unit length first).
      text_emb: text embeddings ``(n, d)``.
      logit_scale: the multiplier ``tau = 1 / temperature`` (a scalar, ``exp`` of the learned log-scale).
      positives: ``(n, n)`` booleans, pair ``(i, j)`` a positive (at least one per row and per column; each row's
        target spreads evenly over its positives). ``None``: the identity, CLIP's pairing.

    Returns:
      ``(loss, aux)``: the scalar loss and ``{"i2t_accuracy", "t2i_accuracy"}``, the fraction of rows (columns)
      whose most similar text (image) is a positive.
    """
    _check_pair(image_emb, text_emb, positives)
    if image_emb.shape[0] != text_emb.shape[0]:
        raise ValueError(f"clip_loss pairs images with texts: image_emb and text_emb need the same number of rows, "
                         f"got {image_emb.shape[0]} and {text_emb.shape[0]}")
    n = image_emb.shape[0]
    pos = jnp.eye(n, dtype=jnp.float32) if positives is None else jnp.asarray(positives, jnp.float32)
    logits = logit_scale * jnp.dot(image_emb.astype(jnp.float32), text_emb.astype(jnp.float32).T)
    loss = 0.5 * (_soft_cross_entropy(logits, pos) + _soft_cross_entropy(logits.T, pos.T))
    i2t = jnp.mean(jnp.take_along_axis(pos, jnp.argmax(logits, axis=1)[:, None], axis=1))
    t2i = jnp.mean(jnp.take_along_axis(pos.T, jnp.argmax(logits, axis=0)[:, None], axis=1))
    return loss, {"i2t_accuracy": i2t, "t2i_accuracy": t2i}


def retrieval_top_k(similarity, relevant, k: int):
    """The fraction of queries (rows) whose ``k`` most similar candidates (columns) include a relevant one.

    .. math:: \\mathrm{hit@k} = \\tfrac1n \\sum_i \\max_{j \\in \\mathrm{top}_k(S_{i\\cdot})} R_{ij}

    Args:
      similarity: ``(n, m)`` scores of query ``i`` against candidate ``j``.
      relevant: ``(n, m)`` booleans.
      k: how many candidates count (``1 <= k <= m``).
    """
    k = check_int("k", k, minimum=1)
    if similarity.ndim != 2 or relevant.shape != similarity.shape:
        raise ValueError(f"similarity and relevant must both be shaped (n, m), got {similarity.shape} and "
                         f"{relevant.shape}")
    if k > similarity.shape[1]:
        raise ValueError(f"k must be <= the number of candidates {similarity.shape[1]}, got {k}")
    top = jax.lax.top_k(jnp.asarray(similarity, jnp.float32), k)[1]
    return jnp.mean(jnp.any(jnp.take_along_axis(jnp.asarray(relevant, bool), top, axis=1), axis=1))
