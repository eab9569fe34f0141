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
from _fast_compile import fast_jit

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


def _normal(shape, seed=1):  # numpy draws: no PRNG kernel to compile
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _finite(a):
    assert bool(jnp.all(jnp.isfinite(a))), "non-finite output"


@pytest.mark.parametrize("shape,patch,learn_sigma", [((2, 8, 8, 3), 2, False), ((2, 8, 12, 1), 4, True)],
                         ids=["8x8x3_p2", "8x12x1_p4_learn_sigma"])
def test_output_shape_and_learned_sigma_channels(shape, patch, learn_sigma):
    model = nets.DiT(**{**TINY, "patch_size": patch, "learn_sigma": learn_sigma})
    x = _normal(shape)
    labels = jnp.array([3.0, 500.0])
    variables = _random_params(model, x, labels)
    apply = fast_jit(functools.partial(model.apply, train=False))
    out = apply(variables, x, labels)
    assert out.shape == shape[:3] + (shape[3] * (2 if learn_sigma else 1),) and out.dtype == jnp.float32
    out = np.asarray(out)
    _finite(out)
    assert out.std() > 1e-3
    assert np.abs(out - np.asarray(apply(variables, x, labels[::-1]))).max() > 1e-3  # the noise label matters
    # Each output patch depends on the whole image (attention), not only on its own input patch.
    x2 = x.copy()
    x2[:, :patch, :patch] += 1.0
    assert np.abs(np.asarray(apply(variables, x2, labels)) - out)[:, -patch:, -patch:].max() > 1e-4


def test_adaln_zero_init_makes_every_block_the_identity_and_the_output_zero():
    model = nets.DiT(**TINY, num_classes=3)
    x = _normal((2, 8, 8, 3))
    labels, y = jnp.array([10.0, 900.0]), jnp.array([0, 2])
    # The real initialisers and the first forward pass, in one compiled function.
    out, variables = fast_jit(lambda k: model.init_with_output(
        k, x, labels, y, train=False, capture_intermediates=True))(jax.random.key(0, impl="rbg"))
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
    model = nets.DiT(**TINY, num_classes=3, class_dropout=0.5)
    x1 = _normal((1, 8, 8, 3))
    variables = _random_params(model, x1, jnp.ones((1,)), jnp.zeros((1,), jnp.int32))
    assert variables["params"]["y_embedder"]["embedding"].shape == (4, 16)  # + the null label
    x, labels = np.repeat(x1, 16, axis=0), jnp.full((16,), 20.0)

    @fast_jit
    def run(v):
        y = jnp.array([0, 1, 3] + [0] * 13)
        # train=False: no label dropout; train=True: DiT's own label dropout, per sample.
        return (model.apply(v, x, labels, y, train=False), model.apply(v, x, labels, None, train=False),
                model.apply(v, x, labels, jnp.zeros((16,), jnp.int32), train=True,
                            rngs={"dropout": jax.random.key(3)}))

    cond, null, dropped = (np.asarray(a) for a in run(variables))
    for o in (cond, null, dropped):
        _finite(o)
    out0, out1, out3 = cond[0], cond[1], cond[2]
    assert np.abs(out0 - out1).max() > 1e-3  # the class matters
    assert np.abs(out0 - null[0]).max() > 1e-3
    np.testing.assert_allclose(null, np.broadcast_to(out3, null.shape), atol=1e-5)  # None = the null label 3
    np.testing.assert_allclose(cond[3:], np.broadcast_to(out0, cond[3:].shape), atol=1e-5)
    # Each dropped sample got its label or the null label, and both happened.
    is_label = [np.allclose(o, out0, atol=1e-5) for o in dropped]
    for o, keep in zip(dropped, is_label):
        if not keep:
            np.testing.assert_allclose(o, out3, atol=1e-5)
    assert 0 < sum(is_label) < 16, is_label


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


def _toy_images(n, seed=0):
    """Two classes of 8x8x1 images: class 0 bright on the left half, class 1 bright on the top half (+-1, small
    noise)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n).astype(np.int32)
    left = np.broadcast_to(np.where(np.arange(8) < 4, 1.0, -1.0)[None, :], (8, 8))
    img = np.where(y[:, None, None] == 0, left[None], left.T[None])[..., None]
    return (img + 0.05 * rng.standard_normal(img.shape)).astype(np.float32), y


def test_tiny_class_conditional_dit_trains_and_samples_land_on_the_data():
    """Adam steps of the DSM loss (eps prediction on the VP SDE, the class bound into ``score_fn(x, t)`` through
    the bridge) lower the loss several-fold, and DDIM samples (20 steps, DDPM's x0 clipping) of each class land on
    that class's images: every sample within 0.15 of its class's template in mean squared pixel error (the two
    templates are 2 apart)."""
    sde = dj.vp_sde()
    model = nets.DiT(patch_size=2, hidden_size=32, depth=1, num_heads=2, num_classes=2)
    x, y = _toy_images(64)
    params = _random_params(model, x, jnp.zeros((64,)), y)["params"]
    opt = optax.adam(3e-3)

    def loss_fn(p, key, x, y):
        score = nets.make_conditional_score_fn(model.apply, p, sde, parameterization="eps")
        return dj.dsm_loss(key, x, lambda xt, t: score(xt, t, y), sde)

    @jax.jit
    def step(p, o, key, xb, yb):
        loss, g = jax.value_and_grad(loss_fn)(p, key, xb, yb)
        upd, o = opt.update(g, o, p)
        return optax.apply_updates(p, upd), o, loss

    o, losses = opt.init(params), []
    for i in range(600):
        params, o, loss = step(params, o, jax.random.key(10 + i), *_toy_images(64, seed=1 + i))
        losses.append(float(loss))
    assert np.all(np.isfinite(losses))
    first, last = np.mean(losses[:5]), np.mean(losses[-20:])
    assert last < 0.2 * first, (first, last)

    score = nets.make_conditional_score_fn(model.apply, params, sde, parameterization="eps")
    left = np.broadcast_to(np.where(np.arange(8) < 4, 1.0, -1.0)[None, :], (8, 8))
    sample = jax.jit(lambda k, x_T, labels: dj.samplers.ddim(k, x_T, lambda xt, t: score(xt, t, labels), sde,
                                                             num_steps=20, clip_x0=True))
    for c, template in ((0, left), (1, left.T)):
        x0 = np.asarray(sample(jax.random.key(50 + c), sde.prior_sample(jax.random.key(40 + c), (32, 8, 8, 1)),
                               jnp.full((32,), c, jnp.int32)))
        assert np.all(np.isfinite(x0))
        err = np.mean((x0 - template[None, :, :, None]) ** 2, axis=(1, 2, 3))
        assert np.all(err < 0.15), (c, err)
