"""The run of one config: :class:`Run` (mesh, SDE, model, optimizer, step, state shardings) and the modes
``train``, ``sample`` and ``describe``.

Part of the entry layer: it reads a ``ConfigDict`` and resolves it through :mod:`diffjax.config_lib`.
"""
from __future__ import annotations

import os
import time

import numpy as np

from diffjax.run._common import _append_metrics, _host_tree, _toy_energy_distances, train_lock


class Run:
    """Everything built from a config: mesh, SDE, model, optimizer, step, abstract state and its shardings."""

    def __init__(self, config, workdir):
        import jax
        from diffjax import config_lib as cl
        from diffjax import train as tr
        self.config, self.workdir = config, workdir
        cl.validate(config)
        self.mesh = tr.make_mesh(fsdp=config.distributed.fsdp)
        self.sde = cl.build_sde(config)
        self.model = cl.build_model(config)
        self.optimizer = cl.build_optimizer(config)
        self.num_classes = cl.num_classes(config)
        self.label_classes = cl.sampling_num_classes(config)  # the labels samples cycle through (also: guidance)
        shape = cl.input_shape(config, 1)
        self.posthoc_sigma_rels = cl.posthoc_sigma_rels(config)
        self._create = lambda key: tr.create_state(key, self.model, shape, self.optimizer,
                                                   num_classes=self.num_classes,
                                                   num_posthoc_emas=len(self.posthoc_sigma_rels))
        abstract = jax.eval_shape(self._create, jax.random.key(0))
        self.shardings = tr.state_shardings(self.mesh, abstract, fsdp_min_size=config.distributed.fsdp_min_size)
        self.abstract = tr.abstract_with_shardings(abstract, self.shardings)
        self.checkpoints = tr.Checkpoints(workdir, keep=config.training.checkpoint_keep) if workdir else None
        self._sample_jit = {}

    def fresh_state(self):
        import jax
        return jax.jit(self._create, out_shardings=self.shardings)(jax.random.key(self.config.seed))

    def restore(self):
        state, step, skipped = self.checkpoints.restore(self.abstract)
        for msg in skipped:
            print(f"WARNING: {msg}", flush=True)
        return state, step

    def train_steps(self):
        from diffjax import config_lib as cl
        from diffjax import train as tr
        t = self.config.training
        loss_fn = cl.build_loss_fn(self.config, self.model, self.sde)
        step = tr.make_train_step(loss_fn, self.optimizer, ema_rate=cl.build_ema_decay(self.config),
                                  posthoc_sigma_rels=self.posthoc_sigma_rels, num_classes=self.num_classes,
                                  label_dropout=t.label_dropout)
        return tr.jit_train_step(tr.multi_step(step, unroll=t.unroll_jitted_steps), self.mesh, self.shardings)

    @property
    def posthoc_dir(self):
        return os.path.join(self.workdir, "posthoc_ema")

    def save_posthoc_snapshot(self, state, step):
        """Write the power EMAs of ``state`` to ``posthoc_ema/phema-STEP.npz`` (gathered; process 0 writes)."""
        import jax
        from diffjax.train import ema
        trees = [_host_tree(t) for t in state.phema]
        if jax.process_index() == 0:
            ema.save_posthoc_snapshot(self.posthoc_dir, step, self.posthoc_sigma_rels, trees)

    def sampling_params(self, state, step):
        """The parameters samples are drawn from: ``state.ema_params``, or with ``sampling.ema_sigma_rel > 0`` the
        EDM2 post-hoc EMA of that length at ``step``, reconstructed from the snapshots in ``posthoc_ema/``."""
        import jax
        sigma_rel = float(self.config.sampling.ema_sigma_rel)
        if not sigma_rel:
            return state.ema_params
        from diffjax.train import ema
        params, info = ema.posthoc_ema(self.posthoc_dir, state.ema_params, sigma_rel, step=step)
        print(f"post-hoc EMA sigma_rel={sigma_rel} at step {info['target_step']} from {len(info['steps'])} "
              f"snapshots (steps {min(info['steps'])}..{max(info['steps'])})", flush=True)
        return jax.device_put(params, self.shardings.ema_params)

    def sample(self, params, key, n):
        """``n`` samples (host numpy, float) from the network with ``params``."""
        import jax
        import jax.numpy as jnp
        from jax.experimental import multihost_utils
        from diffjax import config_lib as cl
        from diffjax import train as tr
        if n not in self._sample_jit:
            sampler = cl.build_sampler(self.config)

            def run(params, key):
                k_prior, k_y, k_s = jax.random.split(key, 3)
                x_T = self.sde.prior_sample(k_prior, cl.input_shape(self.config, n))
                y = jnp.arange(n) % self.label_classes if self.label_classes else None
                score_fn = cl.build_sampling_score_fn(self.config, self.model, self.sde, params, y=y)
                return sampler(k_s, x_T, score_fn, self.sde)

            out = tr.batch_sharding(self.mesh, stacked=False) if n % self.mesh.size == 0 else tr.replicated(self.mesh)
            self._sample_jit[n] = jax.jit(run, out_shardings=out)
        x = self._sample_jit[n](params, key)
        if jax.process_count() > 1:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    def write_samples(self, x, name, *, reference=None, title=""):
        """Write ``samples/NAME.npz`` (uint8 images or float points) and ``samples/NAME.png``; process 0 only."""
        import jax
        from diffjax import config_lib as cl
        from diffjax.data import from_unit
        from diffjax.train.images import save_image_grid, save_scatter
        if jax.process_index() != 0:
            return
        out = os.path.join(self.workdir, "samples")
        os.makedirs(out, exist_ok=True)
        if cl.is_toy(self.config):
            np.savez(os.path.join(out, f"{name}.npz"), x=x.astype(np.float32))
            save_scatter(os.path.join(out, f"{name}.png"), x, reference=reference, title=title)
        else:
            images = from_unit(x)
            np.savez(os.path.join(out, f"{name}.npz"), x=images)
            save_image_grid(os.path.join(out, f"{name}.png"), images[:256])


def train(config, workdir, *, progress: bool = True):
    """``--mode train``: train (or resume) the run in ``workdir``; a second run on a workdir in use is refused
    (:class:`~diffjax.train.WorkdirBusyError`)."""
    import jax
    with train_lock(workdir):
        try:
            return _train(config, workdir, progress=progress)
        except jax.errors.JaxRuntimeError as e:
            if jax.process_count() == 1:
                raise
            n = jax.process_count()
            raise RuntimeError(
                f"process {jax.process_index()}/{n}: a collective with the other processes failed "
                f"({str(e).splitlines()[0][:300]}); another process of this run has most likely died. This process "
                f"stops too; restart all {n} processes to resume from the newest checkpoint in {workdir}") from e


def _train(config, workdir, *, progress: bool = True):
    import jax
    from diffjax import config_lib as cl
    from diffjax import train as tr
    t = config.training
    run = Run(config, workdir)
    data = cl.build_dataset(config)  # missing or damaged data files fail here, before anything is compiled
    state, step = run.restore()
    if state is None:
        state = run.fresh_state()
        print(f"starting a new run in {workdir}", flush=True)
    else:
        print(f"resuming from step {step} in {workdir}", flush=True)
    steps = run.train_steps()

    def get_batches(step, n):
        return tr.global_batch(data.batches(step, n), run.mesh)

    key = jax.random.key(config.seed)
    is_toy = cl.is_toy(config)
    reference = data.sample(jax.random.fold_in(key, 2), config.sampling.snapshot_num) if is_toy else None

    def snapshot(state, step):
        x = run.sample(state.ema_params, jax.random.fold_in(jax.random.fold_in(key, 1), step),
                       config.sampling.snapshot_num)
        run.write_samples(x, f"iter_{step:08d}", reference=reference, title=f"EMA samples, step {step}")

    callbacks = ((t.posthoc_ema_freq, run.save_posthoc_snapshot),) if t.posthoc_ema_freq else ()
    state = tr.train_loop(state, steps, get_batches, workdir=workdir, num_steps=t.n_iters, callbacks=callbacks,
                          steps_per_call=t.n_jitted_steps, log_freq=t.log_freq, checkpoint_freq=t.checkpoint_freq,
                          preemption_freq=t.snapshot_freq_for_preemption, checkpoints=run.checkpoints,
                          snapshot_freq=t.snapshot_freq if t.snapshot_sampling else 0, snapshot_fn=snapshot,
                          progress=progress)
    n = config.sampling.final_num_samples
    if n:
        x = run.sample(state.ema_params, jax.random.fold_in(key, 3), n)
        record = {"step": int(jax.device_get(state.step)), "final_samples": n}
        title = "final EMA samples"
        if is_toy:
            ed, ed_ref = _toy_energy_distances(data, x, key)
            record.update(energy_distance=ed, energy_distance_data_vs_data=ed_ref)
            title += f", energy distance {ed:.4f} (data vs data {ed_ref:.4f})"
            print(f"energy distance of {n} EMA samples to fresh {config.data.dataset} samples: {ed:.5f} "
                  f"(unbiased; two independent data draws of the same size: {ed_ref:.5f})", flush=True)
        run.write_samples(x, "final", reference=reference if is_toy else None, title=title)
        _append_metrics(workdir, record)
    from jax.experimental import multihost_utils
    leaves = [np.asarray(a if a.is_fully_addressable else multihost_utils.process_allgather(a, tiled=True))
              for a in jax.tree.leaves(state.params)]
    print(f"process {jax.process_index()}/{jax.process_count()}: step {int(jax.device_get(state.step))}, "
          f"params checksum {float(sum(np.abs(np.asarray(a, np.float64)).sum() for a in leaves)):.10e}", flush=True)
    run.checkpoints.close()
    return state


def sample(config, workdir):
    import jax
    run = Run(config, workdir)
    state, step = run.restore()
    if state is None:
        raise ValueError(f"--mode sample needs a checkpoint in {workdir}/checkpoints or checkpoints-meta; none found")
    s = config.sampling
    key = jax.random.fold_in(jax.random.key(config.seed), 5)
    params = run.sampling_params(state, step)
    xs, done, i = [], 0, 0
    t0 = time.perf_counter()
    while done < s.num_samples:
        n = min(s.batch_size, s.num_samples - done)
        xs.append(run.sample(params, jax.random.fold_in(key, i), n))
        done, i = done + n, i + 1
        print(f"sampled {done}/{s.num_samples} ({time.perf_counter() - t0:.1f} s)", flush=True)
    x = np.concatenate(xs)
    run.write_samples(x, f"samples_{step:08d}", title=f"EMA samples, step {step}")
    run.checkpoints.close()
    return x


def describe(config):
    import jax
    from diffjax import config_lib as cl
    from diffjax.nets import count_params, model_summary
    cl.validate(config)
    model = cl.build_model(config)
    print(model_summary(model, cl.input_shape(config, 1), num_classes=cl.num_classes(config)))
    n = count_params(jax.eval_shape(lambda: model.init(
        {"params": jax.random.key(0), "dropout": jax.random.key(1)},
        *([np.zeros(cl.input_shape(config, 1), np.float32), np.zeros((1,), np.float32)]
          + ([np.zeros((1,), np.int32)] if cl.num_classes(config) else [])), train=False))["params"])
    print(f"model {config.model.name}: {n:,} parameters; sde {config.training.sde}; loss {config.training.loss}; "
          f"sampler {config.sampling.method}; dataset {config.data.dataset}; devices {jax.device_count()}")
