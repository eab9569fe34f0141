"""Latent diffusion (Rombach et al. 2022) from ``config.latent``: the diffusion model works on the latents of the
frozen KL autoencoder trained in ``latent.autoencoder_workdir`` (a ``config.task="autoencoder"`` run), scaled by
``latent.scale_factor``; :func:`latent_shape` is the model's input, read from that workdir's ``config.json``, and
:func:`validate_latent` checks the section before anything is compiled. Loading the autoencoder's weights, encoding
and decoding are the entry layer's (``diffjax/run/_latent.py``)."""
from __future__ import annotations

import functools
import json
import math
import numbers
import os

import ml_collections

from diffjax.config_lib._names import _choice, image_shape, is_toy, num_classes

LATENT_ENCODINGS = ("mean", "sample")  # the posterior's mean, or a fresh draw of it for every batch (latent diffusion)
AUTOENCODER_CONFIG = "config.json"


def is_latent(config) -> bool:
    """Whether the model works on an autoencoder's latents (``latent.autoencoder_workdir`` set; a config stored
    before latent diffusion had no ``latent`` section)."""
    return bool(config.get("latent", {}).get("autoencoder_workdir", ""))


def autoencoder_config(config) -> ml_collections.ConfigDict:
    """The config of the autoencoder in ``latent.autoencoder_workdir`` (its ``config.json``); ``ValueError`` naming
    the field when the directory is missing or holds no autoencoder run."""
    workdir = config.latent.autoencoder_workdir
    path = os.path.join(workdir, AUTOENCODER_CONFIG)
    if not os.path.isdir(workdir):
        raise ValueError(f"latent.autoencoder_workdir={workdir!r} does not exist (allowed: the --workdir of a "
                         f"config.task='autoencoder' run, e.g. of configs/fashion_mnist_autoencoder.py; '' for pixel "
                         f"space)")
    if not os.path.isfile(path):
        raise ValueError(f"latent.autoencoder_workdir={workdir!r} holds no {AUTOENCODER_CONFIG}: train the "
                         f"autoencoder there first (--config configs/fashion_mnist_autoencoder.py)")
    return _read_config(os.path.abspath(path), os.path.getmtime(path))


@functools.lru_cache(maxsize=8)
def _read_config(path: str, mtime: float) -> ml_collections.ConfigDict:
    del mtime  # part of the key: a rewritten file is read again
    with open(path) as f:
        stored = json.load(f)
    if stored.get("task") != "autoencoder":
        raise ValueError(f"latent.autoencoder_workdir={os.path.dirname(path)!r} holds a config.task="
                         f"{stored.get('task', 'diffusion')!r} run, not an autoencoder (config.task='autoencoder')")
    return ml_collections.ConfigDict(stored)


def latent_shape(config, batch: int) -> tuple:
    """``(batch, H / f, W / f, latent_channels)`` of the autoencoder in ``latent.autoencoder_workdir`` (down factor
    ``f = 2 ** (len(block_out_channels) - 1)``); ``ValueError`` when its images are not this config's."""
    ae = autoencoder_config(config)
    want, got = image_shape(config, 1)[1:], image_shape(ae, 1)[1:]
    if want != got:
        raise ValueError(f"latent.autoencoder_workdir={config.latent.autoencoder_workdir!r} holds an autoencoder of "
                         f"{'x'.join(map(str, got))} images ({ae.data.dataset}); this config's data are "
                         f"{'x'.join(map(str, want))} (data.image_size, data.num_channels)")
    f = 2 ** (len(ae.autoencoder.block_out_channels) - 1)
    return (batch, want[0] // f, want[1] // f, int(ae.autoencoder.latent_channels))


def validate_latent(config) -> None:
    """``latent.*`` (encoding, scale factor) and, for a latent model, the autoencoder's workdir, its images against
    ``data.*`` and the network of ``model.*`` on its latents; nothing is read for a pixel-space config."""
    lat = config.get("latent")
    if lat is None:
        return
    _choice("latent.encode", lat.encode, LATENT_ENCODINGS)
    scale = lat.scale_factor
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale) or scale < 0:
        raise ValueError(f"latent.scale_factor must be a finite number >= 0 (0: 1 / std of the encoded training "
                         f"latents, estimated once), got {scale!r}")
    if not isinstance(lat.autoencoder_workdir, str):
        raise ValueError(f"latent.autoencoder_workdir must be a directory path (str; '' for pixel space), got "
                         f"{lat.autoencoder_workdir!r}")
    if not is_latent(config):
        o, d = config.model.get("overrides", {}), config.data
        declared = (o.get("image_size", d.image_size), o.get("num_channels", d.num_channels))
        if not is_toy(config) and declared != (d.image_size, d.num_channels):
            raise ValueError(f"model.overrides declares {declared[0]}x{declared[0]}x{declared[1]} inputs, but "
                             f"latent.autoencoder_workdir='' (pixel space) gives the data's {d.image_size}x"
                             f"{d.image_size}x{d.num_channels}: set latent.autoencoder_workdir to the workdir of a "
                             f"trained config.task='autoencoder' run (e.g. configs/fashion_mnist_autoencoder.py)")
        return
    if is_toy(config):
        raise ValueError(f"latent.autoencoder_workdir is set, but data.dataset={config.data.dataset!r} is a toy "
                         f"dataset; latent diffusion needs an image dataset")
    if config.task != "diffusion" or config.get("distill", {}).get("method", ""):
        what = f"config.task={config.task!r}" if config.task != "diffusion" else \
            f"distill.method={config.distill.method!r}"
        raise ValueError(f"latent diffusion (latent.autoencoder_workdir={lat.autoencoder_workdir!r}) trains and "
                         f"samples diffusion models only; {what} is not supported on latents (allowed: "
                         f"latent.autoencoder_workdir='')")
    shape = latent_shape(config, 1)
    from diffjax.config_lib._build import build_model
    from diffjax.config_lib._names import _nets
    try:  # the network's own checks (its declared input size and channels, its levels) on the latents
        _nets().abstract_init(build_model(config), shape, num_classes=num_classes(config))
    except (ValueError, TypeError) as e:
        raise ValueError(f"model.* does not fit the {'x'.join(map(str, shape[1:]))} latents of "
                         f"latent.autoencoder_workdir={lat.autoencoder_workdir!r}: {e}") from None
