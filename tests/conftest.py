"""Test setup: 8 forced CPU devices (must happen before JAX initialises), CPU only, and one persistent compilation
cache shared by every process of this test run.

The cache: the CLI tests start fresh ``python -m diffjax.main`` processes that compile the same train and sample
steps; with ``JAX_COMPILATION_CACHE_DIR`` in the environment (inherited by pytest-xdist workers and by those
subprocesses) each program is compiled once per run. The directory is new for every run (a run's timing never
depends on an earlier one) unless the caller sets ``JAX_COMPILATION_CACHE_DIR`` itself. JAX keys every entry on the
program, the compile options, the devices and the jax / jaxlib versions, so an entry from another jax is never used
(tests/test_compile_cache.py checks that the cache is written and hit on XLA:CPU).
"""
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # the controller (or a plain run) makes it; workers inherit it
    _OWN_CACHE = tempfile.mkdtemp(prefix="diffjax-test-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import diffjax  # noqa: E402,F401  (applies diffjax's XLA:CPU flags, diffjax/_xla_flags.py, before JAX starts)
import jax  # noqa: E402

jax.config.update("jax_threefry_partitionable", True)


def pytest_unconfigure(config):
    if _OWN_CACHE is not None and not hasattr(config, "workerinput"):  # the process that made it removes it
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)
