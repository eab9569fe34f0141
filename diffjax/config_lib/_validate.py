""":func:`validate`: the whole diffusion config, checked before anything is compiled.

Every entry (``python -m diffjax.main``, :class:`diffjax.run.Run`, the modes called from Python) validates the config
it is given; a config object already validated and unchanged since is not checked again, so a mode that enters
through several of them validates once."""
from __future__ import annotations

import math
import numbers
import weakref
from typing import Optional

import jax

from diffjax.config_lib._build import (validate_ema, build_model, build_optimizer, build_sde, excluded_classes,
                                      MULTI_STEPS, RESIZES)
from diffjax.config_lib._cascade import validate_cascade
from diffjax.config_lib._loss import TIME_SAMPLINGS, WEIGHTINGS, LOSSES, validate_loss, validate_objective
from diffjax.config_lib._names import (IMAGE_DATASETS, MODELS, SDES, TOY_DATASETS, _PARAMETERIZATIONS, _TIME_INPUTS,
                                       _check_int, _choice, is_toy, num_classes)
from diffjax.config_lib._noisy_classifier import validate_classifier_guidance
from diffjax.config_lib._clip_guidance import validate_clip_guidance
from diffjax.config_lib._sampler import SAMPLERS, check_sampler
from diffjax.config_lib._latent import validate_latent
from diffjax.config_lib._text import text_conditional, validate_text

_PRIMITIVES = (str, int, float, bool, type(None))
_VALID: list = []  # (weak reference to a config, its fingerprint) of the last configs validated, newest last
_VALID_SIZE = 4


def _leaf(value):
    """A config value as it keys the memo: primitives by value, functions and other objects by identity."""
    if isinstance(value, _PRIMITIVES):
        return value
    if isinstance(value, (tuple, list)):
        return tuple(_leaf(v) for v in value)
    return type(value).__name__, id(value)


def _fingerprint(config, device_count: int) -> tuple:
    def walk(node, prefix=""):
        for k, v in sorted(node.items()):
            yield from walk(v, f"{prefix}{k}.") if isinstance(v, dict) else [(prefix + k, _leaf(v))]
    return device_count, tuple(walk(config.to_dict()))


def validate(config, *, device_count: Optional[int] = None) -> None:
    """Check the whole config before anything is compiled: every name, the batch / frequency arithmetic, the SDE's
    parameters and the sampler settings (``sampling.*``, checked by the sampler's own argument checks on an abstract
    input, see :func:`~diffjax.config_lib.build_sampler`). ``ValueError`` naming the field and listing the allowed
    values. Returns at once for a config object validated lately that has not changed since."""
    count = jax.device_count() if device_count is None else device_count
    fingerprint = _fingerprint(config, count)
    if any(ref() is config and seen == fingerprint for ref, seen in _VALID):
        return
    _validate(config, count)
    _VALID[:] = [(ref, seen) for ref, seen in _VALID if ref() is not None and ref() is not config][1 - _VALID_SIZE:]
    _VALID.append((weakref.ref(config), fingerprint))


def _validate(config, count: int) -> None:
    t, m, s, d = config.training, config.model, config.sampling, config.data
    _choice("training.sde", t.sde, SDES)
    _choice("training.loss", t.loss, LOSSES)
    _choice("training.weighting", t.weighting, WEIGHTINGS)
    _choice("training.time_sampling", t.time_sampling, TIME_SAMPLINGS)
    _choice("model.name", m.name, MODELS)
    validate_text(config)
    try:  # the network's own field checks; overrides written for another network (UNet fields on a DiT) fail here
        build_model(config)
    except TypeError as e:
        raise ValueError(f"model.overrides do not fit model.name={m.name!r}: {e}") from None
    _choice("model.parameterization", m.parameterization, _PARAMETERIZATIONS)
    _choice("model.time_input", m.time_input, _TIME_INPUTS)
    validate_ema(config)
    build_optimizer(config)
    _choice("sampling.method", s.method, SAMPLERS)
    _choice("data.dataset", d.dataset, TOY_DATASETS + tuple(IMAGE_DATASETS))
    _choice("data.resize", d.get("resize", "bicubic"), RESIZES)
    excluded_classes(config)
    validate_loss(config)
    for name in ("batch_size", "n_iters", "n_jitted_steps", "log_freq"):
        if int(t[name]) < 1:
            raise ValueError(f"training.{name} must be >= 1, got {t[name]!r}")
    _choice("training.multi_step", t.get("multi_step", "auto"), MULTI_STEPS)
    n = t.n_jitted_steps
    for name in ("n_iters", "log_freq", "snapshot_freq", "snapshot_freq_for_preemption", "checkpoint_freq"):
        if t[name] % n:
            raise ValueError(f"training.{name}={t[name]} must be a multiple of training.n_jitted_steps={n}")
    if t.batch_size % count:
        raise ValueError(f"training.batch_size={t.batch_size} must be divisible by the device count {count}; "
                         f"allowed values: multiples of {count} such as {[count * k for k in (1, 2, 4, 8)]}")
    if count % config.distributed.fsdp:
        raise ValueError(f"distributed.fsdp={config.distributed.fsdp} must divide the device count {count}")
    _validate_sampling(config)
    validate_latent(config)  # latent diffusion: the autoencoder's workdir and latents, before any input shape is read
    try:
        sde = build_sde(config)
    except ValueError as e:
        raise ValueError(f"training.sde={t.sde!r} cannot be built from the model.* fields (model.beta_min, "
                         f"beta_max, sigma_min, sigma_max, num_scales): {e}") from e
    validate_objective(config, sde)
    check_sampler(config, sde)
    validate_clip_guidance(config, sde)  # first: it refuses classifier guidance beside it
    validate_classifier_guidance(config, sde)
    validate_cascade(config, sde)


def _validate_sampling(config) -> None:
    """Label dropout and classifier-free guidance, the x0 range control, and the sample counts."""
    t, s, d = config.training, config.sampling, config.data
    if not 0.0 <= t.label_dropout < 1.0:
        raise ValueError(f"training.label_dropout must be in [0, 1), got {t.label_dropout}")
    if t.label_dropout > 0 and not num_classes(config):
        raise ValueError("training.label_dropout > 0 needs data.num_classes > 0 (a class-conditional model)")
    if isinstance(s.guidance_scale, bool) or not isinstance(s.guidance_scale, numbers.Real) \
            or not (math.isfinite(s.guidance_scale) and s.guidance_scale >= 0):
        raise ValueError(f"sampling.guidance_scale must be a finite number >= 0 (0: no guidance), "
                         f"got {s.guidance_scale!r}")
    text_cfg = text_conditional(config) and config.text.caption_dropout > 0
    if s.guidance_scale > 0 and not ((num_classes(config) and t.label_dropout > 0) or text_cfg):
        raise ValueError(f"sampling.guidance_scale={s.guidance_scale} (classifier-free guidance) needs a "
                         "class-conditional model trained with training.label_dropout > 0 or a text-conditional "
                         "one trained with text.caption_dropout > 0")
    if not (s.dynamic_threshold == 0 or 0 < s.dynamic_threshold <= 1):
        raise ValueError(f"sampling.dynamic_threshold must be 0 (off) or a percentile in (0, 1], "
                         f"got {s.dynamic_threshold!r}")
    if s.clip_denoised and s.dynamic_threshold:
        raise ValueError("sampling.clip_denoised and sampling.dynamic_threshold are alternatives; set one")
    if (s.clip_denoised or s.dynamic_threshold) and is_toy(config):
        raise ValueError(f"sampling.clip_denoised / sampling.dynamic_threshold keep x0 in the image range [-1, 1]; "
                         f"data.dataset={d.dataset!r} is not an image dataset")
    for name, minimum in (("batch_size", 1), ("num_samples", 0), ("snapshot_num", 1), ("final_num_samples", 0)):
        _check_int(f"sampling.{name}", s[name], minimum)
