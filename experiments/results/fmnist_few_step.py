"""Classifier Frechet distance of a few-step Fashion-MNIST student (progressive distillation, consistency distillation
or consistency training: ``distill.method`` of its config) at 1, 2, 4 and 8 network evaluations, with its training
cost: the students' half of the few-step table in experiments/results/README.md (the teacher's half:
experiments/bench/fmnist_nfe.py).

    python experiments/results/fmnist_few_step.py --config configs/fashion_mnist_progressive.py --workdir W \\
        --classifier /work/runs/fmnist_classifier --override distill.teacher_workdir=T --grid experiments/results

Progressive distillation: every kept round-end checkpoint (step ``(r + 1) * distill.steps_per_round``) holds round
``r``'s EMA student; the rounds whose student takes one of ``--nfe`` steps are sampled with that many DDIM steps
(``pd_sample``). Consistency models: the newest checkpoint's EMA network, sampled with ``distill.sample_steps = k``
for each ``k`` in ``--nfe`` (one step from ``T``, then the Karras times). Samples use the same prior draws as
``--mode sample`` (``fold_in(key(seed), 5)``, batches of ``sampling.batch_size``) and are scored like
experiments/results/score_samples.py. Training cost: the steps, and the training wall time summed from the run's
metrics.jsonl (``log_freq / steps_per_sec`` per logged interval: each round's compilation and the checkpoint writes
included, start-up before the first step and time between resumed runs not). Rows
are appended to ``--out`` (default WORKDIR/few_step.jsonl); rows already there are skipped, so the script resumes.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "experiments", "results"))


def train_wall_seconds(workdir, step):
    """Seconds of training up to ``step`` from metrics.jsonl's ``steps_per_sec`` rows."""
    path = os.path.join(workdir, "metrics.jsonl")
    total, prev = 0.0, 0
    if not os.path.exists(path):
        return None
    with open(path) as f:
        for row in map(json.loads, f):
            if "steps_per_sec" not in row or row["step"] > step:
                continue
            total += (row["step"] - prev) / row["steps_per_sec"]
            prev = row["step"]
    return round(total, 1) if prev else None


def draw(dist, params, config, n, round_index):
    """``n`` samples of the student like ``--mode sample`` (uint8 images) and the sampling seconds."""
    import jax
    from diffjax.data import from_unit
    key = jax.random.fold_in(jax.random.key(config.seed), 5)
    bs = int(config.sampling.batch_size)
    dist.sample(params, key, min(bs, n), round_index=round_index)  # compile
    xs, t0 = [], time.perf_counter()
    for i in range(-(-n // bs)):
        xs.append(dist.sample(params, jax.random.fold_in(key, i), min(bs, n - i * bs), round_index=round_index))
    seconds = time.perf_counter() - t0
    x = np.concatenate(xs)
    if not np.all(np.isfinite(x)):
        raise SystemExit("non-finite samples")
    return from_unit(x), seconds


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--classifier", required=True, help="workdir of configs/fashion_mnist_classifier.py")
    p.add_argument("--override", action="append", default=[], help="FIELD=VALUE of the run's config (repeatable)")
    p.add_argument("--nfe", default="1,2,4,8")
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--label", default="", help="row label (default: distill.method)")
    p.add_argument("--out", default="")
    p.add_argument("--grid", default="", help="also write DIR/fmnist_few_step_LABEL_NFE.png (first 64 samples)")
    args = p.parse_args()
    import jax
    import orbax.checkpoint as ocp
    from diffjax import run as dr
    from diffjax.run._distill import Distiller
    from diffjax.train.images import save_image_grid
    import score_samples

    base = score_samples.load_run_config(args.config, args.override)
    method = base.distill.method
    if not method:
        raise SystemExit(f"{args.config} has no distill.method: this script scores few-step students")
    label = args.label or method
    nfes = [int(v) for v in args.nfe.split(",")]
    out_path = args.out or os.path.join(args.workdir, "few_step.jsonl")
    done = set()
    if os.path.exists(out_path):
        with open(out_path) as f:
            done = {(r["label"], r["nfe"], r["step"]) for r in map(json.loads, f)}
    eval_config = score_samples.fashion_mnist_eval_config(args.classifier)
    fnet = dr.build_feature_net(eval_config)
    ref = dr.reference_statistics(eval_config, eval_config.eval.stats_dir, feature_net=fnet)
    os.makedirs(os.path.join(args.workdir, "samples", "few_step"), exist_ok=True)

    # (config, step, state, round, nfe) for each student to score
    jobs = []
    if method == "progressive":
        dist = Distiller(base, args.workdir, sampling=True)
        spr = int(base.distill.steps_per_round)
        for r in range(dist.rounds):
            k, step = dist.num_student_steps(r), (r + 1) * spr
            if k not in nfes or (label, k, step) in done:
                continue
            if step not in dist.run.checkpoints.periodic.all_steps():
                print(f"round {r + 1} ({k} steps): no checkpoint at step {step}, skipped", flush=True)
                continue
            jobs.append((dist, step, r, k))
    else:
        for k in nfes:
            config = copy.deepcopy(base)
            config.distill.sample_steps = k
            dist = Distiller(config, args.workdir, sampling=True)
            steps = dist.run.checkpoints.periodic.all_steps() + dist.run.checkpoints.preemption.all_steps()
            if not steps:
                raise SystemExit(f"no checkpoint in {args.workdir}")
            if (label, k, max(steps)) not in done:
                jobs.append((dist, None, 0, k))
    for dist, step, r, k in jobs:
        if step is None:
            state, step = dist.restore()
        else:
            state = dist.run.checkpoints.periodic.restore(step, args=ocp.args.StandardRestore(dist.abstract))
        if int(jax.device_get(state.round)) != r:
            raise SystemExit(f"checkpoint {step} is in round {int(jax.device_get(state.round)) + 1}, expected {r + 1}")
        images, seconds = draw(dist, state.train.ema_params, dist.config, args.num_samples, r)
        path = os.path.join(args.workdir, "samples", "few_step", f"{label}_nfe{k}_step{step}.npz")
        np.savez(path, x=images)
        if args.grid:
            save_image_grid(os.path.join(args.grid, f"fmnist_few_step_{label}_{k}.png"), images[:64], ncol=8)
        row = dict(label=label, method=method, nfe=k, step=int(step), round=r + 1,
                   train_wall_s=train_wall_seconds(args.workdir, step), sampler=dist.describe_sampler(r),
                   sample_s=round(seconds, 1), path=path, **score_samples.score(images, eval_config, fnet, ref))
        print(json.dumps(row), flush=True)
        with open(out_path, "a") as f:
            f.write(json.dumps(row) + "\n")
    with open(out_path) as f:
        rows = [json.loads(line) for line in f]
    print("\n| student | NFE | step | train wall | Frechet distance | KID |\n|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['label']} | {row['nfe']} | {row['step']} | {row['train_wall_s']} s | "
              f"{row['frechet_distance']:.2f} | {row['kid']:.3f} |")


if __name__ == "__main__":
    main()
