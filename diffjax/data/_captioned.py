"""Captioned image batches for a text-conditional model: each image's class label becomes the token ids of one of
its training captions (:func:`~diffjax.data.sample_captions`, the attributes measured from the batch's pixels),
drawn afresh at every step and deterministic in ``(seed, step, process)``; with probability ``dropout`` a caption is
the empty text (classifier-free guidance's null condition, Ho & Salimans 2022)."""
from __future__ import annotations

import numpy as np

from diffjax.data._captions import measure_attributes, sample_captions
from diffjax.data._images import from_unit

__all__ = ["CaptionedData"]


class CaptionedData:
    """An image pipeline (``batches(step, n) -> {"x", "y" labels}``) whose ``"y"`` is caption token ids
    ``(n, local, max_length)`` int32 (padding: ``tokenizer.PAD``); every other attribute is the wrapped pipeline's.

    Args:
      data: an :class:`~diffjax.data.ImageData` with class labels.
      tokenizer: a :class:`~diffjax.data.Tokenizer` of the caption grammar.
      max_length: tokens per caption (BOS and EOS included).
      dropout: probability that a caption is the empty text.
      seed: the captions' seed.
      process_index: this process (its rows draw their own captions).
    """

    def __init__(self, data, tokenizer, *, max_length: int, dropout: float = 0.0, seed: int = 0,
                 process_index: int = 0):
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.data, self.tokenizer, self.max_length, self.dropout = data, tokenizer, max_length, dropout
        self.seed, self.process_index = seed, process_index

    def __getattr__(self, name):
        return getattr(self.__dict__["data"], name)

    def captions(self, step: int, x, labels) -> list:
        """The captions of batch ``step`` (images ``x`` in ``[-1, 1]``, class ``labels``)."""
        rng = np.random.default_rng([self.seed, step, self.process_index, 7])
        shades, sizes = measure_attributes(from_unit(x))
        texts = sample_captions(rng, labels, shades, sizes)
        drop = rng.random(len(texts)) < self.dropout
        return ["" if d else t for t, d in zip(texts, drop)]

    def batches(self, step: int, n: int = 1) -> dict:
        b = self.data.batches(step, n)
        ids = np.stack([self.tokenizer.encode(self.captions(step + i, b["x"][i], b["y"][i]),
                                              max_length=self.max_length)[0] for i in range(n)])
        return dict(b, y=ids)
