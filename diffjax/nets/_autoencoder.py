"""The KL autoencoder of latent diffusion (Rombach et al. 2022), laid out as diffusers' ``AutoencoderKL``.

Encoder: ``conv_in``, one down block per entry of ``block_out_channels`` (``layers_per_block`` residual blocks, then
a stride-2 convolution of the input padded by one row and column at the bottom and right, except after the last
block), a middle block (residual block, single-head self-attention, residual block), GroupNorm, SiLU and ``conv_out``
to the posterior's moments; ``quant_conv`` (1x1). The decoder mirrors it: ``post_quant_conv``, ``conv_in``, the middle
block, one up block per level (``layers_per_block + 1`` residual blocks, then nearest x2 upsampling and a 3x3
convolution, except after the last), GroupNorm, SiLU, ``conv_out``. The down factor is ``2 ** (len(block_out_channels)
- 1)``. Parameter names follow diffusers' with ``.N`` folded into ``_N`` (``encoder/down_blocks_0/resnets_1/conv1``),
so that :func:`~diffjax.nets.autoencoder_params_from_diffusers` maps a diffusers state dict one name to one name.

:class:`DiagonalGaussian` is the posterior ``q(z | x) = N(mean, exp(logvar))`` as a pytree: ``sample``, ``mode`` and
the KL divergence to ``N(0, I)``.
"""
from __future__ import annotations

from typing import Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.nets._attention import attention
from diffjax.nets._base import Dtype, add_bias, default_init
from diffjax.nets._conv import Conv
from diffjax.nets._norm import _GroupNormParams

__all__ = ["AutoencoderKL", "DiagonalGaussian", "autoencoder_loss", "RECONSTRUCTION_LOSSES"]

LOGVAR_RANGE = (-30.0, 20.0)  # diffusers' (and latent diffusion's) clip of the posterior's log-variance


@flax.struct.dataclass
class DiagonalGaussian:
    """``N(mean, diag(exp(logvar)))`` over latents ``(B, h, w, C)``; ``logvar`` clipped to ``LOGVAR_RANGE``."""

    mean: jax.Array
    logvar: jax.Array

    @classmethod
    def from_moments(cls, moments: jax.Array) -> "DiagonalGaussian":
        """The first half of the channels of ``moments`` is the mean, the second the log-variance."""
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return cls(mean, jnp.clip(logvar, *LOGVAR_RANGE))

    @property
    def std(self) -> jax.Array:
        return jnp.exp(0.5 * self.logvar)

    def sample(self, key: jax.Array) -> jax.Array:
        """The reparameterised draw ``mean + std * eps``, ``eps ~ N(0, I)``."""
        return self.mean + self.std * jax.random.normal(key, self.mean.shape, self.mean.dtype)

    def mode(self) -> jax.Array:
        return self.mean

    def kl(self) -> jax.Array:
        """``KL(q || N(0, I))`` per example, summed over the latent's elements, shape ``(B,)``.

        .. math:: \\mathrm{KL} = \\tfrac12 \\sum (\\mu^2 + \\sigma^2 - 1 - \\log \\sigma^2)
        """
        terms = jnp.square(self.mean) + jnp.exp(self.logvar) - 1.0 - self.logvar
        return 0.5 * jnp.sum(terms, axis=tuple(range(1, terms.ndim)))


class _Dense(nn.Module):
    """A linear layer with parameters ``kernel (in, out)`` and ``bias (out,)`` (diffusers' attention projections)."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", default_init(), (x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        return add_bias(jnp.einsum("...c,cd->...d", x.astype(self.dtype), kernel.astype(self.dtype)), bias)


class _DownConv(nn.Module):
    """diffusers' ``Downsample2D(padding=0)``: pad one zero row and column at the bottom and right, then a 3x3
    convolution of stride 2 without padding (``(H, W) -> (H // 2, W // 2)`` for even sizes)."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", default_init(), (3, 3, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        y = jax.lax.conv_general_dilated(x.astype(self.dtype), kernel.astype(self.dtype), (2, 2), ((0, 1), (0, 1)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return add_bias(y, bias)


class ResnetBlock(nn.Module):
    """diffusers' ``ResnetBlock2D`` without a time embedding: GN-SiLU-conv1, GN-SiLU-conv2, plus the input (through a
    1x1 ``conv_shortcut`` when the channel count changes)."""

    out_channels: int
    num_groups: int
    dtype: Dtype = jnp.float32
    layer_impl: str = "auto"

    @nn.compact
    def __call__(self, x):
        norm = lambda name: _GroupNormParams(self.num_groups, self.dtype, self.layer_impl, name=name)  # noqa: E731
        h = Conv(self.out_channels, 3, dtype=self.dtype, name="conv1")(nn.silu(norm("norm1")(x)))
        h = Conv(self.out_channels, 3, dtype=self.dtype, name="conv2")(nn.silu(norm("norm2")(h)))
        if x.shape[-1] != self.out_channels:
            x = Conv(self.out_channels, 1, dtype=self.dtype, name="conv_shortcut")(x)
        return x + h


class Attention(nn.Module):
    """diffusers' ``Attention`` of the VAE's middle block: GroupNorm, one head over all ``h*w`` positions
    (``softmax(q k^T / sqrt(C)) v``), ``to_out_0``, plus the input."""

    num_groups: int
    dtype: Dtype = jnp.float32
    layer_impl: str = "auto"

    @nn.compact
    def __call__(self, x):
        b, hgt, wid, c = x.shape
        h = _GroupNormParams(self.num_groups, self.dtype, self.layer_impl, name="group_norm")(x)
        h = h.reshape(b, hgt * wid, 1, c)
        q, k, v = (_Dense(c, self.dtype, name=n)(h) for n in ("to_q", "to_k", "to_v"))
        h = attention(q, k, v, self.layer_impl).reshape(b, hgt, wid, c)
        return x + _Dense(c, self.dtype, name="to_out_0")(h)


class MidBlock(nn.Module):
    """diffusers' ``UNetMidBlock2D`` of the VAE: ``resnets_0``, ``attentions_0`` (unless ``attention=False``),
    ``resnets_1``."""

    num_groups: int
    attention: bool = True
    dtype: Dtype = jnp.float32
    layer_impl: str = "auto"

    @nn.compact
    def __call__(self, x):
        c, kw = x.shape[-1], dict(dtype=self.dtype, layer_impl=self.layer_impl)
        x = ResnetBlock(c, self.num_groups, name="resnets_0", **kw)(x)
        if self.attention:
            x = Attention(self.num_groups, name="attentions_0", **kw)(x)
        return ResnetBlock(c, self.num_groups, name="resnets_1", **kw)(x)


class _Level(nn.Module):
    """One down block (``DownEncoderBlock2D``: resnets, then ``downsamplers_0``) or up block (``UpDecoderBlock2D``:
    resnets, then ``upsamplers_0``)."""

    out_channels: int
    num_resnets: int
    num_groups: int
    resample: str  # "down" | "up" | "" (the last level)
    dtype: Dtype = jnp.float32
    layer_impl: str = "auto"

    @nn.compact
    def __call__(self, x):
        for j in range(self.num_resnets):
            x = ResnetBlock(self.out_channels, self.num_groups, self.dtype, self.layer_impl, name=f"resnets_{j}")(x)
        if self.resample == "down":
            return _Resampler(self.out_channels, "down", self.dtype, name="downsamplers_0")(x)
        if self.resample == "up":
            return _Resampler(self.out_channels, "up", self.dtype, name="upsamplers_0")(x)
        return x


class _Resampler(nn.Module):
    """``downsamplers_0/conv`` or ``upsamplers_0/conv`` (nearest x2 upsampling, then a 3x3 convolution)."""

    features: int
    direction: str
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        if self.direction == "down":
            return _DownConv(self.features, self.dtype, name="conv")(x)
        return Conv(self.features, 3, dtype=self.dtype, upsample=True, name="conv")(x)


class _Stack(nn.Module):
    """The fields the encoder and the decoder share; ``channels``: the latent channels (the encoder's output has
    twice as many: mean and log-variance) or the decoder's image channels."""

    block_out_channels: Sequence[int]
    layers_per_block: int
    channels: int
    num_groups: int
    mid_attention: bool = True
    dtype: Dtype = jnp.float32
    layer_impl: str = "auto"

    def _out(self, h):
        """GroupNorm (``conv_norm_out``) and SiLU."""
        return nn.silu(_GroupNormParams(self.num_groups, self.dtype, self.layer_impl, name="conv_norm_out")(h))

    def _levels(self, h, channels, num_resnets, resample, prefix):
        kw = dict(dtype=self.dtype, layer_impl=self.layer_impl)
        for i, ch in enumerate(channels):
            h = _Level(ch, num_resnets, self.num_groups, "" if i == len(channels) - 1 else resample,
                       name=f"{prefix}_{i}", **kw)(h)
        return h

    def _mid(self, h):
        return MidBlock(self.num_groups, self.mid_attention, self.dtype, self.layer_impl, name="mid_block")(h)


class Encoder(_Stack):
    """``x (B, H, W, C_in) -> moments (B, H/f, W/f, 2 * channels)`` (before ``quant_conv``)."""

    @nn.compact
    def __call__(self, x):
        h = Conv(self.block_out_channels[0], 3, dtype=self.dtype, name="conv_in")(x)
        h = self._mid(self._levels(h, self.block_out_channels, self.layers_per_block, "down", "down_blocks"))
        return Conv(2 * self.channels, 3, dtype=self.dtype, name="conv_out")(self._out(h))


class Decoder(_Stack):
    """``z (B, h, w, latent channels) -> x (B, h*f, w*f, channels)`` (after ``post_quant_conv``)."""

    @nn.compact
    def __call__(self, z):
        h = self._mid(Conv(self.block_out_channels[-1], 3, dtype=self.dtype, name="conv_in")(z))
        h = self._levels(h, tuple(reversed(self.block_out_channels)), self.layers_per_block + 1, "up", "up_blocks")
        return Conv(self.channels, 3, dtype=self.dtype, name="conv_out")(self._out(h))


class AutoencoderKL(nn.Module):
    """The KL autoencoder (diffusers' ``AutoencoderKL`` with ``DownEncoderBlock2D`` / ``UpDecoderBlock2D`` blocks).

    ``model.apply(v, x, method="encode")`` gives the posterior :class:`DiagonalGaussian`, ``method="decode"`` maps
    latents to images, and ``model.apply(v, x, key)`` returns ``(reconstruction, posterior)`` of a posterior sample
    (its mode with ``key=None``). Images NHWC in ``[-1, 1]``; sides divisible by :attr:`down_factor`.
    ``norm_num_groups`` must divide every entry of ``block_out_channels``.
    """

    block_out_channels: Sequence[int] = (64,)
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 32
    in_channels: int = 3
    out_channels: int = 3
    mid_attention: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    dtype: Dtype = jnp.float32
    layer_impl: str = "auto"

    @property
    def down_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    def latent_shape(self, image_shape: Sequence[int]) -> tuple:
        """``(B, H, W, C) -> (B, H / f, W / f, latent_channels)``; ``ValueError`` when ``f`` does not divide H, W."""
        b, hgt, wid, _ = image_shape
        f = self.down_factor
        if hgt % f or wid % f:
            raise ValueError(f"image size {hgt}x{wid} must be divisible by the autoencoder's down factor {f} "
                             f"(2 ** (len(block_out_channels) - 1), block_out_channels={tuple(self.block_out_channels)})")
        return (b, hgt // f, wid // f, self.latent_channels)

    def setup(self):
        channels = tuple(int(c) for c in self.block_out_channels)
        if not channels or any(c < 1 or c % self.norm_num_groups for c in channels):
            raise ValueError(f"block_out_channels must be a non-empty sequence of channel counts divisible by "
                             f"norm_num_groups={self.norm_num_groups}, got {tuple(self.block_out_channels)}")
        for name in ("layers_per_block", "latent_channels", "norm_num_groups", "in_channels", "out_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        common = dict(block_out_channels=channels, layers_per_block=self.layers_per_block,
                      num_groups=self.norm_num_groups, mid_attention=self.mid_attention, dtype=self.dtype,
                      layer_impl=self.layer_impl)
        self.encoder = Encoder(channels=self.latent_channels, **common)
        self.decoder = Decoder(channels=self.out_channels, **common)
        if self.use_quant_conv:
            self.quant_conv = Conv(2 * self.latent_channels, 1, dtype=self.dtype)
        if self.use_post_quant_conv:
            self.post_quant_conv = Conv(self.latent_channels, 1, dtype=self.dtype)

    def encode(self, x) -> DiagonalGaussian:
        self.latent_shape(x.shape)
        if x.shape[-1] != self.in_channels:
            raise ValueError(f"x must have in_channels={self.in_channels} channels, got shape {x.shape}")
        moments = self.encoder(x)
        if self.use_quant_conv:
            moments = self.quant_conv(moments)
        return DiagonalGaussian.from_moments(moments.astype(jnp.float32))

    def decode(self, z):
        if z.shape[-1] != self.latent_channels:
            raise ValueError(f"z must have latent_channels={self.latent_channels} channels, got shape {z.shape}")
        if self.use_post_quant_conv:
            z = self.post_quant_conv(z)
        return self.decoder(z).astype(jnp.float32)

    def __call__(self, x, key=None):
        posterior = self.encode(x)
        z = posterior.mode() if key is None else posterior.sample(key)
        return self.decode(z), posterior


RECONSTRUCTION_LOSSES = {
    "l1": lambda d: jnp.abs(d),
    "l2": lambda d: jnp.square(d),
}


def autoencoder_loss(x, reconstruction, posterior: DiagonalGaussian, *, reconstruction_loss: str = "l1",
                     kl_weight: float = 1e-6):
    """The KL autoencoder's objective without its adversarial and perceptual terms: the per-pixel reconstruction
    error summed over each image, plus ``kl_weight`` times the posterior's KL to ``N(0, I)``, averaged over the batch
    (Rombach et al. 2022, the "KL-reg." autoencoder). Returns ``(loss, {"reconstruction", "kl", "mse"})``, the last
    three per example means (``mse`` per pixel, for PSNR).

    .. math:: L = \\mathbb{E}_x \\big[ \\textstyle\\sum |x - D(z)|^p + \\beta\\, \\mathrm{KL}(q(z|x) \\| N(0, I)) \\big]
    """
    if reconstruction_loss not in RECONSTRUCTION_LOSSES:
        raise ValueError(f"reconstruction_loss={reconstruction_loss!r} is not known; allowed values: "
                         f"{sorted(RECONSTRUCTION_LOSSES)}")
    diff = reconstruction.astype(jnp.float32) - x.astype(jnp.float32)
    axes = tuple(range(1, x.ndim))
    rec = jnp.sum(RECONSTRUCTION_LOSSES[reconstruction_loss](diff), axis=axes)
    kl = posterior.kl()
    loss = jnp.mean(rec + kl_weight * kl)
    return loss, {"reconstruction": jnp.mean(rec), "kl": jnp.mean(kl), "mse": jnp.mean(jnp.square(diff))}
