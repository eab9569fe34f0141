"""What every network checks and converts the same way: its dtype and rate fields, its image input, its noise labels
and its class labels."""
from __future__ import annotations

import jax.numpy as jnp

from diffjax.core._checks import check_int

DTYPES = (jnp.float32, jnp.bfloat16)


def check_dtype(dtype):
    if jnp.dtype(dtype) not in [jnp.dtype(d) for d in DTYPES]:
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype!r}")


def check_rate(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")


def check_levels(ch, ch_mult, num_res_blocks):
    """A UNet-style trunk: base channels ``ch``, a non-empty ``ch_mult`` of positive multipliers, ``num_res_blocks``
    per level."""
    check_int("ch", ch, minimum=1)
    check_int("num_res_blocks", num_res_blocks, minimum=1)
    if not isinstance(ch_mult, (tuple, list)) or not ch_mult:
        raise ValueError(f"ch_mult must be a non-empty tuple of positive ints, got {ch_mult!r}")
    for m in ch_mult:
        check_int("ch_mult entry", m, minimum=1)


def check_image(x, size, channels, *, size_field: str = "image_size", channels_field: str = "num_channels"):
    """An NHWC input ``x``, ``size x size`` and with ``channels`` channels where those (the fields ``size_field`` and
    ``channels_field``) are not ``None``."""
    if x.ndim != 4:
        raise ValueError(f"x must be shaped (batch, H, W, C), got shape {x.shape}")
    _, height, width, c = x.shape
    if size is not None and (height, width) != (size, size):
        raise ValueError(f"x must be {size}x{size} ({size_field}), got {height}x{width}")
    if channels is not None and c != channels:
        raise ValueError(f"x must have {channels_field}={channels} channels, got {c}")


def label_input(y, num_classes, batch):
    """Class labels; ``None`` means the null label ``num_classes`` (classifier-free guidance's unconditional)."""
    if y is None:
        return jnp.full((batch,), num_classes, jnp.int32)
    return jnp.broadcast_to(jnp.asarray(y, jnp.int32), (batch,))


def noise_label_input(noise_labels, batch):
    return jnp.broadcast_to(jnp.asarray(noise_labels, jnp.float32), (batch,))


def concat_condition(x, cond):
    """``x`` with the image of a cascade's condition (:class:`~diffjax.core.cascade.LowResCondition`) concatenated
    to its channels; the condition must be ``x``'s batch and spatial size. A condition without an image (a flow
    map's :class:`~diffjax.nets.TimeGap`) leaves ``x`` as it is."""
    if cond.image is None:
        return x
    image = jnp.asarray(cond.image)
    if image.ndim != 4 or image.shape[:3] != x.shape[:3]:
        raise ValueError(f"cond.image must be shaped (batch, H, W, C) = {x.shape[:3]} + (C,) like x, "
                         f"got shape {image.shape}")
    return jnp.concatenate([x, image.astype(x.dtype)], axis=-1)
