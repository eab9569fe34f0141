"""Text-conditional diffusion (issue 40, phase 2): the context blocks of the UNet (spatial transformers), the DiT
(PixArt-alpha cross-attention) and the MMDiT see the prompt and ignore padding; captioned batches are deterministic;
a tiny text-conditional flow model's prompted samples land on the prompted mixture component; prompted sampling
through diffjax.main writes x / prompts / labels; bad prompts and configs get clear errors; a frozen CLIP text encoder
stays frozen."""
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import diffjax as dj
from diffjax import config_lib as cl
from diffjax import data as ddata
from diffjax import nets
from _fast_compile import fast_jit  # noqa: E402

pytestmark = pytest.mark.xdist_group("test_text_conditional")

TOK = ddata.caption_tokenizer()
L = 16


def _encoder(width=16):
    return nets.TextEncoder(vocab_size=TOK.vocab_size, max_length=L, width=width, depth=1, num_heads=2)


def _backbones():
    return {"unet": nets.UNet(ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(8,), norm_groups=4,
                              dropout=0.0, context_block="cross_attention", context_heads=2, conv_impl="xla",
                              layer_impl="reference"),
            "dit": nets.DiT(patch_size=2, hidden_size=16, depth=1, num_heads=2, context_block="cross_attention"),
            "mmdit": nets.DiT(patch_size=2, hidden_size=16, depth=1, num_heads=2, context_block="mmdit")}


def _random_params(init, key, scale=0.3):
    """Parameters of ``init``'s shapes drawn N(0, scale^2): no zero-initialised branch (adaLN-Zero, zero projections)
    stays off, and nothing is compiled for the initialisers (a UNet's take half a minute on a busy CPU)."""
    leaves, tree = jax.tree.flatten(jax.eval_shape(init))
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(tree, [scale * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])


@pytest.mark.parametrize("name", ["unet", "dit", "mmdit"])
def test_context_blocks_see_the_prompt_and_ignore_padding(name):
    backbone = _backbones()[name]
    model = nets.TextConditional(_encoder(), backbone, max_length=L)
    ids, _ = TOK.encode(["a dark sneaker", "a photo of a bag", "a light sneaker", "a photo of a coat", "", ""],
                        max_length=L)
    x = jnp.tile(jax.random.normal(jax.random.key(0), (2, 8, 8, 1)), (3, 1, 1, 1))
    t = jnp.full((6,), 0.5)
    params = _random_params(lambda: model.init(jax.random.key(1), x, t, jnp.asarray(ids), train=False)["params"],
                            jax.random.key(2))
    mask = jnp.asarray(ids != 0)
    tokens, pooled = _encoder().apply({"params": params["text_encoder"]}, jnp.asarray(ids), mask)
    noise = jax.random.normal(jax.random.key(3), tokens.shape)
    # the backbone alone, three contexts: the tokens, other features at the padded positions (mask False), other
    # features at the real positions
    ctx = jnp.concatenate([tokens[:2], jnp.where(mask[:2, :, None], tokens[:2], noise[:2]),
                           jnp.where(mask[:2, :, None], noise[:2], tokens[:2])])

    @fast_jit
    def outputs(params):
        whole = model.apply({"params": params}, x, t, jnp.asarray(ids), train=False)
        null = model.apply({"params": params}, x[:2], t[:2], None, train=False)
        alone = backbone.apply({"params": params["backbone"]}, x, t, train=False, context=ctx,
                               context_mask=jnp.tile(mask[:2], (3, 1)), context_pooled=jnp.tile(pooled[:2], (3, 1)))
        return whole, null, alone

    whole, null, alone = outputs(params)
    assert whole.shape == x.shape and bool(jnp.all(jnp.isfinite(whole))) and bool(jnp.all(jnp.isfinite(alone)))
    differ = lambda a, b: float(jnp.min(jnp.max(jnp.abs(a - b), axis=(1, 2, 3))))  # noqa: E731
    assert differ(whole[:2], whole[2:4]) > 1e-3  # another prompt, another output
    np.testing.assert_allclose(null, whole[4:], atol=1e-5)  # y=None is the empty caption
    assert differ(whole[:2], whole[4:]) > 1e-3
    np.testing.assert_allclose(alone[:2], whole[:2], atol=1e-5)
    np.testing.assert_allclose(alone[2:4], alone[:2], atol=1e-5)  # padding changes nothing
    assert differ(alone[4:], alone[:2]) > 1e-3


def test_context_block_errors():
    with pytest.raises(ValueError, match=r"context_block must be one of \('none', 'cross_attention'\), got 'mmdit'"):
        nets.UNet(ch=8, ch_mult=(1,), context_block="mmdit")
    dit = nets.DiT(patch_size=2, hidden_size=16, depth=1, num_heads=2, context_block="mmdit")
    with pytest.raises(ValueError, match=r"context tokens must be given"):
        dit.init(jax.random.key(0), jnp.zeros((1, 4, 4, 1)), jnp.zeros(1), train=False)


def test_captioned_batches_are_deterministic_and_fit_their_images():
    images = np.stack([np.full((28, 28, 1), v, np.uint8) for v in (0, 255)] * 8)
    labels = np.tile([7, 8], 8)
    data = ddata.ImageData.from_arrays(images, labels, global_batch=16, seed=0)
    cap = ddata.CaptionedData(data, TOK, max_length=L, dropout=0.25, seed=3)
    a, b = cap.batches(5, 2), cap.batches(5, 2)
    assert a["y"].shape == (2, 16, L) and a["y"].dtype == np.int32 and a["x"].shape == (2, 16, 28, 28, 1)
    np.testing.assert_array_equal(a["y"], b["y"])
    assert not np.array_equal(a["y"][0], cap.batches(6)["y"][0])  # a fresh caption per step
    texts = TOK.decode(np.concatenate([cap.batches(s)["y"][0] for s in range(20)]))
    empty = np.array([t == "" for t in texts])
    assert 0.1 < empty.mean() < 0.4  # caption dropout 0.25 on 320 captions
    lab = np.concatenate([data.batches(s)["y"][0] for s in range(20)])
    for t, y in zip(texts, lab):
        if t:
            assert ddata.parse_prompt(t).label == y
    assert cap.steps_per_epoch == data.steps_per_epoch  # the wrapped pipeline's attributes


# --- a tiny text-conditional flow model: "a sneaker" -> (+2, +2), "a bag" -> (-2, -2)


class _ToyCross(nn.Module):
    """2-D MLP that sees the text only through cross-attention of its hidden state to the context tokens."""

    @nn.compact
    def __call__(self, x, noise_labels, y=None, *, train, context=None, context_mask=None, context_pooled=None):
        h = nn.silu(nn.Dense(64)(jnp.concatenate([x, noise_labels[:, None]], -1)))
        h = h + nets.CrossAttention(4)(h[:, None, :], context, context_mask)[:, 0]
        h = nn.silu(nn.Dense(64)(h))
        return nn.Dense(2)(h)


def test_tiny_text_conditional_model_follows_the_prompt():
    prompts = ["a sneaker", "a bag"]
    centers = np.array([[2.0, 2.0], [-2.0, -2.0]], np.float32)
    pid, _ = TOK.encode(prompts + [""], max_length=L)
    model = nets.TextConditional(_encoder(32), _ToyCross(), max_length=L)
    sde = dj.rectified_flow()
    params = model.init(jax.random.key(0), jnp.zeros((1, 2)), jnp.zeros(1), jnp.asarray(pid[:1]),
                        train=False)["params"]
    opt = optax.adam(3e-3)

    @jax.jit
    def step(params, opt_state, key):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        which = jax.random.bernoulli(k1, 0.5, (256,)).astype(jnp.int32)
        x0 = jnp.asarray(centers)[which] + 0.1 * jax.random.normal(k2, (256, 2))
        y = jnp.where(jax.random.bernoulli(k3, 0.2, (256,)), 2, which)  # caption dropout: the empty caption
        t = jax.random.uniform(k4, (256,))
        eps = jax.random.normal(jax.random.fold_in(key, 9), (256, 2))
        xt = (1 - t[:, None]) * x0 + t[:, None] * eps

        def loss(p):
            v = model.apply({"params": p}, xt, t, jnp.asarray(pid)[y], train=False)
            return jnp.mean((v - (eps - x0)) ** 2)

        val, g = jax.value_and_grad(loss)(params)
        upd, opt_state = opt.update(g, opt_state)
        return optax.apply_updates(params, upd), opt_state, val

    opt_state = opt.init(params)
    for i in range(400):
        params, opt_state, val = step(params, opt_state, jax.random.key(i))
    assert np.isfinite(float(val))
    cond = nets.make_conditional_score_fn(model.apply, params, sde, parameterization="velocity", time_input="t")
    guided = dj.classifier_free_guidance(cond, guidance_scale=1.0, null_label=jnp.asarray(pid[2]))
    n = 128
    y = jnp.asarray(pid)[jnp.arange(n) % 2]
    for score in (cond, guided):
        x = dj.samplers.ode_euler(jax.random.key(7), sde.prior_sample(jax.random.key(8), (n, 2)),
                                  dj.with_label(score, y), sde, num_steps=40)
        x = np.asarray(x)
        assert np.all(np.isfinite(x))
        target = centers[np.arange(n) % 2]
        hit = np.linalg.norm(x - target, axis=1) < 1.0
        assert hit.mean() > 0.9, hit.mean()


# --- configs: prompts, errors, sampling through diffjax.main


def _tiny_text_config(conditioning="cross_attention", *, dit=False):
    from configs import fashion_mnist_text, fashion_mnist_text_dit
    c = (fashion_mnist_text_dit if dit else fashion_mnist_text).get_config()
    c.text.conditioning = conditioning
    c.text.width, c.text.depth, c.text.num_heads = 16, 1, 2
    if not dit:
        o = c.model.overrides
        o.ch, o.ch_mult, o.num_res_blocks, o.attn_resolutions = 8, (1, 2), 1, (14,)
        o.norm_groups, o.context_heads = 4, 2
    else:
        o = c.model.overrides
        o.hidden_size, o.depth, o.num_heads, o.patch_size = 16, 1, 2, 7
    t = c.training
    t.batch_size, t.n_iters, t.log_freq, t.snapshot_freq, t.checkpoint_freq = 8, 2, 1, 2, 2
    t.snapshot_freq_for_preemption, t.posthoc_ema_freq = 2, 0
    c.optim.warmup = 0
    s = c.sampling
    s.num_steps, s.num_samples, s.batch_size, s.final_num_samples = 2, 8, 8, 0
    return c


def test_prompt_errors_and_config_errors(tmp_path):
    c = _tiny_text_config()
    cl.validate(c)
    assert cl.sampling_prompts(c) == ddata.class_prompts()
    c.sampling.prompt = "a purple sneaker"
    with pytest.raises(ValueError, match=r"sampling.prompt: prompt 'a purple sneaker' has words outside the "
                                         r"vocabulary: \['purple'\]; allowed words: \[.*'sneaker'"):
        cl.validate(c)
    c.sampling.prompt = "a photo of " + "a dark " * 8 + "bag"
    with pytest.raises(ValueError, match=r"sampling.prompt \(text.max_length=16\): text .* more than max_length=16"):
        cl.validate(c)
    c.sampling.prompt = ""
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    c.sampling.prompt_file = str(empty)
    with pytest.raises(ValueError, match=r"holds no prompt"):
        cl.validate(c)
    c.sampling.prompt_file = ""
    c.data.num_classes = 10
    with pytest.raises(ValueError, match=r"set data.num_classes=0, got 10"):
        cl.validate(c)
    c.data.num_classes = 0
    c.text.conditioning = "mmdit"  # on a UNet
    with pytest.raises(ValueError, match=r"context_block must be one of .*, got 'mmdit'"):
        cl.validate(c)
    c.text.conditioning = "cross_attn"
    with pytest.raises(ValueError, match=r"text.conditioning='cross_attn' is not known.*did you mean "
                                         r"'cross_attention'"):
        cl.validate(c)
    c.text.conditioning, c.text.caption_dropout = "cross_attention", 0.0
    with pytest.raises(ValueError, match=r"text-conditional one trained with text.caption_dropout > 0"):
        cl.validate(c)
    from configs import fashion_mnist_budget_rf
    plain = fashion_mnist_budget_rf.get_config()
    plain.sampling.prompt = "a bag"
    with pytest.raises(ValueError, match=r"sampling.prompt / sampling.prompt_file need a text-conditional model"):
        cl.validate(plain)
    c.text.caption_dropout, c.text.encoder_workdir = 0.1, str(tmp_path)
    with pytest.raises(ValueError, match=r"is not a trained CLIP workdir"):
        cl.validate(c)


@pytest.mark.parametrize("conditioning", ["cross_attention", "mmdit"])
def test_prompted_sampling_through_main_writes_prompts_and_labels(tmp_path, conditioning):
    from diffjax.main import run_mode
    c = _tiny_text_config(conditioning, dit=True)  # a DiT: the UNet's context blocks are tested above
    wd = str(tmp_path / "wd")
    run_mode(c, wd, "train", progress=False)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a dark sneaker\n\na photo of a pair of jeans\nbig bright bag\n")
    c.sampling.prompt_file = str(prompts)
    run_mode(c, wd, "sample", progress=False)
    files = [f for f in os.listdir(os.path.join(wd, "samples")) if f.endswith(".npz") and f.startswith("samples_")]
    assert len(files) == 1
    with np.load(os.path.join(wd, "samples", files[0])) as f:
        assert f["x"].shape == (8, 28, 28, 1) and f["x"].dtype == np.uint8
        want = ["a dark sneaker", "a photo of a pair of jeans", "big bright bag"]
        assert f["prompts"].tolist() == [want[i % 3] for i in range(8)]
        assert f["labels"].tolist() == [[7, 1, 8][i % 3] for i in range(8)]
    if conditioning != "mmdit":
        return
    # --mode eval under the feature classifier: prompt following of its samples, each batch cycling the prompts
    from diffjax.eval import feature_classifier as fc
    e = c.eval
    e.classifier_workdir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments",
                                        "results", "artifacts")
    e.num_samples, e.batch_size, e.reference_num_examples, e.feature_batch_size = 12, 8, 64, 16
    e.kid_subsets, e.kid_subset_size, e.score_splits = 4, 8, 2
    rec = run_mode(c, wd, "eval", progress=False)
    ev = os.path.join(wd, "eval")
    x = np.concatenate([np.load(os.path.join(ev, f"samples_00000002_{rec['sampler_label']}_{i:05d}.npz"))["x"]
                        for i in range(2)])
    assert x.shape == (12, 28, 28, 1)
    idx = [i % 3 for i in range(8)] + [i % 3 for i in range(4)]  # batches of 8 and 4, each from the first prompt
    cls = fc.classifier_logits(fc.load_classifier_params(os.path.join(e.classifier_workdir,
                                                                      "classifier_params.npz")), x).argmax(-1)
    shade, size = ddata.measure_attributes(x)
    assert rec["class_accuracy"] == pytest.approx(np.mean(cls == np.array([7, 1, 8])[idx]))
    stated_shade = np.array([-1, 0, 1])[idx]  # dark, none, bright
    assert rec["shade_accuracy"] == pytest.approx(np.mean((shade == stated_shade)[stated_shade != 0]))
    assert rec["size_accuracy"] == pytest.approx(np.mean(size[np.array(idx) == 2] == 1))  # big
    assert (rec["num_class"], rec["num_shade"], rec["num_size"]) == (12, 8, 3)


def test_frozen_clip_text_encoder_stays_frozen(tmp_path):
    """``text.encoder_workdir``: the CLIP run's text tower is the model's encoder, and training leaves it unchanged."""
    from flax import traverse_util
    from configs import fashion_mnist_clip
    from diffjax.eval.evaluate import write_json_atomic
    from diffjax.main import run_mode
    from diffjax.run import Run
    clip_cfg = fashion_mnist_clip.get_config()
    p = clip_cfg.clip
    p.embed_dim, p.text_width, p.text_depth, p.text_heads, p.ch, p.ch_mult, p.norm_groups = 8, 16, 1, 2, 4, (1,), 4
    clip_dir = tmp_path / "clip"
    clip_dir.mkdir()
    model = cl.build_clip(clip_cfg)
    clip_params = jax.device_get(cl.init_clip(clip_cfg, model, jax.random.key(5)))
    np.savez(clip_dir / cl.CLIP_PARAMS, **{k: np.asarray(v) for k, v in
                                           traverse_util.flatten_dict(clip_params, sep="/").items()})
    write_json_atomic(str(clip_dir / cl.CLIP_CONFIG), cl.clip_record(clip_cfg))
    c = _tiny_text_config("mmdit", dit=True)
    c.text.encoder_workdir = str(clip_dir)
    wd = str(tmp_path / "wd")
    run_mode(c, wd, "train", progress=False)
    state, step = Run(c, wd).restore()
    assert step == 2
    for tree in (state.params, state.ema_params):
        got = traverse_util.flatten_dict(jax.device_get(tree["text_encoder"]), sep="/")
        want = traverse_util.flatten_dict(clip_params["text_encoder"], sep="/")
        assert got.keys() == want.keys()
        for k in want:  # exact in params (Adam's update of a zero gradient is 0); the EMA rounds in the last bit
            np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-7)
    moved = jax.tree.leaves(jax.tree.map(lambda a: float(jnp.abs(a).sum()), state.params["backbone"]))
    assert np.isfinite(moved).all()
