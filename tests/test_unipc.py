"""UniPC (diffjax.samplers.unipc) against hand-written formulas, DPM-Solver++ and exact mixture scores.

* the whole UniPC-2 run (UniP-2 predictor, UniC corrector after every step but the last, lower-order final
  steps) equals the paper's / diffusers' update written out in NumPy (float64), bh1 and bh2, on VP and EDM;
* one UniP step of order 1 is DDIM = DPM-Solver++ order 1, UniP-2 with bh2 is DPM-Solver++(2M); one step (no
  corrector) equals dpm_solver's;
* on Gaussian data (closed-form ODE solution) UniPC-p converges at order p + 1 (the corrector's gain);
* at 20 evaluations as good as Euler-Maruyama at 1000 steps, at 10 within 1.5x the tolerance, on the 2-D ring and
  the 16-D mixture on VP, VE, EDM and rectified flow (tests/test_dpm_solver.py's data, tolerances and grids);
* bad arguments raise ValueErrors naming the argument before anything is traced.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.eval.sample_distances import energy_distance
from diffjax.samplers import _dpm_solver, _unipc
from _fast_compile import FAST_COMPILE
from test_dpm_solver import (  # noqa: F401  (ground_truth: the shared fixture)
    _GAUSS, DATASETS, MU, N_POINTS, PROCESSES, S, S0, _coef, _finite, _hand_inputs, _x0,
    ground_truth, score)


def _b_hand(h, variant):
    """diffusers' ``h_phi_k`` recursion for b_1, b_2 (float64), with hh = -h (data prediction)."""
    hh = -h
    big_b = hh if variant == "bh1" else np.expm1(hh)
    g = np.expm1(hh) / hh - 1.0
    b1 = g / big_b
    g = g / hh - 0.5
    return big_b, b1, 2.0 * g / big_b


@pytest.mark.parametrize("proc,variant", [("vp", "bh1"), ("edm", "bh2")])
def test_unipc_2_is_the_hand_written_update(proc, variant):
    n = 7
    p, times, x_T = _hand_inputs(proc, n)
    sc = score("ring", proc)
    lam = [0.5 * float(p.log_snr(jnp.float32(t))) for t in times]
    orders = [min(2, i + 1, n - i) for i in range(n)]
    x, ds, x_prev = np.asarray(x_T, np.float64), [], None
    for i in range(n):
        d = _x0(p, sc, x, times[i])  # at UniP's prediction; kept in the history uncorrected
        if i > 0:  # UniC for the step t_{i-1} -> t_i, of the order of that step's predictor
            a_i, s_i = _coef(p, times[i])
            _, s_p = _coef(p, times[i - 1])
            h = lam[i] - lam[i - 1]
            big_b, b1, b2 = _b_hand(h, variant)
            base = s_i / s_p * x_prev - a_i * np.expm1(-h) * ds[-1]
            if orders[i - 1] == 1:
                x = base - a_i * big_b * 0.5 * (d - ds[-1])
            else:  # [[1, 1], [r, 1]] rho = [b1, b2]
                r = (lam[i - 2] - lam[i - 1]) / h
                rho1 = (b1 - b2) / (1.0 - r)
                rho2 = b1 - rho1
                x = base - a_i * big_b * (rho1 * (ds[-2] - ds[-1]) / r + rho2 * (d - ds[-1]))
        ds.append(d)
        x_prev = x
        a_n, s_n = _coef(p, times[i + 1])
        _, s = _coef(p, times[i])
        h = lam[i + 1] - lam[i]
        x = s_n / s * x - a_n * np.expm1(-h) * d
        if orders[i] == 2:  # UniP-2: rho = 1/2
            big_b, _, _ = _b_hand(h, variant)
            r = (lam[i - 1] - lam[i]) / h
            x = x - a_n * big_b * 0.5 * (ds[-2] - d) / r
    got, nfe = S.unipc(None, x_T, sc, p, num_steps=n, order=2, variant=variant, return_nfe=True)
    assert _finite(got, x) and int(nfe) == n
    np.testing.assert_allclose(got, x, rtol=1e-4, atol=1e-4 * float(np.max(np.abs(x))))
    assert _unipc.unipc_orders(2, n, True) == tuple(orders) == (1, 2, 2, 2, 2, 2, 1)
    assert _unipc.unipc_orders(3, 5, True) == (1, 2, 3, 2, 1)
    assert _unipc.unipc_orders(3, 4, False) == (1, 2, 3, 3)


def test_predictor_steps_are_ddim_and_dpm_solver_2m():
    """UniP-1 is DDIM (DPM-Solver++ order 1) for either B(h); UniP-2 with bh2 is DPM-Solver++(2M) (the
    ``rho = 1/2`` simplification); with bh1 it differs at O(h^3)."""
    p = PROCESSES["vp"]
    x, d0, d1 = (jax.random.normal(jax.random.key(k), (4, 3)) for k in range(3))
    ts = [jnp.float32(t) for t in (0.5, 0.4, 0.3)]
    c_1, c, c_n = (_dpm_solver._coeffs(p, t) for t in ts)
    for variant in ("bh1", "bh2"):
        one = _unipc._step(1, x, d0, (), (), c, c_n, None, variant)
        want = _dpm_solver._multistep_update(1, x, d0, None, None, None, None, c, c_n, None, False)
        np.testing.assert_allclose(one, want, rtol=1e-6, atol=1e-6)
    two = {v: _unipc._step(2, x, d0, (d1,), (c_1[2],), c, c_n, None, v) for v in ("bh1", "bh2")}
    want = _dpm_solver._multistep_update(2, x, d0, d1, None, c_1[2], None, c, c_n, None, False)
    assert _finite(two["bh1"], two["bh2"], want)
    np.testing.assert_allclose(two["bh2"], want, rtol=1e-5, atol=1e-5)
    assert float(jnp.max(jnp.abs(two["bh1"] - want))) > 1e-4


@pytest.mark.parametrize("proc", ["vp", "edm"])
def test_one_step_without_corrector_is_ddim(proc):
    """One step: no corrector (it follows every step but the last): DDIM = dpm_solver order 1."""
    p, _, x_T = _hand_inputs(proc, 1)
    sc = score("ring", proc)
    got = S.unipc(None, x_T, sc, p, num_steps=1, order=3)
    want = S.dpm_solver(None, x_T, sc, p, num_steps=1, order=1)
    assert _finite(got, want)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _ode_error(nfe, **kw):
    p = PROCESSES["vp"]
    x_T = p.prior_sample(jax.random.key(0), (64, 2))
    (a_T, s_T), (a, s) = p.marginal(jnp.float32(p.T)), p.marginal(jnp.float32(p.t_eps))
    want = a * MU + jnp.sqrt(a**2 * S0**2 + s**2) * (x_T - a_T * MU) / jnp.sqrt(a_T**2 * S0**2 + s_T**2)
    got = S.unipc(None, x_T, _GAUSS["vp"], p, num_steps=nfe, lower_order_final=False, **kw)
    assert _finite(got)
    return float(jnp.max(jnp.abs(got - want)))


@pytest.mark.parametrize("order,variant,lo,hi", [(1, "bh2", 1.6, 2.5), (2, "bh1", 2.5, 3.6)])
def test_the_corrector_raises_the_order_by_one(order, variant, lo, hi):
    """UniPC-p (UniP-p + UniC) converges at order p + 1 on the probability-flow ODE (DPM-Solver++ order p: p)."""
    e1, e2 = (_ode_error(n, order=order, variant=variant) for n in (12, 24))
    assert lo < np.log2(e1 / e2) < hi, (order, variant, e1, e2)


# ------------------------------------------------------------------------------- exact mixture scores


@pytest.mark.parametrize("proc", list(PROCESSES))
@pytest.mark.parametrize("data_name", list(DATASETS))
def test_20_nfe_as_good_as_euler_maruyama_1000(data_name, proc, ground_truth):  # noqa: F811
    p, mix = PROCESSES[proc], DATASETS[data_name]
    data, tol, rms = ground_truth[data_name]
    sc = score(data_name, proc)
    x_T = p.prior_sample(jax.random.key(7), (N_POINTS,) + mix.event_shape)
    grid = S.uniform_time_grid if proc == "rectified_flow" else S.uniform_log_snr_grid  # as tests/test_dpm_solver.py

    def run(x_T):  # one compilation: the reference and both UniPC runs
        return (S.euler_maruyama(jax.random.key(3), x_T, sc, p, num_steps=1000),
                S.unipc(None, x_T, sc, p, num_steps=20),
                S.unipc(None, x_T, sc, p, num_steps=10, time_grid=grid))

    em, fast, fewer = jax.jit(run).lower(x_T).compile(compiler_options=FAST_COMPILE)(x_T)
    assert _finite(em, fast, fewer)
    ed_em, ed_20, ed_10 = (float(energy_distance(out, data)) for out in (em, fast, fewer))
    msg = f"{proc}/{data_name}: EM-1000 {ed_em:.4f}, UniPC-20 {ed_20:.4f}, UniPC-10 {ed_10:.4f}, tolerance {tol:.4f}"
    assert ed_em < tol, msg
    assert ed_20 < tol and ed_20 <= ed_em + rms, msg
    assert ed_10 < 1.5 * tol, msg


# ------------------------------------------------------------------------------------------ bad arguments


def _never_called(x, t):
    raise AssertionError("score_fn was traced before the arguments were checked")


@pytest.mark.parametrize("kwargs,match", [
    (dict(order=4), "order"),
    (dict(order=0), "order"),
    (dict(order=2.0), "order"),
    (dict(variant="bh3"), "variant"),
    (dict(num_steps=0), "num_steps"),
    (dict(lower_order_final="yes"), "lower_order_final"),
    (dict(denoise=1), "denoise"),
    (dict(return_nfe=None), "return_nfe"),
    (dict(time_grid="karras"), "time_grid"),
    (dict(t_eps=2.0), "t_eps"),
])
def test_bad_arguments_raise_before_tracing(kwargs, match):
    with pytest.raises(ValueError, match=match):
        S.unipc(None, jnp.zeros((2, 2)), _never_called, PROCESSES["vp"], **kwargs)
