"""Let glibc keep and reuse freed host memory, so XLA:CPU's per-run buffers stop page-faulting.

XLA:CPU allocates one temporary buffer per run of a compiled function (870 MB for the small32 train step at batch
32). glibc serves an allocation that large with a fresh ``mmap`` and unmaps it on ``free``, so every step touches
~215,000 fresh pages that the kernel must fault in and zero: about 0.5 s of kernel time per ~3.4 s small32 step on
the project's 2-core machine (experiments/bench/README.md). PyTorch's buffers are mostly under glibc's adaptive
32 MB mmap threshold, so it reuses its memory without this.

:func:`reuse_freed_host_memory` makes two process-wide choices:

- through ``mallopt``: no ``mmap`` for allocations (``M_MMAP_MAX=0``), and keep up to 2 GiB of free memory at the
  top of the heap (``M_TRIM_THRESHOLD``), so a freed buffer is handed to the next run's allocation;
- ``jax_cpu_enable_async_dispatch=False``: single-device CPU computations run on the thread that calls them
  instead of a JAX worker thread. That matters because glibc gives each thread its own arena, and a worker
  thread's arena cannot hold an allocation over 64 MB whatever ``M_MMAP_MAX`` says; the calling (main) thread's
  heap can. The alternative, one arena for all threads (``M_ARENA_MAX=1``), makes every thread's small
  allocations contend for one lock: the small32 train step ran ~8% slower that way, and compiled ~20% slower
  (experiments/bench/README.md).
  Without async dispatch, Python waits for each computation to finish; the training loop still builds batches
  ahead in its own thread. Multi-device computations keep JAX's asynchronous dispatch.

The price: a process's resident memory no longer shrinks after large arrays are freed (the memory is reused by later
allocations). The choices are process-wide, so the library never makes them on import: ``python -m diffjax.main``
and the benchmark scripts apply them at start-up; call the function yourself first thing in your own long-running
CPU jobs.

JAX reads the dispatch setting when its CPU backend starts, so the function acts only before JAX starts its
backends, and only with glibc (Linux). ``DIFFJAX_REUSE_HOST_MEMORY=0`` opts out; an explicit
``JAX_CPU_ENABLE_ASYNC_DISPATCH`` in the environment is left as it is (the ``mallopt`` part still applies).
"""
from __future__ import annotations

import ctypes
import os
import sys
from typing import Mapping, Optional

from diffjax._xla_flags import _backends_started

OPT_OUT = "DIFFJAX_REUSE_HOST_MEMORY"
ASYNC_DISPATCH_ENV = "JAX_CPU_ENABLE_ASYNC_DISPATCH"
# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
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
    """Apply the malloc and dispatch settings of the module docstring if wanted. Returns whether they are in effect
    (so a second call, e.g. once JAX runs, reports what the first one did)."""
    global _applied
    if _applied:
        return True
    environ = os.environ if environ is None else environ
    libc = _glibc()
    if not reuse_wanted(environ, libc is not None, _backends_started()):
        return False
    _applied = all(libc.mallopt(param, value) == 1 for param, value in
                   ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD)))
    if _applied and ASYNC_DISPATCH_ENV not in environ:
        import jax
        jax.config.update("jax_cpu_enable_async_dispatch", False)
    return _applied
