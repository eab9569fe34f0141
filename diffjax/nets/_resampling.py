"""x2 resampling of NHWC images: FIR filtering (StyleGAN2's ``upfirdn2d``), nearest neighbour and average pooling."""
from __future__ import annotations

from typing import Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def _fir_taps(fir_kernel: Sequence[int], gain: float) -> np.ndarray:
    """The 1-D factor of the separable FIR kernel ``outer(k, k) / sum(k)^2``, scaled by ``gain`` per axis and
    reversed: the filters below are correlations, upfirdn2d's are convolutions."""
    k = np.asarray(fir_kernel, np.float32)
    return (k / k.sum() * gain)[::-1]


def _pad_axis(x, axis: int, lo: int, hi: int):
    widths = [(0, 0)] * x.ndim
    widths[axis] = (lo, hi)
    return jnp.pad(x, widths)


def _fir_up_1d(x, g: np.ndarray, axis: int, pad: Tuple[int, int]):
    """upfirdn along ``axis`` with up=2: zero insertion, padding ``pad``, correlation with ``g``, computed per
    output phase from the original samples (the taps that meet inserted zeros are skipped) and interleaved."""
    n, taps = x.shape[axis], len(g)
    n_out = 2 * n + pad[0] + pad[1] - taps
    half = -(-n_out // 2)
    phases = [[(t, (a + t - pad[0]) // 2) for t in range(taps) if (a + t - pad[0]) % 2 == 0] for a in (0, 1)]
    offsets = [o for ph in phases for _, o in ph]
    lo, hi = max(0, -min(offsets)), max(0, max(offsets) + half - n)
    xp = _pad_axis(x, axis, lo, hi)
    ys = [sum(float(g[t]) * jax.lax.slice_in_dim(xp, o + lo, o + lo + half, axis=axis) for t, o in ph)
          for ph in phases]
    shape = list(x.shape)
    shape[axis] = 2 * half
    return jax.lax.slice_in_dim(jnp.stack(ys, axis=axis + 1).reshape(shape), 0, n_out, axis=axis)


def _fir_down_1d(x, g: np.ndarray, axis: int, pad: Tuple[int, int]):
    """upfirdn along ``axis`` with down=2: padding ``pad``, correlation with ``g``, every second sample; the two
    input phases are taken by a reshape (not strided slices, whose gradients are slow interior pads)."""
    taps = len(g)
    n_out = (x.shape[axis] + pad[0] + pad[1] - taps) // 2 + 1
    length = 2 * (n_out + (taps - 1) // 2 + 1)
    xp = _pad_axis(x, axis, pad[0], length - x.shape[axis] - pad[0])
    shape = list(xp.shape)
    shape[axis:axis + 1] = [length // 2, 2]
    phases = [jax.lax.index_in_dim(xp.reshape(shape), a, axis + 1, keepdims=False) for a in (0, 1)]
    return sum(float(g[t]) * jax.lax.slice_in_dim(phases[t % 2], t // 2, t // 2 + n_out, axis=axis)
               for t in range(taps))


def fir_upsample_2d(x: jax.Array, fir_kernel: Sequence[int] = (1, 3, 3, 1)) -> jax.Array:
    """Upsample by 2 with a FIR filter (StyleGAN2's ``upfirdn2d(up=2)``, unit DC gain): ``(B,H,W,C)->(B,2H,2W,C)``.

    Separable and polyphase (element-wise shifted sums that XLA fuses): XLA:CPU's depthwise convolution with input
    dilation ran ~100x slower (32x32x128 output, batch 32: 380 -> 4 ms forward)."""
    g = _fir_taps(fir_kernel, 2.0)
    p = len(fir_kernel) - 2
    pad = ((p + 1) // 2 + 1, p // 2 + 1)  # +1 on the right: zero insertion leaves a trailing zero
    return _fir_up_1d(_fir_up_1d(x, g, 1, pad), g, 2, pad)


def fir_downsample_2d(x: jax.Array, fir_kernel: Sequence[int] = (1, 3, 3, 1)) -> jax.Array:
    """Downsample by 2 with a FIR filter (``upfirdn2d(down=2)``): ``(B,H,W,C)->(B,ceil(H/2),ceil(W/2),C)``;
    separable, element-wise shifted sums (as :func:`fir_upsample_2d`)."""
    g = _fir_taps(fir_kernel, 1.0)
    p = len(fir_kernel) - 2
    x = _fir_down_1d(x, g, 1, ((p + 1) // 2, p // 2 + x.shape[1] % 2))
    return _fir_down_1d(x, g, 2, ((p + 1) // 2, p // 2 + x.shape[2] % 2))


def naive_upsample_2d(x: jax.Array) -> jax.Array:
    """Nearest-neighbour upsampling by 2."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def naive_downsample_2d(x: jax.Array) -> jax.Array:
    """2x2 average pooling (ceil size for odd inputs)."""
    return nn.avg_pool(x, (2, 2), strides=(2, 2), padding="SAME")
