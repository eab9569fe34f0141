"""The CLI: tiny config trains, checkpoints and samples; describe; bad configs fail fast; exact resume after
SIGKILL."""
import json
import os
import signal
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from configs import tiny  # noqa: E402
from diffjax import config_lib  # noqa: E402
from diffjax import run as drun  # noqa: E402

ENV = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "diffjax.main", "--config", "configs/tiny.py", "--noprogress",
                           *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)


def test_tiny_trains_checkpoints_and_samples(tmp_path):
    wd = str(tmp_path / "run")
    r = _cli("--workdir", wd)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [json.loads(x) for x in open(os.path.join(wd, "metrics.jsonl"))]
    assert [x["step"] for x in lines if "loss" in x] == [2, 4, 6, 8]
    assert all(np.isfinite(x["loss"]) for x in lines if "loss" in x)
    final = [x for x in lines if "energy_distance" in x]
    assert len(final) == 1 and np.isfinite(final[0]["energy_distance"])
    assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["4", "8"]
    assert os.listdir(os.path.join(wd, "checkpoints-meta")) == ["8"] or \
        sorted(os.listdir(os.path.join(wd, "checkpoints-meta"))) == ["6"]
    samples = os.listdir(os.path.join(wd, "samples"))
    assert {"iter_00000004.png", "iter_00000008.png", "final.npz", "final.png"} <= set(samples)
    x = np.load(os.path.join(wd, "samples", "final.npz"))["x"]
    assert x.shape == (64, 2) and np.all(np.isfinite(x))
    assert os.listdir(os.path.join(wd, "tensorboard"))
    # sample mode restores the EMA params; the same seed gives the same samples
    r = _cli("--workdir", wd, "--mode", "sample")
    assert r.returncode == 0, r.stderr[-3000:]
    s = np.load(os.path.join(wd, "samples", "samples_00000008_euler_maruyama_10.npz"))["x"]  # sampler and steps
    assert s.shape == (32, 2) and np.all(np.isfinite(s))
    assert os.path.exists(os.path.join(wd, "samples", "samples_00000008_euler_maruyama_10.png"))


def test_describe(capsys):
    cfg = tiny.get_config()
    drun.describe(cfg)
    out = capsys.readouterr().out
    model = config_lib.build_model(cfg)
    from diffjax.nets import abstract_init, count_params
    n = count_params(abstract_init(model, (1, 2))["params"])
    assert f"{n:,} parameters" in out and "toy_mlp" in out


@pytest.mark.parametrize("field,value,allowed", [
    ("training.sde", "vpsdee", "vesde"),
    ("sampling.method", "pcc", "euler_maruyama"),
    ("data.dataset", "cifar100", "fashion_mnist"),
    ("model.name", "unet9000", "ddpm_cifar10"),
    ("training.loss", "l1", "hybrid"),
])
def test_bad_names_list_allowed_values(field, value, allowed):
    cfg = tiny.get_config()
    section, name = field.split(".")
    cfg[section][name] = value
    with pytest.raises(ValueError, match=f"{field}={value!r}.*allowed values.*{allowed}"):
        config_lib.validate(cfg)


def test_batch_not_divisible_by_devices():
    cfg = tiny.get_config()
    cfg.training.batch_size = 12
    with pytest.raises(ValueError, match="divisible by the device count 8"):
        config_lib.validate(cfg)
    cfg.training.batch_size = 16
    cfg.training.log_freq = 3
    with pytest.raises(ValueError, match="n_jitted_steps"):
        config_lib.validate(cfg)


def test_cli_bad_config_fails_before_compiling(tmp_path):
    t0 = time.perf_counter()
    r = _cli("--workdir", str(tmp_path), "--config.training.sde=vpsd")
    assert r.returncode != 0
    assert f"training.sde='vpsd' is not known; allowed values: {sorted(config_lib.SDES)}" in r.stderr
    assert "'rectified_flow'" in r.stderr and "'edm'" in r.stderr
    assert not os.path.exists(tmp_path / "checkpoints")
    assert time.perf_counter() - t0 < 60


def _losses(wd):
    return [(x["step"], x["loss"]) for x in map(json.loads, open(os.path.join(wd, "metrics.jsonl"))) if "loss" in x]


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    over = ["--config.training.n_iters=40", "--config.training.snapshot_sampling=False",
            "--config.sampling.final_num_samples=0", "--config.training.checkpoint_freq=20"]
    killed = str(tmp_path / "killed")
    p = subprocess.Popen([sys.executable, "-m", "diffjax.main", "--config", "configs/tiny.py", "--noprogress",
                          "--workdir", killed, *over], cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    metrics = os.path.join(killed, "metrics.jsonl")
    deadline = time.time() + 240
    while time.time() < deadline and p.poll() is None:
        if os.path.exists(metrics) and sum(1 for _ in open(metrics)) >= 6:
            break
        time.sleep(0.05)
    assert p.poll() is None, "the run finished before it could be killed"
    p.send_signal(signal.SIGKILL)
    p.wait()
    at_kill = _losses(killed)
    assert 6 <= len(at_kill) < 20
    r = _cli("--workdir", killed, *over)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from step" in r.stdout
    # the killed run's lock died with it: the restart takes it over and says whose it was
    assert f"taking over the lock {os.path.join(killed, 'train.lock')} of a run that is no longer running: " \
        f"pid {p.pid}" in r.stdout
    # the uninterrupted run, in this process (same 8 devices, same program)
    cfg = tiny.get_config()
    cfg.training.n_iters, cfg.training.snapshot_sampling, cfg.training.checkpoint_freq = 40, False, 20
    cfg.sampling.final_num_samples = 0
    straight = str(tmp_path / "straight")
    state = drun.train(cfg, straight, progress=False)
    assert _losses(killed) == _losses(straight)
    assert [s for s, _ in _losses(killed)] == list(range(2, 41, 2))
    run = drun.Run(cfg, killed)
    resumed, step = run.restore()
    run.checkpoints.close()
    assert step == 40
    chex.assert_trees_all_equal(jax.device_get(resumed.params), jax.device_get(state.params))
    chex.assert_trees_all_equal(jax.device_get(resumed.ema_params), jax.device_get(state.ema_params))


def test_discrete_ddpm_model_uses_the_grid_marginal():
    """A DDPM model (eps on the discrete grid) gives a finite score at grid step 0, where the continuous VP
    marginal's std is 0: score = -eps / sqrt(1 - alpha_bar_0), alpha_bar_0 = 1 - beta_1 (regression: inf loss)."""
    from configs import fashion_mnist_ddpm
    cfg = fashion_mnist_ddpm.get_config()
    sde = config_lib.build_sde(cfg)
    eps = np.full((2, 28, 28, 1), 0.5, np.float32)
    apply_fn = lambda variables, x, labels, *, train: eps  # noqa: E731
    model = type("M", (), {"apply": staticmethod(apply_fn)})
    score = config_lib.build_score_fn(cfg, model, sde, {})(np.zeros_like(eps), np.zeros(2, np.float32))
    np.testing.assert_allclose(np.asarray(score), -0.5 / np.sqrt(1e-4), rtol=1e-4)
    cfg.training.continuous, cfg.training.loss = True, "dsm"  # continuous models keep the SDE's marginal
    score = config_lib.build_score_fn(cfg, model, sde, {})(np.zeros_like(eps), np.full(2, 0.5, np.float32))
    np.testing.assert_allclose(np.asarray(score), -0.5 / np.asarray(sde.marginal(np.float32(0.5))[1]), rtol=1e-4)


@pytest.mark.parametrize("changes, match", [
    (dict(guidance_scale=2.0), "needs a class-conditional model"),
    (dict(guidance_scale=-1.0), "guidance_scale must be a finite number >= 0"),
    (dict(clip_denoised=True), "not an image dataset"),
    (dict(dynamic_threshold=1.5), "dynamic_threshold must be 0"),
])
def test_bad_sampling_options(changes, match):
    cfg = tiny.get_config()
    for k, v in changes.items():
        cfg.sampling[k] = v
    with pytest.raises(ValueError, match=match):
        config_lib.validate(cfg)


def test_sampling_score_fn_guides_and_clips():
    """sampling.guidance_scale gives (1 + w) s(x, t, y) - w s(x, t, null) with null = num_classes;
    sampling.clip_denoised clips the implied x0 on the network's (grid) marginal."""
    import diffjax as dj
    from configs import fashion_mnist_ddpm
    cfg = fashion_mnist_ddpm.get_config()
    cfg.data.num_classes, cfg.training.label_dropout = 10, 0.1
    cfg.sampling.guidance_scale, cfg.sampling.clip_denoised = 1.5, False
    config_lib.validate(cfg, device_count=1)
    sde = config_lib.build_sde(cfg)

    def apply_fn(variables, x, labels, y, *, train):
        return 0.1 * x + 0.01 * np.asarray(y, x.dtype).reshape(-1, 1, 1, 1)

    model = type("M", (), {"apply": staticmethod(apply_fn)})
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (3, 28, 28, 1)))
    t = np.full(3, 0.5, np.float32)
    y = np.array([1, 4, 7])
    grid = config_lib.network_marginal(cfg, sde)
    s_of = lambda lab: dj.score_from_eps(apply_fn(None, x, None, lab, train=False), x, t, grid)  # noqa: E731
    expected = 2.5 * s_of(y) - 1.5 * s_of(np.full(3, 10))
    got = config_lib.build_sampling_score_fn(cfg, model, sde, {}, y=y)(x, t)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    cfg.sampling.clip_denoised = True
    clipped = config_lib.build_sampling_score_fn(cfg, model, sde, {}, y=y)(x, t)
    x0 = dj.x0_from_score(clipped, x, t, grid)
    np.testing.assert_allclose(x0, np.clip(dj.x0_from_score(expected, x, t, grid), -1, 1), rtol=1e-4, atol=1e-4)
    assert np.abs(dj.x0_from_score(expected, x, t, grid)).max() > 1.0
