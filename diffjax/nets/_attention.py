"""Multi-head self-attention: the fused head-by-head kernel (custom JVP, FlashAttention's backward as its transpose),
the textbook formula, and the spatial attention block."""
from __future__ import annotations

import functools
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffjax.nets._base import Dense, Dtype, use_fused
from diffjax.nets._norm import GroupNorm


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
    :func:`default_heads_per_step`), ``"reference"`` (:func:`reference_attention`), ``"flash"`` (blockwise, the
    tangent in the same pass: :func:`~diffjax.nets.flash_attention`, for long sequences under ``jax.jvp``) or
    ``"auto"``: fused on the CPU backend, reference elsewhere (XLA fuses the plain formula well on GPU/TPU). All are
    differentiable in forward and reverse mode."""
    if impl == "flash":
        from diffjax.nets._flash_attention import flash_attention
        return flash_attention(q, k, v)
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


def masked_attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: Optional[jax.Array] = None) -> jax.Array:
    """``softmax(q k^T / sqrt(d) + log m) v`` over ``(B, N, H, D)`` queries and ``(B, M, H, D)`` keys / values, the
    keys where ``key_mask`` ``(B, M)`` is False left out (padding tokens); ``None``: every key. A row whose keys are
    all masked averages all of them (a finite output, never NaN). Plain JAX (softmax in float32)."""
    w = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * (q.shape[-1] ** -0.5)
    if key_mask is not None:
        w = jnp.where(jnp.asarray(key_mask, bool)[:, None, None, :], w, jnp.finfo(jnp.float32).min)
    w = jax.nn.softmax(w, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", w, v)
