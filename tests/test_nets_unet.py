"""UNet family: parameter counts of the reference nets, shapes at 28x28x1 and 32x32x3, dropout, bf16, conv formulations.

Cost control (the whole file must run in well under a minute on 2 cores): the reference nets are only traced
abstractly (``jax.eval_shape``, nothing compiled); real forward passes use tiny variants (few channels, one residual
block) whose parameters are filled from numpy (``_random_params``) instead of a compiled ``model.init`` (XLA's CPU
compile of the init's random number generation takes longer than the network itself).
"""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax.nets as nets
from _fast_compile import fast_jit

PRESETS = {
    "ddpm_cifar10": nets.ddpm_cifar10,
    "ncsnpp_cifar10": nets.ncsnpp_cifar10,
    "ncsnpp_deep_cifar10": nets.ncsnpp_deep_cifar10,
    "ddpmpp_cifar10": nets.ddpmpp_cifar10,
    "ddpmpp_deep_cifar10": nets.ddpmpp_deep_cifar10,
    "small32": nets.small32,
    "fashion_mnist_small": nets.fashion_mnist_small,
}
SHAPES = [(2, 28, 28, 1), (2, 32, 32, 3)]
# Tiny variants keep every structure option of a family but few channels and one block per level.
TINY = dict(ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, dropout=0.0, init_scale=1.0, norm_groups=4)
FAMILIES = {
    "ddpm": lambda **kw: nets.ddpm_cifar10(**{**TINY, "image_size": None, "num_channels": None, **kw}),
    "ncsnpp": lambda **kw: nets.ncsnpp_cifar10(**{**TINY, "image_size": None, "num_channels": None, **kw}),
    "ddpmpp": lambda **kw: nets.ddpmpp_cifar10(**{**TINY, "image_size": None, "num_channels": None, **kw}),
}
# Further structure options, checked abstractly at both sizes.
VARIANTS = {
    "ddpm_4levels": dict(resblock_type="ddpm", ch_mult=(1, 1, 2, 2)),  # 28 -> 14 -> 7 -> 4 and back (cropping)
    "ddpm_no_conv_resample_fir": dict(resblock_type="ddpm", resamp_with_conv=False, fir=True),
    "output_skip_input_skip_cat": dict(resblock_type="biggan", fir=True, progressive="output_skip",
                                       progressive_input="input_skip", progressive_combine="cat"),
    "progressive_residual_4levels": dict(resblock_type="biggan", progressive="residual", progressive_input="residual",
                                         skip_rescale=True, ch_mult=(1, 1, 2, 2)),
    "multihead": dict(num_head_channels=4),
    "unconditional_in_time": dict(conditional=False),
}


def _attn(size):
    return (7,) if size == 28 else (16,)


def _structs(shape):
    return jax.ShapeDtypeStruct(shape, jnp.float32), jax.ShapeDtypeStruct(shape[:1], jnp.float32)


@functools.lru_cache(maxsize=None)
def _abstract(name, shape):
    """(output struct, variables structs) of a preset at ``shape``, traced once per session."""
    model = PRESETS[name](image_size=shape[1], num_channels=shape[3], attn_resolutions=_attn(shape[1]))

    def init(x, labels):
        return model.init_with_output({"params": jax.random.key(0)}, x, labels, train=False)

    return jax.eval_shape(init, *_structs(shape))


def _random_params(model, x, labels, y=None, seed=0):
    """Variables shaped like ``model.init``'s, filled from numpy: kernels ``N(0, 1/fan_in)``, norm scales near 1,
    biases small. Non-zero everywhere, so every block (also the zero-initialised output layers) affects the
    output."""
    extra = () if y is None else (y,)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), x, labels, *extra, train=False))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path[-1:])
        z = rng.standard_normal(leaf.shape).astype(np.float32)
        if leaf.ndim >= 2:
            return jnp.asarray(z / np.sqrt(np.prod(leaf.shape[:-1])))
        return jnp.asarray(1.0 + 0.1 * z if "scale" in name else 0.1 * z)

    return jax.tree_util.tree_map_with_path(fill, abstract)




def _finite(tree):
    """chex's comparisons treat NaN == NaN: every compared value must also be finite."""
    for leaf in jax.tree_util.tree_leaves(tree):
        assert bool(jnp.all(jnp.isfinite(leaf))), "non-finite values"


def _counts():
    return {name: nets.count_params(_abstract(name, (2, 32, 32, 3))[1]["params"])
            for name in PRESETS if name != "fashion_mnist_small"}


def test_ddpm_cifar10_param_count():
    n = nets.count_params(_abstract("ddpm_cifar10", (2, 32, 32, 3))[1]["params"])
    assert abs(n - 35.7e6) / 35.7e6 < 0.005, n
    assert n == nets.count_params(nets.abstract_init(nets.ddpm_cifar10(), (1, 32, 32, 3))["params"])


def test_reference_param_counts():
    counts = _counts()
    print("parameter counts:", counts)
    assert abs(counts["small32"] - 6.5e6) / 6.5e6 < 0.01  # diffusers' layout: ~6.5 M
    # score-SDE's cifar10_{ddpmpp,ncsnpp}[_deep]_continuous layouts (regression values; experiments/bench/README.md).
    assert counts["ddpmpp_cifar10"] == 61_804_419
    assert counts["ncsnpp_cifar10"] == 62_758_915
    assert counts["ddpmpp_deep_cifar10"] == 106_632_579
    assert counts["ncsnpp_deep_cifar10"] == 107_587_075
    # NCSN++ = DDPM++ + Fourier features (256 -> 512 first time-MLP layer, 128 frozen frequencies) + the residual
    # input pyramid's three 3x3 convs (3->128, 128->256, 256->256).
    extra = 128 * 512 + 128 + (27 * 128 + 128) + (9 * 128 * 256 + 256) + (9 * 256 * 256 + 256)
    assert counts["ncsnpp_cifar10"] - counts["ddpmpp_cifar10"] == extra
    assert counts["ncsnpp_deep_cifar10"] - counts["ddpmpp_deep_cifar10"] == extra


@pytest.mark.parametrize("shape", SHAPES, ids=["28x28x1", "32x32x3"])
@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_output_shape_abstract(name, shape):
    out, variables = _abstract(name, shape)
    assert out.shape == shape and out.dtype == jnp.float32
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables))


@pytest.mark.parametrize("shape", SHAPES, ids=["28x28x1", "32x32x3"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_structure_variants_output_shape_abstract(variant, shape):
    model = nets.UNet(**{**TINY, "attn_resolutions": _attn(shape[1]), **VARIANTS[variant]})
    out, variables = jax.eval_shape(
        lambda x, l: model.init_with_output(jax.random.key(0), x, l, train=False), *_structs(shape))
    assert out.shape == shape
    assert ("noise_embed" in variables["params"]) == model.conditional


@pytest.mark.parametrize("shape", SHAPES, ids=["28x28x1", "32x32x3"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_tiny_family_runs(family, shape):
    """A real forward pass of each family (with all of its structure options) at both sizes; 28x28 DDPM uses four
    levels (28 -> 14 -> 7 -> 4 -> 7 -> ...) to exercise the odd-size cropping."""
    extra = dict(ch_mult=(1, 1, 2, 2)) if family == "ddpm" and shape[1] == 28 else {}
    model = FAMILIES[family](attn_resolutions=_attn(shape[1]), **extra)
    x = jax.random.normal(jax.random.key(1), shape)
    labels = jnp.array([3.0, 500.0]) if model.embedding_type == "positional" else jnp.array([-3.0, 3.0])
    variables = _random_params(model, x, labels)
    apply = fast_jit(functools.partial(model.apply, train=False))
    out = apply(variables, x, labels)
    assert out.shape == shape and out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out))) and float(jnp.std(out)) > 1e-3
    chex.assert_trees_all_equal(out, apply(variables, x, labels))  # deterministic with dropout off
    assert float(jnp.max(jnp.abs(out - apply(variables, x, labels[::-1])))) > 1e-3  # the noise label matters


def _tiny8(**kw):
    return nets.UNet(**{**TINY, "ch_mult": (1, 2), "attn_resolutions": (4,), **kw})


def test_learn_sigma_and_class_labels_with_null_label():
    model = _tiny8(num_classes=10, learn_sigma=True)
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    labels = jnp.array([10.0, 20.0])
    variables = _random_params(model, x, labels, jnp.array([1, 2]))
    assert variables["params"]["label_embed"]["embedding"].shape == (11, 4 * 8)  # + the null label
    apply = fast_jit(lambda v, y: model.apply(v, x, labels, y, train=False))
    out = apply(variables, jnp.array([1, 2]))
    assert out.shape == (2, 8, 8, 6)  # learned-variance head: channels doubled
    eps, v = nets.split_learned_sigma(out)
    assert eps.shape == v.shape == x.shape
    null = fast_jit(lambda v: model.apply(v, x, labels, None, train=False))(variables)
    chex.assert_trees_all_close(null, apply(variables, jnp.array([10, 10])), atol=1e-5)  # y=None is label 10
    assert float(jnp.max(jnp.abs(out - apply(variables, jnp.array([3, 4]))))) > 1e-3


def test_dropout_changes_outputs_only_in_training():
    model = _tiny8(dropout=0.3)
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    labels = jnp.array([3.0, 500.0])
    variables = _random_params(model, x, labels)
    apply_eval = fast_jit(functools.partial(model.apply, train=False))
    apply_train = fast_jit(lambda v, x, l, k: model.apply(v, x, l, train=True, rngs={"dropout": k}))
    a = apply_train(variables, x, labels, jax.random.key(2))
    b = apply_train(variables, x, labels, jax.random.key(3))
    chex.assert_trees_all_equal(a, apply_train(variables, x, labels, jax.random.key(2)))  # same key, same output
    assert float(jnp.max(jnp.abs(a - b))) > 1e-2
    ref = apply_eval(variables, x, labels)
    assert float(jnp.max(jnp.abs(a - ref))) > 1e-2
    chex.assert_trees_all_equal(ref, apply_eval(variables, x, labels))


def test_bfloat16_compute_close_to_float32():
    kw = dict(**TINY, attn_resolutions=(8,), resblock_type="biggan", skip_rescale=True, fir=True,
              progressive_input="residual")
    m32, m16 = nets.UNet(**kw), nets.UNet(**kw, dtype=jnp.bfloat16)
    x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
    labels = jnp.array([3.0, 500.0])
    variables = _random_params(m32, x, labels)
    chex.assert_trees_all_equal_shapes_and_dtypes(
        variables, jax.eval_shape(lambda: m16.init(jax.random.key(0), x, labels, train=False)))  # float32 params
    out32 = fast_jit(functools.partial(m32.apply, train=False))(variables, x, labels)
    out16 = fast_jit(functools.partial(m16.apply, train=False))(variables, x, labels)
    assert out16.dtype == jnp.float32
    rel = float(jnp.linalg.norm(out16 - out32) / jnp.linalg.norm(out32))
    assert 0 < rel < 0.05, rel  # bf16 really ran (not bit-identical) and stays close


@pytest.mark.parametrize("stride,size,k", [(1, 7, 3), (2, 8, 3), (2, 7, 3), (1, 6, 5)])
def test_conv_matmul_equals_xla_conv(stride, size, k):
    """The CPU formulation equals lax.conv_general_dilated: forward exactly, input and weight gradients, forward-mode
    derivatives and second derivatives to float tolerance; through the Conv module with both impls."""
    x = jax.random.normal(jax.random.key(0), (2, size, size, 5))
    w = jax.random.normal(jax.random.key(1), (k, k, 5, 6)) / np.sqrt(9 * 5)

    def loss(conv):
        return lambda x, w: jnp.sum(jnp.sin(conv(x, w, stride)))

    ref, got = nets._conv.conv_xla, nets._conv.conv_matmul_grad

    def grad_norm(conv, x, w):  # d/dw |d loss / dx|^2: reverse over reverse through the custom rule
        return jax.grad(lambda w: jnp.sum(jax.grad(loss(conv))(x, w) ** 2))(w)

    conv = lambda impl: nets.Conv(6, k, stride=stride, impl=impl)  # noqa: E731
    mod_loss = lambda v, x, impl: jnp.sum(jnp.sin(conv(impl).apply(v, x)))  # noqa: E731

    @fast_jit
    def run(x, w):  # every value below in one compiled program (eager op-by-op compiles each primitive)
        tangents = (0.3 * x, 0.2 * w)
        variables = jax.tree_util.tree_map(lambda p: p + 0.1, conv("xla").init(jax.random.key(1), x))
        return dict(
            direct=jax.lax.conv_general_dilated(x, w, (stride,) * 2, ((k // 2, k // 2),) * 2,
                                                dimension_numbers=("NHWC", "HWIO", "NHWC")),
            ref=ref(x, w, stride), got=got(x, w, stride), shifted=nets._conv.conv_shifted_matmuls(x, w, stride),
            vg=[jax.value_and_grad(loss(c), (0, 1))(x, w) for c in (got, ref)],
            jvp=[jax.jvp(lambda x, w, c=c: c(x, w, stride), (x, w), tangents) for c in (got, ref)],
            grad_norm=[grad_norm(c, x, w) for c in (got, ref)],
            mod_grad=[jax.grad(mod_loss)(variables, x, impl) for impl in ("matmul", "xla")])

    r = run(x, w)
    _finite(r)
    chex.assert_trees_all_equal(r["ref"], r["direct"])
    chex.assert_trees_all_equal(r["got"], r["direct"])
    chex.assert_trees_all_close(r["shifted"], r["direct"], rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(*r["vg"], rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(*r["jvp"], rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(*r["grad_norm"], rtol=1e-4, atol=1e-4)
    chex.assert_trees_all_close(*r["mod_grad"], rtol=1e-5, atol=1e-5)


def _upsample_then_conv(x, w):
    return nets._conv.conv_xla(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2), w)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_conv_upsampled_equals_conv_of_upsampled(k):
    """The sub-pixel form equals the convolution of the nearest-upsampled image: values, both gradients, jvp."""
    x = jax.random.normal(jax.random.key(0), (2, 5, 3, 4))
    w = jax.random.normal(jax.random.key(1), (k, k, 4, 3)) / np.sqrt(k * k * 4)
    loss = lambda conv: lambda x, w: jnp.sum(jnp.sin(conv(x, w)))  # noqa: E731
    convs = (nets._conv.conv_upsampled, _upsample_then_conv)

    @fast_jit
    def run(x, w):
        tangents = (0.3 * x, 0.2 * w)
        return dict(out=[c(x, w) for c in convs], vg=[jax.value_and_grad(loss(c), (0, 1))(x, w) for c in convs],
                    jvp=[jax.jvp(c, (x, w), tangents) for c in convs])

    r = run(x, w)
    _finite(r)
    assert r["out"][1].shape == (2, 10, 6, 3)
    chex.assert_trees_all_close(*r["out"], rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(*r["vg"], rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(*r["jvp"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride,size,k", [(2, 7, 3), (3, 8, 3), (2, 9, 5), (2, 6, 1), (2, 6, 4)])
def test_conv_polyphase_equals_strided_conv(stride, size, k):
    """Polyphase form = XLA's strided convolution; the custom-JVP version keeps XLA's forward exactly and matches its
    gradients, forward-mode derivatives and second derivatives."""
    x = jax.random.normal(jax.random.key(0), (2, size, size - 1, 3))
    w = jax.random.normal(jax.random.key(1), (k, k, 3, 4)) / np.sqrt(k * k * 3)
    ref = lambda x, w: nets._conv.conv_xla(x, w, stride)  # noqa: E731
    got = lambda x, w: nets._conv.conv_polyphase_grad(x, w, stride)  # noqa: E731
    loss = lambda conv: lambda x, w: jnp.sum(jnp.sin(conv(x, w)))  # noqa: E731
    grad_norm = lambda conv, x, w: jax.grad(lambda w: jnp.sum(jax.grad(loss(conv))(x, w) ** 2))(w)  # noqa: E731

    @fast_jit
    def run(x, w):
        tangents = (0.3 * x, 0.2 * w)
        return dict(polyphase=nets._conv.conv_polyphase(x, w, stride), out=[got(x, w), ref(x, w)],
                    vg=[jax.value_and_grad(loss(c), (0, 1))(x, w) for c in (got, ref)],
                    jvp=[jax.jvp(c, (x, w), tangents) for c in (got, ref)],
                    grad_norm=[grad_norm(c, x, w) for c in (got, ref)])

    r = run(x, w)
    _finite(r)
    chex.assert_trees_all_close(r["polyphase"], r["out"][1], rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_equal(*r["out"])
    chex.assert_trees_all_close(*r["vg"], rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(*r["jvp"], rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(*r["grad_norm"], rtol=1e-4, atol=1e-4)


def test_upsampling_and_strided_layers_auto_equal_literal(monkeypatch):
    """conv_impl 'auto' (sub-pixel upsampling convolutions, the 1x1 shortcut of up-ResBlocks moved before the
    upsampling, polyphase input gradients) against 'xla' (upsample, then convolve): the same parameters, outputs and
    gradients for the Upsample / Downsample layers and BigGAN up / down ResBlocks (cropped odd sizes included); the
    sub-pixel form only from SUBPIXEL_MIN_POSITIONS input positions on; a Conv cannot both upsample and stride."""
    def n_convs(x):
        conv = nets.Conv(4, upsample=True)
        jaxpr = jax.make_jaxpr(lambda x: conv.init_with_output(jax.random.key(0), x)[0])(x)
        return str(jaxpr).count("conv_general_dilated")

    assert n_convs(jnp.zeros((4, 16, 16, 2))) == 4 and n_convs(jnp.zeros((4, 16, 15, 2))) == 1  # 1024 vs 960
    monkeypatch.setattr(nets._conv, "SUBPIXEL_MIN_POSITIONS", 0)  # tiny inputs below: the sub-pixel form
    x = jax.random.normal(jax.random.key(1), (2, 4, 4, 8))
    temb = jax.random.normal(jax.random.key(2), (2, 16))
    layers = {
        "upsample": lambda i: nets.Upsample(6, conv_impl=i),
        "upsample_crop": lambda i: nets.Upsample(6, out_hw=(7, 7), conv_impl=i),
        "downsample": lambda i: nets.Downsample(6, conv_impl=i),
        "resblock_up": lambda i: nets.ResBlock(6, kind="biggan", up=True, norm_groups=2, init_scale=1.0, conv_impl=i),
        "resblock_down": lambda i: nets.ResBlock(6, kind="biggan", down=True, norm_groups=2, conv_impl=i),
    }
    for name, layer in layers.items():
        args = (x, temb, False) if name.startswith("resblock") else (x,)
        loss = lambda i: lambda v, x: jnp.sum(jnp.sin(layer(i).apply(v, x, *args[1:])))  # noqa: E731

        @fast_jit
        def run(x):  # both inits and both impls' values and gradients in one compiled program
            variables = jax.tree_util.tree_map(lambda p: p + 0.1, layer("xla").init(jax.random.key(0), x, *args[1:]))
            return (variables, layer("auto").init(jax.random.key(0), x, *args[1:]),
                    [jax.value_and_grad(loss(i), (0, 1))(variables, x) for i in ("auto", "xla")])

        variables, auto_variables, value_and_grad = run(x)
        chex.assert_trees_all_equal_shapes_and_dtypes(variables, auto_variables)
        _finite(value_and_grad)
        chex.assert_trees_all_close(*value_and_grad, rtol=1e-4, atol=1e-4)
    # FIR upsampling with the kernel (1, 1) is nearest upsampling, applied the literal way (before conv0 and the
    # shortcut): the reordered nearest up-ResBlock is the same function.
    late, literal = (nets.ResBlock(6, kind="biggan", up=True, norm_groups=2, fir=f, fir_kernel=(1, 1)) for f in (0, 1))

    @fast_jit
    def late_and_literal(x, temb):
        variables = jax.tree_util.tree_map(lambda p: p + 0.1, late.init(jax.random.key(0), x, temb, False))
        return late.apply(variables, x, temb, False), literal.apply(variables, x, temb, False)

    outputs = late_and_literal(x, temb)
    _finite(outputs)
    chex.assert_trees_all_close(*outputs, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="upsample=True needs stride=1, got stride=2"):
        nets.Conv(4, stride=2, upsample=True).init(jax.random.key(0), x)


def test_conv_impl_choice():
    from diffjax.nets._conv import _use_matmul
    assert not _use_matmul("auto")
    assert _use_matmul("matmul") and not _use_matmul("xla")
    with pytest.raises(ValueError, match="conv_impl"):
        nets.UNet(conv_impl="patches")


def _upfirdn2d_reference(x, fir_kernel, up):
    """StyleGAN2's upfirdn2d in numpy (float64): zero insertion (up=2), padding, true 2-D convolution with
    ``outer(k, k) / sum(k)^2`` (times 4 when upsampling), every second sample (down=2 when ``up`` is False)."""
    k = np.asarray(fir_kernel, np.float64)
    k2, n, p = np.outer(k, k) / k.sum() ** 2 * (4 if up else 1), len(k), len(k) - 2
    x = np.asarray(x, np.float64)
    if up:
        z = np.zeros((x.shape[0], 2 * x.shape[1] - 1, 2 * x.shape[2] - 1, x.shape[3]))
        z[:, ::2, ::2] = x
        pads = [((p + 1) // 2 + 1, p // 2 + 1)] * 2
    else:
        z, pads = x, [((p + 1) // 2, p // 2 + m % 2) for m in x.shape[1:3]]
    z = np.pad(z, ((0, 0), *pads, (0, 0)))
    ho, wo = z.shape[1] - n + 1, z.shape[2] - n + 1
    out = sum(k2[n - 1 - i, n - 1 - j] * z[:, i:i + ho, j:j + wo] for i in range(n) for j in range(n))
    return out if up else out[:, ::2, ::2]


@pytest.mark.parametrize("fir_kernel", [(1, 3, 3, 1), (1, 2, 1), (1, 2), (1, 2, 5)])
def test_fir_resampling_equals_upfirdn2d(fir_kernel):
    """FIR up/downsampling equal upfirdn2d (asymmetric kernels too: a convolution, not a correlation) at even and
    odd sizes, and their gradients are the transposes (<f(x), y> = <x, f^T y>)."""
    fns = ((nets.fir_upsample_2d, True), (nets.fir_downsample_2d, False))
    xs = [jax.random.normal(jax.random.key(0), shape) for shape in [(2, 8, 8, 3), (2, 7, 5, 3)]]
    ys = [jax.random.normal(jax.random.key(1), jax.eval_shape(lambda x: fn(x, fir_kernel), x).shape)
          for x in xs for fn, _ in fns]

    @fast_jit
    def run(xs, ys):  # both sizes, both directions: f(x) and f^T y, one compiled program
        results = []
        for x, (fn, _) in zip([xs[0], xs[0], xs[1], xs[1]], fns * 2):
            out, vjp = jax.vjp(lambda x: fn(x, fir_kernel), x)
            results.append((out, vjp(ys[len(results)])[0]))
        return results

    results = run(xs, ys)
    assert len(results) == 4
    for (out, x_bar), x, y, (_, up) in zip(results, [xs[0], xs[0], xs[1], xs[1]], ys, fns * 2):
        ref = _upfirdn2d_reference(x, fir_kernel, up)
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
        assert np.all(np.isfinite(x_bar))
        np.testing.assert_allclose(np.vdot(x_bar, x), np.vdot(ref, y), rtol=1e-5)


def test_fir_resampling_shapes_and_unit_gain():
    x = jnp.ones((1, 8, 8, 3))
    up, down = fast_jit(lambda x: (nets.fir_upsample_2d(x), nets.fir_downsample_2d(x)))(x)
    assert up.shape == (1, 16, 16, 3) and down.shape == (1, 4, 4, 3)
    np.testing.assert_allclose(up[:, 2:-2, 2:-2], 1.0, rtol=1e-6)  # interior: constant preserved
    np.testing.assert_allclose(down[:, 1:-1, 1:-1], 1.0, rtol=1e-6)
    assert nets.fir_downsample_2d(jnp.ones((1, 7, 7, 2))).shape == (1, 4, 4, 2)


def test_mlp_and_classifier_shapes():
    mlp = nets.toy_mlp(hidden=(32, 32), num_classes=3)
    x = jax.random.normal(jax.random.key(0), (5, 2))
    out = fast_jit(lambda x: mlp.apply(mlp.init(jax.random.key(1), x, jnp.zeros(5), None, train=False), x,
                                      jnp.arange(5.0), jnp.arange(5) % 3, train=False))(x)
    assert out.shape == (5, 2)
    clf = nets.noise_classifier_cifar10(ch=8, ch_mult=(1, 2), attn_resolutions=(4,), norm_groups=4,
                                        image_size=None)
    x = jax.random.normal(jax.random.key(0), (3, 8, 8, 3))
    v = _random_params(clf, x, jnp.zeros(3))
    logits = fast_jit(functools.partial(clf.apply, train=False))(v, x, jnp.array([1.0, 2.0, 3.0]))
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


@pytest.mark.parametrize("heads_per_step", [None, 1, 3, 8])
def test_chunked_attention_equals_reference(heads_per_step):
    """dot_product_attention (head chunks, recomputing backward) equals the textbook formula: values, gradients
    of all three inputs, jitted; also in bfloat16 within bf16 tolerance."""
    kq, kk, kv, kc = jax.random.split(jax.random.key(0), 4)
    q, k, v = (jax.random.normal(key, (2, 10, 4, 3)) for key in (kq, kk, kv))
    k = 2.0 * k  # peaked softmax rows
    cot = jax.random.normal(kc, q.shape)
    loss = lambda f: lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v)) * cot)  # noqa: E731
    chunked = functools.partial(nets._attention.dot_product_attention, heads_per_step=heads_per_step)

    @fast_jit
    def run(q, k, v):  # the chunked and the reference values and gradients, and bfloat16, in one compiled program
        grads = [jax.grad(loss(f), (0, 1, 2))(q, k, v) for f in (chunked, nets._attention.reference_attention)]
        return (chunked(q, k, v), nets._attention.reference_attention(q, k, v), grads,
                chunked(*[a.astype(jnp.bfloat16) for a in (q, k, v)]))

    got, ref, grads, out16 = run(q, k, v)
    _finite((got, ref, grads, out16))
    chex.assert_trees_all_close(got, ref, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(*grads, rtol=1e-5, atol=1e-5)
    assert out16.dtype == jnp.bfloat16
    assert float(jnp.max(jnp.abs(out16.astype(jnp.float32) - ref))) < 0.05


@pytest.mark.parametrize("n", [1, 7, 8, 12, 256, 784])
def test_row_max_by_halving_equals_max(n):
    """The attention's row maximum (halved with element-wise maxima first) is jnp.max exactly, NaN and -inf
    rows included."""
    from diffjax.nets._attention import _row_max
    s = np.array(jax.random.normal(jax.random.key(n), (3, 5, n)))
    s[0, 1, :] = -np.inf
    s[1, 2, n // 2] = np.nan
    s[2, 3, n - 1] = 50.0  # the maximum in the last column
    np.testing.assert_array_equal(np.asarray(fast_jit(_row_max)(jnp.asarray(s))), np.max(s, axis=-1, keepdims=True))


def test_layer_impls_and_forward_mode():
    """AttnBlock (GroupNorm + attention) with impl 'fused' and 'reference' gives the same outputs and gradients;
    forward mode (jax.jvp) works with both and agrees (tests/test_nets_jvp.py checks the kernels in depth)."""
    x = jax.random.normal(jax.random.key(1), (2, 4, 4, 16))
    block = lambda impl="auto": nets.AttnBlock(num_head_channels=4, init_scale=1.0, norm_groups=4,  # noqa: E731
                                               impl=impl)

    @fast_jit
    def run_all(x):  # outputs, gradients and JVPs of both impls in one compiled program
        variables = block().init(jax.random.key(2), x)
        run = lambda impl: lambda x: block(impl).apply(variables, x)  # noqa: E731
        grad = lambda impl: jax.grad(lambda x: jnp.sum(jnp.sin(run(impl)(x))))(x)  # noqa: E731
        impls = ("fused", "reference")
        return ([run(i)(x) for i in impls], [grad(i) for i in impls],
                {impl: jax.jvp(run(impl), (x,), (x,)) for impl in impls})

    out, grad, jvp = run_all(x)
    _finite((out, grad))
    chex.assert_trees_all_close(*out, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(*grad, rtol=1e-4, atol=1e-5)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(jvp))
    chex.assert_trees_all_close(jvp["fused"], jvp["reference"], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="layer_impl"):
        nets.UNet(layer_impl="blockwise")


def test_group_norm_and_fused_equal_flax():
    """group_norm and group_norm_fused (hand-written VJP) equal flax's GroupNorm: values and the gradients of
    input, scale and bias."""
    import flax.linen as nn
    x = 3.0 * jax.random.normal(jax.random.key(3), (2, 5, 5, 12)) + 1.5
    scale, bias = jnp.linspace(0.5, 1.5, 12), jnp.linspace(-1.0, 1.0, 12)
    flax_gn = lambda x, scale, bias: nn.GroupNorm(num_groups=4, epsilon=1e-6).apply(  # noqa: E731
        {"params": {"scale": scale, "bias": bias}}, x)
    norms = (nets.group_norm, nets._norm.group_norm_fused)

    @fast_jit
    def run(x, scale, bias):  # flax's and both norms' values and gradients in one compiled program
        g = lambda f: jax.grad(lambda *a: jnp.sum(jnp.sin(f(*a))), (0, 1, 2))(x, scale, bias)  # noqa: E731
        return (flax_gn(x, scale, bias), g(flax_gn),
                [(norm(x, scale, bias, 4), g(lambda x, s, b, norm=norm: norm(x, s, b, 4))) for norm in norms])

    ref, ref_grad, results = run(x, scale, bias)
    _finite((ref, ref_grad, results))
    for value, grad in results:
        chex.assert_trees_all_close(value, ref, rtol=1e-5, atol=1e-5)
        chex.assert_trees_all_close(grad, ref_grad, rtol=1e-4, atol=1e-4)
