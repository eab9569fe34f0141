"""Helpers the run modes share: choice checks, the ``metrics.jsonl`` log, host copies, image rows.

Part of the entry layer (it reads a ``ConfigDict``).
"""
from __future__ import annotations

import json
import os

import numpy as np


def _choice(field, value, allowed):
    if value not in allowed:
        raise ValueError(f"{field}={value!r} is not known; allowed values: {sorted(allowed)}")


def append_metrics(workdir, record):
    import jax
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")


def host_tree(tree):
    import jax
    from jax.experimental import multihost_utils
    return jax.tree.map(lambda a: np.asarray(a if a.is_fully_addressable
                                             else multihost_utils.process_allgather(a, tiled=True)), tree)


def image_source(config, split):
    """The image dataset of ``split`` (random access to its uint8 rows, no flips or dequantization)."""
    from diffjax import config_lib as cl
    _choice("split", split, ("train", "test"))
    return cl.build_dataset(config, split=split, global_batch=1, process_index=0, process_count=1)


def _rows(source, start, stop):
    images, labels = source.get(np.arange(start, stop))  # uint8 rows, fitted to size
    return np.asarray(images, np.uint8), np.asarray(labels)


def split_rows(config, split, n=0):
    """The first ``n`` (0: all) uint8 images ``(n, H, W, C)`` and labels of ``split``."""
    source = image_source(config, split)
    return _rows(source, 0, min(n, source.size) if n else source.size)


def task_optimizer(config, steps):
    """``optim.*``'s optimizer for a task of its own ``steps`` (``optim.lr_decay``'s horizon, in place of
    ``training.n_iters``)."""
    from diffjax import config_lib as cl
    opt_config = config.copy_and_resolve_references()
    opt_config.training.n_iters = int(steps)
    return cl.build_optimizer(opt_config)


def task_batches(config, images, labels, batch_size):
    """Single-process batches of uint8 ``images`` and ``labels`` (:class:`~diffjax.data.ImageData`, seeded by
    ``config.seed``, flipped by ``data.random_flip``)."""
    from diffjax import data as ddata
    return ddata.ImageData.from_arrays(images, labels, global_batch=int(batch_size), seed=int(config.seed),
                                       random_flip=bool(config.data.random_flip), process_index=0, process_count=1)


def train_lock(workdir):
    """The workdir's training lock (:func:`diffjax.train.workdir_lock`), taken by process 0 only (the other
    processes of a multi-process run share its workdir)."""
    import contextlib

    import jax
    from diffjax.train.workdir_lock import workdir_lock
    return workdir_lock(workdir) if jax.process_index() == 0 else contextlib.nullcontext()


def toy_energy_distances(data, x, key):
    """``(energy distance of samples x to fresh data, that of two independent data draws)``: the unbiased estimate
    scatters around 0 for equal laws, and the second figure shows by how much at this size."""
    from diffjax.eval.sample_distances import energy_distance
    import jax
    truth = data.sample(jax.random.fold_in(key, 4), len(x))
    return (float(energy_distance(x, truth)),
            float(energy_distance(data.sample(jax.random.fold_in(key, 6), len(x)), truth)))
