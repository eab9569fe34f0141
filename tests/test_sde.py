"""Forward SDEs and schedules against their defining equations."""
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj

SDES = {
    "vp": dj.vp_sde(0.1, 20.0),
    "cosine_vp": dj.cosine_vp_sde(),
    "subvp": dj.subvp_sde(0.1, 20.0),
    "ve": dj.ve_sde(0.01, 50.0),
}


def test_vp_discretization_is_ddpm_betas():
    sde = dj.vp_sde(beta_min=0.1, beta_max=20.0, N=1000)
    np.testing.assert_allclose(sde.discrete_betas(), np.linspace(1e-4, 0.02, 1000), rtol=1e-6, atol=1e-9)
    grid = dj.discrete.ddpm_grid(sde)
    np.testing.assert_allclose(grid.alpha_bars, np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)), rtol=1e-5)


@pytest.mark.parametrize("name", list(SDES))
def test_marginal_solves_moment_odes(name):
    """For dx = -b(t)/2 x dt + g dw: d mean/dt = -b/2 mean, d var/dt = -b var + g^2 (VE: b = 0)."""
    sde = SDES[name]
    t = jnp.linspace(0.05, 0.95, 7)
    x = jnp.ones((7, 1))

    def mean_var(t):
        a, s = sde.marginal(t)
        return a, s**2

    (a, v), (da, dv) = jax.jvp(mean_var, (t,), (jnp.ones_like(t),))
    f, g = sde.coefficients(x, t)
    b = -2.0 * f[:, 0]  # f = -b/2 x at x = 1
    np.testing.assert_allclose(da, -0.5 * b * a, rtol=2e-3, atol=1e-6)
    np.testing.assert_allclose(dv, -b * v + g**2, rtol=2e-3, atol=1e-4)


@pytest.mark.parametrize("name", list(SDES))
def test_log_snr_and_prior(name):
    sde = SDES[name]
    t = jnp.array([0.1, 0.5, 0.9])
    a, s = sde.marginal(t)
    np.testing.assert_allclose(sde.log_snr(t), 2 * jnp.log(a / s), rtol=1e-4, atol=1e-4)
    z = sde.prior_sample(jax.random.PRNGKey(0), (4, 3, 2))
    std = sde.marginal(sde.T)[1]
    expected = jnp.sum(jax.scipy.stats.norm.logpdf(z, scale=std if name == "ve" else 1.0), axis=(1, 2))
    np.testing.assert_allclose(sde.prior_logp(z), expected, rtol=1e-5)


def test_prior_matches_marginal_at_T():
    for name in ("vp", "subvp", "cosine_vp"):
        a, s = SDES[name].marginal(1.0)
        assert a < 1e-2 and abs(s - 1) < 1e-2, name


def test_discretize_matches_euler_step_for_small_steps():
    sde = dj.subvp_sde()
    x = jnp.ones((2, 3))
    f, G = sde.discretize(x, 0.5)
    drift, g = sde.coefficients(x, 0.5)
    np.testing.assert_allclose(f, drift / sde.N, rtol=1e-6)
    np.testing.assert_allclose(G, g * np.sqrt(1 / sde.N), rtol=1e-6)


def test_ve_discretization_is_smld_chain():
    sde = dj.ve_sde(0.01, 50.0, N=10)
    sig = np.exp(np.linspace(np.log(0.01), np.log(50.0), 10))
    for i in range(10):
        _, G = sde.discretize(jnp.zeros((1, 1)), i / 9)
        prev = 0.0 if i == 0 else sig[i - 1]
        np.testing.assert_allclose(G, np.sqrt(sig[i] ** 2 - prev**2), rtol=1e-5)


def test_cosine_schedule_matches_improved_ddpm():
    n, s = 1000, 0.008
    f = np.cos((np.arange(n + 1) / n + s) / (1 + s) * np.pi / 2) ** 2
    np.testing.assert_allclose(dj.cosine_alpha_bars(n, s=s), f[1:] / f[0], rtol=1e-4, atol=1e-6)
    betas = dj.cosine_betas(n)
    assert float(betas.max()) == pytest.approx(0.999)
    np.testing.assert_allclose(dj.betas_to_alpha_bars(betas)[:-1], (f[1:] / f[0])[:-1], rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(dj.alpha_bar_from_log_snr(dj.log_snr_from_alpha_bar(jnp.array([0.3, 0.9]))),
                               [0.3, 0.9], rtol=1e-5)


def _improved_ddpm_betas(n, s=0.008):
    """Nichol & Dhariwal 2021, eq. 17 and the 0.999 clip, in float64 (their ``betas_for_alpha_bar``)."""
    f = lambda t: np.cos((t + s) / (1 + s) * np.pi / 2) ** 2  # noqa: E731
    i = np.arange(n)
    return np.minimum(1.0 - f((i + 1) / n) / f(i / n), 0.999)


@pytest.mark.parametrize("n", [1000, 37, 1])
def test_cosine_vp_discretization_is_improved_ddpm_grid(n):
    """Every beta of the cosine VP SDE's DDPM grid is the published one (1000 steps: last beta 0.999, abar_T 2.4e-9),
    for any alpha_bar_end (which shapes only the continuous curve)."""
    want = _improved_ddpm_betas(n)
    for sde in (dj.cosine_vp_sde(N=n), dj.cosine_vp_sde(alpha_bar_end=1e-3, N=n)):
        got = np.asarray(sde.discrete_betas(), np.float64)
        assert got.shape == (n,) and np.all(np.isfinite(got))
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=5e-7)  # float32 1 - abar_t/abar_{t-1}: ~1e-7 abs
        np.testing.assert_allclose(got, dj.cosine_betas(n), rtol=0, atol=0)
        abar = np.asarray(dj.discrete.ddpm_grid(sde).alpha_bars, np.float64)
        np.testing.assert_allclose(abar, np.cumprod(1.0 - want), rtol=2e-3, atol=1e-12)
    if n == 1000:
        assert float(got[-1]) == pytest.approx(0.999) and float(abar[-1]) == pytest.approx(2.4e-9, rel=0.05)


def test_continuous_cosine_vp_is_the_published_curve_on_a_scaled_time_axis():
    """Over the whole of [0, 1]: alpha_bar(t) = f(c t)/f(0) with c = (theta1 - theta0)/(pi/2 - theta0), ending at
    alpha_bar_end; within 4.1e-3 of the published f(t)/f(0); beta = -d log alpha_bar / dt finite (439 at t = 1)."""
    s, end = 0.008, 5e-5
    sde = dj.cosine_vp_sde(s, alpha_bar_end=end)
    f = lambda t: np.cos((t + s) / (1 + s) * np.pi / 2) ** 2  # noqa: E731
    th0 = s / (1 + s) * np.pi / 2
    c = (np.arccos(np.sqrt(end) * np.cos(th0)) - th0) / (np.pi / 2 - th0)
    t = np.linspace(0.0, 1.0, 1001)
    a, std = sde.marginal(jnp.asarray(t, jnp.float32))
    abar = np.asarray(a, np.float64) ** 2
    np.testing.assert_allclose(abar, f(c * t) / f(0.0), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(abar[-1], end, rtol=1e-3)
    assert np.max(np.abs(abar - f(t) / f(0.0))) < 4.1e-3
    np.testing.assert_allclose(np.asarray(std, np.float64) ** 2, 1.0 - abar, atol=1e-6)
    tm = jnp.asarray(t[1:-1], jnp.float32)
    _, dlog = jax.jvp(lambda u: jnp.log(sde.marginal(u)[0] ** 2), (tm,), (jnp.ones_like(tm),))
    beta = sde.schedule.beta(tm)
    np.testing.assert_allclose(beta, -dlog, rtol=2e-3)
    assert np.all(np.isfinite(sde.schedule.beta(jnp.asarray(t)))) and float(sde.schedule.beta(1.0)) == pytest.approx(
        438.8, rel=1e-3)


@pytest.mark.parametrize("name", list(SDES))
def test_langevin_alpha_is_the_forward_chain_alpha(name):
    """alpha(t, dt) = alpha_bar(t) / alpha_bar(t - dt) in (0, 1] for any dt (VE: 1), and at score-SDE's dt = 1/1000
    it is its corrector's 1 - beta(t) dt (DDPM's 1 - beta_i) to O((beta dt)^2)."""
    sde = SDES[name]
    t = jnp.linspace(1e-3, 1.0, 200)
    for dt in (1.0, 0.5, 1 / 3, 1 / 19, 1e-3):
        alpha = np.asarray(sde.langevin_alpha(t, dt), np.float64)
        assert alpha.shape == t.shape and np.all(np.isfinite(alpha)) and np.all((alpha > 0) & (alpha <= 1)), dt
        a_t, _ = sde.marginal(t)
        a_prev, _ = sde.marginal(jnp.maximum(t - dt, 0.0))
        np.testing.assert_allclose(alpha, (np.asarray(a_t, np.float64) / np.asarray(a_prev, np.float64)) ** 2,
                                   rtol=2e-4)
    alpha = np.asarray(sde.langevin_alpha(t, 1e-3), np.float64)
    if name == "ve":
        np.testing.assert_array_equal(alpha, 1.0)
    elif name in ("vp", "subvp"):
        score_sde = 1.0 - np.asarray(sde.schedule.beta(t), np.float64) * 1e-3  # beta dt <= 0.02
        np.testing.assert_allclose(alpha, score_sde, rtol=2.5e-4)
    # score-SDE's form goes negative (NaN noise) where beta(t) dt > 1; this one stays a fraction
    few = np.asarray(sde.langevin_alpha(jnp.float32(1.0), 1 / 3))
    assert 0 < few <= 1


def test_linear_ddpm_discretization_rejects_betas_of_one_or_more():
    """beta_max / N >= 1 makes sqrt(1 - beta) and the alpha-bars NaN: a ValueError naming num_steps instead."""
    with pytest.raises(ValueError, match=r"num_steps=10 .*beta.*allowed: num_steps > 20"):
        dj.vp_sde(N=10).discrete_betas()
    with pytest.raises(ValueError, match="num_steps=20"):
        dj.discrete.ddpm_grid(dj.vp_sde(N=20))
    x = jnp.zeros((2, 2))
    with pytest.raises(ValueError, match="num_steps=10"):
        dj.samplers.ddim(jax.random.key(0), x, lambda x, t: -x, dj.vp_sde(N=10), num_steps=5)
    betas = np.asarray(dj.vp_sde(N=21).discrete_betas())
    assert np.all(betas < 1) and np.all(np.isfinite(dj.discrete.ddpm_grid(dj.vp_sde(N=21)).alpha_bars))
    np.testing.assert_allclose(dj.vp_sde(N=1).discrete_betas(), [0.1], rtol=1e-6)  # one step: beta_min / 1


def test_geometric_sigmas_descend():
    sig = dj.geometric_sigmas(10, sigma_min=0.01, sigma_max=1.0)
    np.testing.assert_allclose(sig, np.geomspace(1.0, 0.01, 10), rtol=1e-5)


def test_sdes_are_static_pytrees():
    calls = []

    @jax.jit
    def f(sde, x):
        calls.append(1)
        return sde.marginal(x)[1]

    f(dj.vp_sde(), 0.5)
    f(dj.vp_sde(), 0.3)
    assert len(calls) == 1
    f(dj.vp_sde(beta_max=10.0), 0.3)
    assert len(calls) == 2


def test_reverse_sde_and_ode_coefficients():
    sde = dj.vp_sde()
    score_fn = lambda x, t: -x  # noqa: E731
    x = jnp.ones((2, 3))
    t = jnp.array([0.2, 0.7])
    f, g = sde.coefficients(x, t)
    rf, rg = dj.reverse_sde(sde, score_fn).coefficients(x, t)
    chex.assert_trees_all_close(rf, f + g[:, None] ** 2 * x)
    chex.assert_trees_all_close(rg, g)
    chex.assert_trees_all_close(dj.probability_flow_ode(sde, score_fn)(x, t), f + 0.5 * g[:, None] ** 2 * x)


@pytest.mark.parametrize(
    "call, arg",
    [
        (lambda: dj.vp_sde(beta_min=-1.0), "beta_min"),
        (lambda: dj.vp_sde(beta_min=5.0, beta_max=1.0), "beta_max"),
        (lambda: dj.ve_sde(sigma_min=1.0, sigma_max=0.5), "sigma_max"),
        (lambda: dj.ve_sde(sigma_min=0.0), "sigma_min"),
        (lambda: dj.vp_sde(N=0), "N"),
        (lambda: dj.linear_betas(0), "num_steps"),
        (lambda: dj.cosine_betas(10, max_beta=1.5), "max_beta"),
    ],
)
def test_bad_input_names_argument(call, arg):
    with pytest.raises(ValueError, match=arg):
        call()


def test_core_imports_no_heavy_frameworks():
    code = (
        "import sys, diffjax.core, diffjax.discrete, diffjax.samplers\n"
        "bad = [m for m in ('flax', 'optax', 'orbax', 'tensorflow') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
