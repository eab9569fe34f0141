"""Flow maps: networks ``u(x_t, t, s)`` that jump along the probability-flow ODE from time ``t`` to any earlier
``s`` in one evaluation, trained from scratch (MeanFlow, Geng et al. 2025; shortcut models, Frans et al. 2025).

On any Gaussian path ``x_t = a_t x_0 + s_t eps`` of the core, the probability-flow ODE ``dx/dt = v(x, t)`` carries
``x_t`` to ``x_s``; its *average velocity* between the two times is

.. math:: u(x_t, t, s) = \\frac{1}{t - s} \\int_s^t v(x_\\tau, \\tau)\\, d\\tau,\\qquad x_s = x_t - (t - s)\\, u(x_t, t, s)

(``u(x, t, t) = v(x, t)``: the flow-matching velocity; ``s = 0``: a consistency model's jump to the data). Two
identities of the exact map give the training targets:

* MeanFlow (Geng et al. 2025, eq. 6): differentiating ``(t - s) u = int_s^t v`` in ``t`` along the ODE,
  ``u = v - (t - s) (d/dt) u`` with ``(d/dt) u = (du/dx) v + du/dt``, one forward-mode derivative
  (:func:`meanflow_target`, ``jax.jvp`` with tangents ``(v, 1, 0)``);
* shortcut (Frans et al. 2025, eq. 5): the semigroup property, one jump of length ``2d`` is two jumps of length ``d``,
  ``u(x_t, t, t - 2d) = (u(x_t, t, t - d) + u(x_{t-d}, t - d, t - 2d)) / 2`` (:func:`shortcut_target`).

* continuous-time consistency (sCM, Lu & Song 2025): the jump to ``s = 0``, ``f(x_t, t) = x_t - t u(x_t, t, 0)``,
  is constant along the ODE, ``df/dt = 0`` (MeanFlow's identity at ``s = 0``); on the TrigFlow path with
  ``f = cos(t) x - sin(t) sigma_d F(x / sigma_d, t)`` the training signal is ``cos(t) df/dt`` in ``F``'s units,
  normalised (:func:`scm_tangent`, :func:`scm_loss`); :func:`trigflow_flow_map` is the same network as a flow map.

Training replaces the marginal velocity ``v`` by the conditional one ``a'_t x_0 + s'_t eps`` (unbiased for the
regression; sCM's tangent is affine in ``v``, so its expectation is the marginal one's). For Gaussian data every quantity is in closed form (:class:`GaussianFlowMap`), the oracle the tests
check each target against.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

__all__ = ["GaussianFlowMap", "meanflow_target", "meanflow_loss", "shortcut_target", "shortcut_loss",
           "logit_normal_two_times", "uniform_two_times", "flow_map_sample", "trigflow_consistency",
           "trigflow_flow_map", "trigflow_velocity", "scm_tangent", "scm_loss"]

FlowMapFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]  # u(x, t, s) -> like x


def _bcast(t, x):
    t = jnp.asarray(t, x.dtype)
    return t.reshape(t.shape + (1,) * (x.ndim - t.ndim)) if t.ndim else t


@dataclasses.dataclass(frozen=True)
class GaussianFlowMap:
    """The exact probability-flow map of data ``N(mean, diag(std^2))`` on ``process``'s Gaussian path.

    Per coordinate ``x_t ~ N(m_t, sigma_t^2)``, ``m_t = a_t mean``, ``sigma_t^2 = a_t^2 std^2 + s_t^2``; the ODE is
    the monotone transport between these marginals, ``x_s = m_s + (sigma_s / sigma_t)(x_t - m_t)``, and its velocity
    ``v(x, t) = m'_t + (sigma'_t / sigma_t)(x - m_t)``."""

    process: object
    mean: jax.Array
    std: jax.Array

    def _moments(self, t):
        a, s = self.process.marginal(t)
        da, ds = self.process.marginal_derivative(t)
        var = a**2 * self.std**2 + s**2
        sigma = jnp.sqrt(var)
        return a * self.mean, sigma, da * self.mean, (a * da * self.std**2 + s * ds) / sigma

    def velocity(self, x, t):
        m, sigma, dm, dsigma = self._moments(_bcast(t, x))
        return dm + dsigma / sigma * (x - m)

    def flow(self, x, t, s):
        m_t, sig_t, _, _ = self._moments(_bcast(t, x))
        m_s, sig_s, _, _ = self._moments(_bcast(s, x))
        return m_s + sig_s / sig_t * (x - m_t)

    def average_velocity(self, x, t, s):
        """``u(x, t, s) = (x - flow(x, t, s)) / (t - s)``; ``v(x, t)`` where ``s = t``."""
        dt = _bcast(t, x) - _bcast(s, x)
        safe = jnp.where(dt == 0, 1.0, dt)
        return jnp.where(dt == 0, self.velocity(x, t), (x - self.flow(x, t, s)) / safe)


def meanflow_target(u_fn: FlowMapFn, x_t, v, t, s):
    """``(u, u_target)``: the network's ``u(x_t, t, s)`` and MeanFlow's target
    ``v - (t - s) ((du/dx) v + du/dt)`` (not yet stop-gradiented), from one ``jax.jvp`` with tangents ``(v, 1, 0)``.
    ``t, s``: arrays of shape ``(batch,)`` with ``s <= t``."""
    u, du_dt = jax.jvp(u_fn, (x_t, t, s), (v, jnp.ones_like(t), jnp.zeros_like(s)))
    return u, v - _bcast(t - s, x_t) * du_dt


def shortcut_target(u_fn: FlowMapFn, x_t, t, s):
    """Two half jumps as the target of one: with ``m = (t + s) / 2``,
    ``(u(x_t, t, m) + u(x_t - (t - m) u(x_t, t, m), m, s)) / 2``."""
    m = 0.5 * (t + s)
    u1 = u_fn(x_t, t, m)
    x_m = x_t - _bcast(t - m, x_t) * u1
    return 0.5 * (u1 + u_fn(x_m, m, s))


def _pair(key, ts, equal_fraction):
    if not 0.0 <= equal_fraction <= 1.0:
        raise ValueError(f"equal_fraction must be in [0, 1], got {equal_fraction!r}")
    t, s = jnp.max(ts, 0), jnp.min(ts, 0)
    return t, jnp.where(jax.random.uniform(key, t.shape) < equal_fraction, t, s)


def logit_normal_two_times(key, n: int, *, T: float, equal_fraction: float = 0.75, mean: float = -0.4,
                           std: float = 1.0):
    """MeanFlow's ``(t, s)``: two logit-normal times in ``(0, T)`` (the logit's ``mean`` and ``std``; the paper's
    best on ImageNet -0.4, 1.0), ``t`` the larger; ``s = t`` on a fraction ``equal_fraction`` of the batch (the
    paper's 75%: flow matching on those rows)."""
    k1, k2 = jax.random.split(key)
    return _pair(k2, T * jax.nn.sigmoid(mean + std * jax.random.normal(k1, (2, n))), equal_fraction)


def uniform_two_times(key, n: int, *, T: float, equal_fraction: float = 0.5):
    """``(t, s)`` uniform on the triangle ``0 <= s <= t <= T`` (``s = t`` on a fraction ``equal_fraction``): long
    jumps (``t - s`` near ``T``, one-step sampling) as often as short ones."""
    k1, k2 = jax.random.split(key)
    return _pair(k2, T * jax.random.uniform(k1, (2, n)), equal_fraction)


def _conditional(process, key, x0, t):
    eps = jax.random.normal(key, x0.shape, x0.dtype)
    a, s = process.marginal(_bcast(t, x0))
    da, ds = process.marginal_derivative(_bcast(t, x0))
    return a * x0 + s * eps, da * x0 + ds * eps


def meanflow_loss(u_fn: FlowMapFn, process, key, x0, *, time_sampler: Callable = logit_normal_two_times,
                  power: float = 1.0, c: float = 1e-3):
    """MeanFlow's training loss on a batch ``x0``: ``sg(w) ||u - sg(u_target)||^2`` with the adaptive weight
    ``w = 1 / (||u - u_target||^2 + c)^power`` (Geng et al. 2025, Sec. 4.3; ``power = 0``: plain squared error),
    at times from ``time_sampler(key, n, T=process.T) -> (t, s)`` (:func:`logit_normal_two_times`,
    :func:`uniform_two_times`; ``functools.partial`` sets their options). Returns ``(loss, aux)``."""
    k_t, k_e = jax.random.split(key)
    t, s = time_sampler(k_t, x0.shape[0], T=float(process.T))
    x_t, v = _conditional(process, k_e, x0, t)
    u, target = meanflow_target(u_fn, x_t, v, t, s)
    sq = jnp.sum((u - jax.lax.stop_gradient(target)).reshape(x0.shape[0], -1) ** 2, axis=1)
    w = jax.lax.stop_gradient(1.0 / (sq + c) ** power)
    return jnp.mean(w * sq), {"meanflow_mse": jnp.mean(sq)}


def shortcut_loss(u_fn: FlowMapFn, process, key, x0, *, levels: int = 7, self_consistency_fraction: float = 0.25):
    """Shortcut models' loss: flow matching (``s = t``) on part of the batch, self-consistency on the rest
    (``self_consistency_fraction``), with jump lengths ``2d``, ``d = T / 2^k`` for ``k = 1..levels`` and ``t`` on
    the grid of multiples of ``d`` (Frans et al. 2025: the same dyadic grid at training and sampling)."""
    n = x0.shape[0]
    k_d, k_t, k_e, k_m = jax.random.split(key, 4)
    T = float(process.T)
    d = T / 2.0 ** jax.random.randint(k_d, (n,), 1, levels + 1)
    # t = j d with 2 <= j <= T / d: room for a jump of 2d
    j = jax.random.randint(k_t, (n,), 2, jnp.round(T / d).astype(jnp.int32) + 1)
    t = j * d
    consistency = jax.random.uniform(k_m, (n,)) < self_consistency_fraction
    s = jnp.where(consistency, t - 2.0 * d, t)
    x_t, v = _conditional(process, k_e, x0, t)
    target = jnp.where(_bcast(consistency, x0), jax.lax.stop_gradient(shortcut_target(u_fn, x_t, t, s)), v)
    sq = jnp.sum((u_fn(x_t, t, s) - target).reshape(n, -1) ** 2, axis=1)
    return jnp.mean(sq), {"flow_matching_mse": jnp.sum(jnp.where(consistency, 0.0, sq)) / jnp.maximum(
        jnp.sum(~consistency), 1), "consistency_mse": jnp.sum(jnp.where(consistency, sq, 0.0)) / jnp.maximum(
        jnp.sum(consistency), 1)}


def flow_map_sample(u_fn: FlowMapFn, x_T, times):
    """Jumps ``x <- x - (t_i - t_{i+1}) u(x, t_i, t_{i+1})`` over the decreasing ``times`` (``len(times) - 1``
    network evaluations, e.g. ``[T, 0]`` for one step). Returns ``(x, nfe)``."""
    times = jnp.asarray(times, x_T.dtype)
    if times.ndim != 1 or times.shape[0] < 2:
        raise ValueError(f"times must be a 1-D grid of at least two times (T ... 0), got shape {times.shape}")
    if not isinstance(times, jax.core.Tracer) and not bool(jnp.all(times[1:] < times[:-1])):
        raise ValueError(f"times must decrease (each jump goes from t to an earlier s < t), got {times.tolist()}")

    def step(x, ts):
        t, s = (jnp.full((x.shape[0],), v, x.dtype) for v in ts)
        return x - _bcast(t - s, x) * u_fn(x, t, s), None

    x, _ = jax.lax.scan(step, x_T, (times[:-1], times[1:]))
    return x, times.shape[0] - 1


TrigFlowFn = Callable[[jax.Array, jax.Array], jax.Array]  # F(x / sigma_d, t) -> like x


def trigflow_consistency(F_fn: TrigFlowFn, sigma_data: float):
    """sCM's consistency function on the TrigFlow path (Lu & Song 2025, eq. 9):
    ``f(x, t) = cos(t) x - sin(t) sigma_d F(x / sigma_d, t)``, ``f(x, 0) = x`` for any ``F`` (EDM's preconditioning
    in TrigFlow's clock, see :class:`~diffjax.core.TrigFlow`)."""
    def f(x, t):
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])
        return _bcast(jnp.cos(t), x) * x - _bcast(sigma_data * jnp.sin(t), x) * F_fn(x / sigma_data, t)

    return f


def trigflow_flow_map(F_fn: TrigFlowFn, sigma_data: float) -> FlowMapFn:
    """The TrigFlow network as a flow map: the jump ``x_s = cos(t - s) x_t - sin(t - s) sigma_d F(x_t / sigma_d, t)``
    (DDIM's step with ``F``'s prediction of ``x_0 = cos(t) x - sin(t) sigma_d F`` and of the noise; TrigFlow's path
    is a rotation), as the average velocity ``u = (x_t - x_s) / (t - s)`` (``sigma_d F`` where ``s = t``). With the
    consistency function's ``F`` the jump to ``s = 0`` is :func:`trigflow_consistency`'s; with the velocity's
    (``sigma_d F = v``) ``u(x, t, t) = v``."""
    def u(x, t, s):
        sd_F = sigma_data * F_fn(x / sigma_data, t)
        d = _bcast(t - s, x)
        safe = jnp.where(d == 0, 1.0, d)
        return jnp.where(d == 0, sd_F, (x - jnp.cos(d) * x + jnp.sin(d) * sd_F) / safe)

    return u


def trigflow_velocity(score_fn: Callable, process, sigma_data: float):
    """The probability-flow velocity ``dx/dt`` on the TrigFlow path (``sigma_data``) of a model trained on any Gaussian
    path ``process`` with ``score_fn(x, tau)``: sCM's teacher for distillation from any diffjax model.

    TrigFlow's ``x_t = cos(t) (x_0 + sigma eps)`` with ``sigma = sigma_d tan t``; the process reaches the same
    noise-to-signal ratio at ``tau`` (its log-SNR inverse), where ``x_tau = (a_tau / cos t) x_t``; its data
    prediction ``x0`` there gives ``dx/dt = (cos(t) x_t - x0) / sin(t)`` (for ``x0`` the true ``x_0`` this is the
    conditional velocity ``cos(t) z - sin(t) x_0``)."""
    from diffjax.core.parameterizations import x0_from_score
    lo, hi = float(process.t_eps), float(process.T)

    def velocity(x, t):
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])
        log_snr = -2.0 * jnp.log(sigma_data * jnp.tan(t))
        tau = jnp.clip(process.t_from_log_snr(log_snr), lo, hi).astype(x.dtype)
        a_tau, _ = process.marginal(tau)
        x_tau = _bcast(a_tau / jnp.cos(t), x) * x
        x0 = x0_from_score(score_fn(x_tau, tau), x_tau, tau, process)
        return (_bcast(jnp.cos(t), x) * x - x0) / _bcast(jnp.sin(t), x)

    return velocity


def scm_tangent(F_fn: TrigFlowFn, x_t, v, t, *, sigma_data: float, warmup=1.0):
    """``(F, g)``: the network ``F(x_t / sigma_d, t)`` and sCM's tangent (Lu & Song 2025, Algorithm 1, before
    normalisation), with ``f`` of :func:`trigflow_consistency` and ``v = dx_t/dt``:

    .. math:: g = \\cos(t) \\frac{df}{dt} = -\\cos^2 t\\, (\\sigma_d F - v) - r \\cos t \\sin t\\, (x_t + \\sigma_d
        \\tfrac{dF}{dt})

    ``dF/dt = (dF/dx) v / sigma_d + dF/dt`` from one ``jax.jvp`` whose tangents carry the factor ``cos t sin t``
    (the paper's stabilisation); ``r = warmup`` in ``[0, 1]`` (tangent warm-up). ``g = 0`` where ``f`` is the exact
    consistency function and ``v`` the exact velocity (``r = 1``). ``t``: ``(batch,)``."""
    c, s = _bcast(jnp.cos(t), x_t), _bcast(jnp.sin(t), x_t)
    cs_t = jnp.cos(t) * jnp.sin(t)
    F, cs_dF = jax.jvp(F_fn, (x_t / sigma_data, t), (c * s * v / sigma_data, cs_t))
    return F, -c**2 * (sigma_data * F - v) - warmup * (c * s * x_t + sigma_data * cs_dF)


def scm_loss(F_fn: TrigFlowFn, process, key, x0, *, p_mean: float = -1.0, p_std: float = 1.4, warmup=1.0,
             normalization: float = 0.1, velocity_fn: Callable | None = None):
    """sCM's continuous-time consistency loss (Lu & Song 2025, Algorithm 1; training without a teacher, or
    distillation with ``velocity_fn(x_t, t) -> dx_t/dt``) on ``process``, a :class:`~diffjax.core.TrigFlow`:
    ``t = arctan(e^tau / sigma_d)``, ``tau ~ N(p_mean, p_std^2)``; the tangent ``g`` of :func:`scm_tangent` divided
    by ``||g|| + normalization`` per sample; the loss ``||F - sg(F + g)||^2 / D``, whose gradient is ``-2 (dF)^T g / D``
    (its value is ``||g||^2 / D``, not a distance to anything). The adaptive weighting ``w_phi(t)`` is left out.
    Returns ``(loss, aux)``."""
    sd = float(process.sigma_data)
    n = x0.shape[0]
    k_t, k_z = jax.random.split(key)
    tau = p_mean + p_std * jax.random.normal(k_t, (n,), x0.dtype)
    t = jnp.minimum(jnp.arctan(jnp.exp(tau) / sd), float(process.T))
    z = sd * jax.random.normal(k_z, x0.shape, x0.dtype)
    c, s = _bcast(jnp.cos(t), x0), _bcast(jnp.sin(t), x0)
    x_t = c * x0 + s * z
    v = c * z - s * x0 if velocity_fn is None else velocity_fn(x_t, t)
    F, g = scm_tangent(F_fn, x_t, v, t, sigma_data=sd, warmup=warmup)
    norm = jnp.sqrt(jnp.sum(g.reshape(n, -1) ** 2, axis=1))
    g = jax.lax.stop_gradient(g / _bcast(norm + normalization, g))
    loss = jnp.mean(jnp.mean((F - jax.lax.stop_gradient(F + g)).reshape(n, -1) ** 2, axis=1))
    return loss, {"tangent_norm": jnp.mean(norm)}
