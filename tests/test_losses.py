"""The denoising score-matching loss, its weightings and importance sampling, and DDPM's variational-bound pieces,
against closed forms (Gaussian data, Gaussian KLs, normal CDF masses) and hand-written formulas."""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

import diffjax as dj
from diffjax.discrete import ddpm_grid, ddpm_hybrid_loss, ddpm_simple_loss, ddpm_vlb_bpd, ncsn_grid, ncsn_loss

MU, S0, D = 0.5, 0.7, 4  # Gaussian data N(MU, S0^2 I_D)
SDES = {"vp": dj.vp_sde(0.1, 20.0), "subvp": dj.subvp_sde(0.1, 20.0), "ve": dj.ve_sde(0.01, 50.0)}


def gaussian_data(key, batch):
    return MU + S0 * jax.random.normal(key, (batch, D))


def exact_score(sde, scale=1.0):
    """Score of the perturbed Gaussian: x_t ~ N(a MU, a^2 S0^2 + std^2)."""

    def score_fn(x, t):
        a, s = sde.marginal(t)
        a, s = a[:, None], s[:, None]
        return -scale * (x - a * MU) / (a**2 * S0**2 + s**2)

    return score_fn


def ratio(sde, t):
    """Per-dimension DSM value at the exact score: E(std s + z)^2 = a^2 S0^2 / (a^2 S0^2 + std^2)."""
    a, s = sde.marginal(t)
    return a**2 * S0**2 / (a**2 * S0**2 + s**2)


def expected_loss(sde, weighting, t_eps):
    """Quadrature over t ~ U[t_eps, T] (trapezoid in log t, which resolves the 1/t of likelihood weighting)."""
    log_t = np.linspace(np.log(t_eps), np.log(sde.T), 20001)
    t = jnp.asarray(np.exp(log_t), jnp.float32)
    _, s = sde.marginal(t)
    f = np.asarray(weighting(sde, t) / s**2 * ratio(sde, t), np.float64) * np.exp(log_t)
    return np.sum(0.5 * (f[1:] + f[:-1]) * np.diff(log_t)) / (sde.T - t_eps)


def mean_and_se(values):
    values = np.asarray(values, np.float64)
    return values.mean(), values.std(ddof=1) / math.sqrt(values.size)


def many_losses(sde, *options, n_keys=16, batch=16384):
    """The loss at the exact score for ``n_keys`` keys, one column per dict of dsm_loss options (one compile)."""
    x0 = gaussian_data(jax.random.PRNGKey(1), batch)

    @jax.jit
    def f(key):
        return jnp.stack([dj.dsm_loss(key, x0, exact_score(sde), sde, **kw) for kw in options])

    return np.array([f(k) for k in jax.random.split(jax.random.PRNGKey(2), n_keys)])


# --- the DSM loss at the exact score --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vp", "ve"])
def test_exact_score_gives_closed_form_minimum(name):
    sde = SDES[name]
    m, se = mean_and_se(many_losses(sde, {}, n_keys=8)[:, 0])
    ref = expected_loss(sde, dj.sigma2_weighting, 1e-5)
    assert abs(m - ref) < 4 * se + 1e-4, (m, se, ref)
    assert 0.05 < ref < 0.95  # the minimum is neither trivial nor 1 (= the loss of a zero score)


def test_exact_score_is_stationary_in_scale():
    """L(c) for score c * s_exact: dL/dc = 0 at c = 1 within noise, clearly negative at c = 0.8, positive at 1.2."""
    sde = SDES["vp"]
    x0 = gaussian_data(jax.random.PRNGKey(1), 16384)

    @jax.jit
    def grad(key, c):
        return jax.grad(lambda c: dj.dsm_loss(key, x0, exact_score(sde, c), sde))(c)

    keys = jax.random.split(jax.random.PRNGKey(3), 8)
    for c, sign in ((1.0, 0), (0.8, -1), (1.2, 1)):
        m, se = mean_and_se([grad(k, c) for k in keys])
        if sign == 0:
            assert abs(m) < 4 * se, (c, m, se)
        else:
            assert sign * m > 10 * se, (c, m, se)


def test_weightings_match_hand_written_eps_loss():
    """dsm_loss = E lambda/std^2 ||std s + z||^2 with the documented key split; sigma^2 weighting = eps MSE."""
    sde = SDES["vp"]
    key, batch, t_eps = jax.random.PRNGKey(4), 32, 1e-3
    x0 = jax.random.normal(jax.random.PRNGKey(5), (batch, 3, 2))
    W = jax.random.normal(jax.random.PRNGKey(6), (2, 2))

    def eps_net(x, t):
        return jnp.tanh(x @ W + t[:, None, None])

    def score_fn(x, t):
        return dj.score_from_eps(eps_net(x, t), x, t, sde)

    key_t, key_z = jax.random.split(key)
    t = jax.random.uniform(key_t, (batch,), minval=t_eps, maxval=1.0)
    z = jax.random.normal(key_z, x0.shape)
    integral = 0.1 * t + 0.5 * t**2 * (20.0 - 0.1)
    abar = np.exp(-np.asarray(integral, np.float64))
    x_t = np.sqrt(abar)[:, None, None] * x0 + np.sqrt(1 - abar)[:, None, None] * z
    sq = np.asarray((z - eps_net(jnp.asarray(x_t, jnp.float32), t)) ** 2, np.float64)
    beta = 0.1 + t * (20.0 - 0.1)
    hand = {
        ("simple", "mean"): sq.mean(),
        ("simple", "sum"): sq.sum(axis=(1, 2)).mean(),
        ("likelihood", "mean"): (beta / (1 - abar) * sq.mean(axis=(1, 2))).mean(),
    }
    for (w, reduce), ref in hand.items():
        weighting = dj.sigma2_weighting if w == "simple" else dj.likelihood_weighting
        got = dj.dsm_loss(key, x0, score_fn, sde, weighting=weighting, t_eps=t_eps, reduce=reduce)
        np.testing.assert_allclose(got, ref, rtol=1e-4, err_msg=str((w, reduce)))


def test_dsm_loss_traces_once_and_differentiates():
    sde = SDES["ve"]
    x0 = jnp.ones((8, 2))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def loss(key, w):
        return dj.dsm_loss(key, x0, lambda x, t: -w * x, sde, weighting=dj.likelihood_weighting,
                           importance_sampling=True)

    for i in range(3):
        assert np.isfinite(loss(jax.random.PRNGKey(i), 1.0))
    assert np.isfinite(jax.grad(loss, argnums=1)(jax.random.PRNGKey(0), 1.0))


# --- importance sampling ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vp", "cosine_vp", "subvp"])
def test_importance_sampler_density(name):
    """t ~ p: the empirical CDF matches int h / Z, and E_p[w(t)/p(t)] = int w dt (the reweighting is exact)."""
    sde, t_eps = (dj.cosine_vp_sde() if name == "cosine_vp" else SDES[name]), 1e-5
    t, p = dj.importance_sample_time(jax.random.PRNGKey(0), 200000, sde, t_eps=t_eps)
    t, p = np.asarray(t, np.float64), np.asarray(p, np.float64)
    assert t.min() >= t_eps * (1 - 1e-5) and t.max() <= sde.T * (1 + 1e-6)
    log_g = np.linspace(np.log(t_eps), 0.0, 100001)
    g = jnp.asarray(np.exp(log_g), jnp.float32)
    h = np.asarray(sde.diffusion(g) ** 2 / sde.marginal(g)[1] ** 2, np.float64) * np.exp(log_g)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (h[1:] + h[:-1]) * np.diff(log_g))])
    cdf /= cdf[-1]
    for q in (1e-4, 1e-2, 0.1, 0.5):
        frac = np.mean(t < q)
        expected = np.interp(np.log(q), log_g, cdf)
        assert abs(frac - expected) < 4 * math.sqrt(expected * (1 - expected) / t.size) + 1e-3, (q, frac, expected)
    for w, integral in ((np.ones_like, 1.0 - t_eps), (np.square, (1.0 - t_eps**3) / 3)):
        m, se = mean_and_se(w(t) / p)
        assert abs(m - integral) < 4 * se + 1e-4, (m, se, integral)


@pytest.mark.parametrize("name", list(SDES))
def test_importance_sampling_is_unbiased(name):
    """Likelihood weighting with the exact score: the IS estimate and the uniform-t estimate agree with the
    quadrature value within their noise; IS has a much smaller spread (that is its purpose)."""
    sde, t_eps = SDES[name], 1e-3
    ref = expected_loss(sde, dj.likelihood_weighting, t_eps)
    kw = dict(weighting=dj.likelihood_weighting, t_eps=t_eps)
    uniform, imp = many_losses(sde, kw, dict(importance_sampling=True, **kw)).T
    (mu, seu), (mi, sei) = mean_and_se(uniform), mean_and_se(imp)
    assert abs(mu - ref) < 4 * seu + 1e-3 * ref, (mu, seu, ref)
    assert abs(mi - ref) < 4 * sei + 1e-3 * ref, (mi, sei, ref)
    if name != "ve":  # for VE, g^2/std^2 is constant: the importance density is the uniform one
        assert sei < seu / 2, (sei, seu)


# --- DDPM / NCSN special cases through the core loss -----------------------------------------------------------------


def test_ddpm_simple_loss_is_eps_mse_and_zero_for_oracle():
    """On the DDPM grid the sigma^2-weighted DSM loss is mean ||eps - eps_pred||^2 (Ho et al. eq. 14); an oracle
    eps model (it knows x0) gives exactly 0 and a scaled one gives the scale error times E||eps||^2."""
    grid = ddpm_grid(dj.vp_sde(N=1000))
    x0 = jax.random.normal(jax.random.PRNGKey(0), (64, 5))

    def oracle_score(c):
        def score_fn(x, t):
            a, s = grid.marginal(t)
            eps = (x - a[:, None] * x0) / s[:, None]
            return dj.score_from_eps(c * eps, x, t, grid)

        return score_fn

    key = jax.random.PRNGKey(1)
    assert float(ddpm_simple_loss(key, x0, oracle_score(1.0), grid)) < 1e-8
    _, key_z = jax.random.split(key)
    z = jax.random.normal(key_z, x0.shape)
    np.testing.assert_allclose(ddpm_simple_loss(key, x0, oracle_score(0.5), grid), 0.25 * jnp.mean(z**2), rtol=1e-4)
    np.testing.assert_allclose(ddpm_simple_loss(key, x0, oracle_score(0.5), grid, reduce="sum"),
                               0.25 * jnp.mean(jnp.sum(z**2, axis=1)), rtol=1e-4)


# --- Gaussian KL and the discretized decoder ---------------------------------------------------------------------------


def test_normal_kl_known_values():
    np.testing.assert_allclose(dj.normal_kl(0.0, 0.0, 0.0, 0.0), 0.0, atol=1e-7)
    np.testing.assert_allclose(dj.normal_kl(1.0, 0.0, 0.0, 0.0), 0.5, rtol=1e-6)
    np.testing.assert_allclose(dj.normal_kl(0.0, math.log(4.0), 0.0, 0.0), 0.5 * (4 - 1 - math.log(4)), rtol=1e-6)
    rng = np.random.default_rng(0)
    m1, m2, s1, s2 = rng.normal(size=4 * 50).reshape(4, 50)
    s1, s2 = np.exp(s1), np.exp(s2)
    ref = np.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5
    got = dj.normal_kl(m1, 2 * np.log(s1), m2, 2 * np.log(s2))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    # Monte-Carlo check of the definition E_q[log q - log p] for one pair
    x = 0.3 + 0.5 * np.random.default_rng(1).normal(size=400000)
    mc = np.mean(norm.logpdf(x, 0.3, 0.5) - norm.logpdf(x, -0.2, 1.5))
    np.testing.assert_allclose(dj.normal_kl(0.3, 2 * math.log(0.5), -0.2, 2 * math.log(1.5)), mc, atol=5e-3)


@jax.jit
def _decoder_on_all_bins(mean, log_scale):
    return dj.discretized_gaussian_log_likelihood(jnp.linspace(-1.0, 1.0, 256), means=mean, log_scales=log_scale)


@pytest.mark.parametrize("mean, log_scale", [(0.0, 0.0), (0.3, -3.0), (0.99, -6.0), (-0.2, 2.0), (0.5, -9.0),
                                             (-1.0, -4.0), (3.0, -1.0)])
def test_discretized_gaussian_sums_to_one(mean, log_scale):
    logp = _decoder_on_all_bins(jnp.float32(mean), jnp.float32(log_scale))
    assert np.all(np.isfinite(logp)) and np.all(logp <= 1e-6)
    np.testing.assert_allclose(np.sum(np.exp(np.asarray(logp, np.float64))), 1.0, atol=2e-6)
    # against scipy where the mass is not tiny; edge bins reach to -inf / +inf
    s = math.exp(log_scale)
    xs = np.linspace(-1.0, 1.0, 256)
    lo = np.where(xs < -0.999, -np.inf, xs - 1 / 255)
    hi = np.where(xs > 0.999, np.inf, xs + 1 / 255)
    # upper-tail bins through the survival function, so the reference keeps its precision down to 1e-20
    ref = np.where(xs > mean, norm.sf(lo, mean, s) - norm.sf(hi, mean, s), norm.cdf(hi, mean, s) - norm.cdf(lo, mean, s))
    ok = ref > 1e-20
    np.testing.assert_allclose(np.asarray(logp)[ok], np.log(ref[ok]), rtol=1e-4, atol=1e-4)


def test_discretized_gaussian_gradients_finite():
    x = jnp.array([-1.0, -1.0 + 2 / 255, 0.0, 1.0 - 2 / 255, 1.0])
    grad = jax.jit(jax.grad(lambda m, s: jnp.sum(dj.discretized_gaussian_log_likelihood(x, means=m, log_scales=s)),
                            argnums=(0, 1)))
    for mean, ls in ((0.0, -5.0), (0.9, -8.0), (-3.0, 0.0)):
        g = grad(jnp.float32(mean), jnp.float32(ls))
        assert all(np.isfinite(v) for v in g), (mean, ls, g)


# --- improved DDPM: L_hybrid and the full variational bound -----------------------------------------------------------


def _lattice_data(key, shape):
    return jax.random.randint(key, shape, 0, 256).astype(jnp.float32) / 127.5 - 1.0


def test_hybrid_loss_gradients():
    """The vlb term trains v only (stop-gradient on the mean); eps params get exactly the L_simple gradient."""
    grid = ddpm_grid(dj.vp_sde(N=100))
    x0 = _lattice_data(jax.random.PRNGKey(0), (16, 6))
    W = 0.3 * jax.random.normal(jax.random.PRNGKey(1), (6, 6))

    def model(params):
        def model_fn(x, t):
            return jnp.tanh(params["a"] * x @ W + t[:, None]), jnp.tanh(params["b"] * x + params["c"])

        return model_fn

    params = {"a": 1.0, "b": 0.5, "c": 0.1}
    key = jax.random.PRNGKey(2)

    def simple(params):
        fn = model(params)
        return ddpm_simple_loss(key, x0, lambda x, t: dj.score_from_eps(fn(x, t)[0], x, t, grid), grid)

    @jax.jit  # one compilation for everything below
    def everything(params):
        hybrid = lambda p: ddpm_hybrid_loss(key, x0, model(p), grid, vlb_weight=1e-3)  # noqa: E731
        no_vlb = ddpm_hybrid_loss(key, x0, model(params), grid, vlb_weight=0.0)
        terms = ddpm_hybrid_loss(key, x0, model(params), grid, return_terms=True)
        return simple(params), no_vlb, jax.grad(hybrid)(params), jax.grad(simple)(params), terms

    l_simple, l_no_vlb, g_h, g_s, (loss, terms) = everything(params)
    np.testing.assert_allclose(l_no_vlb, l_simple, rtol=1e-6)
    np.testing.assert_allclose(g_h["a"], g_s["a"], rtol=1e-5)
    assert g_s["b"] == 0 and g_s["c"] == 0
    assert abs(g_h["b"]) > 1e-4 and abs(g_h["c"]) > 1e-4
    np.testing.assert_allclose(loss, jnp.mean(terms["simple"] + 1e-3 * grid.N * terms["vlb"]), rtol=1e-6)
    assert np.all(np.isfinite(terms["vlb"])) and np.all(terms["vlb"] >= -1e-6)


def test_vlb_bpd_with_exact_posterior_oracle():
    """An oracle that knows x0 (exact eps, v = -1: the true posterior variance) has KL terms 0, so the bound is the
    decoder term plus the prior term, computed here with scipy; worse models give larger bounds."""
    grid = ddpm_grid(dj.vp_sde(N=50))
    x0 = _lattice_data(jax.random.PRNGKey(0), (4, 3, 2))

    def oracle(eps_scale=1.0, v=-1.0):
        def model_fn(x, t):
            a, s = grid.marginal(t)
            eps = (x - a[:, None, None] * x0) / s[:, None, None]
            return eps_scale * eps, jnp.full_like(x, v)

        return model_fn

    @jax.jit
    def bound(key, eps_scale, v):
        return ddpm_vlb_bpd(key, x0, oracle(eps_scale, v), grid, return_terms=True)

    key = jax.random.PRNGKey(1)
    bpd, parts = bound(key, 1.0, -1.0)
    assert parts["terms"].shape == (50, 4)
    np.testing.assert_allclose(parts["terms"][1:], 0.0, atol=1e-4)
    betas, abar = np.asarray(grid.betas, np.float64), np.asarray(grid.alpha_bars, np.float64)
    s_dec = math.sqrt((1 - abar[0]) / (1 - abar[1]) * betas[1])  # clipped beta_tilde at step 0, mean = x0
    xs = np.asarray(x0, np.float64)
    lo = np.where(xs < -0.999, -np.inf, -1 / 255)
    hi = np.where(xs > 0.999, np.inf, 1 / 255)
    dec = -np.log(norm.cdf(hi / s_dec) - norm.cdf(lo / s_dec)).mean(axis=(1, 2)) / math.log(2)
    prior = 0.5 * (-1 - np.log(1 - abar[-1]) + (1 - abar[-1]) + abar[-1] * xs**2).mean(axis=(1, 2)) / math.log(2)
    np.testing.assert_allclose(parts["terms"][0], dec, rtol=1e-4)
    np.testing.assert_allclose(parts["prior"], prior, rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(bpd, dec + prior, rtol=1e-4)
    assert np.all(np.isfinite(bpd)) and np.all(bpd > 0)
    for eps_scale, v in ((0.9, -1.0), (1.0, 0.0), (1.0, 1.0)):
        assert np.all(bound(key, eps_scale, v)[0] > bpd + 1e-3), (eps_scale, v)


# --- bad input ---------------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_value_error():
    sde, key = SDES["vp"], jax.random.PRNGKey(0)
    x0 = jnp.zeros((4, 2))
    score = lambda x, t: -x  # noqa: E731
    grid = ddpm_grid(dj.vp_sde(N=50))  # N > beta_max: N = 10 would make betas > 1 (a ValueError now)
    cases = [
        (lambda: dj.dsm_loss(key, x0, score, sde, weighting="likelihood"), "weighting"),
        (lambda: dj.dsm_loss(key, x0, score, sde, t_eps=0.0), "t_eps"),
        (lambda: dj.dsm_loss(key, x0, score, sde, t_eps=1.5), "t_eps"),
        (lambda: dj.dsm_loss(key, x0, score, sde, reduce="max"), "reduce"),
        (lambda: dj.dsm_loss(key, jnp.zeros(4), score, sde), "x0"),
        (lambda: dj.dsm_loss(key, x0, "score", sde), "score_fn"),
        (lambda: dj.dsm_loss(key, x0, score, sde, importance_sampling=True, time_sampler=grid.sample_time),
         "importance_sampling"),
        (lambda: dj.dsm_loss(key, x0, score, grid, weighting=dj.likelihood_weighting), "diffusion"),
        (lambda: ddpm_simple_loss(key, x0, score, sde), "grid"),
        (lambda: ddpm_hybrid_loss(key, x0, lambda x, t: (x, x), grid, vlb_weight=-1.0), "vlb_weight"),
        (lambda: ddpm_hybrid_loss(key, x0, lambda x, t: x, grid), "model_fn"),
        (lambda: ddpm_vlb_bpd(key, x0, lambda x, t: (x, x[:, :1]), grid), "v"),
        (lambda: ncsn_loss(key, x0, score, grid), "grid"),
        (lambda: ncsn_loss(key, x0, score, ncsn_grid(dj.ve_sde()), reduce="all"), "reduce"),
    ]
    for fn, word in cases:
        with pytest.raises(ValueError, match=word):
            fn()


def test_cpu_fused_reduction_canary():
    """Guards the XLA flag set by `import diffjax` (diffjax/_xla_flags.py): jaxlib 0.10.2's YNNPACK reduce fusion
    on CPU merges distinct log/expm1 nodes, so this mean came out 0 instead of log 2 (it broke every KL and the
    sub-VP weighting)."""
    t = jax.random.uniform(jax.random.PRNGKey(0), (16384,), minval=1e-3, maxval=1.0)
    got = jax.jit(lambda t: jnp.mean(jnp.log(2 * t) - jnp.log(t)) + jnp.mean(jnp.expm1(-2 * t) / jnp.expm1(-t)))(t)
    np.testing.assert_allclose(got, math.log(2) + np.mean(np.expm1(-2 * np.asarray(t)) / np.expm1(-np.asarray(t))),
                               rtol=1e-5)
