"""Flow maps from the command line (distill.method meanflow | shortcut | scm): the train step's loss is the objective
itself (meanflow_loss / shortcut_loss of the FlowMapNet, scm_loss of the TrigFlow network, with the Distiller's time
labels), training resumes exactly, --mode sample jumps 1 or 2 times, --mode eval scores the student on the ring, and
bad settings fail in one line before anything is compiled."""
import os
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import diffjax as dj  # noqa: E402
from diffjax import config_lib as cl  # noqa: E402
from diffjax import distill  # noqa: E402
from diffjax import main as dmain  # noqa: E402
from diffjax import run as dr  # noqa: E402
from test_distill_train import _config, _finite, _one_step, _step_key  # noqa: E402

pytestmark = pytest.mark.xdist_group("test_flow_map_cli")
RING = dj.ring_mixture()


def _flow_config(method, **fields):
    cfg = _config(method, **fields)
    t = cfg.training
    t.sde, t.continuous, t.loss, t.weighting = "rectified_flow", True, "dsm", "flow_matching"
    cfg.model.parameterization, cfg.model.time_input = "velocity", ""
    t.n_iters, t.checkpoint_freq = 4, 2
    cfg.distill.time_sampling = "uniform"
    return cfg


@pytest.mark.parametrize("method", ["meanflow", "shortcut"])
def test_train_step_loss_is_the_flow_map_objective(tmp_path, method):
    cfg = _flow_config(method)
    sde = cl.build_sde(cfg)
    dist = dr.Distiller(cfg, str(tmp_path))
    state = dist.fresh_state()
    x = jnp.asarray(RING.sample(jax.random.key(3), 64))
    params = jax.device_get(state.train.params)
    model = cl.build_model(cfg)
    assert isinstance(model, dj.nets.FlowMapNet)
    c = 50.0 / sde.T  # distill.time_label_scale / T

    def u(z, t, s):
        return model.apply({"params": params}, z, c * t, c * (t - s), train=False)

    if method == "meanflow":
        fn = lambda k, x: distill.meanflow_loss(u, sde, k, x, time_sampler=distill.uniform_two_times,  # noqa: E731
                                                power=1.0)[0]
    else:
        fn = lambda k, x: distill.shortcut_loss(u, sde, k, x, levels=7)[0]  # noqa: E731
    want = jax.jit(fn)(_step_key(state), x)
    new, loss = _one_step(dist, state, x)
    assert np.isfinite(loss) and np.isfinite(float(want))
    np.testing.assert_allclose(loss, float(want), rtol=2e-5)
    _finite(new.train.params)
    moved = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(new.train.params),
                                                                jax.tree.leaves(params)))
    assert moved > 0


def test_meanflow_resumes_exactly_and_samples_in_one_and_two_jumps(tmp_path, monkeypatch):
    from diffjax import train as tr
    cfg = _flow_config("meanflow")
    full = dr.train_distill(cfg, str(tmp_path / "full"), progress=False)

    class Stop(Exception):
        pass

    real_loop = tr.train_loop

    def stopping_loop(state, *args, num_steps, **kw):
        state = real_loop(state, *args, num_steps=min(num_steps, 2), **kw)
        if num_steps > 2:
            raise Stop
        return state

    monkeypatch.setattr(tr, "train_loop", stopping_loop)
    with pytest.raises(Stop):
        dr.train_distill(cfg, str(tmp_path / "resumed"), progress=False)
    monkeypatch.setattr(tr, "train_loop", real_loop)
    resumed = dr.train_distill(cfg, str(tmp_path / "resumed"), progress=False)
    assert int(resumed.step) == 4
    chex.assert_trees_all_equal(jax.device_get(resumed.train.params), jax.device_get(full.train.params))
    _finite(full.train.params)
    outs = {}
    for k in (1, 2):
        cfg.distill.sample_steps = k
        outs[k] = np.asarray(dmain.run_mode(cfg, str(tmp_path / "full"), "sample", progress=False))
        assert outs[k].shape == (32, 2) and np.isfinite(outs[k]).all()
    assert not np.allclose(outs[1], outs[2])


@pytest.mark.parametrize("field,value,match", [
    ("sample_steps", 3, "off the shortcut's grid"),
    ("shortcut_levels", 0, "distill.shortcut_levels"),
    ("time_label_scale", 0.0, "distill.time_label_scale"),
])
def test_bad_flow_map_settings_are_one_line_errors(tmp_path, field, value, match):
    cfg = _flow_config("shortcut")
    cfg.distill[field] = value
    with pytest.raises(ValueError, match=match):
        dmain.run_mode(cfg, str(tmp_path), "train", progress=False)


def test_bad_time_sampling_is_refused(tmp_path):
    cfg = _flow_config("meanflow")
    cfg.distill.time_sampling = "beta"
    with pytest.raises(ValueError, match="distill.time_sampling"):
        dmain.run_mode(cfg, str(tmp_path), "train", progress=False)


def _scm_config(**fields):
    cfg = _config("scm", p_mean=0.74, p_std=1.4, **fields)
    cfg.training.sde, cfg.training.continuous = "trigflow", True
    cfg.model.time_input = ""
    cfg.training.n_iters, cfg.training.checkpoint_freq = 4, 2
    return cfg


def test_scm_train_step_loss_is_scm_loss_and_eval_scores_the_student(tmp_path):
    cfg = _scm_config(tangent_warmup=8, time_label_scale=1.0)
    sde = cl.build_sde(cfg)
    assert isinstance(sde, dj.TrigFlow) and sde.sigma_data == 2.85
    dist = dr.Distiller(cfg, str(tmp_path / "w"))
    state = dist.fresh_state()
    x = jnp.asarray(RING.sample(jax.random.key(3), 64))
    params = jax.device_get(state.train.params)
    model = cl.build_model(cfg)

    def F(y, t):
        return model.apply({"params": params}, y, t / sde.T, train=False)

    step = int(jax.device_get(state.step))
    want = jax.jit(lambda k, x: distill.scm_loss(F, sde, k, x, p_mean=0.74, p_std=1.4, warmup=step / 8)[0])(
        _step_key(state), x)
    new, loss = _one_step(dist, state, x)
    assert np.isfinite(loss) and np.isfinite(float(want))
    np.testing.assert_allclose(loss, float(want), rtol=2e-5)
    _finite(new.train.params)
    dr.train_distill(cfg, str(tmp_path / "w"), progress=False)
    cfg.distill.sample_steps = 2
    cfg.sampling.final_num_samples = 64
    dmain.run_mode(cfg, str(tmp_path / "w"), "eval", progress=False)
    import json
    rows = [json.loads(line) for line in open(tmp_path / "w" / "metrics.jsonl")]
    last = rows[-1]
    assert last["final_samples"] == 64 and last["sampler"] == "2-step sCM consistency sampling"
    assert np.isfinite(last["energy_distance"])


@pytest.mark.parametrize("change,match", [
    ({"sde": "rectified_flow"}, "training.sde must be 'trigflow'"),
    ({"mid_time": 2.0}, "distill.mid_time"),
    ({"tangent_warmup": -1}, "distill.tangent_warmup"),
    ({"tangent_normalization": -0.1}, "distill.tangent_normalization"),
])
def test_bad_scm_settings_are_one_line_errors(tmp_path, change, match):
    cfg = _scm_config()
    for k, v in change.items():
        (cfg.training if k == "sde" else cfg.distill)[k] = v
    with pytest.raises(ValueError, match=match):
        dmain.run_mode(cfg, str(tmp_path), "train", progress=False)
    assert not os.path.exists(tmp_path / "checkpoints")


def test_eval_of_an_image_student_points_to_the_scorer(tmp_path):
    cfg = _flow_config("meanflow")
    cfg.data.dataset = "fashion_mnist"
    with pytest.raises(ValueError, match="--mode eval of a few-step student"):
        dr.evaluate_distill(cfg, str(tmp_path))


def test_scm_distillation_from_a_teacher_on_another_process(tmp_path):
    """sCD from a VP-trained teacher (through run_mode, its own config file): the Distiller keeps the teacher's
    process, and the train step's loss is scm_loss with trigflow_velocity of the teacher's score on VP."""
    teacher_dir = str(tmp_path / "teacher")
    dmain.run_mode(_config(""), teacher_dir, "train", progress=False)
    teacher_file = tmp_path / "teacher_config.py"
    teacher_file.write_text(f"import sys\nsys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})\n"
                            "from test_distill_train import _config\n\n\ndef get_config():\n    return _config('')\n")
    cfg = _scm_config(time_label_scale=1.0, teacher_workdir=teacher_dir, teacher_config=str(teacher_file))
    cfg.distill.method = "scm_distillation"
    dist = dr.Distiller(cfg, str(tmp_path / "student"))
    vp = cl.build_sde(_config(""))
    assert dist.teacher_process == vp and dist.sde != vp
    state = dist.fresh_state()
    x = jnp.asarray(RING.sample(jax.random.key(3), 64))
    params, teacher = jax.device_get(state.train.params), jax.device_get(state.aux["teacher"])
    model, sde = cl.build_model(cfg), dist.sde

    def F(y, t):
        return model.apply({"params": params}, y, t / sde.T, train=False)

    velocity = distill.trigflow_velocity(dist.teacher_score(teacher), vp, sde.sigma_data)
    want = jax.jit(lambda k, x: distill.scm_loss(F, sde, k, x, p_mean=0.74, p_std=1.4, velocity_fn=velocity)[0])(
        _step_key(state), x)
    no_teacher = jax.jit(lambda k, x: distill.scm_loss(F, sde, k, x, p_mean=0.74, p_std=1.4)[0])(_step_key(state), x)
    new, loss = _one_step(dist, state, x)
    dist.run.checkpoints.close()
    assert np.isfinite(loss) and np.isfinite(float(want))
    np.testing.assert_allclose(loss, float(want), rtol=2e-5)
    assert abs(float(no_teacher) - float(want)) > 1e-4 * abs(float(want))  # the teacher's velocity is in the loss
    state = dmain.run_mode(cfg, str(tmp_path / "student"), "train", progress=False)
    assert int(state.step) == 4
    _finite(state.train.params)


def test_scm_distillation_tunes_the_teachers_own_network(tmp_path):
    """distill.tune_teacher: the student starts as the VP teacher's weights, its F is the teacher network's velocity
    converted to TrigFlow (at step 0 exactly the teacher's: F = v / sigma_d), the loss is scm_loss of that F, and
    --mode sample needs only the teacher's config, not its run."""
    teacher_dir = str(tmp_path / "teacher")
    teacher = dmain.run_mode(_config(""), teacher_dir, "train", progress=False)
    teacher_file = tmp_path / "teacher_config.py"
    teacher_file.write_text(f"import sys\nsys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})\n"
                            "from test_distill_train import _config\n\n\ndef get_config():\n    return _config('')\n")
    cfg = _scm_config(teacher_workdir=teacher_dir, teacher_config=str(teacher_file), tune_teacher=True)
    cfg.distill.method = "scm_distillation"
    dist = dr.Distiller(cfg, str(tmp_path / "student"))
    state = dist.fresh_state()
    chex.assert_trees_all_equal(jax.device_get(state.train.params), jax.device_get(teacher.ema_params))
    sde, vp = dist.sde, dist.teacher_process
    sd = float(sde.sigma_data)
    x = jnp.asarray(RING.sample(jax.random.key(3), 64))
    params = jax.device_get(state.train.params)
    teacher_v = distill.trigflow_velocity(dist.teacher_score(params), vp, sd)

    def F(y, t):
        return teacher_v(sd * y, t) / sd

    t = jnp.linspace(0.1, 1.4, 64)
    np.testing.assert_allclose(dist.method._network(dist, sde, params)(x / sd, t), F(x / sd, t), rtol=1e-5, atol=1e-6)
    want = jax.jit(lambda k, x: distill.scm_loss(F, sde, k, x, p_mean=0.74, p_std=1.4, velocity_fn=teacher_v)[0])(
        _step_key(state), x)
    new, loss = _one_step(dist, state, x)
    dist.run.checkpoints.close()
    assert np.isfinite(loss) and np.isfinite(float(want))
    np.testing.assert_allclose(loss, float(want), rtol=2e-5)
    state = dmain.run_mode(cfg, str(tmp_path / "student"), "train", progress=False)
    moved = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(state.train.params),
                                                                jax.tree.leaves(params)))
    assert int(state.step) == 4 and moved > 0
    cfg.distill.teacher_workdir = ""  # sampling needs the teacher's config, not its run
    out = np.asarray(dmain.run_mode(cfg, str(tmp_path / "student"), "sample", progress=False))
    assert out.shape == (32, 2) and np.isfinite(out).all()
    with pytest.raises(ValueError, match="distill.tune_teacher=True tunes the teacher's own network"):
        dr.Distiller(cfg, str(tmp_path / "other"), teacher_score_fn=lambda x, t: -x)
