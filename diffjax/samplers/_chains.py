"""Samplers on a process's own discrete chain: :func:`ancestral` (DDPM for VP, SMLD for VE), :func:`ddim` (a strided
DDPM chain) and :func:`annealed_langevin` (NCSN's noise levels), over the one sampler loop with grid indices for times.

The chain a process offers decides the ancestral step; that choice is made in one place, :func:`ancestral_step_for`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import numpy as np

from diffjax.core._checks import check_choice, check_int, check_nonnegative, check_positive
from diffjax.core.chains import DDIM_SPACINGS, DDPMGrid, SMLDChain
from diffjax.core.learned_variance import has_learned_variance
from diffjax.discrete import ddpm as _ddpm
from diffjax.discrete import ncsn as _ncsn
from diffjax.samplers._common import (batch_time, check_bool, check_common, deprecated_sde_keyword, floor_time,
                                      with_steps)
from diffjax.samplers._driver import sample_steps
from diffjax.samplers._grids import concrete_ddpm_chain
from diffjax.samplers._kernels import DDIM_VARIANCES, data_prediction, ddim_step

__all__ = ["ancestral", "annealed_langevin", "ddim"]

# ------------------------------------------------------------------------------------------------ ancestral


ANCESTRAL_CHAINS = (DDPMGrid, SMLDChain)  # DDPM Algorithm 2; SMLD's posterior step (score-SDE eq. 47)


def ancestral_step_for(process, score_fn, variance) -> Callable:
    """The ancestral step ``(key, x, i) -> (x, x_mean)`` of the chain ``process`` offers (``process.chain()``)."""
    chain = process.chain()
    return lambda k, x, i: chain.ancestral_step(k, x, i, score_fn, variance=variance)


def _check_ancestral_variance(process, variance, score_fn, num_steps: int):
    """``variance`` resolved for the chain of ``process`` (the options of its ancestral step, default first; SMLD's
    has none), and that chain exists."""
    chain = _checked_chain(process, num_steps)
    if chain.variances:
        return _resolve_variance(variance, score_fn, chain.variances, chain.variances[0])
    if variance is not None:
        raise ValueError(f"variance is a DDPM (VP) option; the ancestral step of {type(process).__name__}'s "
                         f"{type(chain).__name__} (SMLD's on a VESDE) has the posterior variance only: pass "
                         f"variance=None, got {variance!r}")
    return variance


def _resolve_variance(variance, score_fn, allowed, fixed_default):
    if variance is None:
        return "learned" if has_learned_variance(score_fn) else fixed_default
    check_choice("variance", variance, allowed)
    if variance == "learned" and not has_learned_variance(score_fn):
        raise ValueError(f"variance='learned' needs a score_fn with a learned variance (a LearnedVarianceScore with "
                         f"score_and_v, e.g. make_score_fn(..., learned_sigma=True)), got {score_fn!r}; allowed "
                         f"for this score_fn: {[a for a in allowed if a != 'learned']}")
    return variance


def _checked_chain(process, num_steps: int):
    """The ``num_steps``-step chain of ``process``, concrete; it must exist (``num_steps = 1`` takes the exact step
    from ``T`` instead, see :func:`ancestral`: then the chain of ``process.N`` steps). Score-SDE's linear betas
    ``beta(t_i) / N`` reach ``beta_max / N`` at the top, >= 1 for ``N <= beta_max``: the DDPM chain's own check
    raises."""
    try:
        with jax.ensure_compile_time_eval():  # concrete even inside a caller's jit
            return with_steps(process, num_steps if num_steps > 1 else process.N).chain()
    except ValueError as e:
        raise ValueError(f"num_steps={num_steps} is too few for ancestral sampling of {process!r}, whose "
                         f"{num_steps}-step chain does not exist ({e}); allowed: num_steps=1 (one step from T to "
                         f"the data) or enough steps that every beta < 1. For fewer steps of DDPM's step use the "
                         f"strided chain of the process.N-step grid: ddim(..., num_steps={num_steps}, eta=1.0, "
                         f"variance='beta', spacing='trailing')") from None


@dataclasses.dataclass(frozen=True)
class AncestralStep:
    """One step of the chain's ancestral step from grid index ``i`` (``t``) down; the state is ``(x, x_mean)`` and
    the sample is the last mean (step 0 adds no noise)."""
    score_fn: Callable
    process: Any  # with N = num_steps: the chain of num_steps steps
    variance: Optional[str]

    def init(self, x_T, i):
        return x_T, x_T

    def step(self, key, state, i, i_next):
        return ancestral_step_for(self.process, self.score_fn, self.variance)(key, state[0], i)

    def output(self, key, state):
        return state[1]

    def nfe(self, num_steps: int) -> int:
        return num_steps


@dataclasses.dataclass(frozen=True)
class PosteriorMeanStep:
    """The one exact step from ``t`` to the data: the posterior mean ``E[x_0 | x_t]`` (:func:`data_prediction`)."""
    score_fn: Callable
    process: Any

    def init(self, x_T, t):
        return x_T

    def step(self, key, x, t, t_next):
        return data_prediction(x, t, self.score_fn, self.process)

    def output(self, key, x):
        return x

    def nfe(self, num_steps: int) -> int:
        return num_steps


@deprecated_sde_keyword
def ancestral(key, x_T, score_fn, process, *, num_steps=None, t_eps=None, variance=None, return_nfe: bool = False):
    """Ancestral sampling on the model's own discrete chain: DDPM Algorithm 2 for VP, SMLD's (score-SDE eq. 47
    with the posterior variance) for VE, over ``num_steps`` grid steps (default ``process.N`` = 1000).

    Step ``i`` evaluates the model at its own grid time: for VP ``grid.time(i)``, the time at which the SDE's
    marginal equals the grid's ``alpha_bar_i`` (:func:`diffjax.discrete.ddpm_grid`), so a discrete DDPM model
    (scored through its :class:`~diffjax.discrete.DDPMGrid`) sees exactly step ``i`` and a continuous-time model
    exactly ``alpha_bar_i``; for VE ``i/(N-1) T``, where ``sigma(t)`` is the grid's ``sigma_i``.

    Args:
        key, x_T, score_fn: as in :func:`pc`.
        process: a :class:`~diffjax.VPSDE` (discretized as :func:`diffjax.discrete.ddpm_grid` with ``N = num_steps``)
            or a :class:`~diffjax.VESDE` (``num_steps`` geometric sigmas). sub-VP has no such chain: ValueError.
        num_steps: grid steps, each one score evaluation (default ``process.N``). ``num_steps = 1`` is the one exact
            step of the chain from the prior at ``T`` to the data: the posterior mean
            ``E[x_0 | x_T] = (x_T + s(T)^2 score(x_T, T)) / a(T)`` (DDPM's step with ``beta = 1 - alpha_bar(T)``,
            SMLD's from ``sigma_max`` to 0; no noise on a last step), like a one-step :func:`ddim`. (The chains of
            score-SDE's discretization at ``N = 1`` hold their lowest level only, ``beta_min`` or ``sigma_min``,
            and would return about ``x_T``.) On a VP SDE with score-SDE's linear betas ``beta_i = beta(t_i) / N``,
            ``2 <= num_steps <= beta_max`` (20 for ``vp_sde()``) raises ValueError: the top beta
            ``beta_max / num_steps`` reaches 1, so no such chain exists; the strided chain of the ``process.N``-step
            grid, ``ddim(..., eta=1.0, variance="beta", spacing="trailing")``, is DDPM's step with any number of
            steps. The cosine VP's clipped betas and VE's sigmas make a chain for every ``num_steps``.
        t_eps: must be None: the grid fixes every evaluation time (step 0 is the lowest; ValueError otherwise).
        variance: DDPM only: "beta" (``sigma_i^2 = beta_i``, DDPM's), "posterior" (``beta_tilde_i``) or "learned"
            (improved DDPM's ``Sigma_theta`` from the model's ``v``; needs a
            :class:`~diffjax.LearnedVarianceScore`, e.g. ``make_score_fn(..., learned_sigma=True)``).
            Default None: "learned" when ``score_fn`` has a learned variance (improved DDPM samples with it),
            else "beta".
        return_nfe: also return the number of score evaluations (an int32 0-d array).

    Returns:
        (batch, *dims): the last step's mean (step 0 adds no noise); ``(x, nfe)`` if ``return_nfe``.
        ``num_steps`` score (model) evaluations.
    """
    c = check_common("ancestral (DDPM for VP, SMLD for VE)", x_T, score_fn, process, num_steps, t_eps,
                     default_steps=None, chains=ANCESTRAL_CHAINS, grid_times=True, return_nfe=return_nfe)
    variance = _check_ancestral_variance(process, variance, score_fn, c.num_steps)
    if c.num_steps == 1:  # the one exact step of the chain from the prior at T to the data
        return sample_steps(key, x_T, np.asarray([process.T, 0.0]), PosteriorMeanStep(score_fn, process),
                            return_nfe=c.return_nfe)
    # Every step evaluates the model at its own grid time: grid.time(i) for DDPM, sigma_i's time for SMLD; the
    # times are the grid indices N - 1 .. 0 (then -1, the data), and step i's key is folded with i.
    indices = np.arange(c.num_steps - 1, -2, -1, dtype=np.int32)
    step = AncestralStep(score_fn, with_steps(process, c.num_steps), variance)
    return sample_steps(key, x_T, indices, step, key_ids=indices[:-1], return_nfe=c.return_nfe)


# ---------------------------------------------------------------------------------------------- annealed Langevin


@dataclasses.dataclass(frozen=True)
class AnnealedLangevinStep:
    """NCSN's ``n_steps_each`` Langevin steps at noise level ``level`` (``t``) of its ``num_levels`` sigmas;
    ``denoise``: NCSNv2's Tweedie step after the last level."""
    score_fn: Callable
    process: Any
    num_levels: int
    t_eps: float
    n_steps_each: int
    step_lr: float
    denoise: bool

    def _grid(self):
        return _ncsn.ncsn_grid(self.process, self.num_levels)

    def init(self, x_T, level):
        return x_T

    def step(self, key, x, level, level_next):
        grid = self._grid()
        sigmas = grid.sigmas()
        step_size = _ncsn.ncsn_step_size(sigmas[level], sigmas[-1], step_lr=self.step_lr)
        return _ncsn.annealed_langevin_level(key, x, grid.time(level), floor_time(self.score_fn, self.t_eps),
                                             step_size=step_size, n_steps=self.n_steps_each)

    def output(self, key, x):
        if not self.denoise:
            return x
        grid = self._grid()
        score = floor_time(self.score_fn, self.t_eps)
        return x + grid.sigmas()[-1] ** 2 * score(x, batch_time(grid.time(self.num_levels - 1), x))

    def nfe(self, num_steps: int) -> int:
        return num_steps * self.n_steps_each + self.denoise


@deprecated_sde_keyword
def annealed_langevin(key, x_T, score_fn, process, *, num_steps: int = 10, t_eps=None, n_steps_each: int = 100,
                      step_lr: float = 2e-5, denoise: bool = False, return_nfe: bool = False):
    """NCSN's annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1) on a VE SDE.

    ``num_steps`` geometric noise levels from ``process.sigma_max`` to ``process.sigma_min``, at each ``n_steps_each``
    Langevin steps ``x + alpha_i/2 s + sqrt(alpha_i) z`` of size ``alpha_i = step_lr * sigma_i^2 / sigma_L^2``, via
    :func:`diffjax.discrete.ncsn.annealed_langevin_level`. The defaults are the NCSN paper's published setting,
    :data:`diffjax.discrete.ncsn.NCSN_SAMPLING`: L = 10, T = 100, eps = 2e-5, no final denoising (its sigmas run
    1 .. 0.01: ``ve_sde(sigma_min=0.01, sigma_max=1.0)``). NCSNv2's CIFAR-10 setting (Song & Ermon 2020; 232
    levels over ``ve_sde()``'s 50 .. 0.01, T = 5, its eps = 6.2e-6 in the ``eps s + sqrt(2 eps) z`` form, and the
    final denoising step) is ``**diffjax.discrete.ncsn.NCSNV2_CIFAR10_SAMPLING``.

    Args:
        key, x_T, score_fn: as in :func:`pc` (``x_T`` ~ N(0, sigma_max^2), e.g. ``process.prior_sample``).
        process: a :class:`~diffjax.VESDE`.
        num_steps: noise levels L (NCSN: 10).
        t_eps: lowest time at which the score is evaluated.
        n_steps_each: Langevin steps per level T (NCSN: 100).
        step_lr: eps of the step-size rule (NCSN: 2e-5). The released NCSN code steps ``eps_i s + sqrt(2 eps_i) z``
            with the same eps, twice the paper's step: ``step_lr=4e-5`` reproduces it.
        denoise: finish with NCSNv2's Tweedie step ``x + sigma_L^2 s(x, sigma_L)`` (NCSN: no).
        return_nfe: also return the number of score evaluations (an int32 0-d array).

    Returns:
        (batch, *dims), or ``(x, nfe)`` if ``return_nfe``; ``num_steps * n_steps_each (+1 if denoise)`` score
        evaluations.
    """
    c = check_common("annealed_langevin (NCSN)", x_T, score_fn, process, num_steps, t_eps, default_steps=10,
                     chains=(SMLDChain,), denoise=denoise, return_nfe=return_nfe)
    step = AnnealedLangevinStep(score_fn, process, c.num_steps, c.t_eps, check_int("n_steps_each", n_steps_each,
                                                                                   minimum=1),
                                check_positive("step_lr", step_lr), c.denoise)
    levels = np.arange(c.num_steps + 1, dtype=np.int32)  # level i's key is folded with i
    return sample_steps(key, x_T, levels, step, return_nfe=c.return_nfe)


# ------------------------------------------------------------------------------------------------------- DDIM


def _ddim_steps(grid, num_steps: int, spacing: str) -> np.ndarray:
    """DDIM's sub-sequence ``tau`` (static NumPy indices, increasing): :meth:`~diffjax.discrete.DDPMGrid.subsequence`,
    except that a single step is the top step ``N - 1`` for every spacing ("leading" and "linspace" pick step 0 for
    ``num_steps = 1``, as diffusers and the DDIM code do, and that one step from ``alpha_bar_0 = 1 - beta_0`` leaves
    ``x_T`` all but unchanged)."""
    if num_steps == 1:
        return np.asarray([grid.N - 1], np.int32)
    return grid.subsequence(num_steps, spacing=spacing)


@dataclasses.dataclass(frozen=True)
class DDIMStep:
    """One DDIM step (:func:`ddim_step`) from grid index ``i`` to ``i_prev`` of the ``process.N``-step DDPM grid;
    the state is ``(x, x0)``."""
    score_fn: Callable
    process: Any
    eta: float
    variance: str
    clip_x0: bool

    def init(self, x_T, i):
        return x_T, x_T

    def step(self, key, state, i, i_prev):
        return ddim_step(key, state[0], i, i_prev, self.score_fn, _ddpm.ddpm_grid(self.process), eta=self.eta,
                         variance=self.variance, clip_x0=self.clip_x0)

    def output(self, key, state):
        return state[0]

    def nfe(self, num_steps: int) -> int:
        return num_steps


@deprecated_sde_keyword
def ddim(key, x_T, score_fn, process, *, num_steps: int = 50, t_eps=None, eta: float = 0.0, spacing: str = "leading",
         variance=None, clip_x0: bool = False, return_nfe: bool = False):
    """DDIM (Song, Meng & Ermon 2021) on a strided sub-sequence ``tau`` of the DDPM grid of a VP SDE.

    ``tau`` is ``num_steps`` indices of the ``process.N``-step grid :func:`diffjax.discrete.ddpm_grid`, chosen by
    ``spacing`` (:meth:`diffjax.discrete.DDPMGrid.subsequence`), walked from the top down; the last step goes from
    ``tau_0`` to the data (``alpha_bar = 1``, diffusers' ``set_alpha_to_one=True``). Step ``tau_j`` evaluates the
    model at its own grid time ``grid.time(tau_j)`` (a discrete model sees exactly that step, a continuous one
    exactly its ``alpha_bar``), and steps to ``tau_{j-1}``, the next element of ``tau`` (diffusers steps to
    ``tau_j - N // S`` instead, the same for "leading"). The score drives it through
    ``eps = -sqrt(1 - abar) * score``.

    Args:
        key, x_T, score_fn: as in :func:`pc`.
        process: a :class:`~diffjax.VPSDE`.
        num_steps: length of the sub-sequence, 1 .. ``process.N`` (default 50, DDIM's CIFAR-10 setting). One step
            goes from the top step ``N - 1`` to the data, whatever the spacing: the posterior mean ``E[x_0 | x]``
            there ("leading" and "linspace" would pick step 0, as diffusers and the DDIM code do, and return about
            ``x_T``).
        t_eps: must be None: the grid fixes every evaluation time (ValueError otherwise).
        eta: 0 deterministic (DDIM), 1 ancestral (DDPM on the sub-sequence).
        spacing: diffusers' ``timestep_spacing``: "leading" (default; ``j * (N // num_steps)``, the DDIM paper's
            "linear" selection used for its CelebA and LSUN experiments -- its CIFAR-10 runs used a "quadratic" one),
            "trailing" (starts at step ``N-1``) or "linspace" (improved DDPM's respacing).
        variance: what ``eta`` scales (the noise variance is ``eta^2`` times it, the mean is DDIM's):
            "posterior" (``beta_tilde`` of the strided step, DDIM's ``sigma_eta``), "beta" (its ``beta``) or
            "learned" (improved DDPM's ``Sigma_theta`` from the model's ``v`` on the strided step; needs a
            :class:`~diffjax.LearnedVarianceScore`). At ``eta = 1`` each is the ancestral step of the strided chain
            with that variance; "learned" with ``spacing="linspace"`` is improved DDPM's respaced sampler.
            Default None: "learned" when ``score_fn`` has a learned variance, else "posterior". (guided-diffusion's
            ``ddim_sample`` ignores a learned variance and uses ``sigma_eta``: pass ``variance="posterior"``.)
        clip_x0: clip the predicted ``x0`` to ``[-1, 1]`` in the step's ``x0`` term only, keeping the network's
            ``eps`` in the direction term: diffusers' ``DDIMScheduler(clip_sample=True)`` with its default
            ``use_clipped_model_output=False``. (:func:`~diffjax.clip_denoised` on ``score_fn`` is the other
            convention: ``eps`` recomputed from the clipped ``x0``, as in improved-diffusion and GLIDE.)
        return_nfe: also return the number of score evaluations (an int32 0-d array).

    Returns:
        (batch, *dims), or ``(x, nfe)`` if ``return_nfe``; ``num_steps`` score evaluations.
    """
    c = check_common("ddim (a DDPM grid)", x_T, score_fn, process, num_steps, t_eps, default_steps=50,
                     chains=(DDPMGrid,), grid_times=True, return_nfe=return_nfe)
    if c.num_steps > process.N:
        raise ValueError(f"num_steps must be <= sde.N={process.N} for ddim, got {c.num_steps!r}")
    eta = check_nonnegative("eta", eta)
    check_choice("spacing", spacing, DDIM_SPACINGS)
    variance = _resolve_variance(variance, score_fn, DDIM_VARIANCES, "posterior")
    step = DDIMStep(score_fn, process, eta, variance, check_bool("clip_x0", clip_x0))
    # tau from the top down, then -1: the data (alpha_bar = 1)
    seq = _ddim_steps(concrete_ddpm_chain(process), c.num_steps, spacing)
    return sample_steps(key, x_T, np.append(seq[::-1], -1).astype(np.int32), step, return_nfe=c.return_nfe)
