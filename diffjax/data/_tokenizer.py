"""A word-level tokenizer with a fixed vocabulary (no download): the caption grammar's words plus four specials.

``encode`` lower-cases a text, splits it into words (:func:`~diffjax.data.text_words`: letters, digits and hyphens;
other characters separate words), maps each word to its id (a word outside the vocabulary to ``UNK``) and writes
``BOS w_1 ... w_n EOS`` padded with ``PAD`` to ``max_length``, with a boolean mask of the real tokens. The empty
text encodes as ``BOS EOS``. A text longer than ``max_length - 2`` words raises ``ValueError`` (it is never cut).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence, Tuple

import numpy as np

from diffjax.core._checks import check_int
from diffjax.data._captions import caption_words, text_words

__all__ = ["Tokenizer", "caption_tokenizer", "SPECIAL_TOKENS"]

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")


@dataclasses.dataclass(frozen=True)
class Tokenizer:
    """Word-level tokenizer over ``SPECIAL_TOKENS + words`` (ids 0..3 are PAD, BOS, EOS, UNK)."""

    words: Tuple[str, ...]

    PAD, BOS, EOS, UNK = 0, 1, 2, 3

    def __post_init__(self):
        if len(set(self.words)) != len(self.words) or set(self.words) & set(SPECIAL_TOKENS):
            raise ValueError("words must be distinct and must not contain the special tokens "
                             f"{SPECIAL_TOKENS}, got {len(self.words)} words")
        object.__setattr__(self, "_ids", {w: i + len(SPECIAL_TOKENS) for i, w in enumerate(self.words)})

    @property
    def vocab(self) -> Tuple[str, ...]:
        return SPECIAL_TOKENS + tuple(self.words)

    @property
    def vocab_size(self) -> int:
        return len(SPECIAL_TOKENS) + len(self.words)

    def unknown_words(self, text: str) -> list:
        """The words of ``text`` outside the vocabulary (they encode as ``UNK``)."""
        return [w for w in text_words(text) if w not in self._ids]

    def encode(self, texts: Sequence[str], *, max_length: int):
        """``(ids int32 (n, max_length), mask bool (n, max_length))`` of ``texts`` (a str counts as one text)."""
        check_int("max_length", max_length, minimum=2)
        texts = [texts] if isinstance(texts, str) else list(texts)
        ids = np.full((len(texts), max_length), self.PAD, np.int32)
        for row, text in enumerate(texts):
            words = text_words(text)
            if len(words) + 2 > max_length:
                raise ValueError(f"text {text!r} has {len(words)} words; with BOS and EOS that is more than "
                                 f"max_length={max_length} tokens (allowed: at most {max_length - 2} words)")
            tokens = [self.BOS] + [self._ids.get(w, self.UNK) for w in words] + [self.EOS]
            ids[row, :len(tokens)] = tokens
        return ids, ids != self.PAD

    def decode(self, ids) -> list:
        """The texts of id rows ``(n, L)`` (or one row ``(L,)``): the words between BOS and EOS, PAD dropped,
        ``UNK`` written ``<unk>``; an id outside the vocabulary raises ``ValueError``."""
        ids = np.asarray(ids)
        rows = ids[None] if ids.ndim == 1 else ids
        if rows.size and (rows.min() < 0 or rows.max() >= self.vocab_size):
            raise ValueError(f"ids must lie in [0, {self.vocab_size}), got values in [{rows.min()}, {rows.max()}]")
        vocab = self.vocab
        out = []
        for row in rows:
            words = []
            for i in row:
                if i == self.EOS:
                    break
                if i not in (self.PAD, self.BOS):
                    words.append(vocab[i])
            out.append(" ".join(words))
        return out[0] if ids.ndim == 1 else out


@functools.lru_cache(maxsize=None)
def caption_tokenizer() -> Tokenizer:
    """The tokenizer of the Fashion-MNIST caption grammar (:func:`~diffjax.data.caption_words`)."""
    return Tokenizer(caption_words())
