"""A cascade's super-resolution stage as a run (Ho et al. 2021): :class:`SuperResolutionRun` samples the whole
cascade, the base model of ``cascade.base_workdir`` first (:class:`BaseModel`), then the super-resolution model
conditioned on its samples; a training run's snapshots condition on downsampled test images instead, and
``cascade.sampling_low_res="train"`` samples on downsampled training images (:class:`DataImages`: the
super-resolution stage alone, no base model).

Part of the entry layer (it reads a ``ConfigDict``).
"""
from __future__ import annotations

import os

import numpy as np

from diffjax.run._run import Run, open_run, sampler_label


def _base_dir(config) -> str:
    c = config.cascade
    if not c.base_workdir:
        raise ValueError(f"cascade.base_workdir is empty: sampling a super-resolution stage (cascade.low_res_size="
                         f"{c.low_res_size}) runs the whole cascade from the base model's --workdir; set "
                         f"--config.cascade.base_workdir=DIR (e.g. a run of configs/fashion_mnist_cascade_base.py)")
    if not os.path.isdir(c.base_workdir):
        raise ValueError(f"cascade.base_workdir={c.base_workdir!r} is not a directory (allowed: the --workdir of "
                         f"a trained base model, e.g. of configs/fashion_mnist_cascade_base.py)")
    return c.base_workdir


def base_config(config):
    """The base model's config, read from ``cascade.base_workdir``'s ``config.json`` and checked against this
    super-resolution stage (a diffusion model of images ``cascade.low_res_size`` wide with as many channels)."""
    import ml_collections

    from diffjax.run._workdir_config import CONFIG_FILE, read_workdir_config
    wd = _base_dir(config)
    stored = read_workdir_config(wd)
    if stored is None:
        raise ValueError(f"cascade.base_workdir={wd!r} holds no {CONFIG_FILE} (the config a training run writes "
                         f"there): train the base model there first")
    base = ml_collections.ConfigDict(stored)
    if base.get("task", "diffusion") != "diffusion":
        raise ValueError(f"cascade.base_workdir={wd!r} holds a config.task={base.task!r} run; the base model must "
                         f"be a diffusion model (task 'diffusion')")
    c, d, bd = config.cascade, config.data, base.data
    if (bd.image_size, bd.num_channels) != (c.low_res_size, d.num_channels):
        raise ValueError(f"cascade.base_workdir={wd!r} holds a model of {bd.image_size}x{bd.image_size}x"
                         f"{bd.num_channels} images, but this super-resolution stage is conditioned on "
                         f"cascade.low_res_size={c.low_res_size} with data.num_channels={d.num_channels} (allowed: "
                         f"a base model with data.image_size={c.low_res_size}, or cascade.low_res_size="
                         f"{bd.image_size})")
    return base


def base_settings(config) -> dict:
    """What of the base model decides the cascade's samples besides this config: its workdir and newest checkpoint
    step (keys the eval sample cache)."""
    if config.cascade.get("sampling_low_res", "base") != "base":
        return {"low_res": config.cascade.sampling_low_res}
    wd = config.cascade.base_workdir
    steps = [int(e) for name in ("checkpoints", "checkpoints-meta") if wd and os.path.isdir(os.path.join(wd, name))
             for e in os.listdir(os.path.join(wd, name)) if e.isdigit()]
    return {"workdir": os.path.abspath(wd) if wd else "", "step": max(steps) if steps else None}


class BaseModel:
    """The low-resolution images of the cascade's base model: samples of the EMA parameters (or its post-hoc EMA)
    of the newest checkpoint in ``cascade.base_workdir``, drawn with the base model's own sampler settings."""

    def __init__(self, config):
        base = base_config(config)
        wd = config.cascade.base_workdir
        self.run = open_run(base, wd)  # read-only; a base that is itself a super-resolution stage runs its cascade
        state, step = self.run.restore(compare_config=False)
        self.run.checkpoints.close()
        if state is None:
            raise ValueError(f"cascade.base_workdir={wd!r} holds no checkpoint (checkpoints/ and checkpoints-meta/ "
                             f"are empty or missing): train the base model there first")
        self.params, self.step = self.run.sampling_params(state, step), step
        d = base.data
        print(f"cascade base model: step {step} in {wd} ({d.image_size}x{d.image_size}x{d.num_channels}, "
              f"{sampler_label(base, self.run.sde)})", flush=True)

    def sample(self, key, n):
        """``(images (n, h, w, C) float in [-1, 1], score evaluations per sample)``."""
        x, nfe = self.run.sample(self.params, key, n, return_nfe=True)
        return np.clip(x, -1.0, 1.0), nfe


class DataImages:
    """Low-resolution images from the data: the first images of ``split``, downsampled
    (:func:`~diffjax.core.cascade.downsample_area`) as in training; the key is not used, so every call conditions on
    the same images (a training run's snapshots: the test split; ``cascade.sampling_low_res="train"``: the
    training split)."""

    def __init__(self, config, split: str):
        self.config, self.split, self._low = config, split, None

    def sample(self, key, n):
        if self._low is None or len(self._low) < n:
            from diffjax.core.cascade import downsample_area
            from diffjax.data import to_unit
            from diffjax.run._common import split_rows
            images, _ = split_rows(self.config, self.split, n)
            factor = self.config.data.image_size // self.config.cascade.low_res_size
            self._low = np.asarray(downsample_area(to_unit(images), factor))
        if len(self._low) < n:
            raise ValueError(f"{n} samples need {n} {self.split} images; the split has {len(self._low)}")
        return self._low[:n], 0


class SuperResolutionRun(Run):
    """The :class:`~diffjax.run.Run` of a cascade's super-resolution stage (``cascade.low_res_size > 0``): its
    network is conditioned on the upsampled low-resolution image (:class:`~diffjax.core.cascade.LowResCondition`,
    corrupted at ``cascade.sampling_aug_level`` when sampling). :meth:`sample` draws the low-resolution images from
    the base model (read-only runs: ``--mode sample`` and ``eval``) or from the test split (training snapshots)."""

    def __init__(self, config, workdir, *, read_only: bool = True):
        from diffjax import config_lib as cl
        super().__init__(config, workdir, read_only=read_only)
        if not read_only:
            self.low_res = DataImages(config, "test")
        elif config.cascade.get("sampling_low_res", "base") == "base":
            self.low_res = BaseModel(config)
        else:
            self.low_res = DataImages(config, config.cascade.sampling_low_res)
        self._condition = cl.sampling_condition(config, self.sde)

    def sampling_condition(self, key, n, condition):
        """The :class:`~diffjax.core.cascade.LowResCondition` of the low-resolution images ``condition``."""
        return self._condition(key, condition)

    def sample(self, params, key, n, *, return_nfe: bool = False, condition=None):
        """As :meth:`Run.sample`, conditioned on ``condition`` (low-resolution images ``(n, h, w, C)`` in
        ``[-1, 1]``; default: :attr:`low_res`'s); ``nfe`` counts the base model's evaluations too."""
        import jax
        k_low, k_sr = jax.random.split(key)
        nfe_low = 0
        if condition is None:
            condition, nfe_low = self.low_res.sample(k_low, n)
        x, nfe = super().sample(params, k_sr, n, return_nfe=True, condition=np.asarray(condition, np.float32))
        if not return_nfe:
            return x
        return x, (None if nfe is None or nfe_low is None else nfe + nfe_low)
