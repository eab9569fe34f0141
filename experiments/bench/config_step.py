"""A config's real train step: compile time, step time in the train loop (data pipeline, EMAs, logging), the bare
step, XLA's FLOP count and this machine's float32 matmul rate measured in the same process.

    # the budget step, this tree against another checkout (e.g. `git worktree add /tmp/ref <commit>`), alternating
    python experiments/bench/config_step.py --config configs/fashion_mnist_budget_rf.py --ref /tmp/ref --rounds 2
    # the train-step compile time of every config in configs/ (one fresh process per config)
    python experiments/bench/config_step.py --compile-all [--pattern 'fashion_mnist_*.py']

Every measurement runs in a fresh subprocess with ``PYTHONPATH`` set to the tree being measured, so two trees are
compared in one run with the same interpreter, data and batch. One JSON line per measurement, then a table.
"""
import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load_config(tree, path, overrides):
    import importlib.util
    sys.path.insert(0, tree)
    spec = importlib.util.spec_from_file_location("bench_config", os.path.join(tree, path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    config = mod.get_config()
    for item in overrides:
        key, value = item.split("=", 1)
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = type(node[leaf])(json.loads(value)) if not isinstance(node[leaf], str) else value
    return config


def _flops(compiled):
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    return float(cost.get("flops", float("nan"))) if cost else float("nan")


def _matmul_gflops(n=2048, repeats=5):
    import jax
    import jax.numpy as jnp
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(jnp.matmul)
    f(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def _abstract_batches(run, config, cl, tr, *, n):
    import jax
    import jax.numpy as jnp
    shape = ((n,) if n else ()) + tuple(cl.input_shape(config, config.training.batch_size))
    sharding = tr.batch_sharding(run.mesh, stacked=bool(n))
    batch = {"x": jax.ShapeDtypeStruct(shape, jnp.float32, sharding=sharding)}
    if not cl.is_toy(config):
        batch["y"] = jax.ShapeDtypeStruct(shape[:2] if n else shape[:1], jnp.int32, sharding=sharding)
    return batch


def worker(args):
    t_start = time.perf_counter()
    config = _load_config(args.tree, args.config, args.override)
    import jax
    out = {"tree": args.tree, "config": args.config, "jax": jax.__version__}
    if config.task != "diffusion":
        out["skipped"] = f"task {config.task!r}"
        print(json.dumps(out), flush=True)
        return
    if config.get("distill") and config.distill.method:
        out["note"] = "the base diffusion step of a distillation config"
    with tempfile.TemporaryDirectory() as cache:
        # the compile measured here is written to a private persistent cache, so the timed calls below (jit's own
        # compile of the same program) read it instead of compiling a second time
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        _worker_body(args, config, out, t_start)


def _worker_body(args, config, out, t_start):
    import jax
    import numpy as np
    from diffjax import config_lib as cl
    from diffjax import train as tr
    from diffjax.run._run import Run
    # a latent model's run writes its scale factor (WORKDIR/latent.json) when it encodes the data: a scratch workdir
    if cl.is_latent(config):
        run = Run(config, tempfile.mkdtemp(prefix="config_step_"), read_only=False)
    else:
        run = Run(config, None)
    steps = run.train_steps()
    n = int(config.training.n_jitted_steps)
    single = getattr(steps, "single", None)  # one compiled step dispatched n times (training.multi_step="dispatch")
    out["multi_step"] = "dispatch" if single is not None else "one program"
    jitted = single if single is not None else steps
    abstract_batch = _abstract_batches(run, config, cl, tr, n=0 if single is not None else n)
    t0 = time.perf_counter()
    compiled = jitted.lower(run.abstract, abstract_batch).compile()
    out["compile_s"] = time.perf_counter() - t0
    out["gflop_per_call"] = _flops(compiled) / 1e9 * (n if single is not None else 1)
    out["steps_per_call"] = n
    if args.compile_only:
        print(json.dumps(out), flush=True)
        return
    out["matmul_gflops_before"] = _matmul_gflops()
    data = run.space.dataset(cl.build_dataset(config))  # a latent model's: encoded by its autoencoder

    def get_batches(step, k):
        return tr.global_batch(data.batches(step, k), run.mesh)

    state = run.fresh_state()
    with tempfile.TemporaryDirectory() as wd:
        # warm-up (the loop's own first dispatch), then the timed loop: pipeline, EMAs, logging, as in training
        state = tr.train_loop(state, steps, get_batches, workdir=wd, num_steps=n, steps_per_call=n,
                              log_freq=0, checkpoint_freq=0, preemption_freq=0, progress=False)
        jax.block_until_ready(state)
        total = args.steps * n
        t0 = time.perf_counter()
        state = tr.train_loop(state, steps, get_batches, workdir=wd, num_steps=n + total, steps_per_call=n,
                              log_freq=config.training.log_freq if total % config.training.log_freq == 0 else 0,
                              checkpoint_freq=0, preemption_freq=0, progress=False)
        jax.block_until_ready(state)
        out["loop_s_per_step"] = (time.perf_counter() - t0) / total
    batches = get_batches(0, n)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        state, m = steps(state, batches)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    out["bare_s_per_step"] = statistics.median(times) / n
    out["gflops"] = out["gflop_per_call"] / n / out["bare_s_per_step"]
    out["matmul_gflops_after"] = _matmul_gflops()
    out["loss_finite"] = bool(np.isfinite(np.asarray(m["loss"])).all())
    out["total_s"] = time.perf_counter() - t_start
    print(json.dumps(out), flush=True)


def _spawn(tree, config, extra):
    env = dict(os.environ, PYTHONPATH=tree, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # the tree's own `import diffjax` sets its XLA:CPU flags
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--tree", tree, "--config", config, *extra]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tree)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode or not lines:
        return {"tree": tree, "config": config, "error": (r.stderr or r.stdout).strip().splitlines()[-1:]}
    return json.loads(lines[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/fashion_mnist_budget_rf.py")
    p.add_argument("--ref", default="", help="another checkout to measure side by side (alternating rounds)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--steps", type=int, default=20, help="timed dispatches")
    p.add_argument("--compile-all", action="store_true", help="compile time of every config in configs/")
    p.add_argument("--pattern", default="*.py", help="with --compile-all: the config files (glob in configs/)")
    p.add_argument("--compile-only", action="store_true")
    p.add_argument("--override", action="append", default=[], help="FIELD=VALUE (JSON value), repeatable")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tree", default=REPO, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    extra = [f"--steps={args.steps}"] + [f"--override={o}" for o in args.override]
    import jax
    print(f"jax {jax.__version__}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    if args.compile_all:
        rows = []
        for path in sorted(glob.glob(os.path.join(REPO, "configs", args.pattern))):
            name = os.path.relpath(path, REPO)
            if name.endswith(("__init__.py", "default.py")):
                continue
            r = _spawn(REPO, name, extra + ["--compile-only"])
            print(json.dumps(r), flush=True)
            rows.append(r)
        print("\n| config | steps per dispatch | train-step compile (s) | GFLOP per dispatch |\n|---|---|---|---|")
        for r in rows:
            if "compile_s" in r:
                print(f"| {r['config']} | {r['steps_per_call']} | {r['compile_s']:.1f} | {r['gflop_per_call']:.1f} |")
            else:
                print(f"| {r['config']} | - | {r.get('skipped') or r.get('error')} | - |")
        return
    trees = [REPO] + ([os.path.abspath(args.ref)] if args.ref else [])
    results = {t: [] for t in trees}
    for _ in range(args.rounds):
        for tree in trees:
            r = _spawn(tree, args.config, extra)
            print(json.dumps(r), flush=True)
            results[tree].append(r)
    print(f"\n{args.config}, {args.steps} timed dispatches per round, {args.rounds} round(s); medians over rounds\n")
    print("| tree | compile (s) | loop s/step | bare s/step | GFLOP/step | GFLOP/s | matmul GFLOP/s |")
    print("|---|---|---|---|---|---|---|")
    for tree, rs in results.items():
        ok = [r for r in rs if "bare_s_per_step" in r]
        if not ok:
            print(f"| {tree} | failed: {rs[-1].get('error')} | | | | | |")
            continue

        def med(k):
            return statistics.median(r[k] for r in ok)
        mm = statistics.median(max(r["matmul_gflops_before"], r["matmul_gflops_after"]) for r in ok)
        print(f"| {tree} | {med('compile_s'):.1f} | {med('loop_s_per_step'):.3f} | {med('bare_s_per_step'):.3f} | "
              f"{med('gflop_per_call') / ok[0]['steps_per_call']:.1f} | {med('gflops'):.1f} | {mm:.1f} |")


if __name__ == "__main__":
    main()
