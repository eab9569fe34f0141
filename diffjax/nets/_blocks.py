"""The UNet's resampling layers (:class:`Upsample`, :class:`Downsample`) and residual block (:class:`ResBlock`)."""
from __future__ import annotations

from typing import Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from diffjax.nets._base import Dense, Dtype
from diffjax.nets._conv import Conv
from diffjax.nets._norm import GroupNorm
from diffjax.nets._resampling import fir_downsample_2d, fir_upsample_2d, naive_downsample_2d, naive_upsample_2d


def _crop(x, hw):
    return x if hw is None else x[:, : hw[0], : hw[1]]


def _is_doubled(x, out_hw) -> bool:  # x2 upsampling of x needs no crop to reach out_hw
    return out_hw is None or tuple(out_hw) == (2 * x.shape[1], 2 * x.shape[2])


class Upsample(nn.Module):
    """x2 upsampling (nearest or FIR), optionally followed by a 3x3 conv; ``out_hw`` crops odd targets (7 -> 8 -> 7)."""

    out_ch: Optional[int] = None
    with_conv: bool = True
    fir: bool = False
    fir_kernel: Tuple[int, ...] = (1, 3, 3, 1)
    out_hw: Optional[Tuple[int, int]] = None
    dtype: Dtype = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x):
        out_ch = self.out_ch or x.shape[-1]
        if self.with_conv and not self.fir and _is_doubled(x, self.out_hw):
            return Conv(out_ch, 3, dtype=self.dtype, impl=self.conv_impl, upsample=True, name="conv")(x)
        h = fir_upsample_2d(x, self.fir_kernel) if self.fir else naive_upsample_2d(x)
        h = _crop(h, self.out_hw)
        if self.with_conv:
            h = Conv(out_ch, 3, dtype=self.dtype, impl=self.conv_impl, name="conv")(h)
        return h


class Downsample(nn.Module):
    """x2 downsampling: stride-2 3x3 conv (after a FIR blur if ``fir``), or average pooling / FIR without conv."""

    out_ch: Optional[int] = None
    with_conv: bool = True
    fir: bool = False
    fir_kernel: Tuple[int, ...] = (1, 3, 3, 1)
    dtype: Dtype = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x):
        out_ch = self.out_ch or x.shape[-1]
        if self.fir:
            x = fir_downsample_2d(x, self.fir_kernel)
            if self.with_conv:
                x = Conv(out_ch, 3, dtype=self.dtype, impl=self.conv_impl, name="conv")(x)
            return x
        if self.with_conv:
            return Conv(out_ch, 3, stride=2, dtype=self.dtype, impl=self.conv_impl, name="conv")(x)
        return naive_downsample_2d(x)


class ResBlock(nn.Module):
    """Residual block conditioned on the noise embedding.

    ``kind="ddpm"``: GN-act-conv, + Dense(act(temb)), GN-act-dropout-conv, 1x1 shortcut when channels change (DDPM).
    ``kind="biggan"``: the same with optional up/down-sampling of both branches inside the block (BigGAN / NCSN++).
    ``skip_rescale`` divides the sum by sqrt(2) (NCSN++).
    """

    out_ch: Optional[int] = None
    kind: str = "ddpm"
    up: bool = False
    down: bool = False
    out_hw: Optional[Tuple[int, int]] = None
    dropout: float = 0.1
    fir: bool = False
    fir_kernel: Tuple[int, ...] = (1, 3, 3, 1)
    skip_rescale: bool = False
    init_scale: float = 0.0
    norm_groups: int = 32
    dtype: Dtype = jnp.float32
    conv_impl: str = "auto"
    layer_impl: str = "auto"

    @nn.compact
    def __call__(self, x, temb, train: bool):
        c = x.shape[-1]
        out_ch = self.out_ch or c
        x = x.astype(self.dtype)
        h = nn.swish(GroupNorm(self.norm_groups, self.dtype, self.layer_impl, name="norm0")(x))
        # Nearest upsampling without a crop moves into conv0 (Conv(upsample=True)) and, on the shortcut, after the
        # 1x1 projection (they commute): the same function, 4x fewer shortcut multiply-adds.
        late_up = self.up and not self.fir and _is_doubled(x, self.out_hw)
        if self.up and not late_up:
            up = (lambda z: fir_upsample_2d(z, self.fir_kernel)) if self.fir else naive_upsample_2d
            h, x = _crop(up(h), self.out_hw), _crop(up(x), self.out_hw)
        elif self.down:
            down = (lambda z: fir_downsample_2d(z, self.fir_kernel)) if self.fir else naive_downsample_2d
            h, x = down(h), down(x)
        h = Conv(out_ch, 3, dtype=self.dtype, impl=self.conv_impl, upsample=late_up, name="conv0")(h)
        if temb is not None:
            h = h + Dense(out_ch, dtype=self.dtype, name="temb_proj")(nn.swish(temb))[:, None, None, :]
        h = nn.swish(GroupNorm(self.norm_groups, self.dtype, self.layer_impl, name="norm1")(h))
        h = nn.Dropout(self.dropout)(h, deterministic=not train)
        h = Conv(out_ch, 3, init_scale=self.init_scale, dtype=self.dtype, impl=self.conv_impl, name="conv1")(h)
        if c != out_ch or self.up or self.down:
            # DDPM's NIN shortcut (init 0.1); NCSN++'s BigGAN block uses a 1x1 conv with unit init.
            scale = 0.1 if self.kind == "ddpm" else 1.0
            x = Dense(out_ch, init_scale=scale, dtype=self.dtype, name="shortcut")(x)
        if late_up:
            x = naive_upsample_2d(x)
        out = x + h
        return out / np.sqrt(2.0) if self.skip_rescale else out
