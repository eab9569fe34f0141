"""An MLP score network for low-dimensional data ``(batch, D)``."""
from __future__ import annotations

from typing import Any, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

from diffjax.core._checks import check_choice, check_int
from diffjax.nets._base import Dense
from diffjax.nets._embeddings import EMBEDDING_TYPES, NoiseEmbedding
from diffjax.nets._inputs import check_dtype, check_rate, label_input, noise_label_input


class MLPScore(nn.Module):
    """Noise-conditional MLP: ``h <- swish(W h + U temb)`` per hidden layer, then a linear output of size ``D``.

    Attributes:
      hidden: widths of the hidden layers.
      embedding_type: ``"positional"`` or ``"fourier"`` embedding of the noise label.
      embedding_dim: size of the sinusoidal / Fourier embedding before its 2-layer MLP (of width ``hidden[0]``).
      fourier_scale: std of the Fourier frequencies.
      num_classes: ``None`` or the number of classes (label ``num_classes`` is the null label, used when y is None).
      dropout: dropout rate after each hidden layer (training only).
      learn_sigma: double the output features.
      dtype: compute dtype; parameters are float32.
    """

    hidden: Tuple[int, ...] = (256, 256, 256)
    embedding_type: str = "positional"
    embedding_dim: int = 128
    fourier_scale: float = 16.0
    num_classes: Optional[int] = None
    dropout: float = 0.0
    learn_sigma: bool = False
    dtype: Any = jnp.float32

    def __post_init__(self):
        if not isinstance(self.hidden, (tuple, list)) or not self.hidden:
            raise ValueError(f"hidden must be a non-empty tuple of positive ints, got {self.hidden!r}")
        for w in self.hidden:
            check_int("hidden entry", w, minimum=1)
        check_choice("embedding_type", self.embedding_type, EMBEDDING_TYPES)
        check_int("embedding_dim", self.embedding_dim, minimum=2)
        if self.num_classes is not None:
            check_int("num_classes", self.num_classes, minimum=1)
        check_rate("dropout", self.dropout)
        check_dtype(self.dtype)
        super().__post_init__()

    @nn.compact
    def __call__(self, x, noise_labels, y=None, *, train: bool, cond=None):
        """``cond``: a condition whose ``noise_label`` is embedded like the time and added (a flow map's
        :class:`~diffjax.nets.TimeGap`); points have no image to concatenate."""
        if x.ndim != 2:
            raise ValueError(f"x must be shaped (batch, D), got shape {x.shape}")
        b, d = x.shape
        temb = NoiseEmbedding(self.embedding_dim, self.hidden[0], self.embedding_type, self.fourier_scale,
                              self.dtype, name="noise_embed")(noise_label_input(noise_labels, b))
        if cond is not None:
            if getattr(cond, "image", None) is not None:
                raise ValueError("the toy MLP takes no image condition (cond.image must be None)")
            temb = temb + NoiseEmbedding(self.embedding_dim, self.hidden[0], self.embedding_type, self.fourier_scale,
                                         self.dtype, name="cond_level_embed")(noise_label_input(cond.noise_label, b))
        if self.num_classes is not None:
            temb = temb + nn.Embed(self.num_classes + 1, self.hidden[0], dtype=self.dtype, param_dtype=jnp.float32,
                                   name="label_embed")(label_input(y, self.num_classes, b))
        temb = nn.swish(temb)
        h = x.astype(self.dtype)
        for i, width in enumerate(self.hidden):
            h = Dense(width, dtype=self.dtype, name=f"dense{i}")(h) + Dense(width, dtype=self.dtype,
                                                                            name=f"temb{i}")(temb)
            h = nn.Dropout(self.dropout)(nn.swish(h), deterministic=not train)
        out = Dense(d * (2 if self.learn_sigma else 1), dtype=self.dtype, name="out")(h)
        return out.astype(jnp.float32)
