"""What every layer of the score networks shares: float32 parameters with DDPM's initializer, the compute dtype,
the choice of kernels (``LAYER_IMPLS``), and the dense layer whose bias and spatial sums are matrix products.

Layouts follow DDPM (Ho et al. 2020) and score-SDE's NCSN++ / DDPM++ (Song et al. 2021, appendix H). Parameters are
always float32 (``param_dtype``); ``dtype`` is the compute dtype. Images are NHWC.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
# "fused": the CPU-tuned attention and GroupNorm kernels, custom JVPs whose transposes are hand-written backward
# passes; "reference": plain JAX formulas; "auto": fused on the CPU backend. Both support every transformation
# (jax.grad, jax.jvp, jax.jacfwd, vmap and their compositions) with the same values.
LAYER_IMPLS = ("auto", "fused", "reference", "flash")  # flash: "auto" with blockwise attention (_flash_attention)


def use_fused(impl: str) -> bool:
    return impl == "fused" or (impl in ("auto", "flash") and jax.default_backend() == "cpu")


def default_init(scale: float = 1.0):
    """DDPM's initializer: uniform variance scaling over ``fan_avg``; ``scale=0`` means ``1e-10`` (near-zero init)."""
    scale = 1e-10 if scale == 0 else scale
    return nn.initializers.variance_scaling(scale, "fan_avg", "uniform")


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
