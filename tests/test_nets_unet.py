"""UNet family: parameter counts of the reference nets, shapes at 28x28x1 and 32x32x3, dropout, bf16, conv formulations.

Big nets are only traced abstractly (jax.eval_shape); tiny variants (ch=16) with the same structure options run.
"""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax.nets as nets

PRESETS = {
    "ddpm_cifar10": nets.ddpm_cifar10,
    "ncsnpp_cifar10": nets.ncsnpp_cifar10,
    "ncsnpp_deep_cifar10": nets.ncsnpp_deep_cifar10,
    "ddpmpp_cifar10": nets.ddpmpp_cifar10,
    "ddpmpp_deep_cifar10": nets.ddpmpp_deep_cifar10,
    "small32": nets.small32,
    "fashion_mnist_small": nets.fashion_mnist_small,
}

# Tiny variants: the structure options of every reference net, at ch=16.
TINY = dict(ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, dropout=0.0, init_scale=1.0)
VARIANTS = {
    "ddpm": dict(resblock_type="ddpm"),
    "ddpm_4levels": dict(resblock_type="ddpm", ch_mult=(1, 1, 2, 2)),  # 28 -> 14 -> 7 -> 4 and back (cropping)
    "ddpm_no_conv_resample": dict(resblock_type="ddpm", resamp_with_conv=False, fir=True),
    "ncsnpp": dict(resblock_type="biggan", embedding_type="fourier", fir=True, skip_rescale=True,
                   progressive_input="residual", attn_every_up_block=False),
    "ddpmpp": dict(resblock_type="biggan", skip_rescale=True, attn_every_up_block=False),
    "progressive_output_skip_input_skip_cat": dict(resblock_type="biggan", fir=True, progressive="output_skip",
                                                   progressive_input="input_skip", progressive_combine="cat"),
    "progressive_residual": dict(resblock_type="biggan", progressive="residual", progressive_input="residual",
                                 skip_rescale=True, ch_mult=(1, 1, 2, 2)),
    "small32_like": dict(num_head_channels=8),
    "unconditional_in_time": dict(conditional=False),
}


def _attn(size):
    return (7,) if size == 28 else (16,)


def _run(model, x, labels, y=None, *, train=False, key=jax.random.key(0)):
    variables = jax.jit(functools.partial(model.init, train=False))({"params": key}, x, labels, y)
    apply = jax.jit(functools.partial(model.apply, train=train))
    return variables, apply


def test_ddpm_cifar10_param_count():
    params = nets.abstract_init(nets.ddpm_cifar10(), (1, 32, 32, 3))["params"]
    n = nets.count_params(params)
    assert abs(n - 35.7e6) / 35.7e6 < 0.005, n


def test_reference_param_counts():
    counts = {name: nets.count_params(nets.abstract_init(f(), (1, 32, 32, 3))["params"])
              for name, f in PRESETS.items() if name != "fashion_mnist_small"}
    print("parameter counts:", counts)
    assert abs(counts["small32"] - 6.5e6) / 6.5e6 < 0.01  # diffusers' layout: ~6.5 M
    # score-SDE layouts (regression values; see experiments/bench/README.md)
    assert counts["ddpmpp_cifar10"] == 61_804_419
    assert counts["ncsnpp_cifar10"] == 62_758_915
    assert counts["ddpmpp_deep_cifar10"] == 106_632_579
    assert counts["ncsnpp_deep_cifar10"] == 107_587_075
    # deep = twice the residual blocks per level
    assert counts["ddpmpp_deep_cifar10"] > 1.7 * counts["ddpmpp_cifar10"]


@pytest.mark.parametrize("shape", [(2, 28, 28, 1), (2, 32, 32, 3)])
@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_output_shape_abstract(name, shape):
    model = PRESETS[name](image_size=shape[1], num_channels=shape[3], attn_resolutions=_attn(shape[1]))
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    labels = jax.ShapeDtypeStruct(shape[:1], jnp.float32)

    def fwd(x, labels):
        variables = model.init(jax.random.key(0), x, labels, train=False)
        return model.apply(variables, x, labels, train=False)

    assert jax.eval_shape(fwd, x, labels).shape == shape


@pytest.mark.parametrize("shape", [(2, 28, 28, 1), (2, 32, 32, 3)])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_tiny_variants_run(variant, shape):
    model = nets.UNet(**{**TINY, "attn_resolutions": _attn(shape[1]), **VARIANTS[variant]})
    x = jax.random.normal(jax.random.key(1), shape)
    labels = jnp.array([3.0, 500.0])
    variables, apply = _run(model, x, labels)
    out = apply(variables, x, labels)
    assert out.shape == shape and out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out))) and float(jnp.std(out)) > 1e-3
    chex.assert_trees_all_equal(out, apply(variables, x, labels))  # deterministic with dropout off
    if model.conditional:  # the noise label matters
        assert not np.allclose(out, apply(variables, x, labels + 100.0))


def test_learn_sigma_and_class_labels():
    model = nets.UNet(**TINY, attn_resolutions=(7,), num_classes=10, learn_sigma=True)
    x = jax.random.normal(jax.random.key(1), (2, 28, 28, 1))
    labels = jnp.array([10.0, 20.0])
    variables, _ = _run(model, x, labels, jnp.array([1, 2]))
    apply = jax.jit(lambda v, x, l, y: model.apply(v, x, l, y, train=False))
    out = apply(variables, x, labels, jnp.array([1, 2]))
    assert out.shape == (2, 28, 28, 2)
    eps, v = nets.split_learned_sigma(out)
    assert eps.shape == v.shape == x.shape
    assert variables["params"]["label_embed"]["embedding"].shape == (11, 64)  # + the null label
    null = model.apply(variables, x, labels, None, train=False)
    chex.assert_trees_all_close(null, apply(variables, x, labels, jnp.array([10, 10])), atol=1e-5)
    assert not np.allclose(out, apply(variables, x, labels, jnp.array([3, 4])))


def test_dropout_changes_outputs_only_in_training():
    model = nets.UNet(**{**TINY, "dropout": 0.3}, attn_resolutions=(16,))
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    labels = jnp.array([3.0, 500.0])
    variables, apply_eval = _run(model, x, labels)
    apply_train = jax.jit(lambda v, x, l, k: model.apply(v, x, l, train=True, rngs={"dropout": k}))
    a = apply_train(variables, x, labels, jax.random.key(2))
    b = apply_train(variables, x, labels, jax.random.key(3))
    chex.assert_trees_all_equal(a, apply_train(variables, x, labels, jax.random.key(2)))  # same key, same output
    assert float(jnp.max(jnp.abs(a - b))) > 1e-2
    assert float(jnp.max(jnp.abs(a - apply_eval(variables, x, labels)))) > 1e-2
    chex.assert_trees_all_equal(apply_eval(variables, x, labels), apply_eval(variables, x, labels))


def test_bfloat16_compute_close_to_float32():
    kw = dict(**TINY, attn_resolutions=(16,), resblock_type="biggan", skip_rescale=True, fir=True,
              progressive_input="residual")
    m32, m16 = nets.UNet(**kw), nets.UNet(**kw, dtype=jnp.bfloat16)
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    labels = jnp.array([3.0, 500.0])
    variables, apply32 = _run(m32, x, labels)
    v16 = m16.init(jax.random.key(0), x, labels, train=False)
    chex.assert_trees_all_equal_shapes_and_dtypes(variables, v16)  # params stay float32
    out32 = apply32(variables, x, labels)
    out16 = jax.jit(functools.partial(m16.apply, train=False))(variables, x, labels)
    assert out16.dtype == jnp.float32
    rel = float(jnp.linalg.norm(out16 - out32) / jnp.linalg.norm(out32))
    assert rel < 0.05, rel


@pytest.mark.parametrize("stride,size,k", [(1, 7, 3), (2, 8, 3), (2, 7, 3), (1, 6, 1)])
def test_conv_patches_equals_xla_conv(stride, size, k):
    x = jax.random.normal(jax.random.key(0), (2, size, size, 5))
    conv = lambda impl: nets.Conv(6, k, stride=stride, init_scale=1.0, impl=impl)  # noqa: E731
    variables = conv("xla").init(jax.random.key(1), x)
    variables = jax.tree_util.tree_map(lambda p: p + 0.1, variables)  # non-zero bias

    def loss(v, x, impl):
        return jnp.sum(jnp.sin(conv(impl).apply(v, x)))

    ref = jax.value_and_grad(loss, argnums=(0, 1))(variables, x, "xla")
    got = jax.value_and_grad(loss, argnums=(0, 1))(variables, x, "patches")
    chex.assert_trees_all_close(got, ref, rtol=1e-4, atol=1e-4)


def test_fir_resampling_shapes_and_unit_gain():
    x = jnp.ones((1, 8, 8, 3))
    up = nets.fir_upsample_2d(x)
    down = nets.fir_downsample_2d(x)
    assert up.shape == (1, 16, 16, 3) and down.shape == (1, 4, 4, 3)
    np.testing.assert_allclose(up[:, 2:-2, 2:-2], 1.0, rtol=1e-6)  # interior: constant preserved
    np.testing.assert_allclose(down[:, 1:-1, 1:-1], 1.0, rtol=1e-6)
    assert nets.fir_downsample_2d(jnp.ones((1, 7, 7, 2))).shape == (1, 4, 4, 2)


def test_mlp_and_classifier_shapes():
    mlp = nets.toy_mlp(hidden=(32, 32), num_classes=3)
    x = jax.random.normal(jax.random.key(0), (5, 2))
    v = mlp.init(jax.random.key(1), x, jnp.zeros(5), None, train=False)
    assert mlp.apply(v, x, jnp.arange(5.0), jnp.arange(5) % 3, train=False).shape == (5, 2)
    clf = nets.noise_classifier_cifar10(ch=16, ch_mult=(1, 2), attn_resolutions=(16,))
    x = jax.random.normal(jax.random.key(0), (3, 32, 32, 3))
    v = clf.init(jax.random.key(1), x, jnp.zeros(3), train=False)
    logits = clf.apply(v, x, jnp.array([1.0, 2.0, 3.0]), train=False)
    assert logits.shape == (3, 10) and bool(jnp.all(jnp.isfinite(logits)))


def test_model_summary_lists_blocks_and_total():
    text = nets.model_summary(nets.ddpm_cifar10(), (1, 32, 32, 3))
    assert "35,746,307" in text and "35.75 M" in text
    for block in ("conv_in", "down0_res0", "down1_attn0", "mid_attn", "up1_attn2", "conv_out"):
        assert block in text
    assert "(1, 16, 16, 256)" in text  # the attention level of DDPM
    assert "label_embed" in nets.model_summary(nets.toy_mlp(num_classes=4), (2, 2))


def test_bad_fields_raise_before_tracing():
    with pytest.raises(ValueError, match="resblock_type"):
        nets.UNet(resblock_type="resnet")
    with pytest.raises(ValueError, match="progressive_input"):
        nets.ncsnpp_cifar10(progressive_input="skip")
    with pytest.raises(ValueError, match="dtype"):
        nets.UNet(dtype=jnp.float16)
    with pytest.raises(ValueError, match="dropout"):
        nets.small32(dropout=1.5)
    with pytest.raises(TypeError, match="unknown UNet field"):
        nets.ddpm_cifar10(nf=64)
    model = nets.fashion_mnist_small()
    with pytest.raises(ValueError, match="image_size"):
        model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)), jnp.zeros(1), train=False)
