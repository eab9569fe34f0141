"""A noise-conditional classifier (the UNet's encoder half + pooling) for classifier guidance."""
from __future__ import annotations

from typing import Any, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

from diffjax.core._checks import check_choice, check_int
from diffjax.nets._attention import AttnBlock
from diffjax.nets._base import LAYER_IMPLS, Dense
from diffjax.nets._blocks import Downsample, ResBlock
from diffjax.nets._conv import CONV_IMPLS, Conv
from diffjax.nets._embeddings import EMBEDDING_TYPES, NoiseEmbedding
from diffjax.nets._inputs import check_dtype, check_image, check_levels, check_rate, noise_label_input
from diffjax.nets._norm import GroupNorm


class NoiseConditionalClassifier(nn.Module):
    """Time-conditioned encoder ``(x_t, noise_labels) -> logits (batch, num_classes)``: conv, DDPM residual blocks
    (with attention at ``attn_resolutions``) and downsampling per level, GroupNorm-swish, global average pooling and
    a linear head (as the encoder of improved-diffusion's classifier; Dhariwal & Nichol 2021).

    Attributes: as :class:`UNet` (``ch``, ``ch_mult``, ``num_res_blocks``, ``attn_resolutions``, ``dropout``,
    ``embedding_type``, ``fourier_scale``, ``num_head_channels``, ``norm_groups``, ``dtype``, ``conv_impl``,
    ``layer_impl``), plus
    ``num_classes`` (required).
    """

    num_classes: int = 10
    ch: int = 64
    ch_mult: Tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 1
    attn_resolutions: Tuple[int, ...] = (8,)
    dropout: float = 0.0
    embedding_type: str = "positional"
    fourier_scale: float = 16.0
    num_head_channels: Optional[int] = None
    norm_groups: int = 32
    image_size: Optional[int] = None
    num_channels: Optional[int] = None
    dtype: Any = jnp.float32
    conv_impl: str = "auto"
    layer_impl: str = "auto"

    def __post_init__(self):
        check_int("num_classes", self.num_classes, minimum=1)
        check_levels(self.ch, self.ch_mult, self.num_res_blocks)
        check_choice("embedding_type", self.embedding_type, EMBEDDING_TYPES)
        check_choice("conv_impl", self.conv_impl, CONV_IMPLS)
        check_choice("layer_impl", self.layer_impl, LAYER_IMPLS)
        check_rate("dropout", self.dropout)
        check_dtype(self.dtype)
        super().__post_init__()

    @nn.compact
    def __call__(self, x, noise_labels, *, train: bool):
        check_image(x, self.image_size, self.num_channels)
        dt = self.dtype
        temb = NoiseEmbedding(self.ch, 4 * self.ch, self.embedding_type, self.fourier_scale, dt,
                              name="noise_embed")(noise_label_input(noise_labels, x.shape[0]))
        res_kw = dict(kind="ddpm", dropout=self.dropout, init_scale=1.0, norm_groups=self.norm_groups, dtype=dt,
                      conv_impl=self.conv_impl, layer_impl=self.layer_impl)
        h = Conv(self.ch, 3, dtype=dt, impl=self.conv_impl, name="conv_in")(x.astype(dt))
        for i, mult in enumerate(self.ch_mult):
            for j in range(self.num_res_blocks):
                h = ResBlock(self.ch * mult, name=f"down{i}_res{j}", **res_kw)(h, temb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = AttnBlock(self.num_head_channels, init_scale=1.0, norm_groups=self.norm_groups, dtype=dt,
                                  impl=self.layer_impl, name=f"down{i}_attn{j}")(h)
            if i != len(self.ch_mult) - 1:
                h = Downsample(dtype=dt, conv_impl=self.conv_impl, name=f"down{i}_downsample")(h)
        h = nn.swish(GroupNorm(self.norm_groups, dt, self.layer_impl, name="norm_out")(h))
        h = jnp.mean(h.astype(jnp.float32), axis=(1, 2))
        return Dense(self.num_classes, name="head")(h).astype(jnp.float32)
