"""Image sources (Fashion-MNIST IDX files, TFDS by name) and the per-batch transforms."""
from __future__ import annotations

import gzip
import os
import struct
import zlib
from typing import Optional

import numpy as np

__all__ = ["FASHION_MNIST_DIR", "load_fashion_mnist", "load_tfds", "verify_array_record_shard", "to_unit", "from_unit",
           "random_flip", "dequantize"]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
_FMNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                 "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _read_idx(path: str) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, OSError, zlib.error) as e:  # a truncated or corrupted .gz (gzip.BadGzipFile is an OSError)
        raise ValueError(f"{path} cannot be read: {type(e).__name__}: {e} (a damaged or truncated download? "
                         f"reinstall the dataset)") from e
    if len(data) < 4:
        raise ValueError(f"{path} is truncated: {len(data)} bytes, not even an IDX header")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08 or len(data) < 4 + 4 * ndim:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (header {data[:4 + 4 * ndim]!r})")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape}, found {arr.size} bytes of data")
    return arr.reshape(shape)


def _find(directory: str, stem: str) -> Optional[str]:
    for name in (stem + ".gz", stem):
        p = os.path.join(directory, name)
        if os.path.exists(p):
            return p
    return None


def load_fashion_mnist(split: str = "train", *, data_dir: Optional[str] = None):
    """Fashion-MNIST from its IDX files: ``(images uint8 (N, 28, 28, 1), labels int32 (N,))``.

    Looks in ``data_dir`` if given, else in :data:`FASHION_MNIST_DIR` (the Debian package
    ``dataset-fashion-mnist``). Missing files raise ``FileNotFoundError`` saying where it looked and how to get them.
    """
    if split not in _FMNIST_FILES:
        raise ValueError(f"split must be one of {sorted(_FMNIST_FILES)}, got {split!r}")
    directory = data_dir or FASHION_MNIST_DIR
    paths = [_find(directory, stem) for stem in _FMNIST_FILES[split]]
    if None in paths:
        raise FileNotFoundError(
            f"Fashion-MNIST {split} split not found: looked for {_FMNIST_FILES[split][0]}[.gz] and "
            f"{_FMNIST_FILES[split][1]}[.gz] in {directory!r}. Install it with `apt-get install "
            f"dataset-fashion-mnist` (puts the IDX files in {FASHION_MNIST_DIR}) or set data.data_dir to a "
            f"directory holding the IDX files.")
    images, labels = (_read_idx(p) for p in paths)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"{paths[0]} holds images of shape {images.shape[1:]}, not Fashion-MNIST's (28, 28)")
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"{paths[1]} holds {labels.shape} labels for the {len(images)} images of {paths[0]}")
    if labels.size and labels.max() > 9:
        raise ValueError(f"{paths[1]} holds label {int(labels.max())}; Fashion-MNIST's are 0..9")
    return images[..., None], labels.astype(np.int32)


class _TFDSArrays:
    """Random access into a TFDS ``data_source`` (only the rows a process asks for are read); a row that cannot be
    read or decoded raises an error naming its shard file."""

    def __init__(self, source, image_key, label_key, shards):
        self.source, self.image_key, self.label_key = source, image_key, label_key
        self.shards = shards  # [(path, rows of the split in it), ...] in the source's row order
        self._ends = np.cumsum([n for _, n in shards])

    def __len__(self):
        return len(self.source)

    def shard_of(self, row: int) -> str:
        return self.shards[min(int(np.searchsorted(self._ends, row, side="right")), len(self.shards) - 1)][0]

    def _row(self, i: int):
        try:
            return self.source[i]
        except Exception as e:  # array_record / riegeli / feature decoding raise assorted types
            raise ValueError(f"TFDS shard {self.shard_of(i)} cannot be read at row {i} of the split: "
                             f"{type(e).__name__}: {e} (rebuild the dataset with `tfds build --overwrite`)") from e

    def get(self, indices):
        rows = [self._row(int(i)) for i in indices]
        images = np.stack([np.asarray(r[self.image_key]) for r in rows])
        labels = (np.asarray([r[self.label_key] for r in rows], np.int32) if self.label_key in rows[0]
                  else np.zeros(len(rows), np.int32))
        return images, labels


def _tfds_shards(source) -> list:
    """The shard files a TFDS ``data_source`` split reads, with the number of its rows in each."""
    info = source.dataset_info.splits[source.split]
    return [(os.fspath(fi.filename), int(fi.take)) for fi in info.file_instructions]


def verify_array_record_shard(path: str, num_rows: Optional[int] = None, *, chunk: int = 4096) -> None:
    """Read every record of an ArrayRecord file once (Riegeli checks each chunk's hash), so a truncated, corrupted,
    missing or short shard fails here, naming the file, instead of in the middle of training. Sequential reads,
    about 0.1 s per 10 MB on this 2-core machine."""
    from array_record.python import array_record_module  # installed with tensorflow-datasets
    if not os.path.isfile(path):
        raise FileNotFoundError(f"TFDS shard {path} is missing (listed in the dataset's dataset_info.json); rebuild "
                                f"the dataset with `tfds build --overwrite`")
    size = os.path.getsize(path)
    try:
        reader = array_record_module.ArrayRecordReader(path)
        try:
            n = reader.num_records()
            for start in range(0, n, chunk):
                reader.read(start, min(n, start + chunk))
        finally:
            reader.close()
    except (RuntimeError, ValueError, OSError) as e:
        raise ValueError(f"TFDS shard {path} ({size} bytes) is damaged or truncated: {e} (rebuild the dataset with "
                         f"`tfds build --overwrite`)") from None
    if num_rows is not None and n < num_rows:
        raise ValueError(f"TFDS shard {path} holds {n} records, but the dataset's dataset_info.json says the split "
                         f"reads {num_rows} from it (a truncated or replaced shard? rebuild the dataset)")


def load_tfds(name: str, split: str = "train", *, data_dir: Optional[str] = None, image_key: str = "image",
              label_key: str = "label", verify: bool = True):
    """A TFDS dataset by name (``mnist``, ``fashion_mnist``, ``cifar10``, ``celeb_a``, ...) as a random-access source
    (``tfds.data_source`` over ArrayRecord shards; never downloads: prepare it first with ``tfds build NAME
    --file_format=array_record``). ``verify`` reads every shard of the split once (:func:`verify_array_record_shard`)
    and decodes its first row, so damaged data fails here, naming the file. Needs ``pip install diffjax[tfds]``."""
    try:
        import tensorflow_datasets as tfds  # lazy: an optional extra
    except ImportError as e:
        raise ImportError(f"dataset {name!r} needs tensorflow_datasets: pip install 'diffjax[tfds]' "
                          f"(tensorflow-datasets, importlib_resources) ({e})") from e
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # tfds raises assorted errors for a missing / unprepared / unreadable dataset
        raise FileNotFoundError(f"TFDS dataset {name!r} (split {split!r}) is not prepared, or its metadata "
                                f"(dataset_info.json, features.json) cannot be read, in data_dir={data_dir!r} (TFDS "
                                f"default when None). Prepare it with `tfds build {name} --file_format=array_record` "
                                f"on a machine with a network, or set data.data_dir. ({type(e).__name__}: {e})") from e
    arrays = _TFDSArrays(source, image_key, label_key, _tfds_shards(source))
    if verify:
        start = 0
        for path, n in arrays.shards:
            verify_array_record_shard(path, n)
            if n:
                arrays.get([start])
            start += n
    return arrays


def to_unit(images_uint8) -> np.ndarray:
    """uint8 ``[0, 255]`` -> float32 ``[-1, 1]``: ``x = 2 u / 255 - 1``."""
    return np.asarray(images_uint8, np.float32) * (2.0 / 255.0) - 1.0


def from_unit(x) -> np.ndarray:
    """float ``[-1, 1]`` -> uint8 ``[0, 255]`` (rounded, clipped); the inverse of :func:`to_unit`."""
    return np.clip(np.round((np.asarray(x, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def random_flip(rng: np.random.Generator, images: np.ndarray) -> np.ndarray:
    """Flip each image ``(N, H, W, C)`` left-right with probability 1/2."""
    flip = rng.random(images.shape[0]) < 0.5
    return np.where(flip[:, None, None, None], images[:, :, ::-1], images)


def dequantize(rng: np.random.Generator, images_uint8: np.ndarray) -> np.ndarray:
    """Uniform dequantization to ``[-1, 1]``: ``x = 2 (u + U[0,1)) / 256 - 1`` (continuous density for bits/dim)."""
    u = np.asarray(images_uint8, np.float32) + rng.random(images_uint8.shape, dtype=np.float32)
    return u * (2.0 / 256.0) - 1.0
