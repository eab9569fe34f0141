"""The super-resolution stage of a cascade (Ho et al. 2021) as a network of the bridge's form."""
from __future__ import annotations

import flax.linen as nn


class LowResConditioned(nn.Module):
    """A super-resolution network: ``net`` (a :class:`~diffjax.nets.UNet` or :class:`~diffjax.nets.DiT`) called
    with its condition, a :class:`~diffjax.core.cascade.LowResCondition`, in the place of the class labels, so that
    :func:`~diffjax.nets.make_conditional_score_fn`, the losses and :func:`~diffjax.with_label` carry it as they
    carry labels: ``model(x, noise_labels, cond, train=...) = net(x, noise_labels, train=..., cond=cond)``.

    Attributes:
      net: the network; it concatenates ``cond.image`` to its input channels and adds the embedding of
        ``cond.noise_label`` to its time embedding.
    """

    net: nn.Module

    def __call__(self, x, noise_labels, cond, *, train: bool):
        return self.net(x, noise_labels, train=train, cond=cond)
