"""The CLI's evaluation modes: eval (resumable sample metrics), likelihood, stats; the feature classifier task."""
import json
import os
import shutil
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from configs import default, fashion_mnist_classifier, fashion_mnist_ddpm, tiny  # noqa: E402
from diffjax import main as dmain  # noqa: E402
from diffjax import run as drun  # noqa: E402
from diffjax.data import FASHION_MNIST_DIR  # noqa: E402
from _fast_compile import FAST_COMPILE  # noqa: E402

# the module-scoped fixture is built once: every test of this file runs on one pytest-xdist worker
# (`--dist loadgroup` in .ci/run)
pytestmark = pytest.mark.xdist_group("test_main_eval")

needs_fmnist = pytest.mark.skipif(not os.path.exists(os.path.join(FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz")),
                                  reason="Fashion-MNIST IDX files not installed (apt-get install dataset-fashion-mnist)")


def _lines(wd):
    return [json.loads(x) for x in open(os.path.join(wd, "metrics.jsonl"))]


def _finite(record, keys):
    return all(np.isfinite(record[k]) for k in keys)


def _short_training(cfg, steps=2):
    t = cfg.training
    t.n_iters, t.n_jitted_steps, t.log_freq = steps, 1, 1
    t.checkpoint_freq = t.snapshot_freq = t.snapshot_freq_for_preemption = steps
    t.snapshot_sampling = False
    cfg.sampling.final_num_samples = 0
    return cfg


@pytest.fixture(scope="module")
def toy_trained(tmp_path_factory):
    """The tiny config trained for 4 steps through main (train -> eval through main); the tests evaluate copies of
    it (:func:`_copy_of`: eval and likelihood write into the workdir), so no test sees another's files."""
    wd = str(tmp_path_factory.mktemp("toy_trained") / "toy")
    dmain.run_mode(_short_training(tiny.get_config(), steps=4), wd, "train", progress=False)
    return wd


def _copy_of(trained, tmp_path):
    wd = str(tmp_path / "toy")
    shutil.copytree(trained, wd)
    return wd


def test_eval_samples_are_keyed_by_the_sampler_settings(tmp_path, capsys, toy_trained):
    """Issue 35 item 1: a second --mode eval with another sampler draws its own samples (it reused the first one's
    and reported their metrics under the new label); the same settings resume from the files, which hold them."""
    cfg = _short_training(tiny.get_config(), steps=4)
    cfg.eval.num_samples, cfg.eval.batch_size = 16, 8
    wd = _copy_of(toy_trained, tmp_path)
    first = dmain.run_mode(cfg, wd, "eval", progress=False)
    assert first["num_reused"] == 0 and first["sampler"] == "euler_maruyama"
    cfg.sampling.method, cfg.sampling.num_steps = "ddim", 5
    second = dmain.run_mode(cfg, wd, "eval", progress=False)
    assert second["num_reused"] == 0 and second["sampler"] == "ddim" and second["nfe"] == 5
    assert second["energy_distance"] != first["energy_distance"] and second["mmd"] != first["mmd"]
    assert second["sampler_label"].startswith("ddim_5_") and second["sampler_label"] != first["sampler_label"]
    ev = os.path.join(wd, "eval")
    a, b = (np.concatenate([np.load(os.path.join(ev, f"samples_00000004_{r['sampler_label']}_{i:05d}.npz"))["x"]
                            for i in range(2)]) for r in (first, second))
    assert a.shape == b.shape == (16, 2) and not np.allclose(a, b)
    # each setting keeps its own metrics file, with the settings
    for r, method in ((first, "euler_maruyama"), (second, "ddim")):
        saved = json.load(open(os.path.join(ev, f"metrics_00000004_{r['sampler_label']}.json")))
        assert saved["energy_distance"] == r["energy_distance"]
        assert saved["settings"]["config"]["sampling"]["method"] == method
    # another option of the same sampler (eta) is another setting too; the same settings are reused
    cfg.sampling.options.eta = 1.0
    third = dmain.run_mode(cfg, wd, "eval", progress=False)
    assert third["num_reused"] == 0 and third["sampler_label"] not in (first["sampler_label"],
                                                                       second["sampler_label"])
    cfg.sampling.options.eta = None
    again = dmain.run_mode(cfg, wd, "eval", progress=False)
    assert again["num_reused"] == 16 and again["energy_distance"] == second["energy_distance"]
    # the stored settings are checked: a file with another setting's samples under this name is drawn again
    path = os.path.join(ev, f"samples_00000004_{second['sampler_label']}_00000.npz")
    with np.load(path) as z:
        settings = json.loads(str(z["settings"]))
    assert settings == drun.eval_settings(cfg, 4)
    settings["config"]["sampling"]["method"] = "euler_maruyama"
    np.savez(path, x=np.zeros((8, 2), np.float32), nfe=np.int32(5), settings=np.array(json.dumps(settings)))
    capsys.readouterr()
    again = dmain.run_mode(cfg, wd, "eval", progress=False)
    assert again["num_reused"] == 8 and again["energy_distance"] == second["energy_distance"]
    assert "holds samples of other settings" in capsys.readouterr().out


def test_eval_settings_hold_what_changes_the_samples():
    """The cache key covers the sampler, steps, t_eps, options, EMA choice, guidance, x0 control, seed and batch size,
    and leaves out counts and schedules that do not change the samples (so more samples resume from fewer)."""
    base = _short_training(tiny.get_config())
    key = drun.eval_label(base, drun.eval_settings(base, 2))
    assert key.startswith("euler_maruyama_10_")

    def label(field, value, step=2):
        cfg = _short_training(tiny.get_config())
        *parents, name = field.split(".")
        node = cfg
        for p in parents:
            node = node[p]
        node[name] = value
        return drun.eval_label(cfg, drun.eval_settings(cfg, step))

    for field, value in [("sampling.method", "ode_euler"), ("sampling.num_steps", 20), ("sampling.t_eps", 1e-2),
                         ("sampling.options.eta", 0.5), ("sampling.ema_sigma_rel", 0.1),
                         ("sampling.guidance_scale", 2.0), ("sampling.classifier_scale", 1.0),
                         ("sampling.clip_denoised", True), ("seed", 7), ("eval.batch_size", 7),
                         ("model.ema_rate", 0.5), ("training.sde", "vesde")]:
        assert label(field, value) != key, field
    assert drun.eval_label(base, drun.eval_settings(base, 4)) != key  # another checkpoint
    for field, value in [("eval.num_samples", 99), ("sampling.num_samples", 99), ("training.n_iters", 99),
                         ("training.log_freq", 99), ("optim.lr", 0.5), ("eval.kid_subsets", 3)]:
        assert label(field, value) == key, field


def test_toy_eval_and_likelihood(tmp_path, toy_trained):
    cfg = _short_training(tiny.get_config(), steps=4)
    cfg.eval.num_samples, cfg.eval.batch_size = 32, 16
    cfg.eval.bpd_num_examples, cfg.eval.bpd_batch_size, cfg.eval.bpd_num_repeats = 16, 16, 1
    cfg.eval.likelihood_trace, cfg.eval.likelihood_rtol, cfg.eval.likelihood_atol = "exact", 1e-3, 1e-3
    wd = _copy_of(toy_trained, tmp_path)
    rec = dmain.run_mode(cfg, wd, "eval", progress=False)
    assert rec["num_samples"] == 32 and _finite(rec, ["energy_distance", "mmd"])
    label = rec["sampler_label"]
    assert label.startswith("euler_maruyama_10_") and rec["nfe"] == 10
    assert sorted(os.listdir(os.path.join(wd, "eval"))) == [
        f"metrics_00000004_{label}.json", f"samples_00000004_{label}_00000.npz", f"samples_00000004_{label}_00001.npz"]
    rec = dmain.run_mode(cfg, wd, "likelihood")
    assert _finite(rec, ["nll_nats", "nfe_mean"]) and rec["num_examples"] == 16
    assert json.load(open(os.path.join(wd, "eval", "bpd_00000004.json")))["nll_nats"] == rec["nll_nats"]
    modes = [x.get("mode") for x in _lines(wd)]
    assert modes.count("eval") == 1 and modes.count("likelihood") == 1
    with pytest.raises(ValueError, match="toy dataset"):
        dmain.run_mode(cfg, wd, "stats")


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    """A feature classifier trained for a few steps on 2000 images (the real run trains for minutes)."""
    cfg = fashion_mnist_classifier.get_config()
    c = cfg.classifier
    c.num_train_examples, c.num_test_examples, c.epochs, c.log_every = 2000, 500, 1.0, 8
    wd = str(tmp_path_factory.mktemp("classifier"))
    dmain.run_mode(cfg, wd, "train")
    return wd


@needs_fmnist
def test_classifier_task_writes_params_and_accuracy(classifier_dir):
    assert os.path.isfile(os.path.join(classifier_dir, drun.CLASSIFIER_FILE))
    lines = _lines(classifier_dir)
    final = [x for x in lines if "test_accuracy" in x]
    assert len(final) == 1
    # the reported accuracy is that of the saved parameters on the first 500 test images, recomputed here, and
    # 16 steps already put it far above chance (0.1 for 10 classes)
    from diffjax.data import load_fashion_mnist
    from diffjax.eval import feature_classifier as fc
    params = fc.load_classifier_params(os.path.join(classifier_dir, drun.CLASSIFIER_FILE))
    images, labels = (a[:500] for a in load_fashion_mnist("test"))
    acc = float(np.mean(np.argmax(fc.classifier_logits(params, images), axis=-1) == labels))
    assert final[0]["test_accuracy"] == pytest.approx(acc, abs=1e-6)
    assert final[0]["test_accuracy"] > 0.4, final[0]
    assert final[0]["num_train_examples"] == 2000 and final[0]["step"] == 16  # ceil(2000 / 128)
    assert [x["step"] for x in lines if "classifier_loss" in x] == [8, 16]
    cfg = fashion_mnist_classifier.get_config()
    with pytest.raises(ValueError, match="supports --mode train only"):
        dmain.run_mode(cfg, classifier_dir, "eval")


def _tiny_image_config(classifier_dir):
    cfg = _short_training(fashion_mnist_ddpm.get_config())
    cfg.training.batch_size = 8
    cfg.model.overrides.update(dict(ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), dropout=0.0))
    cfg.model.num_scales = 40  # DDPM grid of vp_sde(0.1, 20, N=40): betas 0.0025 .. 0.5
    cfg.sampling.num_steps = 40
    e = cfg.eval
    e.classifier_workdir = classifier_dir
    e.num_samples, e.batch_size, e.reference_num_examples, e.feature_batch_size = 16, 8, 64, 16
    e.kid_subsets, e.kid_subset_size, e.score_splits = 10, 16, 2
    e.bpd_num_examples, e.bpd_batch_size, e.bpd_num_repeats = 4, 4, 1
    e.likelihood_rtol = e.likelihood_atol = 1e-2
    return cfg


def _fresh_state_fast(run):
    """``run.fresh_state()`` (the same program: the same initial state, bit for bit), compiled without XLA's
    backend optimisations: the UNet's init runs once, and the optimised compile took 17 s of this test, this 4 s."""
    import jax
    key = jax.random.key(run.config.seed)
    return jax.jit(run._create, out_shardings=run.shardings).lower(key).compile(compiler_options=FAST_COMPILE)(key)


@needs_fmnist
def test_image_eval_resumes_likelihood_and_stats(tmp_path, classifier_dir, capsys):
    cfg = _tiny_image_config(classifier_dir)
    wd = str(tmp_path / "img")
    # a checkpoint of the initial state at step 2 (compiling the UNet's train step on CPU takes over a minute;
    # train -> eval through main is covered by the toy test)
    run = drun.Run(cfg, wd, read_only=False)
    run.checkpoints.save(2, _fresh_state_fast(run))
    run.checkpoints.close()
    ref = dmain.run_mode(cfg, wd, "stats")
    assert int(ref["count"]) == 64 and ref["features"].shape == (64, 128)
    assert len(os.listdir(os.path.join(wd, "stats"))) == 1
    rec = dmain.run_mode(cfg, wd, "eval", progress=False)
    keys = ["frechet_distance", "kid", "classifier_score"]
    assert _finite(rec, keys) and rec["num_samples"] == 16 and rec["num_reused"] == 0
    assert "loaded from" in capsys.readouterr().out  # the reference statistics were cached by --mode stats
    ev, label = os.path.join(wd, "eval"), rec["sampler_label"]
    assert label.startswith("ancestral_40_") and rec["nfe"] == 40
    assert json.load(open(os.path.join(ev, f"metrics_00000002_{label}.json")))["frechet_distance"] == \
        rec["frechet_distance"]
    # an interrupted eval: batch 0 on disk (marked), batch 1 missing -> batch 0 is reused, batch 1 generated
    first = os.path.join(ev, f"samples_00000002_{label}_00000.npz")
    with np.load(first) as z:
        kept = {k: z[k] for k in ("nfe", "settings")}
    np.savez(first, x=np.zeros((8, 28, 28, 1), np.uint8), **kept)
    os.remove(os.path.join(ev, f"samples_00000002_{label}_00001.npz"))
    rec2 = dmain.run_mode(cfg, wd, "eval", progress=False)
    assert rec2["num_reused"] == 8 and _finite(rec2, keys)
    assert not np.load(first)["x"].any() and os.path.exists(os.path.join(ev, f"samples_00000002_{label}_00001.npz"))
    assert rec2["frechet_distance"] != rec["frechet_distance"]  # the marked batch was used, not regenerated
    # the recorded metrics are those of the samples on disk against the cached reference, recomputed here
    from diffjax.eval import feature_classifier as fc
    from diffjax.eval import metrics as M
    samples = np.concatenate([np.load(os.path.join(ev, f"samples_00000002_{label}_{i:05d}.npz"))["x"]
                              for i in range(2)])
    feats = fc.classifier_features(fc.load_classifier_params(os.path.join(classifier_dir, drun.CLASSIFIER_FILE)),
                                   samples)
    assert rec2["frechet_distance"] == pytest.approx(
        M.frechet_distance(*M.feature_statistics(feats), ref["mu"], ref["sigma"]), rel=1e-6)
    assert rec2["kid"] == pytest.approx(M.kernel_inception_distance(
        feats, ref["features"], num_subsets=10, subset_size=16, seed=cfg.seed)[0], rel=1e-6, abs=1e-9)
    # likelihood: probability-flow bits/dim and, for this DDPM config, the variational bound (x0 clipped, as in the
    # published evaluations); it bounds -log2 of a probability of discrete data, so it is > 0 bits/dim
    rec = dmain.run_mode(cfg, wd, "likelihood")
    assert _finite(rec, ["bpd", "vlb_bpd", "nfe_mean"]) and rec["num_examples"] == 4
    assert rec["vlb_clip_denoised"] is True and rec["vlb_bpd"] > 0
    assert os.path.exists(os.path.join(ev, "bpd_00000002.json"))
    assert [x.get("mode") for x in _lines(wd)].count("eval") == 2
    # any uint8 images against the cached reference (the first 64 test images): other real images (64 training
    # images) are far closer than a Gaussian-noise baseline by every metric, which a wrong implementation would miss
    from diffjax.data import load_fashion_mnist
    real = load_fashion_mnist("train")[0][:64]
    noise = np.clip(np.random.default_rng(0).normal(128, 64, (64, 28, 28, 1)), 0, 255).astype(np.uint8)
    out_real, out = drun.evaluate_images(cfg, wd, real), drun.evaluate_images(cfg, wd, noise)
    assert _finite(out, keys) and _finite(out_real, keys)
    assert 0 < out_real["frechet_distance"] < 0.2 * out["frechet_distance"], (out_real, out)
    assert out_real["kid"] < 0.1 * out["kid"], (out_real, out)
    assert out_real["classifier_score"] > out["classifier_score"] + 0.5, (out_real, out)
    with pytest.raises(ValueError, match=r"images_uint8 must be a uint8 array shaped \(N, 28, 28, 1\)"):
        drun.evaluate_images(cfg, wd, noise.astype(np.float32))


def test_bad_eval_settings_fail_fast(tmp_path):
    cfg = tiny.get_config()
    cfg.eval.feature_net = "vgg"
    with pytest.raises(ValueError, match=r"eval.feature_net='vgg' is not known; allowed values: "
                                         r"\['auto', 'classifier', 'inception'\]"):
        dmain.run_mode(cfg, str(tmp_path), "eval")
    cfg = default.get_config()  # CIFAR-10 32x32x3: auto -> inception, which needs weights
    assert drun.feature_net_name(cfg) == "inception"
    with pytest.raises(ValueError, match="eval.inception_weights"):
        drun.build_feature_net(cfg)
    cfg = fashion_mnist_ddpm.get_config()
    assert drun.feature_net_name(cfg) == "classifier"
    with pytest.raises(ValueError, match="eval.classifier_workdir"):
        drun.build_feature_net(cfg)
    cfg.task = "gan"
    with pytest.raises(ValueError, match=r"task='gan' is not known; allowed values: \['adapt', 'autoencoder', "
                                         r"'classifier', 'clip', 'diffusion', 'noisy_classifier'\]"):
        dmain.run_mode(cfg, str(tmp_path), "train")
    cfg = tiny.get_config()
    cfg.eval.likelihood_trace = "skilling"
    with pytest.raises(ValueError, match="eval.likelihood_trace='skilling'"):
        dmain.run_mode(cfg, str(tmp_path), "likelihood")
