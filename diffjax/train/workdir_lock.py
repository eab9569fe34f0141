"""One training run per workdir: an advisory ``flock`` on ``WORKDIR/train.lock``.

A second run started on a workdir that a live run is using is refused with :class:`WorkdirBusyError` naming the
other process (pid, host, command, start time), before anything is built. The kernel releases a ``flock`` when its
holder dies, however it dies (SIGKILL, OOM kill, preemption), so a lock left by a dead run is never "stuck": the
next run takes it over and says so. The file itself only carries the holder's description for that message; it is
never deleted (deleting it would let a third process lock a fresh inode while the second still holds the old one).

Local and network file systems with POSIX locks (Linux maps ``flock`` to ``fcntl`` locks on NFS). Object-store
workdirs (``gs://...``) have no locks: there the lock is skipped with a warning.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time

__all__ = ["LOCK_NAME", "WorkdirBusyError", "workdir_lock"]

LOCK_NAME = "train.lock"


class WorkdirBusyError(RuntimeError):
    """Another live run holds the workdir's lock."""


def _describe(info: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("time", 0)))
    return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')} (started {started}, "
            f"command: {info.get('command', '?')})")


def _read(fd) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 1 << 16).decode() or "{}")
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def workdir_lock(workdir: str, *, verbose: bool = True):
    """Hold the training lock of ``workdir`` for the duration of the ``with`` block.

    Raises:
      WorkdirBusyError: a live process holds it; the message names that process and the lock file.
    """
    if "://" in workdir:
        if verbose:
            print(f"WARNING: {workdir} is not a local path: no lock against a second run in it", flush=True)
        yield None
        return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkdirBusyError(
                f"workdir {workdir} is in use by another training run: {_describe(_read(fd))}. Two runs in one "
                f"workdir would overwrite each other's checkpoints and metrics; wait for it, stop it, or use "
                f"another --workdir (lock: {path})") from None
        previous = _read(fd)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time(),
              "command": " ".join(sys.argv) or sys.executable}
        if previous.get("pid") and verbose:
            print(f"taking over the lock {path} of a run that is no longer running: {_describe(previous)}",
                  flush=True)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(me).encode())
        os.fsync(fd)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)  # a clean exit leaves no holder to report
    finally:
        os.close(fd)  # releases the flock
