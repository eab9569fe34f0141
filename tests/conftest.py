"""Test setup: 8 forced CPU devices (must happen before JAX initialises), CPU only."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

import diffjax  # noqa: E402,F401  (applies diffjax's XLA:CPU flags, diffjax/_xla_flags.py, before JAX starts)
import jax  # noqa: E402

jax.config.update("jax_threefry_partitionable", True)
