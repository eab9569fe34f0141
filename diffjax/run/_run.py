"""The run of one config: :class:`Run` (mesh, SDE, model, optimizer, step, state shardings) and the modes
``train``, ``sample`` and ``describe``.

Part of the entry layer: it reads a ``ConfigDict`` and resolves it through :mod:`diffjax.config_lib`.
"""
from __future__ import annotations

import functools
import os
import time

import numpy as np

from diffjax.run._common import append_metrics, host_tree, toy_energy_distances, train_lock
from diffjax.run._latent import data_space


# XLA:CPU options for programs that run once (compile time matters, run time does not)
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


class Run:
    """Everything built from a config: mesh, SDE, model, optimizer, step, abstract state and its shardings.

    ``read_only`` (default): open the workdir's checkpoints for reading only; nothing is created in ``workdir``
    (sample, eval, likelihood, a distillation teacher). ``read_only=False`` (training): the config is first compared
    with the one stored in ``WORKDIR/config.json`` (:func:`~diffjax.run._workdir_config.check_workdir_config`: a
    ``ValueError`` naming the differing fields when the workdir holds checkpoints of another config), and
    :meth:`restore` stores it there.
    """

    def __init__(self, config, workdir, *, read_only: bool = True):
        import jax
        from diffjax import config_lib as cl
        from diffjax import train as tr
        from diffjax.run._workdir_config import check_workdir_config, workdir_has_state
        self.config, self.workdir, self.read_only = config, workdir, read_only
        cl.validate(config)
        if workdir and not read_only:  # before anything is built, compiled or created
            check_workdir_config(config, workdir, has_state=workdir_has_state(workdir))
        self.checkpoints = tr.Checkpoints(workdir, keep=config.training.checkpoint_keep,
                                          read_only=read_only) if workdir else None
        self.mesh = tr.make_mesh(fsdp=config.distributed.fsdp)
        self.sde = cl.build_sde(config)
        self.model = cl.build_model(config)
        self.optimizer = cl.build_optimizer(config)
        self.num_classes = cl.num_classes(config)
        self.label_classes = cl.sampling_num_classes(config)  # the labels samples cycle through (also: guidance)
        shape = cl.input_shape(config, 1)
        self.posthoc_sigma_rels = cl.posthoc_sigma_rels(config)
        condition = cl.example_condition(config, 1)  # a cascade's super-resolution stage: its low-res condition
        self._create = lambda key: tr.create_state(key, self.model, shape, self.optimizer,
                                                   num_classes=self.num_classes,
                                                   num_posthoc_emas=len(self.posthoc_sigma_rels), condition=condition)
        self._create = cl.with_pretrained_text(config, self._create)  # text.encoder_workdir: a frozen encoder
        self.prompt_ids = cl.prompt_ids(config) if cl.prompted(config) else None  # samples cycle through
        abstract = jax.eval_shape(self._create, jax.random.key(0))
        self.shardings = tr.state_shardings(self.mesh, abstract, fsdp_min_size=config.distributed.fsdp_min_size)
        self.abstract = tr.abstract_with_shardings(abstract, self.shardings)
        self._sample_jit = {}
        self.space = data_space(config, workdir, read_only=read_only)  # images, or a latent model's (run/_latent.py)

    def fresh_state(self):
        """The initial train state. Run once per run, so on the CPU it is compiled with XLA's backend optimisations
        off: the initialisers' random-number programs compile ~4x faster and give the same bits."""
        import jax
        key = jax.random.key(self.config.seed)
        lowered = jax.jit(self._create, out_shardings=self.shardings).lower(key)
        options = FAST_COMPILE if jax.default_backend() == "cpu" else None
        return lowered.compile(compiler_options=options)(key)

    def restore(self, abstract=None, *, compare_config: bool = True):
        """``(state, step)`` of the newest intact checkpoint (``(None, None)`` when there is none), restored into
        ``abstract`` (default: this run's :class:`~diffjax.train.TrainState`).

        A training run (``read_only=False``) then stores its config in ``WORKDIR/config.json``; a read-only one
        prints a warning naming the fields in which ``config`` differs from the stored one (``compare_config``).

        Raises:
          CheckpointMismatchError: the newest intact checkpoint was written by another config (its arrays differ
            from this config's state; the fields of ``config.json`` that differ are named).
          ValueError: checkpoints are there but every one is damaged.
        """
        from diffjax import train as tr
        from diffjax.run._workdir_config import CONFIG_FILE, check_workdir_config, write_workdir_config
        stored_diffs = (lambda: check_workdir_config(self.config, self.workdir, has_state=True, resume=False)
                        if compare_config else [])
        try:
            state, step, skipped = self.checkpoints.restore(self.abstract if abstract is None else abstract)
        except tr.CheckpointMismatchError as e:
            self.checkpoints.close()
            diffs = stored_diffs()
            if diffs:
                raise tr.CheckpointMismatchError(f"{e}; {os.path.join(self.workdir, CONFIG_FILE)} differs from "
                                                 f"this config in: {'; '.join(diffs)}") from None
            raise
        for msg in skipped:
            print(f"WARNING: {msg}", flush=True)
        if state is None and skipped:
            self.checkpoints.close()
            steps = ", ".join(m.split(" in ")[0].replace(" checkpoint at", "") for m in skipped)
            raise ValueError(f"every checkpoint in {self.workdir} is damaged ({steps}; the warnings above say how); "
                             f"nothing was restored" + ("" if self.read_only else
                                                         ". Move checkpoints/ and checkpoints-meta/ away to start "
                                                         "a new run there"))
        if not self.read_only:
            write_workdir_config(self.config, self.workdir)
        elif state is not None:
            diffs = stored_diffs()
            if diffs:
                print(f"WARNING: this config differs from the one that trained {self.workdir} "
                      f"({os.path.join(self.workdir, CONFIG_FILE)}) in: {'; '.join(diffs)}", flush=True)
        return state, step

    def train_steps(self):
        from diffjax import config_lib as cl
        from diffjax import train as tr
        t = self.config.training
        loss_fn = cl.build_loss_fn(self.config, self.model, self.sde)
        step = tr.make_train_step(loss_fn, self.optimizer, ema_rate=cl.build_ema_decay(self.config),
                                  posthoc_sigma_rels=self.posthoc_sigma_rels, num_classes=self.num_classes,
                                  label_dropout=t.label_dropout)
        return cl.build_train_steps(self.config, step, self.mesh, self.shardings)

    @property
    def posthoc_dir(self):
        return os.path.join(self.workdir, "posthoc_ema")

    def save_posthoc_snapshot(self, state, step):
        """Write the power EMAs of ``state`` to ``posthoc_ema/phema-STEP.npz`` (gathered; process 0 writes)."""
        import jax
        from diffjax.train import ema
        trees = [host_tree(t) for t in state.phema]
        if jax.process_index() == 0:
            ema.save_posthoc_snapshot(self.posthoc_dir, step, self.posthoc_sigma_rels, trees)

    def sampling_params(self, state, step):
        """The parameters samples are drawn from: ``state.ema_params``, or with ``sampling.ema_sigma_rel > 0`` the
        EDM2 post-hoc EMA of that length at ``step``, reconstructed from the snapshots in ``posthoc_ema/``."""
        import jax
        sigma_rel = float(self.config.sampling.ema_sigma_rel)
        if not sigma_rel:
            return state.ema_params
        from diffjax.train import ema
        params, info = ema.posthoc_ema(self.posthoc_dir, state.ema_params, sigma_rel, step=step)
        print(f"post-hoc EMA sigma_rel={sigma_rel} at step {info['target_step']} from {len(info['steps'])} "
              f"snapshots (steps {min(info['steps'])}..{max(info['steps'])})", flush=True)
        return jax.device_put(params, self.shardings.ema_params)

    def sampling_condition(self, key, n, condition):
        """What the network is conditioned on for ``n`` samples (traced): class labels ``arange(n) % label_classes``
        for a class-conditional model (or one under classifier guidance), the prompts' token ids cycled for a
        text-conditional one, else ``None``; ``condition`` is :meth:`sample`'s argument (unused here)."""
        import jax.numpy as jnp
        if self.prompt_ids is not None:
            return jnp.asarray(self.prompt_ids)[jnp.arange(n) % len(self.prompt_ids)]
        return jnp.arange(n) % self.label_classes if self.label_classes else None

    def drawn_for(self, batch_sizes) -> dict:
        """What samples drawn in batches of ``batch_sizes`` were drawn for, each batch cycling from the first as
        :meth:`sampling_condition` does: ``{"prompts", "labels"}`` (the class each prompt names, -1: none) for a
        prompted model, ``{"labels"}`` for class labels, else ``{}``."""
        from diffjax import config_lib as cl
        if self.prompt_ids is not None:
            return cl.prompt_record(self.config, batch_sizes)
        if self.label_classes:
            return {"labels": np.concatenate([np.arange(b) % self.label_classes for b in batch_sizes]).astype(
                np.int32)}
        return {}

    def sample(self, params, key, n, *, return_nfe: bool = False, condition=None):
        """``n`` samples (host numpy, float) from the network with ``params``; with ``return_nfe``, ``(samples,
        nfe)``: ``nfe`` the score evaluations the sampler ran (an int; None where the sampler cannot count them, e.g.
        pc with a predictor of a Python config). Says "compiling ..." before the first call for ``n``.
        ``condition``: an array (or pytree) passed to :meth:`sampling_condition` inside the compiled sampler (a
        cascade's super-resolution stage: the low-resolution images, :class:`~diffjax.run.SuperResolutionRun`)."""
        import jax
        import jax.numpy as jnp
        from jax.experimental import multihost_utils
        from diffjax import config_lib as cl
        from diffjax import train as tr
        if n not in self._sample_jit:
            sampler = cl.build_sampler(self.config)

            def run(params, key, condition, counted):
                k_prior, k_y, k_s = jax.random.split(key, 3)
                x_T = self.sde.prior_sample(k_prior, cl.input_shape(self.config, n))
                y = self.sampling_condition(k_y, n, condition)
                score_fn = cl.build_sampling_score_fn(self.config, self.model, self.sde, params, y=y)
                if counted:
                    return sampler(k_s, x_T, score_fn, self.sde, return_nfe=True)
                return sampler(k_s, x_T, score_fn, self.sde), jnp.int32(-1)

            out = tr.batch_sharding(self.mesh, stacked=False) if n % self.mesh.size == 0 else tr.replicated(self.mesh)
            self._sample_jit[n] = [jax.jit(functools.partial(run, counted=c), out_shardings=(out, tr.replicated(
                self.mesh))) for c in (True, False)]
            from diffjax.train.loop import _say  # a line that leaves a progress bar intact
            _say(f"compiling the sampler ({sampler_label(self.config, self.sde)}, {n} samples) ...")
        try:
            x, nfe = self._sample_jit[n][0](params, key, condition)
        except ValueError as e:  # a sampler that cannot count its evaluations (pc with a Python-config predictor)
            if "return_nfe" not in str(e) or len(self._sample_jit[n]) == 1:
                raise
            self._sample_jit[n] = self._sample_jit[n][1:]
            x, nfe = self._sample_jit[n][0](params, key, condition)
        x = np.asarray(multihost_utils.process_allgather(x, tiled=True)) if jax.process_count() > 1 else np.asarray(x)
        x = self.space.decode(x)  # a latent model's samples decoded to images (run/_latent.py)
        if not return_nfe:
            return x
        nfe = int(np.asarray(nfe))
        return x, (nfe if nfe >= 0 else None)

    def write_samples(self, x, name, *, reference=None, title="", extra=None):
        """Write ``samples/NAME.npz`` (uint8 images or float points, plus the arrays of ``extra``) and
        ``samples/NAME.png`` (with ``title``); process 0 only. Returns the paths written (``[]`` on the other
        processes)."""
        import jax
        from diffjax import config_lib as cl
        from diffjax.data import from_unit
        from diffjax.train.images import save_image_grid, save_scatter
        if jax.process_index() != 0:
            return []
        out = os.path.join(self.workdir, "samples")
        os.makedirs(out, exist_ok=True)
        npz, png = os.path.join(out, f"{name}.npz"), os.path.join(out, f"{name}.png")
        if cl.is_toy(self.config):
            np.savez(npz, x=x.astype(np.float32))
            save_scatter(png, x, reference=reference, title=title)
        else:
            images = from_unit(x)
            np.savez(npz, x=images, **(extra or {}))
            save_image_grid(png, images[:256], title=title)
        return [npz, png]


def open_run(config, workdir, *, read_only: bool = True) -> Run:
    """The :class:`Run` of ``config``; a cascade's super-resolution stage (``cascade.low_res_size > 0``) is a
    :class:`~diffjax.run.SuperResolutionRun`, whose samples run the whole cascade (``diffjax/run/_cascade.py``)."""
    from diffjax import config_lib as cl
    if cl.is_super_resolution(config):
        from diffjax.run._cascade import SuperResolutionRun
        return SuperResolutionRun(config, workdir, read_only=read_only)
    return Run(config, workdir, read_only=read_only)


def train(config, workdir, *, progress: bool = True):
    """``--mode train``: train (or resume) the run in ``workdir``; a second run on a workdir in use is refused
    (:class:`~diffjax.train.WorkdirBusyError`)."""
    import jax
    with train_lock(workdir):
        try:
            return _train(config, workdir, progress=progress)
        except jax.errors.JaxRuntimeError as e:
            if jax.process_count() == 1:
                raise
            n = jax.process_count()
            raise RuntimeError(
                f"process {jax.process_index()}/{n}: a collective with the other processes failed "
                f"({str(e).splitlines()[0][:300]}); another process of this run has most likely died. This process "
                f"stops too; restart all {n} processes to resume from the newest checkpoint in {workdir}") from e


def _train(config, workdir, *, progress: bool = True):
    import jax
    from diffjax import config_lib as cl
    from diffjax import train as tr
    t = config.training
    run = open_run(config, workdir, read_only=False)
    data = cl.build_dataset(config)  # missing or damaged data files fail here, before anything is compiled
    data = run.space.dataset(data)  # a latent model's: the images encoded once by its autoencoder
    state, step = run.restore()
    if state is None:
        state = run.fresh_state()
        print(f"starting a new run in {workdir}", flush=True)
    else:
        print(f"resuming from step {step} in {workdir}", flush=True)
    steps = run.train_steps()

    def get_batches(step, n):
        return tr.global_batch(data.batches(step, n), run.mesh)

    key = jax.random.key(config.seed)
    is_toy = cl.is_toy(config)
    reference = data.sample(jax.random.fold_in(key, 2), config.sampling.snapshot_num) if is_toy else None

    method = config.sampling.method

    def snapshot(state, step):
        x, nfe = run.sample(state.ema_params, jax.random.fold_in(jax.random.fold_in(key, 1), step),
                            config.sampling.snapshot_num, return_nfe=True)
        paths = run.write_samples(x, f"iter_{step:08d}", reference=reference,
                                  title=f"EMA samples, step {step}, {method}, NFE {nfe_text([nfe])}")
        return _png_array(paths[-1]) if paths else None  # to TensorBoard

    callbacks = ((t.posthoc_ema_freq, run.save_posthoc_snapshot),) if t.posthoc_ema_freq else ()
    state = tr.train_loop(state, steps, get_batches, workdir=workdir, num_steps=t.n_iters, callbacks=callbacks,
                          steps_per_call=t.n_jitted_steps, log_freq=t.log_freq, checkpoint_freq=t.checkpoint_freq,
                          preemption_freq=t.snapshot_freq_for_preemption, checkpoints=run.checkpoints,
                          snapshot_freq=t.snapshot_freq if t.snapshot_sampling else 0, snapshot_fn=snapshot,
                          progress=progress, learning_rate=cl.build_learning_rate(config))
    n = config.sampling.final_num_samples
    if n:
        x, nfe = run.sample(state.ema_params, jax.random.fold_in(key, 3), n, return_nfe=True)
        record = {"step": int(jax.device_get(state.step)), "final_samples": n}
        title = f"final EMA samples, {method}, NFE {nfe_text([nfe])}"
        if is_toy:
            ed, ed_ref = toy_energy_distances(data, x, key)
            record.update(energy_distance=ed, energy_distance_data_vs_data=ed_ref)
            title += f", energy distance {ed:.4f} (data vs data {ed_ref:.4f})"
            print(f"energy distance of {n} EMA samples to fresh {config.data.dataset} samples: {ed:.5f} "
                  f"(unbiased; two independent data draws of the same size: {ed_ref:.5f})", flush=True)
        run.write_samples(x, "final", reference=reference if is_toy else None, title=title)
        append_metrics(workdir, record)
    from jax.experimental import multihost_utils
    leaves = [np.asarray(a if a.is_fully_addressable else multihost_utils.process_allgather(a, tiled=True))
              for a in jax.tree.leaves(state.params)]
    print(f"process {jax.process_index()}/{jax.process_count()}: step {int(jax.device_get(state.step))}, "
          f"params checksum {float(sum(np.abs(np.asarray(a, np.float64)).sum() for a in leaves)):.10e}", flush=True)
    run.checkpoints.close()
    if jax.process_index() == 0:
        print(_written(workdir, int(jax.device_get(state.step))), flush=True)
    return state


def _png_array(path):
    """The picture of a PNG as a uint8 ``(H, W, 3)`` array."""
    from PIL import Image
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def _written(workdir, step):
    """The line that ends ``--mode train``: where the checkpoint of ``step``, the logs and the samples are."""
    wd = os.path.abspath(workdir)
    ckpt = next((p for p in (os.path.join(wd, d, str(step)) for d in ("checkpoints", "checkpoints-meta"))
                 if os.path.isdir(p)), os.path.join(wd, "checkpoints"))
    parts = [f"checkpoint {ckpt}", f"metrics {os.path.join(wd, 'metrics.jsonl')}",
             f"TensorBoard {os.path.join(wd, 'tensorboard')}"]
    if os.path.isdir(os.path.join(wd, "samples")):
        parts.append(f"samples {os.path.join(wd, 'samples')}")
    return f"trained to step {step} in {wd}: " + "; ".join(parts)


def sampler_label(config, sde=None) -> str:
    """``sampling.method`` and its number of steps, e.g. ``"ddim_50"`` (``sampling.num_steps=0``: the sampler's
    default, for the samplers whose default is the process's grid that grid's ``N``); just the method for a sampler
    without a step count (``ode_adaptive``)."""
    import inspect
    from diffjax import config_lib as cl
    s = config.sampling
    params = inspect.signature(cl.SAMPLERS[s.method]).parameters
    if "num_steps" not in params:
        return s.method
    n = s.num_steps or params["num_steps"].default
    if n is None:
        n = (cl.build_sde(config) if sde is None else sde).N
    return f"{s.method}_{int(n)}"


def _sample_stem(config, step, label):
    """``samples_STEP_SAMPLER_STEPS`` plus the EMA length and guidance scales where set (``_ema0.1``, ``_cfg2``,
    ``_cg3``, ``_clipg4``) and a cascade's sampling augmentation level (``_aug0.1``): one file per setting, so that
    sampling with another sampler does not overwrite the last one's."""
    s = config.sampling
    extra = [f"{tag}{float(v):g}" for tag, v in (("ema", s.ema_sigma_rel), ("cfg", s.guidance_scale),
                                                  ("cg", s.classifier_scale),
                                                  ("clipg", s.get("clip_scale", 0.0))) if v]
    from diffjax import config_lib as cl
    if cl.is_super_resolution(config):  # a cascade: its sampling augmentation level, always (0 is a setting too)
        extra.append(f"aug{float(config.cascade.sampling_aug_level):g}")
        if config.cascade.get("sampling_low_res", "base") != "base":  # the SR stage alone, on data
            extra.append(f"on{config.cascade.sampling_low_res}")
    return "_".join([f"samples_{step:08d}", label] + extra)


def nfe_text(nfes) -> str:
    """The score evaluations per sample of a list of batches' counts: ``"50"``, ``"41.5 (mean)"`` where they vary
    (adaptive solvers), ``"?"`` where a sampler does not count them."""
    if not nfes or any(n is None for n in nfes):
        return "?"
    return str(nfes[0]) if len(set(nfes)) == 1 else f"{float(np.mean(nfes)):.1f} (mean)"


def sample(config, workdir, *, progress: bool = True):
    """``--mode sample``: ``sampling.num_samples`` samples of the newest checkpoint's EMA parameters (or the post-hoc
    EMA of ``sampling.ema_sigma_rel``), written to ``samples/samples_STEP_SAMPLER_STEPS.npz`` and ``.png`` (e.g.
    ``samples_00001500_ddim_50.png``, titled with the sampler and its score evaluations); prints the paths.
    ``progress``: a tqdm bar over the samples. Returns the samples (float, host numpy)."""
    import jax
    from tqdm import tqdm
    from diffjax import config_lib as cl
    run = open_run(config, workdir)
    state, step = run.restore()
    if state is None:
        raise ValueError(f"--mode sample needs a checkpoint in {workdir}/checkpoints or checkpoints-meta; none found")
    s = config.sampling
    key = jax.random.fold_in(jax.random.key(config.seed), 5)
    params = run.sampling_params(state, step)
    label = sampler_label(config, run.sde)
    xs, nfes, done, i = [], [], 0, 0
    t0 = time.perf_counter()
    with tqdm(total=s.num_samples, unit="sample", desc=f"sampling ({label})", disable=not progress,
              dynamic_ncols=True) as bar:
        while done < s.num_samples:
            n = min(s.batch_size, s.num_samples - done)
            x, nfe = run.sample(params, jax.random.fold_in(key, i), n, return_nfe=True)
            xs.append(x)
            nfes.append(nfe)
            done, i = done + n, i + 1
            bar.update(n)
    x = np.concatenate(xs)
    nfe = nfe_text(nfes)
    ema = f"post-hoc EMA sigma_rel={float(s.ema_sigma_rel):g}" if s.ema_sigma_rel else "EMA"
    paths = run.write_samples(x, _sample_stem(config, step, label),
                              title=f"{ema} samples, step {step}, {s.method}, NFE {nfe}",
                              extra=run.drawn_for([len(b) for b in xs]))  # prompts / labels of the samples
    print(f"sampled {len(x)} in {time.perf_counter() - t0:.1f} s ({s.method}, NFE {nfe} score evaluations per "
          f"sample, step {step})" + (f"; wrote {' and '.join(paths)}" if paths else ""), flush=True)
    run.checkpoints.close()
    return x


def describe(config):
    """Print the network that ``config.task`` trains, block by block with parameter counts, and one summary line,
    after checking the config; compiles nothing (abstract shapes only). The task's network: the score network of
    a diffusion model (``model.*``; with ``distill.method`` set, the few-step student, the same network), the
    :class:`~diffjax.eval.feature_classifier.FeatureClassifier` (``task="classifier"``) or the
    :class:`~diffjax.nets.NoiseConditionalClassifier` of ``noisy_classifier.*`` (``task="noisy_classifier"``)."""
    import jax
    from diffjax import config_lib as cl
    from diffjax.nets import abstract_init, count_params, model_summary
    shape, d = cl.input_shape(config, 1), config.data
    if config.task == "classifier":
        from diffjax.eval.feature_classifier import FeatureClassifier
        from diffjax.run._classifier import check_classifier_data
        check_classifier_data(config, "config.task='classifier'")
        model = FeatureClassifier()  # the network train_classifier trains
        params = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros(shape, np.float32)))["params"]
        width = max(len(name) for name in params)
        print(f"{type(model).__name__} on input {shape}")
        print("\n".join(f"{name:<{width}}  {count_params(p):>12,}" for name, p in params.items()))
        n = count_params(params)
        print(f"total parameters: {n:,} ({n / 1e6:.2f} M)")
        c = config.classifier
        print(f"task classifier: {type(model).__name__} ({model.num_classes} classes): {n:,} parameters; "
              f"{c.epochs} epochs of batch {c.batch_size}; dataset {d.dataset}; devices {jax.device_count()}")
        return
    if config.task == "noisy_classifier":
        cl.validate_noisy_classifier(config)
        model = cl.build_noisy_classifier(config)
        print(model_summary(model, shape))
        n = count_params(abstract_init(model, shape)["params"])
        print(f"task noisy_classifier: {type(model).__name__} p(y | x_t, t) ({model.num_classes} classes): {n:,} "
              f"parameters; sde {config.training.sde}; {config.noisy_classifier.steps} steps of batch "
              f"{config.noisy_classifier.batch_size}; dataset {d.dataset}; devices {jax.device_count()}")
        return
    cl.validate(config)
    model = cl.build_model(config)
    kw = dict(num_classes=cl.num_classes(config), condition=cl.example_condition(config, 1))
    print(model_summary(model, shape, **kw))
    n = count_params(abstract_init(model, shape, **kw)["params"])
    distill = cl.distill_method(config)
    print(f"model {config.model.name}: {n:,} parameters; sde {config.training.sde}; "
          + (f"student of distill.method={distill.name!r}; " if distill else f"loss {config.training.loss}; ")
          + f"sampler {config.sampling.method}; dataset {d.dataset}; devices {jax.device_count()}")
