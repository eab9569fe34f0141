"""Command line: ``python -m diffjax.main --config configs/X.py --workdir DIR --mode train|sample|describe``.

Config fields can be overridden on the command line: ``--config.training.batch_size=8``. Only this module and
``diffjax.config_lib`` read the config.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

if os.getcwd() not in sys.path:  # config files import ``configs.default``
    sys.path.insert(0, os.getcwd())

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs, samples).")
flags.DEFINE_enum("mode", "train", ["train", "sample", "eval", "likelihood", "describe"], "What to do.")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.mark_flags_as_required(["config"])

log = logging.getLogger("diffjax")


def _init_distributed(config):
    import jax
    d = config.distributed
    if d.initialize:
        kw = {}
        if d.coordinator_address:
            kw = dict(coordinator_address=d.coordinator_address, num_processes=d.num_processes,
                      process_id=d.process_id)
        jax.distributed.initialize(**kw)


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
        shape = cl.input_shape(config, 1)
        self._create = lambda key: tr.create_state(key, self.model, shape, self.optimizer,
                                                   num_classes=self.num_classes)
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
        step = tr.make_train_step(loss_fn, self.optimizer, ema_rate=self.config.model.ema_rate,
                                  num_classes=self.num_classes, label_dropout=t.label_dropout)
        return tr.jit_train_step(tr.multi_step(step), self.mesh, self.shardings)

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
                y = jnp.arange(n) % self.num_classes if self.num_classes else None
                score_fn = cl.build_score_fn(self.config, self.model, self.sde, params, y=y)
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


import numpy as np  # noqa: E402


def _append_metrics(workdir, record):
    import jax
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")


def train(config, workdir, *, progress: bool = True):
    import jax
    from diffjax import config_lib as cl
    from diffjax import train as tr
    t = config.training
    run = Run(config, workdir)
    state, step = run.restore()
    if state is None:
        state = run.fresh_state()
        print(f"starting a new run in {workdir}", flush=True)
    else:
        print(f"resuming from step {step} in {workdir}", flush=True)
    steps = run.train_steps()
    data = cl.build_dataset(config)

    def get_batches(step, n):
        return tr.global_batch(data.batches(step, n), run.mesh)

    key = jax.random.key(config.seed)
    is_toy = cl.is_toy(config)
    reference = data.sample(jax.random.fold_in(key, 2), config.sampling.snapshot_num) if is_toy else None

    def snapshot(state, step):
        x = run.sample(state.ema_params, jax.random.fold_in(jax.random.fold_in(key, 1), step),
                       config.sampling.snapshot_num)
        run.write_samples(x, f"iter_{step:08d}", reference=reference, title=f"EMA samples, step {step}")

    state = tr.train_loop(state, steps, get_batches, workdir=workdir, num_steps=t.n_iters,
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
            from diffjax.eval.sample_distances import energy_distance
            truth = data.sample(jax.random.fold_in(key, 4), n)
            ed = float(energy_distance(x, truth))
            record["energy_distance"] = ed
            title += f", energy distance {ed:.4f}"
            print(f"energy distance of {n} EMA samples to fresh {config.data.dataset} samples: {ed:.5f}", flush=True)
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
    xs, done, i = [], 0, 0
    t0 = time.perf_counter()
    while done < s.num_samples:
        n = min(s.batch_size, s.num_samples - done)
        xs.append(run.sample(state.ema_params, jax.random.fold_in(key, i), n))
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


def main(argv):
    del argv
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every file it writes at INFO
    config = FLAGS.config
    _init_distributed(config)
    import jax
    if FLAGS.mode == "describe":
        return describe(config)
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required for --mode train / sample")
    if FLAGS.mode == "train":
        train(config, FLAGS.workdir, progress=FLAGS.progress)
    elif FLAGS.mode == "sample":
        sample(config, FLAGS.workdir)
    else:
        raise ValueError(f"--mode {FLAGS.mode} is not implemented yet (issue 5: eval / likelihood); "
                         f"available: train, sample, describe")
    del jax


if __name__ == "__main__":
    app.run(main)
