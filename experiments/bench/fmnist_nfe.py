"""Classifier Frechet distance against network evaluations on a trained Fashion-MNIST model, with sampling wall time:
the trained-model half of the sampler-efficiency table in experiments/bench/README.md.

    python experiments/bench/fmnist_nfe.py --workdir /work/runs/budget/recipe \\
        --classifier /work/runs/fmnist_classifier --nfe 5,10,20,50 --samplers ddim,dpm_solver_2m,unipc,edm_heun

The model is the run in ``--workdir`` (its config: ``--config``, default configs/fashion_mnist_budget.py, plus
``--override FIELD=VALUE``); its EMA parameters of the newest checkpoint are sampled by each sampler at each NFE with
the same prior draws, ``sampling.clip_denoised`` as in the config. NFE is what the sampler reports
(``return_nfe=True``); a sampler whose NFE cannot hit a target exactly (``edm_heun``: ``2 steps - 1``, ``ode_heun``:
``2 steps``) takes the largest count not above it, and a target below a sampler's least count (``ode_heun``: 2;
``dpm_solver`` takes at least ``order`` steps) is skipped with a message. Wall time: the sampling of all samples
after compilation (compilation reported apart), on this machine's CPUs. Every set is scored like
experiments/results/score_samples.py (the same feature classifier, against the 10,000 test images). Rows are
appended to ``--out`` (default WORKDIR/nfe_table.jsonl); rows already there are skipped, so the script resumes.
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

# label: (sampling.method, steps for a target NFE, sampling.options, least NFE)
SAMPLERS = {
    "ddim": ("ddim", lambda nfe: nfe, {}, 1),
    "dpm_solver_2m": ("dpm_solver", lambda nfe: nfe, {"order": 2}, 2),
    "dpm_solver_3m": ("dpm_solver", lambda nfe: nfe, {"order": 3}, 3),
    "dpm_solver_2m_trailing": ("dpm_solver", lambda nfe: nfe, {"order": 2, "time_grid": "ddpm_trailing"}, 2),
    "unipc": ("unipc", lambda nfe: nfe, {"order": 2, "variant": "bh2"}, 1),
    "unipc_3": ("unipc", lambda nfe: nfe, {"order": 3, "variant": "bh2"}, 1),
    "edm_heun": ("edm_heun", lambda nfe: (nfe + 1) // 2, {}, 1),
    "ode_euler": ("ode_euler", lambda nfe: nfe, {}, 1),
    "ode_heun": ("ode_heun", lambda nfe: nfe // 2, {}, 2),
}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--classifier", required=True, help="workdir of configs/fashion_mnist_classifier.py")
    p.add_argument("--config", default=os.path.join(REPO, "configs", "fashion_mnist_budget.py"))
    p.add_argument("--override", action="append", default=[], help="FIELD=VALUE of the run's config (repeatable)")
    p.add_argument("--samplers", default="ddim,dpm_solver_2m,unipc,edm_heun")
    p.add_argument("--nfe", default="5,10,20,50")
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--out", default="")
    args = p.parse_args()
    import jax
    from diffjax import config_lib as cl
    from diffjax import run as dr
    from diffjax.data import from_unit
    import score_samples

    base = score_samples.load_run_config(args.config, args.override)
    run = dr.Run(base, args.workdir)
    state, step = run.restore()
    if state is None:
        raise SystemExit(f"no checkpoint in {args.workdir}")
    params = state.ema_params
    out_path = args.out or os.path.join(args.workdir, "nfe_table.jsonl")
    done = set()
    if os.path.exists(out_path):
        with open(out_path) as f:
            done = {(r["sampler"], r["target_nfe"]) for r in map(json.loads, f)}
    eval_config = score_samples.fashion_mnist_eval_config(args.classifier)
    fnet = dr.build_feature_net(eval_config)
    ref = dr.reference_statistics(eval_config, eval_config.eval.stats_dir, feature_net=fnet)
    n, bs = args.num_samples, args.batch_size
    key = jax.random.fold_in(jax.random.key(base.seed), 5)
    os.makedirs(os.path.join(args.workdir, "samples", "nfe"), exist_ok=True)
    print(f"step {step}: {n} samples per set, batches of {bs}, {jax.device_count()} device(s) {jax.devices()[0]}",
          flush=True)
    for label in args.samplers.split(","):
        method, steps_for, options, least = SAMPLERS[label]
        for target in (int(v) for v in args.nfe.split(",")):
            if (label, target) in done:
                continue
            if target < least:
                print(f"{label} at NFE {target}: skipped, it takes at least {least} evaluations", flush=True)
                continue
            config = copy.deepcopy(base)
            config.sampling.method, config.sampling.num_steps = method, steps_for(target)
            config.sampling.options = cl.sampler_options_config()  # only this sampler's options set
            for name, value in options.items():
                config.sampling.options[name] = value
            cl.validate(config)
            sampler = cl.build_sampler(config)

            def sample(params, key, config=config, sampler=sampler):
                k_prior, k_s = jax.random.split(key)
                x_T = run.sde.prior_sample(k_prior, cl.input_shape(config, bs))
                score_fn = cl.build_sampling_score_fn(config, run.model, run.sde, params)
                return sampler(k_s, x_T, score_fn, run.sde, return_nfe=True)

            t0 = time.perf_counter()
            compiled = jax.jit(sample).lower(params, key).compile()
            compile_s = time.perf_counter() - t0
            xs, t0 = [], time.perf_counter()
            for i in range(-(-n // bs)):
                x, nfe = compiled(params, jax.random.fold_in(key, i))
                xs.append(np.asarray(x))
            sample_s = time.perf_counter() - t0
            x = np.concatenate(xs)[:n]
            if not np.all(np.isfinite(x)):
                raise SystemExit(f"{label} at NFE {target}: non-finite samples")
            images = from_unit(x)
            path = os.path.join(args.workdir, "samples", "nfe", f"{label}_nfe{target}.npz")
            np.savez(path, x=images)
            scores = score_samples.score(images, eval_config, fnet, ref)
            row = dict(sampler=label, method=method, options=options, target_nfe=target, nfe=int(nfe),
                       num_steps=config.sampling.num_steps, clip_denoised=bool(config.sampling.clip_denoised),
                       step=int(step), compile_s=round(compile_s, 1), sample_s=round(sample_s, 1),
                       ms_per_sample=round(1000 * sample_s / n, 1), path=path, **scores)
            print(json.dumps(row), flush=True)
            with open(out_path, "a") as f:
                f.write(json.dumps(row) + "\n")
    with open(out_path) as f:
        rows = [json.loads(line) for line in f]
    print(f"\nstep {step}, {n} samples, FD (classifier features; lower is better) / sampling seconds for all samples")
    nfes = sorted({r["target_nfe"] for r in rows})
    print("| sampler | " + " | ".join(f"NFE {v}" for v in nfes) + " |\n|---|" + "---|" * len(nfes))
    for label in dict.fromkeys(r["sampler"] for r in rows):
        cells = []
        for v in nfes:
            r = next((r for r in rows if r["sampler"] == label and r["target_nfe"] == v), None)
            cells.append(f"{r['frechet_distance']:.2f} / {r['sample_s']:.0f} s" + (f" ({r['nfe']})" if r["nfe"] != v
                                                                                     else "") if r else "")
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
