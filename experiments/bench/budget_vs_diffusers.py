"""The budget run's training step and sampler, diffjax against diffusers, back to back on this machine.

    python -m venv /work/venv-peer && /work/venv-peer/bin/pip install torch==2.13.0 diffusers numpy pillow
    python experiments/bench/budget_vs_diffusers.py --peer-python /work/venv-peer/bin/python [--rounds 2]

Both sides run what the evidence rows train (experiments/results/evidence_runs.py): rectified flow / flow matching
with diffjax's recipe (Adam 1e-3 with warm-up and cosine decay, clipping at 1, the bias-corrected EMA) on the budget
UNet (diffjax: ``configs/fashion_mnist_budget_rf.py``; diffusers: ``UNet2DModel`` (32, 64, 64) of
``experiments/baselines/diffusers_fashion_mnist.py``, batch 64 of Fashion-MNIST), and the Euler sampler with 50
steps on a batch of 250 (the batch of ``--mode sample``; 1000 samples are four of them). Measured per side: the
mean train step over ``--steps`` steps after a warm-up step (diffjax's train loop: data pipeline, EMAs; diffusers'
loop body of the baseline script), and the median of ``--repeats`` 50-step sampling runs after a warm-up run.

Every measurement is a fresh process, the sides alternating for ``--rounds`` rounds so that drift hits both; the
same threads (torch's intra-op threads ``--threads``, default every core; XLA:CPU uses every core) and the same
allocator: glibc malloc with diffjax's ``reuse_freed_host_memory`` settings (``M_MMAP_MAX=0``, a trim threshold)
applied in both processes before the framework starts (``--allocator default``: glibc's defaults in both).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLE_BATCH, SAMPLE_STEPS = 250, 50


def _mallopt_settings() -> str:
    """diffjax's malloc settings (diffjax/_host_memory.py), read here and passed to both workers."""
    from diffjax import _host_memory as hm
    return f"{hm.M_MMAP_MAX}={0},{hm.M_TRIM_THRESHOLD}={hm.TRIM_THRESHOLD}"


def _allocator(settings: str) -> None:
    """Apply ``PARAM=VALUE,...`` through glibc's mallopt before the framework starts ('' leaves the defaults)."""
    if not settings:
        return
    import ctypes
    libc = ctypes.CDLL("libc.so.6")
    for item in settings.split(","):
        param, value = map(int, item.split("="))
        if libc.mallopt(param, value) != 1:
            raise SystemExit(f"mallopt({param}, {value}) failed")


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def torch_worker(args) -> dict:
    _allocator(args.mallopt)
    import numpy as np
    import torch
    sys.path.insert(0, os.path.join(REPO, "experiments", "baselines"))
    import diffusers_fashion_mnist as peer
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = peer.build_unet()
    opt, lr_sched, clip, ema = peer.build_recipe("diffjax", model, 1500)
    objective = peer.Objective("flow_matching")
    data = torch.from_numpy(peer.load_images()[:64 * (args.steps + 1)]).float().div(127.5).sub(1.0).unsqueeze(1)
    batches = iter(data.split(64))

    def step():
        loss = objective.loss(model, next(batches))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        lr_sched.step()
        ema.step(model.parameters())
        return loss.item()

    model.train()
    step()  # warm-up
    t0 = time.perf_counter()
    losses = [step() for _ in range(args.steps)]
    train_s = (time.perf_counter() - t0) / args.steps
    assert np.isfinite(losses).all()
    model.eval()
    x0 = torch.randn(SAMPLE_BATCH, 1, 28, 28, generator=torch.Generator().manual_seed(0))

    def sample():
        sched = peer.sampler("flow_matching", "euler50")
        x = x0
        with torch.no_grad():
            for t in sched.timesteps:
                x = sched.step(model(x, t).sample, t, x).prev_sample
        assert np.isfinite(x.numpy()).all()

    sample()  # warm-up
    sample_s = _median_time(sample, args.repeats)
    import diffusers
    return dict(side=f"diffusers {diffusers.__version__} / torch {torch.__version__}", threads=args.threads,
                params=sum(p.numel() for p in model.parameters()), train_s_per_step=train_s,
                sample_s_per_250=sample_s)


def jax_worker(args) -> dict:
    sys.path.insert(0, REPO)
    if args.mallopt:  # what `python -m diffjax.main` applies: the same malloc settings (and its dispatch setting)
        from diffjax import reuse_freed_host_memory
        if not reuse_freed_host_memory():
            raise SystemExit("reuse_freed_host_memory() did not apply")
    import tempfile
    import jax
    import numpy as np
    from configs import fashion_mnist_budget_rf
    from diffjax import config_lib as cl
    from diffjax import train as tr
    from diffjax.run._run import Run
    config = fashion_mnist_budget_rf.get_config()
    config.training.posthoc_ema_freq = 0  # no snapshots written during the timing
    config.sampling.method, config.sampling.num_steps = "ode_euler", SAMPLE_STEPS
    config.sampling.batch_size = SAMPLE_BATCH
    run = Run(config, None)
    steps = run.train_steps()
    data = cl.build_dataset(config)
    state = run.fresh_state()
    def loop(state, num_steps, wd):
        state = tr.train_loop(state, steps, lambda s, n: tr.global_batch(data.batches(s, n), run.mesh), workdir=wd,
                              num_steps=num_steps, steps_per_call=1, log_freq=0, checkpoint_freq=0,
                              preemption_freq=0, progress=False)
        return jax.block_until_ready(state)

    with tempfile.TemporaryDirectory() as wd:
        state = loop(state, 1, wd)  # compiles: the warm-up
        t0 = time.perf_counter()
        state = loop(state, 1 + args.steps, wd)
        train_s = (time.perf_counter() - t0) / args.steps
    key = jax.random.key(0)

    def sample():
        x = run.sample(state.ema_params, key, SAMPLE_BATCH)
        assert np.isfinite(x).all()

    sample()  # compiles
    sample_s = _median_time(sample, args.repeats)
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
    return dict(side=f"diffjax / jax {jax.__version__}", threads=os.cpu_count(), params=n_params,
                train_s_per_step=train_s, sample_s_per_250=sample_s)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peer-python", default="/work/venv-peer/bin/python", help="a python with torch and diffusers")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=20, help="timed train steps per measurement")
    p.add_argument("--repeats", type=int, default=2, help="timed 50-step sampling runs per measurement")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--allocator", choices=["reuse", "default"], default="reuse")
    p.add_argument("--worker", choices=["torch", "jax"], help=argparse.SUPPRESS)
    p.add_argument("--mallopt", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name in ("rounds", "steps", "repeats", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.worker:
        print(json.dumps((torch_worker if args.worker == "torch" else jax_worker)(args)), flush=True)
        return
    sys.path.insert(0, REPO)
    common = ["--steps", str(args.steps), "--repeats", str(args.repeats), "--threads", str(args.threads),
              "--mallopt=" + (_mallopt_settings() if args.allocator == "reuse" else "")]
    rows = []
    for rnd in range(args.rounds):
        for side, python in (("torch", args.peer_python), ("jax", sys.executable)):
            out = subprocess.run([python, os.path.abspath(__file__), *common, "--worker", side],
                                 capture_output=True, text=True, cwd=REPO)
            lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
            if out.returncode or not lines:
                sys.exit(f"{side} worker failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
            rows.append(dict(round=rnd, **json.loads(lines[-1])))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\nbudget flow matching, batch 64 / sampler batch {SAMPLE_BATCH}, {os.cpu_count()} cpus, allocator "
          f"{args.allocator}, {time.strftime('%Y-%m-%d %H:%M')}, one fresh process per measurement")
    print("| round | side | params | train s/step (mean) | Euler 50 steps, 250 samples (s) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['round']} | {r['side']} | {r['params']:,} | {r['train_s_per_step']:.3f} | "
              f"{r['sample_s_per_250']:.1f} |")


if __name__ == "__main__":
    main()
