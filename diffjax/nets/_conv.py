"""The 2-D convolution layer (:class:`Conv`) and the kernels it chooses between (``CONV_IMPLS``): XLA's convolution,
sub-pixel convolution of an upsampled input, and XLA's convolution with hand-written weight or input tangents."""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffjax.nets._base import Dtype, add_bias, default_init
from diffjax.nets._resampling import naive_upsample_2d

CONV_IMPLS = ("auto", "xla", "matmul")

_DN = ("NHWC", "HWIO", "NHWC")


def _same_padding(k: int):
    return ((k // 2, (k - 1) // 2),) * 2


def _out_size(n: int, stride: int) -> int:
    return -(-n // stride)


def _shifted_inputs(x, k: int, stride: int):
    """The ``k*k`` shifted (and strided) views of the padded input, each shaped like the conv output's
    ``(B, H_out, W_out, C)``, in kernel order ``(kh, kw)``."""
    b, h, w, c = x.shape
    ho, wo = _out_size(h, stride), _out_size(w, stride)
    xp = jnp.pad(x, ((0, 0),) + _same_padding(k) + ((0, 0),))
    return [jax.lax.slice(xp, (0, i, j, 0), (b, i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, c),
                          (1, stride, stride, 1)) for i in range(k) for j in range(k)]


def conv_xla(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
    """``lax.conv_general_dilated``: NHWC input, HWIO kernel, symmetric ``k // 2`` padding."""
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), _same_padding(kernel.shape[0]),
                                        dimension_numbers=_DN)


def _strided_taps(k: int, stride: int, phase: int, n_in: int):
    """For the input phase ``x[phase::stride]`` of a ``k``-tap filter with padding ``k // 2`` applied with stride
    ``stride`` to ``n_in`` samples: the indices of the taps that read that phase (in offset order) and the
    ``(low, high)`` padding of a stride-1 filter over the phase. ``None`` when no tap reads it."""
    p = k // 2
    taps = [t for t in range(k) if (t - p) % stride == phase]
    if not taps:
        return None
    offsets = [(t - p - phase) // stride for t in taps]
    n_phase, n_out = -(-(n_in - phase) // stride), _out_size(n_in, stride)
    lo = -offsets[0]
    return taps, (lo, n_out - n_phase - lo + len(taps) - 1)


def conv_polyphase(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """:func:`conv_xla` with stride ``stride`` as a sum of stride-1 convolutions of the input's polyphase components
    ``x[:, a::stride, b::stride]``, each with the kernel taps that read it. The same multiply-adds as the strided
    convolution; its transpose (the input gradient) is stride-1 convolutions and an interleave."""
    out = None
    for a in range(stride):
        ra = _strided_taps(kernel.shape[0], stride, a, x.shape[1])
        for b in range(stride):
            rb = _strided_taps(kernel.shape[1], stride, b, x.shape[2])
            if ra is None or rb is None:
                continue
            k_ab = kernel[np.array(ra[0])][:, np.array(rb[0])]
            y = jax.lax.conv_general_dilated(x[:, a::stride, b::stride], k_ab, (1, 1), (ra[1], rb[1]),
                                             dimension_numbers=_DN)
            out = y if out is None else out + y
    return out


def _upsampled_taps(k: int, phase: int):
    """For output phase ``phase`` (0 or 1) of a ``k``-tap filter with padding ``k // 2`` over a signal upsampled x2
    by repetition: the matrix ``(n, k)`` that sums the taps reading the same input sample, and the ``(low, high)``
    padding of the ``n``-tap filter over the original signal."""
    offsets = [(phase + d) // 2 for d in range(-(k // 2), (k - 1) // 2 + 1)]
    lo, hi = min(offsets), max(offsets)
    m = np.zeros((hi - lo + 1, k), np.float32)
    m[np.array(offsets) - lo, np.arange(k)] = 1.0
    return m, (-lo, hi)


def conv_upsampled(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``conv_xla(naive_upsample_2d(x), kernel)`` without forming the upsampled image: each of the four output
    phases ``y[:, a::2, b::2]`` is a small convolution of ``x`` with the taps of ``kernel`` that read the same input
    pixel summed (sub-pixel convolution; for a 3x3 kernel, 2x2 kernels: 16 instead of 36 multiply-adds per input
    pixel and channel pair). The taps are summed in ``kernel``'s dtype (pass float32 parameters) and then cast to
    ``x``'s. Equal to the direct form up to float rounding, gradients included."""
    b, h, w, _ = x.shape
    phases = []
    for a in (0, 1):
        ma, pad_a = _upsampled_taps(kernel.shape[0], a)
        row = []
        for c in (0, 1):
            mc, pad_c = _upsampled_taps(kernel.shape[1], c)
            k_ac = jnp.einsum("ik,jl,klcd->ijcd", ma, mc, kernel).astype(x.dtype)
            row.append(jax.lax.conv_general_dilated(x, k_ac, (1, 1), (pad_a, pad_c), dimension_numbers=_DN))
        phases.append(jnp.stack(row, axis=3))  # (B, H, W, 2, C_out)
    return jnp.stack(phases, axis=2).reshape(b, 2 * h, 2 * w, kernel.shape[-1])  # (B, H, 2, W, 2, C) -> image


def conv_shifted_matmuls(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
    """The same convolution as a sum of ``k*k`` matmuls of shifted inputs with ``kernel[i, j]``.

    .. math:: y = \\sum_{i,j} \\mathrm{shift}_{ij}(x) \\, W_{ij}

    Linear in ``kernel``, so its transpose (the weight gradient) is ``k*k`` matmuls
    ``shift_ij(x)^T dy`` with the batch and spatial positions as the contraction dimension.
    """
    k = kernel.shape[0]
    out = None
    for (i, j), xs in zip(((i, j) for i in range(k) for j in range(k)), _shifted_inputs(x, k, stride)):
        term = jnp.einsum("bhwc,cd->bhwd", xs, kernel[i, j])
        out = term if out is None else out + term
    return out


def _conv_with_tangent(x_term, k_term, name: str, doc: str):
    """XLA's convolution ``f(x, kernel, stride)`` as a ``custom_jvp`` whose tangent is
    ``x_term(x_dot, kernel, stride) + k_term(x, k_dot, stride)`` (both linear: reverse mode transposes them)."""

    @functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
    def conv(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
        return conv_xla(x, kernel, stride)

    @functools.partial(conv.defjvp, symbolic_zeros=True)
    def _jvp(stride, primals, tangents):
        (x, kernel), (x_dot, k_dot) = primals, tangents
        y = conv(x, kernel, stride)
        zero = jax.custom_derivatives.SymbolicZero
        parts = ([] if isinstance(x_dot, zero) else [x_term(x_dot, kernel, stride)]) + \
                ([] if isinstance(k_dot, zero) else [k_term(x, k_dot, stride)])
        return y, sum(parts[1:], parts[0]) if parts else jnp.zeros_like(y)

    conv.__name__ = conv.__qualname__ = name
    conv.__doc__ = doc
    return conv


conv_matmul_grad = _conv_with_tangent(
    conv_xla, conv_shifted_matmuls, "conv_matmul_grad",
    """XLA's convolution whose kernel tangent is :func:`conv_shifted_matmuls`, so that the weight gradient
    (its transpose) is ``k*k`` large matmuls instead of XLA's CPU backward-filter convolution (~7 GFLOP/s on a
    2-core CPU). Forward values and input gradients are XLA's own; weight gradients equal XLA's up to float
    rounding. Forward- and reverse-mode differentiable to any order. ``conv_matmul_grad(x, kernel, stride=1)``.""")

conv_polyphase_grad = _conv_with_tangent(
    conv_polyphase, conv_xla, "conv_polyphase_grad",
    """XLA's strided convolution whose input tangent is :func:`conv_polyphase`, so that the input gradient (its
    transpose) is stride-1 convolutions instead of XLA's input-dilated one (~2x slower on XLA:CPU: 32x32x128, batch
    32, gradients 68 -> 42 ms). Forward values and weight gradients are XLA's own; input gradients equal XLA's up to
    float rounding. Forward- and reverse-mode differentiable to any order. ``conv_polyphase_grad(x, kernel,
    stride)``.""")


def _use_matmul(impl: str) -> bool:
    # "auto" uses XLA's convolution for weight gradients everywhere: with jaxlib 0.10.2 on this 2-core CPU it trains
    # faster than the matmul weight gradient (small32, batch 32: 6.8 vs 5.4 images/s; experiments/bench/README.md).
    return impl == "matmul"


# Below this many input positions (batch x height x width) the four small convolutions of conv_upsampled cost more
# than the one large one (XLA:CPU, 256 channels: 0.3-0.8x the speed at 128-512 positions, 1.2-1.7x from 1024 up).
SUBPIXEL_MIN_POSITIONS = 1024


def _conv(x, kernel, stride: int, impl: str):
    if kernel.shape[:2] == (1, 1) and stride == 1:
        return jnp.einsum("...c,cd->...d", x, kernel[0, 0])
    if _use_matmul(impl):
        return conv_matmul_grad(x, kernel, stride)
    if stride > 1 and impl == "auto":
        return conv_polyphase_grad(x, kernel, stride)
    return conv_xla(x, kernel, stride)


class Conv(nn.Module):
    """2-D convolution, NHWC, ``SAME``-size output with symmetric padding ``k // 2`` (PyTorch's alignment).

    ``impl="auto"`` (default) and ``impl="xla"`` use ``lax.conv_general_dilated``; ``impl="matmul"`` uses
    :func:`conv_matmul_grad`, whose weight gradient is ``k*k`` matmuls (an option for CPU builds whose
    backward-filter convolution is slow; measured slower than XLA's with jaxlib 0.10.2). Forward values are
    identical; the parameters are the same.

    ``upsample=True`` convolves the x2 nearest-neighbour upsampling of the input (DDPM's upsampling layer); with
    ``impl="auto"`` as :func:`conv_upsampled` (never forms the upsampled image; ~2x faster forward and backward for
    3x3 kernels) when the input has at least ``SUBPIXEL_MIN_POSITIONS`` positions, otherwise and with ``"xla"`` /
    ``"matmul"`` literally, upsampling first. Strided convolutions with ``impl="auto"`` use
    :func:`conv_polyphase_grad` (the same forward, a faster input gradient).
    """

    features: int
    kernel_size: int = 3
    stride: int = 1
    init_scale: float = 1.0
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    impl: str = "auto"
    upsample: bool = False

    @nn.compact
    def __call__(self, x):
        k, c = self.kernel_size, x.shape[-1]
        if self.upsample and self.stride != 1:
            raise ValueError(f"Conv: upsample=True needs stride=1, got stride={self.stride}")
        kernel = self.param("kernel", default_init(self.init_scale), (k, k, c, self.features), jnp.float32)
        x = x.astype(self.dtype)
        if self.upsample and self.impl == "auto" and x.shape[0] * x.shape[1] * x.shape[2] >= SUBPIXEL_MIN_POSITIONS:
            y = conv_upsampled(x, kernel)  # taps summed in float32, then cast
        else:
            y = _conv(naive_upsample_2d(x) if self.upsample else x, kernel.astype(self.dtype), self.stride, self.impl)
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
            y = add_bias(y, bias)
        return y
