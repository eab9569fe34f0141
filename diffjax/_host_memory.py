"""Let glibc keep and reuse freed host memory, so XLA:CPU's per-step buffers stop page-faulting.

XLA:CPU allocates one temporary buffer per run of a compiled function (870 MB for the small32 train step at batch
32), and its convolutions allocate ~75 MB work buffers, all from XLA's worker threads. glibc serves allocations
that large with a fresh ``mmap`` (a worker thread's arena cannot hold them, whatever ``M_MMAP_MAX`` says) and
unmaps them on ``free``, so every step touches ~215,000 fresh pages that the kernel must fault in and zero: about
0.5 s of kernel time per ~3.4 s small32 step on the project's 2-core machine, ~4-6% of the step's wall time
(experiments/bench/README.md). PyTorch's buffers are mostly under glibc's adaptive 32 MB mmap threshold, so it
reuses its memory without this.

:func:`reuse_freed_host_memory` sets, through ``mallopt``: one malloc arena for all threads (``M_ARENA_MAX=1``, so
a worker thread's large allocation comes from the main heap), no ``mmap`` for allocations (``M_MMAP_MAX=0``), and
keeping up to 2 GiB of free memory at the top of the heap (``M_TRIM_THRESHOLD``). The price: a process's resident
memory no longer shrinks after large arrays are freed (the memory is reused by later allocations). It is a
process-wide choice, so the library never makes it on import: ``python -m diffjax.main`` and the benchmark
scripts apply it at start-up; call it yourself first thing in your own long-running CPU jobs.

It takes effect only for threads that have not allocated yet, so it must run before JAX starts its backends, and
only with glibc (Linux). ``DIFFJAX_REUSE_HOST_MEMORY=0`` opts out.
"""
from __future__ import annotations

import ctypes
import os
import sys
from typing import Mapping, Optional

from diffjax._xla_flags import _backends_started

OPT_OUT = "DIFFJAX_REUSE_HOST_MEMORY"
# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: keep up to 2 GiB of free heap top
_applied = False


def _glibc() -> Optional[ctypes.CDLL]:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # only glibc has it (musl does not honour these mallopt parameters)
        libc.mallopt
    except (OSError, AttributeError):
        return None
    return libc


def reuse_wanted(environ: Mapping[str, str], have_glibc: bool, backends_started: bool) -> bool:
    """Whether :func:`reuse_freed_host_memory` should act (pure; see the module docstring)."""
    return have_glibc and not backends_started and environ.get(OPT_OUT, "1").strip() != "0"


def reuse_freed_host_memory(environ: Optional[Mapping[str, str]] = None) -> bool:
    """Apply the malloc settings of the module docstring if wanted. Returns whether they are in effect (so a
    second call, e.g. once JAX runs, reports what the first one did)."""
    global _applied
    if _applied:
        return True
    environ = os.environ if environ is None else environ
    libc = _glibc()
    if not reuse_wanted(environ, libc is not None, _backends_started()):
        return False
    _applied = all(libc.mallopt(param, value) == 1 for param, value in
                   ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD)))
    return _applied
