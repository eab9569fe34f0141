"""Compile options for the tests' one-shot programs, whose compile time dominates their run time (milliseconds):
XLA:CPU's LLVM backend at -O0 without its expensive passes compiles them 2-2.5x faster. The same HLO runs (float
rounding aside)."""
import functools

import jax

FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}

# jax.jit with FAST_COMPILE
fast_jit = functools.partial(jax.jit, compiler_options=FAST_COMPILE)
