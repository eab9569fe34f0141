"""One training run per workdir (issue 22, fault 6): a second run on a live run's workdir is refused naming it; the
lock of a dead run (SIGKILL) is taken over."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from diffjax import train as tr

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")


def _holder(workdir, then):
    """A process that takes the lock, prints 'locked', then ``then`` ('sleep' or 'die': SIGKILL itself)."""
    code = textwrap.dedent(f"""
        import os, signal, sys, time
        from diffjax.train import workdir_lock
        with workdir_lock({workdir!r}):
            print("locked", flush=True)
            if {then!r} == "die":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(120)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_second_holder_is_refused_naming_the_first(tmp_path):
    wd = str(tmp_path / "w")
    p = _holder(wd, "sleep")
    try:
        with pytest.raises(tr.WorkdirBusyError, match=rf"workdir {wd} is in use by another training run: pid "
                                                      rf"{p.pid} on host .*command: .*-c"):
            with tr.workdir_lock(wd, verbose=False):
                pass
        info = json.load(open(os.path.join(wd, "train.lock")))
        assert info["pid"] == p.pid
    finally:
        p.kill()
        p.wait()


def test_nested_lock_in_one_process_is_refused_and_a_clean_exit_leaves_no_holder(tmp_path, capsys):
    wd = str(tmp_path / "w")
    with tr.workdir_lock(wd) as path:
        assert json.load(open(path))["pid"] == os.getpid()
        with pytest.raises(tr.WorkdirBusyError, match=f"pid {os.getpid()}"):
            with tr.workdir_lock(wd):
                pass
    assert open(os.path.join(wd, "train.lock")).read() == ""
    with tr.workdir_lock(wd):  # free again, and nothing to take over
        pass
    assert "taking over" not in capsys.readouterr().out


def test_lock_of_a_killed_run_is_taken_over(tmp_path, capsys):
    wd = str(tmp_path / "w")
    p = _holder(wd, "die")
    p.wait()
    assert p.returncode == -signal.SIGKILL
    assert json.load(open(os.path.join(wd, "train.lock")))["pid"] == p.pid  # the dead run's record is still there
    with tr.workdir_lock(wd):
        assert json.load(open(os.path.join(wd, "train.lock")))["pid"] == os.getpid()
    assert f"of a run that is no longer running: pid {p.pid}" in capsys.readouterr().out


def test_cli_refuses_a_second_run_in_a_live_workdir(tmp_path):
    wd = str(tmp_path / "run")
    args = [sys.executable, "-m", "diffjax.main", "--config", "configs/tiny.py", "--noprogress", "--workdir", wd,
            "--config.training.n_iters=100000", "--config.training.snapshot_sampling=False"]
    first = subprocess.Popen(args, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock = os.path.join(wd, "train.lock")
        deadline = time.time() + 120
        while time.time() < deadline and not (os.path.exists(lock) and os.path.getsize(lock)):
            time.sleep(0.1)
        assert first.poll() is None and os.path.getsize(lock)
        second = subprocess.run(args, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
        assert second.returncode != 0
        assert f"is in use by another training run: pid {first.pid}" in second.stderr
        assert first.poll() is None  # the live run is untouched
    finally:
        first.kill()
        first.wait()
