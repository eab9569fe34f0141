"""The one place where device meshes, axis names and PartitionSpecs are named.

A 2-D mesh ``("data", "fsdp")``: the batch is split over both axes (every device gets ``batch / device_count``
rows); parameters, EMA and optimizer state are replicated, or, with ``fsdp > 1``, leaves of at least
``fsdp_min_size`` elements are split over ``"fsdp"`` along their largest divisible dimension (ZeRO-3 style; XLA
inserts the all-gathers). The same code runs on 1 device, 8 forced CPU devices, a GPU box or a multi-host TPU pod.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from diffjax.train.step import multi_step

__all__ = ["DATA_AXIS", "FSDP_AXIS", "make_mesh", "batch_sharding", "replicated", "param_spec", "state_shardings",
           "global_batch", "jit_train_step", "dispatch_train_steps", "check_batch_divisible"]

DATA_AXIS, FSDP_AXIS = "data", "fsdp"
_BATCH_AXES = (DATA_AXIS, FSDP_AXIS)


def make_mesh(*, fsdp: int = 1, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A ``(device_count / fsdp, fsdp)`` mesh with axes ``("data", "fsdp")`` over all (global) devices.

    The axes are ``Auto`` (GSPMD propagation inside the step): shardings are fixed only at the jit boundary.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if not isinstance(fsdp, int) or fsdp < 1 or n % fsdp:
        raise ValueError(f"fsdp must be a positive divisor of the device count {n}, got {fsdp!r}")
    return jax.make_mesh((n // fsdp, fsdp), _BATCH_AXES, axis_types=(AxisType.Auto, AxisType.Auto), devices=devices)


def check_batch_divisible(batch_size: int, mesh_or_count) -> None:
    """``ValueError`` unless the global batch splits evenly over the devices."""
    n = mesh_or_count.size if isinstance(mesh_or_count, Mesh) else int(mesh_or_count)
    if batch_size % n:
        allowed = [k * n for k in range(1, 5)]
        raise ValueError(f"training.batch_size={batch_size} must be divisible by the device count {n}; "
                         f"allowed values include {allowed}, ...")


def batch_sharding(mesh: Mesh, *, stacked: bool = True) -> NamedSharding:
    """Batch rows split over all devices; with ``stacked`` the leading axis is the step axis of a multi-step
    dispatch ``(n_steps, batch, ...)``."""
    return NamedSharding(mesh, P(None, _BATCH_AXES) if stacked else P(_BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def param_spec(shape, fsdp_size: int, fsdp_min_size: int) -> P:
    """Split the largest dimension divisible by ``fsdp_size`` over ``"fsdp"`` for leaves of at least
    ``fsdp_min_size`` elements; everything else replicated."""
    if fsdp_size <= 1 or int(np.prod(shape, dtype=np.int64)) < fsdp_min_size:
        return P()
    dims = sorted(range(len(shape)), key=lambda d: -shape[d])
    for d in dims:
        if shape[d] % fsdp_size == 0:
            spec = [None] * len(shape)
            spec[d] = FSDP_AXIS
            return P(*spec)
    return P()


def state_shardings(mesh: Mesh, abstract_state: Any, *, fsdp_min_size: int = 2 ** 18) -> Any:
    """A ``NamedSharding`` per leaf of a (possibly abstract) train state (see :func:`param_spec`)."""
    fsdp_size = mesh.shape[FSDP_AXIS]
    return jax.tree.map(lambda x: NamedSharding(mesh, param_spec(x.shape, fsdp_size, fsdp_min_size)),
                        abstract_state)


def global_batch(local: Any, mesh: Mesh, *, stacked: bool = True) -> Any:
    """Assemble each process's rows (numpy, ``(n_steps, local_batch, ...)``) into global sharded arrays."""
    sharding = batch_sharding(mesh, stacked=stacked)
    if jax.process_count() == 1:
        return jax.device_put(local, sharding)
    return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sharding, a), local)


def jit_train_step(step_fn: Callable, mesh: Mesh, shardings: Any, *, donate: bool = True) -> Callable:
    """``jax.jit`` of ``step_fn(state, batches) -> (state, metrics)`` with explicit in/out shardings: state as
    ``shardings``, batches split over devices (leading step axis), metrics replicated."""
    return jax.jit(step_fn, in_shardings=(shardings, batch_sharding(mesh)),
                   out_shardings=(shardings, replicated(mesh)), donate_argnums=(0,) if donate else ())


def dispatch_train_steps(train_step: Callable, mesh: Mesh, shardings: Any, *, donate: bool = True) -> Callable:
    """The interface of :func:`jit_train_step` over ``multi_step`` (``(state, batches) -> (state, metrics)``, batches
    stacked ``(n, batch, ...)``, metrics stacked ``(n,)``), run as ``n`` dispatches of one compiled single step.

    The program compiles once whatever ``n`` is (an unrolled multi-step compiles ``n`` copies: 20+ minutes for five
    steps of a UNet on 2 CPU cores), and it avoids XLA:CPU's slow loops (jaxlib 0.10.2 runs a network's backward pass
    inside ``lax.scan`` 20-40x slower than outside one; experiments/bench/README.md). JAX dispatches asynchronously,
    so the host queues the ``n`` steps without waiting for them. The compiled single step is ``.single``.
    """
    single = jax.jit(train_step, in_shardings=(shardings, batch_sharding(mesh, stacked=False)),
                     out_shardings=(shardings, replicated(mesh)), donate_argnums=(0,) if donate else ())
    steps = multi_step(single, unroll=True)  # outside jit: a Python loop of n dispatches of the compiled step
    steps.single = single
    return steps
