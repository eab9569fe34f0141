"""diffjax.reuse_freed_host_memory (diffjax/_host_memory.py): glibc keeps freed memory for reuse."""
import os
import subprocess
import sys
import textwrap

import jax
import pytest

from diffjax import _host_memory

GLIBC = _host_memory._glibc() is not None


@pytest.mark.parametrize("environ, glibc, started, wanted", [
    ({}, True, False, True),
    ({"DIFFJAX_REUSE_HOST_MEMORY": "0"}, True, False, False),  # opt-out
    ({"DIFFJAX_REUSE_HOST_MEMORY": "1"}, True, False, True),
    ({}, False, False, False),  # not glibc: mallopt's parameters mean nothing there
    ({}, True, True, False),  # too late: XLA's threads already have their own arenas
])
def test_reuse_wanted(environ, glibc, started, wanted):
    assert _host_memory.reuse_wanted(environ, glibc, started) is wanted


def test_does_nothing_once_jax_started(monkeypatch):
    monkeypatch.setattr(_host_memory, "_applied", False)
    jax.devices()  # this test process's backend is up
    assert not _host_memory.reuse_freed_host_memory({})


# A jitted function whose run needs a 128 MB temporary buffer (like XLA:CPU's per-step buffer of a train step), run
# eight times; the fewest page faults of runs 3-8. (The runtime frees a run's buffer just after its outputs are
# ready, so on a loaded machine the next run can allocate before that free and take fresh memory; a training step
# leaves time in between, and the pause here does too.)
_SCRIPT = textwrap.dedent("""
    import resource, time
    import diffjax
    applied = diffjax.reuse_freed_host_memory()
    import jax, jax.numpy as jnp
    f = jax.jit(lambda x, w1, w2: (x @ w1) @ w2).lower(
        jnp.ones((65536, 64)), jnp.ones((64, 512)), jnp.ones((512, 4))).compile()
    assert f.memory_analysis().temp_size_in_bytes >= 128 << 20
    args = jnp.ones((65536, 64)), jnp.ones((64, 512)) / 64, jnp.ones((512, 4)) / 512
    faults = []
    for _ in range(8):
        time.sleep(0.05)
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        out = f(*args).block_until_ready()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    assert float(out.mean()) == 1.0
    # a second call reports the first
    print(applied and diffjax.reuse_freed_host_memory(), jax.config.values["jax_cpu_enable_async_dispatch"], min(faults[2:]))
""")


@pytest.mark.skipif(not GLIBC, reason="glibc only")
@pytest.mark.parametrize("env_change, applied, async_dispatch, reused", [
    ({}, True, False, True),
    ({"DIFFJAX_REUSE_HOST_MEMORY": "0"}, False, True, False),  # glibc's default: a fresh mmap each run
    # the user's dispatch choice is kept; the run's buffer then comes from a worker thread's arena, which maps
    # allocations this large afresh whatever M_MMAP_MAX says
    ({"JAX_CPU_ENABLE_ASYNC_DISPATCH": "1"}, True, True, False),
])
def test_run_buffers_are_reused_without_page_faults(env_change, applied, async_dispatch, reused):
    env = {k: v for k, v in os.environ.items()
           if k not in ("DIFFJAX_REUSE_HOST_MEMORY", "JAX_CPU_ENABLE_ASYNC_DISPATCH", "JAX_PLATFORMS")}
    env.update(env_change, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f)
    out = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, check=True)
    got_applied, got_async, faults = out.stdout.split()
    assert (got_applied, got_async) == (str(applied), str(async_dispatch))
    pages = (128 << 20) // os.sysconf("SC_PAGE_SIZE")
    if reused:
        assert int(faults) < pages // 100
    else:
        assert int(faults) >= pages // 2
