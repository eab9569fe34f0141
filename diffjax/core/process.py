"""The forward-process protocol: every process of diffjax is a Gaussian path ``x_t = a(t) x_0 + s(t) eps``.

:class:`GaussianPath` implements the whole protocol from the marginal ``(a(t), s(t))`` and its time derivative, so
a new process is one subclass defining :meth:`~GaussianPath.marginal` (or one call of :func:`gaussian_path` with
two callables). Samplers, losses, likelihood and guidance call only these methods (``t``: ``()`` or ``(batch,)``;
``x``: ``(batch, *dims)``):

* ``T`` (the top time, where the prior sits), ``N`` (default discretization), ``t_eps`` (default smallest time).
* ``marginal(t) -> (a, s)``; ``marginal_derivative(t) -> (da/dt, ds/dt)``; ``perturb(x0, t, noise)``.
* ``log_snr(t) = 2 log(a/s)`` and its inverse ``t_from_log_snr(lam)`` (closed forms where known, else bisection).
* ``coefficients(x, t) -> (f, g)``, ``drift(x, t)``, ``diffusion(t)`` of the SDE with these marginals:
  ``f = (a'/a) x``, ``g^2 = 2 s s' - 2 (a'/a) s^2``.
* ``forward_chain_step(x, t, t_next) -> (F, G2)``: the exact Gaussian transition ``x_t = x_{t_next} + F + G z``
  (DDPM's step for VP, SMLD's for VE), the step that reverse diffusion inverts.
* ``langevin_alpha(t, dt)``: the Langevin corrector's step rule; ``prior_sample(key, shape)``, ``prior_logp(z)``.
* ``default_times(num_steps, t_eps)``: the times the samplers step on when given no grid (equal steps in t; EDM's
  rho-grid on :class:`EDMProcess`, whose time is sigma).
* ``importance_time_icdf(u, t_eps) -> (t, p(t))``: inverse-CDF sampling of the likelihood importance density
  ``p ~ g^2 / s^2`` (tabulated; closed forms on VP and VE).
* ``chain()``: the discrete chain the process offers (:class:`~diffjax.core.contracts.DiscreteChain`: DDPM's beta
  chain on VP, SMLD's sigma chain on VE) or ``None``: what the grid samplers (ancestral, DDIM) walk.

The protocol as a type is :class:`~diffjax.core.contracts.Process`; :class:`GaussianPath` implements all of it from
``marginal`` alone, so a new process needs no other method, and callers never ask whether a method is there.

The special cases here: :func:`rectified_flow` (``a = 1 - t, s = t``) and :func:`edm_sde` (``a = 1, s = t =
sigma``); the VP, sub-VP and VE SDEs of score-SDE (subclasses with closed forms) live in :mod:`diffjax.core.sde`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp

from diffjax.core._checks import check_int, check_positive
from diffjax.core.contracts import Marginal, Process, protocol_members

__all__ = [
    "GaussianPath",
    "gaussian_path",
    "RectifiedFlow",
    "TrigFlow",
    "trigflow",
    "rectified_flow",
    "EDMProcess",
    "edm_sde",
    "karras_time_grid",
]

_BISECTION_STEPS = 40  # halvings of [0, T]: below float32 resolution of t
_TABLE_SIZE = 4096  # grid points of the tabulated inverse CDF of GaussianPath.importance_time_icdf


def bcast(c: jax.Array, x: jax.Array) -> jax.Array:
    """Broadcast a per-example coefficient (shape ``()`` or ``(batch,)``) against ``x`` of shape ``(batch, *dims)``."""
    c = jnp.asarray(c)
    return c.reshape(c.shape + (1,) * (x.ndim - c.ndim))


def as_time(t) -> jax.Array:
    """``t`` (times or log-SNRs) as a float array: float32, or float64 when it is float64 (under ``jax_enable_x64``),
    so that float64 samples get float64 coefficients and float32 ones float32."""
    t = jnp.asarray(t)
    return t if t.dtype == jnp.float64 else t.astype(jnp.float32)


def time_dtype(x) -> jnp.dtype:
    """The dtype of the times and coefficients of a solve for samples ``x``: float32, float64 for float64 ``x``."""
    return jnp.promote_types(x.dtype, jnp.float32)


def batch_time(t, x) -> jax.Array:
    """Time ``t`` (scalar) as a ``(batch,)`` array for samples ``x``, in :func:`time_dtype`."""
    return jnp.broadcast_to(jnp.asarray(t, time_dtype(x)), (x.shape[0],))


def standard_normal_logp(z: jax.Array, std: float | jax.Array = 1.0) -> jax.Array:
    """Log-density of ``N(0, std^2 I)`` summed over all but the first axis."""
    d = math.prod(z.shape[1:])
    return -0.5 * d * jnp.log(2 * math.pi * std**2) - 0.5 * jnp.sum(z**2, axis=tuple(range(1, z.ndim))) / std**2


class MarginalPath:
    """Base of every marginal ``x_t = a(t) x_0 + s(t) eps`` (:class:`~diffjax.core.contracts.Marginal`): processes and
    the discrete grids. Subclasses define ``marginal(t) -> (a, s)`` and ``T``; the rest follows."""

    t_eps: float = 1e-5  # default smallest time of the time samplers (diffjax.core.weighting)

    def marginal(self, t):
        raise NotImplementedError(f"{type(self).__name__} must define marginal(t) -> (a, s)")

    def marginal_derivative(self, t):
        """``(da/dt, ds/dt)`` by forward-mode differentiation of :meth:`marginal` (elementwise in ``t``)."""
        t = as_time(t)
        return jax.jvp(self.marginal, (t,), (jnp.ones_like(t),))[1]

    def perturb(self, x0, t, noise):
        a, s = self.marginal(t)
        return bcast(a, x0) * x0 + bcast(s, x0) * noise


class GaussianPath(MarginalPath):
    """Base of every forward process: the protocol (:class:`~diffjax.core.contracts.Process`), implemented from
    :meth:`marginal` alone.

    Subclasses define ``marginal(t) -> (a, s)`` and may override any method with a closed form
    (``marginal_derivative``, ``log_snr``, ``t_from_log_snr``, ``coefficients``, ``forward_chain_step``,
    ``importance_time_icdf``) or offer a discrete chain (``chain``). Class attributes ``T`` (top time), ``N``
    (default number of steps), ``t_eps`` (default smallest time) and ``prior_std`` (prior ``N(0, prior_std^2 I)`` at
    ``T``).
    """

    T: float = 1.0
    N: int = 1000
    t_eps: float = 1e-3
    prior_std: float = 1.0

    def chain(self):
        """The discrete chain of the process (:class:`~diffjax.core.contracts.DiscreteChain`): ``None`` here; VP
        offers DDPM's, VE SMLD's."""
        return None

    def log_snr(self, t):
        """.. math:: \\lambda(t) = 2 \\log(a(t) / s(t))"""
        a, s = self.marginal(t)
        return 2.0 * (jnp.log(a) - jnp.log(s))

    def t_from_log_snr(self, log_snr):
        """Inverse of :meth:`log_snr` (decreasing in ``t``) by vectorised bisection on ``[0, T]``; values outside
        ``lambda([0, T])`` give the nearer end. Subclasses with a closed form override it.

        .. math:: t = \\lambda^{-1}(\\lambda)
        """
        lam = as_time(log_snr)
        lo, hi = jnp.zeros_like(lam), jnp.full_like(lam, self.T)

        def body(_, bounds):
            lo, hi = bounds
            mid = 0.5 * (lo + hi)
            later = self.log_snr(mid) > lam  # still too much signal at mid: the root lies above
            return jnp.where(later, mid, lo), jnp.where(later, hi, mid)

        lo, hi = jax.lax.fori_loop(0, _BISECTION_STEPS, body, (lo, hi))
        return 0.5 * (lo + hi)

    def _drift_rate(self, t):
        """``a'/a = d log a / dt``."""
        a, _ = self.marginal(t)
        da, _ = self.marginal_derivative(t)
        return da / a

    def _g2(self, t):
        """.. math:: g^2 = \\frac{d s^2}{dt} - 2 \\frac{d \\log a}{dt} s^2"""
        a, s = self.marginal(t)
        da, ds = self.marginal_derivative(t)
        return jnp.maximum(2.0 * s * ds - 2.0 * (da / a) * s**2, 0.0)

    def coefficients(self, x, t):
        """Drift and diffusion of ``dx = f(x, t) dt + g(t) dw``, the SDE whose marginals are the path's.

        .. math:: f = \\frac{a'}{a} x,\\quad g^2 = 2 s s' - 2 \\frac{a'}{a} s^2
        """
        t = jnp.asarray(t)
        return bcast(self._drift_rate(t), x) * x, jnp.sqrt(self._g2(t))

    def drift(self, x, t):
        return self.coefficients(x, t)[0]

    def diffusion(self, t):
        return jnp.sqrt(self._g2(jnp.asarray(t)))

    def forward_chain_step(self, x, t, t_next):
        """``(F, G2)`` of the exact Gaussian transition from ``t_next`` up to ``t`` (``t_next < t``):
        ``x_t = x_{t_next} + F + G z`` (``G2`` shaped like ``t``). DDPM's step for VP, SMLD's for VE.

        .. math:: F = \\Big(\\frac{a_t}{a_n} - 1\\Big) x,\\quad G^2 = s_t^2 - \\Big(\\frac{a_t}{a_n}\\Big)^2 s_n^2
        """
        a_t, s_t = self.marginal(t)
        a_n, s_n = self.marginal(t_next)
        r = a_t / a_n
        return bcast(r - 1.0, x) * x, jnp.maximum(s_t**2 - r**2 * s_n**2, 0.0)

    def langevin_alpha(self, t, dt):
        """The Langevin step-size rule's ``alpha`` at time ``t`` on a grid of spacing ``dt``: the signal fraction kept
        by one step of the forward chain from ``t - dt`` to ``t`` (``t - dt`` floored at 0), always in ``(0, 1]``.

        .. math:: \\alpha(t) = \\frac{a(t)^2}{a(t - \\Delta t)^2}

        For VP and sub-VP this is DDPM's ``alpha_i = 1 - beta_i``, which score-SDE's corrector linearizes as
        ``1 - beta(t) dt``; the two agree to ``O((beta dt)^2)`` (within 2e-4 at its default ``dt = 1/1000``), but the
        linearization turns negative, and the corrector's noise ``sqrt(2 eps)`` NaN, once ``beta(t) dt > 1``.
        ``a = 1`` (VE, EDM): 1.

        Args:
            t: time, ``()`` or ``(batch,)``.
            dt: grid spacing (a float), e.g. ``sde.T / sde.N``.

        Returns:
            ``alpha`` shaped like ``t``.
        """
        t = as_time(t)
        log_ratio = self._log_mean_coeff(t) - self._log_mean_coeff(jnp.maximum(t - dt, 0.0))
        return jnp.minimum(jnp.exp(2.0 * log_ratio), 1.0)

    def _log_mean_coeff(self, t):
        return jnp.log(self.marginal(t)[0])

    def prior_sample(self, key, shape, dtype=jnp.float32):
        """A draw of the prior ``N(0, prior_std^2 I)`` at ``T``."""
        return self.prior_std * jax.random.normal(key, shape, dtype)

    def prior_logp(self, z):
        """Log-density of the prior, summed over non-batch dims (nats)."""
        return standard_normal_logp(z, self.prior_std)

    def default_times(self, num_steps: int, t_eps: float) -> jax.Array:
        """The ``num_steps + 1`` decreasing float32 times from ``T`` to ``t_eps`` that the samplers step on by default
        (:func:`diffjax.samplers.process_default`): equal steps in t, score-SDE's grid."""
        return jnp.linspace(self.T, t_eps, num_steps + 1, dtype=jnp.float32)

    def importance_time_icdf(self, u, t_eps):
        """``(t, p(t))``: ``t`` on ``[t_eps, T]`` at ``u`` in ``[0, 1)`` by the inverse CDF of the likelihood importance
        density ``p ~ h = g^2 / s^2`` (see :func:`~diffjax.importance_sample_time`), and its density.

        The CDF is tabulated on a grid uniform in ``log t`` and inverted by linear interpolation; ``p(t)`` is the exact
        density of that piecewise sampler, so a reweighting by it stays unbiased. VP and VE override it with closed
        forms.
        """
        log_t = jnp.linspace(math.log(t_eps), math.log(self.T), _TABLE_SIZE, dtype=jnp.float32)
        t_grid = jnp.exp(log_t)
        dens = self.diffusion(t_grid) ** 2 / self.marginal(t_grid)[1] ** 2 * t_grid  # density in log t
        cdf = jnp.concatenate([jnp.zeros((1,)), jnp.cumsum(0.5 * (dens[1:] + dens[:-1]) * jnp.diff(log_t))])
        Z = cdf[-1]
        lt = jnp.interp(u * Z, cdf, log_t)
        k = jnp.clip(jnp.searchsorted(log_t, lt, side="right") - 1, 0, _TABLE_SIZE - 2)
        cell = (cdf[k + 1] - cdf[k]) / (log_t[k + 1] - log_t[k]) / Z  # constant density in log t on the cell
        t = jnp.exp(lt)
        return t, cell / t

    # The uniform grid of N points on [0, T] and score-SDE's Euler-Maruyama discretization (ReverseSDE.discretize).
    def grid(self) -> jax.Array:
        return jnp.linspace(0.0, self.T, self.N, dtype=jnp.float32)

    def index(self, t):
        return jnp.clip(jnp.round(jnp.asarray(t) * (self.N - 1) / self.T), 0, self.N - 1).astype(jnp.int32)

    def discretize(self, x, t):
        dt = self.T / self.N
        f, g = self.coefficients(x, t)
        return f * dt, g * math.sqrt(dt)


PROTOCOL = protocol_members(Process)  # the members every forward process has


def _check_protocol(obj, protocol, *, name: str, where: str, what: str):
    if not isinstance(obj, protocol):
        missing = [m for m in protocol_members(protocol) if not hasattr(obj, m)]
        raise ValueError(f"{name} must be {what} for {where}; {type(obj).__name__} ({obj!r}) lacks {missing}")
    return obj


def check_process(process, *, name: str = "sde", where: str = "here"):
    """Raise ``ValueError`` unless ``process`` is a :class:`~diffjax.core.contracts.Process` (before any tracing)."""
    return _check_protocol(process, Process, name=name, where=where,
                           what="a forward process (vp_sde, subvp_sde, ve_sde, cosine_vp_sde, rectified_flow, edm_sde, "
                                "gaussian_path(...))")


def check_marginal(path, *, name: str = "process", where: str = "here"):
    """Raise ``ValueError`` unless ``path`` is a :class:`~diffjax.core.contracts.Marginal`: a forward process or a
    discrete grid (``DDPMGrid``, ``NCSNGrid``)."""
    return _check_protocol(path, Marginal, name=name, where=where,
                           what="a forward process (vp_sde, ve_sde, ...) or a discrete grid (ddpm_grid, ncsn_grid) "
                                "with marginal(t) and T")


# ------------------------------------------------------------------------------------------------ gaussian_path


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class CallablePath(GaussianPath):
    """A Gaussian path from two callables ``a_fn(t)``, ``s_fn(t)`` (see :func:`gaussian_path`). Hashable: it
    compares by its fields (the callables by identity), so it passes ``jax.jit`` as a static argument."""

    a_fn: Callable
    s_fn: Callable
    T: float = 1.0
    prior_std: float = 1.0
    t_eps: float = 1e-3
    N: int = 1000

    def marginal(self, t):
        t = as_time(t)
        return jnp.asarray(self.a_fn(t), t.dtype), jnp.asarray(self.s_fn(t), t.dtype)


def gaussian_path(a_fn: Callable, s_fn: Callable, *, T: float = 1.0, prior_std: float | None = None,
                  t_eps: float = 1e-3, N: int = 1000) -> CallablePath:
    """A forward process from its marginal ``x_t = a(t) x_0 + s(t) eps``; every other method (drift, diffusion,
    log-SNR and its inverse, the forward chain step, ...) follows, with derivatives by ``jax.jvp``.

    .. math:: f = \\frac{a'}{a} x,\\quad g^2 = \\frac{d s^2}{dt} - 2 \\frac{a'}{a} s^2

    Example (VP with a cosine signal)::

        p = dj.gaussian_path(lambda t: jnp.cos(0.5 * jnp.pi * t), lambda t: jnp.sin(0.5 * jnp.pi * t), T=0.999)

    Args:
        a_fn, s_fn: jax-differentiable, elementwise callables of ``t`` (``()`` or ``(batch,)``); ``a > 0`` on
            ``[t_eps, T]``, ``s`` increasing and ``a/s`` decreasing (the log-SNR must be monotone).
        T: top time (the prior's).
        prior_std: std of the prior ``N(0, prior_std^2 I)``; default ``s(T)``.
        t_eps: default smallest time of samplers.
        N: default number of steps.
    """
    for name, fn in (("a_fn", a_fn), ("s_fn", s_fn)):
        if not callable(fn):
            raise ValueError(f"{name} must be a callable of t, got {fn!r}")
    T = check_positive("T", T)
    t_eps = check_positive("t_eps", t_eps)
    if not t_eps < T:
        raise ValueError(f"t_eps must lie in the open interval (0, T={T}), got {t_eps!r}")
    if prior_std is None:
        with jax.ensure_compile_time_eval():
            prior_std = float(s_fn(jnp.float32(T)))
    prior_std = check_positive("prior_std", prior_std)
    return CallablePath(a_fn, s_fn, T, prior_std, t_eps, check_int("N", N, minimum=1))


# ----------------------------------------------------------------------------------------------- rectified flow


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class RectifiedFlow(GaussianPath):
    """Flow matching's optimal-transport path / rectified flow: ``a = 1 - t``, ``s = t``, prior ``N(0, I)``.

    Its probability-flow ODE is the flow-matching ODE ``dx/dt = u(x, t) = E[eps - x_0 | x_t]``, so
    :func:`diffjax.samplers.ode_euler` on it is rectified flow's Euler sampler.

    At ``t = 1`` the signal vanishes (``a = 0``): ``a'/a``, ``g^2 = 2t/(1-t)`` and the score-to-velocity conversion
    are singular there (the velocity ``x - E[x_0]`` is not determined by the score, which is ``-x`` whatever the
    data). The process therefore stops at ``T = 1 - delta`` (default ``delta = 1e-3``, log-SNR -13.8, below the VP
    SDE's -10 at its ``T = 1``); samplers start there from the prior ``N(0, I)`` of ``t = 1``, whose mismatch with
    the marginal at ``T`` is ``O(delta)`` (as the VP SDE's ``a(1) = 6.6e-3``).
    """

    T: float = 1.0 - 1e-3
    N: int = 1000

    def marginal(self, t):
        t = as_time(t)
        return 1.0 - t, t

    def marginal_derivative(self, t):
        t = as_time(t)
        return -jnp.ones_like(t), jnp.ones_like(t)

    def log_snr(self, t):
        t = as_time(t)
        return 2.0 * (jnp.log1p(-t) - jnp.log(t))

    def t_from_log_snr(self, log_snr):
        """.. math:: t = \\operatorname{sigmoid}(-\\lambda / 2)"""
        return jax.nn.sigmoid(-0.5 * as_time(log_snr))

    def _drift_rate(self, t):
        return -1.0 / (1.0 - as_time(t))

    def _g2(self, t):
        t = as_time(t)
        return 2.0 * t / (1.0 - t)

    def _log_mean_coeff(self, t):
        return jnp.log1p(-as_time(t))


def rectified_flow(*, T: float = 1.0 - 1e-3, N: int = 1000) -> RectifiedFlow:
    """Rectified flow / flow matching's linear path ``x_t = (1 - t) x_0 + t eps`` (prior ``N(0, I)``).

    .. math:: \\frac{dx}{dt} = \\epsilon - x_0 \\text{ (conditional velocity)},\\quad f = -\\frac{x}{1-t},\\quad
        g^2 = \\frac{2t}{1-t}

    Args:
        T: top time, in ``(0, 1)``: the path is singular at 1 (see :class:`RectifiedFlow`).
        N: default number of steps.
    """
    T = check_positive("T", T)
    if not T < 1.0:
        raise ValueError(f"T must lie in (0, 1) for rectified_flow (a(1) = 0 makes the drift singular), got {T!r}")
    return RectifiedFlow(T, check_int("N", N, minimum=1))


# --------------------------------------------------------------------------------------------------- TrigFlow


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class TrigFlow(GaussianPath):
    """TrigFlow (Lu & Song 2025, "Simplifying, stabilizing and scaling continuous-time consistency models"):
    ``x_t = cos(t) x_0 + sin(t) z`` with ``z ~ N(0, sigma_data^2 I)``, ``t`` in ``[0, pi/2]``.

    EDM's process in another clock: its noise-to-signal ratio is ``sigma = sigma_data tan(t)``, so EDM's
    preconditioning is TrigFlow's ``c_skip = cos t``, ``c_out = sigma_data sin t``, ``c_in = 1 / sigma_data``, and
    the probability-flow ODE's conditional velocity is ``cos(t) z - sin(t) x_0``. Like rectified flow its signal
    vanishes at the end (``a(pi/2) = 0``): ``T = arctan(sigma_max / sigma_data)`` (EDM's ``sigma_max = 80``:
    ``T = 1.5645`` for ``sigma_data = 0.5``), prior ``N(0, sigma_data^2 I)``.
    """

    sigma_data: float = 0.5
    T: float = math.atan(80.0 / 0.5)
    N: int = 1000

    @property
    def prior_std(self):
        return self.sigma_data

    def marginal(self, t):
        t = as_time(t)
        return jnp.cos(t), self.sigma_data * jnp.sin(t)

    def marginal_derivative(self, t):
        t = as_time(t)
        return -jnp.sin(t), self.sigma_data * jnp.cos(t)

    def log_snr(self, t):
        t = as_time(t)
        return -2.0 * jnp.log(self.sigma_data * jnp.tan(t))

    def t_from_log_snr(self, log_snr):
        """.. math:: t = \\arctan(e^{-\\lambda/2} / \\sigma_d)"""
        return jnp.arctan(jnp.exp(-0.5 * as_time(log_snr)) / self.sigma_data)

    def _drift_rate(self, t):
        return -jnp.tan(as_time(t))

    def _g2(self, t):
        # d s^2/dt - 2 (a'/a) s^2 = 2 sd^2 sin cos + 2 tan sd^2 sin^2 = 2 sd^2 tan(t)
        return 2.0 * self.sigma_data**2 * jnp.tan(as_time(t))

    def _log_mean_coeff(self, t):
        return jnp.log(jnp.cos(as_time(t)))


def trigflow(sigma_data: float = 0.5, *, sigma_max: float = 80.0, N: int = 1000) -> TrigFlow:
    """TrigFlow's path ``x_t = cos(t) x_0 + sin(t) sigma_data eps`` (see :class:`TrigFlow`) up to
    ``T = arctan(sigma_max / sigma_data)``.

    .. math:: \\frac{dx}{dt} = \\cos(t) z - \\sin(t) x_0 \\text{ (conditional velocity)},\\quad f = -\\tan(t)\\, x,
        \\quad g^2 = 2 \\sigma_d^2 \\tan t
    """
    sigma_data = check_positive("sigma_data", sigma_data)
    sigma_max = check_positive("sigma_max", sigma_max)
    return TrigFlow(sigma_data, math.atan(sigma_max / sigma_data), check_int("N", N, minimum=1))


# -------------------------------------------------------------------------------------------------------- EDM


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class EDMProcess(GaussianPath):
    """EDM's process (Karras et al. 2022): ``a = 1``, ``s = sigma``, in EDM's own time ``t = sigma``.

    ``T = sigma_max``, ``t_eps = sigma_min``, ``dx = sqrt(2 t) dw``, prior ``N(0, sigma_max^2 I)``. The
    probability-flow ODE is EDM's eq. 4 ``dx/dsigma = -sigma score``, so :func:`diffjax.samplers.ode_heun` on the
    grid :func:`karras_time_grid` (its default grid, :meth:`default_times`) is EDM's deterministic sampler
    (Algorithm 1, whose last step is Euler).
    """

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    N: int = 1000

    @property
    def T(self):
        return self.sigma_max

    @property
    def t_eps(self):
        return self.sigma_min

    @property
    def prior_std(self):
        return self.sigma_max

    def sigma(self, t):
        return as_time(t)

    def marginal(self, t):
        t = as_time(t)
        return jnp.ones_like(t), t

    def marginal_derivative(self, t):
        t = as_time(t)
        return jnp.zeros_like(t), jnp.ones_like(t)

    def log_snr(self, t):
        return -2.0 * jnp.log(as_time(t))

    def t_from_log_snr(self, log_snr):
        """.. math:: t = \\sigma = e^{-\\lambda/2}"""
        return jnp.exp(-0.5 * as_time(log_snr))

    def _drift_rate(self, t):
        return jnp.zeros_like(as_time(t))

    def _g2(self, t):
        return 2.0 * as_time(t)

    def forward_chain_step(self, x, t, t_next):
        t, t_next = as_time(t), as_time(t_next)
        return jnp.zeros_like(x), t**2 - t_next**2

    def default_times(self, num_steps: int, t_eps: float) -> jax.Array:
        """EDM's rho = 7 grid (eq. 5) from ``sigma_max`` down to ``t_eps``: equal steps in t = sigma would leave one
        step from about ``sigma_max / num_steps`` to ``sigma_min``, where the image forms."""
        return karras_time_grid(self, num_steps, sigma_min=float(t_eps), rho=7.0)

    def _log_mean_coeff(self, t):
        return jnp.zeros_like(as_time(t))


def edm_sde(sigma_min: float = 0.002, sigma_max: float = 80.0, *, N: int = 1000) -> EDMProcess:
    """EDM's process ``x_sigma = x_0 + sigma eps`` with time ``t = sigma`` in ``[sigma_min, sigma_max]``.

    .. math:: dx = \\sqrt{2t}\\, dw,\\quad \\frac{dx}{dt} = -t\\, \\nabla_x \\log p_t(x) \\text{ (prob.-flow ODE)}
    """
    sigma_min = check_positive("sigma_min", sigma_min)
    sigma_max = check_positive("sigma_max", sigma_max)
    if sigma_max <= sigma_min:
        raise ValueError(f"sigma_max must be > sigma_min={sigma_min!r}, got {sigma_max!r}")
    return EDMProcess(sigma_min, sigma_max, check_int("N", N, minimum=1))


def karras_time_grid(process, num_steps: int, *, sigma_min: float | None = None, sigma_max: float | None = None,
                     rho: float = 7.0) -> jax.Array:
    """Karras et al.'s rho-grid (EDM eq. 5) as ``num_steps + 1`` times of any process, from the top down.

    .. math:: \\sigma_i = \\big(\\sigma_{max}^{1/\\rho} + \\tfrac{i}{n}(\\sigma_{min}^{1/\\rho}
        - \\sigma_{max}^{1/\\rho})\\big)^\\rho,\\quad t_i = \\lambda^{-1}(-2 \\log \\sigma_i)

    with ``sigma = s/a`` the process's noise-to-signal ratio (``i = 0 .. n``; EDM's extra ``sigma_N = 0`` is not
    included: the last time is ``sigma_min``'s).

    Args:
        process: any forward process (uses ``marginal`` and ``t_from_log_snr``).
        num_steps: ``n``, the number of intervals.
        sigma_min, sigma_max: end points; default ``s/a`` at ``process.t_eps`` and ``process.T``.
        rho: EDM's 7.

    Returns:
        ``(num_steps + 1,)`` float32 times, decreasing.
    """
    check_process(process, name="process", where="karras_time_grid")
    num_steps = check_int("num_steps", num_steps, minimum=1)
    rho = check_positive("rho", rho)
    with jax.ensure_compile_time_eval():
        def ratio(t):
            a, s = process.marginal(jnp.float32(t))
            return float(s / a)

        sigma_min = check_positive("sigma_min", ratio(process.t_eps) if sigma_min is None else sigma_min)
        sigma_max = check_positive("sigma_max", ratio(process.T) if sigma_max is None else sigma_max)
    if not sigma_min < sigma_max:
        raise ValueError(f"sigma_min must be < sigma_max={sigma_max!r}, got {sigma_min!r}")
    i = jnp.arange(num_steps + 1, dtype=jnp.float32)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    sigmas = (hi + i / num_steps * (lo - hi)) ** rho
    return process.t_from_log_snr(-2.0 * jnp.log(sigmas)).astype(jnp.float32)
