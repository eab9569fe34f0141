"""Guidance on Fashion-MNIST: classifier Frechet distance and intended-class accuracy against the guidance scale, for
classifier guidance and classifier-free guidance, plus a grid of samples (one row per class, a few scales).

    # classifier guidance: an unconditional model + a noise-conditional classifier on the same process
    python experiments/results/fmnist_guidance.py --kind classifier --workdir /work/runs/budget/recipe \\
        --config configs/fashion_mnist_budget.py --noisy-classifier /work/runs/fmnist_ncl \\
        --classifier /work/runs/fmnist_classifier --out /work/runs/guidance.jsonl
    # classifier-free guidance: a class-conditional model trained with label dropout
    python experiments/results/fmnist_guidance.py --kind cfg --workdir /work/runs/fmnist_cfg \\
        --config configs/fashion_mnist_cfg.py --classifier /work/runs/fmnist_classifier --out /work/runs/guidance.jsonl
    # the plot and the class grid from every row in --out (both kinds on one figure)
    python experiments/results/fmnist_guidance.py --plot experiments/results/fmnist_guidance.png \\
        --grid experiments/results/fmnist_guidance_grid_KIND.png --out /work/runs/guidance.jsonl

Each scale is one ``python -m diffjax.main --mode sample`` (the command is stored with its row): labels cycle as
``y = arange(n) % 10``, with ``sampling.classifier_scale = s`` (score + s grad log p(y | x_t)) or
``sampling.guidance_scale = w`` (``(1 + w) s(x, y) - w s(x)``). Every set is scored against the 10,000 test images by
the feature classifier (experiments/results/score_samples.py's settings); the intended-class accuracy is the fraction
of samples that classifier assigns to the label they were guided towards. Rows are appended to ``--out``; scales
already there are skipped, so the script resumes.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

CLASSES = ("T-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")


def load_rows(path):
    if not os.path.exists(path):
        return []
    return [json.loads(line) for line in open(path) if line.strip()]


def sample_at(args, scale, label):
    """Run ``--mode sample`` at one guidance scale; returns (samples path, wall seconds, command)."""
    flags = [f"--config.sampling.num_samples={args.num_samples}", f"--config.sampling.batch_size={args.batch_size}"]
    flags += [f"--config.{o}" for o in args.override]
    if args.kind == "classifier":
        flags += [f"--config.sampling.classifier_workdir={args.noisy_classifier}",
                  f"--config.sampling.classifier_scale={scale}"]
    else:
        flags += [f"--config.sampling.guidance_scale={scale}"]
    cmd = [sys.executable, "-m", "diffjax.main", "--config", args.config, "--workdir", args.workdir, "--mode",
           "sample"] + flags
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    with open(os.path.splitext(args.out)[0] + ".log", "a") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    if rc:
        raise SystemExit(f"command failed (rc {rc}): {' '.join(cmd)}")
    wall = time.perf_counter() - t0
    sdir = os.path.join(args.workdir, "samples")
    newest = max((f for f in os.listdir(sdir) if f.startswith("samples_") and f.endswith(".npz")),
                 key=lambda f: os.path.getmtime(os.path.join(sdir, f)))
    dest = os.path.join(sdir, f"guidance_{args.kind}_{label}.npz")
    shutil.move(os.path.join(sdir, newest), dest)
    png = os.path.join(sdir, newest[:-4] + ".png")
    if os.path.exists(png):
        shutil.move(png, dest[:-4] + ".png")
    return dest, wall, " ".join(cmd[1:])


def measure(args):
    import score_samples as ss
    from diffjax import run as dr
    if args.batch_size % 10:
        raise SystemExit(f"--batch-size must be a multiple of 10 (labels cycle per batch), got {args.batch_size}")
    if args.kind == "classifier" and not args.noisy_classifier:
        raise SystemExit("--kind classifier needs --noisy-classifier (a config.task=noisy_classifier workdir)")
    rows = load_rows(args.out)
    done = {(r["kind"], r["workdir"], r["scale"], r["n"]) for r in rows}
    config = ss.fashion_mnist_eval_config(args.classifier)
    fnet = dr.build_feature_net(config)
    ref = dr.reference_statistics(config, config.eval.stats_dir, feature_net=fnet)
    for scale in [float(s) for s in args.scales.split(",")]:
        if (args.kind, args.workdir, scale, args.num_samples) in done:
            continue
        path, wall, cmd = sample_at(args, scale, f"{scale:g}")
        images = np.load(path)["x"]
        m = ss.score(images, config, fnet, ref, labels=np.arange(len(images)) % 10)
        row = dict(kind=args.kind, workdir=args.workdir, scale=scale, **m,
                   sample_s=round(wall, 1), command=cmd, samples=path, date=time.strftime("%Y-%m-%d"))
        print(json.dumps({k: row[k] for k in ("kind", "scale", "frechet_distance", "intended_accuracy",
                                              "classifier_score", "sample_s")}), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    names = {"classifier": "classifier guidance", "cfg": "classifier-free guidance"}
    for kind in ("classifier", "cfg"):
        rs = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["scale"])
        if not rs:
            continue
        s = [r["scale"] for r in rs]
        ax1.plot(s, [r["frechet_distance"] for r in rs], "o-", label=names[kind])
        ax2.plot(s, [r["intended_accuracy"] for r in rs], "o-", label=names[kind])
    ax1.set(xlabel="guidance scale", ylabel="classifier Frechet distance (lower is better)")
    ax2.set(xlabel="guidance scale", ylabel="intended-class accuracy", ylim=(0, 1))
    ax2.axhline(0.1, color="gray", lw=0.8, ls=":")
    for ax in (ax1, ax2):
        ax.set_xscale("symlog", linthresh=1)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def class_grid(rows, kind, path, scales, per_class=6):
    """One row per class; for each scale a block of ``per_class`` samples guided towards that class."""
    from PIL import Image
    rs = {r["scale"]: r for r in rows if r["kind"] == kind}
    scales = [s for s in scales if s in rs]
    if not scales:
        return
    blocks = []
    for s in scales:
        x = np.load(rs[s]["samples"])["x"][..., 0]
        per_class = min(per_class, len(x) // 10)
        rows_img = [np.concatenate([x[c + 10 * j] for j in range(per_class)], axis=1) for c in range(10)]
        blocks.append(np.concatenate(rows_img, axis=0))
        blocks.append(np.full((blocks[-1].shape[0], 6), 255, np.uint8))
    grid = np.concatenate(blocks[:-1], axis=1)
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(path)
    print(f"wrote {path} (rows: {', '.join(CLASSES)}; column blocks: scales {scales})")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kind", choices=("classifier", "cfg"))
    p.add_argument("--workdir", help="the diffusion model's workdir")
    p.add_argument("--config", default="configs/fashion_mnist_budget.py")
    p.add_argument("--override", action="append", default=[], help="FIELD=VALUE of the model's config (repeatable)")
    p.add_argument("--noisy-classifier", default="", help="workdir of configs/fashion_mnist_noisy_classifier.py")
    p.add_argument("--classifier", default="/work/runs/fmnist_classifier", help="the feature classifier's workdir")
    p.add_argument("--scales", default="0,1,2,4,8")
    p.add_argument("--num-samples", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--out", required=True, help="JSON lines of results (appended)")
    p.add_argument("--plot", default="", help="write the two curves of every row in --out here")
    p.add_argument("--grid", default="", help="write class grids here (KIND in the name is replaced by the kind)")
    p.add_argument("--grid-scales", default="0,2,8")
    args = p.parse_args()
    if args.kind:
        if not args.workdir:
            raise SystemExit("--kind needs --workdir")
        measure(args)
    rows = load_rows(args.out)
    if args.plot:
        plot(rows, args.plot)
    if args.grid:
        for kind in ("classifier", "cfg"):
            class_grid(rows, kind, args.grid.replace("KIND", kind), [float(s) for s in args.grid_scales.split(",")])
    print("\n| guidance | scale | n | Frechet distance | intended-class accuracy | classifier score | sample s |")
    print("|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["kind"], r["scale"])):
        print(f"| {r['kind']} | {r['scale']:g} | {r['n']} | {r['frechet_distance']:.2f} | "
              f"{r['intended_accuracy']:.3f} | {r['classifier_score']:.2f} | {r['sample_s']:.0f} |")


if __name__ == "__main__":
    main()
