"""Forward SDEs of score-SDE (Song et al. 2021): VP, sub-VP, VE; and the reverse-time SDE and probability-flow ODE.

The three SDEs are :class:`~diffjax.core.process.GaussianPath` subclasses: they have every method of the process
protocol (see :mod:`diffjax.core.process`: ``marginal``, ``marginal_derivative``, ``log_snr`` /
``t_from_log_snr``, ``coefficients`` / ``drift`` / ``diffusion``, ``forward_chain_step``, ``langevin_alpha``,
``prior_sample`` / ``prior_logp``, ``T``, ``N``, ``t_eps``), with closed forms where they have them. Beyond it:

* ``discretize(x, t) -> (f, G)``: one step ``x_{i+1} = x_i + f + G z`` of the forward chain on the grid
  ``t_i = i / (N - 1) * T`` (DDPM's chain for VP, SMLD's for VE, Euler-Maruyama otherwise).
* ``index(t)``: the grid index nearest to ``t``; ``grid()``: the ``N`` grid times.
* ``chain()``: VP offers DDPM's beta chain (:func:`~diffjax.core.chains.ddpm_chain` of ``discrete_betas()``), VE
  SMLD's sigma chain (:class:`~diffjax.core.chains.SMLDChain`, ``discrete_sigmas()``); the others none.

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
from diffjax.core._deprecation import renamed_keywords
from diffjax.core.chains import DDPMGrid, SMLDChain, ddpm_chain
from diffjax.core.contracts import ScoreFn
from diffjax.core.process import GaussianPath, as_time, bcast, standard_normal_logp
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


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class VPSDE(GaussianPath):
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

    def chain(self) -> DDPMGrid:
        """DDPM's chain of ``N`` steps with :meth:`discrete_betas`, each at the time where the SDE's marginal equals
        its ``alpha_bar`` (:func:`~diffjax.core.chains.ddpm_chain`)."""
        return ddpm_chain(self, self.discrete_betas())

    def discrete_betas(self) -> jax.Array:
        return self.schedule.discrete_betas(self.N)

    def discretize(self, x, t):
        beta = self.discrete_betas()[self.index(t)]
        return bcast(jnp.sqrt(1.0 - beta) - 1.0, x) * x, jnp.sqrt(beta)

    def forward_chain_step(self, x, t, t_next):
        """DDPM's step ``x_t = sqrt(1 - beta) x_n + sqrt(beta) z``, ``beta = 1 - alpha_bar(t) / alpha_bar(t_next)``
        (the exact transition, with ``beta`` computed without cancellation).

        .. math:: F = (\\sqrt{1 - \\beta} - 1) x,\\quad G^2 = \\beta
        """
        beta = -jnp.expm1(2.0 * (self._log_mean_coeff(t) - self._log_mean_coeff(t_next)))
        return bcast(jnp.sqrt(1.0 - beta) - 1.0, x) * x, beta

    def importance_time_icdf(self, u, t_eps):
        """Inverse CDF of the likelihood importance density ``h = g^2 / s^2 = beta / (1 - e^{-I})`` on
        ``[t_eps, T]`` at ``u`` in ``[0, 1)``, and the density: ``(t, p(t))`` (see
        :func:`~diffjax.importance_sample_time`). Antiderivative ``F(t) = log(e^{I(t)} - 1)``.

        .. math:: t = I^{-1}(\\operatorname{softplus}(F(t_\\epsilon) + u (F(T) - F(t_\\epsilon))))
        """
        def F(t):
            return jnp.log(jnp.expm1(self.schedule.integral(as_time(t))))

        f0, f1 = F(t_eps), F(self.T)
        t = jnp.clip(self.schedule.inverse_integral(jax.nn.softplus(f0 + u * (f1 - f0))), t_eps, self.T)
        return t, self.diffusion(t) ** 2 / self.marginal(t)[1] ** 2 / (f1 - f0)


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class SubVPSDE(GaussianPath):
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


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class VESDE(GaussianPath):
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

    t_eps = 1e-5  # score-SDE's sampling eps for VE

    def chain(self) -> SMLDChain:
        """SMLD's chain of ``N`` geometric sigmas at the grid times ``i/(N-1) T``."""
        return SMLDChain(self.sigma_min, self.sigma_max, self.N, self.T)

    @property
    def prior_std(self):
        return self.sigma_max

    def forward_chain_step(self, x, t, t_next):
        """SMLD's step ``x_t = x_n + sqrt(sigma(t)^2 - sigma(t_next)^2) z`` (score-SDE eq. 45-46, on any grid).

        .. math:: F = 0,\\quad G^2 = \\sigma(t)^2 - \\sigma(t_{next})^2
        """
        return jnp.zeros_like(x), self.sigma(t) ** 2 - self.sigma(t_next) ** 2

    def importance_time_icdf(self, u, t_eps):
        """``h = g^2 / s^2 = 2 log(sigma_max / sigma_min)`` is constant: ``t`` uniform on ``[t_eps, T]``."""
        return t_eps + u * (self.T - t_eps), jnp.full(jnp.shape(u), 1.0 / (self.T - t_eps), jnp.float32)

    def discrete_sigmas(self) -> jax.Array:
        """Ascending: ``sigma(t_i)`` on the grid (NCSN's list reversed)."""
        return self.chain().sigmas()

    def discretize(self, x, t):
        i = self.index(t)
        sigmas = self.discrete_sigmas()
        prev = jnp.where(i == 0, 0.0, sigmas[jnp.maximum(i - 1, 0)])
        return jnp.zeros_like(x), jnp.sqrt(sigmas[i] ** 2 - prev**2)


SDE = GaussianPath  # any forward process (the protocol of diffjax.core.process)


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


@renamed_keywords(sde="process")
def reverse_sde(process: SDE, score_fn: ScoreFn) -> ReverseSDE:
    """The reverse-time SDE of ``process`` driven by ``score_fn(x, t)``."""
    return ReverseSDE(process, score_fn)


@renamed_keywords(sde="process")
def probability_flow_ode(process: SDE, score_fn: ScoreFn) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """Vector field of the probability-flow ODE (score-SDE eq. 13):

    .. math:: \\frac{dx}{dt} = f(x, t) - \\tfrac12 g(t)^2 \\nabla_x \\log p_t(x)
    """

    def vector_field(x, t):
        f, g = process.coefficients(x, t)
        return f - 0.5 * bcast(g**2, x) * score_fn(x, t)

    return vector_field


@renamed_keywords(sde="process")
def forward_chain_step(process, x, t, t_next):
    """``(F, G^2)`` of one forward step ``x_t = x_{t_next} + F + G z`` between times ``t_next < t``: the step that
    reverse diffusion inverts. Same as ``process.forward_chain_step(x, t, t_next)`` (the exact Gaussian transition:
    DDPM's step for VP, SMLD's for VE).

    .. math:: F = \\Big(\\frac{a_t}{a_n} - 1\\Big) x,\\quad G^2 = s_t^2 - \\Big(\\frac{a_t}{a_n}\\Big)^2 s_n^2
    """
    return process.forward_chain_step(x, t, t_next)
