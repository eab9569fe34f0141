"""small32 back to back: diffjax (JAX/Flax) against diffusers' UNet2DModel (PyTorch) on this machine.

    pip install torch diffusers   # not dependencies of diffjax; only this script needs them
    python experiments/bench/nets_vs_diffusers.py [--batch 32] [--rounds 2] [--threads 2] [--attention mid] [--json]

The same layout on both sides (``UNet2DModel(sample_size=32, block_out_channels=(64, 128, 128),
layers_per_block=2, down=(Down, AttnDown, Down), up=(Up, AttnUp, Up), norm_num_groups=32)`` and
``diffjax.nets.small32``), float32, a forward pass and an Adam train step on the DDPM eps loss. The two frameworks
alternate for ``--rounds`` rounds so that machine drift hits both; medians per round are printed. Each measurement
runs in a fresh process with its framework's own defaults: PyTorch with glibc's malloc as it comes, diffjax with
``diffjax.reuse_freed_host_memory()`` applied as ``python -m diffjax.main`` applies it (a process-wide malloc
setting, so the two cannot share a process; ``DIFFJAX_REUSE_HOST_MEMORY=0`` runs diffjax without it).
``--attention mid`` drops the 16x16 attention blocks on both sides (diffusers' Down/UpBlock2D instead of the Attn
variants, diffjax's ``attn_resolutions=()``), keeping the 8x8 middle block's: the rest of the network compared alone.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def torch_small32(batch: int, repeats: int, threads: int, attention: str = "all") -> dict:
    import torch
    from diffusers import UNet2DModel

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    attn = "Attn" if attention == "all" else ""
    model = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(64, 128, 128),
                        layers_per_block=2, down_block_types=("DownBlock2D", f"{attn}DownBlock2D", "DownBlock2D"),
                        up_block_types=("UpBlock2D", f"{attn}UpBlock2D", "UpBlock2D"), norm_num_groups=32)
    x = torch.randn(batch, 3, 32, 32)
    t = torch.linspace(0, 999, batch).long()
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    betas = torch.linspace(1e-4, 0.02, 1000)
    alpha_bars = torch.cumprod(1 - betas, 0)

    def forward():
        with torch.no_grad():
            model(x, t).sample

    def train_step():
        eps = torch.randn_like(x)
        ab = alpha_bars[t].view(-1, 1, 1, 1)
        loss = torch.mean((model(ab.sqrt() * x + (1 - ab).sqrt() * eps, t).sample - eps) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()

    model.eval()
    fwd = _median(forward, repeats)
    model.train()
    train = _median(train_step, repeats)
    return dict(framework=f"diffusers {__import__('diffusers').__version__} / torch {torch.__version__}",
                params=sum(p.numel() for p in model.parameters()),
                forward_images_per_s=batch / fwd, train_images_per_s=batch / train)


def _median(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def jax_small32(batch: int, repeats: int, xla_options=None, attention: str = "all") -> dict:
    import jax
    import nets as bench_nets  # experiments/bench/nets.py

    overrides = {} if attention == "all" else {"attn_resolutions": ()}
    r = bench_nets.run("small32", batch, repeats=repeats, xla_options=xla_options, overrides=overrides)
    name = f"diffjax / jax {jax.__version__}" + (f" ({', '.join(f'{k}={v}' for k, v in xla_options.items())})"
                                                  if xla_options else "")
    return dict(framework=name, params=r["params"],
                forward_images_per_s=r["forward_images_per_s"], train_images_per_s=r["train_images_per_s"],
                gflops_matmul_peak=r["gflops_matmul_peak"])


def worker(args, baseline) -> dict:
    """One measurement in this (fresh) process: each framework runs with its own defaults, as its users get it."""
    if args.worker == "torch":
        return torch_small32(args.batch, args.repeats, args.threads, args.attention)
    from diffjax import reuse_freed_host_memory
    reuse_freed_host_memory()  # what `python -m diffjax.main` does, before JAX starts (diffjax/_host_memory.py)
    return jax_small32(args.batch, args.repeats, baseline if args.worker == "jax-baseline" else None,
                       args.attention)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="PyTorch intra-op threads (XLA uses every core)")
    p.add_argument("--baseline-xla-option", action="append", default=[], metavar="KEY=VALUE",
                   help="also run diffjax compiled with these per-compile XLA options (e.g. jaxlib's own YNNPACK "
                        "fusion types, to compare with the XLA_FLAGS `import diffjax` sets)")
    p.add_argument("--attention", default="all", choices=["all", "mid"],
                   help="'mid': without the 16x16 attention blocks on both sides (the 8x8 middle one stays)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--worker", choices=["torch", "jax", "jax-baseline"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.batch < 1 or args.rounds < 1 or args.repeats < 1:
        p.error(f"--batch, --rounds and --repeats must be >= 1, got {args.batch}, {args.rounds}, {args.repeats}")
    import nets as bench_nets  # experiments/bench/nets.py

    baseline = bench_nets.parse_xla_options(p, "--baseline-xla-option", args.baseline_xla_option)
    if args.worker:
        print(json.dumps(worker(args, baseline)), flush=True)
        return
    passed = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--json"]
    workers = ["torch", "jax"] + (["jax-baseline"] if baseline else [])
    rows = []
    for rnd in range(args.rounds):
        for name in workers:  # a fresh process per measurement, the frameworks alternating
            out = subprocess.run([sys.executable, os.path.abspath(__file__), *passed, "--worker", name],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"{name} worker failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
            row = dict(round=rnd, batch=args.batch, **json.loads(out.stdout.strip().splitlines()[-1]))
            rows.append(row)
            if args.json:
                print(json.dumps(row), flush=True)
    if not args.json:
        print(f"small32, batch {args.batch}, float32, {os.cpu_count()} cpus, attention: {args.attention}, "
              f"one fresh process per measurement")
        print("| round | framework | params | forward images/s | train images/s |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['round']} | {r['framework']} | {r['params']:,} | {r['forward_images_per_s']:.1f} | "
                  f"{r['train_images_per_s']:.2f} |")


if __name__ == "__main__":
    main()
