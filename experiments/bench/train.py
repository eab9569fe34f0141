"""Train-step benchmark: steps/s and images/s of the sharded train step, 1 vs N forced CPU devices, with and
without several steps per dispatch, compile time (launch -> first finished step), and the full train loop
(data pipeline, progress bar, metrics.jsonl / TensorBoard logging, checkpoint checks) vs the bare step.

    python experiments/bench/train.py --models small32,ddpm_cifar10 --devices 1,8 --batch 32 --steps 20

Each (model, devices) pair runs in a fresh subprocess (XLA_FLAGS must be set before JAX starts) and prints one
JSON line per measurement; the parent prints a markdown table.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def worker(args):
    t_launch = float(os.environ["BENCH_LAUNCH"])
    sys.path.insert(0, REPO)
    import jax
    import numpy as np
    from configs import default
    from diffjax import config_lib as cl
    from diffjax import data as dd
    from diffjax import train as tr
    from diffjax import reuse_freed_host_memory

    reuse_freed_host_memory()  # as `python -m diffjax.main` does
    cfg = default.get_config()
    cfg.model.name = args.model
    cfg.training.batch_size = args.batch
    cfg.training.loss = "dsm"
    cfg.training.reduce_mean = True
    cfg.model.time_input = "continuous"
    sde, model, opt = cl.build_sde(cfg), cl.build_model(cfg), cl.build_optimizer(cfg)
    mesh = tr.make_mesh()
    create = lambda key: tr.create_state(key, model, (1, 32, 32, 3), opt)
    shardings = tr.state_shardings(mesh, jax.eval_shape(create, jax.random.key(0)))
    step = tr.make_train_step(cl.build_loss_fn(cfg, model, sde), opt, ema_rate=0.9999)
    images = np.random.default_rng(0).integers(0, 256, (max(1024, 4 * args.batch), 32, 32, 3), dtype=np.uint8)
    data = dd.ImageData.from_arrays(images, global_batch=args.batch, random_flip=True, process_index=0,
                                    process_count=1)
    for n in args.n_jitted:
        state = jax.jit(create, out_shardings=shardings)(jax.random.key(0))
        fn = tr.jit_train_step(tr.multi_step(step), mesh, shardings)
        batch = tr.global_batch(data.batches(0, n), mesh)
        state, m = fn(state, batch)
        jax.block_until_ready(m)
        first = time.time() - t_launch
        calls = max(1, args.steps // n)
        state, m = fn(state, batch)  # warm
        jax.block_until_ready(m)
        t0 = time.perf_counter()
        for _ in range(calls):
            state, m = fn(state, batch)
        jax.block_until_ready(m)
        bare = calls * n / (time.perf_counter() - t0)
        # the full loop: fresh batches from the pipeline (prefetched), logging every log_freq steps, checkpoint
        # checks at score-SDE's default frequencies (periodic 50000, preemption 10000)
        log_freq = n * max(1, args.log_every // n)
        wd = tempfile.mkdtemp()
        ck = tr.Checkpoints(wd)
        start = int(jax.device_get(state.step))
        total = start + calls * n
        t0 = time.perf_counter()
        state = tr.train_loop(state, fn, lambda s, k: tr.global_batch(data.batches(s, k), mesh), workdir=wd,
                              num_steps=total, steps_per_call=n, log_freq=log_freq, checkpoint_freq=50000,
                              preemption_freq=10000, checkpoints=None, progress=True)
        jax.block_until_ready(state.params)
        loop = calls * n / (time.perf_counter() - t0)
        ck.close()
        print(json.dumps(dict(model=args.model, devices=jax.device_count(), batch=args.batch, n_jitted=n,
                              first_step_s=first if n == args.n_jitted[0] else None, bare_steps_s=bare,
                              bare_images_s=bare * args.batch, loop_steps_s=loop, loop_vs_bare=loop / bare,
                              log_freq=log_freq)), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--models", default="small32,ddpm_cifar10")
    p.add_argument("--devices", default="1,8")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--n_jitted", default="1,5")
    p.add_argument("--log_every", type=int, default=50)
    p.add_argument("--worker", action="store_true")
    p.add_argument("--model", default="")
    args = p.parse_args()
    if args.worker:
        args.n_jitted = [int(v) for v in args.n_jitted.split(",")]
        return worker(args)
    rows = []
    for model in args.models.split(","):
        for dev in args.devices.split(","):
            env = dict(os.environ, JAX_PLATFORMS="cpu", BENCH_LAUNCH=repr(time.time()),
                       XLA_FLAGS=f"--xla_force_host_platform_device_count={dev}")
            out = subprocess.run([sys.executable, __file__, "--worker", "--model", model, "--batch", str(args.batch),
                                  "--steps", str(args.steps), "--n_jitted", args.n_jitted, "--log_every",
                                  str(args.log_every)], env=env, capture_output=True, text=True)
            lines = [json.loads(ln) for ln in out.stdout.splitlines() if ln.startswith("{")]
            if not lines:
                print(out.stderr[-3000:], file=sys.stderr)
            for r in lines:
                print(json.dumps(r), flush=True)
                rows.append(r)
    print("\n| model | devices | batch | steps/dispatch | launch -> first step (s) | step/s | images/s | full loop step/s "
          "| loop / bare |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        first = f"{r['first_step_s']:.1f}" if r["first_step_s"] else ""
        print(f"| {r['model']} | {r['devices']} | {r['batch']} | {r['n_jitted']} | {first} | {r['bare_steps_s']:.3f} "
              f"| {r['bare_images_s']:.1f} | {r['loop_steps_s']:.3f} | {100 * r['loop_vs_bare']:.1f}% |")


if __name__ == "__main__":
    main()
