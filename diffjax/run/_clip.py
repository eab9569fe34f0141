"""The contrastive text-image task (``config.task = "clip"``, ``--mode train``): CLIP on Fashion-MNIST images and their
templated captions (:mod:`diffjax.data`), with retrieval accuracy on the test split.

Part of the entry layer (it reads a ``ConfigDict``). Each training image gets one caption per step, drawn from its
training captions; the loss is :func:`diffjax.core.clip_loss` (with ``clip.consistent_positives`` every caption
in the batch that fits an image by the caption rules counts as its positive, not only its own). With
``clip.noise_aware`` the image tower sees ``x_t = a(t) x_0 + s(t) eps``, ``t ~ U[training.t_eps, T)`` on the process
of ``training.sde`` (for CLIP guidance).
"""
from __future__ import annotations

import os
import time

import numpy as np

from diffjax.run._common import append_metrics, split_rows, task_batches, task_optimizer, train_lock
from diffjax.run._noisy_classifier import _save_params_atomic

CLIP_JSON = "clip.json"
_TOP_K = (1, 5)


def batch_captions(tokenizer, max_length, rng, labels, shades, sizes, *, split="train"):
    """One caption per image (:func:`diffjax.data.sample_captions`): ``(ids, mask, prompts)``, the prompts what
    each caption states (:func:`diffjax.data.parse_prompt`)."""
    from diffjax import data as ddata
    texts = ddata.sample_captions(rng, labels, shades, sizes, split=split)
    ids, mask = tokenizer.encode(texts, max_length=max_length)
    return ids, mask, [ddata.parse_prompt(t) for t in texts]


def make_clip_step(config, model, sde, optimizer):
    """The pure, jitted train step ``(params, opt_state, key, x, ids, mask, positives) -> (params, opt_state,
    metrics)`` of :func:`diffjax.core.clip_loss`; ``metrics``: ``loss``, ``i2t_accuracy``, ``t2i_accuracy``,
    ``logit_scale``, ``grad_norm``."""
    import jax
    import optax
    from diffjax import config_lib as cl
    from diffjax import core
    noise_aware = bool(config.clip.noise_aware)
    marginal, labels_of = cl.network_marginal(config, sde), cl.clip_noise_labels(config, sde)
    t_eps = float(config.training.t_eps)

    def loss_fn(params, key, x, ids, mask, positives):
        k_t, k_eps = jax.random.split(key)
        labels = None
        if noise_aware:
            t = core.uniform_time(k_t, x.shape[0], marginal, t_eps=t_eps)
            x, labels = marginal.perturb(x, t, jax.random.normal(k_eps, x.shape, x.dtype)), labels_of(t)
        img, txt, scale = model.apply({"params": params}, x, ids, mask, labels, train=True)
        loss, aux = core.clip_loss(img, txt, scale, positives=positives)
        return loss, dict(aux, logit_scale=scale)

    @jax.jit
    def step(params, opt_state, key, x, ids, mask, positives):
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, key, x, ids, mask, positives)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, dict(aux, loss=loss, grad_norm=optax.tree.norm(grads))

    return step


def _noised(config, sde, t):
    """``(key, x) -> (x,)`` for ``t=None``, else ``(key, x) -> (x_t, noise labels)`` at time ``t`` on the config's
    process (fresh noise per image): what the image tower is fed."""
    if t is None:
        return lambda key, x: (x,)
    import jax
    import jax.numpy as jnp
    from diffjax import config_lib as cl
    marginal, labels_of = cl.network_marginal(config, sde), cl.clip_noise_labels(config, sde)

    def seen(key, x):
        tb = jnp.full((x.shape[0],), t, jnp.float32)
        return marginal.perturb(x, tb, jax.random.normal(key, x.shape, x.dtype)), labels_of(tb)

    return seen


def clip_retrieval(config, model, sde, params, images, labels, key, *, t=None):
    """Retrieval accuracy of a CLIP model on uint8 ``images`` ``(N, H, W, C)`` with class ``labels``, the images
    seen at time ``t`` (``x_t``, fresh noise per image; noise-aware models only; ``None``: clean images).

    Hit rates at k in (1, 5) (:func:`diffjax.core.retrieval_top_k`), a hit being a retrieved item that fits by the
    caption rules (:func:`diffjax.data.match_matrix`):

    * ``class_i2t_top{k}``: each image against the 10 class prompts (:func:`diffjax.data.class_prompts`; chance
      k / 10); ``class_t2i_top{k}``: each class prompt against the ``N`` images;
    * ``heldout_i2t_top{k}`` / ``heldout_t2i_top{k}``: each image against one held-out caption per image (sentence
      frames never seen in training) and back; ``heldout_chance``: the fraction of fitting (image, caption) pairs,
      a random pick's top-1 hit rate.
    """
    import jax
    import jax.numpy as jnp
    from diffjax import config_lib as cl
    from diffjax import core
    from diffjax import data as ddata
    c, tok = config.clip, cl.clip_tokenizer(config)
    shades, sizes = ddata.measure_attributes(images)
    ids, mask, prompts = batch_captions(tok, int(c.max_length), np.random.default_rng([int(config.seed), 3]), labels,
                                        shades, sizes, split="heldout")
    class_ids, class_mask = tok.encode(ddata.class_prompts(), max_length=int(c.max_length))
    x, bs = ddata.to_unit(images), int(c.eval_batch_size)
    seen_at = _noised(config, sde, t)

    @jax.jit
    def embed_images(params, key, xb):
        return model.apply({"params": params}, *seen_at(key, xb), method=model.encode_image)

    @jax.jit
    def embed_texts(params, ids, mask):
        return model.apply({"params": params}, ids, mask, method=model.encode_text)[0]

    img = np.concatenate([np.asarray(embed_images(params, jax.random.fold_in(key, i), jnp.asarray(x[i:i + bs])))
                          for i in range(0, len(x), bs)])
    txt = np.concatenate([np.asarray(embed_texts(params, ids[i:i + bs], mask[i:i + bs]))
                          for i in range(0, len(ids), bs)])
    cls = np.asarray(embed_texts(params, class_ids, class_mask))
    fits_class = ddata.match_matrix([ddata.parse_prompt(p) for p in ddata.class_prompts()], labels, shades, sizes)
    fits = ddata.match_matrix(prompts, labels, shades, sizes)
    out = {}
    for name, sim, rel in (("class_i2t", img @ cls.T, fits_class), ("class_t2i", cls @ img.T, fits_class.T),
                           ("heldout_i2t", img @ txt.T, fits), ("heldout_t2i", txt @ img.T, fits.T)):
        for k in _TOP_K:
            out[f"{name}_top{k}"] = float(core.retrieval_top_k(sim, rel, min(k, sim.shape[1])))
    out["heldout_chance"] = float(fits.mean())
    return out


def describe_clip(config):
    """Print the CLIP model of ``config.clip`` (``--mode describe`` of ``config.task="clip"``): parameters per tower
    and in all, after checking the config; compiles nothing."""
    import jax
    from diffjax import config_lib as cl
    from diffjax.nets import count_params
    cl.validate_clip(config)
    model, c = cl.build_clip(config), config.clip
    params = jax.eval_shape(lambda k: cl.init_clip(config, model, k), jax.random.key(0))
    shape = cl.input_shape(config, 1)
    print(f"CLIP on input {shape} and {c.max_length} tokens ({cl.clip_tokenizer(config).vocab_size} words)")
    width = max(len(name) for name in params)
    print("\n".join(f"{name:<{width}}  {count_params(p):>12,}" for name, p in params.items()))
    n = count_params(params)
    print(f"total parameters: {n:,} ({n / 1e6:.2f} M)")
    print(f"task clip: {'noise-aware (training.sde ' + config.training.sde + ')' if c.noise_aware else 'clean'} image "
          f"tower, embedding {c.embed_dim}; {c.steps} steps of batch {c.batch_size}; dataset {config.data.dataset}")


def train_clip(config, workdir):
    """Train the CLIP model of ``config.clip`` on ``data.dataset``'s train split and its captions; write
    ``WORKDIR/clip_params.npz``, ``clip_config.json``, the test retrieval accuracy (``clip.json``; for a noise-aware
    model one row per noise-level bin) and the training log (``metrics.jsonl``). Holds the workdir's training lock.
    Returns ``(params, record)``."""
    from diffjax import config_lib as cl
    cl.validate_clip(config)  # before anything is read or compiled
    with train_lock(workdir):
        return _train(config, workdir)


def _train(config, workdir):
    import jax
    import jax.numpy as jnp
    from diffjax import config_lib as cl
    from diffjax import data as ddata
    from diffjax.eval.evaluate import write_json_atomic
    from diffjax.run._workdir_config import claim_workdir
    c = config.clip
    claim_workdir(config, workdir)  # refuses a workdir trained by another config
    t0 = time.perf_counter()
    images, labels = split_rows(config, "train", int(c.num_train_examples))
    x_test, y_test = split_rows(config, "test", int(c.num_test_examples))
    batches, optimizer = task_batches(config, images, labels, c.batch_size), task_optimizer(config, c.steps)
    sde, model, tok = cl.build_sde(config), cl.build_clip(config), cl.clip_tokenizer(config)
    key = jax.random.key(config.seed)
    params = cl.init_clip(config, model, jax.random.fold_in(key, 0))
    opt_state = optimizer.init(params)
    step_fn = make_clip_step(config, model, sde, optimizer)
    steps, max_length = int(c.steps), int(c.max_length)
    os.makedirs(workdir, exist_ok=True)
    print(f"training CLIP ({'noise-aware, training.sde=' + repr(config.training.sde) if c.noise_aware else 'clean'}"
          f" images, {tok.vocab_size} tokens) on {len(images)} {config.data.dataset} images: {steps} steps of "
          f"{c.batch_size}", flush=True)
    k_train = jax.random.fold_in(key, 1)
    for step in range(1, steps + 1):
        b = batches.batch(step - 1)
        shades, sizes = ddata.measure_attributes(ddata.from_unit(b["x"]))
        ids, mask, prompts = batch_captions(tok, max_length, np.random.default_rng([int(config.seed), step, 2]),
                                            b["y"], shades, sizes)
        positives = (ddata.match_matrix(prompts, b["y"], shades, sizes) if c.consistent_positives
                     else np.eye(len(prompts), dtype=bool))
        params, opt_state, m = step_fn(params, opt_state, jax.random.fold_in(k_train, step), jnp.asarray(b["x"]),
                                       ids, mask, positives)
        if step % int(c.log_every) == 0 or step == steps:
            m = {k: float(v) for k, v in m.items()}
            if not np.isfinite(m["loss"]):
                raise FloatingPointError(f"CLIP loss is {m['loss']} at step {step}")
            print(f"step {step}/{steps}: loss {m['loss']:.4f} i2t {m['i2t_accuracy']:.3f} t2i "
                  f"{m['t2i_accuracy']:.3f} scale {m['logit_scale']:.1f} ({time.perf_counter() - t0:.1f} s)",
                  flush=True)
            append_metrics(workdir, {"task": "clip", "step": step, "clip_loss": m["loss"],
                                     "clip_train_i2t_accuracy": m["i2t_accuracy"],
                                     "clip_train_t2i_accuracy": m["t2i_accuracy"], "logit_scale": m["logit_scale"]})
    if jax.process_index() == 0:
        _save_params_atomic(os.path.join(workdir, cl.CLIP_PARAMS), jax.device_get(params))
        write_json_atomic(os.path.join(workdir, cl.CLIP_CONFIG), cl.clip_record(config))
    k_eval = jax.random.fold_in(key, 2)
    if c.noise_aware:
        marginal = cl.network_marginal(config, sde)
        edges = np.linspace(float(config.training.t_eps), float(marginal.T), int(c.num_noise_bins) + 1)
        rows = [dict(t=float(t), **clip_retrieval(config, model, sde, params, x_test, y_test,
                                                  jax.random.fold_in(k_eval, i), t=float(t)))
                for i, t in enumerate(0.5 * (edges[1:] + edges[:-1]))]
    else:
        rows = [dict(t=None, **clip_retrieval(config, model, sde, params, x_test, y_test, k_eval))]
    record = {"task": "clip", "step": steps, "noise_aware": bool(c.noise_aware), "num_train_examples": len(images),
              "num_test_examples": len(x_test), "test_retrieval": rows, "wall_s": round(time.perf_counter() - t0, 1)}
    if jax.process_index() == 0:
        write_json_atomic(os.path.join(workdir, CLIP_JSON), record)
    append_metrics(workdir, record)
    for r in rows:
        where = "clean images" if r["t"] is None else f"x_t at t={r['t']:.3f}"
        print(f"{where}: image->class prompt top-1 {r['class_i2t_top1']:.3f} top-5 {r['class_i2t_top5']:.3f}; "
              f"held-out captions image->text top-1 {r['heldout_i2t_top1']:.3f}, text->image top-1 "
              f"{r['heldout_t2i_top1']:.3f} (chance {r['heldout_chance']:.3f})", flush=True)
    print(f"parameters in {os.path.join(workdir, cl.CLIP_PARAMS)}", flush=True)
    return params, record
