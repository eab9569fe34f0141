"""Probability-flow ODE likelihoods against the exact log-density of Gaussian-mixture data."""
import math

import chex
import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj

SDES = {"vp": dj.vp_sde(0.1, 20.0), "subvp": dj.subvp_sde(0.1, 20.0), "ve": dj.ve_sde(0.01, 50.0)}
MIX = dj.ring_mixture(8, radius=4.0, std=0.35)
X = MIX.sample(jax.random.PRNGKey(1), 8)


@pytest.mark.parametrize("name", list(SDES))
def test_exact_trace_matches_exact_log_density(name):
    sde = SDES[name]
    score_fn = dj.mixture_score_fn(MIX, sde)
    logp, nfe = dj.log_likelihood(None, X, score_fn, sde, trace="exact")
    assert logp.shape == (8,)
    assert np.all(np.isfinite(logp))
    np.testing.assert_allclose(logp, dj.mixture_log_prob(MIX, X), atol=0.01)
    # the ODE starts at t_eps: against the perturbed marginal p_{t_eps} (measured: <= 7e-4 VP / sub-VP, 3e-3 VE)
    np.testing.assert_allclose(logp, dj.mixture_log_prob(MIX, X, *sde.marginal(1e-5)), atol=5e-3)
    assert jnp.issubdtype(nfe.dtype, jnp.integer) and nfe.shape == () and int(nfe) > 0


@pytest.mark.parametrize("name,noise", [("vp", "rademacher"), ("ve", "gaussian")])
def test_hutchinson_is_unbiased(name, noise):
    """K independent probes per point (tiled batch): their mean is within 4 standard errors of the exact trace."""
    sde = SDES[name]
    score_fn = dj.mixture_score_fn(MIX, sde)
    k = 64
    exact = dj.mixture_log_prob(MIX, X, *sde.marginal(1e-5))
    est, _ = dj.log_likelihood(jax.random.PRNGKey(3), jnp.tile(X, (k, 1)), score_fn, sde, noise=noise)
    est = np.asarray(est).reshape(k, X.shape[0])
    se = est.std(axis=0, ddof=1) / math.sqrt(k)
    assert np.all(se > 1e-3)  # the estimate is noisy; otherwise the test would not test unbiasedness
    np.testing.assert_array_less(np.abs(est.mean(axis=0) - exact), 4 * se + 0.01)
    if noise == "rademacher":  # Rademacher probes give the exact trace of the diagonal: smaller spread than Gaussian
        assert float(np.mean(se)) < 0.5


@pytest.mark.parametrize("solver", [diffrax.Dopri5(), diffrax.Bosh3()])
def test_nfe_counts_vector_field_evaluations(solver):
    sde = SDES["vp"]
    score_fn = dj.mixture_score_fn(MIX, sde)
    calls = [0]

    def counting_score(x, t):
        jax.debug.callback(lambda: calls.__setitem__(0, calls[0] + 1))
        return score_fn(x, t)

    _, nfe = dj.log_likelihood(jax.random.PRNGKey(0), X, counting_score, sde, solver=solver, rtol=1e-3, atol=1e-3)
    assert int(nfe) == calls[0] > 0


def test_solver_objects_compare_by_value_no_retrace():
    """A fresh ``diffrax.Tsit5()`` is the same static argument as the last one: the second call traces nothing."""
    sde = SDES["vp"]
    score_fn = dj.mixture_score_fn(MIX, sde)
    traces = []

    def traced_score(x, t):
        traces.append(1)  # Python side effect: runs only while tracing
        return score_fn(x, t)

    run = lambda solver: dj.log_likelihood(jax.random.PRNGKey(0), X, traced_score, sde, solver=solver,  # noqa
                                           rtol=1e-3, atol=1e-3)
    first, _ = run(diffrax.Tsit5())
    n = len(traces)
    assert n > 0 and bool(jnp.all(jnp.isfinite(first)))
    chex.assert_trees_all_equal(run(diffrax.Tsit5())[0], first)
    assert len(traces) == n


def test_failed_solve_gives_nan():
    sde = SDES["vp"]
    logp, nfe = dj.log_likelihood(None, X, dj.mixture_score_fn(MIX, sde), sde, trace="exact", max_steps=3)
    assert np.all(np.isnan(logp)) and int(nfe) > 0


def test_jit_traces_once_and_eager_calls_reuse_the_compilation():
    sde = SDES["subvp"]
    score_fn = dj.mixture_score_fn(MIX, sde)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def ll(key, x):
        return dj.log_likelihood(key, x, score_fn, sde, rtol=1e-3, atol=1e-3)

    a, nfe_a = ll(jax.random.PRNGKey(0), X)
    b, _ = ll(jax.random.PRNGKey(1), X + 0.1)
    assert not np.allclose(a, b) and int(nfe_a) > 0
    # under jit the estimate is the eager one for the same key (the accuracy of one Hutchinson draw is tested by
    # test_hutchinson_is_unbiased, of the solve by the exact-trace tests)
    eager, nfe_eager = dj.log_likelihood(jax.random.PRNGKey(0), X, score_fn, sde, rtol=1e-3, atol=1e-3)
    assert np.all(np.isfinite(a)) and int(nfe_eager) == int(nfe_a)
    np.testing.assert_allclose(a, eager, rtol=1e-5, atol=1e-4)
    traces = [0]

    def counted_score(x, t):
        traces[0] += 1
        return score_fn(x, t)

    dj.log_likelihood(jax.random.PRNGKey(0), X, counted_score, sde, rtol=1e-3, atol=1e-3)
    first = traces[0]  # diffrax traces the vector field a few times within one compilation
    for i in range(1, 3):  # further eager batches with the same score_fn: no new trace
        dj.log_likelihood(jax.random.PRNGKey(i), X + i, counted_score, sde, rtol=1e-3, atol=1e-3)
    assert first > 0 and traces[0] == first


def test_bits_per_dim_formula_and_inputs():
    """bpd = -(logp(y) + D log(hi - lo)) / (D ln 2) + 8 with y = lo + (hi - lo)(k + U)/256 (score-SDE: offset 7)."""
    sde = SDES["vp"]
    mix = dj.gaussian_mixture([1.0], [[0.0, 0.0, 0.0]], 0.5)
    score_fn = dj.mixture_score_fn(mix, sde)
    k = jax.random.randint(jax.random.PRNGKey(5), (6, 3), 0, 256).astype(jnp.uint8)
    key = jax.random.PRNGKey(7)
    bpd, nfe = dj.bits_per_dim(key, k, score_fn, sde, trace="exact", rtol=1e-4, atol=1e-4)
    assert int(nfe) > 0
    key_u, _ = jax.random.split(key)
    y = -1.0 + 2.0 * (k.astype(jnp.float32) + jax.random.uniform(key_u, k.shape)) / 256.0
    np.testing.assert_allclose(bpd, -dj.mixture_log_prob(mix, y) / (3 * math.log(2)) + 7.0, atol=2e-3)
    # float input already scaled to the data range (score-SDE's scaler of k / 255) gives the same bits
    scaled = -1.0 + 2.0 * k.astype(jnp.float32) / 255.0
    bpd_f, _ = dj.bits_per_dim(key, scaled, score_fn, sde, trace="exact", rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(bpd_f, bpd, rtol=1e-5)
    # [0, 1] data at the bin centres: offset 8
    bpd01, _ = dj.bits_per_dim(key, k, score_fn, sde, trace="exact", data_range=(0.0, 1.0), dequantize=False,
                               rtol=1e-4, atol=1e-4)
    y01 = (k.astype(jnp.float32) + 0.5) / 256.0
    np.testing.assert_allclose(bpd01, -dj.mixture_log_prob(mix, y01) / (3 * math.log(2)) + 8.0, atol=2e-3)


def test_bad_inputs_raise_before_tracing():
    sde = SDES["vp"]
    score_fn = dj.mixture_score_fn(MIX, sde)
    key = jax.random.PRNGKey(0)
    cases = [
        (dict(trace="bogus"), "trace"),
        (dict(noise="uniform"), "noise"),
        (dict(t_eps=0.0), "t_eps"),
        (dict(t_eps=1.5), "t_eps"),
        (dict(rtol=0.0), "rtol"),
        (dict(atol=-1e-5), "atol"),
        (dict(max_steps=0), "max_steps"),
        (dict(solver=diffrax.Euler()), "solver"),
        (dict(solver="dopri5"), "solver must be an explicit Runge-Kutta solver of diffrax.*dopri5"),  # objects only
    ]
    for kwargs, name in cases:
        with pytest.raises(ValueError, match=name):
            dj.log_likelihood(key, X, score_fn, sde, **kwargs)
    with pytest.raises(ValueError, match="x"):
        dj.log_likelihood(key, X[0], score_fn, sde)
    with pytest.raises(ValueError, match="score_fn"):
        dj.log_likelihood(key, X, None, sde)
    with pytest.raises(ValueError, match="data_range"):
        dj.bits_per_dim(key, X, score_fn, sde, data_range=(1.0, -1.0))
    with pytest.raises(ValueError, match="trace"):
        dj.bits_per_dim(key, jnp.zeros((2, 3), jnp.uint8), score_fn, sde, trace="nope")



# --- Gaussian data: the log-likelihood against its closed form ---------------------------------------------------


def _gaussian_logpdf(x, mean, var):
    x = np.asarray(x, np.float64)
    return -0.5 * np.sum((x - mean) ** 2 / var + np.log(2 * np.pi * var), axis=-1)


@pytest.mark.parametrize("name", list(SDES))
def test_gaussian_log_likelihood_equals_closed_form(name):
    """N(mu, diag(s^2)) data with its exact score. Every marginal is N(a_t mu, v_t = a_t^2 s^2 + sigma_t^2) and the
    probability-flow ODE keeps (x_t - a_t mu) / sqrt(v_t) fixed, so the ODE's answer is known exactly:
    log p_{t_eps}(x) + log prior(x_T) - log p_T(x_T) with x_T = a_T mu + sqrt(v_T / v_eps) (x - a_eps mu).
    The exact-trace solve at the default tolerances reproduces it to 1e-3 nats (measured <= 4e-4)."""
    sde = SDES[name]
    mu, std = np.array([0.5, -1.0, 2.0]), np.array([0.3, 1.0, 0.6])
    gauss = dj.gaussian_mixture([1.0], [mu.tolist()], jnp.asarray(std[None]))
    x = jnp.asarray(mu + std * np.random.default_rng(0).normal(size=(6, 3)) * 1.5, jnp.float32)
    logp, _ = dj.log_likelihood(None, x, dj.mixture_score_fn(gauss, sde), sde, trace="exact")
    (a, s), (a_T, s_T) = ((float(v) for v in sde.marginal(t)) for t in (1e-5, sde.T))
    v_eps, v_T = a**2 * std**2 + s**2, a_T**2 * std**2 + s_T**2
    xs = np.asarray(x, np.float64)
    x_T = a_T * mu + np.sqrt(v_T / v_eps) * (xs - a * mu)
    prior = np.asarray(sde.prior_logp(jnp.asarray(x_T, jnp.float32)), np.float64)
    want = _gaussian_logpdf(xs, a * mu, v_eps) + prior - _gaussian_logpdf(x_T, a_T * mu, v_T)
    assert np.all(np.isfinite(logp))
    np.testing.assert_allclose(logp, want, atol=1e-3, rtol=0)
    assert np.ptp(want) > 1.0  # the points differ in log-density: a constant offset would be caught


# --- DDPM variational bound: clipped (published evaluations) and unclipped predicted x0 --------------------------


def _np_log_bin_mass(x, mean, sd):
    """log P(bin of x) under N(mean, sd^2), edge bins open (DDPM's decoder), in float64."""
    from scipy.special import log_ndtr

    lo = np.where(x < -0.999, -np.inf, (x - mean - 1 / 255) / sd)
    hi = np.where(x > 0.999, np.inf, (x - mean + 1 / 255) / sd)
    flip = lo + hi > 0
    lo, hi = np.where(flip, -hi, lo), np.where(flip, -lo, hi)
    return log_ndtr(hi) + np.log1p(-np.exp(log_ndtr(lo) - log_ndtr(hi)))


def _np_vlb_term(x0, x_t, i, eps, betas, abar, *, clip):
    """L_i in bits/dim by hand (v = 1: model variance beta_i), the model mean from the (clipped) predicted x0."""
    x0, x_t, eps = (np.asarray(a, np.float64) for a in (x0, x_t, eps))
    beta, ab = betas[i], abar[i]
    ab_prev = abar[i - 1] if i > 0 else 1.0
    x0_pred = (x_t - np.sqrt(1 - ab) * eps) / np.sqrt(ab)
    if clip:
        x0_pred = np.clip(x0_pred, -1.0, 1.0)
    c0, ct = np.sqrt(ab_prev) * beta / (1 - ab), np.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab)
    mean, var = c0 * x0_pred + ct * x_t, beta
    dims = tuple(range(1, x0.ndim))
    if i == 0:
        return -_np_log_bin_mass(x0, mean, np.sqrt(var)).mean(axis=dims) / np.log(2)
    true_mean, true_var = c0 * x0 + ct * x_t, (1 - ab_prev) / (1 - ab) * beta
    kl = 0.5 * (-1 + np.log(var / true_var) + true_var / var + (true_mean - mean) ** 2 / var)
    return kl.mean(axis=dims) / np.log(2)


def _analytic_eps_model(grid):
    """``eps = 0.8 sigma_i x_t`` (0.8 times the exact E[eps | x_t] of N(0, I) data): the predicted x0 is
    ``(1 - 0.8 sigma_i^2) x_t / sqrt(abar_i)``, which leaves [-1, 1] for some points at every step. v = 1."""

    def model_fn(x_t, t):
        s = grid.marginal(t)[1]
        return 0.8 * s.reshape((-1,) + (1,) * (x_t.ndim - 1)) * x_t, jnp.ones_like(x_t)

    return model_fn


def _lattice(key, shape):
    return -1.0 + 2.0 * jax.random.randint(key, shape, 0, 256).astype(jnp.float32) / 255.0


def test_vlb_terms_clip_denoised_differ_exactly_where_predicted_x0_leaves_range():
    from diffjax.discrete import ddpm_grid, ddpm_vlb_terms

    grid = ddpm_grid(dj.vp_sde(0.1, 20.0, N=40))
    betas, abar = np.asarray(grid.betas, np.float64), np.asarray(grid.alpha_bars, np.float64)
    model = _analytic_eps_model(grid)
    x0 = _lattice(jax.random.PRNGKey(0), (256, 1))  # one dimension per example: each term is one element
    x0 = x0.at[:8, 0].set(jnp.array([-1.0, 1.0] * 4))  # edge bins, where the decoder's clip matters at i = 0
    noise = jax.random.normal(jax.random.PRNGKey(1), x0.shape)
    for i in (0, 1, 5, 20, 30, 39):
        t = jnp.full((x0.shape[0],), grid.time(i))
        x_t = grid.perturb(x0, t, noise)
        eps, v = model(x_t, t)
        clipped = np.asarray(ddpm_vlb_terms(x0, x_t, i, eps, v, grid, clip_denoised=True))
        plain = np.asarray(ddpm_vlb_terms(x0, x_t, i, eps, v, grid))  # the default: unclipped (as in training)
        assert np.all(np.isfinite(clipped)) and np.all(np.isfinite(plain))
        np.testing.assert_allclose(clipped, _np_vlb_term(x0, x_t, i, eps, betas, abar, clip=True), rtol=2e-4,
                                   atol=1e-5, err_msg=f"step {i}")
        np.testing.assert_allclose(plain, _np_vlb_term(x0, x_t, i, eps, betas, abar, clip=False), rtol=2e-4,
                                   atol=1e-5, err_msg=f"step {i}")
        x0_pred = np.abs((1 - 0.8 * (1 - abar[i])) * np.asarray(x_t, np.float64)[:, 0] / np.sqrt(abar[i]))
        outside, far = x0_pred > 1.0, x0_pred > 1.05  # (the hand computation above covers the ones just outside)
        assert far.sum() > 0 and (~outside).sum() > 0, (i, far.sum(), outside.sum())
        np.testing.assert_allclose(clipped[~outside], plain[~outside], rtol=2e-4, atol=1e-6)
        assert np.all(np.abs(clipped[far] - plain[far]) > 1e-3 * np.abs(plain[far])), i
    with pytest.raises(ValueError, match="clip_denoised"):
        ddpm_vlb_terms(x0, x_t, 1, eps, v, grid, clip_denoised="yes")


def test_vlb_bpd_clips_by_default_like_the_published_evaluations():
    """ddpm_vlb_bpd's default is the clipped bound (Ho et al.'s and improved-diffusion's calc_bpd_loop); the sum
    of hand-computed terms with the same per-step noise plus the prior KL equals it, and clip_denoised=False gives
    the unclipped sum."""
    from diffjax.discrete import ddpm_grid, ddpm_vlb_bpd

    grid = ddpm_grid(dj.vp_sde(0.1, 20.0, N=25))
    betas, abar = np.asarray(grid.betas, np.float64), np.asarray(grid.alpha_bars, np.float64)
    model = _analytic_eps_model(grid)
    x0 = _lattice(jax.random.PRNGKey(2), (6, 4, 2))
    key = jax.random.PRNGKey(3)
    want = {}
    for clip in (True, False):
        total = np.zeros(6)
        for i in range(grid.N):
            t = jnp.full((6,), grid.time(i))
            x_t = grid.perturb(x0, t, jax.random.normal(jax.random.fold_in(key, i), x0.shape))
            total += _np_vlb_term(x0, x_t, i, model(x_t, t)[0], betas, abar, clip=clip)
        xs = np.asarray(x0, np.float64)
        prior = 0.5 * (-1 - np.log(1 - abar[-1]) + (1 - abar[-1]) + abar[-1] * xs**2).mean(axis=(1, 2)) / np.log(2)
        want[clip] = total + prior
    default = np.asarray(ddpm_vlb_bpd(key, x0, model, grid))
    plain = np.asarray(ddpm_vlb_bpd(key, x0, model, grid, clip_denoised=False))
    assert np.all(np.isfinite(default)) and np.all(np.isfinite(plain))
    np.testing.assert_allclose(default, want[True], rtol=2e-4)
    np.testing.assert_allclose(plain, want[False], rtol=2e-4)
    assert np.all(np.abs(want[True] - want[False]) > 1e-2 * np.abs(want[False]))  # the choice matters here
    with pytest.raises(ValueError, match="clip_denoised"):
        ddpm_vlb_bpd(key, x0, model, grid, clip_denoised=None)
