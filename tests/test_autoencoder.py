"""The KL autoencoder (diffjax.nets.AutoencoderKL): shapes, the posterior's math against closed forms, layers against
NumPy formulas, the torch-free safetensors reader against a hand-written file, the diffusers state-dict loader on a
synthetic dict of known layout (and its errors), config.task="autoencoder" (exact resume, a training run whose
reconstruction error drops, --mode eval's PSNR / Frechet distance) and the config checks. Parity with diffusers'
PyTorch AutoencoderKL itself: experiments/parity/autoencoder_kl_vs_diffusers.py (torch is not a test dependency)."""
import json
import os
import struct
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from configs import fashion_mnist_autoencoder  # noqa: E402
from diffjax import config_lib as cl  # noqa: E402
from diffjax import run as drun  # noqa: E402
from diffjax.eval.safetensors import read_safetensors, write_safetensors  # noqa: E402
from diffjax.main import run_mode  # noqa: E402
from diffjax.nets import AutoencoderKL, DiagonalGaussian, autoencoder_loss, autoencoder_params_from_diffusers  # noqa: E402
from diffjax.nets._autoencoder import Attention, _DownConv  # noqa: E402

pytestmark = pytest.mark.xdist_group("test_autoencoder")
ARTIFACTS = os.path.join(REPO, "experiments", "results", "artifacts")


def _tiny(**kw):
    base = dict(block_out_channels=(8, 8), layers_per_block=1, latent_channels=3, norm_num_groups=4, in_channels=1,
                out_channels=1)
    return AutoencoderKL(**{**base, **kw})


def _finite(*arrays):
    for a in arrays:
        assert np.all(np.isfinite(np.asarray(a)))


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize("channels,size,latent", [((4,), 4, 4), ((4, 8), 8, 4), ((4, 8, 8), 12, 3)])
def test_shapes_follow_the_down_factor(channels, size, latent):
    model = _tiny(block_out_channels=channels, in_channels=3, out_channels=2, layer_impl="reference")
    x = jax.random.uniform(jax.random.key(0), (2, size, size, 3), minval=-1, maxval=1)
    v = model.init(jax.random.key(1), x)
    post = model.apply(v, x, method="encode")
    assert model.down_factor == 2 ** (len(channels) - 1)
    assert post.mean.shape == post.logvar.shape == (2, latent, latent, 3) == model.latent_shape(x.shape)
    y = model.apply(v, post.mean, method="decode")
    recon, post2 = model.apply(v, x, jax.random.key(2))
    assert y.shape == recon.shape == (2, size, size, 2)
    _finite(post.mean, post.logvar, y, recon)
    np.testing.assert_allclose(model.apply(v, x)[0], y, atol=1e-6)  # key=None decodes the posterior mean
    assert not np.allclose(recon, y)  # a posterior sample differs from the mean


def test_shape_errors_name_the_problem():
    model = _tiny(block_out_channels=(8, 8, 8))
    x = jnp.zeros((1, 6, 6, 1))
    with pytest.raises(ValueError, match="divisible by the autoencoder's down factor 4"):
        model.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="norm_num_groups=4"):
        _tiny(block_out_channels=(8, 6)).init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    with pytest.raises(ValueError, match="in_channels=1"):
        _tiny().init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))


# ---------------------------------------------------------------- posterior


def test_kl_matches_the_closed_form_between_gaussians():
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(3, 2, 2, 4)).astype(np.float32)
    logvar = rng.uniform(-3, 2, size=mean.shape).astype(np.float32)
    # KL(N(m, s^2) || N(0, 1)) = log(1 / s) + (s^2 + m^2) / 2 - 1/2, per element
    s = np.exp(0.5 * logvar.astype(np.float64))
    want = np.sum(np.log(1.0 / s) + (s ** 2 + mean.astype(np.float64) ** 2) / 2 - 0.5, axis=(1, 2, 3))
    got = DiagonalGaussian(jnp.asarray(mean), jnp.asarray(logvar)).kl()
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert float(DiagonalGaussian(jnp.zeros((1, 2)), jnp.zeros((1, 2))).kl()[0]) == 0.0


def test_moments_split_channels_and_clip_the_log_variance():
    moments = jnp.concatenate([jnp.full((1, 2, 2, 3), 0.5), jnp.array([-50.0, 0.0, 50.0]) * jnp.ones((1, 2, 2, 3))],
                              axis=-1)
    post = DiagonalGaussian.from_moments(moments)
    np.testing.assert_array_equal(post.mean, 0.5)
    np.testing.assert_array_equal(post.logvar[0, 0, 0], [-30.0, 0.0, 20.0])
    assert post.mode() is post.mean


def test_reparameterised_samples_have_the_posterior_moments():
    mean = jnp.array([-1.0, 0.0, 2.0])[None, None, None, :] * jnp.ones((20000, 1, 1, 3))
    logvar = jnp.log(jnp.array([0.25, 1.0, 4.0]))[None, None, None, :] * jnp.ones_like(mean)
    z = DiagonalGaussian(mean, logvar).sample(jax.random.key(3))
    _finite(z)
    # standard errors: std / sqrt(n) <= 2 / 141 for the mean, about std / sqrt(2n) for the std
    np.testing.assert_allclose(np.mean(z, axis=(0, 1, 2)), [-1.0, 0.0, 2.0], atol=0.06)
    np.testing.assert_allclose(np.std(z, axis=(0, 1, 2)), [0.5, 1.0, 2.0], rtol=0.04)
    # a function of the key only
    np.testing.assert_array_equal(z, DiagonalGaussian(mean, logvar).sample(jax.random.key(3)))


def test_loss_is_reconstruction_plus_weighted_kl():
    x = jnp.zeros((2, 2, 2, 1))
    recon = jnp.array([0.5, -0.25])[:, None, None, None] * jnp.ones((2, 2, 2, 1))
    post = DiagonalGaussian(jnp.ones((2, 1, 1, 1)), jnp.zeros((2, 1, 1, 1)))  # KL = 0.5 per example
    loss, aux = autoencoder_loss(x, recon, post, reconstruction_loss="l1", kl_weight=0.1)
    np.testing.assert_allclose(aux["reconstruction"], (4 * 0.5 + 4 * 0.25) / 2)
    np.testing.assert_allclose(aux["kl"], 0.5)
    np.testing.assert_allclose(loss, 1.5 + 0.05)
    loss2, aux2 = autoencoder_loss(x, recon, post, reconstruction_loss="l2", kl_weight=0.0)
    np.testing.assert_allclose(loss2, (4 * 0.25 + 4 * 0.0625) / 2)
    np.testing.assert_allclose(aux2["mse"], (0.25 + 0.0625) / 2)
    with pytest.raises(ValueError, match="reconstruction_loss='l3'.*'l1', 'l2'"):
        autoencoder_loss(x, recon, post, reconstruction_loss="l3")


# ---------------------------------------------------------------- layers against NumPy


def test_downsampling_pads_bottom_right_like_diffusers():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 6, 6, 2)).astype(np.float32)
    layer = _DownConv(3)
    v = layer.init(jax.random.key(0), jnp.asarray(x))
    k = np.asarray(v["params"]["kernel"])
    b = rng.normal(size=3).astype(np.float32)
    v = {"params": {"kernel": jnp.asarray(k), "bias": jnp.asarray(b)}}
    xp = np.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))  # F.pad(x, (0, 1, 0, 1)), then a valid stride-2 conv
    want = np.zeros((1, 3, 3, 3), np.float32)
    for i in range(3):
        for j in range(3):
            want[0, i, j] = np.einsum("hwc,hwco->o", xp[0, 2 * i:2 * i + 3, 2 * j:2 * j + 3], k) + b
    np.testing.assert_allclose(layer.apply(v, jnp.asarray(x)), want, atol=1e-5)


def test_attention_block_matches_the_single_head_formula():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 3, 3, 8)).astype(np.float32)
    block = Attention(num_groups=2, layer_impl="reference")
    params = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape).astype(np.float32) * 0.3),
                          block.init(jax.random.key(0), jnp.asarray(x))["params"])
    got = block.apply({"params": params}, jnp.asarray(x))
    p = jax.tree.map(np.asarray, params)
    g = x.reshape(2, 9, 2, 4)  # GroupNorm, 2 groups of 4 channels, eps 1e-6
    h = ((g - g.mean(axis=(1, 3), keepdims=True)) / np.sqrt(g.var(axis=(1, 3), keepdims=True) + 1e-6)).reshape(2, 9, 8)
    h = h * p["group_norm"]["scale"] + p["group_norm"]["bias"]
    q, k, v = (h @ p[n]["kernel"] + p[n]["bias"] for n in ("to_q", "to_k", "to_v"))
    s = q @ np.swapaxes(k, 1, 2) / np.sqrt(8)
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    want = x + ((w @ v) @ p["to_out_0"]["kernel"] + p["to_out_0"]["bias"]).reshape(2, 3, 3, 8)
    np.testing.assert_allclose(got, want, atol=1e-4)
    fused = Attention(num_groups=2, layer_impl="fused").apply({"params": params}, jnp.asarray(x))
    np.testing.assert_allclose(fused, want, atol=1e-4)


# ---------------------------------------------------------------- safetensors


def _hand_written_safetensors(path):
    """Three tensors written byte by byte: F32 (2, 3), I64 (2,), BF16 (2,) holding 1.0 and -2.5."""
    f32 = np.arange(6, dtype="<f4").reshape(2, 3) / 4
    i64 = np.array([-7, 2 ** 40], dtype="<i8")
    bf16 = np.array([0x3F80, 0xC020], dtype="<u2")  # the top 16 bits of float32 1.0 and -2.5
    header = {"__metadata__": {"format": "pt"},
              "a.weight": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
              "b": {"dtype": "I64", "shape": [2], "data_offsets": [24, 40]},
              "c": {"dtype": "BF16", "shape": [2], "data_offsets": [40, 44]}}
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + f32.tobytes() + i64.tobytes() + bf16.tobytes())
    return f32, i64


def test_safetensors_reader_reads_a_hand_written_file(tmp_path):
    path = str(tmp_path / "x.safetensors")
    f32, i64 = _hand_written_safetensors(path)
    got = read_safetensors(path)
    assert sorted(got) == ["a.weight", "b", "c"]
    np.testing.assert_array_equal(got["a.weight"], f32)
    assert got["a.weight"].dtype == np.float32
    np.testing.assert_array_equal(got["b"], i64)
    assert got["c"].dtype == np.float32 and list(got["c"]) == [1.0, -2.5]


def test_safetensors_round_trip_and_alignment(tmp_path):
    path = str(tmp_path / "y.safetensors")
    tensors = {"w": np.random.default_rng(0).normal(size=(3, 2, 1, 1)).astype(np.float32),
               "h": np.arange(5, dtype=np.float16), "i": np.array([[1, 2]], np.int32), "e": np.zeros((0, 4), np.float32)}
    write_safetensors(path, tensors, metadata={"note": "test"})
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
    assert n % 8 == 0
    got = read_safetensors(path)
    assert sorted(got) == sorted(tensors)
    for k, v in tensors.items():
        np.testing.assert_array_equal(got[k], v)
        assert got[k].dtype == v.dtype and got[k].shape == v.shape


def test_safetensors_reader_rejects_damaged_files(tmp_path):
    path = str(tmp_path / "z.safetensors")
    _hand_written_safetensors(path)
    blob = open(path, "rb").read()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(blob[:-2])  # truncated: c's bytes run past the buffer
    with pytest.raises(ValueError, match="'c'.*data_offsets"):
        read_safetensors(str(bad))
    bad.write_bytes(blob + b"\0\0")
    with pytest.raises(ValueError, match="2 bytes after the last tensor"):
        read_safetensors(str(bad))
    bad.write_bytes(struct.pack("<Q", 10 ** 9) + blob[8:])
    with pytest.raises(ValueError, match="header length"):
        read_safetensors(str(bad))
    with pytest.raises(ValueError, match="does not exist"):
        read_safetensors(str(tmp_path / "missing.safetensors"))


# ---------------------------------------------------------------- diffusers state dicts


def _torch_layout_state_dict(model, seed=0):
    """A diffusers-style state dict for ``model`` with random values, written from the expected PyTorch shapes."""
    from diffjax.nets._autoencoder_diffusers import diffusers_name
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, model.down_factor,
                                                                                 model.down_factor, 1))))["params"]
    rng = np.random.default_rng(seed)
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]:
        shape = leaf.shape
        torch_shape = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else tuple(reversed(shape))
        out[diffusers_name(path)] = rng.normal(size=torch_shape).astype(np.float32)
    return out


def test_loader_maps_known_names_and_layouts():
    model = _tiny()
    sd = _torch_layout_state_dict(model)
    # the names diffusers' AutoencoderKL uses for these parameters, and their PyTorch shapes
    assert sd["encoder.conv_in.weight"].shape == (8, 1, 3, 3)
    assert sd["encoder.down_blocks.0.downsamplers.0.conv.weight"].shape == (8, 8, 3, 3)
    assert sd["encoder.mid_block.attentions.0.to_q.weight"].shape == (8, 8)
    assert sd["decoder.up_blocks.0.upsamplers.0.conv.bias"].shape == (8,)
    assert sd["decoder.up_blocks.1.resnets.1.norm2.weight"].shape == (8,)
    assert sd["quant_conv.weight"].shape == (6, 6, 1, 1) and sd["post_quant_conv.weight"].shape == (3, 3, 1, 1)
    assert sum(k.startswith("decoder.up_blocks.0.resnets.") and k.endswith("conv1.weight") for k in sd) == 2
    params = autoencoder_params_from_diffusers(sd, model)
    p = jax.tree.map(np.asarray, params)
    np.testing.assert_array_equal(p["encoder"]["conv_in"]["kernel"], sd["encoder.conv_in.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(p["encoder"]["mid_block"]["attentions_0"]["to_q"]["kernel"],
                                  sd["encoder.mid_block.attentions.0.to_q.weight"].T)
    np.testing.assert_array_equal(p["decoder"]["up_blocks_1"]["resnets_1"]["norm2"]["scale"],
                                  sd["decoder.up_blocks.1.resnets.1.norm2.weight"])
    np.testing.assert_array_equal(p["quant_conv"]["kernel"][0, 0], sd["quant_conv.weight"][:, :, 0, 0].T)
    # legacy attention names, with the projections stored as 1x1 convolutions, give the same parameters
    legacy = {}
    for k, v in sd.items():
        for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            if f"attentions.0.{new}." in k:
                k = k.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
                v = v[:, :, None, None] if v.ndim == 2 else v
        legacy[k] = v
    assert "decoder.mid_block.attentions.0.proj_attn.weight" in legacy
    jax.tree.map(np.testing.assert_array_equal, autoencoder_params_from_diffusers(legacy, model), params)
    x = jax.random.uniform(jax.random.key(0), (1, 8, 8, 1), minval=-1, maxval=1)
    _finite(model.apply({"params": params}, x)[0])


def test_loader_errors_name_missing_unexpected_and_misshaped_keys():
    model = _tiny()
    sd = _torch_layout_state_dict(model)
    missing = dict(sd)
    del missing["decoder.conv_out.bias"]
    with pytest.raises(ValueError, match=r"1 missing \(decoder\.conv_out\.bias\)"):
        autoencoder_params_from_diffusers(missing, model)
    extra = dict(sd, **{"encoder.conv_in.weight_extra": np.zeros(1)})
    with pytest.raises(ValueError, match=r"1 unexpected \(encoder\.conv_in\.weight_extra\)"):
        autoencoder_params_from_diffusers(extra, model)
    wrong = dict(sd, **{"encoder.conv_out.weight": np.zeros((5, 8, 3, 3), np.float32)})
    with pytest.raises(ValueError, match=r"encoder\.conv_out\.weight: \(5, 8, 3, 3\) in the state dict, expected "
                                         r"\(6, 8, 3, 3\)"):
        autoencoder_params_from_diffusers(wrong, model)
    # another configuration: every difference is reported, with the model's configuration
    with pytest.raises(ValueError, match=r"AutoencoderKL\(block_out_channels=\(8, 8, 8\).*missing"):
        autoencoder_params_from_diffusers(sd, _tiny(block_out_channels=(8, 8, 8)))


def test_loader_reads_a_safetensors_file(tmp_path):
    model = _tiny()
    sd = _torch_layout_state_dict(model, seed=4)
    path = str(tmp_path / "diffusion_pytorch_model.safetensors")
    write_safetensors(path, sd)
    a = autoencoder_params_from_diffusers(read_safetensors(path), model)
    b = autoencoder_params_from_diffusers(sd, model)
    jax.tree.map(np.testing.assert_array_equal, a, b)


# ---------------------------------------------------------------- training task


def _tiny_config(n_iters=4, channels=(8, 8)):
    c = fashion_mnist_autoencoder.get_config()
    a = c.autoencoder
    a.block_out_channels, a.layers_per_block, a.latent_channels, a.norm_num_groups = channels, 1, 2, 4
    a.mid_attention = True
    a.eval_at_end = False
    a.eval_num_examples, a.eval_batch_size = 16, 8
    t = c.training
    t.batch_size, t.n_iters, t.n_jitted_steps = 8, n_iters, 1
    t.log_freq, t.checkpoint_freq, t.snapshot_freq_for_preemption = 1, 100, 0  # one checkpoint, at the end
    c.optim.warmup, c.optim.lr_decay, c.optim.lr = 0, "constant", 3e-3
    c.model.ema_rate = 0.9
    return c


def test_exact_resume(tmp_path):
    config = lambda n: _tiny_config(n, channels=(4,))  # noqa: E731 (one level: the fastest compile)
    whole = drun.train_autoencoder(config(4), str(tmp_path / "a"), progress=False)
    drun.train_autoencoder(config(2), str(tmp_path / "b"), progress=False)
    resumed = drun.train_autoencoder(config(4), str(tmp_path / "b"), progress=False)
    assert int(resumed.step) == int(whole.step) == 4
    for name in ("params", "ema_params", "opt_state"):
        jax.tree.map(np.testing.assert_array_equal, getattr(resumed, name), getattr(whole, name))
    _finite(*jax.tree.leaves(whole.params))
    lines = [json.loads(x) for x in open(tmp_path / "b" / "metrics.jsonl")]
    assert [r["step"] for r in lines if "loss" in r] == [1, 2, 3, 4]


def test_training_lowers_the_reconstruction_error():
    c = _tiny_config(channels=(4,))
    c.autoencoder.sample_posterior = False
    model = cl.build_autoencoder(c)
    loss_fn = cl.autoencoder_loss_fn(c, model)
    rng = np.random.default_rng(0)
    x = jnp.asarray(np.where(rng.random((8, 4, 4, 1)) < 0.5, 0.8, -0.8).astype(np.float32))  # fixed random images
    params = model.init(jax.random.key(0), x)["params"]
    import optax
    opt = optax.adam(3e-3)
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        (loss, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(params, jax.random.key(0), {"x": x})
        updates, state = opt.update(g, state)
        return optax.apply_updates(params, updates), state, aux

    _, _, first = step(params, state)
    for _ in range(30):
        params, state, aux = step(params, state)
    _finite(aux["mse"], *jax.tree.leaves(params))
    assert float(aux["mse"]) < 0.3 * float(first["mse"]), (float(first["mse"]), float(aux["mse"]))


def test_psnr_formula():
    a = np.zeros((2, 4, 4, 1), np.uint8)
    b = a.copy()
    b[0] += 1  # MSE 1 -> 20 log10(255)
    b[1, :2] = 255  # half the pixels off by 255 -> MSE 255^2 / 2 -> 10 log10(2)
    np.testing.assert_allclose(drun.psnr(a, b), [20 * np.log10(255), 10 * np.log10(2)])
    assert drun.psnr(a, a)[0] == np.inf
    with pytest.raises(ValueError, match="same shape"):
        drun.psnr(a, b[:1])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``(config, workdir, final state)`` of a tiny autoencoder trained for 2 steps."""
    c = _tiny_config(2, channels=(4, 4))
    wd = str(tmp_path_factory.mktemp("ae"))
    return c, wd, drun.train_autoencoder(c, wd, progress=False)


def test_eval_mode_reports_psnr_and_frechet_distance(trained, tmp_path):
    c, wd, _ = trained
    c = c.copy_and_resolve_references()
    c.eval.classifier_workdir = ARTIFACTS
    c.eval.reference_num_examples = 200
    c.eval.stats_dir = str(tmp_path / "stats")
    c.eval.kid_subset_size = 16
    record = run_mode(c, wd, "eval")
    saved = json.load(open(os.path.join(wd, "autoencoder_eval.json")))
    assert saved["step"] == 2 and saved["num_examples"] == 16
    for k in ("psnr_mean", "psnr_median", "mse", "frechet_distance", "frechet_distance_originals"):
        assert np.isfinite(saved[k]) and saved[k] == pytest.approx(record[k])
    # an untrained autoencoder reconstructs worse than the originals themselves
    assert saved["frechet_distance"] > saved["frechet_distance_originals"] >= 0
    # PSNR from the MSE on [-1, 1] bounds: the mean PSNR <= 10 log10(4 / mean MSE) (Jensen) up to uint8 rounding
    assert saved["psnr_mean"] <= 10 * np.log10(4 / saved["mse"]) + 0.5
    assert os.path.isfile(os.path.join(wd, "samples", "reconstructions.png"))


def test_load_autoencoder_of_a_workdir_and_its_errors(trained, tmp_path):
    _, wd, state = trained
    model, params, stored = drun.load_autoencoder(wd)
    assert model.latent_channels == 2 and tuple(stored.autoencoder.block_out_channels) == (4, 4)
    jax.tree.map(np.testing.assert_array_equal, params, state.ema_params)
    with pytest.raises(ValueError, match="does not exist"):
        drun.load_autoencoder(str(tmp_path / "nowhere"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(ValueError, match="no config.json"):
        drun.load_autoencoder(str(tmp_path / "empty"))


# ---------------------------------------------------------------- config checks


@pytest.mark.parametrize("field,value,match", [
    ("autoencoder.norm_num_groups", 3, r"norm_num_groups=3 must divide every entry"),
    ("autoencoder.block_out_channels", (8, 8, 8, 8), r"data.image_size=28 must be divisible by the autoencoder's "
                                                     r"down factor 8.*allowed numbers of levels: \[1, 2, 3\]"),
    ("autoencoder.block_out_channels", (), r"non-empty tuple"),
    ("autoencoder.reconstruction_loss", "lpips", r"autoencoder.reconstruction_loss='lpips' is not known.*'l1', 'l2'"),
    ("autoencoder.kl_weight", -1.0, r"autoencoder.kl_weight must be a finite number >= 0"),
    ("autoencoder.latent_channels", 0, r"autoencoder.latent_channels must be an integer >= 1"),
    ("autoencoder.layers_per_block", 0, r"autoencoder.layers_per_block must be an integer >= 1"),
    ("data.dataset", "ring8", r"data.dataset='ring8' is not known"),
    ("training.checkpoint_freq", 3, r"training.checkpoint_freq=3 must be a multiple of training.n_jitted_steps=2"),
    ("model.ema_rate", 1.0, r"model.ema_rate must be a float in \[0, 1\)"),
])
def test_bad_configs_are_rejected_with_one_line(field, value, match):
    c = _tiny_config()
    if field == "training.checkpoint_freq":
        c.training.n_jitted_steps, c.training.log_freq = 2, 2
    section, name = field.split(".")
    c[section][name] = value
    with pytest.raises(ValueError, match=match) as e:
        run_mode(c, "/nonexistent-workdir", "train")
    assert "\n" not in str(e.value)


def test_modes_of_the_task(tmp_path, capsys):
    c = _tiny_config()
    with pytest.raises(ValueError, match="config.task='autoencoder' supports --mode train, eval, describe, got --mode "
                                         "sample"):
        run_mode(c, str(tmp_path), "sample")
    run_mode(c, None, "describe")
    assert "down factor 2, latent (14, 14, 2)" in capsys.readouterr().out
    with pytest.raises(ValueError, match="needs an autoencoder checkpoint"):
        run_mode(c, str(tmp_path), "eval")
