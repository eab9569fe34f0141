"""Issue 37's config helper: config_lib as a package of small files, configs/ free of library imports, the few-step
methods as objects chosen once, guidance transforms that keep a learned variance, one validation per config."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import diffjax as dj  # noqa: E402
from configs import default, tiny, toy_ring  # noqa: E402
from diffjax import config_lib, distill  # noqa: E402
from diffjax import main as dmain  # noqa: E402
from diffjax.config_lib import _validate  # noqa: E402


def test_config_lib_is_a_package_of_small_files():
    folder = os.path.dirname(config_lib.__file__)
    assert os.path.basename(config_lib.__file__) == "__init__.py"
    for name in os.listdir(folder):
        if name.endswith(".py"):
            with open(os.path.join(folder, name)) as f:
                assert len(f.read().splitlines()) <= 300, name
    for name in config_lib.__all__:
        assert hasattr(config_lib, name), name


def test_configs_do_not_import_the_library():
    code = "import sys; from configs import default; default.get_config(); print(sorted(m for m in sys.modules " \
           "if m.split('.')[0] == 'diffjax'))"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]"


def test_the_config_declares_the_samplers_options_as_their_signatures_do():
    for method in config_lib.SAMPLERS:
        assert default.SAMPLER_OPTIONS[method] == config_lib.sampler_options(method), method
    assert set(default.SAMPLER_OPTIONS) == set(config_lib.SAMPLERS)
    options = default.get_config().sampling.options
    reference = config_lib.sampler_options_config()
    assert options.to_dict() == reference.to_dict()
    assert all(options.get_type(k) is reference.get_type(k) for k in reference.keys())


def test_pc_corrector_name_is_resolved_in_config_lib():
    cfg = tiny.get_config()
    cfg.sampling.method = "pc"
    cfg.sampling.options.corrector = "langevin"
    assert config_lib.build_sampler(cfg).keywords["corrector"] == config_lib.CORRECTORS["langevin"]
    cfg.sampling.options.corrector = "langevn"
    with pytest.raises(ValueError, match=r"sampling.options.corrector must be one of \('langevin',\), got 'langevn'"):
        config_lib.build_sampler(cfg)


@pytest.mark.parametrize("name, cls", [("progressive", distill.ProgressiveDistillation),
                                       ("consistency_distillation", distill.ConsistencyDistillation),
                                       ("consistency_training", distill.ConsistencyTraining)])
def test_distill_method_is_chosen_once_as_an_object(name, cls):
    cfg = toy_ring.get_config()
    cfg.distill.method = name
    method = config_lib.distill_method(cfg)
    assert type(method) is cls and method.name == name
    assert isinstance(method, distill.DistillMethod)
    hash(method)  # frozen: a static value
    assert method.needs_teacher == (name != "consistency_training")
    assert method.round_end(method.rounds - 1) == method.total_steps == config_lib.distill_total_steps(cfg)
    method.check(config_lib.build_sde(cfg), jax.ShapeDtypeStruct((2, 2), jnp.float32))
    cfg.distill.method = ""
    assert config_lib.distill_method(cfg) is None


def test_progressive_rounds_and_consistency_training_schedule():
    cfg = toy_ring.get_config()
    cfg.distill.method, cfg.distill.start_steps, cfg.distill.steps_per_round = "progressive", 8, 200
    p = config_lib.distill_method(cfg)
    assert p.rounds == 3 and [p.num_student_steps(r) for r in range(3)] == [4, 2, 1]
    assert [(p.round_start(r), p.round_end(r)) for r in range(3)] == [(0, 200), (200, 400), (400, 600)]
    assert not p.length_sets_schedule
    cfg.distill.method = "consistency_training"
    assert config_lib.distill_method(cfg).length_sets_schedule  # distill.total_steps = 0: training.n_iters
    cfg.distill.total_steps = 100
    assert not config_lib.distill_method(cfg).length_sets_schedule


def _cond_lv(x, t, y):
    """A conditional learned-variance model: (score, v), both depending on the label."""
    y = jnp.asarray(y, x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
    return -x * (1.0 + y) * t, jnp.tanh(x + y)


def test_guidance_transforms_keep_a_learned_variance():
    cond = dj.LearnedVarianceScore(_cond_lv)
    x = jax.random.normal(jax.random.key(0), (4, 3))
    t, y, w = jnp.float32(0.5), jnp.array([0, 1, 2, 1]), 2.0
    guided = dj.classifier_free_guidance(cond, guidance_scale=w, null_label=3)
    assert dj.has_learned_variance(guided)
    s, v = guided.score_and_v(x, t, y)
    want = (1 + w) * _cond_lv(x, t, y)[0] - w * _cond_lv(x, t, jnp.full_like(y, 3))[0]
    np.testing.assert_allclose(s, want, rtol=1e-6)
    np.testing.assert_array_equal(v, _cond_lv(x, t, y)[1])  # the conditional model's v (GLIDE)
    bound = dj.with_label(guided, y)
    assert dj.has_learned_variance(bound)
    np.testing.assert_array_equal(bound(x, t), s)
    np.testing.assert_array_equal(bound.score_and_v(x, t)[1], v)
    logits = lambda x, t: jnp.stack([x[:, 0], -x[:, 0]], axis=-1)  # noqa: E731
    cg = dj.with_label(dj.classifier_guidance(dj.with_label(cond, y), logits, scale=1.5), 0)
    s_cg, v_cg = cg.score_and_v(x, t)
    plain = dj.with_label(dj.classifier_guidance(lambda x, t: _cond_lv(x, t, y)[0], logits, scale=1.5), 0)
    assert not dj.has_learned_variance(plain)
    np.testing.assert_allclose(s_cg, plain(x, t), rtol=1e-6)
    np.testing.assert_array_equal(v_cg, _cond_lv(x, t, y)[1])


def test_a_config_is_validated_once_on_a_path(tmp_path, monkeypatch):
    calls = []
    real = _validate._validate
    monkeypatch.setattr(_validate, "_validate", lambda config, count: (calls.append(1), real(config, count)))
    cfg = tiny.get_config()
    config_lib.validate(cfg)
    config_lib.validate(cfg)
    assert len(calls) == 1
    cfg.sampling.num_steps = 7  # a changed config is checked again
    config_lib.validate(cfg)
    assert len(calls) == 2
    other = tiny.get_config()  # an equal config object: checked (it may hold other functions)
    config_lib.validate(other)
    assert len(calls) == 3
    calls.clear()
    with pytest.raises(ValueError, match="--mode eval needs a checkpoint"):
        dmain.run_mode(cfg, str(tmp_path), "eval")  # main, evaluate and Run all check it: validated once
    assert len(calls) == 0  # this config object was validated above, unchanged since
    fresh = tiny.get_config()
    with pytest.raises(ValueError, match="--mode eval needs a checkpoint"):
        dmain.run_mode(fresh, str(tmp_path), "eval")
    assert len(calls) == 1
