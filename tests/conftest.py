"""Test setup: 8 forced CPU devices (must happen before JAX initialises), CPU only."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
# jaxlib 0.10.2 CPU miscompiles reductions fused by YNNPACK: in jnp.mean(log(a) - log(b)) over >= 4096 elements
# the two log (also log1p, expm1) nodes are treated as one, giving 0. Disable YNN reduce fusion.
_ynn = "--xla_cpu_experimental_ynn_fusion_type=-reduce"
if "xla_cpu_experimental_ynn_fusion_type" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " " + _ynn

import jax  # noqa: E402

jax.config.update("jax_threefry_partitionable", True)
