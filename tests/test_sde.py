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


def test_continuous_cosine_vp_has_cosine_alpha_bar_shape():
    sde = dj.cosine_vp_sde(alpha_bar_end=5e-5)
    a, _ = sde.marginal(jnp.array([0.0, 1.0]))
    np.testing.assert_allclose(a**2, [1.0, 5e-5], rtol=1e-3)


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
