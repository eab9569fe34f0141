"""The one name -> constructor table; with ``main.py`` and :mod:`diffjax.run` (the entry layer) the only code that
reads a ``ConfigDict``.

Every string in a config is resolved here with an explicit dict, after :func:`validate` has checked the whole
config (unknown names raise ``ValueError`` listing the allowed values, before anything is compiled).
"""
from __future__ import annotations

import functools
import inspect
import math
import numbers
import re
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import diffjax.core as core
from diffjax import samplers as _samplers
from diffjax.discrete import ddpm as _ddpm
from diffjax.discrete import ncsn as _ncsn

__all__ = ["SDES", "MODELS", "LOSSES", "WEIGHTINGS", "TIME_SAMPLINGS", "SAMPLERS", "SOLVERS", "TIME_GRIDS",
           "TOY_DATASETS",
           "IMAGE_DATASETS", "validate",
           "build_sde", "build_model", "build_optimizer", "build_loss_fn", "build_score_fn", "build_sampling_score_fn",
           "build_sampler", "sampler_options", "sampler_options_config", "SamplerOptions",
           "build_dataset", "input_shape", "is_toy", "num_classes"]

SDES = {
    "vpsde": lambda m: core.vp_sde(m.beta_min, m.beta_max, N=m.num_scales),
    "subvpsde": lambda m: core.subvp_sde(m.beta_min, m.beta_max, N=m.num_scales),
    "vesde": lambda m: core.ve_sde(m.sigma_min, m.sigma_max, N=m.num_scales),
    "cosine": lambda m: core.cosine_vp_sde(N=m.num_scales),
    "rectified_flow": lambda m: core.rectified_flow(N=m.num_scales),           # a = 1 - t, s = t
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

LOSSES = ("dsm", "ddpm", "ncsn", "hybrid")
# training.weighting -> lambda(process, t) of core.dsm_loss; hyperparameters from config fields (_weighting)
WEIGHTINGS = {"simple": core.sigma2_weighting, "likelihood": core.likelihood_weighting,
              "min_snr": core.min_snr_weighting, "edm": core.edm_weighting, "sigmoid": core.sigmoid_weighting,
              "flow_matching": core.flow_matching_weighting}
# training.time_sampling -> sampler(key, batch, process, *, t_eps, ...); "importance": dsm_loss's importance sampling
# (core.importance_sample_time, reweighted so the uniform-t objective stays unbiased)
TIME_SAMPLINGS = {"uniform": core.uniform_time, "logit_normal": core.logit_normal_time,
                  "edm_lognormal": core.edm_lognormal_time, "importance": core.importance_sample_time}

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
    "dpm_solver": _samplers.dpm_solver,
    "unipc": _samplers.unipc,
    "edm_heun": _samplers.edm_heun,
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
_PARAMETERIZATIONS = ("eps", "x0", "v", "score", "edm", "velocity")
_TIME_INPUTS = ("", "continuous", "index", "t", "sigma", "log_sigma", "edm")


def _choice(field, value, allowed):
    if value not in allowed:
        raise ValueError(f"{field}={value!r} is not known; allowed values: {sorted(allowed)}")


def is_toy(config) -> bool:
    return config.data.dataset in TOY_DATASETS


def num_classes(config) -> Optional[int]:
    return int(config.data.num_classes) or None


def validate(config, *, device_count: Optional[int] = None) -> None:
    """Check the whole config before anything is compiled: every name, the batch / frequency arithmetic, the SDE's
    parameters and the sampler settings (``sampling.*``, checked by the sampler's own argument checks on an abstract
    input, see :func:`build_sampler`). ``ValueError`` naming the field and listing the allowed values."""
    t, m, s, d = config.training, config.model, config.sampling, config.data
    _choice("training.sde", t.sde, SDES)
    _choice("training.loss", t.loss, LOSSES)
    _choice("training.weighting", t.weighting, WEIGHTINGS)
    _choice("training.time_sampling", t.time_sampling, TIME_SAMPLINGS)
    _choice("model.name", m.name, MODELS)
    try:  # the network's own field checks; overrides written for another network (UNet fields on a DiT) fail here
        build_model(config)
    except TypeError as e:
        raise ValueError(f"model.overrides do not fit model.name={m.name!r}: {e}") from None
    _choice("model.parameterization", m.parameterization, _PARAMETERIZATIONS)
    _choice("model.time_input", m.time_input, _TIME_INPUTS)
    _validate_ema(config)
    build_optimizer(config)
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
    if isinstance(s.guidance_scale, bool) or not isinstance(s.guidance_scale, numbers.Real) \
            or not (math.isfinite(s.guidance_scale) and s.guidance_scale >= 0):
        raise ValueError(f"sampling.guidance_scale must be a finite number >= 0 (0: no guidance), "
                         f"got {s.guidance_scale!r}")
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
    for name, minimum in (("batch_size", 1), ("num_samples", 0), ("snapshot_num", 1), ("final_num_samples", 0)):
        if isinstance(s[name], bool) or not isinstance(s[name], numbers.Integral) or s[name] < minimum:
            raise ValueError(f"sampling.{name} must be an integer >= {minimum}, got {s[name]!r}")
    try:
        sde = build_sde(config)
    except ValueError as e:
        raise ValueError(f"training.sde={t.sde!r} cannot be built from the model.* fields (model.beta_min, "
                         f"beta_max, sigma_min, sigma_max, num_scales): {e}") from e
    _validate_objective(config, sde)
    _check_sampler(config, sde)


def _validate_objective(config, sde) -> None:
    """``training.weighting`` / ``training.time_sampling`` and their hyperparameters, on the built process."""
    t = config.training
    if t.loss != "dsm" and t.time_sampling != "uniform":
        raise ValueError(f"training.time_sampling={t.time_sampling!r} applies to training.loss='dsm' only "
                         f"(got training.loss={t.loss!r}); allowed values there: ['uniform']")
    if t.importance_sampling and t.time_sampling not in ("uniform", "importance"):
        raise ValueError(f"training.importance_sampling=True is training.time_sampling='importance'; it cannot be "
                         f"combined with training.time_sampling={t.time_sampling!r}")
    try:  # the functions' own checks, on abstract values: nothing is compiled
        jax.eval_shape(lambda k: _weighting(config)(sde, _time_sampler(config, sde)(k, 1)), jax.random.PRNGKey(0))
    except (ValueError, TypeError) as e:
        raise ValueError(f"training.weighting={t.weighting!r} / training.time_sampling={t.time_sampling!r} "
                         f"(training.min_snr_gamma, sigmoid_bias, logit_normal_mean/std, edm_p_mean/std, "
                         f"model.sigma_data) cannot be used with training.sde={t.sde!r}: {e}") from e


def _weighting(config) -> Callable:
    """``lambda(process, t)`` of ``training.weighting`` with its hyperparameters bound."""
    t = config.training
    options = {"min_snr": dict(gamma=t.min_snr_gamma), "edm": dict(sigma_data=config.model.sigma_data),
               "sigmoid": dict(bias=t.sigmoid_bias)}.get(t.weighting, {})
    return functools.partial(WEIGHTINGS[t.weighting], **options)


def _time_sampler(config, sde) -> Callable:
    """``time_sampler(key, batch) -> t`` of ``training.time_sampling`` (``"importance"``: ``t`` only, for checks)."""
    t = config.training
    options = {"logit_normal": dict(mean=t.logit_normal_mean, std=t.logit_normal_std),
               "edm_lognormal": dict(p_mean=t.edm_p_mean, p_std=t.edm_p_std)}.get(t.time_sampling, {})
    if t.time_sampling == "importance":
        return lambda key, batch: core.importance_sample_time(key, batch, sde, t_eps=t.t_eps)[0]
    return functools.partial(TIME_SAMPLINGS[t.time_sampling], process=sde, t_eps=t.t_eps, **options)


def build_sde(config):
    _choice("training.sde", config.training.sde, SDES)
    return SDES[config.training.sde](config.model)


def build_model(config):
    overrides = dict(config.model.overrides)
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    if num_classes(config):
        overrides.setdefault("num_classes", num_classes(config))
    return MODELS[config.model.name](**overrides)


LR_DECAYS = ("constant", "cosine", "inverse_sqrt")


def build_optimizer(config):
    """``optim.*`` as an optax transformation: warm-up, then ``optim.lr_decay`` (constant | cosine to
    ``optim.lr_final`` x lr at ``training.n_iters`` | inverse_sqrt after ``optim.lr_ref_steps``, EDM2)."""
    from diffjax import train as tr
    o = config.optim
    decay_name = o.get("lr_decay", "constant")
    _choice("optim.lr_decay", decay_name, LR_DECAYS)
    try:
        decay = {"constant": lambda: None,
                 "cosine": lambda: tr.cosine_decay(int(config.training.n_iters), warmup=int(o.warmup),
                                                   final=float(o.get("lr_final", 0.0))),
                 "inverse_sqrt": lambda: tr.inverse_sqrt_decay(int(o.get("lr_ref_steps", 0)))}[decay_name]()
        return tr.make_optimizer(lr=o.lr, beta1=o.beta1, beta2=o.beta2, eps=o.eps, weight_decay=o.weight_decay,
                                 warmup=o.warmup, grad_clip=o.grad_clip, optimizer=o.optimizer, decay=decay)
    except ValueError as e:
        raise ValueError(f"optim.* (lr_decay={decay_name!r}): {e}") from None


EMA_SCHEDULES = ("debiased", "warmup", "constant")


def build_ema_decay(config):
    """The decay schedule of ``ema_params`` (:mod:`diffjax.train.ema`) for ``model.ema_schedule``."""
    from diffjax.train import ema
    m = config.model
    _choice("model.ema_schedule", m.ema_schedule, EMA_SCHEDULES)
    make = {"debiased": ema.debiased_decay, "warmup": ema.warmup_decay, "constant": ema.constant_decay}
    return make[m.ema_schedule](float(m.ema_rate))


def _validate_ema(config):
    from diffjax.train import ema
    m, t, s = config.model, config.training, config.sampling
    _choice("model.ema_schedule", m.ema_schedule, EMA_SCHEDULES)
    rate = m.ema_rate
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
        raise ValueError(f"model.ema_rate must be a float in [0, 1), got {rate!r}")
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


def input_shape(config, batch: int):
    if is_toy(config):
        return (batch, 2)
    return (batch, config.data.image_size, config.data.image_size, config.data.num_channels)


def _score_kwargs(config):
    m = config.model
    kw = dict(parameterization=m.parameterization, scale_by_sigma=m.scale_by_sigma, sigma_data=m.sigma_data,
              learned_sigma=bool(m.overrides.get("learn_sigma", False)))
    if m.time_input:
        kw["time_input"] = m.time_input
    elif _discrete_vp(config) and m.parameterization != "edm":
        kw["time_input"] = "index"  # DDPM's timestep, what the hybrid loss feeds too: grid.index(grid.time(i)) = i
    return kw


def _discrete_vp(config) -> bool:
    """A discrete-time VP model: trained on the DDPM grid (``training.continuous=False`` or the DDPM / hybrid loss)."""
    t = config.training
    return (not t.continuous or t.loss in ("ddpm", "hybrid")) and t.sde in ("vpsde", "cosine")


def _network_marginal(config, sde):
    """What converts the network's output to a score: a discrete-time VP model (``training.continuous=False``, or
    the DDPM / hybrid loss) was trained on the DDPM grid, whose ``alpha_bar_i`` differ from the continuous VP
    marginal (at ``i = 0`` the grid's std is ``sqrt(beta_1)``, the SDE's is 0), so its score uses the grid, as
    score-SDE's discrete DDPM models do. The grid's step ``i`` sits at the time where the SDE's marginal equals
    ``alpha_bar_i`` (:func:`~diffjax.discrete.ddpm_grid`), where the grid samplers evaluate it."""
    discrete = not config.training.continuous or config.training.loss in ("ddpm", "hybrid")
    if discrete and sde.discrete_chain == "ddpm":
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
        if core.has_learned_variance(f):  # keep v: the grid samplers use the learned variance
            return core.LearnedVarianceScore(lambda x, t: f.score_and_v(x, t, y))
        return lambda x, t: f(x, t, y)
    return _nets().make_score_fn(model.apply, params, _network_marginal(config, sde), train=train, rng=rng,
                                 **_score_kwargs(config))


def build_sampling_score_fn(config, model, sde, params, *, y=None):
    """The score the samplers use: :func:`build_score_fn`, with classifier-free guidance of scale
    ``sampling.guidance_scale`` (null label ``num_classes``) and the x0 range control of ``sampling.clip_denoised``
    / ``sampling.dynamic_threshold``. Not for likelihoods, which need the model's own score.

    A learned-variance model (``model.overrides.learn_sigma``) gives a :class:`~diffjax.LearnedVarianceScore`
    through all of these (the x0 transforms keep ``v``; with guidance ``v`` is the conditional model's, as in
    GLIDE), so the grid samplers sample with its learned variance by default."""
    s = config.sampling
    if num_classes(config) and s.guidance_scale > 0:
        cond = _conditional_score_fn(config, model, sde, params)
        guided = core.classifier_free_guidance(cond, guidance_scale=s.guidance_scale, null_label=num_classes(config))
        score_fn = core.with_label(guided, y)
        if core.has_learned_variance(cond):
            w, null = float(s.guidance_scale), num_classes(config)

            def guided_and_v(x, t):
                s_c, v = cond.score_and_v(x, t, y)
                label = jax.numpy.asarray(y)
                s_u = cond(x, t, jax.numpy.full(label.shape, null, label.dtype))
                return (1.0 + w) * s_c - w * s_u, v  # classifier_free_guidance's rule, v from the same call

            score_fn = core.LearnedVarianceScore(guided_and_v)
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

    * ``"dsm"``: continuous DSM (:func:`diffjax.core.dsm_loss`) with ``training.weighting`` (:data:`WEIGHTINGS`:
      ``"simple"`` sigma^2, ``"likelihood"`` g^2, ``"min_snr"``, ``"edm"``, ``"sigmoid"``, ``"flow_matching"``, the
      conditional flow-matching loss as a DSM weighting) and ``training.time_sampling`` (:data:`TIME_SAMPLINGS`;
      ``"importance"`` or ``training.importance_sampling``: importance sampling of t).
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
    weighting = _weighting(config)
    importance = bool(t.importance_sampling) or t.time_sampling == "importance"
    time_sampler = None if importance or t.time_sampling == "uniform" else _time_sampler(config, sde)

    def loss_fn(params, key, batch):
        k_loss, k_drop = jax.random.split(key)
        x = batch["x"]
        y = batch.get("y") if num_classes(config) else None
        if kind == "hybrid":
            nets = _nets()
            ti = config.model.time_input or "index"

            def model_fn(x_t, tt):
                labels = nets.noise_labels_for(tt, grid, time_input=ti)  # the grid's step index for tt = grid.time(i)
                args = (x_t, labels) if y is None else (x_t, labels, y)
                out = model.apply({"params": params}, *args, train=True, rngs={"dropout": k_drop})
                return nets.split_learned_sigma(out)

            return _ddpm.ddpm_hybrid_loss(k_loss, x, model_fn, grid, vlb_weight=t.vlb_weight), {}
        score_fn = build_score_fn(config, model, sde, params, y=y, train=True, rng=k_drop)
        if kind == "dsm":
            loss = core.dsm_loss(k_loss, x, score_fn, sde, weighting=weighting, t_eps=t.t_eps,
                                 time_sampler=time_sampler, importance_sampling=importance, reduce=reduce)
        elif kind == "ddpm":
            loss = _ddpm.ddpm_simple_loss(k_loss, x, score_fn, grid, reduce=reduce)
        else:
            loss = _ncsn.ncsn_loss(k_loss, x, score_fn, grid, reduce=reduce)
        return loss, {}

    return loss_fn


# ------------------------------------------------------------------------------------------------ sampler settings
# ``sampling.options`` holds the samplers' keyword options. Which ones exist, and their types, comes from the
# samplers' signatures (inspect), so a new option of a sampler is settable from the command line without edits here.

_STEP_ARGS = ("num_steps", "t_eps")                 # sampling.num_steps / sampling.t_eps
_NOT_CONFIG_OPTIONS = ("return_nfe",)               # changes what the sampler returns: Python only
_OPTION_TYPES = {t.__name__: t for t in (bool, int, float, str)}
# Options a sampler takes as an object and a config names with a string, resolved here once (diffrax on first use):
# sampling.options.solver="tsit5" -> ode_adaptive(..., solver=diffrax.Tsit5()).
SOLVERS = {"dopri5": "Dopri5", "tsit5": "Tsit5"}
# sampling.options.time_grid="karras" -> the samplers' time_grid=diffjax.samplers.karras (the same object each time)
TIME_GRIDS = {
    "uniform": _samplers.uniform_time,
    "log_snr": _samplers.uniform_log_snr,
    "karras": _samplers.karras,
    "quadratic": _samplers.quadratic_time,
    "ddpm_leading": _samplers.ddpm_strided("leading"),
    "ddpm_trailing": _samplers.ddpm_strided("trailing"),
    "ddpm_linspace": _samplers.ddpm_strided("linspace"),
}
_NAMED_OPTIONS = {"solver": SOLVERS, "time_grid": TIME_GRIDS}


def _solver(name: str):
    import diffrax  # slow to import: only when a config names a solver
    return getattr(diffrax, SOLVERS[name])()


_RESOLVE_NAMED_OPTION = {"solver": _solver, "time_grid": TIME_GRIDS.__getitem__}


def _resolve_named_option(name: str, value):
    if name not in _NAMED_OPTIONS or not isinstance(value, str):
        return value
    if value not in _NAMED_OPTIONS[name]:
        raise ValueError(f"sampling.options.{name} must be one of {tuple(_NAMED_OPTIONS[name])}, got {value!r}")
    return _RESOLVE_NAMED_OPTION[name](value)


def _keyword_options(method: str) -> dict:
    """``{name: inspect.Parameter}`` of the keyword options of sampler ``method`` a config may set."""
    params = inspect.signature(SAMPLERS[method]).parameters
    return {n: p for n, p in params.items() if p.kind is p.KEYWORD_ONLY and n not in _STEP_ARGS + _NOT_CONFIG_OPTIONS}


def _option_type(param: inspect.Parameter) -> Optional[type]:
    """bool / int / float / str from the annotation (e.g. ``"float"``, ``"int | None"``) or else the default's type;
    ``object`` (any Python literal, parsed by ``ast.literal_eval``, else a string) for a ``None`` default without
    such an annotation; None for anything else (callables such as pc's ``predictor``: Python configs only)."""
    ann = param.annotation
    if isinstance(ann, type) and ann.__name__ in _OPTION_TYPES:
        return ann
    if isinstance(ann, str):
        names = [n for n in re.findall(r"[A-Za-z_][A-Za-z_0-9.]*", ann) if n not in ("None", "Optional", "typing")]
        if len(names) == 1 and names[0] in _OPTION_TYPES:
            return _OPTION_TYPES[names[0]]
    if param.default is None:
        return object
    return type(param.default) if type(param.default) in _OPTION_TYPES.values() else None


def sampler_options(method: str) -> dict:
    """``{option: type}``: the keyword options of sampler ``method`` that ``sampling.options`` can set from the
    command line (``--config.sampling.options.NAME=VALUE``), from the sampler's signature. Options of other types
    (pc's ``predictor``, a callable) can be set in a Python config only; ``return_nfe`` not at all. Type ``object``:
    an option with a ``None`` default and no bool / int / float / str annotation; its command-line value is read as
    a Python literal (``1.5``, ``None``, ``True``), or else as a string. Type ``str`` also for an option the sampler
    takes as an object that the config names (``solver``: a name of ``SOLVERS``, resolved to the diffrax solver;
    ``time_grid``: a name of ``TIME_GRIDS``, resolved to the grid function)."""
    _choice("sampling.method", method, SAMPLERS)
    return {n: t for n, t in ((n, str if n in _NAMED_OPTIONS else _option_type(p))
                              for n, p in _keyword_options(method).items()) if t is not None}


def _options_listing() -> str:
    return "; ".join(f"{m}: {', '.join(sampler_options(m)) or '(none)'}" for m in sorted(SAMPLERS))


class SamplerOptions(ml_collections.ConfigDict):
    """``sampling.options``: one typed field per option of every sampler (:func:`sampler_options_config`), None
    (the sampler's default) until set. Asking for a name that is no option raises ``KeyError`` listing them all,
    so ``--config.sampling.options.etaa=1`` fails while the flags are parsed, naming the options."""

    def __getitem__(self, key):
        if isinstance(key, str) and "." not in key and key not in self:
            raise KeyError(f"sampling.options.{key} is not an option of any sampler; the options of each "
                           f"sampling.method are: {_options_listing()}")
        return super().__getitem__(key)


def sampler_options_config() -> SamplerOptions:
    """The ``sampling.options`` of ``configs/default.py``: a ``None`` placeholder typed from the signatures for every
    option of every sampler, so the locked config of ``python -m diffjax.main`` takes
    ``--config.sampling.options.eta=1.0`` (parsed as the option's type). :func:`build_sampler` passes on only the
    options that are set, and rejects one the chosen sampler does not have."""
    types: dict = {}
    for method in sorted(SAMPLERS):
        for name, typ in sampler_options(method).items():
            if types.setdefault(name, typ) is not typ:
                types[name] = object  # samplers disagree on the type: read any Python literal
    options = SamplerOptions()
    for name, typ in sorted(types.items()):
        options[name] = ml_collections.config_dict.placeholder(typ)
    return options


def _sampler_kwargs(config) -> dict:
    """The keyword arguments of ``sampling.method`` from ``sampling.num_steps``, ``t_eps`` and ``options``."""
    s = config.sampling
    _choice("sampling.method", s.method, SAMPLERS)
    allowed = _keyword_options(s.method)
    kw = {k: v for k, v in dict(s.options).items() if v is not None}
    unknown = sorted(set(kw) - set(allowed))
    if unknown:
        raise ValueError(f"sampling.options {unknown} are not options of sampler {s.method!r}; allowed: "
                         f"{sorted(allowed)}")
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}  # hashable: jit's static arguments
    kw = {k: _resolve_named_option(k, v) for k, v in kw.items()}  # e.g. solver "tsit5" -> diffrax.Tsit5()
    if isinstance(s.num_steps, bool) or not isinstance(s.num_steps, numbers.Integral) or s.num_steps < 0:
        raise ValueError(f"sampling.num_steps must be an integer >= 0 (0: the sampler's default), got {s.num_steps!r}")
    if isinstance(s.t_eps, bool) or not isinstance(s.t_eps, numbers.Real) or not (math.isfinite(s.t_eps)
                                                                                and s.t_eps >= 0):
        raise ValueError(f"sampling.t_eps must be 0 (the sampler's default) or a time in (0, T), got {s.t_eps!r}")
    if s.num_steps and "num_steps" in inspect.signature(SAMPLERS[s.method]).parameters:
        kw["num_steps"] = int(s.num_steps)
    if s.t_eps:
        kw["t_eps"] = float(s.t_eps)
    return kw


class _StandInScore:
    """A zero score standing in for the network's while the sampler settings are checked (one object each: one jit
    cache entry per setting); named in the samplers' messages."""

    def __init__(self, with_v: bool):
        self.with_v = with_v

    def __call__(self, x, t):
        del t
        return (jnp.zeros_like(x), jnp.zeros_like(x)) if self.with_v else jnp.zeros_like(x)

    def __repr__(self):
        return f"the network's score_fn (model.overrides.learn_sigma={self.with_v})"


_STAND_IN_SCORE = _StandInScore(False)
# A learned-variance model's sampling score offers score_and_v (build_sampling_score_fn); so does its stand-in.
_STAND_IN_LEARNED_VARIANCE_SCORE = core.LearnedVarianceScore(_StandInScore(True))


def _check_sampler(config, sde) -> None:
    """Run the sampler's own argument checks (method vs process, num_steps, t_eps, options; they run in Python
    before tracing) on an abstract input with ``jax.eval_shape``: traced, never compiled or run, so these checks
    cannot drift from the samplers'."""
    s = config.sampling
    kw = _sampler_kwargs(config)
    fn = SAMPLERS[s.method]
    learned = bool(config.model.overrides.get("learn_sigma", False))
    score_fn = _STAND_IN_LEARNED_VARIANCE_SCORE if learned else _STAND_IN_SCORE
    key = jax.eval_shape(lambda: jax.random.key(0))
    x_T = jax.ShapeDtypeStruct(input_shape(config, 2), jnp.float32)
    try:
        jax.eval_shape(lambda k, x: fn(k, x, score_fn, sde, **kw), key, x_T)
    except (ValueError, TypeError) as e:
        raise ValueError(f"sampling.method={s.method!r} rejects these settings (training.sde={config.training.sde!r}, "
                         f"sampling.num_steps={s.num_steps!r}, sampling.t_eps={s.t_eps!r}, sampling.options="
                         f"{ {k: v for k, v in dict(s.options).items() if v is not None} }): {e}") from e


def build_sampler(config) -> Callable:
    """``sample(key, x_T, score_fn, sde) -> x_0`` with ``sampling.method``, ``sampling.num_steps`` (0: the sampler's
    default), ``sampling.t_eps`` (0: default) and ``sampling.options`` (the sampler's keyword options that are set;
    see :func:`sampler_options`). :func:`validate` checks all of them against the sampler beforehand."""
    return functools.partial(SAMPLERS[config.sampling.method], **_sampler_kwargs(config))


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
    src = data.load_tfds(tfds_name, tsplit, data_dir=d.data_dir or None, verify=bool(d.get("verify_files", True)))
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
