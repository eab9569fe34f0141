"""Evaluate a trained Fashion-MNIST diffusion run with several samplers against baselines.

    python experiments/results/fashion_mnist.py --workdir /work/runs/fmnist_ddpm \\
        --classifier /work/runs/fmnist_classifier [--config configs/fashion_mnist_ddpm.py] [--quick]

For each sampler (ancestral 1000, DDIM 50 / 100, probability-flow Heun, adaptive ODE) it draws samples from the
latest checkpoint's EMA parameters and computes, with the Fashion-MNIST classifier as feature network, the Frechet
distance of the penultimate features to the test set, KID and the classifier score. Baselines at the same sample
counts: Gaussian noise images, the untrained (step-0) model sampled with DDIM 50, and real training images. Prints a
markdown table and writes ``WORKDIR/results/fashion_mnist.json`` and sample grids ``WORKDIR/results/*.png``.
Frechet distances are biased upward at small sample counts: compare rows with the same ``n`` only.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

# (label, sampling.method, num_steps (0: default), extra options, number of samples, clip predicted x0 to [-1, 1])
SAMPLERS = [
    ("DDIM 50 (eta 0)", "ddim", 50, {}, 500, False),
    ("DDIM 50 (eta 0)", "ddim", 50, {}, 128, False),
    ("DDIM 100 (eta 0)", "ddim", 100, {}, 128, False),
    ("ancestral 1000", "ancestral", 1000, {}, 128, False),
    ("prob-flow ODE Heun 100", "ode_heun", 100, {}, 128, False),
    ("prob-flow ODE adaptive (rtol=atol=1e-3)", "ode_adaptive", 0, {"rtol": 1e-3, "atol": 1e-3}, 128, False),
    ("DDIM 50 (eta 0), clip x0", "ddim", 50, {}, 500, True),
    ("DDIM 50 (eta 0), clip x0", "ddim", 50, {}, 128, True),
    ("DDIM 100 (eta 0), clip x0", "ddim", 100, {}, 128, True),
    ("ancestral 1000, clip x0", "ancestral", 1000, {}, 128, True),
]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", required=True)
    p.add_argument("--classifier", required=True, help="workdir of configs/fashion_mnist_classifier.py")
    p.add_argument("--config", default=os.path.join(REPO, "configs", "fashion_mnist_ddpm.py"))
    p.add_argument("--quick", action="store_true", help="a few samples per row (smoke test)")
    p.add_argument("--fresh", action="store_true", help="recompute rows already in WORKDIR/results/fashion_mnist.json")
    args = p.parse_args()

    import importlib.util

    import jax
    import ml_collections
    from diffjax import run as dr
    from diffjax.train.images import save_image_grid

    spec = importlib.util.spec_from_file_location("cfg", args.config)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    config = mod.get_config()
    config.eval.classifier_workdir = args.classifier
    config.eval.feature_net = "classifier"
    out_dir = os.path.join(args.workdir, "results")
    os.makedirs(out_dir, exist_ok=True)
    fnet = dr.build_feature_net(config)
    ref = dr.reference_statistics(config, args.workdir, feature_net=fnet)

    def metrics(images):
        config.eval.kid_subset_size = min(1000, len(images))
        config.eval.kid_subsets = 20
        config.eval.score_splits = 1
        m = dr.evaluate_images(config, args.workdir, images, feature_net=fnet, reference=ref)
        return {k: m[k] for k in ("frechet_distance", "kid", "classifier_score")}

    rows = []
    saved = os.path.join(out_dir, "fashion_mnist.json")
    done = {}
    if os.path.exists(saved) and not (args.fresh or args.quick):
        done = {(r["label"], r["n"]): r for r in json.load(open(saved))["rows"]}  # resume: keep finished rows

    def todo(label, n):
        if (label, n) in done:
            rows.append(done[(label, n)])
            print(json.dumps(done[(label, n)]), "(saved)", flush=True)
            return False
        return True

    def record(label, n, images, seconds, steps=None, grid=None):
        m = metrics(images)
        row = dict(label=label, n=int(n), seconds=round(seconds, 1), steps=steps, **m)
        rows.append(row)
        print(json.dumps(row), flush=True)
        with open(saved, "w") as f:
            json.dump(dict(step=step, rows=rows), f, indent=1)
        if grid:
            save_image_grid(os.path.join(out_dir, grid), images[:64])

    from diffjax import config_lib as cl
    sizes = sorted({row[4] for row in SAMPLERS})  # baselines at every sample count used
    if args.quick:
        sizes = [16]
    rng = np.random.default_rng(0)
    train_images, _ = cl.build_dataset(config).get(np.arange(60000))
    run = dr.Run(config, args.workdir)
    state, step = run.restore()
    if state is None:
        raise SystemExit(f"no checkpoint in {args.workdir}")
    for n in sizes:
        noise = np.clip(rng.normal(127.5, 64.0, (n, 28, 28, 1)), 0, 255).astype(np.uint8)
        real = train_images[rng.choice(len(train_images), n, replace=False)]
        if todo("baseline: Gaussian noise", n):
            record("baseline: Gaussian noise", n, noise, 0.0, grid="noise.png" if n == sizes[-1] else None)
        if todo("reference: real training images", n):
            record("reference: real training images", n, real, 0.0, grid="real.png" if n == sizes[-1] else None)

    untrained = run.fresh_state()
    from diffjax.data import from_unit

    def draw(params, method, num_steps, options, n, seed, clip=False):
        config.sampling.clip_denoised = clip
        config.sampling.method = method
        config.sampling.num_steps = num_steps
        config.sampling.options = ml_collections.ConfigDict(options)
        run._sample_jit.clear()  # the sampler is read from the config when a sample function is built
        bs = min(n, 128)
        xs, t0 = [], time.perf_counter()
        for i in range(0, n, bs):
            xs.append(run.sample(params, jax.random.fold_in(jax.random.key(seed), i), min(bs, n - i)))
        return from_unit(np.concatenate(xs)), time.perf_counter() - t0

    for n in sizes:
        if todo("baseline: untrained model, DDIM 50", n):
            imgs, sec = draw(untrained.ema_params, "ddim", 50, {}, n, 1)
            record("baseline: untrained model, DDIM 50", n, imgs, sec, steps=50)
    for label, method, num_steps, options, n, clip in SAMPLERS:
        if args.quick:
            n, num_steps = 16, min(num_steps, 30) if num_steps else 0
        label = f"trained (step {step}): {label}"
        if todo(label, n):
            imgs, sec = draw(state.ema_params, method, num_steps, dict(options), n, 2, clip=clip)
            name = f"{method}_{num_steps or 'adaptive'}_{n}{'_clip' if clip else ''}.png"
            record(label, n, imgs, sec, steps=num_steps or None, grid=name)
    print("\n| samples | n | Frechet distance (classifier features) | KID | classifier score | sampling s |")
    print("|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["n"], r["frechet_distance"])):
        print(f"| {r['label']} | {r['n']} | {r['frechet_distance']:.2f} | {r['kid']:.4f} | "
              f"{r['classifier_score']:.2f} | {r['seconds']} |")


if __name__ == "__main__":
    main()
