"""Faults around checkpoint writes (issue 22): a full disk. The file system is a real size-limited tmpfs (root
only; skipped elsewhere), so the ENOSPC comes from the kernel through orbax / tensorstore, not from a mock."""
import json
import os
import shutil
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

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
