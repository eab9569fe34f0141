"""nets._flash_attention: blockwise attention with its tangent computed in the same pass, against jax.jvp (and
reverse mode through it) of the textbook formula, and without an N x N buffer."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.nets._attention import reference_attention
from diffjax.nets._flash_attention import flash_attention


def _inputs(key, b=2, n=37, m=37, h=3, d=8):
    ks = jax.random.split(key, 6)
    shapes = [(b, n, h, d), (b, m, h, d), (b, m, h, d)] * 2
    return [jax.random.normal(k, s) for k, s in zip(ks, shapes)]


@pytest.mark.parametrize("block,m", [(8, 37), (16, 21), (128, 37)])
def test_value_and_tangent_match_jvp_of_the_reference(block, m):
    q, k, v, dq, dk, dv = _inputs(jax.random.key(0), m=m)
    ref, ref_t = jax.jvp(reference_attention, (q, k, v), (dq, dk, dv))
    got, got_t = jax.jvp(lambda *a: flash_attention(*a, block_size=block), (q, k, v), (dq, dk, dv))
    assert np.isfinite(np.asarray(got_t)).all()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_t, ref_t, rtol=1e-4, atol=1e-4)
    # a tangent in one argument only (the others symbolic zeros)
    _, only_v = jax.jvp(lambda v: flash_attention(q, k, v, block_size=block), (v,), (dv,))
    np.testing.assert_allclose(only_v, jax.jvp(lambda v: reference_attention(q, k, v), (v,), (dv,))[1],
                               rtol=1e-4, atol=1e-4)


def test_reverse_mode_through_the_jvp_matches_the_reference():
    """MeanFlow differentiates a loss of (u, du/dt) from one jax.jvp with respect to the network's parameters."""
    q, k, v, dq, dk, dv = _inputs(jax.random.key(1), n=12, m=12)
    w = jax.random.normal(jax.random.key(2), q.shape)

    def loss(attn, q, k, v):
        o, do = jax.jvp(attn, (q, k, v), (dq, dk, dv))
        return jnp.sum(w * o) + jnp.sum(jnp.tanh(do))

    ref = jax.grad(lambda *a: loss(reference_attention, *a), argnums=(0, 1, 2))(q, k, v)
    got = jax.grad(lambda *a: loss(lambda *b: flash_attention(*b, block_size=5), *a), argnums=(0, 1, 2))(q, k, v)
    for g, r in zip(got, ref):
        assert np.isfinite(np.asarray(g)).all()
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)


def test_no_n_by_n_buffer():
    n, block = 2048, 64
    q, k, v, dq, dk, dv = _inputs(jax.random.key(3), b=1, n=n, m=n, h=1, d=16)

    def temp_bytes(attn):
        f = jax.jit(lambda *a: jax.jvp(attn, a[:3], a[3:]))
        return f.lower(q, k, v, dq, dk, dv).compile().memory_analysis().temp_size_in_bytes

    flash = temp_bytes(lambda *a: flash_attention(*a, block_size=block))
    assert flash < n * n * 4 / 4, flash  # well under one N x N float32 matrix (16 MiB)
    assert temp_bytes(reference_attention) >= n * n * 4  # the textbook formula stores one (the check can fail)


def test_bad_inputs_are_refused():
    q, k, v, *_ = _inputs(jax.random.key(4))
    with pytest.raises(ValueError, match="block_size"):
        flash_attention(q, k, v, block_size=0)
    with pytest.raises(ValueError, match="q must be"):
        flash_attention(q[..., :4], k, v)


def test_dit_with_flash_attention_matches_its_reference_in_value_and_jvp():
    from diffjax.nets import DiT
    x = jax.random.normal(jax.random.key(5), (2, 8, 8, 1))
    t = jnp.array([0.3, 0.7])
    nets = {impl: DiT(patch_size=2, hidden_size=32, depth=2, num_heads=2, frequency_embedding_size=32,
                      layer_impl=impl) for impl in ("reference", "flash")}
    params = nets["reference"].init(jax.random.key(6), x, t, train=False)
    params = jax.tree.map(lambda a: a + 0.05 * jax.random.normal(jax.random.key(7), a.shape), params)  # not zero-init
    dx = jax.random.normal(jax.random.key(8), x.shape)
    out = {impl: jax.jvp(lambda x, t: net.apply(params, x, t, train=False), (x, t), (dx, jnp.ones(2)))
           for impl, net in nets.items()}
    assert np.isfinite(np.asarray(out["flash"][1])).all()
    np.testing.assert_allclose(out["flash"][0], out["reference"][0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["flash"][1], out["reference"][1], rtol=1e-4, atol=1e-4)
