"""Deterministic batches: batch ``step`` is a pure function of ``(seed, step)``, so a resumed run sees the same data.

Each JAX process produces only its own rows (``process_index``-th slice of the global batch); image datasets read
only those rows. Random draws (permutations, flips, dequantization noise) are made for the whole global batch and then
sliced, so the global batch does not depend on how many processes share it.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import jax
import numpy as np

from diffjax.core._checks import check_int
from diffjax.core._jit import jit_static
from diffjax.data._images import to_unit
from diffjax.data._toy import TOY_DATASETS, toy_sample

__all__ = ["ToyData", "ImageData"]


def _process_slice(global_batch, process_index, process_count):
    check_int("global_batch", global_batch, minimum=1)
    if global_batch % process_count:
        raise ValueError(f"global batch size {global_batch} must be divisible by the process count {process_count}")
    local = global_batch // process_count
    return slice(process_index * local, (process_index + 1) * local)


@jit_static("name", "global_batch")
def _toy_batches(key, steps, *, name, global_batch):
    fn = TOY_DATASETS[name]
    return jax.vmap(lambda s: fn(jax.random.fold_in(key, s), global_batch))(steps)


class ToyData:
    """2-D toy data: batch ``step`` is ``toy_sample(name, fold_in(key(seed), step), global_batch)`` (this process's
    rows). ``batches(step, n)`` returns ``{"x": (n, local_batch, 2)}``."""

    def __init__(self, name: str, *, global_batch: int, seed: int = 0, process_index: Optional[int] = None,
                 process_count: Optional[int] = None):
        if name not in TOY_DATASETS:
            raise ValueError(f"toy dataset name must be one of {sorted(TOY_DATASETS)}, got {name!r}")
        self.name = name
        self.global_batch = global_batch
        pi = jax.process_index() if process_index is None else process_index
        pc = jax.process_count() if process_count is None else process_count
        self._rows = _process_slice(global_batch, pi, pc)
        self._key = jax.random.key(seed)
        self.shape: Tuple[int, ...] = (2,)
        self.num_classes = None
        self._cpu = jax.local_devices(backend="cpu")[0]

    def sample(self, key, n: int) -> np.ndarray:
        """Fresh samples ``(n, 2)`` (e.g. for energy distance)."""
        return np.asarray(toy_sample(self.name, key, n))

    def batches(self, step: int, n: int = 1) -> dict:
        with jax.default_device(self._cpu):
            x = _toy_batches(self._key, np.arange(step, step + n, dtype=np.int32), name=self.name,
                             global_batch=self.global_batch)
        return {"x": np.asarray(x)[:, self._rows]}


class ImageData:
    """Finite image data ``(N, H, W, C)`` uint8 (+ int labels), cycled in epochs.

    Epoch ``e`` visits the rows in the order ``np.random.default_rng([seed, e]).permutation(N)``, ``N //
    global_batch`` batches per epoch (the remainder is dropped). Values are scaled to ``[-1, 1]``
    (:func:`~diffjax.data.to_unit`) or uniformly dequantized; optional random left-right flips.

    Args:
      get: ``get(indices) -> (images uint8 (k, H, W, C), labels int (k,))`` (random access; reads only those rows).
      size: ``N``.
      shape: ``(H, W, C)``.
      num_classes: number of label classes (``None``: unlabelled / ignore labels).
    """

    def __init__(self, get: Callable, size: int, shape, *, global_batch: int, seed: int = 0,
                 random_flip: bool = False, dequantize: bool = False, num_classes: Optional[int] = None,
                 process_index: Optional[int] = None, process_count: Optional[int] = None):
        if size < global_batch:
            raise ValueError(f"dataset has {size} examples, fewer than the global batch size {global_batch}")
        pi = jax.process_index() if process_index is None else process_index
        pc = jax.process_count() if process_count is None else process_count
        self._rows = _process_slice(global_batch, pi, pc)
        self._get, self.size, self.shape = get, size, tuple(shape)
        self.global_batch, self.seed = global_batch, seed
        self.random_flip, self.dequantize, self.num_classes = random_flip, dequantize, num_classes
        self.steps_per_epoch = size // global_batch
        self._perm_epoch, self._perm = None, None

    @classmethod
    def from_arrays(cls, images: np.ndarray, labels: Optional[np.ndarray] = None, **kwargs):
        labels = np.zeros(len(images), np.int32) if labels is None else np.asarray(labels, np.int32)
        return cls(lambda idx: (images[idx], labels[idx]), len(images), images.shape[1:], **kwargs)

    def get(self, indices) -> tuple:
        """Rows ``indices`` as stored: ``(images uint8 (k, H, W, C), labels int (k,))`` (no scaling or flips)."""
        return self._get(np.asarray(indices))

    def _indices(self, step):
        epoch, pos = divmod(step, self.steps_per_epoch)
        if epoch != self._perm_epoch:
            self._perm, self._perm_epoch = np.random.default_rng([self.seed, epoch]).permutation(self.size), epoch
        return self._perm[pos * self.global_batch:(pos + 1) * self.global_batch]

    def batch(self, step: int) -> dict:
        """This process's rows of global batch ``step``: ``{"x": float32 (local, H, W, C), "y": int32 (local,)}``."""
        idx = self._indices(step)[self._rows]
        images, labels = self._get(idx)
        rng = np.random.default_rng([self.seed, step, 1])
        flips = rng.random(self.global_batch)[self._rows] < 0.5 if self.random_flip else None
        if self.dequantize:
            noise = rng.random((self.global_batch,) + self.shape, dtype=np.float32)[self._rows]
            x = (images.astype(np.float32) + noise) * (2.0 / 256.0) - 1.0
        else:
            x = to_unit(images)
        if flips is not None:
            x = np.where(flips[:, None, None, None], x[:, :, ::-1], x)
        return {"x": x, "y": np.asarray(labels, np.int32)}

    def batches(self, step: int, n: int = 1) -> dict:
        """Batches ``step .. step + n - 1`` stacked: ``{"x": (n, local, H, W, C), "y": (n, local)}``."""
        bs = [self.batch(s) for s in range(step, step + n)]
        return {k: np.stack([b[k] for b in bs]) for k in bs[0]}
