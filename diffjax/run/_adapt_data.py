"""The data of ``config.task = "adapt"``: the user's images of the new concept (``adapt.images``), the condition
they are taught under (``adapt.prompt`` on a text-conditional base, ``adapt.label`` on a class-conditional one), and
DreamBooth's class-prior images, drawn once by the frozen base for ``adapt.prior_prompt`` and kept in the adapt
workdir (``prior_images.npz``) so that a resumed run trains on the same ones.

Part of the entry layer (it reads a ``ConfigDict``).
"""
from __future__ import annotations

import glob
import os

import numpy as np

PRIOR_FILE = "prior_images.npz"


def load_adapt_images(path: str, shape) -> np.ndarray:
    """``adapt.images``: an ``.npz`` with a uint8 array ``x`` (N, H, W, C), or a folder of PNGs, as uint8
    ``(N, H, W, C)`` of the model's ``shape = (H, W, C)`` (no resizing: other sizes are an error)."""
    h, w, c = shape
    if isinstance(path, str) and path.endswith(".npz") and os.path.isfile(path):
        with np.load(path) as z:
            if "x" not in z.files:
                raise ValueError(f"adapt.images={path!r} has no array 'x' (arrays: {z.files})")
            x = np.asarray(z["x"])
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (h, w, c):
            raise ValueError(f"adapt.images={path!r}: x must be uint8 (N, {h}, {w}, {c}), got {x.dtype} {x.shape}")
    elif isinstance(path, str) and os.path.isdir(path):
        from PIL import Image
        files = sorted(glob.glob(os.path.join(path, "*.png")))
        if not files:
            raise ValueError(f"adapt.images={path!r} is a folder without PNG images (*.png)")
        imgs = []
        for f in files:
            im = np.asarray(Image.open(f).convert("L" if c == 1 else "RGB"), np.uint8)
            if im.shape[:2] != (h, w):
                raise ValueError(f"adapt.images: {f} is {im.shape[1]}x{im.shape[0]}, the model takes {w}x{h}")
            imgs.append(im.reshape(h, w, c))
        x = np.stack(imgs)
    else:
        raise ValueError(f"adapt.images must be an .npz file (uint8 x, (N, {h}, {w}, {c})) or a folder of PNGs, got "
                         f"{path!r}")
    if len(x) == 0:
        raise ValueError(f"adapt.images={path!r} holds no images")
    return x


def prompt_ids(config, field: str, prompt: str) -> np.ndarray:
    """The token ids ``(text.max_length,)`` of ``prompt`` (the value of ``adapt.FIELD``) in the config's vocabulary
    (the caption grammar's, plus a textual-inversion adapter's new word); ``ValueError`` naming the field for an
    empty prompt, words outside the vocabulary or a prompt longer than ``text.max_length``."""
    from diffjax import config_lib as cl
    tok, n = cl.text_tokenizer(config), int(config.text.max_length)
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"adapt.{field} is required on a text-conditional base (the caption the images are taught "
                         f"under, e.g. 'a sks bag'), got {prompt!r}")
    unknown = tok.unknown_words(prompt)
    if unknown:
        raise ValueError(f"adapt.{field}={prompt!r} has words outside the vocabulary: {unknown}; allowed words: "
                         f"{list(tok.words)}")
    try:
        return tok.encode(prompt, max_length=n)[0][0]
    except ValueError as e:
        raise ValueError(f"adapt.{field} (text.max_length={n}): {e}") from None


def instance_condition(config, num_images: int):
    """What the images are taught under, one row per image: caption ids ``(N, L)`` (``adapt.prompt``), class labels
    ``(N,)`` (``adapt.label``) or ``None`` (an unconditional base)."""
    from diffjax import config_lib as cl
    if cl.text_conditional(config):
        return np.tile(prompt_ids(config, "prompt", config.adapt.prompt), (num_images, 1))
    if cl.num_classes(config):
        return np.full(num_images, config.adapt.label, np.int32)
    return None


def image_batches(config, images, y, *, seed_offset: int = 0):
    """``batches(step, n) -> {"x" (n, local, H, W, C)[, "y"]}`` cycling over ``images`` (uint8) with conditions
    ``y`` (rows per image, or None) in batches of ``adapt.batch_size``."""
    from diffjax.data._pipeline import ImageData
    a = config.adapt
    if a.batch_size > len(images):
        raise ValueError(f"adapt.batch_size={a.batch_size} exceeds the {len(images)} images of adapt.images")
    rows = np.zeros(len(images), np.int32) if y is None else y
    data = ImageData(lambda idx: (images[idx], rows[idx]), len(images), images.shape[1:], global_batch=a.batch_size,
                     seed=config.seed + seed_offset, random_flip=bool(config.data.random_flip))
    if y is None:
        return lambda step, n: {"x": data.batches(step, n)["x"]}
    return data.batches


def prior_images(config, workdir, draw) -> np.ndarray:
    """DreamBooth's class-prior images, uint8 ``(adapt.num_prior_images, H, W, C)``: read from
    ``WORKDIR/prior_images.npz``, or drawn by ``draw(n) -> uint8 images`` (the frozen base prompted with
    ``adapt.prior_prompt``) and written there first. A stored file of another prompt or count is an error."""
    a = config.adapt
    path = os.path.join(workdir, PRIOR_FILE)
    if os.path.isfile(path):
        with np.load(path) as z:
            x, prompt = np.asarray(z["x"]), str(z["prompt"])
        if prompt != a.prior_prompt or len(x) != a.num_prior_images:
            raise ValueError(f"{path} holds {len(x)} prior images of {prompt!r}; this config asks for "
                             f"adapt.num_prior_images={a.num_prior_images} of adapt.prior_prompt={a.prior_prompt!r} "
                             f"(use another workdir, or move the file away to draw them anew)")
        print(f"read the {len(x)} prior images of {prompt!r} from {path}", flush=True)
        return x
    x = draw(int(a.num_prior_images))
    os.makedirs(workdir, exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, x=x, prompt=np.asarray(a.prior_prompt))
    os.replace(tmp, path)
    print(f"drew {len(x)} prior images of {a.prior_prompt!r} with the frozen base; wrote {path}", flush=True)
    return x
