"""The diffusion transformer (DiT, Peebles & Xie 2023): shapes, adaLN-Zero's identity init, the sin-cos position and
timestep embeddings against their formulas written out, class conditioning with the null label, the published
parameter counts (abstractly), and a tiny class-conditional DiT that learns a toy image task through the bridge.

Cost control: the published configurations are only traced (``jax.eval_shape``); real forward passes use tiny DiTs
(width 16-32, two blocks, 8x8 images).
"""
import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import diffjax as dj
import diffjax.nets as nets
from diffjax import config_lib

TINY = dict(patch_size=2, hidden_size=16, depth=2, num_heads=2)


def _random_params(model, x, labels, y=None, seed=0):
    """Variables shaped like ``model.init``'s, filled from numpy (non-zero everywhere, also the zero-initialised
    adaLN modulations and the final layer, so every part of the network affects the output)."""
    extra = () if y is None else (y,)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), x, labels, *extra, train=False))
    rng = np.random.default_rng(seed)

    def fill(leaf):
        z = rng.standard_normal(leaf.shape).astype(np.float32)
        fan_in = np.prod(leaf.shape[:-1]) if leaf.ndim >= 2 else 1.0
        return jnp.asarray(z / np.sqrt(fan_in) if leaf.ndim >= 2 else 0.1 * z)

    return jax.tree_util.tree_map(fill, abstract)


def _finite(a):
    assert bool(jnp.all(jnp.isfinite(a))), "non-finite output"


@pytest.mark.parametrize("shape,patch,learn_sigma", [((2, 8, 8, 3), 2, False), ((2, 8, 12, 1), 4, True)],
                         ids=["8x8x3_p2", "8x12x1_p4_learn_sigma"])
def test_output_shape_and_learned_sigma_channels(shape, patch, learn_sigma):
    model = nets.DiT(**{**TINY, "patch_size": patch, "learn_sigma": learn_sigma})
    x = jax.random.normal(jax.random.key(1), shape)
    labels = jnp.array([3.0, 500.0])
    variables = _random_params(model, x, labels)
    apply = jax.jit(functools.partial(model.apply, train=False))
    out = apply(variables, x, labels)
    assert out.shape == shape[:3] + (shape[3] * (2 if learn_sigma else 1),) and out.dtype == jnp.float32
    _finite(out)
    assert float(jnp.std(out)) > 1e-3
    assert float(jnp.max(jnp.abs(out - apply(variables, x, labels[::-1])))) > 1e-3  # the noise label matters
    # Each output patch depends on the whole image (attention), not only on its own input patch.
    x2 = x.at[:, :patch, :patch].add(1.0)
    assert float(jnp.max(jnp.abs(apply(variables, x2, labels) - out)[:, -patch:, -patch:])) > 1e-4


def test_adaln_zero_init_makes_every_block_the_identity_and_the_output_zero():
    model = nets.DiT(**TINY, num_classes=3)
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    labels, y = jnp.array([10.0, 900.0]), jnp.array([0, 2])
    # The real initialisers and the first forward pass, in one compiled function.
    out, variables = jax.jit(lambda k: model.init_with_output(
        k, x, labels, y, train=False, capture_intermediates=True))(jax.random.key(0))
    assert out.shape == x.shape
    _finite(out)
    assert bool(jnp.all(out == 0.0))  # exactly zero, the paper's identity initialisation
    # Every block is the identity at init: each block's output is the patch embedding + position embedding, and the
    # patch embedding is the convolution with kernel = stride = patch.
    p = variables["params"]
    conv = jax.lax.conv_general_dilated(x, p["x_embedder_kernel"], (2, 2), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["x_embedder_bias"]
    tokens = conv.reshape(2, 16, 16) + nets.sincos_pos_embed_2d(16, 4, 4)[None]
    inter = variables["intermediates"]
    for i in range(TINY["depth"]):
        chex.assert_trees_all_close(inter[f"block{i}"]["__call__"][0], tokens, atol=1e-5)


def test_sincos_position_embedding_equals_the_formula():
    d, gh, gw = 16, 3, 5
    emb = nets.sincos_pos_embed_2d(d, gh, gw)
    assert emb.shape == (gh * gw, d)
    q = d // 4
    for i in range(gh):
        for j in range(gw):
            for k in range(q):
                w = 10000.0 ** (-k / q)
                row = emb[i * gw + j]
                np.testing.assert_allclose(row[[k, q + k, 2 * q + k, 3 * q + k]],
                                           [math.sin(j * w), math.cos(j * w), math.sin(i * w), math.cos(i * w)],
                                           atol=1e-6)
    with pytest.raises(ValueError, match="divisible by 4"):
        nets.sincos_pos_embed_2d(6, 2, 2)


def test_timestep_embedding_equals_the_formula():
    t = np.array([0.0, 3.0, 999.0])
    emb = np.asarray(nets.dit_timestep_embedding(jnp.asarray(t), 8))
    want = [[math.cos(s * 10000.0 ** (-k / 4)) for k in range(4)] + [math.sin(s * 10000.0 ** (-k / 4))
                                                                    for k in range(4)] for s in t]
    np.testing.assert_allclose(emb, want, atol=2e-4)


def test_class_conditioning_null_label_and_class_dropout():
    model = nets.DiT(**TINY, num_classes=3)
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    labels = jnp.array([10.0, 20.0])
    variables = _random_params(model, x, labels, jnp.array([0, 1]))
    assert variables["params"]["y_embedder"]["embedding"].shape == (4, 16)  # + the null label
    drop = nets.DiT(**TINY, num_classes=3, class_dropout=0.5)

    @jax.jit
    def run(v):
        apply = lambda y: model.apply(v, x, labels, y, train=False)  # noqa: E731
        # DiT's own label dropout (train=True), over 8 dropout keys.
        dropped = jax.vmap(lambda k: drop.apply(v, x, labels, jnp.array([0, 0]), train=True,
                                                rngs={"dropout": k}))(jax.random.split(jax.random.key(3), 8))
        return (apply(jnp.array([0, 0])), apply(jnp.array([1, 1])), apply(None), apply(jnp.array([3, 3])), dropped,
                drop.apply(v, x, labels, jnp.array([0, 0]), train=False))

    out0, out1, out_null, out3, outs, drop_eval = run(variables)
    for o in (out0, out1, out_null, outs):
        _finite(o)
    assert float(jnp.max(jnp.abs(out0 - out1))) > 1e-3  # the class matters
    assert float(jnp.max(jnp.abs(out0 - out_null))) > 1e-3
    chex.assert_trees_all_close(out_null, out3, atol=1e-6)  # None = the null label 3
    chex.assert_trees_all_close(drop_eval, out0, atol=1e-6)  # no label dropout with train=False
    # Each dropped sample got its label or the null label, and both happened.
    kinds = set()
    for o in outs:
        for b in range(2):
            if np.allclose(o[b], out0[b], atol=1e-5):
                kinds.add("label")
            else:
                np.testing.assert_allclose(o[b], out_null[b], atol=1e-5)
                kinds.add("null")
    assert kinds == {"label", "null"}


def _param_count(model, shape, with_y):
    args = [jax.ShapeDtypeStruct(shape, jnp.float32), jax.ShapeDtypeStruct(shape[:1], jnp.float32)]
    if with_y:
        args.append(jax.ShapeDtypeStruct(shape[:1], jnp.int32))
    return nets.count_params(jax.eval_shape(
        lambda *a: model.init(jax.random.key(0), *a, train=False), *args)["params"])


@pytest.mark.parametrize("name,published,hidden", [("dit_s2", 33.0e6, 384), ("dit_b2", 130.5e6, 768),
                                                   ("dit_l2", 458.1e6, 1024), ("dit_xl2", 675.1e6, 1152)])
def test_published_parameter_counts(name, published, hidden):
    model = getattr(nets, name)(input_size=32, in_channels=4, num_classes=1000, learn_sigma=True)
    n = _param_count(model, (1, 32, 32, 4), True)
    assert abs(n - published) / published < 0.005, n
    # DiT's PyTorch count also holds the fixed (untrained) 256-token position embedding, a constant here; with it
    # the count rounds to the published figure.
    assert round((n + 256 * hidden) / 1e5) == round(published / 1e5), n


def test_small_presets_sizes():
    n_fm = _param_count(nets.dit_fashion_mnist(), (1, 28, 28, 1), False)
    assert 1.3e6 < n_fm < 1.7e6, n_fm
    n_c = _param_count(nets.dit_cifar10_small(), (1, 32, 32, 3), False)
    assert 5e6 < n_c < 9e6, n_c
    with pytest.raises(ValueError, match="28x28"):
        _param_count(nets.dit_fashion_mnist(), (1, 32, 32, 1), False)


def test_bad_fields_raise_before_tracing():
    with pytest.raises(ValueError, match="num_heads"):
        nets.DiT(hidden_size=16, num_heads=3)
    with pytest.raises(ValueError, match="patch_size"):
        nets.DiT(patch_size=3, input_size=8)
    with pytest.raises(ValueError, match="class_dropout"):
        nets.DiT(class_dropout=0.1)
    with pytest.raises(ValueError, match="layer_impl"):
        nets.DiT(layer_impl="fast")
    with pytest.raises(TypeError, match="unknown DiT field"):
        nets.dit_s2(ch=32)
    model = nets.DiT(**TINY)
    with pytest.raises(ValueError, match="multiples of patch_size"):
        model.init(jax.random.key(0), jnp.zeros((1, 7, 8, 1)), jnp.zeros((1,)), train=False)


def test_configs_build_the_dit_and_reject_unet_overrides(monkeypatch):
    from configs import fashion_mnist_budget, fashion_mnist_dit
    cfg = fashion_mnist_dit.get_config()
    config_lib.validate(cfg, device_count=1)
    model = config_lib.build_model(cfg)
    assert isinstance(model, nets.DiT)
    assert _param_count(model, config_lib.input_shape(cfg, 1), False) == 1_567_748
    bad = fashion_mnist_budget.get_config()
    bad.model.name = "dit_fashion_mnist"  # the budget config's UNet overrides (ch, ch_mult, ...) are no DiT fields
    with pytest.raises(ValueError, match="model.overrides .*ch_mult"):
        config_lib.validate(bad, device_count=1)


def _toy_images(key, n):
    """Two classes of 8x8x1 images: class 0 bright on the left half, class 1 bright on the top half (+-1, small
    noise)."""
    ky, kn = jax.random.split(key)
    y = jax.random.bernoulli(ky, 0.5, (n,)).astype(jnp.int32)
    left = jnp.where(jnp.arange(8) < 4, 1.0, -1.0)
    t0 = jnp.broadcast_to(left[None, :], (8, 8))
    img = jnp.where(y[:, None, None] == 0, t0[None], t0.T[None])[..., None]
    return img + 0.05 * jax.random.normal(kn, img.shape), y


def test_tiny_class_conditional_dit_trains_through_the_bridge():
    """40 Adam steps of the DSM loss (eps prediction on the VP SDE, the class bound into ``score_fn(x, t)`` through
    the bridge) lower the loss several-fold."""
    sde = dj.vp_sde()
    model = nets.DiT(patch_size=2, hidden_size=32, depth=1, num_heads=2, num_classes=2)
    x, y = _toy_images(jax.random.key(0), 64)
    params = _random_params(model, x, jnp.zeros((64,)), y)["params"]
    opt = optax.adam(3e-3)

    def loss_fn(p, key, x, y):
        score = nets.make_conditional_score_fn(model.apply, p, sde, parameterization="eps")
        return dj.dsm_loss(key, x, lambda xt, t: score(xt, t, y), sde)

    @jax.jit
    def step(p, o, key):
        kd, kl = jax.random.split(key)
        xb, yb = _toy_images(kd, 64)
        loss, g = jax.value_and_grad(loss_fn)(p, kl, xb, yb)
        upd, o = opt.update(g, o, p)
        return optax.apply_updates(p, upd), o, loss

    o, losses = opt.init(params), []
    for i in range(40):
        params, o, loss = step(params, o, jax.random.key(10 + i))
        losses.append(float(loss))
    assert np.all(np.isfinite(losses))
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < 0.5 * first, losses
