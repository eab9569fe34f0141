"""Classifier guidance end to end: the noise-conditional classifier's train step, the guided sampling score against
a hand-written formula, guidance under every kind of sampler on an exact 2-D mixture with its exact (Bayes) class
posterior, the CLI (train the classifier, sample with it; a classifier-free-guidance config), and the config checks.
(Classifier-free guidance's formula through config_lib is tested in tests/test_main.py.)"""
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from configs import fashion_mnist_ddpm, fashion_mnist_noisy_classifier  # noqa: E402
import diffjax as dj  # noqa: E402
from diffjax import config_lib as cl  # noqa: E402
from diffjax import run as drun  # noqa: E402
from diffjax.discrete import ddpm_grid  # noqa: E402

# the module-scoped fixture is built once: every test of this file runs on one pytest-xdist worker
# (`--dist loadgroup` in .ci/run)
pytestmark = pytest.mark.xdist_group("test_noisy_classifier")

# one CPU device and XLA's backend optimisations off: the fastest compiles. The CLI test checks what the processes
# write (files, names, shapes, errors), not the speed of the code: its UNet's train-step process took 69 s with the
# default optimisation and 38 s without it, for the same HLO program
ENV = dict(os.environ, JAX_PLATFORMS="cpu",
           XLA_FLAGS="--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")


def _tiny_classifier_config(steps=3):
    c = fashion_mnist_noisy_classifier.get_config()
    n = c.noisy_classifier
    n.ch, n.ch_mult, n.norm_groups, n.attn_resolutions = 4, (1,), 4, ()
    n.steps, n.batch_size, n.log_every = steps, 8, 1
    n.num_train_examples, n.num_test_examples, n.num_noise_bins, n.eval_batch_size = 64, 16, 4, 16
    c.optim.warmup = 0
    c.optim.lr = 3e-3
    return c


def _tiny_ddpm_config():
    c = fashion_mnist_ddpm.get_config()
    o = c.model.overrides
    o.ch, o.ch_mult, o.attn_resolutions, o.dropout = 8, (1,), (), 0.0
    c.training.batch_size = 8
    c.sampling.method, c.sampling.num_steps, c.sampling.clip_denoised = "ddim", 2, False
    return c


@pytest.fixture(scope="module")
def classifier_workdir(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("ncl"))
    drun.train_noisy_classifier(_tiny_classifier_config(), wd)
    return wd


def test_train_step_loss_decreases_on_separable_classes():
    cfg = _tiny_classifier_config()
    cfg.data.image_size, cfg.noisy_classifier.num_classes, cfg.noisy_classifier.norm_groups = 8, 2, 1
    cfg.training.t_eps = 1e-3
    model, sde = cl.build_noisy_classifier(cfg), cl.build_sde(cfg)
    assert cl.network_marginal(cfg, sde) is not sde  # the DDPM config's classifier sees x_t on the DDPM grid
    optimizer = cl.build_optimizer(cfg)
    y = jnp.arange(32) % 2
    x = jnp.where(y[:, None, None, None] == 1, 0.8, -0.8) * jnp.ones((32, 8, 8, 1))  # bright vs dark images
    params = drun.init_noisy_classifier(cfg, model, jax.random.key(0))
    opt_state = optimizer.init(params)
    step = drun.make_noisy_classifier_step(cfg, model, sde, optimizer)
    probe = jax.random.key(7)  # the same t and noise before and after: the step's loss is at its input params
    _, _, m = step(params, opt_state, probe, x, y)
    before = float(m["loss"])
    for i in range(40):
        params, opt_state, m = step(params, opt_state, jax.random.key(100 + i), x, y)
        assert np.isfinite(float(m["loss"])) and np.isfinite(float(m["grad_norm"]))
    after = float(step(params, opt_state, probe, x, y)[2]["loss"])
    assert all(np.all(np.isfinite(np.asarray(a))) for a in jax.tree.leaves(params))
    assert np.isfinite(before) and np.isfinite(after)
    assert abs(before - np.log(2)) < 0.1  # chance level at initialisation
    assert after < 0.7 * before, (before, after)


def test_workdir_files_and_accuracy_by_noise_level(classifier_workdir):
    wd = classifier_workdir
    assert {cl.NOISY_CLASSIFIER_PARAMS, cl.NOISY_CLASSIFIER_CONFIG, drun.NOISY_CLASSIFIER_JSON,
            "metrics.jsonl"} <= set(os.listdir(wd))
    rec = json.load(open(os.path.join(wd, drun.NOISY_CLASSIFIER_JSON)))
    bins = rec["test_accuracy_by_t"]
    assert len(bins) == 4 and rec["num_test_examples"] == 16
    assert all(0.0 <= b["accuracy"] <= 1.0 and np.isfinite(b["log_snr"]) for b in bins)
    assert [b["t_lo"] for b in bins] == sorted(b["t_lo"] for b in bins)
    assert bins[0]["log_snr"] > bins[-1]["log_snr"]
    losses = [r["noisy_classifier_loss"] for r in map(json.loads, open(os.path.join(wd, "metrics.jsonl")))
              if "noisy_classifier_loss" in r]
    assert len(losses) == 3 and np.all(np.isfinite(losses))


def test_guided_sampling_score_is_score_plus_scaled_classifier_gradient(classifier_workdir):
    """build_sampling_score_fn with sampling.classifier_* = score(x, t) + scale grad_x log softmax(logits(x, t))_y,
    the classifier fed the DDPM step index of t (the score network's time input), written out with jax.grad."""
    cfg = _tiny_ddpm_config()
    cfg.sampling.classifier_workdir, cfg.sampling.classifier_scale = classifier_workdir, 2.5
    cl.validate(cfg, device_count=1)
    sde = cl.build_sde(cfg)

    def apply_fn(variables, x, labels, *, train):
        return 0.1 * x + 0.001 * labels.reshape(-1, 1, 1, 1)

    model = type("M", (), {"apply": staticmethod(apply_fn)})
    x = jax.random.normal(jax.random.key(0), (3, 28, 28, 1))
    t = jnp.array([0.05, 0.4, 0.9])
    y = jnp.array([2, 7, 0])
    got = cl.build_sampling_score_fn(cfg, model, sde, {}, y=y)(x, t)

    rec, clf, params = cl.load_noisy_classifier(classifier_workdir)
    grid = ddpm_grid(sde)
    steps = grid.index(t).astype(jnp.float32)

    def log_p_y(x):
        logits = clf.apply({"params": params}, x, steps, train=False)
        return jnp.sum(jax.nn.log_softmax(logits)[jnp.arange(3), y])

    want = dj.score_from_eps(apply_fn(None, x, steps, train=False), x, t, grid) + 2.5 * jax.grad(log_p_y)(x)
    assert np.all(np.isfinite(np.asarray(got)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(jax.grad(log_p_y)(x)).max()) > 0  # the gradient term is there
    # an unconditional model: Run.sample passes y = arange(n) % the classifier's 10 classes (sampled through the CLI
    # for a class-conditional model in test_cli_trains_classifier_and_guides_samples_and_cfg_config)
    assert cl.num_classes(cfg) is None and cl.sampling_num_classes(cfg) == 10
    cfg.sampling.classifier_scale = 0.0
    assert cl.sampling_num_classes(cfg) is None


# --- an exact 2-D problem: two Gaussian components, the class is the component; p_t(y | x) in closed form
MEANS = jnp.array([[-2.0, 0.0], [2.0, 0.0]])
MIX = dj.gaussian_mixture(jnp.ones(2), MEANS, 0.5)
COMPONENTS = [dj.gaussian_mixture(jnp.ones(1), MEANS[k:k + 1], 0.5) for k in range(2)]


def exact_logits(process):
    def logits(x, t):
        a, s = process.marginal(t)
        return jnp.stack([dj.mixture_log_prob(c, x, a, s) for c in COMPONENTS], axis=-1)  # equal priors
    return logits


@pytest.mark.parametrize("method,kw", [("ddim", dict(num_steps=20)), ("ode_heun", dict(num_steps=20)),
                                       ("dpm_solver", dict(num_steps=10)), ("unipc", dict(num_steps=10)),
                                       ("edm_heun", dict(num_steps=12))])
def test_classifier_guidance_steers_every_sampler(method, kw):
    sde = dj.vp_sde()
    n = 256
    y = jnp.arange(n) % 2
    x_T = sde.prior_sample(jax.random.key(3), (n, 2))
    fractions = {}
    for scale in (0.0, 4.0):
        guided = dj.with_label(dj.classifier_guidance(dj.mixture_score_fn(MIX, sde), exact_logits(sde), scale=scale),
                               y)
        x = jax.jit(lambda k, x: cl.SAMPLERS[method](k, x, guided, sde, **kw))(jax.random.key(4), x_T)
        assert np.all(np.isfinite(np.asarray(x))), (method, scale)
        nearest = jnp.argmin(jnp.sum((x[:, None] - MEANS[None]) ** 2, -1), axis=1)
        fractions[scale] = float(jnp.mean(nearest == y))
    assert fractions[4.0] > 0.97, (method, fractions)
    assert fractions[0.0] < 0.7, (method, fractions)


def _write_config(path, base, body):
    path.write_text(textwrap.dedent(f"""
        from configs import {base}

        def get_config():
            c = {base}.get_config()
        """) + textwrap.indent(textwrap.dedent(body), "    ") + "    return c\n")
    return str(path)


def _cli(config, *args):
    return subprocess.run([sys.executable, "-m", "diffjax.main", "--config", config, "--noprogress", *args], cwd=REPO,
                          env=ENV, capture_output=True, text=True, timeout=300)


DIFFUSION_BODY = """
    o = c.model.overrides
    o.ch, o.ch_mult, o.attn_resolutions, o.dropout, o.num_res_blocks = 8, (1,), (), 0.0, 1
    c.model.num_scales = 50
    t = c.training
    t.batch_size, t.n_iters, t.n_jitted_steps, t.log_freq = 8, 1, 1, 1
    t.snapshot_freq = t.checkpoint_freq = t.snapshot_freq_for_preemption = 1
    t.snapshot_sampling = False
    c.optim.warmup = 0
    s = c.sampling
    s.method, s.num_steps, s.clip_denoised, s.num_samples, s.batch_size = "ddim", 2, False, 8, 8
"""


def test_cli_trains_classifier_and_guides_samples_and_cfg_config(tmp_path):
    """--mode train of config.task='noisy_classifier', then --mode train and --mode sample of a tiny
    configs/fashion_mnist_cfg.py with classifier-free guidance and classifier guidance on top."""
    ncl_cfg = _write_config(tmp_path / "ncl.py", "fashion_mnist_noisy_classifier", """
        n = c.noisy_classifier
        n.ch, n.ch_mult, n.norm_groups, n.steps, n.batch_size, n.log_every = 4, (1,), 4, 2, 4, 1
        n.num_train_examples, n.num_test_examples, n.num_noise_bins = 16, 8, 2
        c.model.num_scales = 50
        c.optim.warmup = 0
    """)
    cfg_cfg = _write_config(tmp_path / "cfg.py", "fashion_mnist_cfg", DIFFUSION_BODY)
    ncl, wd = str(tmp_path / "ncl"), str(tmp_path / "cfg")
    r = _cli(ncl_cfg, "--workdir", ncl)
    assert r.returncode == 0, r.stderr[-3000:]
    assert os.path.exists(os.path.join(ncl, cl.NOISY_CLASSIFIER_PARAMS))
    r = _cli(cfg_cfg, "--workdir", wd)
    assert r.returncode == 0, r.stderr[-3000:]
    r = _cli(cfg_cfg, "--workdir", wd, "--mode", "sample", "--config.sampling.guidance_scale=2.0",
             f"--config.sampling.classifier_workdir={ncl}", "--config.sampling.classifier_scale=3.0")
    assert r.returncode == 0, r.stderr[-3000:]
    x = np.load(os.path.join(wd, "samples", "samples_00000001_ddim_2_cfg2_cg3.npz"))["x"]  # sampler, steps, guidance
    assert x.shape == (8, 28, 28, 1) and x.dtype == np.uint8
    # a process the classifier was not trained on fails before anything is compiled, naming the field
    r = _cli(cfg_cfg, "--workdir", wd, "--mode", "sample", f"--config.sampling.classifier_workdir={ncl}",
             "--config.sampling.classifier_scale=1.0", "--config.model.num_scales=1000")
    assert r.returncode != 0 and "sampling.classifier_workdir=" in r.stderr and "another process" in r.stderr


@pytest.mark.parametrize("field,value,match", [
    ("classifier_scale", -1.0, r"sampling.classifier_scale must be a finite number >= 0 .* got -1.0"),
    ("classifier_scale", float("nan"), r"sampling.classifier_scale must be a finite number >= 0 .* got nan"),
    ("classifier_scale", float("inf"), r"sampling.classifier_scale must be a finite number >= 0 .* got inf"),
])
def test_bad_guidance_fields_fail_in_validate(field, value, match):
    cfg = _tiny_ddpm_config()
    with cfg.unlocked():
        cfg.sampling[field] = value
    with pytest.raises(ValueError, match=match):
        cl.validate(cfg, device_count=1)


def test_guidance_workdir_checked_before_compiling(tmp_path, classifier_workdir):
    cfg = _tiny_ddpm_config()
    cfg.sampling.classifier_scale = 1.0
    with pytest.raises(ValueError, match=r"sampling.classifier_scale=1.0 needs sampling.classifier_workdir"):
        cl.validate(cfg, device_count=1)
    cfg.sampling.classifier_workdir = str(tmp_path / "nothing")
    with pytest.raises(ValueError, match=r"sampling.classifier_workdir='.*nothing' is not a trained noisy-classifier "
                                         r"workdir: \['noisy_classifier_params.npz', 'noisy_classifier_config.json'\]"):
        cl.validate(cfg, device_count=1)
    cfg.sampling.classifier_workdir = classifier_workdir
    cfg.training.sde, cfg.training.loss, cfg.sampling.method = "vesde", "dsm", "ode_heun"
    with pytest.raises(ValueError, match=r"trained on another process \(training.sde='vpsde'.*'vesde'"):
        cl.validate(cfg, device_count=1)
    cfg = _tiny_ddpm_config()
    cfg.sampling.classifier_workdir, cfg.sampling.classifier_scale = classifier_workdir, 1.0
    cfg.data.num_classes = 3
    with pytest.raises(ValueError, match=r"holds a 10-class classifier; this class-conditional model has "
                                         r"data.num_classes=3"):
        cl.validate(cfg, device_count=1)


@pytest.mark.parametrize("field,value,match", [
    ("steps", 0, r"noisy_classifier.steps must be an integer >= 1, got 0"),
    ("num_test_examples", -1, r"noisy_classifier.num_test_examples must be an integer >= 0"),
    ("ch_mult", (), r"noisy_classifier.\* .*ch_mult must be a non-empty tuple"),
    ("embedding_type", "sinus", r"noisy_classifier.\* .*embedding_type"),
    ("batch_size", 0, r"noisy_classifier.batch_size must be an integer >= 1, got 0"),
])
def test_bad_noisy_classifier_fields_fail_before_reading_data(tmp_path, field, value, match):
    cfg = _tiny_classifier_config()
    cfg.noisy_classifier[field] = value
    with pytest.raises(ValueError, match=match):
        drun.train_noisy_classifier(cfg, str(tmp_path / "wd"))
    assert not os.path.exists(tmp_path / "wd")


def test_noisy_classifier_task_rejects_other_modes(tmp_path):
    from diffjax.main import run_mode
    with pytest.raises(ValueError, match=r"config.task='noisy_classifier' supports --mode train only"):
        run_mode(_tiny_classifier_config(), str(tmp_path), "sample")
