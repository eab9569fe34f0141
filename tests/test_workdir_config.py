"""A workdir belongs to one config (issue 35, items 2 and 9): training stores its config in WORKDIR/config.json and
a later training run with a config that changes the saved state (the network width, post-hoc EMAs on) is refused
with one line naming the fields, before anything is compiled, and the stored run's checkpoints and metrics stay as
they were; a checkpoint of another config is reported as such ("does not match this config"), not as damaged or
missing; read-only modes create nothing in the workdir."""
import json
import os
import shutil

import jax
import numpy as np
import pytest

from configs import tiny
from diffjax import main as dmain
from diffjax import run as dr
from diffjax import train as tr

# the module-scoped fixture is built once: every test of this file runs on one pytest-xdist worker
# (`--dist loadgroup` in .ci/run)
pytestmark = pytest.mark.xdist_group("test_workdir_config")

CONFIG_FILE = "config.json"


def _cfg():
    cfg = tiny.get_config()
    t = cfg.training
    t.n_iters, t.snapshot_sampling, t.snapshot_freq_for_preemption = 4, False, 0
    cfg.sampling.final_num_samples = 0
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("trained") / "run")
    dmain.run_mode(_cfg(), wd, "train", progress=False)
    return wd


@pytest.fixture
def workdir(trained, tmp_path):
    wd = str(tmp_path / "run")
    shutil.copytree(trained, wd)
    return wd


def _snapshot(wd):
    """Every file of the stored run (checkpoints, metrics) with its bytes."""
    out = {}
    for root, _, files in os.walk(wd):
        for f in files:
            p = os.path.join(root, f)
            if f != "train.lock":
                out[os.path.relpath(p, wd)] = open(p, "rb").read()
    return out


def _set(cfg, path, value):
    *parents, name = path.split(".")
    node = cfg
    for part in parents:
        node = node[part]
    node[name] = value


def _no_compile(monkeypatch):
    compiled = []
    monkeypatch.setattr(jax, "jit", lambda *a, **k: compiled.append(1))
    return compiled


@pytest.mark.parametrize("field, value", [("training.posthoc_ema_freq", 2), ("model.overrides.hidden", (64, 64)),
                                          ("optim.lr", 0.5), ("training.batch_size", 8)])
def test_training_on_a_workdir_of_another_config_is_refused_and_deletes_nothing(workdir, monkeypatch, field, value):
    before = _snapshot(workdir)
    cfg = _cfg()
    _set(cfg, field, value)
    compiled = _no_compile(monkeypatch)
    with pytest.raises(ValueError, match=rf"workdir {workdir} holds a run of another config: 1 field\(s\) differ from "
                                         rf".*config.json \(stored -> this config\): {field}: "):
        dmain.run_mode(cfg, workdir, "train", progress=False)
    assert not compiled
    assert _snapshot(workdir) == before
    assert json.load(open(os.path.join(workdir, CONFIG_FILE)))["model"]["overrides"]["hidden"] == [32, 32]


def test_a_workdir_without_config_json_is_protected_by_the_checkpoints_own_check(workdir):
    """A workdir of an older diffjax (no config.json): a checkpoint that does not restore under this config is named
    as another config's ("does not match"), not skipped as unreadable, and training stops instead of starting a new
    run over it. Its own config resumes and stores config.json then."""
    if os.path.exists(os.path.join(workdir, CONFIG_FILE)):
        os.remove(os.path.join(workdir, CONFIG_FILE))
    before = _snapshot(workdir)
    for change in ("posthoc", "width"):
        cfg = _cfg()
        if change == "posthoc":
            cfg.training.posthoc_ema_freq = 2
            match = r"arrays of this config missing from it \(e.g. phema/0/"
        else:
            cfg.model.overrides.hidden = (64, 64)
            match = r"arrays differ in shape or dtype \(e.g. params/dense0/Dense_0/bias: \[32\] float32 in the " \
                    r"checkpoint, \[64\] float32 in this config\)"
        with pytest.raises(ValueError, match=r"the periodic checkpoint at step 4 in .*checkpoints does not match "
                                             r"this config's train state: .*" + match):
            dmain.run_mode(cfg, workdir, "train", progress=False)
        assert _snapshot(workdir) == before
    cfg = _cfg()
    cfg.training.n_iters = 6  # a longer run, other sampler, other log frequency: the same run goes on
    cfg.sampling.method, cfg.training.log_freq = "ode_heun", 6
    state = dmain.run_mode(cfg, workdir, "train", progress=False)
    assert int(state.step) == 6
    stored = json.load(open(os.path.join(workdir, CONFIG_FILE)))
    assert stored["training"]["n_iters"] == 6 and stored["sampling"]["method"] == "ode_heun"


def test_sample_names_another_configs_checkpoints_and_damaged_ones(workdir):
    """--mode sample on checkpoints that do not restore under its config says why, instead of "none found"."""
    cfg = _cfg()
    cfg.model.overrides.hidden = (64, 64)
    with pytest.raises(ValueError, match=r"does not match this config's train state.*config.json differs from "
                                         r"this config in: model.overrides.hidden: \[32, 32\] -> \[64, 64\]"):
        dmain.run_mode(cfg, workdir, "sample")
    for root, _, files in os.walk(os.path.join(workdir, "checkpoints")):  # damage every array file
        for f in files:
            if root.endswith("/d"):
                with open(os.path.join(root, f), "r+b") as fh:
                    fh.truncate(7)
    with pytest.raises(ValueError, match=r"every checkpoint in .* is damaged \(periodic step 4; .*nothing was restored"):
        dmain.run_mode(_cfg(), workdir, "sample")
    with pytest.raises(ValueError, match=r"every checkpoint .* is damaged .*Move checkpoints/ and checkpoints-meta/ "
                                         r"away to start a new run there"):
        dmain.run_mode(_cfg(), workdir, "train", progress=False)
    assert os.listdir(os.path.join(workdir, "checkpoints")) == ["4"]


def test_distillation_and_classifier_runs_refuse_a_diffusion_workdir(workdir):
    before = _snapshot(workdir)
    cfg = _cfg()
    cfg.distill.method, cfg.distill.teacher_workdir = "progressive", workdir  # distilling into the teacher's workdir
    cfg.distill.start_steps, cfg.distill.steps_per_round = 4, 2
    with pytest.raises(ValueError, match=r"distill.method: \"\" -> \"progressive\""):
        dmain.run_mode(cfg, workdir, "train", progress=False)
    from configs import fashion_mnist_classifier
    with pytest.raises(ValueError, match=r"task: \"diffusion\" -> \"classifier\""):
        dmain.run_mode(fashion_mnist_classifier.get_config(), workdir, "train", progress=False)
    assert _snapshot(workdir) == before


def test_config_differences_allow_list():
    from diffjax.run import _workdir_config as wc
    cfg = _cfg()
    stored = json.loads(cfg.to_json_best_effort())

    def diffs(resume=True, **changes):
        c = _cfg()
        for path, v in changes.items():
            _set(c, path.replace("__", "."), v)
        return wc.config_differences(stored, json.loads(c.to_json_best_effort()), resume=resume)

    free = {"sampling__method": "ddim", "sampling__num_steps": 7, "eval__num_samples": 5, "training__log_freq": 4,
            "training__checkpoint_freq": 2, "training__snapshot_freq_for_preemption": 4, "training__checkpoint_keep": 9,
            "training__n_jitted_steps": 1, "training__snapshot_sampling": True, "training__n_iters": 100,
            "distributed__fsdp": 2, "data__data_dir": "/elsewhere", "distill__sample_steps": 3,
            "classifier__epochs": 9.0, "noisy_classifier__steps": 5}
    assert diffs(**free) == []
    assert diffs(training__n_iters=2) == []  # a run stopped earlier
    assert diffs(distill__method="consistency_training", training__n_iters=2) == [  # ... unless it sets iCT's
        'distill.method: "" -> "consistency_training"', "training.n_iters: 4 -> 2"]  # curriculum (total_steps=0)
    assert diffs(resume=False, seed=3) == []  # read-only modes: the seed
    assert diffs(seed=3) == ["seed: 42 -> 3"]
    assert diffs(training__posthoc_ema_freq=2) == ["training.posthoc_ema_freq: 0 -> 2"]
    assert diffs(model__ema_rate=0.5, optim__lr=0.1, training__batch_size=8) == [
        "model.ema_rate: 0.9 -> 0.5", "optim.lr: 0.001 -> 0.1", "training.batch_size: 16 -> 8"]
    assert diffs(model__overrides__hidden=(64, 64)) == ["model.overrides.hidden: [32, 32] -> [64, 64]"]
    c = _cfg()
    c.model.overrides.dropout = 0.1  # a key of the open-ended overrides on one side only differs too
    assert wc.config_differences(stored, json.loads(c.to_json_best_effort())) == ["model.overrides.dropout: unset -> 0.1"]
    newer = dict(stored, training=dict(stored["training"], some_new_field=1))  # a field of another diffjax version
    assert wc.config_differences(newer, stored) == []
    on = json.loads(_cfg().to_json_best_effort())
    on["training"]["posthoc_ema_freq"] = 2
    other_period = json.loads(json.dumps(on))
    other_period["training"]["posthoc_ema_freq"] = 4
    assert wc.config_differences(on, other_period) == []  # the period of the snapshots is free, not on/off


@pytest.mark.parametrize("mode", ["sample", "eval", "likelihood", "stats"])
def test_read_only_modes_create_nothing(tmp_path, mode):
    """Issue 35, item 9: on a missing or empty workdir every read-only mode fails with a clear message and creates
    no checkpoints/ (nor anything else)."""
    missing = str(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    want = r"has no reference statistics" if mode == "stats" else \
        rf"--mode {mode} needs a checkpoint in .*checkpoints or checkpoints-meta; none found"
    for wd in (missing, str(empty)):
        with pytest.raises(ValueError, match=want):
            dmain.run_mode(_cfg(), wd, mode, progress=False)
    assert not os.path.exists(missing)
    assert os.listdir(empty) == []


def test_distillation_creates_nothing_in_a_missing_teacher_workdir_or_a_sampled_one(tmp_path):
    teacher = tmp_path / "no_teacher"
    cfg = _cfg()
    cfg.distill.method, cfg.distill.teacher_workdir = "progressive", str(teacher)
    cfg.distill.start_steps, cfg.distill.steps_per_round = 4, 2
    with pytest.raises(ValueError, match=rf"distill.teacher_workdir='{teacher}' is not a directory"):
        dmain.run_mode(cfg, str(tmp_path / "student"), "train", progress=False)
    assert not teacher.exists()
    teacher.mkdir()
    with pytest.raises(ValueError, match=rf"distill.teacher_workdir='{teacher}' holds no checkpoint"):
        dmain.run_mode(cfg, str(tmp_path / "student2"), "train", progress=False)
    assert os.listdir(teacher) == []
    with pytest.raises(ValueError, match="--mode sample needs a checkpoint .* none found"):
        dmain.run_mode(cfg, str(tmp_path / "never_trained"), "sample")
    assert not (tmp_path / "never_trained").exists()


def test_checkpoints_read_only_refuses_to_save(tmp_path):
    ck = tr.Checkpoints(str(tmp_path / "w"), read_only=True)
    assert ck.all_steps() == [] and not (tmp_path / "w").exists()
    with pytest.raises(RuntimeError, match="read-only"):
        ck.save(1, {"a": np.zeros(2)})
    ck.close()
    assert not (tmp_path / "w").exists()
