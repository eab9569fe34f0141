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
    np.testing.assert_allclose(logp, dj.mixture_log_prob(MIX, X), atol=0.05)
    # the ODE starts at t_eps: tighter still against the perturbed marginal p_{t_eps}
    np.testing.assert_allclose(logp, dj.mixture_log_prob(MIX, X, *sde.marginal(1e-5)), atol=0.01)
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
    exact = dj.mixture_log_prob(MIX, X, *sde.marginal(1e-5))
    assert float(jnp.max(jnp.abs(a - exact))) < 10.0  # one Hutchinson draw: noisy but finite and near
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
