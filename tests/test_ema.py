"""EMA schedules (warm-up / debiasing) and EDM2's post-hoc EMA reconstruction."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffjax import train as tr
from diffjax.train import ema as E


def _run(decay, params_seq, init):
    e = init
    out = []
    for k, p in enumerate(params_seq):
        e = E.ema_update(e, p, decay(k))
        out.append(np.asarray(e))
    return out


def test_warmup_decay_hand_computed_sequence():
    # min(0.9, (1+k)/(10+k)): 0.1, 2/11, 0.25, ...; a scalar "parameter" 0 -> 1, 2, 3
    seq = [jnp.float32(v) for v in (1.0, 2.0, 3.0)]
    got = _run(E.warmup_decay(0.9), seq, jnp.float32(0.0))
    e1 = 0.1 * 0.0 + 0.9 * 1.0
    e2 = 2 / 11 * e1 + 9 / 11 * 2.0
    e3 = 0.25 * e2 + 0.75 * 3.0
    np.testing.assert_allclose(got, [e1, e2, e3], rtol=1e-6)
    assert float(E.warmup_decay(0.9)(10_000)) == pytest.approx(0.9)


def test_power_warmup_decay_is_diffusers_ema_warmup_sequence():
    # diffusers EMAModel(use_ema_warmup=True, power=2/3, decay=0.9999).get_decay(n) at optimisation step n = k + 1:
    # 0 at n = 1, then 1 - n_minus_1_plus_1^(-2/3) = 1 - (1 + k)^(-2/3); written out for k = 0..3
    decay = E.power_warmup_decay(0.9999, 2 / 3)
    want = [0.0, 1 - 2 ** (-2 / 3), 1 - 3 ** (-2 / 3), 1 - 4 ** (-2 / 3)]
    got = [float(decay(k)) for k in range(4)]
    assert all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert float(decay(10**9)) == pytest.approx(0.9999)  # capped at the rate
    # the first update copies the parameters: no weight on the initialisation
    np.testing.assert_allclose(_run(decay, [jnp.float32(5.0)], jnp.float32(1e3)), [5.0])
    with pytest.raises(ValueError, match="power"):
        E.power_warmup_decay(0.99, -1.0)


def test_debiased_decay_equals_optax_debiased_ema_and_forgets_the_init():
    rng = np.random.default_rng(0)
    seq = [jnp.asarray(rng.normal(size=(5,)), jnp.float32) for _ in range(30)]
    init = jnp.full((5,), 1e3, jnp.float32)  # the "random initialisation": must carry no weight
    got = _run(E.debiased_decay(0.95), seq, init)
    ema = optax.ema(0.95, debias=True)
    state = ema.init(seq[0])
    for k, p in enumerate(seq):
        ref, state = ema.update(p, state)
        np.testing.assert_allclose(got[k], np.asarray(ref), rtol=2e-5, atol=2e-5)
    assert np.all(np.isfinite(got))
    # the closed form: weights r^(n-j) over the n updates, normalised
    w = 0.95 ** np.arange(29, -1, -1)
    np.testing.assert_allclose(got[-1], (w[:, None] * np.stack(seq)).sum(0) / w.sum(), rtol=2e-5)


def test_constant_decay_keeps_rate_to_the_n_of_the_init():
    got = _run(E.constant_decay(0.998), [jnp.float32(0.0)] * 1500, jnp.float32(1.0))
    np.testing.assert_allclose(got[-1], 0.998**1500, rtol=1e-3)  # the 5%


def test_sigma_rel_gamma_published_pairs():
    # EDM2 (Karras et al. 2024, Sec. 3.1): sigma_rel 0.05 <-> gamma 16.97, 0.10 <-> gamma 6.94
    assert E.sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=0.01)
    assert E.sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=0.01)
    for s in (0.01, 0.05, 0.1, 0.2):
        assert E.gamma_to_sigma_rel(E.sigma_rel_to_gamma(s)) == pytest.approx(s, rel=1e-9)
    with pytest.raises(ValueError, match="sigma_rel"):
        E.sigma_rel_to_gamma(0.3)


def _trajectory(n=1200, d=32, seed=0):
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.normal(size=(n, d)) * 0.05 + 0.01, axis=0)  # a drifting random walk


def _power_ema(theta, sigma_rel, every=None):
    decay = E.power_decay(sigma_rel)
    e, snaps = np.zeros(theta.shape[1]), []
    for k, p in enumerate(theta):
        b = float(decay(k))
        e = b * e + (1 - b) * p
        if every and (k + 1) % every == 0:
            snaps.append((k + 1, e.copy()))
    return e, snaps


def test_power_decay_profile_is_a_power_function():
    n, gamma = 400, E.sigma_rel_to_gamma(0.1)
    eye = np.eye(n)
    w, _ = _power_ema(eye, 0.1)  # the EMA of unit vectors is its weight per update
    tau = np.arange(1, n + 1)
    np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-9)
    # exactly: w_tau = (1 - beta_tau) prod_{s > tau} beta_s = (1 - (1 - 1/tau)^(g+1)) (tau/n)^(g+1)
    exact = (1 - (1 - 1 / tau) ** (gamma + 1)) * (tau / n) ** (gamma + 1)
    np.testing.assert_allclose(w, exact, rtol=1e-4, atol=1e-12)
    # ~ (g+1) tau^g / n^(g+1), EDM2's continuous profile, once tau >> g
    continuous = (gamma + 1) * tau**gamma / n ** (gamma + 1)
    np.testing.assert_allclose(w[n // 2:], continuous[n // 2:], rtol=0.02)


def test_posthoc_reconstruction_matches_directly_tracked_ema(tmp_path):
    theta = _trajectory()
    n = theta.shape[0]
    _, s1 = _power_ema(theta, 0.05, every=100)
    _, s2 = _power_ema(theta, 0.10, every=100)
    like = {"w": np.zeros(theta.shape[1], np.float32)}
    for (k, a), (_, b) in zip(s1, s2):
        E.save_posthoc_snapshot(str(tmp_path), k, (0.05, 0.10), ({"w": a}, {"w": b}))
    # inside the stored range the profiles are matched closely; outside it (0.15) less so (EDM2 Fig. 5)
    for sigma_rel, step, tol in ((0.08, n, 0.01), (0.065, 800, 0.02), (0.05, n, 0.01), (0.15, n, 0.05)):
        target, _ = _power_ema(theta[:step], sigma_rel)
        rec, info = E.posthoc_ema(str(tmp_path), like, sigma_rel, step=step)
        assert info["target_step"] == step and max(info["steps"]) <= step
        err = np.abs(rec["w"] - target).max()
        spread = np.abs(s1[step // 100 - 1][1] - s2[step // 100 - 1][1]).max()  # how different EMA lengths are
        assert np.all(np.isfinite(rec["w"])) and rec["w"].dtype == np.float32
        assert err < tol * spread, (sigma_rel, step, err, spread)
    # a wrong profile (the target's gamma swapped for another) is measurably worse: the check can fail
    wrong, _ = _power_ema(theta, 0.15)
    rec, _ = E.posthoc_ema(str(tmp_path), like, 0.08)
    assert np.abs(rec["w"] - wrong).max() > 10 * np.abs(rec["w"] - _power_ema(theta, 0.08)[0]).max()


def test_posthoc_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="no post-hoc EMA snapshots"):
        E.posthoc_ema(str(tmp_path), {"w": np.zeros(2)}, 0.1)
    E.save_posthoc_snapshot(str(tmp_path), 10, (0.05,), ({"w": np.zeros(2)},))
    with pytest.raises(ValueError, match="does not match the model"):
        E.posthoc_ema(str(tmp_path), {"v": np.zeros(2)}, 0.1)


def test_train_step_tracks_warmup_ema_and_power_emas():
    def loss_fn(params, key, batch):
        return jnp.mean((params["w"] - batch["x"]) ** 2), {}

    opt = optax.sgd(0.5)
    params = {"w": jnp.zeros((3,))}
    state = tr.TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                          opt_state=opt.init(params), key=jax.random.key_data(jax.random.key(0)),
                          phema=(params, params))
    step = jax.jit(tr.make_train_step(loss_fn, opt, ema_rate=E.warmup_decay(0.99), posthoc_sigma_rels=(0.05, 0.1)))
    seq, ema, ph = [], np.zeros(3), [np.zeros(3), np.zeros(3)]
    for k in range(5):
        state, _ = step(state, {"x": jnp.full((3,), float(k + 1))})
        p = np.asarray(state.params["w"])
        b = min(0.99, (1 + k) / (10 + k))
        ema = b * ema + (1 - b) * p
        for i, s in enumerate((0.05, 0.1)):
            bb = (1 - 1 / (k + 1)) ** (E.sigma_rel_to_gamma(s) + 1)
            ph[i] = bb * ph[i] + (1 - bb) * p
    np.testing.assert_allclose(np.asarray(state.ema_params["w"]), ema, rtol=1e-5)
    for i in range(2):
        np.testing.assert_allclose(np.asarray(state.phema[i]["w"]), ph[i], rtol=1e-5)
    assert np.all(np.isfinite(np.asarray(state.ema_params["w"])))
    with pytest.raises(ValueError, match="post-hoc EMAs"):
        jax.jit(tr.make_train_step(loss_fn, opt, posthoc_sigma_rels=(0.05,)))(state, {"x": jnp.ones((3,))})


def test_cli_writes_posthoc_snapshots_and_samples_a_reconstructed_ema(tmp_path):
    import os
    import sys
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from configs import tiny
    from diffjax import main as dmain
    from diffjax import run as drun

    cfg = tiny.get_config()
    cfg.training.posthoc_ema_freq = 2
    cfg.sampling.final_num_samples = 0
    cfg.training.snapshot_sampling = False
    wd = str(tmp_path / "run")
    dmain.run_mode(cfg, wd, "train", progress=False)
    snaps = E.list_posthoc_snapshots(os.path.join(wd, "posthoc_ema"))
    assert [s for s, _ in snaps] == [2, 4, 6, 8]
    run = drun.Run(cfg, wd)
    state, step = run.restore()
    assert step == 8 and len(state.phema) == 2
    # the reconstruction of a tracked length at a snapshot step is that snapshot: the stored EMA itself
    rec, info = E.posthoc_ema(run.posthoc_dir, state.ema_params, 0.05)
    for a, b in zip(jax.tree.leaves(rec), jax.tree.leaves(state.phema[0])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    assert np.abs(info["weights"]).max() < 1.0 + 1e-6
    cfg.sampling.ema_sigma_rel = 0.08
    x = dmain.run_mode(cfg, wd, "sample", progress=False)
    assert x.shape == (32, 2) and np.all(np.isfinite(x))
    cfg.sampling.ema_sigma_rel = 0.0
    x0 = dmain.run_mode(cfg, wd, "sample", progress=False)
    assert not np.allclose(x, x0)  # a different EMA gives different samples from the same seed


def test_config_rejects_bad_ema_settings():
    import os
    import sys
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from configs import tiny
    from diffjax import config_lib

    for field, value, match in (("model.ema_schedule", "linear", "ema_schedule"),
                                ("model.ema_rate", 1.0, "ema_rate"),
                                ("training.posthoc_ema_freq", 3, "posthoc_ema_freq"),
                                ("sampling.ema_sigma_rel", 0.1, "posthoc_ema_freq"),
                                ("model.posthoc_sigma_rels", (0.05, 0.5), "sigma_rel"),
                                ("model.ema_power", -0.5, "ema_power")):
        cfg = tiny.get_config()
        if field == "model.ema_power":
            cfg.model.ema_schedule = "power_warmup"
        if field == "model.posthoc_sigma_rels":
            cfg.training.posthoc_ema_freq = 2
        section, name = field.split(".")
        cfg[section][name] = value
        with pytest.raises(ValueError, match=match):
            config_lib.validate(cfg, device_count=1)
