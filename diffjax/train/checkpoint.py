"""Checkpoints with orbax: periodic ones (keep the last ``keep``) in ``DIR/checkpoints`` and one frequent
preemption checkpoint in ``DIR/checkpoints-meta`` (score-SDE's layout). Writes are atomic (orbax writes a temporary
directory and renames it). Restore takes the newest readable checkpoint of either kind, stepping back through all
saved steps when one is damaged, and says which ones it skipped. A checkpoint whose arrays (names, shapes, dtypes,
read from its metadata) differ from the state it is restored into was written by another config: restore raises
:class:`CheckpointMismatchError` instead of skipping it, so that a run never starts over (and its keep policy never
deletes) a workdir that holds another config's checkpoints. ``read_only=True`` opens the directories without creating
anything (the read-only modes: sample, eval, likelihood, a distillation teacher).
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
from typing import Any, List, Optional, Tuple

import jax
import orbax.checkpoint as ocp

__all__ = ["Checkpoints", "CheckpointSpaceError", "CheckpointMismatchError", "abstract_with_shardings"]

log = logging.getLogger(__name__)

SPACE_FACTOR = 1.1          # a checkpoint's size on disk over its arrays' bytes (metadata, chunk headers)
SPACE_MARGIN = 1 << 20      # plus 1 MiB


class CheckpointSpaceError(OSError):
    """Not enough disk space for a checkpoint (``errno.ENOSPC``); the message names the directory and the space."""

    def __init__(self, message):
        super().__init__(errno.ENOSPC, message)

    def __str__(self):
        return self.args[1]


class CheckpointMismatchError(ValueError):
    """A checkpoint's arrays (names, shapes, dtypes) differ from the train state it is restored into: another config
    wrote it. Nothing was restored and nothing was deleted."""


def _leaf_name(path) -> str:
    """``params/Dense_0/kernel`` for a tree path of the state or of orbax's metadata tree (same names)."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def _signature(tree) -> dict:
    """``{leaf name: (shape, dtype)}`` of a state, an abstract state or orbax's metadata tree."""
    import numpy as np
    return {_leaf_name(p): (tuple(x.shape), np.dtype(x.dtype).name)
            for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _describe_mismatch(stored: dict, wanted: dict) -> str:
    """What differs between a checkpoint's arrays and the wanted state's, in one line (first example of each kind)."""
    def fmt(sig):
        return f"{list(sig[0])} {sig[1]}"
    parts = []
    differ = [k for k in wanted if k in stored and stored[k] != wanted[k]]
    if differ:
        k = differ[0]
        parts.append(f"{len(differ)} arrays differ in shape or dtype (e.g. {k}: {fmt(stored[k])} in the checkpoint, "
                     f"{fmt(wanted[k])} in this config)")
    only_stored = [k for k in stored if k not in wanted]
    if only_stored:
        parts.append(f"{len(only_stored)} arrays only in the checkpoint (e.g. {only_stored[0]})")
    only_wanted = [k for k in wanted if k not in stored]
    if only_wanted:
        parts.append(f"{len(only_wanted)} arrays of this config missing from it (e.g. {only_wanted[0]})")
    return "; ".join(parts)


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
      read_only: only read: create no directory (a missing one holds no checkpoints), never save or delete
        (:meth:`save` raises). orbax's ``CheckpointManagerOptions(read_only=True)`` would log a warning per
        directory on every open; ``create=False`` without a save does the same without them.
    """

    def __init__(self, workdir: str, *, keep: int = 5, read_only: bool = False):
        workdir = os.path.abspath(workdir)
        self.read_only = read_only
        opts = dict(create=not read_only, enable_async_checkpointing=False)

        def manager(name, max_to_keep):
            return ocp.CheckpointManager(
                os.path.join(workdir, name), item_handlers=ocp.StandardCheckpointHandler(),  # for item_metadata
                options=ocp.CheckpointManagerOptions(max_to_keep=None if read_only else max_to_keep, **opts))

        self.periodic = manager("checkpoints", keep)
        self.preemption = manager("checkpoints-meta", 1)

    def save(self, step: int, state: Any, *, preemption: bool = False) -> None:
        """Save ``state`` as step ``step`` (all processes must call it).

        Raises:
          RuntimeError: opened with ``read_only=True``.
          CheckpointSpaceError: the file system lacks the space (checked before writing, from the state's size;
            or the write itself hit ``ENOSPC``). Earlier checkpoints are untouched (orbax renames a finished
            temporary directory into place and deletes old ones only after that), so a restart after freeing
            space resumes from the newest of them.
        """
        if self.read_only:
            raise RuntimeError(f"checkpoints of {os.path.dirname(str(self.periodic.directory))} were opened "
                               f"read-only (Checkpoints(read_only=True)): cannot save step {step}")
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

        Each checkpoint's metadata (array names, shapes, dtypes) is compared with ``abstract_state`` first: a
        checkpoint that differs belongs to another config and stops the restore (below); one whose metadata or
        arrays cannot be read is damaged and skipped for the next older one.

        Returns:
          ``(state, step, skipped)``: ``state`` is ``None`` when no checkpoint could be read (none saved, or all
          damaged); ``skipped`` describes each damaged checkpoint passed over.

        Raises:
          CheckpointMismatchError: the newest intact checkpoint does not match ``abstract_state`` (written by another
            config: another network width, post-hoc EMAs on or off, ...); the message names the step, the directory
            and the first differing arrays.
        """
        skipped = []
        wanted = _signature(abstract_state)
        for step, kind in self.all_steps():
            mgr = self.preemption if kind == "preemption" else self.periodic
            where = f"{kind} checkpoint at step {step} in {mgr.directory}"
            try:
                meta = mgr.item_metadata(step)
                stored = _signature(meta.tree)
            except Exception as e:  # a missing or garbled metadata file: damaged
                stored, error = None, e
            if stored is not None and stored != wanted:
                raise CheckpointMismatchError(
                    f"the {where} does not match this config's train state: {_describe_mismatch(stored, wanted)}. "
                    f"Another config wrote it (another network, post-hoc EMAs on or off, ...); nothing was restored "
                    f"or deleted. Use the config that wrote it, or another workdir")
            if stored is not None:
                try:
                    state = mgr.restore(step, args=ocp.args.StandardRestore(abstract_state))
                except Exception as e:  # orbax raises assorted errors for truncated / corrupt files
                    error = e
                else:
                    return state, step, skipped
            msg = f"{where} is damaged (unreadable) and was skipped ({type(error).__name__}: {str(error)[:200]})"
            log.warning(msg)
            skipped.append(msg)
        return None, None, skipped

    def close(self) -> None:
        self.periodic.close()
        self.preemption.close()
