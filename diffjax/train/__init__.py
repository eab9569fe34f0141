"""Training: state, optimizer, EMA, the pure (multi-)step, sharding, checkpoints and the loop.

``state, metrics = train_step(state, batch)`` with ``train_step = make_train_step(loss_fn, optimizer, ...)`` and
``loss_fn(params, key, batch) -> (loss, aux)``. Mesh axes and PartitionSpecs live in :mod:`diffjax.train.sharding`
only.
"""
from diffjax.train.checkpoint import (CheckpointMismatchError, Checkpoints, CheckpointSpaceError,
                                      abstract_with_shardings)
from diffjax.train.loop import NonFiniteLossError, train_loop, truncate_metrics
from diffjax.train.sharding import (DATA_AXIS, FSDP_AXIS, batch_sharding, check_batch_divisible, global_batch,
                                    jit_train_step, dispatch_train_steps, make_mesh, param_spec, replicated, state_shardings)
from diffjax.train.state import (TrainState, cosine_decay, create_state, ema_update, init_params,
                                 inverse_sqrt_decay, learning_rate_schedule, make_optimizer)
from diffjax.train.step import drop_labels, make_train_step, multi_step
from diffjax.train.workdir_lock import WorkdirBusyError, workdir_lock

__all__ = ["TrainState", "make_optimizer", "learning_rate_schedule", "cosine_decay", "inverse_sqrt_decay", "ema_update", "init_params", "create_state", "make_train_step",
           "multi_step", "drop_labels", "make_mesh", "batch_sharding", "replicated", "param_spec", "state_shardings",
           "global_batch", "jit_train_step", "dispatch_train_steps", "check_batch_divisible", "DATA_AXIS", "FSDP_AXIS", "Checkpoints", "CheckpointSpaceError", "CheckpointMismatchError",
           "abstract_with_shardings", "train_loop", "NonFiniteLossError", "truncate_metrics", "workdir_lock",
           "WorkdirBusyError"]
