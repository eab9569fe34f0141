"""Cascaded diffusion (Ho et al. 2021, "Cascaded Diffusion Models for High Fidelity Image Generation"): the resize
operations between the stages and the super-resolution stage's condition with noise conditioning augmentation.

A super-resolution model ``p(x | z)`` generates a high-resolution image ``x`` conditioned on ``z``, the bilinearly
upsampled low-resolution image (concatenated to the network's input channels). Conditioning augmentation
(Sec. 3.2 of the paper): in training ``z`` is corrupted by the forward process at a level ``s ~ U[0, s_max]`` and
the network is told ``s``; at sampling ``z`` (the base model's sample, upsampled) is corrupted at one fixed level.
The forward process is the super-resolution model's own (any :class:`~diffjax.core.contracts.Process`):

.. math:: z_s = a(s)\\, \\mathrm{up}(x_{\\mathrm{low}}) + \\sigma(s)\\, \\epsilon

Images are NHWC; everything here is a pure function (works under ``jit`` and ``vmap``).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from diffjax.core._checks import check_int
from diffjax.core.process import as_time

__all__ = ["LowResCondition", "downsample_area", "upsample_bilinear", "augment", "level_label",
           "low_res_condition", "training_condition"]


class LowResCondition(NamedTuple):
    """What a super-resolution network is conditioned on (a pytree: it passes through ``jit`` and the score
    functions as class labels do).

    Attributes:
      image: ``(batch, H, W, C)``: the upsampled low-resolution image, corrupted at the augmentation level;
        concatenated to the network's input channels.
      noise_label: ``(batch,)`` float: the augmentation level as the network sees it (:func:`level_label`),
        embedded like the time and added to the time embedding.
    """

    image: jax.Array
    noise_label: jax.Array


def _check_nhwc(name, x):
    if jnp.ndim(x) != 4:
        raise ValueError(f"{name} must be images shaped (batch, H, W, C), got shape {jnp.shape(x)}")


def downsample_area(x, factor: int) -> jax.Array:
    """Average over ``factor x factor`` blocks (area resampling): ``(B, H, W, C) -> (B, H/f, W/f, C)``.

    .. math:: y_{ij} = f^{-2} \\sum_{a, b < f} x_{fi + a,\\, fj + b}
    """
    _check_nhwc("x", x)
    check_int("factor", factor, minimum=1)
    b, h, w, c = jnp.shape(x)
    if h % factor or w % factor:
        raise ValueError(f"downsample_area: the image size {h}x{w} must be a multiple of factor={factor}")
    return jnp.mean(jnp.reshape(x, (b, h // factor, factor, w // factor, factor, c)), axis=(2, 4))


def upsample_bilinear(x, size: int) -> jax.Array:
    """Bilinear upsampling to ``size x size`` with half-pixel centres (the input pixel ``i`` sits at ``i + 1/2``),
    edge pixels extended: ``(B, h, w, C) -> (B, size, size, C)``. A linear ramp sampled at the pixel centres stays
    exact away from the half input pixel at each border."""
    _check_nhwc("x", x)
    check_int("size", size, minimum=1)
    b, h, w, c = jnp.shape(x)
    if size < max(h, w):
        raise ValueError(f"upsample_bilinear: size={size} must be >= the input's {h}x{w} (use downsample_area)")
    return jax.image.resize(x, (b, size, size, c), method="bilinear", antialias=False)


def level_label(level, process) -> jax.Array:
    """The network's label of an augmentation level ``s`` in ``[0, T]``: ``999 s / T`` (the scale of the
    ``"continuous"`` time input; finite at ``s = 0``, where ``log sigma`` is not)."""
    return as_time(level) * (999.0 / process.T)


def augment(key, z, process, level) -> jax.Array:
    """``z`` corrupted by ``process`` at ``level`` (``()`` or ``(batch,)``): ``a(s) z + sigma(s) eps``; level 0 of a
    process with ``a(0) = 1, sigma(0) = 0`` returns ``z`` unchanged."""
    return process.perturb(z, as_time(level), jax.random.normal(key, jnp.shape(z), jnp.result_type(z)))


def low_res_condition(key, x_low, process, *, size: int, level) -> LowResCondition:
    """The condition of a super-resolution model from low-resolution images ``x_low`` ``(B, h, w, C)``: upsampled
    bilinearly to ``size``, then corrupted at ``level`` (``()`` or ``(batch,)``, in ``[0, T]``)."""
    z = upsample_bilinear(x_low, size)
    level = jnp.broadcast_to(as_time(level), (z.shape[0],))
    return LowResCondition(augment(key, z, process, level), level_label(level, process))


def training_condition(key, x, process, *, factor: int, max_level: float) -> LowResCondition:
    """The training condition of a super-resolution model from its high-resolution batch ``x`` ``(B, H, W, C)``:
    the same images downsampled by ``factor`` (:func:`downsample_area`), upsampled back and corrupted at a level
    ``s ~ U[0, max_level]`` per example (``max_level = 0``: no augmentation)."""
    k_level, k_noise = jax.random.split(key)
    level = jax.random.uniform(k_level, (jnp.shape(x)[0],), jnp.float32, 0.0, max_level)
    return low_res_condition(k_noise, downsample_area(x, factor), process, size=jnp.shape(x)[1], level=level)
