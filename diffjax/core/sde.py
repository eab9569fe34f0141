"""Forward SDEs of score-SDE (Song et al. 2021): VP, sub-VP, VE; and the reverse-time SDE and probability-flow ODE.

Every SDE here has the same methods (time ``t`` is a scalar or an array of shape ``(batch,)``; ``x`` is
``(batch, *dims)``):

* ``coefficients(x, t) -> (drift, diffusion)`` of ``dx = f(x, t) dt + g(t) dw``; ``drift(x, t)``; ``diffusion(t)``.
* ``marginal(t) -> (mean_coeff, std)``: ``x_t = mean_coeff * x_0 + std * noise``; ``perturb(x0, t, noise)``.
* ``log_snr(t)`` and its inverse ``t_from_log_snr(lam)``, ``prior_sample(key, shape)``, ``prior_logp(z)``
  (summed over non-batch dims, nats).
* ``discretize(x, t) -> (f, G)``: one step ``x_{i+1} = x_i + f + G z`` of the forward chain on the grid
  ``t_i = i / (N - 1) * T`` (DDPM's chain for VP, SMLD's for VE, Euler-Maruyama otherwise).
* ``index(t)``: the grid index nearest to ``t``; ``grid()``: the ``N`` grid times.
* ``langevin_alpha(t, dt)``: the Langevin corrector's step-size factor (the forward chain's ``alpha`` over one
  step ``dt`` ending at ``t``; 1 for VE), in ``(0, 1]`` for every ``dt``.

The SDEs are frozen dataclasses registered as static pytrees, so they are hashable, compare by value and pass
through ``jax.jit`` as arguments without retracing.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple, Union

import jax
import jax.numpy as jnp

from diffjax.core._checks import check_finite, check_int, check_positive
from diffjax.core.schedules import CosineBeta, LinearBeta

__all__ = [
    "forward_chain_step",
    "VPSDE",
    "SubVPSDE",
    "VESDE",
    "SDE",
    "vp_sde",
    "cosine_vp_sde",
    "subvp_sde",
    "ve_sde",
    "ReverseSDE",
    "reverse_sde",
    "probability_flow_ode",
    "bcast",
    "standard_normal_logp",
]

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


def bcast(c: jax.Array, x: jax.Array) -> jax.Array:
    """Broadcast a per-example coefficient (shape ``()`` or ``(batch,)``) against ``x`` of shape ``(batch, *dims)``."""
    c = jnp.asarray(c)
    return c.reshape(c.shape + (1,) * (x.ndim - c.ndim))


def standard_normal_logp(z: jax.Array, std: float | jax.Array = 1.0) -> jax.Array:
    """Log-density of ``N(0, std^2 I)`` summed over all but the first axis."""
    d = math.prod(z.shape[1:])
    return -0.5 * d * jnp.log(2 * math.pi * std**2) - 0.5 * jnp.sum(z**2, axis=tuple(range(1, z.ndim))) / std**2


class _Base:
    T: float = 1.0
    N: int = 1000

    def drift(self, x, t):
        return self.coefficients(x, t)[0]

    def diffusion(self, t):
        return self.coefficients(jnp.zeros(()), t)[1]

    def perturb(self, x0, t, noise):
        mean, std = self.marginal(t)
        return bcast(mean, x0) * x0 + bcast(std, x0) * noise

    def log_snr(self, t):
        mean, std = self.marginal(t)
        return 2.0 * (jnp.log(mean) - jnp.log(std))

    def grid(self) -> jax.Array:
        return jnp.linspace(0.0, self.T, self.N, dtype=jnp.float32)

    def index(self, t):
        return jnp.clip(jnp.round(jnp.asarray(t) * (self.N - 1) / self.T), 0, self.N - 1).astype(jnp.int32)

    def discretize(self, x, t):
        dt = self.T / self.N
        f, g = self.coefficients(x, t)
        return f * dt, g * math.sqrt(dt)

    def langevin_alpha(self, t, dt):
        """The Langevin step-size rule's ``alpha`` at time ``t`` on a grid of spacing ``dt``: the signal fraction kept
        by one step of the forward chain from ``t - dt`` to ``t`` (``t - dt`` floored at 0), always in ``(0, 1]``.

        .. math:: \\alpha(t) = \\frac{m(t)^2}{m(t - \\Delta t)^2} = \\frac{\\bar\\alpha(t)}{\\bar\\alpha(t - \\Delta t)}

        with ``m`` the marginal's mean coefficient. For VP and sub-VP this is DDPM's ``alpha_i = 1 - beta_i``, which
        score-SDE's corrector linearizes as ``1 - beta(t) dt``; the two agree to ``O((beta dt)^2)`` (within 2e-4 at
        its default ``dt = 1/1000``), but the linearization turns negative, and the corrector's noise ``sqrt(2 eps)``
        NaN, once ``beta(t) dt > 1`` (few steps, or the cosine schedule's large ``beta`` near ``T``). VE (``m = 1``): 1.

        Args:
            t: time, ``()`` or ``(batch,)``.
            dt: grid spacing (a float), e.g. ``sde.T / sde.N``.

        Returns:
            ``alpha`` shaped like ``t``.
        """
        t = jnp.asarray(t, jnp.float32)
        log_ratio = self._log_mean_coeff(t) - self._log_mean_coeff(jnp.maximum(t - dt, 0.0))
        return jnp.minimum(jnp.exp(2.0 * log_ratio), 1.0)

    def _log_mean_coeff(self, t):
        return jnp.log(self.marginal(t)[0])


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class VPSDE(_Base):
    """Variance-preserving SDE: ``dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw``; DDPM in continuous time."""

    schedule: Union[LinearBeta, CosineBeta] = LinearBeta()
    N: int = 1000

    def coefficients(self, x, t):
        beta = self.schedule.beta(jnp.asarray(t))
        return -0.5 * bcast(beta, x) * x, jnp.sqrt(beta)

    def marginal(self, t):
        log_mean = -0.5 * self.schedule.integral(jnp.asarray(t))
        return jnp.exp(log_mean), jnp.sqrt(-jnp.expm1(2.0 * log_mean))

    def log_snr(self, t):
        integral = self.schedule.integral(jnp.asarray(t))
        return -integral - jnp.log(-jnp.expm1(-integral))

    def _log_mean_coeff(self, t):
        return -0.5 * self.schedule.integral(jnp.asarray(t))

    def t_from_log_snr(self, log_snr):
        """Inverse of :meth:`log_snr`: the time whose marginal has ``alpha_bar = sigmoid(log_snr)``.

        .. math:: t = I^{-1}(\\operatorname{softplus}(-\\lambda)),\\quad I(t) = \\int_0^t \\beta(s)\\, ds
        """
        return self.schedule.inverse_integral(jax.nn.softplus(-jnp.asarray(log_snr)))

    def prior_sample(self, key, shape, dtype=jnp.float32):
        return jax.random.normal(key, shape, dtype)

    def prior_logp(self, z):
        return standard_normal_logp(z)

    def discrete_betas(self) -> jax.Array:
        return self.schedule.discrete_betas(self.N)

    def discretize(self, x, t):
        beta = self.discrete_betas()[self.index(t)]
        return bcast(jnp.sqrt(1.0 - beta) - 1.0, x) * x, jnp.sqrt(beta)


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class SubVPSDE(_Base):
    """Sub-VP SDE: ``dx = -1/2 beta x dt + sqrt(beta (1 - exp(-2 int_0^t beta))) dw`` (score-SDE eq. 34)."""

    schedule: Union[LinearBeta, CosineBeta] = LinearBeta()
    N: int = 1000

    def coefficients(self, x, t):
        t = jnp.asarray(t)
        beta = self.schedule.beta(t)
        g2 = beta * -jnp.expm1(-2.0 * self.schedule.integral(t))
        return -0.5 * bcast(beta, x) * x, jnp.sqrt(g2)

    def marginal(self, t):
        integral = self.schedule.integral(jnp.asarray(t))
        return jnp.exp(-0.5 * integral), -jnp.expm1(-integral)

    def _log_mean_coeff(self, t):
        return -0.5 * self.schedule.integral(jnp.asarray(t))

    def t_from_log_snr(self, log_snr):
        """Inverse of :meth:`log_snr` (``snr = a / (1 - a)^2`` with ``a = exp(-I)``, the root ``a < 1``).

        .. math:: I = \\log\\!\\big(1 + \\tfrac{e^{-\\lambda}}{2} + \\sqrt{e^{-\\lambda}(1 + e^{-\\lambda}/4)}\\big),
            \\quad t = I^{-1}(I)
        """
        lam = jnp.asarray(log_snr)
        # lam >= 0: e = exp(-lam) <= 1, the form above (no cancellation as I -> 0);
        # lam < 0: I = -lam - log 2 + log(2 snr + 1 + sqrt(4 snr + 1)), snr = exp(lam) < 1 (no overflow)
        e = jnp.exp(-jnp.maximum(lam, 0.0))
        small = jnp.log1p(0.5 * e + jnp.sqrt(e * (1.0 + 0.25 * e)))
        snr = jnp.exp(jnp.minimum(lam, 0.0))
        large = -lam - math.log(2.0) + jnp.log(2.0 * snr + 1.0 + jnp.sqrt(4.0 * snr + 1.0))
        return self.schedule.inverse_integral(jnp.where(lam >= 0, small, large))

    def prior_sample(self, key, shape, dtype=jnp.float32):
        return jax.random.normal(key, shape, dtype)

    def prior_logp(self, z):
        return standard_normal_logp(z)


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class VESDE(_Base):
    """Variance-exploding SDE: ``dx = sqrt(d sigma^2/dt) dw``, ``sigma(t) = sigma_min (sigma_max/sigma_min)^t``.

    As in score-SDE, the marginal std is ``sigma(t)`` itself (data at t=0 carry ``sigma_min`` noise), so the
    grid ``t_i = i/(N-1)`` gives exactly NCSN's geometric sigmas.
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    N: int = 1000

    def sigma(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** jnp.asarray(t)

    def coefficients(self, x, t):
        sigma = self.sigma(t)
        g = sigma * math.sqrt(2.0 * (math.log(self.sigma_max) - math.log(self.sigma_min)))
        return jnp.zeros_like(x), g

    def marginal(self, t):
        sigma = self.sigma(t)
        return jnp.ones_like(sigma), sigma

    def t_from_log_snr(self, log_snr):
        """Inverse of :meth:`log_snr` (``= -2 log sigma(t)``).

        .. math:: t = \\frac{-\\lambda/2 - \\log\\sigma_{min}}{\\log(\\sigma_{max}/\\sigma_{min})}
        """
        return (-0.5 * jnp.asarray(log_snr) - math.log(self.sigma_min)) / math.log(self.sigma_max / self.sigma_min)

    def prior_sample(self, key, shape, dtype=jnp.float32):
        return self.sigma_max * jax.random.normal(key, shape, dtype)

    def prior_logp(self, z):
        return standard_normal_logp(z, self.sigma_max)

    def discrete_sigmas(self) -> jax.Array:
        """Ascending: ``sigma(t_i)`` on the grid (NCSN's list reversed)."""
        return jnp.exp(jnp.linspace(math.log(self.sigma_min), math.log(self.sigma_max), self.N, dtype=jnp.float32))

    def discretize(self, x, t):
        i = self.index(t)
        sigmas = self.discrete_sigmas()
        prev = jnp.where(i == 0, 0.0, sigmas[jnp.maximum(i - 1, 0)])
        return jnp.zeros_like(x), jnp.sqrt(sigmas[i] ** 2 - prev**2)


SDE = Union[VPSDE, SubVPSDE, VESDE]


def vp_sde(beta_min: float = 0.1, beta_max: float = 20.0, *, N: int = 1000) -> VPSDE:
    """VP SDE with score-SDE's linear beta(t); at ``N=1000`` its DDPM discretization is DDPM's betas."""
    return VPSDE(LinearBeta(check_positive("beta_min", beta_min), check_positive("beta_max", beta_max)),
                 check_int("N", N, minimum=1))


def cosine_vp_sde(s: float = 0.008, *, alpha_bar_end: float = 5e-5, N: int = 1000) -> VPSDE:
    """VP SDE with improved DDPM's cosine schedule (see :class:`CosineBeta`).

    Its DDPM discretization ``discrete_betas()`` is the published grid, ``cosine_betas(N, s=s)`` clipped at 0.999;
    its continuous marginal follows the same cosine curve on a time axis scaled so that ``alpha_bar(1) =
    alpha_bar_end`` (finite ``beta``), within 4.1e-3 of the published curve in ``alpha_bar`` at the default.
    """
    return VPSDE(CosineBeta(check_positive("s", s), check_finite("alpha_bar_end", alpha_bar_end)),
                 check_int("N", N, minimum=1))


def subvp_sde(beta_min: float = 0.1, beta_max: float = 20.0, *, N: int = 1000) -> SubVPSDE:
    """Sub-VP SDE with the linear beta(t) of score-SDE."""
    return SubVPSDE(LinearBeta(check_positive("beta_min", beta_min), check_positive("beta_max", beta_max)),
                    check_int("N", N, minimum=1))


def ve_sde(sigma_min: float = 0.01, sigma_max: float = 50.0, *, N: int = 1000) -> VESDE:
    """VE SDE (SMLD / NCSN in continuous time); ``0 < sigma_min < sigma_max``, both finite."""
    sigma_min = check_positive("sigma_min", sigma_min)
    sigma_max = check_positive("sigma_max", sigma_max)
    if sigma_max <= sigma_min:
        raise ValueError(f"sigma_max must be > sigma_min={sigma_min!r}, got {sigma_max!r}")
    return VESDE(sigma_min, sigma_max, check_int("N", N, minimum=1))


class ReverseSDE(NamedTuple):
    """Reverse-time SDE (score-SDE eq. 6): ``dx = [f - g^2 score] dt + g dw_bar``, integrated from T down to 0.

    ``coefficients`` returns the drift with respect to forward time ``dt`` (a sampler steps with ``dt < 0``).
    ``discretize`` is the reverse of the forward chain: ``x_{i-1} = x_i - f + G^2 score + G z``, written as
    ``(rev_f, rev_G)`` with ``x_{i-1} = x_i + rev_f + rev_G z``.
    """

    sde: SDE
    score_fn: ScoreFn

    @property
    def T(self):
        return self.sde.T

    @property
    def N(self):
        return self.sde.N

    def coefficients(self, x, t):
        f, g = self.sde.coefficients(x, t)
        return f - bcast(g**2, x) * self.score_fn(x, t), g

    def discretize(self, x, t):
        f, G = self.sde.discretize(x, t)
        return bcast(G**2, x) * self.score_fn(x, t) - f, G


def reverse_sde(sde: SDE, score_fn: ScoreFn) -> ReverseSDE:
    """The reverse-time SDE of ``sde`` driven by ``score_fn(x, t)``."""
    return ReverseSDE(sde, score_fn)


def probability_flow_ode(sde: SDE, score_fn: ScoreFn) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """Vector field of the probability-flow ODE (score-SDE eq. 13):

    .. math:: \\frac{dx}{dt} = f(x, t) - \\tfrac12 g(t)^2 \\nabla_x \\log p_t(x)
    """

    def vector_field(x, t):
        f, g = sde.coefficients(x, t)
        return f - 0.5 * bcast(g**2, x) * score_fn(x, t)

    return vector_field


def forward_chain_step(sde, x, t, t_next):
    """``(F, G^2)`` of one forward step ``x_t = x_{t_next} + F + G z`` of the discretized chain between grid times
    ``t_next < t`` (scalars): the step that reverse diffusion inverts.

    VP: DDPM's step with ``beta = 1 - alpha_bar(t) / alpha_bar(t_next)``; VE: SMLD's step with
    ``G^2 = sigma(t)^2 - sigma(t_next)^2`` (score-SDE eq. 45-46, on any grid); otherwise Euler-Maruyama.
    """
    if isinstance(sde, VPSDE):
        m_t, _ = sde.marginal(t)
        m_n, _ = sde.marginal(t_next)
        beta = -jnp.expm1(2.0 * (jnp.log(m_t) - jnp.log(m_n)))
        return (jnp.sqrt(1.0 - beta) - 1.0) * x, beta
    if isinstance(sde, VESDE):
        _, s_t = sde.marginal(t)
        _, s_n = sde.marginal(t_next)
        return jnp.zeros_like(x), s_t**2 - s_n**2
    dt = t - t_next
    f, g = sde.coefficients(x, jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],)))
    return f * dt, bcast(g**2 * dt, x)
