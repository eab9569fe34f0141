"""Sampler benchmark with exact scores: sample quality vs NFE, wall time per NFE, and per-step overhead.

    python experiments/bench/samplers.py            # ~2-4 min on a 2-core CPU
    python experiments/bench/samplers.py --quick    # fewer step counts

Problems: the 2-D 8-Gaussian ring and a 16-D mixture of 8 Gaussians, both with their exact perturbed scores
(:func:`diffjax.mixture_score_fn`), so every difference from the data comes from the sampler.

Table 1 (quality): for each sampler and step count, the NFE (score evaluations), the energy distance to a fresh
data sample of the same size (U-statistic; the "data vs data" row is the noise floor of that size), and the wall
time per NFE of the compiled run.

Table 2 (overhead): ``ratio = t_run / (NFE * t_score)``, where ``t_run`` is a whole compiled sampling run and
``t_score`` is one score evaluation measured inside one jitted function that chains 64 evaluations without a
loop (pure compute: no dispatch, no loop). A ratio near 1 means the sampler adds no per-step Python or host cost;
what is above 1 is the sampler's own arithmetic (noise draws, updates) and the loop.
"""
from __future__ import annotations

import argparse
import math
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

import diffjax as dj
from diffjax.eval.sample_distances import energy_distance

S = dj.samplers
N_SAMPLES = 2000


def problems():
    ring = dj.ring_mixture()
    k1, k2 = jax.random.split(jax.random.key(42))
    means = 3.0 * jax.random.normal(k1, (8, 16))
    mix16 = dj.gaussian_mixture(jnp.ones(8), means, 0.5 + 0.5 * jax.random.uniform(k2, (8, 1)))
    return {"ring2d": ring, "mix16d": mix16}


def block(x):
    return jax.tree.map(lambda a: a.block_until_ready(), x)


def timed(fn, *args, reps=3):
    block(fn(*args))  # compile
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        block(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best


# (label, sde name, sampler call (key, x, score_fn, sde, n) -> x or (x, nfe), NFE as a function of n, ns)
def configs(quick):
    sde_steps = (30, 100, 1000) if quick else (10, 30, 100, 300, 1000)
    return [
        ("euler_maruyama", "vp", lambda k, x, s, e, n: S.euler_maruyama(k, x, s, e, num_steps=n), lambda n: n,
         sde_steps),
        ("reverse_diffusion", "vp", lambda k, x, s, e, n: S.reverse_diffusion(k, x, s, e, num_steps=n),
         lambda n: n, sde_steps),
        ("ancestral (DDPM)", "vp", lambda k, x, s, e, n: S.ancestral(k, x, s, e, num_steps=n), lambda n: n,
         sde_steps),
        ("pc (RD + Langevin)", "ve", lambda k, x, s, e, n: S.pc(k, x, s, e, num_steps=n), lambda n: 2 * n,
         sde_steps),
        ("annealed_langevin L=10", "ve",
         lambda k, x, s, e, n: S.annealed_langevin(k, x, s, e, n_steps_each=n, denoise=True), lambda n: 10 * n + 1,
         (3, 10, 100) if quick else (1, 3, 10, 30, 100)),
        ("ddim eta=0", "vp", lambda k, x, s, e, n: S.ddim(k, x, s, e, num_steps=n), lambda n: n,
         (10, 50) if quick else (5, 10, 20, 50, 100)),
        ("ode_euler", "vp", lambda k, x, s, e, n: S.ode_euler(k, x, s, e, num_steps=n), lambda n: n, sde_steps),
        ("ode_heun", "vp", lambda k, x, s, e, n: S.ode_heun(k, x, s, e, num_steps=n), lambda n: 2 * n,
         (10, 100) if quick else (5, 10, 30, 100)),
        ("ode_adaptive dopri5", "vp",
         lambda k, x, s, e, n: S.ode_adaptive(k, x, s, e, rtol=n, atol=n, return_nfe=True), None,
         (1e-3, 1e-5) if quick else (1e-2, 1e-3, 1e-5)),
    ]


SDES = {"vp": dj.vp_sde(), "ve": dj.ve_sde()}


def quality_table(quick):
    rows = []
    for pname, mix in problems().items():
        d = int(np.prod(mix.event_shape))
        data = mix.sample(jax.random.key(1), N_SAMPLES)
        floor = [float(energy_distance(mix.sample(jax.random.key(10 + 2 * i), N_SAMPLES),
                                       mix.sample(jax.random.key(11 + 2 * i), N_SAMPLES))) for i in range(4)]
        rows.append((pname, "data vs data (RMS of 4)", "", "", f"{np.sqrt(np.mean(np.square(floor))):.4f}", ""))
        for label, sde_name, call, nfe_of, ns in configs(quick):
            sde = SDES[sde_name]
            score_fn = dj.mixture_score_fn(mix, sde)
            x_T = sde.prior_sample(jax.random.key(2), (N_SAMPLES, d))
            for n in ns:
                run = jax.jit(lambda k, x, n=n, call=call: call(k, x, score_fn, sde, n))
                dt = timed(run, jax.random.key(3), x_T, reps=2)
                out = run(jax.random.key(3), x_T)
                if nfe_of is None:
                    out, nfe = out
                    nfe = int(nfe)
                else:
                    nfe = nfe_of(n)
                ed = float(energy_distance(out, data))
                rows.append((pname, f"{label} [{sde_name}]", f"{n:g}", str(nfe), f"{ed:.4f}",
                             f"{1e6 * dt / nfe:.1f}"))
            print(f"  done {pname} {label}", flush=True)
    return rows


def score_time(score_fn, x, t, chain=64):
    """One score evaluation inside a jitted, loop-free chain of ``chain`` dependent evaluations, each at its own
    time (with one constant ``t`` XLA would compute the time embedding once for the whole chain)."""

    @jax.jit
    def many(x):
        for i in range(chain):
            x = x + 1e-3 * score_fn(x, t * (1.0 - 1e-3 * i))
        return x

    return timed(many, x, reps=5) / chain


def mlp_score_fn(sde, dim=16, width=128):
    """A real network score: diffjax's MLP score net (3 hidden layers of ``width``, random weights) through
    ``make_score_fn`` (eps parameterization), so the score costs what a small trained model costs."""
    import diffjax.nets as nets
    model = nets.toy_mlp(hidden=(width,) * 3)
    x = jnp.zeros((1, dim))
    params = jax.jit(lambda k: model.init(k, x, jnp.zeros((1,)), train=False))(jax.random.key(0))["params"]
    return nets.make_score_fn(model.apply, params, sde)


def overhead_table(batches, score="exact"):
    mix = problems()["mix16d"]
    rows = []
    for batch in batches:
        for sde_name, label, call, nfe in [
            ("vp", "euler_maruyama n=1000", lambda k, x, s, e: S.euler_maruyama(k, x, s, e), 1000),
            ("vp", "ancestral n=1000", lambda k, x, s, e: S.ancestral(k, x, s, e), 1000),
            ("ve", "pc n=1000", lambda k, x, s, e: S.pc(k, x, s, e), 2000),
            ("vp", "ddim n=50", lambda k, x, s, e: S.ddim(k, x, s, e), 50),
            ("vp", "ode_euler n=1000", lambda k, x, s, e: S.ode_euler(k, x, s, e), 1000),
            ("vp", "ode_heun n=100", lambda k, x, s, e: S.ode_heun(k, x, s, e), 200),
            ("vp", "ode_adaptive 1e-5", None, None),
        ]:
            sde = SDES[sde_name]
            score_fn = dj.mixture_score_fn(mix, sde) if score == "exact" else mlp_score_fn(sde)
            x_T = sde.prior_sample(jax.random.key(2), (batch, 16))
            t_score = score_time(score_fn, x_T, jnp.full((batch,), 0.5))
            if call is None:
                run = jax.jit(lambda k, x: S.ode_adaptive(k, x, score_fn, sde, return_nfe=True))
                nfe = int(run(jax.random.key(0), x_T)[1])
            else:
                run = jax.jit(lambda k, x, call=call: call(k, x, score_fn, sde))
            t_run = timed(run, jax.random.key(0), x_T)
            rows.append((str(batch), label, str(nfe), f"{1e6 * t_score:.1f}", f"{1e3 * t_run:.1f}",
                         f"{t_run / (nfe * t_score):.2f}"))
        print(f"  done batch {batch}", flush=True)
    return rows


def fmt(header, rows):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--overhead-only", action="store_true", help="skip the quality table")
    parser.add_argument("--batches", default="16,256,4096")
    parser.add_argument("--scores", default="exact,mlp", help="overhead tables: exact and/or mlp")
    args = parser.parse_args()
    batches = tuple(int(b) for b in args.batches.split(","))
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, {platform.processor() or platform.machine()}, "
          f"batch {N_SAMPLES} for quality", flush=True)
    t0 = time.time()
    if not args.overhead_only:
        q = quality_table(args.quick)
        print("\nQuality vs NFE (energy distance to fresh data; lower is better, floor = data vs data)\n")
        print(fmt(("problem", "sampler [sde]", "steps/tol", "NFE", "energy dist", "us/NFE"), q))
    for score in args.scores.split(","):
        o = overhead_table(batches, score)
        what = "exact mixture score" if score == "exact" else "MLP score network (3 x 128, make_score_fn)"
        print(f"\nOverhead: ratio = t_run / (NFE x t_score), 16-D, {what}\n")
        print(fmt(("batch", "sampler", "NFE", "t_score us", "t_run ms", "ratio"), o), flush=True)
    print(f"\ntotal {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
