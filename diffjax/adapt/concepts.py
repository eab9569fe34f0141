"""Teaching a frozen text-conditional model a new concept: textual inversion's new token embeddings and
DreamBooth's class-prior preservation loss, as pure functions of parameter trees and loss functions.

* Textual inversion (Gal et al. 2022, "An Image is Worth One Word", eq. 2): ``v* = argmin_v E ||eps -
  eps_theta(x_t, t, c_theta(y with S* -> v))||^2``, everything else frozen. Here the new words are appended to the
  vocabulary (ids ``V, V+1, ...``) and their rows to the text encoder's embedding table: :func:`ti_init` makes the
  rows (initialised from a coarse descriptor's embedding, as the paper does, or Gaussian), :func:`ti_merge` returns
  the parameters with the table extended; a training step differentiates ``loss(ti_merge(frozen, rows))`` with
  respect to ``rows`` alone.
* DreamBooth (Ruiz et al. 2023, eq. 2): the instance loss on the few images captioned with the identifier plus
  ``lambda`` times the same loss on images the frozen model generated for the plain class prompt (prior
  preservation, against overfitting and language drift): :func:`prior_preservation_loss`.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp

__all__ = ["ti_init", "ti_merge", "prior_preservation_loss"]


def _get(params, path: Sequence[str]):
    node = params
    for i, k in enumerate(path):
        if not isinstance(node, dict) or k not in node:
            have = sorted(node) if isinstance(node, dict) else type(node).__name__
            raise ValueError(f"embedding path {'/'.join(path)!r}: no {k!r} at {'/'.join(path[:i]) or 'the top'} "
                             f"(it has: {have})")
        node = node[k]
    if getattr(node, "ndim", 0) != 2:
        raise ValueError(f"embedding path {'/'.join(path)!r} must name a (vocab, width) table, got shape "
                         f"{getattr(node, 'shape', None)}")
    return node


def _set(params, path, value):
    if not path:
        return value
    return {**params, path[0]: _set(params[path[0]], path[1:], value)}


def ti_init(key: jax.Array, params, path: Sequence[str], num_tokens: int, *,
            init_ids: Optional[Sequence[int]] = None) -> jax.Array:
    """New embedding rows ``(num_tokens, width)`` for the table at ``path`` (e.g. ``("token_embed",
    "embedding")`` of :class:`~diffjax.nets.TextEncoder`): copies of the rows of ``init_ids`` (one per new token,
    e.g. the id of "shoe"), or ``N(0, std of the table)`` where ``init_ids`` is None."""
    table = _get(params, tuple(path))
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens < 1:
        raise ValueError(f"num_tokens must be an int >= 1, got {num_tokens!r}")
    if init_ids is not None:
        ids = jnp.asarray(init_ids, jnp.int32)
        if ids.shape != (num_tokens,) or int(ids.min()) < 0 or int(ids.max()) >= table.shape[0]:
            raise ValueError(f"init_ids must be {num_tokens} ids in [0, {table.shape[0]}), got {list(init_ids)}")
        return table[ids].astype(jnp.float32)
    return jax.random.normal(key, (num_tokens, table.shape[1]), jnp.float32) * jnp.std(table)


def ti_merge(params, path: Sequence[str], rows: jax.Array):
    """``params`` with the table at ``path`` extended by ``rows`` (the new tokens' ids follow the old vocabulary)."""
    table = _get(params, tuple(path))
    if rows.ndim != 2 or rows.shape[1] != table.shape[1]:
        raise ValueError(f"rows must be shaped (num_tokens, {table.shape[1]}), got {rows.shape}")
    return _set(params, tuple(path), jnp.concatenate([table, rows.astype(table.dtype)], axis=0))


def prior_preservation_loss(loss_fn: Callable, weight: float) -> Callable:
    """DreamBooth's objective from a diffusion loss ``loss_fn(params, key, batch) -> (loss, aux)``:

    .. math:: L = L(\\text{instance batch}) + \\lambda\\, L(\\text{prior batch})

    The returned ``loss(params, key, batch)`` takes ``batch = {"instance": ..., "prior": ...}`` (each a batch of
    ``loss_fn``), draws independent noise for the two halves, and reports both terms in ``aux``."""
    weight = float(weight)
    if not weight >= 0.0:
        raise ValueError(f"weight must be a float >= 0 (DreamBooth's lambda; 0: no prior preservation), got {weight}")

    def loss(params, key, batch):
        k_inst, k_prior = jax.random.split(key)
        inst, aux = loss_fn(params, k_inst, batch["instance"])
        prior, _ = loss_fn(params, k_prior, batch["prior"])
        return inst + weight * prior, {**aux, "instance_loss": inst, "prior_loss": prior}

    return loss
