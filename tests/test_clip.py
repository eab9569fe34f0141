"""CLIP: the symmetric InfoNCE loss and top-k retrieval against hand computations, the CLIP module's embeddings and
checks, a tiny CLIP trained on toy images whose retrieval is far above chance (clean and noise-aware), the
``config.task="clip"`` workdir end to end, and the config checks."""
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from configs import fashion_mnist_clip  # noqa: E402
import diffjax as dj  # noqa: E402
from diffjax import config_lib as cl  # noqa: E402
from diffjax import data as ddata  # noqa: E402
from diffjax import run as drun  # noqa: E402

pytestmark = pytest.mark.xdist_group("test_clip")


def _tiny_config(image_size=28, noise_aware=False):
    c = fashion_mnist_clip.get_config()
    p = c.clip
    p.embed_dim, p.text_width, p.text_depth, p.text_heads = 16, 16, 1, 2
    p.ch, p.ch_mult, p.norm_groups = 8, (1,), 4
    p.steps, p.batch_size, p.log_every = 3, 16, 1
    p.num_train_examples, p.num_test_examples, p.eval_batch_size, p.num_noise_bins = 64, 32, 16, 2
    p.noise_aware = noise_aware
    c.data.image_size = image_size
    c.optim.warmup = 0
    c.optim.lr = 3e-3
    return c


# --- the loss and the retrieval metric by hand


def _log_softmax_rows(a):
    return np.array([[a[i, j] - np.log(np.sum(np.exp(a[i]))) for j in range(a.shape[1])] for i in range(a.shape[0])])


def test_clip_loss_against_hand_computation():
    rng = np.random.default_rng(0)
    u = rng.normal(size=(4, 3))
    v = rng.normal(size=(4, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    scale = 7.5
    logits = scale * u @ v.T
    i2t = -np.mean([_log_softmax_rows(logits)[i, i] for i in range(4)])
    t2i = -np.mean([_log_softmax_rows(logits.T)[i, i] for i in range(4)])
    loss, aux = dj.clip_loss(jnp.asarray(u, jnp.float32), jnp.asarray(v, jnp.float32), scale)
    assert np.isfinite(float(loss))
    np.testing.assert_allclose(float(loss), 0.5 * (i2t + t2i), rtol=1e-5)
    assert float(aux["i2t_accuracy"]) == np.mean(np.argmax(logits, 1) == np.arange(4))
    assert float(aux["t2i_accuracy"]) == np.mean(np.argmax(logits, 0) == np.arange(4))
    # several positives per row / column: the target spreads evenly over them
    pos = np.eye(4, dtype=bool)
    pos[0, 1] = pos[2, 0] = True
    lp, lpt = _log_softmax_rows(logits), _log_softmax_rows(logits.T)
    want_i2t = -np.mean([np.mean([lp[i, j] for j in range(4) if pos[i, j]]) for i in range(4)])
    want_t2i = -np.mean([np.mean([lpt[j, i] for i in range(4) if pos[i, j]]) for j in range(4)])
    loss, _ = dj.clip_loss(jnp.asarray(u, jnp.float32), jnp.asarray(v, jnp.float32), scale, positives=pos)
    np.testing.assert_allclose(float(loss), 0.5 * (want_i2t + want_t2i), rtol=1e-5)
    # perfectly aligned, well separated embeddings at a large scale: loss near 0, accuracy 1
    e = jnp.eye(4)
    loss, aux = dj.clip_loss(e, e, 100.0)
    assert float(loss) < 1e-3 and float(aux["i2t_accuracy"]) == float(aux["t2i_accuracy"]) == 1.0


def test_clip_loss_and_retrieval_errors():
    with pytest.raises(ValueError, match=r"need the same number of rows, got 3 and 4"):
        dj.clip_loss(jnp.ones((3, 2)), jnp.ones((4, 2)), 1.0)
    with pytest.raises(ValueError, match=r"positives must be shaped \(n, m\) = \(3, 3\), got \(3, 4\)"):
        dj.clip_loss(jnp.ones((3, 2)), jnp.ones((3, 2)), 1.0, positives=np.ones((3, 4), bool))
    with pytest.raises(ValueError, match=r"k must be <= the number of candidates 2, got 3"):
        dj.retrieval_top_k(jnp.ones((3, 2)), np.ones((3, 2), bool), 3)


def test_retrieval_top_k_by_hand():
    sim = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.8], [0.0, 0.7, 0.6]])
    rel = np.array([[False, False, True], [False, True, False], [False, True, True]])
    assert float(dj.retrieval_top_k(sim, rel, 1)) == pytest.approx(1 / 3)  # only row 2's top (col 1) is relevant
    assert float(dj.retrieval_top_k(sim, rel, 2)) == pytest.approx(1.0)
    assert float(dj.retrieval_top_k(sim, np.zeros_like(rel), 3)) == 0.0


# --- the CLIP module


def test_clip_module_embeddings_and_checks():
    cfg = _tiny_config(image_size=8)
    model = cl.build_clip(cfg)
    params = cl.init_clip(cfg, model, jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (3, 8, 8, 1))
    ids, mask = ddata.caption_tokenizer().encode(["a dark bag", "a sneaker", "a photo of a coat"], max_length=16)
    img, txt, scale = model.apply({"params": params}, x, ids, mask)
    assert img.shape == txt.shape == (3, 16)
    np.testing.assert_allclose(jnp.linalg.norm(img, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(jnp.linalg.norm(txt, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(float(scale), 1 / 0.07, rtol=1e-5)
    with pytest.raises(ValueError, match=r"noise_aware=False: encode_image needs noise_labels of x_t exactly when"):
        model.apply({"params": params}, x, jnp.zeros((3,)), method=model.encode_image)
    noisy = cl.build_clip(_tiny_config(image_size=8, noise_aware=True))
    p2 = cl.init_clip(cfg, noisy, jax.random.key(0))
    with pytest.raises(ValueError, match=r"noise_aware=True: encode_image needs noise_labels"):
        noisy.apply({"params": p2}, x, method=noisy.encode_image)
    with pytest.raises(ValueError, match=r"image_encoder.num_classes=8 must equal embed_dim=16"):
        dj.nets.CLIP(text_encoder=model.text_encoder, image_encoder=model.image_encoder.clone(num_classes=8),
                     embed_dim=16)


# --- a tiny CLIP on toy images: the class is where the bright square sits

TOY_CLASSES = (0, 1, 7, 8)  # t-shirt, trousers, sneaker, bag


def _toy_batch(rng, n):
    k = rng.integers(len(TOY_CLASSES), size=n)
    x = np.full((n, 8, 8, 1), -1.0, np.float32)
    for i, c in enumerate(k):
        r, q = divmod(int(c), 2)
        x[i, 4 * r:4 * r + 4, 4 * q:4 * q + 4] = 1.0
    x += 0.1 * rng.normal(size=x.shape).astype(np.float32)
    return x, np.array(TOY_CLASSES)[k]


@pytest.mark.parametrize("noise_aware,lr,steps", [(False, 3e-3, 60), (True, 3e-3, 200)])
def test_tiny_clip_learns_toy_retrieval(noise_aware, lr, steps):
    cfg = _tiny_config(image_size=8, noise_aware=noise_aware)
    cfg.optim.lr = lr
    model, sde = cl.build_clip(cfg), cl.build_sde(cfg)
    optimizer = cl.build_optimizer(cfg)
    params = cl.init_clip(cfg, model, jax.random.key(0))
    opt_state = optimizer.init(params)
    step = drun.make_clip_step(cfg, model, sde, optimizer)
    tok, rng = ddata.caption_tokenizer(), np.random.default_rng(0)
    zeros = np.zeros(32, np.int32)
    for i in range(steps):
        x, y = _toy_batch(rng, 32)
        ids, mask, prompts = drun.batch_captions(tok, 16, rng, y, zeros, zeros)
        positives = ddata.match_matrix(prompts, y, zeros, zeros)
        params, opt_state, m = step(params, opt_state, jax.random.key(i), x, ids, mask, positives)
        assert np.isfinite(float(m["loss"])) and np.isfinite(float(m["grad_norm"]))
    assert all(np.all(np.isfinite(np.asarray(a))) for a in jax.tree.leaves(params))
    x, y = _toy_batch(np.random.default_rng(1), 64)
    prompts = [ddata.class_prompts()[c] for c in TOY_CLASSES]
    ids, mask = tok.encode(prompts, max_length=16)
    labels = None
    if noise_aware:  # a little noise: x_t at t = 0.05 on the DDPM grid
        t = jnp.full((64,), 0.05)
        x = cl.network_marginal(cfg, sde).perturb(x, t, jax.random.normal(jax.random.key(9), x.shape))
        labels = cl.clip_noise_labels(cfg, sde)(t)
    img = model.apply({"params": params}, x, labels, method=model.encode_image)
    txt = model.apply({"params": params}, ids, mask, method=model.encode_text)[0]
    relevant = y[:, None] == np.array(TOY_CLASSES)[None]
    top1 = float(dj.retrieval_top_k(img @ txt.T, relevant, 1))
    assert top1 > 0.9, top1  # chance: 0.25


# --- the task end to end


@pytest.fixture(scope="module")
def clip_workdir(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("clip"))
    drun.train_clip(_tiny_config(), wd)
    return wd


def test_workdir_files_retrieval_record_and_reload(clip_workdir):
    wd = clip_workdir
    assert {cl.CLIP_PARAMS, cl.CLIP_CONFIG, drun.CLIP_JSON, "metrics.jsonl"} <= set(os.listdir(wd))
    rec = json.load(open(os.path.join(wd, drun.CLIP_JSON)))
    assert rec["num_test_examples"] == 32 and rec["noise_aware"] is False and len(rec["test_retrieval"]) == 1
    row = rec["test_retrieval"][0]
    for name in ("class_i2t", "class_t2i", "heldout_i2t", "heldout_t2i"):
        assert 0.0 <= row[f"{name}_top1"] <= row[f"{name}_top5"] <= 1.0
    assert 0.0 < row["heldout_chance"] < 1.0
    losses = [r["clip_loss"] for r in map(json.loads, open(os.path.join(wd, "metrics.jsonl"))) if "clip_loss" in r]
    assert len(losses) == 3 and np.all(np.isfinite(losses))
    # the saved parameters rebuild the same model
    _, model, params = cl.load_clip(wd)
    cfg = _tiny_config()
    fresh = cl.init_clip(cfg, cl.build_clip(cfg), jax.random.key(0))
    assert jax.tree.structure(params) == jax.tree.structure(fresh)
    ids, mask = ddata.caption_tokenizer().encode(["a dark bag"], max_length=16)
    emb, _ = model.apply({"params": params}, ids, mask, method=model.encode_text)
    assert np.all(np.isfinite(np.asarray(emb)))


def test_clip_retrieval_of_a_perfect_model_by_hand():
    """A stand-in model whose embeddings are the one-hot class: image -> class prompt retrieval is exact, and its
    held-out caption retrieval hits exactly where the caption rules say."""
    cfg = _tiny_config()

    class OneHot:
        def apply(self, variables, *args, method):
            return method(*args)

        def encode_image(self, x):
            return jax.nn.one_hot(jnp.round(x[:, 0, 0, 0] * 10 + 10).astype(jnp.int32), 16)

        def encode_text(self, ids, mask):  # the class of the noun's last word ("boot" of "ankle boot")
            vocab = ddata.caption_tokenizer().vocab
            last = {n.split()[-1]: k for k, nouns in enumerate(ddata.CLASS_SYNONYMS) for n in nouns}
            table = jnp.array([last.get(w, -1) for w in vocab])
            return jnp.sum(jax.nn.one_hot(table[ids], 16), axis=1), None

    labels = np.arange(20) % 10
    images = np.zeros((20, 28, 28, 1), np.uint8)
    images[:, 10:18, 10:18] = 255
    images[:, 0, 0, 0] = ddata.from_unit(labels / 10.0 - 1.0)  # the class written in pixel (0, 0)
    r = drun.clip_retrieval(cfg, OneHot(), None, None, images, labels, jax.random.key(0))
    assert r["class_i2t_top1"] == r["class_t2i_top1"] == 1.0
    assert r["heldout_i2t_top1"] == r["heldout_t2i_top1"] == 1.0  # every held-out caption of its class fits
    assert r["heldout_chance"] == pytest.approx(0.1)


@pytest.mark.parametrize("field,value,match", [
    ("steps", 0, r"clip.steps must be an integer >= 1, got 0"),
    ("batch_size", 1, r"clip.batch_size must be >= 2 \(a contrastive batch needs negatives\), got 1"),
    ("num_test_examples", -1, r"clip.num_test_examples must be an integer >= 0"),
    ("max_length", 8, r"clip.max_length must be >= 15 \(the longest caption has 13 words"),
    ("eval_batch_size", 0, r"clip.eval_batch_size must be an integer >= 1, got 0"),
    ("init_temperature", 0.0, r"clip.init_temperature must be a number in \(0.0, 10.0\], got 0.0"),
    ("pool", "cls", r"clip.\* .*pool must be one of \('eos', 'mean'\), got 'cls'"),
    ("text_heads", 3, r"clip.\* .*width=16 must be divisible by num_heads=3"),
    ("ch_mult", (), r"clip.\* .*ch_mult must be a non-empty tuple"),
])
def test_bad_clip_fields_fail_before_reading_data(tmp_path, field, value, match):
    cfg = _tiny_config()
    cfg.clip[field] = value
    with pytest.raises(ValueError, match=match):
        drun.train_clip(cfg, str(tmp_path / "wd"))
    assert not os.path.exists(tmp_path / "wd")


def test_clip_task_needs_fashion_mnist_and_a_valid_process(tmp_path):
    cfg = _tiny_config()
    cfg.data.dataset = "cifar10"
    with pytest.raises(ValueError, match=r"data.dataset='cifar10' is not known; allowed values: \['fashion_mnist', "):
        cl.validate_clip(cfg)
    cfg = _tiny_config(noise_aware=True)
    cfg.training.sde = "vp"
    with pytest.raises(ValueError, match=r"training.sde='vp' is not known"):
        cl.validate_clip(cfg)
    with pytest.raises(ValueError, match=r"is not a trained CLIP workdir: \['clip_params.npz', 'clip_config.json'\]"):
        cl.load_clip(str(tmp_path))


def test_clip_task_rejects_other_modes(tmp_path):
    from diffjax.main import TASKS, run_mode
    assert "clip" in TASKS
    with pytest.raises(ValueError, match=r"config.task='clip' supports --mode train only"):
        run_mode(_tiny_config(), str(tmp_path), "sample")
