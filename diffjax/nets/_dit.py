"""The diffusion transformer (DiT, Peebles & Xie 2023, "Scalable Diffusion Models with Transformers").

The image is cut into ``patch_size x patch_size`` patches (a convolution with kernel = stride = patch), each patch
becomes a token with a fixed 2-D sin-cos position embedding (MAE's formula), and ``depth`` transformer blocks with
adaLN-Zero conditioning (shift, scale and gate of the attention and MLP branches regressed from the timestep and
class embedding, the regression initialised to zero) process the tokens; a final adaptive LayerNorm and a
zero-initialised linear layer give each token's patch of the output, which is put back into an image. The network
knows nothing about SDEs: it maps ``(x, noise_labels[, y])`` to an array shaped like ``x`` (twice the channels with
``learn_sigma``); :func:`diffjax.nets.make_score_fn` turns that into a score. At initialisation every block is the
identity and the output is exactly zero (the paper's adaLN-Zero).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffjax.core._checks import check_choice, check_int, check_positive
from diffjax.nets._attention import attention, masked_attention
from diffjax.nets._base import LAYER_IMPLS
from diffjax.nets._cross_attention import CrossAttention
from diffjax.nets._inputs import (check_dtype, check_image, check_rate, concat_condition, label_input,
                                  noise_label_input)

__all__ = ["DiT", "sincos_pos_embed_2d", "dit_timestep_embedding", "DIT_CONTEXT_BLOCKS"]

# how a DiT sees a text context: not at all, PixArt-alpha's cross-attention in every block, or SD3's MMDiT blocks
DIT_CONTEXT_BLOCKS = ("none", "cross_attention", "mmdit")

_xavier = nn.initializers.xavier_uniform()


def _sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    """``(len(pos), dim)``: ``[sin(pos w_k), cos(pos w_k)]`` with ``w_k = 10000^{-k / (dim/2)}``, k < dim/2."""
    omega = 1.0 / 10000.0 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = pos.reshape(-1)[:, None].astype(np.float64) * omega[None, :]
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int) -> np.ndarray:
    """MAE's fixed 2-D sin-cos position embedding of a ``grid_h x grid_w`` token grid (row-major tokens), shape
    ``(grid_h * grid_w, dim)``: the first half embeds the column, the second half the row (``dim % 4 == 0``).

    .. math:: e(i, j) = [\\sin j\\omega, \\cos j\\omega, \\sin i\\omega, \\cos i\\omega], \\; \\omega_k = 10000^{-4k/d}
    """
    if dim % 4:
        raise ValueError(f"the 2-D sin-cos embedding needs dim divisible by 4, got dim={dim}")
    rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
    return np.concatenate([_sincos_1d(dim // 2, cols), _sincos_1d(dim // 2, rows)], axis=1).astype(np.float32)


def dit_timestep_embedding(labels: jax.Array, dim: int, *, max_period: float = 10000.0) -> jax.Array:
    """DiT's (ADM's) sinusoidal frequency embedding of noise labels, ``(batch,) -> (batch, dim)``: cosines first.

    .. math:: e = [\\cos(l f_k), \\sin(l f_k)], \\; f_k = m^{-k/(d/2)}, \\; k < d/2
    """
    labels = jnp.asarray(labels, jnp.float32)
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = labels[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


def _dense(features, name, dtype, init=_xavier):
    return nn.Dense(features, kernel_init=init, bias_init=nn.initializers.zeros, param_dtype=jnp.float32,
                    dtype=dtype, name=name)


def _layer_norm(name, dtype):  # DiT's LayerNorm: no affine parameters (adaLN supplies them), eps 1e-6
    return nn.LayerNorm(epsilon=1e-6, use_bias=False, use_scale=False, dtype=dtype, name=name)


def _modulate(x, shift, scale):
    return x * (1.0 + scale[:, None, :]) + shift[:, None, :]


class DiTBlock(nn.Module):
    """A transformer block with adaLN-Zero: ``x + gate_a * Attn(modulate(LN(x)))``, then
    ``x + gate_m * MLP(modulate(LN(x)))``; the six modulation vectors come from ``Dense(SiLU(c))``, zero-initialised
    (so the block starts as the identity). With ``cross_attention`` (PixArt-alpha, Chen et al. 2023, Sec. 2.3)
    ``x + CrossAttn(x, context)`` follows the self-attention, its output projection zero-initialised."""

    hidden_size: int
    num_heads: int
    mlp_ratio: float = 4.0
    dtype: Any = jnp.float32
    layer_impl: str = "auto"
    cross_attention: bool = False

    @nn.compact
    def __call__(self, x, c, context=None, context_mask=None):
        b, n, d = x.shape
        mod = _dense(6 * d, "adaLN_modulation", self.dtype, nn.initializers.zeros)(nn.silu(c))
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = jnp.split(mod, 6, axis=-1)
        h = _modulate(_layer_norm("norm1", self.dtype)(x), shift_a, scale_a)
        qkv = _dense(3 * d, "qkv", self.dtype)(h).reshape(b, n, 3, self.num_heads, d // self.num_heads)
        h = attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], self.layer_impl).reshape(b, n, d)
        x = x + gate_a[:, None, :] * _dense(d, "proj", self.dtype)(h)
        if self.cross_attention:
            x = x + CrossAttention(self.num_heads, self.dtype, zero_init=True, name="cross_attn")(x, context,
                                                                                                 context_mask)
        h = _modulate(_layer_norm("norm2", self.dtype)(x), shift_m, scale_m)
        h = nn.gelu(_dense(int(d * self.mlp_ratio), "fc1", self.dtype)(h), approximate=True)
        return x + gate_m[:, None, :] * _dense(d, "fc2", self.dtype)(h)


class MMDiTBlock(nn.Module):
    """SD3's MMDiT block (Esser et al. 2024, Sec. 4 and Fig. 2): image tokens ``x`` ``(B, N, D)`` and text tokens
    ``context`` ``(B, M, D)`` each have their own adaLN-Zero modulation, QKV, output projection and MLP, and attend
    jointly: one softmax over the keys of both (``[context; x]``), the text's padding keys left out
    (``context_mask``). Returns ``(x, context)``; every branch starts at zero (the identity)."""

    hidden_size: int
    num_heads: int
    mlp_ratio: float = 4.0
    dtype: Any = jnp.float32

    def _pre(self, h, c, stream):
        d, dt = h.shape[-1], self.dtype
        mod = jnp.split(_dense(6 * d, f"{stream}_adaLN_modulation", dt, nn.initializers.zeros)(nn.silu(c)), 6, -1)
        hn = _modulate(_layer_norm(f"{stream}_norm1", dt)(h), mod[0], mod[1])
        qkv = _dense(3 * d, f"{stream}_qkv", dt)(hn).reshape(*h.shape[:2], 3, self.num_heads, d // self.num_heads)
        return qkv, mod

    def _post(self, h, attn, mod, stream):
        d, dt = h.shape[-1], self.dtype
        h = h + mod[2][:, None, :] * _dense(d, f"{stream}_proj", dt)(attn.reshape(h.shape))
        m = _modulate(_layer_norm(f"{stream}_norm2", dt)(h), mod[3], mod[4])
        m = nn.gelu(_dense(int(d * self.mlp_ratio), f"{stream}_fc1", dt)(m), approximate=True)
        return h + mod[5][:, None, :] * _dense(d, f"{stream}_fc2", dt)(m)

    @nn.compact
    def __call__(self, x, context, c, context_mask=None):
        b, n, m = x.shape[0], x.shape[1], context.shape[1]
        qkv_x, mod_x = self._pre(x, c, "x")
        qkv_c, mod_c = self._pre(context, c, "context")
        qkv = jnp.concatenate([qkv_c, qkv_x], axis=1)
        mask = None if context_mask is None else jnp.concatenate(
            [jnp.asarray(context_mask, bool), jnp.ones((b, n), bool)], axis=1)
        h = masked_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], mask)
        return self._post(x, h[:, m:], mod_x, "x"), self._post(context, h[:, :m], mod_c, "context")


class DiT(nn.Module):
    """Diffusion transformer (NHWC in and out), Peebles & Xie 2023.

    Attributes:
      patch_size: side of the square patches (the input's height and width must be multiples of it).
      hidden_size: token width.
      depth: number of DiT blocks.
      num_heads: attention heads (``hidden_size`` divisible by it; ``hidden_size`` divisible by 4 for the 2-D
        position embedding).
      mlp_ratio: MLP hidden width over ``hidden_size``.
      frequency_embedding_size: width of the sinusoidal noise-label features fed to the timestep MLP.
      num_classes: ``None`` for unconditional; otherwise a label embedding with ``num_classes + 1`` rows, row
        ``num_classes`` the null label used when ``y is None`` (classifier-free guidance), added to the timestep
        embedding.
      class_dropout: DiT's own label dropout: with ``train=True`` each label is replaced by the null label with this
        probability (draws from the ``"dropout"`` rng). The training step's ``label_dropout`` does the same outside
        the network; use one of the two.
      learn_sigma: double the output channels (``(eps, v)`` of a learned-variance head).
      input_size / in_channels: expected input side and channels, checked when given (``None``: any).
      dtype: compute dtype (float32 or bfloat16); parameters are always float32.
      layer_impl: attention kernel (``LAYER_IMPLS``: ``"auto"`` is the fused kernel on the CPU backend,
        ``"reference"`` the plain formulation, ``"flash"`` blockwise with the tangent in the same pass (MeanFlow's
        and sCM's ``jax.jvp`` of the network); all support reverse and forward mode).
      context_block: how the blocks see a text context (``DIT_CONTEXT_BLOCKS``): ``"none"``; ``"cross_attention"``
        (PixArt-alpha: cross-attention to the context tokens in every block); ``"mmdit"`` (SD3: :class:`MMDiTBlock`,
        joint attention over the image tokens and the context tokens projected to ``hidden_size``). With a context
        block the network is called with the keywords ``context`` ``(B, M, D)``, ``context_mask`` ``(B, M)`` and
        ``context_pooled`` ``(B, D)`` (:class:`~diffjax.nets.TextConditional` passes them); the pooled vector is
        added to the timestep embedding (SD3's pooled text embedding).
    """

    patch_size: int = 2
    hidden_size: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    frequency_embedding_size: int = 256
    num_classes: Optional[int] = None
    class_dropout: float = 0.0
    learn_sigma: bool = False
    input_size: Optional[int] = None
    in_channels: Optional[int] = None
    dtype: Any = jnp.float32
    layer_impl: str = "auto"
    context_block: str = "none"

    def __post_init__(self):
        check_int("patch_size", self.patch_size, minimum=1)
        check_int("hidden_size", self.hidden_size, minimum=4)
        check_int("depth", self.depth, minimum=1)
        check_int("num_heads", self.num_heads, minimum=1)
        if self.hidden_size % 4:
            raise ValueError(f"hidden_size must be divisible by 4 (2-D sin-cos embedding), got {self.hidden_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} must be divisible by num_heads, got "
                             f"num_heads={self.num_heads}")
        check_positive("mlp_ratio", self.mlp_ratio)
        check_int("frequency_embedding_size", self.frequency_embedding_size, minimum=2)
        if self.num_classes is not None:
            check_int("num_classes", self.num_classes, minimum=1)
        check_rate("class_dropout", self.class_dropout)
        if self.class_dropout > 0 and self.num_classes is None:
            raise ValueError(f"class_dropout={self.class_dropout} needs num_classes (the null label), got None")
        if self.input_size is not None:
            check_int("input_size", self.input_size, minimum=1)
            if self.input_size % self.patch_size:
                raise ValueError(f"input_size={self.input_size} must be a multiple of patch_size={self.patch_size}")
        if self.in_channels is not None:
            check_int("in_channels", self.in_channels, minimum=1)
        check_choice("layer_impl", self.layer_impl, LAYER_IMPLS)
        check_choice("context_block", self.context_block, DIT_CONTEXT_BLOCKS)
        check_dtype(self.dtype)
        super().__post_init__()

    @nn.compact
    def __call__(self, x, noise_labels, y=None, *, train: bool, context=None, context_mask=None,
                 context_pooled=None, cond=None):
        """``cond``: a :class:`~diffjax.core.cascade.LowResCondition` of a cascade's super-resolution stage
        (concatenated to the channels, its level embedded like the time), or ``None``."""
        check_image(x, self.input_size, self.in_channels, size_field="input_size", channels_field="in_channels")
        if (self.context_block != "none") != (context is not None):
            raise ValueError(f"context_block={self.context_block!r}: the context tokens must be given exactly when "
                             f"context_block is not 'none', got context={'None' if context is None else 'an array'}")
        b, height, width, channels = x.shape
        x_in = x if cond is None else concat_condition(x, cond)
        p, d, dt = self.patch_size, self.hidden_size, self.dtype
        if height % p or width % p:
            raise ValueError(f"x's height and width must be multiples of patch_size={p}, got {height}x{width}")
        gh, gw = height // p, width // p

        # Patchify: a convolution with kernel = stride = p (HWIO kernel), written as the matmul it is.
        kernel = self.param("x_embedder_kernel", nn.initializers.variance_scaling(
            1.0, "fan_avg", "uniform", in_axis=(0, 1, 2), out_axis=3), (p, p, x_in.shape[-1], d), jnp.float32)
        bias = self.param("x_embedder_bias", nn.initializers.zeros, (d,), jnp.float32)
        patches = x_in.astype(dt).reshape(b, gh, p, gw, p, x_in.shape[-1]).transpose(0, 1, 3, 2, 4, 5)
        h = jnp.einsum("bhwpqc,pqcd->bhwd", patches, kernel.astype(dt)).reshape(b, gh * gw, d) + bias.astype(dt)
        h = h + jnp.asarray(sincos_pos_embed_2d(d, gh, gw), dt)[None]

        # Conditioning: timestep MLP (+ label embedding).
        t_init = nn.initializers.normal(0.02)
        c = dit_timestep_embedding(noise_label_input(noise_labels, b), self.frequency_embedding_size)
        c = _dense(d, "t_embedder_0", dt, t_init)(c)
        c = _dense(d, "t_embedder_1", dt, t_init)(nn.silu(c))
        if self.num_classes is not None:
            labels = label_input(y, self.num_classes, b)
            if train and self.class_dropout > 0:
                drop = jax.random.bernoulli(self.make_rng("dropout"), self.class_dropout, (b,))
                labels = jnp.where(drop, self.num_classes, labels)
            c = c + nn.Embed(self.num_classes + 1, d, embedding_init=t_init, param_dtype=jnp.float32, dtype=dt,
                             name="y_embedder")(labels)
        if cond is not None:  # cascaded diffusion: the augmentation level through a timestep MLP of its own
            e = dit_timestep_embedding(noise_label_input(cond.noise_label, b), self.frequency_embedding_size)
            c = c + _dense(d, "cond_embedder_1", dt, t_init)(nn.silu(_dense(d, "cond_embedder_0", dt, t_init)(e)))

        if context_pooled is not None:
            c = c + _dense(d, "context_pooled_embedder", dt, t_init)(jnp.asarray(context_pooled, dt))
        if self.context_block == "mmdit":
            ctx = _dense(d, "context_embedder", dt)(context.astype(dt))
            for i in range(self.depth):
                h, ctx = MMDiTBlock(d, self.num_heads, self.mlp_ratio, dt, name=f"block{i}")(h, ctx, c, context_mask)
        else:
            cross = self.context_block == "cross_attention"
            for i in range(self.depth):
                h = DiTBlock(d, self.num_heads, self.mlp_ratio, dt, self.layer_impl, cross, name=f"block{i}")(
                    h, c, context, context_mask)

        # Final adaptive LayerNorm and zero-initialised linear layer, then unpatchify.
        out_ch = channels * (2 if self.learn_sigma else 1)
        shift, scale = jnp.split(_dense(2 * d, "final_adaLN_modulation", dt, nn.initializers.zeros)(nn.silu(c)), 2,
                                 axis=-1)
        h = _modulate(_layer_norm("final_norm", dt)(h), shift, scale)
        h = _dense(p * p * out_ch, "final_linear", dt, nn.initializers.zeros)(h)
        h = h.reshape(b, gh, gw, p, p, out_ch).transpose(0, 1, 3, 2, 4, 5).reshape(b, height, width, out_ch)
        return h.astype(jnp.float32)
