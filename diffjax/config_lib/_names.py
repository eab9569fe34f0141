"""The name tables every part of config_lib reads (processes, networks, datasets), the small readers of the config,
and the field checks: a config string is one of a table's names, a count is an integer, a number lies in a range.
Each check raises ``ValueError`` naming the field, its value and the allowed values."""
from __future__ import annotations

import difflib
import math
import numbers
from typing import Optional

import diffjax.core as core

SDES = {
    "vpsde": lambda m: core.vp_sde(m.beta_min, m.beta_max, N=m.num_scales),
    "subvpsde": lambda m: core.subvp_sde(m.beta_min, m.beta_max, N=m.num_scales),
    "vesde": lambda m: core.ve_sde(m.sigma_min, m.sigma_max, N=m.num_scales),
    "cosine": lambda m: core.cosine_vp_sde(N=m.num_scales),
    "rectified_flow": lambda m: core.rectified_flow(N=m.num_scales),           # a = 1 - t, s = t
    "trigflow": lambda m: core.trigflow(m.sigma_data, sigma_max=m.get("edm_sigma_max", 80.0),  # cos t, sd sin t
                                        N=m.num_scales),
    "edm": lambda m: core.edm_sde(m.get("edm_sigma_min", 0.002), m.get("edm_sigma_max", 80.0),  # a = 1, s = sigma
                                  N=m.num_scales),
}


def _nets():
    import diffjax.nets as nets  # flax: imported on first use
    return nets


_MODEL_NAMES = ("toy_mlp", "small32", "fashion_mnist_small", "ddpm_cifar10", "ncsnpp_cifar10", "ncsnpp_deep_cifar10",
                "ddpmpp_cifar10", "ddpmpp_deep_cifar10", "dit_fashion_mnist", "dit_cifar10_small", "dit_s2", "dit_b2",
                "dit_l2", "dit_xl2")
MODELS = {name: (lambda n: lambda **kw: getattr(_nets(), n)(**kw))(name) for name in _MODEL_NAMES}

TOY_DATASETS = ("ring8", "swiss_roll", "checkerboard", "two_moons")
# name -> (source, TFDS name, number of classes); "fashion_mnist" reads the IDX files (no TFDS needed).
IMAGE_DATASETS = {
    "fashion_mnist": ("idx", None, 10),
    "mnist": ("tfds", "mnist", 10),
    "fashion_mnist_tfds": ("tfds", "fashion_mnist", 10),
    "cifar10": ("tfds", "cifar10", 10),
    "celeb_a": ("tfds", "celeb_a", None),
    "svhn": ("tfds", "svhn_cropped", 10),
}
_PARAMETERIZATIONS = ("eps", "x0", "v", "score", "edm", "velocity")
_TIME_INPUTS = ("", "continuous", "index", "t", "sigma", "log_sigma", "edm")

# score_sde's names (yang-song/score_sde, configs/) for values that diffjax names differently
SCORE_SDE_VALUES = {
    ("model.name", "ncsnpp"): "ncsnpp_cifar10",
    ("model.name", "ddpm"): "ddpm_cifar10",
    ("sampling.method", "ode"): "ode_adaptive",
    ("data.dataset", "CIFAR10"): "cifar10",
    ("data.dataset", "CELEBA"): "celeb_a",
    ("data.dataset", "SVHN"): "svhn",
}


def _choice(field, value, allowed):
    if value not in allowed:
        raise ValueError(f"{field}={value!r} is not known; allowed values: {sorted(allowed)}"
                         f"{_did_you_mean(field, value, allowed)}")


def _did_you_mean(field: str, value, allowed) -> str:
    """``"; did you mean X?"`` for score_sde's name of a value or a close spelling of an allowed one, else ``""``."""
    if not isinstance(value, str):
        return ""
    if (field, value) in SCORE_SDE_VALUES:
        return f"; did you mean {field}={SCORE_SDE_VALUES[field, value]!r} (score_sde's {value!r})?"
    close = difflib.get_close_matches(value, [a for a in allowed if isinstance(a, str)], n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _check_int(field: str, value, minimum: int, note: str = "") -> int:
    """``value`` as an int ``>= minimum`` (bools rejected); ``note`` explains special values, e.g. ``" (0: all)"``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{field} must be an integer >= {minimum}{note}, got {value!r}")
    return int(value)


def check_number(field: str, value, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = True) -> float:
    """``value`` as a finite float in the interval from ``lo`` to ``hi`` (open or closed at each end)."""
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value) and \
        (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        raise ValueError(f"{field} must be a number in {'(' if lo_open else '['}{lo}, {hi}"
                         f"{')' if hi_open else ']'}, got {value!r}")
    return float(value)


def is_toy(config) -> bool:
    return config.data.dataset in TOY_DATASETS


def num_classes(config) -> Optional[int]:
    return int(config.data.num_classes) or None


def is_super_resolution(config) -> bool:
    """A cascade's super-resolution stage (``cascade.low_res_size > 0``; a config stored before cascades had none)."""
    return bool(config.get("cascade", {}).get("low_res_size", 0))


def is_conditional(config) -> bool:
    """The network takes a condition in the place of class labels: class labels, caption token ids (a
    text-conditional model) or a super-resolution stage's low-resolution image."""
    from diffjax.config_lib._text import text_conditional  # (it imports this module)
    return bool(num_classes(config)) or text_conditional(config) or is_super_resolution(config)


def input_shape(config, batch: int):
    """The model's input ``(batch, ...)``: the data's (:func:`image_shape`), or a latent model's latents."""
    from diffjax.config_lib._latent import is_latent, latent_shape  # (it imports this module)
    if is_latent(config):  # latent diffusion
        return latent_shape(config, batch)
    return image_shape(config, batch)


def image_shape(config, batch: int):
    """The data's shape ``(batch, H, W, C)`` (``(batch, 2)`` for toy data)."""
    if is_toy(config):
        return (batch, 2)
    return (batch, config.data.image_size, config.data.image_size, config.data.num_channels)
