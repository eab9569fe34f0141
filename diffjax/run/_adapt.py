"""``config.task = "adapt"``: teach a trained diffusion model a concept from a few images (:mod:`diffjax.adapt`), and
sample the adapted model. ``adapt.method``:

* ``"lora"``: a LoRA adapter (Hu et al. 2021) trained on the images, taught under ``adapt.label`` on a
  class-conditional base and under the caption ``adapt.prompt`` on a text-conditional one.
* ``"dreambooth"`` (Ruiz et al. 2023): the images bound to an identifier in ``adapt.prompt`` ("a sks bag") plus
  ``adapt.prior_weight`` times the loss on ``adapt.num_prior_images`` images the frozen base drew for
  ``adapt.prior_prompt`` ("a bag"; class-prior preservation, :func:`diffjax.adapt.prior_preservation_loss`). The
  identifier is a word of the base's vocabulary, as the paper uses a rare existing token: a word the base's training
  captions never used (with one class held out of the base's training, that class's synonyms are such words) has an
  untrained embedding and no meaning to overwrite. A new word would need a new embedding row, which is what
  textual inversion learns. With ``adapt.dreambooth_lora`` (default) a LoRA adapter is trained; without it every
  parameter is fine-tuned and the checkpoints hold the whole network.
* ``"textual_inversion"`` (Gal et al. 2022): the embedding row of a new word ``adapt.new_word`` (appended to the
  vocabulary and to the text encoder's token-embedding table, initialised from ``adapt.init_word``), learned from the
  images captioned ``adapt.prompt`` (which contains the word), everything else frozen. The config's tokenizer knows
  the word (:func:`diffjax.config_lib.adapter_words`), so ``sampling.prompt`` may use it anywhere.

The config is the base model's (its network, process, loss and sampler) plus ``adapt.*``; ``adapt.base_workdir``
holds the base's checkpoints (read-only; its EMA parameters are the frozen weights). The adapt workdir holds only
the trainable parameters' train state (with their EMA and optimizer state: orbax checkpoints, exact resume),
``adapter.json``, which ties it to the base by a fingerprint of the base weights (an adapter loads onto any run whose
weights are the same, and is refused, naming both, on another), and DreamBooth's ``prior_images.npz``.

Part of the entry layer (it reads a ``ConfigDict``).
"""
from __future__ import annotations

import copy
import json
import os

import numpy as np

from diffjax.run._adapt_data import (image_batches, instance_condition, load_adapt_images, prior_images,
                                     prompt_ids)
from diffjax.run._common import _choice, append_metrics, train_lock

ADAPTER_FILE = "adapter.json"
METHODS = ("lora", "dreambooth", "textual_inversion")
TEXT_METHODS = ("dreambooth", "textual_inversion")  # they teach a prompt: a text-conditional base only

__all__ = ["AdapterRun", "train_adapter", "sample_adapter", "load_adapt_images", "check_adapt_config"]


def _check_ints(a, names, minimum=1):
    for name in names:
        v = a[name]
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ValueError(f"adapt.{name} must be an int >= {minimum}, got {v!r}")


def _check_text_fields(config, *, training: bool):
    """``adapt.prompt`` / ``prior_prompt`` / ``prior_weight`` / ``num_prior_images`` / ``init_word`` of a
    text-conditional base."""
    from diffjax import config_lib as cl
    a = config.adapt
    if training or a.method == "textual_inversion":
        prompt_ids(config, "prompt", a.prompt)
    words = cl.adapter_words(config)
    if words and words[0] not in _words(a.prompt):
        raise ValueError(f"adapt.prompt={a.prompt!r} must contain adapt.new_word={words[0]!r} (the word textual "
                         f"inversion learns)")
    base_words = cl.text_tokenizer(base_config(config)).words
    if words and a.init_word and a.init_word not in base_words:
        raise ValueError(f"adapt.init_word must be '' (a Gaussian start) or one word of the base's vocabulary, got "
                         f"{a.init_word!r}; allowed words: {list(base_words)}")
    if a.method == "dreambooth":
        prompt_ids(config, "prior_prompt", a.prior_prompt)
        if not (isinstance(a.prior_weight, (int, float)) and not isinstance(a.prior_weight, bool)
                and float(a.prior_weight) >= 0):
            raise ValueError(f"adapt.prior_weight must be a float >= 0 (DreamBooth's lambda), got {a.prior_weight!r}")
        _check_ints(a, ("num_prior_images",))
        if a.num_prior_images < a.batch_size:
            raise ValueError(f"adapt.num_prior_images={a.num_prior_images} must be >= adapt.batch_size="
                             f"{a.batch_size} (a prior batch is as large as an instance batch)")


def _words(text):
    from diffjax.data import text_words
    return text_words(text)


def check_adapt_config(config, *, training: bool):
    """``adapt.*`` against the base model's config: ``ValueError`` naming the field, before anything is read."""
    import jax
    from diffjax import config_lib as cl
    a = config.adapt
    _choice("adapt.method", a.method, METHODS)
    if not a.base_workdir or not os.path.isdir(a.base_workdir):
        raise ValueError(f"adapt.base_workdir={a.base_workdir!r} is not a directory (allowed: the workdir of a "
                         f"trained diffusion run of this config's model)")
    if cl.is_toy(config):
        raise ValueError(f"config.task='adapt' adapts image models, got data.dataset={config.data.dataset!r}")
    if not (isinstance(a.ema_rate, float) and 0.0 <= a.ema_rate < 1.0):
        raise ValueError(f"adapt.ema_rate must be a float in [0, 1), got {a.ema_rate!r}")
    _check_ints(a, ("rank", "batch_size", "n_iters", "log_freq", "checkpoint_freq"))
    if a.batch_size % jax.device_count():
        raise ValueError(f"adapt.batch_size={a.batch_size} must be a multiple of the {jax.device_count()} devices "
                         f"(the batch is split over them)")
    if not (isinstance(a.lr, float) and a.lr > 0):
        raise ValueError(f"adapt.lr must be a float > 0, got {a.lr!r}")
    if cl.text_conditional(config):
        if a.label != -1:
            raise ValueError(f"adapt.label={a.label!r}: the base model is text-conditional; teach the images under "
                             f"adapt.prompt and leave adapt.label=-1")
        _check_text_fields(config, training=training)
    else:
        if a.method in TEXT_METHODS:
            raise ValueError(f"adapt.method={a.method!r} needs a text-conditional base model (text.conditioning set, "
                             f"a text encoder to bind the prompt to), got text.conditioning=''; allowed on this base: "
                             f"'lora'")
        if a.prompt:
            raise ValueError(f"adapt.prompt={a.prompt!r} needs a text-conditional base model; a class-conditional "
                             f"one is taught under adapt.label")
        k = cl.num_classes(config)
        if k is None and a.label != -1:
            raise ValueError(f"adapt.label={a.label!r}: the base model is unconditional; use -1")
        if k is not None and not (isinstance(a.label, int) and 0 <= a.label < k):
            raise ValueError(f"adapt.label must be a class in [0, {k}) for this class-conditional base model (the "
                             f"label the new images are taught under), got {a.label!r}")
    if training and not a.images:
        raise ValueError("adapt.images is required: an .npz (uint8 x) or a folder of PNGs of the new concept")


def base_config(config):
    """The base model's own config: ``config`` as a diffusion run, without the adapter's words and prompts."""
    base = copy.deepcopy(config)
    base.task = "diffusion"
    base.sampling.prompt, base.sampling.prompt_file = "", ""
    return base


def _prompted(config, prompt):
    """``config`` sampling ``prompt`` (for a text-conditional model)."""
    out = copy.deepcopy(config)
    out.sampling.prompt, out.sampling.prompt_file = prompt, ""
    return out


def _base_params(config):
    """The base run (read-only), its EMA parameters and their step."""
    from diffjax.run._run import Run
    base = Run(base_config(config), config.adapt.base_workdir)
    state, step = base.restore(compare_config=False)  # this config is the base's plus adapt.*
    base.checkpoints.close()
    if state is None:
        raise ValueError(f"adapt.base_workdir={config.adapt.base_workdir!r} holds no checkpoint to adapt")
    return base, state.ema_params, step


def _fingerprint(params) -> str:
    from diffjax.eval.stats import params_fingerprint
    return params_fingerprint(params, length=16)


def _check_base(workdir, record, fields=("method", "new_words")):
    """The stored ``adapter.json`` of ``workdir`` (None if there is none) after checking it against ``record``: the
    base's fingerprint and ``fields``."""
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
    for field in fields:
        if stored.get(field, record[field]) != record[field]:
            raise ValueError(f"{path} holds an adapter of {field}={stored[field]!r}; this config has "
                             f"{record[field]!r} (adapt.method / adapt.new_word)")
    return stored


def trainable_kind(config, frozen):
    """The trainable parameters of ``adapt.method`` (:mod:`diffjax.run._adapt_methods`)."""
    from diffjax import config_lib as cl
    from diffjax.run import _adapt_methods as m
    a = config.adapt
    if a.method == "textual_inversion":
        base_words = cl.text_tokenizer(base_config(config)).vocab
        init_id = base_words.index(a.init_word) if a.init_word else None
        return m.NewWordRows(config, frozen, words=cl.adapter_words(config), init_id=init_id)
    if a.method == "dreambooth" and not a.dreambooth_lora:
        return m.FullParams(config, frozen)
    return m.LoraParams(config, frozen)


class AdapterRun:
    """The trainable parameters' train state, optimizer and compiled step for a config and its frozen base
    parameters; ``kind`` (:func:`trainable_kind`) says what is trained and how it merges into the base's."""

    def __init__(self, config, workdir, frozen, *, read_only: bool):
        from diffjax import train as tr
        self.config, self.workdir, self.frozen = config, workdir, frozen
        self.kind = trainable_kind(config, frozen)
        self.optimizer = tr.make_optimizer(lr=config.adapt.lr, warmup=0, grad_clip=1.0)
        self.checkpoints = tr.Checkpoints(workdir, keep=2, read_only=read_only)

    def params(self, trainable, scale=1.0):
        """The network's parameters: the frozen base's with ``trainable`` merged in at strength ``scale``."""
        return self.kind.merge(self.frozen, trainable, scale)

    def fresh_state(self):
        """Step 0: the fresh trainable parameters as parameters and EMA (distinct buffers: the step donates them)."""
        import jax
        import jax.numpy as jnp
        from diffjax import train as tr

        def fresh(trainable):
            trainable = jax.tree.map(jnp.copy, trainable)
            return tr.TrainState(step=jnp.zeros((), jnp.int32), params=trainable,
                                 ema_params=jax.tree.map(jnp.copy, trainable),
                                 opt_state=self.optimizer.init(trainable),
                                 key=jax.random.key_data(jax.random.fold_in(jax.random.key(self.config.seed), 1)))
        return jax.jit(fresh)(self.kind.init())

    def restore(self):
        import jax
        state, step, skipped = self.checkpoints.restore(jax.eval_shape(self.fresh_state))  # traces only
        for msg in skipped:
            print(f"WARNING: {msg}", flush=True)
        return state, step

    def train_steps(self, model, sde):
        """``steps(state, batches)``: the diffusion loss of ``model`` on the merged parameters (DreamBooth: on
        ``{"instance", "prior"}`` batches, the prior term weighted ``adapt.prior_weight``), differentiated with
        respect to the trainable parameters alone."""
        import jax
        from diffjax import adapt
        from diffjax import config_lib as cl
        from diffjax import train as tr
        from diffjax.train.ema import debiased_decay
        loss_fn = cl.build_loss_fn(self.config, model, sde)
        if self.config.adapt.method == "dreambooth":
            loss_fn = adapt.prior_preservation_loss(loss_fn, float(self.config.adapt.prior_weight))
        ema = debiased_decay(float(self.config.adapt.ema_rate))

        def steps(state, batches, frozen):
            def trainable_loss(trainable, key, batch):
                return loss_fn(self.kind.merge(frozen, trainable), key, batch)
            step = tr.make_train_step(trainable_loss, self.optimizer, ema_rate=ema)
            return tr.multi_step(step)(state, batches)

        jitted = jax.jit(steps, donate_argnums=0)
        return lambda state, batches: jitted(state, batches, self.frozen)


def train_adapter(config, workdir, *, progress: bool = True):
    """``--mode train`` of ``config.task="adapt"``: train (or resume) the adapter in ``workdir``."""
    check_adapt_config(config, training=True)
    with train_lock(workdir):
        return _train_adapter(config, workdir, progress=progress)


def _record(config, frozen, base_step) -> dict:
    from diffjax import config_lib as cl
    a = config.adapt
    return dict(method=a.method, base_workdir=os.path.abspath(a.base_workdir), base_step=int(base_step),
                base_fingerprint=_fingerprint(frozen), new_words=list(cl.adapter_words(config)))


def _draw(config, frozen):
    """``draw(n)``: ``n`` uint8 images of the frozen base for ``adapt.prior_prompt`` (deterministic in the seed)."""
    import jax
    from diffjax.data import from_unit
    from diffjax.run._run import Run
    prior = Run(_prompted(base_config(config), config.adapt.prior_prompt), "")
    key = jax.random.fold_in(jax.random.key(config.seed), 6)
    size = int(config.sampling.batch_size)

    def draw(n):
        xs = [prior.sample(frozen, jax.random.fold_in(key, i), min(size, n - i * size))
              for i in range(-(-n // size))]
        return from_unit(np.concatenate(xs))
    return draw


def _train_adapter(config, workdir, *, progress):
    import jax
    from diffjax import config_lib as cl
    from diffjax import train as tr
    from diffjax.eval.evaluate import write_json_atomic
    from diffjax.run._run import Run
    a = config.adapt
    base, frozen, base_step = _base_params(config)
    images = load_adapt_images(a.images, tuple(cl.input_shape(config, 1)[1:]))
    batches = image_batches(config, images, instance_condition(config, len(images)))
    record = dict(_record(config, frozen, base_step), num_images=int(len(images)))
    _check_base(workdir, record)
    run = AdapterRun(config, workdir, frozen, read_only=False)
    opt_state = jax.eval_shape(run.fresh_state).opt_state  # shapes only: the optimizer's memory
    record.update(run.kind.record(), checkpoint_holds=run.kind.holds,
                  base_params=int(sum(np.size(x) for x in jax.tree.leaves(frozen))),
                  optimizer_state_bytes=int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(opt_state))))
    os.makedirs(workdir, exist_ok=True)
    write_json_atomic(os.path.join(workdir, ADAPTER_FILE), record)
    if a.method == "dreambooth":
        prior = prior_images(config, workdir, _draw(config, frozen))
        ids = np.tile(prompt_ids(config, "prior_prompt", a.prior_prompt), (len(prior), 1))
        instance, prior_batches = batches, image_batches(config, prior, ids, seed_offset=1)
        batches = lambda s, n: {"instance": instance(s, n), "prior": prior_batches(s, n)}  # noqa: E731
    state, step = run.restore()
    if state is None:
        state = run.fresh_state()
        print(f"adapt.method={a.method!r} in {workdir}: {run.kind.describe()}, {record['trainable_params']:,} "
              f"trainable parameters ({100 * record['trainable_params'] / record['base_params']:.2f}% of the base's "
              f"{record['base_params']:,}; the checkpoints hold {run.kind.holds}); {len(images)} images", flush=True)
    else:
        print(f"resuming the adapter from step {step} in {workdir}", flush=True)
    model = Run(config, "")  # the adapted network (textual inversion: its vocabulary has the new words)
    state = tr.train_loop(state, run.train_steps(model.model, model.sde),
                          lambda s, n: tr.global_batch(batches(s, n), base.mesh),
                          workdir=workdir, num_steps=a.n_iters, steps_per_call=1, log_freq=a.log_freq,
                          checkpoint_freq=a.checkpoint_freq, preemption_freq=a.checkpoint_freq,
                          checkpoints=run.checkpoints, progress=progress)
    run.checkpoints.close()
    append_metrics(workdir, {"task": "adapt", "method": a.method, "step": int(jax.device_get(state.step)),
                             "trainable_params": record["trainable_params"]})
    print(f"trained the adapter to step {int(jax.device_get(state.step))} in {workdir}", flush=True)
    return state


def _sampling_config(config):
    """``config`` for sampling: on a text-conditional base without ``sampling.prompt`` / ``prompt_file``, the prompt
    is ``adapt.prompt``."""
    from diffjax import config_lib as cl
    s = config.sampling
    if cl.text_conditional(config) and not (s.prompt or s.prompt_file) and config.adapt.prompt:
        return _prompted(config, config.adapt.prompt)
    return config


def check_extra_adapters(config):
    """``sampling.extra_adapters`` / ``extra_adapter_scales``: workdirs of LoRA adapters (``adapter.json`` with
    low-rank factors) and a scale for each (``()``: all 1.0); ``ValueError`` naming the field."""
    s = config.sampling
    wds, scales = tuple(s.get("extra_adapters", ())), tuple(s.get("extra_adapter_scales", ()))
    if scales and len(scales) != len(wds):
        raise ValueError(f"sampling.extra_adapter_scales={scales!r} must give one scale per sampling.extra_adapters "
                         f"workdir ({len(wds)}), or be () for 1.0 each")
    for wd in wds:
        path = os.path.join(str(wd), ADAPTER_FILE)
        if not os.path.isfile(path):
            raise ValueError(f"sampling.extra_adapters: {wd!r} holds no adapter ({ADAPTER_FILE} missing); allowed: "
                             f"workdirs of trained LoRA adapters of this base")
        with open(path) as f:
            if "kernels" not in json.load(f):
                raise ValueError(f"sampling.extra_adapters: {wd!r} holds no LoRA adapter (only LoRA and DreamBooth-"
                                 f"LoRA adapters add up; full fine-tuning and textual inversion do not)")
    return list(zip(wds, [float(v) for v in scales] or [1.0] * len(wds)))


class _ExtraLora:
    """A trained LoRA adapter of another workdir, rebuilt from its ``adapter.json`` (rank, alpha, kernels)."""

    def __init__(self, config, workdir, frozen, stored):
        c = copy.deepcopy(config)
        c.adapt.method, c.adapt.rank, c.adapt.alpha = "lora", int(stored["rank"]), float(stored["alpha"])
        c.adapt.targets = tuple(stored["kernels"])
        run = AdapterRun(c, workdir, frozen, read_only=True)
        state, _ = run.restore()
        run.checkpoints.close()
        if state is None:
            raise ValueError(f"sampling.extra_adapters: {workdir!r} holds no adapter checkpoint")
        self.kind, self.trainable = run.kind, state.ema_params

    def params_onto(self, params, scale):
        return self.kind.merge(params, self.trainable, scale)


def _extra_adapters(config, extras, frozen, base_step):
    """The ``(workdir, scale)`` pairs of :func:`check_extra_adapters` as ``(_ExtraLora, scale)``."""
    out = []
    for wd, scale in extras:
        stored = _check_base(wd, _record(config, frozen, base_step), fields=())
        out.append((_ExtraLora(config, wd, frozen, stored), scale))
    return out


def sample_adapter(config, workdir, *, progress: bool = True):
    """``--mode sample`` of ``config.task="adapt"``: the base merged with the trained parameters' EMA at strength
    ``sampling.adapter_scale`` (LoRA; full fine-tuning: the interpolation base -> fine-tuned; textual inversion: not
    used), plus the LoRA adapters of ``sampling.extra_adapters`` at their scales (LoRA updates add up, Hu et al.
    2021: two concepts in one model); writes ``WORKDIR/samples/adapted_STEP_scaleS[_plusN].npz`` (and .png; N: the
    extra adapters), with ``prompts`` and ``labels`` on a text-conditional base."""
    import jax
    from diffjax import config_lib as cl
    from diffjax.run._run import Run
    del progress
    check_adapt_config(config, training=False)
    extras = check_extra_adapters(config)
    config = _sampling_config(config)
    base, frozen, base_step = _base_params(config)
    stored = _check_base(workdir, _record(config, frozen, base_step))
    if stored is None:
        raise ValueError(f"{workdir} holds no adapter ({ADAPTER_FILE} missing): train one with --mode train")
    run = AdapterRun(config, workdir, frozen, read_only=True)
    state, step = run.restore()
    run.checkpoints.close()
    if state is None:
        raise ValueError(f"{workdir} holds no adapter checkpoint")
    scale = float(config.sampling.adapter_scale)
    params = run.params(state.ema_params, scale)
    extras = _extra_adapters(config, extras, frozen, base_step)
    for lora, lora_scale in extras:  # LoRA updates add up: W + s1 B1 A1 + s2 B2 A2
        params = lora.params_onto(params, lora_scale)
    out = Run(config, workdir)  # the adapted network and the base's sampler, writing into this workdir
    n = int(config.sampling.num_samples)
    x = out.sample(params, jax.random.fold_in(jax.random.key(config.seed), 4), n)
    tag, more = (f"_plus{len(extras)}", f" + {len(extras)} more") if extras else ("", "")
    paths = out.write_samples(x, f"adapted_{step:08d}_scale{scale:g}{tag}",
                              title=f"adapter step {step}, scale {scale:g}{more}",
                              extra=cl.prompt_record(config, [n]))
    out.checkpoints.close()
    print(f"sampled {len(x)} with the adapter at scale {scale:g}; wrote {', '.join(paths)}", flush=True)
    return x
