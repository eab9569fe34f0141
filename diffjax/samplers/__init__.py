"""Samplers: pure functions ``NAME(key, x_T, score_fn, sde, *, num_steps, t_eps, **options) -> x_0``.

Reverse-time SDE: :func:`euler_maruyama`, :func:`reverse_diffusion`, :func:`pc` (predictor-corrector).
Discrete chains: :func:`ancestral` (DDPM for VP, SMLD for VE), :func:`annealed_langevin` (NCSN),
:func:`ddim` (strided DDPM grid). Probability-flow ODE: :func:`ode_euler`, :func:`ode_heun`,
:func:`ode_adaptive` (diffrax, on device, NFE on request).

One-step kernels (predictors ``(key, x, t, t_next, score_fn, sde) -> (x, x_mean)``, correctors
``(key, x, t, score_fn, sde) -> (x, x_mean)``): :func:`euler_maruyama_step`, :func:`reverse_diffusion_step`,
:func:`langevin_corrector_step`, :func:`ode_euler_step`, :func:`ode_heun_step`, :func:`ddim_step`; the DDPM and
NCSN steps live in :mod:`diffjax.discrete` (``ancestral_step``, ``smld_ancestral_step``, ``langevin_step``).
"""
from diffjax.samplers._kernels import *  # noqa: F401,F403
from diffjax.samplers._samplers import *  # noqa: F401,F403
from diffjax.samplers import _kernels, _samplers

__all__ = _samplers.__all__ + _kernels.__all__
