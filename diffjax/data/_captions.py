"""Templated captions of Fashion-MNIST images and the pixel rules behind their attributes.

A caption names the class (one of its synonyms) and, where the image has them, two attributes measured from its
pixels as displayed (white ink on black, uint8 values):

* **shade**: the mean value of the inked pixels (value > ``INK_THRESHOLD``), in [0, 1]: below ``DARK_BELOW`` the
  garment is ``dark``, above ``LIGHT_ABOVE`` it is ``light``, in between no shade word is used;
* **size**: the inked fraction of the image: below ``SMALL_BELOW`` ``small``, above ``LARGE_ABOVE`` ``large``.

The four thresholds are the 1/3 and 2/3 quantiles of the Fashion-MNIST training split (60000 images, ink threshold
51/255), rounded to 3 decimals and fixed here, so each attribute word covers about a third of the training images
(tests/test_text.py recomputes them). Size follows the class closely (92% of sneakers are small, 79% of pullovers
large): a class-free rule cannot avoid that.

The rules are the ground truth of prompt following: :func:`measure_attributes` gives an image's attribute codes
(-1: dark / small, +1: light / large, 0: neither), :func:`parse_prompt` gives the class and attribute codes a text
states, :func:`prompt_matches` says whether an image fits a text.

Captions are deterministic in ``(label, shade, size)``: :func:`captions` lists every caption of an image (all
templates x class synonyms x attribute synonyms, attributes stated or left out). The ``"heldout"`` split uses sentence
frames and an attribute order (shade before size) that the ``"train"`` split never uses, built only from words of the
training captions: a word-level text encoder cannot know a word it never saw, so generalisation is measured on new
phrasings of known words.
"""
from __future__ import annotations

import functools
import itertools
import re
from typing import NamedTuple, Optional, Tuple

import numpy as np

__all__ = ["CLASS_NAMES", "CLASS_SYNONYMS", "SHADE_WORDS", "SIZE_WORDS", "CAPTION_SPLITS", "INK_THRESHOLD",
           "DARK_BELOW", "LIGHT_ABOVE", "SMALL_BELOW", "LARGE_ABOVE", "Prompt", "measure_attributes",
           "attribute_measures", "captions", "sample_captions", "caption_words", "class_prompts", "heldout_prompts",
           "parse_prompt", "prompt_matches", "match_matrix", "text_words"]

CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot")
# the first synonym is the class's canonical noun (class_prompts); no word is shared between two classes
CLASS_SYNONYMS = (("t-shirt", "tee", "top"), ("trousers", "pants", "jeans"), ("pullover", "sweater", "jumper"),
                  ("dress", "gown", "frock"), ("coat", "jacket", "overcoat"), ("sandal", "slipper", "flip-flop"),
                  ("shirt", "blouse"), ("sneaker", "trainer", "running shoe"), ("bag", "handbag", "purse"),
                  ("ankle boot", "boot", "bootie"))
_PLURAL = frozenset({"trousers", "pants", "jeans"})  # "a pair of ..."
SHADE_WORDS = {-1: ("dark", "dim"), 1: ("light", "bright")}
SIZE_WORDS = {-1: ("small", "little"), 1: ("large", "big")}

INK_THRESHOLD = 0.2   # a pixel is ink when its value / 255 exceeds this
DARK_BELOW, LIGHT_ABOVE = 0.593, 0.740   # mean ink value: training-split tertiles
SMALL_BELOW, LARGE_ABOVE = 0.333, 0.514  # inked fraction: training-split tertiles

# sentence frames: {np} is the noun phrase ("a small dark sneaker")
_FRAMES = {"train": ("{np}", "a photo of {np}", "a picture of {np}", "{np} on a black background"),
           "heldout": ("a photo of {np} on a black background", "a picture of {np} on a black background",
                       "a black background photo of {np}")}
CAPTION_SPLITS = tuple(_FRAMES)


class Prompt(NamedTuple):
    """What a text states: the class index and the attribute codes (``None``: not stated)."""

    label: Optional[int]
    shade: Optional[int]
    size: Optional[int]


def attribute_measures(images) -> Tuple[np.ndarray, np.ndarray]:
    """``(shade, area)`` of uint8 images ``(N, H, W[, 1])``: the mean ink value in [0, 1] (0 where nothing is inked)
    and the inked fraction.

    .. math:: \\mathrm{ink} = [u > 0.2],\\; \\mathrm{shade} = \\frac{\\sum u \\, \\mathrm{ink}}{\\sum \\mathrm{ink}},
              \\; \\mathrm{area} = \\overline{\\mathrm{ink}}, \\; u = \\mathrm{pixel} / 255
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"images must be uint8 (N, H, W[, 1]) as displayed (diffjax.data.from_unit converts [-1, 1] "
                        f"floats), got dtype {images.dtype}")
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3:
        raise ValueError(f"images must be shaped (N, H, W) or (N, H, W, 1), got shape {images.shape}")
    u = images.astype(np.float32) / 255.0
    ink = u > INK_THRESHOLD
    count = ink.sum(axis=(1, 2))
    shade = np.where(count > 0, (u * ink).sum(axis=(1, 2)) / np.maximum(count, 1), 0.0)
    return shade.astype(np.float32), (count / float(u.shape[1] * u.shape[2])).astype(np.float32)


def measure_attributes(images) -> Tuple[np.ndarray, np.ndarray]:
    """The attribute codes of uint8 images ``(N, H, W[, 1])``: ``(shade, size)``, int arrays ``(N,)`` with -1
    (dark / small), 0 (neither) or +1 (light / large), by the thresholds of this module."""
    shade, area = attribute_measures(images)

    def code(v, lo, hi):
        return np.where(v < lo, -1, np.where(v > hi, 1, 0)).astype(np.int32)

    return code(shade, DARK_BELOW, LIGHT_ABOVE), code(area, SMALL_BELOW, LARGE_ABOVE)


def _check_codes(label, shade, size):
    if not (isinstance(label, (int, np.integer)) and 0 <= label < len(CLASS_NAMES)):
        raise ValueError(f"label must be an int in [0, {len(CLASS_NAMES)}), got {label!r}")
    for name, v in (("shade", shade), ("size", size)):
        if v not in (-1, 0, 1):
            raise ValueError(f"{name} must be -1, 0 or 1 (measure_attributes' codes), got {v!r}")


def _noun_phrase(adjectives, noun):
    words = " ".join([*adjectives, noun])
    if noun in _PLURAL:
        return f"a pair of {words}"
    return ("an " if words[0] in "aeiou" else "a ") + words


def _attribute_choices(code, table):
    return (None,) + (table[code] if code else ())


@functools.lru_cache(maxsize=None)
def captions(label: int, shade: int = 0, size: int = 0, *, split: str = "train") -> Tuple[str, ...]:
    """Every caption of split ``split`` (``CAPTION_SPLITS``) of an image of class ``label`` with attribute codes
    ``shade`` and ``size`` (:func:`measure_attributes`), in a fixed order: frames x class synonyms x shade words x
    size words, each attribute also left out. Training captions put size before shade ("a small dark sneaker"),
    held-out ones shade before size, in frames of their own."""
    if split not in _FRAMES:
        raise ValueError(f"split must be one of {CAPTION_SPLITS}, got {split!r}")
    _check_codes(label, shade, size)
    out = []
    for frame, noun, s, z in itertools.product(_FRAMES[split], CLASS_SYNONYMS[label],
                                               _attribute_choices(shade, SHADE_WORDS),
                                               _attribute_choices(size, SIZE_WORDS)):
        adjectives = (z, s) if split == "train" else (s, z)
        out.append(frame.format(np=_noun_phrase([a for a in adjectives if a], noun)))
    return tuple(out)


def sample_captions(rng: np.random.Generator, labels, shades, sizes, *, split: str = "train") -> list:
    """One caption per image, drawn uniformly from :func:`captions` of its ``(label, shade, size)`` with ``rng``
    (the same generator state gives the same captions)."""
    out = []
    for label, shade, size in zip(np.asarray(labels).tolist(), np.asarray(shades).tolist(),
                                  np.asarray(sizes).tolist()):
        table = captions(label, shade, size, split=split)
        out.append(table[int(rng.integers(len(table)))])
    return out


def class_prompts() -> Tuple[str, ...]:
    """One training-frame prompt per class with its canonical noun: ``"a photo of a t-shirt"``, ..."""
    return tuple(f"a photo of {_noun_phrase([], nouns[0])}" for nouns in CLASS_SYNONYMS)


def heldout_prompts(*, split: str = "heldout") -> Tuple[str, ...]:
    """The fixed prompt set of prompt-following evaluations: per class (class-major), every combination of shade
    (unstated, dark, light) and size (unstated, small, large) with the canonical noun, plus the bare class with its
    second synonym (10 per class, 100 in all); frames cycled through ``split``'s (``"heldout"``: phrasings no
    training caption has)."""
    if split not in _FRAMES:
        raise ValueError(f"split must be one of {CAPTION_SPLITS}, got {split!r}")
    frames, out = _FRAMES[split], []
    for nouns in CLASS_SYNONYMS:
        phrases = [[SHADE_WORDS[s][0] if s else "", SIZE_WORDS[z][0] if z else ""]
                   for s, z in itertools.product((0, -1, 1), (0, -1, 1))]
        if split == "train":
            phrases = [p[::-1] for p in phrases]
        nps = [_noun_phrase([a for a in p if a], nouns[0]) for p in phrases] + [_noun_phrase([], nouns[1])]
        out += [frames[(len(out) + i) % len(frames)].format(np=np_) for i, np_ in enumerate(nps)]
    return tuple(out)


def caption_words() -> Tuple[str, ...]:
    """Every word of every caption of every split, sorted (the grammar's vocabulary)."""
    words = set()
    for split, label in itertools.product(CAPTION_SPLITS, range(len(CLASS_NAMES))):
        for text in captions(label, -1, -1, split=split) + captions(label, 1, 1, split=split):
            words.update(text.split())
    return tuple(sorted(words))


def text_words(text: str) -> list:
    """The words of ``text``: lower case, split on anything but letters, digits and hyphens."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__} {text!r}")
    return re.sub(r"[^a-z0-9\-]+", " ", text.lower()).split()


_NOUNS = sorted(((tuple(n.split()), k) for k, nouns in enumerate(CLASS_SYNONYMS) for n in nouns),
                key=lambda item: -len(item[0]))  # longest first: "ankle boot" before "boot"


def parse_prompt(text: str) -> Prompt:
    """The class and attributes ``text`` states, by the caption grammar's words (other words are ignored). A text
    naming two classes, or two values of one attribute, states neither (``None``): it contradicts itself."""
    words = text_words(text)
    labels, i = set(), 0
    while i < len(words):
        hit = next(((n, k) for n, k in _NOUNS if tuple(words[i:i + len(n)]) == n), None)
        if hit:
            labels.add(hit[1])
        i += len(hit[0]) if hit else 1

    def stated(table):
        codes = {c for c, ws in table.items() if any(w in words for w in ws)}
        return codes.pop() if len(codes) == 1 else None

    return Prompt(labels.pop() if len(labels) == 1 else None, stated(SHADE_WORDS), stated(SIZE_WORDS))


def prompt_matches(prompt: Prompt, label: int, shade: int, size: int) -> bool:
    """Whether an image of class ``label`` with attribute codes ``shade``, ``size`` fits ``prompt``: every stated
    field equals the image's."""
    return all(want is None or want == got for want, got in zip(prompt, (label, shade, size)))


def match_matrix(prompts, labels, shades, sizes) -> np.ndarray:
    """``(len(labels), len(prompts))`` booleans: image ``i`` (class ``labels[i]``, codes ``shades[i]``,
    ``sizes[i]``) fits prompt ``j`` (:func:`prompt_matches`, vectorised)."""
    fits = np.ones((len(labels), len(prompts)), bool)
    for field, values in enumerate((labels, shades, sizes)):
        want = np.array([-9 if p[field] is None else p[field] for p in prompts])
        fits &= (want[None, :] == -9) | (want[None, :] == np.asarray(values)[:, None])
    return fits
