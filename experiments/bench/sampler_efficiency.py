"""Sampler efficiency with exact scores: energy distance against the number of network evaluations (NFE).

    python experiments/bench/sampler_efficiency.py [--nfe 5,10,20,50,100] [--processes vp,ve] [--samples 2000]

For every sampler and each NFE budget (the step count that spends at most that many score evaluations: Heun-type
methods use two per step, the predictor-corrector one per predictor and one per corrector step, EDM's Heun
``2 N - 1``), 2000 samples of the 16-D random mixture of ``samplers.py`` are drawn with its exact perturbed score
(:func:`diffjax.mixture_score_fn`), so every difference from the data is the sampler's. Printed: the energy
distance to 2000 fresh data samples (a U-statistic; "data vs data" is its noise floor), the NFE actually spent and
the wall time of the compiled run. Markdown table on stdout.
"""
from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp

import diffjax as dj
from diffjax.eval.sample_distances import energy_distance

S = dj.samplers


def mixture():
    k1, k2 = jax.random.split(jax.random.key(42))
    means = 3.0 * jax.random.normal(k1, (8, 16))
    return dj.gaussian_mixture(jnp.ones(8), means, 0.5 + 0.5 * jax.random.uniform(k2, (8, 1)))


# label -> (sampler, extra options, steps for an NFE budget, NFE of those steps, processes it applies to)
def samplers():
    # equal steps in t, named: the samplers' default grid is the process's own (EDM's rho-grid on edm_sde)
    uniform = {"time_grid": S.uniform_time_grid}
    ode_t_eps = {"t_eps": 1e-3}
    return {
        "euler_maruyama": (S.euler_maruyama, uniform, lambda b: b, lambda n: n, None),
        "reverse_diffusion": (S.reverse_diffusion, uniform, lambda b: b, lambda n: n, None),
        "pc (Langevin, 1 corrector)": (S.pc, uniform, lambda b: b // 2, lambda n: 2 * n, None),
        "ode_euler": (S.ode_euler, dict(ode_t_eps, **uniform), lambda b: b, lambda n: n, None),
        "ode_heun": (S.ode_heun, dict(ode_t_eps, **uniform), lambda b: b // 2, lambda n: 2 * n, None),
        "ode_heun, Karras grid": (S.ode_heun, dict(ode_t_eps, time_grid=S.karras_grid), lambda b: b // 2,
                                  lambda n: 2 * n, None),
        "ddim (eta 0)": (S.ddim, {}, lambda b: b, lambda n: n, ("vp",)),
        "ddim (eta 1)": (S.ddim, {"eta": 1.0}, lambda b: b, lambda n: n, ("vp",)),
        "edm_heun": (S.edm_heun, {}, lambda b: (b + 1) // 2, lambda n: 2 * n - 1, None),
        "dpm_solver 2M": (S.dpm_solver, {"order": 2}, lambda b: b, lambda n: n, None),
        "dpm_solver 3M": (S.dpm_solver, {"order": 3}, lambda b: b, lambda n: n, None),
        "dpm_solver 2M SDE": (S.dpm_solver, {"order": 2, "sde_variant": True}, lambda b: b, lambda n: n, None),
        **({"unipc bh2 (order 2)": (S.unipc, {"order": 2}, lambda b: b, lambda n: n, None)}
           if hasattr(S, "unipc") else {}),
    }


PROCESSES = {"vp": lambda: dj.vp_sde(), "ve": lambda: dj.ve_sde(0.01, 50.0), "edm": lambda: dj.edm_sde(),
             "rf": lambda: dj.rectified_flow()}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nfe", default="5,10,20,50,100")
    p.add_argument("--processes", default="vp,ve")
    p.add_argument("--samples", type=int, default=2000)
    args = p.parse_args()
    budgets = [int(b) for b in args.nfe.split(",")]
    mix = mixture()
    n = args.samples
    data = mix.sample(jax.random.key(1), n)
    floor = float(energy_distance(mix.sample(jax.random.key(2), n), data))
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, {time.strftime('%Y-%m-%d')}; 16-D mixture, "
          f"{n} samples; energy distance floor (data vs data) {floor:.4f}\n")
    for pname in args.processes.split(","):
        sde = PROCESSES[pname]()
        score_fn = dj.mixture_score_fn(mix, sde)
        x_T = sde.prior_sample(jax.random.key(3), (n, 16))
        print(f"### {pname}: {sde!r}\n")
        print("| sampler | " + " | ".join(f"NFE <= {b}" for b in budgets) + " |")
        print("|---|" + "---|" * len(budgets))
        for label, (fn, opts, steps_for, nfe_of, only) in samplers().items():
            if only is not None and pname not in only:
                continue
            cells = []
            for b in budgets:
                steps = steps_for(b)
                if steps < 1:
                    cells.append("-")
                    continue
                run = functools.partial(fn, num_steps=steps, **opts)
                try:
                    x = run(jax.random.key(4), x_T, score_fn, sde)
                    jax.block_until_ready(x)
                    t0 = time.perf_counter()
                    x = jax.block_until_ready(run(jax.random.key(4), x_T, score_fn, sde))
                    wall = time.perf_counter() - t0
                except ValueError as e:
                    cells.append(f"n/a ({str(e)[:40]})")
                    continue
                ok = bool(jnp.all(jnp.isfinite(x)))
                ed = float(energy_distance(x, data)) if ok else float("nan")
                cells.append(f"{ed:.4f} ({nfe_of(steps)}, {wall * 1e3:.0f} ms)")
            print(f"| {label} | " + " | ".join(cells) + " |", flush=True)
        print()


if __name__ == "__main__":
    main()
