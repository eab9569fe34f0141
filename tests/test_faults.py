"""Faults around checkpoint writes (issue 22): a full disk, a resume on a different number of devices with the FSDP
axis changed, SIGKILL during saves (slow; experiments/faults/kill_during_saves.py has 20 trials). For the full disk
the file system is a real size-limited tmpfs (root only; skipped elsewhere), so the ENOSPC comes from the kernel
through orbax / tensorstore, not from a mock."""
import errno
import json
import os
import shutil
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest
import tensorboardX

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from configs import tiny  # noqa: E402
from diffjax import run as drun  # noqa: E402
from diffjax import train as tr  # noqa: E402
from diffjax.train import checkpoint as ckpt  # noqa: E402


@pytest.fixture
def tmpfs(tmp_path):
    d = tmp_path / "fs"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(d)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}): the full-disk test needs root")
    yield d
    subprocess.run(["umount", "-l", str(d)], check=False)


def _cfg(n_iters):
    cfg = tiny.get_config()
    t = cfg.training
    t.n_iters, t.checkpoint_freq, t.snapshot_freq_for_preemption, t.snapshot_sampling = n_iters, 10, 0, False
    cfg.sampling.final_num_samples = 0
    cfg.model.overrides.hidden = (256, 256, 256)  # ~6 MiB of state with the EMA and Adam moments
    return cfg


def _losses(wd):
    return [(x["step"], x["loss"]) for x in map(json.loads, open(os.path.join(wd, "metrics.jsonl"))) if "loss" in x]


def _restored_step(wd):
    run = drun.Run(_cfg(40), wd)
    _, step, skipped = run.checkpoints.restore(run.abstract)
    run.checkpoints.close()
    return step, skipped


def test_full_disk_during_a_save_keeps_earlier_checkpoints_and_resumes_exactly(tmp_path, tmpfs, monkeypatch):
    straight = str(tmp_path / "straight")
    want = drun.train(_cfg(40), straight, progress=False)
    wd = str(tmpfs / "run")
    drun.train(_cfg(20), wd, progress=False)  # periodic checkpoints at 10 and 20
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(os.path.join(wd, "checkpoints", "20"))
               for f in fs)
    filler = tmpfs / "filler"
    with open(filler, "wb") as f:  # leave half a checkpoint free
        f.write(b"\0" * (shutil.disk_usage(wd).free - size // 2))
    directory = os.path.join(wd, "checkpoints")
    # 1. the size check before writing: a clear error naming the directory and the space
    with pytest.raises(tr.CheckpointSpaceError, match=rf"no space left to save the periodic checkpoint at step 30 "
                                                      rf"in {directory}: it needs about .* MiB .* MiB are free\. "
                                                      rf"Earlier checkpoints are untouched.*resume from step 20"):
        drun.train(_cfg(40), wd, progress=False)
    assert _restored_step(wd) == (20, [])
    # 2. no size check: the write itself runs out of space (ENOSPC from the kernel, wrapped by orbax)
    monkeypatch.setattr(ckpt, "SPACE_FACTOR", 0.0)
    monkeypatch.setattr(ckpt, "SPACE_MARGIN", 0)
    real_close = tensorboardX.SummaryWriter.close

    def close_on_full_disk(writer):  # the event file's last flush fails too when it has data pending
        real_close(writer)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tensorboardX.SummaryWriter, "close", close_on_full_disk)
    with pytest.raises(tr.CheckpointSpaceError, match=f"at step 30 in {directory}") as e:
        drun.train(_cfg(40), wd, progress=False)
    assert ckpt._is_enospc(e.value.__cause__)
    assert _restored_step(wd) == (20, [])  # the half-written step 30 is not taken for a checkpoint
    monkeypatch.undo()
    # 3. space freed: the restart resumes from step 20 and ends where the uninterrupted run ends
    filler.unlink()
    got = drun.train(_cfg(40), wd, progress=False)
    assert _losses(wd) == _losses(straight)
    assert all(np.isfinite(loss) for _, loss in _losses(wd))
    chex.assert_trees_all_equal(jax.device_get(got.params), jax.device_get(want.params))
    assert sorted(os.listdir(directory)) == ["30", "40"] or "40" in os.listdir(directory)


# --- fault 4: resume on a different number of devices, with the FSDP axis changed ---------------------------------

_STAGE = r"""
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import jax
from configs import tiny
from diffjax import run as drun

wd, n_iters, fsdp, out = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
cfg = tiny.get_config()
exec(sys.argv[6])  # the test's config overrides (one function, shared with the in-process run)
cfg.training.n_iters, cfg.distributed.fsdp = n_iters, fsdp


def leaves(state):
    return {jax.tree_util.keystr(p): np.asarray(jax.device_get(x))
            for p, x in jax.tree_util.tree_leaves_with_path(state)}


run = drun.Run(cfg, wd)
restored, step = run.restore()
run.checkpoints.close()
info = {"devices": jax.device_count(), "restored_step": step}
if restored is not None:
    info["specs"] = {jax.tree_util.keystr(p): [str(x.sharding.spec), len(x.sharding.device_set)]
                     for p, x in jax.tree_util.tree_leaves_with_path(restored.params)}
    np.savez(out + "_restored.npz", **leaves(restored))
state = drun.train(cfg, wd, progress=False)
np.savez(out + "_final.npz", **leaves(state))
json.dump(info, open(out + ".json", "w"))
"""

_OVERRIDES = """
t = cfg.training
t.snapshot_sampling, t.checkpoint_freq, t.snapshot_freq_for_preemption = False, 4, 2
cfg.sampling.final_num_samples = 0
cfg.distributed.fsdp_min_size = 256  # the 32x32 and 16x32 kernels (and their EMA and Adam moments) are split
"""


def _stage(tmp_path, name, wd, n_iters, devices, fsdp):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    out = str(tmp_path / name)
    r = subprocess.run([sys.executable, "-c", _STAGE, REPO, wd, str(n_iters), str(fsdp), out, _OVERRIDES],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "WARNING" not in r.stdout, r.stdout  # restore skipped nothing
    info = json.load(open(out + ".json"))
    assert info["devices"] == devices
    restored = dict(np.load(out + "_restored.npz")) if info["restored_step"] else None
    return info, restored, dict(np.load(out + "_final.npz"))


def test_resume_on_8_then_4_then_1_devices_with_fsdp_changed(tmp_path):
    """A run trained on 8 devices (mesh data=4 x fsdp=2) resumes on 4 devices (fsdp=4), then on 1 device.

    ``distributed.fsdp_min_size`` is lowered to 256 so that the tiny MLP's 32x32 and 16x32 kernels, their EMA and
    their Adam moments are really split over the ``fsdp`` axis (2, then 4 ways); the rest is replicated.
    Checked:

    * parameters: each restart restores the previous stage's final state (params, EMA, Adam moments, step, key)
      bit for bit, into the new shardings (the kernels come back as ``P('fsdp', None)`` over 4 devices, then on
      the one device);
    * data order: batch ``step`` is a pure function of ``(seed, step)`` with a global batch independent of the
      device count (``diffjax/data/_pipeline.py``); the steps run before the first restart log bit-equal losses,
      and later ones agree to ~1e-7 while a different batch would change the loss by ~1e-1;
    * losses: equal to the uninterrupted 8-device run's to ``rtol=1e-5``. They are not bit-equal after a change
      of device count, and cannot be: the loss and the gradients are batch means, and a mesh of a different shape
      sums the per-device partial sums (and the FSDP all-gathers / reduce-scatters feed the matmuls) in a
      different order, a float32 rounding difference of ~1 ulp (6e-8 relative) per reduction. Adam then carries
      the parameter differences forward, so the drift grows with the steps. Measured here (12 steps, the last 8
      after a change of mesh): largest relative loss difference 7e-8, largest parameter difference 3e-8
      (parameters ~0.1 .. 1). ``rtol=1e-5`` (parameters: also ``atol=1e-6``) leaves a margin of ~100 for these
      few steps and is 4 orders of magnitude below what a wrong batch, a wrong restored leaf or a wrong step
      count does; a longer run would need a wider tolerance.
    """
    from configs import tiny
    cfg = tiny.get_config()
    exec(_OVERRIDES)  # noqa: S102 (the same overrides as the subprocesses)
    cfg.training.n_iters, cfg.distributed.fsdp = 12, 2
    straight = str(tmp_path / "straight")
    want = drun.train(cfg, straight, progress=False)  # this process has the 8 forced devices of conftest.py
    want_losses = _losses(straight)
    assert [s for s, _ in want_losses] == list(range(2, 13, 2))
    wd = str(tmp_path / "moved")
    stages = [("s8", 4, 8, 2), ("s4", 8, 4, 4), ("s1", 12, 1, 1)]
    prev_final = None
    for name, n_iters, devices, fsdp in stages:
        info, restored, final = _stage(tmp_path, name, wd, n_iters, devices, fsdp)
        if prev_final is None:
            assert info["restored_step"] is None
        else:
            assert info["restored_step"] == n_iters - 4
            assert restored.keys() == prev_final.keys()
            for k in prev_final:  # bit-equal: resharding moves the numbers, it does not change them
                np.testing.assert_array_equal(restored[k], prev_final[k], err_msg=k)
            kernel = "['dense1']['Dense_0']['kernel']"
            spec, ndev = info["specs"][kernel]
            assert ndev == devices and spec == ("P('fsdp', None)" if fsdp > 1 else "P()")
        assert int(final[".step"]) == n_iters
        prev_final = final
    got = _losses(wd)
    assert [s for s, _ in got] == [s for s, _ in want_losses]
    assert got[:2] == want_losses[:2]  # the first stage is the same program as the uninterrupted run
    g, w = np.array([x for _, x in got]), np.array([x for _, x in want_losses])
    assert np.all(np.isfinite(g)) and np.all(np.isfinite(w))
    print("relative loss differences:", np.abs(g - w) / np.abs(w))
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=0)
    want_params = {jax.tree_util.keystr(p): np.asarray(x) for p, x in
                   jax.tree_util.tree_leaves_with_path(jax.device_get(want.params))}
    worst = 0.0
    for k, w_leaf in want_params.items():
        g_leaf = prev_final[".params" + k]
        assert np.all(np.isfinite(g_leaf))
        worst = max(worst, float(np.max(np.abs(g_leaf - w_leaf))))
        np.testing.assert_allclose(g_leaf, w_leaf, rtol=1e-5, atol=1e-6, err_msg=k)
    print("largest parameter difference:", worst)


# --- fault 1: SIGKILL at random moments during checkpoint saves ----------------------------------------------------

@pytest.mark.skipif(not os.environ.get("DIFFJAX_SLOW_TESTS"),
                    reason="5 JAX start-ups and ~35 orbax saves: 3 min on the loaded 2-core dev machine, over a minute "
                           "idle, too slow for the CI suite; set DIFFJAX_SLOW_TESTS=1 (20 trials: "
                           "experiments/faults/kill_during_saves.py)")
def test_sigkill_during_checkpoint_saves_resumes_from_an_intact_checkpoint(tmp_path):
    """3 trials of experiments/faults/kill_during_saves.py: SIGKILL while a periodic or preemption checkpoint is
    being written, restart; every restart resumes from the newest complete checkpoint without skipping any, every
    listed checkpoint restores, and the finished run's losses and state equal the uninterrupted run's bit for bit."""
    sys.path.insert(0, os.path.join(REPO, "experiments", "faults"))
    import kill_during_saves as kds
    s = kds.run_trials(3, workdir=str(tmp_path), devices=jax.device_count(), seed=1)
    assert s["problems"] == [] and s["ok"], s["problems"]
    assert s["trials"] == 3 and s["restarts"] == 3 and s["restarts_resumed_from_newest_complete"] == 3
    assert s["kills_inside_write"] >= 1  # at least one kill really cut a write (seed 1)
    assert s["final_equal_to_uninterrupted"] and s["unrestorable_checkpoints"] == 0


def _rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def test_disk_and_host_memory_stay_bounded_over_500_steps(tmp_path):
    """Fault 7: ``checkpoint_keep`` holds with the preemption checkpoints included (no leftover temporary
    directories), and the host memory of the training process does not grow per step: its resident size, sampled
    from outside between steps ~120 and ~470, grows by less than 24 MiB: a leak of 70 KiB per step would exceed
    that. Measured 2026-11-29: 567 -> 574 MiB, flattening (allocator and logging buffers settling)."""
    import subprocess
    import time
    wd = str(tmp_path / "run")
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
    p = subprocess.Popen([sys.executable, "-m", "diffjax.main", "--config", "configs/tiny.py", "--noprogress",
                          "--workdir", wd, "--config.training.n_iters=500", "--config.training.checkpoint_freq=20",
                          "--config.training.snapshot_freq_for_preemption=10", "--config.training.checkpoint_keep=3",
                          "--config.training.snapshot_sampling=False", "--config.sampling.final_num_samples=0"],
                         cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    rss = {}
    metrics = os.path.join(wd, "metrics.jsonl")
    while p.poll() is None:
        if os.path.exists(metrics):
            lines = open(metrics).read().splitlines()
            step = json.loads(lines[-1])["step"] if lines and lines[-1].endswith("}") else 0
            try:
                rss[step] = _rss_mib(p.pid)
            except (FileNotFoundError, StopIteration):
                break
        time.sleep(0.02)
    assert p.wait() == 0, p.stderr.read()[-3000:]
    early = [v for s, v in rss.items() if 100 <= s <= 140]
    late = [v for s, v in rss.items() if s >= 440]
    assert early and late, sorted(rss)
    growth = max(late) - min(early)
    print(f"resident memory: {min(early):.1f} MiB at steps 100-140, {max(late):.1f} MiB at steps >= 440")
    assert growth < 24, (growth, min(early), max(late))
    for sub, keep in (("checkpoints", 3), ("checkpoints-meta", 1)):
        entries = os.listdir(os.path.join(wd, sub))
        assert all(e.isdigit() for e in entries), entries  # no temporary directories left behind
        assert len(entries) <= keep, (sub, entries)
    assert sorted(os.listdir(os.path.join(wd, "checkpoints")), key=int) == ["460", "480", "500"]
