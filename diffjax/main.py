"""Command line: ``python -m diffjax.main --config configs/X.py --workdir DIR --mode MODE``.

Modes: ``train`` (a diffusion model, the Fashion-MNIST feature classifier when ``config.task="classifier"``, or the
noise-conditional classifier of classifier guidance when ``config.task="noisy_classifier"``),
``sample``, ``eval`` (FID-type metrics of EMA samples, resumable), ``likelihood`` (bits/dim through the
probability-flow ODE, plus the DDPM variational bound for discrete DDPM models; NLL in nats on toy data),
``stats`` (cache the reference statistics only) and ``describe``.

Config fields can be overridden on the command line: ``--config.training.batch_size=8``. This module holds the
flags and the mode dispatch only; what each mode does is in :mod:`diffjax.run` (callable from Python), and
:mod:`diffjax.config_lib` resolves the config (the entry layer).
"""
from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

import diffjax.run as dr
from diffjax.run._common import _choice

if os.getcwd() not in sys.path:  # config files import ``configs.default``
    sys.path.insert(0, os.getcwd())

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs, samples).")
MODES = ("train", "sample", "eval", "likelihood", "stats", "describe")
TASKS = ("diffusion", "classifier", "noisy_classifier")
flags.DEFINE_enum("mode", "train", list(MODES), "What to do.")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.mark_flags_as_required(["config"])


def _init_distributed(config):
    import jax
    d = config.distributed
    if d.initialize:
        # a dead peer is detected after heartbeat_timeout_s and every survivor exits with an error instead of
        # waiting forever in a collective (jax's coordination service terminates them)
        kw = dict(initialization_timeout=int(d.get("initialization_timeout_s", 300)),
                  heartbeat_timeout_seconds=int(d.get("heartbeat_timeout_s", 100)))
        if d.coordinator_address:
            kw.update(coordinator_address=d.coordinator_address, num_processes=d.num_processes,
                      process_id=d.process_id)
        jax.distributed.initialize(**kw)


def run_mode(config, workdir, mode, *, progress: bool = True):
    """Dispatch ``mode`` for ``config.task`` (what ``main`` does after parsing flags). A diffusion config is
    validated whole first (:func:`diffjax.config_lib.validate`: names, arithmetic, SDE, sampler settings), in every
    mode, before anything is compiled or read from disk."""
    from diffjax import config_lib as cl
    _choice("mode", mode, MODES)
    _choice("task", config.task, TASKS)
    if config.task == "diffusion":
        cl.validate(config)
    if mode == "describe":
        return dr.describe(config)
    if not workdir:
        raise ValueError(f"--workdir is required for --mode {mode}")
    if config.task == "classifier":
        if mode != "train":
            raise ValueError(f"config.task='classifier' supports --mode train only, got --mode {mode}")
        return dr.train_classifier(config, workdir)
    if config.task == "noisy_classifier":
        if mode != "train":
            raise ValueError(f"config.task='noisy_classifier' supports --mode train only, got --mode {mode}")
        return dr.train_noisy_classifier(config, workdir)
    if config.get("distill") and config.distill.method and mode != "stats":  # a few-step student
        if mode not in ("train", "sample"):
            raise ValueError(f"distill.method={config.distill.method!r} supports --mode train and sample, got {mode}")
        return dr.train_distill(config, workdir, progress=progress) if mode == "train" else dr.sample_distill(
            config, workdir)
    if mode == "train":
        return dr.train(config, workdir, progress=progress)
    if mode == "sample":
        return dr.sample(config, workdir)
    if mode == "eval":
        return dr.evaluate(config, workdir)
    if mode == "likelihood":
        return dr.likelihood(config, workdir)
    return dr.stats_mode(config, workdir)


def main(argv):
    del argv
    from diffjax import reuse_freed_host_memory
    reuse_freed_host_memory()  # before JAX starts; this process is ours (diffjax/_host_memory.py)
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every file it writes at INFO
    config = FLAGS.config
    _choice("task", config.task, TASKS)
    _init_distributed(config)
    if FLAGS.mode != "describe" and not FLAGS.workdir:
        raise app.UsageError(f"--workdir is required for --mode {FLAGS.mode}")
    run_mode(config, FLAGS.workdir, FLAGS.mode, progress=FLAGS.progress)


if __name__ == "__main__":
    app.run(main)
