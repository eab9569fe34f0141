"""CLIP (Radford et al. 2021): a text tower and an image tower mapped to one unit sphere, with a learned temperature.

The image tower is a :class:`~diffjax.nets.NoiseConditionalClassifier` whose ``num_classes`` outputs are the
embedding: the noise-aware variant (for CLIP guidance; "GLIDE", Nichol et al. 2022, Sec. 2.3) feeds it the noise
label of ``x_t``; the clean variant feeds it the constant label 0 (its time embedding is then a learned bias, and the
tower a plain residual CNN).
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp

from diffjax.core._checks import check_int, check_positive
from diffjax.nets._classifier import NoiseConditionalClassifier
from diffjax.nets._text import TextEncoder

__all__ = ["CLIP"]

MAX_LOGIT_SCALE = 100.0  # CLIP clips exp(logit_scale) at 100 (Radford et al. 2021, Sec. 2.5)


def _unit(v):
    v = v.astype(jnp.float32)
    return v / jnp.sqrt(jnp.sum(v * v, axis=-1, keepdims=True) + 1e-12)


class CLIP(nn.Module):
    """Text and image embeddings on the unit sphere and the logit scale ``1 / temperature``.

    Attributes:
      text_encoder: a :class:`~diffjax.nets.TextEncoder`; its pooled features go through a linear map to
        ``embed_dim``.
      image_encoder: a :class:`~diffjax.nets.NoiseConditionalClassifier` with ``num_classes == embed_dim``.
      embed_dim: the joint embedding's width.
      init_temperature: the softmax temperature at initialisation (CLIP: 0.07); learned as ``log(1 / T)``.
      noise_aware: the image tower takes the noise label of ``x_t`` (``encode_image(x, noise_labels)``); otherwise
        it takes clean images and ``noise_labels`` must be ``None``.
    """

    text_encoder: TextEncoder
    image_encoder: NoiseConditionalClassifier
    embed_dim: int = 64
    init_temperature: float = 0.07
    noise_aware: bool = False

    def __post_init__(self):
        check_int("embed_dim", self.embed_dim, minimum=1)
        check_positive("init_temperature", self.init_temperature)
        if self.image_encoder.num_classes != self.embed_dim:
            raise ValueError(f"image_encoder.num_classes={self.image_encoder.num_classes} must equal "
                             f"embed_dim={self.embed_dim} (its outputs are the image embedding)")
        super().__post_init__()

    def setup(self):
        self.text_proj = nn.Dense(self.embed_dim, use_bias=False, name="text_proj")
        self.log_scale = self.param("logit_scale", nn.initializers.constant(math.log(1.0 / self.init_temperature)),
                                    (), jnp.float32)

    def encode_image(self, x, noise_labels=None, *, train: bool = False):
        """Unit image embeddings ``(B, embed_dim)`` of ``x`` ``(B, H, W, C)`` (``x_t`` with its noise labels
        ``(B,)`` when ``noise_aware``)."""
        if self.noise_aware == (noise_labels is None):
            got = "None" if noise_labels is None else "an array"
            raise ValueError(f"noise_aware={self.noise_aware}: encode_image needs noise_labels of x_t exactly when "
                             f"the image tower is noise-aware, got noise_labels={got}")
        labels = jnp.zeros((x.shape[0],), jnp.float32) if noise_labels is None else noise_labels
        return _unit(self.image_encoder(x, labels, train=train))

    def encode_text(self, ids, mask):
        """``(unit text embeddings (B, embed_dim), token features (B, L, width))`` of token ids and their mask."""
        tokens, pooled = self.text_encoder(ids, mask)
        return _unit(self.text_proj(pooled)), tokens

    def logit_scale(self):
        """``exp(logit_scale)``, at most ``MAX_LOGIT_SCALE``: the multiplier of the cosine similarities."""
        return jnp.minimum(jnp.exp(self.log_scale), MAX_LOGIT_SCALE)

    def __call__(self, x, ids, mask, noise_labels=None, *, train: bool = False):
        """``(image embeddings, text embeddings, logit scale)``."""
        return (self.encode_image(x, noise_labels, train=train), self.encode_text(ids, mask)[0], self.logit_scale())
