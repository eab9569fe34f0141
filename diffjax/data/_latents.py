"""Encoded images for latent diffusion: :class:`LatentData` serves an autoencoder's posterior moments, computed once,
in the epochs and batches of :class:`~diffjax.data.ImageData` (the same rows in the same order for the same seed);
:func:`latent_scale_factor` is latent diffusion's scale of the latents (Rombach et al. 2022, Sec. 4.3.2 / App. G)."""
from __future__ import annotations

from typing import Optional

import numpy as np

from diffjax.data._pipeline import ImageData

__all__ = ["LatentData", "latent_scale_factor"]


def latent_scale_factor(mean, std=None) -> float:
    """``1 / std`` of the encoded latents, every element pooled: of the posterior means ``mean``, or with ``std``
    (the posterior's standard deviations, same shape) of draws ``mean + std * eps``, whose variance is exact in
    closed form (the law of total variance).

    .. math:: s = \\left(\\mathrm{Var}[\\mu] + \\mathbb{E}[\\sigma^2]\\right)^{-1/2}
    """
    m = np.asarray(mean, np.float64)
    var = m.var() + (0.0 if std is None else float(np.mean(np.square(np.asarray(std, np.float64)))))
    if not np.isfinite(var) or var <= 0:
        raise ValueError(f"the encoded latents have variance {var}; no scale factor 1 / std exists (a constant or "
                         f"non-finite encoder?)")
    return float(1.0 / np.sqrt(var))


class LatentData(ImageData):
    """Latents ``scale * z`` of encoded images ``(N, h, w, c)`` (+ labels), cycled in epochs as
    :class:`~diffjax.data.ImageData`: batch ``step`` holds the rows that image batch ``step`` would hold.

    Args:
      mean: the posterior means ``(N, h, w, c)``.
      labels: int ``(N,)`` (``None``: zeros).
      std: the posterior's standard deviations (same shape) to draw ``z = mean + std * eps`` afresh for every batch
        (``eps`` a function of ``(seed, step)``); ``None``: ``z = mean``.
      scale: the scale factor the latents are multiplied by.
    """

    def __init__(self, mean: np.ndarray, labels: Optional[np.ndarray] = None, *, std: Optional[np.ndarray] = None,
                 scale: float = 1.0, **kwargs):
        mean = np.asarray(mean, np.float32)
        if std is not None and np.shape(std) != mean.shape:
            raise ValueError(f"std must be shaped like mean {mean.shape}, got {np.shape(std)}")
        labels = np.zeros(len(mean), np.int32) if labels is None else np.asarray(labels, np.int32)
        super().__init__(lambda idx: (mean[idx], labels[idx]), len(mean), mean.shape[1:], **kwargs)
        self.mean, self.std, self.labels, self.scale = mean, std, labels, float(scale)

    def batch(self, step: int) -> dict:
        """This process's rows of global batch ``step``: ``{"x": float32 (local, h, w, c), "y": int32 (local,)}``."""
        idx = self._indices(step)[self._rows]
        z = self.mean[idx]
        if self.std is not None:
            eps = np.random.default_rng([self.seed, step, 2]).standard_normal(
                (self.global_batch,) + self.shape, dtype=np.float32)[self._rows]
            z = z + self.std[idx] * eps
        return {"x": (self.scale * z).astype(np.float32), "y": self.labels[idx]}
