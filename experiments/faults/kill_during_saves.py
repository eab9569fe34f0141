"""SIGKILL at random moments during checkpoint saves, then restart; repeated (issue 22, fault 1).

    python experiments/faults/kill_during_saves.py [--trials 20] [--devices 8] [--seed 0] [--workdir DIR] [--json]

Runs ``python -m diffjax.main --config configs/tiny.py`` with a save after every dispatch of 2 steps: periodic
checkpoints every 4 steps (``checkpoints/``, keep 2) and preemption checkpoints every 2 (``checkpoints-meta/``,
keep 1), so the two kinds alternate and saves dominate the run time. Each trial waits until the run has begun its
k-th save from its start (k random in 1..3; a save is seen as orbax's temporary directory
``STEP.orbax-checkpoint-tmp*`` appearing under ``WORKDIR/checkpoints*``; the re-save of a step whose temporary
directory an earlier kill left behind reuses that name and is not counted), sleeps a random delay drawn from
[0, 1.5 x the median save time measured on an uninterrupted run] and sends SIGKILL. A kill "landed inside a write"
when the temporary directory is still there afterwards (orbax renames it into place as the save's last act).

After every kill it checks that each checkpoint listed in the workdir restores (nothing complete was lost or left
damaged), and that the next start resumes from the newest of them, says so, and skips nothing (``diffjax.run``
prints a WARNING for each checkpoint that restore passes over). After the last trial the run finishes unkilled and
its logged losses and final state (parameters, EMA, optimizer state, step, key) must equal, bit for bit, those of
an uninterrupted run on the same number of devices. Prints a summary; exits 1 if any check failed.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TMP_MARK = ".orbax-checkpoint-tmp"
KINDS = ("checkpoints", "checkpoints-meta")


def overrides(n_iters):
    return [f"--config.training.n_iters={n_iters}", "--config.training.checkpoint_freq=4",
            "--config.training.snapshot_freq_for_preemption=2", "--config.training.checkpoint_keep=2",
            "--config.training.snapshot_sampling=False", "--config.sampling.final_num_samples=0"]


def config(n_iters):
    sys.path.insert(0, REPO)
    from configs import tiny
    cfg = tiny.get_config()
    t = cfg.training
    t.n_iters, t.checkpoint_freq, t.snapshot_freq_for_preemption, t.checkpoint_keep = n_iters, 4, 2, 2
    t.snapshot_sampling, cfg.sampling.final_num_samples = False, 0
    return cfg


def _env(devices):
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def _tmp_dirs(wd):
    out = set()
    for kind in KINDS:
        try:
            out.update(os.path.join(kind, n) for n in os.listdir(os.path.join(wd, kind)) if TMP_MARK in n)
        except FileNotFoundError:
            pass
    return out


def _start(wd, n_iters, devices, log_path):
    log = open(log_path, "w")
    p = subprocess.Popen([sys.executable, "-m", "diffjax.main", "--config", "configs/tiny.py", "--noprogress",
                          "--workdir", wd, *overrides(n_iters)], cwd=REPO, env=_env(devices), stdout=log,
                         stderr=subprocess.STDOUT, text=True)
    log.close()
    return p


def _watch(p, wd, *, kill_at_save=None, delay=0.0, timeout=600.0):
    """Poll ``wd`` every ~1 ms. Returns ``(save durations seen, killed: bool)``; with ``kill_at_save=k``, SIGKILL
    ``p`` ``delay`` seconds after the k-th new temporary directory appears."""
    seen, started, durations = set(_tmp_dirs(wd)), {}, []  # left over by earlier kills: not this run's saves
    deadline = time.time() + timeout
    while p.poll() is None and time.time() < deadline:
        now = time.perf_counter()
        cur = _tmp_dirs(wd)
        for d in cur - seen:
            seen.add(d)
            started[d] = now
            if kill_at_save is not None and len(started) + len(durations) == kill_at_save:
                time.sleep(delay)
                p.send_signal(signal.SIGKILL)
                p.wait()
                return durations, True
        for d in [d for d in started if d not in cur]:
            durations.append(now - started.pop(d))
        time.sleep(0.001)
    if p.poll() is None:
        p.kill()
        p.wait()
        raise TimeoutError(f"run in {wd} did not finish within {timeout} s")
    return durations, False


def _losses(wd):
    return [(x["step"], x["loss"]) for x in map(json.loads, open(os.path.join(wd, "metrics.jsonl"))) if "loss" in x]


def _check_restorable(cfg, wd):
    """``(listed (step, kind) newest first, unrestorable ones)`` of the checkpoints in ``wd``, each restored."""
    import orbax.checkpoint as ocp
    from diffjax import run as drun
    run = drun.Run(cfg, wd)
    try:
        listed = run.checkpoints.all_steps()
        bad = []
        for step, kind in listed:
            mgr = run.checkpoints.preemption if kind == "preemption" else run.checkpoints.periodic
            try:
                mgr.restore(step, args=ocp.args.StandardRestore(run.abstract))
            except Exception as e:  # noqa: BLE001  (orbax raises assorted types for damaged checkpoints)
                bad.append((step, kind, f"{type(e).__name__}: {str(e)[:200]}"))
        return listed, bad
    finally:
        run.checkpoints.close()


def _final_state(cfg, wd):
    import jax
    import numpy as np
    from diffjax import run as drun
    run = drun.Run(cfg, wd)
    state, step = run.restore()
    run.checkpoints.close()
    return step, {jax.tree_util.keystr(k): np.asarray(v) for k, v in
                  jax.tree_util.tree_leaves_with_path(jax.device_get(state))}


def _resumed(log_path):
    text = open(log_path).read()
    m = re.search(r"resuming from step (\d+)", text)
    started = "starting a new run" in text
    warnings = [ln for ln in text.splitlines() if ln.startswith("WARNING:")]
    return (int(m.group(1)) if m else (0 if started else None)), warnings


def run_trials(trials: int, *, workdir: str, devices: int = 8, seed: int = 0, n_iters: int = 0,
               out=print) -> dict:
    """Run the experiment (see the module docstring) in ``workdir``; returns the summary (``ok``: all held).

    The calling process imports JAX and restores checkpoints to check them: it must see ``devices`` devices too.
    """
    import numpy as np
    rng = random.Random(seed)
    n_iters = n_iters or 6 * trials + 12  # a trial advances at most 3 saves x 2 steps
    cfg = config(n_iters)
    problems = []
    straight = os.path.join(workdir, "straight")
    t0 = time.perf_counter()
    p = _start(straight, n_iters, devices, os.path.join(workdir, "straight.log"))
    durations, _ = _watch(p, straight)
    if p.returncode != 0:
        raise RuntimeError(f"the uninterrupted run failed; see {workdir}/straight.log")
    t_straight = time.perf_counter() - t0
    save_s = statistics.median(durations) if durations else 0.05
    out(f"uninterrupted run: {n_iters} steps in {t_straight:.1f} s, {len(durations)} saves seen, median save "
        f"{1e3 * save_s:.1f} ms (kills wait 0 .. {1.5e3 * save_s:.1f} ms after a save begins)")

    wd = os.path.join(workdir, "killed")
    records, expected_resume = [], 0
    for i in range(trials + 1):
        log_path = os.path.join(workdir, f"trial{i:02d}.log")
        before = _tmp_dirs(wd)
        p = _start(wd, n_iters, devices, log_path)
        last = i == trials
        k, delay = rng.randint(1, 3), rng.uniform(0, 1.5 * save_s)
        _, killed = _watch(p, wd, kill_at_save=None if last else k, delay=delay)
        resumed, warnings = _resumed(log_path)
        rec = dict(trial=i, resumed_from=resumed, expected_resume=expected_resume, skipped=warnings)
        if resumed != expected_resume:
            problems.append(f"trial {i}: resumed from {resumed}, the newest complete checkpoint was "
                            f"{expected_resume}")
        if warnings:
            problems.append(f"trial {i}: restore skipped checkpoints: {warnings}")
        if last or not killed:
            rec.update(finished=p.returncode == 0)
            records.append(rec)
            if p.returncode != 0:
                problems.append(f"trial {i}: the final run exited with {p.returncode}; see {log_path}")
            break
        left = sorted(_tmp_dirs(wd) - before)
        listed, bad = _check_restorable(cfg, wd)
        expected_resume = listed[0][0] if listed else 0
        rec.update(kill_at_save=k, delay_ms=round(1e3 * delay, 1), inside_write=bool(left), tmp_left=left,
                   checkpoints=[f"{s}{'p' if kind == 'preemption' else ''}" for s, kind in listed],
                   unrestorable=bad)
        if bad:
            problems.append(f"trial {i}: listed checkpoints that do not restore: {bad}")
        records.append(rec)
        out(f"trial {i:2d}: resumed from {resumed}; killed {rec['delay_ms']:6.1f} ms after save #{k} began "
            f"({'inside the write: ' + ', '.join(left) + ' left' if left else 'after the rename'}); "
            f"checkpoints now {rec['checkpoints']} (all restore: {not bad})")

    kills = [r for r in records if "kill_at_save" in r]
    final = records[-1]
    out(f"final run: resumed from {final['resumed_from']}, finished: {final.get('finished')}")
    if final.get("finished"):
        if _losses(wd) != _losses(straight):
            problems.append("logged losses differ from the uninterrupted run's")
        if not all(np.isfinite(x) for _, x in _losses(wd)):
            problems.append("non-finite logged loss")
        step_a, a = _final_state(cfg, wd)
        step_b, b = _final_state(cfg, straight)
        if step_a != n_iters or step_b != n_iters or a.keys() != b.keys() or \
                any(not np.array_equal(a[k], b[k]) for k in a):
            problems.append("final state differs from the uninterrupted run's")
    leftover = sorted(_tmp_dirs(wd))
    summary = dict(
        date=datetime.date.today().isoformat(), trials=len(kills), devices=devices, seed=seed, n_iters=n_iters,
        median_save_ms=round(1e3 * save_s, 1), kills_inside_write=sum(r["inside_write"] for r in kills),
        kills_in_periodic_save=sum(any(t.startswith("checkpoints/") for t in r["tmp_left"]) for r in kills),
        kills_in_preemption_save=sum(any(t.startswith("checkpoints-meta/") for t in r["tmp_left"]) for r in kills),
        restarts_resumed_from_newest_complete=sum(r["resumed_from"] == r["expected_resume"] for r in records[1:]),
        restarts=len(records) - 1, restarts_skipping_a_checkpoint=sum(bool(r["skipped"]) for r in records),
        unrestorable_checkpoints=sum(len(r.get("unrestorable", ())) for r in records),
        final_equal_to_uninterrupted=not any("differ" in q for q in problems) and bool(final.get("finished")),
        orbax_tmp_dirs_left=len(leftover), problems=problems, ok=not problems and bool(final.get("finished")),
        records=records)
    out(f"summary: {summary['trials']} SIGKILLs ({summary['kills_inside_write']} inside a checkpoint write: "
        f"{summary['kills_in_periodic_save']} periodic, {summary['kills_in_preemption_save']} preemption; the rest "
        f"after the rename), {summary['restarts_resumed_from_newest_complete']}/{summary['restarts']} restarts "
        f"resumed from the newest complete checkpoint, {summary['restarts_skipping_a_checkpoint']} skipped a "
        f"checkpoint, {summary['unrestorable_checkpoints']} listed checkpoints unrestorable; final losses and state "
        f"bit-equal to the uninterrupted run: {summary['final_equal_to_uninterrupted']}; orbax temporary "
        f"directories left in the workdir: {summary['orbax_tmp_dirs_left']}")
    for q in problems:
        out(f"PROBLEM: {q}")
    return summary


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--devices", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None, help="kept afterwards (default: a temporary directory, removed)")
    ap.add_argument("--json", action="store_true", help="also print the summary as JSON")
    a = ap.parse_args()
    os.environ.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={a.devices}")
    sys.path.insert(0, REPO)
    if a.workdir:
        os.makedirs(a.workdir, exist_ok=True)
        summary = run_trials(a.trials, workdir=a.workdir, devices=a.devices, seed=a.seed)
    else:
        with tempfile.TemporaryDirectory() as d:
            summary = run_trials(a.trials, workdir=d, devices=a.devices, seed=a.seed)
    if a.json:
        print(json.dumps({k: v for k, v in summary.items() if k != "records"}, indent=1))
    sys.exit(0 if summary["ok"] else 1)


if __name__ == "__main__":
    main()
