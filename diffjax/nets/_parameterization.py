"""The two choices that connect a network to a process, as objects: its time input (what it is fed for continuous
time ``t``) and its parameterization (what it predicts, and how that becomes the score, with the conversions of
:mod:`diffjax.core.parameterizations`). The bridge (:mod:`diffjax.nets._bridge`) resolves the public names
(``TIME_INPUTS``, ``PARAMETERIZATIONS``) to these objects once, with :func:`resolve`.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from diffjax.core._checks import check_choice
from diffjax.core.parameterizations import (edm_preconditioning, edm_sigma, score_from_edm, score_from_eps,
                                            score_from_v, score_from_velocity, score_from_x0)
from diffjax.core.sde import bcast


def resolve(name: str, value: Any, table: Mapping[str, Any]):
    """``table[value]``; a ``ValueError`` naming the argument ``name``, its value and the allowed values otherwise."""
    return table[check_choice(name, value, table)]


# --------------------------------------------------------------------------------------------------- time inputs


@dataclasses.dataclass(frozen=True)
class TimeInput:
    """A network's noise label for continuous time: ``label(t, sde)`` with ``t`` a float array ``()`` or
    ``(batch,)``."""

    label: Callable[[jax.Array, Any], jax.Array]

    def __call__(self, t, sde) -> jax.Array:
        return self.label(jnp.asarray(t, jnp.result_type(float)), sde)

    def preconditioned(self, c_noise, t, sde) -> jax.Array:
        """The label when EDM's preconditioning (which computes its own ``c_noise``) wraps the network."""
        return self(t, sde)


@dataclasses.dataclass(frozen=True)
class EdmNoiseInput(TimeInput):
    """EDM's ``c_noise = log(sigma) / 4``; under EDM's preconditioning, the ``c_noise`` it computes."""

    label: Callable[[jax.Array, Any], jax.Array] = lambda t, sde: edm_preconditioning(edm_sigma(t, sde))[3]

    def preconditioned(self, c_noise, t, sde) -> jax.Array:
        return c_noise


TIME_INPUT_BY_NAME: Mapping[str, TimeInput] = {
    "continuous": TimeInput(lambda t, sde: t * (999.0 / sde.T)),
    "index": TimeInput(lambda t, sde: sde.index(t).astype(jnp.float32)),
    "t": TimeInput(lambda t, sde: t),
    "sigma": TimeInput(edm_sigma),
    "log_sigma": TimeInput(lambda t, sde: jnp.log(edm_sigma(t, sde))),
    "edm": EdmNoiseInput(),
}


# ----------------------------------------------------------------------------------------------- parameterizations


class Parameterization(abc.ABC):
    """What a network predicts: ``score_and_v(net, x, t, sde, time_input) -> (score, v)`` from one evaluation of
    ``net(x_in, labels) -> (out, v)`` (``v`` the learned-variance head's output, or ``None``)."""

    default_time_input = "continuous"

    def configured(self, *, sigma_data: float, scale_by_sigma: bool) -> "Parameterization":
        """This parameterization with the options of :func:`~diffjax.nets.make_score_fn` that concern it."""
        return self

    @abc.abstractmethod
    def score_and_v(self, net, x, t, sde, time_input: TimeInput):
        ...


@dataclasses.dataclass(frozen=True)
class Predicts(Parameterization):
    """A prediction with a closed-form conversion ``to_score(out, x, t, sde)`` (eps, x0, v, the velocity)."""

    to_score: Callable

    def score_and_v(self, net, x, t, sde, time_input):
        out, v = net(x, time_input(t, sde))
        return self.to_score(out, x, t, sde), v


def _score_as_is(out, x, t, sde):
    return out


def _score_from_sigma_score(out, x, t, sde):  # score-SDE's NCSN++ / NCSNv2: the network predicts sigma * score
    return out / bcast(sde.marginal(t)[1], x)


@dataclasses.dataclass(frozen=True)
class PredictsScore(Predicts):
    """The score itself; with ``scale_by_sigma``, the marginal std times the score."""

    to_score: Callable = _score_as_is

    def configured(self, *, sigma_data, scale_by_sigma):
        return Predicts(_score_from_sigma_score) if scale_by_sigma else self


@dataclasses.dataclass(frozen=True)
class PredictsEdm(Parameterization):
    """EDM's raw ``F`` inside its preconditioning (:func:`~diffjax.core.parameterizations.score_from_edm`)."""

    sigma_data: float = 0.5
    default_time_input = "edm"

    def configured(self, *, sigma_data, scale_by_sigma):
        return dataclasses.replace(self, sigma_data=sigma_data)

    def score_and_v(self, net, x, t, sde, time_input):
        v_out = []

        def raw_fn(x_in, c_noise):
            out, v = net(x_in, time_input.preconditioned(c_noise, t, sde))
            v_out.append(v)
            return out

        return score_from_edm(raw_fn, x, t, sde, sigma_data=self.sigma_data), v_out[0]


PARAMETERIZATION_BY_NAME: Mapping[str, Parameterization] = {
    "eps": Predicts(score_from_eps),
    "x0": Predicts(score_from_x0),
    "v": Predicts(score_from_v),
    "score": PredictsScore(),
    "edm": PredictsEdm(),
    "velocity": Predicts(score_from_velocity),  # flow matching's u = a' x0 + s' eps
}
