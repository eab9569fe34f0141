"""The one bridge from networks to the core: turn ``apply_fn(variables, x, noise_labels[, y], train=...)`` into the
core's ``score_fn(x, t)``.

Networks know nothing about SDEs. Two choices connect them: what the network is fed as its noise label
(``time_input``, :func:`noise_labels_for`) and what it predicts (``parameterization``, converted with
:mod:`diffjax.core.parameterizations`). Each name is resolved here, once, to its object
(:mod:`diffjax.nets._parameterization`).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp

from diffjax.core._checks import check_positive
from diffjax.core.learned_variance import LearnedVarianceScore
from diffjax.nets._parameterization import PARAMETERIZATION_BY_NAME, TIME_INPUT_BY_NAME, resolve

__all__ = ["TIME_INPUTS", "PARAMETERIZATIONS", "noise_labels_for", "make_score_fn", "make_conditional_score_fn",
           "split_learned_sigma"]

TIME_INPUTS = tuple(TIME_INPUT_BY_NAME)
PARAMETERIZATIONS = tuple(PARAMETERIZATION_BY_NAME)


def noise_labels_for(t, sde, *, time_input: str = "continuous") -> jax.Array:
    """What a network is fed for continuous time ``t`` (shape ``()`` or ``(batch,)``; float32 result, same shape).

    * ``"continuous"``: ``999 t / T`` (score-SDE's continuous VP / sub-VP models, e.g. DDPM++ cont.).
    * ``"index"``: the nearest grid index ``round(t (N-1) / T)`` in ``0..N-1`` (DDPM's timestep for a discrete VP
      model, score-SDE's ``t * (N - 1)``; the level index of a discrete VE model).
    * ``"t"``: ``t`` itself.
    * ``"sigma"`` / ``"log_sigma"``: the noise level ``sigma = std / mean_coeff`` of ``x_t / mean_coeff`` (for VE
      this is ``sigma(t)``), or its log (NCSN-style models; NCSN++'s Fourier features take ``log sigma``).
    * ``"edm"``: EDM's ``c_noise = log(sigma) / 4``.
    """
    return resolve("time_input", time_input, TIME_INPUT_BY_NAME)(t, sde)


def split_learned_sigma(out: jax.Array):
    """Split a learned-variance output ``(batch, ..., 2C)`` into ``(eps, v)``, each ``(batch, ..., C)``; ``v`` in
    ``[-1, 1]``-ish interpolates improved DDPM's log-variance between ``log beta`` and ``log beta_tilde``."""
    if out.shape[-1] % 2:
        raise ValueError(f"a learned-sigma output needs an even channel count, got shape {out.shape}")
    c = out.shape[-1] // 2
    return out[..., :c], out[..., c:]


def _variables(params):
    if isinstance(params, Mapping) and "params" in params:
        return params
    return {"params": params}


def _resolve_options(parameterization, time_input, sigma_data, scale_by_sigma, train, rng):
    """The parameterization and time-input objects the names ``parameterization`` / ``time_input`` stand for."""
    p = resolve("parameterization", parameterization, PARAMETERIZATION_BY_NAME)
    ti = resolve("time_input", p.default_time_input if time_input is None else time_input, TIME_INPUT_BY_NAME)
    check_positive("sigma_data", sigma_data)
    p = p.configured(sigma_data=sigma_data, scale_by_sigma=scale_by_sigma)
    if train and rng is None:
        raise ValueError("rng must be a PRNG key when train=True (dropout), got None")
    return p, ti


def _build(apply_fn, params, sde, parameterization, time_input, train, rng, learned_sigma, with_y):
    variables = _variables(params)
    extra = {"rngs": {"dropout": rng}} if rng is not None else {}

    def net(x, labels, y):
        args = (x, labels, y) if with_y else (x, labels)
        out = apply_fn(variables, *args, train=train, **extra)
        return split_learned_sigma(out) if learned_sigma else (out, None)

    def score_and_v(x, t, y=None):
        """``(score, v)`` from one network evaluation (``v = None`` without a learned-variance head)."""
        t = jnp.broadcast_to(jnp.asarray(t, jnp.result_type(x.dtype, jnp.float32)), (x.shape[0],))
        return parameterization.score_and_v(lambda x_in, labels: net(x_in, labels, y), x, t, sde, time_input)

    if learned_sigma:
        return LearnedVarianceScore(score_and_v)

    def score_fn(x, t, y=None):
        return score_and_v(x, t, y)[0]

    return score_fn


def make_score_fn(apply_fn: Callable, params: Any, sde, *, parameterization: str = "eps",
                  time_input: Optional[str] = None, train: bool = False, rng: Optional[jax.Array] = None,
                  sigma_data: float = 0.5, scale_by_sigma: bool = False, learned_sigma: bool = False):
    """The core's ``score_fn(x, t)`` from a network.

    .. math:: s_\\theta(x, t) = \\mathrm{convert}(\\mathrm{net}(x, \\mathrm{label}(t)), x, t)

    Args:
      apply_fn: ``apply_fn(variables, x, noise_labels, train=...)`` (e.g. ``model.apply``).
      params: the ``"params"`` collection (or a whole variables dict containing it).
      sde: the forward SDE the network was trained with.
      parameterization: what the network predicts: ``"eps"``, ``"x0"``, ``"v"``, ``"score"``, ``"edm"``
        (EDM's raw ``F``; preconditioning with ``sigma = std / mean_coeff``) or ``"velocity"`` (flow matching's
        ``u = a' x0 + s' eps``, :func:`~diffjax.score_from_velocity`; exact also where ``a = 0``).
      time_input: noise label fed to the network, see :func:`noise_labels_for`; default ``"edm"`` for
        ``parameterization="edm"`` else ``"continuous"``.
      train: run the network in training mode (dropout on; needs ``rng``).
      rng: dropout key when ``train=True``.
      sigma_data: EDM's data std.
      scale_by_sigma: with ``parameterization="score"``, divide the output by the marginal std (score-SDE's
        ``scale_by_sigma`` of NCSN++ / NCSNv2 VE models).
      learned_sigma: the network has a learned-variance head (improved DDPM): the first half of its channels
        gives the score, the second half is ``v``, offered by the returned
        :class:`~diffjax.LearnedVarianceScore`'s ``score_and_v(x, t)`` (the grid samplers then sample with the
        learned variance).

    Returns:
      ``score_fn(x, t)`` with ``x`` ``(batch, *dims)`` and ``t`` ``()`` or ``(batch,)``; with ``learned_sigma``
      a :class:`~diffjax.LearnedVarianceScore` (a ``score_fn`` that also has ``score_and_v(x, t) -> (score, v)``).
    """
    p, ti = _resolve_options(parameterization, time_input, sigma_data, scale_by_sigma, train, rng)
    f = _build(apply_fn, params, sde, p, ti, train, rng, learned_sigma, with_y=False)
    if learned_sigma:
        return LearnedVarianceScore(lambda x, t: f.score_and_v(x, t))
    return lambda x, t: f(x, t)


def make_conditional_score_fn(apply_fn: Callable, params: Any, sde, *, parameterization: str = "eps",
                              time_input: Optional[str] = None, train: bool = False, rng: Optional[jax.Array] = None,
                              sigma_data: float = 0.5, scale_by_sigma: bool = False, learned_sigma: bool = False):
    """As :func:`make_score_fn` for a class-conditional network: returns ``score_fn(x, t, y)`` where ``y`` is
    ``(batch,)`` int labels, or ``None`` for the null (unconditional) label of classifier-free guidance.
    ``apply_fn`` is called as ``apply_fn(variables, x, noise_labels, y, train=...)``. With ``learned_sigma``, a
    :class:`~diffjax.LearnedVarianceScore` whose ``score_and_v(x, t, y)`` also returns ``v``."""
    p, ti = _resolve_options(parameterization, time_input, sigma_data, scale_by_sigma, train, rng)
    return _build(apply_fn, params, sde, p, ti, train, rng, learned_sigma, with_y=True)
