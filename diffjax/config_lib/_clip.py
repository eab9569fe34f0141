"""The contrastive text-image model of ``config.task = "clip"`` (:func:`diffjax.run.train_clip`): its network, its
tokenizer, its checks and the files of its workdir.

With ``clip.noise_aware`` the image tower sees ``x_t`` on the process of ``training.sde`` through the same marginal
and time input as the score network of that config (as the noise-conditional classifier does), for CLIP guidance."""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import diffjax.core as core
from diffjax.config_lib._build import build_optimizer, build_sde
from diffjax.config_lib._names import SDES, _PARAMETERIZATIONS, _TIME_INPUTS, _check_int, _choice, _nets, \
    check_number, input_shape
from diffjax.config_lib._network import classifier_time_input, network_marginal
from diffjax.config_lib._noisy_classifier import _NOISY_CLASSIFIER_RECORD

CLIP_PARAMS = "clip_params.npz"
CLIP_CONFIG = "clip_config.json"
CLIP_DATASETS = ("fashion_mnist", "fashion_mnist_tfds")  # the caption grammar names Fashion-MNIST's classes
_TEXT_FIELDS = {"text_width": "width", "text_depth": "depth", "text_heads": "num_heads", "max_length": "max_length",
                "pool": "pool"}
_IMAGE_FIELDS = ("ch", "ch_mult", "num_res_blocks", "norm_groups")


def clip_tokenizer(config):
    """The caption grammar's word-level tokenizer (:func:`diffjax.data.caption_tokenizer`)."""
    del config  # one grammar for now: Fashion-MNIST's
    from diffjax.data import caption_tokenizer
    return caption_tokenizer()


def build_clip(config):
    """The :class:`~diffjax.nets.CLIP` of ``config.clip``: a :class:`~diffjax.nets.TextEncoder` over the
    tokenizer's vocabulary and a :class:`~diffjax.nets.NoiseConditionalClassifier` image tower."""
    nets, c = _nets(), config.clip
    text = nets.TextEncoder(vocab_size=clip_tokenizer(config).vocab_size,
                            **{arg: c[field] for field, arg in _TEXT_FIELDS.items()})
    image = nets.NoiseConditionalClassifier(
        num_classes=int(c.embed_dim), attn_resolutions=(), dropout=0.0, image_size=int(config.data.image_size),
        num_channels=int(config.data.num_channels),
        **{k: (tuple(c[k]) if isinstance(c[k], (list, tuple)) else c[k]) for k in _IMAGE_FIELDS})
    return nets.CLIP(text_encoder=text, image_encoder=image, embed_dim=int(c.embed_dim),
                     init_temperature=float(c.init_temperature), noise_aware=bool(c.noise_aware))


def clip_noise_labels(config, sde):
    """``labels(t) -> (batch,)``: what the noise-aware image tower is fed for times ``t`` (the score network's
    time input on its marginal, :func:`~diffjax.nets.noise_labels_for`)."""
    marginal, time_input = network_marginal(config, sde), classifier_time_input(config)
    return lambda t: _nets().noise_labels_for(t, marginal, time_input=time_input)


def init_clip(config, model, key):
    """Fresh parameters of ``model`` for ``config``'s image shape and ``clip.max_length`` tokens."""
    n = int(config.clip.max_length)
    args = (jnp.zeros(input_shape(config, 1), jnp.float32), jnp.zeros((1, n), jnp.int32), jnp.ones((1, n), bool),
            jnp.zeros((1,)) if model.noise_aware else None)
    return jax.jit(lambda k: model.init(k, *args))(key)["params"]


def validate_clip(config) -> None:
    """Check a ``config.task="clip"`` config before anything is read or compiled: the dataset (Fashion-MNIST, whose
    classes the captions name), the ``clip.*`` fields (the networks' own checks), ``optim.*`` and, with
    ``clip.noise_aware``, the process (``training.sde``, ``model.*``, ``training.t_eps``). ``ValueError`` naming
    the field."""
    c, d = config.clip, config.data
    _choice("data.dataset", d.dataset, CLIP_DATASETS)
    for name in ("steps", "batch_size", "log_every", "eval_batch_size", "num_noise_bins", "embed_dim"):
        _check_int(f"clip.{name}", c[name], 1)
    for name in ("num_train_examples", "num_test_examples"):
        _check_int(f"clip.{name}", c[name], 0, " (0: the whole split)")
    if c.batch_size < 2:
        raise ValueError(f"clip.batch_size must be >= 2 (a contrastive batch needs negatives), got {c.batch_size}")
    for name in ("noise_aware", "consistent_positives"):
        if not isinstance(c[name], bool):
            raise ValueError(f"clip.{name} must be True or False, got {c[name]!r}")
    check_number("clip.init_temperature", c.init_temperature, 0.0, 10.0, lo_open=True, hi_open=False)
    longest = _longest_caption()
    if _check_int("clip.max_length", c.max_length, 2) < longest + 2:
        raise ValueError(f"clip.max_length must be >= {longest + 2} (the longest caption has {longest} words, plus "
                         f"BOS and EOS), got {c.max_length}")
    if c.noise_aware:
        _choice("training.sde", config.training.sde, SDES)
        _choice("model.time_input", config.model.time_input, _TIME_INPUTS)
        _choice("model.parameterization", config.model.parameterization, _PARAMETERIZATIONS)
        try:
            core.uniform_time(jax.random.key(0), 1, build_sde(config), t_eps=config.training.t_eps)
        except ValueError as e:
            raise ValueError(f"clip.noise_aware: training.sde={config.training.sde!r} / training.t_eps="
                             f"{config.training.t_eps!r} (model.*): {e}") from e
    fields = ", ".join(("embed_dim", "init_temperature", *_TEXT_FIELDS, *_IMAGE_FIELDS))
    try:
        model = build_clip(config)
        jax.eval_shape(lambda k: init_clip(config, model, k), jax.random.key(0))
    except (ValueError, TypeError) as e:
        raise ValueError(f"clip.* ({fields}): {e}") from None
    build_optimizer(config)


def _longest_caption() -> int:
    """The number of words of the longest caption of any split."""
    from diffjax.data import CAPTION_SPLITS, CLASS_NAMES, captions, text_words
    return max(len(text_words(t)) for s in CAPTION_SPLITS for label in range(len(CLASS_NAMES))
               for t in captions(label, 1, 1, split=s))


def clip_record(config) -> dict:
    """The config fields a CLIP workdir records (``CLIP_CONFIG``): its networks, process, time input and data."""
    rec = {group: {k: config[group][k] for k in keys} for group, keys in _NOISY_CLASSIFIER_RECORD.items()}
    rec["clip"] = config.clip.to_dict()
    return json.loads(json.dumps(rec, default=list))


def load_clip(workdir: str):
    """``(config_record, model, params)`` of a ``config.task="clip"`` workdir."""
    from flax import traverse_util
    missing = [f for f in (CLIP_PARAMS, CLIP_CONFIG) if not os.path.isfile(os.path.join(workdir, f))]
    if missing:
        raise ValueError(f"workdir={workdir!r} is not a trained CLIP workdir: {missing} missing (allowed: the workdir "
                         f"of a --config configs/fashion_mnist_clip.py --mode train run)")
    with open(os.path.join(workdir, CLIP_CONFIG)) as f:
        rec = ml_collections.ConfigDict(json.load(f))
    with np.load(os.path.join(workdir, CLIP_PARAMS)) as f:
        params = traverse_util.unflatten_dict({k: np.asarray(f[k]) for k in f.files}, sep="/")
    return rec, build_clip(rec), params
