"""The KL autoencoder task (``config.task = "autoencoder"``): ``--mode train`` (orbax checkpoints, exact resume, the
loop of every other task), ``--mode eval`` (PSNR and the Frechet distance of reconstructions of the test split) and
``--mode describe``; :func:`load_autoencoder` gives a trained workdir's frozen network to latent diffusion.

Part of the entry layer (it reads a ``ConfigDict``). The objective is reconstruction plus a small KL
(:func:`diffjax.nets.autoencoder_loss`); latent diffusion's adversarial and perceptual terms are left out (the
perceptual LPIPS network needs weights that cannot be fetched offline).
"""
from __future__ import annotations

import os
import time

import numpy as np

from diffjax.run._common import append_metrics, image_source, _rows, train_lock

AUTOENCODER_JSON = "autoencoder_eval.json"
AUTOENCODER_MODES = ("train", "eval", "describe")


class AutoencoderRun:
    """The autoencoder, optimizer, mesh, abstract train state (:class:`~diffjax.train.TrainState`: ``params``,
    ``ema_params``, ``opt_state``, ``key``) and checkpoints of an autoencoder config. ``read_only``: as
    :class:`~diffjax.run.Run`."""

    def __init__(self, config, workdir, *, read_only: bool = True):
        import jax
        from diffjax import config_lib as cl
        from diffjax import train as tr
        from diffjax.run._workdir_config import check_workdir_config, workdir_has_state
        cl.validate_autoencoder(config)
        self.config, self.workdir, self.read_only = config, workdir, read_only
        if workdir and not read_only:
            check_workdir_config(config, workdir, has_state=workdir_has_state(workdir))
        self.model = cl.build_autoencoder(config)
        self.optimizer = cl.build_optimizer(config)
        self.mesh = tr.make_mesh(fsdp=config.distributed.fsdp)
        self.image_shape = cl.input_shape(config, 1)
        abstract = jax.eval_shape(self._create, jax.random.key(0))
        self.shardings = tr.state_shardings(self.mesh, abstract, fsdp_min_size=config.distributed.fsdp_min_size)
        self.abstract = tr.abstract_with_shardings(abstract, self.shardings)
        self.checkpoints = tr.Checkpoints(workdir, keep=config.training.checkpoint_keep,
                                          read_only=read_only) if workdir else None

    def _create(self, key):
        import jax
        import jax.numpy as jnp
        from diffjax.train import TrainState
        k_init, k_train = jax.random.split(key)
        params = self.model.init(k_init, jnp.zeros(self.image_shape, jnp.float32))["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                          opt_state=self.optimizer.init(params), key=jax.random.key_data(k_train))

    def fresh_state(self):
        """The initial train state, compiled like :meth:`diffjax.run.Run.fresh_state` (XLA's backend optimisations
        off on the CPU: it runs once)."""
        import jax
        from diffjax.run._run import FAST_COMPILE
        key = jax.random.key(self.config.seed)
        lowered = jax.jit(self._create, out_shardings=self.shardings).lower(key)
        return lowered.compile(compiler_options=FAST_COMPILE if jax.default_backend() == "cpu" else None)(key)

    def restore(self):
        """``(state, step)`` of the newest intact checkpoint, ``(None, None)`` when there is none; a training run
        then stores its config in ``WORKDIR/config.json``."""
        from diffjax.run._workdir_config import write_workdir_config
        state, step, skipped = self.checkpoints.restore(self.abstract)
        for msg in skipped:
            print(f"WARNING: {msg}", flush=True)
        if state is None and skipped:
            raise ValueError(f"every checkpoint in {self.workdir} is damaged; nothing was restored")
        if not self.read_only:
            write_workdir_config(self.config, self.workdir)
        return state, step

    def train_steps(self):
        from diffjax import config_lib as cl
        from diffjax import train as tr
        step = tr.make_train_step(cl.autoencoder_loss_fn(self.config, self.model), self.optimizer,
                                  ema_rate=cl.build_ema_decay(self.config))
        return cl.build_train_steps(self.config, step, self.mesh, self.shardings)

    def reconstruct_fn(self):
        """Jitted ``(params, x) -> decode(posterior mean)``."""
        import jax
        model = self.model
        return jax.jit(lambda params, x: model.apply({"params": params}, x)[0])


def run_autoencoder(config, workdir, mode, *, progress: bool = True):
    """``python -m diffjax.main`` for ``config.task="autoencoder"``: ``mode`` in ``AUTOENCODER_MODES``."""
    from diffjax import config_lib as cl
    if mode not in AUTOENCODER_MODES:
        raise ValueError(f"config.task='autoencoder' supports --mode {', '.join(AUTOENCODER_MODES)}, got --mode {mode}")
    cl.validate_autoencoder(config)
    if mode == "describe":
        return describe_autoencoder(config)
    if not workdir:
        raise ValueError(f"--workdir is required for --mode {mode}")
    if mode == "train":
        return train_autoencoder(config, workdir, progress=progress)
    return evaluate_autoencoder(config, workdir)


def describe_autoencoder(config):
    """Print the autoencoder's parts with parameter counts, its latent shape and one summary line."""
    import jax
    import jax.numpy as jnp
    from diffjax import config_lib as cl
    from diffjax.nets import count_params
    model = cl.build_autoencoder(config)
    shape = cl.input_shape(config, 1)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape, jnp.float32)))["params"]
    width = max(len(name) for name in params)
    print(f"{type(model).__name__} on input {shape}")
    for part, sub in params.items():
        print(f"{part:<{width}}  {count_params(sub):>12,}")
    n = count_params(params)
    print(f"total parameters: {n:,} ({n / 1e6:.2f} M)")
    print(f"task autoencoder: {n:,} parameters; down factor {model.down_factor}, latent "
          f"{model.latent_shape(shape)[1:]}; loss {config.autoencoder.reconstruction_loss} + "
          f"{config.autoencoder.kl_weight:g} KL; dataset {config.data.dataset}; devices {jax.device_count()}")


def train_autoencoder(config, workdir, *, progress: bool = True):
    """``--mode train`` of an autoencoder config: train (or resume exactly) in ``workdir``; with
    ``autoencoder.eval_at_end`` end with :func:`evaluate_autoencoder`. Returns the final train state."""
    with train_lock(workdir):
        state = _train(config, workdir, progress=progress)
    if config.autoencoder.eval_at_end:
        evaluate_autoencoder(config, workdir, params=state.ema_params, step=int(np.asarray(state.step)))
    return state


def _train(config, workdir, *, progress):
    import jax
    from diffjax import config_lib as cl
    from diffjax import train as tr
    t = config.training
    run = AutoencoderRun(config, workdir, read_only=False)
    data = cl.build_dataset(config)
    state, step = run.restore()
    if state is None:
        state = run.fresh_state()
        print(f"starting a new autoencoder run in {workdir}", flush=True)
    else:
        print(f"resuming from step {step} in {workdir}", flush=True)
    t0 = time.perf_counter()
    state = tr.train_loop(state, run.train_steps(), lambda s, n: tr.global_batch(data.batches(s, n), run.mesh),
                          workdir=workdir, num_steps=t.n_iters, steps_per_call=t.n_jitted_steps,
                          log_freq=t.log_freq, checkpoint_freq=t.checkpoint_freq,
                          preemption_freq=t.snapshot_freq_for_preemption, checkpoints=run.checkpoints,
                          progress=progress, learning_rate=cl.build_learning_rate(config))
    run.checkpoints.close()
    wall = time.perf_counter() - t0
    append_metrics(workdir, {"task": "autoencoder", "step": int(jax.device_get(state.step)),
                             "train_wall_s": round(wall, 1)})
    print(f"trained the autoencoder to step {int(jax.device_get(state.step))} in {wall:.1f} s; checkpoints in "
          f"{os.path.join(os.path.abspath(workdir), 'checkpoints')}", flush=True)
    return state


def psnr(reference_uint8, images_uint8) -> np.ndarray:
    """Peak signal-to-noise ratio of each image against its reference, in dB, on the 0..255 scale, shape ``(N,)``
    (``inf`` for an exact copy).

    .. math:: \\mathrm{PSNR} = 10 \\log_{10} (255^2 / \\mathrm{MSE})
    """
    a, b = np.asarray(reference_uint8, np.float64), np.asarray(images_uint8, np.float64)
    if a.shape != b.shape or a.ndim < 2:
        raise ValueError(f"reference and images must have the same shape (N, ...), got {a.shape} and {b.shape}")
    mse = np.mean(np.square(a - b).reshape(len(a), -1), axis=1)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(255.0 ** 2 / mse)


def _feature_net_or_none(config):
    """The feature network of ``eval.*``, or None (with a warning) where none is configured."""
    from diffjax.run._eval import build_feature_net
    try:
        return build_feature_net(config)
    except ValueError as e:
        print(f"WARNING: no Frechet distance of the reconstructions: {e}", flush=True)
        return None


def evaluate_autoencoder(config, workdir, *, params=None, step=None):
    """``--mode eval``: reconstruct (posterior mean, EMA parameters) the first ``autoencoder.eval_num_examples``
    test images; PSNR per image (mean and median, uint8 scale) and the Frechet distance of the reconstructions to
    ``eval.reference_split`` in the feature network's space (the Fashion-MNIST classifier of
    ``eval.classifier_workdir`` for 28x28 grayscale data), beside that of the originals themselves (the floor).
    Writes ``WORKDIR/autoencoder_eval.json``, ``samples/reconstructions.png`` and a line of ``metrics.jsonl``."""
    import jax
    import jax.numpy as jnp
    from diffjax.data import from_unit, to_unit
    from diffjax.eval.evaluate import write_json_atomic
    from diffjax.run._eval import evaluate_images, validate_eval
    from diffjax.train.images import save_image_grid
    validate_eval(config)
    run = AutoencoderRun(config, workdir)
    if params is None:
        state, step = run.restore()
        if state is None:
            raise ValueError(f"--mode eval needs an autoencoder checkpoint in {workdir}/checkpoints or "
                             f"checkpoints-meta; none found")
        params = state.ema_params
    run.checkpoints.close()
    a = config.autoencoder
    source = image_source(config, "test")
    n = min(int(a.eval_num_examples), source.size) if a.eval_num_examples else source.size
    recon_fn = run.reconstruct_fn()
    t0 = time.perf_counter()
    originals, recons = [], []
    for i in range(0, n, int(a.eval_batch_size)):
        images = _rows(source, i, min(i + int(a.eval_batch_size), n))[0]
        originals.append(images)
        recons.append(from_unit(np.asarray(recon_fn(params, jnp.asarray(to_unit(images))))))
    originals, recons = np.concatenate(originals), np.concatenate(recons)
    values = psnr(originals, recons)
    record = {"task": "autoencoder", "step": step, "num_examples": int(n),
              "psnr_mean": float(np.mean(values)), "psnr_median": float(np.median(values)),
              "mse": float(np.mean(np.square(to_unit(originals) - to_unit(recons)))),
              "reconstruct_wall_s": round(time.perf_counter() - t0, 1)}
    fnet = _feature_net_or_none(config)
    if fnet is not None and n >= 2:
        fd = evaluate_images(config, workdir, recons, feature_net=fnet)
        floor = evaluate_images(config, workdir, originals, feature_net=fnet)
        record.update(frechet_distance=fd["frechet_distance"], kid=fd["kid"],
                      frechet_distance_originals=floor["frechet_distance"], feature_net=fd["feature_net"],
                      reference_split=config.eval.reference_split)
    if jax.process_index() == 0:
        write_json_atomic(os.path.join(workdir, AUTOENCODER_JSON), record)
        k = min(32, n)
        grid = np.concatenate([originals[:k], recons[:k]])
        os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
        save_image_grid(os.path.join(workdir, "samples", "reconstructions.png"), grid, ncol=max(1, k // 2) if k > 1
                        else 1, title=f"originals (top), reconstructions (bottom), step {step}")
    append_metrics(workdir, record)
    fd_text = (f"; Frechet distance of the reconstructions {record['frechet_distance']:.3f} (the originals: "
               f"{record['frechet_distance_originals']:.3f}) under {record['feature_net']}"
               if "frechet_distance" in record else "")
    print(f"autoencoder at step {step}: PSNR {record['psnr_mean']:.2f} dB (median {record['psnr_median']:.2f}) on "
          f"{n} test images{fd_text}; wrote {os.path.join(workdir, AUTOENCODER_JSON)}", flush=True)
    return record


def load_autoencoder(workdir):
    """The frozen autoencoder of a ``config.task="autoencoder"`` workdir: ``(model, ema_params, config)``, the
    network rebuilt from ``WORKDIR/config.json`` and the EMA parameters of its newest checkpoint.

    Raises:
      ValueError: ``workdir`` holds no autoencoder (no ``config.json`` of that task, or no checkpoint).
    """
    return autoencoder_checkpoint(workdir)[:3]


def autoencoder_checkpoint(workdir):
    """:func:`load_autoencoder` and the step of the checkpoint: ``(model, ema_params, config, step)``."""
    import ml_collections
    from diffjax.run._workdir_config import CONFIG_FILE, read_workdir_config
    if not workdir or not os.path.isdir(workdir):
        raise ValueError(f"autoencoder workdir {workdir!r} does not exist; train one with --config "
                         f"configs/fashion_mnist_autoencoder.py --workdir {workdir or 'DIR'}")
    stored = read_workdir_config(workdir)
    if stored is None or stored.get("task") != "autoencoder":
        what = "no config.json" if stored is None else f"a config.json of task {stored.get('task')!r}"
        raise ValueError(f"autoencoder workdir {workdir!r} holds {what}, not a config.task='autoencoder' run "
                         f"({os.path.join(workdir, CONFIG_FILE)})")
    config = ml_collections.ConfigDict(_tuples(stored))
    run = AutoencoderRun(config, workdir)
    state, step = run.restore()
    run.checkpoints.close()
    if state is None:
        raise ValueError(f"autoencoder workdir {workdir!r} holds no checkpoint; train it first")
    return run.model, state.ema_params, config, int(step)


def _tuples(tree):
    """JSON lists back to tuples (the config fields that were tuples)."""
    if isinstance(tree, dict):
        return {k: _tuples(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return tuple(_tuples(v) for v in tree)
    return tree

