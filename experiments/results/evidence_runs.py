"""Train a headline row with several seeds, choose its sampler on the validation half, report on the test half, and
commit the sample sets: the runs behind ``experiments/results/artifacts/`` (see ``evidence.py``).

    python experiments/results/evidence_runs.py --runs /work/runs/evidence rectified_flow --seeds 0 1 2

Per seed: train ``configs/X.py`` with ``--config.seed=S`` in ``RUNS/METHOD_seedS`` (resumable); sample
``--num-samples`` images with every sampler of the method's menu (sampling seed ``100 + S``) and score them on the
``val`` half; the lowest validation distance chooses the sampler; a fresh set from it (sampling seed ``200 + S``)
is scored on the ``test`` half. Every set is copied into ``artifacts/samples`` and every row recorded in
``artifacts/results.jsonl`` (validation rows too, with ``chosen`` marking the pick). A rerun skips what is recorded.
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import evidence  # noqa: E402
from fmnist_budget import overrides_to_flags as flags, run as call  # noqa: E402

# label -> (NFE, overrides); every menu at most 50 network evaluations
FLOW_MENU = {
    "euler50": (50, {"sampling.method": "ode_euler", "sampling.num_steps": 50}),
    "heun25": (50, {"sampling.method": "ode_heun", "sampling.num_steps": 25}),
    "unipc25": (25, {"sampling.method": "unipc", "sampling.num_steps": 25}),
}
METHODS = {
    "rectified_flow": ("configs/fashion_mnist_budget_rf.py", FLOW_MENU),
}


def sample(base: list, overrides: dict, seed: int, n: int, workdir: str, out: str, log: str) -> str:
    cmd = base + flags({**overrides, "sampling.num_samples": n, "seed": seed, "sampling.clip_denoised": False}) \
        + ["--mode", "sample", "--noprogress"]
    call(cmd, log)
    # --mode sample names its file samples_STEP_METHOD_STEPS.npz: the newest of this sampler's
    written = sorted(glob.glob(os.path.join(workdir, "samples", f"samples_*_{overrides['sampling.method']}_"
                                                                f"{overrides['sampling.num_steps']}.npz")),
                     key=os.path.getmtime)
    if not written:
        raise SystemExit(f"no sample file of {overrides} in {workdir}/samples after: {' '.join(cmd)}")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    shutil.copyfile(written[-1], out)
    return " ".join(cmd[1:])


def record(scorer, path, split, method, seed, sampler, nfe, chosen, command):
    import json
    m = scorer.score(evidence.load_images(path), split)
    row = dict(file=evidence.relative(path), sha256=evidence.sha256(path), split=split, method=method, seed=seed,
               sampler=sampler, nfe=nfe, chosen=chosen, command=command, date=time.strftime("%Y-%m-%d"), **m)
    with open(evidence.results_path(), "a") as f:
        f.write(json.dumps(row) + "\n")
    print(f"{method} seed {seed} {sampler} ({split}): FD {m['frechet_distance']:.3f} {m['fd_interval']}", flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", default="/work/runs/evidence")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("methods", nargs="+", choices=sorted(METHODS))
    args = p.parse_args()
    scorer = evidence.Scorer()
    for method in args.methods:
        config, menu = METHODS[method]
        for seed in args.seeds:
            workdir = os.path.join(args.runs, f"{method}_seed{seed}")
            log = workdir + ".log"
            base = [sys.executable, "-m", "diffjax.main", "--config", config, "--workdir", workdir]
            train_cmd = base + [f"--config.seed={seed}", "--noprogress"]
            call(train_cmd, log)  # trains, resumes, or finds the run finished
            rows = [r for r in evidence.load_rows() if r["method"] == method and r["seed"] == seed]
            val = {r["sampler"]: r for r in rows if r["split"] == "val"}
            for label, (nfe, ov) in menu.items():
                if label in val:
                    continue
                out = os.path.join(evidence.ARTIFACTS, "samples", f"{method}_seed{seed}_{label}_val.npz")
                cmd = sample(base, ov, 100 + seed, args.num_samples, workdir, out, log)
                val[label] = record(scorer, out, "val", method, seed, label, nfe, False, cmd)
            best = min(val.values(), key=lambda r: r["frechet_distance"])["sampler"]
            if any(r["split"] == "test" for r in rows):
                continue
            nfe, ov = menu[best]
            out = os.path.join(evidence.ARTIFACTS, "samples", f"{method}_seed{seed}_{best}_test.npz")
            cmd = sample(base, ov, 200 + seed, args.num_samples, workdir, out, log)
            record(scorer, out, "test", method, seed, best, nfe, True,
                   f"{cmd}  # trained by: {' '.join(train_cmd[1:])}")


if __name__ == "__main__":
    main()
