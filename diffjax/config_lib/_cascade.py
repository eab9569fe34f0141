"""``cascade.*``: a cascade's super-resolution stage (Ho et al. 2021; :mod:`diffjax.core.cascade`): its condition in
training (from the batch) and at sampling (from low-resolution images), the example its network is initialised
with, and the checks of the fields."""
from __future__ import annotations

import math
import numbers

from diffjax.config_lib._names import _check_int, input_shape, is_super_resolution, is_toy, num_classes
from diffjax.core import cascade as _cascade


def _level(field, value, hi, note=""):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or not 0.0 <= value <= hi:
        raise ValueError(f"cascade.{field} must be a number in [0, {hi:g}]{note}, got {value!r}")


# cascade.sampling_low_res: what a super-resolution stage's samples are conditioned on (diffjax/run/_cascade.py)
SAMPLING_LOW_RES = ("base", "train")


def validate_cascade(config, sde) -> None:
    """The ``cascade`` fields on the built process ``sde``."""
    c, d = config.get("cascade"), config.data
    if c is None:  # a config stored before cascades
        return
    size = _check_int("cascade.low_res_size", c.low_res_size, 0, " (0: not a super-resolution stage)")
    if not isinstance(c.base_workdir, str):
        raise ValueError(f"cascade.base_workdir must be a path (a string), got {c.base_workdir!r}")
    low_res = c.get("sampling_low_res", "base")
    if low_res not in SAMPLING_LOW_RES:
        raise ValueError(f"cascade.sampling_low_res must be one of {SAMPLING_LOW_RES}, got {low_res!r}")
    if not size:
        for field in ("aug_level_max", "sampling_aug_level"):
            if c[field]:
                raise ValueError(f"cascade.{field}={c[field]!r} applies to a super-resolution stage; set "
                                 f"cascade.low_res_size > 0 (e.g. 14) or cascade.{field}=0")
        return
    if is_toy(config):
        raise ValueError(f"cascade.low_res_size={size} needs image data; data.dataset={d.dataset!r} is a 2-D toy")
    if size >= d.image_size or d.image_size % size:
        raise ValueError(f"cascade.low_res_size={size} must divide data.image_size={d.image_size} and be smaller "
                         f"(allowed values: {[k for k in range(1, d.image_size) if d.image_size % k == 0]})")
    if num_classes(config):
        raise ValueError(f"cascade.low_res_size={size} (a super-resolution stage) cannot be class-conditional too; "
                         f"set data.num_classes=0 (got {d.num_classes})")
    if config.get("distill") is not None and config.distill.method:
        raise ValueError(f"cascade.low_res_size={size} (a super-resolution stage) cannot be distilled "
                         f"(distill.method={config.distill.method!r}); allowed: distill.method=''")
    _level("aug_level_max", c.aug_level_max, float(sde.T), f" (times of training.sde={config.training.sde!r}; "
                                                         f"0: no augmentation)")
    _level("sampling_aug_level", c.sampling_aug_level, float(c.aug_level_max),
           " (at most cascade.aug_level_max, the levels the network was trained on)")


def batch_condition(config, sde):
    """``condition(key, batch) -> y``: what the network is conditioned on in training: a super-resolution stage's
    :func:`~diffjax.core.cascade.training_condition` of ``batch["x"]``, a class-conditional model's labels
    ``batch["y"]`` (a text-conditional model's caption token ids), else ``None``."""
    if is_super_resolution(config):
        c = config.cascade
        factor, max_level = config.data.image_size // c.low_res_size, float(c.aug_level_max)
        return lambda key, batch: _cascade.training_condition(key, batch["x"], sde, factor=factor,
                                                              max_level=max_level)
    from diffjax.config_lib._text import text_conditional
    if num_classes(config) or text_conditional(config):  # class labels or caption token ids
        return lambda key, batch: batch.get("y")
    return lambda key, batch: None


def sampling_condition(config, sde):
    """``condition(key, x_low)``: a super-resolution stage's condition from low-resolution images ``x_low``
    ``(batch, low_res_size, low_res_size, C)`` in ``[-1, 1]``: upsampled, corrupted at ``cascade.sampling_aug_level``."""
    size, level = config.data.image_size, float(config.cascade.sampling_aug_level)
    return lambda key, x_low: _cascade.low_res_condition(key, x_low, sde, size=size, level=level)


def example_condition(config, batch: int):
    """An example of the network's condition for ``batch`` inputs (to initialise it), or ``None`` where it has
    none or takes class labels (a super-resolution stage: zeros)."""
    if not is_super_resolution(config):
        return None
    import jax.numpy as jnp
    return _cascade.LowResCondition(jnp.zeros(input_shape(config, batch), jnp.float32), jnp.zeros((batch,)))
