"""Time grids shared by the samplers: ``grid(process, num_steps, t_eps) -> (num_steps + 1,)`` float32 times,
decreasing from ``process.T`` to ``t_eps`` (both ends exact; :func:`ddpm_strided` starts at its top strided step's
own time instead). Module-level functions (or ``functools.partial`` of them), so they are hashable: a sampler computes
its grid once per (grid, process, num_steps, t_eps) before tracing (:func:`check_time_grid`) and compiles the one
sampler loop for those times.

Each grid is defined on one of the process's coordinates, so the same grid means the same thing on every process:
``uniform_time_grid`` on t, ``uniform_log_snr_grid`` on lambda(t) = log(a^2 / s^2) (DPM-Solver's choice),
``karras_grid`` on the noise-to-signal ratio sigma = s / a (EDM's rho-grid), ``quadratic_time_grid`` on t (DDIM's
"quadratic" sequence).
``process_default`` is the process's own choice (``process.default_times``), the samplers' default.
"""
from __future__ import annotations

import math

import functools

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.core._checks import check_choice, check_int, check_positive
from diffjax.core.chains import DDIM_SPACINGS, DDPMGrid, require_chain
from diffjax.core.process import check_process, karras_time_grid

__all__ = ["process_default", "uniform_time_grid", "uniform_log_snr_grid", "karras_grid", "quadratic_time_grid",
           "ddpm_strided"]

_EVERY_PROCESS = ("; the grids for every process are uniform_time_grid, uniform_log_snr_grid, karras_grid, "
                  "quadratic_time_grid")


def _check(process, num_steps, t_eps, where):
    check_process(process, name="process", where=where)
    num_steps = check_int("num_steps", num_steps, minimum=1)
    t_eps = float(t_eps)
    if not 0.0 <= t_eps < float(process.T):
        raise ValueError(f"t_eps must lie in [0, T={process.T}) for {where}, got {t_eps!r}")
    return num_steps, t_eps


def _pin_ends(times, process, t_eps):
    return times.at[0].set(process.T).at[-1].set(t_eps).astype(jnp.float32)


def uniform_time_grid(process, num_steps: int, t_eps: float) -> jax.Array:
    """``num_steps`` equal steps in t (score-SDE's grid).

    .. math:: t_i = T + \\tfrac{i}{n} (t_\\epsilon - T)
    """
    num_steps, t_eps = _check(process, num_steps, t_eps, "uniform_time_grid")
    return jnp.linspace(process.T, t_eps, num_steps + 1, dtype=jnp.float32)


def process_default(process, num_steps: int, t_eps: float) -> jax.Array:
    """The process's own grid, ``process.default_times(num_steps, t_eps)``: equal steps in t (:func:`uniform_time_grid`)
    on VP, sub-VP, VE, rectified flow and :func:`~diffjax.gaussian_path`; :func:`karras_grid` on EDM's process,
    whose time
    is sigma itself. The default ``time_grid`` of the samplers that step in t."""
    num_steps, t_eps = _check(process, num_steps, t_eps, "process_default")
    return _pin_ends(jnp.asarray(process.default_times(num_steps, t_eps)), process, t_eps)


def uniform_log_snr_grid(process, num_steps: int, t_eps: float) -> jax.Array:
    """``num_steps`` equal steps in log-SNR (DPM-Solver's ``logSNR`` spacing; ``t_eps > 0`` needed where the
    log-SNR is infinite at t = 0).

    .. math:: t_i = \\lambda^{-1}\\big(\\lambda(T) + \\tfrac{i}{n} (\\lambda(t_\\epsilon) - \\lambda(T))\\big)
    """
    num_steps, t_eps = _check(process, num_steps, t_eps, "uniform_log_snr_grid")
    with jax.ensure_compile_time_eval():
        lo, hi = (float(process.log_snr(jnp.float32(t))) for t in (process.T, t_eps))
    if not (math.isfinite(lo) and math.isfinite(hi)):  # Python floats: no tracer under a caller's jit
        raise ValueError(f"t_eps={t_eps!r} gives an infinite log-SNR on {process!r}; uniform_log_snr_grid needs "
                         f"t_eps > 0")
    lams = jnp.linspace(lo, hi, num_steps + 1, dtype=jnp.float32)
    return _pin_ends(process.t_from_log_snr(lams), process, t_eps)


def karras_grid(process, num_steps: int, t_eps: float, *, rho: float = 7.0) -> jax.Array:
    """Karras et al.'s rho-grid (EDM eq. 5) on the noise-to-signal ratio ``s/a`` between its values at ``T`` and
    ``t_eps``; ``functools.partial(karras_grid, rho=3.0)`` for another rho.

    .. math:: \\sigma_i = \\big(\\sigma_{max}^{1/\\rho} + \\tfrac{i}{n}(\\sigma_{min}^{1/\\rho}
        - \\sigma_{max}^{1/\\rho})\\big)^\\rho
    """
    num_steps, t_eps = _check(process, num_steps, t_eps, "karras_grid")
    rho = check_positive("rho", rho)
    if t_eps <= 0.0:
        raise ValueError(f"karras needs t_eps > 0 (sigma_min = s/a at t_eps must be > 0), got {t_eps!r}")
    with jax.ensure_compile_time_eval():
        def ratio(t):
            a, s = process.marginal(jnp.float32(t))
            return float(s / a)

        times = karras_time_grid(process, num_steps, sigma_min=ratio(t_eps), sigma_max=ratio(process.T), rho=rho)
    return _pin_ends(times, process, t_eps)


def quadratic_time_grid(process, num_steps: int, t_eps: float) -> jax.Array:
    """Steps that shrink quadratically toward ``t_eps`` (DDIM's "quadratic" sequence on continuous time).

    .. math:: t_i = t_\\epsilon + (T - t_\\epsilon) (1 - i/n)^2
    """
    num_steps, t_eps = _check(process, num_steps, t_eps, "quadratic_time_grid")
    u = 1.0 - jnp.arange(num_steps + 1, dtype=jnp.float32) / num_steps
    return _pin_ends(t_eps + (process.T - t_eps) * u ** 2, process, t_eps)


@functools.lru_cache(maxsize=32)
def concrete_ddpm_chain(process, where: str = "ddim") -> DDPMGrid:
    """The process's DDPM chain with concrete arrays, computed once (one compiled call, not one per operation)."""
    with jax.ensure_compile_time_eval():
        return jax.jit(lambda: require_chain(process, DDPMGrid, where=where, hint=_EVERY_PROCESS))()


def _ddpm_strided(process, num_steps: int, t_eps: float, *, spacing: str) -> jax.Array:
    """The grid of :func:`ddpm_strided` (see there)."""
    where = f"ddpm_strided(spacing={spacing!r})"
    num_steps, t_eps = _check(process, num_steps, t_eps, where)
    grid = concrete_ddpm_chain(process, where)
    with jax.ensure_compile_time_eval():  # concrete even inside a caller's jit: the steps are static
        most = grid.N if spacing == "trailing" else grid.N - 1
        if num_steps > most:
            raise ValueError(f"num_steps must be <= {most} for {where} on the DDPM chain of N={grid.N} steps "
                             f"(process.N), got {num_steps!r}")
        # diffusers' multistep schedulers (DPMSolverMultistepScheduler, DEIS, UniPC): "trailing" takes num_steps
        # steps from N-1 down; "leading" / "linspace" take num_steps + 1 and drop step 0, which t_eps replaces.
        steps = (grid.subsequence(num_steps, spacing=spacing) if spacing == "trailing"
                 else grid.subsequence(num_steps + 1, spacing=spacing)[1:])
        times = np.asarray(grid.time(jnp.asarray(steps[::-1], jnp.int32)), np.float32)
    if not times[-1] > t_eps:
        raise ValueError(f"t_eps must lie below the time {times[-1]:.6g} of the lowest strided step ({steps[0]}) of "
                         f"{where} with num_steps={num_steps} on the N={grid.N}-step chain, got {t_eps!r}; allowed: "
                         f"0 < t_eps < {times[-1]:.6g} (or fewer steps)")
    return jnp.asarray(np.append(times, np.float32(t_eps)), jnp.float32)


@functools.lru_cache(maxsize=None)
def ddpm_strided(spacing: str = "leading"):
    """The DDPM chain's strided steps as a time grid: ``grid(process, num_steps, t_eps)`` for a process with a DDPM
    chain (``process.chain()`` a :class:`~diffjax.discrete.DDPMGrid`: :func:`~diffjax.vp_sde`,
    :func:`~diffjax.cosine_vp_sde`).

    The chain is :func:`diffjax.discrete.ddpm_grid` of ``process`` (``N = process.N`` steps); its strided steps are
    picked by :meth:`~diffjax.discrete.DDPMGrid.subsequence` with diffusers' ``timestep_spacing``, as its multistep
    schedulers (``DPMSolverMultistepScheduler``, ``UniPCMultistepScheduler``) pick them: "trailing" ``num_steps``
    steps from ``N - 1`` down; "leading" / "linspace" ``num_steps + 1`` steps with step 0 dropped. The grid is
    those steps' continuous times ``grid.time(i)``, from the top down, followed by ``t_eps`` (diffusers'
    ``final_sigmas_type="sigma_min"``, whose step-0 time is about the VP SDE's ``t_eps``). So the grid starts at
    its top step's own time, not at ``process.T``: below it for "leading" (which skips the top steps), slightly
    above it for "trailing" / "linspace" (``1.0034 T`` on score-SDE's linear VP SDE: step ``N - 1``'s ``alpha_bar``
    lies below the SDE's at ``T``), as DDIM and diffusers start there.

    .. math:: t_k = t^{DDPM}_{\\tau_{S-k}}\\ (k < S),\\quad t_S = t_\\epsilon

    Args:
        spacing: "leading", "trailing" or "linspace" (:data:`diffjax.core.chains.DDIM_SPACINGS`).

    Returns:
        A hashable grid function (the same object for the same ``spacing``: one entry of the grid cache).
        It raises ``ValueError`` for a process without a DDPM chain, ``num_steps`` above ``N`` ("trailing") or
        ``N - 1``, and a ``t_eps`` not below the lowest strided step's time.
    """
    check_choice("spacing", spacing, DDIM_SPACINGS)
    return functools.partial(_ddpm_strided, spacing=spacing)


@functools.lru_cache(maxsize=256)
def _checked_grid(time_grid, process, num_steps: int, t_eps: float) -> np.ndarray:
    with jax.ensure_compile_time_eval():
        times = time_grid(process, num_steps, t_eps)
        try:
            times = np.asarray(times, np.float64)
        except (TypeError, jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError) as e:
            raise ValueError(f"time_grid must return concrete times (no jit inside the grid function), got "
                             f"{times!r} from {time_grid!r}") from e
    if times.shape != (num_steps + 1,) or not np.all(np.isfinite(times)):
        raise ValueError(f"time_grid must return num_steps + 1 = {num_steps + 1} finite times, got shape "
                         f"{times.shape} ({times!r}) from {time_grid!r}")
    if not np.all(np.diff(times) < 0):
        raise ValueError(f"time_grid must return strictly decreasing times, got {times!r} from {time_grid!r}")
    if not np.isclose(times[-1], t_eps, rtol=1e-5, atol=0.0):
        raise ValueError(f"time_grid must end at t_eps={t_eps!r}, got {times[-1]!r} from {time_grid!r}")
    times.setflags(write=False)
    return times


def check_time_grid(time_grid, process, num_steps: int, t_eps: float) -> np.ndarray:
    """Validate a sampler's ``time_grid`` argument before tracing: a hashable callable whose
    ``time_grid(process, num_steps, t_eps)`` is ``num_steps + 1`` finite, strictly decreasing times ending at
    ``t_eps``. Returns them (float64 NumPy, read-only; cached per argument tuple). The grid's own ``ValueError``
    (naming its argument) propagates."""
    if not callable(time_grid):
        raise ValueError(f"time_grid must be a grid function time_grid(process, num_steps, t_eps) -> (num_steps + 1,) "
                         f"times, e.g. diffjax.samplers.uniform_time_grid, uniform_log_snr_grid, karras_grid, "
                         f"quadratic_time_grid or "
                         f"ddpm_strided('leading'), got {time_grid!r}")
    try:
        hash(time_grid)
    except TypeError:
        raise ValueError(f"time_grid must be hashable (a module-level function or functools.partial of one: its "
                         f"times are computed once per argument tuple), got {time_grid!r}") from None
    return _checked_grid(time_grid, process, num_steps, t_eps)
