"""The sampler of ``sampling.method`` with ``sampling.num_steps``, ``sampling.t_eps`` and ``sampling.options``.

``sampling.options`` holds the samplers' keyword options. Which ones exist, and their types, comes from the samplers'
signatures (inspect): :func:`sampler_options`. ``configs/default.py`` declares them as typed ``None`` placeholders
(so ``--config.sampling.options.eta=1.0`` parses as the option's type) without importing the library; here, when
the config is read, the options that are set are checked against the chosen sampler, option names (a solver, a time
grid, a corrector) are resolved to what the sampler takes, and the sampler's own argument checks run on an abstract
input (:func:`check_sampler`)."""
from __future__ import annotations

import functools
import inspect
import math
import numbers
import re
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections

import diffjax.core as core
from diffjax import samplers as _samplers
from diffjax.config_lib._names import _check_int, _choice, input_shape

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

_STEP_ARGS = ("num_steps", "t_eps")                 # sampling.num_steps / sampling.t_eps
_NOT_CONFIG_OPTIONS = ("return_nfe",)               # changes what the sampler returns: Python only
_OPTION_TYPES = {t.__name__: t for t in (bool, int, float, str)}
# Options a sampler takes as an object and a config names with a string, resolved here once (diffrax on first use):
# sampling.options.solver="tsit5" -> ode_adaptive(..., solver=diffrax.Tsit5()).
SOLVERS = {"dopri5": "Dopri5", "tsit5": "Tsit5"}
# sampling.options.time_grid="karras" -> the samplers' time_grid=diffjax.samplers.karras_grid (the same object each
# time)
TIME_GRIDS = {
    "default": _samplers.process_default,
    "uniform": _samplers.uniform_time_grid,
    "log_snr": _samplers.uniform_log_snr_grid,
    "karras": _samplers.karras_grid,
    "quadratic": _samplers.quadratic_time_grid,
    "ddpm_leading": _samplers.ddpm_strided("leading"),
    "ddpm_trailing": _samplers.ddpm_strided("trailing"),
    "ddpm_linspace": _samplers.ddpm_strided("linspace"),
}
# sampling.options.corrector="langevin" -> pc's corrector=diffjax.samplers.langevin_corrector_step (pc binds its
# snr and n_corrector_steps, sampling.options.snr / n_corrector_steps)
CORRECTORS = {"langevin": _samplers.langevin_corrector_step}


def _solver(name: str):
    import diffrax  # slow to import: only when a config names a solver
    return getattr(diffrax, SOLVERS[name])()


# option -> (its names, how a name is resolved)
_NAMED_OPTIONS = {"solver": (SOLVERS, _solver), "time_grid": (TIME_GRIDS, TIME_GRIDS.__getitem__),
                  "corrector": (CORRECTORS, CORRECTORS.__getitem__)}


def _resolve_named_option(name: str, value):
    if name not in _NAMED_OPTIONS or not isinstance(value, str):
        return value
    names, resolve = _NAMED_OPTIONS[name]
    if value not in names:
        raise ValueError(f"sampling.options.{name} must be one of {tuple(names)}, got {value!r}")
    return resolve(value)


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
    ``time_grid``: a name of ``TIME_GRIDS``, resolved to the grid function; ``corrector``: ``CORRECTORS``)."""
    _choice("sampling.method", method, SAMPLERS)
    return {n: t for n, t in ((n, str if n in _NAMED_OPTIONS else _option_type(p))
                              for n, p in _keyword_options(method).items()) if t is not None}


def options_listing() -> str:
    return "; ".join(f"{m}: {', '.join(sampler_options(m)) or '(none)'}" for m in sorted(SAMPLERS))


def sampler_options_config() -> ml_collections.ConfigDict:
    """A ``sampling.options`` section: a ``None`` placeholder typed from the signatures for every option of every
    sampler (what ``configs/default.py`` declares), so a locked config takes ``--config.sampling.options.eta=1.0``
    (parsed as the option's type). :func:`build_sampler` passes on only the options that are set, and rejects one
    the chosen sampler does not have."""
    types: dict = {}
    for method in sorted(SAMPLERS):
        for name, typ in sampler_options(method).items():
            if types.setdefault(name, typ) is not typ:
                types[name] = object  # samplers disagree on the type: read any Python literal
    options = ml_collections.ConfigDict()
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
    _check_int("sampling.num_steps", s.num_steps, 0, " (0: the sampler's default)")
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


def check_sampler(config, sde) -> None:
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
    see :func:`sampler_options`). :func:`~diffjax.config_lib.validate` checks all of them against the sampler
    beforehand."""
    return functools.partial(SAMPLERS[config.sampling.method], **_sampler_kwargs(config))
