"""Checkpoints with orbax: periodic ones (keep the last ``keep``) in ``DIR/checkpoints`` and one frequent
preemption checkpoint in ``DIR/checkpoints-meta`` (score-SDE's layout). Writes are atomic (orbax writes a temporary
directory and renames it). Restore takes the newest readable checkpoint of either kind, stepping back through all
saved steps when one is damaged, and says which ones it skipped.
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
from typing import Any, List, Optional, Tuple

import jax
import orbax.checkpoint as ocp

__all__ = ["Checkpoints", "CheckpointSpaceError", "abstract_with_shardings"]

log = logging.getLogger(__name__)

SPACE_FACTOR = 1.1          # a checkpoint's size on disk over its arrays' bytes (metadata, chunk headers)
SPACE_MARGIN = 1 << 20      # plus 1 MiB


class CheckpointSpaceError(OSError):
    """Not enough disk space for a checkpoint (``errno.ENOSPC``); the message names the directory and the space."""

    def __init__(self, message):
        super().__init__(errno.ENOSPC, message)

    def __str__(self):
        return self.args[1]


def _state_bytes(state) -> int:
    """Bytes this process writes for ``state``: its addressable shards (replicas written once)."""
    total = 0
    for leaf in jax.tree.leaves(state):
        if isinstance(leaf, jax.Array):
            total += sum(s.data.nbytes for s in leaf.addressable_shards if s.replica_id == 0)
        else:
            total += getattr(leaf, "nbytes", 0)
    return int(total)


def _is_enospc(e: BaseException) -> bool:
    while e is not None:
        if getattr(e, "errno", None) == errno.ENOSPC or "No space left on device" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def abstract_with_shardings(abstract_state: Any, shardings: Any = None) -> Any:
    """``jax.ShapeDtypeStruct`` leaves (with their target ``sharding``) to restore into."""
    if shardings is None:
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), abstract_state)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state, shardings)


class Checkpoints:
    """Periodic + preemption checkpoints of a train state under ``workdir``.

    Args:
      workdir: run directory.
      keep: number of periodic checkpoints kept.
    """

    def __init__(self, workdir: str, *, keep: int = 5):
        workdir = os.path.abspath(workdir)
        opts = dict(create=True, enable_async_checkpointing=False)
        self.periodic = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                                              options=ocp.CheckpointManagerOptions(max_to_keep=keep, **opts))
        self.preemption = ocp.CheckpointManager(os.path.join(workdir, "checkpoints-meta"),
                                                options=ocp.CheckpointManagerOptions(max_to_keep=1, **opts))

    def save(self, step: int, state: Any, *, preemption: bool = False) -> None:
        """Save ``state`` as step ``step`` (all processes must call it).

        Raises:
          CheckpointSpaceError: the file system lacks the space (checked before writing, from the state's size;
            or the write itself hit ``ENOSPC``). Earlier checkpoints are untouched (orbax renames a finished
            temporary directory into place and deletes old ones only after that), so a restart after freeing
            space resumes from the newest of them.
        """
        mgr = self.preemption if preemption else self.periodic
        if step in mgr.all_steps():
            return
        kind = "preemption" if preemption else "periodic"
        directory = str(mgr.directory)
        need = _state_bytes(state)
        free = shutil.disk_usage(directory).free
        if free < need * SPACE_FACTOR + SPACE_MARGIN:
            raise CheckpointSpaceError(self._space_message(kind, step, directory, need, free))
        try:
            mgr.save(step, args=ocp.args.StandardSave(state), force=True)
            mgr.wait_until_finished()
        except Exception as e:  # orbax / tensorstore wrap the OSError in assorted types: look for ENOSPC
            if not _is_enospc(e):
                raise
            raise CheckpointSpaceError(self._space_message(kind, step, directory, need,
                                                           shutil.disk_usage(directory).free)) from e

    def _space_message(self, kind, step, directory, need, free):
        done = self.all_steps()
        latest = f"step {done[0][0]}" if done else "the start (no checkpoint yet)"
        return (f"no space left to save the {kind} checkpoint at step {step} in {directory}: it needs about "
                f"{need * SPACE_FACTOR / 2**20:.1f} MiB ({need / 2**20:.1f} MiB of arrays), "
                f"{free / 2**20:.1f} MiB are free. Earlier checkpoints are untouched; free space (or lower "
                f"training.checkpoint_keep) and restart to resume from {latest}")

    def all_steps(self) -> List[Tuple[int, str]]:
        """``(step, kind)`` of every saved checkpoint, newest first (preemption before periodic at equal steps)."""
        items = [(s, "preemption") for s in self.preemption.all_steps()] + \
                [(s, "periodic") for s in self.periodic.all_steps()]
        return sorted(items, key=lambda it: (-it[0], it[1] != "preemption"))

    def restore(self, abstract_state: Any) -> Tuple[Optional[Any], Optional[int], List[str]]:
        """Restore the newest readable checkpoint into ``abstract_state`` (``ShapeDtypeStruct`` leaves, see
        :func:`abstract_with_shardings`).

        Returns:
          ``(state, step, skipped)``: ``state`` is ``None`` when there is no readable checkpoint; ``skipped``
          describes each damaged checkpoint passed over.
        """
        skipped = []
        for step, kind in self.all_steps():
            mgr = self.preemption if kind == "preemption" else self.periodic
            try:
                state = mgr.restore(step, args=ocp.args.StandardRestore(abstract_state))
            except Exception as e:  # orbax raises assorted errors for truncated / corrupt files
                msg = f"{kind} checkpoint at step {step} in {mgr.directory} is unreadable and was skipped " \
                      f"({type(e).__name__}: {str(e)[:200]})"
                log.warning(msg)
                skipped.append(msg)
                continue
            return state, step, skipped
        return None, None, skipped

    def close(self) -> None:
        self.periodic.close()
        self.preemption.close()
