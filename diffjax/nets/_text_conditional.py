"""A text-conditional score network: a text encoder ``tau_theta(y)`` and a backbone that attends to its tokens
(latent diffusion, Rombach et al. 2022, Sec. 3.3; PixArt-alpha; SD3's MMDiT).

The condition ``y`` is a batch of token ids ``(B, L)`` (:class:`~diffjax.data.Tokenizer`); the padding mask is
``ids != pad_id`` (what the tokenizer's mask is), so ``y`` is one integer array and passes through the
class-label code paths unchanged: classifier-free guidance's null condition is the empty caption
(``BOS EOS`` then padding, :meth:`TextConditional.null_ids`), broadcast over the batch like a null label.
``y=None`` means the empty caption.

The backbone (a :class:`~diffjax.nets.UNet` or :class:`~diffjax.nets.DiT` with ``context_block`` set) is called as
``backbone(x, noise_labels, context=tokens, context_mask=mask, context_pooled=pooled, train=...)``: the per-token
features for its cross-attention (or joint attention) and the pooled text vector, which it adds to its timestep
embedding (GLIDE, Nichol et al. 2022, Sec. 2.3; SD3's pooled text embedding).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffjax.core._checks import check_int

__all__ = ["TextConditional"]


class TextConditional(nn.Module):
    """``(x, noise_labels, y=ids (B, L) int | None, *, train) -> backbone output``.

    Attributes:
      text_encoder: a :class:`~diffjax.nets.TextEncoder` (``ids, mask -> (tokens, pooled)``).
      backbone: a network taking ``context``, ``context_mask`` and ``context_pooled`` keywords.
      max_length: ``L`` of the null condition (``y=None``); at most the encoder's ``max_length``.
      freeze_text: stop gradients at the encoder's outputs (a pre-trained, frozen encoder; its parameters then get
        zero gradients and an optimizer without weight decay leaves them unchanged).
      pad_id / bos_id / eos_id: the tokenizer's special ids (:class:`~diffjax.data.Tokenizer`: 0, 1, 2).
    """

    text_encoder: nn.Module
    backbone: nn.Module
    max_length: int = 16
    freeze_text: bool = False
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    def __post_init__(self):
        check_int("max_length", self.max_length, minimum=2)
        if self.max_length > self.text_encoder.max_length:
            raise ValueError(f"max_length={self.max_length} must be <= the text encoder's max_length="
                             f"{self.text_encoder.max_length}")
        super().__post_init__()

    def null_ids(self) -> np.ndarray:
        """The empty caption ``(max_length,)``: ``BOS EOS PAD ...`` (the null condition of guidance)."""
        ids = np.full((self.max_length,), self.pad_id, np.int32)
        ids[:2] = (self.bos_id, self.eos_id)
        return ids

    def encode(self, ids):
        """``(tokens (B, L, width), mask (B, L) bool, pooled (B, width))`` of token ids ``(B, L)``."""
        ids = jnp.asarray(ids, jnp.int32)
        if ids.ndim != 2:
            raise ValueError(f"y must be token ids shaped (batch, L), got shape {ids.shape}")
        mask = ids != self.pad_id
        tokens, pooled = self.text_encoder(ids, mask)
        if self.freeze_text:
            tokens, pooled = jax.lax.stop_gradient(tokens), jax.lax.stop_gradient(pooled)
        return tokens, mask, pooled

    @nn.compact
    def __call__(self, x, noise_labels, y=None, *, train: bool):
        b = x.shape[0]
        ids = jnp.broadcast_to(jnp.asarray(self.null_ids()), (b, self.max_length)) if y is None else y
        if ids.shape[0] != b:
            raise ValueError(f"y must hold one caption per example: shape ({b}, L), got {tuple(ids.shape)}")
        tokens, mask, pooled = self.encode(ids)
        return self.backbone(x, noise_labels, context=tokens, context_mask=mask, context_pooled=pooled, train=train)
