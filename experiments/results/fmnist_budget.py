"""The Fashion-MNIST budget experiments: train variants of ``configs/fashion_mnist_budget.py``, sample each with its
samplers, score every sample set with the feature classifier, and print the table of experiments/results/README.md.

    python experiments/results/fmnist_budget.py --runs /work/runs/budget --classifier /work/runs/fmnist_classifier \\
        recipe rectified_flow edm            # variants by name (see VARIANTS); --list prints them
    python experiments/results/fmnist_budget.py --runs /work/runs/budget --classifier ... --table

Every variant is a set of ``--config.FIELD=VALUE`` overrides of the budget config (the exact command lines are
printed and stored with each row), trained by ``python -m diffjax.main`` in ``RUNS/NAME`` and sampled by
``--mode sample`` (1000 samples, the config's seed); each sample set is moved to ``RUNS/NAME/samples/LABEL.npz``
and scored against the 10,000 test images (``score_samples.py``'s settings). Results go to ``RUNS/results.jsonl``;
finished trainings and rows are skipped on a rerun, so the script is resumable and variants can be added later.
"""
from __future__ import annotations

import argparse
import glob
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
CONFIG = os.path.join(REPO, "configs", "fashion_mnist_budget.py")

# Samplers (label, overrides), each at most 50 network evaluations.
DDIM = [("ddim50_clip", {"sampling.method": "ddim", "sampling.num_steps": 50, "sampling.clip_denoised": True}),
        # diffusers' DDIM clip: x0 clipped in the x0 term, the network's eps kept (clip_denoised recomputes eps)
        ("ddim50_clip_x0", {"sampling.method": "ddim", "sampling.num_steps": 50, "sampling.clip_denoised": False,
                            "sampling.options.clip_x0": True}),
        ("ddim50_eta1_clip", {"sampling.method": "ddim", "sampling.num_steps": 50, "sampling.clip_denoised": True,
                              "sampling.options.eta": 1.0})]
FLOW = [("euler50", {"sampling.method": "ode_euler", "sampling.num_steps": 50, "sampling.clip_denoised": False}),
        ("heun25", {"sampling.method": "ode_heun", "sampling.num_steps": 25, "sampling.clip_denoised": False})]
KARRAS = [("heun25_karras", {"sampling.method": "ode_heun", "sampling.num_steps": 25,
                             "sampling.clip_denoised": False, "sampling.options.time_grid": "karras"})]
# EDM's model on equal steps in its time t = sigma (the samplers' default grid until 2026-11-30; now named)
SIGMA_UNIFORM = [("heun25", dict(FLOW[1][1], **{"sampling.options.time_grid": "uniform"}))]

# The processes / objectives of the Gaussian-path core (issue 17's table), and the levers (issue 18's ablations).
RECTIFIED_FLOW = {"training.sde": "rectified_flow", "training.continuous": True, "training.loss": "dsm",
                  "model.parameterization": "velocity", "training.weighting": "flow_matching",
                  "training.time_sampling": "logit_normal", "model.time_input": ""}
EDM = {"training.sde": "edm", "training.continuous": True, "training.loss": "dsm", "model.parameterization": "edm",
       "training.weighting": "edm", "training.time_sampling": "edm_lognormal", "model.time_input": ""}
VARIANTS = {
    "recipe": ("configs/fashion_mnist_budget.py as it is", {}, DDIM),
    "peer_recipe": ("the diffusers baseline's settings in diffjax: AdamW 2e-4 (weight decay 0.01), no warm-up, "
                    "constant rate, EMA 0.9999 with warm-up", {"optim.optimizer": "adamw", "optim.lr": 2e-4,
                                                                "optim.weight_decay": 0.01, "optim.warmup": 0,
                                                                "optim.lr_decay": "constant", "model.ema_rate": 0.9999,
                                                                "model.ema_schedule": "warmup"}, DDIM[:1]),
    "rectified_flow": ("rectified flow: velocity prediction, flow-matching loss, logit-normal t (SD3)",
                       RECTIFIED_FLOW, FLOW),
    "edm": ("EDM: sigma process, preconditioning, EDM weighting, log-normal sigma", EDM, KARRAS + SIGMA_UNIFORM),
    "v_prediction": ("v prediction (Salimans & Ho 2022) on the DDPM chain", {"model.parameterization": "v"}, DDIM),
    "min_snr": ("min-SNR-5 weighting (Hang et al. 2023), continuous VP, eps",
                {"training.continuous": True, "training.loss": "dsm", "training.weighting": "min_snr",
                 "model.time_input": ""}, DDIM[:1]),
    "constant_lr": ("constant learning rate after warm-up", {"optim.lr_decay": "constant"}, DDIM[:1]),
    "lr_2e-4": ("learning rate 2e-4 (the peer's)", {"optim.lr": 2e-4}, DDIM[:1]),
    "inverse_sqrt_lr": ("EDM2's inverse-sqrt decay after 300 steps", {"optim.lr_decay": "inverse_sqrt",
                                                                     "optim.lr_ref_steps": 300}, DDIM[:1]),
    "flips": ("random horizontal flips", {"data.random_flip": True}, DDIM[:1]),
    "attn_7": ("attention at 7x7 instead of 14x14", {"model.overrides.attn_resolutions": (7,)}, DDIM[:1]),
    "dropout_0.1": ("dropout 0.1", {"model.overrides.dropout": 0.1}, DDIM[:1]),
    "one_block": ("one residual block per level (1.1 M parameters)", {"model.overrides.num_res_blocks": 1},
                  DDIM[:1]),
}


def overrides_to_flags(overrides):
    return [f"--config.{k}={v}" for k, v in overrides.items()]


def run(cmd, log):
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    with open(log, "a") as f:
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
    if rc:
        raise SystemExit(f"command failed (rc {rc}), see {log}: {' '.join(cmd)}")
    return time.perf_counter() - t0


def load_rows(path):
    if not os.path.exists(path):
        return []
    return [json.loads(line) for line in open(path) if line.strip()]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", default="/work/runs/budget")
    p.add_argument("--classifier", default="/work/runs/fmnist_classifier")
    p.add_argument("--sigma-rels", default="", help="also sample these post-hoc EMA lengths, e.g. 0.05,0.1,0.2")
    p.add_argument("--samplers", default="", help="only these sampler labels")
    p.add_argument("--list", action="store_true")
    p.add_argument("--table", action="store_true")
    p.add_argument("variants", nargs="*")
    args = p.parse_args()
    if args.list:
        for name, (desc, ov, samplers) in VARIANTS.items():
            print(f"{name}: {desc}\n    {' '.join(overrides_to_flags(ov))}\n    samplers: {[s for s, _ in samplers]}")
        return
    os.makedirs(args.runs, exist_ok=True)
    results = os.path.join(args.runs, "results.jsonl")
    rows = load_rows(results)
    done = {(r["variant"], r["sampler"], r.get("ema_sigma_rel", 0.0)) for r in rows}
    scorer = None
    for name in args.variants:
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}; known: {list(VARIANTS)}")
        desc, ov, samplers = VARIANTS[name]
        workdir = os.path.join(args.runs, name)
        base = [sys.executable, "-m", "diffjax.main", "--config", os.path.relpath(CONFIG, REPO), "--workdir", workdir]
        log = os.path.join(args.runs, f"{name}.log")
        train_json = os.path.join(workdir, "train_time.json")
        if not os.path.exists(train_json):
            cmd = base + overrides_to_flags({**ov, **samplers[0][1]}) + ["--progress=false"]  # a valid sampler
            wall = run(cmd, log)
            os.makedirs(workdir, exist_ok=True)
            json.dump({"train_s": round(wall, 1), "command": " ".join(cmd[1:]),
                       "date": time.strftime("%Y-%m-%d")}, open(train_json, "w"))
        trained = json.load(open(train_json))
        sigma_rels = [0.0] + [float(s) for s in args.sigma_rels.split(",") if s]
        for label, sov in samplers:
            if args.samplers and label not in args.samplers.split(","):
                continue
            for sr in sigma_rels:
                if (name, label, sr) in done:
                    continue
                extra = {"sampling.ema_sigma_rel": sr} if sr else {}
                cmd = base + overrides_to_flags({**ov, **sov, **extra}) + ["--mode", "sample"]
                t_start = time.time()
                wall = run(cmd, log)
                out = os.path.join(workdir, "samples", f"{label}{f'_ema{sr}' if sr else ''}.npz")
                # --mode sample names its file by sampler and steps (samples_STEP_SAMPLER_STEPS[_ema..].npz): the
                # one this command wrote
                written = [p for p in glob.glob(os.path.join(workdir, "samples", "samples_00001500_*.npz"))
                           if os.path.getmtime(p) >= t_start - 1]
                assert len(written) == 1, written
                src = written[0]
                shutil.move(src, out)
                shutil.move(src[:-4] + ".png", out[:-4] + ".png")
                if scorer is None:
                    import score_samples as ss
                    from diffjax import run as dr
                    config = ss.fashion_mnist_eval_config(args.classifier)
                    fnet = dr.build_feature_net(config)
                    ref = dr.reference_statistics(config, config.eval.stats_dir, feature_net=fnet)
                    scorer = lambda images: ss.score(images, config, fnet, ref)  # noqa: E731
                m = scorer(np.load(out)["x"])
                row = dict(variant=name, description=desc, sampler=label, ema_sigma_rel=sr, **m,
                           train_s=trained["train_s"], sample_s=round(wall, 1), train_command=trained["command"],
                           sample_command=" ".join(cmd[1:]), samples=out, date=time.strftime("%Y-%m-%d"))
                print(json.dumps({k: row[k] for k in ("variant", "sampler", "ema_sigma_rel", "frechet_distance",
                                                      "kid", "classifier_score", "train_s", "sample_s")}), flush=True)
                with open(results, "a") as f:
                    f.write(json.dumps(row) + "\n")
                rows.append(row)
    print("\n| variant | sampler | post-hoc EMA | Frechet distance | KID | classifier score | train s | sample s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: r["frechet_distance"]):
        print(f"| {r['variant']} | {r['sampler']} | {r['ema_sigma_rel'] or '-'} | {r['frechet_distance']:.2f} | "
              f"{r['kid']:.3f} | {r['classifier_score']:.2f} | {r['train_s']:.0f} | {r['sample_s']:.0f} |")


if __name__ == "__main__":
    main()
