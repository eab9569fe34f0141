"""Blockwise attention whose forward-mode derivative is computed in the same pass as its value.

``softmax(q k^T / sqrt(d)) v`` by the online softmax over blocks of keys (FlashAttention, Dao et al. 2022): no
``N x N`` matrix is ever stored, only one ``N x block`` tile at a time. Its ``custom_jvp`` carries the tangent through
the same scan: with ``P = softmax(S)``, ``dS = (dq k^T + q dk^T) / sqrt(d)`` and ``c_i = sum_j P_ij dS_ij``,

.. math:: dO = \\sum_j P_{ij}\\, dS_{ij}\\, v_j - c_i O_i + \\sum_j P_{ij}\\, dv_j

so each tile contributes ``p dS v``, ``p dv`` and ``p dS`` to three more running sums rescaled like the value's.
This is what MeanFlow and continuous-time consistency training need from a transformer (one ``jax.jvp`` of the
network per step), and what PyTorch projects write custom kernels for. Reverse mode (also through the JVP) is JAX's
transpose of the same program.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

__all__ = ["flash_attention"]


def flash_attention(q: jax.Array, k: jax.Array, v: jax.Array, block_size: int = 128) -> jax.Array:
    """``softmax(q k^T / sqrt(d)) v`` over ``(B, N, H, D)`` inputs (keys ``(B, M, H, D)``), returning ``(B, N, H,
    D)``; keys in blocks of ``block_size`` (the last block padded and masked)."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be an int >= 1, got {block_size!r}")
    if q.ndim != 4 or k.shape != v.shape or k.ndim != 4 or q.shape[::3] != k.shape[::3] or q.shape[2] != k.shape[2]:
        raise ValueError(f"q must be (B, N, H, D) and k, v (B, M, H, D) with the same B, H, D, got {q.shape}, "
                         f"{k.shape}, {v.shape}")
    return _flash(q, k, v, min(block_size, k.shape[1]))


def _blocks(a, block):
    """(B, M, H, D) -> (M_pad / block, B, H, block, D), and the key mask (M_pad / block, block)."""
    b, m, h, d = a.shape
    pad = (-m) % block
    a = jnp.pad(a, ((0, 0), (0, pad), (0, 0), (0, 0)))
    a = jnp.transpose(a, (0, 2, 1, 3)).reshape(b, h, (m + pad) // block, block, d)
    mask = (jnp.arange(m + pad) < m).reshape(-1, block)
    return jnp.moveaxis(a, 2, 0), mask


def _scan(q, k, v, block, tangents=None):
    """One pass over the key blocks; with ``tangents = (dq, dk, dv)`` also the tangent. Float32 accumulators."""
    f32 = jnp.float32
    scale = q.shape[-1] ** -0.5
    qh = jnp.transpose(q, (0, 2, 1, 3)).astype(f32) * scale  # (B, H, N, D)
    kb, mask = _blocks(k.astype(f32), block)
    vb, _ = _blocks(v.astype(f32), block)
    b, h, n, d = qh.shape
    zeros = jnp.zeros((b, h, n), f32)
    carry = dict(m=jnp.full((b, h, n), -jnp.inf, f32), l=zeros, acc=jnp.zeros((b, h, n, d), f32))
    xs = dict(k=kb, v=vb, mask=mask)
    if tangents is not None:
        dq, dk, dv = tangents
        dqh = jnp.transpose(dq, (0, 2, 1, 3)).astype(f32) * scale
        xs.update(dk=_blocks(dk.astype(f32), block)[0], dv=_blocks(dv.astype(f32), block)[0])
        carry.update(acc_t=jnp.zeros((b, h, n, d), f32), c=zeros)

    def step(c, x):
        s = jnp.einsum("bhnd,bhkd->bhnk", qh, x["k"])
        s = jnp.where(x["mask"], s, -jnp.inf)
        m_new = jnp.maximum(c["m"], s.max(-1))
        alpha = jnp.exp(c["m"] - m_new)
        p = jnp.exp(s - m_new[..., None])
        out = dict(m=m_new, l=alpha * c["l"] + p.sum(-1),
                   acc=alpha[..., None] * c["acc"] + jnp.einsum("bhnk,bhkd->bhnd", p, x["v"]))
        if tangents is not None:
            ds = jnp.einsum("bhnd,bhkd->bhnk", dqh, x["k"]) + jnp.einsum("bhnd,bhkd->bhnk", qh, x["dk"])
            pds = jnp.where(x["mask"], p * ds, 0.0)
            out["acc_t"] = alpha[..., None] * c["acc_t"] + jnp.einsum("bhnk,bhkd->bhnd", pds, x["v"]) \
                + jnp.einsum("bhnk,bhkd->bhnd", p, x["dv"])
            out["c"] = alpha * c["c"] + pds.sum(-1)
        return out, None

    c, _ = jax.lax.scan(step, carry, xs)
    o = c["acc"] / c["l"][..., None]
    back = lambda a: jnp.transpose(a, (0, 2, 1, 3)).astype(q.dtype)  # noqa: E731
    if tangents is None:
        return back(o)
    do = c["acc_t"] / c["l"][..., None] - (c["c"] / c["l"])[..., None] * o
    return back(o), back(do)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _flash(q, k, v, block):
    return _scan(q, k, v, block)


@_flash.defjvp
def _flash_jvp(block, primals, tangents):
    q, k, v = primals
    return _scan(q, k, v, block, tangents)  # zero tangents arrive instantiated (custom_jvp's default)
