"""EDM's Heun sampler (Karras et al. 2022, Algorithm 2) against the published algorithm written out by hand on EDM's
process, against the same loop in the scaled variable x / a on VP and rectified flow, and against the data with
exact mixture scores at EDM's 18 steps; the probability-flow samplers on EDM's process with no time_grid (its own
rho-grid) against the same data."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
from diffjax.eval.sample_distances import energy_distance

S = dj.samplers
from _mixtures import DATASETS, MIX16, N_POINTS, RING, data_and_noise  # noqa: E402
CHURN = dict(s_churn=40.0, s_tmin=0.05, s_tmax=50.0, s_noise=1.003)  # EDM's ImageNet-64 kind of setting


def _edm_algorithm_2(key, x_T, denoiser, sigma_min, sigma_max, N, *, s_churn=0.0, s_tmin=0.0, s_tmax=math.inf,
                     s_noise=1.0, rho=7.0):
    """EDM Algorithm 2, line by line, in float64 NumPy on sigma (t_i = sigma_i), with D from ``denoiser``."""
    i = np.arange(N)
    t = (sigma_max ** (1 / rho) + i / (N - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    t = np.append(t, 0.0)  # t_N = 0
    x = np.asarray(x_T, np.float64)
    for i in range(N):
        gamma = min(s_churn / N, math.sqrt(2) - 1) if s_tmin <= t[i] <= s_tmax else 0.0
        eps = s_noise * np.asarray(jax.random.normal(jax.random.fold_in(key, i), x.shape), np.float64)
        t_hat = t[i] + gamma * t[i]
        x_hat = x + math.sqrt(t_hat**2 - t[i] ** 2) * eps if s_churn else x
        d = (x_hat - denoiser(x_hat, t_hat)) / t_hat
        x_next = x_hat + (t[i + 1] - t_hat) * d
        if t[i + 1] != 0:
            d_prime = (x_next - denoiser(x_next, t[i + 1])) / t[i + 1]
            x_next = x_hat + (t[i + 1] - t_hat) * (0.5 * d + 0.5 * d_prime)
        x = x_next
    return x


def _scaled_denoiser(score_fn, a_of_sigma, t_of_sigma):
    """D(y; sigma) = y + sigma^2 a score(a y, t) of the scaled variable y = x / a (EDM's general form), float32."""

    def D(y, sigma):
        a, t = a_of_sigma(sigma), t_of_sigma(sigma)
        s = score_fn(jnp.asarray(a * y, jnp.float32), jnp.full((y.shape[0],), t, jnp.float32))
        return y + sigma**2 * a * np.asarray(s, np.float64)

    return D


# sigma = s/a -> (a, t), by hand: EDM a = 1, t = sigma; VP sigma^2 = e^I - 1 with I(t) = 0.1 t + 9.95 t^2;
# rectified flow sigma = t / (1 - t)
BY_HAND = {
    "edm": (dj.edm_sde(), lambda s: 1.0, lambda s: s),
    "vp": (dj.vp_sde(), lambda s: 1.0 / math.sqrt(1.0 + s**2),
           lambda s: (-0.1 + math.sqrt(0.01 + 4 * 9.95 * math.log1p(s**2))) / (2 * 9.95)),
    "rectified_flow": (dj.rectified_flow(), lambda s: 1.0 / (1.0 + s), lambda s: s / (1.0 + s)),
}


@pytest.mark.parametrize("churn", [False, True])
@pytest.mark.parametrize("proc, N", [("edm", 18), ("edm", 5), ("vp", 8), ("rectified_flow", 8)])
def test_edm_heun_is_edm_algorithm_2(proc, N, churn):
    p, a_of, t_of = BY_HAND[proc]
    score_fn = dj.mixture_score_fn(RING, p)
    x_T = p.prior_sample(jax.random.key(1), (64, 2))
    opts = CHURN if churn else {}
    if churn and proc != "edm":  # churn the middle of the range on the other processes' own sigma scale
        opts = dict(CHURN, s_tmax=20.0)
    key = jax.random.key(2)
    got = S.edm_heun(key, x_T, score_fn, p, num_steps=N, **opts)
    ratio = lambda t: float(p.marginal(jnp.float32(t))[1] / p.marginal(jnp.float32(t))[0])  # noqa: E731
    sigma_max, sigma_min = ratio(p.T), ratio(p.t_eps)
    a_T = a_of(sigma_max)
    want = _edm_algorithm_2(key, np.asarray(x_T, np.float64) / a_T, _scaled_denoiser(score_fn, a_of, t_of),
                            sigma_min, sigma_max, N, **opts)
    assert got.shape == x_T.shape and bool(jnp.all(jnp.isfinite(got)))
    scale = float(np.max(np.abs(want)))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4 * scale)
    if churn:  # the churn did something
        plain = S.edm_heun(key, x_T, score_fn, p, num_steps=N)
        assert float(jnp.max(jnp.abs(plain - got))) > 1e-2


def test_edm_heun_nfe_is_2n_minus_1():
    calls = []
    p = dj.edm_sde()

    def counting_score(x, t):
        jax.debug.callback(lambda: calls.append(1))  # once per evaluation at run time, inside the scan too
        return -x / (1.0 + jnp.reshape(t, (-1, 1)) ** 2)

    x_T = p.prior_sample(jax.random.key(1), (4, 2))
    for N, denoise, want in ((5, True, 9), (5, False, 8), (1, True, 1)):
        calls.clear()
        _, nfe = S.edm_heun(jax.random.key(0), x_T, counting_score, p, num_steps=N, denoise=denoise, s_churn=1.0,
                            return_nfe=True)
        jax.effects_barrier()
        assert len(calls) == want == int(nfe), (N, denoise, len(calls), int(nfe))


def test_edm_heun_without_denoise_stops_at_t_eps():
    """denoise=False: N - 1 Heun steps down to t_eps and the sample there; a Gaussian has the exact answer."""
    p = dj.edm_sde()
    mu, s0 = 0.7, 0.5
    score_fn = lambda x, t: -(x - mu) / (s0**2 + jnp.reshape(t, (-1, 1)) ** 2)  # noqa: E731
    x_T = p.prior_sample(jax.random.key(1), (3, 2))
    got = S.edm_heun(jax.random.key(0), x_T, score_fn, p, num_steps=200, denoise=False)
    # the flow of N(mu, s0^2 + sigma^2) maps x_T to mu + (x_T - mu) sqrt((s0^2 + t_eps^2) / (s0^2 + T^2))
    want = mu + (x_T - mu) * math.sqrt((s0**2 + 0.002**2) / (s0**2 + 80.0**2))
    assert bool(jnp.all(jnp.isfinite(got)))
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)  # x_T ~ 80 shrinks 160-fold: float32 rounding
    with pytest.raises(ValueError, match=r"num_steps must be >= 2 for edm_heun with denoise=False.*got 1"):
        S.edm_heun(jax.random.key(0), x_T, score_fn, p, num_steps=1, denoise=False)


@pytest.mark.parametrize("kwargs, match", [
    (dict(s_churn=-1.0), r"s_churn must be a finite number >= 0, got -1.0"),
    (dict(s_tmin=1.0, s_tmax=0.5), r"s_tmax must be a number >= s_tmin=1.0 \(inf: no upper bound\), got 0.5"),
    (dict(s_tmax=float("nan")), r"s_tmax must be a number >= s_tmin"),
    (dict(s_noise=float("inf")), r"s_noise must be a finite number >= 0, got inf"),
    (dict(num_steps=0), r"num_steps must be >= 1, got 0"),
    (dict(denoise=1), r"denoise must be True or False, got 1"),
])
def test_edm_heun_bad_arguments(kwargs, match):
    def never(x, t):
        raise AssertionError("traced before validation")

    with pytest.raises(ValueError, match=match):
        S.edm_heun(jax.random.key(0), jnp.ones((2, 2)), never, dj.edm_sde(), **kwargs)


# ----------------------------------------------------------------------------------- exact scores, 18 steps

PROCS = {"vp": dj.vp_sde(), "ve": dj.ve_sde(), "edm": dj.edm_sde(), "rectified_flow": dj.rectified_flow()}


@pytest.fixture(scope="module")
def ground_truth():
    """The tolerance of tests/test_samplers.py and tests/test_processes.py, which Euler-Maruyama at 1000 steps
    meets: 4 x the RMS energy distance between two independent data draws."""
    return {name: (data, 4.0 * rms) for name, (data, rms) in ((n, data_and_noise(n)) for n in DATASETS)}


@pytest.mark.parametrize("data_name", list(DATASETS))
@pytest.mark.parametrize("proc", list(PROCS))
def test_edm_heun_at_18_steps_samples_the_mixture(proc, data_name, ground_truth):
    p, mix = PROCS[proc], DATASETS[data_name]
    data, tol = ground_truth[data_name]
    x_T = p.prior_sample(jax.random.key(7), (N_POINTS,) + mix.event_shape)
    score_fn = dj.mixture_score_fn(mix, p)
    # Deterministic (s_churn = 0; the churned algorithm is checked against EDM's by hand above). Heavy churn at
    # 18 steps is coarser: s_churn=10 (gamma = 0.41 at every level) measured 0.020 on rectified_flow/ring.
    out = S.edm_heun(jax.random.key(3), x_T, score_fn, p, num_steps=18)
    assert out.shape == data.shape and bool(jnp.all(jnp.isfinite(out)))
    ed = float(energy_distance(out, data))
    assert ed < tol, f"edm_heun on {proc}/{data_name}: energy distance {ed:.4f} >= tolerance {tol:.4f}"


def test_distance_detects_too_few_steps(ground_truth):
    p = PROCS["vp"]
    data, tol = ground_truth["ring"]
    out = S.edm_heun(jax.random.key(3), p.prior_sample(jax.random.key(7), (N_POINTS, 2)),
                     dj.mixture_score_fn(RING, p), p, num_steps=2)
    assert float(energy_distance(out, data)) > tol


@pytest.mark.parametrize("data_name", list(DATASETS))
@pytest.mark.parametrize("sampler, num_steps", [("ode_heun", 10), ("ode_euler", 20)])
def test_edm_process_samples_on_its_own_grid_by_default(sampler, num_steps, data_name, ground_truth):
    """EDM's time is sigma: equal steps in t would leave one step from ~80 / n to 0.002; with no time_grid the
    samplers step on the process's own grid (EDM's rho-grid) and 10 Heun / 20 Euler steps sample the mixture."""
    p, mix = PROCS["edm"], DATASETS[data_name]
    data, tol = ground_truth[data_name]
    x_T = p.prior_sample(jax.random.key(7), (N_POINTS,) + mix.event_shape)
    score_fn = dj.mixture_score_fn(mix, p)
    run = getattr(S, sampler)
    out = run(jax.random.key(3), x_T, score_fn, p, num_steps=num_steps)
    assert bool(jnp.all(jnp.isfinite(out)))
    ed = float(energy_distance(out, data))
    assert ed < tol, f"{sampler} on edm/{data_name}, default grid: energy distance {ed:.4f} >= tolerance {tol:.4f}"
    uniform = run(jax.random.key(3), x_T, score_fn, p, num_steps=num_steps, time_grid=S.uniform_time_grid)
    assert float(energy_distance(uniform, data)) > tol  # the distance sees what the grid changes
