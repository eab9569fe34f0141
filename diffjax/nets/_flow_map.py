"""A flow map's network ``u(x_t, t, s)`` (:mod:`diffjax.distill.flow_map`): any of diffjax's networks told a second
time, the jump's length ``t - s``, embedded like the time and added to the time embedding."""
from __future__ import annotations

from typing import NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp


class TimeGap(NamedTuple):
    """The condition of a flow map: ``noise_label`` ``(batch,)``, the label of ``t - s`` (no image)."""

    noise_label: jax.Array
    image: Optional[jax.Array] = None


class FlowMapNet(nn.Module):
    """``model(x, noise_labels, gap_labels, train=...) = net(x, noise_labels, train=..., cond=TimeGap(gap_labels))``
    for a :class:`~diffjax.nets.UNet`, :class:`~diffjax.nets.DiT` or :class:`~diffjax.nets.MLPScore`; the output is
    the average velocity itself. ``gap_labels=None`` (initialisation) means zeros."""

    net: nn.Module

    def __call__(self, x, noise_labels, gap_labels=None, *, train: bool):
        if gap_labels is None:
            gap_labels = jnp.zeros((x.shape[0],), jnp.float32)
        return self.net(x, noise_labels, train=train, cond=TimeGap(jnp.asarray(gap_labels, jnp.float32)))
