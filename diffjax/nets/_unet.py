"""The UNet family: DDPM (Ho et al. 2020), score-SDE's NCSN++ / DDPM++ (Song et al. 2021) and small variants.

One module configured by explicit fields (score-SDE's names where they exist). The network knows nothing about
SDEs: it maps ``(x, noise_labels, y)`` to an array shaped like ``x``; :func:`diffjax.nets.make_score_fn` turns
that into a score.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from diffjax.core._checks import check_choice, check_int
from diffjax.nets._attention import AttnBlock
from diffjax.nets._base import LAYER_IMPLS, Dense
from diffjax.nets._blocks import Downsample, ResBlock, Upsample
from diffjax.nets._conv import CONV_IMPLS, Conv
from diffjax.nets._cross_attention import SpatialTransformer
from diffjax.nets._embeddings import EMBEDDING_TYPES, NoiseEmbedding
from diffjax.nets._inputs import (check_dtype, check_image, check_levels, check_rate, concat_condition,
                                  label_input, noise_label_input)
from diffjax.nets._norm import GroupNorm

RESBLOCK_TYPES = ("ddpm", "biggan")
PROGRESSIVE = ("none", "output_skip", "residual")
PROGRESSIVE_INPUT = ("none", "input_skip", "residual")
PROGRESSIVE_COMBINE = ("sum", "cat")
UNET_CONTEXT_BLOCKS = ("none", "cross_attention")


class UNet(nn.Module):
    """Noise-conditional UNet (NHWC) of DDPM / NCSN++ / DDPM++.

    Attributes:
      ch: base channel count (score-SDE's ``nf``).
      ch_mult: channel multiplier per resolution level; ``len(ch_mult) - 1`` downsamplings.
      num_res_blocks: residual blocks per level on the way down (``+ 1`` on the way up).
      attn_resolutions: spatial sizes at which self-attention follows residual blocks.
      dropout: dropout rate inside residual blocks (active only with ``train=True``).
      resblock_type: ``"ddpm"`` (separate conv up/down-sampling layers) or ``"biggan"`` (resampling inside
        residual blocks, NCSN++).
      embedding_type: ``"positional"`` (sinusoidal, DDPM) or ``"fourier"`` (Gaussian Fourier features, NCSN++;
        feed it log sigma).
      fourier_scale: std of the Fourier frequencies.
      resamp_with_conv: use a conv in ``"ddpm"``-type up/down-sampling layers.
      fir / fir_kernel: FIR-filtered resampling (StyleGAN2) instead of nearest / average pooling.
      skip_rescale: divide residual sums by sqrt(2) (NCSN++).
      init_scale: init scale of the last conv of each residual block, attention output and output conv
        (0 gives near-zero init, as in the reference models).
      progressive: NCSN++ output path: ``"none"``, ``"output_skip"`` or ``"residual"``.
      progressive_input: NCSN++ input path: ``"none"``, ``"input_skip"`` or ``"residual"``.
      progressive_combine: how ``"input_skip"`` merges the input pyramid: ``"sum"`` or ``"cat"``.
      attn_every_up_block: attention after every up-path residual block at attention resolutions (DDPM, diffusers)
        instead of once per level (score-SDE's NCSN++ / DDPM++).
      num_head_channels: channels per attention head (``None``: one head).
      norm_groups: maximum number of GroupNorm groups (the largest divisor of the channels up to this).
      conditional: condition on the noise label (``False``: an unconditional-in-time network).
      num_classes: ``None`` for unconditional; otherwise a learned label embedding (``num_classes + 1`` rows, row
        ``num_classes`` is the null label used when ``y is None``) is added to the noise embedding.
      learn_sigma: double the output channels: ``(eps, v)`` for improved DDPM's interpolated log-variance.
      image_size / num_channels: expected input size, checked when given (``None``: any).
      dtype: compute dtype (float32 or bfloat16); parameters are always float32.
      conv_impl: ``"auto"`` (XLA's convolutions; sub-pixel upsampling convolutions and polyphase input gradients
        of strided ones), ``"xla"`` (XLA's convolutions, literally) or ``"matmul"`` (matmul weight gradients), see
        :class:`Conv`.
      layer_impl: attention and GroupNorm kernels: ``"auto"`` (``"fused"`` on the CPU backend: chunked attention
        and GroupNorm, custom JVPs with hand-written transposes) or ``"reference"`` (plain JAX); both support
        ``jax.grad``, ``jax.jvp`` and their compositions.
      context_block: ``"none"`` or ``"cross_attention"``: latent diffusion's :class:`SpatialTransformer` (self- and
        cross-attention to the ``context`` tokens, padding masked) in place of self-attention at every attention
        resolution and in the middle; the pooled context (``context_pooled``) is added to the noise embedding.
        Called then with the keywords ``context`` ``(B, M, D)``, ``context_mask`` ``(B, M)`` and
        ``context_pooled`` ``(B, D)`` (:class:`~diffjax.nets.TextConditional` passes them).
      context_heads: attention heads of those blocks.
    """

    ch: int = 128
    ch_mult: Tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Tuple[int, ...] = (16,)
    dropout: float = 0.1
    resblock_type: str = "ddpm"
    embedding_type: str = "positional"
    fourier_scale: float = 16.0
    resamp_with_conv: bool = True
    fir: bool = False
    fir_kernel: Tuple[int, ...] = (1, 3, 3, 1)
    skip_rescale: bool = False
    init_scale: float = 0.0
    progressive: str = "none"
    progressive_input: str = "none"
    progressive_combine: str = "sum"
    attn_every_up_block: bool = True
    num_head_channels: Optional[int] = None
    norm_groups: int = 32
    conditional: bool = True
    num_classes: Optional[int] = None
    learn_sigma: bool = False
    image_size: Optional[int] = None
    num_channels: Optional[int] = None
    dtype: Any = jnp.float32
    conv_impl: str = "auto"
    layer_impl: str = "auto"
    context_block: str = "none"
    context_heads: int = 4

    def __post_init__(self):
        check_levels(self.ch, self.ch_mult, self.num_res_blocks)
        if not isinstance(self.attn_resolutions, (tuple, list)):
            raise ValueError(f"attn_resolutions must be a tuple of ints, got {self.attn_resolutions!r}")
        check_rate("dropout", self.dropout)
        check_choice("resblock_type", self.resblock_type, RESBLOCK_TYPES)
        check_choice("embedding_type", self.embedding_type, EMBEDDING_TYPES)
        check_choice("progressive", self.progressive, PROGRESSIVE)
        check_choice("progressive_input", self.progressive_input, PROGRESSIVE_INPUT)
        check_choice("progressive_combine", self.progressive_combine, PROGRESSIVE_COMBINE)
        check_choice("conv_impl", self.conv_impl, CONV_IMPLS)
        check_choice("layer_impl", self.layer_impl, LAYER_IMPLS)
        check_choice("context_block", self.context_block, UNET_CONTEXT_BLOCKS)
        check_int("context_heads", self.context_heads, minimum=1)
        if self.num_classes is not None:
            check_int("num_classes", self.num_classes, minimum=1)
        if self.num_head_channels is not None:
            check_int("num_head_channels", self.num_head_channels, minimum=1)
        check_int("norm_groups", self.norm_groups, minimum=1)
        check_dtype(self.dtype)
        super().__post_init__()

    @nn.compact
    def __call__(self, x, noise_labels, y=None, *, train: bool, context=None, context_mask=None,
                 context_pooled=None, cond=None):
        """``x`` ``(batch, H, W, C)``, ``noise_labels`` ``()`` or ``(batch,)``, ``y`` class labels; ``context``
        (``context_mask``, ``context_pooled``): a text context (``context_block``); ``cond``: a
        :class:`~diffjax.core.cascade.LowResCondition` of a cascade's super-resolution stage (``None``: none)."""
        check_image(x, self.image_size, self.num_channels)
        if (self.context_block != "none") != (context is not None):
            raise ValueError(f"context_block={self.context_block!r}: the context tokens must be given exactly when "
                             f"context_block is not 'none', got context={'None' if context is None else 'an array'}")
        b, channels = x.shape[0], x.shape[-1]
        dt = self.dtype
        common = dict(dtype=dt, norm_groups=self.norm_groups)
        conv_kw = dict(dtype=dt, impl=self.conv_impl)
        res_kw = dict(kind=self.resblock_type, dropout=self.dropout, fir=self.fir, fir_kernel=tuple(self.fir_kernel),
                      skip_rescale=self.skip_rescale, init_scale=self.init_scale, conv_impl=self.conv_impl,
                      layer_impl=self.layer_impl, **common)
        self_attn = lambda name: AttnBlock(self.num_head_channels, self.skip_rescale, self.init_scale,  # noqa: E731
                                           impl=self.layer_impl, name=name, **common)
        cross_attn = lambda name: lambda h: SpatialTransformer(  # noqa: E731
            self.context_heads, self.norm_groups, dtype=dt, name=name)(h, context, context_mask)
        attn = self_attn if context is None else cross_attn
        resamp_kw = dict(fir=self.fir, fir_kernel=tuple(self.fir_kernel), dtype=dt, conv_impl=self.conv_impl)
        nf, n_levels = self.ch, len(self.ch_mult)

        temb = None
        if self.conditional:
            temb = NoiseEmbedding(nf, 4 * nf, self.embedding_type, self.fourier_scale, dt,
                                  name="noise_embed")(noise_label_input(noise_labels, b))
        if self.num_classes is not None:
            lemb = nn.Embed(self.num_classes + 1, 4 * nf, param_dtype=jnp.float32, dtype=dt,
                            name="label_embed")(label_input(y, self.num_classes, b))
            temb = lemb if temb is None else temb + lemb
        if context_pooled is not None:
            pemb = Dense(4 * nf, dtype=dt, name="context_embed")(jnp.asarray(context_pooled, dt))
            temb = pemb if temb is None else temb + pemb
        if cond is not None:  # cascaded diffusion (Ho et al. 2021): the augmentation level, embedded like the time
            cemb = NoiseEmbedding(nf, 4 * nf, "positional", dtype=dt, name="cond_level_embed")(
                noise_label_input(cond.noise_label, b))
            temb = cemb if temb is None else temb + cemb

        x = x.astype(dt) if cond is None else concat_condition(x, cond).astype(dt)
        pyramid_in = x if self.progressive_input != "none" else None
        hs = [Conv(nf, 3, name="conv_in", **conv_kw)(x)]
        for i in range(n_levels):
            for j in range(self.num_res_blocks):
                h = ResBlock(nf * self.ch_mult[i], name=f"down{i}_res{j}", **res_kw)(hs[-1], temb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = attn(f"down{i}_attn{j}")(h)
                hs.append(h)
            if i == n_levels - 1:
                continue
            if self.resblock_type == "ddpm":
                h = Downsample(with_conv=self.resamp_with_conv, name=f"down{i}_downsample", **resamp_kw)(hs[-1])
            else:
                h = ResBlock(down=True, name=f"down{i}_resdown", **res_kw)(hs[-1], temb, train)
            if self.progressive_input == "input_skip":
                pyramid_in = Downsample(with_conv=False, name=f"down{i}_pyramid", **resamp_kw)(pyramid_in)
                skip = Dense(h.shape[-1], dtype=dt, name=f"down{i}_combine")(pyramid_in)
                h = jnp.concatenate([skip, h], -1) if self.progressive_combine == "cat" else skip + h
            elif self.progressive_input == "residual":
                pyramid_in = Downsample(h.shape[-1], with_conv=True, name=f"down{i}_pyramid", **resamp_kw)(pyramid_in)
                pyramid_in = (pyramid_in + h) / np.sqrt(2.0) if self.skip_rescale else pyramid_in + h
                h = pyramid_in
            hs.append(h)

        h = hs[-1]
        h = ResBlock(name="mid_res0", **res_kw)(h, temb, train)
        h = attn("mid_attn")(h)
        h = ResBlock(name="mid_res1", **res_kw)(h, temb, train)

        out_ch = channels * (2 if self.learn_sigma else 1)
        pyramid = None
        for i in reversed(range(n_levels)):
            for j in range(self.num_res_blocks + 1):
                h = ResBlock(nf * self.ch_mult[i], name=f"up{i}_res{j}", **res_kw)(
                    jnp.concatenate([h, hs.pop()], axis=-1), temb, train)
                if self.attn_every_up_block and h.shape[1] in self.attn_resolutions:
                    h = attn(f"up{i}_attn{j}")(h)
            if not self.attn_every_up_block and h.shape[1] in self.attn_resolutions:
                h = attn(f"up{i}_attn")(h)

            if self.progressive != "none":
                hn = nn.swish(GroupNorm(self.norm_groups, dt, self.layer_impl, name=f"up{i}_pyramid_norm")(h))
                if self.progressive == "output_skip":
                    out = Conv(out_ch, 3, init_scale=self.init_scale, name=f"up{i}_pyramid_conv", **conv_kw)(hn)
                    if pyramid is None:
                        pyramid = out
                    else:
                        pyramid = Upsample(with_conv=False, out_hw=h.shape[1:3], name=f"up{i}_pyramid_up",
                                           **resamp_kw)(pyramid) + out
                elif pyramid is None:  # residual
                    pyramid = Conv(h.shape[-1], 3, name=f"up{i}_pyramid_conv", **conv_kw)(hn)
                else:
                    pyramid = Upsample(h.shape[-1], with_conv=True, out_hw=h.shape[1:3], name=f"up{i}_pyramid_up",
                                       **resamp_kw)(pyramid)
                    pyramid = (pyramid + h) / np.sqrt(2.0) if self.skip_rescale else pyramid + h
                    h = pyramid

            if i != 0:
                target = hs[-1].shape[1:3]
                if self.resblock_type == "ddpm":
                    h = Upsample(with_conv=self.resamp_with_conv, out_hw=target, name=f"up{i}_upsample",
                                 **resamp_kw)(h)
                else:
                    h = ResBlock(up=True, out_hw=target, name=f"up{i}_resup", **res_kw)(h, temb, train)
        assert not hs

        if self.progressive == "output_skip":
            h = pyramid
        else:
            h = nn.swish(GroupNorm(self.norm_groups, dt, self.layer_impl, name="norm_out")(h))
            h = Conv(out_ch, 3, init_scale=self.init_scale, name="conv_out", **conv_kw)(h)
        return h.astype(jnp.float32)
