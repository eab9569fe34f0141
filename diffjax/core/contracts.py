"""The contracts of the library as types: the marginal, the forward process, the score function, the time grid and
the discrete chain.

They are structural (``typing.Protocol``): any object with these members satisfies them, whatever its class. The
built-in processes implement :class:`Process` through :class:`~diffjax.core.process.GaussianPath`, which gives every
member but ``marginal`` a default, and the discrete chains (:class:`~diffjax.core.chains.DDPMGrid`,
:class:`~diffjax.core.chains.SMLDChain`) implement :class:`DiscreteChain`. ``isinstance`` against a protocol checks
that the members exist (not their signatures); the library uses it only to validate what a user passes in.

Shapes: ``x`` is ``(batch, *dims)``; ``t`` is ``()`` or ``(batch,)``, float; ``t = 0`` is the data, ``t = T`` the
prior.
"""
from __future__ import annotations

from typing import Optional, Protocol, runtime_checkable

import jax

__all__ = ["ScoreFn", "Marginal", "Process", "DiscreteChain", "TimeGrid"]


@runtime_checkable
class ScoreFn(Protocol):
    """``score_fn(x, t) -> array shaped like x``: the score ``grad_x log p_t(x)`` of the model."""

    def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array: ...


@runtime_checkable
class Marginal(Protocol):
    """A Gaussian marginal ``x_t = a(t) x_0 + s(t) eps`` on ``[0, T]``: what the losses and the parameterizations
    read. Every :class:`Process` is one; so are the discrete grids (``DDPMGrid``, ``NCSNGrid``) that a discrete
    model is trained and scored on."""

    T: float

    def marginal(self, t) -> tuple[jax.Array, jax.Array]:
        """``(a(t), s(t))``, each shaped like ``t``."""

    def marginal_derivative(self, t) -> tuple[jax.Array, jax.Array]:
        """``(da/dt, ds/dt)``, each shaped like ``t``."""

    def perturb(self, x0: jax.Array, t, noise: jax.Array) -> jax.Array:
        """``a(t) x0 + s(t) noise``."""


@runtime_checkable
class Process(Marginal, Protocol):
    """A forward process: the Gaussian-path protocol that samplers, losses, likelihood and guidance call (see
    :mod:`diffjax.core.process` for the math of each member)."""

    N: int
    t_eps: float

    def log_snr(self, t) -> jax.Array:
        """``2 log(a/s)``, decreasing in ``t``."""

    def t_from_log_snr(self, log_snr) -> jax.Array:
        """The inverse of :meth:`log_snr`."""

    def coefficients(self, x: jax.Array, t) -> tuple[jax.Array, jax.Array]:
        """``(f(x, t), g(t))`` of the forward SDE ``dx = f dt + g dw`` with these marginals."""

    def drift(self, x: jax.Array, t) -> jax.Array:
        """``f(x, t)``."""

    def diffusion(self, t) -> jax.Array:
        """``g(t)``."""

    def forward_chain_step(self, x: jax.Array, t, t_next) -> tuple[jax.Array, jax.Array]:
        """``(F, G^2)`` of the exact transition ``x_t = x_{t_next} + F + G z``."""

    def langevin_alpha(self, t, dt) -> jax.Array:
        """The Langevin corrector's step-size rule's ``alpha`` in ``(0, 1]``."""

    def prior_sample(self, key: jax.Array, shape, dtype=...) -> jax.Array:
        """A draw of the prior at ``T``."""

    def prior_logp(self, z: jax.Array) -> jax.Array:
        """Log-density of the prior, ``(batch,)``, nats."""

    def default_times(self, num_steps: int, t_eps: float) -> jax.Array:
        """The ``num_steps + 1`` decreasing times the samplers step on by default."""

    def importance_time_icdf(self, u: jax.Array, t_eps: float) -> tuple[jax.Array, jax.Array]:
        """``(t, p(t))``: the inverse CDF at ``u`` of the density ``p ~ g^2 / s^2`` on ``[t_eps, T]``."""

    def chain(self) -> Optional[DiscreteChain]:
        """The discrete chain the process offers (DDPM's for VP, SMLD's for VE), or ``None``."""


@runtime_checkable
class DiscreteChain(Protocol):
    """A discrete forward chain of ``N`` steps ``i = 0 .. N-1`` and its reverse (ancestral) step: what the grid
    samplers (:func:`diffjax.samplers.ancestral`) walk. Step ``i`` sits at the continuous time ``time(i)``, where
    the model is evaluated."""

    N: int
    T: float
    variances: tuple[str, ...]  # the allowed ``variance`` options of ancestral_step, default first; () for none

    def time(self, i) -> jax.Array:
        """The continuous time of step ``i`` (int, any shape)."""

    def ancestral_step(self, key: jax.Array, x: jax.Array, i, score_fn: ScoreFn, *,
                       variance: Optional[str] = None) -> tuple[jax.Array, jax.Array]:
        """One reverse step from ``i`` to ``i - 1`` (to the data at ``i = 0``, without noise): ``(x, mean)``."""


class TimeGrid(Protocol):
    """``grid(process, num_steps, t_eps) -> (num_steps + 1,)`` float32 times, decreasing from about ``process.T`` to
    ``t_eps`` (the grids of :mod:`diffjax.samplers`; a hashable function, since it is a static argument of a
    jitted sampler)."""

    def __call__(self, process: Process, num_steps: int, t_eps: float) -> jax.Array: ...


def protocol_members(protocol: type) -> tuple[str, ...]:
    """The public members (attributes and methods) a protocol class requires, its bases' first."""
    names: list[str] = []
    for cls in reversed(protocol.__mro__):
        if not getattr(cls, "_is_protocol", False) or cls is Protocol:
            continue
        for name in (*cls.__dict__.get("__annotations__", {}), *vars(cls)):
            if not name.startswith("_") and name not in names:
                names.append(name)
    return tuple(names)
