"""The Fashion-MNIST feature classifier task (``config.task = "classifier"``, ``--mode train``).

Part of the entry layer (it reads a ``ConfigDict``).
"""
from __future__ import annotations

import os
import time

import numpy as np

from diffjax.run._common import append_metrics, split_rows, train_lock

CLASSIFIER_FILE = "classifier_params.npz"


def train_classifier(config, workdir):
    """Train the :class:`~diffjax.eval.feature_classifier.FeatureClassifier` on ``data.dataset``'s train split;
    write ``WORKDIR/classifier_params.npz`` and append the test accuracy to ``WORKDIR/metrics.jsonl``. Holds the
    workdir's training lock like ``--mode train`` of a diffusion model."""
    with train_lock(workdir):
        return _train_classifier(config, workdir)


def _train_classifier(config, workdir):
    import jax
    from diffjax.eval import feature_classifier as fc
    from diffjax.eval.evaluate import write_json_atomic
    c = config.classifier
    for name in ("batch_size", "log_every"):
        if int(c[name]) < 1:
            raise ValueError(f"classifier.{name} must be >= 1, got {c[name]!r}")
    for name in ("num_train_examples", "num_test_examples"):
        if int(c[name]) < 0:
            raise ValueError(f"classifier.{name} must be >= 0 (0: the whole split), got {c[name]!r}")
    if not float(c.epochs) > 0:
        raise ValueError(f"classifier.epochs must be > 0, got {c.epochs!r}")
    check_classifier_data(config, "config.task='classifier'")
    from diffjax.run._workdir_config import claim_workdir
    claim_workdir(config, workdir)  # refuses a workdir trained by another config
    t0 = time.perf_counter()
    x, y = split_rows(config, "train", int(c.num_train_examples))
    xt, yt = split_rows(config, "test", int(c.num_test_examples))
    steps = max(1, int(np.ceil(float(c.epochs) * len(x) / int(c.batch_size))))
    print(f"training the feature classifier on {len(x)} {config.data.dataset} images: {steps} steps of "
          f"{c.batch_size} ({c.epochs} epochs)", flush=True)

    def log(step, loss, params):
        del params
        print(f"step {step}/{steps}: loss {loss:.4f} ({time.perf_counter() - t0:.1f} s)", flush=True)
        append_metrics(workdir, {"task": "classifier", "step": step, "classifier_loss": loss})

    os.makedirs(workdir, exist_ok=True)
    params = fc.train_feature_classifier(x, y, steps=steps, batch_size=int(c.batch_size), seed=config.seed,
                                         learning_rate=float(c.learning_rate), log_every=int(c.log_every),
                                         callback=log)
    acc = fc.accuracy(params, xt, yt)
    wall = time.perf_counter() - t0
    if jax.process_index() == 0:
        fc.save_classifier_params(os.path.join(workdir, CLASSIFIER_FILE), params)
    record = {"task": "classifier", "step": steps, "test_accuracy": acc, "num_train_examples": len(x),
              "num_test_examples": len(xt), "wall_s": round(wall, 1)}
    if jax.process_index() == 0:
        write_json_atomic(os.path.join(workdir, "classifier.json"), record)
    append_metrics(workdir, record)
    print(f"test accuracy {acc:.4f} on {len(xt)} images; {wall:.1f} s; parameters in "
          f"{os.path.join(workdir, CLASSIFIER_FILE)}", flush=True)
    return params, acc


def check_classifier_data(config, what):
    from diffjax import config_lib as cl
    d = config.data
    if cl.is_toy(config) or (d.image_size, d.num_channels) != (28, 1):
        raise ValueError(f"{what} needs 28x28 grayscale data (data.image_size=28, data.num_channels=1, e.g. "
                         f"data.dataset='fashion_mnist'), got data.dataset={d.dataset!r}, "
                         f"image_size={d.image_size}, num_channels={d.num_channels}")
