"""Samplers: pure functions ``NAME(key, x_T, score_fn, process, *, num_steps, t_eps, **options) -> x_0``.

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
process), :func:`uniform_time_grid`, :func:`uniform_log_snr_grid`, :func:`karras_grid` (EDM's rho-grid),
:func:`quadratic_time_grid`,
:func:`ddpm_strided` (the DDPM chain's strided steps).

Dtypes: every sampler returns ``x_T``'s dtype and solves in ``promote_types(x_T.dtype, float32)``: bfloat16 /
float16 input is cast to float32 on entry (carry, times, coefficients and the ``x`` given to ``score_fn`` are
float32) and the result is cast back at the end.

One-step kernels (predictors ``(key, x, t, t_next, score_fn, process) -> (x, x_mean)``, correctors
``(key, x, t, score_fn, process) -> (x, x_mean)``): :func:`euler_maruyama_step`, :func:`reverse_diffusion_step`,
:func:`langevin_corrector_step` (:class:`LangevinCorrector` with its options bound), :func:`ode_euler_step`,
:func:`ode_heun_step`, :func:`ddim_step`; the DDPM and NCSN steps live in :mod:`diffjax.discrete`
(``ancestral_step``, ``smld_ancestral_step``, ``langevin_step``).

The loop: every fixed-step sampler is a :class:`SamplerStep` (``init`` / ``step`` / ``output`` / ``nfe``) that
:func:`sample_steps` scans over a time grid (one ``lax.scan``, jitted per step object); :func:`run_steps` is the
same loop unjitted, for use inside a jitted function. A new sampler is a new step object.
"""
from diffjax.samplers._driver import *  # noqa: F401,F403
from diffjax.samplers._kernels import *  # noqa: F401,F403
from diffjax.samplers._samplers import *  # noqa: F401,F403
from diffjax.samplers._chains import *  # noqa: F401,F403
from diffjax.samplers._ode import *  # noqa: F401,F403
from diffjax.samplers._conditional import *  # noqa: F401,F403
from diffjax.samplers._edm import *  # noqa: F401,F403
from diffjax.samplers._grids import *  # noqa: F401,F403
from diffjax.samplers._dpm_solver import *  # noqa: F401,F403
from diffjax.samplers._unipc import *  # noqa: F401,F403
from diffjax.samplers import _chains, _conditional, _dpm_solver, _driver, _edm, _grids, _kernels, _ode, _samplers
from diffjax.samplers import _unipc

__all__ = (_samplers.__all__ + _chains.__all__ + _ode.__all__ + _conditional.__all__ + _edm.__all__ + _kernels.__all__
           + _grids.__all__ + _dpm_solver.__all__ + _unipc.__all__ + _driver.__all__)

# The grids' names before 0.x (``uniform_time`` also named the training-time sampler diffjax.uniform_time): kept for
# one release with a DeprecationWarning
_RENAMED = {"uniform_time": "uniform_time_grid", "uniform_log_snr": "uniform_log_snr_grid", "karras": "karras_grid",
            "quadratic_time": "quadratic_time_grid"}


def __getattr__(name):
    if name in _RENAMED:
        import warnings
        warnings.warn(f"diffjax.samplers.{name} is deprecated: it is diffjax.samplers.{_RENAMED[name]}",
                      DeprecationWarning, stacklevel=2)
        return globals()[_RENAMED[name]]
    raise AttributeError(f"module 'diffjax.samplers' has no attribute {name!r}")
