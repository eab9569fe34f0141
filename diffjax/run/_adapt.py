"""``config.task = "adapt"``: teach a trained diffusion model a concept from a few images with a LoRA adapter
(:mod:`diffjax.adapt`), and sample the adapted model.

The config is the base model's (its network, process, loss and sampler) plus ``adapt.*``; ``adapt.base_workdir``
holds the base's checkpoints (read-only; its EMA parameters are the frozen weights). The adapt workdir holds only
the adapter's train state (the low-rank factors, their EMA and their optimizer state: orbax checkpoints, exact
resume) and ``adapter.json``, which ties it to the base by a fingerprint of the base weights: an adapter loads onto
any run whose weights are the same, and is refused, naming both, on another.

Part of the entry layer (it reads a ``ConfigDict``).
"""
from __future__ import annotations

import glob
import json
import os

import numpy as np

from diffjax.run._common import append_metrics, train_lock

ADAPTER_FILE = "adapter.json"
METHODS = ("lora",)  # dreambooth and textual_inversion need the text-conditional models (issue 41)


def load_adapt_images(path: str, shape) -> np.ndarray:
    """``adapt.images``: an ``.npz`` with a uint8 array ``x`` (N, H, W, C), or a folder of PNGs, as uint8
    ``(N, H, W, C)`` of the model's ``shape = (H, W, C)`` (no resizing: other sizes are an error)."""
    h, w, c = shape
    if isinstance(path, str) and path.endswith(".npz") and os.path.isfile(path):
        with np.load(path) as z:
            if "x" not in z.files:
                raise ValueError(f"adapt.images={path!r} has no array 'x' (arrays: {z.files})")
            x = np.asarray(z["x"])
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (h, w, c):
            raise ValueError(f"adapt.images={path!r}: x must be uint8 (N, {h}, {w}, {c}), got {x.dtype} {x.shape}")
    elif isinstance(path, str) and os.path.isdir(path):
        from PIL import Image
        files = sorted(glob.glob(os.path.join(path, "*.png")))
        if not files:
            raise ValueError(f"adapt.images={path!r} is a folder without PNG images (*.png)")
        imgs = []
        for f in files:
            im = np.asarray(Image.open(f).convert("L" if c == 1 else "RGB"), np.uint8)
            if im.shape[:2] != (h, w):
                raise ValueError(f"adapt.images: {f} is {im.shape[1]}x{im.shape[0]}, the model takes {w}x{h}")
            imgs.append(im.reshape(h, w, c))
        x = np.stack(imgs)
    else:
        raise ValueError(f"adapt.images must be an .npz file (uint8 x, (N, {h}, {w}, {c})) or a folder of PNGs, got "
                         f"{path!r}")
    if len(x) == 0:
        raise ValueError(f"adapt.images={path!r} holds no images")
    return x


def check_adapt_config(config, *, training: bool):
    from diffjax import config_lib as cl
    from diffjax.run._common import _choice
    a = config.adapt
    _choice("adapt.method", a.method, METHODS)
    if not a.base_workdir or not os.path.isdir(a.base_workdir):
        raise ValueError(f"adapt.base_workdir={a.base_workdir!r} is not a directory (allowed: the workdir of a "
                         f"trained diffusion run of this config's model)")
    if cl.is_toy(config):
        raise ValueError(f"config.task='adapt' adapts image models, got data.dataset={config.data.dataset!r}")
    if not (isinstance(a.ema_rate, float) and 0.0 <= a.ema_rate < 1.0):
        raise ValueError(f"adapt.ema_rate must be a float in [0, 1), got {a.ema_rate!r}")
    for name in ("rank", "batch_size", "n_iters", "log_freq", "checkpoint_freq"):
        v = a[name]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"adapt.{name} must be an int >= 1, got {v!r}")
    import jax
    if a.batch_size % jax.device_count():
        raise ValueError(f"adapt.batch_size={a.batch_size} must be a multiple of the {jax.device_count()} devices "
                         f"(the batch is split over them)")
    if not (isinstance(a.lr, float) and a.lr > 0):
        raise ValueError(f"adapt.lr must be a float > 0, got {a.lr!r}")
    k = cl.num_classes(config)
    if k is None and a.label != -1:
        raise ValueError(f"adapt.label={a.label!r}: the base model is unconditional; use -1")
    if k is not None and not (isinstance(a.label, int) and 0 <= a.label < k):
        raise ValueError(f"adapt.label must be a class in [0, {k}) for this class-conditional base model (the label "
                         f"the new images are taught under), got {a.label!r}")
    if training and not a.images:
        raise ValueError("adapt.images is required: an .npz (uint8 x) or a folder of PNGs of the new concept")


def _base_params(config):
    """The base run (read-only), its EMA parameters and their step."""
    from diffjax.run._run import Run
    base = Run(config, config.adapt.base_workdir)
    state, step = base.restore(compare_config=False)  # this config is the base's plus adapt.*
    base.checkpoints.close()
    if state is None:
        raise ValueError(f"adapt.base_workdir={config.adapt.base_workdir!r} holds no checkpoint to adapt")
    return base, state.ema_params, step


def _fingerprint(params) -> str:
    from diffjax.eval.stats import params_fingerprint
    return params_fingerprint(params, length=16)


def _check_base(workdir, record):
    path = os.path.join(workdir, ADAPTER_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        stored = json.load(f)
    if stored["base_fingerprint"] != record["base_fingerprint"]:
        raise ValueError(f"the adapter in {workdir} was trained on base weights {stored['base_fingerprint']} "
                         f"({stored['base_workdir']}, step {stored['base_step']}); adapt.base_workdir="
                         f"{record['base_workdir']!r} holds {record['base_fingerprint']} (step {record['base_step']}): "
                         f"another base model")
    return stored


class AdapterRun:
    """The adapter's train state, optimizer and compiled step for a config and its frozen base parameters."""

    def __init__(self, config, workdir, frozen, *, read_only: bool):
        import jax
        from diffjax import adapt
        from diffjax import train as tr
        a = config.adapt
        self.config, self.workdir, self.frozen = config, workdir, frozen
        targets = list(a.targets) if a.targets else None
        alpha = float(a.alpha) if a.alpha else None
        self.template = adapt.lora_init(jax.random.key(config.seed), frozen, rank=a.rank, alpha=alpha,
                                        targets=targets)
        self.optimizer = tr.make_optimizer(lr=a.lr, warmup=0, grad_clip=1.0)
        self.checkpoints = tr.Checkpoints(workdir, keep=2, read_only=read_only)

    def adapter(self, layers):
        from diffjax import adapt
        return adapt.LoraAdapter(layers=layers, alpha=self.template.alpha, rank=self.template.rank)

    def fresh_state(self):
        """Step 0: the fresh adapter as parameters and EMA (distinct buffers: the train step donates the state)."""
        import jax
        import jax.numpy as jnp
        from diffjax import train as tr

        def fresh(layers):
            return tr.TrainState(step=jnp.zeros((), jnp.int32), params=layers, ema_params=layers,
                                 opt_state=self.optimizer.init(layers),
                                 key=jax.random.key_data(jax.random.fold_in(jax.random.key(self.config.seed), 1)))
        return jax.jit(fresh)(self.template.layers)

    def restore(self):
        import jax
        state, step, skipped = self.checkpoints.restore(jax.eval_shape(self.fresh_state))  # traces only
        for msg in skipped:
            print(f"WARNING: {msg}", flush=True)
        return state, step

    def train_steps(self, base):
        import jax
        from diffjax import adapt
        from diffjax import config_lib as cl
        from diffjax import train as tr
        loss_fn = cl.build_loss_fn(self.config, base.model, base.sde)
        from diffjax.train.ema import debiased_decay
        ema = debiased_decay(float(self.config.adapt.ema_rate))

        def steps(state, batches, frozen):
            def adapter_loss(layers, key, batch):
                return loss_fn(adapt.lora_merge(frozen, self.adapter(layers)), key, batch)
            step = tr.make_train_step(adapter_loss, self.optimizer, ema_rate=ema)
            return tr.multi_step(step)(state, batches)

        jitted = jax.jit(steps, donate_argnums=0)
        return lambda state, batches: jitted(state, batches, self.frozen)


def train_adapter(config, workdir, *, progress: bool = True):
    """``--mode train`` of ``config.task="adapt"``: train (or resume) the adapter in ``workdir``."""
    check_adapt_config(config, training=True)
    with train_lock(workdir):
        return _train_adapter(config, workdir, progress=progress)


def _train_adapter(config, workdir, *, progress):
    import jax
    from diffjax import adapt
    from diffjax import config_lib as cl
    from diffjax import train as tr
    from diffjax.data._pipeline import ImageData
    from diffjax.eval.evaluate import write_json_atomic
    a = config.adapt
    base, frozen, base_step = _base_params(config)
    shape = tuple(cl.input_shape(config, 1)[1:])
    images = load_adapt_images(a.images, shape)
    if a.batch_size > len(images):
        raise ValueError(f"adapt.batch_size={a.batch_size} exceeds the {len(images)} images of adapt.images")
    num_classes = cl.num_classes(config)
    labels = np.full(len(images), max(a.label, 0), np.int32)
    data = ImageData(lambda idx: (images[idx], labels[idx]), len(images), shape, global_batch=a.batch_size,
                     seed=config.seed, random_flip=bool(config.data.random_flip), num_classes=num_classes)
    record = dict(method=a.method, base_workdir=os.path.abspath(a.base_workdir), base_step=int(base_step),
                  base_fingerprint=_fingerprint(frozen), num_images=int(len(images)))
    _check_base(workdir, record)
    run = AdapterRun(config, workdir, frozen, read_only=False)
    record.update(rank=run.template.rank, alpha=run.template.alpha, kernels=sorted(run.template.layers),
                  trainable_params=adapt.lora_num_params(run.template),
                  base_params=int(sum(np.size(x) for x in jax.tree.leaves(frozen))))
    os.makedirs(workdir, exist_ok=True)
    write_json_atomic(os.path.join(workdir, ADAPTER_FILE), record)
    state, step = run.restore()
    if state is None:
        state = run.fresh_state()
        print(f"a new LoRA adapter in {workdir}: rank {record['rank']}, {len(record['kernels'])} kernels, "
              f"{record['trainable_params']:,} trainable parameters "
              f"({100 * record['trainable_params'] / record['base_params']:.2f}% of the base's "
              f"{record['base_params']:,}); {len(images)} images", flush=True)
    else:
        print(f"resuming the adapter from step {step} in {workdir}", flush=True)
    if not num_classes:
        data_batches = lambda s, n: {"x": data.batches(s, n)["x"]}  # noqa: E731  (an unconditional base)
    else:
        data_batches = data.batches
    state = tr.train_loop(state, run.train_steps(base), lambda s, n: tr.global_batch(data_batches(s, n), base.mesh),
                          workdir=workdir, num_steps=a.n_iters, steps_per_call=1, log_freq=a.log_freq,
                          checkpoint_freq=a.checkpoint_freq, preemption_freq=a.checkpoint_freq,
                          checkpoints=run.checkpoints, progress=progress)
    run.checkpoints.close()
    append_metrics(workdir, {"task": "adapt", "step": int(jax.device_get(state.step)),
                             "trainable_params": record["trainable_params"]})
    print(f"trained the adapter to step {int(jax.device_get(state.step))} in {workdir}", flush=True)
    return state


def sample_adapter(config, workdir, *, progress: bool = True):
    """``--mode sample`` of ``config.task="adapt"``: the base merged with the adapter's EMA factors at strength
    ``sampling.adapter_scale``; writes ``WORKDIR/samples/adapted_STEP_scaleS.npz`` (and .png)."""
    import jax
    from diffjax import adapt
    from diffjax.run._run import Run
    del progress
    check_adapt_config(config, training=False)
    base, frozen, base_step = _base_params(config)
    stored = _check_base(workdir, dict(base_workdir=config.adapt.base_workdir, base_step=int(base_step),
                                       base_fingerprint=_fingerprint(frozen)))
    if stored is None:
        raise ValueError(f"{workdir} holds no adapter ({ADAPTER_FILE} missing): train one with --mode train")
    run = AdapterRun(config, workdir, frozen, read_only=True)
    state, step = run.restore()
    if state is None:
        raise ValueError(f"{workdir} holds no adapter checkpoint")
    scale = float(config.sampling.adapter_scale)
    params = adapt.lora_merge(frozen, run.adapter(state.ema_params), scale=scale)
    out = Run(config, workdir)  # the base's network and sampler, writing into this workdir
    x = out.sample(params, jax.random.fold_in(jax.random.key(config.seed), 4), config.sampling.num_samples)
    paths = out.write_samples(x, f"adapted_{step:08d}_scale{scale:g}",
                              title=f"adapter step {step}, scale {scale:g}")
    print(f"sampled {len(x)} with the adapter at scale {scale:g}; wrote {', '.join(paths)}", flush=True)
    return x
