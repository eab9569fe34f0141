"""Measured convergence orders of DPM-Solver++ (orders 1-3, multistep and singlestep) and UniPC on the
probability-flow ODE with an exact score, where the ODE's solution is known in closed form.

    python experiments/bench/convergence_orders.py [--data gaussian,ring] [--processes vp,edm,rectified_flow] \
        [--steps 6,12,24,48,96]

Two problems, float64, 256 samples from the same ``x_T`` per process:

* ``gaussian``: data ``N(MU, S0^2 I)`` in 8 dimensions. Along the probability-flow ODE of any Gaussian path (a, s) a
  point moves as ``x_t = a MU + sqrt(a^2 S0^2 + s^2) z`` with ``z`` fixed: the exact endpoint at ``t_eps`` is known.
* ``ring``: the 2-D ring of 8 Gaussians (``dj.ring_mixture()``) with its exact mixture score; the reference
  endpoint is DPM-Solver++ 3M with ``--ref-steps`` steps (its distance to 2M at the same count is printed: the
  reference's own error is far below the table's).

Error: max over the samples of ``|x - x_ref|``; the observed order between N and 2N steps is
``log2(err_N / err_2N)``. Every solver runs with ``lower_order_final=False`` (the final-step safety switch of the
paper is for few steps and lowers the order). Step counts are multiples of 6, so that singlestep 2S / 3S split
their evaluations into whole steps of their own order.

A k-step multistep method takes its first k - 1 steps at lower orders (it needs k - 1 earlier evaluations, as in the
paper and diffusers). Strictly their local errors O(h^2), O(h^3) cap the global order at 2, but they sit at the
highest noise, where the data prediction hardly changes with log-SNR, so the observed orders are those of the
method (tests/test_dpm_solver.py also measures 3M's local order from an exact history).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

MU, S0, DIM, N = 0.7, 0.5, 8, 256


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="gaussian,ring")
    p.add_argument("--processes", default="vp,edm,rectified_flow")
    p.add_argument("--steps", default="6,12,24,48,96")
    p.add_argument("--ref-steps", type=int, default=3072)
    args = p.parse_args()
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    import diffjax as dj
    from diffjax import samplers as S

    processes = {"vp": dj.vp_sde, "ve": dj.ve_sde, "edm": dj.edm_sde, "rectified_flow": dj.rectified_flow}
    steps = [int(s) for s in args.steps.split(",")]

    def gaussian_score_fn(proc):
        def score_fn(x, t):
            a, s = proc.marginal(jnp.broadcast_to(t, (x.shape[0],)))
            a, s = a[:, None], s[:, None]
            return -(x - a * MU) / (a**2 * S0**2 + s**2)
        return score_fn

    def exact_end(proc, x_T):
        (a_T, s_T), (a, s) = proc.marginal(jnp.float64(proc.T)), proc.marginal(jnp.float64(proc.t_eps))
        return a * MU + jnp.sqrt(a**2 * S0**2 + s**2) * (x_T - a_T * MU) / jnp.sqrt(a_T**2 * S0**2 + s_T**2)

    solvers = {
        "dpm_solver 1 (DDIM)": lambda n, **kw: dict(fn=S.dpm_solver, order=1, **kw),
        "dpm_solver 2M": lambda n, **kw: dict(fn=S.dpm_solver, order=2, **kw),
        "dpm_solver 3M": lambda n, **kw: dict(fn=S.dpm_solver, order=3, **kw),
        "dpm_solver 2S": lambda n, **kw: dict(fn=S.dpm_solver, order=2, method="singlestep", **kw),
        "dpm_solver 3S": lambda n, **kw: dict(fn=S.dpm_solver, order=3, method="singlestep", **kw),
        "unipc bh2 order 2": lambda n, **kw: dict(fn=S.unipc, order=2, variant="bh2", **kw),
        "unipc bh1 order 3": lambda n, **kw: dict(fn=S.unipc, order=3, variant="bh1", **kw),
    }
    print(f"jax {jax.__version__}, float64, {N} samples; max |x - x_ref| at t_eps; observed order "
          f"log2(err_N / err_2N) in brackets\n")
    ring = dj.ring_mixture()
    for data in args.data.split(","):
        for pname in args.processes.split(","):
            proc = processes[pname]()
            dim = DIM if data == "gaussian" else 2
            x_T = proc.prior_sample(jax.random.key(0), (N, dim)).astype(jnp.float64)
            if data == "gaussian":
                sc, want = gaussian_score_fn(proc), exact_end(proc, x_T)
                what = f"N({MU}, {S0}^2 I_{DIM}), exact endpoint"
            else:
                sc = dj.mixture_score_fn(ring, proc)
                want = S.dpm_solver(None, x_T, sc, proc, num_steps=args.ref_steps, order=3, lower_order_final=False)
                other = S.dpm_solver(None, x_T, sc, proc, num_steps=args.ref_steps, order=2, lower_order_final=False)
                what = (f"2-D ring, reference 3M x {args.ref_steps} (|3M - 2M| there: "
                        f"{float(jnp.max(jnp.abs(want - other))):.1e})")
            print(f"### {data} / {pname}: {what}\n")
            print("| solver | " + " | ".join(f"N = {n}" for n in steps) + " |")
            print("|---|" + "---|" * len(steps))
            for name, make in solvers.items():
                errs = []
                for n in steps:
                    kw = make(n)
                    fn = kw.pop("fn")
                    x = fn(None, x_T, sc, proc, num_steps=n, lower_order_final=False, **kw)
                    if not bool(jnp.all(jnp.isfinite(x))):
                        raise SystemExit(f"{name} on {data}/{pname} at N={n}: non-finite samples")
                    errs.append(float(jnp.max(jnp.abs(x - want))))
                cells = [f"{errs[0]:.2e}"] + [f"{e:.2e} [{np.log2(prev / e):.2f}]" for prev, e in zip(errs, errs[1:])]
                print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
            print(flush=True)


if __name__ == "__main__":
    main()
