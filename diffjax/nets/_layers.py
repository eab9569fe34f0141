"""Building blocks of the score networks: embeddings, convolutions, normalisation, attention, residual blocks,
FIR / conv resampling.

Layouts follow DDPM (Ho et al. 2020) and score-SDE's NCSN++ / DDPM++ (Song et al. 2021, appendix H). Parameters are
always float32 (``param_dtype``); ``dtype`` is the compute dtype. Images are NHWC.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
CONV_IMPLS = ("auto", "xla", "matmul")
# "fused": the CPU-tuned attention and GroupNorm kernels, custom JVPs whose transposes are hand-written backward
# passes; "reference": plain JAX formulas; "auto": fused on the CPU backend. Both support every transformation
# (jax.grad, jax.jvp, jax.jacfwd, vmap and their compositions) with the same values.
LAYER_IMPLS = ("auto", "fused", "reference")


def use_fused(impl: str) -> bool:
    return impl == "fused" or (impl == "auto" and jax.default_backend() == "cpu")


def default_init(scale: float = 1.0):
    """DDPM's initializer: uniform variance scaling over ``fan_avg``; ``scale=0`` means ``1e-10`` (near-zero init)."""
    scale = 1e-10 if scale == 0 else scale
    return nn.initializers.variance_scaling(scale, "fan_avg", "uniform")


def num_groups_for(channels: int, max_groups: int = 32) -> int:
    """The largest group count ``<= max_groups`` that divides ``channels`` (32 for every channel count of the
    reference CIFAR-10 nets)."""
    g = max(1, min(max_groups, channels))
    while channels % g:
        g -= 1
    return g


# ----------------------------------------------------------------------------------------------- embeddings


def timestep_embedding(labels: jax.Array, dim: int, *, max_positions: float = 10000.0) -> jax.Array:
    """DDPM's sinusoidal embedding of (possibly fractional) noise labels, shape ``(batch,) -> (batch, dim)``.

    .. math:: e_{2j} = \\sin(l \\, m^{-j/(d/2-1)}), \\; e_{2j+1} = \\cos(\\cdot)
    """
    labels = jnp.asarray(labels, jnp.float32)
    half = dim // 2
    freqs = jnp.exp(-math.log(max_positions) / max(half - 1, 1) * jnp.arange(half, dtype=jnp.float32))
    args = labels[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class GaussianFourierProjection(nn.Module):
    """Random Fourier features of the noise label (NCSN++; Tancik et al. 2020). The frequencies ``W ~ N(0, scale^2)``
    are a parameter that is never trained (gradient stopped), as in score-SDE. Output ``(batch, 2 * embedding_size)``."""

    embedding_size: int = 256
    scale: float = 16.0

    @nn.compact
    def __call__(self, labels):
        w = self.param("W", nn.initializers.normal(stddev=self.scale), (self.embedding_size,), jnp.float32)
        w = jax.lax.stop_gradient(w)
        proj = jnp.asarray(labels, jnp.float32)[:, None] * w[None, :] * (2 * np.pi)
        return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


class NoiseEmbedding(nn.Module):
    """Noise-label embedding -> ``Dense(4 ch) -> act -> Dense(4 ch)`` (DDPM / NCSN++ time MLP)."""

    dim: int
    out_dim: int
    embedding_type: str = "positional"
    fourier_scale: float = 16.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, labels):
        if self.embedding_type == "fourier":
            emb = GaussianFourierProjection(self.dim, self.fourier_scale, name="fourier")(labels)
        else:
            emb = timestep_embedding(labels, self.dim)
        emb = Dense(self.out_dim, dtype=self.dtype, name="dense0")(emb)
        return Dense(self.out_dim, dtype=self.dtype, name="dense1")(nn.swish(emb))


# -------------------------------------------------------------------------------------------- dense / conv


class Dense(nn.Module):
    """Dense layer (also score-SDE's ``NIN``, a 1x1 convolution) with DDPM init and float32 parameters; the
    parameters of ``flax.linen.Dense`` (``Dense_0/{kernel, bias}``), the bias added by :func:`add_bias`."""

    features: int
    init_scale: float = 1.0
    use_bias: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        return _DenseParams(self.features, self.init_scale, self.use_bias, self.dtype, name="Dense_0")(x)


class _DenseParams(nn.Module):
    """``x @ kernel + bias`` with ``flax.linen.Dense``'s parameters (``kernel (in, out)``, ``bias (out,)``) and
    :func:`add_bias` for the bias."""

    features: int
    init_scale: float
    use_bias: bool
    dtype: Dtype

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", default_init(self.init_scale), (x.shape[-1], self.features), jnp.float32)
        y = jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype), (((x.ndim - 1,), (0,)), ((), ())))
        if self.use_bias:
            y = add_bias(y, self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32))
        return y


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


def group_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, num_groups: int, *, epsilon: float = 1e-6):
    """GroupNorm of NHWC ``x`` (Wu & He 2018) written as one per-(example, channel) affine map ``x * a + b``.

    Statistics in float32 from per-channel sums of ``x`` and ``x^2`` (``var = E[x^2] - E[x]^2``, as flax's
    ``GroupNorm`` computes it by default); the same values as ``flax.linen.GroupNorm`` up to float rounding, but a
    single fused pass over ``x`` forward and backward (10x faster forward on a 2-core CPU at 32x32x64).
    """
    return _group_norm_fwd(x, scale, bias, num_groups, epsilon)[0]


def _expand_bc(a, x):  # (B, C) -> broadcastable against (B, ..., C)
    return a.reshape((a.shape[0],) + (1,) * (x.ndim - 2) + (a.shape[-1],))


def sum_spatial(a: jax.Array, b: Optional[jax.Array] = None) -> jax.Array:
    """``a.sum(spatial axes)`` (or ``(a * b).sum(...)``) of ``(B, ..., C)`` arrays, shape ``(B, C)``, as a batched
    product with a row of ones (float32 accumulation). With YNNPACK's reduce fusion off (``diffjax._xla_flags``:
    it miscompiles), XLA:CPU runs a matrix product several times faster than its own reduction over many rows."""
    a3 = a.reshape(a.shape[0], -1, a.shape[-1])
    if b is not None:
        a3 = a3 * b.reshape(a3.shape)
    ones = jnp.ones((a3.shape[0], 1, a3.shape[1]), a3.dtype)
    return jax.lax.dot_general(ones, a3, (((2,), (1,)), ((0,), (0,))), preferred_element_type=jnp.float32)[:, 0]


@jax.custom_jvp
def add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
    """``y + bias`` over the last axis, differentiated so that the bias gradient is ``ones @ dy`` (a matrix product,
    see :func:`sum_spatial`) rather than a reduction over the leading axes; every transformation applies."""
    return y + bias.astype(y.dtype)


@add_bias.defjvp
def _add_bias_jvp(primals, tangents):
    y, bias = primals
    y_dot, b_dot = tangents
    rows = jnp.ones((math.prod(y.shape[:-1]),), y.dtype)
    # the outer product transposes to ones @ dy
    return add_bias(y, bias), y_dot + jnp.einsum("m,c->mc", rows, b_dot.astype(y.dtype)).reshape(y.shape)


def _group_sizes(x, num_groups):
    """``(channels per group, elements per (example, group))`` of NHWC-like ``x``."""
    per_group = x.shape[-1] // num_groups
    return per_group, math.prod(x.shape[1:-1]) * per_group


def _group_stats(xf, num_groups):
    b = xf.shape[0]
    per_group, n = _group_sizes(xf, num_groups)
    s1, s2 = sum_spatial(xf), sum_spatial(xf, xf)
    mean = s1.reshape(b, num_groups, per_group).sum(-1) / n
    mean_sq = s2.reshape(b, num_groups, per_group).sum(-1) / n
    return mean, mean_sq


def _group_norm_fwd(x, scale, bias, num_groups, epsilon):
    per_group = x.shape[-1] // num_groups
    xf = x.astype(jnp.float32)
    mean, mean_sq = _group_stats(xf, num_groups)
    inv = jax.lax.rsqrt(jnp.maximum(mean_sq - jnp.square(mean), 0.0) + epsilon)
    a = jnp.repeat(inv, per_group, axis=1) * scale
    shift = bias - jnp.repeat(mean, per_group, axis=1) * a
    return (xf * _expand_bc(a, x) + _expand_bc(shift, x)).astype(x.dtype), (x, scale, mean, inv)


def group_norm_fused(x, scale, bias, num_groups: int, epsilon: float = 1e-6):
    """:func:`group_norm` as a ``custom_jvp`` with a hand-written linear tangent (:func:`_group_norm_tangent`) whose
    transpose, the gradient, is two per-(example, channel) sums (``sum dy``, ``sum dy * x``) and one fused pass
    ``dx = k_dy dy + k_x x + k_0``: 3-8% faster small32 train step on the CPU than differentiating
    :func:`group_norm` (interleaved A/B runs). Every transformation applies (``jax.grad``, ``jax.jvp``,
    ``jax.jacfwd``, ``vmap`` and their compositions)."""
    return _group_norm_aux(x, scale, bias, num_groups, epsilon)[0]


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4))
def _group_norm_aux(x, scale, bias, num_groups, epsilon):
    """``(y, mean (B, G), inv (B, G))``: :func:`group_norm` and its group means and inverse standard deviations."""
    y, (_, _, mean, inv) = _group_norm_fwd(x, scale, bias, num_groups, epsilon)
    return y, mean, inv


def _broadcast_bc(a, x):
    """``(B, C) -> x.shape`` as an outer product with a column of ones (``(B, S) x (B, C)``): its transpose, the sum
    over the spatial positions, is then a matrix product (:func:`sum_spatial`) rather than XLA:CPU's slow reduction."""
    ones = jnp.ones((x.shape[0], math.prod(x.shape[1:-1])), a.dtype)
    return jnp.einsum("bs,bc->bsc", ones, a).reshape(x.shape)


def _group_norm_tangent(x, scale, mean, inv, x_dot, scale_dot, bias_dot, num_groups):
    """The tangent ``(dy, dmean, dinv)`` of :func:`group_norm`, linear in ``(x_dot, scale_dot, bias_dot)``. With
    ``y = x a + c``, ``a = inv * scale``, ``c = bias - mean * a`` per (example, channel):

    .. math:: \\dot y = \\dot x \\, a + x \\, \\dot a + \\dot c

    The spatial sums of ``x_dot`` transpose to broadcasts and the broadcasts of ``a_dot`` and ``c_dot`` to matrix
    products (:func:`_broadcast_bc`), so that the gradient is the sums ``sum dy``, ``sum dy * x`` and one fused pass.
    """
    b = x.shape[0]
    per_group, n = _group_sizes(x, num_groups)
    xf, dxf = x.astype(jnp.float32), x_dot.astype(jnp.float32)
    axes = tuple(range(1, x.ndim - 1))
    group_sum = lambda a: a.reshape(b, num_groups, per_group).sum(-1)  # noqa: E731
    per_channel = lambda a: jnp.repeat(a, per_group, axis=1)  # noqa: E731
    mean_dot = group_sum(jnp.sum(dxf, axis=axes)) / n
    mean_sq_dot = 2.0 * group_sum(jnp.sum(xf * dxf, axis=axes)) / n
    inv_dot = -0.5 * inv ** 3 * (mean_sq_dot - 2.0 * mean * mean_dot)
    inv_c, mean_c = per_channel(inv), per_channel(mean)
    a = inv_c * scale
    a_dot = per_channel(inv_dot) * scale + inv_c * scale_dot
    c_dot = bias_dot - per_channel(mean_dot) * a - mean_c * a_dot
    y_dot = dxf * _expand_bc(a, x) + xf * _broadcast_bc(a_dot, x) + _broadcast_bc(c_dot, x)
    return y_dot.astype(x.dtype), mean_dot, inv_dot


@_group_norm_aux.defjvp
def _group_norm_aux_jvp(num_groups, epsilon, primals, tangents):
    x, scale, bias = primals
    y, mean, inv = _group_norm_aux(x, scale, bias, num_groups, epsilon)
    return (y, mean, inv), _group_norm_tangent(x, scale, mean, inv, *tangents, num_groups)


class _GroupNormParams(nn.Module):
    num_groups: int
    dtype: Dtype = jnp.float32
    impl: str = "auto"

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        norm = group_norm_fused if use_fused(self.impl) else group_norm
        return norm(x, scale, bias, self.num_groups).astype(self.dtype)


class GroupNorm(nn.Module):
    """GroupNorm with ``num_groups_for(C, max_groups)`` groups; statistics in float32 (:func:`group_norm`, or
    :func:`group_norm_fused` when ``impl`` selects the fused kernels, see ``LAYER_IMPLS``).
    Parameters ``GroupNorm_0/{scale, bias}``, as when this wrapped ``flax.linen.GroupNorm``."""

    max_groups: int = 32
    dtype: Dtype = jnp.float32
    impl: str = "auto"

    @nn.compact
    def __call__(self, x):
        return _GroupNormParams(num_groups_for(x.shape[-1], self.max_groups), self.dtype, self.impl,
                                name="GroupNorm_0")(x)


# ----------------------------------------------------------------------------------------------- resampling


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


# ------------------------------------------------------------------------------------------------ attention


def _row_max(s: jax.Array) -> jax.Array:
    """``max(s, axis=-1, keepdims=True)``, first halving the rows with element-wise maxima while their length is
    even and above 8: XLA:CPU's reduction along rows is not vectorised (a row maximum of small32's attention scores
    cost as much as two element-wise passes over them), the element-wise maxima are. The same value."""
    while s.shape[-1] > 8 and s.shape[-1] % 2 == 0:
        half = s.shape[-1] // 2
        s = jnp.maximum(s[..., :half], s[..., half:])
    return jnp.max(s, axis=-1, keepdims=True)


def _attention_one_head(q, k, v):
    """``softmax(q k^T / sqrt(d)) v`` for one head, ``(N, D)`` each; normalised after the product with ``v`` (N*D
    divisions, and the exponentials feed the matmul directly). Returns ``(o, lse)`` with the row log-sum-exp."""
    s = jnp.dot(q, k.T, preferred_element_type=jnp.float32) * (q.shape[-1] ** -0.5)
    m = jax.lax.stop_gradient(_row_max(s))
    e = jnp.exp(s - m)
    total = jnp.dot(e, jnp.ones((e.shape[-1], 1), e.dtype), preferred_element_type=jnp.float32)  # row sums
    o = jnp.dot(e.astype(v.dtype), v, preferred_element_type=jnp.float32) / total
    return o.astype(q.dtype), (m + jnp.log(total))[:, 0]


def _attention_one_head_tangent(q, k, v, o, lse, dq, dk, dv):
    """The tangent ``(dO, dlse)`` of one head, linear in ``(dq, dk, dv)``, from the recomputed probabilities
    ``P = exp(S - lse)``: with ``A = P * dS``, ``dS = (dq k^T + q dk^T) / sqrt(d)``,

    .. math:: dO = A V - \\mathrm{rowsum}(A) \\, O + P \\, dV, \\quad d\\,\\mathrm{lse} = \\mathrm{rowsum}(A)

    The ``k``- and ``v``-terms are written with ``P^T`` (recomputed in its own orientation), so that JAX's transpose
    of this map is FlashAttention's backward (Dao et al. 2022, Alg. 4) product for product: ``dV = P^T dO``,
    ``dS = P * (dO V^T - rowsum(dO * O))``, ``dQ = dS K / sqrt(d)``, ``dK = dS^T Q / sqrt(d)``, with ``P^T`` and
    ``dS^T`` formed directly rather than transposed (for the small head sizes of these networks half the time of
    transposed products on the CPU). Called under ``jax.checkpoint``: reverse mode recomputes ``P`` instead of
    storing the ``N x N`` matrices."""
    scale = q.shape[-1] ** -0.5
    f32 = dict(preferred_element_type=jnp.float32)
    t0 = (((0,), (0,)), ((), ()))  # contract the first axes: P^T-orientation products
    p = jnp.exp(jnp.dot(q, k.T, **f32) * scale - lse[:, None])
    p_t = jnp.exp(jnp.dot(k, q.T, **f32) * scale - lse[None, :])
    a = p * (jnp.dot(dq, k.T, **f32) * scale)  # P * (dq k^T) / sqrt(d), (N_q, N_k)
    a_t = p_t * (jnp.dot(dk, q.T, **f32) * scale)  # (P * (q dk^T))^T / sqrt(d), (N_k, N_q)
    dlse = jnp.sum(a, axis=-1) + jnp.sum(a_t, axis=0)
    do = (jnp.dot(a.astype(v.dtype), v, **f32)
          + jax.lax.dot_general(a_t.astype(v.dtype), v, t0, **f32)
          + jax.lax.dot_general(p_t.astype(dv.dtype), dv, t0, **f32)
          - dlse[:, None] * o.astype(jnp.float32))
    return do.astype(o.dtype), dlse


def _to_heads(a):  # (B, N, H, D) -> (B*H, N, D)
    b, n, h, d = a.shape
    return jnp.swapaxes(a, 1, 2).reshape(b * h, n, d)


def _from_heads(a, shape):
    b, n, h, d = shape
    return jnp.swapaxes(a.reshape(b, h, n, d), 1, 2)


def _over_heads(fn, args, heads_per_step):
    if heads_per_step is None:
        return jax.vmap(fn)(*args)
    return jax.lax.map(lambda a: fn(*a), args, batch_size=heads_per_step)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, heads_per_step: Optional[int] = None):
    """Multi-head ``softmax(q k^T / sqrt(d)) v`` over ``(B, N, H, D)`` inputs, returning ``(B, N, H, D)``.

    The same values as the textbook formula (softmax in float32), computed head by head so the ``N x N``
    probabilities are never stored for the backward pass: a ``custom_jvp`` whose tangent
    (:func:`_attention_one_head_tangent`) recomputes them from the saved row log-sum-exp, and whose transpose is
    FlashAttention's backward. Every transformation applies: ``jax.grad``, ``jax.jvp``, ``jax.jacfwd``, ``vmap``
    and their compositions. ``heads_per_step``: ``None`` processes all ``B*H`` heads at once (vectorised:
    GPU/TPU); an integer loops over chunks of that many heads (``lax.map``), keeping each chunk's ``N x N``
    matrices in cache, which on a 2-core CPU runs small32's 16-head 16x16 attention ~10x faster forward and ~2x
    faster forward+backward than the einsum formulation (experiments/bench/README.md).
    """
    return _attention_lse(q, k, v, heads_per_step)[0]


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _attention_lse(q, k, v, heads_per_step):
    """``(o (B, N, H, D), lse (B*H, N))``: :func:`dot_product_attention` and the row log-sum-exps of its scores."""
    o, lse = _over_heads(_attention_one_head, tuple(_to_heads(a) for a in (q, k, v)), heads_per_step)
    return _from_heads(o, q.shape), lse


@_attention_lse.defjvp
def _attention_lse_jvp(heads_per_step, primals, tangents):
    q, k, v = primals
    o, lse = _attention_lse(q, k, v, heads_per_step)
    args = tuple(_to_heads(a) for a in (q, k, v, o)) + (lse,) + tuple(_to_heads(t) for t in tangents)
    # recompute P in the backward pass (no N x N residuals); prevent_cse=False: inside lax.map (a scan) CSE cannot
    # merge the recomputation into the forward pass, and the barriers it would add cost ~20% (16 heads of 256x8)
    tangent = jax.checkpoint(_attention_one_head_tangent, prevent_cse=False)
    do, dlse = _over_heads(tangent, args, heads_per_step)
    return (o, lse), (_from_heads(do, q.shape), dlse)


def default_heads_per_step(seq_len: int, head_dim: int, *, cache_bytes: int = 3 << 20) -> Optional[int]:
    """All heads at once (``None``) off the CPU. On the CPU backend, the largest power of two of heads whose
    working set (the ``N x N`` scores and four ``N x d`` operands in float32) fits ``cache_bytes`` (about the
    2-core machine's L2): the backward pass is 1.5-2x faster with cache-sized chunks than with 16 heads at a time
    (small32's 16 heads of 8 channels at 16x16: 8 heads per step; one 64-channel head at 32x32: 1; bench README)."""
    if jax.default_backend() != "cpu":
        return None
    per_head = 4 * (seq_len * seq_len + 4 * seq_len * head_dim)
    return 1 << max(0, (cache_bytes // per_head).bit_length() - 1)


def reference_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """The textbook ``softmax(q k^T / sqrt(d)) v`` (softmax in float32) over ``(B, N, H, D)``; plain JAX, so every
    transformation applies."""
    w = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * (q.shape[-1] ** -0.5)
    w = jax.nn.softmax(w, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", w, v)


def attention(q, k, v, impl: str = "auto"):
    """``impl`` (``LAYER_IMPLS``): ``"fused"`` (:func:`dot_product_attention`, chunked by
    :func:`default_heads_per_step`), ``"reference"`` (:func:`reference_attention`) or ``"auto"``: fused on the CPU
    backend, reference elsewhere (XLA fuses the plain formula well on GPU/TPU). Both are differentiable in
    forward and reverse mode."""
    if use_fused(impl):
        return dot_product_attention(q, k, v, default_heads_per_step(q.shape[1], q.shape[-1]))
    return reference_attention(q, k, v)


class AttnBlock(nn.Module):
    """Spatial self-attention over all ``H*W`` positions (DDPM), multi-head when ``num_head_channels`` is set.

    ``x + proj(softmax(q k^T / sqrt(d)) v)``, divided by sqrt(2) if ``skip_rescale``; the output projection starts
    near zero (``init_scale=0``). ``impl``: ``LAYER_IMPLS`` (the CPU default: fused kernels; both choices support
    ``jax.grad`` and ``jax.jvp``).
    """

    num_head_channels: Optional[int] = None
    skip_rescale: bool = False
    init_scale: float = 0.0
    norm_groups: int = 32
    dtype: Dtype = jnp.float32
    impl: str = "auto"

    @nn.compact
    def __call__(self, x):
        b, hgt, wid, c = x.shape
        heads = 1 if self.num_head_channels is None else max(1, c // self.num_head_channels)
        d = c // heads
        h = GroupNorm(self.norm_groups, self.dtype, self.impl, name="norm")(x)
        qkv = Dense(3 * c, init_scale=0.1, dtype=self.dtype, name="qkv")(h).reshape(b, hgt * wid, 3, heads, d)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        h = attention(q, k, v, self.impl).reshape(b, hgt, wid, c)
        h = Dense(c, init_scale=self.init_scale, dtype=self.dtype, name="proj")(h)
        out = x + h
        return out / np.sqrt(2.0) if self.skip_rescale else out


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
