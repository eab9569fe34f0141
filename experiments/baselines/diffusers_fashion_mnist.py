"""The peer baseline of the Fashion-MNIST budget comparison: a plain diffusers recipe, trained and sampled.

    python -m venv /tmp/peer && /tmp/peer/bin/pip install torch==2.13.0 diffusers numpy pillow
    /tmp/peer/bin/python experiments/baselines/diffusers_fashion_mnist.py --out /work/runs/diffusers_budget

torch and diffusers are installed only for this script (never diffjax dependencies). The recipe is the one a user
writes from diffusers' unconditional-training example: ``UNet2DModel`` with block widths (32, 64, 64), two ResNet
layers per block, attention at 14x14 only; DDPM's eps loss (MSE to the noise) on the linear-beta schedule
(1e-4 .. 0.02, T = 1000); AdamW at 2e-4 (torch's defaults otherwise); diffusers' ``EMAModel`` with its warm-up
(decay ``1 - (1 + n)^(-2/3)`` capped at 0.9999); then ``DDIMScheduler`` with 50 steps, eta 0, ``clip_sample=True``,
from the EMA weights. Data: the Fashion-MNIST training images in [-1, 1], reshuffled every epoch, batch 64,
1500 steps (the budget: 96,000 images).

Resumable: ``OUT/checkpoint.pt`` every 100 steps (weights, EMA, optimizer, data order, RNG states); rerun the
same command to continue. ``train_s`` sums the wall time of all segments.

Writes ``OUT/samples.npz`` (``x``: uint8, (N, 28, 28, 1), diffjax's ``--mode sample`` format),
``OUT/samples.png`` (first 64) and ``OUT/run.json`` (parameter count, wall times, losses). Score it next to a
diffjax run with ``experiments/results/score_samples.py``.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import time

import numpy as np

DATA = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"


def load_images(path=DATA):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    n = int.from_bytes(raw[4:8], "big")
    return np.frombuffer(raw, np.uint8, offset=16).reshape(n, 28, 28)


def save_grid(path, images):
    from PIL import Image
    n = int(np.ceil(np.sqrt(len(images))))
    h, w = images.shape[1:3]
    grid = np.full((n * (h + 2) + 2, n * (w + 2) + 2), 255, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, n)
        grid[2 + r * (h + 2): 2 + r * (h + 2) + h, 2 + c * (w + 2): 2 + c * (w + 2) + w] = img[..., 0]
    Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(path)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (1 on a shared machine)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import diffusers
    import torch
    from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
    from diffusers.training_utils import EMAModel

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    model = UNet2DModel(
        sample_size=28, in_channels=1, out_channels=1, layers_per_block=2, block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
    num_params = sum(p.numel() for p in model.parameters())
    print(f"diffusers {diffusers.__version__}, torch {torch.__version__}: UNet2DModel with {num_params:,} parameters",
          flush=True)
    ema = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=2 / 3)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    train_sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)

    data = torch.from_numpy(load_images()).float().div(127.5).sub(1.0).unsqueeze(1)  # (60000, 1, 28, 28)
    rng = np.random.default_rng(args.seed)
    order, pos = rng.permutation(len(data)), 0
    losses, start, train_s = [], 0, 0.0
    ckpt = os.path.join(args.out, "checkpoint.pt")
    if os.path.exists(ckpt):  # resume exactly: weights, EMA, optimizer, data order and both RNGs
        c = torch.load(ckpt, weights_only=False)
        model.load_state_dict(c["model"])
        ema.load_state_dict(c["ema"])
        opt.load_state_dict(c["opt"])
        torch.set_rng_state(c["torch_rng"])
        rng.bit_generator.state = c["np_rng"]
        order, pos, losses, start, train_s = c["order"], c["pos"], c["losses"], c["step"], c["train_s"]
        print(f"resumed at step {start} ({train_s:.0f} s of training so far)", flush=True)

    def save(step):
        c = dict(model=model.state_dict(), ema=ema.state_dict(), opt=opt.state_dict(), torch_rng=torch.get_rng_state(),
                 np_rng=rng.bit_generator.state, order=order, pos=pos, losses=losses, step=step,
                 train_s=train_s + time.perf_counter() - t0)
        torch.save(c, ckpt + ".tmp")
        os.replace(ckpt + ".tmp", ckpt)

    t0 = time.perf_counter()
    model.train()
    for step in range(start, args.steps):
        if pos + args.batch_size > len(order):
            order, pos = rng.permutation(len(data)), 0
        x0 = data[order[pos: pos + args.batch_size]]
        pos += args.batch_size
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (x0.shape[0],))
        pred = model(train_sched.add_noise(x0, noise, t), t).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.step(model.parameters())
        losses.append(loss.item())
        if (step + 1) % 100 == 0:
            print(f"step {step + 1}/{args.steps}: loss {np.mean(losses[-100:]):.4f} "
                  f"({train_s + time.perf_counter() - t0:.0f} s)", flush=True)
            save(step + 1)
    train_s += time.perf_counter() - t0

    ema.copy_to(model.parameters())
    model.eval()
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                          clip_sample=True)
    sched.set_timesteps(args.sample_steps)
    gen = torch.Generator().manual_seed(args.seed + 1)
    out, t1 = [], time.perf_counter()
    with torch.no_grad():
        for i in range(0, args.num_samples, 250):
            x = torch.randn((min(250, args.num_samples - i), 1, 28, 28), generator=gen)
            for t in sched.timesteps:
                x = sched.step(model(x, t).sample, t, x, eta=0.0).prev_sample
            out.append(x)
    sample_s = time.perf_counter() - t1
    x = torch.cat(out).clamp(-1, 1).permute(0, 2, 3, 1).numpy()
    images = np.round((x + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
    np.savez(os.path.join(args.out, "samples.npz"), x=images)
    save_grid(os.path.join(args.out, "samples.png"), images[:64])
    record = dict(num_params=num_params, train_s=round(train_s, 1), sample_s=round(sample_s, 1), steps=args.steps,
                  batch_size=args.batch_size, lr=args.lr, sample_steps=args.sample_steps,
                  num_samples=args.num_samples, final_loss=float(np.mean(losses[-100:])),
                  torch=torch.__version__, diffusers=diffusers.__version__, threads=args.threads,
                  date=time.strftime("%Y-%m-%d"))
    json.dump(record, open(os.path.join(args.out, "run.json"), "w"), indent=1)
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
