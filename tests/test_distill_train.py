"""Few-step generation from the command line (diffjax/run/_distill.py, config.distill): the train step's loss is the
distillation objective itself (pd_loss / cd_loss / ct_loss on the same batch and key, with networks built by hand
here), progressive distillation resumes exactly mid-round, the distilled samplers use the distilled step counts,
the CLI path loads a trained teacher, and bad distill.* values fail before anything is compiled."""
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
from configs import toy_ring
from diffjax import config_lib as cl
from diffjax import distill
from diffjax import main as dmain
from diffjax import run as dr
from diffjax import train as tr
from diffjax.nets import make_score_fn

RING = dj.ring_mixture()


def _config(method="progressive", **distill_fields):
    cfg = toy_ring.get_config()
    t = cfg.training
    t.batch_size = 64
    t.n_iters = 2
    t.n_jitted_steps = 1
    t.multi_step = "unroll"
    t.log_freq = 1
    t.checkpoint_freq = t.snapshot_freq = 2
    t.snapshot_freq_for_preemption = 0
    t.snapshot_sampling = False
    cfg.model.overrides.hidden = (16, 16)
    cfg.model.ema_rate = 0.5
    cfg.model.sigma_data = 2.85
    cfg.optim.warmup = 0
    cfg.optim.lr = 1e-2
    s = cfg.sampling
    s.final_num_samples = 0
    s.num_samples = s.batch_size = 32
    d = cfg.distill
    d.method = method
    d.start_steps, d.final_steps, d.steps_per_round = 4, 1, 2
    d.num_scales, d.s0, d.s1 = 6, 4, 16
    for k, v in distill_fields.items():
        d[k] = v
    return cfg


def _exact_score(sde):
    return dj.mixture_score_fn(RING, sde)


def _finite(tree):
    for leaf in jax.tree.leaves(tree):
        assert np.all(np.isfinite(np.asarray(leaf)))


def _one_step(dist, state, x):
    """The real jitted, sharded step on one batch; returns (new state, loss)."""
    new, metrics = dist.train_steps(0)(state, tr.global_batch({"x": x[None]}, dist.run.mesh))
    return new, float(metrics["loss"][0])


def _step_key(state):
    """The loss key of make_train_step + Distiller.loss_fn: split(split(fold_in(key, step))[0])[0]."""
    key = jax.random.fold_in(jax.random.wrap_key_data(state.train.key), state.train.step)
    return jax.random.split(jax.random.split(key)[0])[0]


def _raw(model, params):
    return lambda x_in, c_noise: model.apply({"params": params}, x_in, c_noise, train=False)


@pytest.mark.parametrize("method", ["progressive", "consistency_distillation", "consistency_training"])
def test_train_step_loss_is_the_distillation_objective(tmp_path, method):
    cfg = _config(method)
    cfg.training.n_jitted_steps = 1
    sde = cl.build_sde(cfg)
    score = _exact_score(sde)
    dist = dr.Distiller(cfg, str(tmp_path), teacher_score_fn=score)
    state = dist.fresh_state()
    x = jnp.asarray(RING.sample(jax.random.key(3), 64))
    params = jax.device_get(state.train.params)
    key = _step_key(state)
    model = cl.build_model(cfg)
    if method == "progressive":
        net_score = make_score_fn(model.apply, params, sde, parameterization="eps")
        student = lambda z, t: dj.x0_from_score(net_score(z, t), z, t, sde)  # noqa: E731
        teacher = lambda z, t: dj.x0_from_score(score(z, t), z, t, sde)  # noqa: E731
        want = jax.jit(lambda k, x: distill.pd_loss(k, x, student, teacher, sde, num_student_steps=2))(key, x)
    else:
        f = distill.consistency_fn(_raw(model, params), sde, sigma_data=2.85)
        if method == "consistency_distillation":
            want = jax.jit(lambda k, x: distill.cd_loss(
                k, x, f, f, score, sde, num_scales=6, ode_step=dj.samplers.ode_heun_step, metric=distill.pseudo_huber,
                weighting=distill.unit_weight))(key, x)
        else:
            want = jax.jit(lambda k, x: distill.ct_loss(
                k, x, f, sde, step=0, total_steps=2, s0=4, s1=16, p_mean=-1.1, p_std=2.0, metric=distill.pseudo_huber,
                weighting=distill.ict_weight))(key, x)
    new, loss = _one_step(dist, state, x)
    assert np.isfinite(loss) and np.isfinite(float(want))
    np.testing.assert_allclose(loss, float(want), rtol=2e-5)
    _finite(new.train.params)
    assert int(new.train.step) == 1
    moved = [float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(new.train.params),
                                                             jax.tree.leaves(params))]
    assert max(moved) > 0  # the loss reaches the student's parameters


def test_progressive_resume_mid_round_and_sample(tmp_path, monkeypatch):
    """Two rounds (4 -> 2 -> 1 student steps) of 2 steps each; a run stopped at step 3 (inside round 2, after the
    teacher switch) and restarted ends with the uninterrupted run's parameters, bit for bit; --mode sample draws
    pd_sample with 1 step from the final EMA student."""
    cfg = _config("progressive")
    sde = cl.build_sde(cfg)
    score = _exact_score(sde)
    full = dr.train_distill(cfg, str(tmp_path / "full"), progress=False, teacher_score_fn=score)
    assert int(full.step) == 4 and int(full.round) == 1
    _finite(full.train.params)

    class Stop(Exception):
        pass

    real_loop = tr.train_loop

    def stopping_loop(state, *args, num_steps, **kw):
        state = real_loop(state, *args, num_steps=min(num_steps, 3), **kw)
        if num_steps > 3:
            raise Stop
        return state

    monkeypatch.setattr(tr, "train_loop", stopping_loop)
    with pytest.raises(Stop):
        dr.train_distill(cfg, str(tmp_path / "resumed"), progress=False, teacher_score_fn=score)
    monkeypatch.setattr(tr, "train_loop", real_loop)
    resumed = dr.train_distill(cfg, str(tmp_path / "resumed"), progress=False, teacher_score_fn=score)
    assert int(resumed.step) == 4 and int(resumed.round) == 1
    chex.assert_trees_all_equal(jax.device_get(resumed.train.params), jax.device_get(full.train.params))
    chex.assert_trees_all_equal(jax.device_get(resumed.aux), jax.device_get(full.aux))
    # round 2's teacher is round 1's final EMA student, not the exact score
    assert jax.tree.structure(full.aux["teacher"]) == jax.tree.structure(full.train.params)
    lines = open(tmp_path / "resumed" / "metrics.jsonl").read().splitlines()
    assert [int(eval(ln)["step"]) for ln in lines] == [1, 2, 3, 4]

    x = dr.sample_distill(cfg, str(tmp_path / "full"), teacher_score_fn=score)
    assert x.shape == (32, 2) and np.all(np.isfinite(x))
    assert os.path.exists(tmp_path / "full" / "samples" / "samples_00000004.npz")
    # the same draw by hand: pd_sample with the final N = 1 step on the EMA student's x0
    model = cl.build_model(cfg)
    net_score = make_score_fn(model.apply, jax.device_get(full.train.ema_params), sde, parameterization="eps")
    k_prior, k_s = jax.random.split(jax.random.fold_in(jax.random.fold_in(jax.random.key(cfg.seed), 5), 0))
    want = jax.jit(lambda k, z: distill.pd_sample(k, z, lambda z, t: dj.x0_from_score(net_score(z, t), z, t, sde), sde,
                                                  num_steps=1))(k_s, sde.prior_sample(k_prior, (32, 2)))
    np.testing.assert_allclose(x, np.asarray(want), rtol=1e-4, atol=1e-4)


def test_cli_progressive_from_a_trained_teacher(tmp_path):
    """A teacher trained through run_mode, distilled through run_mode with distill.teacher_workdir: the student
    starts as the teacher's EMA network, and sample mode writes its samples."""
    teacher_cfg = _config("")
    teacher_dir = str(tmp_path / "teacher")
    teacher = dmain.run_mode(teacher_cfg, teacher_dir, "train", progress=False)
    cfg = _config("progressive", teacher_workdir=teacher_dir, start_steps=2, steps_per_round=2)
    dist = dr.Distiller(cfg, str(tmp_path / "student"))
    fresh = dist.fresh_state()
    chex.assert_trees_all_equal(jax.device_get(fresh.train.params), jax.device_get(teacher.ema_params))
    chex.assert_trees_all_equal(jax.device_get(fresh.aux["teacher"]), jax.device_get(teacher.ema_params))
    dist.run.checkpoints.close()
    state = dmain.run_mode(cfg, str(tmp_path / "student"), "train", progress=False)
    assert int(state.step) == 2
    _finite(state.train.params)
    x = dmain.run_mode(cfg, str(tmp_path / "student"), "sample")
    assert x.shape == (32, 2) and np.all(np.isfinite(x))
    assert os.path.exists(tmp_path / "student" / "samples" / "samples_00000002.png")
    cfg.distill.teacher_workdir = ""  # sampling the student never loads the teacher
    np.testing.assert_array_equal(dmain.run_mode(cfg, str(tmp_path / "student"), "sample"), x)


def test_cli_consistency_training_samples(tmp_path):
    """Consistency training through run_mode, then one-step sampling (= f(x_T, T) of the EMA model, by hand) and
    two-step sampling, finite and written to samples/."""
    cfg = _config("consistency_training")
    workdir = str(tmp_path / "ct")
    state = dmain.run_mode(cfg, workdir, "train", progress=False)
    assert int(state.step) == 2
    _finite(state.train.params)
    x = dmain.run_mode(cfg, workdir, "sample")
    assert x.shape == (32, 2) and np.all(np.isfinite(x))
    saved = np.load(os.path.join(workdir, "samples", "samples_00000002.npz"))["x"]
    np.testing.assert_array_equal(saved, x)
    sde = cl.build_sde(cfg)
    f = distill.consistency_fn(_raw(cl.build_model(cfg), jax.device_get(state.train.ema_params)), sde,
                               sigma_data=2.85)
    k_prior, _ = jax.random.split(jax.random.fold_in(jax.random.fold_in(jax.random.key(cfg.seed), 5), 0))
    want = jax.jit(f)(sde.prior_sample(k_prior, (32, 2)), sde.T)
    np.testing.assert_allclose(x, np.asarray(want), rtol=1e-4, atol=1e-4)
    cfg.distill.sample_steps = 2
    x2 = dmain.run_mode(cfg, workdir, "sample")
    assert x2.shape == (32, 2) and np.all(np.isfinite(x2))
    assert np.max(np.abs(x2 - x)) > 1e-3  # the second step re-noises and denoises again


@pytest.mark.parametrize("field, value, method", [
    ("method", "distillation", "progressive"),
    ("metric", "lpips", "consistency_training"),
    ("ode_step", "rk4", "consistency_distillation"),
    ("weighting", "snr", "consistency_training"),
    ("time_grid", "cosine", "progressive"),
    ("start_steps", 48, "progressive"),
    ("steps_per_round", 0, "progressive"),
    ("target_ema", 1.0, "consistency_distillation"),
    ("sample_steps", 0, "consistency_training"),
    ("s1", 2, "consistency_training"),
    ("teacher_workdir", "", "consistency_distillation"),
    ("num_scales", 1, "consistency_distillation"),
])
def test_bad_distill_values_raise_before_compiling(tmp_path, monkeypatch, field, value, method):
    cfg = _config(method, teacher_workdir=str(tmp_path / "nowhere"))
    cfg.distill[field] = value
    compiled = []
    monkeypatch.setattr(jax, "jit", lambda *a, **k: compiled.append(1))
    with pytest.raises(ValueError, match=f"distill.{field}"):
        dmain.run_mode(cfg, str(tmp_path / "w"), "train", progress=False)
    assert not compiled
    assert not os.path.exists(tmp_path / "w" / "checkpoints")


def test_distilled_run_rejects_the_diffusion_only_modes(tmp_path):
    cfg = _config("consistency_training")
    with pytest.raises(ValueError, match="distill.method='consistency_training' supports --mode train, sample and eval"):
        dmain.run_mode(cfg, str(tmp_path), "likelihood")


def test_progressive_round_restarts_the_emas(tmp_path):
    """Issue 35, item 3: a progressive round resets the EMA student (and the power EMAs) to the round's
    initialisation, and the EMA then is a fresh one: after k steps of round 2 it equals the EMA of the round's k
    parameter sets that the decay schedules give from update 0 (none of its weight on the initialisation). Before,
    the decay was evaluated at the global step, where the debiased EMA keeps ~rate^k of the initialisation."""
    spr, k = 20, 3
    cfg = _config("progressive", steps_per_round=spr)
    cfg.model.ema_rate = 0.9
    cfg.training.posthoc_ema_freq = 1  # the state tracks the power EMAs of model.posthoc_sigma_rels too
    dist = dr.Distiller(cfg, str(tmp_path), teacher_score_fn=_exact_score(cl.build_sde(cfg)))
    state = dist.fresh_state()
    # round 1 done (its last step is spr): enter round 2 the way train_distill does
    state = state.replace(train=state.train.replace(step=jnp.asarray(spr, jnp.int32)))
    state = dist.next_round(state, 1)
    init = jax.device_get(state.train.params)
    chex.assert_trees_all_equal(jax.device_get(state.train.ema_params), init)
    params = []
    for i in range(k):
        x = RING.sample(jax.random.key(10 + i), 64)
        state, _ = dist.train_steps(1)(state, tr.global_batch({"x": np.asarray(x)[None]}, dist.run.mesh))
        params.append(jax.device_get(state.train.params))
    assert int(state.train.step) == spr + k

    def fresh_ema(decay):
        ema = init
        for j, p in enumerate(params):
            ema = tr.ema_update(ema, p, decay(j))
        return ema

    from diffjax.train import ema as E
    want = fresh_ema(E.debiased_decay(0.9))
    # the weighted mean of the round's parameter sets (weights 0.9^(k-1-j), normalised): no initialisation in it
    w = np.array([0.9 ** (k - 1 - j) for j in range(k)])
    by_hand = jax.tree.map(lambda *ps: sum(wi * np.asarray(p) for wi, p in zip(w / w.sum(), ps)), *params)
    chex.assert_trees_all_close(want, by_hand, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(jax.device_get(state.train.ema_params), want, rtol=1e-5, atol=1e-6)
    for sigma_rel, phema in zip(cfg.model.posthoc_sigma_rels, state.train.phema):
        chex.assert_trees_all_close(jax.device_get(phema), fresh_ema(E.power_decay(sigma_rel)), rtol=1e-5,
                                    atol=1e-6)
