"""The training loop: dispatch, logging (progress bar, TensorBoard, ``metrics.jsonl``), snapshots, checkpoints,
NaN guard and exact resume. Library code: takes explicit arguments, never a config."""
from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np

from diffjax.train.checkpoint import Checkpoints

__all__ = ["train_loop", "NonFiniteLossError", "truncate_metrics"]

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/inf loss; the last good checkpoint is kept untouched."""


def truncate_metrics(path: str, last_step: int) -> None:
    """Drop the lines of ``metrics.jsonl`` written after ``last_step`` (a resumed run rewrites them identically)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [ln for ln in f if ln.strip()]
    keep = []
    for ln in lines:
        try:
            if json.loads(ln).get("step", 0) <= last_step:
                keep.append(ln)
        except json.JSONDecodeError:  # a line cut by a kill
            pass
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(keep)
    os.replace(tmp, path)


def _say(msg: str) -> None:
    """Print a line on stdout without breaking a progress bar (tqdm clears and redraws its bars around it)."""
    import sys

    from tqdm import tqdm
    tqdm.write(msg, file=sys.stdout)
    sys.stdout.flush()


class _Prefetch:
    """Produce ``make(i)`` for i = 0, 1, ... in a background thread, ``depth`` ahead."""

    def __init__(self, make: Callable[[int], Any], count: int, depth: int = 2):
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = False

        def run():
            for i in range(count):
                if self._stop:
                    return
                try:
                    self._q.put(("ok", make(i)))
                except Exception as e:  # surfaced in the consumer
                    self._q.put(("err", e))
                    return

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def get(self):
        kind, value = self._q.get()
        if kind == "err":
            raise value
        return value

    def close(self):
        self._stop = True
        while self._thread.is_alive():
            try:
                self._q.get_nowait()
            except queue.Empty:
                self._thread.join(0.01)


def train_loop(state: Any, train_steps: Callable, get_batches: Callable[[int, int], Any], *, workdir: str,
               num_steps: int, steps_per_call: int = 1, log_freq: int = 50, checkpoint_freq: int = 5000,
               preemption_freq: int = 500, checkpoints: Optional[Checkpoints] = None,
               snapshot_freq: int = 0, snapshot_fn: Optional[Callable[[Any, int], Any]] = None,
               callbacks: Sequence[tuple[int, Callable[[Any, int], None]]] = (),
               progress: bool = True, is_main: Optional[bool] = None,
               learning_rate: Optional[Callable[[int], Any]] = None) -> Any:
    """Run ``train_steps`` from ``state.step`` to ``num_steps``.

    Args:
      state: the (restored or fresh) train state; its ``step`` says where to start.
      train_steps: jitted ``(state, batches) -> (state, metrics)`` taking ``steps_per_call`` stacked batches.
      get_batches: ``get_batches(step, n)`` -> device batches for steps ``step .. step + n - 1`` (built ahead in
        a background thread).
      workdir: ``metrics.jsonl`` and ``tensorboard/`` go here (process 0 only): the train metrics and steps/s at
        every log step, the learning rate (``train/learning_rate``, with ``learning_rate``) and the sample grids
        ``snapshot_fn`` returns (``samples``).
      num_steps: final step. All frequencies must be multiples of ``steps_per_call`` (0 disables).
      checkpoints: where to save; periodic saves every ``checkpoint_freq`` steps and at the end, preemption saves
        every ``preemption_freq``.
      snapshot_fn: called as ``snapshot_fn(state, step)`` every ``snapshot_freq`` steps on all processes (it
        writes on process 0 only); it may return a picture of the samples, a uint8 ``(H, W, C)`` array, that goes
        to TensorBoard as the image ``samples``.
      callbacks: more ``(freq, fn)`` pairs, ``fn(state, step)`` called every ``freq`` steps on all processes like
        ``snapshot_fn`` (e.g. the post-hoc EMA snapshots), after that step's checkpoint.
      progress: a tqdm bar over the steps (process 0).
      learning_rate: the optimizer's schedule, ``step -> rate`` (optax's count: the update that makes step ``k``
        uses ``learning_rate(k - 1)``), logged at every log step.

    Raises:
      NonFiniteLossError: a NaN/inf loss. Losses are checked at every log step and before every checkpoint, so a
        state with a non-finite loss is never saved.
    """
    is_main = jax.process_index() == 0 if is_main is None else is_main
    n = steps_per_call
    for name, freq in (("log_freq", log_freq), ("checkpoint_freq", checkpoint_freq),
                       ("preemption_freq", preemption_freq), ("snapshot_freq", snapshot_freq),
                       ("num_steps", num_steps)) + tuple(("callback frequency", f) for f, _ in callbacks):
        if freq % n:
            raise ValueError(f"{name}={freq} must be a multiple of the steps per dispatch {n}")
    start = int(jax.device_get(state.step))
    if start % n:
        raise ValueError(f"restored step {start} is not a multiple of the steps per dispatch {n}")
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    writer = bar = None
    if is_main:
        os.makedirs(workdir, exist_ok=True)
        truncate_metrics(metrics_path, start)
        from tensorboardX import SummaryWriter
        writer = SummaryWriter(os.path.join(workdir, "tensorboard"))
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=num_steps, initial=start, unit="step", dynamic_ncols=True, smoothing=0.1)
    calls = (num_steps - start) // n
    prefetch = _Prefetch(lambda i: get_batches(start + i * n, n), calls)
    pending = []  # (first step, device metrics) since the last finiteness check
    last_good = None
    failed = False
    t_log, s_log = time.perf_counter(), start

    def check_finite():
        nonlocal pending
        for first, m in pending:
            losses = np.asarray(jax.device_get(m["loss"]))
            bad = np.flatnonzero(~np.isfinite(losses))
            if bad.size:
                where = f"last good checkpoint: step {last_good}" if last_good is not None else \
                    "no checkpoint was written by this run"
                raise NonFiniteLossError(
                    f"non-finite loss {losses[bad[0]]} at step {first + int(bad[0]) + 1}; training stopped "
                    f"without saving ({where}). Lower optim.lr, raise optim.warmup or check the data.")
        pending = []

    def say(msg):
        if is_main:
            _say(msg)

    try:
        for i in range(calls):
            batches = prefetch.get()
            if i == 0:
                say(f"compiling the train step ({n} optimizer step{'s' if n > 1 else ''} per call) ...")
                t_compile = time.perf_counter()
            state, metrics = train_steps(state, batches)
            if i == 0:
                say(f"compiled the train step in {time.perf_counter() - t_compile:.1f} s")
            step = start + (i + 1) * n
            pending.append((step - n, metrics))
            if bar is not None:
                bar.update(n)
            if log_freq and step % log_freq == 0:
                check_finite()
                last = {k: float(np.asarray(v)[-1]) for k, v in jax.device_get(metrics).items()}
                now = time.perf_counter()
                rate = (step - s_log) / max(now - t_log, 1e-9)
                t_log, s_log = now, step
                if is_main:
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps({"step": step, **last, "steps_per_sec": rate}) + "\n")
                    for k, v in last.items():
                        writer.add_scalar(f"train/{k}", v, step)
                    writer.add_scalar("train/steps_per_sec", rate, step)
                    if learning_rate is not None:
                        writer.add_scalar("train/learning_rate", float(learning_rate(step - 1)), step)
                    if bar is not None:
                        bar.set_postfix(loss=f"{last['loss']:.4g}", refresh=False)
            save_periodic = checkpoints is not None and ((checkpoint_freq and step % checkpoint_freq == 0)
                                                         or step == num_steps)
            save_preempt = checkpoints is not None and preemption_freq and step % preemption_freq == 0
            if save_periodic or save_preempt:
                check_finite()
                if save_periodic:
                    checkpoints.save(step, state)
                else:
                    checkpoints.save(step, state, preemption=True)
                last_good = step
            if snapshot_fn is not None and snapshot_freq and step % snapshot_freq == 0:
                picture = snapshot_fn(state, step)
                if writer is not None and picture is not None:
                    writer.add_image("samples", np.asarray(picture), step, dataformats="HWC")
            for freq, fn in callbacks:
                if freq and step % freq == 0:
                    fn(state, step)
        check_finite()
    except BaseException:
        failed = True
        raise
    finally:
        prefetch.close()
        if bar is not None:
            bar.close()
        if writer is not None:
            try:
                writer.close()
            except OSError:
                # A full disk fails the event file's last flush too; that must not replace the error in flight
                # (the CheckpointSpaceError naming the resumable step).
                if not failed:
                    raise
    return state
