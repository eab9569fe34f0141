"""Damaged TFDS shards (issue 22, fault 3): real ArrayRecord shards written by tensorflow_datasets itself (a local
stand-in for `fashion_mnist` 3.0.1, so `data.dataset=fashion_mnist_tfds` reads it), then truncated, corrupted,
emptied, deleted or swapped; each must fail with an error naming the shard file, before training starts."""
import io
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")  # the test extra installs it (and array_record)
pytest.importorskip("array_record")

from diffjax import data  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_TRAIN, N_TEST, SHARDS = 96, 32, 3


def _png(a):
    from PIL import Image
    b = io.BytesIO()
    Image.fromarray(a[..., 0]).save(b, format="PNG")
    return b.getvalue()


class _LocalFashionMnist(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """TFDS's `fashion_mnist` 3.0.1 layout and features (28x28x1 PNG images, 10 labels) with random pixels."""
    name = "fashion_mnist"
    VERSION = tfds.core.Version("3.0.1")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(28, 28, 1)), "label": tfds.features.ClassLabel(num_classes=10)}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(N_TRAIN, 0), "test": self._generate_examples(N_TEST, 1)}

    def _generate_examples(self, n, seed):
        rng = np.random.default_rng(seed)
        for i in range(n):
            yield i, {"image": _png(rng.integers(0, 256, (28, 28, 1), dtype=np.uint8)), "label": i % 10}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds")
    _LocalFashionMnist(data_dir=str(root), file_format="array_record").download_and_prepare(
        download_config=tfds.download.DownloadConfig(num_shards=SHARDS))
    return root


def _copy(prepared, tmp_path):
    d = tmp_path / "tfds"
    shutil.copytree(prepared, d)
    shards = sorted((d / "fashion_mnist" / "3.0.1").glob("fashion_mnist-train.array_record-*"))
    assert len(shards) == SHARDS
    return d, shards


def test_intact_dataset_reads_and_lists_its_shards(prepared, tmp_path):
    d, shards = _copy(prepared, tmp_path)
    src = data.load_tfds("fashion_mnist", "train", data_dir=str(d))
    assert len(src) == N_TRAIN
    assert [p for p, _ in src.shards] == [str(p) for p in shards]
    assert sum(n for _, n in src.shards) == N_TRAIN
    x, y = src.get(np.arange(N_TRAIN))
    assert x.shape == (N_TRAIN, 28, 28, 1) and x.dtype == np.uint8
    assert sorted(np.bincount(y, minlength=10)) == sorted(np.bincount(np.arange(N_TRAIN) % 10, minlength=10))


def _truncate(p):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _truncate_tail(p):
    p.write_bytes(p.read_bytes()[:-100])


def _flip_a_byte(p):
    """One bit pattern flipped inside the records (the shard is padded to 128 KiB; its records are the first ~32 KiB
    of uncompressed PNG bytes: flip between the first PNG signature and the last IEND marker)."""
    b = bytearray(p.read_bytes())
    first, last = b.find(b"\x89PNG"), b.rfind(b"IEND")
    assert 0 <= first < last
    b[(first + last) // 2] ^= 0xFF
    p.write_bytes(bytes(b))


def _empty(p):
    p.write_bytes(b"")


def _delete(p):
    p.unlink()


DAMAGE = {"truncated": (_truncate, ValueError, "is damaged or truncated"),
          "tail_cut": (_truncate_tail, ValueError, "is damaged or truncated"),
          "byte_flipped": (_flip_a_byte, ValueError, "is damaged or truncated"),
          "empty": (_empty, ValueError, "is damaged or truncated"),
          "missing": (_delete, FileNotFoundError, "is missing")}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
@pytest.mark.parametrize("which", [0, SHARDS - 1])
def test_damaged_shard_is_named_at_load(prepared, tmp_path, kind, which):
    d, shards = _copy(prepared, tmp_path)
    damage, error, match = DAMAGE[kind]
    damage(shards[which])
    with pytest.raises(error, match=match) as e:
        data.load_tfds("fashion_mnist", "train", data_dir=str(d))
    assert str(shards[which]) in str(e.value)
    assert all(str(s) not in str(e.value) for i, s in enumerate(shards) if i != which)


def test_shard_with_too_few_records_is_named(prepared, tmp_path):
    d, shards = _copy(prepared, tmp_path)
    # an intact shard of the test split (about 11 rows) in place of a train shard (32 rows)
    test_shard = sorted((d / "fashion_mnist" / "3.0.1").glob("fashion_mnist-test.array_record-*"))[0]
    shutil.copyfile(test_shard, shards[1])
    with pytest.raises(ValueError, match="records, but the dataset's dataset_info.json says") as e:
        data.load_tfds("fashion_mnist", "train", data_dir=str(d))
    assert str(shards[1]) in str(e.value)


def test_unreadable_metadata_is_a_clear_error(prepared, tmp_path):
    d, _ = _copy(prepared, tmp_path)
    (d / "fashion_mnist" / "3.0.1" / "dataset_info.json").write_text("{ not json")
    with pytest.raises(FileNotFoundError, match=r"metadata \(dataset_info.json, features.json\) cannot be read") as e:
        data.load_tfds("fashion_mnist", "train", data_dir=str(d))
    assert str(d) in str(e.value)


def test_unverified_damage_names_the_shard_when_its_row_is_read(prepared, tmp_path):
    d, shards = _copy(prepared, tmp_path)
    _truncate(shards[2])
    src = data.load_tfds("fashion_mnist", "train", data_dir=str(d), verify=False)  # data.verify_files=False
    x, _ = src.get([0, N_TRAIN // SHARDS])  # rows of the intact shards still read
    assert x.shape == (2, 28, 28, 1)
    with pytest.raises(ValueError, match=f"cannot be read at row {N_TRAIN - 1} of the split") as e:
        src.get([N_TRAIN - 1])
    assert str(shards[2]) in str(e.value)


def test_training_on_a_damaged_shard_fails_before_compiling_naming_the_file(prepared, tmp_path):
    d, shards = _copy(prepared, tmp_path)
    _flip_a_byte(shards[1])
    wd = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "diffjax.main", "--config", "configs/fashion_mnist_ddpm.py",
                        "--workdir", str(wd), "--noprogress", "--config.data.dataset=fashion_mnist_tfds",
                        f"--config.data.data_dir={d}"],
                       cwd=REPO, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert r.returncode != 0
    assert f"TFDS shard {shards[1]}" in r.stderr and "is damaged or truncated" in r.stderr, r.stderr[-3000:]
    assert "starting a new run" not in r.stdout  # failed before the state was created or compiled
    assert not (wd / "checkpoints").exists() or not os.listdir(wd / "checkpoints")
