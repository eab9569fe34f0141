"""Cascaded diffusion (Ho et al. 2021; issue 39): the resize operations between the stages, noise conditioning
augmentation, the super-resolution network's use of its condition, a tiny super-resolution model that learns to
use it, the whole cascade through ``python -m diffjax.main`` and the configuration errors."""
import gzip
import os
import struct
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import diffjax as dj  # noqa: E402
from configs import fashion_mnist_cascade_base, fashion_mnist_cascade_sr  # noqa: E402
from diffjax import config_lib as cl  # noqa: E402
from diffjax import main as dmain  # noqa: E402
from diffjax import nets  # noqa: E402
from diffjax import run as drun  # noqa: E402
from diffjax.core import cascade as cc  # noqa: E402
from _fast_compile import fast_jit  # noqa: E402

pytestmark = pytest.mark.xdist_group("test_cascade")  # the module-scoped trained base model is built once


def _finite(*arrays):
    return all(bool(np.all(np.isfinite(np.asarray(a)))) for a in arrays)


# ------------------------------------------------------------------------------------------------ resize operations


def test_downsample_area_of_constant_and_linear_images():
    const = jnp.full((2, 28, 28, 3), 0.37)
    np.testing.assert_allclose(cc.downsample_area(const, 2), np.full((2, 14, 14, 3), 0.37), rtol=1e-6)
    # a linear image sampled at the pixel centres (i + 1/2, j + 1/2) becomes the same linear function sampled at the
    # centres of the coarse pixels: the mean of a linear function over a block is its value at the block's centre
    f = lambda u, v: 0.5 + 0.03 * u - 0.02 * v  # noqa: E731
    for factor, size in ((2, 28), (4, 28), (7, 28)):
        c = np.arange(size) + 0.5
        x = f(c[:, None], c[None, :])[None, :, :, None]
        cc_ = (np.arange(size // factor) + 0.5) * factor
        expected = f(cc_[:, None], cc_[None, :])[None, :, :, None]
        got = cc.downsample_area(jnp.asarray(x, jnp.float32), factor)
        assert got.shape == (1, size // factor, size // factor, 1)
        np.testing.assert_allclose(got, expected, atol=1e-5)
    # the block mean, written out
    x = np.random.default_rng(0).normal(size=(3, 6, 6, 2)).astype(np.float32)
    by_hand = np.zeros((3, 3, 3, 2), np.float32)
    for i in range(3):
        for j in range(3):
            by_hand[:, i, j] = x[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean(axis=(1, 2))
    np.testing.assert_allclose(cc.downsample_area(x, 2), by_hand, atol=1e-6)


def test_upsample_bilinear_is_exact_on_linear_ramps():
    f = lambda u, v: -0.4 + 0.05 * u + 0.08 * v  # noqa: E731
    low_c = (np.arange(14) + 0.5) * 2  # the coarse pixel centres in units of fine pixels
    low = f(low_c[:, None], low_c[None, :])[None, :, :, None].astype(np.float32)
    up = np.asarray(cc.upsample_bilinear(low, 28))[0, :, :, 0]
    fine_c = np.arange(28) + 0.5
    truth = f(fine_c[:, None], fine_c[None, :])
    # exact away from the half coarse pixel at each border; there the edge value is extended
    np.testing.assert_allclose(up[1:-1, 1:-1], truth[1:-1, 1:-1], atol=1e-5)
    np.testing.assert_allclose(up[0, 1:-1], f(low_c[0], fine_c[1:-1]), atol=1e-5)
    np.testing.assert_allclose(up[-1, 1:-1], f(low_c[-1], fine_c[1:-1]), atol=1e-5)
    # downsampling the upsampled ramp gives the ramp back away from the borders
    back = np.asarray(cc.downsample_area(cc.upsample_bilinear(low, 28), 2))[0, :, :, 0]
    np.testing.assert_allclose(back[1:-1, 1:-1], low[0, 1:-1, 1:-1, 0], atol=1e-5)
    # bilinear weights written out for one interior output pixel: (5, 9) sits at (2.75, 4.75) in coarse pixels,
    # i.e. 2.25 and 4.25 in units from the centre of coarse pixel 0
    x = np.random.default_rng(1).normal(size=(1, 14, 14, 1)).astype(np.float32)
    up = np.asarray(cc.upsample_bilinear(x, 28))
    r, c = 2.25, 4.25
    r0, c0, dr, dc = int(r), int(c), r - int(r), c - int(c)
    by_hand = ((1 - dr) * (1 - dc) * x[0, r0, c0] + (1 - dr) * dc * x[0, r0, c0 + 1]
               + dr * (1 - dc) * x[0, r0 + 1, c0] + dr * dc * x[0, r0 + 1, c0 + 1])
    np.testing.assert_allclose(up[0, 5, 9], by_hand, atol=1e-6)


def test_resize_arguments_are_checked():
    with pytest.raises(ValueError, match="multiple of factor=3"):
        cc.downsample_area(jnp.zeros((1, 28, 28, 1)), 3)
    with pytest.raises(ValueError, match=r"x must be images shaped \(batch, H, W, C\)"):
        cc.upsample_bilinear(jnp.zeros((28, 28)), 56)
    with pytest.raises(ValueError, match="size=7 must be >="):
        cc.upsample_bilinear(jnp.zeros((1, 14, 14, 1)), 7)


def test_data_resize_area_gives_rounded_block_means():
    from diffjax.config_lib._build import _fit
    cfg = fashion_mnist_cascade_base.get_config()
    images = np.random.default_rng(2).integers(0, 256, size=(4, 28, 28, 1), dtype=np.uint8)
    got = _fit(images, cfg.data)
    by_hand = np.round(images.reshape(4, 14, 2, 14, 2, 1).astype(np.float64).mean(axis=(2, 4))).astype(np.uint8)
    assert got.dtype == np.uint8 and got.shape == (4, 14, 14, 1)
    np.testing.assert_array_equal(got, by_hand)
    cfg.data.image_size = 12
    with pytest.raises(ValueError, match="data.resize='area' needs"):
        _fit(images, cfg.data)


# ------------------------------------------------------------------------------------------ conditioning augmentation


@pytest.mark.parametrize("process", [dj.rectified_flow(), dj.vp_sde(0.1, 20.0)], ids=["rectified_flow", "vp"])
def test_level_zero_leaves_the_condition_unchanged(process):
    low = jax.random.uniform(jax.random.key(0), (3, 14, 14, 1), minval=-1, maxval=1)
    cond = cc.low_res_condition(jax.random.key(1), low, process, size=28, level=0.0)
    np.testing.assert_array_equal(cond.image, cc.upsample_bilinear(low, 28))
    np.testing.assert_array_equal(cond.noise_label, np.zeros(3))
    # training with aug_level_max = 0: the condition is the training image downsampled and upsampled, exactly
    x = jax.random.uniform(jax.random.key(2), (3, 28, 28, 1), minval=-1, maxval=1)
    cond = cc.training_condition(jax.random.key(3), x, process, factor=2, max_level=0.0)
    np.testing.assert_array_equal(cond.image, cc.upsample_bilinear(cc.downsample_area(x, 2), 28))


@pytest.mark.parametrize("process, level", [(dj.rectified_flow(), 0.3), (dj.vp_sde(0.1, 20.0), 0.2),
                                            (dj.ve_sde(0.01, 50.0), 0.4)], ids=["rectified_flow", "vp", "ve"])
def test_augmentation_marginal_matches_the_process(process, level):
    """z_s = a(s) z + sigma(s) eps: mean a(s) z and std sigma(s), from 64 x 28 x 28 draws per pixel value."""
    low = jnp.where(jnp.arange(14)[None, None, :, None] < 7, -0.6, 0.8) * jnp.ones((64, 14, 14, 1))
    cond = cc.low_res_condition(jax.random.key(4), low, process, size=28, level=level)
    a, s = (float(v) for v in process.marginal(jnp.float32(level)))
    z = np.asarray(cond.image)
    assert _finite(z)
    for value, cols in ((-0.6, slice(0, 12)), (0.8, slice(16, 28))):  # away from the bilinear seam
        part = z[:, :, cols]
        n = part.size
        assert abs(part.mean() - a * value) < 4 * s / np.sqrt(n) + 1e-6, (part.mean(), a * value)
        assert abs(part.std() - s) < 4 * s / np.sqrt(2 * n), (part.std(), s)
    np.testing.assert_allclose(cond.noise_label, np.full(64, 999.0 * level / process.T), rtol=1e-6)


def test_training_levels_are_uniform_and_each_example_is_corrupted_at_its_own():
    process = dj.rectified_flow()
    x = jnp.zeros((2000, 4, 4, 1))  # z = 0, so z_s = sigma(s) eps: the per-example std tells s
    cond = cc.training_condition(jax.random.key(5), x, process, factor=2, max_level=0.5)
    levels = np.asarray(cond.noise_label) * process.T / 999.0  # the network's label of level s is 999 s / T
    assert levels.min() >= 0.0 and levels.max() <= 0.5 + 1e-6
    # U[0, 0.5]: mean 0.25, variance 0.5^2 / 12; the deciles of a uniform
    assert abs(levels.mean() - 0.25) < 4 * 0.5 / np.sqrt(12 * 2000)
    np.testing.assert_allclose(np.quantile(levels, [0.1, 0.5, 0.9]), [0.05, 0.25, 0.45], atol=0.02)
    # the noise of each example has the std of its level (its 16 pixels; sum of squares / 16 vs s^2)
    ms = np.mean(np.asarray(cond.image).reshape(2000, -1) ** 2, axis=1)
    ratio = ms / np.maximum(levels, 1e-3) ** 2
    assert abs(np.median(ratio[levels > 0.05]) - 1.0) < 0.1  # chi^2_16 / 16 has median ~0.96


# ------------------------------------------------------------------------------------------------- the network


def _tiny_unet(size, **kw):
    return nets.UNet(ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), dropout=0.0, norm_groups=4,
                     image_size=size, num_channels=1, **kw)


@pytest.mark.parametrize("net", [_tiny_unet(8), nets.DiT(patch_size=2, hidden_size=16, depth=1, num_heads=2,
                                                          input_size=8, in_channels=1)], ids=["unet", "dit"])
def test_the_sr_network_uses_its_condition(net):
    model = nets.LowResConditioned(net)
    k = jax.random.split(jax.random.key(6), 4)
    x = jax.random.normal(k[0], (2, 8, 8, 1))
    cond = cc.LowResCondition(jax.random.normal(k[1], (2, 8, 8, 1)), jnp.array([0.0, 300.0]))
    params = fast_jit(lambda: model.init(k[2], x, jnp.ones(2), cond, train=False)["params"])()
    # DiT's adaLN-Zero output is exactly zero at initialisation: perturb the parameters so that it is not
    params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(k[3], p.shape), params)
    jitted = fast_jit(lambda c: model.apply({"params": params}, x, jnp.ones(2), c, train=False))
    apply = lambda c: jitted(c) if c.image.shape == x.shape else model.apply(  # noqa: E731
        {"params": params}, x, jnp.ones(2), c, train=False)
    out = apply(cond)
    assert out.shape == x.shape and _finite(out)
    other_image = apply(cond._replace(image=cond.image + 1.0))
    other_level = apply(cond._replace(noise_label=jnp.array([500.0, 700.0])))
    assert float(jnp.max(jnp.abs(other_image - out))) > 1e-3
    assert float(jnp.max(jnp.abs(other_level - out))) > 1e-3
    # the condition enters as input channels: the first layer sees 2 channels, the output has x's 1
    first = params["net"]["conv_in"]["kernel"] if "conv_in" in params["net"] else params["net"]["x_embedder_kernel"]
    assert first.shape[2] == 2
    with pytest.raises(ValueError, match=r"cond.image must be shaped"):
        apply(cond._replace(image=jnp.zeros((2, 4, 4, 1))))


# ------------------------------------------------------------------------------------- a tiny model learns to use it


def _toy_sr_config(low_res_size):
    cfg = fashion_mnist_cascade_sr.get_config()
    cfg.data.image_size = 8
    cfg.cascade.low_res_size = low_res_size
    cfg.cascade.aug_level_max = cfg.cascade.sampling_aug_level = 0.0
    cfg.model.overrides.update(dict(ch=16, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), dropout=0.0,
                                    image_size=8, norm_groups=4))
    return cfg


def _train_losses(cfg, batches, steps):
    import optax
    model, sde = cl.build_model(cfg), cl.build_sde(cfg)
    loss_fn = cl.build_loss_fn(cfg, model, sde)
    from diffjax.train import init_params
    condition = cl.example_condition(cfg, 1)
    params = fast_jit(lambda: init_params(jax.random.key(0), model, (1, 8, 8, 1), condition=condition))()
    opt = optax.adam(3e-3)

    @fast_jit
    def step(params, opt_state, key, x):
        (loss, _), g = jax.value_and_grad(loss_fn, has_aux=True)(params, key, {"x": x})
        updates, opt_state = opt.update(g, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state, losses = opt.init(params), []
    for i in range(steps):
        params, opt_state, loss = step(params, opt_state, jax.random.key(100 + i), batches[i % len(batches)])
        losses.append(float(loss))
    return np.asarray(losses)


def test_a_tiny_sr_model_learns_to_use_the_condition():
    """High-resolution images that are a deterministic function of their low-resolution version (random 4x4 images
    upsampled by repeating each pixel 2x2): with the condition the flow-matching loss falls far below what the same
    network reaches without it (cascade.low_res_size=0), whose best is the loss of not knowing the blocks."""
    rng = np.random.default_rng(7)
    low = rng.choice([-0.8, 0.8], size=(16, 16, 4, 4, 1)).astype(np.float32)
    batches = jnp.asarray(low.repeat(2, axis=2).repeat(2, axis=3))  # (16 batches, 16, 8, 8, 1)
    conditional = _train_losses(_toy_sr_config(4), batches, 150)
    unconditional = _train_losses(_toy_sr_config(0), batches, 150)
    assert _finite(conditional, unconditional)
    late_c, late_u = conditional[-30:].mean(), unconditional[-30:].mean()
    assert late_c < 0.5 * late_u, (late_c, late_u)
    assert late_c < 0.5 * conditional[:10].mean()


# ----------------------------------------------------------------------------------- the cascade through main


def _write_idx(path, array):
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape))
        f.write(np.ascontiguousarray(array, np.uint8).tobytes())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A Fashion-MNIST-shaped dataset of 32 train and 16 test images (blobs), in IDX files."""
    d = tmp_path_factory.mktemp("fmnist")
    rng = np.random.default_rng(8)
    for split, n in (("train", 32), ("t10k", 16)):
        yy, xx = np.mgrid[:28, :28]
        centres = rng.integers(6, 22, size=(n, 2))
        images = (255 * np.exp(-((yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2) / 30.0))
        _write_idx(d / f"{split}-images-idx3-ubyte.gz", images.astype(np.uint8))
        _write_idx(d / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, size=n).astype(np.uint8))
    return str(d)


def _tiny(cfg, data_dir, size):
    t = cfg.training
    t.n_iters, t.n_jitted_steps, t.log_freq, t.batch_size = 2, 1, 1, 8
    t.checkpoint_freq = t.snapshot_freq = t.snapshot_freq_for_preemption = 2
    t.snapshot_sampling, t.posthoc_ema_freq = False, 0
    cfg.optim.warmup = 1
    cfg.data.data_dir = data_dir
    cfg.model.overrides.update(dict(ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), dropout=0.0,
                                    image_size=size, norm_groups=4))
    s = cfg.sampling
    s.num_steps, s.num_samples, s.batch_size = 2, 6, 4
    return cfg


@pytest.fixture(scope="module")
def base_workdir(tmp_path_factory, data_dir):
    wd = str(tmp_path_factory.mktemp("cascade") / "base")
    dmain.run_mode(_tiny(fashion_mnist_cascade_base.get_config(), data_dir, 14), wd, "train", progress=False)
    return wd


@pytest.fixture(scope="module")
def sr_workdir(tmp_path_factory, data_dir):
    """The super-resolution stage trained 2 steps through main, with snapshots of upsampled test images."""
    cfg = _tiny(fashion_mnist_cascade_sr.get_config(), data_dir, 28)
    cfg.training.snapshot_sampling, cfg.sampling.snapshot_num = True, 4
    wd = str(tmp_path_factory.mktemp("cascade") / "sr")
    dmain.run_mode(cfg, wd, "train", progress=False)
    return wd


def test_sr_stage_trains_through_main_without_a_base_model(sr_workdir):
    snap = np.load(os.path.join(sr_workdir, "samples", "iter_00000002.npz"))["x"]
    assert snap.dtype == np.uint8 and snap.shape == (4, 28, 28, 1)
    assert os.path.isdir(os.path.join(sr_workdir, "checkpoints", "2"))


def test_the_cascade_samples_through_main(base_workdir, sr_workdir, data_dir, capsys):
    cfg = _tiny(fashion_mnist_cascade_sr.get_config(), data_dir, 28)
    cfg.cascade.base_workdir = base_workdir
    x = dmain.run_mode(cfg, sr_workdir, "sample", progress=False)
    out = capsys.readouterr().out
    assert f"cascade base model: step 2 in {base_workdir} (14x14x1, ode_heun_2)" in out
    assert "WARNING" not in out  # base_workdir is a sampling-only field of the SR workdir
    # NFE: Heun's 2 steps = 4 evaluations in each stage
    assert "NFE 8 score evaluations per sample" in out
    assert x.shape == (6, 28, 28, 1) and _finite(x)
    z = np.load(os.path.join(sr_workdir, "samples", "samples_00000002_ode_heun_2_aug0.1.npz"))["x"]
    assert z.dtype == np.uint8 and z.shape == (6, 28, 28, 1)
    # the eval cache is keyed by the base model's checkpoint too
    settings = drun.eval_settings(cfg, 2)
    assert settings["base"] == {"workdir": os.path.abspath(base_workdir), "step": 2}


def test_the_sr_stage_alone_samples_on_downsampled_training_images(sr_workdir, data_dir, capsys):
    """cascade.sampling_low_res="train": no base model; the condition is the first training images, downsampled
    (the same images whatever the key), and the file says so."""
    cfg = _tiny(fashion_mnist_cascade_sr.get_config(), data_dir, 28)
    cfg.cascade.sampling_low_res = "train"
    cfg.cascade.sampling_aug_level = 0.0
    x = dmain.run_mode(cfg, sr_workdir, "sample", progress=False)
    out = capsys.readouterr().out
    assert "cascade base model" not in out and "NFE 4 score evaluations per sample" in out
    assert x.shape == (6, 28, 28, 1) and _finite(x)
    z = np.load(os.path.join(sr_workdir, "samples", "samples_00000002_ode_heun_2_aug0_ontrain.npz"))["x"]
    assert z.dtype == np.uint8 and z.shape == (6, 28, 28, 1)
    run = drun.open_run(cfg, sr_workdir)
    run.checkpoints.close()
    low, nfe = run.low_res.sample(jax.random.key(0), 6)
    from diffjax.core.cascade import downsample_area
    from diffjax.data import to_unit
    from diffjax.run._common import split_rows
    images, _ = split_rows(cfg, "train", 6)
    np.testing.assert_allclose(low, np.asarray(downsample_area(to_unit(images), 2)), atol=1e-6)
    assert nfe == 0 and drun.eval_settings(cfg, 2)["base"] == {"low_res": "train"}


def test_the_sr_stage_follows_its_condition(base_workdir, sr_workdir, data_dir):
    """SuperResolutionRun.sample on given low-resolution images: other images give other samples (same key)."""
    cfg = _tiny(fashion_mnist_cascade_sr.get_config(), data_dir, 28)
    cfg.cascade.base_workdir = base_workdir
    cfg.cascade.sampling_aug_level = 0.0
    run = drun.open_run(cfg, sr_workdir)
    assert isinstance(run, drun.SuperResolutionRun)
    state, step = run.restore()
    run.checkpoints.close()
    low = np.zeros((4, 14, 14, 1), np.float32)
    a = run.sample(state.ema_params, jax.random.key(0), 4, condition=low)
    b = run.sample(state.ema_params, jax.random.key(0), 4, condition=low + 0.9)
    assert _finite(a, b) and float(np.max(np.abs(a - b))) > 1e-4


# ------------------------------------------------------------------------------------------------ config errors


def _sr(**fields):
    cfg = fashion_mnist_cascade_sr.get_config()
    for k, v in fields.items():
        section, name = k.split("__")
        cfg[section][name] = v
    return cfg


@pytest.mark.parametrize("fields, match", [
    (dict(cascade__low_res_size=10), r"cascade.low_res_size=10 must divide data.image_size=28 .*\[1, 2, 4, 7, 14\]"),
    (dict(cascade__low_res_size=-1), r"cascade.low_res_size must be an integer >= 0"),
    (dict(cascade__aug_level_max=1.5), r"cascade.aug_level_max must be a number in \[0, 0.999\] \(times of training.sde='rectified_flow'"),
    (dict(cascade__sampling_aug_level=0.5), r"cascade.sampling_aug_level must be a number in \[0, 0.3\]"),
    (dict(cascade__low_res_size=0), r"cascade.aug_level_max=0.3 applies to a super-resolution stage"),
    (dict(data__num_classes=10), r"cannot be class-conditional too"),
    (dict(data__resize="nearest"), r"data.resize='nearest' is not known; allowed values: \['area', 'bicubic'\]"),
    (dict(cascade__sampling_low_res="test"), r"cascade.sampling_low_res must be one of \('base', 'train'\), got 'test'"),
])
def test_bad_cascade_fields_are_one_line_errors(fields, match):
    with pytest.raises(ValueError, match=match) as e:
        cl.validate(_sr(**fields), device_count=1)
    assert "\n" not in str(e.value)


def test_missing_or_mismatched_base_workdir(tmp_path, base_workdir, sr_workdir, data_dir):
    cfg = _tiny(fashion_mnist_cascade_sr.get_config(), data_dir, 28)
    with pytest.raises(ValueError, match=r"cascade.base_workdir is empty: .*--config.cascade.base_workdir=DIR"):
        dmain.run_mode(cfg, sr_workdir, "sample", progress=False)
    cfg.cascade.base_workdir = str(tmp_path / "nowhere")
    cfg.eval.feature_net, cfg.eval.allow_random_inception = "inception", True  # --mode eval gets to the base model
    with pytest.raises(ValueError, match=r"cascade.base_workdir=.*nowhere' is not a directory"):
        dmain.run_mode(cfg, sr_workdir, "eval", progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg.cascade.base_workdir = str(empty)
    with pytest.raises(ValueError, match=r"holds no config.json"):
        dmain.run_mode(cfg, sr_workdir, "sample", progress=False)
    # a base workdir with its config but no checkpoint
    import shutil
    no_ckpt = tmp_path / "no_ckpt"
    no_ckpt.mkdir()
    shutil.copy(os.path.join(base_workdir, "config.json"), no_ckpt / "config.json")
    cfg.cascade.base_workdir = str(no_ckpt)
    with pytest.raises(ValueError, match=r"holds no checkpoint .* train the base model there first"):
        dmain.run_mode(cfg, sr_workdir, "sample", progress=False)
    # the SR stage's workdir as the base: 28x28 images, not the 14x14 this stage is conditioned on
    cfg.cascade.base_workdir = sr_workdir
    with pytest.raises(ValueError, match=r"holds a model of 28x28x1 images, but this super-resolution stage is "
                                         r"conditioned on cascade.low_res_size=14"):
        dmain.run_mode(cfg, sr_workdir, "sample", progress=False)
    with pytest.raises(ValueError, match=r"--mode likelihood is not defined"):
        dmain.run_mode(cfg, sr_workdir, "likelihood", progress=False)
