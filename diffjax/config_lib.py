"""The one name -> constructor table, and the only place (with ``main.py``) that reads a ``ConfigDict``.

Every string in a config is resolved here with an explicit dict, after :func:`validate` has checked the whole
config (unknown names raise ``ValueError`` listing the allowed values, before anything is compiled).
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Optional

import jax
import numpy as np

import diffjax.core as core
from diffjax import samplers as _samplers
from diffjax.discrete import ddpm as _ddpm
from diffjax.discrete import ncsn as _ncsn

__all__ = ["SDES", "MODELS", "LOSSES", "WEIGHTINGS", "SAMPLERS", "TOY_DATASETS", "IMAGE_DATASETS", "validate",
           "build_sde", "build_model", "build_optimizer", "build_loss_fn", "build_score_fn", "build_sampling_score_fn",
           "build_sampler",
           "build_dataset", "input_shape", "is_toy", "num_classes"]

SDES = {
    "vpsde": lambda m: core.vp_sde(m.beta_min, m.beta_max, N=m.num_scales),
    "subvpsde": lambda m: core.subvp_sde(m.beta_min, m.beta_max, N=m.num_scales),
    "vesde": lambda m: core.ve_sde(m.sigma_min, m.sigma_max, N=m.num_scales),
    "cosine": lambda m: core.cosine_vp_sde(N=m.num_scales),
}


def _nets():
    import diffjax.nets as nets  # flax: imported on first use
    return nets


_MODEL_NAMES = ("toy_mlp", "small32", "fashion_mnist_small", "ddpm_cifar10", "ncsnpp_cifar10", "ncsnpp_deep_cifar10",
                "ddpmpp_cifar10", "ddpmpp_deep_cifar10")
MODELS = {name: (lambda n: lambda **kw: getattr(_nets(), n)(**kw))(name) for name in _MODEL_NAMES}

LOSSES = ("dsm", "ddpm", "ncsn", "hybrid")
WEIGHTINGS = {"simple": core.sigma2_weighting, "likelihood": core.likelihood_weighting}

SAMPLERS = {
    "euler_maruyama": _samplers.euler_maruyama,
    "reverse_diffusion": _samplers.reverse_diffusion,
    "ancestral": _samplers.ancestral,
    "pc": _samplers.pc,
    "annealed_langevin": _samplers.annealed_langevin,
    "ode_euler": _samplers.ode_euler,
    "ode_heun": _samplers.ode_heun,
    "ode_adaptive": _samplers.ode_adaptive,
    "ddim": _samplers.ddim,
}

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
_PARAMETERIZATIONS = ("eps", "x0", "v", "score", "edm")
_TIME_INPUTS = ("", "continuous", "index", "t", "sigma", "log_sigma", "edm")


def _choice(field, value, allowed):
    if value not in allowed:
        raise ValueError(f"{field}={value!r} is not known; allowed values: {sorted(allowed)}")


def is_toy(config) -> bool:
    return config.data.dataset in TOY_DATASETS


def num_classes(config) -> Optional[int]:
    return int(config.data.num_classes) or None


def validate(config, *, device_count: Optional[int] = None) -> None:
    """Check every name and the batch / frequency arithmetic; ``ValueError`` listing the allowed values."""
    t, m, s, d = config.training, config.model, config.sampling, config.data
    _choice("training.sde", t.sde, SDES)
    _choice("training.loss", t.loss, LOSSES)
    _choice("training.weighting", t.weighting, WEIGHTINGS)
    _choice("model.name", m.name, MODELS)
    _choice("model.parameterization", m.parameterization, _PARAMETERIZATIONS)
    _choice("model.time_input", m.time_input, _TIME_INPUTS)
    _choice("sampling.method", s.method, SAMPLERS)
    _choice("data.dataset", d.dataset, TOY_DATASETS + tuple(IMAGE_DATASETS))
    if t.loss in ("ddpm", "hybrid") and t.sde not in ("vpsde", "cosine"):
        raise ValueError(f"training.loss={t.loss!r} needs a VP SDE (training.sde 'vpsde' or 'cosine'), got {t.sde!r}")
    if t.loss == "ncsn" and t.sde != "vesde":
        raise ValueError(f"training.loss='ncsn' needs training.sde='vesde', got {t.sde!r}")
    if t.loss == "hybrid" and not m.overrides.get("learn_sigma", False):
        raise ValueError("training.loss='hybrid' needs a learned-variance head: set model.overrides.learn_sigma=True")
    for name in ("batch_size", "n_iters", "n_jitted_steps", "log_freq"):
        if int(t[name]) < 1:
            raise ValueError(f"training.{name} must be >= 1, got {t[name]!r}")
    n = t.n_jitted_steps
    for name in ("n_iters", "log_freq", "snapshot_freq", "snapshot_freq_for_preemption", "checkpoint_freq"):
        if t[name] % n:
            raise ValueError(f"training.{name}={t[name]} must be a multiple of training.n_jitted_steps={n}")
    count = jax.device_count() if device_count is None else device_count
    if t.batch_size % count:
        raise ValueError(f"training.batch_size={t.batch_size} must be divisible by the device count {count}; "
                         f"allowed values: multiples of {count} such as {[count * k for k in (1, 2, 4, 8)]}")
    if count % config.distributed.fsdp:
        raise ValueError(f"distributed.fsdp={config.distributed.fsdp} must divide the device count {count}")
    if not 0.0 <= t.label_dropout < 1.0:
        raise ValueError(f"training.label_dropout must be in [0, 1), got {t.label_dropout}")
    if t.label_dropout > 0 and not num_classes(config):
        raise ValueError("training.label_dropout > 0 needs data.num_classes > 0 (a class-conditional model)")
    if not s.guidance_scale >= 0:
        raise ValueError(f"sampling.guidance_scale must be >= 0, got {s.guidance_scale!r}")
    if s.guidance_scale > 0 and not (num_classes(config) and t.label_dropout > 0):
        raise ValueError(f"sampling.guidance_scale={s.guidance_scale} (classifier-free guidance) needs a "
                         "class-conditional model trained with training.label_dropout > 0")
    if not (s.dynamic_threshold == 0 or 0 < s.dynamic_threshold <= 1):
        raise ValueError(f"sampling.dynamic_threshold must be 0 (off) or a percentile in (0, 1], "
                         f"got {s.dynamic_threshold!r}")
    if s.clip_denoised and s.dynamic_threshold:
        raise ValueError("sampling.clip_denoised and sampling.dynamic_threshold are alternatives; set one")
    if (s.clip_denoised or s.dynamic_threshold) and is_toy(config):
        raise ValueError(f"sampling.clip_denoised / sampling.dynamic_threshold keep x0 in the image range [-1, 1]; "
                         f"data.dataset={d.dataset!r} is not an image dataset")


def build_sde(config):
    _choice("training.sde", config.training.sde, SDES)
    return SDES[config.training.sde](config.model)


def build_model(config):
    overrides = dict(config.model.overrides)
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    if num_classes(config):
        overrides.setdefault("num_classes", num_classes(config))
    return MODELS[config.model.name](**overrides)


def build_optimizer(config):
    from diffjax.train import make_optimizer
    o = config.optim
    return make_optimizer(lr=o.lr, beta1=o.beta1, beta2=o.beta2, eps=o.eps, weight_decay=o.weight_decay,
                          warmup=o.warmup, grad_clip=o.grad_clip, optimizer=o.optimizer)


def input_shape(config, batch: int):
    if is_toy(config):
        return (batch, 2)
    return (batch, config.data.image_size, config.data.image_size, config.data.num_channels)


def _score_kwargs(config):
    m = config.model
    kw = dict(parameterization=m.parameterization, scale_by_sigma=m.scale_by_sigma,
              learned_sigma=bool(m.overrides.get("learn_sigma", False)))
    if m.time_input:
        kw["time_input"] = m.time_input
    return kw


def _network_marginal(config, sde):
    """What converts the network's output to a score: a discrete-time VP model (``training.continuous=False``, or
    the DDPM / hybrid loss) was trained on the DDPM grid, whose ``alpha_bar_i`` differ from the continuous VP
    marginal (at ``i = 0`` the grid's std is ``sqrt(beta_1)``, the SDE's is 0), so its score uses the grid, as
    score-SDE's discrete DDPM models do."""
    discrete = not config.training.continuous or config.training.loss in ("ddpm", "hybrid")
    if discrete and isinstance(sde, core.VPSDE):
        return _ddpm.ddpm_grid(sde)
    return sde


def _conditional_score_fn(config, model, sde, params, *, train: bool = False, rng=None):
    """``score_fn(x, t, y)`` of a class-conditional network (``y=None``: the null label)."""
    return _nets().make_conditional_score_fn(model.apply, params, _network_marginal(config, sde), train=train,
                                             rng=rng, **_score_kwargs(config))


def build_score_fn(config, model, sde, params, *, y=None, train: bool = False, rng=None):
    """``score_fn(x, t)`` of the network with ``params`` (``y``: class labels of a conditional model)."""
    if num_classes(config):
        f = _conditional_score_fn(config, model, sde, params, train=train, rng=rng)
        return lambda x, t: f(x, t, y)
    return _nets().make_score_fn(model.apply, params, _network_marginal(config, sde), train=train, rng=rng,
                                 **_score_kwargs(config))


def build_sampling_score_fn(config, model, sde, params, *, y=None):
    """The score the samplers use: :func:`build_score_fn`, with classifier-free guidance of scale
    ``sampling.guidance_scale`` (null label ``num_classes``) and the x0 range control of ``sampling.clip_denoised``
    / ``sampling.dynamic_threshold``. Not for likelihoods, which need the model's own score."""
    s = config.sampling
    if num_classes(config) and s.guidance_scale > 0:
        guided = core.classifier_free_guidance(_conditional_score_fn(config, model, sde, params),
                                               guidance_scale=s.guidance_scale, null_label=num_classes(config))
        score_fn = core.with_label(guided, y)
    else:
        score_fn = build_score_fn(config, model, sde, params, y=y)
    if s.clip_denoised:
        score_fn = core.clip_denoised(score_fn, _network_marginal(config, sde))
    elif s.dynamic_threshold:
        score_fn = core.dynamic_threshold(score_fn, _network_marginal(config, sde),
                                          percentile=float(s.dynamic_threshold))
    return score_fn


def build_loss_fn(config, model, sde) -> Callable:
    """``loss_fn(params, key, batch) -> (loss, aux)`` for ``training.loss``:

    * ``"dsm"``: continuous DSM (:func:`diffjax.core.dsm_loss`), weighting ``"simple"`` (sigma^2) or
      ``"likelihood"`` (g^2), optional importance sampling of t.
    * ``"ddpm"``: DDPM's L_simple on the VP SDE's DDPM grid. ``"ncsn"``: NCSN's loss on ``model.num_scales``
      geometric sigmas of the VE SDE. ``"hybrid"``: improved DDPM's L_simple + lambda L_vlb (learned variance).
    """
    t = config.training
    reduce = "mean" if t.reduce_mean else "sum"
    kind = t.loss
    grid = None
    if kind in ("ddpm", "hybrid"):
        grid = _ddpm.ddpm_grid(sde)
    elif kind == "ncsn":
        grid = _ncsn.ncsn_grid(sde, config.model.num_scales)
    weighting = WEIGHTINGS[t.weighting]

    def loss_fn(params, key, batch):
        k_loss, k_drop = jax.random.split(key)
        x = batch["x"]
        y = batch.get("y") if num_classes(config) else None
        if kind == "hybrid":
            nets = _nets()
            ti = config.model.time_input or "index"

            def model_fn(x_t, tt):
                labels = nets.noise_labels_for(tt, sde, time_input=ti)
                args = (x_t, labels) if y is None else (x_t, labels, y)
                out = model.apply({"params": params}, *args, train=True, rngs={"dropout": k_drop})
                return nets.split_learned_sigma(out)

            return _ddpm.ddpm_hybrid_loss(k_loss, x, model_fn, grid, vlb_weight=t.vlb_weight), {}
        score_fn = build_score_fn(config, model, sde, params, y=y, train=True, rng=k_drop)
        if kind == "dsm":
            loss = core.dsm_loss(k_loss, x, score_fn, sde, weighting=weighting, t_eps=t.t_eps,
                                 importance_sampling=t.importance_sampling, reduce=reduce)
        elif kind == "ddpm":
            loss = _ddpm.ddpm_simple_loss(k_loss, x, score_fn, grid, reduce=reduce)
        else:
            loss = _ncsn.ncsn_loss(k_loss, x, score_fn, grid, reduce=reduce)
        return loss, {}

    return loss_fn


def build_sampler(config) -> Callable:
    """``sample(key, x_T, score_fn, sde) -> x_0`` with ``sampling.method``, ``sampling.num_steps`` (0: the sampler's
    default), ``sampling.t_eps`` (0: default) and ``sampling.options`` (extra keyword options)."""
    s = config.sampling
    _choice("sampling.method", s.method, SAMPLERS)
    fn = SAMPLERS[s.method]
    params = inspect.signature(fn).parameters
    kw = dict(s.options)
    if s.num_steps and "num_steps" in params:
        kw["num_steps"] = int(s.num_steps)
    if s.t_eps:
        kw["t_eps"] = float(s.t_eps)
    unknown = set(kw) - set(params)
    if unknown:
        raise ValueError(f"sampling.options {sorted(unknown)} are not options of sampler {s.method!r}; allowed: "
                         f"{sorted(p for p in params if p not in ('key', 'x_T', 'score_fn', 'sde'))}")
    return functools.partial(fn, **kw)


def build_dataset(config, *, split: str = "train", global_batch: Optional[int] = None,
                  process_index: Optional[int] = None, process_count: Optional[int] = None, seed: Optional[int] = None):
    """The input pipeline of ``data.dataset`` (a :class:`~diffjax.data.ToyData` or :class:`~diffjax.data.ImageData`)."""
    import diffjax.data as data
    d = config.data
    gb = config.training.batch_size if global_batch is None else global_batch
    seed = config.seed if seed is None else seed
    common = dict(global_batch=gb, seed=seed, process_index=process_index, process_count=process_count)
    if d.dataset in TOY_DATASETS:
        return data.ToyData(d.dataset, **common)
    _choice("data.dataset", d.dataset, TOY_DATASETS + tuple(IMAGE_DATASETS))
    source, tfds_name, _ = IMAGE_DATASETS[d.dataset]
    img_kw = dict(random_flip=bool(d.random_flip) and split == "train", dequantize=bool(d.uniform_dequantization),
                  num_classes=num_classes(config), **common)
    if source == "idx":
        images, labels = data.load_fashion_mnist(split, data_dir=d.data_dir or None)
        images = _fit(images, d)
        return data.ImageData.from_arrays(images, labels, **img_kw)
    tsplit = {"train": "train", "test": "test"}[split]
    src = data.load_tfds(tfds_name, tsplit, data_dir=d.data_dir or None)
    first, _ = src.get([0])

    def get(idx):
        images, labels = src.get(idx)
        return _fit(images, d), labels

    shape = _fit(first, d).shape[1:]
    return data.ImageData(get, len(src), shape, **img_kw)


def _fit(images: np.ndarray, d) -> np.ndarray:
    """Center-crop (``data.crop``, e.g. CelebA's 140) and resize to ``data.image_size`` where needed."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    crop = int(d.get("crop", 0) or 0)
    if crop:
        h, w = images.shape[1:3]
        top, left = (h - crop) // 2, (w - crop) // 2
        images = images[:, top:top + crop, left:left + crop]
    if images.shape[1] != d.image_size or images.shape[2] != d.image_size:
        from PIL import Image
        images = np.stack([np.asarray(Image.fromarray(im.squeeze(-1) if im.shape[-1] == 1 else im).resize(
            (d.image_size, d.image_size), Image.BICUBIC)).reshape(d.image_size, d.image_size, -1)
            for im in images])
    return images
