"""What ``config.task = "adapt"`` trains on top of the frozen base parameters: one object per kind of trainable
parameters, each with ``init()`` (the trainable tree at step 0), ``merge(frozen, trainable, scale)`` (the parameters
the network runs with; differentiable in ``trainable``) and ``record()`` (what ``adapter.json`` says about it).

* :class:`LoraParams`: low-rank factors of the base's kernels (``adapt.method="lora"``, and ``"dreambooth"`` with
  ``adapt.dreambooth_lora``); ``scale`` is the LoRA strength.
* :class:`FullParams`: every parameter (``"dreambooth"`` without ``adapt.dreambooth_lora``: the checkpoint holds the
  whole network); ``scale`` interpolates between the base (0) and the fine-tuned weights (1).
* :class:`NewWordRows`: the embedding rows of the words a textual-inversion adapter adds to the vocabulary
  (``"textual_inversion"``); the rest of the network stays the base's; ``scale`` is not used.

Part of the entry layer (it reads a ``ConfigDict``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax import adapt

# the token-embedding table of a TextConditional's TextEncoder
TOKEN_EMBEDDING = ("text_encoder", "token_embed", "embedding")


def _num_params(tree) -> int:
    return int(sum(x.size for x in jax.tree.leaves(tree)))


class LoraParams:
    """A LoRA adapter of ``adapt.rank`` / ``adapt.alpha`` on the kernels of ``adapt.targets``."""

    holds = "the low-rank factors of the adapter"

    def __init__(self, config, frozen):
        a = config.adapt
        self.template = adapt.lora_init(jax.random.key(config.seed), frozen, rank=a.rank,
                                        alpha=float(a.alpha) if a.alpha else None,
                                        targets=list(a.targets) if a.targets else None)

    def init(self):
        return self.template.layers

    def merge(self, frozen, trainable, scale=1.0):
        return adapt.lora_merge(frozen, adapt.LoraAdapter(layers=trainable, alpha=self.template.alpha,
                                                          rank=self.template.rank), scale=scale)

    def record(self) -> dict:
        return dict(rank=self.template.rank, alpha=self.template.alpha, kernels=sorted(self.template.layers),
                    trainable_params=adapt.lora_num_params(self.template))

    def describe(self) -> str:
        return f"a LoRA adapter of rank {self.template.rank} on {len(self.template.layers)} kernels"


class FullParams:
    """Every parameter of the network, starting at the base's (DreamBooth's full fine-tuning)."""

    holds = "every parameter of the fine-tuned network"

    def __init__(self, config, frozen):
        del config
        self.frozen = frozen

    def init(self):
        return self.frozen

    def merge(self, frozen, trainable, scale=1.0):
        if isinstance(scale, (int, float)) and float(scale) == 1.0:
            return trainable
        return jax.tree.map(lambda w0, w: (w0 + scale * (w - w0)).astype(w0.dtype), frozen, trainable)

    def record(self) -> dict:
        return dict(trainable_params=_num_params(self.frozen))

    def describe(self) -> str:
        return "full fine-tuning of every parameter"


class NewWordRows:
    """The embedding rows ``(len(words), width)`` of the words textual inversion adds (``adapt.new_word``),
    initialised from ``adapt.init_word``'s row (or Gaussian), appended to the base's token-embedding table."""

    holds = "the new words' embedding rows"

    def __init__(self, config, frozen, *, words, init_id):
        self.words = tuple(words)
        self.rows = adapt.ti_init(jax.random.key(config.seed), frozen, TOKEN_EMBEDDING, len(self.words),
                                  init_ids=None if init_id is None else [init_id] * len(self.words))

    def init(self):
        return self.rows

    def merge(self, frozen, trainable, scale=1.0):
        del scale
        return adapt.ti_merge(frozen, TOKEN_EMBEDDING, jnp.asarray(trainable))

    def record(self) -> dict:
        return dict(new_words=list(self.words), trainable_params=int(self.rows.size))

    def describe(self) -> str:
        return f"the embedding rows of {len(self.words)} new word(s) {list(self.words)}"
