"""CLIP guidance (issue 40): the guidance transform against a hand-written gradient, scale 0 is the unguided score
exactly, a hand-made "CLIP" on an exact 2-D mixture steers every kind of sampler to the prompted component, the
config wiring (the sampling score against jax.grad of the CLIP's logit, the image tower fed the noise labels it was
trained with), the config errors, and sampling through ``diffjax.main`` with fresh-state checkpoints."""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from configs import fashion_mnist_budget_rf, fashion_mnist_clip  # noqa: E402
import diffjax as dj  # noqa: E402
from diffjax import config_lib as cl  # noqa: E402
from diffjax import data as ddata  # noqa: E402

pytestmark = pytest.mark.xdist_group("test_clip_guidance")


# --- the transform


def _linear_embed(w):
    def embed(x, t):
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],))
        return (1.0 + t)[:, None] * (x.reshape(x.shape[0], -1) @ w.T)
    return embed


def test_clip_guidance_is_score_plus_scaled_gradient_of_the_logit():
    """guided(x, t, e) = s(x, t) + lam tau W'^T (e^ - (u^.e^) u^) / |u|, u = W' x, W' = (1 + t) W: the gradient of
    tau cos(u, e) written out by hand, and the same from jax.grad of the scalar."""
    w = jax.random.normal(jax.random.key(0), (3, 4))
    x = jax.random.normal(jax.random.key(1), (5, 2, 2, 1))
    t = jnp.linspace(0.1, 0.9, 5)
    e = jax.random.normal(jax.random.key(2), (5, 3))
    lam, tau = 1.7, 3.0

    def score(x, t):
        return -x * (1.0 + t[:, None, None, None])

    got = dj.clip_guidance(score, _linear_embed(w), scale=lam, logit_scale=tau)(x, t, e)
    xf, ws = x.reshape(5, 4), (1.0 + t)[:, None, None] * w[None]
    u = jnp.einsum("bij,bj->bi", ws, xf)
    uh, eh, norm = u / jnp.linalg.norm(u, axis=1, keepdims=True), e / jnp.linalg.norm(e, axis=1, keepdims=True), \
        jnp.linalg.norm(u, axis=1, keepdims=True)
    grad_u = (eh - jnp.sum(uh * eh, axis=1, keepdims=True) * uh) / norm
    by_hand = jnp.einsum("bij,bi->bj", ws, grad_u).reshape(x.shape)
    want = score(x, t) + lam * tau * by_hand
    assert np.all(np.isfinite(np.asarray(got)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    def logit(x):  # the known scalar: tau sum_b cos(u_b, e_b)
        u = _linear_embed(w)(x, t)
        return tau * jnp.sum(jnp.sum(u * e, 1) / (jnp.linalg.norm(u, axis=1) * jnp.linalg.norm(e, axis=1)))

    np.testing.assert_allclose(got, score(x, t) + lam * jax.grad(logit)(x), rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(by_hand).max()) > 1e-2  # the gradient term is there
    # one text embedding (d,) for the whole batch is broadcast
    one = dj.clip_guidance(score, _linear_embed(w), scale=lam, logit_scale=tau)(x, t, e[0])
    np.testing.assert_allclose(one, dj.clip_guidance(score, _linear_embed(w), scale=lam, logit_scale=tau)(
        x, t, jnp.broadcast_to(e[0], e.shape)), rtol=1e-6)


def test_scale_zero_is_the_unguided_score_exactly_and_variance_is_kept():
    w = jax.random.normal(jax.random.key(0), (3, 4))
    x = jax.random.normal(jax.random.key(1), (4, 4))
    t = jnp.full((4,), 0.3)
    e = jnp.ones((3,))

    def score(x, t):
        return jnp.sin(x) * t[:, None]

    got = dj.clip_guidance(score, _linear_embed(w), scale=0.0, logit_scale=50.0)(x, t, e)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(score(x, t)))
    lv = dj.LearnedVarianceScore(lambda x, t: (score(x, t), 0.25 * x))
    guided = dj.clip_guidance(lv, _linear_embed(w), scale=2.0)
    s, v = guided.score_and_v(x, t, e)
    np.testing.assert_array_equal(np.asarray(v), np.asarray(0.25 * x))
    assert np.all(np.isfinite(np.asarray(s))) and not np.allclose(s, score(x, t))


def test_transform_argument_errors():
    emb = _linear_embed(jnp.eye(2))
    with pytest.raises(ValueError, match=r"scale must be a finite number >= 0, got -1"):
        dj.clip_guidance(lambda x, t: x, emb, scale=-1.0)
    with pytest.raises(ValueError, match=r"logit_scale must be a finite number > 0, got 0"):
        dj.clip_guidance(lambda x, t: x, emb, logit_scale=0.0)
    with pytest.raises(ValueError, match=r"image_embed_fn must be a callable"):
        dj.clip_guidance(lambda x, t: x, None)
    with pytest.raises(ValueError, match=r"text_emb must be shaped \(d,\) or \(batch, d\) with d=2.*got shape \(3,\)"):
        dj.clip_guidance(lambda x, t: x, emb)(jnp.ones((2, 2)), 0.5, jnp.ones((3,)))


# --- an exact 2-D problem: two Gaussian components and a hand-made noise-aware "CLIP": the image embedding of x_t
# is (a(t) x, s(t)), a linear map of x whose dependence on x fades with the signal as a CLIP trained on x_t learns it
# (at t = T it is constant: no gradient where the flow's velocity amplifies a score change by t / (1 - t)), and the
# two prompts' text embeddings (-1, 0, 0) and (1, 0, 0) point at the two components
MEANS = jnp.array([[-2.0, 0.0], [2.0, 0.0]])
MIX = dj.gaussian_mixture(jnp.ones(2), MEANS, 0.5)
TEXT = jnp.array([[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])  # prompt k's embedding


def _toy_clip_image_embed(process):
    def embed(x, t):
        a, s = process.marginal(jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],)))
        return jnp.concatenate([a[:, None] * x, s[:, None]], axis=1)
    return embed


@pytest.mark.parametrize("process,method,kw", [("vp", "ddim", dict(num_steps=20)),
                                               ("vp", "euler_maruyama", dict(num_steps=100)),
                                               ("vp", "dpm_solver", dict(num_steps=10)),
                                               ("vp", "edm_heun", dict(num_steps=12)),
                                               ("rf", "ode_heun", dict(num_steps=20))])
def test_clip_guidance_steers_samples_to_the_prompted_component(process, method, kw):
    sde = dj.vp_sde() if process == "vp" else dj.rectified_flow()
    n = 256
    y = jnp.arange(n) % 2
    x_T = sde.prior_sample(jax.random.key(3), (n, 2))
    fractions = {}
    for scale in (0.0, 6.0):
        guided = dj.with_label(dj.clip_guidance(dj.mixture_score_fn(MIX, sde), _toy_clip_image_embed(sde),
                                                scale=scale), TEXT[y])
        x = jax.jit(lambda k, x: cl.SAMPLERS[method](k, x, guided, sde, **kw))(jax.random.key(4), x_T)
        assert np.all(np.isfinite(np.asarray(x))), (method, scale)
        d2 = jnp.sum((x[:, None] - MEANS[None]) ** 2, -1)
        fractions[scale] = float(jnp.mean(jnp.argmin(d2, axis=1) == y))
        assert float(jnp.mean(jnp.min(d2, axis=1))) < 1.5, (method, scale)  # on a component (E d^2 = 0.5 there)
    assert fractions[6.0] > 0.95, (process, method, fractions)
    assert fractions[0.0] < 0.6, (process, method, fractions)


# --- configs


def _tiny_unconditional_config():
    c = fashion_mnist_budget_rf.get_config()  # rectified flow, velocity, ode_heun
    c.model.overrides.update(dict(ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), dropout=0.0))
    t = c.training
    t.batch_size, t.n_iters, t.log_freq, t.snapshot_freq, t.checkpoint_freq = 8, 2, 1, 2, 2
    t.snapshot_freq_for_preemption, t.posthoc_ema_freq = 2, 0
    c.model.posthoc_sigma_rels = ()
    c.optim.warmup = 0
    s = c.sampling
    s.num_steps, s.num_samples, s.batch_size = 2, 8, 8
    return c


def _clip_config_of(diffusion, noise_aware=True):
    """A tiny CLIP config on the process of ``diffusion`` (its training.sde, model.* and time input)."""
    c = fashion_mnist_clip.get_config()
    p = c.clip
    p.embed_dim, p.text_width, p.text_depth, p.text_heads, p.ch, p.ch_mult, p.norm_groups = 8, 16, 1, 2, 4, (1,), 4
    p.noise_aware = noise_aware
    for group, keys in (("training", ("sde", "continuous", "loss", "t_eps")),
                        ("model", ("time_input", "parameterization", "num_scales"))):
        for k in keys:
            c[group][k] = diffusion[group][k]
    return c


def _write_clip(path, clip_cfg, params=None):
    """A fresh-state CLIP workdir (what ``config.task="clip"`` writes: params npz and its config record); returns
    ``(path, params)``."""
    from flax import traverse_util
    from diffjax.eval.evaluate import write_json_atomic
    os.makedirs(path, exist_ok=True)
    if params is None:
        params = jax.device_get(cl.init_clip(clip_cfg, cl.build_clip(clip_cfg), jax.random.key(5)))
    np.savez(os.path.join(path, cl.CLIP_PARAMS),
             **{k: np.asarray(v) for k, v in traverse_util.flatten_dict(params, sep="/").items()})
    write_json_atomic(os.path.join(path, cl.CLIP_CONFIG), cl.clip_record(clip_cfg))
    return str(path), params


@pytest.fixture(scope="module")
def clip_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("clipg")
    c = _tiny_unconditional_config()
    from configs import fashion_mnist_ddpm
    noisy, params = _write_clip(root / "noisy", _clip_config_of(c))
    return {"noisy": noisy,  # the others only need their records: the same parameters (the towers' shapes agree)
            "clean": _write_clip(root / "clean", _clip_config_of(c, noise_aware=False), params)[0],
            "ddpm": _write_clip(root / "ddpm", _clip_config_of(fashion_mnist_ddpm.get_config()), params)[0]}


def test_sampling_score_is_score_plus_scaled_gradient_of_the_clip_logit(clip_dirs):
    """build_sampling_score_fn with sampling.clip_* = score(x, t) + scale grad_x tau cos(f(x_t, labels(t)), g(ids)),
    the image tower fed the rectified-flow time labels it was trained with, written out with jax.grad."""
    cfg = _tiny_unconditional_config()
    cfg.sampling.clip_workdir, cfg.sampling.clip_scale = clip_dirs["noisy"], 2.5
    cfg.sampling.prompt = "a dark sneaker"
    cl.validate(cfg, device_count=1)
    sde = cl.build_sde(cfg)

    fed = []

    def apply_fn(variables, x, labels, *, train):
        fed.append(labels)
        return 0.1 * x + 0.001 * labels.reshape(-1, 1, 1, 1)

    model = type("M", (), {"apply": staticmethod(apply_fn)})
    x = jax.random.normal(jax.random.key(0), (3, 28, 28, 1))
    t = jnp.array([0.05, 0.4, 0.9])
    ids = jnp.asarray(cl.prompt_ids(cfg))[jnp.zeros(3, int)]
    rec, clip, params = cl.load_clip(clip_dirs["noisy"])
    assert ids.shape == (3, rec.clip.max_length)
    got = cl.build_sampling_score_fn(cfg, model, sde, {}, y=ids)(x, t)

    labels = cl.clip_noise_labels(rec, cl.build_sde(rec))(t)
    np.testing.assert_allclose(labels, fed[0], rtol=1e-6)  # the CLIP sees t as the score network does
    txt = clip.apply({"params": params}, ids, ids != 0, method=clip.encode_text)[0]
    tau = float(np.exp(params["logit_scale"]))

    def logit(x):
        img = clip.apply({"params": params}, x, labels, method=clip.encode_image)
        return tau * jnp.sum(img * txt)  # both unit vectors: the cosine

    unguided = cl.build_score_fn(cfg, model, sde, {})(x, t)
    want = unguided + 2.5 * jax.grad(logit)(x)
    assert np.all(np.isfinite(np.asarray(got)))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert float(jnp.abs(got - unguided).max()) > 1e-4  # the guidance term is there
    cfg.sampling.clip_scale = 0.0
    cfg.sampling.prompt = ""
    cl.validate(cfg, device_count=1)
    np.testing.assert_array_equal(np.asarray(cl.build_sampling_score_fn(cfg, model, sde, {}, y=None)(x, t)),
                                  np.asarray(unguided))


def test_clip_guidance_config_errors(clip_dirs, tmp_path):
    c = _tiny_unconditional_config()
    s = c.sampling

    def fails(match):
        with pytest.raises(ValueError, match=match):
            cl.validate(c, device_count=8)

    s.clip_scale = -1.0
    fails(r"sampling.clip_scale must be a finite number >= 0 \(0: no clip guidance\), got -1.0")
    s.clip_scale = float("nan")
    fails(r"sampling.clip_scale must be a finite number >= 0 \(0: no clip guidance\), got nan")
    s.clip_scale = 2.0
    fails(r"sampling.clip_scale=2.0 needs sampling.clip_workdir .*clip.noise_aware=True\), got ''")
    s.clip_workdir = str(tmp_path)
    fails(r"sampling.clip_workdir: workdir=.* is not a trained CLIP workdir: \['clip_params.npz', 'clip_config.json'\]")
    s.clip_workdir = clip_dirs["clean"]
    fails(r"^sampling.clip_workdir=.* holds a clean-image CLIP \(clip.noise_aware=False\); CLIP guidance needs one "
          r"trained on x_t: retrain it with --config.clip.noise_aware=True$")
    s.clip_workdir = clip_dirs["ddpm"]
    fails(r"holds a CLIP trained on another process \(training.sde='vpsde', training.continuous=False, "
          r"training.loss='ddpm'.*this config's training.sde='rectified_flow'")
    s.clip_workdir = clip_dirs["noisy"]
    cl.validate(c, device_count=8)
    assert cl.sampling_prompts(c) == ddata.class_prompts()  # the default: one prompt per class
    assert cl.prompt_ids(c).shape == (10, 16)
    s.prompt = "a purple sneaker"
    fails(r"sampling.prompt: prompt 'a purple sneaker' has words outside the vocabulary: \['purple'\]")
    s.prompt = "a photo of " + "a dark " * 8 + "bag"
    fails(r"sampling.prompt \(clip.max_length of sampling.clip_workdir=16\): text .* more than max_length=16")
    s.prompt = "a bag"
    cl.validate(c, device_count=8)
    s.classifier_scale, s.classifier_workdir = 1.0, str(tmp_path)
    fails(r"sampling.clip_scale=2.0 and sampling.classifier_scale=1.0 are alternatives; set one")
    s.classifier_scale = 0.0
    c.data.num_classes = 10
    fails(r"sampling.clip_scale=2.0 guides an unconditional model; this one is conditional \(data.num_classes=10")
    c.data.num_classes = 0
    s.clip_scale = 0.0  # a prompt without CLIP guidance or a text-conditional model
    fails(r"sampling.prompt / sampling.prompt_file need a text-conditional model .* or CLIP guidance")


def test_clip_guided_sampling_through_main_writes_prompts_and_labels(clip_dirs, tmp_path):
    from diffjax.main import run_mode
    from diffjax.run import Run
    from diffjax.run._run import FAST_COMPILE
    c = _tiny_unconditional_config()
    wd = str(tmp_path / "wd")
    run = Run(c, wd, read_only=False)  # a checkpoint of the initial state (a fresh-state unconditional model)
    key = jax.random.key(c.seed)
    run.checkpoints.save(2, jax.jit(run._create, out_shardings=run.shardings).lower(key).compile(
        compiler_options=FAST_COMPILE)(key))
    run.checkpoints.close()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a dark sneaker\n\nbig bright bag\na photo of a pair of jeans\n")
    c.sampling.clip_workdir, c.sampling.clip_scale, c.sampling.prompt_file = clip_dirs["noisy"], 4.0, str(prompts)
    guided = run_mode(c, wd, "sample", progress=False)
    files = sorted(f for f in os.listdir(os.path.join(wd, "samples")) if f.endswith(".npz"))
    assert files == ["samples_00000002_ode_heun_2_clipg4.npz"]
    with np.load(os.path.join(wd, "samples", files[0])) as f:
        assert f["x"].shape == (8, 28, 28, 1) and f["x"].dtype == np.uint8
        want = ["a dark sneaker", "big bright bag", "a photo of a pair of jeans"]
        assert f["prompts"].tolist() == [want[i % 3] for i in range(8)]
        assert f["labels"].tolist() == [[7, 8, 1][i % 3] for i in range(8)]
    assert guided.shape == (8, 28, 28, 1) and np.all(np.isfinite(guided))
