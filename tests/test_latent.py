"""Latent diffusion (config.latent): the scale factor against a hand computation, the latent pipeline's batches against
the image pipeline's rows (deterministic, exact resume), encode -> decode shapes through the frozen autoencoder, a tiny
autoencoder + tiny latent model through diffjax.main (train, then sample and eval of decoded 28x28 uint8 images), and
the one-line errors of a missing, empty or mismatched autoencoder workdir. The data: a small synthetic Fashion-MNIST
in IDX files (48 training, 16 test images), so that nothing large is encoded."""
import gzip
import json
import os
import shutil
import struct
import sys

import ml_collections
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from configs import fashion_mnist_autoencoder, fashion_mnist_latent  # noqa: E402
from diffjax import config_lib as cl  # noqa: E402
from diffjax import data as ddata  # noqa: E402
from diffjax.main import run_mode  # noqa: E402
from diffjax.run._latent import LATENT_FILE, LatentSpace  # noqa: E402
from diffjax.run._workdir_config import workdir_has_state  # noqa: E402

pytestmark = pytest.mark.xdist_group("test_latent")
ARTIFACTS = os.path.join(REPO, "experiments", "results", "artifacts")


def _write_idx(path, arr):
    header = struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def _fake_fashion_mnist(folder):
    """Blobs of random size and brightness on black, labelled 0..9."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:28, :28]
    for split, n in (("train", 48), ("t10k", 16)):
        r = rng.uniform(4, 11, n)[:, None, None]
        images = np.where(np.hypot(yy - 13.5, xx - 13.5)[None] < r, rng.integers(80, 256, n)[:, None, None], 0)
        _write_idx(os.path.join(folder, f"{split}-images-idx3-ubyte.gz"), images)
        _write_idx(os.path.join(folder, f"{split}-labels-idx1-ubyte.gz"), np.arange(n) % 10)
    return folder


def _ae_config(data_dir):
    c = fashion_mnist_autoencoder.get_config()
    a = c.autoencoder
    a.block_out_channels, a.layers_per_block, a.latent_channels, a.norm_num_groups = (4, 4), 1, 2, 4
    a.eval_at_end = False
    t = c.training
    t.batch_size, t.n_iters, t.n_jitted_steps = 8, 1, 1
    t.log_freq, t.checkpoint_freq, t.snapshot_freq_for_preemption = 1, 1, 0
    c.optim.warmup, c.optim.lr_decay = 0, "constant"
    c.data.data_dir = data_dir
    return c


def _latent_config(ae_workdir, data_dir, steps=2):
    c = fashion_mnist_latent.get_config()
    c.latent.autoencoder_workdir = ae_workdir
    c.data.data_dir = data_dir
    c.model.name = "dit_fashion_mnist"  # a one-block DiT compiles faster than the smallest UNet
    c.model.overrides = ml_collections.ConfigDict(dict(patch_size=2, hidden_size=16, depth=1, num_heads=2,
                                                       input_size=14, in_channels=2))  # the tiny autoencoder's
    t = c.training
    t.batch_size, t.n_iters, t.n_jitted_steps, t.log_freq = 8, steps, 1, 1
    t.checkpoint_freq = t.snapshot_freq = t.snapshot_freq_for_preemption = steps
    t.posthoc_ema_freq = 0
    c.optim.warmup = 0
    s = c.sampling
    s.method, s.num_steps, s.num_samples, s.batch_size = "ode_euler", 2, 8, 8
    e = c.eval
    e.classifier_workdir, e.num_samples, e.batch_size, e.kid_subset_size, e.kid_subsets = ARTIFACTS, 16, 8, 8, 2
    return c


@pytest.fixture(scope="module")
def autoencoder(tmp_path_factory):
    """``(autoencoder workdir, data dir)``: the tiny autoencoder's initial state saved as its checkpoint at step 1
    with its config.json, as a training run leaves them (training the autoencoder: tests/test_autoencoder.py)."""
    from diffjax.run import AutoencoderRun
    from diffjax.run._workdir_config import write_workdir_config
    root = tmp_path_factory.mktemp("latent")
    data_dir = _fake_fashion_mnist(str(root))
    wd = str(root / "ae")
    c = _ae_config(data_dir)
    run = AutoencoderRun(c, wd, read_only=False)
    run.checkpoints.save(1, run.fresh_state())
    run.checkpoints.close()
    write_workdir_config(c, wd)
    return wd, data_dir


# ---------------------------------------------------------------- scale factor and the latent pipeline


def test_scale_factor_is_one_over_the_std_of_the_latents():
    mean = np.array([[1.0, -1.0], [3.0, -3.0]])  # mean 0, variance (1 + 1 + 9 + 9) / 4 = 5
    assert ddata.latent_scale_factor(mean) == pytest.approx(1 / np.sqrt(5.0), rel=1e-12)
    std = np.array([[0.0, 0.0], [2.0, 2.0]])  # E[std^2] = 2: draws mean + std * eps have variance 5 + 2
    assert ddata.latent_scale_factor(mean, std) == pytest.approx(1 / np.sqrt(7.0), rel=1e-12)
    eps = np.random.default_rng(0).standard_normal((200_000,) + mean.shape)
    assert 1 / np.std(mean + std * eps) == pytest.approx(ddata.latent_scale_factor(mean, std), rel=5e-3)
    with pytest.raises(ValueError, match="variance 0.0"):
        ddata.latent_scale_factor(np.ones((3, 2)))


def test_latent_batches_are_the_image_pipelines_rows_and_deterministic():
    rng = np.random.default_rng(1)
    n, gb = 40, 8
    mean = rng.normal(size=(n, 3, 3, 2)).astype(np.float32)
    std = rng.uniform(0.1, 0.5, size=mean.shape).astype(np.float32)
    labels = np.arange(n) % 10
    images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 1), np.uint8)  # row i holds i
    pixel = ddata.ImageData.from_arrays(images, labels, global_batch=gb, seed=3, process_index=0, process_count=1)
    kw = dict(global_batch=gb, seed=3, process_index=0, process_count=1)
    means = ddata.LatentData(mean, labels, scale=0.5, **kw)
    draws = ddata.LatentData(mean, labels, std=std, scale=0.5, **kw)
    for step in (0, 4, 7, 13):  # across epochs (5 batches each)
        rows = np.round((pixel.batch(step)["x"][:, 0, 0, 0] + 1) * 127.5).astype(int)
        b = means.batch(step)
        np.testing.assert_array_equal(b["y"], labels[rows])
        np.testing.assert_array_equal(b["x"], 0.5 * mean[rows])
        d = draws.batch(step)
        z = d["x"] / 0.5
        assert np.all(np.isfinite(z)) and not np.allclose(z, mean[rows])
        assert np.all(np.abs(z - mean[rows]) < 6 * std[rows])  # mean + std * eps, |eps| < 6
    again = ddata.LatentData(mean, labels, std=std, scale=0.5, **kw).batches(6, 3)  # a resumed run
    first = draws.batches(6, 3)
    np.testing.assert_array_equal(again["x"], first["x"])
    assert first["x"].shape == (3, gb, 3, 3, 2) and first["y"].shape == (3, gb)
    # two processes: each holds its half of the global batch
    halves = [ddata.LatentData(mean, labels, std=std, global_batch=gb, seed=3, process_index=i, process_count=2)
              for i in range(2)]
    whole = ddata.LatentData(mean, labels, std=std, **{**kw, "seed": 3}).batch(5)["x"]
    np.testing.assert_array_equal(np.concatenate([h.batch(5)["x"] for h in halves]), whole)


# ---------------------------------------------------------------- through the autoencoder and main


def test_encode_decode_shapes(autoencoder):
    ae_wd, data_dir = autoencoder
    c = _latent_config(ae_wd, data_dir)
    assert cl.input_shape(c, 3) == (3, 14, 14, 2) and cl.image_shape(c, 3) == (3, 28, 28, 1)
    space = LatentSpace(c, "")
    images, _ = ddata.load_fashion_mnist("test", data_dir=data_dir)
    mean, std = space.encode_images(images[:13])  # a batch smaller than the encoder's
    assert mean.shape == std.shape == (13, 14, 14, 2)
    assert np.all(np.isfinite(mean)) and np.all(std > 0)
    with pytest.raises(ValueError, match="latent.json does not exist"):
        space.decode(mean)  # latent.scale_factor=0 and no workdir: no scale known
    c.latent.scale_factor = 2.0
    out = LatentSpace(c, "").decode(2.0 * mean)
    assert out.shape == (13, 28, 28, 1) and np.all(np.isfinite(out))


@pytest.fixture(scope="module")
def latent_trained(autoencoder, tmp_path_factory):
    ae_wd, data_dir = autoencoder
    wd = str(tmp_path_factory.mktemp("latent_model") / "w")
    c = _latent_config(ae_wd, data_dir)
    run_mode(c, wd, "train", progress=False)
    return c, wd


def test_train_then_sample_decoded_images(latent_trained, autoencoder):
    c, wd = latent_trained
    record = json.load(open(os.path.join(wd, LATENT_FILE)))
    images, _ = ddata.load_fashion_mnist("train", data_dir=autoencoder[1])
    mean, _ = LatentSpace(c, wd).encode_images(images)  # what training encoded: the 48 training images
    assert record["estimated"] and record["autoencoder_step"] == 1 and record["latent_shape"] == [14, 14, 2]
    assert record["scale_factor"] == pytest.approx(1 / np.std(mean.astype(np.float64)), rel=1e-6)
    lines = [json.loads(x) for x in open(os.path.join(wd, "metrics.jsonl"))]
    losses = [r["loss"] for r in lines if "loss" in r]
    assert len(losses) == 2 and np.all(np.isfinite(losses))
    x = run_mode(c, wd, "sample", progress=False)
    assert x.shape == (8, 28, 28, 1) and np.all(np.isfinite(x))
    saved = np.load(os.path.join(wd, "samples", "samples_00000002_ode_euler_2.npz"))["x"]
    assert saved.dtype == np.uint8 and saved.shape == (8, 28, 28, 1)
    np.testing.assert_array_equal(saved, ddata.from_unit(x))


def test_eval_scores_decoded_samples(latent_trained, tmp_path):
    c, trained = latent_trained
    wd = str(tmp_path / "w")
    shutil.copytree(trained, wd)
    record = run_mode(c, wd, "eval", progress=False)
    assert record["num_samples"] == 16 and np.isfinite(record["frechet_distance"]) and record["frechet_distance"] > 0
    files = sorted(f for f in os.listdir(os.path.join(wd, "eval")) if f.startswith("samples_"))
    x = np.load(os.path.join(wd, "eval", files[0]))["x"]
    assert x.dtype == np.uint8 and x.shape == (8, 28, 28, 1)
    with pytest.raises(ValueError, match="--mode likelihood measures images in pixel space"):
        run_mode(c, wd, "likelihood")


# ---------------------------------------------------------------- errors


def test_a_missing_or_mismatched_autoencoder_is_one_line(autoencoder, tmp_path):
    ae_wd, data_dir = autoencoder

    def check(match, **fields):
        c = _latent_config(ae_wd, data_dir)
        for path, value in fields.items():
            *parents, leaf = path.split("__")
            node = c
            for p in parents:
                node = node[p]
            node[leaf] = value
        with pytest.raises(ValueError, match=match) as e:
            cl.validate(c)
        assert "\n" not in str(e.value)

    nowhere = str(tmp_path / "nowhere")
    check(r"latent.autoencoder_workdir='.*nowhere' does not exist", latent__autoencoder_workdir=nowhere)
    os.makedirs(tmp_path / "empty")
    check(r"holds no config.json: train the autoencoder there first",
          latent__autoencoder_workdir=str(tmp_path / "empty"))
    os.makedirs(tmp_path / "diffusion")
    with open(tmp_path / "diffusion" / "config.json", "w") as f:
        json.dump({"task": "diffusion"}, f)
    check(r"holds a config.task='diffusion' run, not an autoencoder",
          latent__autoencoder_workdir=str(tmp_path / "diffusion"))
    check(r"holds an autoencoder of 28x28x1 images \(fashion_mnist\); this config's data are 32x32x1",
          data__image_size=32)
    check(r"model.\* does not fit the 14x14x2 latents of latent.autoencoder_workdir=.*x must be 12x12",
          model__overrides__input_size=12)
    check(r"latent.encode='draw' is not known; allowed values: \['mean', 'sample'\]", latent__encode="draw")
    check(r"latent.scale_factor must be a finite number >= 0", latent__scale_factor=-1.0)
    check(r"distill.method='progressive' is not supported on latents", distill__method="progressive")
    # a workdir with the autoencoder's config but no checkpoint: refused before anything is compiled
    os.makedirs(tmp_path / "untrained")
    shutil.copy(os.path.join(ae_wd, "config.json"), tmp_path / "untrained")
    c = _latent_config(str(tmp_path / "untrained"), data_dir)
    with pytest.raises(ValueError, match=r"latent.autoencoder_workdir='.*untrained': .* holds no checkpoint"):
        run_mode(c, str(tmp_path / "w"), "train", progress=False)
    assert not workdir_has_state(str(tmp_path / "w"))


def test_sampling_needs_the_stored_scale_factor(latent_trained, tmp_path):
    c, trained = latent_trained
    wd = str(tmp_path / "w")
    shutil.copytree(trained, wd)
    os.remove(os.path.join(wd, LATENT_FILE))
    with pytest.raises(ValueError, match=r"latent.json does not exist: the scale factor of latent.scale_factor=0"):
        run_mode(c, wd, "sample", progress=False)
    shutil.copy(os.path.join(trained, LATENT_FILE), wd)
    record = json.load(open(os.path.join(wd, LATENT_FILE)))
    record["autoencoder_step"] = 7
    json.dump(record, open(os.path.join(wd, LATENT_FILE), "w"))
    with pytest.raises(ValueError, match=r"checkpoint at step 7 of .*; latent.autoencoder_workdir=.* holds step 1"):
        run_mode(c, wd, "sample", progress=False)
