"""The noise-conditional classifier of classifier guidance.

``config.task = "noisy_classifier"`` trains p(y | x_t, t) (:func:`diffjax.run.train_noisy_classifier`) on the process
of ``training.sde``, seen through the same marginal and the same time input as the score network of that config
(``_network``); ``sampling.classifier_workdir`` / ``classifier_scale`` guide another config's samples with it."""
from __future__ import annotations

import functools
import json
import math
import numbers
import os
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import diffjax.core as core
from diffjax.config_lib._build import build_optimizer, build_sde
from diffjax.config_lib._names import (IMAGE_DATASETS, SDES, _PARAMETERIZATIONS, _TIME_INPUTS, _check_int, _choice,
                                       _nets, input_shape, is_toy, num_classes)
from diffjax.config_lib._network import classifier_time_input, network_marginal

NOISY_CLASSIFIER_PARAMS = "noisy_classifier_params.npz"
NOISY_CLASSIFIER_CONFIG = "noisy_classifier_config.json"
_NOISY_CLASSIFIER_NET_FIELDS = ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout", "embedding_type",
                                "norm_groups")
# the config fields a noisy-classifier workdir records (noisy_classifier_record), enough to rebuild its network,
# its process and its time input when it guides another config's samples
_NOISY_CLASSIFIER_RECORD = {
    "training": ("sde", "continuous", "loss", "t_eps"),
    "model": ("beta_min", "beta_max", "sigma_min", "sigma_max", "edm_sigma_min", "edm_sigma_max", "num_scales",
              "time_input", "parameterization"),
    "data": ("dataset", "image_size", "num_channels", "num_classes"),
}


def noisy_classifier_num_classes(config) -> int:
    """``noisy_classifier.num_classes``, or (0) ``data.num_classes``, or (0) the dataset's number of classes."""
    n = int(config.noisy_classifier.get("num_classes", 0)) or num_classes(config)
    if not n and config.data.dataset in IMAGE_DATASETS:
        n = IMAGE_DATASETS[config.data.dataset][2] or 0
    return int(n or 0)


def build_noisy_classifier(config):
    """The :class:`~diffjax.nets.NoiseConditionalClassifier` of ``config.noisy_classifier``."""
    c = config.noisy_classifier
    kw = {k: (tuple(c[k]) if isinstance(c[k], (list, tuple)) else c[k]) for k in _NOISY_CLASSIFIER_NET_FIELDS if k in c}
    return _nets().NoiseConditionalClassifier(num_classes=noisy_classifier_num_classes(config),
                                              image_size=int(config.data.image_size),
                                              num_channels=int(config.data.num_channels), **kw)


def noisy_classifier_logits_fn(config, model, sde, params, *, train: bool = False, rng=None) -> Callable:
    """``logits_fn(x, t) -> (batch, classes)`` of the classifier with ``params``: the time ``t`` enters as the
    score network's noise label (:func:`~diffjax.nets.noise_labels_for` on the network's marginal with the
    config's time input)."""
    nets = _nets()
    marginal, time_input = network_marginal(config, sde), classifier_time_input(config)
    extra = {"rngs": {"dropout": rng}} if rng is not None else {}

    def logits_fn(x, t):
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],))
        labels = nets.noise_labels_for(t, marginal, time_input=time_input)
        return model.apply({"params": params}, x, labels, train=train, **extra)

    return logits_fn


def validate_noisy_classifier(config) -> None:
    """Check a ``config.task="noisy_classifier"`` config before anything is read or compiled: the dataset (an image
    dataset with labels), the process (``training.sde`` and ``model.*``), the time input, ``training.t_eps``,
    ``optim.*`` and the ``noisy_classifier.*`` fields (the network's own checks). ``ValueError`` naming the field."""
    c, d, t = config.noisy_classifier, config.data, config.training
    _choice("data.dataset", d.dataset, tuple(IMAGE_DATASETS))
    _choice("training.sde", t.sde, SDES)
    _choice("model.time_input", config.model.time_input, _TIME_INPUTS)
    _choice("model.parameterization", config.model.parameterization, _PARAMETERIZATIONS)
    for name in ("steps", "batch_size", "log_every", "num_noise_bins", "eval_batch_size"):
        _check_int(f"noisy_classifier.{name}", c[name], 1)
    for name in ("num_train_examples", "num_test_examples", "num_classes"):
        _check_int(f"noisy_classifier.{name}", c[name], 0, " (0: all / the dataset's)")
    if noisy_classifier_num_classes(config) < 2:
        raise ValueError(f"noisy_classifier.num_classes: data.dataset={d.dataset!r} has no class labels; set "
                         f"noisy_classifier.num_classes (or data.num_classes) to the number of classes (>= 2)")
    try:
        sde = build_sde(config)
        core.uniform_time(jax.random.key(0), 1, sde, t_eps=t.t_eps)
    except ValueError as e:
        raise ValueError(f"training.sde={t.sde!r} / training.t_eps={t.t_eps!r} (model.beta_min, beta_max, sigma_min, "
                         f"sigma_max, num_scales): {e}") from e
    try:
        model = build_noisy_classifier(config)
    except (ValueError, TypeError) as e:
        raise ValueError(f"noisy_classifier.* ({', '.join(_NOISY_CLASSIFIER_NET_FIELDS)}): {e}") from None
    try:  # the network's shape checks (norm_groups vs channels, image size), on abstract values
        x = jax.ShapeDtypeStruct(input_shape(config, 1), jnp.float32)
        jax.eval_shape(lambda x: model.init(jax.random.key(0), x, jnp.zeros((1,)), train=False), x)
    except (ValueError, TypeError) as e:
        raise ValueError(f"noisy_classifier.* ({', '.join(_NOISY_CLASSIFIER_NET_FIELDS)}) do not fit "
                         f"{input_shape(config, 1)[1:]} images: {e}") from None
    build_optimizer(config)


def noisy_classifier_record(config) -> dict:
    """The config fields a noisy-classifier workdir records (``NOISY_CLASSIFIER_CONFIG``): its network, process,
    time input and data shape."""
    rec = {group: {k: config[group][k] for k in keys} for group, keys in _NOISY_CLASSIFIER_RECORD.items()}
    rec["noisy_classifier"] = {k: (list(v) if isinstance(v, tuple) else v)
                               for k, v in config.noisy_classifier.to_dict().items()}
    rec["noisy_classifier"]["num_classes"] = noisy_classifier_num_classes(config)
    return json.loads(json.dumps(rec, default=list))


def _classifier_scale(config) -> float:
    return config.sampling.get("classifier_scale", 0.0)


def _read_classifier_config(workdir: str):
    """The recorded config of a noisy-classifier workdir as a ``ConfigDict``; ``ValueError`` naming
    ``sampling.classifier_workdir`` when it is no such workdir."""
    missing = [f for f in (NOISY_CLASSIFIER_PARAMS, NOISY_CLASSIFIER_CONFIG)
               if not os.path.isfile(os.path.join(workdir, f))]
    if missing:
        raise ValueError(f"sampling.classifier_workdir={workdir!r} is not a trained noisy-classifier workdir: "
                         f"{missing} missing (allowed: the workdir of a --config configs/fashion_mnist_noisy_"
                         f"classifier.py --mode train run, config.task='noisy_classifier')")
    with open(os.path.join(workdir, NOISY_CLASSIFIER_CONFIG)) as f:
        return ml_collections.ConfigDict(json.load(f))


def same_process(config, sde, rec) -> bool:
    """Whether the network of ``config`` (on ``sde``) and that of the recorded config ``rec`` see the same process:
    the same ``T`` and marginals ``(a(t), s(t))`` as their networks convert them (a DDPM grid is not its SDE)."""
    mine, theirs = network_marginal(config, sde), network_marginal(rec, build_sde(rec))
    t = jnp.linspace(0.0, 1.0, 17) * min(float(mine.T), float(theirs.T))
    return (math.isclose(float(mine.T), float(theirs.T), rel_tol=1e-6)
            and np.allclose(np.stack(mine.marginal(t)), np.stack(theirs.marginal(t)), rtol=1e-4, atol=1e-6))


def guidance_fields(config, name: str, allowed: str, guide: str):
    """``(scale, workdir)`` of ``sampling.NAME_scale`` (finite, >= 0; 0: off) and ``sampling.NAME_workdir`` (a
    path, needed when the scale is > 0, on an image dataset: ``guide`` takes images), checked; ``allowed``: what
    the workdir may be."""
    s = config.sampling
    scale, workdir = s.get(f"{name}_scale", 0.0), s.get(f"{name}_workdir", "")
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not (math.isfinite(scale) and scale >= 0):
        raise ValueError(f"sampling.{name}_scale must be a finite number >= 0 (0: no {name} guidance), got {scale!r}")
    if not isinstance(workdir, str):
        raise ValueError(f"sampling.{name}_workdir must be a directory path (str), got {workdir!r}")
    if scale and not workdir:
        raise ValueError(f"sampling.{name}_scale={scale} needs sampling.{name}_workdir (allowed: {allowed}), got ''")
    if scale and is_toy(config):
        raise ValueError(f"sampling.{name}_scale={scale}: {guide} takes images; data.dataset="
                         f"{config.data.dataset!r} is not an image dataset")
    return scale, workdir


def check_guide_fits(config, sde, rec, name: str, what: str) -> None:
    """The guide whose recorded config is ``rec`` (``sampling.NAME_workdir``, a ``what``) sees this config's images
    and process (:func:`same_process`); ``ValueError`` naming the workdir otherwise."""
    workdir = config.sampling[f"{name}_workdir"]
    want, got = input_shape(config, 1)[1:], input_shape(rec, 1)[1:]
    if want != got:
        raise ValueError(f"sampling.{name}_workdir={workdir!r} holds a {what} of {got} images; this config samples "
                         f"{want} images (data.image_size, data.num_channels; a latent model samples latents)")
    if not same_process(config, sde, rec):
        t = rec.training
        raise ValueError(f"sampling.{name}_workdir={workdir!r} holds a {what} trained on another process "
                         f"(training.sde={t.sde!r}, training.continuous={t.continuous}, training.loss={t.loss!r} "
                         f"with its model.* fields) than this config's training.sde={config.training.sde!r}: their "
                         f"marginals (a(t), s(t)) differ; train the {what} with this config's process")


def validate_classifier_guidance(config, sde) -> None:
    """``sampling.classifier_scale`` (finite, >= 0; 0: off) and ``sampling.classifier_workdir`` (a noisy-classifier
    workdir whose images, process and classes fit this config), before anything is compiled."""
    scale, workdir = guidance_fields(config, "classifier", "the workdir of a config.task='noisy_classifier' run",
                                     "the noise-conditional classifier")
    if not scale:
        return
    rec = _read_classifier_config(workdir)
    check_guide_fits(config, sde, rec, "classifier", "classifier")
    n = int(rec.noisy_classifier.num_classes)
    if num_classes(config) and n != num_classes(config):
        raise ValueError(f"sampling.classifier_workdir={workdir!r} holds a {n}-class classifier; this "
                         f"class-conditional model has data.num_classes={num_classes(config)}")


@functools.lru_cache(maxsize=4)
def _load_noisy_classifier_cached(workdir: str, mtime: float):
    del mtime  # part of the cache key: a retrained classifier is read again
    rec = _read_classifier_config(workdir)
    with np.load(os.path.join(workdir, NOISY_CLASSIFIER_PARAMS)) as f:
        flat = {k: np.asarray(f[k]) for k in f.files}
    params: dict = {}
    for path, value in flat.items():
        node = params
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return rec, build_noisy_classifier(rec), params


def load_noisy_classifier(workdir: str):
    """``(config_record, model, params)`` of a noisy-classifier workdir (read once per file version)."""
    _read_classifier_config(workdir)
    mtime = os.path.getmtime(os.path.join(workdir, NOISY_CLASSIFIER_PARAMS))
    return _load_noisy_classifier_cached(os.path.abspath(workdir), mtime)


def sampling_num_classes(config) -> Optional[int]:
    """How many labels the samples cycle through (``y = arange(n) % this``): ``data.num_classes`` of a
    class-conditional model, else the guiding classifier's when ``sampling.classifier_scale > 0``, else None."""
    if num_classes(config):
        return num_classes(config)
    if _classifier_scale(config) > 0:
        return int(_read_classifier_config(config.sampling.classifier_workdir).noisy_classifier.num_classes)
    return None


def classifier_guided(config, score_fn, y):
    """``score_fn`` guided by the classifier of ``sampling.classifier_workdir`` towards labels ``y``
    (:func:`~diffjax.classifier_guidance` at ``sampling.classifier_scale``; a learned variance ``v`` is kept)."""
    if y is None:
        raise ValueError("sampling.classifier_scale > 0 needs the labels y to guide towards; got y=None")
    rec, model, params = load_noisy_classifier(config.sampling.classifier_workdir)
    logits_fn = noisy_classifier_logits_fn(rec, model, build_sde(rec), params)
    return core.with_label(core.classifier_guidance(score_fn, logits_fn, scale=float(_classifier_scale(config))), y)
