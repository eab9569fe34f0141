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


# A worker thread allocates, writes and frees 256 MB twice, like XLA:CPU's per-run buffer; count the page faults of
# the second round.
_SCRIPT = textwrap.dedent("""
    import ctypes, resource, threading
    import diffjax
    applied = diffjax.reuse_freed_host_memory()
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    n = 256 << 20
    faults = []
    def touch_and_free():
        p = libc.malloc(n)
        ctypes.memset(p, 1, n)
        libc.free(p)
    def work():
        touch_and_free()
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        touch_and_free()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    t = threading.Thread(target=work)
    t.start()
    t.join()
    print(applied and diffjax.reuse_freed_host_memory(), faults[0])  # a second call reports the first
""")


@pytest.mark.skipif(not GLIBC, reason="glibc only")
@pytest.mark.parametrize("opt_out", [False, True])
def test_freed_memory_is_reused_without_page_faults(opt_out):
    env = dict(os.environ)
    env.pop("DIFFJAX_REUSE_HOST_MEMORY", None)
    if opt_out:
        env["DIFFJAX_REUSE_HOST_MEMORY"] = "0"
    out = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    pages = (256 << 20) // os.sysconf("SC_PAGE_SIZE")
    if opt_out:  # glibc's default: a fresh mmap each time, every page faulted in again
        assert applied == "False" and int(faults) >= pages // 2
    else:
        assert applied == "True" and int(faults) < pages // 100
