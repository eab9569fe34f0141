"""Issue 22, fault 5: one of two ``jax.distributed`` processes dies mid-run. The survivor must exit with an error
within a bounded time (``distributed.heartbeat_timeout_s``) instead of hanging in a collective, and restarting
both resumes exactly."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
HEARTBEAT_S = 10


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(workdir, n_iters, logs):
    port = _free_port()
    base = [sys.executable, "-m", "diffjax.main", "--config", "configs/tiny.py", "--noprogress", "--workdir", workdir,
            "--config.sampling.final_num_samples=0", "--config.training.snapshot_sampling=False",
            f"--config.training.n_iters={n_iters}", "--config.training.checkpoint_freq=10",
            "--config.training.snapshot_freq_for_preemption=10", "--config.distributed.initialize=True",
            f"--config.distributed.coordinator_address=127.0.0.1:{port}", "--config.distributed.num_processes=2",
            f"--config.distributed.heartbeat_timeout_s={HEARTBEAT_S}"]
    return [subprocess.Popen(base + [f"--config.distributed.process_id={i}"], cwd=REPO, env=ENV,
                             stdout=open(logs[i], "w"), stderr=subprocess.STDOUT) for i in range(2)]


def _checksum(log):
    lines = [x for x in open(log) if "params checksum" in x]
    assert lines, open(log).read()[-3000:]
    return lines[-1].split("params checksum")[1].strip()


def _losses(wd):
    return [(x["step"], x["loss"]) for x in map(json.loads, open(os.path.join(wd, "metrics.jsonl"))) if "loss" in x]


@pytest.mark.parametrize("victim", [1, 0])  # 0 also hosts the coordination service
def test_survivor_exits_when_a_peer_dies_and_both_resume_exactly(tmp_path, victim):
    n_iters = 400
    wd = str(tmp_path / "run")
    logs = [str(tmp_path / f"p{i}.log") for i in range(2)]
    procs = _start(wd, n_iters, logs)
    try:
        metrics = os.path.join(wd, "metrics.jsonl")
        deadline = time.time() + 300
        while time.time() < deadline and not (os.path.exists(metrics) and len(_losses(wd)) >= 15):
            assert all(p.poll() is None for p in procs), open(logs[0]).read()[-3000:]
            time.sleep(0.1)
        assert len(_losses(wd)) < n_iters // 2, "the run ended before it could be killed"
        procs[victim].send_signal(signal.SIGKILL)
        t_kill = time.time()
        survivor = procs[1 - victim]
        rc = survivor.wait(timeout=HEARTBEAT_S + 60)  # hangs -> TimeoutExpired: the test fails
        waited = time.time() - t_kill
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    assert rc != 0 and waited < HEARTBEAT_S + 60
    out = open(logs[1 - victim]).read()
    assert ("another process of this run has most likely died" in out
            or "This most likely indicates that another task died" in out), out[-3000:]
    if victim == 0:
        return  # the resume is the same as for victim 1
    # restart both: they resume from the newest checkpoint and end where an uninterrupted pair ends, bit for bit
    # (same data order, same keys, same program)
    short = 100
    assert max(s for s, _ in _losses(wd)) < short
    logs2 = [str(tmp_path / f"r{i}.log") for i in range(2)]
    for p in _start(wd, short, logs2):
        assert p.wait(timeout=300) == 0, open(logs2[0]).read()[-3000:]
    assert "resuming from step" in open(logs2[0]).read()
    ref = str(tmp_path / "ref")
    logs3 = [str(tmp_path / f"u{i}.log") for i in range(2)]
    for p in _start(ref, short, logs3):
        assert p.wait(timeout=300) == 0, open(logs3[0]).read()[-3000:]
    assert _checksum(logs2[0]) == _checksum(logs3[0]) == _checksum(logs2[1])
    assert _losses(wd) == _losses(ref) and len(_losses(ref)) == short // 2
