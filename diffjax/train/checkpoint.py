"""Checkpoints with orbax: periodic ones (keep the last ``keep``) in ``DIR/checkpoints`` and one frequent
preemption checkpoint in ``DIR/checkpoints-meta`` (score-SDE's layout). Writes are atomic (orbax writes a temporary
directory and renames it). Restore takes the newest readable checkpoint of either kind, stepping back through all
saved steps when one is damaged, and says which ones it skipped.
"""
from __future__ import annotations

import logging
import os
from typing import Any, List, Optional, Tuple

import jax
import orbax.checkpoint as ocp

__all__ = ["Checkpoints", "abstract_with_shardings"]

log = logging.getLogger(__name__)


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
        """Save ``state`` as step ``step`` (all processes must call it)."""
        mgr = self.preemption if preemption else self.periodic
        if step in mgr.all_steps():
            return
        mgr.save(step, args=ocp.args.StandardSave(state), force=True)
        mgr.wait_until_finished()

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
