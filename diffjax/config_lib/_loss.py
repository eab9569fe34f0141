"""The training objective, from ``training.loss`` / ``training.weighting`` / ``training.time_sampling`` to
``loss_fn(params, key, batch)``: the name tables, their checks against the process, and the builder.

* ``"dsm"``: continuous DSM (:func:`diffjax.core.dsm_loss`) with ``training.weighting`` (:data:`WEIGHTINGS`:
  ``"simple"`` sigma^2, ``"likelihood"`` g^2, ``"min_snr"``, ``"edm"``, ``"sigmoid"``, ``"flow_matching"``, the
  conditional flow-matching loss as a DSM weighting) and ``training.time_sampling`` (:data:`TIME_SAMPLINGS`;
  ``"importance"`` or ``training.importance_sampling``: importance sampling of t).
* ``"ddpm"``: DDPM's L_simple on the VP SDE's DDPM grid. ``"ncsn"``: NCSN's loss on ``model.num_scales`` geometric
  sigmas of the VE SDE. ``"hybrid"``: improved DDPM's L_simple + lambda L_vlb (learned variance).
"""
from __future__ import annotations

import functools
from typing import Callable

import jax

import diffjax.core as core
from diffjax.config_lib._cascade import batch_condition
from diffjax.config_lib._names import _nets
from diffjax.config_lib._score import build_score_fn
from diffjax.discrete import ddpm as _ddpm
from diffjax.discrete import ncsn as _ncsn

# training.weighting -> lambda(process, t) of core.dsm_loss; hyperparameters from config fields (_weighting)
WEIGHTINGS = {"simple": core.sigma2_weighting, "likelihood": core.likelihood_weighting,
              "min_snr": core.min_snr_weighting, "edm": core.edm_weighting, "sigmoid": core.sigmoid_weighting,
              "flow_matching": core.flow_matching_weighting}
# training.time_sampling -> sampler(key, batch, process, *, t_eps, ...); "importance": dsm_loss's importance sampling
# (core.importance_sample_time, reweighted so the uniform-t objective stays unbiased)
TIME_SAMPLINGS = {"uniform": core.uniform_time, "logit_normal": core.logit_normal_time,
                  "edm_lognormal": core.edm_lognormal_time, "importance": core.importance_sample_time}


def _reduce(config) -> str:
    return "mean" if config.training.reduce_mean else "sum"


def _on_score(config, model, sde, loss):
    """``(params, k_loss, k_drop, x, y) -> loss(k_loss, x, score_fn)`` with the network's training score."""
    def fn(params, k_loss, k_drop, x, y):
        return loss(k_loss, x, build_score_fn(config, model, sde, params, y=y, train=True, rng=k_drop))
    return fn


def _dsm(config, model, sde):
    t = config.training
    weighting = _weighting(config)
    importance = bool(t.importance_sampling) or t.time_sampling == "importance"
    time_sampler = None if importance or t.time_sampling == "uniform" else _time_sampler(config, sde)
    return _on_score(config, model, sde, lambda key, x, score_fn: core.dsm_loss(
        key, x, score_fn, sde, weighting=weighting, t_eps=t.t_eps, time_sampler=time_sampler,
        importance_sampling=importance, reduce=_reduce(config)))


def _ddpm_simple(config, model, sde):
    grid = _ddpm.ddpm_grid(sde)
    return _on_score(config, model, sde, lambda key, x, score_fn: _ddpm.ddpm_simple_loss(
        key, x, score_fn, grid, reduce=_reduce(config)))


def _ncsn(config, model, sde):
    grid = _ncsn.ncsn_grid(sde, config.model.num_scales)
    return _on_score(config, model, sde, lambda key, x, score_fn: _ncsn.ncsn_loss(
        key, x, score_fn, grid, reduce=_reduce(config)))


def _hybrid(config, model, sde):
    """Improved DDPM's hybrid loss reads the learned-variance head directly (eps and v), on the DDPM grid."""
    grid = _ddpm.ddpm_grid(sde)
    t = config.training
    ti = config.model.time_input or "index"

    def fn(params, k_loss, k_drop, x, y):
        nets = _nets()

        def model_fn(x_t, tt):
            labels = nets.noise_labels_for(tt, grid, time_input=ti)  # the grid's step index for tt = grid.time(i)
            args = (x_t, labels) if y is None else (x_t, labels, y)
            out = model.apply({"params": params}, *args, train=True, rngs={"dropout": k_drop})
            return nets.split_learned_sigma(out)

        return _ddpm.ddpm_hybrid_loss(k_loss, x, model_fn, grid, vlb_weight=t.vlb_weight)

    return fn


# training.loss -> builder(config, model, sde) of loss(params, k_loss, k_drop, x, y)
LOSSES = {"dsm": _dsm, "ddpm": _ddpm_simple, "ncsn": _ncsn, "hybrid": _hybrid}


def build_loss_fn(config, model, sde) -> Callable:
    """``loss_fn(params, key, batch) -> (loss, aux)`` for ``training.loss`` (:data:`LOSSES`, module docstring);
    ``k_loss, k_drop = jax.random.split(key)``: the loss's key and the network's dropout key."""
    loss = LOSSES[config.training.loss](config, model, sde)
    condition = batch_condition(config, sde)  # labels, a super-resolution stage's low-res condition, or None

    def loss_fn(params, key, batch):
        k_loss, k_drop = jax.random.split(key)
        return loss(params, k_loss, k_drop, batch["x"], condition(jax.random.fold_in(key, 1), batch)), {}

    return loss_fn


def validate_loss(config) -> None:
    """``training.loss`` against ``training.sde`` and the network's head."""
    t = config.training
    if t.loss in ("ddpm", "hybrid") and t.sde not in ("vpsde", "cosine"):
        raise ValueError(f"training.loss={t.loss!r} needs a VP SDE (training.sde 'vpsde' or 'cosine'), got {t.sde!r}")
    if t.loss == "ncsn" and t.sde != "vesde":
        raise ValueError(f"training.loss='ncsn' needs training.sde='vesde', got {t.sde!r}")
    if t.loss == "hybrid" and not config.model.overrides.get("learn_sigma", False):
        raise ValueError("training.loss='hybrid' needs a learned-variance head: set model.overrides.learn_sigma=True")


def validate_objective(config, sde) -> None:
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
