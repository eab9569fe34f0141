"""Benchmark a named network: forward and train-step throughput, XLA FLOPs, and the machine's matmul speed.

    python experiments/bench/nets.py --net small32 --batch 32 [--dtype bfloat16] [--conv-impl auto] [--json]

Prints forward images/s and train-step images/s (Adam, DDPM's simple eps loss on a 1000-step linear-beta grid),
the FLOPs per image from XLA's cost analysis of the compiled functions, the achieved GFLOP/s, and the float32
matmul GFLOP/s of this machine measured in the same run (so that the comparison is made back to back).
``--json`` prints one JSON object instead. See experiments/bench/README.md for recorded figures.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Optional

import jax
import jax.numpy as jnp
import optax

import diffjax.nets as nets
from diffjax import reuse_freed_host_memory
from diffjax.core.schedules import linear_betas

NETS = {
    "ddpm_cifar10": nets.ddpm_cifar10,
    "small32": nets.small32,
    "ncsnpp_cifar10": nets.ncsnpp_cifar10,
    "ddpmpp_cifar10": nets.ddpmpp_cifar10,
    "fashion_mnist_small": nets.fashion_mnist_small,
}
INPUT = {"fashion_mnist_small": (28, 28, 1)}


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax returned one dict per computation
        cost = cost[0]
    return float(cost.get("flops", float("nan"))) if cost else float("nan")


def _vectorised_flops(fn, *args) -> float:
    """FLOPs of ``jax.jit(fn)(*args)`` with attention vectorised over heads: XLA's cost analysis counts a loop
    body once, so the CPU's head-chunked attention loop (``lax.map``) would be undercounted."""
    from diffjax.nets import _attention
    saved = _attention.default_heads_per_step
    _attention.default_heads_per_step = lambda *args, **kwargs: None
    try:
        return _flops(jax.jit(fn).lower(*args).compile())
    finally:
        _attention.default_heads_per_step = saved


def _time(fn, *args, repeats: int, min_time: float = 0.0):
    """Median wall time of ``repeats`` calls (after one warm-up call), blocking on the result."""
    jax.block_until_ready(fn(*args))
    times = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best float32 ``n x n @ n x n`` throughput in GFLOP/s."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(jnp.matmul)
    _, times = _time(f, a, b, repeats=repeats)
    return 2 * n**3 / min(times) / 1e9


def ddpm_loss_fn(model, num_steps: int = 1000):
    """DDPM's simple loss ``E ||eps - eps_theta(sqrt(ab_t) x0 + sqrt(1 - ab_t) eps, t)||^2`` (Ho et al. 2020, Alg. 1),
    written inline so that the benchmark depends only on the network."""
    alpha_bars = jnp.cumprod(1.0 - linear_betas(num_steps))

    def loss(params, x0, key):
        k_t, k_eps, k_drop = jax.random.split(key, 3)
        t = jax.random.randint(k_t, (x0.shape[0],), 0, num_steps)
        eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
        ab = alpha_bars[t][:, None, None, None]
        x_t = jnp.sqrt(ab) * x0 + jnp.sqrt(1.0 - ab) * eps
        pred = model.apply({"params": params}, x_t, t.astype(jnp.float32), train=True, rngs={"dropout": k_drop})
        return jnp.mean((pred - eps) ** 2)

    return loss


def parse_xla_options(parser: argparse.ArgumentParser, flag: str, values) -> Optional[dict]:
    """``KEY=VALUE`` strings (a repeatable ``--xla-option``-style flag) as a per-compile options dict, or None."""
    bad = [v for v in values if "=" not in v]
    if bad:
        parser.error(f"{flag} must be KEY=VALUE, got {bad[0]!r}")
    return dict(v.split("=", 1) for v in values) or None


def run(net: str, batch: int, dtype: str = "float32", conv_impl: str = "auto", repeats: int = 3,
        matmul_n: int = 2048, xla_options: Optional[dict] = None, overrides: Optional[dict] = None) -> dict:
    """``xla_options``: per-compile XLA options for the forward and train-step compiles (e.g.
    ``{"xla_cpu_experimental_ynn_fusion_type": "..."}``, to compare against ``import diffjax``'s XLA_FLAGS).
    ``overrides``: further fields of the network (``{"attn_resolutions": ()}``)."""
    model = NETS[net](dtype=jnp.dtype(dtype), conv_impl=conv_impl, **(overrides or {}))
    shape = (batch,) + INPUT.get(net, (32, 32, 3))
    x = jax.random.normal(jax.random.key(0), shape, jnp.float32)
    labels = jnp.linspace(0.0, 999.0, batch)
    params = jax.jit(lambda k: model.init(k, x[:1], labels[:1], train=False))(jax.random.key(1))["params"]
    n_params = nets.count_params(params)

    peak = matmul_gflops(matmul_n)

    fwd = jax.jit(lambda p, x, l: model.apply({"params": p}, x, l, train=False))
    t0 = time.perf_counter()
    fwd_c = fwd.lower(params, x, labels).compile(xla_options)
    fwd_compile_s = time.perf_counter() - t0
    fwd_flops = _vectorised_flops(lambda p, x, l: model.apply({"params": p}, x, l, train=False), params, x, labels)
    fwd_s, _ = _time(fwd_c, params, x, labels, repeats=repeats)

    opt = optax.adam(2e-4)
    loss = ddpm_loss_fn(model)

    def train_step(params, opt_state, x0, key):
        value, grads = jax.value_and_grad(loss)(params, x0, key)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    opt_state = opt.init(params)
    step = jax.jit(train_step)
    key = jax.random.key(2)
    t0 = time.perf_counter()
    step_c = step.lower(params, opt_state, x, key).compile(xla_options)
    train_compile_s = time.perf_counter() - t0
    train_flops = _vectorised_flops(train_step, params, opt_state, x, key)
    train_s, _ = _time(step_c, params, opt_state, x, key, repeats=repeats)

    peak_after = matmul_gflops(matmul_n)
    return dict(
        net=net, batch=batch, dtype=dtype, conv_impl=conv_impl, backend=jax.default_backend(),
        device=str(jax.devices()[0].device_kind), cpu_count=os.cpu_count(), params=n_params,
        forward_images_per_s=batch / fwd_s, forward_s_per_batch=fwd_s,
        train_images_per_s=batch / train_s, train_s_per_batch=train_s,
        forward_gflop_per_image=fwd_flops / batch / 1e9, train_gflop_per_image=train_flops / batch / 1e9,
        forward_gflops_achieved=fwd_flops / fwd_s / 1e9, gflops_achieved=train_flops / train_s / 1e9,
        gflops_matmul_peak=max(peak, peak_after), gflops_matmul_before=peak, gflops_matmul_after=peak_after,
        forward_compile_s=fwd_compile_s, train_compile_s=train_compile_s, jax_version=jax.__version__,
        xla_flags=os.environ.get("XLA_FLAGS", ""), xla_options=xla_options or {},
        host_memory_reuse=reuse_freed_host_memory())  # in effect?


def main(argv=None):
    reuse_freed_host_memory()  # as `python -m diffjax.main` does (diffjax/_host_memory.py)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--net", required=True, choices=sorted(NETS))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--conv-impl", default="auto", choices=list(nets._conv.CONV_IMPLS))
    p.add_argument("--repeats", type=int, default=3, help="timed calls after one warm-up (median reported)")
    p.add_argument("--matmul-n", type=int, default=2048)
    p.add_argument("--xla-option", action="append", default=[], metavar="KEY=VALUE",
                   help="per-compile XLA option, repeatable (e.g. xla_cpu_experimental_ynn_fusion_type=...)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if args.batch < 1:
        p.error(f"--batch must be >= 1, got {args.batch}")
    options = parse_xla_options(p, "--xla-option", args.xla_option)
    r = run(args.net, args.batch, args.dtype, args.conv_impl, args.repeats, args.matmul_n, options)
    if args.json:
        print(json.dumps(r))
        return
    print(f"{r['net']} ({r['params'] / 1e6:.2f} M params), batch {r['batch']}, {r['dtype']}, conv_impl="
          f"{r['conv_impl']}, backend {r['backend']} ({r['device']}, {r['cpu_count']} cpus)")
    print(f"  XLA_FLAGS={r['xla_flags']!r}  per-compile options={r['xla_options']}  "
          f"host memory reuse: {r['host_memory_reuse']}")
    print(f"  float32 matmul:  {r['gflops_matmul_peak']:.1f} GFLOP/s (before {r['gflops_matmul_before']:.1f}, "
          f"after {r['gflops_matmul_after']:.1f})")
    print(f"  forward:    {r['forward_images_per_s']:8.2f} images/s  {r['forward_s_per_batch']:.3f} s/batch  "
          f"{r['forward_gflop_per_image']:.2f} GFLOP/image  {r['forward_gflops_achieved']:.1f} GFLOP/s "
          f"(compile {r['forward_compile_s']:.1f} s)")
    print(f"  train step: {r['train_images_per_s']:8.2f} images/s  {r['train_s_per_batch']:.3f} s/batch  "
          f"{r['train_gflop_per_image']:.2f} GFLOP/image  {r['gflops_achieved']:.1f} GFLOP/s "
          f"(compile {r['train_compile_s']:.1f} s)")


if __name__ == "__main__":
    sys.exit(main())
