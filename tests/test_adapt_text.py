"""config.task="adapt" on a (tiny, untrained) text-conditional DiT: LoRA under a prompt, DreamBooth with its class-prior
images drawn once and its two-term loss, textual inversion of a new word (only its embedding row trains; prompts
without it sample exactly as the base does), and the one-line errors of text-conditional adaptation."""
import json
import os
import sys

import jax
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import fashion_mnist_dreambooth, fashion_mnist_lora, fashion_mnist_textual_inversion  # noqa: E402
from diffjax import config_lib as cl  # noqa: E402
from diffjax import main as dmain  # noqa: E402
from diffjax import run as drun  # noqa: E402

pytestmark = pytest.mark.xdist_group("test_adapt_text")

V = cl.text_tokenizer(fashion_mnist_lora.get_config()).vocab_size  # the caption grammar's vocabulary


def _config(module, base, images, steps=2, **adapt):
    """``module``'s config on a one-block DiT of width 16 with a one-layer text encoder of width 16."""
    c = module.get_config()
    if module is fashion_mnist_lora:  # the documented overrides: a text base under the LoRA config
        from configs import fashion_mnist_text_dit
        text = fashion_mnist_text_dit.get_config()
        c.model, c.text, c.sampling.guidance_scale = text.model, text.text, text.sampling.guidance_scale
        c.adapt.prompt = "a dark bag"
    c.model.name = "dit_fashion_mnist"
    c.model.overrides = type(c.model.overrides)(dict(hidden_size=16, depth=1, num_heads=2, patch_size=7,
                                                     learn_sigma=False))
    c.text.width, c.text.depth, c.text.num_heads = 16, 1, 2
    c.training.posthoc_ema_freq = 0
    a = c.adapt
    a.base_workdir, a.images = base, images
    a.rank, a.batch_size, a.n_iters, a.log_freq, a.checkpoint_freq = 2, 8, steps, 1, 2
    a.lr = 1e-2
    a.num_prior_images = 8
    a.update(adapt)
    s = c.sampling
    s.method, s.num_steps, s.num_samples, s.batch_size = "ode_euler", 2, 8, 8
    return c


def _base(wd, seed):
    """A base workdir holding one checkpoint of random parameters (N(0, 0.3^2): no zero-initialised branch is off, so
    the text reaches the output; training the base is not what is tested)."""
    cfg = drun._adapt.base_config(_config(fashion_mnist_textual_inversion, wd, ""))
    cfg.seed = seed
    run = drun.Run(cfg, wd, read_only=False)
    state = jax.tree.map(lambda a: jax.numpy.zeros(a.shape, a.dtype), run.abstract)  # nothing compiled to init
    leaves, tree = jax.tree.flatten(state.ema_params)
    keys = jax.random.split(jax.random.key(seed + 100), len(leaves))
    params = jax.tree.unflatten(tree, [0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    run.checkpoints.save(10, state.replace(params=params, ema_params=params))
    run.checkpoints.close()
    return wd


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapt_text")
    images = str(root / "concept.npz")
    np.savez(images, x=np.random.default_rng(0).integers(0, 256, (16, 28, 28, 1), dtype=np.uint8))
    return root, _base(str(root / "base"), seed=0), images


def _state(cfg, wd):
    _, frozen, _ = drun._adapt._base_params(cfg)
    run = drun.AdapterRun(cfg, wd, frozen, read_only=True)
    state, step = run.restore()
    run.checkpoints.close()
    return state, step, frozen, run


def _base_samples(base, prompt, seed=42):
    """What the base model samples for ``prompt`` with the key --mode sample of the adapter uses (``seed=None``: as
    DreamBooth's prior images are drawn, uint8)."""
    from diffjax.data import from_unit
    cfg = drun._adapt.base_config(_config(fashion_mnist_textual_inversion, base, ""))
    cfg.sampling.prompt = prompt
    run = drun.Run(cfg, base)
    state, _ = run.restore(compare_config=False)
    run.checkpoints.close()
    if seed is None:
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(cfg.seed), 6), 0)
        return from_unit(run.sample(state.ema_params, key, 8))
    return run.sample(state.ema_params, jax.random.fold_in(jax.random.key(seed), 4), 8)


def _npz(wd, name):
    with np.load(os.path.join(wd, "samples", name)) as f:
        return {k: f[k] for k in f.files}


def _dreambooth(base, images, steps):
    return _config(fashion_mnist_dreambooth, base, images, steps=steps, targets=("*cross_attn*",), prior_weight=0.5)


@pytest.fixture(scope="module")
def dreambooth(setup):
    """A DreamBooth LoRA trained 2 steps without interruption."""
    root, base, images = setup
    whole = str(root / "db_whole")
    dmain.run_mode(_dreambooth(base, images, 2), whole, "train", progress=False)
    return whole


def test_dreambooth_loss_has_the_instance_and_the_prior_term(setup, dreambooth):
    root, base, images = setup
    cfg = _dreambooth(base, images, 2)
    lines = [m for m in map(json.loads, open(os.path.join(dreambooth, "metrics.jsonl"))) if "instance_loss" in m]
    assert [m["step"] for m in lines] == [1, 2]
    for m in lines:  # L = L_instance + lambda L_prior, both terms there
        assert np.isfinite([m["loss"], m["instance_loss"], m["prior_loss"]]).all()
        assert m["instance_loss"] > 0 and m["prior_loss"] > 0
        np.testing.assert_allclose(m["loss"], m["instance_loss"] + 0.5 * m["prior_loss"], rtol=1e-5)
    with np.load(os.path.join(dreambooth, "prior_images.npz")) as f:  # the frozen base's, for the prior prompt
        assert f["x"].shape == (8, 28, 28, 1) and f["x"].dtype == np.uint8 and str(f["prompt"]) == "a sneaker"
        want = _base_samples(base, "a sneaker", seed=None)
        assert np.array_equal(f["x"], want)
    state, step, _, run = _state(cfg, dreambooth)
    assert step == 2 and set(state.params) == set(run.kind.init())  # LoRA factors (adapt.dreambooth_lora=True)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state))


def test_dreambooth_draws_its_prior_images_once_and_resumes_exactly(setup, dreambooth, capsys):
    root, base, images = setup
    split = str(root / "db_split")
    dmain.run_mode(_dreambooth(base, images, 1), split, "train", progress=False)
    prior = os.path.join(split, "prior_images.npz")
    stamp = os.stat(prior).st_mtime_ns
    capsys.readouterr()
    dmain.run_mode(_dreambooth(base, images, 2), split, "train", progress=False)
    out = capsys.readouterr().out
    assert "read the 8 prior images of 'a sneaker'" in out and "drew" not in out  # not drawn again on resume
    assert os.stat(prior).st_mtime_ns == stamp
    with np.load(prior) as a, np.load(os.path.join(dreambooth, "prior_images.npz")) as b:
        assert np.array_equal(a["x"], b["x"]) and a["x"].std() > 0  # deterministic in the seed
    cfg = _dreambooth(base, images, 2)
    a, step_a, _, _ = _state(cfg, dreambooth)
    b, step_b, _, _ = _state(cfg, split)
    assert step_a == step_b == 2
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.array_equal(np.asarray(x), np.asarray(y))


def test_dreambooth_full_fine_tuning_checkpoints_the_whole_network(setup):
    root, base, images = setup
    wd = str(root / "db_full")
    cfg = _config(fashion_mnist_dreambooth, base, images, steps=1, dreambooth_lora=False)
    dmain.run_mode(cfg, wd, "train", progress=False)
    state, step, frozen, _ = _state(cfg, wd)
    assert step == 1 and jax.tree.structure(state.params) == jax.tree.structure(frozen)
    moved = [float(np.abs(np.asarray(p) - np.asarray(f)).max()) for p, f in
             zip(jax.tree.leaves(state.params), jax.tree.leaves(frozen))]
    assert np.isfinite(moved).all() and max(moved) > 0
    record = json.load(open(os.path.join(wd, "adapter.json")))
    assert record["trainable_params"] == record["base_params"] and "every parameter" in record["checkpoint_holds"]


def test_textual_inversion_trains_only_the_new_row_and_its_word_is_promptable(setup):
    root, base, images = setup
    wd = str(root / "ti")
    cfg = _config(fashion_mnist_textual_inversion, base, images, steps=2)
    dmain.run_mode(cfg, wd, "train", progress=False)
    state, step, frozen, run = _state(cfg, wd)
    rows = np.asarray(state.params)
    table = np.asarray(frozen["text_encoder"]["token_embed"]["embedding"])
    init = table[cl.text_tokenizer(cfg).vocab.index(cfg.adapt.init_word)]
    assert step == 2 and rows.shape == (1, table.shape[1]) and table.shape[0] == V
    assert np.isfinite(rows).all() and not np.allclose(rows[0], init)  # it trained, from "sneaker"'s row
    merged = run.params(state.ema_params)
    want = dict(jax.tree_util.tree_leaves_with_path(frozen))
    for path, leaf in jax.tree_util.tree_leaves_with_path(merged):
        if leaf.shape != want[path].shape:  # the table: the base's rows bit-identical, one row appended
            assert leaf.shape == (V + 1, table.shape[1])
            assert np.array_equal(np.asarray(leaf)[:V], table)
            assert np.array_equal(np.asarray(leaf)[V], np.asarray(state.ema_params)[0])
        else:
            assert np.array_equal(np.asarray(leaf), np.asarray(want[path]))
    _, _, again, _ = _state(cfg, wd)  # the base checkpoint is untouched
    for x, y in zip(jax.tree.leaves(again), jax.tree.leaves(frozen)):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    cfg.sampling.prompt = "a dark zwx"
    x = dmain.run_mode(cfg, wd, "sample", progress=False)
    f = _npz(wd, "adapted_00000002_scale1.npz")
    assert np.isfinite(x).all() and f["prompts"].tolist() == ["a dark zwx"] * 8 and f["labels"].tolist() == [-1] * 8
    cfg.sampling.prompt = "a dark sneaker"  # no new word: exactly the base model's samples
    plain = dmain.run_mode(cfg, wd, "sample", progress=False)
    assert np.isfinite(plain).all() and np.array_equal(plain, _base_samples(base, "a dark sneaker"))
    assert not np.allclose(plain, x)


def test_lora_on_a_text_base_samples_its_prompt(setup):
    root, base, images = setup
    wd = str(root / "lora")
    cfg = _config(fashion_mnist_lora, base, images, steps=2, targets=("*attn*",))
    dmain.run_mode(cfg, wd, "train", progress=False)
    state, step, _, _ = _state(cfg, wd)
    assert step == 2 and any(np.abs(np.asarray(v["up"])).max() > 0 for v in state.params.values())
    cfg.sampling.adapter_scale = 0.0
    x0 = dmain.run_mode(cfg, wd, "sample", progress=False)  # no sampling.prompt: adapt.prompt
    assert np.isfinite(x0).all() and np.array_equal(x0, _base_samples(base, "a dark bag"))
    cfg.sampling.adapter_scale = 1.0
    x1 = dmain.run_mode(cfg, wd, "sample", progress=False)
    assert np.isfinite(x1).all() and not np.allclose(x1, x0)
    f = _npz(wd, "adapted_00000002_scale1.npz")
    assert f["prompts"].tolist() == ["a dark bag"] * 8 and f["labels"].tolist() == [8] * 8


def test_text_adaptation_errors(setup, tmp_path):
    root, base, images = setup
    cases = [
        (fashion_mnist_lora, dict(prompt=""), r"adapt.prompt is required on a text-conditional base"),
        (fashion_mnist_dreambooth, dict(prompt="a sks sneaker"),
         r"adapt.prompt='a sks sneaker' has words outside the vocabulary: \['sks'\]"),
        (fashion_mnist_dreambooth, dict(prior_prompt="a purple sneaker"),
         r"adapt.prior_prompt='a purple sneaker' has words outside the vocabulary: \['purple'\]"),
        (fashion_mnist_textual_inversion, dict(new_word="bag", prompt="a bag"),
         r"adapt.new_word='bag' is already in the vocabulary"),
        (fashion_mnist_textual_inversion, dict(prompt="a dark sneaker"), r"must contain adapt.new_word='zwx'"),
        (fashion_mnist_textual_inversion, dict(prompt="a zwx qqq"), r"words outside the vocabulary: \['qqq'\]"),
        (fashion_mnist_textual_inversion, dict(init_word="zzz"), r"adapt.init_word must be ''"),
        (fashion_mnist_dreambooth, dict(num_prior_images=4), r"adapt.num_prior_images=4 must be >= adapt.batch_size"),
    ]
    for module, fields, match in cases:
        with pytest.raises(ValueError, match=match):
            dmain.run_mode(_config(module, base, images, **fields), str(tmp_path / "a"), "train", progress=False)
    plain = fashion_mnist_lora.get_config()  # an unconditional base: no text encoder to invert
    plain.adapt.update(method="textual_inversion", new_word="zwx", prompt="a zwx", base_workdir=base, images=images)
    with pytest.raises(ValueError, match=r"adapt.method='textual_inversion' needs a text-conditional base model"):
        dmain.run_mode(plain, str(tmp_path / "b"), "train", progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="without PNG images"):
        dmain.run_mode(_config(fashion_mnist_textual_inversion, base, str(empty)), str(tmp_path / "c"), "train",
                       progress=False)
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")
