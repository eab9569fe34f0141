"""Latent diffusion's spatial transformer (Rombach et al. 2022, Sec. 3.3 and Fig. 3): image features attend to a
text encoder's tokens through cross-attention, ``Q = W_Q phi(x)``, ``K = W_K tau(y)``, ``V = W_V tau(y)``.

:class:`SpatialTransformer`: ``x + proj_out(Block(proj_in(GroupNorm(x))))`` over the ``H*W`` positions, the block
(:class:`TransformerBlock`, also the text encoder's) ``h + SelfAttn(LN(h))``, ``h + CrossAttn(LN(h), context)``,
``h + MLP(LN(h))``; the context's padding tokens are left
out of every softmax (a key padding mask). ``proj_out`` starts at zero, so the block starts as the identity.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from diffjax.core._checks import check_int, check_positive
from diffjax.nets._attention import masked_attention
from diffjax.nets._inputs import check_dtype
from diffjax.nets._norm import GroupNorm

__all__ = ["CrossAttention", "TransformerBlock", "SpatialTransformer"]

_xavier = nn.initializers.xavier_uniform()


def _dense(features, name, dtype, *, use_bias=True, init=_xavier):
    return nn.Dense(features, use_bias=use_bias, kernel_init=init, param_dtype=jnp.float32, dtype=dtype, name=name)


class CrossAttention(nn.Module):
    """Multi-head attention of ``x`` ``(B, N, C)`` to ``context`` ``(B, M, D)`` (``None``: to ``x`` itself,
    self-attention); ``context_mask`` ``(B, M)`` bool marks the real context tokens. Returns ``(B, N, C)``.
    ``zero_init``: the output projection starts at zero (PixArt-alpha's cross-attention; the branch starts off)."""

    num_heads: int
    dtype: Any = jnp.float32
    zero_init: bool = False

    @nn.compact
    def __call__(self, x, context=None, context_mask=None):
        b, n, c = x.shape
        ctx = x if context is None else context.astype(self.dtype)
        d = c // self.num_heads
        q = _dense(c, "q", self.dtype, use_bias=False)(x).reshape(b, n, self.num_heads, d)
        k = _dense(c, "k", self.dtype, use_bias=False)(ctx).reshape(b, ctx.shape[1], self.num_heads, d)
        v = _dense(c, "v", self.dtype, use_bias=False)(ctx).reshape(b, ctx.shape[1], self.num_heads, d)
        h = masked_attention(q, k, v, context_mask).reshape(b, n, c)
        return _dense(c, "out", self.dtype, init=nn.initializers.zeros if self.zero_init else _xavier)(h)


class TransformerBlock(nn.Module):
    """Pre-LN transformer block on tokens ``h`` ``(B, N, C)``: ``h + SelfAttn(LN(h))`` (keys where ``mask``
    ``(B, N)`` is True; ``None``: all), then with a ``context`` ``h + CrossAttn(LN(h), context)`` (keys where
    ``context_mask`` is True), then ``h + MLP(LN(h))`` (GELU, width ``mlp_ratio * C``)."""

    num_heads: int
    mlp_ratio: float = 4.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h, mask=None, context=None, context_mask=None):
        dt = self.dtype
        h = h + CrossAttention(self.num_heads, dt, name="self_attn")(nn.LayerNorm(dtype=dt, name="norm1")(h),
                                                                     None, mask)
        if context is not None:
            h = h + CrossAttention(self.num_heads, dt, name="cross_attn")(nn.LayerNorm(dtype=dt, name="norm2")(h),
                                                                          context, context_mask)
        m = nn.LayerNorm(dtype=dt, name="norm3")(h)
        m = nn.gelu(_dense(int(h.shape[-1] * self.mlp_ratio), "fc1", dt)(m), approximate=True)
        return h + _dense(h.shape[-1], "fc2", dt)(m)


class SpatialTransformer(nn.Module):
    """``(x (B, H, W, C), context (B, M, D), context_mask (B, M) bool) -> (B, H, W, C)``.

    Attributes:
      num_heads: attention heads (``C`` divisible by it).
      norm_groups: GroupNorm groups of the input (``C`` divisible by it).
      mlp_ratio: the feed-forward width over ``C`` (GELU).
      dtype: compute dtype (parameters are float32).
    """

    num_heads: int = 4
    norm_groups: int = 32
    mlp_ratio: float = 4.0
    dtype: Any = jnp.float32

    def __post_init__(self):
        check_int("num_heads", self.num_heads, minimum=1)
        check_int("norm_groups", self.norm_groups, minimum=1)
        check_positive("mlp_ratio", self.mlp_ratio)
        check_dtype(self.dtype)
        super().__post_init__()

    @nn.compact
    def __call__(self, x, context, context_mask: Optional[Any] = None):
        if x.ndim != 4:
            raise ValueError(f"x must be shaped (batch, H, W, C), got shape {x.shape}")
        b, hgt, wid, c = x.shape
        if c % self.num_heads:
            raise ValueError(f"x's channels {c} must be divisible by num_heads={self.num_heads}")
        if context.ndim != 3 or context.shape[0] != b:
            raise ValueError(f"context must be shaped (batch={b}, M, D), got shape {context.shape}")
        if context_mask is not None and tuple(context_mask.shape) != tuple(context.shape[:2]):
            raise ValueError(f"context_mask must be shaped (batch, M) = {context.shape[:2]}, got "
                             f"{tuple(context_mask.shape)}")
        dt = self.dtype
        h = GroupNorm(self.norm_groups, dt, name="norm")(x.astype(dt))
        h = _dense(c, "proj_in", dt)(h).reshape(b, hgt * wid, c)
        h = TransformerBlock(self.num_heads, self.mlp_ratio, dt, name="block")(h, None, context, context_mask)
        h = _dense(c, "proj_out", dt, init=nn.initializers.zeros)(h).reshape(b, hgt, wid, c)
        return x + h
