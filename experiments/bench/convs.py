"""3x3 convolutions of the score networks: forward, input-gradient and weight-gradient times, JAX and PyTorch.

    python experiments/bench/convs.py [--batch 32] [--no-torch] [--xla-option KEY=VALUE ...]
    DIFFJAX_XLA_CPU_DEFAULTS=0 python experiments/bench/convs.py   # jaxlib's own XLA:CPU flags (YNNPACK convs)

One row per (spatial size, input channels, output channels) of small32 / ddpm_cifar10, medians in milliseconds.
The JAX side runs under the XLA_FLAGS ``import diffjax`` sets (diffjax/_xla_flags.py) unless told otherwise;
PyTorch (not a diffjax dependency) runs when it is installed, with 2 threads, NCHW. See experiments/bench/README.md.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import diffjax  # noqa: F401  (applies diffjax's XLA:CPU flag before JAX starts)
import jax
from nets import parse_xla_options  # experiments/bench/nets.py

SHAPES = ((32, 64, 64), (32, 128, 64), (32, 192, 64), (32, 128, 128), (16, 128, 128), (16, 256, 128),
          (16, 192, 128), (8, 128, 128), (8, 256, 128))


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def jax_times(batch, hw, cin, cout, repeats, options):
    conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),  # noqa: E731
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    x = jax.random.normal(jax.random.key(0), (batch, hw, hw, cin))
    w = jax.random.normal(jax.random.key(1), (3, 3, cin, cout)) * 0.05
    dy = jax.random.normal(jax.random.key(2), (batch, hw, hw, cout))
    fns = (lambda x, w, dy: conv(x, w),
           lambda x, w, dy: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0],
           lambda x, w, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0])
    compiled = [jax.jit(f).lower(x, w, dy).compile(options) for f in fns]
    return [_median_ms(lambda c=c: jax.block_until_ready(c(x, w, dy)), repeats) for c in compiled]


def torch_times(batch, hw, cin, cout, repeats):
    import torch
    import torch.nn.functional as F
    x, w, dy = torch.randn(batch, cin, hw, hw), torch.randn(cout, cin, 3, 3) * 0.05, torch.randn(batch, cout, hw, hw)
    with torch.no_grad():
        return [_median_ms(lambda: F.conv2d(x, w, padding=1), repeats),
                _median_ms(lambda: torch.nn.grad.conv2d_input(x.shape, w, dy, padding=1), repeats),
                _median_ms(lambda: torch.nn.grad.conv2d_weight(x, w.shape, dy, padding=1), repeats)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--xla-option", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    if args.batch < 1:
        p.error(f"--batch must be >= 1, got {args.batch}")
    options = parse_xla_options(p, "--xla-option", args.xla_option)
    use_torch = not args.no_torch
    if use_torch:
        try:
            import torch
            torch.set_num_threads(2)
        except ImportError:
            use_torch = False
    print(f"batch {args.batch}, jax {jax.__version__}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, "
          f"options={options}")
    print("| HxW | in -> out | GFLOP | JAX fwd / dx / dw (ms) |" + (" PyTorch fwd / dx / dw (ms) |" if use_torch else ""))
    print("|---|---|---|---|" + ("---|" if use_torch else ""))
    for hw, cin, cout in SHAPES:
        gflop = 2 * args.batch * hw * hw * cin * cout * 9 / 1e9
        row = f"| {hw}x{hw} | {cin} -> {cout} | {gflop:.2f} | " + " / ".join(
            f"{t:.1f}" for t in jax_times(args.batch, hw, cin, cout, args.repeats, options)) + " |"
        if use_torch:
            row += " " + " / ".join(f"{t:.1f}" for t in torch_times(args.batch, hw, cin, cout, args.repeats)) + " |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
