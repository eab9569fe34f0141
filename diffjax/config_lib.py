"""The one name -> constructor table; with ``main.py`` and :mod:`diffjax.run` (the entry layer) the only code that
reads a ``ConfigDict``.

Every string in a config is resolved here with an explicit dict, after :func:`validate` has checked the whole
config (unknown names raise ``ValueError`` listing the allowed values, before anything is compiled).
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import json
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
           "build_sde", "build_model", "build_optimizer", "build_learning_rate", "build_train_steps", "MULTI_STEPS", "build_loss_fn", "build_score_fn",
           "build_sampling_score_fn",
           "build_sampler", "sampler_options", "sampler_options_config", "SamplerOptions",
           "build_dataset", "input_shape", "is_toy", "num_classes", "check_field_path", "SCORE_SDE_FIELDS",
           "SCORE_SDE_VALUES",
           "NOISY_CLASSIFIER_PARAMS", "NOISY_CLASSIFIER_CONFIG", "validate_noisy_classifier", "build_noisy_classifier",
           "noisy_classifier_num_classes", "noisy_classifier_logits_fn", "noisy_classifier_record",
           "load_noisy_classifier", "sampling_num_classes"]

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
        raise ValueError(f"{field}={value!r} is not known; allowed values: {sorted(allowed)}"
                         f"{_did_you_mean(field, value, allowed)}")


# score_sde's names (yang-song/score_sde, configs/) for values that diffjax names differently
SCORE_SDE_VALUES = {
    ("model.name", "ncsnpp"): "ncsnpp_cifar10",
    ("model.name", "ddpm"): "ddpm_cifar10",
    ("sampling.method", "ode"): "ode_adaptive",
    ("data.dataset", "CIFAR10"): "cifar10",
    ("data.dataset", "CELEBA"): "celeb_a",
    ("data.dataset", "SVHN"): "svhn",
}


def _did_you_mean(field: str, value, allowed) -> str:
    """``"; did you mean X?"`` for score_sde's name of a value or a close spelling of an allowed one, else ``""``."""
    if not isinstance(value, str):
        return ""
    if (field, value) in SCORE_SDE_VALUES:
        return f"; did you mean {field}={SCORE_SDE_VALUES[field, value]!r} (score_sde's {value!r})?"
    close = difflib.get_close_matches(value, [a for a in allowed if isinstance(a, str)], n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


# score_sde's config fields (yang-song/score_sde, configs/) that diffjax names differently or does not have:
# {score_sde's field: (diffjax's field or None, a note)}. The message of an unknown --config.FIELD points here.
SCORE_SDE_FIELDS = {
    "sampling.snr": ("sampling.options.snr", "pc's Langevin corrector"),
    "sampling.n_steps_each": ("sampling.options.n_corrector_steps",
                              "pc's; annealed_langevin's is sampling.options.n_steps_each"),
    "sampling.noise_removal": ("sampling.options.denoise", ""),
    "sampling.corrector": ("sampling.options.corrector", "pc's, 'langevin'; no corrector: "
                                                         "sampling.method='reverse_diffusion' (a predictor alone)"),
    "sampling.predictor": ("sampling.method", "pc's predictor is reverse diffusion; a predictor alone: "
                                              "sampling.method='reverse_diffusion' | 'euler_maruyama' | 'ancestral'"),
    "sampling.probability_flow": ("sampling.method", "the probability-flow ODE: sampling.method='ode_adaptive' "
                                                     "(score_sde's RK45) | 'ode_heun' | 'ode_euler' | ..."),
    "training.likelihood_weighting": ("training.weighting", "training.weighting='likelihood'"),
    "model.nf": ("model.overrides.ch", "the network's base width"),
    "model.normalization": (None, "diffjax's UNets use GroupNorm (model.overrides.norm_groups)"),
    "model.nonlinearity": (None, "diffjax's UNets use swish"),
    "eval.enable_sampling": (None, "samples and their FID / KID / IS: --mode eval"),
    "eval.enable_bpd": (None, "bits/dim: --mode likelihood"),
    "eval.enable_loss": (None, "the training loss is in WORKDIR/metrics.jsonl"),
    "eval.bpd_dataset": ("eval.bpd_num_examples", "bits/dim are measured on the test split"),
    "eval.begin_ckpt": (None, "--mode eval scores the newest checkpoint"),
    "eval.end_ckpt": (None, "--mode eval scores the newest checkpoint"),
}


def _network_fields(config) -> tuple:
    """The dataclass fields of ``model.name``'s network (what ``model.overrides`` may set), or () if unknown."""
    if config.get("model") is None or config.model.get("name") not in MODELS:
        return ()
    return tuple(f.name for f in dataclasses.fields(MODELS[config.model.name]()) if f.name not in ("parent", "name"))


def check_field_path(config, path: str) -> None:
    """Check that ``path`` (``"training.batch_size"``, as in ``--config.training.batch_size=8``) names a field of
    ``config``. ``ValueError`` naming the path, the fields that exist where it fails, and diffjax's field where
    ``path`` is score_sde's name for it (:data:`SCORE_SDE_FIELDS`) or close to an existing one."""
    holder, done = config, []
    for part in path.split("."):
        name = part.split("[", 1)[0]  # ml_collections' "a.b[0]": index into a sequence field
        if not isinstance(holder, ml_collections.ConfigDict):
            return  # into a value (a tuple, a dataclass): ml_collections checks it
        if name not in holder:
            break
        holder = holder[name]
        done.append(name)
    else:
        return
    where = ".".join(done)
    full = ".".join(done + [name])
    msg = f"unknown config field {path!r}" + (f" (there is no {full!r})" if full != path else "")
    hints = []
    if full in SCORE_SDE_FIELDS:
        target, note = SCORE_SDE_FIELDS[full]
        hints.append(f"did you mean {target}? (score_sde's name{'; ' + note if note else ''})" if target else
                     f"a score_sde field that diffjax does not have: {note}")
    elif where == "model" and name in _network_fields(config):
        hints.append(f"did you mean model.overrides.{name}? (a field of model.name={config.model.name!r})")
    else:
        close = difflib.get_close_matches(name, [k for k in holder.keys()], n=1)
        if close:
            hints.append(f"did you mean {'.'.join(done + close)}?")
    if isinstance(holder, SamplerOptions):
        hints.append(f"the options of each sampling.method: {_options_listing()}")
    elif where == "model.overrides":
        named = ", ".join(sorted(holder.keys())) or "none"
        hints.append(f"on the command line, model.overrides takes the fields the config file names ({named}); "
                     f"set others in a config file; model.name={config.model.name!r} has: "
                     f"{', '.join(_network_fields(config))}")
    else:
        hints.append(f"{where or 'the config'} has: {', '.join(sorted(holder.keys()))}")
    raise ValueError("; ".join([msg] + hints))


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
    _choice("training.multi_step", t.get("multi_step", "auto"), MULTI_STEPS)
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
    _validate_classifier_guidance(config, sde)


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


def build_optimizer(config):
    """``optim.*`` as an optax transformation: warm-up, then ``optim.lr_decay`` (constant | cosine to
    ``optim.lr_final`` x lr at ``training.n_iters`` | inverse_sqrt after ``optim.lr_ref_steps``, EDM2)."""
    from diffjax import train as tr
    o = config.optim
    decay_name = o.get("lr_decay", "constant")
    _choice("optim.lr_decay", decay_name, LR_DECAYS)
    try:
        return tr.make_optimizer(lr=o.lr, beta1=o.beta1, beta2=o.beta2, eps=o.eps, weight_decay=o.weight_decay,
                                 warmup=o.warmup, grad_clip=o.grad_clip, optimizer=o.optimizer,
                                 decay=_lr_decay(config))
    except ValueError as e:
        raise ValueError(f"optim.* (lr_decay={decay_name!r}): {e}") from None


def _lr_decay(config):
    """The factor ``d(k)`` of ``optim.lr_decay`` (None: constant)."""
    from diffjax import train as tr
    o = config.optim
    return {"constant": lambda: None,
            "cosine": lambda: tr.cosine_decay(int(config.training.n_iters), warmup=int(o.warmup),
                                              final=float(o.get("lr_final", 0.0))),
            "inverse_sqrt": lambda: tr.inverse_sqrt_decay(int(o.get("lr_ref_steps", 0)))}[o.get("lr_decay",
                                                                                               "constant")]()


def build_learning_rate(config):
    """The learning rate of :func:`build_optimizer` at optimizer step ``k`` (``step -> rate``; optax's count, so the
    update that makes step ``k + 1`` uses rate ``k``), for logging."""
    from diffjax import train as tr
    o = config.optim
    decay_name = o.get("lr_decay", "constant")
    _choice("optim.lr_decay", decay_name, LR_DECAYS)
    try:
        return tr.learning_rate_schedule(lr=o.lr, warmup=o.warmup, decay=_lr_decay(config))
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
    chain = sde.chain() if discrete else None
    return chain if isinstance(chain, _ddpm.DDPMGrid) else sde


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

    With ``sampling.classifier_scale > 0`` the score (guided or not) is classifier-guided
    (:func:`~diffjax.classifier_guidance`) by the noise-conditional classifier trained in
    ``sampling.classifier_workdir`` (``config.task="noisy_classifier"``) for the labels ``y`` (required then; see
    :func:`sampling_num_classes`), before the x0 range control; it works with every sampler.

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
    if _classifier_scale(config) > 0:
        score_fn = _classifier_guided(config, score_fn, y)
    if s.clip_denoised:
        score_fn = core.clip_denoised(score_fn, _network_marginal(config, sde))
    elif s.dynamic_threshold:
        score_fn = core.dynamic_threshold(score_fn, _network_marginal(config, sde),
                                          percentile=float(s.dynamic_threshold))
    return score_fn


# ------------------------------------------------------------------------------------ the noise-conditional classifier
# config.task = "noisy_classifier" trains p(y | x_t, t) (diffjax.run.train_noisy_classifier) on the process of
# training.sde, seen through the same marginal and the same time input as the score network of that config
# (_network_marginal, _classifier_time_input); sampling.classifier_workdir / classifier_scale guide with it.

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


def _classifier_time_input(config) -> str:
    """The score network's time input (``model.time_input`` or :func:`_score_kwargs`' default, else
    :func:`~diffjax.nets.make_score_fn`'s), so that the classifier sees ``t`` as the score network does."""
    m = config.model
    if m.time_input:
        return m.time_input
    if m.parameterization == "edm":
        return "edm"
    return "index" if _discrete_vp(config) else "continuous"


def noisy_classifier_logits_fn(config, model, sde, params, *, train: bool = False, rng=None) -> Callable:
    """``logits_fn(x, t) -> (batch, classes)`` of the classifier with ``params``: the time ``t`` enters as the
    score network's noise label (:func:`~diffjax.nets.noise_labels_for` on :func:`_network_marginal` with the
    config's time input)."""
    nets = _nets()
    marginal, time_input = _network_marginal(config, sde), _classifier_time_input(config)
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
        v = c[name]
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"noisy_classifier.{name} must be an integer >= 1, got {v!r}")
    for name in ("num_train_examples", "num_test_examples", "num_classes"):
        v = c[name]
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
            raise ValueError(f"noisy_classifier.{name} must be an integer >= 0 (0: all / the dataset's), got {v!r}")
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
    import os
    missing = [f for f in (NOISY_CLASSIFIER_PARAMS, NOISY_CLASSIFIER_CONFIG)
               if not os.path.isfile(os.path.join(workdir, f))]
    if missing:
        raise ValueError(f"sampling.classifier_workdir={workdir!r} is not a trained noisy-classifier workdir: "
                         f"{missing} missing (allowed: the workdir of a --config configs/fashion_mnist_noisy_"
                         f"classifier.py --mode train run, config.task='noisy_classifier')")
    with open(os.path.join(workdir, NOISY_CLASSIFIER_CONFIG)) as f:
        return ml_collections.ConfigDict(json.load(f))


def _validate_classifier_guidance(config, sde) -> None:
    """``sampling.classifier_scale`` (finite, >= 0; 0: off) and ``sampling.classifier_workdir`` (a noisy-classifier
    workdir whose images, process and classes fit this config), before anything is compiled."""
    s = config.sampling
    scale, workdir = s.get("classifier_scale", 0.0), s.get("classifier_workdir", "")
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not (math.isfinite(scale) and scale >= 0):
        raise ValueError(f"sampling.classifier_scale must be a finite number >= 0 (0: no classifier guidance), "
                         f"got {scale!r}")
    if not isinstance(workdir, str):
        raise ValueError(f"sampling.classifier_workdir must be a directory path (str), got {workdir!r}")
    if not scale:
        return
    if not workdir:
        raise ValueError(f"sampling.classifier_scale={scale} needs sampling.classifier_workdir (allowed: the workdir "
                         f"of a config.task='noisy_classifier' run), got ''")
    if is_toy(config):
        raise ValueError(f"sampling.classifier_scale={scale}: the noise-conditional classifier takes images; "
                         f"data.dataset={config.data.dataset!r} is not an image dataset")
    rec = _read_classifier_config(workdir)
    want, got = input_shape(config, 1)[1:], input_shape(rec, 1)[1:]
    if want != got:
        raise ValueError(f"sampling.classifier_workdir={workdir!r} holds a classifier of {got} images; this config "
                         f"samples {want} images (data.image_size, data.num_channels)")
    n = int(rec.noisy_classifier.num_classes)
    if num_classes(config) and n != num_classes(config):
        raise ValueError(f"sampling.classifier_workdir={workdir!r} holds a {n}-class classifier; this "
                         f"class-conditional model has data.num_classes={num_classes(config)}")
    mine, theirs = _network_marginal(config, sde), _network_marginal(rec, build_sde(rec))
    t = jnp.linspace(0.0, 1.0, 17) * min(float(mine.T), float(theirs.T))
    if not (math.isclose(float(mine.T), float(theirs.T), rel_tol=1e-6)
            and np.allclose(np.stack(mine.marginal(t)), np.stack(theirs.marginal(t)), rtol=1e-4, atol=1e-6)):
        raise ValueError(f"sampling.classifier_workdir={workdir!r} holds a classifier trained on another process "
                         f"(training.sde={rec.training.sde!r} with its model.* fields) than this config's "
                         f"training.sde={config.training.sde!r}: their marginals (a(t), s(t)) differ; train the "
                         f"classifier with this config's process")


@functools.lru_cache(maxsize=4)
def _load_noisy_classifier_cached(workdir: str, mtime: float):
    del mtime  # part of the cache key: a retrained classifier is read again
    import os
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
    import os
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


def _classifier_guided(config, score_fn, y):
    """``score_fn`` guided by the classifier of ``sampling.classifier_workdir`` towards labels ``y``
    (:func:`~diffjax.classifier_guidance` at ``sampling.classifier_scale``; a learned variance ``v`` is kept)."""
    if y is None:
        raise ValueError("sampling.classifier_scale > 0 needs the labels y to guide towards; got y=None")
    rec, model, params = load_noisy_classifier(config.sampling.classifier_workdir)
    logits_fn = noisy_classifier_logits_fn(rec, model, build_sde(rec), params)
    scale = float(_classifier_scale(config))
    if core.has_learned_variance(score_fn):
        base = score_fn
        grad_term = core.with_label(core.classifier_guidance(lambda x, t: jnp.zeros_like(x), logits_fn,
                                                             scale=scale), y)

        def guided_and_v(x, t):
            s, v = base.score_and_v(x, t)
            return s + grad_term(x, t), v

        return core.LearnedVarianceScore(guided_and_v)
    return core.with_label(core.classifier_guidance(score_fn, logits_fn, scale=scale), y)


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
    "default": _samplers.process_default,
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


# ----------------------------------------------------------------------------------------- few-step distillation
# ``config.distill`` (diffjax/run/_distill.py trains and samples it); its strings are resolved here.

DISTILL_METHODS = ("", "progressive", "consistency_distillation", "consistency_training")
DISTILL_METRICS = {"pseudo_huber": "pseudo_huber", "l2": "squared_l2"}
DISTILL_ODE_STEPS = {"euler": _samplers.ode_euler_step, "heun": _samplers.ode_heun_step}
DISTILL_WEIGHTINGS = {"unit": "unit_weight", "ict": "ict_weight"}
DISTILL_PARAMETERIZATIONS = ("", "eps", "x0", "v", "score", "edm", "velocity")


def _distill_int(field, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"distill.{field} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _distill_float(field, value, lo, hi, *, lo_open=False, hi_open=True):
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value) and \
        (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        raise ValueError(f"distill.{field} must be a number in {'(' if lo_open else '['}{lo}, {hi}"
                         f"{')' if hi_open else ']'}, got {value!r}")
    return float(value)


def distill_rounds(config) -> int:
    """The number of progressive-distillation rounds, ``log2(distill.start_steps / distill.final_steps)``."""
    d = config.distill
    return int(round(math.log2(d.start_steps // d.final_steps)))


def distill_total_steps(config) -> int:
    """Optimizer steps of the whole distillation run: ``rounds x steps_per_round`` (progressive), else
    ``training.n_iters``."""
    if config.distill.method == "progressive":
        return distill_rounds(config) * int(config.distill.steps_per_round)
    return int(config.training.n_iters)


def validate_distill(config, *, external_teacher: bool = False) -> None:
    """Check ``config.distill`` before anything is compiled (``ValueError`` naming the field and the allowed
    values). ``external_teacher``: the caller passes the teacher as a function (no ``distill.teacher_workdir``)."""
    d = config.distill
    _choice("distill.method", d.method, DISTILL_METHODS)
    if not d.method:
        raise ValueError("distill.method is empty: set it to one of " + str(list(DISTILL_METHODS[1:])))
    if num_classes(config):
        raise ValueError(f"distill.method={d.method!r} distils unconditional models; data.num_classes must be 0, got "
                         f"{config.data.num_classes!r}")
    if d.method != "consistency_training" and not external_teacher and not d.teacher_workdir:
        raise ValueError(f"distill.method={d.method!r} needs distill.teacher_workdir (the teacher's run directory; "
                         f"its newest checkpoint's EMA parameters are the teacher), got {d.teacher_workdir!r}")
    _choice("distill.time_grid", d.time_grid, TIME_GRIDS)
    _choice("distill.metric", d.metric, DISTILL_METRICS)
    _choice("distill.ode_step", d.ode_step, DISTILL_ODE_STEPS)
    _choice("distill.weighting", d.weighting, ("",) + tuple(DISTILL_WEIGHTINGS))
    _choice("distill.parameterization", d.parameterization, DISTILL_PARAMETERIZATIONS)
    _distill_float("t_eps", d.t_eps, 0.0, math.inf)  # 0: the process's; the functions check it against T below
    _distill_int("sample_steps", d.sample_steps, 1)
    n = int(config.training.n_jitted_steps)
    if d.method == "progressive":
        start = _distill_int("start_steps", d.start_steps, 2)
        final = _distill_int("final_steps", d.final_steps, 1)
        ratio = start // final
        if start % final or ratio < 2 or ratio & (ratio - 1):
            raise ValueError(f"distill.start_steps / distill.final_steps must be a power of 2 >= 2 (each round "
                             f"halves the steps), got start_steps={start!r}, final_steps={final!r}")
        spr = _distill_int("steps_per_round", d.steps_per_round, 1)
        if spr % n:
            raise ValueError(f"distill.steps_per_round={spr} must be a multiple of training.n_jitted_steps={n}")
    else:
        _distill_int("num_scales", d.num_scales, 2)
        _distill_float("target_ema", d.target_ema, 0.0, 1.0)
        s0, s1 = _distill_int("s0", d.s0, 1), _distill_int("s1", d.s1, 1)
        if s1 < s0:
            raise ValueError(f"distill.s1 must be >= distill.s0={s0}, got {s1!r}")
        _distill_int("total_steps", d.total_steps, 0)
        _distill_float("rho", d.rho, 0.0, math.inf, lo_open=True)
        _distill_float("p_mean", d.p_mean, -math.inf, math.inf, lo_open=True)
        _distill_float("p_std", d.p_std, 0.0, math.inf, lo_open=True)
    for name in ("log_freq", "snapshot_freq", "snapshot_freq_for_preemption", "checkpoint_freq"):
        if config.training[name] % n:
            raise ValueError(f"training.{name}={config.training[name]} must be a multiple of "
                             f"training.n_jitted_steps={n}")
    sde = build_sde(config)
    try:  # the distillation functions' own checks on abstract values: nothing is compiled
        from diffjax import distill as _distill
        x0 = jax.ShapeDtypeStruct(input_shape(config, 2), jnp.float32)
        ident = lambda x, t: x  # noqa: E731
        opts = distill_options(config)
        key = jax.eval_shape(lambda: jax.random.key(0))
        if d.method == "progressive":
            for r in range(distill_rounds(config)):
                jax.eval_shape(lambda k, x: _distill.pd_loss(k, x, ident, ident, sde, num_student_steps=int(
                    d.start_steps) // 2 ** (r + 1), t_eps=opts["t_eps"], time_grid=opts["time_grid"]), key, x0)
        elif d.method == "consistency_distillation":
            jax.eval_shape(lambda k, x: _distill.cd_loss(k, x, ident, ident, ident, sde, **opts["cd"]), key, x0)
        else:
            jax.eval_shape(lambda k, x: _distill.ct_loss(k, x, ident, sde, step=0, **opts["ct"]), key, x0)
        if d.method != "progressive":
            opts["sample_times"](sde)
    except (ValueError, TypeError) as e:
        raise ValueError(f"distill.* settings ({d.method!r}) rejected on training.sde={config.training.sde!r}: {e}") \
            from e


def distill_options(config) -> dict:
    """The keyword arguments of the distillation functions from ``config.distill``, strings resolved:
    ``t_eps`` (None: the process's), ``time_grid``, ``cd`` (of :func:`~diffjax.distill.cd_loss`), ``ct`` (of
    :func:`~diffjax.distill.ct_loss` except ``step``) and ``sample_times(process)``, the times of
    :func:`~diffjax.distill.consistency_sample` (``distill.sample_steps`` of them: ``T`` then the Karras grid)."""
    from diffjax import distill as _distill
    d = config.distill
    t_eps = float(d.t_eps) or None
    default_weight = "unit" if d.method == "consistency_distillation" else "ict"
    weighting = getattr(_distill, DISTILL_WEIGHTINGS[d.weighting or default_weight])
    metric = getattr(_distill, DISTILL_METRICS[d.metric])
    cd = dict(num_scales=int(d.num_scales), ode_step=DISTILL_ODE_STEPS[d.ode_step], metric=metric,
              weighting=weighting, t_eps=t_eps)
    ct = dict(total_steps=int(d.total_steps) or int(config.training.n_iters), s0=int(d.s0), s1=int(d.s1),
              rho=float(d.rho), p_mean=float(d.p_mean), p_std=float(d.p_std), metric=metric, weighting=weighting,
              t_eps=t_eps)
    k = int(d.sample_steps)

    def sample_times(process):
        if k == 1:
            return (float(process.T),)
        eps = process.t_eps if t_eps is None else t_eps
        grid = _samplers.karras(process, k, eps)
        return tuple(float(v) for v in np.asarray(grid)[:k])

    return dict(t_eps=t_eps, time_grid=TIME_GRIDS[d.time_grid], cd=cd, ct=ct, sample_times=sample_times)
