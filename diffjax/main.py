"""Command line: ``python -m diffjax.main --config configs/X.py --workdir DIR --mode MODE``.

Modes: ``train`` (a diffusion model, or the Fashion-MNIST feature classifier when ``config.task="classifier"``),
``sample``, ``eval`` (FID-type metrics of EMA samples, resumable), ``likelihood`` (bits/dim through the
probability-flow ODE, plus the DDPM variational bound for discrete DDPM models; NLL in nats on toy data),
``stats`` (cache the reference statistics only) and ``describe``.

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
MODES = ("train", "sample", "eval", "likelihood", "stats", "describe")
TASKS = ("diffusion", "classifier")
FEATURE_NETS = ("auto", "inception", "classifier")
CLASSIFIER_FILE = "classifier_params.npz"
flags.DEFINE_enum("mode", "train", list(MODES), "What to do.")
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
        return tr.jit_train_step(tr.multi_step(step, unroll=t.unroll_jitted_steps), self.mesh, self.shardings)

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
            # the unbiased estimate scatters around 0 for equal laws: two independent data draws show how much
            ed_ref = float(energy_distance(data.sample(jax.random.fold_in(key, 6), n), truth))
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


# ----------------------------------------------------------------------------------------------------------------
# The Fashion-MNIST feature classifier (config.task = "classifier")


def train_classifier(config, workdir):
    """Train the :class:`~diffjax.eval.feature_classifier.FeatureClassifier` on ``data.dataset``'s train split;
    write ``WORKDIR/classifier_params.npz`` and append the test accuracy to ``WORKDIR/metrics.jsonl``."""
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
    _check_classifier_data(config, "config.task='classifier'")
    t0 = time.perf_counter()
    x, y = _split_rows(config, "train", int(c.num_train_examples))
    xt, yt = _split_rows(config, "test", int(c.num_test_examples))
    steps = max(1, int(np.ceil(float(c.epochs) * len(x) / int(c.batch_size))))
    print(f"training the feature classifier on {len(x)} {config.data.dataset} images: {steps} steps of "
          f"{c.batch_size} ({c.epochs} epochs)", flush=True)

    def log(step, loss, params):
        del params
        print(f"step {step}/{steps}: loss {loss:.4f} ({time.perf_counter() - t0:.1f} s)", flush=True)
        _append_metrics(workdir, {"task": "classifier", "step": step, "classifier_loss": loss})

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
    _append_metrics(workdir, record)
    print(f"test accuracy {acc:.4f} on {len(xt)} images; {wall:.1f} s; parameters in "
          f"{os.path.join(workdir, CLASSIFIER_FILE)}", flush=True)
    return params, acc


def _check_classifier_data(config, what):
    from diffjax import config_lib as cl
    d = config.data
    if cl.is_toy(config) or (d.image_size, d.num_channels) != (28, 1):
        raise ValueError(f"{what} needs 28x28 grayscale data (data.image_size=28, data.num_channels=1, e.g. "
                         f"data.dataset='fashion_mnist'), got data.dataset={d.dataset!r}, "
                         f"image_size={d.image_size}, num_channels={d.num_channels}")


def _image_source(config, split):
    """The image dataset of ``split`` (random access to its uint8 rows, no flips or dequantization)."""
    from diffjax import config_lib as cl
    _choice("split", split, ("train", "test"))
    return cl.build_dataset(config, split=split, global_batch=1, process_index=0, process_count=1)


def _rows(source, start, stop):
    images, labels = source.get(np.arange(start, stop))  # uint8 rows, fitted to size
    return np.asarray(images, np.uint8), np.asarray(labels)


def _split_rows(config, split, n=0):
    """The first ``n`` (0: all) uint8 images ``(n, H, W, C)`` and labels of ``split``."""
    source = _image_source(config, split)
    return _rows(source, 0, min(n, source.size) if n else source.size)


# ----------------------------------------------------------------------------------------------------------------
# Evaluation: --mode eval / stats / likelihood


def _choice(field, value, allowed):
    if value not in allowed:
        raise ValueError(f"{field}={value!r} is not known; allowed values: {sorted(allowed)}")


def validate_eval(config):
    """Check the ``eval`` section (names and counts) before anything is built or compiled."""
    e = config.eval
    _choice("eval.feature_net", e.feature_net, FEATURE_NETS)
    _choice("eval.likelihood_trace", e.likelihood_trace, ("hutchinson", "exact"))
    _choice("eval.vlb_variance", e.vlb_variance, ("beta", "posterior"))
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
        _check_classifier_data(config, "eval.feature_net='classifier'")
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
                         "pt_inception-2015-12-05-6726825d.pth (or an .npz of it); set "
                         "eval.allow_random_inception=True only for smoke tests with random weights, or use "
                         "eval.feature_net='classifier' for 28x28 grayscale data")
    return ev.inception_feature_net(params, batch_size=int(e.feature_batch_size))


def reference_statistics(config, workdir, *, feature_net=None) -> dict:
    """Reference statistics (``mu``, ``sigma``, ``features``) of ``eval.reference_split`` under the feature net,
    computed once (resumably) and cached in ``eval.stats_dir`` (``""``: ``WORKDIR/stats``)."""
    from diffjax import config_lib as cl
    from diffjax.eval import stats
    validate_eval(config)
    if cl.is_toy(config):
        raise ValueError(f"data.dataset={config.data.dataset!r} is a toy dataset: it has no reference statistics "
                         f"(--mode eval compares samples with fresh draws of the distribution)")
    e, d = config.eval, config.data
    fnet = build_feature_net(config) if feature_net is None else feature_net
    source = _image_source(config, e.reference_split)
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
    from diffjax import config_lib as cl
    from diffjax.eval import evaluate as ev
    validate_eval(config)
    images = np.asarray(images_uint8)
    want = cl.input_shape(config, images.shape[0] if images.ndim else 0)[1:]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != tuple(want):
        raise ValueError(f"images_uint8 must be a uint8 array shaped (N, {', '.join(map(str, want))}), got "
                         f"{images.dtype} {images.shape}")
    if images.shape[0] < 2:
        raise ValueError(f"images_uint8 needs >= 2 images, got {images.shape[0]}")
    fnet = build_feature_net(config) if feature_net is None else feature_net
    ref = reference_statistics(config, workdir, feature_net=fnet) if reference is None else reference
    e = config.eval
    feats, logits = fnet.fn(images)
    out = ev.image_metrics(feats, logits, ref, score_name=fnet.score_name, kid_subsets=int(e.kid_subsets),
                           kid_subset_size=int(e.kid_subset_size), score_splits=int(e.score_splits), seed=config.seed)
    out["feature_net"] = fnet.cache_id
    return out


def _restore_for_eval(config, workdir, mode):
    run = Run(config, workdir)
    state, step = run.restore()
    if state is None:
        run.checkpoints.close()
        raise ValueError(f"--mode {mode} needs a checkpoint in {workdir}/checkpoints or checkpoints-meta; none found")
    return run, state, step


def eval_samples(run, params, step, *, num_samples, batch_size, seed, workdir):
    """``num_samples`` EMA samples for evaluation, written batch by batch to ``eval/samples_STEP_IIIII.npz``
    (uint8 images or float points); batches already on disk are read back, not regenerated, so an interrupted
    evaluation resumes where it stopped. Batch ``i`` uses ``fold_in(key, i)``: resuming gives the same samples.

    Returns:
        ``(samples, num_reused)``.
    """
    import jax
    from diffjax import config_lib as cl
    from diffjax.data import from_unit
    from diffjax.eval.stats import save_npz_atomic
    out = os.path.join(workdir, "eval")
    os.makedirs(out, exist_ok=True)
    toy = cl.is_toy(run.config)
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 6), step)
    xs, done, reused, i = [], 0, 0, 0
    t0 = time.perf_counter()
    while done < num_samples:
        path = os.path.join(out, f"samples_{step:08d}_{i:05d}.npz")
        if os.path.exists(path):
            with np.load(path) as z:
                x = z["x"]
            reused += len(x)
        else:
            n = min(batch_size, num_samples - done)
            x = run.sample(params, jax.random.fold_in(key, i), n)
            x = x.astype(np.float32) if toy else from_unit(x)
            if jax.process_index() == 0:
                save_npz_atomic(path, x=x)
        xs.append(x)
        done, i = done + len(x), i + 1
        print(f"eval samples {done}/{num_samples} ({reused} reused; {time.perf_counter() - t0:.1f} s)", flush=True)
    return np.concatenate(xs)[:num_samples], reused


def evaluate(config, workdir):
    """``--mode eval``: metrics of ``eval.num_samples`` EMA samples of the latest checkpoint; writes
    ``eval/metrics_STEP.json`` and a ``metrics.jsonl`` line. Images: Frechet distance, KID and the classifier /
    Inception score; toy 2-D data: energy distance and MMD to as many fresh draws of the distribution."""
    import jax
    from diffjax import config_lib as cl
    from diffjax.eval.evaluate import write_json_atomic
    validate_eval(config)
    cl.validate(config)
    e = config.eval
    toy = cl.is_toy(config)
    fnet = None if toy else build_feature_net(config)  # fails fast (missing weights) before any sampling
    run, state, step = _restore_for_eval(config, workdir, "eval")
    t0 = time.perf_counter()
    x, reused = eval_samples(run, state.ema_params, step, num_samples=int(e.num_samples),
                             batch_size=int(e.batch_size), seed=config.seed, workdir=workdir)
    run.checkpoints.close()
    if toy:
        from diffjax.eval.sample_distances import energy_distance, mmd_rbf
        data = cl.build_dataset(config)
        truth = data.sample(jax.random.fold_in(jax.random.key(config.seed), 7), len(x))
        metrics = {"energy_distance": float(energy_distance(x, truth)), "mmd": float(mmd_rbf(x, truth)),
                   "num_samples": len(x)}
    else:
        metrics = evaluate_images(config, workdir, x, feature_net=fnet)
    record = {"step": int(step), "mode": "eval", **metrics, "sampler": config.sampling.method,
              "num_reused": reused, "wall_s": round(time.perf_counter() - t0, 1)}
    if jax.process_index() == 0:
        write_json_atomic(os.path.join(workdir, "eval", f"metrics_{step:08d}.json"), record)
    _append_metrics(workdir, record)
    print("eval " + ", ".join(f"{k} {v:.5g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()),
          flush=True)
    return record


def _host_tree(tree):
    import jax
    from jax.experimental import multihost_utils
    return jax.tree.map(lambda a: np.asarray(a if a.is_fully_addressable
                                             else multihost_utils.process_allgather(a, tiled=True)), tree)


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
            labels = nets.noise_labels_for(t, run.sde, time_input=ti)
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
    discrete DDPM models (``training.loss`` "ddpm" / "hybrid"); on toy 2-D data the mean negative log-likelihood in
    nats of fresh draws. Writes ``eval/bpd_STEP.json`` and a ``metrics.jsonl`` line."""
    import jax
    from diffjax import config_lib as cl
    from diffjax.core.likelihood import bits_per_dim, log_likelihood
    from diffjax.data import to_unit
    from diffjax.discrete.ddpm import ddpm_grid, ddpm_vlb_bpd
    from diffjax.eval.evaluate import write_json_atomic
    validate_eval(config)
    cl.validate(config)
    e = config.eval
    run, state, step = _restore_for_eval(config, workdir, "likelihood")
    run.checkpoints.close()
    params = _host_tree(state.ema_params)
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
        source = _image_source(config, "test")
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
            vfn = jax.jit(lambda p, k, x0, y: ddpm_vlb_bpd(k, x0, _vlb_model_fn(config, run, p, y if conditional
                                                                                 else None), grid))
            vlb = []
            for r in range(repeats):
                for a in range(0, n, bb):
                    images, labels = _rows(source, a, min(a + bb, n))
                    vlb.append(np.asarray(vfn(params, jax.random.fold_in(jax.random.fold_in(key, 100 + r), a),
                                              to_unit(images), labels.astype(np.int32)), np.float64))
                print(f"pass {r + 1}/{repeats}: {np.concatenate(vlb).mean():.4f} bits/dim (variational bound, "
                      f"{grid.N} steps) ({time.perf_counter() - t0:.1f} s)", flush=True)
            vlb = np.concatenate(vlb)
            record.update(vlb_bpd=float(vlb.mean()), vlb_bpd_stderr=float(vlb.std() / np.sqrt(len(vlb))))
    record["wall_s"] = round(time.perf_counter() - t0, 1)
    if jax.process_index() == 0:
        write_json_atomic(os.path.join(workdir, "eval", f"bpd_{step:08d}.json"), record)
    _append_metrics(workdir, record)
    print("likelihood " + ", ".join(f"{k} {v:.5g}" if isinstance(v, float) else f"{k} {v}"
                                    for k, v in record.items()), flush=True)
    return record


def run_mode(config, workdir, mode, *, progress: bool = True):
    """Dispatch ``mode`` for ``config.task`` (what ``main`` does after parsing flags)."""
    _choice("mode", mode, MODES)
    _choice("task", config.task, TASKS)
    if mode == "describe":
        return describe(config)
    if not workdir:
        raise ValueError(f"--workdir is required for --mode {mode}")
    if config.task == "classifier":
        if mode != "train":
            raise ValueError(f"config.task='classifier' supports --mode train only, got --mode {mode}")
        return train_classifier(config, workdir)
    if mode == "train":
        return train(config, workdir, progress=progress)
    if mode == "sample":
        return sample(config, workdir)
    if mode == "eval":
        return evaluate(config, workdir)
    if mode == "likelihood":
        return likelihood(config, workdir)
    return stats_mode(config, workdir)


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
