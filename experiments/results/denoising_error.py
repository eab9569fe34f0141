"""Denoising error of a trained image model against noise level: where in time the network is accurate, and how
its errors reach the samplers.

    python experiments/results/denoising_error.py --workdir /work/runs/budget/recipe \\
        [--config configs/fashion_mnist_budget.py] [--override FIELD=VALUE ...] [--params ema|raw]

On ``--num-images`` test images (fixed noise draw per image), for each time t of ``--times``: ``x_t = a x0 + s eps``,
the network's data prediction ``x0_hat`` (through the run's score bridge, any parameterization) and the implied
``eps_hat = (x_t - a x0_hat) / s``. Printed per t: the log-SNR, the mean squared errors of ``eps_hat`` and ``x0_hat``
per pixel, the x0 error of the best constant prediction (the data variance: the error of E[x0] when x_t carries no
information), and the fraction of x0_hat pixels more than 0.1 outside [-1, 1] (saturated: what
``sampling.clip_denoised`` cuts). A network whose x0 error at high noise is far above the data variance hands DDIM saturated, clipped predictions there.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--config", default=os.path.join(REPO, "configs", "fashion_mnist_budget.py"))
    p.add_argument("--override", action="append", default=[], help="FIELD=VALUE of the run's config (repeatable)")
    p.add_argument("--params", choices=("ema", "raw"), default="ema")
    p.add_argument("--num-images", type=int, default=256)
    p.add_argument("--times", default="0.01,0.05,0.1,0.2,0.3,0.5,0.7,0.8,0.9,0.95,0.99")
    args = p.parse_args()
    import jax
    import jax.numpy as jnp

    from diffjax import config_lib as cl
    from diffjax import core
    from diffjax.data import to_unit
    from diffjax.run import Run
    import score_samples

    config = score_samples.load_run_config(args.config, args.override)
    run = Run(config, args.workdir)
    state, step = run.restore()
    run.checkpoints.close()
    if state is None:
        raise SystemExit(f"no checkpoint in {args.workdir}")
    params = state.ema_params if args.params == "ema" else state.params
    images, _ = cl.build_dataset(config, split="test").get(np.arange(args.num_images))
    x0 = jnp.asarray(to_unit(images))
    sde = run.sde
    score_fn = cl.build_score_fn(config, run.model, run.sde, params)
    denoise = jax.jit(lambda x, t: core.x0_from_score(score_fn(x, t), x, t, run.sde))
    var0 = float(jnp.mean(jnp.var(x0, axis=0)))
    print(f"{args.workdir} step {step}, {args.params} parameters, {args.num_images} test images; "
          f"process {run.sde}; data variance per pixel {float(jnp.var(x0)):.3f} (around the per-pixel mean: "
          f"{var0:.3f})\n")
    print("| t | log-SNR | eps MSE | x0 MSE | x0 MSE of E[x0] | x0_hat beyond +-1.1 |")
    print("|---|---|---|---|---|---|")
    eps = jax.random.normal(jax.random.key(0), x0.shape)
    for tv in (float(v) for v in args.times.split(",")):
        t = jnp.full((x0.shape[0],), tv, jnp.float32)
        a, s = sde.marginal(t)
        a, s = a[:, None, None, None], s[:, None, None, None]
        x_t = a * x0 + s * eps
        x0_hat = denoise(x_t, t)
        eps_hat = (x_t - a * x0_hat) / s
        lam = float(jnp.log(a[0, 0, 0, 0] ** 2 / s[0, 0, 0, 0] ** 2))
        out = float(jnp.mean(jnp.abs(x0_hat) > 1.1))
        print(f"| {tv:g} | {lam:+.1f} | {float(jnp.mean((eps_hat - eps) ** 2)):.4f} | "
              f"{float(jnp.mean((x0_hat - x0) ** 2)):.4f} | {var0:.3f} | {out:.3f} |", flush=True)


if __name__ == "__main__":
    main()
