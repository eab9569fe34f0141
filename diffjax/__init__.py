"""diffjax: score-based diffusion models in JAX, with DDPM and NCSN as special cases of one continuous-time core.

``import diffjax as dj`` gives the core (SDEs, schedules, losses, likelihood, guidance) at top level, and
``dj.samplers`` / ``dj.discrete``. Networks, training and evaluation (``dj.nets``, ``dj.train``, ``dj.data``,
``dj.eval``) import flax/optax/orbax and are loaded on first use.
"""
import importlib as _importlib

from diffjax import _xla_flags

_xla_flags.apply_cpu_defaults()  # before any JAX backend starts: XLA reads XLA_FLAGS once

from diffjax import core, discrete, samplers  # noqa: E402
from diffjax import distill  # noqa: E402  (few-step generation: progressive distillation, consistency)
from diffjax import adapt  # noqa: E402  (LoRA on parameter trees)
from diffjax._host_memory import reuse_freed_host_memory  # noqa: E402
from diffjax.core import *  # noqa: F401,F403,E402
from diffjax.samplers import colorize, inpaint  # noqa: E402  (samplers, at top level like the core)

__version__ = "0.1.0"
__all__ = ["core", "discrete", "samplers", "distill", "adapt", "nets", "train", "data", "eval", "run",
           "reuse_freed_host_memory", "inpaint", "colorize"] + core.__all__

_LAZY = ("nets", "train", "data", "eval", "run")


def __getattr__(name):
    if name in _LAZY:
        return _importlib.import_module(f"diffjax.{name}")
    raise AttributeError(f"module 'diffjax' has no attribute {name!r}")
