"""Embeddings of the noise label: DDPM's sinusoidal one, NCSN++'s random Fourier features, and the time MLP."""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffjax.nets._base import Dense, Dtype

EMBEDDING_TYPES = ("positional", "fourier")

def timestep_embedding(labels: jax.Array, dim: int, *, max_positions: float = 10000.0) -> jax.Array:
    """DDPM's sinusoidal embedding of (possibly fractional) noise labels, shape ``(batch,) -> (batch, dim)``.

    .. math:: e_{2j} = \\sin(l \\, m^{-j/(d/2-1)}), \\; e_{2j+1} = \\cos(\\cdot)
    """
    labels = jnp.asarray(labels, jnp.float32)
    half = dim // 2
    freqs = jnp.exp(-math.log(max_positions) / max(half - 1, 1) * jnp.arange(half, dtype=jnp.float32))
    args = labels[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class GaussianFourierProjection(nn.Module):
    """Random Fourier features of the noise label (NCSN++; Tancik et al. 2020). The frequencies ``W ~ N(0, scale^2)``
    are a parameter that is never trained (gradient stopped), as in score-SDE. Output ``(batch, 2 * embedding_size)``."""

    embedding_size: int = 256
    scale: float = 16.0

    @nn.compact
    def __call__(self, labels):
        w = self.param("W", nn.initializers.normal(stddev=self.scale), (self.embedding_size,), jnp.float32)
        w = jax.lax.stop_gradient(w)
        proj = jnp.asarray(labels, jnp.float32)[:, None] * w[None, :] * (2 * np.pi)
        return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


class NoiseEmbedding(nn.Module):
    """Noise-label embedding -> ``Dense(4 ch) -> act -> Dense(4 ch)`` (DDPM / NCSN++ time MLP)."""

    dim: int
    out_dim: int
    embedding_type: str = "positional"
    fourier_scale: float = 16.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, labels):
        if self.embedding_type == "fourier":
            emb = GaussianFourierProjection(self.dim, self.fourier_scale, name="fourier")(labels)
        else:
            emb = timestep_embedding(labels, self.dim)
        emb = Dense(self.out_dim, dtype=self.dtype, name="dense0")(emb)
        return Dense(self.out_dim, dtype=self.dtype, name="dense1")(nn.swish(emb))
