"""Parity of ``diffjax.samplers.dpm_solver`` (2M) with diffusers' ``DPMSolverMultistepScheduler`` (dpmsolver++), and of
``diffjax.samplers.unipc`` with diffusers' ``UniPCMultistepScheduler`` (bh2 order 2, bh1 order 3).

Both run DPM-Solver++(2M) (midpoint form, data prediction, lower-order final steps below 15 steps) from the same
``x_T`` with the same analytic model: Gaussian data ``N(MU, S0^2 I)``, whose exact noise prediction at a noise level
with signal ``a`` and noise ``s`` is ``eps = s (x - a MU) / (a^2 S0^2 + s^2)`` (the score ``-eps / s``).

diffusers: ``DPMSolverMultistepScheduler(beta_schedule="linear", 0.0001 .. 0.02, 1000 steps, solver_order=2,
algorithm_type="dpmsolver++", solver_type="midpoint", use_lu_lambdas=True, final_sigmas_type="sigma_min")``: its
grid is uniform in log-SNR (Lu et al.'s "logSNR" spacing) from the DDPM chain's largest to smallest sigma, and it
ends at ``sigma_min`` (not 0) so that every step is a DPM-Solver++ step. The model is evaluated at the scheduler's
own ``sigmas[i]`` (``alpha_t, sigma_t = scheduler._sigma_to_alpha_sigma_t(sigma)``).

diffjax: ``dpm_solver(order=2)`` on ``vp_sde()`` with a ``time_grid`` that returns the times whose log-SNR equals
diffusers' ``-2 log sigma_i`` (``sde.t_from_log_snr``): the same grid, read through the process protocol. The
score is the exact score of the same Gaussian data on the VP process.

diffusers and torch live in their own virtual environment (``/work/venvs/peer``, or ``$DIFFUSERS_PYTHON``), which
has no JAX: this script runs itself there with ``--diffusers IN OUT`` to produce the reference, then compares in
the current (diffjax) Python. Run from the repository root::

    python experiments/parity/dpm_solver_vs_diffusers.py

Result (2026-11-29, CPU, float32, 256 x 8 samples, MU = 0.7, S0 = 0.5)::

    num_steps=  5: sigma 157.4 .. 0.01, t 1.0034 .. 9.17e-04, max |diffjax - diffusers| / max |x_0| = 4.27e-06
    num_steps= 10: sigma 157.4 .. 0.01, t 1.0034 .. 9.17e-04, max |diffjax - diffusers| / max |x_0| = 3.72e-07
    num_steps= 20: sigma 157.4 .. 0.01, t 1.0034 .. 9.17e-04, max |diffjax - diffusers| / max |x_0| = 6.60e-07
    num_steps= 25: sigma 157.4 .. 0.01, t 1.0034 .. 9.17e-04, max |diffjax - diffusers| / max |x_0| = 8.51e-07
    unipc bh2 order 2, num_steps=  5: sigma 157.4 .. 0.01, max |diffjax - diffusers| / max |x_0| = 4.17e-07
    unipc bh2 order 2, num_steps= 10: sigma 157.4 .. 0.01, max |diffjax - diffusers| / max |x_0| = 4.08e-07
    unipc bh2 order 2, num_steps= 20: sigma 157.4 .. 0.01, max |diffjax - diffusers| / max |x_0| = 3.18e-07
    unipc bh2 order 2, num_steps= 25: sigma 157.4 .. 0.01, max |diffjax - diffusers| / max |x_0| = 7.73e-07
    unipc bh1 order 3, num_steps=  5: sigma 157.4 .. 0.01, max |diffjax - diffusers| / max |x_0| = 4.73e-07
    unipc bh1 order 3, num_steps= 10: sigma 157.4 .. 0.01, max |diffjax - diffusers| / max |x_0| = 3.74e-07
    unipc bh1 order 3, num_steps= 20: sigma 157.4 .. 0.01, max |diffjax - diffusers| / max |x_0| = 3.86e-07
    unipc bh1 order 3, num_steps= 25: sigma 157.4 .. 0.01, max |diffjax - diffusers| / max |x_0| = 7.66e-07
    PASS: worst relative difference 4.27e-06 (tolerance 0.0001)

UniPC: ``UniPCMultistepScheduler(same betas, solver_order, solver_type, predict_x0=True, lower_order_final=True,
final_sigmas_type="sigma_min", prediction_type="epsilon")`` with its default "linspace" spacing (its n sigmas, then
sigma_min: n steps, no repeated level) against ``unipc(num_steps=n, order, variant)`` on the same sigmas; the
corrector after every step but the last and the lower-order final steps (order <= n - i) are diffusers' defaults.

A quirk of diffusers met on the way: ``use_lu_lambdas``' grid already ends at ``sigma_min`` and
``final_sigmas_type="sigma_min"`` appends it again, so diffusers' last step has ``h = 0`` (a wasted model call that
leaves ``x`` unchanged) and its lower-order final step is that empty one: ``num_steps=n`` there is diffjax's 2M with
``num_steps=n - 1, lower_order_final=False`` on the same sigmas. diffjax's own lower-order rule (last step first
order below 15 steps) is diffusers' rule on a grid without the repeated sigma; it is not exercised here.

Not compared: 3M. diffusers' (and the DPM-Solver reference code's) multistep third-order step weights its
second-difference term ``D2 ~ h^2 D''/2`` by ``1/2 - (e^{-h} - 1 + h)/h^2 ~ h/6`` where the Taylor term
``a_t int_0^h e^{u-h} u^2/2 du D''`` needs ``~ h/3``; its local error is then O(h^3). diffjax uses the Taylor
coefficient ``1 - 2 (e^{-h} - 1 + h)/h^2`` (local error O(h^4), tests/test_dpm_solver.py), so 3M differs from
diffusers' by design.
"""
from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
import tempfile

import numpy as np

MU, S0 = 0.7, 0.5
BATCH, DIM = 256, 8
STEPS = (5, 10, 20, 25)
TOL = 1e-4  # max |diffjax - diffusers| / max |x_0|
UNIPC = (("bh2", 2), ("bh1", 3))  # (solver_type, solver_order) of UniPCMultistepScheduler


def run_diffusers(in_path: str, out_path: str) -> None:
    """In the diffusers venv: the scheduler's sigmas and final samples for each step count."""
    import torch
    from diffusers import DPMSolverMultistepScheduler

    x_T = torch.from_numpy(np.load(in_path)["x_T"])
    out = {}
    for n in STEPS:
        sched = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02,
                                            beta_schedule="linear", solver_order=2, algorithm_type="dpmsolver++",
                                            solver_type="midpoint", lower_order_final=True, use_lu_lambdas=True,
                                            final_sigmas_type="sigma_min", prediction_type="epsilon")
        sched.set_timesteps(n)
        x = x_T * sched.init_noise_sigma
        for i, t in enumerate(sched.timesteps):
            alpha_t, sigma_t = sched._sigma_to_alpha_sigma_t(sched.sigmas[i])
            eps = sigma_t * (x - alpha_t * MU) / (alpha_t**2 * S0**2 + sigma_t**2)
            x = sched.step(eps, t, x).prev_sample
        out[f"sigmas_{n}"] = sched.sigmas.numpy()
        out[f"x0_{n}"] = x.numpy()
    from diffusers import UniPCMultistepScheduler

    for variant, order in UNIPC:
        for n in STEPS:
            sched = UniPCMultistepScheduler(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02,
                                            beta_schedule="linear", solver_order=order, solver_type=variant,
                                            predict_x0=True, lower_order_final=True, final_sigmas_type="sigma_min",
                                            prediction_type="epsilon")
            sched.set_timesteps(n)
            x = x_T * sched.init_noise_sigma
            for i, t in enumerate(sched.timesteps):
                alpha_t, sigma_t = sched._sigma_to_alpha_sigma_t(sched.sigmas[i])
                eps = sigma_t * (x - alpha_t * MU) / (alpha_t**2 * S0**2 + sigma_t**2)
                x = sched.step(eps, t, x).prev_sample
            out[f"unipc_{variant}_{order}_sigmas_{n}"] = sched.sigmas.numpy()
            out[f"unipc_{variant}_{order}_x0_{n}"] = x.numpy()
    np.savez(out_path, **out)


def _fixed_grid(times, process, num_steps, t_eps):
    """A ``time_grid`` that returns given times (hashable through ``functools.partial`` of a tuple)."""
    import jax.numpy as jnp

    del process, t_eps
    assert len(times) == num_steps + 1
    return jnp.asarray(times, jnp.float32)


def main() -> None:
    import jax
    import jax.numpy as jnp

    sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
    import diffjax as dj

    parser = argparse.ArgumentParser()
    parser.add_argument("--python", default=os.environ.get("DIFFUSERS_PYTHON", "/work/venvs/peer/bin/python"))
    args = parser.parse_args()

    sde = dj.vp_sde()

    def score_fn(x, t):
        a, s = sde.marginal(jnp.broadcast_to(t, (x.shape[0],)))
        a, s = a[:, None], s[:, None]
        return -(x - a * MU) / (a**2 * S0**2 + s**2)

    x_T = np.asarray(jax.random.normal(jax.random.key(0), (BATCH, DIM), jnp.float32))
    with tempfile.TemporaryDirectory() as tmp:
        in_path, out_path = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
        np.savez(in_path, x_T=x_T)
        subprocess.run([args.python, os.path.abspath(__file__), "--diffusers", in_path, out_path], check=True)
        ref = dict(np.load(out_path))

    worst = 0.0
    for n in STEPS:
        sigmas = ref[f"sigmas_{n}"].astype(np.float64)
        # use_lu_lambdas' grid already ends at sigma_min, and final_sigmas_type="sigma_min" appends it again: the
        # last of diffusers' n steps has h = 0 and leaves x unchanged (one wasted model call), and its lower-order
        # final step is that empty one. The same computation in diffjax: n - 1 steps of 2M, no lower-order final.
        assert sigmas[-1] == sigmas[-2], sigmas
        sigmas = sigmas[:-1]
        times = np.asarray(sde.t_from_log_snr(jnp.asarray(-2.0 * np.log(sigmas), jnp.float32)), np.float64)
        grid = functools.partial(_fixed_grid, tuple(float(t) for t in times))
        got = np.asarray(dj.samplers.dpm_solver(None, jnp.asarray(x_T), score_fn, sde, num_steps=n - 1, order=2,
                                                t_eps=float(times[-1]), time_grid=grid, lower_order_final=False))
        want = ref[f"x0_{n}"]
        err = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
        worst = max(worst, err)
        print(f"num_steps={n:3d}: sigma {sigmas[0]:.4g} .. {sigmas[-1]:.4g}, t {times[0]:.4f} .. {times[-1]:.2e}, "
              f"max |diffjax - diffusers| / max |x_0| = {err:.2e}")
    for variant, order in UNIPC:
        for n in STEPS:
            # UniPC's default "linspace" spacing ends above step 0, so the appended sigma_min is a new level: n steps
            sigmas = ref[f"unipc_{variant}_{order}_sigmas_{n}"].astype(np.float64)
            assert len(sigmas) == n + 1 and np.all(np.diff(sigmas) < 0), sigmas
            times = np.asarray(sde.t_from_log_snr(jnp.asarray(-2.0 * np.log(sigmas), jnp.float32)), np.float64)
            grid = functools.partial(_fixed_grid, tuple(float(t) for t in times))
            got = np.asarray(dj.samplers.unipc(None, jnp.asarray(x_T), score_fn, sde, num_steps=n, order=order,
                                               variant=variant, t_eps=float(times[-1]), time_grid=grid))
            want = ref[f"unipc_{variant}_{order}_x0_{n}"]
            err = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
            worst = max(worst, err)
            print(f"unipc {variant} order {order}, num_steps={n:3d}: sigma {sigmas[0]:.4g} .. {sigmas[-1]:.4g}, "
                  f"max |diffjax - diffusers| / max |x_0| = {err:.2e}")
    print(f"{'PASS' if worst < TOL else 'FAIL'}: worst relative difference {worst:.2e} (tolerance {TOL:g})")
    sys.exit(0 if worst < TOL else 1)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--diffusers":
        run_diffusers(sys.argv[2], sys.argv[3])
    else:
        main()
