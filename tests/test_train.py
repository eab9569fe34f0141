"""Training system: sharded step == single-device step, scan == repeated steps, EMA, NaN guard, corrupt
checkpoints, and two processes joined by jax.distributed."""
import functools
import json
import os
import socket
import subprocess
import sys
import tempfile

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import diffjax as dj
from diffjax import nets
from diffjax import train as tr

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SDE = dj.vp_sde()


MODEL = nets.toy_mlp(hidden=(32, 32), embedding_dim=16)
OPT = tr.make_optimizer(lr=1e-2, warmup=2)


def _loss_fn(params, key, batch):
    score_fn = nets.make_score_fn(MODEL.apply, params, SDE)
    return dj.dsm_loss(key, batch["x"], score_fn, SDE), {}


@functools.lru_cache(maxsize=None)
def _initial_state():
    return jax.device_get(tr.create_state(jax.random.key(0), MODEL, (1, 2), OPT))


def _setup(mesh, *, fsdp_min_size=2 ** 18):
    host = _initial_state()
    shardings = tr.state_shardings(mesh, host, fsdp_min_size=fsdp_min_size)
    state = jax.device_put(host, shardings)
    step = tr.make_train_step(_loss_fn, OPT, ema_rate=0.9)
    return state, step, shardings


def _batches(n, batch=16):
    return {"x": (4.0 * np.random.default_rng(7).standard_normal((n, batch, 2))).astype(np.float32)}


def _run(mesh, n_calls, per_call, unroll=True, dispatch=False, **kw):
    state, step, shardings = _setup(mesh, **kw)
    fn = (tr.dispatch_train_steps(step, mesh, shardings) if dispatch else
          tr.jit_train_step(tr.multi_step(step, unroll=unroll), mesh, shardings))
    data = _batches(n_calls * per_call)
    for i in range(n_calls):
        chunk = jax.tree.map(lambda a: a[i * per_call:(i + 1) * per_call], data)
        state, metrics = fn(state, tr.global_batch(chunk, mesh))
    return state, metrics


def test_sharded_step_equals_single_device():
    assert jax.device_count() == 8
    single, m1 = _run(tr.make_mesh(devices=jax.devices()[:1]), 3, 1)
    sharded, m8 = _run(tr.make_mesh(), 3, 1)
    fsdp, _ = _run(tr.make_mesh(fsdp=2), 3, 1, fsdp_min_size=64)
    assert int(sharded.step) == 3
    # the FSDP run really splits the big kernels over the "fsdp" axis
    specs = [a.sharding.spec for a in jax.tree.leaves(fsdp.params)]
    assert any("fsdp" in str(s) for s in specs), specs
    for other in (sharded, fsdp):
        chex.assert_trees_all_close(jax.device_get(other.params), jax.device_get(single.params), atol=1e-5, rtol=0)
        chex.assert_trees_all_close(jax.device_get(other.ema_params), jax.device_get(single.ema_params),
                                    atol=1e-5, rtol=0)
    np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
    # parameters moved (the test would not be vacuous with a zero learning rate)
    init, _, _ = _setup(tr.make_mesh(devices=jax.devices()[:1]))
    assert max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(single.params),
                                                          jax.tree.leaves(init.params))) > 1e-3


def test_scan_of_n_steps_equals_n_single_steps():
    mesh = tr.make_mesh(devices=jax.devices()[:1])
    one_by_one, m1 = _run(mesh, 4, 1)
    for kw in (dict(unroll=True), dict(unroll=False), dict(dispatch=True)):  # traced in turn, lax.scan, 4 dispatches
        scanned, m4 = _run(mesh, 1, 4, **kw)
        chex.assert_trees_all_close(jax.device_get(scanned.params), jax.device_get(one_by_one.params), atol=1e-6)
        chex.assert_shape(m4["loss"], (4,))
        assert np.isfinite(m4["loss"]).all()
        np.testing.assert_allclose(m4["loss"][-1], m1["loss"][-1], rtol=1e-5)
        assert int(scanned.step) == 4


def test_dispatched_steps_compile_once_and_keep_the_sharding():
    mesh = tr.make_mesh()  # 8 forced devices
    state, step, shardings = _setup(mesh)
    fn = tr.dispatch_train_steps(step, mesh, shardings)
    data = tr.global_batch(_batches(6), mesh)
    from jax._src import monitoring
    traced = []

    def listen(event, duration, **kw):
        if event in ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/backend_compile_duration"):
            traced.append(event)

    state, m = fn(state, jax.tree.map(lambda a: a[:3], data))
    monitoring.register_event_duration_secs_listener(listen)
    try:  # the second call of three more steps traces and compiles nothing (whatever the C++ fast path caches)
        state, m = fn(state, jax.tree.map(lambda a: a[3:], data))
    finally:
        monitoring.unregister_event_duration_listener(listen)
    assert traced == []
    assert fn.single._cache_size() <= 1
    assert int(state.step) == 6 and m["loss"].shape == (3,) and np.isfinite(m["loss"]).all()
    assert jax.tree.leaves(state.params)[0].sharding == jax.tree.leaves(shardings.params)[0]
    single, _ = _run(tr.make_mesh(devices=jax.devices()[:1]), 6, 1)
    chex.assert_trees_all_close(jax.device_get(state.params), jax.device_get(single.params), atol=1e-5, rtol=0)


def test_ema_and_optimizer_step_by_hand():
    mesh = tr.make_mesh(devices=jax.devices()[:1])
    state, step, _ = _setup(mesh)
    batch = jax.tree.map(lambda a: a[0], _batches(1))
    new, metrics = jax.jit(step)(state, batch)
    # the same step written out: grads of the loss at the step key, clipped Adam with warmup lr = 1e-2 * 1/2 ... at
    # optax count 0 the linear schedule gives 0, so the first update is zero and EMA = params
    chex.assert_trees_all_close(new.params, state.params)
    new2, _ = jax.jit(step)(new, batch)
    expect = jax.tree.map(lambda e, p: 0.9 * e + 0.1 * p, new.ema_params, new2.params)
    chex.assert_trees_all_close(new2.ema_params, expect, atol=1e-7)
    assert int(new2.step) == 2 and np.isfinite(float(metrics["loss"]))
    assert max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(new2.params),
                                                          jax.tree.leaves(new.params))) > 1e-4


def test_make_optimizer_warmup_and_clip():
    opt = tr.make_optimizer(lr=1.0, warmup=4, grad_clip=1.0)
    params = {"w": jnp.zeros(3)}
    s = opt.init(params)
    grads = {"w": jnp.array([30.0, 40.0, 0.0])}  # norm 50 -> clipped to 1
    lrs = []
    for _ in range(6):
        u, s = opt.update(grads, s, params)
        lrs.append(float(-u["w"][0]))
    # Adam's normalized step is ~1 for a constant gradient; the schedule scales it by min(k / 4, 1)
    np.testing.assert_allclose(lrs, [0.0, 0.25, 0.5, 0.75, 1.0, 1.0], atol=1e-4)
    with pytest.raises(ValueError, match="optimizer"):
        tr.make_optimizer(optimizer="sgdd")


def _adam_lrs(opt, n):
    params, grads = {"w": jnp.zeros(1)}, {"w": jnp.ones(1)}
    s, out = opt.init(params), []
    for _ in range(n):
        u, s = opt.update(grads, s, params)
        out.append(float(-u["w"][0]))  # Adam's step is ~1 for a constant gradient: the rate itself
    return np.array(out)


def test_lr_decays_follow_their_formulas():
    k = np.arange(12)
    cos = _adam_lrs(tr.make_optimizer(lr=2.0, warmup=2, grad_clip=0, decay=tr.cosine_decay(10, warmup=2, final=0.1)),
                    12)
    ramp = np.minimum(k / 2, 1.0)
    u = np.clip((k - 2) / 8, 0, 1)
    np.testing.assert_allclose(cos, 2.0 * ramp * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * u))), atol=1e-4)
    assert cos[10] == pytest.approx(0.2, abs=1e-4) and cos[2] == pytest.approx(2.0, abs=1e-4)
    inv = _adam_lrs(tr.make_optimizer(lr=1.0, warmup=0, grad_clip=0, decay=tr.inverse_sqrt_decay(4)), 12)
    np.testing.assert_allclose(inv, 1.0 / np.sqrt(np.maximum(k / 4, 1.0)), atol=1e-4)
    assert np.all(np.isfinite(cos)) and np.all(np.isfinite(inv))
    with pytest.raises(ValueError, match="warmup"):
        tr.cosine_decay(10, warmup=10)
    with pytest.raises(ValueError, match="ref_steps"):
        tr.inverse_sqrt_decay(0)
    with pytest.raises(ValueError, match="decay"):
        tr.make_optimizer(decay=0.5)


def test_label_dropout():
    y = jnp.arange(10000) % 10
    d = tr.drop_labels(jax.random.key(0), y, num_classes=10, rate=0.2)
    frac = float(jnp.mean(d == 10))
    assert 0.18 < frac < 0.22
    assert bool(jnp.all((d == y) | (d == 10)))
    with pytest.raises(ValueError, match="num_classes"):
        tr.make_train_step(lambda p, k, b: (0.0, {}), optax.adam(1e-3), label_dropout=0.1)


def _loop(workdir, loss_scale, num_steps, state=None):
    mesh = tr.make_mesh(devices=jax.devices()[:1])
    model = nets.toy_mlp(hidden=(8,), embedding_dim=8)
    opt = tr.make_optimizer(lr=1e-3, warmup=0)

    def loss_fn(params, key, batch):
        score_fn = nets.make_score_fn(model.apply, params, SDE)
        loss = dj.dsm_loss(key, batch["x"], score_fn, SDE)
        # non-finite from step 5 on (the step is folded into the key, so use a data flag)
        return loss * batch["scale"][0], {}

    create = lambda key: tr.create_state(key, model, (1, 2), opt)
    abstract = jax.eval_shape(create, jax.random.key(0))
    shardings = tr.state_shardings(mesh, abstract)
    if state is None:
        state = jax.jit(create, out_shardings=shardings)(jax.random.key(0))
    fn = tr.jit_train_step(tr.multi_step(tr.make_train_step(loss_fn, opt)), mesh, shardings)
    data = dj.data.ToyData("ring8", global_batch=8)

    def get(step, n):
        b = data.batches(step, n)
        b["scale"] = np.stack([np.full(8, loss_scale(s), np.float32) for s in range(step + 1, step + n + 1)])
        return tr.global_batch(b, mesh)

    ck = tr.Checkpoints(workdir, keep=3)
    try:
        out = tr.train_loop(state, fn, get, workdir=workdir, num_steps=num_steps, steps_per_call=1, log_freq=2,
                            checkpoint_freq=2, preemption_freq=0, checkpoints=ck, progress=False)
    finally:
        ck.close()
    return out, tr.abstract_with_shardings(abstract, shardings)


def test_nan_loss_stops_and_keeps_good_checkpoint(tmp_path):
    with pytest.raises(tr.NonFiniteLossError, match=r"non-finite loss nan at step 5.*last good checkpoint: step 4"):
        _loop(str(tmp_path), lambda s: np.nan if s >= 5 else 1.0, 8)
    ck = tr.Checkpoints(str(tmp_path))
    assert [s for s, _ in ck.all_steps()] == [4, 2]
    ck.close()
    lines = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    assert [x["step"] for x in lines] == [2, 4]


def test_corrupt_latest_checkpoint_falls_back(tmp_path):
    state, abstract = _loop(str(tmp_path), lambda s: 1.0, 6)
    ck = tr.Checkpoints(str(tmp_path))
    restored, step, skipped = ck.restore(abstract)
    assert step == 6 and skipped == []
    chex.assert_trees_all_close(jax.device_get(restored.params), jax.device_get(state.params))
    # damage step 6: truncate every data file of its array store
    for root, _, files in os.walk(tmp_path / "checkpoints" / "6"):
        for f in files:
            if root.endswith("/d"):
                with open(os.path.join(root, f), "r+b") as fh:
                    fh.truncate(7)
    restored, step, skipped = ck.restore(abstract)
    assert step == 4 and len(skipped) == 1 and "step 6" in skipped[0] and "skipped" in skipped[0]
    assert int(restored.step) == 4
    ck.close()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _params_checksum(out):
    lines = [ln for ln in out.splitlines() if "params checksum" in ln]
    assert lines, out[-3000:]
    return float(lines[-1].split("params checksum")[1])


def test_two_processes_train_together(tmp_path):
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    base = [sys.executable, "-m", "diffjax.main", "--config", "configs/tiny.py", "--noprogress",
            "--config.sampling.final_num_samples=0", "--config.training.snapshot_sampling=False"]
    common = base + ["--workdir", str(tmp_path / "mp"), "--config.distributed.initialize=True",
                     f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                     "--config.distributed.num_processes=2"]
    procs = [subprocess.Popen(common + [f"--config.distributed.process_id={i}"], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    assert "process 0/2" in outs[0] and "process 1/2" in outs[1]
    c0, c1 = (_params_checksum(o) for o in outs)
    assert c0 == c1
    # and the same as one process with the same 4 devices
    env1 = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    single = subprocess.run(base + ["--workdir", str(tmp_path / "sp")], cwd=REPO, env=env1, capture_output=True,
                            text=True, timeout=240)
    assert single.returncode == 0, single.stderr[-3000:]
    np.testing.assert_allclose(_params_checksum(single.stdout + single.stderr), c0, rtol=1e-6)
