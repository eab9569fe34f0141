"""Reverse-time SDE samplers (predictor-corrector family): :func:`pc`, :func:`euler_maruyama`,
:func:`reverse_diffusion`; and the conventions every sampler shares.

Every sampler ``NAME(key, x_T, score_fn, process, *, num_steps, t_eps, **options) -> x_0`` validates its arguments in
Python (``ValueError`` naming the argument, before any tracing; :func:`~diffjax.samplers._common.check_common`),
builds a step object and a time grid, and runs the one loop :func:`~diffjax.samplers._driver.sample_steps`, jitted
with the step as its static argument (or diffrax's on-device while loop: :func:`ode_adaptive`). Called inside a
user's ``jax.jit`` it inlines; called twice with the same ``score_fn`` and shapes it traces once. The keyword
``sde=`` is the deprecated name of ``process`` (a ``DeprecationWarning``).

Conventions shared by all samplers:

* ``num_steps=None`` takes the published default (score-SDE: ``process.N`` = 1000 steps; DDIM: 50; NCSN: 10
  noise levels x 100 Langevin steps).
* ``t_eps=None`` takes the process's own ``process.t_eps`` (score-SDE's 1e-3 for VP / sub-VP, 1e-5 for VE).
  Continuous-time samplers integrate from ``T`` to ``t_eps`` on ``time_grid`` (default :func:`process_default`:
  uniform in t, EDM's rho-grid on EDM's process whose time is sigma; the grids of :mod:`diffjax.samplers._grids`,
  checked before tracing); annealed Langevin runs its sigma grid but never evaluates the score below ``t_eps``.
  The grid samplers ancestral and DDIM evaluate the model at each grid step's own time (the time whose marginal
  is that step's alpha-bar / sigma, step 0 included) and take no ``t_eps`` (it must be None). They need a process
  with a discrete chain ("ddpm" for VP, "smld" for VE); any other process raises a ValueError naming the samplers
  that apply to every process.
* Dtypes: the output has ``x_T``'s dtype; the solve runs in ``promote_types(x_T.dtype, float32)``. A bfloat16 or
  float16 ``x_T`` is cast to float32 on entry, the loop carry, times and coefficients are float32, ``score_fn`` is
  called with float32 ``x`` (a half-precision network casts its input itself, e.g. a Flax module's ``dtype``), and
  the result is cast back once at the end: the float32 sampler run on ``x_T.astype(float32)``, rounded. float64
  input (with ``jax_enable_x64``) solves in float64 (:mod:`diffjax.samplers._common`).
* ``denoise=True`` (score-SDE's ``noise_removal``): stochastic samplers return the noise-free mean of their last
  step; the ODE samplers then add one Tweedie step ``x + std^2 s(x, t_eps)`` (divided by the mean coefficient),
  which costs one extra score evaluation, so it defaults to False there.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import jax

from diffjax.core._checks import check_choice, check_int, check_positive
from diffjax.samplers._common import check_common, deprecated_sde_keyword, with_steps
from diffjax.samplers._driver import sample_steps
from diffjax.samplers._grids import check_time_grid, process_default
from diffjax.samplers._kernels import (
    LangevinCorrector,
    euler_maruyama_step,
    langevin_corrector_step,
    reverse_diffusion_step,
)

__all__ = ["euler_maruyama", "reverse_diffusion", "pc"]


def kernel_nfe(kernel) -> Optional[int]:
    """Score evaluations of one call of ``kernel`` (None: 0): a kernel of :mod:`diffjax.samplers`, a
    :class:`LangevinCorrector`, or :func:`langevin_corrector_step` (or a ``functools.partial`` of one) with its
    ``n_steps``; None for any other kernel (unknown)."""
    if kernel is None:
        return 0
    if isinstance(kernel, LangevinCorrector):
        return kernel.n_steps
    fn, kw = (kernel.func, kernel.keywords) if isinstance(kernel, functools.partial) else (kernel, {})
    if fn is langevin_corrector_step:
        return kw.get("n_steps", 1)
    bare = not (isinstance(kernel, functools.partial) and kernel.args)
    # by identity: a user's kernel object need not be hashable
    return 1 if bare and any(fn is k for k in (euler_maruyama_step, reverse_diffusion_step)) else None


@dataclasses.dataclass(frozen=True)
class PCStep:
    """One predictor-corrector step (score-SDE Algorithm 1): the corrector at ``t``, then the predictor to ``t_next``.

    The kernels get step ``k``'s key folded with 0 (corrector) and 1 (predictor); the state is ``(x, x_mean)``.
    """
    score_fn: Callable
    process: Any  # pc's holds N = num_steps: the Langevin corrector's step rule
    predictor: Optional[Callable]
    corrector: Optional[Callable]
    denoise: bool

    def init(self, x_T, t):
        return x_T, x_T

    def step(self, key, state, t, t_next):
        x, x_mean = state[0], state[0]
        if self.corrector is not None:
            x, x_mean = self.corrector(jax.random.fold_in(key, 0), x, t, self.score_fn, self.process)
        if self.predictor is not None:
            x, x_mean = self.predictor(jax.random.fold_in(key, 1), x, t, t_next, self.score_fn, self.process)
        return x, x_mean

    def output(self, key, state):
        return state[1] if self.denoise else state[0]

    def nfe(self, num_steps: int) -> Optional[int]:
        per = (kernel_nfe(self.predictor), kernel_nfe(self.corrector))
        return None if None in per else num_steps * sum(per)


def _check_kernel(name: str, kernel, return_nfe: bool):
    if kernel is not None and not callable(kernel):
        raise ValueError(f"{name} must be a one-step kernel function or None, got {kernel!r}")
    if return_nfe and kernel_nfe(kernel) is None:
        raise ValueError(f"{name} must be one of diffjax.samplers' kernels (euler_maruyama_step, "
                         f"reverse_diffusion_step, langevin_corrector_step, LangevinCorrector) or None for "
                         f"return_nfe=True: the number of score evaluations of {kernel!r} is unknown; got "
                         f"return_nfe=True")


def _bound_langevin(corrector, snr: float, n_steps: int):
    """pc's default corrector, Langevin with pc's ``snr`` and ``n_corrector_steps``, when ``corrector`` is
    :func:`langevin_corrector_step`; any other corrector unchanged."""
    return LangevinCorrector(snr, n_steps) if corrector is langevin_corrector_step else corrector


def _predictor_only(sampler: str, predictor, key, x_T, score_fn, process, num_steps, t_eps, time_grid, denoise,
                    return_nfe):
    c = check_common(sampler, x_T, score_fn, process, num_steps, t_eps, default_steps=None, denoise=denoise,
                     return_nfe=return_nfe)
    times = check_time_grid(time_grid, process, c.num_steps, c.t_eps)
    return sample_steps(key, x_T, times, PCStep(score_fn, process, predictor, None, c.denoise),
                        return_nfe=c.return_nfe)


@deprecated_sde_keyword
def pc(key, x_T, score_fn, process, *, num_steps=None, t_eps=None, time_grid=process_default,
       predictor=reverse_diffusion_step, corrector=langevin_corrector_step, snr: float = 0.16,
       n_corrector_steps: int = 1, denoise: bool = True, return_nfe: bool = False):
    """Predictor-corrector sampler (score-SDE Algorithm 1): at each time, corrector moves then one predictor step.

    Args:
        key: PRNG key.
        x_T: (batch, *dims) prior sample, e.g. ``process.prior_sample(key, shape)``.
        score_fn: ``score_fn(x, t)``.
        process: any forward process (VP, sub-VP, VE, rectified flow, EDM, ``gaussian_path``).
        num_steps: predictor steps (default ``process.N``, score-SDE's 1000).
        t_eps: last time (default ``process.t_eps``: 1e-3 VP/sub-VP, 1e-5 VE).
        time_grid: the times, ``time_grid(process, num_steps, t_eps) -> (num_steps + 1,)`` decreasing to ``t_eps``:
            :func:`process_default` (default: uniform in t, score-SDE's; EDM's rho-grid on :func:`~diffjax.edm_sde`),
            :func:`uniform_time_grid`, :func:`uniform_log_snr_grid`, :func:`karras_grid`,
            :func:`quadratic_time_grid`, :func:`ddpm_strided` (``diffjax.samplers``) or any such hashable function.
            The Langevin corrector's step rule keeps the spacing ``T / num_steps`` of the uniform grid.
        predictor: ``predictor(key, x, t, t_next, score_fn, process) -> (x, x_mean)``, e.g.
            :func:`reverse_diffusion_step` (default, score-SDE's for NCSN++) or :func:`euler_maruyama_step`;
            ``None`` for corrector only.
        corrector: ``corrector(key, x, t, score_fn, process) -> (x, x_mean)``; :func:`langevin_corrector_step`
            (the default; a config names it "langevin") runs with ``snr`` and ``n_corrector_steps``
            (a :class:`LangevinCorrector` carries its own); ``None`` for predictor only.
        snr: signal-to-noise ratio of the default Langevin corrector (score-SDE: 0.16).
        n_corrector_steps: Langevin steps per time of the default corrector (score-SDE: 1).
        denoise: return the last step's noise-free mean.
        return_nfe: also return the number of score evaluations (an int32 0-d array), as every sampler.

    Returns:
        (batch, *dims) samples at ``t_eps``, or ``(samples, nfe)`` if ``return_nfe``. Score evaluations:
        ``num_steps * (p + c)``, ``p = 1`` per predictor step (0 for None) and ``c`` per corrector step
        (``n_corrector_steps`` for the default; 0 for None): ``2 num_steps`` by default.
        ``return_nfe=True`` needs predictor and corrector among diffjax's kernels (else ValueError).
    """
    c = check_common("pc", x_T, score_fn, process, num_steps, t_eps, default_steps=None, denoise=denoise,
                     return_nfe=return_nfe)
    times = check_time_grid(time_grid, process, c.num_steps, c.t_eps)
    snr = check_positive("snr", snr)
    n_corrector_steps = check_int("n_corrector_steps", n_corrector_steps, minimum=1)
    corrector = _bound_langevin(corrector, snr, n_corrector_steps)
    _check_kernel("predictor", predictor, c.return_nfe)
    _check_kernel("corrector", corrector, c.return_nfe)
    step = PCStep(score_fn, with_steps(process, c.num_steps), predictor, corrector, c.denoise)
    return sample_steps(key, x_T, times, step, return_nfe=c.return_nfe)


@deprecated_sde_keyword
def euler_maruyama(key, x_T, score_fn, process, *, num_steps=None, t_eps=None, time_grid=process_default,
                   denoise: bool = True, return_nfe: bool = False):
    """Euler-Maruyama on the reverse-time SDE: ``num_steps`` steps (default ``process.N``) from ``T`` to ``t_eps``
    on ``time_grid`` (default :func:`process_default`).

    Args are as in :func:`pc`. Returns (batch, *dims), or ``(x, nfe)`` if ``return_nfe``; ``num_steps`` score
    evaluations.
    """
    return _predictor_only("euler_maruyama", euler_maruyama_step, key, x_T, score_fn, process, num_steps, t_eps,
                           time_grid, denoise, return_nfe)


@deprecated_sde_keyword
def reverse_diffusion(key, x_T, score_fn, process, *, num_steps=None, t_eps=None, time_grid=process_default,
                      denoise: bool = True, return_nfe: bool = False):
    """Reverse diffusion (score-SDE eq. 47): the forward chain of DDPM (VP) / SMLD (VE) run backwards, between the
    times of ``time_grid`` (default :func:`process_default`).

    Args are as in :func:`pc`. Returns (batch, *dims), or ``(x, nfe)`` if ``return_nfe``; ``num_steps`` score
    evaluations.
    """
    return _predictor_only("reverse_diffusion", reverse_diffusion_step, key, x_T, score_fn, process, num_steps,
                           t_eps, time_grid, denoise, return_nfe)
