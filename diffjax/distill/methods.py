"""Each few-step method as one object: its loss, its sampler, its rounds, and the state its training carries besides
the student.

A method holds hyperparameters only (a frozen dataclass, hashable): the networks come from a :class:`DistillNetworks`
that the run passes in (the student's and the teacher's functions of their parameters; flax stays in the run), and
the parameters travel in the train state, whose ``aux = {"teacher": params, "target": params}`` holds the frozen
networks the loss reads (a scalar placeholder where unused). :mod:`diffjax.config_lib` builds the method from
``distill.method`` once; the run (:class:`diffjax.run.Distiller`) calls it and never asks which method it holds.

* :class:`ProgressiveDistillation` (Salimans & Ho 2022): :func:`~diffjax.distill.pd_loss` in rounds that halve the
  student's DDIM steps, each round's EMA student the next round's teacher; :func:`~diffjax.distill.pd_sample`.
* :class:`ConsistencyDistillation` (Song et al. 2023, Algorithm 2): :func:`~diffjax.distill.cd_loss` against an ODE
  step of the teacher, an optional EMA target; :func:`~diffjax.distill.consistency_sample`.
* :class:`ConsistencyTraining` (iCT, Song & Dhariwal 2024): :func:`~diffjax.distill.ct_loss` with iCT's curriculum,
  no teacher; :func:`~diffjax.distill.consistency_sample`.
* :class:`MeanFlow`, :class:`Shortcut`: flow maps ``u(x_t, t, s)`` from scratch, :func:`~diffjax.distill.flow_map_sample`.
* :class:`ContinuousConsistency` (sCM, Lu & Song 2025): :func:`~diffjax.distill.scm_loss` on the TrigFlow path,
  no teacher; :func:`~diffjax.distill.consistency_sample` of :func:`~diffjax.distill.trigflow_consistency`;
  :class:`ContinuousConsistencyDistillation` (sCD): the same with a teacher of any process.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, ClassVar, Optional, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.core.parameterizations import x0_from_score
from diffjax.distill.consistency import (cd_loss, consistency_sample, ct_loss, ict_num_scales, ict_weight, pseudo_huber,
                                         unit_weight)
from diffjax.distill.flow_map import (flow_map_sample, logit_normal_two_times, meanflow_loss, scm_loss, shortcut_loss,
                                     trigflow_consistency, trigflow_velocity)
from diffjax.distill.progressive import pd_loss, pd_sample
from diffjax.samplers import karras_grid, ode_heun_step, process_default

__all__ = ["DistillNetworks", "DistillMethod", "ProgressiveDistillation", "ConsistencyDistillation",
           "ConsistencyTraining", "MeanFlow", "Shortcut", "ContinuousConsistency",
           "ContinuousConsistencyDistillation"]


class DistillNetworks(Protocol):
    """The networks of a distillation run as functions of their parameters (built by the run)."""

    def student_x0(self, params, *, train: bool = False, rng=None) -> Callable:
        """The student's data prediction ``x0(x, t)`` through the score bridge (progressive distillation)."""

    def consistency_model(self, params, *, train: bool = False, rng=None) -> Callable:
        """The student's consistency function ``f(x, t)`` (:func:`~diffjax.distill.consistency_fn`)."""

    def teacher_score(self, params) -> Callable:
        """The teacher's ``score_fn(x, t)`` with its parameters (a teacher given as a function ignores them), on
        :attr:`teacher_process`."""

    teacher_process: object  # the process the teacher was trained on (the student's, unless any_teacher_process)

    def flow_map(self, params, *, train: bool = False, rng=None) -> Callable:
        """The student's average velocity ``u(x, t, s)`` (:mod:`diffjax.distill.flow_map`)."""

    def trigflow_network(self, params, *, train: bool = False, rng=None) -> Callable:
        """The student's TrigFlow network ``F(x / sigma_d, t)`` (:func:`~diffjax.distill.trigflow_consistency`)."""

    def student_score(self, params, *, train: bool = False, rng=None) -> Callable:
        """The student's ``score_fn(x, t)`` on :attr:`teacher_process` through the teacher's config: a student that is
        the teacher's network, tuned (its parameters have the teacher's structure)."""


@runtime_checkable
class DistillMethod(Protocol):
    """The contract of a few-step method. Rounds are phases of training (progressive distillation has one per
    halving of the steps; the consistency methods have one); round ``r`` covers the steps
    ``[round_start(r), round_end(r))``."""

    name: str                   # for messages
    needs_teacher: bool         # trains from a teacher (a trained network's parameters, or a score function)
    any_teacher_process: bool   # the teacher may be trained on another process than the student's (its own is
                                # nets.teacher_process); else the two must be the same
    student_is_teacher: bool    # the student is the teacher's network (nets.student_score), tuned from its weights
    rounds: int
    total_steps: int            # optimizer steps of the whole run
    length_sets_schedule: bool  # the run's length sets the method's schedule: a resumed run may not change it

    def round_start(self, round_index: int) -> int:
        """The first step of round ``round_index``."""

    def round_end(self, round_index: int) -> int:
        """The step at which round ``round_index`` ends (its checkpoint)."""

    def describe_round(self, round_index: int) -> str:
        """A line announcing the round ("" for a method of one round)."""

    def describe_sampler(self, round_index: int) -> str:
        """The student's sampler after round ``round_index``, for titles and logs."""

    def starts_from_teacher(self, same_inputs: bool) -> bool:
        """Whether a loaded teacher's parameters initialise the student; ``same_inputs``: the teacher's raw network
        takes the consistency models' inputs (EDM's preconditioned input and noise label)."""

    def initial_aux(self, params, teacher) -> dict:
        """``aux`` at step 0 from the student's ``params`` and the teacher's (``None``: no teacher network)."""

    def next_round_aux(self, aux: dict, params) -> dict:
        """``aux`` entering the next round, whose teacher is the student with ``params`` (its EMA)."""

    def update_aux(self, aux: dict, params) -> dict:
        """``aux`` after an optimizer step that gave the student ``params``."""

    def loss_fn(self, nets: DistillNetworks, process, round_index: int) -> Callable:
        """``loss_fn(params, key, batch) -> (loss, metrics)`` of round ``round_index``, ``batch = {"x", "aux",
        "step"}``; ``key_loss, key_dropout = jax.random.split(key)``, ``key_loss`` to the method's loss."""

    def sampler(self, nets: DistillNetworks, process, round_index: int) -> Callable:
        """``sample(params, key, x_T) -> x0``: the student after round ``round_index`` with its few steps."""

    def check(self, process, x0) -> None:
        """The loss's and the sampler's own argument checks on ``process`` and abstract data ``x0``
        (``jax.ShapeDtypeStruct``): traced, nothing compiled. ``ValueError`` / ``TypeError``."""


def _placeholder():
    return jnp.zeros((), jnp.float32)


def _identity(x, t):
    del t
    return x


def _abstract_key():
    return jax.eval_shape(lambda: jax.random.key(0))


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProgressiveDistillation:
    """Round ``r`` (0-based) distils ``start_steps / 2^(r+1)`` student DDIM steps from twice as many teacher steps
    in ``steps_per_round`` optimizer steps, until ``final_steps``. Round 1's teacher is the trained network; from
    round 2 on, the previous round's EMA student is the teacher and the new student's initialisation."""

    start_steps: int
    final_steps: int = 1
    steps_per_round: int
    t_eps: Optional[float] = None       # last time of the grids (None: the process's)
    time_grid: Callable = process_default

    name: ClassVar[str] = "progressive"
    needs_teacher: ClassVar[bool] = True
    any_teacher_process: ClassVar[bool] = False
    student_is_teacher: ClassVar[bool] = False
    length_sets_schedule: ClassVar[bool] = False

    @property
    def rounds(self) -> int:
        return int(round(math.log2(self.start_steps // self.final_steps)))

    @property
    def total_steps(self) -> int:
        return self.rounds * self.steps_per_round

    def num_student_steps(self, round_index: int) -> int:
        return self.start_steps // 2 ** (int(round_index) + 1)

    def round_start(self, round_index: int) -> int:
        return int(round_index) * self.steps_per_round

    def round_end(self, round_index: int) -> int:
        return (int(round_index) + 1) * self.steps_per_round

    def describe_round(self, round_index: int) -> str:
        n = self.num_student_steps(round_index)
        return f"round {int(round_index) + 1}/{self.rounds}: {2 * n} teacher steps -> {n} student steps"

    def describe_sampler(self, round_index: int) -> str:
        return f"{self.num_student_steps(round_index)}-step DDIM (pd_sample)"

    def starts_from_teacher(self, same_inputs: bool) -> bool:
        return True  # the student is the teacher's network through the same score bridge

    def initial_aux(self, params, teacher) -> dict:
        # a teacher given as a function: its slot holds the student's parameters, the shape of later rounds' teachers
        return {"teacher": params if teacher is None else teacher, "target": _placeholder()}

    def next_round_aux(self, aux: dict, params) -> dict:
        return dict(aux, teacher=params)

    def update_aux(self, aux: dict, params) -> dict:
        return aux

    def _teacher_x0(self, nets, params, process, round_index):
        if round_index > 0:
            return nets.student_x0(params)
        score_fn = nets.teacher_score(params)
        return lambda x, t: x0_from_score(score_fn(x, t), x, t, process)

    def loss_fn(self, nets, process, round_index: int) -> Callable:
        r, n = int(round_index), self.num_student_steps(round_index)

        def loss_fn(params, key, batch):
            k_loss, k_drop = jax.random.split(key)
            student = nets.student_x0(params, train=True, rng=k_drop)
            teacher = self._teacher_x0(nets, batch["aux"]["teacher"], process, r)
            loss = pd_loss(k_loss, batch["x"], student, teacher, process, num_student_steps=n, t_eps=self.t_eps,
                           time_grid=self.time_grid)
            return loss, {"round": jnp.float32(r + 1), "student_steps": jnp.float32(n)}

        return loss_fn

    def sampler(self, nets, process, round_index: int) -> Callable:
        n = self.num_student_steps(round_index)

        def sample(params, key, x_T):
            return pd_sample(key, x_T, nets.student_x0(params), process, num_steps=n, t_eps=self.t_eps,
                             time_grid=self.time_grid)

        return sample

    def check(self, process, x0) -> None:
        for r in range(self.rounds):
            jax.eval_shape(lambda k, x: pd_loss(k, x, _identity, _identity, process, num_student_steps=(
                self.num_student_steps(r)), t_eps=self.t_eps, time_grid=self.time_grid), _abstract_key(), x0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _OneRound:
    """A method trained in one round of ``total_steps`` whose ``aux`` never changes."""

    rounds: ClassVar[int] = 1
    any_teacher_process: ClassVar[bool] = False
    student_is_teacher: ClassVar[bool] = False

    def round_start(self, round_index: int) -> int:
        return 0

    def round_end(self, round_index: int) -> int:
        return self.total_steps

    def describe_round(self, round_index: int) -> str:
        return ""

    def next_round_aux(self, aux: dict, params) -> dict:
        return aux

    def update_aux(self, aux: dict, params) -> dict:
        return aux


@dataclasses.dataclass(frozen=True, kw_only=True)
class _ConsistencyModel(_OneRound):
    """What the consistency methods share: one round of ``total_steps``, a loss of the student's consistency
    function (``_loss``: the method's), and :func:`consistency_sample` on ``sample_steps`` times (``T``, then the
    Karras grid)."""

    total_steps: int
    sample_steps: int = 1
    metric: Callable = pseudo_huber
    t_eps: Optional[float] = None       # the boundary time of the consistency function (None: the process's)

    def describe_sampler(self, round_index: int) -> str:
        return f"{self.sample_steps}-step consistency sampling"

    def sample_times(self, process) -> tuple:
        """The times of :func:`~diffjax.distill.consistency_sample`: ``T`` alone, or the first ``sample_steps`` of
        the Karras grid."""
        k = self.sample_steps
        if k == 1:
            return (float(process.T),)
        eps = process.t_eps if self.t_eps is None else self.t_eps
        with jax.ensure_compile_time_eval():
            grid = np.asarray(karras_grid(process, k, eps))
        return tuple(float(v) for v in grid[:k])

    def loss_fn(self, nets, process, round_index: int) -> Callable:
        def loss_fn(params, key, batch):
            k_loss, k_drop = jax.random.split(key)
            student = nets.consistency_model(params, train=True, rng=k_drop)
            return self._loss(k_loss, batch, student, nets, process, params, k_drop)

        return loss_fn

    def sampler(self, nets, process, round_index: int) -> Callable:
        times = self.sample_times(process)

        def sample(params, key, x_T):
            return consistency_sample(key, x_T, nets.consistency_model(params), process, steps=times, t_eps=self.t_eps)

        return sample


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConsistencyDistillation(_ConsistencyModel):
    """Consistency distillation against one ``ode_step`` of the teacher's probability-flow ODE on ``num_scales``
    Karras times; the target is the stop-gradient student (``target_ema = 0``, iCT's choice) or its EMA of rate
    ``target_ema`` (Song et al. 2023: 0.95)."""

    num_scales: int = 18
    ode_step: Callable = ode_heun_step
    target_ema: float = 0.0
    weighting: Callable = unit_weight

    name: ClassVar[str] = "consistency_distillation"
    needs_teacher: ClassVar[bool] = True
    length_sets_schedule: ClassVar[bool] = False

    def starts_from_teacher(self, same_inputs: bool) -> bool:
        return same_inputs

    def initial_aux(self, params, teacher) -> dict:
        return {"teacher": _placeholder() if teacher is None else teacher,
                "target": params if self.target_ema > 0 else _placeholder()}

    def update_aux(self, aux: dict, params) -> dict:
        if self.target_ema == 0:
            return aux
        mu = float(self.target_ema)
        target = jax.tree.map(lambda e, p: (mu * e + (1.0 - mu) * p).astype(e.dtype), aux["target"], params)
        return dict(aux, target=target)

    def _loss_kwargs(self) -> dict:
        return dict(num_scales=self.num_scales, ode_step=self.ode_step, metric=self.metric, weighting=self.weighting,
                    t_eps=self.t_eps)

    def _loss(self, key, batch, student, nets, process, params, k_drop):
        target_params = params if self.target_ema == 0 else batch["aux"]["target"]
        target = nets.consistency_model(target_params, train=True, rng=k_drop)
        teacher = nets.teacher_score(batch["aux"]["teacher"])
        return cd_loss(key, batch["x"], student, target, teacher, process, **self._loss_kwargs()), {}

    def check(self, process, x0) -> None:
        kw = self._loss_kwargs()
        jax.eval_shape(lambda k, x: cd_loss(k, x, _identity, _identity, _identity, process, **kw), _abstract_key(), x0)
        self.sample_times(process)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConsistencyTraining(_ConsistencyModel):
    """Improved consistency training: no teacher; iCT's curriculum of ``N(k)`` intervals from ``s0`` to ``s1``
    over ``curriculum_steps`` steps (0: the run's ``total_steps``), log-normal noise levels
    ``ln sigma ~ N(p_mean, p_std^2)`` on the rho-``rho`` grid."""

    curriculum_steps: int = 0
    s0: int = 10
    s1: int = 1280
    rho: float = 7.0
    p_mean: float = -1.1
    p_std: float = 2.0
    weighting: Callable = ict_weight

    name: ClassVar[str] = "consistency_training"
    needs_teacher: ClassVar[bool] = False

    @property
    def length_sets_schedule(self) -> bool:
        return not self.curriculum_steps

    def starts_from_teacher(self, same_inputs: bool) -> bool:
        return False

    def initial_aux(self, params, teacher) -> dict:
        return {"teacher": _placeholder(), "target": _placeholder()}

    def _loss_kwargs(self) -> dict:
        return dict(total_steps=self.curriculum_steps or self.total_steps, s0=self.s0, s1=self.s1, rho=self.rho,
                    p_mean=self.p_mean, p_std=self.p_std, metric=self.metric, weighting=self.weighting,
                    t_eps=self.t_eps)

    def _loss(self, key, batch, student, nets, process, params, k_drop):
        kw = self._loss_kwargs()
        loss = ct_loss(key, batch["x"], student, process, step=batch["step"], **kw)
        num = ict_num_scales(batch["step"], total_steps=kw["total_steps"], s0=self.s0, s1=self.s1)
        return loss, {"num_scales": num.astype(jnp.float32)}

    def check(self, process, x0) -> None:
        kw = self._loss_kwargs()
        jax.eval_shape(lambda k, x: ct_loss(k, x, _identity, process, step=0, **kw), _abstract_key(), x0)
        self.sample_times(process)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _FromScratch(_OneRound):
    """A method trained in one round of ``total_steps`` from a fresh student, without a teacher, sampled in
    ``sample_steps`` steps."""

    total_steps: int
    sample_steps: int = 1

    needs_teacher: ClassVar[bool] = False
    length_sets_schedule: ClassVar[bool] = False

    def starts_from_teacher(self, same_inputs: bool) -> bool:
        return False

    def initial_aux(self, params, teacher) -> dict:
        return {"teacher": _placeholder(), "target": _placeholder()}


@dataclasses.dataclass(frozen=True, kw_only=True)
class _FlowMap(_FromScratch):
    """What the flow-map methods share: a loss of the student's ``u(x, t, s)`` (``_loss``), and
    :func:`~diffjax.distill.flow_map_sample` with ``sample_steps`` equal jumps from ``T`` to 0."""

    def describe_sampler(self, round_index: int) -> str:
        return f"{self.sample_steps}-step flow map"

    def sample_times(self, process) -> tuple:
        return tuple(float(v) for v in np.linspace(float(process.T), 0.0, self.sample_steps + 1))

    def loss_fn(self, nets, process, round_index: int) -> Callable:
        def loss_fn(params, key, batch):
            k_loss, k_drop = jax.random.split(key)
            return self._loss(nets.flow_map(params, train=True, rng=k_drop), process, k_loss, batch["x"])

        return loss_fn

    def sampler(self, nets, process, round_index: int) -> Callable:
        times = self.sample_times(process)

        def sample(params, key, x_T):
            del key  # deterministic jumps
            return flow_map_sample(nets.flow_map(params), x_T, times)[0]

        return sample

    def check(self, process, x0) -> None:
        u = lambda x, t, s: x  # noqa: E731
        jax.eval_shape(lambda k, x: self._loss(u, process, k, x), _abstract_key(), x0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class MeanFlow(_FlowMap):
    """MeanFlow (Geng et al. 2025): :func:`~diffjax.distill.meanflow_loss` with ``time_sampler`` (``(key, n, T) ->
    (t, s)``), the adaptive weight's ``power``."""

    time_sampler: Callable = logit_normal_two_times
    power: float = 1.0

    name: ClassVar[str] = "meanflow"

    def _loss(self, u, process, key, x0):
        return meanflow_loss(u, process, key, x0, time_sampler=self.time_sampler, power=self.power)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Shortcut(_FlowMap):
    """Shortcut models (Frans et al. 2025): :func:`~diffjax.distill.shortcut_loss` on ``levels`` dyadic jump
    lengths; ``sample_steps`` must be a power of two up to ``2^levels`` (the jumps it was trained on)."""

    levels: int = 7
    self_consistency_fraction: float = 0.25

    name: ClassVar[str] = "shortcut"

    def __post_init__(self):
        k = self.sample_steps
        if k < 1 or k & (k - 1) or k > 2 ** self.levels:
            raise ValueError(f"sample_steps={k} is off the shortcut's grid: a power of two up to 2^levels = "
                             f"{2 ** self.levels}")

    def _loss(self, u, process, key, x0):
        return shortcut_loss(u, process, key, x0, levels=self.levels,
                             self_consistency_fraction=self.self_consistency_fraction)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ContinuousConsistency(_FromScratch):
    """Continuous-time consistency training (sCM, Lu & Song 2025): :func:`~diffjax.distill.scm_loss` of the student's
    TrigFlow network on a :class:`~diffjax.core.TrigFlow` process, the tangent warmed up over ``tangent_warmup``
    steps (``r = min(1, step / tangent_warmup)``; 0: ``r = 1``) and divided by ``||g|| + normalization``;
    sampled by :func:`~diffjax.distill.consistency_sample` from ``T`` (one step) and, for ``sample_steps = k > 1``,
    re-noised to ``k - 1`` times evenly from ``mid_time`` down (the paper's 2-step ``t_mid = 1.1``)."""

    p_mean: float = -1.0
    p_std: float = 1.4
    tangent_warmup: int = 0
    normalization: float = 0.1
    mid_time: float = 1.1

    name: ClassVar[str] = "scm"

    def describe_sampler(self, round_index: int) -> str:
        return f"{self.sample_steps}-step sCM consistency sampling"

    def sample_times(self, process) -> tuple:
        k = self.sample_steps
        return (float(process.T),) + tuple(float(v) for v in np.linspace(self.mid_time, 0.0, k)[:k - 1])

    def loss_fn(self, nets, process, round_index: int) -> Callable:
        def loss_fn(params, key, batch):
            k_loss, k_drop = jax.random.split(key)
            r = 1.0 if not self.tangent_warmup else jnp.minimum(1.0, batch["step"] / self.tangent_warmup)
            loss, aux = scm_loss(self._network(nets, process, params, train=True, rng=k_drop), process, k_loss,
                                 batch["x"],
                                 p_mean=self.p_mean, p_std=self.p_std, warmup=r, normalization=self.normalization,
                                 velocity_fn=self._velocity(nets, process, batch))
            return loss, dict(aux, tangent_warmup=jnp.asarray(r, jnp.float32))

        return loss_fn

    def _network(self, nets, process, params, *, train=False, rng=None):
        """The student's ``F(y, t)``: its TrigFlow network."""
        return nets.trigflow_network(params, train=train, rng=rng)

    def _velocity(self, nets, process, batch):
        """``dx_t/dt`` of the tangent: ``None``, the conditional velocity (training without a teacher)."""
        return None

    def sampler(self, nets, process, round_index: int) -> Callable:
        times = self.sample_times(process)

        def sample(params, key, x_T):
            f = trigflow_consistency(self._network(nets, process, params), float(process.sigma_data))
            return consistency_sample(key, x_T, f, process, steps=times)

        return sample

    def check(self, process, x0) -> None:
        if not hasattr(process, "sigma_data"):
            raise ValueError(f"distill.method='scm' trains on the TrigFlow path: training.sde must be 'trigflow', "
                             f"got the process {type(process).__name__}")
        if not 0.0 < self.mid_time < float(process.T):
            raise ValueError(f"distill.mid_time={self.mid_time!r} must lie in (0, T={float(process.T):.4f})")
        F = lambda y, t: y  # noqa: E731
        jax.eval_shape(lambda k, x: scm_loss(F, process, k, x, p_mean=self.p_mean, p_std=self.p_std),
                       _abstract_key(), x0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ContinuousConsistencyDistillation(ContinuousConsistency):
    """sCD (Lu & Song 2025): :class:`ContinuousConsistency` with the teacher's probability-flow velocity in the
    tangent, :func:`~diffjax.distill.trigflow_velocity` of its score on the process it was trained on (any of the
    core's: a rectified-flow, VP or EDM model distils into a TrigFlow consistency model); ``tune``: the student is
    the teacher's network itself, tuned from its weights (:attr:`student_is_teacher`)."""

    tune: bool = False

    name: ClassVar[str] = "scm_distillation"
    needs_teacher: ClassVar[bool] = True
    any_teacher_process: ClassVar[bool] = True

    @property
    def student_is_teacher(self) -> bool:
        """``tune``: the student is the teacher's network from its weights, ``F = v / sigma_d`` of its score converted
        to TrigFlow (:func:`~diffjax.distill.trigflow_velocity`; SANA-Sprint's training-free transform of a
        flow-matching model, Chen et al. 2025), so training starts at the teacher's velocity."""
        return self.tune

    def starts_from_teacher(self, same_inputs: bool) -> bool:
        return self.tune

    def initial_aux(self, params, teacher) -> dict:
        return {"teacher": _placeholder() if teacher is None else teacher, "target": _placeholder()}

    def _network(self, nets, process, params, *, train=False, rng=None):
        if not self.tune:
            return super()._network(nets, process, params, train=train, rng=rng)
        sd = float(process.sigma_data)
        v = trigflow_velocity(nets.student_score(params, train=train, rng=rng), nets.teacher_process, sd)
        return lambda y, t: v(sd * y, t) / sd

    def _velocity(self, nets, process, batch):
        return trigflow_velocity(nets.teacher_score(batch["aux"]["teacher"]), nets.teacher_process,
                                 float(process.sigma_data))
