"""Few-step generation from the command line: progressive distillation, consistency distillation and consistency
training (``config.distill``, one :class:`~diffjax.distill.DistillMethod` object built by
:func:`diffjax.config_lib.distill_method`), trained with the diffusion run's machinery (:class:`~diffjax.run.Run`'s
mesh, model, optimizer, EMA schedule and checkpoints, :func:`~diffjax.train.make_train_step`,
:func:`~diffjax.train.train_loop`, the workdir lock) and sampled with their distilled step counts.

The state is a :class:`DistillState`: the student's :class:`~diffjax.train.TrainState` plus ``aux``, the frozen
networks the method's loss reads (``aux["teacher"]``: the round's teacher of progressive distillation, the loaded
teacher of consistency distillation; ``aux["target"]``: consistency distillation's EMA target when
``distill.target_ema > 0``; a scalar placeholder where unused; the method makes and updates it) and ``round``
(progressive). All of it is checkpointed, so a restarted run continues the same round and step exactly. The
:class:`Distiller` is the method's :class:`~diffjax.distill.DistillNetworks`: it builds the networks, the method
uses them.

Networks (the student is ``cl.build_model(config)``, the teacher's architecture):

* progressive: the student's data prediction is the network's output through the score bridge
  (:func:`~diffjax.config_lib.build_score_fn`, with ``distill.parameterization`` or else the teacher's
  ``model.parameterization``), then :func:`~diffjax.x0_from_score`; with the teacher's parameterization the round-1
  student, initialised from the teacher, is the teacher exactly. Round ``r`` (0-based) distils ``N_r =
  start_steps / 2^(r+1)`` student steps; from round 2 on, the previous round's student (its EMA parameters) is the
  teacher and the new student's initialisation (a fresh optimizer state, and fresh EMAs: their decay schedules
  count the round's steps, :meth:`Distiller.train_step`).
* consistency models: ``f = distill.consistency_fn(raw, process, sigma_data=model.sigma_data, t_eps)`` with
  ``raw(x_in, c_noise) = net(x_in, c_noise)``: the network sees EDM's preconditioned input ``c_in(sigma) x / a`` and
  EDM's noise label ``c_noise = log(sigma) / 4`` (``model.time_input="edm"``'s label), the consistency models'
  own parameterization (Song et al. 2023, App. C); it is the same for every process (``sigma = s / a``), its input
  has unit variance at every noise level, and ``c_skip``/``c_out`` make ``f(x, t_eps) = x`` exactly. The student is
  initialised fresh (``config.seed``), except consistency distillation from an EDM-parameterized teacher
  (``model.parameterization="edm"``, whose raw network takes the same inputs), which starts from the teacher.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np

from diffjax.run._common import append_metrics, toy_energy_distances, train_lock

__all__ = ["DistillState", "Distiller", "train_distill", "sample_distill", "load_config_file"]


@flax.struct.dataclass
class DistillState:
    """The student's train state, the frozen networks its loss reads, and the progressive round."""

    train: Any          # TrainState of the student
    aux: Any            # {"teacher": params | placeholder, "target": params | placeholder}
    round: jax.Array    # int32: the progressive round the state is in (0 for consistency models)

    @property
    def step(self):
        return self.train.step


# (config JSON, teacher config JSON, teacher_score_fn) -> {name: jitted function}: a Distiller re-built for the same
# run in this process (a resumed run, --mode sample after training, a notebook) reuses the compiled functions
_JIT_CACHE: dict = {}
_JIT_CACHE_SIZE = 8


def _jit_cache(key) -> dict:
    if key not in _JIT_CACHE and len(_JIT_CACHE) >= _JIT_CACHE_SIZE:
        _JIT_CACHE.pop(next(iter(_JIT_CACHE)))
    return _JIT_CACHE.setdefault(key, {})


def load_config_file(path: str):
    """``get_config()`` of a Python config file (``distill.teacher_config``)."""
    if not os.path.isfile(path):
        raise ValueError(f"distill.teacher_config={path!r} is not a file")
    spec = importlib.util.spec_from_file_location(f"_teacher_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


class Distiller:
    """Everything a distillation run builds from its config.

    Args:
      config: the run's config (``distill.method`` set).
      workdir: the run directory.
      teacher_score_fn: optional pure teacher ``score_fn(x, t)`` (e.g. an exact mixture score) used instead of
        loading ``distill.teacher_workdir`` (progressive: round 1's teacher, the student then starts from
        ``config.seed``; consistency distillation: the teacher).
      sampling: build only what sampling the student needs (``distill.teacher_workdir`` may be empty: the teacher
        is never loaded).
    """

    def __init__(self, config, workdir, *, teacher_score_fn: Optional[Callable] = None, sampling: bool = False):
        from diffjax import config_lib as cl
        from diffjax import train as tr
        from diffjax.run._run import Run
        cl.validate_distill(config, external_teacher=teacher_score_fn is not None or sampling)
        self.config, self.workdir, self.d = config, workdir, config.distill
        self.method = cl.distill_method(config)
        self.run = Run(config, workdir, read_only=sampling)
        self.sde, self.model, self.optimizer = self.run.sde, self.run.model, self.run.optimizer
        self.total_steps, self.rounds = self.method.total_steps, self.method.rounds
        self.external_teacher = teacher_score_fn
        self.teacher_config = None
        self.teacher_process = self.sde  # a teacher given as a function: on the student's process
        if self.method.student_is_teacher and teacher_score_fn is not None:
            raise ValueError("distill.tune_teacher=True tunes the teacher's own network: it needs the teacher's run "
                             "(distill.teacher_workdir and distill.teacher_config), not a score function")
        if self._has_loaded_teacher() or self.method.student_is_teacher:  # sampling a tuned teacher: its config
            path = self.d.teacher_config
            self.teacher_config = load_config_file(path) if path else config
            cl.validate(self.teacher_config)
            if cl.input_shape(self.teacher_config, 1) != cl.input_shape(config, 1):
                raise ValueError(f"distill.teacher_config's data shape {cl.input_shape(self.teacher_config, 1)} "
                                 f"differs from this config's {cl.input_shape(config, 1)}")
            self.teacher_process = cl.build_sde(self.teacher_config)
            if self.teacher_process != self.sde and not self.method.any_teacher_process:
                raise ValueError(f"distill.teacher_config's process (training.sde="
                                 f"{self.teacher_config.training.sde!r} and model.* fields) differs from this "
                                 f"config's (training.sde={config.training.sde!r}); the student uses the teacher's")
            self.teacher_model = cl.build_model(self.teacher_config)
        self.student_config = cl.distill_student_config(config)
        self._teacher_params = None
        abstract = jax.eval_shape(self._fresh_abstract)
        self.shardings = tr.state_shardings(self.run.mesh, abstract, fsdp_min_size=config.distributed.fsdp_min_size)
        self.abstract = tr.abstract_with_shardings(abstract, self.shardings)
        self._jit_cache = _jit_cache((config.to_json_best_effort(sort_keys=True), None if self.teacher_config is None
                                      else self.teacher_config.to_json_best_effort(sort_keys=True), teacher_score_fn))

    # ------------------------------------------------------------------------------------------- networks

    def _x0_fn(self, cfg, model, params, *, train=False, rng=None):
        """The data prediction ``x0(x, t)`` of ``model`` with ``params`` through ``cfg``'s score bridge."""
        from diffjax import config_lib as cl
        from diffjax import core
        score_fn = cl.build_score_fn(cfg, model, self.sde, params, train=train, rng=rng)
        return lambda x, t: core.x0_from_score(score_fn(x, t), x, t, self.sde)

    def student_x0(self, params, *, train=False, rng=None):
        """Progressive distillation: the student's ``x0(x, t)``."""
        return self._x0_fn(self.student_config, self.model, params, train=train, rng=rng)

    student_x0_fn = student_x0

    def consistency_model(self, params, *, train=False, rng=None):
        """Consistency models: ``f(x, t)`` of the student network with ``params`` (module docstring)."""
        from diffjax import distill

        def raw(x_in, c_noise):
            if train:
                return self.model.apply({"params": params}, x_in, c_noise, train=True, rngs={"dropout": rng})
            return self.model.apply({"params": params}, x_in, c_noise, train=False)

        return distill.consistency_fn(raw, self.sde, sigma_data=float(self.config.model.sigma_data),
                                      t_eps=self.method.t_eps)

    def flow_map(self, params, *, train=False, rng=None):
        """Flow maps: ``u(x, t, s)`` of the student :class:`~diffjax.nets.FlowMapNet`, fed ``c t / T`` and the jump's
        ``c (t - s) / T`` (``c = distill.time_label_scale``), its output the average velocity."""
        scale = float(self.d.time_label_scale) / float(self.sde.T)

        def u(x, t, s):
            labels, gap = scale * t, scale * (t - s)
            if train:
                return self.model.apply({"params": params}, x, labels, gap, train=True, rngs={"dropout": rng})
            return self.model.apply({"params": params}, x, labels, gap, train=False)

        return u

    def trigflow_network(self, params, *, train=False, rng=None):
        """sCM: the TrigFlow network ``F(y, t)`` of the student (``y = x / sigma_d``), fed ``c t / T``
        (``c = distill.time_label_scale``)."""
        scale = float(self.d.time_label_scale) / float(self.sde.T)

        def F(y, t):
            if train:
                return self.model.apply({"params": params}, y, scale * t, train=True, rngs={"dropout": rng})
            return self.model.apply({"params": params}, y, scale * t, train=False)

        return F

    def student_score(self, params, *, train=False, rng=None):
        """A tuned teacher (``distill.tune_teacher``): the student's ``score_fn`` on the teacher's process through the
        teacher's config and network."""
        from diffjax import config_lib as cl
        return cl.build_score_fn(self.teacher_config, self.teacher_model, self.teacher_process, params, train=train,
                                 rng=rng)

    def teacher_score(self, params):
        """The teacher's ``score_fn(x, t)``: the given function, or the loaded teacher's network with ``params``."""
        from diffjax import config_lib as cl
        if self.external_teacher is not None:
            return self.external_teacher
        return cl.build_score_fn(self.teacher_config, self.teacher_model, self.teacher_process, params)

    def num_student_steps(self, round_index: int) -> int:
        """Progressive distillation: the student's DDIM steps in round ``round_index``."""
        return self.method.num_student_steps(round_index)

    # --------------------------------------------------------------------------------------------- state

    def _loaded_teacher_params(self):
        if self._teacher_params is None:
            from diffjax import train as tr
            from diffjax.run._run import Run
            if not os.path.isdir(self.d.teacher_workdir):
                raise ValueError(f"distill.teacher_workdir={self.d.teacher_workdir!r} is not a directory (allowed: the "
                                 f"workdir of a trained diffusion run)")
            run = Run(self.teacher_config, self.d.teacher_workdir)  # read-only: creates nothing there
            try:
                state, step = run.restore(compare_config=False)  # this config differs from the teacher's (distill.*)
            except tr.CheckpointMismatchError as e:
                raise tr.CheckpointMismatchError(
                    f"distill.teacher_workdir={self.d.teacher_workdir!r}: {e}; distill.teacher_config="
                    f"{self.d.teacher_config!r} (empty: this config) must be the teacher's config") from None
            finally:
                run.checkpoints.close()
            if state is None:
                raise ValueError(f"distill.teacher_workdir={self.d.teacher_workdir!r} holds no checkpoint "
                                 f"(checkpoints/ and checkpoints-meta/ are empty or missing): train the teacher "
                                 f"there first (--mode train with distill.teacher_config's config)")
            print(f"teacher: EMA parameters of step {step} in {self.d.teacher_workdir}", flush=True)
            self._teacher_params = jax.device_get(state.ema_params)
        return self._teacher_params

    def _has_loaded_teacher(self):
        return self.method.needs_teacher and self.external_teacher is None

    def _init_from_teacher(self):
        from diffjax import config_lib as cl
        return self._has_loaded_teacher() and self.method.starts_from_teacher(
            cl.edm_preconditioned(self.teacher_config))

    def _fresh_abstract(self):
        return self._fresh(jax.random.key(0), None)

    def _fresh(self, key, teacher_params):
        """The state at step 0 (``teacher_params``: the loaded teacher's, or None for shapes / no teacher)."""
        from diffjax import train as tr
        train = self.run._create(key)
        teacher = None  # no teacher network: the method fills its slot
        if self._has_loaded_teacher():
            teacher = teacher_params
            if teacher is None:  # shapes only
                teacher = jax.tree.map(jnp.zeros_like, jax.eval_shape(
                    lambda: tr.init_params(jax.random.key(0), self.teacher_model, self._teacher_input_shape())))
        if self._init_from_teacher():
            if jax.tree.structure(teacher) != jax.tree.structure(train.params) or any(
                    a.shape != b.shape for a, b in zip(jax.tree.leaves(teacher), jax.tree.leaves(train.params))):
                raise ValueError("the student starts from the teacher, so model.* must give the teacher's network "
                                 "(distill.teacher_config's model.name / model.overrides)")
            train = self._restart(train, teacher)
        return DistillState(train=train, aux=self.method.initial_aux(train.params, teacher),
                            round=jnp.zeros((), jnp.int32))

    def _teacher_input_shape(self):
        from diffjax import config_lib as cl
        return cl.input_shape(self.teacher_config, 1)

    def _restart(self, train, params):
        """``train`` with ``params`` as parameters and EMAs and a fresh optimizer state (step and key kept; the
        round's train step counts the EMA decay from here, ``ema_start``)."""
        return train.replace(params=params, ema_params=params, opt_state=self.optimizer.init(params),
                             phema=tuple(params for _ in train.phema))

    def fresh_state(self):
        teacher = self._loaded_teacher_params() if self._has_loaded_teacher() else None
        if "fresh" not in self._jit_cache:
            self._jit_cache["fresh"] = jax.jit(self._fresh, out_shardings=self.shardings)
        return self._jit_cache["fresh"](jax.random.key(self.config.seed), teacher)

    def next_round(self, state, round_index: int):
        """Progressive distillation: enter round ``round_index`` (>= 1): the previous student's EMA parameters
        become the teacher and the new student's initialisation."""
        def advance(state):
            p = state.train.ema_params
            return DistillState(train=self._restart(state.train, p), aux=self.method.next_round_aux(state.aux, p),
                                round=jnp.asarray(round_index, jnp.int32))
        if ("advance", round_index) not in self._jit_cache:
            self._jit_cache["advance", round_index] = jax.jit(advance, out_shardings=self.shardings)
        return self._jit_cache["advance", round_index](state)

    def restore(self):
        """``(state, step)`` of the newest intact checkpoint (:meth:`diffjax.run.Run.restore` with the
        :class:`DistillState`)."""
        return self.run.restore(self.abstract)

    # ---------------------------------------------------------------------------------------- the step

    def loss_fn(self, round_index: int = 0) -> Callable:
        """``loss_fn(params, key, batch) -> (loss, aux)`` with ``batch = {"x", "aux", "step"}``: the method's
        objective (:meth:`~diffjax.distill.DistillMethod.loss_fn`) with ``key_loss, key_dropout =
        jax.random.split(key)``; ``key_loss`` goes to :func:`~diffjax.distill.pd_loss` /
        :func:`~diffjax.distill.cd_loss` / :func:`~diffjax.distill.ct_loss` unchanged."""
        return self.method.loss_fn(self, self.sde, round_index)

    def train_step(self, round_index: int = 0) -> Callable:
        """``step(state, batch) -> (state, metrics)`` on a :class:`DistillState` (unjitted, one batch).

        The EMAs (``ema_params`` and the power EMAs) restart with each progressive round (:meth:`next_round` resets
        them to the round's initialisation): their decay schedules count the steps since the round's first,
        ``round_index x distill.steps_per_round``, so the round's EMA student is a fresh EMA of the round's
        training, not mostly its initialisation."""
        from diffjax import config_lib as cl
        from diffjax import train as tr
        inner = tr.make_train_step(self.loss_fn(round_index), self.optimizer, ema_rate=cl.build_ema_decay(self.config),
                                   posthoc_sigma_rels=self.run.posthoc_sigma_rels,
                                   ema_start=self.method.round_start(round_index))

        def step(state, batch):
            batch = {"x": batch["x"], "aux": state.aux, "step": state.train.step}
            train, metrics = inner(state.train, batch)
            return state.replace(train=train, aux=self.method.update_aux(state.aux, train.params)), metrics

        return step

    def train_steps(self, round_index: int = 0) -> Callable:
        from diffjax import config_lib as cl
        if ("train", round_index) not in self._jit_cache:
            self._jit_cache["train", round_index] = cl.build_train_steps(
                self.config, self.train_step(round_index), self.run.mesh, self.shardings)
        return self._jit_cache["train", round_index]

    # -------------------------------------------------------------------------------------------- sampling

    def sample(self, params, key, n, *, round_index: Optional[int] = None):
        """``n`` samples (host numpy) of the student with ``params`` after round ``round_index`` (default: the
        last): the method's sampler (progressive: :func:`~diffjax.distill.pd_sample` with the round's student steps;
        consistency: :func:`~diffjax.distill.consistency_sample` on ``distill.sample_steps`` times)."""
        from diffjax import config_lib as cl
        r = self.rounds - 1 if round_index is None else int(round_index)
        cache_key = ("sample", n, r)
        if cache_key not in self._jit_cache:
            shape = cl.input_shape(self.config, n)
            sample = self.method.sampler(self, self.sde, r)

            def run(params, key):
                k_prior, k_s = jax.random.split(key)
                return sample(params, k_s, self.sde.prior_sample(k_prior, shape))

            self._jit_cache[cache_key] = jax.jit(run)
        return np.asarray(self._jit_cache[cache_key](params, key))

    def describe_sampler(self, round_index):
        return self.method.describe_sampler(round_index)


def train_distill(config, workdir, *, progress: bool = True, teacher_score_fn: Optional[Callable] = None):
    """``--mode train`` with ``distill.method`` set: train (or resume) the few-step student in ``workdir``.

    Progressive distillation runs ``rounds x distill.steps_per_round`` steps; round ``r`` covers steps
    ``[r s, (r + 1) s)`` and ends with a checkpoint. Consistency models run ``training.n_iters`` steps.
    ``teacher_score_fn``: see :class:`Distiller`."""
    with train_lock(workdir):
        return _train(config, workdir, progress=progress, teacher_score_fn=teacher_score_fn)


def _train(config, workdir, *, progress, teacher_score_fn):
    from diffjax import config_lib as cl
    from diffjax import train as tr
    t = config.training
    dist = Distiller(config, workdir, teacher_score_fn=teacher_score_fn)
    data = cl.build_dataset(config)
    state, step = dist.restore()
    if state is None:
        state = dist.fresh_state()
        print(f"starting {dist.method.name} in {workdir}", flush=True)
    else:
        print(f"resuming {dist.method.name} from step {step} (round {int(state.round) + 1}) in {workdir}", flush=True)

    def get_batches(step, n):
        return tr.global_batch(data.batches(step, n), dist.run.mesh)

    key = jax.random.key(config.seed)
    is_toy = cl.is_toy(config)
    reference = data.sample(jax.random.fold_in(key, 2), config.sampling.snapshot_num) if is_toy else None
    for r in range(dist.rounds):
        end = dist.method.round_end(r)
        if int(jax.device_get(state.step)) >= end:
            continue
        if int(jax.device_get(state.round)) < r:
            state = dist.next_round(state, r)
        if dist.method.describe_round(r):
            print(dist.method.describe_round(r), flush=True)

        def snapshot(state, step, r=r):
            x = dist.sample(state.train.ema_params, jax.random.fold_in(jax.random.fold_in(key, 1), step),
                            config.sampling.snapshot_num, round_index=r)
            dist.run.write_samples(x, f"iter_{step:08d}", reference=reference,
                                   title=f"EMA student, {dist.describe_sampler(r)}, step {step}")

        state = tr.train_loop(state, dist.train_steps(r), get_batches, workdir=workdir, num_steps=end,
                              steps_per_call=t.n_jitted_steps, log_freq=t.log_freq,
                              checkpoint_freq=t.checkpoint_freq, preemption_freq=t.snapshot_freq_for_preemption,
                              checkpoints=dist.run.checkpoints, snapshot_freq=t.snapshot_freq if t.snapshot_sampling
                              else 0, snapshot_fn=snapshot, progress=progress)
    n = config.sampling.final_num_samples
    if n:
        _final_samples(dist, state, data, key, n, reference, workdir)
    dist.run.checkpoints.close()
    return state


def _final_samples(dist, state, data, key, n, reference, workdir):
    from diffjax import config_lib as cl
    r = int(jax.device_get(state.round))
    x = dist.sample(state.train.ema_params, jax.random.fold_in(key, 3), n, round_index=r)
    record = {"step": int(jax.device_get(state.step)), "final_samples": n, "sampler": dist.describe_sampler(r)}
    title = f"final EMA student samples ({dist.describe_sampler(r)})"
    if cl.is_toy(dist.config):
        ed, ed_ref = toy_energy_distances(data, x, key)
        record.update(energy_distance=ed, energy_distance_data_vs_data=ed_ref)
        title += f", energy distance {ed:.4f} (data vs data {ed_ref:.4f})"
        print(f"energy distance of {n} student samples ({dist.describe_sampler(r)}): {ed:.5f} (two independent data "
              f"draws: {ed_ref:.5f})", flush=True)
    dist.run.write_samples(x, "final", reference=reference, title=title)
    append_metrics(workdir, record)


def evaluate_distill(config, workdir, *, teacher_score_fn: Optional[Callable] = None):
    """``--mode eval`` with ``distill.method`` set, on a toy dataset: ``sampling.final_num_samples`` (else
    ``sampling.num_samples``) samples of the newest checkpoint's EMA student with its few steps (e.g.
    ``--config.distill.sample_steps=2``), their energy distance to fresh data beside two data draws', printed and
    appended to ``metrics.jsonl``. Images: ``--mode sample``, then score the npz (experiments/results/evidence.py)."""
    from diffjax import config_lib as cl
    if not cl.is_toy(config):
        raise ValueError(f"--mode eval of a few-step student (distill.method={config.distill.method!r}) is defined on "
                         f"toy data (energy distance), got data.dataset={config.data.dataset!r}; for images run "
                         f"--mode sample and score samples/*.npz with experiments/results/evidence.py")
    dist = Distiller(config, workdir, teacher_score_fn=teacher_score_fn, sampling=True)
    state, _ = dist.restore()
    if state is None:
        raise ValueError(f"--mode eval needs a checkpoint in {workdir}/checkpoints or checkpoints-meta; none found")
    s = config.sampling
    data, key = cl.build_dataset(config), jax.random.key(config.seed)
    reference = data.sample(jax.random.fold_in(key, 2), s.snapshot_num)
    _final_samples(dist, state, data, key, s.final_num_samples or s.num_samples, reference, workdir)
    dist.run.checkpoints.close()


def sample_distill(config, workdir, *, teacher_score_fn: Optional[Callable] = None):
    """``--mode sample`` with ``distill.method`` set: ``sampling.num_samples`` samples of the newest checkpoint's EMA
    student with its distilled step count (progressive: the checkpoint's round's; consistency:
    ``distill.sample_steps``), written to ``samples/samples_STEP.npz`` / ``.png`` like the diffusion sampler."""
    import time
    dist = Distiller(config, workdir, teacher_score_fn=teacher_score_fn, sampling=True)
    state, step = dist.restore()
    if state is None:
        raise ValueError(f"--mode sample needs a checkpoint in {workdir}/checkpoints or checkpoints-meta; none found")
    s = config.sampling
    r = int(jax.device_get(state.round))
    key = jax.random.fold_in(jax.random.key(config.seed), 5)
    xs, done, i = [], 0, 0
    t0 = time.perf_counter()
    while done < s.num_samples:
        n = min(s.batch_size, s.num_samples - done)
        xs.append(dist.sample(state.train.ema_params, jax.random.fold_in(key, i), n, round_index=r))
        done, i = done + n, i + 1
        print(f"sampled {done}/{s.num_samples} with {dist.describe_sampler(r)} ({time.perf_counter() - t0:.1f} s)",
              flush=True)
    x = np.concatenate(xs)
    dist.run.write_samples(x, f"samples_{step:08d}", title=f"EMA student, {dist.describe_sampler(r)}, step {step}")
    dist.run.checkpoints.close()
    return x
