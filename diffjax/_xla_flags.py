"""The XLA:CPU setting ``import diffjax`` applies before JAX starts its backends.

jaxlib 0.10 hands CPU reductions and convolutions to YNNPACK (``__ynn_fusion`` in the compiled HLO). Both are
switched off, keeping YNNPACK for matrix products only:

- **reductions** (correctness): its reduce fusion merges distinct ``log`` / ``expm1`` nodes, so with jaxlib 0.10.2
  ``jnp.mean(jnp.log(2 * t) - jnp.log(t))`` over 16384 elements is 0, not log 2; that breaks every Gaussian KL
  (the DDPM bound, bits/dim) and the sub-VP likelihood weighting (tests/test_losses.py has the canary). The
  networks compute their large sums as matrix products (``nets._base.sum_spatial``, ``add_bias``), so they do not
  slow down without it. YNNPACK's element-wise fusion type (``eltwise``, not in jaxlib's default set) has the same
  fault (``jnp.log(2 * t) - jnp.log(t)`` compiles to 0 element-wise): never enable it either.
- **convolutions** (speed): on the 3x3 convolutions of the score networks (64-256 channels) YNNPACK runs at about
  half the speed of XLA's own (Eigen) convolution: 32x32x64 -> 64 at batch 32 takes 25-27 ms forward and per
  gradient against 14-16 ms for Eigen and for PyTorch (experiments/bench/README.md).

XLA reads ``XLA_FLAGS`` once, when the first backend starts, so the flag is appended to the environment at import
time, and only when all of these hold (otherwise nothing is changed):

- ``XLA_FLAGS`` does not already set ``xla_cpu_experimental_ynn_fusion_type`` (the user's choice wins);
- ``DIFFJAX_XLA_CPU_DEFAULTS`` is not ``0`` (the opt-out);
- the installed jaxlib is in :data:`VERIFIED_JAXLIB` (an unknown flag in ``XLA_FLAGS`` aborts XLA);
- no JAX backend has started yet (a warning says so when the CPU backend already runs without it).

The flag is a CPU compiler option: GPU and TPU compilation ignore it.
"""
from __future__ import annotations

import os
import warnings
from typing import MutableMapping, Optional, Tuple

FLAG_NAME = "xla_cpu_experimental_ynn_fusion_type"
CPU_FLAG = f"--{FLAG_NAME}=-reduce,-individual_convolution"
OPT_OUT = "DIFFJAX_XLA_CPU_DEFAULTS"
# jaxlib versions (inclusive lower, exclusive upper) whose XLA accepts CPU_FLAG (checked on 0.10.2).
VERIFIED_JAXLIB = ((0, 10), (0, 12))


def _jaxlib_version() -> Optional[Tuple[int, ...]]:
    try:
        from jaxlib.version import __version_info__
    except ImportError:  # pragma: no cover - jaxlib without a version tuple: leave XLA_FLAGS alone
        return None
    return tuple(__version_info__)


def _backends_started() -> bool:
    try:
        from jax._src import xla_bridge
        return bool(xla_bridge.backends_are_initialized())
    except Exception:  # private API: if it moves, assume not started (setting the variable is then harmless)
        return False


def cpu_flag_wanted(environ: MutableMapping[str, str], jaxlib_version: Optional[Tuple[int, ...]]) -> bool:
    """Whether :data:`CPU_FLAG` should be appended to ``environ["XLA_FLAGS"]`` (pure; see the module docstring)."""
    if environ.get(OPT_OUT, "1").strip() == "0" or FLAG_NAME in environ.get("XLA_FLAGS", ""):
        return False
    lo, hi = VERIFIED_JAXLIB
    return jaxlib_version is not None and lo <= tuple(jaxlib_version[:2]) < hi


def apply_cpu_defaults(environ: Optional[MutableMapping[str, str]] = None) -> bool:
    """Append :data:`CPU_FLAG` to ``XLA_FLAGS`` if wanted and still possible; returns whether it did."""
    environ = os.environ if environ is None else environ
    if not cpu_flag_wanted(environ, _jaxlib_version()):
        return False
    if _backends_started():
        import jax
        if jax.default_backend() == "cpu":
            warnings.warn(f"JAX started before `import diffjax`, so XLA:CPU keeps YNNPACK's reduce fusion (which "
                          f"miscompiles some means of logs, e.g. Gaussian KLs) and its slower convolutions. Import "
                          f"diffjax before running JAX code, or set XLA_FLAGS='{CPU_FLAG}' ({OPT_OUT}=0 silences "
                          f"this).", stacklevel=2)
        return False
    environ["XLA_FLAGS"] = (environ.get("XLA_FLAGS", "") + " " + CPU_FLAG).strip()
    return True
