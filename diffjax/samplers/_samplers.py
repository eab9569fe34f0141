"""Whole-trajectory samplers: ``NAME(key, x_T, score_fn, sde, *, num_steps, t_eps, **options) -> x_0``.

Every sampler validates its arguments in Python (``ValueError`` naming the argument, before any tracing), then
runs one jitted function whose static arguments are ``score_fn``, ``sde`` and the options: a ``lax.scan`` /
``fori_loop`` over steps (keys by ``fold_in``), or diffrax's on-device while loop. Called inside a user's
``jax.jit`` it inlines; called twice with the same ``score_fn`` and shapes it traces once.

Conventions shared by all samplers:

* ``num_steps=None`` takes the published default (score-SDE: ``sde.N`` = 1000 steps; DDIM: 50; NCSN: 10
  noise levels x 100 Langevin steps).
* ``t_eps=None`` takes the process's own ``sde.t_eps`` (score-SDE's 1e-3 for VP / sub-VP, 1e-5 for VE).
  Continuous-time samplers integrate from ``T`` to ``t_eps`` on ``time_grid`` (default :func:`process_default`:
  uniform in t, EDM's rho-grid on EDM's process whose time is sigma; the grids of :mod:`diffjax.samplers._grids`,
  checked before tracing); annealed Langevin runs its sigma grid but never evaluates the score below ``t_eps``.
  The grid samplers ancestral and DDIM evaluate the model at each grid step's own time (the time whose marginal
  is that step's alpha-bar / sigma, step 0 included) and take no ``t_eps`` (it must be None). They need a process
  with a discrete chain (``sde.chain()``: DDPM's for VP, SMLD's for VE); any other process raises a
  ValueError naming the samplers that apply to every process.
* Dtypes: the output has ``x_T``'s dtype; the solve runs in ``promote_types(x_T.dtype, float32)``. A bfloat16 or
  float16 ``x_T`` is cast to float32 on entry, the loop carry, times and coefficients are float32, ``score_fn`` is
  called with float32 ``x`` (a half-precision network casts its input itself, e.g. a Flax module's ``dtype``), and
  the result is cast back once at the end: the float32 sampler run on ``x_T.astype(float32)``, rounded. float64
  input (with ``jax_enable_x64``) solves in float64. The same rule holds for :func:`edm_heun`, :func:`dpm_solver`,
  :func:`unipc`, :func:`inpaint` and :func:`colorize` (:mod:`diffjax.samplers._common`).
* ``denoise=True`` (score-SDE's ``noise_removal``): stochastic samplers return the noise-free mean of their last
  step; the ODE samplers then add one Tweedie step ``x + std^2 s(x, t_eps)`` (divided by the mean coefficient),
  which costs one extra score evaluation, so it defaults to False there.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from diffjax.core._checks import check_choice, check_int, check_nonnegative, check_positive
from diffjax.core._jit import jit_static
from diffjax.core._solvers import check_solver
from diffjax.core.chains import DDPMGrid, SMLDChain
from diffjax.core.learned_variance import has_learned_variance
from diffjax.core.sde import bcast, probability_flow_ode
from diffjax.discrete import ddpm as _ddpm
from diffjax.discrete import ncsn as _ncsn
from diffjax.samplers._common import (
    batch_time,
    check_common,
    floor_time,
    from_solve_dtype,
    time_dtype,
    to_solve_dtype,
    with_steps,
)
from diffjax.samplers._grids import check_time_grid, process_default
from diffjax.samplers._kernels import (
    DDIM_VARIANCES,
    ddim_step,
    euler_maruyama_step,
    langevin_corrector_step,
    ode_euler_step,
    ode_heun_step,
    reverse_diffusion_step,
)

__all__ = [
    "euler_maruyama",
    "reverse_diffusion",
    "ancestral",
    "pc",
    "annealed_langevin",
    "ode_euler",
    "ode_heun",
    "ode_adaptive",
    "ddim",
]


def _check_bool(name, value):
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


# jit with these static arguments; inlined under an outer trace or for unhashable statics (diffjax.core._jit)
_jit = jit_static


def _with_nfe(x, nfe: int, return_nfe):
    """``x``, or ``(x, nfe)`` with ``nfe`` an int32 0-d array if ``return_nfe`` (every sampler's convention)."""
    return (x, jnp.asarray(nfe, jnp.int32)) if _check_bool("return_nfe", return_nfe) else x


# score evaluations per call of the library's one-step kernels (pc's predictor / corrector)
_KERNEL_NFE = {euler_maruyama_step: 1, reverse_diffusion_step: 1}


def _kernel_nfe(name, kernel):
    """Score evaluations of one call of ``kernel`` (None: 0): a kernel of :mod:`diffjax.samplers`, or
    :func:`langevin_corrector_step` (or a ``functools.partial`` of one) with its ``n_steps``; else ValueError."""
    if kernel is None:
        return 0
    fn, kw = (kernel.func, kernel.keywords) if isinstance(kernel, functools.partial) else (kernel, {})
    if fn is langevin_corrector_step:
        return kw.get("n_steps", 1)
    for known, nfe in _KERNEL_NFE.items():  # by identity: a user's kernel object need not be hashable
        if fn is known and not (isinstance(kernel, functools.partial) and kernel.args):
            return nfe
    raise ValueError(f"{name} must be one of diffjax.samplers' kernels (euler_maruyama_step, reverse_diffusion_step, "
                     f"langevin_corrector_step) or None for return_nfe=True: the number of score evaluations of "
                     f"{kernel!r} is unknown; got return_nfe=True")


# --------------------------------------------------------------------------------------- predictor-corrector


@_jit("score_fn", "sde", "num_steps", "t_eps", "time_grid", "predictor", "corrector", "denoise")
def _pc(key, x_T, *, score_fn, sde, num_steps, t_eps, time_grid, predictor, corrector, denoise):
    x_in, x_T = x_T, to_solve_dtype(x_T)
    times = time_grid(sde, num_steps, t_eps).astype(time_dtype(x_T))

    def body(carry, inputs):
        x, _ = carry
        k, t, t_next = inputs
        key_k = jax.random.fold_in(key, k)
        x_mean = x
        if corrector is not None:
            x, x_mean = corrector(jax.random.fold_in(key_k, 0), x, t, score_fn, sde)
        if predictor is not None:
            x, x_mean = predictor(jax.random.fold_in(key_k, 1), x, t, t_next, score_fn, sde)
        return (x, x_mean), None

    (x, x_mean), _ = jax.lax.scan(body, (x_T, x_T), (jnp.arange(num_steps), times[:-1], times[1:]))
    return from_solve_dtype(x_mean if denoise else x, x_in)


@functools.lru_cache(maxsize=64)
def _langevin_corrector(snr, n_steps):
    # One object per setting, so that it is the same static argument (and the same jit cache entry) every call.
    return functools.partial(langevin_corrector_step, snr=snr, n_steps=n_steps)


def _grid_on(time_grid, process, sde, num_steps, t_eps):
    del sde
    return time_grid(process, num_steps, t_eps)


@functools.lru_cache(maxsize=64)
def _grid_on_process(time_grid, process):
    # ``time_grid`` evaluated on ``process`` whatever process the jitted loop holds (pc's holds N = num_steps for
    # the corrector); one object per pair, so it is the same static argument every call
    return functools.partial(_grid_on, time_grid, process)


def pc(key, x_T, score_fn, sde, *, num_steps=None, t_eps=None, time_grid=process_default,
       predictor=reverse_diffusion_step, corrector="langevin", snr: float = 0.16, n_corrector_steps: int = 1,
       denoise: bool = True, return_nfe: bool = False):
    """Predictor-corrector sampler (score-SDE Algorithm 1): at each time, corrector moves then one predictor step.

    Args:
        key: PRNG key.
        x_T: (batch, *dims) prior sample, e.g. ``sde.prior_sample(key, shape)``.
        score_fn: ``score_fn(x, t)``.
        sde: any forward process (VP, sub-VP, VE, rectified flow, EDM, ``gaussian_path``).
        num_steps: predictor steps (default ``sde.N``, score-SDE's 1000).
        t_eps: last time (default ``sde.t_eps``: 1e-3 VP/sub-VP, 1e-5 VE).
        time_grid: the times, ``time_grid(sde, num_steps, t_eps) -> (num_steps + 1,)`` decreasing to ``t_eps``:
            :func:`process_default` (default: uniform in t, score-SDE's; EDM's rho-grid on :func:`~diffjax.edm_sde`),
            :func:`uniform_time`, :func:`uniform_log_snr`, :func:`karras`,
            :func:`quadratic_time`, :func:`ddpm_strided` (``diffjax.samplers``) or any such hashable function.
            The Langevin corrector's step rule keeps the spacing ``T / num_steps`` of the uniform grid.
        predictor: ``predictor(key, x, t, t_next, score_fn, sde) -> (x, x_mean)``, e.g.
            :func:`reverse_diffusion_step` (default, score-SDE's for NCSN++) or :func:`euler_maruyama_step`;
            ``None`` for corrector only.
        corrector: ``corrector(key, x, t, score_fn, sde) -> (x, x_mean)``; the default "langevin" is
            :func:`langevin_corrector_step` with ``snr`` and ``n_corrector_steps``; ``None`` for predictor only.
        snr: signal-to-noise ratio of the Langevin corrector (score-SDE: 0.16).
        n_corrector_steps: Langevin steps per time (score-SDE: 1).
        denoise: return the last step's noise-free mean.
        return_nfe: also return the number of score evaluations (an int32 0-d array), as every sampler.

    Returns:
        (batch, *dims) samples at ``t_eps``, or ``(samples, nfe)`` if ``return_nfe``. Score evaluations:
        ``num_steps * (p + c)``, ``p = 1`` per predictor step (0 for None) and ``c`` per corrector step
        (``n_corrector_steps`` for "langevin"; 0 for None): ``2 num_steps`` by default.
        ``return_nfe=True`` needs predictor and corrector among diffjax's kernels (else ValueError).
    """
    num_steps, t_eps = check_common(x_T, score_fn, sde, num_steps, t_eps, default_steps=None, sampler="pc")
    check_time_grid(time_grid, sde, num_steps, t_eps)
    snr = check_positive("snr", snr)
    n_corrector_steps = check_int("n_corrector_steps", n_corrector_steps, minimum=1)
    if isinstance(corrector, str):
        check_choice("corrector", corrector, ("langevin",))
        corrector = _langevin_corrector(snr, n_corrector_steps)
    for name, fn in (("predictor", predictor), ("corrector", corrector)):
        if fn is not None and not callable(fn):
            raise ValueError(f"{name} must be a one-step kernel function or None, got {fn!r}")
    nfe = (num_steps * (_kernel_nfe("predictor", predictor) + _kernel_nfe("corrector", corrector))
           if _check_bool("return_nfe", return_nfe) else 0)
    stepped = with_steps(sde, num_steps)
    x = _pc(key, x_T, score_fn=score_fn, sde=stepped, num_steps=num_steps, t_eps=t_eps,
            time_grid=time_grid if stepped is sde else _grid_on_process(time_grid, sde),
            predictor=predictor, corrector=corrector, denoise=_check_bool("denoise", denoise))
    return _with_nfe(x, nfe, return_nfe)


def euler_maruyama(key, x_T, score_fn, sde, *, num_steps=None, t_eps=None, time_grid=process_default,
                   denoise: bool = True, return_nfe: bool = False):
    """Euler-Maruyama on the reverse-time SDE: ``num_steps`` steps (default ``sde.N``) from ``T`` to ``t_eps`` on
    ``time_grid`` (default :func:`process_default`).

    Args are as in :func:`pc`. Returns (batch, *dims), or ``(x, nfe)`` if ``return_nfe``; ``num_steps`` score
    evaluations.
    """
    num_steps, t_eps = check_common(x_T, score_fn, sde, num_steps, t_eps, default_steps=None,
                                    sampler="euler_maruyama")
    check_time_grid(time_grid, sde, num_steps, t_eps)
    _check_bool("return_nfe", return_nfe)
    x = _pc(key, x_T, score_fn=score_fn, sde=sde, num_steps=num_steps, t_eps=t_eps, time_grid=time_grid,
            predictor=euler_maruyama_step, corrector=None, denoise=_check_bool("denoise", denoise))
    return _with_nfe(x, num_steps, return_nfe)


def reverse_diffusion(key, x_T, score_fn, sde, *, num_steps=None, t_eps=None, time_grid=process_default,
                      denoise: bool = True, return_nfe: bool = False):
    """Reverse diffusion (score-SDE eq. 47): the forward chain of DDPM (VP) / SMLD (VE) run backwards, between the
    times of ``time_grid`` (default :func:`process_default`).

    Args are as in :func:`pc`. Returns (batch, *dims), or ``(x, nfe)`` if ``return_nfe``; ``num_steps`` score
    evaluations.
    """
    num_steps, t_eps = check_common(x_T, score_fn, sde, num_steps, t_eps, default_steps=None,
                                    sampler="reverse_diffusion")
    check_time_grid(time_grid, sde, num_steps, t_eps)
    _check_bool("return_nfe", return_nfe)
    x = _pc(key, x_T, score_fn=score_fn, sde=sde, num_steps=num_steps, t_eps=t_eps, time_grid=time_grid,
            predictor=reverse_diffusion_step, corrector=None, denoise=_check_bool("denoise", denoise))
    return _with_nfe(x, num_steps, return_nfe)


# ------------------------------------------------------------------------------------------ discrete grids


@_jit("score_fn", "sde", "num_steps", "variance")
def _ancestral(key, x_T, *, score_fn, sde, num_steps, variance):
    # Every step evaluates the model at its own grid time (no t_eps floor): grid.time(i) for DDPM, sigma_i's time
    # for SMLD. The process offers its chain (sde.chain()), which carries its own ancestral step.
    x_in, x_T = x_T, to_solve_dtype(x_T)
    if num_steps == 1:  # the one exact step from the prior at T to the data (see ancestral)
        return from_solve_dtype(_tweedie(x_T, sde.T, score_fn, sde), x_in)
    chain = sde.chain()

    def body(carry, i):
        x, _ = carry
        return chain.ancestral_step(jax.random.fold_in(key, i), x, i, score_fn, variance=variance), None

    (x, x_mean), _ = jax.lax.scan(body, (x_T, x_T), jnp.arange(num_steps - 1, -1, -1))
    return from_solve_dtype(x_mean, x_in)


def _grid_t_eps(t_eps, sampler):
    if t_eps is not None:
        raise ValueError(f"t_eps must be None for {sampler}, got {t_eps!r}: a grid sampler evaluates the model at "
                         f"each grid step's own time (the time whose marginal is that step's alpha_bar / sigma), "
                         f"so there is no last time to choose; set num_steps instead")


def _resolve_variance(variance, score_fn, allowed, fixed_default):
    if variance is None:
        return "learned" if has_learned_variance(score_fn) else fixed_default
    check_choice("variance", variance, allowed)
    if variance == "learned" and not has_learned_variance(score_fn):
        raise ValueError(f"variance='learned' needs a score_fn with a learned variance (a LearnedVarianceScore with "
                         f"score_and_v, e.g. make_score_fn(..., learned_sigma=True)), got {score_fn!r}; allowed "
                         f"for this score_fn: {[a for a in allowed if a != 'learned']}")
    return variance


def _checked_chain(sde, num_steps: int):
    """The ``num_steps``-step chain of ``sde``, concrete; it must exist (``num_steps = 1`` takes the exact step from
    ``T`` instead, see :func:`ancestral`: then the chain of ``sde.N`` steps). Score-SDE's linear betas
    ``beta(t_i) / N`` reach ``beta_max / N`` at the top, >= 1 for ``N <= beta_max``: the DDPM chain's own check
    raises."""
    try:
        with jax.ensure_compile_time_eval():  # concrete even inside a caller's jit
            return with_steps(sde, num_steps if num_steps > 1 else sde.N).chain()
    except ValueError as e:
        raise ValueError(f"num_steps={num_steps} is too few for ancestral sampling of {sde!r}, whose {num_steps}-step "
                         f"chain does not exist ({e}); allowed: num_steps=1 (one step from T to the data) or enough "
                         f"steps that every beta < 1. For fewer steps of DDPM's step use the strided chain of the "
                         f"sde.N-step grid: ddim(..., num_steps={num_steps}, eta=1.0, variance='beta', "
                         f"spacing='trailing')") from None


def ancestral(key, x_T, score_fn, sde, *, num_steps=None, t_eps=None, variance=None, return_nfe: bool = False):
    """Ancestral sampling on the model's own discrete chain: DDPM Algorithm 2 for VP, SMLD's (score-SDE eq. 47
    with the posterior variance) for VE, over ``num_steps`` grid steps (default ``sde.N`` = 1000).

    Step ``i`` evaluates the model at its own grid time: for VP ``grid.time(i)``, the time at which the SDE's
    marginal equals the grid's ``alpha_bar_i`` (:func:`diffjax.discrete.ddpm_grid`), so a discrete DDPM model
    (scored through its :class:`~diffjax.discrete.DDPMGrid`) sees exactly step ``i`` and a continuous-time model
    exactly ``alpha_bar_i``; for VE ``i/(N-1) T``, where ``sigma(t)`` is the grid's ``sigma_i``.

    Args:
        key, x_T, score_fn: as in :func:`pc`.
        sde: a :class:`~diffjax.VPSDE` (discretized as :func:`diffjax.discrete.ddpm_grid` with ``N = num_steps``)
            or a :class:`~diffjax.VESDE` (``num_steps`` geometric sigmas). sub-VP has no such chain: ValueError.
        num_steps: grid steps, each one score evaluation (default ``sde.N``). ``num_steps = 1`` is the one exact
            step of the chain from the prior at ``T`` to the data: the posterior mean
            ``E[x_0 | x_T] = (x_T + s(T)^2 score(x_T, T)) / a(T)`` (DDPM's step with ``beta = 1 - alpha_bar(T)``,
            SMLD's from ``sigma_max`` to 0; no noise on a last step), like a one-step :func:`ddim`. (The chains of
            score-SDE's discretization at ``N = 1`` hold their lowest level only, ``beta_min`` or ``sigma_min``,
            and would return about ``x_T``.) On a VP SDE with score-SDE's linear betas ``beta_i = beta(t_i) / N``,
            ``2 <= num_steps <= beta_max`` (20 for ``vp_sde()``) raises ValueError: the top beta
            ``beta_max / num_steps`` reaches 1, so no such chain exists; the strided chain of the ``sde.N``-step
            grid, ``ddim(..., eta=1.0, variance="beta", spacing="trailing")``, is DDPM's step with any number of
            steps. The cosine VP's clipped betas and VE's sigmas make a chain for every ``num_steps``.
        t_eps: must be None: the grid fixes every evaluation time (step 0 is the lowest; ValueError otherwise).
        variance: DDPM only: "beta" (``sigma_i^2 = beta_i``, DDPM's), "posterior" (``beta_tilde_i``) or "learned"
            (improved DDPM's ``Sigma_theta`` from the model's ``v``; needs a
            :class:`~diffjax.LearnedVarianceScore`, e.g. ``make_score_fn(..., learned_sigma=True)``).
            Default None: "learned" when ``score_fn`` has a learned variance (improved DDPM samples with it),
            else "beta".
        return_nfe: also return the number of score evaluations (an int32 0-d array).

    Returns:
        (batch, *dims): the last step's mean (step 0 adds no noise); ``(x, nfe)`` if ``return_nfe``.
        ``num_steps`` score (model) evaluations.
    """
    _grid_t_eps(t_eps, "ancestral")
    num_steps, _ = check_common(x_T, score_fn, sde, num_steps, None, default_steps=None,
                                chains=(DDPMGrid, SMLDChain), sampler="ancestral (DDPM for VP, SMLD for VE)")
    chain = _checked_chain(sde, num_steps)
    if chain.variances:  # the options of the chain's ancestral step, its default first
        variance = _resolve_variance(variance, score_fn, chain.variances, chain.variances[0])
    elif variance is not None:
        raise ValueError(f"variance is a DDPM (VP) option; the ancestral step of {type(sde).__name__}'s "
                         f"{type(chain).__name__} (SMLD's on a VESDE) has the posterior variance only: pass "
                         f"variance=None, got {variance!r}")
    _check_bool("return_nfe", return_nfe)
    x = _ancestral(key, x_T, score_fn=score_fn, sde=with_steps(sde, num_steps), num_steps=num_steps,
                   variance=variance)
    return _with_nfe(x, num_steps, return_nfe)


@_jit("score_fn", "sde", "num_steps", "t_eps", "n_steps_each", "step_lr", "denoise")
def _annealed_langevin(key, x_T, *, score_fn, sde, num_steps, t_eps, n_steps_each, step_lr, denoise):
    x_in, x_T = x_T, to_solve_dtype(x_T)
    grid = _ncsn.ncsn_grid(sde, num_steps)
    sigmas = grid.sigmas()
    score = floor_time(score_fn, t_eps)

    def body(x, level):
        step_size = _ncsn.ncsn_step_size(sigmas[level], sigmas[-1], step_lr=step_lr)
        x = _ncsn.annealed_langevin_level(jax.random.fold_in(key, level), x, grid.time(level), score,
                                          step_size=step_size, n_steps=n_steps_each)
        return x, None

    x, _ = jax.lax.scan(body, x_T, jnp.arange(num_steps))
    if denoise:
        x = x + sigmas[-1] ** 2 * score(x, batch_time(grid.time(num_steps - 1), x))
    return from_solve_dtype(x, x_in)


def annealed_langevin(key, x_T, score_fn, sde, *, num_steps: int = 10, t_eps=None, n_steps_each: int = 100,
                      step_lr: float = 2e-5, denoise: bool = False, return_nfe: bool = False):
    """NCSN's annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1) on a VE SDE.

    ``num_steps`` geometric noise levels from ``sde.sigma_max`` to ``sde.sigma_min``, at each ``n_steps_each``
    Langevin steps ``x + alpha_i/2 s + sqrt(alpha_i) z`` of size ``alpha_i = step_lr * sigma_i^2 / sigma_L^2``, via
    :func:`diffjax.discrete.ncsn.annealed_langevin_level`. The defaults are the NCSN paper's published setting,
    :data:`diffjax.discrete.ncsn.NCSN_SAMPLING`: L = 10, T = 100, eps = 2e-5, no final denoising (its sigmas run
    1 .. 0.01: ``ve_sde(sigma_min=0.01, sigma_max=1.0)``). NCSNv2's CIFAR-10 setting (Song & Ermon 2020; 232
    levels over ``ve_sde()``'s 50 .. 0.01, T = 5, its eps = 6.2e-6 in the ``eps s + sqrt(2 eps) z`` form, and the
    final denoising step) is ``**diffjax.discrete.ncsn.NCSNV2_CIFAR10_SAMPLING``.

    Args:
        key, x_T, score_fn: as in :func:`pc` (``x_T`` ~ N(0, sigma_max^2), e.g. ``sde.prior_sample``).
        sde: a :class:`~diffjax.VESDE`.
        num_steps: noise levels L (NCSN: 10).
        t_eps: lowest time at which the score is evaluated.
        n_steps_each: Langevin steps per level T (NCSN: 100).
        step_lr: eps of the step-size rule (NCSN: 2e-5). The released NCSN code steps ``eps_i s + sqrt(2 eps_i) z``
            with the same eps, twice the paper's step: ``step_lr=4e-5`` reproduces it.
        denoise: finish with NCSNv2's Tweedie step ``x + sigma_L^2 s(x, sigma_L)`` (NCSN: no).
        return_nfe: also return the number of score evaluations (an int32 0-d array).

    Returns:
        (batch, *dims), or ``(x, nfe)`` if ``return_nfe``; ``num_steps * n_steps_each (+1 if denoise)`` score
        evaluations.
    """
    num_steps, t_eps = check_common(x_T, score_fn, sde, num_steps, t_eps, default_steps=10, chains=(SMLDChain,),
                                    sampler="annealed_langevin (NCSN)")
    n_steps_each = check_int("n_steps_each", n_steps_each, minimum=1)
    step_lr = check_positive("step_lr", step_lr)
    denoise = _check_bool("denoise", denoise)
    _check_bool("return_nfe", return_nfe)
    x = _annealed_langevin(key, x_T, score_fn=score_fn, sde=sde, num_steps=num_steps, t_eps=t_eps,
                           n_steps_each=n_steps_each, step_lr=step_lr, denoise=denoise)
    return _with_nfe(x, num_steps * n_steps_each + denoise, return_nfe)


def _ddim_steps(grid, num_steps: int, spacing: str) -> np.ndarray:
    """DDIM's sub-sequence ``tau`` (static NumPy indices, increasing): :meth:`~diffjax.discrete.DDPMGrid.subsequence`,
    except that a single step is the top step ``N - 1`` for every spacing ("leading" and "linspace" pick step 0 for
    ``num_steps = 1``, as diffusers and the DDIM code do, and that one step from ``alpha_bar_0 = 1 - beta_0`` leaves
    ``x_T`` all but unchanged)."""
    if num_steps == 1:
        return np.asarray([grid.N - 1], np.int32)
    return grid.subsequence(num_steps, spacing=spacing)


@_jit("score_fn", "sde", "num_steps", "eta", "spacing", "variance", "clip_x0")
def _ddim(key, x_T, *, score_fn, sde, num_steps, eta, spacing, variance, clip_x0):
    x_in, x_T = x_T, to_solve_dtype(x_T)
    grid = _ddpm.ddpm_grid(sde)
    seq = _ddim_steps(grid, num_steps, spacing)
    prev = [-1] + list(seq[:-1])  # tau_{j-1}; -1: the data (alpha_bar = 1)

    def body(carry, inputs):
        x, _ = carry
        k, i, i_prev = inputs
        return ddim_step(jax.random.fold_in(key, k), x, i, i_prev, score_fn, grid, eta=eta, variance=variance,
                         clip_x0=clip_x0), None

    inputs = (jnp.arange(num_steps), jnp.asarray(seq[::-1], jnp.int32), jnp.asarray(prev[::-1], jnp.int32))
    (x, x0), _ = jax.lax.scan(body, (x_T, x_T), inputs)
    return from_solve_dtype(x, x_in)


def ddim(key, x_T, score_fn, sde, *, num_steps: int = 50, t_eps=None, eta: float = 0.0, spacing: str = "leading",
         variance=None, clip_x0: bool = False, return_nfe: bool = False):
    """DDIM (Song, Meng & Ermon 2021) on a strided sub-sequence ``tau`` of the DDPM grid of a VP SDE.

    ``tau`` is ``num_steps`` indices of the ``sde.N``-step grid :func:`diffjax.discrete.ddpm_grid`, chosen by
    ``spacing`` (:meth:`diffjax.discrete.DDPMGrid.subsequence`), walked from the top down; the last step goes from
    ``tau_0`` to the data (``alpha_bar = 1``, diffusers' ``set_alpha_to_one=True``). Step ``tau_j`` evaluates the
    model at its own grid time ``grid.time(tau_j)`` (a discrete model sees exactly that step, a continuous one
    exactly its ``alpha_bar``), and steps to ``tau_{j-1}``, the next element of ``tau`` (diffusers steps to
    ``tau_j - N // S`` instead, the same for "leading"). The score drives it through
    ``eps = -sqrt(1 - abar) * score``.

    Args:
        key, x_T, score_fn: as in :func:`pc`.
        sde: a :class:`~diffjax.VPSDE`.
        num_steps: length of the sub-sequence, 1 .. ``sde.N`` (default 50, DDIM's CIFAR-10 setting). One step
            goes from the top step ``N - 1`` to the data, whatever the spacing: the posterior mean ``E[x_0 | x]``
            there ("leading" and "linspace" would pick step 0, as diffusers and the DDIM code do, and return about
            ``x_T``).
        t_eps: must be None: the grid fixes every evaluation time (ValueError otherwise).
        eta: 0 deterministic (DDIM), 1 ancestral (DDPM on the sub-sequence).
        spacing: diffusers' ``timestep_spacing``: "leading" (default; ``j * (N // num_steps)``, the DDIM paper's
            "linear" selection used for its CelebA and LSUN experiments -- its CIFAR-10 runs used a "quadratic" one),
            "trailing" (starts at step ``N-1``) or "linspace" (improved DDPM's respacing).
        variance: what ``eta`` scales (the noise variance is ``eta^2`` times it, the mean is DDIM's):
            "posterior" (``beta_tilde`` of the strided step, DDIM's ``sigma_eta``), "beta" (its ``beta``) or
            "learned" (improved DDPM's ``Sigma_theta`` from the model's ``v`` on the strided step; needs a
            :class:`~diffjax.LearnedVarianceScore`). At ``eta = 1`` each is the ancestral step of the strided chain
            with that variance; "learned" with ``spacing="linspace"`` is improved DDPM's respaced sampler.
            Default None: "learned" when ``score_fn`` has a learned variance, else "posterior". (guided-diffusion's
            ``ddim_sample`` ignores a learned variance and uses ``sigma_eta``: pass ``variance="posterior"``.)
        clip_x0: clip the predicted ``x0`` to ``[-1, 1]`` in the step's ``x0`` term only, keeping the network's
            ``eps`` in the direction term: diffusers' ``DDIMScheduler(clip_sample=True)`` with its default
            ``use_clipped_model_output=False``. (:func:`~diffjax.clip_denoised` on ``score_fn`` is the other
            convention: ``eps`` recomputed from the clipped ``x0``, as in improved-diffusion and GLIDE.)
        return_nfe: also return the number of score evaluations (an int32 0-d array).

    Returns:
        (batch, *dims), or ``(x, nfe)`` if ``return_nfe``; ``num_steps`` score evaluations.
    """
    _grid_t_eps(t_eps, "ddim")
    num_steps, _ = check_common(x_T, score_fn, sde, num_steps, None, default_steps=50, chains=(DDPMGrid,),
                                sampler="ddim (a DDPM grid)")
    if num_steps > sde.N:
        raise ValueError(f"num_steps must be <= sde.N={sde.N} for ddim, got {num_steps!r}")
    eta = check_nonnegative("eta", eta)
    check_choice("spacing", spacing, _ddpm.DDIM_SPACINGS)
    variance = _resolve_variance(variance, score_fn, DDIM_VARIANCES, "posterior")
    _check_bool("clip_x0", clip_x0)
    _check_bool("return_nfe", return_nfe)
    x = _ddim(key, x_T, score_fn=score_fn, sde=sde, num_steps=num_steps, eta=eta, spacing=spacing,
              variance=variance, clip_x0=clip_x0)
    return _with_nfe(x, num_steps, return_nfe)


# ------------------------------------------------------------------------------------ probability-flow ODE


def _tweedie(x, t, score_fn, sde):
    tb = batch_time(t, x)
    mean, std = sde.marginal(tb)
    return (x + bcast(std**2, x) * score_fn(x, tb)) / bcast(mean, x)


@_jit("score_fn", "sde", "num_steps", "t_eps", "time_grid", "heun", "denoise")
def _ode_fixed(key, x_T, *, score_fn, sde, num_steps, t_eps, time_grid, heun, denoise):
    del key
    x_in, x_T = x_T, to_solve_dtype(x_T)
    times = time_grid(sde, num_steps, t_eps).astype(time_dtype(x_T))
    step = ode_heun_step if heun else ode_euler_step

    def body(x, inputs):
        t, t_next = inputs
        return step(x, t, t_next, score_fn, sde), None

    x, _ = jax.lax.scan(body, x_T, (times[:-1], times[1:]))
    return from_solve_dtype(_tweedie(x, t_eps, score_fn, sde) if denoise else x, x_in)


def ode_euler(key, x_T, score_fn, sde, *, num_steps=None, t_eps=None, time_grid=process_default,
              denoise: bool = False, return_nfe: bool = False):
    """Euler's method on the probability-flow ODE, ``num_steps`` steps (default ``sde.N``) to ``t_eps`` on
    ``time_grid`` (default :func:`process_default`; see :func:`pc`).

    Deterministic (``key`` is unused, kept for the common signature). ``num_steps`` (+1 if ``denoise``) score
    evaluations; ``return_nfe=True`` returns ``(x, nfe)`` (nfe an int32 0-d array).
    """
    num_steps, t_eps = check_common(x_T, score_fn, sde, num_steps, t_eps, default_steps=None, sampler="ode_euler")
    check_time_grid(time_grid, sde, num_steps, t_eps)
    denoise = _check_bool("denoise", denoise)
    _check_bool("return_nfe", return_nfe)
    x = _ode_fixed(key, x_T, score_fn=score_fn, sde=sde, num_steps=num_steps, t_eps=t_eps, time_grid=time_grid,
                   heun=False, denoise=denoise)
    return _with_nfe(x, num_steps + denoise, return_nfe)


def ode_heun(key, x_T, score_fn, sde, *, num_steps: int = 100, t_eps=None, time_grid=process_default,
             denoise: bool = False, return_nfe: bool = False):
    """Heun's method (2nd order) on the probability-flow ODE, ``num_steps`` steps to ``t_eps`` on ``time_grid``
    (default :func:`process_default`; see :func:`pc`). EDM's Heun sampler with its last step to ``sigma = 0`` and
    stochastic churn is :func:`edm_heun`.

    Default 100 steps (200 score evaluations): on the exact-score benchmarks of ``experiments/bench`` its
    sample distance is then at the level of the data's own sampling noise. Deterministic; ``2 num_steps``
    (+1 if ``denoise``) score evaluations; ``return_nfe=True`` returns ``(x, nfe)`` (nfe an int32 0-d array).
    """
    num_steps, t_eps = check_common(x_T, score_fn, sde, num_steps, t_eps, default_steps=100, sampler="ode_heun")
    check_time_grid(time_grid, sde, num_steps, t_eps)
    denoise = _check_bool("denoise", denoise)
    _check_bool("return_nfe", return_nfe)
    x = _ode_fixed(key, x_T, score_fn=score_fn, sde=sde, num_steps=num_steps, t_eps=t_eps, time_grid=time_grid,
                   heun=True, denoise=denoise)
    return _with_nfe(x, 2 * num_steps + denoise, return_nfe)


def _explicit_spec(x):
    """The PartitionSpec of ``x`` if it is sharded over Explicit mesh axes (sharding in types), else None."""
    sharding = getattr(jax.typeof(x), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or AxisType.Explicit not in tuple(getattr(mesh, "axis_types", ())):
        return None
    return sharding.spec if any(p is not None for p in sharding.spec) else None


def _with_input_sharding(run, key, x_T):
    """Run ``run(key, x_T, sharding=...)`` so that its ``(x, nfe)`` keeps ``x_T``'s sharding.

    Explicit axes: diffrax's loop state is created unsharded, so run it in auto mode (``auto_axes``) and ask for
    ``x_T``'s spec back. A concrete array on an automatic mesh: pin the loop state to its sharding.
    """
    spec = _explicit_spec(x_T)
    if spec is not None:
        auto = jax.sharding.auto_axes(functools.partial(run, sharding=None), out_sharding=(spec, P()))
        if isinstance(x_T, jax.core.Tracer):
            with jax.sharding.use_abstract_mesh(jax.typeof(x_T).sharding.mesh):
                return auto(key, x_T)
        with jax.set_mesh(x_T.sharding.mesh):
            return auto(key, x_T)
    sharding = None
    if not isinstance(x_T, jax.core.Tracer) and isinstance(getattr(x_T, "sharding", None), NamedSharding):
        sharding = x_T.sharding
    return run(key, x_T, sharding=sharding)


@_jit("score_fn", "sde", "t_eps", "rtol", "atol", "solver", "max_steps", "denoise", "sharding")
def _ode_adaptive(key, x_T, *, score_fn, sde, t_eps, rtol, atol, solver, max_steps, denoise, sharding):
    # solver: a diffrax solver object, a static argument (equinox modules hash and compare by value: no retrace)
    import diffrax  # imported on first use: the core and the other samplers do not need it

    del key
    vf = probability_flow_ode(sde, score_fn)
    # diffrax's while loop drops an automatic input sharding unless the state is pinned to it.
    pin = (lambda y: y) if sharding is None else (lambda y: jax.lax.with_sharding_constraint(y, sharding))
    x_in, x_T = x_T, pin(to_solve_dtype(x_T))
    term = diffrax.ODETerm(lambda t, y, args: pin(vf(pin(y), batch_time(t, y))))
    sol = diffrax.diffeqsolve(term, solver, t0=sde.T, t1=t_eps, dt0=None, y0=x_T,
                              stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
                              saveat=diffrax.SaveAt(t1=True), max_steps=max_steps)
    x = pin(sol.ys[0])
    nfe_fixed, nfe_per_step = check_solver(solver)[1]  # e.g. Dopri5, Tsit5 (FSAL): 1 + 6 per attempted step
    nfe = nfe_fixed + nfe_per_step * sol.stats["num_steps"]
    if denoise:
        x, nfe = _tweedie(x, t_eps, score_fn, sde), nfe + 1
    return from_solve_dtype(x, x_in), nfe


def ode_adaptive(key, x_T, score_fn, sde, *, t_eps=None, rtol: float = 1e-5, atol: float = 1e-5,
                 solver=None, max_steps: int = 4096, denoise: bool = False, return_nfe: bool = False):
    """Adaptive Runge-Kutta on the probability-flow ODE, on device with diffrax (score-SDE's RK45 setting).

    Args:
        key, x_T, score_fn, sde, t_eps: as in :func:`pc` (``key`` unused: the sampler is deterministic).
        rtol, atol: tolerances of the PID step-size controller (score-SDE: 1e-5 both). The error norm is the RMS
            over the whole batch, so the batch shares one step sequence (as in score-SDE).
        solver: a diffrax explicit Runge-Kutta solver object with an error estimate, as in
            ``diffrax.diffeqsolve``: ``diffrax.Dopri5()`` (Dormand-Prince 5(4), scipy's RK45; the default, ``None``),
            ``diffrax.Tsit5()``, ``diffrax.Bosh3()``, ... (a config names it: ``sampling.options.solver="tsit5"``,
            resolved by :mod:`diffjax.config_lib`). The same convention as :func:`diffjax.log_likelihood`.
        max_steps: the solver's step budget (there is no ``num_steps``: the controller picks the steps).
        denoise: finish with one Tweedie step at ``t_eps``.
        return_nfe: also return the number of score evaluations (an int32 array).

    Returns:
        ``x_0`` (batch, *dims), or ``(x_0, nfe)`` if ``return_nfe``.
    """
    _, t_eps = check_common(x_T, score_fn, sde, 1, t_eps, default_steps=1, sampler="ode_adaptive")
    rtol, atol = check_positive("rtol", rtol), check_positive("atol", atol)
    solver = check_solver(solver)[0]
    max_steps = check_int("max_steps", max_steps, minimum=1)
    run = functools.partial(_ode_adaptive, score_fn=score_fn, sde=sde, t_eps=t_eps, rtol=rtol, atol=atol,
                            solver=solver, max_steps=max_steps, denoise=_check_bool("denoise", denoise))
    _check_bool("return_nfe", return_nfe)
    x, nfe = _with_input_sharding(run, key, x_T)
    return _with_nfe(x, nfe, return_nfe)
