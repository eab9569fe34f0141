"""Input pipelines: toy generators, Fashion-MNIST IDX reader, transforms, determinism and process sharding."""
import gzip
import os
import struct
import time

import jax
import numpy as np
import pytest

import diffjax.data as data


def test_ring8_matches_the_mixture():
    x = np.asarray(data.ring8(jax.random.key(0), 20000))
    r = np.linalg.norm(x, axis=1)
    assert abs(np.median(r) - 4.0) < 0.05
    angles = np.arctan2(x[:, 1], x[:, 0])
    modes = np.round(angles / (np.pi / 4)) % 8
    np.testing.assert_allclose(np.bincount(modes.astype(int), minlength=8) / len(x), 1 / 8, atol=0.015)
    # within a mode, distance to the nearest mean has the std of the component
    means = 4.0 * np.stack([np.cos(modes * np.pi / 4), np.sin(modes * np.pi / 4)], -1)
    np.testing.assert_allclose((x - means).std(0), 0.35, rtol=0.05)


@pytest.mark.parametrize("name", sorted(data.TOY_DATASETS))
def test_toy_shapes_and_determinism(name):
    a = np.asarray(data.toy_sample(name, jax.random.key(1), 500))
    b = np.asarray(data.toy_sample(name, jax.random.key(1), 500))
    assert a.shape == (500, 2) and np.all(np.isfinite(a))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a).max() < 10


def test_checkerboard_only_black_squares():
    x = np.asarray(data.checkerboard(jax.random.key(0), 5000))
    assert np.all(np.abs(x) <= 4.0)
    assert np.all((np.floor(x[:, 0] / 2) + np.floor(x[:, 1] / 2)) % 2 == 0)


def test_unknown_toy_name():
    with pytest.raises(ValueError, match="ring8"):
        data.toy_sample("rings", jax.random.key(0), 3)


def _write_idx(path, arr):
    header = struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_fashion_mnist_reader_on_fake_idx(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], np.uint8)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", imgs)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    x, y = data.load_fashion_mnist("test", data_dir=str(tmp_path))
    np.testing.assert_array_equal(x[..., 0], imgs)
    np.testing.assert_array_equal(y, labels)
    assert x.shape == (5, 28, 28, 1) and y.dtype == np.int32


def _damage(kind, d):
    imgs = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], np.uint8)
    img, lab = d / "t10k-images-idx3-ubyte.gz", d / "t10k-labels-idx1-ubyte.gz"
    _write_idx(img, imgs)
    _write_idx(lab, labels)
    raw = img.read_bytes()
    if kind == "truncated_gzip":
        img.write_bytes(raw[: len(raw) // 2])
    elif kind == "corrupted_gzip":
        img.write_bytes(raw[:20] + bytes(b ^ 0xFF for b in raw[20:60]) + raw[60:])
    elif kind == "truncated_data":
        _write_idx(img, imgs)
        with gzip.open(img, "rb") as f:
            full = f.read()
        with gzip.open(img, "wb") as f:
            f.write(full[:-100])
    elif kind == "empty":
        img.unlink()
        (d / "t10k-images-idx3-ubyte").write_bytes(b"")
        img = d / "t10k-images-idx3-ubyte"
    elif kind == "label_count":
        _write_idx(lab, labels[:3])
        return lab
    elif kind == "image_shape":
        _write_idx(img, np.zeros((5, 32, 32), np.uint8))
    return img


@pytest.mark.parametrize("kind, match", [
    ("truncated_gzip", "cannot be read: EOFError"),
    ("corrupted_gzip", "cannot be read: "),
    ("truncated_data", r"is truncated: header says \(5, 28, 28\), found 3820 bytes"),
    ("empty", "is truncated: 0 bytes, not even an IDX header"),
    ("label_count", r"holds \(3,\) labels for the 5 images"),
    ("image_shape", r"holds images of shape \(32, 32\), not Fashion-MNIST's \(28, 28\)"),
])
def test_damaged_fashion_mnist_files_name_the_file(tmp_path, kind, match):
    bad = _damage(kind, tmp_path)
    with pytest.raises(ValueError, match=match) as e:
        data.load_fashion_mnist("test", data_dir=str(tmp_path))
    assert str(bad) in str(e.value)


@pytest.mark.skipif(not os.path.exists(os.path.join(data.FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz")),
                    reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_installed():
    x, y = data.load_fashion_mnist("test")
    assert x.shape == (10000, 28, 28, 1) and x.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(y), np.full(10, 1000))


def test_missing_dataset_fails_fast_with_instructions(tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(FileNotFoundError) as e:
        data.load_fashion_mnist("train", data_dir=str(tmp_path))
    assert time.perf_counter() - t0 < 2
    msg = str(e.value)
    assert str(tmp_path) in msg and "apt-get install dataset-fashion-mnist" in msg and "data.data_dir" in msg


def test_tfds_missing_gives_clear_error():
    try:
        import tensorflow_datasets  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"diffjax\[tfds\]"):
            data.load_tfds("cifar10")
    else:
        with pytest.raises(FileNotFoundError, match="cifar10"):
            data.load_tfds("cifar10", data_dir="/nonexistent")


def test_scaling_round_trip_and_transforms():
    u = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    x = data.to_unit(u)
    assert x.min() == -1.0 and x.max() == 1.0
    np.testing.assert_array_equal(data.from_unit(x), u)
    rng = np.random.default_rng(0)
    dq = data.dequantize(rng, np.repeat(u, 50, 0))
    # each pixel value k lands in [2k/256 - 1, 2(k+1)/256 - 1)
    lo = u.astype(np.float32) * 2 / 256 - 1
    assert np.all(dq >= lo) and np.all(dq <= lo + 2 / 256 + 1e-6)
    np.testing.assert_allclose((dq - lo).mean(), 1 / 256, rtol=0.02)
    imgs = rng.integers(0, 256, (200, 4, 4, 1)).astype(np.uint8)
    f = data.random_flip(np.random.default_rng(1), imgs)
    flipped = np.all(f == imgs[:, :, ::-1], axis=(1, 2, 3))
    same = np.all(f == imgs, axis=(1, 2, 3))
    assert np.all(flipped | same) and 60 < flipped.sum() < 140


def _fake_images(n=40):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 4, 4, 1)).astype(np.uint8), np.arange(n) % 10


def test_image_batches_deterministic_in_seed_and_step():
    imgs, labels = _fake_images()
    kw = dict(global_batch=8, seed=3, random_flip=True, dequantize=True, process_index=0, process_count=1)
    a = data.ImageData.from_arrays(imgs, labels, **kw)
    b = data.ImageData.from_arrays(imgs, labels, **kw)
    b.batches(0, 7)  # a different history does not change batch 11
    np.testing.assert_array_equal(a.batches(11, 2)["x"], b.batches(11, 2)["x"])
    # one epoch (5 steps of 8) visits every example exactly once
    ys = np.concatenate([a.batch(s)["y"] for s in range(5)])
    assert sorted(ys.tolist()) == sorted(labels.tolist())
    assert not np.array_equal(a.batch(0)["y"], a.batch(5)["y"])  # next epoch, new permutation
    c = data.ImageData.from_arrays(imgs, labels, **dict(kw, seed=4))
    assert not np.array_equal(a.batch(0)["x"], c.batch(0)["x"])


def test_process_shards_concatenate_to_the_global_batch():
    imgs, labels = _fake_images()
    kw = dict(global_batch=8, seed=3, random_flip=True, dequantize=True)
    whole = data.ImageData.from_arrays(imgs, labels, process_index=0, process_count=1, **kw).batches(6, 2)
    parts = [data.ImageData.from_arrays(imgs, labels, process_index=i, process_count=2, **kw).batches(6, 2)
             for i in range(2)]
    for k in ("x", "y"):
        np.testing.assert_array_equal(np.concatenate([p[k] for p in parts], axis=1), whole[k])
    toy = data.ToyData("ring8", global_batch=6, seed=1, process_index=0, process_count=1).batches(4, 3)["x"]
    toy_parts = [data.ToyData("ring8", global_batch=6, seed=1, process_index=i, process_count=3).batches(4, 3)["x"]
                 for i in range(3)]
    np.testing.assert_array_equal(np.concatenate(toy_parts, axis=1), toy)
    with pytest.raises(ValueError, match="divisible"):
        data.ToyData("ring8", global_batch=7, process_index=0, process_count=2)


def test_training_on_damaged_data_fails_before_compiling_naming_the_file(tmp_path):
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    d = tmp_path / "data"
    d.mkdir()
    _write_idx(d / "train-images-idx3-ubyte.gz", np.zeros((64, 28, 28), np.uint8))
    _write_idx(d / "train-labels-idx1-ubyte.gz", np.zeros((64,), np.uint8))
    raw = (d / "train-images-idx3-ubyte.gz").read_bytes()
    (d / "train-images-idx3-ubyte.gz").write_bytes(raw[: len(raw) // 2])
    wd = tmp_path / "run"
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "diffjax.main", "--config", "configs/fashion_mnist_budget.py",
                        "--workdir", str(wd), "--noprogress", f"--config.data.data_dir={d}"],
                       cwd=repo, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert r.returncode != 0
    assert f"{d / 'train-images-idx3-ubyte.gz'} cannot be read: EOFError" in r.stderr
    assert "starting a new run" not in r.stdout  # failed before the state was created or compiled
    assert not (wd / "checkpoints").exists() or not os.listdir(wd / "checkpoints")
    print(f"failed after {time.perf_counter() - t0:.1f} s")


def test_excluded_classes_never_reach_training_and_stay_in_the_test_split(tmp_path):
    """data.exclude_classes (a concept held out for adaptation): the training pipeline never yields those labels
    (nor their images); the test split keeps them; bad values are refused naming the field."""
    import sys
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from configs import fashion_mnist_ddpm
    from diffjax import config_lib
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)
    labels = np.arange(40, dtype=np.uint8) % 10
    for split in ("train", "t10k"):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", imgs)
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", labels)
    cfg = fashion_mnist_ddpm.get_config()
    cfg.data.data_dir, cfg.data.num_classes, cfg.data.exclude_classes = str(tmp_path), 10, (5, 7)
    cfg.training.batch_size = 8
    train = config_lib.build_dataset(cfg)
    assert train.size == 32
    seen = np.concatenate([train.batch(s)["y"] for s in range(8)])  # two epochs
    assert set(seen.tolist()) == set(range(10)) - {5, 7}
    assert config_lib.build_dataset(cfg, split="test").size == 40
    for bad in ((10,), (5, 5), ("5",)):
        cfg.data.exclude_classes = bad
        with pytest.raises(ValueError, match="data.exclude_classes"):
            config_lib.validate(cfg, device_count=1)
