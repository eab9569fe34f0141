"""config.task="adapt" through diffjax.main: a LoRA adapter of a (tiny) trained model, adapter-only checkpoints with
exact resume, sampling at a strength, and the one-line errors for another base, bad images and bad settings."""
import json
import os
import sys

import jax
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import fashion_mnist_lora  # noqa: E402
from diffjax import main as dmain  # noqa: E402
from diffjax import run as drun  # noqa: E402

pytestmark = pytest.mark.xdist_group("test_adapt_task")


def _config(base, images, steps=4):
    cfg = fashion_mnist_lora.get_config()
    cfg.training.posthoc_ema_freq = 0
    cfg.model.overrides.update(dict(ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), dropout=0.0))
    a = cfg.adapt
    a.base_workdir, a.images = base, images
    a.rank, a.batch_size, a.n_iters, a.log_freq, a.checkpoint_freq = 2, 8, steps, 1, 2
    s = cfg.sampling
    s.method, s.num_steps, s.num_samples, s.batch_size = "ode_euler", 3, 8, 8
    return cfg


def _base(cfg, wd, seed):
    """A base workdir holding a checkpoint of an initial state (training the base is not what is tested)."""
    cfg = _config(wd, "", 4)
    cfg.task, cfg.seed = "diffusion", seed
    run = drun.Run(cfg, wd, read_only=False)
    run.checkpoints.save(10, run.fresh_state())
    run.checkpoints.close()
    return wd


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapt")
    images = str(root / "concept.npz")
    rng = np.random.default_rng(0)
    np.savez(images, x=rng.integers(0, 256, (16, 28, 28, 1), dtype=np.uint8))
    base = _base(None, str(root / "base"), seed=0)
    whole = str(root / "whole")
    dmain.run_mode(_config(base, images, steps=4), whole, "train", progress=False)
    return root, base, images, whole


def _adapter_state(cfg, wd):
    _, frozen, _ = drun._adapt._base_params(cfg)
    run = drun.AdapterRun(cfg, wd, frozen, read_only=True)
    state, step = run.restore()
    run.checkpoints.close()
    return state, step


def test_adapter_checkpoints_resume_exactly_and_hold_only_the_adapter(setup):
    root, base, images, whole = setup
    split = str(root / "split")
    dmain.run_mode(_config(base, images, steps=2), split, "train", progress=False)
    dmain.run_mode(_config(base, images, steps=4), split, "train", progress=False)  # resumes at 2
    a, step_a = _adapter_state(_config(base, images), whole)
    b, step_b = _adapter_state(_config(base, images), split)
    assert step_a == step_b == 4
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    leaves = jax.tree.leaves(a.params)
    assert leaves and all(np.isfinite(np.asarray(x)).all() for x in leaves)
    assert any(np.abs(np.asarray(v["up"])).max() > 0 for v in a.params.values())  # it trained
    record = json.load(open(os.path.join(whole, "adapter.json")))
    assert record["trainable_params"] == sum(np.size(x) for x in leaves)
    assert 0 < record["trainable_params"] < record["base_params"]
    # Adam's two moments of each trainable float32 (plus its step counter) and nothing of the frozen weights
    assert 8 * record["trainable_params"] <= record["optimizer_state_bytes"] <= 8 * record["trainable_params"] + 64


def test_sampling_at_scale_zero_is_the_base_model(setup, capsys):
    root, base, images, whole = setup
    cfg = _config(base, images)
    cfg.sampling.adapter_scale = 0.0
    x0 = dmain.run_mode(cfg, whole, "sample", progress=False)
    run = drun.Run(_config(base, images), base)
    state, _ = run.restore(compare_config=False)
    want = run.sample(state.ema_params, jax.random.fold_in(jax.random.key(cfg.seed), 4), 8)
    assert np.isfinite(x0).all() and np.array_equal(x0, want)
    cfg.sampling.adapter_scale = 1.0
    x1 = dmain.run_mode(cfg, whole, "sample", progress=False)
    assert np.isfinite(x1).all() and not np.allclose(x1, x0)
    assert os.path.exists(os.path.join(whole, "samples", "adapted_00000004_scale1.npz"))


def test_another_base_and_bad_inputs_are_refused(setup, tmp_path):
    root, base, images, whole = setup
    other = _base(None, str(tmp_path / "other"), seed=1)
    with pytest.raises(ValueError, match="another base model"):
        dmain.run_mode(_config(other, images), whole, "sample", progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="without PNG images"):
        dmain.run_mode(_config(base, str(empty)), str(tmp_path / "a"), "train", progress=False)
    for field, value, match in (("base_workdir", str(tmp_path / "missing"), "adapt.base_workdir"),
                                ("method", "dora", "adapt.method"), ("rank", 0, "adapt.rank"),
                                ("label", 3, "adapt.label"), ("targets", ("*nothing*",), "matches no")):
        cfg = _config(base, images)
        cfg.adapt[field] = value
        with pytest.raises(ValueError, match=match):
            dmain.run_mode(cfg, str(tmp_path / "b"), "train", progress=False)
    cfg = _config(base, images)
    cfg.adapt.batch_size = 8 * 3
    with pytest.raises(ValueError, match="exceeds the 16 images"):
        dmain.run_mode(cfg, str(tmp_path / "c"), "train", progress=False)


def test_two_loras_add_up(setup, tmp_path):
    """sampling.extra_adapters: a second LoRA of the same base merged on top, each at its scale, equals merging the
    two adapters by hand (diffjax.adapt.lora_merge twice); the second at scale 0 changes nothing; bad fields are
    refused with one-line errors."""
    from diffjax import adapt
    root, base, images, whole = setup
    second = str(tmp_path / "second")
    cfg2 = _config(base, images, steps=2)
    cfg2.seed, cfg2.adapt.rank = 7, 3
    dmain.run_mode(cfg2, second, "train", progress=False)
    cfg = _config(base, images)
    cfg.sampling.adapter_scale = 0.5
    cfg.sampling.extra_adapters, cfg.sampling.extra_adapter_scales = (second,), (2.0,)
    x = dmain.run_mode(cfg, whole, "sample", progress=False)
    assert os.path.exists(os.path.join(whole, "samples", "adapted_00000004_scale0.5_plus1.npz"))
    _, frozen, _ = drun._adapt._base_params(cfg)
    a, _ = _adapter_state(_config(base, images), whole)
    b, _ = _adapter_state(cfg2, second)
    merged = adapt.lora_merge(adapt.lora_merge(frozen, adapt.LoraAdapter(a.ema_params, alpha=2.0, rank=2), 0.5),
                              adapt.LoraAdapter(b.ema_params, alpha=3.0, rank=3), 2.0)
    run = drun.Run(cfg, base)
    want = run.sample(merged, jax.random.fold_in(jax.random.key(cfg.seed), 4), 8)
    assert np.isfinite(x).all() and np.allclose(x, want, atol=1e-5)
    cfg.sampling.extra_adapter_scales = (0.0,)
    cfg.sampling.adapter_scale = 1.0
    x1 = dmain.run_mode(cfg, whole, "sample", progress=False)
    cfg.sampling.extra_adapters, cfg.sampling.extra_adapter_scales = (), ()
    np.testing.assert_allclose(x1, dmain.run_mode(cfg, whole, "sample", progress=False), atol=1e-6)
    for extras, scales, match in (((second,), (1.0, 2.0), "one scale per sampling.extra_adapters"),
                                  ((str(tmp_path),), (), "holds no adapter")):
        cfg.sampling.extra_adapters, cfg.sampling.extra_adapter_scales = extras, scales
        with pytest.raises(ValueError, match=match):
            dmain.run_mode(cfg, whole, "sample", progress=False)
