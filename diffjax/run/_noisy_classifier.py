"""The noise-conditional classifier task (``config.task = "noisy_classifier"``, ``--mode train``): ``p(y | x_t, t)``
on the process of ``training.sde``, for classifier guidance (``sampling.classifier_workdir`` /
``sampling.classifier_scale`` of a diffusion config on the same process).

Part of the entry layer (it reads a ``ConfigDict``). The loss is :func:`diffjax.core.noisy_classifier_loss`; the
network :class:`~diffjax.nets.NoiseConditionalClassifier` sees ``t`` through the score network's time input
(:func:`diffjax.config_lib.noisy_classifier_logits_fn`).
"""
from __future__ import annotations

import os
import time

import numpy as np

from diffjax.run._common import append_metrics, split_rows, task_batches, task_optimizer, train_lock

NOISY_CLASSIFIER_JSON = "noisy_classifier.json"


def make_noisy_classifier_step(config, model, sde, optimizer):
    """The pure, jitted train step ``(params, opt_state, key, x, y) -> (params, opt_state, metrics)`` of
    :func:`diffjax.core.noisy_classifier_loss` (``t ~ U[training.t_eps, T)`` on ``sde`` seen through the score
    network's marginal) with ``optimizer``; ``metrics``: ``loss``, ``accuracy``, ``grad_norm``."""
    import jax
    import optax
    from diffjax import config_lib as cl
    from diffjax import core
    marginal = cl.network_marginal(config, sde)
    t_eps = float(config.training.t_eps)

    def loss_fn(params, key, x, y):
        k_loss, k_drop = jax.random.split(key)
        logits_fn = cl.noisy_classifier_logits_fn(config, model, sde, params, train=True, rng=k_drop)
        return core.noisy_classifier_loss(k_loss, x, y, logits_fn, marginal, t_eps=t_eps)

    @jax.jit
    def step(params, opt_state, key, x, y):
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, key, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, {"loss": loss, "accuracy": aux["accuracy"], "grad_norm": optax.tree.norm(grads)}

    return step


def init_noisy_classifier(config, model, key):
    """Fresh parameters of ``model`` for ``config``'s image shape."""
    import jax
    import jax.numpy as jnp
    from diffjax import config_lib as cl
    shape = cl.input_shape(config, 1)
    return jax.jit(lambda k: model.init(k, jnp.zeros(shape, jnp.float32), jnp.zeros((1,)), train=False))(key)["params"]


def noisy_classifier_accuracy_by_time(config, model, sde, params, x, y, key, *, batch_size: int = 500):
    """Test accuracy in ``noisy_classifier.num_noise_bins`` equal bins of ``t`` in ``[training.t_eps, T]``
    (evaluated at each bin's centre, fresh noise per example): a list of ``{"t_lo", "t_hi", "t", "log_snr",
    "accuracy"}``."""
    import jax
    import jax.numpy as jnp
    from diffjax import config_lib as cl
    from diffjax import core
    marginal = cl.network_marginal(config, sde)
    nbins, t_eps, T = int(config.noisy_classifier.num_noise_bins), float(config.training.t_eps), float(marginal.T)
    edges = np.linspace(t_eps, T, nbins + 1)

    @jax.jit
    def correct(params, key, xb, yb, t):
        logits_fn = cl.noisy_classifier_logits_fn(config, model, sde, params)
        return core.noisy_classifier_accuracy(key, xb, yb, logits_fn, marginal, t)

    rows = []
    for k in range(nbins):
        t = 0.5 * (edges[k] + edges[k + 1])
        hits = [np.asarray(correct(params, jax.random.fold_in(jax.random.fold_in(key, k), i),
                                   jnp.asarray(x[i:i + batch_size]), jnp.asarray(y[i:i + batch_size]), t))
                for i in range(0, len(x), batch_size)]
        a, s = (float(v) for v in marginal.marginal(jnp.float32(t)))
        rows.append({"t_lo": float(edges[k]), "t_hi": float(edges[k + 1]), "t": float(t),
                     "log_snr": float(2.0 * (np.log(a) - np.log(s))), "accuracy": float(np.mean(np.concatenate(hits)))})
    return rows


def _save_params_atomic(path, params):
    """``params`` flattened to ``"a/b/c"`` keys in one ``.npz``, written to a temporary file and renamed."""
    import jax
    flat = {"/".join(str(getattr(k, "key", k)) for k in p): np.asarray(v)
            for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        np.savez(f, **flat)
    os.replace(tmp, path)


def train_noisy_classifier(config, workdir):
    """Train the noise-conditional classifier of ``config.noisy_classifier`` on ``data.dataset``'s train split with
    the process of ``training.sde``; write ``WORKDIR/noisy_classifier_params.npz`` and its config fields
    (``noisy_classifier_config.json``), the test accuracy against noise level (``noisy_classifier.json``) and the
    training log (``metrics.jsonl``). Holds the workdir's training lock. Returns ``(params, record)``."""
    from diffjax import config_lib as cl
    cl.validate_noisy_classifier(config)  # before anything is read or compiled
    with train_lock(workdir):
        return _train(config, workdir)


def _train(config, workdir):
    import jax
    import jax.numpy as jnp
    from diffjax import config_lib as cl
    from diffjax import data as ddata
    from diffjax.eval.evaluate import write_json_atomic
    from diffjax.run._workdir_config import claim_workdir
    c = config.noisy_classifier
    claim_workdir(config, workdir)  # refuses a workdir trained by another config
    t0 = time.perf_counter()
    images, labels = split_rows(config, "train", int(c.num_train_examples))
    x_test, y_test = split_rows(config, "test", int(c.num_test_examples))
    x_test = ddata.to_unit(x_test)
    n_classes = cl.noisy_classifier_num_classes(config)
    if labels.max(initial=0) >= n_classes:
        raise ValueError(f"noisy_classifier.num_classes={n_classes} but data.dataset={config.data.dataset!r} has "
                         f"label {int(labels.max())}")
    batches = task_batches(config, images, labels, c.batch_size)
    optimizer = task_optimizer(config, c.steps)
    sde, model = cl.build_sde(config), cl.build_noisy_classifier(config)
    key = jax.random.key(config.seed)
    params = init_noisy_classifier(config, model, jax.random.fold_in(key, 0))
    opt_state = optimizer.init(params)
    step_fn = make_noisy_classifier_step(config, model, sde, optimizer)
    steps = int(c.steps)
    os.makedirs(workdir, exist_ok=True)
    print(f"training the noise-conditional classifier ({n_classes} classes, training.sde={config.training.sde!r}, "
          f"time input {cl.classifier_time_input(config)!r}) on {len(images)} {config.data.dataset} images: "
          f"{steps} steps of {c.batch_size}", flush=True)
    k_train = jax.random.fold_in(key, 1)
    for step in range(1, steps + 1):
        b = batches.batch(step - 1)
        params, opt_state, m = step_fn(params, opt_state, jax.random.fold_in(k_train, step), jnp.asarray(b["x"]),
                                       jnp.asarray(b["y"]))
        if step % int(c.log_every) == 0 or step == steps:
            m = {k: float(v) for k, v in m.items()}
            if not np.isfinite(m["loss"]):
                raise FloatingPointError(f"noisy classifier loss is {m['loss']} at step {step}")
            print(f"step {step}/{steps}: loss {m['loss']:.4f} accuracy {m['accuracy']:.3f} "
                  f"({time.perf_counter() - t0:.1f} s)", flush=True)
            append_metrics(workdir, {"task": "noisy_classifier", "step": step, "noisy_classifier_loss": m["loss"],
                                      "noisy_classifier_train_accuracy": m["accuracy"]})
    if jax.process_index() == 0:
        _save_params_atomic(os.path.join(workdir, cl.NOISY_CLASSIFIER_PARAMS), jax.device_get(params))
        write_json_atomic(os.path.join(workdir, cl.NOISY_CLASSIFIER_CONFIG), cl.noisy_classifier_record(config))
    bins = noisy_classifier_accuracy_by_time(config, model, sde, params, x_test, y_test, jax.random.fold_in(key, 2),
                                             batch_size=int(c.eval_batch_size))
    record = {"task": "noisy_classifier", "step": steps, "num_classes": n_classes, "num_train_examples": len(images),
              "num_test_examples": len(x_test), "test_accuracy_by_t": bins,
              "test_accuracy_mean": float(np.mean([b["accuracy"] for b in bins])),
              "wall_s": round(time.perf_counter() - t0, 1)}
    if jax.process_index() == 0:
        write_json_atomic(os.path.join(workdir, NOISY_CLASSIFIER_JSON), record)
    append_metrics(workdir, record)
    for b in bins:
        print(f"t in [{b['t_lo']:.3f}, {b['t_hi']:.3f}] (log-SNR {b['log_snr']:+.2f}): test accuracy "
              f"{b['accuracy']:.3f}", flush=True)
    print(f"parameters in {os.path.join(workdir, cl.NOISY_CLASSIFIER_PARAMS)}; guide samples with "
          f"--config.sampling.classifier_workdir={workdir} --config.sampling.classifier_scale=S", flush=True)
    return params, record
