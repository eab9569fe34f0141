"""Samplers: pure functions ``NAME(key, x_T, score_fn, sde, *, num_steps, t_eps, **options) -> x_0``.

Reverse-time SDE: :func:`euler_maruyama`, :func:`reverse_diffusion`, :func:`pc` (predictor-corrector).
Discrete chains: :func:`ancestral` (DDPM for VP, SMLD for VE), :func:`annealed_langevin` (NCSN),
:func:`ddim` (strided DDPM grid). Probability-flow ODE: :func:`ode_euler`, :func:`ode_heun`,
:func:`ode_adaptive` (diffrax, on device, NFE on request).
Conditional (score-SDE's replacement method): :func:`inpaint`, :func:`colorize`.
EDM's Heun sampler with stochastic churn, on any process: :func:`edm_heun`.
Exponential integrators in log-SNR time, on any process: :func:`dpm_solver` (DPM-Solver++ 1-3, multistep /
singlestep, 2M SDE), :func:`unipc` (UniPC: UniP predictor 1-3 with the UniC corrector, B(h) bh1 / bh2).

Time grids, the ``time_grid`` argument of the continuous-time samplers (``grid(process, num_steps, t_eps)``):
:func:`process_default` (the process's own, ``process.default_times``: uniform in t; EDM's rho-grid on EDM's
process), :func:`uniform_time`, :func:`uniform_log_snr`, :func:`karras` (EDM's rho-grid), :func:`quadratic_time`,
:func:`ddpm_strided` (the DDPM chain's strided steps).

Dtypes: every sampler returns ``x_T``'s dtype and solves in ``promote_types(x_T.dtype, float32)``: bfloat16 /
float16 input is cast to float32 on entry (carry, times, coefficients and the ``x`` given to ``score_fn`` are
float32) and the result is cast back at the end.

One-step kernels (predictors ``(key, x, t, t_next, score_fn, sde) -> (x, x_mean)``, correctors
``(key, x, t, score_fn, sde) -> (x, x_mean)``): :func:`euler_maruyama_step`, :func:`reverse_diffusion_step`,
:func:`langevin_corrector_step`, :func:`ode_euler_step`, :func:`ode_heun_step`, :func:`ddim_step`; the DDPM and
NCSN steps live in :mod:`diffjax.discrete` (``ancestral_step``, ``smld_ancestral_step``, ``langevin_step``).
"""
from diffjax.samplers._kernels import *  # noqa: F401,F403
from diffjax.samplers._samplers import *  # noqa: F401,F403
from diffjax.samplers._conditional import *  # noqa: F401,F403
from diffjax.samplers._edm import *  # noqa: F401,F403
from diffjax.samplers._grids import *  # noqa: F401,F403
from diffjax.samplers._dpm_solver import *  # noqa: F401,F403
from diffjax.samplers._unipc import *  # noqa: F401,F403
from diffjax.samplers import _dpm_solver, _unipc
from diffjax.samplers import _conditional, _edm, _grids, _kernels, _samplers

__all__ = (_samplers.__all__ + _conditional.__all__ + _edm.__all__ + _kernels.__all__ + _grids.__all__
           + _dpm_solver.__all__ + _unipc.__all__)
