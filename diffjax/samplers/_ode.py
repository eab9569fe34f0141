"""Probability-flow ODE samplers: :func:`ode_euler`, :func:`ode_heun` (fixed steps, over the one sampler loop) and
:func:`ode_adaptive` (diffrax's adaptive Runge-Kutta, on device, its own loop)."""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from diffjax.core._checks import check_int, check_positive
from diffjax.core._jit import jit_static
from diffjax.core._solvers import check_solver
from diffjax.core.sde import probability_flow_ode
from diffjax.samplers._common import batch_time, check_common, deprecated_sde_keyword, in_solve_dtype
from diffjax.samplers._driver import sample_steps
from diffjax.samplers._grids import check_time_grid, process_default
from diffjax.samplers._kernels import data_prediction, ode_euler_step, ode_heun_step

__all__ = ["ode_euler", "ode_heun", "ode_adaptive"]


@dataclasses.dataclass(frozen=True)
class ODEStep:
    """One Euler (``heun=False``) or Heun step of the probability-flow ODE; ``denoise``: one Tweedie step at
    ``t_eps`` after the last."""
    score_fn: Callable
    process: Any
    heun: bool
    denoise: bool
    t_eps: float

    def init(self, x_T, t):
        return x_T

    def step(self, key, x, t, t_next):
        return (ode_heun_step if self.heun else ode_euler_step)(x, t, t_next, self.score_fn, self.process)

    def output(self, key, x):
        return data_prediction(x, self.t_eps, self.score_fn, self.process) if self.denoise else x

    def nfe(self, num_steps: int) -> int:
        return (1 + self.heun) * num_steps + self.denoise


def _ode_fixed(sampler, heun, key, x_T, score_fn, process, num_steps, t_eps, time_grid, denoise, return_nfe, *,
               default_steps):
    c = check_common(sampler, x_T, score_fn, process, num_steps, t_eps, default_steps=default_steps,
                     denoise=denoise, return_nfe=return_nfe)
    times = check_time_grid(time_grid, process, c.num_steps, c.t_eps)
    return sample_steps(key, x_T, times, ODEStep(score_fn, process, heun, c.denoise, c.t_eps),
                        return_nfe=c.return_nfe)


@deprecated_sde_keyword
def ode_euler(key, x_T, score_fn, process, *, num_steps=None, t_eps=None, time_grid=process_default,
              denoise: bool = False, return_nfe: bool = False):
    """Euler's method on the probability-flow ODE, ``num_steps`` steps (default ``process.N``) to ``t_eps`` on
    ``time_grid`` (default :func:`process_default`; see :func:`pc`).

    Deterministic (``key`` is unused, kept for the common signature). ``num_steps`` (+1 if ``denoise``) score
    evaluations; ``return_nfe=True`` returns ``(x, nfe)`` (nfe an int32 0-d array).
    """
    return _ode_fixed("ode_euler", False, key, x_T, score_fn, process, num_steps, t_eps, time_grid, denoise,
                      return_nfe, default_steps=None)


@deprecated_sde_keyword
def ode_heun(key, x_T, score_fn, process, *, num_steps: int = 100, t_eps=None, time_grid=process_default,
             denoise: bool = False, return_nfe: bool = False):
    """Heun's method (2nd order) on the probability-flow ODE, ``num_steps`` steps to ``t_eps`` on ``time_grid``
    (default :func:`process_default`; see :func:`pc`). EDM's Heun sampler with its last step to ``sigma = 0`` and
    stochastic churn is :func:`edm_heun`.

    Default 100 steps (200 score evaluations): on the exact-score benchmarks of ``experiments/bench`` its
    sample distance is then at the level of the data's own sampling noise. Deterministic; ``2 num_steps``
    (+1 if ``denoise``) score evaluations; ``return_nfe=True`` returns ``(x, nfe)`` (nfe an int32 0-d array).
    """
    return _ode_fixed("ode_heun", True, key, x_T, score_fn, process, num_steps, t_eps, time_grid, denoise,
                      return_nfe, default_steps=100)


# ------------------------------------------------------------------------------------------------ adaptive


def _typed_sharding(x):
    """The sharding in ``x``'s type if it splits ``x`` over Explicit mesh axes (sharding in types), else None."""
    sharding = getattr(jax.typeof(x), "sharding", None)
    explicit = getattr(getattr(sharding, "mesh", None), "explicit_axes", ())
    return sharding if explicit and any(p is not None for p in sharding.spec) else None


def _keeping_input_sharding(run, key, x_T):
    """``run(key, x_T, sharding=...) -> (x, nfe)`` with ``x`` sharded as ``x_T``, from ``x_T``'s own sharding (no
    mesh or axis is named here: where the batch lives is the caller's choice, :mod:`diffjax.train.sharding`).

    Explicit axes: diffrax's loop state is created unsharded, so run it in auto mode and reshard the result to the
    input's type (``nfe`` replicated). A concrete array on several devices: pin the loop state to its sharding.
    """
    typed = _typed_sharding(x_T)
    if typed is not None:
        auto = jax.sharding.auto_axes(functools.partial(run, sharding=None),
                                      out_sharding=(typed, typed.update(spec=())))
        return auto(key, x_T)
    sharding = None if isinstance(x_T, jax.core.Tracer) else getattr(x_T, "sharding", None)
    return run(key, x_T, sharding=sharding if sharding is not None and len(sharding.device_set) > 1 else None)


@jit_static("score_fn", "process", "t_eps", "rtol", "atol", "solver", "max_steps", "denoise", "sharding")
@in_solve_dtype
def _ode_adaptive(key, x_T, *, score_fn, process, t_eps, rtol, atol, solver, max_steps, denoise, sharding):
    # solver: a diffrax solver object, a static argument (equinox modules hash and compare by value: no retrace)
    import diffrax  # imported on first use: the core and the other samplers do not need it

    del key
    vf = probability_flow_ode(process, score_fn)
    # diffrax's while loop drops an automatic input sharding unless the state is pinned to it.
    pin = (lambda y: y) if sharding is None else (lambda y: jax.lax.with_sharding_constraint(y, sharding))
    term = diffrax.ODETerm(lambda t, y, args: pin(vf(pin(y), batch_time(t, y))))
    sol = diffrax.diffeqsolve(term, solver, t0=process.T, t1=t_eps, dt0=None, y0=pin(x_T),
                              stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
                              saveat=diffrax.SaveAt(t1=True), max_steps=max_steps)
    x = pin(sol.ys[0])
    nfe_fixed, nfe_per_step = check_solver(solver)[1]  # e.g. Dopri5, Tsit5 (FSAL): 1 + 6 per attempted step
    nfe = nfe_fixed + nfe_per_step * sol.stats["num_steps"]
    if denoise:
        x, nfe = data_prediction(x, t_eps, score_fn, process), nfe + 1
    return x, nfe


@deprecated_sde_keyword
def ode_adaptive(key, x_T, score_fn, process, *, t_eps=None, rtol: float = 1e-5, atol: float = 1e-5,
                 solver=None, max_steps: int = 4096, denoise: bool = False, return_nfe: bool = False):
    """Adaptive Runge-Kutta on the probability-flow ODE, on device with diffrax (score-SDE's RK45 setting).

    Args:
        key, x_T, score_fn, process, t_eps: as in :func:`pc` (``key`` unused: the sampler is deterministic).
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
        ``x_0`` (batch, *dims), or ``(x_0, nfe)`` if ``return_nfe``. The output keeps ``x_T``'s sharding.
    """
    c = check_common("ode_adaptive", x_T, score_fn, process, 1, t_eps, default_steps=1, denoise=denoise,
                     return_nfe=return_nfe)
    rtol, atol = check_positive("rtol", rtol), check_positive("atol", atol)
    solver = check_solver(solver)[0]
    max_steps = check_int("max_steps", max_steps, minimum=1)
    run = functools.partial(_ode_adaptive, score_fn=score_fn, process=process, t_eps=c.t_eps, rtol=rtol, atol=atol,
                            solver=solver, max_steps=max_steps, denoise=c.denoise)
    x, nfe = _keeping_input_sharding(run, key, x_T)
    return (x, jnp.asarray(nfe, jnp.int32)) if c.return_nfe else x
