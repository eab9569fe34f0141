"""The run's parts from ``training.sde``, ``model.*``, ``optim.*``, the EMA fields, ``training.multi_step`` and
``data.*``: process, network, optimizer and learning rate, EMA decay, the loop's compiled steps, input pipeline."""
from __future__ import annotations

import math

from typing import Optional

import numpy as np

from diffjax.config_lib._names import (IMAGE_DATASETS, MODELS, SDES, TOY_DATASETS, _choice, _nets, is_super_resolution,
                                      num_classes)


def build_sde(config):
    _choice("training.sde", config.training.sde, SDES)
    return SDES[config.training.sde](config.model)


def build_model(config):
    overrides = dict(config.model.overrides)
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    if num_classes(config):
        overrides.setdefault("num_classes", num_classes(config))
    from diffjax.config_lib._text import text_conditional, text_model
    if text_conditional(config):  # a backbone with context blocks inside the text encoder's wrapper
        overrides.setdefault("context_block", config.text.conditioning)
        model = text_model(config, MODELS[config.model.name](**overrides))
    else:
        model = MODELS[config.model.name](**overrides)
    from diffjax.config_lib._distill import is_flow_map
    if is_flow_map(config):  # u(x_t, t, s): the network told the jump's length too
        return _nets().FlowMapNet(model)
    return _nets().LowResConditioned(model) if is_super_resolution(config) else model  # a cascade's SR stage


LR_DECAYS = ("constant", "cosine", "inverse_sqrt")
# how the training.n_jitted_steps optimizer steps of one call of the loop run: "dispatch" (one compiled step,
# dispatched n times), "scan" (one lax.scan), "unroll" (n traced copies); "auto": dispatch on the CPU backend (XLA:CPU
# runs a network's backward pass inside a loop 20-40x slower; n unrolled copies compile n times longer), scan elsewhere
MULTI_STEPS = ("auto", "dispatch", "scan", "unroll")


def build_train_steps(config, train_step, mesh, shardings):
    """The loop's ``(state, batches) -> (state, metrics)`` over ``training.n_jitted_steps`` stacked batches, compiled
    as ``training.multi_step`` says (:data:`MULTI_STEPS`)."""
    import jax
    from diffjax import train as tr
    how = config.training.get("multi_step", "auto")
    _choice("training.multi_step", how, MULTI_STEPS)
    if how == "auto":
        how = "dispatch" if jax.default_backend() == "cpu" else "scan"
    if how == "dispatch":
        return tr.dispatch_train_steps(train_step, mesh, shardings)
    return tr.jit_train_step(tr.multi_step(train_step, unroll=how == "unroll"), mesh, shardings)


def _optim_errors(config, build):
    """``build()``, with a library ``ValueError`` re-raised naming ``optim.*`` and the ``optim.lr_decay``."""
    decay_name = config.optim.get("lr_decay", "constant")
    _choice("optim.lr_decay", decay_name, LR_DECAYS)
    try:
        return build()
    except ValueError as e:
        raise ValueError(f"optim.* (lr_decay={decay_name!r}): {e}") from None


def build_optimizer(config):
    """``optim.*`` as an optax transformation: warm-up, then ``optim.lr_decay`` (constant | cosine to
    ``optim.lr_final`` x lr at ``training.n_iters`` | inverse_sqrt after ``optim.lr_ref_steps``, EDM2)."""
    from diffjax import train as tr
    o = config.optim
    return _optim_errors(config, lambda: tr.make_optimizer(
        lr=o.lr, beta1=o.beta1, beta2=o.beta2, eps=o.eps, weight_decay=o.weight_decay, warmup=o.warmup,
        grad_clip=o.grad_clip, optimizer=o.optimizer, decay=_lr_decay(config)))


def build_learning_rate(config):
    """The learning rate of :func:`build_optimizer` at optimizer step ``k`` (``step -> rate``; optax's count, so the
    update that makes step ``k + 1`` uses rate ``k``), for logging."""
    from diffjax import train as tr
    o = config.optim
    return _optim_errors(config, lambda: tr.learning_rate_schedule(lr=o.lr, warmup=o.warmup,
                                                                   decay=_lr_decay(config)))


def _lr_decay(config):
    """The factor ``d(k)`` of ``optim.lr_decay`` (None: constant)."""
    from diffjax import train as tr
    o = config.optim
    return {"constant": lambda: None,
            "cosine": lambda: tr.cosine_decay(int(config.training.n_iters), warmup=int(o.warmup),
                                              final=float(o.get("lr_final", 0.0))),
            "inverse_sqrt": lambda: tr.inverse_sqrt_decay(int(o.get("lr_ref_steps", 0)))}[o.get("lr_decay",
                                                                                               "constant")]()


EMA_SCHEDULES = ("debiased", "warmup", "power_warmup", "constant")


def build_ema_decay(config):
    """The decay schedule of ``ema_params`` (:mod:`diffjax.train.ema`) for ``model.ema_schedule``."""
    from diffjax.train import ema
    m = config.model
    _choice("model.ema_schedule", m.ema_schedule, EMA_SCHEDULES)
    make = {"debiased": ema.debiased_decay, "warmup": ema.warmup_decay, "constant": ema.constant_decay,
            "power_warmup": lambda rate: ema.power_warmup_decay(rate, float(m.get("ema_power", 2 / 3)))}
    return make[m.ema_schedule](float(m.ema_rate))


def validate_ema(config):
    from diffjax.train import ema
    m, t, s = config.model, config.training, config.sampling
    _choice("model.ema_schedule", m.ema_schedule, EMA_SCHEDULES)
    rate = m.ema_rate
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
        raise ValueError(f"model.ema_rate must be a float in [0, 1), got {rate!r}")
    power = m.get("ema_power", 2 / 3)
    if m.ema_schedule == "power_warmup" and (isinstance(power, bool) or not isinstance(power, (int, float))
                                             or not 0.0 < power < math.inf):
        raise ValueError(f"model.ema_power must be a positive float (diffusers' default 2/3), got {power!r}")
    freq = t.posthoc_ema_freq
    if isinstance(freq, bool) or not isinstance(freq, int) or freq < 0 or freq % t.n_jitted_steps:
        raise ValueError(f"training.posthoc_ema_freq must be 0 (off) or a positive multiple of "
                         f"training.n_jitted_steps={t.n_jitted_steps}, got {freq!r}")
    for v in tuple(m.posthoc_sigma_rels) + ((s.ema_sigma_rel,) if s.ema_sigma_rel else ()):
        try:
            ema.sigma_rel_to_gamma(v)
        except (ValueError, TypeError) as e:
            raise ValueError(f"model.posthoc_sigma_rels / sampling.ema_sigma_rel: {e}") from None
    if freq and not m.posthoc_sigma_rels:
        raise ValueError("training.posthoc_ema_freq > 0 needs model.posthoc_sigma_rels, e.g. (0.05, 0.10) (EDM2)")
    if s.ema_sigma_rel and not freq:
        raise ValueError(f"sampling.ema_sigma_rel={s.ema_sigma_rel} reconstructs a post-hoc EMA from the snapshots "
                         "that training.posthoc_ema_freq > 0 writes; set it (and model.posthoc_sigma_rels)")


def posthoc_sigma_rels(config) -> tuple:
    """The ``sigma_rel`` of the power EMAs the train state tracks: ``model.posthoc_sigma_rels`` when
    ``training.posthoc_ema_freq > 0``, else none."""
    return tuple(float(s) for s in config.model.posthoc_sigma_rels) if config.training.posthoc_ema_freq else ()


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
    excluded = excluded_classes(config)
    if source == "idx":
        images, labels = data.load_fashion_mnist(split, data_dir=d.data_dir or None)
        if excluded and split == "train":  # held out of training only: the test split keeps them for evaluation
            keep = ~np.isin(labels, excluded)
            images, labels = images[keep], labels[keep]
        images = _fit(images, d)
        return _captioned(config, data.ImageData.from_arrays(images, labels, **img_kw), process_index)
    tsplit = {"train": "train", "test": "test"}[split]
    src = data.load_tfds(tfds_name, tsplit, data_dir=d.data_dir or None, verify=bool(d.get("verify_files", True)))
    first, _ = src.get([0])

    def get(idx):
        images, labels = src.get(idx)
        return _fit(images, d), labels

    shape = _fit(first, d).shape[1:]
    return _captioned(config, data.ImageData(get, len(src), shape, **img_kw), process_index)


def excluded_classes(config) -> tuple:
    """``data.exclude_classes``: class ids of Fashion-MNIST held out of the training split (checked)."""
    ex = tuple(config.data.get("exclude_classes", ()))
    if not ex:
        return ()
    if config.data.dataset != "fashion_mnist":
        raise ValueError(f"data.exclude_classes is supported for data.dataset='fashion_mnist', got "
                         f"{config.data.dataset!r}")
    if any(isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < 10 for c in ex) or len(set(ex)) != len(ex) \
            or len(ex) > 9:
        raise ValueError(f"data.exclude_classes must be distinct Fashion-MNIST classes in [0, 10) (at most 9), got "
                         f"{ex!r}")
    return ex


def _captioned(config, data, process_index):
    """A text-conditional model's ``data`` with caption token ids as ``"y"`` (``config_lib._text``)."""
    from diffjax.config_lib._text import captioned_dataset, text_conditional
    return captioned_dataset(config, data, process_index=process_index) if text_conditional(config) else data


RESIZES = ("bicubic", "area")


def _fit(images: np.ndarray, d) -> np.ndarray:
    """Center-crop (``data.crop``, e.g. CelebA's 140) and resize to ``data.image_size`` where needed
    (``data.resize``: :data:`RESIZES`; ``"area"``: means of blocks, rounded, for integer factors)."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    crop = int(d.get("crop", 0) or 0)
    if crop:
        h, w = images.shape[1:3]
        top, left = (h - crop) // 2, (w - crop) // 2
        images = images[:, top:top + crop, left:left + crop]
    if (images.shape[1] != d.image_size or images.shape[2] != d.image_size) and d.get("resize", "bicubic") == "area":
        return _area(images, d.image_size)
    if images.shape[1] != d.image_size or images.shape[2] != d.image_size:
        from PIL import Image
        images = np.stack([np.asarray(Image.fromarray(im.squeeze(-1) if im.shape[-1] == 1 else im).resize(
            (d.image_size, d.image_size), Image.BICUBIC)).reshape(d.image_size, d.image_size, -1)
            for im in images])
    return images


def _area(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 images ``(N, H, W, C)`` downsampled to ``size`` by means of ``H/size`` blocks (as
    :func:`diffjax.core.cascade.downsample_area`), rounded."""
    n, h, w, c = images.shape
    if h != w or h % size:
        raise ValueError(f"data.resize='area' needs square images whose size is a multiple of data.image_size={size}; "
                         f"the dataset's are {h}x{w} (allowed: data.resize='bicubic', or an image_size dividing {h})")
    f = h // size
    blocks = images.reshape(n, size, f, size, f, c).astype(np.float64).mean(axis=(2, 4))
    return np.round(blocks).astype(np.uint8)
