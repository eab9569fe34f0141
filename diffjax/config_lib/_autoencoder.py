"""The KL autoencoder of ``config.autoencoder`` (``config.task = "autoencoder"``): its network, its objective and the
checks of its config."""
from __future__ import annotations

import math
import numbers
from typing import Callable

import jax
import jax.numpy as jnp

from diffjax.config_lib._build import MULTI_STEPS, build_ema_decay, build_optimizer
from diffjax.config_lib._names import IMAGE_DATASETS, _check_int, _choice, _nets, input_shape

AUTOENCODER_NET_FIELDS = ("block_out_channels", "layers_per_block", "latent_channels", "norm_num_groups",
                          "mid_attention")
RECONSTRUCTION_LOSSES = ("l1", "l2")


def build_autoencoder(config):
    """The :class:`~diffjax.nets.AutoencoderKL` of ``config.autoencoder`` for ``data.num_channels`` channels."""
    a = config.autoencoder
    return _nets().AutoencoderKL(block_out_channels=tuple(int(c) for c in a.block_out_channels),
                                 layers_per_block=int(a.layers_per_block), latent_channels=int(a.latent_channels),
                                 norm_num_groups=int(a.norm_num_groups), mid_attention=bool(a.mid_attention),
                                 in_channels=int(config.data.num_channels), out_channels=int(config.data.num_channels))


def autoencoder_loss_fn(config, model) -> Callable:
    """``loss_fn(params, key, batch) -> (loss, aux)`` of :func:`~diffjax.nets.autoencoder_loss` with
    ``autoencoder.reconstruction_loss`` and ``autoencoder.kl_weight``; the decoder sees a posterior sample
    (``autoencoder.sample_posterior``) or its mean."""
    a = config.autoencoder
    loss_name, kl_weight, sample = str(a.reconstruction_loss), float(a.kl_weight), bool(a.sample_posterior)

    def loss_fn(params, key, batch):
        x = batch["x"]
        reconstruction, posterior = model.apply({"params": params}, x, key if sample else None)
        return _nets().autoencoder_loss(x, reconstruction, posterior, reconstruction_loss=loss_name,
                                        kl_weight=kl_weight)

    return loss_fn


def _check_float(field: str, value, *, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < minimum:
        raise ValueError(f"{field} must be a finite number >= {minimum}, got {value!r}")
    return float(value)


def validate_autoencoder(config) -> None:
    """Check a ``config.task="autoencoder"`` config before anything is read or compiled: an image dataset, the
    ``autoencoder.*`` fields (the network's own checks on the data's shape), the loss, ``training.*`` counts and
    frequencies, ``optim.*`` and the EMA. ``ValueError`` naming the field, its value and the allowed values."""
    a, d, t = config.autoencoder, config.data, config.training
    _choice("data.dataset", d.dataset, tuple(IMAGE_DATASETS))
    channels = a.block_out_channels
    if not isinstance(channels, (tuple, list)) or not channels or any(
            isinstance(c, bool) or not isinstance(c, numbers.Integral) or c < 1 for c in channels):
        raise ValueError(f"autoencoder.block_out_channels must be a non-empty tuple of positive integers, got "
                         f"{channels!r}")
    for name in ("layers_per_block", "latent_channels", "norm_num_groups", "eval_batch_size"):
        _check_int(f"autoencoder.{name}", a[name], 1)
    _check_int("autoencoder.eval_num_examples", a.eval_num_examples, 0, " (0: the whole split)")
    bad = [c for c in channels if c % a.norm_num_groups]
    if bad:
        raise ValueError(f"autoencoder.norm_num_groups={a.norm_num_groups} must divide every entry of "
                         f"autoencoder.block_out_channels={tuple(channels)} (not {bad})")
    factor = 2 ** (len(channels) - 1)
    if d.image_size % factor:
        raise ValueError(f"data.image_size={d.image_size} must be divisible by the autoencoder's down factor {factor} "
                         f"(2 ** (len(autoencoder.block_out_channels) - 1), "
                         f"block_out_channels={tuple(channels)}); allowed numbers of levels: "
                         f"{[n for n in range(1, 6) if d.image_size % 2 ** (n - 1) == 0]}")
    _choice("autoencoder.reconstruction_loss", a.reconstruction_loss, RECONSTRUCTION_LOSSES)
    _check_float("autoencoder.kl_weight", a.kl_weight)
    for name in ("mid_attention", "sample_posterior", "eval_at_end"):
        if not isinstance(a[name], bool):
            raise ValueError(f"autoencoder.{name} must be True or False, got {a[name]!r}")
    for name in ("batch_size", "n_iters", "n_jitted_steps", "log_freq", "checkpoint_keep"):
        _check_int(f"training.{name}", t[name], 1)
    _choice("training.multi_step", t.get("multi_step", "auto"), MULTI_STEPS)
    for name in ("n_iters", "log_freq", "snapshot_freq_for_preemption", "checkpoint_freq"):
        if t[name] % t.n_jitted_steps:
            raise ValueError(f"training.{name}={t[name]} must be a multiple of training.n_jitted_steps="
                             f"{t.n_jitted_steps}")
    count = jax.device_count()
    if t.batch_size % count:
        raise ValueError(f"training.batch_size={t.batch_size} must be divisible by the device count {count}")
    m = config.model
    rate = m.ema_rate
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
        raise ValueError(f"model.ema_rate must be a float in [0, 1), got {rate!r}")
    build_ema_decay(config)
    build_optimizer(config)
    model = build_autoencoder(config)
    try:  # the network's own checks, on abstract values
        jax.eval_shape(lambda x: model.init(jax.random.key(0), x), jax.ShapeDtypeStruct(input_shape(config, 1),
                                                                                         jnp.float32))
    except (ValueError, TypeError) as e:
        raise ValueError(f"autoencoder.* ({', '.join(AUTOENCODER_NET_FIELDS)}): {e}") from None
