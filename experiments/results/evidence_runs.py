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

# The sampler menus, the same for both libraries (labels as in experiments/baselines/diffusers_fashion_mnist.py);
# label -> (NFE, diffjax sampling overrides), every entry at most 50 network evaluations.
FLOW_MENU = {
    "euler50": (50, {"sampling.method": "ode_euler", "sampling.num_steps": 50}),
    "heun25": (50, {"sampling.method": "ode_heun", "sampling.num_steps": 25}),
    "unipc25": (25, {"sampling.method": "unipc", "sampling.num_steps": 25}),
}
DDPM_MENU = {  # DDIM with diffusers' clipping convention (x0 clipped, the network's eps kept)
    "ddim50_clip": (50, {"sampling.method": "ddim", "sampling.num_steps": 50, "sampling.options.clip_x0": True}),
    "dpmpp2m25": (25, {"sampling.method": "dpm_solver", "sampling.num_steps": 25, "sampling.options.order": 2}),
    "unipc25": (25, {"sampling.method": "unipc", "sampling.num_steps": 25}),
}
EDM_MENU = {
    "heun25_karras": (50, {"sampling.method": "ode_heun", "sampling.num_steps": 25,
                           "sampling.options.time_grid": "karras"}),
    "dpmpp2m25": (25, {"sampling.method": "dpm_solver", "sampling.num_steps": 25, "sampling.options.order": 2}),
    "unipc25": (25, {"sampling.method": "unipc", "sampling.num_steps": 25}),
}
# the cascade: the base model's own sampler (Heun, 25 steps at 14x14), then the super-resolution stage's Heun with 10
# (or 25) steps at 28x28 from the base sample corrupted to the sampling augmentation level (the choice on validation)
CASCADE_MENU = {f"heun25_heun{k}_aug{a:g}": (50 + 2 * k, {"sampling.method": "ode_heun", "sampling.num_steps": k,
                                                          "cascade.sampling_aug_level": a})
                for k, levels in ((10, (0.0, 0.1, 0.2, 0.3)), (25, (0.1, 0.2, 0.3))) for a in levels}
# the same total training compute as the single-stage model (XLA's count, experiments/bench/config_step.py): base
# 1500 x 24.9 GFLOP + SR 1200 x 95.8 GFLOP = 152 TFLOP against rectified flow's 1500 x 102.0 = 153 TFLOP
CASCADE_SR = {"training.n_iters": 1200}
# the same total again, moved to the base model (the bottleneck: the SR stage alone scores half the cascade's
# distance): base 3000 x 24.9 + SR 800 x 95.8 = 151 TFLOP
CASCADE_BASE_HEAVY = {"training.n_iters": 3000}, {"training.n_iters": 800}
# and further: a quarter-width SR stage (ch 16: 25.6 GFLOP/step; its task is local) frees it for a 4000-step base:
# base 4000 x 24.9 + SR 2000 x 25.6 = 151 TFLOP
CASCADE_SMALL_SR = {"training.n_iters": 4000}, {"training.n_iters": 2000, "model.overrides.ch": 16}
# prompt following (issue 40): UniPC 25 at classifier-free guidance scales 0-8 (two network evaluations per step
# when guided); text models sample the fixed held-out prompts (artifacts/heldout_prompts.txt: 10 per class, every
# shade x size statement, phrasings no training caption has), class-conditional models cycle the ten labels
PROMPTS = os.path.join("experiments", "results", "artifacts", "heldout_prompts.txt")  # from REPO, the runs' cwd
GUIDANCE_SCALES = (0, 1, 2, 3, 4, 6, 8)
TEXT_MENU = {f"unipc25_w{w:g}": (50 if w else 25, {
    "sampling.method": "unipc", "sampling.num_steps": 25, "sampling.guidance_scale": float(w),
    "sampling.prompt_file": PROMPTS, "sampling.batch_size": 500}) for w in GUIDANCE_SCALES}
CLIP_MENU = {f"unipc25_clip{c:g}": (25, {
    "sampling.method": "unipc", "sampling.num_steps": 25, "sampling.clip_scale": float(c),
    "sampling.prompt_file": PROMPTS, "sampling.batch_size": 500}) for c in (1, 2, 4, 8, 16)}  # 0: no prompt
LABEL_MENU = {k: (nfe, {o: v for o, v in ov.items() if o != "sampling.prompt_file"})
              for k, (nfe, ov) in TEXT_MENU.items()}
CLASS_ACCURACY_TARGET = 0.9
# diffusers' training example in diffjax (experiments/baselines/diffusers_fashion_mnist.py, --recipe peer): AdamW
# 2e-4 with torch's weight decay 0.01, constant rate, no clipping, EMAModel(0.9999, use_ema_warmup=True, power=2/3)
PEER_RECIPE = {"optim.optimizer": "adamw", "optim.lr": 2e-4, "optim.weight_decay": 0.01, "optim.warmup": 0,
               "optim.lr_decay": "constant", "optim.grad_clip": 0.0, "model.ema_rate": 0.9999,
               "model.ema_schedule": "power_warmup", "model.ema_power": 2 / 3}
PEER = os.path.join(REPO, "experiments", "baselines", "diffusers_fashion_mnist.py")


class Row:
    """A row of the table: trains a run and samples it with each entry of its menu."""

    def choose(self, val: dict) -> str:
        """The menu entry the validation rows ``{label: row}`` choose: the lowest Frechet distance."""
        return min(val.values(), key=lambda r: r["frechet_distance"])["sampler"]


class Diffjax(Row):
    """A diffjax row: ``python -m diffjax.main --config CONFIG`` with training overrides, in the row's workdir
    ``RUNS/METHOD_seedS`` or, with ``run``, in ``RUNS/RUN_seedS`` (a training several rows sample)."""

    def __init__(self, config: str, menu: dict, overrides: dict | None = None, run: str | None = None):
        self.config, self.menu, self.overrides, self.run = config, menu, dict(overrides or {}), run

    def _base(self, workdir):
        return [sys.executable, "-m", "diffjax.main", "--config", self.config, "--workdir", workdir]

    def _workdir(self, workdir, args):
        if self.run is None:
            return workdir
        return os.path.join(args.runs, f"{self.run}_seed{os.path.basename(workdir).rsplit('_seed', 1)[1]}")

    def train(self, workdir, seed, log, args):
        workdir = self._workdir(workdir, args)
        cmd = self._base(workdir) + flags({**self.overrides, "seed": seed}) + ["--noprogress"]
        call(cmd, log)  # trains, resumes, or finds the run finished
        return " ".join(cmd[1:])

    def _sample_overrides(self, label, seed, args) -> dict:
        return {**self.overrides, **self.menu[label][1], "sampling.num_samples": args.num_samples, "seed": seed,
                "sampling.clip_denoised": False}

    def _sample_pattern(self, label) -> str:
        """--mode sample names its file samples_STEP_METHOD_STEPS[_TAGS].npz: this sampler's."""
        ov = self.menu[label][1]
        return f"samples_*_{ov['sampling.method']}_{ov['sampling.num_steps']}*.npz"

    def sample(self, workdir, label, seed, out, log, args):
        workdir = self._workdir(workdir, args)
        cmd = self._base(workdir) + flags(self._sample_overrides(label, seed, args)) + ["--mode", "sample",
                                                                                       "--noprogress"]
        call(cmd, log)
        written = sorted(glob.glob(os.path.join(workdir, "samples", self._sample_pattern(label))),
                         key=os.path.getmtime)  # the newest
        if not written:
            raise SystemExit(f"no sample file {self._sample_pattern(label)} in {workdir}/samples after: "
                             f"{' '.join(cmd)}")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        shutil.copyfile(written[-1], out)
        return " ".join(cmd[1:])


class FewStep(Diffjax):
    """A few-step student trained from scratch (issue 42: ``distill.method`` meanflow | shortcut | scm): one training
    in ``RUNS/RUN_seedS`` shared by its 1-step and 2-step rows (``RUN_1step``, ``RUN_2step``), each row's menu one
    ``distill.sample_steps``; ``--mode sample`` writes ``samples_STEP.npz``."""

    def __init__(self, config: str, run: str, steps: int):
        super().__init__(config, {f"{steps}step": (steps, {"distill.sample_steps": steps})}, run=run)

    def _sample_overrides(self, label, seed, args) -> dict:
        return {**self.overrides, **self.menu[label][1], "sampling.num_samples": args.num_samples,
                "sampling.batch_size": 250, "seed": seed}

    def _sample_pattern(self, label) -> str:
        return "samples_*.npz"


class Prompted(Diffjax):
    """A model sampled for prompts or class labels at several guidance scales (issue 40): the scale chosen on
    validation is the one with the lowest Frechet distance among those whose samples the classifier assigns to the
    intended class at least ``CLASS_ACCURACY_TARGET`` of the time (none reaching it: the most accurate)."""

    def sample(self, workdir, label, seed, out, log, args):
        from diffjax.data import heldout_prompts
        want, path = "\n".join(heldout_prompts()) + "\n", os.path.join(REPO, PROMPTS)
        if not os.path.exists(path):
            with open(path, "w") as f:
                f.write(want)
        elif open(path).read() != want:
            raise SystemExit(f"{PROMPTS} is not diffjax.data.heldout_prompts() (one per line); restore it")
        return super().sample(workdir, label, seed, out, log, args)

    def choose(self, val: dict) -> str:
        good = [r for r in val.values() if r["class_accuracy"] >= CLASS_ACCURACY_TARGET]
        if good:
            return min(good, key=lambda r: r["frechet_distance"])["sampler"]
        return max(val.values(), key=lambda r: r["class_accuracy"])["sampler"]


class ClipGuided(Prompted):
    """CLIP guidance (issue 40) of a trained unconditional row (``run``): the noise-aware CLIP of
    ``configs/fashion_mnist_clip_rf.py`` trained once in ``RUNS/clip_rf``, the menu's entries its scales."""

    def _clip(self, args):
        return os.path.join(args.runs, "clip_rf")

    def train(self, workdir, seed, log, args):
        clip = self._clip(args)
        if not os.path.exists(os.path.join(clip, "clip_params.npz")):
            call([sys.executable, "-m", "diffjax.main", "--config", "configs/fashion_mnist_clip_rf.py", "--workdir",
                  clip], clip + ".log")
        self.overrides["sampling.clip_workdir"] = clip
        return super().train(workdir, seed, log, args)

    def sample(self, workdir, label, seed, out, log, args):
        self.overrides["sampling.clip_workdir"] = self._clip(args)
        return super().sample(workdir, label, seed, out, log, args)


class Latent(Diffjax):
    """Latent diffusion (issue 39): the autoencoder of ``configs/fashion_mnist_autoencoder.py`` with
    ``autoencoder`` overrides trained once in ``RUNS/AE_NAME`` (seed 0, shared by every seed), then the latent model
    on its latents (its UNet's channels set to the autoencoder's latent channels)."""

    def __init__(self, config: str, menu: dict, overrides: dict | None = None, *, ae_name: str = "autoencoder",
                 autoencoder: dict | None = None):
        self.ae_name, self.ae_overrides = ae_name, dict(autoencoder or {})
        channels = self.ae_overrides.get("autoencoder.latent_channels", 4)
        super().__init__(config, menu, {"model.overrides.num_channels": channels, **(overrides or {})})

    def _autoencoder(self, args):
        return os.path.join(args.runs, self.ae_name)

    def train(self, workdir, seed, log, args):
        ae = self._autoencoder(args)
        call([sys.executable, "-m", "diffjax.main", "--config", "configs/fashion_mnist_autoencoder.py", "--workdir", ae,
              "--config.eval.classifier_workdir=" + evidence.ARTIFACTS, "--noprogress"] + flags(self.ae_overrides),
             ae + ".log")
        self.overrides["latent.autoencoder_workdir"] = ae
        return super().train(workdir, seed, log, args)

    def sample(self, workdir, label, seed, out, log, args):
        self.overrides["latent.autoencoder_workdir"] = self._autoencoder(args)
        return super().sample(workdir, label, seed, out, log, args)


class Cascade(Diffjax):
    """A two-stage cascade (issue 39): the 14x14 base model of ``configs/fashion_mnist_cascade_base.py`` in
    ``RUNS/cascade_base_seedS`` (shared by the cascade rows of one seed), then the super-resolution stage (this
    row's config and overrides) in the row's workdir; sampled through both."""

    def __init__(self, menu: dict, overrides: dict | None = None, run: str | None = None, *,
                 base_name: str = "cascade_base", base: dict | None = None):
        super().__init__("configs/fashion_mnist_cascade_sr.py", menu, overrides, run)
        self.base_name, self.base_overrides = base_name, dict(base or {})

    def _base_workdir(self, args, seed):
        return os.path.join(args.runs, f"{self.base_name}_seed{seed}")

    def train(self, workdir, seed, log, args):
        base = self._base_workdir(args, seed)
        call([sys.executable, "-m", "diffjax.main", "--config", "configs/fashion_mnist_cascade_base.py",
              "--workdir", base, "--noprogress"] + flags({**self.base_overrides, "seed": seed}), base + ".log")
        return super().train(workdir, seed, log, args)

    def sample(self, workdir, label, seed, out, log, args):
        train_seed = int(os.path.basename(workdir).rsplit("_seed", 1)[1])
        self.overrides["cascade.base_workdir"] = self._base_workdir(args, train_seed)
        return super().sample(workdir, label, seed, out, log, args)


class Diffusers(Row):
    """A diffusers row: the peer script (torch and diffusers in their own environment, ``--peer-python``)."""

    def __init__(self, method: str, recipe: str, menu: dict):
        self.method, self.recipe, self.menu = method, recipe, menu

    def train(self, workdir, seed, log, args):
        cmd = [args.peer_python, PEER, "train", "--out", workdir, "--method", self.method, "--recipe", self.recipe,
               "--seed", str(seed), "--threads", str(args.threads)]
        call(cmd, log)
        return " ".join(cmd[1:])

    def sample(self, workdir, label, seed, out, log, args):
        cmd = [args.peer_python, PEER, "sample", "--out", workdir, "--sampler", label, "--sample-seed", str(seed),
               "--num-samples", str(args.num_samples), "--to", out, "--threads", str(args.threads)]
        call(cmd, log)
        return " ".join(cmd[1:])


METHODS = {
    "rectified_flow": Diffjax("configs/fashion_mnist_budget_rf.py", FLOW_MENU),
    "edm": Diffjax("configs/fashion_mnist_budget_edm.py", EDM_MENU),
    "ddpm": Diffjax("configs/fashion_mnist_budget.py", DDPM_MENU),
    "ddpm_peer_recipe": Diffjax("configs/fashion_mnist_budget.py", DDPM_MENU, PEER_RECIPE),
    "latent": Latent("configs/fashion_mnist_latent.py", FLOW_MENU),
    # 8 latent channels (7x7x8 = 392 numbers, half the image's), the autoencoder trained twice as long; the latent
    # model at the pixel model's half time rather than its steps (a latent step is ~5x cheaper): 4000 steps
    "latent_c8": Latent("configs/fashion_mnist_latent.py", FLOW_MENU, {"training.n_iters": 4000},
                        ae_name="autoencoder_c8",
                        autoencoder={"autoencoder.latent_channels": 8, "training.n_iters": 3000}),
    # fewer latent steps: 3200 (0.190 s each, 2026-12-07) and 3600 (0.176 s quiet against the pixel model's 0.878 s,
    # the medians of 2026-12-08's alternating measurements: 3600 x 0.176 + 25 s encoding + 15 s sampling is 0.49x
    # of 1500 x 0.878 + 73 s)
    **{f"latent_c8_{n}": Latent("configs/fashion_mnist_latent.py", FLOW_MENU, {"training.n_iters": n},
                                ae_name="autoencoder_c8",
                                autoencoder={"autoencoder.latent_channels": 8, "training.n_iters": 3000})
       for n in (3200, 3600)},
    # a quarter of the latent UNet's FLOPs (ch 32: 6.8 GFLOP/step, ~0.43x its time per step) for twice its steps and
    # more: 7500 steps, ~0.44x of the pixel model's time with encoding and sampling
    "latent_c8_small": Latent("configs/fashion_mnist_latent.py", FLOW_MENU,
                              {"training.n_iters": 7500, "model.overrides.ch": 32}, ae_name="autoencoder_c8",
                              autoencoder={"autoencoder.latent_channels": 8, "training.n_iters": 3000}),
    "cascade": Cascade(CASCADE_MENU, CASCADE_SR),
    "cascade_base_heavy": Cascade(CASCADE_MENU, CASCADE_BASE_HEAVY[1], base_name="cascade_base3000",
                                  base=CASCADE_BASE_HEAVY[0]),
    "cascade_small_sr": Cascade(CASCADE_MENU, CASCADE_SMALL_SR[1], base_name="cascade_base4000",
                                base=CASCADE_SMALL_SR[0]),
    # its augmentation ablation: the same SR stage trained and sampled without corrupting its condition
    "cascade_small_sr_noaug": Cascade({k: v for k, v in CASCADE_MENU.items() if k.endswith("_aug0")} |
                                      {"heun25_heun25_aug0": (100, {"sampling.method": "ode_heun",
                                                                    "sampling.num_steps": 25,
                                                                    "cascade.sampling_aug_level": 0.0})},
                                      {**CASCADE_SMALL_SR[1], "cascade.aug_level_max": 0.0,
                                       "cascade.sampling_aug_level": 0.0},
                                      base_name="cascade_base4000", base=CASCADE_SMALL_SR[0]),
    # the super-resolution stage alone (the cascade row's training): on the first 1000 training images, downsampled
    "cascade_sr_alone": Cascade({"heun10_aug0.1_ontrain": (20, {**CASCADE_MENU["heun25_heun10_aug0.1"][1],
                                                             "cascade.sampling_low_res": "train"})}, CASCADE_SR,
                                run="cascade"),
    "cascade_noaug": Cascade({"heun25_heun10_aug0": CASCADE_MENU["heun25_heun10_aug0"]},
                             {**CASCADE_SR, "cascade.aug_level_max": 0.0, "cascade.sampling_aug_level": 0.0}),
    **{f"{run}_{k}step": FewStep(f"configs/fashion_mnist_{run}.py", run, k)
       for run in ("meanflow", "shortcut", "scm") for k in (1, 2)},
    # text conditioning (issue 40) against a class-conditional rectified flow of the same recipe and budget
    "text_unet": Prompted("configs/fashion_mnist_text.py", TEXT_MENU),
    "text_dit": Prompted("configs/fashion_mnist_text_dit.py", TEXT_MENU),
    "text_mmdit": Prompted("configs/fashion_mnist_text_mmdit.py", TEXT_MENU),
    "clip_guided_rf": ClipGuided("configs/fashion_mnist_budget_rf.py", CLIP_MENU, run="rectified_flow"),
    "class_conditional": Prompted("configs/fashion_mnist_budget_rf.py", LABEL_MENU,
                                  {"data.num_classes": 10, "training.label_dropout": 0.1}),
    "diffusers_ddpm": Diffusers("ddpm", "peer", DDPM_MENU),
    "diffusers_ddpm_diffjax_recipe": Diffusers("ddpm", "diffjax", DDPM_MENU),
    "diffusers_flow_matching_diffjax_recipe": Diffusers("flow_matching", "diffjax", FLOW_MENU),
    "diffusers_flow_matching": Diffusers("flow_matching", "peer", FLOW_MENU),
}


def record(scorer, path, split, method, seed, sampler, nfe, chosen, command):
    import json
    m = scorer.score(evidence.load_images(path), split, evidence.drawn_for(path))
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
    p.add_argument("--peer-python", default="/work/venv-peer/bin/python",
                   help="a python with torch and diffusers, for the diffusers_* rows")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads of the diffusers rows")
    p.add_argument("methods", nargs="+", choices=sorted(METHODS))
    args = p.parse_args()
    os.makedirs(args.runs, exist_ok=True)
    scorer = evidence.Scorer()
    for method in args.methods:
        side = METHODS[method]
        for seed in args.seeds:
            workdir = os.path.join(args.runs, f"{method}_seed{seed}")
            log = workdir + ".log"
            train_cmd = side.train(workdir, seed, log, args)
            rows = [r for r in evidence.load_rows() if r["method"] == method and r["seed"] == seed]
            val = {r["sampler"]: r for r in rows if r["split"] == "val"}
            for label, (nfe, _) in side.menu.items():
                if label in val:
                    continue
                out = os.path.join(evidence.ARTIFACTS, "samples", f"{method}_seed{seed}_{label}_val.npz")
                cmd = side.sample(workdir, label, 100 + seed, out, log, args)
                val[label] = record(scorer, out, "val", method, seed, label, nfe, False, cmd)
            best = side.choose(val)
            if any(r["split"] == "test" for r in rows):
                continue
            out = os.path.join(evidence.ARTIFACTS, "samples", f"{method}_seed{seed}_{best}_test.npz")
            cmd = side.sample(workdir, best, 200 + seed, out, log, args)
            record(scorer, out, "test", method, seed, best, side.menu[best][0], True,
                   f"{cmd}  # trained by: {train_cmd}")


if __name__ == "__main__":
    main()
