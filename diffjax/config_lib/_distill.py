"""``config.distill``: the few-step method, as a :class:`~diffjax.distill.DistillMethod` object built once from
``distill.method`` here (:func:`distill_method`); :mod:`diffjax.run` trains and samples it through the object's
methods (diffjax/run/_distill.py)."""
from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp

from diffjax import distill as _distill
from diffjax import samplers as _samplers
from diffjax.config_lib._build import build_sde
from diffjax.config_lib._names import _PARAMETERIZATIONS, _check_int, check_number, _choice, input_shape, num_classes
from diffjax.config_lib._sampler import TIME_GRIDS

DISTILL_METRICS = {"pseudo_huber": _distill.pseudo_huber, "l2": _distill.squared_l2}
DISTILL_ODE_STEPS = {"euler": _samplers.ode_euler_step, "heun": _samplers.ode_heun_step}
DISTILL_WEIGHTINGS = {"unit": _distill.unit_weight, "ict": _distill.ict_weight}
DISTILL_PARAMETERIZATIONS = ("",) + _PARAMETERIZATIONS


def _t_eps(d) -> Optional[float]:
    """``distill.t_eps``: the boundary / last time of every distillation function (0: the process's)."""
    return check_number("distill.t_eps", d.t_eps, 0.0, math.inf) or None  # checked against T by check()


def _progressive(config):
    d, n = config.distill, int(config.training.n_jitted_steps)
    start = _check_int("distill.start_steps", d.start_steps, 2)
    final = _check_int("distill.final_steps", d.final_steps, 1)
    ratio = start // final
    if start % final or ratio < 2 or ratio & (ratio - 1):
        raise ValueError(f"distill.start_steps / distill.final_steps must be a power of 2 >= 2 (each round "
                         f"halves the steps), got start_steps={start!r}, final_steps={final!r}")
    spr = _check_int("distill.steps_per_round", d.steps_per_round, 1)
    if spr % n:
        raise ValueError(f"distill.steps_per_round={spr} must be a multiple of training.n_jitted_steps={n}")
    _choice("distill.time_grid", d.time_grid, TIME_GRIDS)
    return _distill.ProgressiveDistillation(start_steps=start, final_steps=final, steps_per_round=spr,
                                            t_eps=_t_eps(d), time_grid=TIME_GRIDS[d.time_grid])


def _consistency_fields(config, default_weighting: str) -> dict:
    """The fields both consistency methods read; ``distill.weighting=""``: the method's ``default_weighting``."""
    d = config.distill
    _choice("distill.metric", d.metric, DISTILL_METRICS)
    _choice("distill.weighting", d.weighting, ("",) + tuple(DISTILL_WEIGHTINGS))
    return dict(total_steps=int(config.training.n_iters), sample_steps=_check_int("distill.sample_steps",
                                                                                  d.sample_steps, 1),
                metric=DISTILL_METRICS[d.metric], weighting=DISTILL_WEIGHTINGS[d.weighting or default_weighting],
                t_eps=_t_eps(d))


def _consistency_distillation(config):
    d = config.distill
    _choice("distill.ode_step", d.ode_step, DISTILL_ODE_STEPS)
    return _distill.ConsistencyDistillation(
        **_consistency_fields(config, "unit"), num_scales=_check_int("distill.num_scales", d.num_scales, 2),
        ode_step=DISTILL_ODE_STEPS[d.ode_step], target_ema=check_number("distill.target_ema", d.target_ema, 0.0, 1.0))


def _consistency_training(config):
    d = config.distill
    s0, s1 = _check_int("distill.s0", d.s0, 1), _check_int("distill.s1", d.s1, 1)
    if s1 < s0:
        raise ValueError(f"distill.s1 must be >= distill.s0={s0}, got {s1!r}")
    return _distill.ConsistencyTraining(
        **_consistency_fields(config, "ict"), curriculum_steps=_check_int("distill.total_steps", d.total_steps, 0),
        s0=s0, s1=s1, rho=check_number("distill.rho", d.rho, 0.0, math.inf, lo_open=True),
        p_mean=check_number("distill.p_mean", d.p_mean, -math.inf, math.inf, lo_open=True),
        p_std=check_number("distill.p_std", d.p_std, 0.0, math.inf, lo_open=True))


# distill.time_sampling -> MeanFlow's (t, s) sampler
FLOW_MAP_TIMES = {"logit_normal": _distill.logit_normal_two_times, "uniform": _distill.uniform_two_times}


def _flow_map_fields(config) -> dict:
    d = config.distill
    check_number("distill.time_label_scale", d.time_label_scale, 0.0, math.inf, lo_open=True)
    return dict(total_steps=int(config.training.n_iters),
                sample_steps=_check_int("distill.sample_steps", d.sample_steps, 1))


def _meanflow(config):
    d = config.distill
    _choice("distill.time_sampling", d.time_sampling, FLOW_MAP_TIMES)
    return _distill.MeanFlow(**_flow_map_fields(config), time_sampler=FLOW_MAP_TIMES[d.time_sampling],
                             power=check_number("distill.adaptive_power", d.adaptive_power, 0.0, math.inf))


def _shortcut(config):
    d = config.distill
    try:
        return _distill.Shortcut(**_flow_map_fields(config),
                                 levels=_check_int("distill.shortcut_levels", d.shortcut_levels, 1))
    except ValueError as e:
        raise ValueError(f"distill.sample_steps / distill.shortcut_levels: {e}") from None


def _scm(config, method=_distill.ContinuousConsistency, **fields):
    d = config.distill
    return method(
        **_flow_map_fields(config), **fields,
        p_mean=check_number("distill.p_mean", d.p_mean, -math.inf, math.inf, lo_open=True),
        p_std=check_number("distill.p_std", d.p_std, 0.0, math.inf, lo_open=True),
        tangent_warmup=_check_int("distill.tangent_warmup", d.tangent_warmup, 0),
        normalization=check_number("distill.tangent_normalization", d.tangent_normalization, 0.0, math.inf),
        mid_time=check_number("distill.mid_time", d.mid_time, 0.0, math.inf, lo_open=True))


def _scm_distillation(config):
    tune = config.distill.get("tune_teacher", False)
    if not isinstance(tune, bool):
        raise ValueError(f"distill.tune_teacher must be True or False, got {tune!r}")
    return _scm(config, _distill.ContinuousConsistencyDistillation, tune=tune)


# distill.method -> the method object's builder (its fields checked); "": no distillation
DISTILL_METHODS = {"progressive": _progressive, "consistency_distillation": _consistency_distillation,
                   "consistency_training": _consistency_training, "meanflow": _meanflow, "shortcut": _shortcut,
                   "scm": _scm, "scm_distillation": _scm_distillation}
FLOW_MAP_METHODS = ("meanflow", "shortcut")  # their network is a FlowMapNet: u(x, t, s)


def is_flow_map(config) -> bool:
    """Whether ``config`` trains a flow map (``distill.method`` meanflow | shortcut)."""
    return config.get("distill", {}).get("method", "") in FLOW_MAP_METHODS


def distill_method(config) -> Optional[_distill.DistillMethod]:
    """The few-step method of ``distill.method`` with its ``distill.*`` fields (checked: ``ValueError`` naming the
    field), or None when ``distill.method`` is empty (a diffusion run)."""
    d = config.get("distill")
    if d is None or not d.method:
        return None
    _choice("distill.method", d.method, DISTILL_METHODS)
    return DISTILL_METHODS[d.method](config)


def distill_rounds(config) -> int:
    """The number of rounds of the config's method (progressive: ``log2(start_steps / final_steps)``)."""
    return distill_method(config).rounds


def distill_total_steps(config) -> int:
    """Optimizer steps of the whole distillation run: ``rounds x steps_per_round`` (progressive), else
    ``training.n_iters``."""
    return distill_method(config).total_steps


def distill_student_config(config):
    """The config of the student's score bridge: ``model.parameterization`` replaced by ``distill.parameterization``
    where set (progressive distillation's student output; "": the teacher's), else ``config`` itself."""
    if not config.distill.parameterization:
        return config
    student = config.copy_and_resolve_references()
    student.model.parameterization = config.distill.parameterization
    return student


def edm_preconditioned(config) -> bool:
    """Whether the config's raw network takes EDM's preconditioned input and noise label (``model.parameterization
    ="edm"``), the inputs of the consistency models' raw network."""
    return config.model.parameterization == "edm"


def validate_distill(config, *, external_teacher: bool = False) -> None:
    """Check ``config.distill`` before anything is compiled (``ValueError`` naming the field and the allowed
    values). ``external_teacher``: the caller passes the teacher as a function (no ``distill.teacher_workdir``)."""
    d = config.distill
    if not d.method:
        raise ValueError("distill.method is empty: set it to one of " + str(list(DISTILL_METHODS)))
    _choice("distill.method", d.method, DISTILL_METHODS)
    if num_classes(config):
        raise ValueError(f"distill.method={d.method!r} distils unconditional models; data.num_classes must be 0, got "
                         f"{config.data.num_classes!r}")
    method = distill_method(config)
    if method.needs_teacher and not external_teacher and not d.teacher_workdir:
        raise ValueError(f"distill.method={d.method!r} needs distill.teacher_workdir (the teacher's run directory; "
                         f"its newest checkpoint's EMA parameters are the teacher), got {d.teacher_workdir!r}")
    _choice("distill.parameterization", d.parameterization, DISTILL_PARAMETERIZATIONS)
    n = int(config.training.n_jitted_steps)
    for name in ("log_freq", "snapshot_freq", "snapshot_freq_for_preemption", "checkpoint_freq"):
        if config.training[name] % n:
            raise ValueError(f"training.{name}={config.training[name]} must be a multiple of "
                             f"training.n_jitted_steps={n}")
    sde = build_sde(config)
    try:  # the method's own checks on abstract values: nothing is compiled
        method.check(sde, jax.ShapeDtypeStruct(input_shape(config, 2), jnp.float32))
    except (ValueError, TypeError) as e:
        raise ValueError(f"distill.* settings ({d.method!r}) rejected on training.sde={config.training.sde!r}: {e}") \
            from e
