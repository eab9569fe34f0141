"""A small transformer text encoder (the ``tau_theta(y)`` of latent diffusion; CLIP's text tower, Radford et al. 2021).

Token and learned position embeddings, ``depth`` pre-LN blocks (``x + Attn(LN(x))``, ``x + MLP(LN(x))``,
:class:`~diffjax.nets.TransformerBlock`) whose attention leaves out the padding tokens, a final LayerNorm. Returns the
per-token features (zero at padding, for cross-attention) and one pooled vector per text: the features at the EOS
token (the last real token) or their mean over the real tokens. Padding tokens change nothing: neither the real
tokens' features nor the pooled vector depend on the ids or the number of padded positions.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from diffjax.core._checks import check_choice, check_int, check_positive
from diffjax.nets._cross_attention import TransformerBlock
from diffjax.nets._inputs import check_dtype

__all__ = ["TextEncoder", "TEXT_POOLINGS"]

TEXT_POOLINGS = ("eos", "mean")


class TextEncoder(nn.Module):
    """``(ids (B, L) int, mask (B, L) bool) -> (tokens (B, L, width), pooled (B, width))``.

    Attributes:
      vocab_size: number of token ids (the tokenizer's ``vocab_size``).
      max_length: the longest ``L`` (rows of the position embedding).
      width: feature width (divisible by ``num_heads``).
      depth: number of transformer blocks.
      num_heads: attention heads.
      mlp_ratio: MLP hidden width over ``width``.
      pool: ``"eos"`` (features of the last real token, the tokenizer's EOS) or ``"mean"`` (mean over real tokens).
      dtype: compute dtype (parameters are float32).
    """

    vocab_size: int
    max_length: int = 16
    width: int = 64
    depth: int = 2
    num_heads: int = 4
    mlp_ratio: float = 4.0
    pool: str = "eos"
    dtype: Any = jnp.float32

    def __post_init__(self):
        check_int("vocab_size", self.vocab_size, minimum=1)
        check_int("max_length", self.max_length, minimum=1)
        check_int("width", self.width, minimum=1)
        check_int("depth", self.depth, minimum=1)
        check_int("num_heads", self.num_heads, minimum=1)
        if self.width % self.num_heads:
            raise ValueError(f"width={self.width} must be divisible by num_heads={self.num_heads}")
        check_positive("mlp_ratio", self.mlp_ratio)
        check_choice("pool", self.pool, TEXT_POOLINGS)
        check_dtype(self.dtype)
        super().__post_init__()

    @nn.compact
    def __call__(self, ids, mask):
        if ids.ndim != 2 or not 1 <= ids.shape[1] <= self.max_length:
            raise ValueError(f"ids must be shaped (batch, L) with 1 <= L <= max_length={self.max_length}, got shape "
                             f"{ids.shape}")
        if mask.shape != ids.shape:
            raise ValueError(f"mask must be shaped like ids {ids.shape}, got {mask.shape}")
        mask = jnp.asarray(mask, bool)
        length = ids.shape[1]
        pos = self.param("pos_embed", nn.initializers.normal(0.01), (self.max_length, self.width), jnp.float32)
        h = nn.Embed(self.vocab_size, self.width, embedding_init=nn.initializers.normal(0.02),
                     name="token_embed")(ids) + pos[None, :length]
        h = h.astype(self.dtype)
        for i in range(self.depth):
            h = TransformerBlock(self.num_heads, self.mlp_ratio, self.dtype, name=f"block{i}")(h, mask)
        h = nn.LayerNorm(dtype=self.dtype, name="norm_out")(h).astype(jnp.float32)
        tokens = jnp.where(mask[..., None], h, 0.0)
        count = jnp.sum(mask, axis=1)
        if self.pool == "eos":
            last = jnp.maximum(count - 1, 0)
            pooled = jnp.take_along_axis(tokens, last[:, None, None], axis=1)[:, 0]
        else:
            pooled = jnp.sum(tokens, axis=1) / jnp.maximum(count, 1)[:, None]
        return tokens, pooled
