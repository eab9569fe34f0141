"""The peer side of the Fashion-MNIST budget comparison: diffusers trains and samples the same budget.

    python -m venv /work/venv-peer && /work/venv-peer/bin/pip install torch==2.13.0 diffusers numpy pillow
    P=/work/venv-peer/bin/python; S=experiments/baselines/diffusers_fashion_mnist.py
    $P $S train --out /work/runs/evidence/diffusers_ddpm_seed0 --method ddpm --recipe peer --seed 0
    $P $S sample --out /work/runs/evidence/diffusers_ddpm_seed0 --sampler ddim50_clip --sample-seed 100 --to X.npz

torch and diffusers are installed only for this script (never diffjax dependencies); ``evidence_runs.py`` calls it
for the ``diffusers_*`` rows and scores what it writes. Everything the two sides share is fixed here: the data (the
60,000 Fashion-MNIST training images in [-1, 1], reshuffled every epoch), batch 64, 1500 steps (the budget: 96,000
images), the network (``UNet2DModel``, block widths (32, 64, 64), two ResNet layers per block, attention at 14x14
only: the shape of diffjax's budget UNet), and 1000 samples per set in diffjax's ``--mode sample`` format.

``--method``:
  * ``ddpm``: DDPM's eps loss on the linear-beta schedule (1e-4 .. 0.02, T = 1000), ``DDPMScheduler.add_noise``.
  * ``flow_matching``: the straight path ``x_s = (1 - s) x_0 + s eps`` of ``FlowMatchEulerDiscreteScheduler``
    (shift 1), the velocity target ``eps - x_0``, and logit-normal times from diffusers'
    ``compute_density_for_timestep_sampling("logit_normal", 0, 1)``, as diffusers' SD3 training examples do.
``--recipe``:
  * ``peer``: what a diffusers user writes from its unconditional-training example: AdamW 2e-4 (torch's defaults
    otherwise, weight decay 0.01), constant rate, no clipping, ``EMAModel(decay=0.9999, use_ema_warmup=True,
    power=2/3)``.
  * ``diffjax``: diffjax's budget recipe (configs/fashion_mnist_budget.py): Adam 1e-3, 100 linear warm-up steps and
    cosine decay to 0 at step 1500 (``get_cosine_schedule_with_warmup``), gradient clipping at 1
    (``clip_grad_norm_``), the bias-corrected EMA of rate 0.995 (weights ``r^(n-k)`` over the updates only).
``sample --sampler``: the menu of both sides, every entry at most 50 network evaluations: DDPM ``ddim50_clip``
(``DDIMScheduler``, eta 0, ``clip_sample``), ``dpmpp2m25`` (``DPMSolverMultistepScheduler``, DPM-Solver++(2M)),
``unipc25`` (``UniPCMultistepScheduler``); flow matching ``euler50`` (``FlowMatchEulerDiscreteScheduler``),
``heun25`` (``FlowMatchHeunDiscreteScheduler``, 49 evaluations), ``unipc25`` (``UniPCMultistepScheduler`` with
flow sigmas).

Training is resumable: ``OUT/checkpoint.pt`` every 100 steps (weights, EMA, optimizer, schedule, data order, RNG
states); rerun the same command to continue; a finished run is left alone. ``OUT/run.json`` records the settings,
the parameter count, the losses and ``train_s`` (the wall time of all segments); ``sample`` adds ``sample_s``.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import time

import numpy as np

DATA = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"
METHODS = ("ddpm", "flow_matching")
RECIPES = ("peer", "diffjax")
SAMPLERS = {"ddpm": ("ddim50_clip", "dpmpp2m25", "unipc25"), "flow_matching": ("euler50", "heun25", "unipc25")}
SAMPLE_BATCH = 250


def load_images(path=DATA):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    n = int.from_bytes(raw[4:8], "big")
    return np.frombuffer(raw, np.uint8, offset=16).reshape(n, 28, 28)


def build_unet():
    from diffusers import UNet2DModel
    return UNet2DModel(
        sample_size=28, in_channels=1, out_channels=1, layers_per_block=2, block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))


class DebiasedEMA:
    """The bias-corrected EMA of diffjax's recipe (``optax.ema(rate, debias=True)``): after ``n`` updates the
    average of the updated weights with weights proportional to ``rate^(n-k)``; none on the initialisation."""

    def __init__(self, parameters, rate):
        self.rate, self.n = rate, 0
        self.shadow = [p.detach().clone().zero_() for p in parameters]

    def step(self, parameters):
        import torch
        self.n += 1
        with torch.no_grad():
            for s, p in zip(self.shadow, parameters):
                s.mul_(self.rate).add_(p.detach(), alpha=1.0 - self.rate)

    def copy_to(self, parameters):
        import torch
        with torch.no_grad():
            for s, p in zip(self.shadow, parameters):
                p.copy_(s / (1.0 - self.rate ** self.n))

    def state_dict(self):
        return dict(rate=self.rate, n=self.n, shadow=self.shadow)

    def load_state_dict(self, state):
        self.rate, self.n, self.shadow = state["rate"], state["n"], state["shadow"]


def build_recipe(recipe, model, steps):
    import torch
    from diffusers.optimization import get_constant_schedule, get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel
    if recipe == "peer":
        opt = torch.optim.AdamW(model.parameters(), lr=2e-4)
        return opt, get_constant_schedule(opt), 0.0, EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True,
                                                               inv_gamma=1.0, power=2 / 3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return opt, get_cosine_schedule_with_warmup(opt, 100, steps), 1.0, DebiasedEMA(model.parameters(), 0.995)


class Objective:
    """The training loss of ``--method`` on a batch ``x0`` in [-1, 1]."""

    def __init__(self, method):
        from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler
        self.method = method
        if method == "ddpm":
            self.sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                                       beta_end=0.02)
        else:
            self.sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)

    def loss(self, model, x0):
        import torch
        noise = torch.randn_like(x0)
        if self.method == "ddpm":
            t = torch.randint(0, 1000, (x0.shape[0],))
            pred = model(self.sched.add_noise(x0, noise, t), t).sample
            return torch.nn.functional.mse_loss(pred, noise)
        from diffusers.training_utils import compute_density_for_timestep_sampling
        u = compute_density_for_timestep_sampling("logit_normal", x0.shape[0], logit_mean=0.0, logit_std=1.0)
        idx = (u * self.sched.config.num_train_timesteps).long()
        timesteps, sigma = self.sched.timesteps[idx], self.sched.sigmas[idx].view(-1, 1, 1, 1)
        pred = model((1.0 - sigma) * x0 + sigma * noise, timesteps).sample
        return torch.nn.functional.mse_loss(pred, noise - x0)


def sampler(method, label):
    """A fresh diffusers scheduler for ``label`` with its steps set."""
    import diffusers as d
    if label not in SAMPLERS[method]:
        raise SystemExit(f"--sampler must be one of {SAMPLERS[method]} for --method {method}, got {label!r}")
    ddpm = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    flow = dict(num_train_timesteps=1000, shift=1.0)
    sched, steps = {
        ("ddpm", "ddim50_clip"): (lambda: d.DDIMScheduler(**ddpm, clip_sample=True), 50),
        ("ddpm", "dpmpp2m25"): (lambda: d.DPMSolverMultistepScheduler(**ddpm, algorithm_type="dpmsolver++",
                                                                       solver_order=2), 25),
        ("ddpm", "unipc25"): (lambda: d.UniPCMultistepScheduler(**ddpm), 25),
        ("flow_matching", "euler50"): (lambda: d.FlowMatchEulerDiscreteScheduler(**flow), 50),
        ("flow_matching", "heun25"): (lambda: d.FlowMatchHeunDiscreteScheduler(**flow), 25),
        ("flow_matching", "unipc25"): (lambda: d.UniPCMultistepScheduler(
            num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=1.0), 25),
    }[(method, label)]
    s = sched()
    s.set_timesteps(steps)
    return s


def train(args):
    import diffusers
    import torch
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    info_path = os.path.join(args.out, "run.json")
    settings = dict(method=args.method, recipe=args.recipe, seed=args.seed, steps=args.steps,
                    batch_size=args.batch_size)
    if os.path.exists(info_path):
        info = json.load(open(info_path))
        if {k: info.get(k) for k in settings} != settings:
            raise SystemExit(f"{args.out} holds a run of {({k: info.get(k) for k in settings})}, not {settings}")
        if info.get("done"):
            print(f"{args.out}: training finished earlier ({info['train_s']} s)", flush=True)
            return
    model = build_unet()
    num_params = sum(p.numel() for p in model.parameters())
    print(f"diffusers {diffusers.__version__}, torch {torch.__version__}: UNet2DModel with {num_params:,} "
          f"parameters; {args.method}, recipe {args.recipe}, seed {args.seed}", flush=True)
    opt, lr_sched, clip, ema = build_recipe(args.recipe, model, args.steps)
    objective = Objective(args.method)
    data = torch.from_numpy(load_images()).float().div(127.5).sub(1.0).unsqueeze(1)  # (60000, 1, 28, 28)
    rng = np.random.default_rng(args.seed)
    order, pos, losses, start, train_s = rng.permutation(len(data)), 0, [], 0, 0.0
    ckpt = os.path.join(args.out, "checkpoint.pt")
    if os.path.exists(ckpt):  # resume exactly: weights, EMA, optimizer, schedule, data order and both RNGs
        c = torch.load(ckpt, weights_only=False)
        model.load_state_dict(c["model"])
        ema.load_state_dict(c["ema"])
        opt.load_state_dict(c["opt"])
        lr_sched.load_state_dict(c["lr_sched"])
        torch.set_rng_state(c["torch_rng"])
        rng.bit_generator.state = c["np_rng"]
        order, pos, losses, start, train_s = c["order"], c["pos"], c["losses"], c["step"], c["train_s"]
        print(f"resumed at step {start} ({train_s:.0f} s of training so far)", flush=True)

    def save(step, done=False):
        elapsed = train_s + time.perf_counter() - t0
        c = dict(model=model.state_dict(), ema=ema.state_dict(), opt=opt.state_dict(), lr_sched=lr_sched.state_dict(),
                 torch_rng=torch.get_rng_state(), np_rng=rng.bit_generator.state, order=order, pos=pos,
                 losses=losses, step=step, train_s=elapsed)
        torch.save(c, ckpt + ".tmp")
        os.replace(ckpt + ".tmp", ckpt)
        json.dump(dict(settings, num_params=num_params, train_s=round(elapsed, 1), step=step, done=done,
                       final_loss=float(np.mean(losses[-100:])) if losses else None, threads=args.threads,
                       torch=torch.__version__, diffusers=diffusers.__version__, date=time.strftime("%Y-%m-%d")),
                  open(info_path, "w"), indent=1)

    t0 = time.perf_counter()
    model.train()
    for step in range(start, args.steps):
        if pos + args.batch_size > len(order):
            order, pos = rng.permutation(len(data)), 0
        x0 = data[order[pos: pos + args.batch_size]]
        pos += args.batch_size
        loss = objective.loss(model, x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        lr_sched.step()
        ema.step(model.parameters())
        losses.append(loss.item())
        if (step + 1) % 100 == 0 or step + 1 == args.steps:
            print(f"step {step + 1}/{args.steps}: loss {np.mean(losses[-100:]):.4f} "
                  f"({train_s + time.perf_counter() - t0:.0f} s)", flush=True)
            save(step + 1, done=step + 1 == args.steps)


def sample(args):
    import torch
    torch.set_num_threads(args.threads)
    info_path = os.path.join(args.out, "run.json")
    info = json.load(open(info_path)) if os.path.exists(info_path) else {}
    if not info.get("done"):
        raise SystemExit(f"{args.out} holds no finished training (run `train` first)")
    model = build_unet()
    _, _, _, ema = build_recipe(info["recipe"], model, info["steps"])
    ema.load_state_dict(torch.load(os.path.join(args.out, "checkpoint.pt"), weights_only=False)["ema"])
    ema.copy_to(model.parameters())
    model.eval()
    gen = torch.Generator().manual_seed(args.sample_seed)
    out, nfe, t1 = [], 0, time.perf_counter()
    with torch.no_grad():
        for i in range(0, args.num_samples, SAMPLE_BATCH):
            sched = sampler(info["method"], args.sampler)  # fresh: multistep schedulers keep a history
            x = torch.randn((min(SAMPLE_BATCH, args.num_samples - i), 1, 28, 28), generator=gen)
            x = x * getattr(sched, "init_noise_sigma", 1.0)  # the flow schedulers start at sigma = 1
            for t in sched.timesteps:
                step_kw = dict(eta=0.0) if args.sampler.startswith("ddim") else {}
                scale = getattr(sched, "scale_model_input", lambda x, t: x)  # FlowMatchHeun has none
                x = sched.step(model(scale(x, t), t).sample, t, x, **step_kw).prev_sample
            nfe = len(sched.timesteps)
            out.append(x)
    sample_s = time.perf_counter() - t1
    x = torch.cat(out).clamp(-1, 1).permute(0, 2, 3, 1).numpy()
    images = np.round((x + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
    os.makedirs(os.path.dirname(os.path.abspath(args.to)), exist_ok=True)
    np.savez(args.to, x=images)
    record = dict(sampler=args.sampler, nfe=nfe, sample_seed=args.sample_seed, num_samples=args.num_samples,
                  sample_s=round(sample_s, 1), to=args.to, threads=args.threads, date=time.strftime("%Y-%m-%d"))
    with open(os.path.join(args.out, "samples.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("--method", choices=METHODS, required=True)
    t.add_argument("--recipe", choices=RECIPES, required=True)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--steps", type=int, default=1500)
    t.add_argument("--batch-size", type=int, default=64)
    s = sub.add_parser("sample")
    s.add_argument("--sampler", required=True, help=f"one of {SAMPLERS}")
    s.add_argument("--sample-seed", type=int, required=True)
    s.add_argument("--num-samples", type=int, default=1000)
    s.add_argument("--to", required=True, help="the npz to write (uint8 x, (N, 28, 28, 1))")
    for a in (t, s):
        a.add_argument("--out", required=True, help="the run directory")
        a.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    args = p.parse_args()
    {"train": train, "sample": sample}[args.command](args)


if __name__ == "__main__":
    main()
